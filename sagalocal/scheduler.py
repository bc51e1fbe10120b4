"""EventBridge schedules for the embedded stack: a `Schedule` event runs its function at its rate().

A cron() schedule runs only on demand (`python -m sagalocal trigger`). `every_seconds` runs every schedule
that often instead of its own rate (tests shorten the reaper's minute to a second).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sagalocal.provision import Schedule

log = logging.getLogger("sagalocal.scheduler")


def scheduled_event(region: str, account: str, rule_arn: str | None = None) -> dict[str, Any]:
    """The event EventBridge delivers for a schedule."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": account, "region": region, "resources": [rule_arn] if rule_arn else [],
            "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "detail": {}}


class Scheduler:
    def __init__(self, schedules: list[Schedule], invoke: Callable[[str, Any], Any], region: str, account: str,
                 every_seconds: float | None = None) -> None:
        self.schedules = schedules
        self.invoke = invoke
        self.region = region
        self.account = account
        self.every_seconds = every_seconds
        self._stopping = threading.Event()

    def period(self, schedule: Schedule) -> float | None:
        return self.every_seconds or schedule.period

    def start(self) -> None:
        if self.schedules:
            threading.Thread(target=self._run, name="sagalocal-schedules", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        due = {id(s): time.monotonic() + (self.period(s) or 0) for s in self.schedules}
        # Wake when the next schedule is due (at most a second later: a schedule enabled or re-timed meanwhile is
        # seen within it), not ten times a second.
        while not self._stopping.wait(self._until_next(due)):
            for schedule in self.schedules:
                period = self.period(schedule)
                if not schedule.enabled or period is None or time.monotonic() < due[id(schedule)]:
                    continue
                due[id(schedule)] = time.monotonic() + period
                threading.Thread(target=self._fire, args=(schedule,), daemon=True).start()

    def _until_next(self, due: dict[int, float]) -> float:
        waiting = [due[id(s)] for s in self.schedules if s.enabled and self.period(s) is not None]
        return min(1.0, max(0.01, min(waiting, default=float("inf")) - time.monotonic()))

    def _fire(self, schedule: Schedule) -> None:
        try:
            result = self.invoke(schedule.function, scheduled_event(self.region, self.account))
            if result.error:
                log.warning("scheduled %s failed: %s", schedule.function, result.payload.get("errorMessage"))
        except Exception as exc:  # noqa: BLE001 - the next tick tries again, as EventBridge would
            if not self._stopping.is_set():
                log.warning("scheduled %s failed: %s", schedule.function, exc)

    def describe(self) -> list[dict[str, Any]]:
        return [{"function": s.function, "expression": s.expression, "every_seconds": self.period(s)}
                for s in self.schedules]
