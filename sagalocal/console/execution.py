"""One execution read from its history: the states it visited, each with its attempts, input, output and error.

The visits and their timings come from sagalocal.timeline.visits (the same reading `sagalocal history`
prints); this module adds what a page shows of each: the task attempts as intervals (so retries and the
waits between them can be drawn), the state's input and output, and each failure's error and cause.

A redriven execution (RedriveExecution) has one history of several runs: each ExecutionRedriven event begins a
run, with the state that had failed entered again. A visit of an earlier run is settled by how that run ended
(its own end event), not by the execution's status now.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from sagalocal.timeline import EXECUTION_ENDED, EXECUTION_REDRIVEN, TASK_FAILED, TASK_SCHEDULED, details
from sagalocal.timeline import visits as timeline_visits

TASK_OK = ("TaskSucceeded", "LambdaFunctionSucceeded")
STATUS_OF_END = {"ExecutionFailed": "FAILED", "ExecutionSucceeded": "SUCCEEDED", "ExecutionAborted": "ABORTED",
                 "ExecutionTimedOut": "TIMED_OUT"}


def parse_json(text: Any) -> Any:
    if isinstance(text, str) and text.lstrip()[:1] in ("{", "[", '"'):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def expand(value: Any) -> Any:
    """A value with the JSON held in its strings parsed, at any depth (history events nest it)."""
    value = parse_json(value)
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def pretty(value: Any) -> str:
    """JSON held in a string or not, indented for reading; other text as it is."""
    value = parse_json(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=False, default=str)


@dataclass
class Cause:
    """An error's cause: a Lambda error's message and stack trace when it is one, else the text itself."""
    message: str
    trace: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, cause: Any) -> Cause | None:
        if cause in (None, ""):
            return None
        parsed = parse_json(cause)
        if isinstance(parsed, dict) and "errorMessage" in parsed:
            trace = parsed.get("stackTrace") or []
            return cls(str(parsed["errorMessage"]), [str(line).rstrip() for line in trace])
        return cls(pretty(parsed))


@dataclass
class Attempt:
    number: int
    start_ms: float
    end_ms: float | None = None
    outcome: str = "running"  # succeeded, failed, timed-out, running
    error: str = ""
    cause: Cause | None = None

    @property
    def duration_ms(self) -> float | None:
        return None if self.end_ms is None else self.end_ms - self.start_ms


@dataclass
class Visit:
    name: str
    type: str
    role: str
    start_ms: float
    end_ms: float | None
    input: Any = None
    output: Any = None
    attempts: list[Attempt] = field(default_factory=list)
    status: str = "running"  # succeeded, retried, failed, compensating, running, ended-succeeded, ended-failed
    error: str = ""
    cause: Cause | None = None
    run: int = 0  # 0: the first run; n: after the n-th redrive

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def duration_ms(self) -> float | None:
        return None if self.end_ms is None else self.end_ms - self.start_ms


@dataclass
class Redrive:
    number: int  # 1 for the first redrive
    at_ms: float  # since the start
    resumed_at: str = ""  # the state its run entered first (the one that had failed)
    ended: str = ""  # how the run before it had ended: FAILED, TIMED_OUT or ABORTED


@dataclass
class Reading:
    visits: list[Visit]
    total_ms: float  # the execution's length so far
    events: list[dict[str, Any]]  # as GetExecutionHistory gave them, with `at_ms` since the start
    redrives: list[Redrive] = field(default_factory=list)


def read(events: list[dict[str, Any]], roles: dict[str, str], execution_status: str,
         execution_error: str = "", execution_cause: Any = None, now_ms: float | None = None) -> Reading:
    """Each visit's status is what its own events say; a Fail state ends with the execution's error."""
    if not events:
        return Reading([], 0.0, [])
    t0 = events[0]["timestamp"].timestamp()
    for event in events:
        event["at_ms"] = (event["timestamp"].timestamp() - t0) * 1000
    total_ms = events[-1]["at_ms"] if execution_status != "RUNNING" or now_ms is None else max(
        now_ms - t0 * 1000, events[-1]["at_ms"])
    redrives, ends = _runs(events)
    out, failed_containers = [], []
    for base in timeline_visits(events):
        segment = base.events
        visit = Visit(base.name, segment[0]["type"].removesuffix("StateEntered"), roles.get(base.name, ""),
                      base.start_ms, base.end_ms, input=parse_json(details(segment[0]).get("input")), run=base.run)
        for event in segment[1:]:
            kind, info = event["type"], details(event)
            if kind in TASK_SCHEDULED:
                visit.attempts.append(Attempt(len(visit.attempts) + 1, event["at_ms"]))
            elif visit.attempts and (kind in TASK_OK or kind in TASK_FAILED):
                attempt = visit.attempts[-1]
                attempt.end_ms = event["at_ms"]
                attempt.outcome = "succeeded" if kind in TASK_OK else (
                    "timed-out" if kind.endswith("TimedOut") else "failed")
                attempt.error = info.get("error", "" if kind in TASK_OK else kind)
                attempt.cause = Cause.read(info.get("cause"))
            elif kind.endswith("StateExited"):
                visit.output = parse_json(info.get("output"))
            elif kind in ("MapStateFailed", "ParallelStateFailed"):
                failed_containers.append(visit)
        if visit.run < len(redrives):  # an earlier run: as it ended
            _settle(visit, *ends.get(visit.run, ("FAILED", "", None)))
        else:
            _settle(visit, execution_status, execution_error, execution_cause)
        out.append(visit)
    for container in failed_containers:  # its failure events carry no error: it is the failed branch's
        container.status, container.error = "failed", _branch_error(container, out)
    for redrive in redrives:
        redrive.resumed_at = next((v.name for v in out if v.run == redrive.number), "")
        redrive.ended = ends.get(redrive.number - 1, ("",))[0]
    return Reading(out, total_ms, events, redrives)


def _runs(events: list[dict[str, Any]]) -> tuple[list[Redrive], dict[int, tuple[str, str, Any]]]:
    """The redrives, and how each run ended: run -> (status, error, cause), from its first end event."""
    redrives: list[Redrive] = []
    ends: dict[int, tuple[str, str, Any]] = {}
    for event in events:
        kind = event["type"]
        if kind == EXECUTION_REDRIVEN:
            redrives.append(Redrive(len(redrives) + 1, event["at_ms"]))
        elif kind in EXECUTION_ENDED:
            info = details(event)
            ends.setdefault(len(redrives), (STATUS_OF_END[kind], str(info.get("error") or ""), info.get("cause")))
    return redrives, ends


def _branch_error(container: Visit, visits: list[Visit]) -> str:
    """The error the Map or Parallel `container` failed with: that of the first of its branches' visits to fail (a
    Map fails at its first failed iteration, and its Catch receives that error). The first to fail, not the first
    to begin: concurrent iterations fail in another order than they began (one card declined, then the other
    card's authorization finding the order no longer active)."""
    inside = [v for v in visits if v is not container and v.start_ms >= container.start_ms
              and (container.end_ms is None or v.start_ms <= container.end_ms)]
    failed = [v for v in inside if v.status == "failed" and v.error]

    def failed_at(visit: Visit) -> float:
        ends = [a.end_ms for a in visit.attempts if a.end_ms is not None]
        return ends[-1] if ends else visit.end_ms if visit.end_ms is not None else math.inf

    return min(failed, key=failed_at).error if failed else f"{container.type}StateFailed"


def _settle(visit: Visit, execution_status: str, execution_error: str, execution_cause: Any) -> None:
    last = visit.attempts[-1] if visit.attempts else None
    if visit.type == "Fail":
        visit.status, visit.error = "ended-failed", execution_error
        visit.cause = Cause.read(execution_cause)
    elif visit.type == "Succeed":
        visit.status = "ended-succeeded"
    elif last is not None and last.outcome in ("failed", "timed-out"):
        visit.status, visit.error, visit.cause = "failed", last.error, last.cause
    elif visit.end_ms is None or (last is not None and last.outcome == "running"):
        visit.status = "running" if execution_status == "RUNNING" else "failed"
        if visit.status == "failed":
            visit.error = execution_error or execution_status
    elif visit.role == "compensation":
        visit.status = "compensating"
    elif visit.retries:
        visit.status = "retried"
    else:
        visit.status = "succeeded"
