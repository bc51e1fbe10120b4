"""An execution's history as the Step Functions console shows it: the states, their timings, retries, errors."""

from __future__ import annotations

import json
import time
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

    @property
    def duration_ms(self) -> float | None:
        return None if self.end_ms is None else self.end_ms - self.start_ms

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


def visits(events: list[dict[str, Any]]) -> list[StateVisit]:
    if not events:
        return []
    t0 = events[0]["timestamp"].timestamp()
    out: list[StateVisit] = []
    current: StateVisit | None = None
    for event in events:
        kind = event["type"]
        at = (event["timestamp"].timestamp() - t0) * 1000
        if kind.endswith("StateEntered"):
            current = StateVisit(event["stateEnteredEventDetails"]["name"], kind.removesuffix("StateEntered"), at)
            out.append(current)
            if kind in ("FailStateEntered", "SucceedStateEntered"):
                current.end_ms = at
        elif kind.endswith("StateExited") and current is not None:
            current.end_ms = at
        elif kind in ("TaskScheduled", "LambdaFunctionScheduled") and current is not None:
            current.attempts += 1
        elif kind in ("TaskFailed", "TaskTimedOut", "LambdaFunctionFailed", "LambdaFunctionTimedOut") \
                and current is not None:
            details = next((v for k, v in event.items() if k.endswith("EventDetails")), {})
            current.errors.append(details.get("error", kind))
        elif kind in ("ExecutionFailed", "ExecutionSucceeded", "ExecutionAborted", "ExecutionTimedOut"):
            if current is not None and current.end_ms is None:
                current.end_ms = at
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
    for visit in visits(events):
        took = "" if visit.duration_ms is None else f"{visit.duration_ms:.0f}"
        rows.append((visit.name, visit.kind, f"{visit.start_ms:.0f}", took, str(visit.retries) if visit.attempts
                     else "", ", ".join(visit.errors)))
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
