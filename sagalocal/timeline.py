"""An execution's history as the Step Functions console shows it: the states, their timings, retries, errors."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StateVisit:
    name: str
    kind: str  # Task, Fail, Succeed, ...
    start_ms: float  # since the execution started
    end_ms: float | None = None
    attempts: int = 0  # task invocations (1 + retries)
    errors: list[str] = field(default_factory=list)  # every error seen, in order
    events: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)  # its own, entered first
    run: int = 0  # 0: the execution's first run; n: the run after its n-th redrive (RedriveExecution)

    @property
    def duration_ms(self) -> float | None:
        return None if self.end_ms is None else self.end_ms - self.start_ms

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


EXECUTION_ENDED = ("ExecutionFailed", "ExecutionSucceeded", "ExecutionAborted", "ExecutionTimedOut")
EXECUTION_REDRIVEN = "ExecutionRedriven"  # a redrive: the same history goes on with the states run again
TASK_SCHEDULED = ("TaskScheduled", "LambdaFunctionScheduled")
TASK_FAILED = ("TaskFailed", "TaskTimedOut", "TaskStartFailed", "TaskSubmitFailed", "LambdaFunctionFailed",
               "LambdaFunctionTimedOut", "LambdaFunctionStartFailed", "LambdaFunctionScheduleFailed")


def details(event: dict[str, Any]) -> dict[str, Any]:
    """The event's `...EventDetails` member (every history event has at most one)."""
    return next((v for k, v in event.items() if k.endswith("EventDetails") and isinstance(v, dict)), {})


def segments(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The events of each state visit, from its StateEntered on, in the order the visits began.

    An event belongs to the visit of the event it follows (its previousEventId), so the interleaved events of a
    Map's concurrent iterations fall to their own visits; an event without that link falls to the latest visit.
    Events after the execution ended are left out (moto records a Map's other iterations ending after it), up to
    an ExecutionRedriven event: a redriven execution's history goes on with the states its new run entered.
    """
    out: list[list[dict[str, Any]]] = []
    owner: dict[Any, list[dict[str, Any]]] = {}
    ended = False
    for event in events:
        kind = event["type"]
        if kind in EXECUTION_ENDED or kind == EXECUTION_REDRIVEN:
            ended = kind != EXECUTION_REDRIVEN
            continue
        if ended:
            continue
        if kind.endswith("StateEntered"):
            segment = [event]
            out.append(segment)
        elif not out:
            continue  # before the first state
        else:
            segment = _owner(event, owner.get(event.get("previousEventId"), out[-1]), out)
            segment.append(event)
        owner[event.get("id")] = segment
    return out


def _owner(event: dict[str, Any], chained: list[dict[str, Any]], out: list[list[dict[str, Any]]]
           ) -> list[dict[str, Any]]:
    """The visit an event belongs to where its link says otherwise: a Map's or a Parallel's own events (they
    follow its last branch's events) belong to the latest visit of such a state, and an event that names its
    state (StateExited) to the latest visit of that state."""
    kind, name = event["type"], details(event).get("name")
    container = next((c for c in ("Map", "Parallel") if kind.startswith((f"{c}State", f"{c}Iteration"))), None)
    if container is not None:
        return _latest(out, chained, lambda first: first["type"] == f"{container}StateEntered")
    if name is not None:
        return _latest(out, chained, lambda first: details(first).get("name") == name)
    return chained


def _latest(out: list[list[dict[str, Any]]], chained: list[dict[str, Any]],
            fits: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """`chained` if its first event fits, else the latest segment whose first event does."""
    return chained if fits(chained[0]) else next((seg for seg in reversed(out) if fits(seg[0])), chained)


def visits(events: list[dict[str, Any]]) -> list[StateVisit]:
    if not events:
        return []
    t0 = events[0]["timestamp"].timestamp()

    def at(event: dict[str, Any]) -> float:
        return (event["timestamp"].timestamp() - t0) * 1000

    runs = runs_of(events)
    out: list[StateVisit] = []
    for segment in segments(events):
        first, *rest = segment
        kind = first["type"]
        visit = StateVisit(first["stateEnteredEventDetails"]["name"], kind.removesuffix("StateEntered"), at(first),
                           events=segment, run=runs[id(first)][0])
        if kind in ("FailStateEntered", "SucceedStateEntered"):
            visit.end_ms = visit.start_ms
        for event in rest:
            if event["type"].endswith("StateExited"):
                visit.end_ms = at(event)
            elif event["type"] in TASK_SCHEDULED:
                visit.attempts += 1
            elif event["type"] in TASK_FAILED:
                visit.errors.append(details(event).get("error", event["type"]))
        out.append(visit)
    # The visits still open when their run ended (stopped, failed, timed out) end there: the first end after them.
    ends = [(n, event) for n, event in enumerate(events) if event["type"] in EXECUTION_ENDED]
    for visit in out:
        if visit.end_ms is None:
            entered = runs[id(visit.events[0])][1]
            ended = next((event for n, event in ends if n > entered), None)
            visit.end_ms = None if ended is None else at(ended)
    return out


def runs_of(events: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """id() of each event -> (its run: the number of ExecutionRedriven events before it, its position)."""
    out, run = {}, 0
    for n, event in enumerate(events):
        run += event["type"] == EXECUTION_REDRIVEN
        out[id(event)] = (run, n)
    return out


def state_path(events: list[dict[str, Any]]) -> list[str]:
    return [visit.name for visit in visits(events)]


def paginate(call: Any, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item of a paginated AWS list call (nextToken), in order."""
    items: list[dict[str, Any]] = []
    while True:
        page = call(**kwargs)
        items.extend(page.get(key, []))
        token = page.get("nextToken")
        if not token:
            return items
        kwargs["nextToken"] = token


def history(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    events, token = [], None
    while True:
        kwargs = {"executionArn": execution_arn, "maxResults": 1000}
        if token:
            kwargs["nextToken"] = token
        page = sfn.get_execution_history(**kwargs)
        events.extend(page["events"])
        token = page.get("nextToken")
        if not token:
            return events


def running_executions(sfn: Any, state_machine_arn: str) -> set[str]:
    """The ARNs of the state machine's RUNNING executions: one poll for many sagas."""
    arns, token = set(), None
    while True:
        page = sfn.list_executions(stateMachineArn=state_machine_arn, statusFilter="RUNNING",
                                   **({"nextToken": token} if token else {}))
        arns |= {e["executionArn"] for e in page["executions"]}
        token = page.get("nextToken")
        if not token:
            return arns


def wait_for_execution(sfn: Any, execution_arn: str, timeout: float = 120.0, poll: float = 0.02) -> dict[str, Any]:
    """Poll DescribeExecution until the execution ends. Raises TimeoutError naming the last status seen."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        described = sfn.describe_execution(executionArn=execution_arn)
        status = described["status"]
        if status != "RUNNING":
            return described
        time.sleep(poll)
    raise TimeoutError(f"execution {execution_arn} still {status} after {timeout:.0f} s")


def format_timeline(described: dict[str, Any], events: list[dict[str, Any]]) -> str:
    lines = [f"Execution {described['executionArn']}",
             f"  status {described['status']}" + (f"  error {described['error']}" if described.get("error") else "")]
    rows = [("state", "type", "start ms", "took ms", "retries", "errors")]
    seen = visits(events)
    redriven = any(visit.run for visit in seen)  # then a column says which run each visit belongs to
    if redriven:
        rows[0] = ("run", *rows[0])
    for visit in seen:
        took = "" if visit.duration_ms is None else f"{visit.duration_ms:.0f}"
        row = (visit.name, visit.kind, f"{visit.start_ms:.0f}", took, str(visit.retries) if visit.attempts
               else "", ", ".join(visit.errors))
        rows.append((f"redrive {visit.run}" if visit.run else "first", *row) if redriven else row)
    lines.append(table(rows, indent="  "))
    if described.get("output"):
        lines.append("  output " + json.dumps(json.loads(described["output"]))[:300])
    return "\n".join(lines)


def table(rows: list[tuple[str, ...]], indent: str = "") -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append(indent + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(out)
