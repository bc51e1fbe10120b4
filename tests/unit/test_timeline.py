"""sagalocal/timeline.py's visits() on a redriven execution: RedriveExecution goes on with the same history, an
ExecutionRedriven event and the states entered again after it (the failed state first)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sagalocal.timeline import format_timeline, visits


def _events(*spec: tuple[str, int, str | None]) -> list[dict[str, Any]]:
    """(type, ms since the start, the state a StateEntered or StateExited names); ids 1, 2, ..., each following
    the one before (previousEventId), as a sequential history has them."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for n, (kind, ms, name) in enumerate(spec, start=1):
        event: dict[str, Any] = {"id": n, "previousEventId": n - 1, "type": kind,
                                 "timestamp": t0 + timedelta(milliseconds=ms)}
        if kind.endswith("StateEntered"):
            event["stateEnteredEventDetails"] = {"name": name, "input": "{}"}
        elif kind.endswith("StateExited"):
            event["stateExitedEventDetails"] = {"name": name, "output": "{}"}
        elif kind == "TaskFailed":
            event["taskFailedEventDetails"] = {"error": "TransientError"}
        out.append(event)
    return out


FIRST_RUN = (
    ("ExecutionStarted", 0, None),
    ("TaskStateEntered", 10, "AuthorizePayment"), ("TaskScheduled", 11, None), ("TaskFailed", 12, None),
    ("TaskStateExited", 13, "AuthorizePayment"),
    ("TaskStateEntered", 20, "ReleaseInventory"),
    ("TaskScheduled", 21, None), ("TaskFailed", 22, None), ("TaskScheduled", 30, None), ("TaskFailed", 31, None),
    ("ExecutionFailed", 40, None),
)
REDRIVE = (
    ("ExecutionRedriven", 1000, None),
    ("TaskStateEntered", 1001, "ReleaseInventory"), ("TaskScheduled", 1002, None), ("TaskSucceeded", 1003, None),
    ("TaskStateExited", 1004, "ReleaseInventory"),
    ("TaskStateEntered", 1010, "CancelOrder"), ("TaskScheduled", 1011, None), ("TaskSucceeded", 1012, None),
    ("TaskStateExited", 1013, "CancelOrder"),
    ("FailStateEntered", 1020, "SagaCompensated"), ("ExecutionFailed", 1021, None),
)


def _seen(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(v.name, v.run, round(v.start_ms), None if v.end_ms is None else round(v.end_ms), v.attempts, v.errors)
            for v in visits(events)]


def test_a_history_without_a_redrive_reads_as_before():
    assert _seen(_events(*FIRST_RUN)) == [
        ("AuthorizePayment", 0, 10, 13, 1, ["TransientError"]),
        ("ReleaseInventory", 0, 20, 40, 2, ["TransientError", "TransientError"]),  # open: ends with the execution
    ]


def test_the_states_of_a_redriven_run_follow_the_failed_one_each_with_its_run():
    assert _seen(_events(*FIRST_RUN, *REDRIVE)) == [
        ("AuthorizePayment", 0, 10, 13, 1, ["TransientError"]),
        ("ReleaseInventory", 0, 20, 40, 2, ["TransientError", "TransientError"]),  # ends where its run ended
        ("ReleaseInventory", 1, 1001, 1004, 1, []),
        ("CancelOrder", 1, 1010, 1013, 1, []),
        ("SagaCompensated", 1, 1020, 1020, 0, []),
    ]


def test_a_redriven_run_still_running_leaves_its_open_state_open():
    events = _events(*FIRST_RUN, *REDRIVE[:3])  # the redriven ReleaseInventory is running
    assert _seen(events)[1:] == [
        ("ReleaseInventory", 0, 20, 40, 2, ["TransientError", "TransientError"]),
        ("ReleaseInventory", 1, 1001, None, 1, []),
    ]


def test_events_after_an_end_are_left_out_until_a_redrive():
    """moto records a Map's other iterations ending after the execution ended: not a visit's, nor a new one."""
    late = ("TaskStateEntered", 45, "Straggler")
    assert [v.name for v in visits(_events(*FIRST_RUN, late))] == ["AuthorizePayment", "ReleaseInventory"]
    assert [v.name for v in visits(_events(*FIRST_RUN, late, *REDRIVE))] == [
        "AuthorizePayment", "ReleaseInventory", "ReleaseInventory", "CancelOrder", "SagaCompensated"]


def test_the_printed_timeline_says_which_run_each_state_belongs_to():
    described = {"executionArn": "arn:x", "status": "FAILED", "error": "PaymentDeclined"}
    plain = format_timeline(described, _events(*FIRST_RUN)).splitlines()
    assert plain[2].split() == ["state", "type", "start", "ms", "took", "ms", "retries", "errors"]
    lines = format_timeline(described, _events(*FIRST_RUN, *REDRIVE)).splitlines()
    assert lines[2].split()[:2] == ["run", "state"]
    assert [line.split()[:3] for line in lines[4:]] == [
        ["first", "AuthorizePayment", "Task"], ["first", "ReleaseInventory", "Task"],
        ["redrive", "1", "ReleaseInventory"], ["redrive", "1", "CancelOrder"], ["redrive", "1", "SagaCompensated"]]
