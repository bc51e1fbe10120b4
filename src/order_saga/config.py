"""Saga timing, from the environment the template sets (Globals). Required: a missing value fails at cold start."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    lease_ms: int  # how long an execution owns its order without a heartbeat
    deadline_ms: int  # the whole saga's deadline; no lease is renewed past it
    reservation_ttl_ms: int  # an unconfirmed reservation returns to stock after this

    @classmethod
    def from_env(cls) -> Timing:
        return cls(
            lease_ms=int(float(os.environ["LEASE_SECONDS"]) * 1000),
            deadline_ms=int(float(os.environ["SAGA_DEADLINE_SECONDS"]) * 1000),
            reservation_ttl_ms=int(float(os.environ["RESERVATION_TTL_SECONDS"]) * 1000),
        )
