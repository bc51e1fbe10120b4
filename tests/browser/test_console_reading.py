"""What the console reads, without a browser: roles and edges from a definition, the path over it, and
what is never shown. These run wherever the unit tests run, Chromium or not."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from sagalocal.console.data import Source
from sagalocal.console.execution import read
from sagalocal.console.graph import overlay, state_graph
from sagalocal.console.redact import HIDDEN, redact
from sagalocal.timeline import visits as timeline_visits

DEFINITION = {
    "StartAt": "Check",
    "States": {
        "Check": {"Type": "Choice", "Choices": [{"Variable": "$.ok", "BooleanEquals": True, "Next": "Work"}],
                  "Default": "Refused"},
        "Work": {"Type": "Task", "Resource": "x", "Next": "Done", "Comment": "does it",
                 "Catch": [{"ErrorEquals": ["Busy"], "Next": "Undo"}, {"ErrorEquals": ["States.ALL"], "Next": "Undo"},
                           {"ErrorEquals": ["Gone"], "Next": "Refused"}]},
        "Undo": {"Type": "Task", "Resource": "x", "End": True},
        "Done": {"Type": "Succeed"},
        "Refused": {"Type": "Fail", "Error": "Refused"},
    },
}


def test_roles_and_edges_come_from_the_definition():
    graph = state_graph(DEFINITION)
    roles = {node.name: node.role for node in graph.nodes}
    assert roles == {"Check": "forward", "Work": "forward", "Undo": "compensation", "Done": "succeed",
                     "Refused": "fail"}
    edges = {(e.source, e.target, e.kind): e.label for e in graph.edges}
    assert edges == {("Check", "Work", "choice"): "$.ok", ("Check", "Refused", "default"): "Default",
                     ("Work", "Done", "next"): "", ("Work", "Undo", "catch"): "Busy / States.ALL",
                     ("Work", "Refused", "catch"): "Gone"}


def _events(*spec):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for n, (kind, ms, detail) in enumerate(spec, start=1):
        event = {"id": n, "type": kind, "timestamp": t0 + timedelta(milliseconds=ms)}
        if detail:
            event[detail[0]] = detail[1]
        out.append(event)
    return out


def test_the_path_takes_the_catch_that_matches_the_error_and_counts_retries():
    events = _events(
        ("ExecutionStarted", 0, None),
        ("ChoiceStateEntered", 1, ("stateEnteredEventDetails", {"name": "Check", "input": "{}"})),
        ("ChoiceStateExited", 2, ("stateExitedEventDetails", {"name": "Check", "output": "{}"})),
        ("TaskStateEntered", 3, ("stateEnteredEventDetails", {"name": "Work", "input": "{}"})),
        ("TaskScheduled", 4, None),
        ("TaskFailed", 10, ("taskFailedEventDetails", {"error": "Flaky", "cause": "once"})),
        ("TaskScheduled", 20, None),
        ("TaskFailed", 30, ("taskFailedEventDetails", {"error": "Gone", "cause": json.dumps(
            {"errorMessage": "it went", "stackTrace": ["a", "b"]})})),
        ("TaskStateExited", 31, ("stateExitedEventDetails", {"name": "Work", "output": "{}"})),
        ("FailStateEntered", 32, ("stateEnteredEventDetails", {"name": "Refused", "input": "{}"})),
        ("ExecutionFailed", 33, ("executionFailedEventDetails", {"error": "Refused"})),
    )
    graph = state_graph(DEFINITION)
    reading = read(events, {n.name: n.role for n in graph.nodes}, "FAILED", "Refused")
    work = reading.visits[1]
    assert (work.status, work.error, work.retries) == ("failed", "Gone", 1)
    assert work.cause.message == "it went"
    assert work.cause.trace == ["a", "b"]
    assert [(round(a.start_ms), round(a.end_ms), a.outcome) for a in work.attempts] == [
        (4, 10, "failed"), (20, 30, "failed")]
    overlay(graph, reading.visits)
    taken = {(e.source, e.target, e.kind) for e in graph.edges if e.taken}
    assert taken == {("Check", "Work", "choice"), ("Work", "Refused", "catch")}  # not Busy / States.ALL -> Undo
    assert {n.name: n.status for n in graph.nodes} == {"Check": "succeeded", "Work": "failed",
                                                       "Undo": "not-visited", "Done": "not-visited",
                                                       "Refused": "ended-failed"}


def test_a_maps_concurrent_iterations_each_keep_their_own_attempts_and_errors():
    """Their events interleave in the history; each follows its own (previousEventId), as moto and AWS link them.
    A moto Map records its other iterations ending after the execution ended: those are not visits' events."""
    entered = ("stateEnteredEventDetails", {"name": "Authorize", "input": "{}"})
    failed = ("taskFailedEventDetails", {"error": "PaymentGatewayUnavailable", "cause": "slow"})
    exited = ("stateExitedEventDetails", {"name": "Authorize", "output": "{}"})
    map_entered, map_exited = (("stateEnteredEventDetails", {"name": "Pay"}),
                               ("stateExitedEventDetails", {"name": "Pay"}))
    spec = [  # (type, previousEventId, details); the ids are 1, 2, ...
        ("ExecutionStarted", 0, None), ("MapStateEntered", 1, map_entered), ("MapStateStarted", 2, None),
        ("MapIterationStarted", 3, None), ("TaskStateEntered", 4, entered), ("TaskScheduled", 5, None),  # 4-6: #0
        ("MapIterationStarted", 3, None), ("TaskStateEntered", 7, entered), ("TaskScheduled", 8, None),  # 7-9: #1
        ("TaskFailed", 9, failed),                                                    # 10: #1 fails once
        ("TaskSucceeded", 6, None), ("TaskStateExited", 11, exited),                  # 11-12: #0 done
        ("TaskScheduled", 10, None), ("TaskSucceeded", 13, None), ("TaskStateExited", 14, exited),  # 13-15: #1
        ("MapStateSucceeded", 15, None), ("MapStateExited", 16, map_exited),          # 16-17: as moto links them
        ("ExecutionSucceeded", 17, None), ("MapIterationSucceeded", 12, None),        # 19: after the end (moto)
    ]
    events = _events(*[(kind, n * 10, detail) for n, (kind, _, detail) in enumerate(spec)])
    for event, (_, previous, _) in zip(events, spec, strict=True):
        event["previousEventId"] = previous
    reading = read(events, {}, "SUCCEEDED")
    assert [(v.name, len(v.attempts), [a.error for a in v.attempts]) for v in reading.visits] == [
        ("Pay", 0, []), ("Authorize", 1, [""]), ("Authorize", 2, ["PaymentGatewayUnavailable", ""])]
    assert [(v.name, v.attempts, v.errors, round(v.end_ms)) for v in timeline_visits(events)] == [
        ("Pay", 0, [], 160), ("Authorize", 1, [], 110), ("Authorize", 2, ["PaymentGatewayUnavailable"], 140)]


def test_a_failed_map_shows_the_error_its_failed_iteration_had():
    """A Map's failure events carry no error, and moto links MapStateFailed to whichever iteration wrote last
    (here the one that succeeded): the error is the failed iteration's, found by time, not by that link."""
    entered = ("stateEnteredEventDetails", {"name": "Authorize", "input": "{}"})
    spec = [  # (type, previousEventId, details); the ids are 1, 2, ...
        ("ExecutionStarted", 0, None), ("MapStateEntered", 1, ("stateEnteredEventDetails", {"name": "Pay"})),
        ("MapStateStarted", 2, None), ("MapIterationStarted", 3, None), ("TaskStateEntered", 4, entered),  # 4-5
        ("MapIterationStarted", 3, None), ("TaskStateEntered", 6, entered),                               # 6-7
        ("TaskScheduled", 5, None), ("TaskScheduled", 7, None),                                           # 8-9
        ("TaskFailed", 9, ("taskFailedEventDetails", {"error": "PaymentDeclined", "cause": "no"})),      # 10
        ("TaskSucceeded", 8, None),                                                                       # 11
        ("MapStateFailed", 11, None), ("MapStateExited", 12, ("stateExitedEventDetails", {"name": "Pay"})),
        ("TaskStateEntered", 13, ("stateEnteredEventDetails", {"name": "Void", "input": "{}"})),          # 14
        ("TaskScheduled", 14, None), ("TaskFailed", 15, ("taskFailedEventDetails", {"error": "Later"})),
        ("ExecutionFailed", 16, ("executionFailedEventDetails", {"error": "Later"})),
    ]
    events = _events(*[(kind, n * 10, detail) for n, (kind, _, detail) in enumerate(spec)])
    for event, (_, previous, _) in zip(events, spec, strict=True):
        event["previousEventId"] = previous
    reading = read(events, {}, "FAILED", "Later")
    assert [(v.name, v.status, v.error) for v in reading.visits] == [
        ("Pay", "failed", "PaymentDeclined"), ("Authorize", "succeeded", ""),
        ("Authorize", "failed", "PaymentDeclined"), ("Void", "failed", "Later")]


def test_the_consoles_clients_have_their_exception_classes_before_any_thread_uses_them():
    """botocore builds a client's exception classes at first use, without a lock: threads that meet their first
    error at once can each build their own, and an `except client.exceptions.X` then misses the error."""
    client = Source("http://127.0.0.1:1", "us-east-1", {}).client("stepfunctions")
    built: list[int] = []

    def look() -> None:
        built.append(id(client.exceptions.ExecutionDoesNotExist))

    threads = [threading.Thread(target=look) for _ in range(12)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch at almost every bytecode: without the fix this failed 3 of 3
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        sys.setswitchinterval(interval)
    assert len(built) == 12
    assert set(built) == {id(client.exceptions.ExecutionDoesNotExist)}


@pytest.mark.parametrize("value", [
    {"payment_token": "tok_1", "nextToken": "keep"},
    json.dumps({"saga": {"token": "tok_1"}}),
    json.dumps({"body": json.dumps({"card_token": "tok_1"})}),
    '{"payment_token": "tok_1", "cut sho',  # a history event's input, truncated
])
def test_card_tokens_are_hidden_wherever_they_hide(value):
    shown = json.dumps(redact(value))
    assert "tok_1" not in shown
    assert HIDDEN in shown


def test_sagalocal_console_serves_any_endpoint_from_its_outputs(stack, scenarios, tmp_path):
    """The `sagalocal console` command on the stack's AWS endpoint, as it would run on LocalStack's."""
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(stack.outputs))
    process = subprocess.Popen([sys.executable, "-m", "sagalocal", "console", "--endpoint", stack.endpoint,
                                "--stack-outputs", str(outputs), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)  # it prints its URL once it serves
        assert ready, "sagalocal console printed nothing in 60 s"
        line = process.stdout.readline()
        url = line.split()[1]
        assert url.startswith("http://127.0.0.1:"), line
        with urllib.request.urlopen(f"{url}/executions?status=FAILED", timeout=30) as response:  # noqa: S310
            page = response.read().decode()
        assert scenarios["declined"].order_id in page
        assert scenarios["approved"].order_id not in page
    finally:
        process.terminate()
        process.wait(timeout=20)


REDRIVEN_DEFINITION = {
    "StartAt": "Pay",
    "States": {
        "Pay": {"Type": "Task", "Resource": "x", "Next": "Done",
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Release"}]},
        "Release": {"Type": "Task", "Resource": "x", "Next": "Cancel"},
        "Cancel": {"Type": "Task", "Resource": "x", "Next": "Compensated"},
        "Compensated": {"Type": "Fail", "ErrorPath": "$.error"},
        "Done": {"Type": "Succeed"},
    },
}


def _redriven_events(*, running: bool = False) -> list[dict]:
    """Pay declined; Release fails twice and the execution fails there; redriven: Release, Cancel, Compensated."""
    def entered(name):
        return ("stateEnteredEventDetails", {"name": name, "input": "{}"})

    def exited(name):
        return ("stateExitedEventDetails", {"name": name, "output": "{}"})

    failed = ("taskFailedEventDetails", {"error": "TransientError", "cause": "down"})
    first = [
        ("ExecutionStarted", 0, None),
        ("TaskStateEntered", 1, entered("Pay")), ("TaskScheduled", 2, None),
        ("TaskFailed", 3, ("taskFailedEventDetails", {"error": "PaymentDeclined", "cause": "no"})),
        ("TaskStateExited", 4, exited("Pay")),
        ("TaskStateEntered", 5, entered("Release")), ("TaskScheduled", 6, None), ("TaskFailed", 7, failed),
        ("TaskScheduled", 8, None), ("TaskFailed", 9, failed),
        ("ExecutionFailed", 10, ("executionFailedEventDetails", {"error": "TransientError", "cause": "down"})),
    ]
    redriven = [
        ("ExecutionRedriven", 500, ("executionRedrivenEventDetails", {"redriveCount": 1})),
        ("TaskStateEntered", 501, entered("Release")), ("TaskScheduled", 502, None),
    ]
    rest = [
        ("TaskSucceeded", 503, None), ("TaskStateExited", 504, exited("Release")),
        ("TaskStateEntered", 505, entered("Cancel")), ("TaskScheduled", 506, None), ("TaskSucceeded", 507, None),
        ("TaskStateExited", 508, exited("Cancel")),
        ("FailStateEntered", 509, entered("Compensated")),
        ("ExecutionFailed", 510, ("executionFailedEventDetails", {"error": "PaymentDeclined"})),
    ]
    events = _events(*first, *redriven, *([] if running else rest))
    for event in events:
        event["previousEventId"] = event["id"] - 1
    return events


def test_a_redriven_execution_shows_its_new_run_over_the_failed_one():
    graph = state_graph(REDRIVEN_DEFINITION)
    reading = read(_redriven_events(), {n.name: n.role for n in graph.nodes}, "FAILED", "PaymentDeclined")
    assert [(v.name, v.run, v.status, v.error) for v in reading.visits] == [
        ("Pay", 0, "failed", "PaymentDeclined"),
        ("Release", 0, "failed", "TransientError"),  # the first run's failure stays in the timeline
        ("Release", 1, "compensating", ""), ("Cancel", 1, "compensating", ""),
        ("Compensated", 1, "ended-failed", "PaymentDeclined")]
    assert [(r.number, round(r.at_ms), r.resumed_at, r.ended) for r in reading.redrives] == [
        (1, 500, "Release", "FAILED")]
    overlay(graph, reading.visits)
    nodes = {n.name: (n.status, n.error, n.retries, n.redriven) for n in graph.nodes}
    assert nodes["Release"] == ("compensating", "", 1, 1)  # the new run's status, not failed; retries of both runs
    assert nodes["Cancel"] == ("compensating", "", 0, 0)
    assert nodes["Compensated"] == ("ended-failed", "PaymentDeclined", 0, 0)
    taken = {(e.source, e.target) for e in graph.edges if e.taken}
    assert taken == {("Pay", "Release"), ("Release", "Cancel"), ("Cancel", "Compensated")}


def test_a_redriven_run_still_running_keeps_the_failure_before_it():
    graph = state_graph(REDRIVEN_DEFINITION)
    reading = read(_redriven_events(running=True), {n.name: n.role for n in graph.nodes}, "RUNNING")
    assert [(v.name, v.run, v.status) for v in reading.visits] == [
        ("Pay", 0, "failed"), ("Release", 0, "failed"), ("Release", 1, "running")]
    overlay(graph, reading.visits)
    assert graph.node("Release").status == "running"


def test_the_state_a_redrive_resumes_at_is_the_one_entered_and_never_left():
    from sagalocal.console.data import open_state

    events = _redriven_events()
    assert open_state(events[:11], REDRIVEN_DEFINITION["States"]) == "Release"  # the first run failed there
    assert open_state(events, REDRIVEN_DEFINITION["States"]) == "Compensated"  # a Fail state is never left
    inner = {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": "AuthorizeMethod"}}
    assert open_state([*events[:11], inner], REDRIVEN_DEFINITION["States"]) == "Release"  # top-level states only
    assert open_state(events[:5]) == ""


def test_a_failed_executions_kept_description_is_read_again_once_it_is_redriven():
    """An ended execution's description is kept, but a FAILED one can be redriven: ListExecutions' status and
    redrive count tell when the kept one is out of date, and the execution's own page always asks."""
    from sagalocal.console.data import ConsoleData

    class Sfn:
        exceptions = type("E", (), {"ExecutionDoesNotExist": LookupError})
        now = {"arn:s": {"status": "SUCCEEDED"}, "arn:f": {"status": "FAILED", "redriveStatus": "REDRIVABLE"}}
        calls: list[str] = []

        def describe_execution(self, executionArn):  # noqa: N803 - boto3's name
            self.calls.append(executionArn)
            return dict(self.now[executionArn])

    data = ConsoleData(Source("http://127.0.0.1:1", "us-east-1", {"StateMachineArn": "x"}))
    data.sfn = sfn = Sfn()
    for _ in range(2):
        data.describe("arn:s")
        data.describe("arn:f", {"status": "FAILED"})
    assert sfn.calls == ["arn:s", "arn:f"]  # both kept
    data.describe("arn:f")
    assert sfn.calls[-1] == "arn:f"  # its own page: a FAILED execution may have been redriven since
    sfn.now["arn:f"] = {"status": "RUNNING", "redriveCount": 1}
    assert data.describe("arn:f", {"status": "RUNNING", "redriveCount": 1})["status"] == "RUNNING"
    sfn.now["arn:f"] = {"status": "FAILED", "redriveCount": 1, "redriveStatus": "NOT_REDRIVABLE"}
    assert data.describe("arn:f", {"status": "FAILED", "redriveCount": 1})["redriveCount"] == 1
    calls = len(sfn.calls)
    data.describe("arn:f")
    assert len(sfn.calls) == calls  # not redrivable any more: final, kept


def test_a_failed_map_shows_the_error_it_failed_with_the_first_iteration_to_fail():
    """Both iterations fail: the one entered first fails last (a card whose authorization found the order no longer
    active, once the other card was declined). A Map fails with its first failure, which its Catch receives: the
    decline. Under load the iterations' order of entry and of failure differ (a loaded `make test`)."""
    entered = ("stateEnteredEventDetails", {"name": "Authorize", "input": "{}"})
    events = _events(
        ("ExecutionStarted", 0, None), ("MapStateEntered", 10, ("stateEnteredEventDetails", {"name": "Pay"})),
        ("MapStateStarted", 20, None), ("MapIterationStarted", 30, None), ("TaskStateEntered", 40, entered),
        ("MapIterationStarted", 50, None), ("TaskStateEntered", 60, entered),
        ("TaskScheduled", 70, None), ("TaskScheduled", 80, None),
        ("TaskFailed", 90, ("taskFailedEventDetails", {"error": "PaymentDeclined", "cause": "no"})),
        ("TaskFailed", 100, ("taskFailedEventDetails", {"error": "OrderNotActive", "cause": "gone"})),
        ("MapStateFailed", 110, None), ("MapStateExited", 120, ("stateExitedEventDetails", {"name": "Pay"})),
        ("ExecutionFailed", 130, ("executionFailedEventDetails", {"error": "PaymentDeclined"})))
    previous = [0, 1, 2, 3, 4, 3, 6, 5, 7, 9, 8, 11, 12, 13]  # iteration 1: 4-5-8-11; iteration 2: 6-7-9-10
    for event, before in zip(events, previous, strict=True):
        event["previousEventId"] = before
    reading = read(events, {}, "FAILED", "PaymentDeclined")
    errors = {(v.name, v.error) for v in reading.visits}
    assert errors >= {("Authorize", "OrderNotActive"), ("Authorize", "PaymentDeclined")}
    assert next(v for v in reading.visits if v.name == "Pay").error == "PaymentDeclined"
