"""Saga timing and layout, from the environment the template sets (Globals). A missing value fails at cold start."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    lease_ms: int  # how long an execution owns its order without a heartbeat
    deadline_ms: int  # the whole saga's deadline; no lease is renewed past it
    reservation_ttl_ms: int  # an unconfirmed reservation returns to stock after this
    shards: int = 1  # the write shards of the reaper's indexes (IndexShards)
    reconcile_after_ms: int = 300_000  # when the reaper asks the gateway about an authorization left undecided
    pivot_lease_ms: int = 90_000  # ConfirmOrder's lease from its stock commit on: its worst case, retries included

    @classmethod
    def from_env(cls) -> Timing:
        return cls(
            lease_ms=int(float(os.environ["LEASE_SECONDS"]) * 1000),
            deadline_ms=int(float(os.environ["SAGA_DEADLINE_SECONDS"]) * 1000),
            reservation_ttl_ms=int(float(os.environ["RESERVATION_TTL_SECONDS"]) * 1000),
            shards=int(os.environ["INDEX_SHARDS"]),
            reconcile_after_ms=int(float(os.environ.get("RECONCILE_AFTER_SECONDS", "300")) * 1000),
            pivot_lease_ms=int(float(os.environ.get("PIVOT_LEASE_SECONDS", "90")) * 1000),
        )

    def shard(self, key: str) -> str:
        """The index partition an item lands in: spread by its key, so no partition takes every saga."""
        return str(zlib.crc32(key.encode()) % self.shards)

    def all_shards(self) -> list[str]:
        return [str(n) for n in range(self.shards)]

    def renewal_due(self, lease_expires_at: int | None, now: int) -> bool:
        """Renew only past half the lease's life: each renewal rewrites the reaper's index entry."""
        return lease_expires_at is None or lease_expires_at - now < self.lease_ms // 2
