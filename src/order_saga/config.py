"""Saga timing and layout, from the environment the template sets (Globals). A missing value fails at cold start.

Retention: every record that has done its job carries `purge_at` (epoch seconds), the tables' DynamoDB TTL
attribute, written by the same write that finishes it. Two lifetimes (docs/architecture.md, "Data"):

- `retention_ms` (the template's OrderRetentionDays): a finished order (COMPLETED or COMPENSATED), and the
  records of what it did with money and stock: its payments once final, the gateway's ledger entries once
  they hold nothing, a completed order's committed reservation and redemption.
- `tombstone_ms`: a RELEASED reservation or redemption (a tombstone, or what a release left). It only has to
  outlive every step that can still arrive late: the longest execution, and the reconciliation delay.

Nothing unfinished carries `purge_at`, and no correctness depends on when DynamoDB deletes (days after
`purge_at`, or never): an expired item that is still there means what it meant before.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

# The longest execution by the ASL, every task at its worst case with every retry (docs/timeouts.md's table,
# scripts/generate_timing_table.py; tests/unit/test_retention.py checks this figure against it). A step of an
# execution can arrive late only while that execution runs.
LONGEST_EXECUTION_MS = 548_000
# The least a RELEASED tombstone lives: far past the longest execution, and past the reconciliation delay.
TOMBSTONE_MS = 86_400_000
DAY_MS = 86_400_000
ORDER_RETENTION_DAYS = 91  # the template's OrderRetentionDays default (past Step Functions' 90 days of a name)


@dataclass(frozen=True)
class Timing:
    lease_ms: int  # how long an execution owns its order without a heartbeat
    deadline_ms: int  # the whole saga's deadline; no lease is renewed past it
    reservation_ttl_ms: int  # an unconfirmed reservation returns to stock after this
    shards: int = 1  # the write shards of the reaper's indexes (IndexShards)
    reconcile_after_ms: int = 300_000  # when the reaper asks the gateway about an authorization left undecided
    pivot_lease_ms: int = 90_000  # ConfirmOrder's lease from its stock commit on: its worst case, retries included
    retention_ms: int = ORDER_RETENTION_DAYS * DAY_MS  # how long a finished order (and its final records) is kept

    @classmethod
    def from_env(cls) -> Timing:
        return cls(
            lease_ms=int(float(os.environ["LEASE_SECONDS"]) * 1000),
            deadline_ms=int(float(os.environ["SAGA_DEADLINE_SECONDS"]) * 1000),
            reservation_ttl_ms=int(float(os.environ["RESERVATION_TTL_SECONDS"]) * 1000),
            shards=int(os.environ["INDEX_SHARDS"]),
            reconcile_after_ms=int(float(os.environ.get("RECONCILE_AFTER_SECONDS", "300")) * 1000),
            pivot_lease_ms=int(float(os.environ.get("PIVOT_LEASE_SECONDS", "90")) * 1000),
            retention_ms=retention_ms_from_env(),
        )

    @property
    def tombstone_ms(self) -> int:
        """How long a RELEASED reservation or redemption is kept: at least a day, and always past the longest
        execution plus the reconciliation delay (however ReconcileAfterSeconds is set)."""
        return max(TOMBSTONE_MS, LONGEST_EXECUTION_MS + self.reconcile_after_ms)

    def retained_until(self, now: int) -> int:
        """`purge_at` (epoch seconds, DynamoDB TTL's unit) of a record finished at `now` (epoch ms), kept for the
        order retention."""
        return purge_at(now, self.retention_ms)

    def tombstone_until(self, now: int) -> int:
        """`purge_at` of a RELEASED reservation or redemption written at `now` (epoch ms)."""
        return purge_at(now, self.tombstone_ms)

    def shard(self, key: str) -> str:
        """The index partition an item lands in: spread by its key, so no partition takes every saga."""
        return str(zlib.crc32(key.encode()) % self.shards)

    def all_shards(self) -> list[str]:
        return [str(n) for n in range(self.shards)]

    def renewal_due(self, lease_expires_at: int | None, now: int) -> bool:
        """Renew only past half the lease's life: each renewal rewrites the reaper's index entry."""
        return lease_expires_at is None or lease_expires_at - now < self.lease_ms // 2


def purge_at(now: int, lifetime_ms: int) -> int:
    """The TTL attribute's value: `now` (epoch ms) plus `lifetime_ms`, in epoch seconds, rounded up (never early)."""
    return -(-(now + lifetime_ms) // 1000)


def retention_ms_from_env() -> int:
    """ORDER_RETENTION_DAYS (the template's OrderRetentionDays), in ms; the default when unset (unit tests)."""
    return int(float(os.environ.get("ORDER_RETENTION_DAYS", str(ORDER_RETENTION_DAYS))) * DAY_MS)
