"""RedriveExecution in the embedded engine (sagalocal/redrive.py), each rule AWS documents for it: a redrive continues
a FAILED, ABORTED or TIMED_OUT execution from its unsuccessful state, with that state's input, the definition the
execution started with and the same ARN; a Map or Parallel runs again only what did not succeed; the API's redrive
fields, filter, history event, context field and client token; and what it refuses.

The tasks are lambda:invoke tasks answered by a fake Lambda service (the seam the stack's Lambda service uses),
whose functions a test breaks and fixes."""

from __future__ import annotations

import datetime
import json
import threading
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from sagalocal import redrive as engine
from sagalocal import stepfunctions

ROLE = "arn:aws:iam::123456789012:role/sfn"
WAIT = 10  # seconds: the longest any execution here may take (they take milliseconds)


class Broken(Exception):
    """A function's error: the task fails with it as its error name."""


class FakeLambda:
    """The Lambda service the interpreter's lambda:invoke reaches: each function a Python callable of its payload.
    Every call is recorded, as (function, payload)."""

    def __init__(self) -> None:
        self.functions: dict[str, Callable[[Any], Any]] = {}
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def invoke_for_states(self, parameters: dict[str, Any], watch: Any = None) -> dict[str, Any]:
        name = str(parameters["FunctionName"])
        payload = parameters.get("Payload")
        payload = json.loads(payload) if isinstance(payload, bytes | str) else payload
        with self._lock:
            self.calls.append((name, payload))
        try:
            result = self.functions[name](payload)
        except Broken as exc:
            return {"StatusCode": 200, "FunctionError": "Unhandled",
                    "Payload": {"errorType": str(exc), "errorMessage": f"{name} is broken"}}
        return {"StatusCode": 200, "Payload": result}

    def called(self, name: str) -> list[Any]:
        with self._lock:
            return [payload for function, payload in self.calls if function == name]


class Switch:
    """A function that fails with `error` until fixed, and answers `answer(payload)` after."""

    def __init__(self, answer: Callable[[Any], Any] = lambda payload: {"ok": payload}, error: str = "Broken") -> None:
        self.broken = True
        self.answer = answer
        self.error = error

    def __call__(self, payload: Any) -> Any:
        if self.broken:
            raise Broken(self.error)
        return self.answer(payload)


@pytest.fixture
def fake():
    previous = stepfunctions._installed[0] if stepfunctions._installed else None
    service = FakeLambda()
    stepfunctions.install(service)
    yield service
    if previous is not None:  # the simulation's or the stack's, if this process installed one before
        stepfunctions.install(previous)


@pytest.fixture
def sfn(fake):
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield boto3.client("stepfunctions", region_name="us-east-1")


def task(function: str, payload: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": function, "Payload": payload or {"input.$": "$"}},
            "OutputPath": "$.Payload", **fields}


def machine(sfn, states: dict[str, Any], start_at: str, **fields: Any) -> str:
    definition = json.dumps({"StartAt": start_at, "States": states, **fields})
    return sfn.create_state_machine(name=f"m{uuid.uuid4().hex[:12]}", definition=definition,
                                    roleArn=ROLE)["stateMachineArn"]


def start(sfn, machine_arn: str, execution_input: Any = None, wait: bool = True) -> str:
    arn = sfn.start_execution(stateMachineArn=machine_arn, name=f"e{uuid.uuid4().hex[:12]}",
                              input=json.dumps(execution_input or {}))["executionArn"]
    if wait:
        assert stepfunctions.wait_for(arn, WAIT), "the execution did not end"
    return arn


def redriven(sfn, arn: str, **kwargs: Any) -> dict[str, Any]:
    """Redrive `arn`, wait for the redriven run to end, and describe the execution."""
    sfn.redrive_execution(executionArn=arn, **kwargs)
    assert stepfunctions.wait_for(arn, WAIT), "the redriven run did not end"
    return sfn.describe_execution(executionArn=arn)


def history(sfn, arn: str) -> list[dict[str, Any]]:
    return sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]


def until_recorded(sfn, machine_arn: str, count: int, recorded: Callable[[dict[str, Any]], bool]) -> None:
    """Until the history of the machine's execution holds `count` events that are `recorded` (from a function that
    the execution runs: what else it runs has ended, not merely returned)."""
    deadline = time.monotonic() + WAIT
    while True:
        arns = [e["executionArn"] for page in sfn.get_paginator("list_executions").paginate(
            stateMachineArn=machine_arn) for e in page["executions"]]
        if arns and sum(1 for event in history(sfn, arns[0]) if recorded(event)) >= count:
            return
        assert time.monotonic() < deadline, "the events were never recorded"
        time.sleep(0.01)


def entered(events: list[dict[str, Any]]) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in events if e["type"].endswith("StateEntered")]


def refusal(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]


TWO_STEPS = {"First": task("first", Next="Second"), "Second": task("second", End=True)}


# ---- where a redrive continues -------------------------------------------------------------------------------
def test_a_redrive_runs_the_failed_task_again_with_its_input_and_not_the_task_before_it(sfn, fake):
    fake.functions["first"] = lambda payload: {"made": "by first", "n": payload["input"]["n"]}
    fake.functions["second"] = second = Switch()
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"), {"n": 7})
    assert sfn.describe_execution(executionArn=arn)["status"] == "FAILED"
    first_run = history(sfn, arn)

    second.broken = False
    described = redriven(sfn, arn)

    assert described["status"] == "SUCCEEDED"
    assert described["executionArn"] == arn
    assert json.loads(described["output"]) == {"ok": {"input": {"made": "by first", "n": 7}}}
    assert len(fake.called("first")) == 1  # not run again
    assert fake.called("second") == [{"input": {"made": "by first", "n": 7}}] * 2  # the same input both times
    events = history(sfn, arn)
    assert events[:len(first_run)] == first_run  # the first run's events, results included, stay as they were
    assert entered(events) == ["First", "Second", "Second"]
    assert [e["executionArn"] for e in sfn.list_executions(stateMachineArn=described["stateMachineArn"])[
        "executions"]] == [arn]  # the same execution, not a new one


def test_a_redrive_uses_the_definition_the_execution_started_with(sfn, fake):
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = second = Switch(answer=lambda payload: payload)

    def states(version: str) -> dict[str, Any]:
        return {"First": task("first", Next="Second"), "Second": task("second", {"version": version}, End=True)}

    machine_arn = machine(sfn, states("v1"), "First")
    arn = start(sfn, machine_arn)
    sfn.update_state_machine(stateMachineArn=machine_arn, definition=json.dumps({"StartAt": "First",
                                                                                 "States": states("v2")}))
    second.broken = False
    described = redriven(sfn, arn)
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == {"version": "v1"}
    assert fake.called("second") == [{"version": "v1"}, {"version": "v1"}]


def test_a_task_that_failed_its_retries_gets_them_all_again(sfn, fake, monkeypatch):
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    monkeypatch.setattr(retrier_decl, "time", SimpleNamespace(sleep=lambda seconds: None))
    fake.functions["flaky"] = Switch()
    retry = [{"ErrorEquals": ["Broken"], "MaxAttempts": 2, "IntervalSeconds": 1}]
    arn = start(sfn, machine(sfn, {"Flaky": task("flaky", {"attempt.$": "$$.State.RetryCount"}, Retry=retry,
                                                 End=True)}, "Flaky"))
    assert redriven(sfn, arn)["status"] == "FAILED"
    assert fake.called("flaky") == [{"attempt": n} for n in (0, 1, 2, 0, 1, 2)]


def test_an_execution_that_failed_in_a_fail_state_enters_it_again_and_fails_again(sfn, fake):
    """AWS's table of redrive behaviours: a Fail state "reenters the Fail state and fails again"."""
    fake.functions["check"] = lambda payload: {"ok": False}
    states = {"Check": task("check", Next="Decide"),
              "Decide": {"Type": "Choice", "Choices": [{"Variable": "$.ok", "BooleanEquals": True, "Next": "Done"}],
                         "Default": "Refused"},
              "Refused": {"Type": "Fail", "Error": "Refused", "Cause": "not ok"},
              "Done": {"Type": "Succeed"}}
    arn = start(sfn, machine(sfn, states, "Check"))
    described = redriven(sfn, arn)
    assert (described["status"], described["error"], described["redriveCount"]) == ("FAILED", "Refused", 1)
    assert entered(history(sfn, arn)) == ["Check", "Decide", "Refused", "Refused"]
    assert len(fake.called("check")) == 1


# ---- Map and Parallel: only what did not succeed ---------------------------------------------------------------
def test_a_map_runs_again_only_the_iteration_that_failed_and_its_output_keeps_the_item_order(sfn, fake):
    broken = {"on": True}
    states = {"Each": {"Type": "Map", "ItemsPath": "$.items",
                       "ItemProcessor": {"StartAt": "Item", "States": {"Item": task("item", End=True)}},
                       "End": True}}
    machine_arn = machine(sfn, states, "Each")

    def item(payload: Any) -> Any:
        number = payload["input"]
        if number == 2 and broken["on"]:  # fail only once the iterations of items 1 and 3 succeeded
            until_recorded(sfn, machine_arn, 2, lambda event: event["type"] == "MapIterationSucceeded")
            raise Broken("Broken")
        return number * 10

    fake.functions["item"] = item
    arn = start(sfn, machine_arn, {"items": [1, 2, 3]})
    assert sfn.describe_execution(executionArn=arn)["status"] == "FAILED"
    assert sorted(p["input"] for p in fake.called("item")) == [1, 2, 3]

    broken["on"] = False
    described = redriven(sfn, arn)
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == [10, 20, 30]
    assert sorted(p["input"] for p in fake.called("item")) == [1, 2, 2, 3]  # item 2 again, and only it
    redriven_part = history(sfn, arn)
    redriven_part = redriven_part[next(i for i, e in enumerate(redriven_part) if e["type"] == "ExecutionRedriven"):]
    assert [e["mapIterationStartedEventDetails"]["index"] for e in redriven_part
            if e["type"] == "MapIterationStarted"] == [1]


def test_a_parallel_runs_again_only_the_branch_that_failed(sfn, fake):
    right = Switch(answer=lambda payload: "right")
    states = {"Both": {"Type": "Parallel", "End": True, "Branches": [
        {"StartAt": "Left", "States": {"Left": task("left", End=True)}},
        {"StartAt": "Right", "States": {"Right": task("right-slow", End=True)}}]}}
    machine_arn = machine(sfn, states, "Both")

    def slow_right(payload: Any) -> Any:  # it answers once the left branch has ended
        until_recorded(sfn, machine_arn, 1,
                       lambda event: event.get("stateExitedEventDetails", {}).get("name") == "Left")
        return right(payload)

    fake.functions["left"] = lambda payload: "left"
    fake.functions["right-slow"] = slow_right
    arn = start(sfn, machine_arn)
    assert sfn.describe_execution(executionArn=arn)["status"] == "FAILED"
    right.broken = False
    described = redriven(sfn, arn)
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == ["left", "right"]
    assert (len(fake.called("left")), len(fake.called("right-slow"))) == (1, 2)


# ---- the API's fields, filter, history event, context field, token ---------------------------------------------
def test_describe_and_list_give_the_redrive_fields_and_list_filters_on_them(sfn, fake):
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = second = Switch()
    machine_arn = machine(sfn, TWO_STEPS, "First")
    arns = [start(sfn, machine_arn) for _ in range(3)]
    before = sfn.describe_execution(executionArn=arns[0])
    assert (before["redriveCount"], before["redriveStatus"]) == (0, "REDRIVABLE")
    assert {"redriveDate", "redriveStatusReason"}.isdisjoint(before)

    second.broken = False
    date = sfn.redrive_execution(executionArn=arns[1])["redriveDate"]
    assert stepfunctions.wait_for(arns[1], WAIT)
    after = sfn.describe_execution(executionArn=arns[1])
    assert (after["status"], after["redriveCount"], after["redriveDate"]) == ("SUCCEEDED", 1, date)
    assert (after["redriveStatus"], after["redriveStatusReason"]) == (
        "NOT_REDRIVABLE", "Execution is SUCCEEDED and cannot be redriven")

    def listed(**kwargs: Any) -> list[dict[str, Any]]:
        pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=machine_arn, **kwargs)
        return [e for page in pages for e in page["executions"]]

    assert [(e["executionArn"], e["redriveCount"], e["redriveDate"]) for e in listed(redriveFilter="REDRIVEN")] == [
        (arns[1], 1, date)]
    not_redriven = listed(redriveFilter="NOT_REDRIVEN", PaginationConfig={"PageSize": 1})
    assert sorted(e["executionArn"] for e in not_redriven) == sorted([arns[0], arns[2]])
    assert all(e["redriveCount"] == 0 and "redriveDate" not in e for e in not_redriven)
    assert len(listed()) == 3
    assert [e["executionArn"] for e in listed(statusFilter="FAILED", redriveFilter="REDRIVEN")] == []


def test_the_history_goes_on_with_an_execution_redriven_event(sfn, fake):
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = Switch()
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
    assert redriven(sfn, arn)["status"] == "FAILED"
    assert redriven(sfn, arn)["status"] == "FAILED"
    events = history(sfn, arn)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    ends = [(e["type"], e.get("executionRedrivenEventDetails")) for e in events if e["type"].startswith("Execution")]
    assert ends == [("ExecutionStarted", None), ("ExecutionFailed", None),
                    ("ExecutionRedriven", {"redriveCount": 1}), ("ExecutionFailed", None),
                    ("ExecutionRedriven", {"redriveCount": 2}), ("ExecutionFailed", None)]
    for index, event in enumerate(events):
        if event["type"] == "ExecutionRedriven":
            assert event["previousEventId"] == events[index - 1]["id"]
            assert events[index + 1]["type"] == "TaskStateEntered"
            assert events[index + 1]["previousEventId"] == event["id"]


def test_the_context_object_gives_the_redrive_count(sfn, fake):
    fake.functions["count"] = Switch()
    states = {"Count": task("count", {"redrives.$": "$$.Execution.RedriveCount"}, End=True)}
    arn = start(sfn, machine(sfn, states, "Count"))
    redriven(sfn, arn)
    fake.functions["count"].broken = False
    assert redriven(sfn, arn)["status"] == "SUCCEEDED"
    assert fake.called("count") == [{"redrives": 0}, {"redrives": 1}, {"redrives": 2}]


def test_a_client_token_used_again_gets_the_same_answer_and_redrives_nothing(sfn, fake):
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = Switch()
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
    first = sfn.redrive_execution(executionArn=arn, clientToken="token-1")["redriveDate"]
    assert stepfunctions.wait_for(arn, WAIT)
    assert sfn.redrive_execution(executionArn=arn, clientToken="token-1")["redriveDate"] == first
    assert sfn.describe_execution(executionArn=arn)["redriveCount"] == 1
    assert len(fake.called("second")) == 2
    assert sfn.redrive_execution(executionArn=arn, clientToken="token-2")["redriveDate"] > first
    assert stepfunctions.wait_for(arn, WAIT)
    assert sfn.describe_execution(executionArn=arn)["redriveCount"] == 2


def test_a_client_token_is_forgotten_after_15_minutes(sfn, fake, monkeypatch):
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = Switch()
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
    redriven(sfn, arn, clientToken="token")
    later = stepfunctions.NOW() + engine.TOKEN_VALID_FOR
    monkeypatch.setattr(stepfunctions, "NOW", lambda: later)
    assert redriven(sfn, arn, clientToken="token")["redriveCount"] == 2


# ---- what is redrivable ----------------------------------------------------------------------------------------
def test_a_running_or_succeeded_execution_is_not_redrivable_nor_an_unknown_one(sfn, fake):
    release = threading.Event()
    fake.functions["slow"] = lambda payload: release.wait(WAIT)
    arn = start(sfn, machine(sfn, {"Slow": task("slow", End=True)}, "Slow"), wait=False)
    try:
        assert refusal(lambda: sfn.redrive_execution(executionArn=arn)) == (
            "ExecutionNotRedrivable", "Execution is RUNNING and cannot be redriven")
        described = sfn.describe_execution(executionArn=arn)
        assert (described["redriveStatus"], described["redriveStatusReason"]) == (
            "NOT_REDRIVABLE", "Execution is RUNNING and cannot be redriven")
    finally:
        release.set()
    assert stepfunctions.wait_for(arn, WAIT)
    assert refusal(lambda: sfn.redrive_execution(executionArn=arn)) == (
        "ExecutionNotRedrivable", "Execution is SUCCEEDED and cannot be redriven")
    assert refusal(lambda: sfn.redrive_execution(executionArn=arn + "-unknown"))[0] == "ExecutionDoesNotExist"


def test_an_execution_that_ended_14_days_ago_is_not_redrivable(sfn, fake, monkeypatch):
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = Switch()
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
    ended = sfn.describe_execution(executionArn=arn)["stopDate"] + datetime.timedelta(milliseconds=1)  # to the ms
    monkeypatch.setattr(stepfunctions, "NOW", lambda: ended + engine.REDRIVABLE_PERIOD - engine.TOKEN_VALID_FOR)
    assert sfn.describe_execution(executionArn=arn)["redriveStatus"] == "REDRIVABLE"
    monkeypatch.setattr(stepfunctions, "NOW", lambda: ended + engine.REDRIVABLE_PERIOD)
    assert refusal(lambda: sfn.redrive_execution(executionArn=arn)) == (
        "ExecutionNotRedrivable", "Execution redrivable period exceeded")
    assert sfn.describe_execution(executionArn=arn)["redriveStatusReason"] == "Execution redrivable period exceeded"


def test_an_execution_with_24999_events_is_not_redrivable(sfn, fake):
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = Switch()
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
    execution = stepfunctions_parser_backends["123456789012"]["us-east-1"].describe_execution(arn)
    events = execution.exec_worker.env.event_manager._history_event_list
    events.extend([events[-1]] * (engine.HISTORY_LIMIT - len(events)))
    assert refusal(lambda: sfn.redrive_execution(executionArn=arn)) == (
        "ExecutionNotRedrivable", "Execution history event limit exceeded")


def first_call_held(release: threading.Event, calls: list[Any]) -> Callable[[Any], Any]:
    """A function whose first call waits for `release` (held past a stop or a time-out); later calls answer at once."""
    def slow(payload: Any) -> Any:
        calls.append(payload)
        if len(calls) == 1:
            release.wait(WAIT)
        return {"done": True}

    return slow


def test_an_aborted_execution_is_redrivable_and_runs_the_stopped_task_again(sfn, fake):
    release = threading.Event()
    calls: list[Any] = []
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = first_call_held(release, calls)
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"), wait=False)
    deadline = time.monotonic() + WAIT
    while not calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sfn.stop_execution(executionArn=arn, error="Stopped", cause="by the test")
    release.set()
    assert stepfunctions.wait_for(arn, WAIT)
    assert sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"
    described = redriven(sfn, arn)
    assert (described["status"], json.loads(described["output"])) == ("SUCCEEDED", {"done": True})
    assert (len(fake.called("first")), len(calls)) == (1, 2)


def test_a_timed_out_execution_is_redrivable_and_its_timeout_counts_from_the_redrive(sfn, fake):
    release = threading.Event()
    calls: list[Any] = []
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = first_call_held(release, calls)  # past the machine's TimeoutSeconds
    try:
        # 3 s: the redriven run (two short steps) must end within it on a loaded machine; the held call outlasts it
        arn = start(sfn, machine(sfn, TWO_STEPS, "First", TimeoutSeconds=3))
        assert sfn.describe_execution(executionArn=arn)["status"] == "TIMED_OUT"
        described = redriven(sfn, arn)
    finally:
        release.set()
    assert (described["status"], json.loads(described["output"])) == ("SUCCEEDED", {"done": True})
    assert (len(fake.called("first")), len(calls)) == (1, 2)
    types = [e["type"] for e in history(sfn, arn)]
    assert types.count("ExecutionTimedOut") == 1
    assert types.index("ExecutionTimedOut") + 1 == types.index("ExecutionRedriven")


# ---- concurrency, the end announced again, in-process callers ---------------------------------------------------
def test_racing_redrives_redrive_once_and_wait_for_waits_for_the_redriven_run(sfn, fake):
    release = threading.Event()
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = second = Switch(answer=lambda payload: release.wait(WAIT))
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
    second.broken = False
    gate = threading.Barrier(4)
    results: list[Any] = []

    def one() -> None:
        client = boto3.client("stepfunctions", region_name="us-east-1")
        gate.wait()
        try:
            results.append(client.redrive_execution(executionArn=arn)["redriveDate"])
        except ClientError as exc:
            results.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    try:
        assert sorted(map(str, results)).count("ExecutionNotRedrivable") == 3, results
        assert not stepfunctions.wait_for(arn, 0.05)  # the redriven run has not ended
        described = sfn.describe_execution(executionArn=arn)
        assert (described["status"], described["redriveCount"]) == ("RUNNING", 1)
        assert {"stopDate", "error", "cause"}.isdisjoint(described)
    finally:
        release.set()
    assert stepfunctions.wait_for(arn, WAIT)
    assert sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED"


def test_a_stop_of_the_redriven_run_aborts_it(sfn, fake):
    release = threading.Event()
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = second = Switch(answer=lambda payload: release.wait(WAIT))
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
    second.broken = False
    sfn.redrive_execution(executionArn=arn)
    sfn.stop_execution(executionArn=arn)
    release.set()
    assert stepfunctions.wait_for(arn, WAIT)
    described = sfn.describe_execution(executionArn=arn)
    assert (described["status"], described["redriveStatus"]) == ("ABORTED", "REDRIVABLE")


def test_redrive_in_process_without_http(sfn, fake):
    fake.functions["first"] = lambda payload: {}
    fake.functions["second"] = second = Switch()
    arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
    second.broken = False
    date = stepfunctions.redrive(arn)
    assert stepfunctions.wait_for(arn, WAIT)
    described = sfn.describe_execution(executionArn=arn)
    assert described["status"] == "SUCCEEDED"
    assert abs(described["redriveDate"] - date) < datetime.timedelta(milliseconds=1)  # the API gives milliseconds


def test_redrive_through_the_stacks_endpoint(fake, monkeypatch):
    """boto3's redrive_execution against the embedded stack's AWS endpoint (moto's server), over HTTP."""
    from moto.core.config import default_user_config

    from sagalocal.endpoint import AwsEndpoint
    from sagalocal.stack import free_port

    monkeypatch.setitem(default_user_config["stepfunctions"], "execute_state_machine", True)
    endpoint = AwsEndpoint(free_port(), free_port(), {})
    endpoint.start()
    try:
        sfn = boto3.client("stepfunctions", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{endpoint.port}",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        fake.functions["first"] = lambda payload: {}
        fake.functions["second"] = second = Switch()
        arn = start(sfn, machine(sfn, TWO_STEPS, "First"))
        second.broken = False
        described = redriven(sfn, arn)
        assert (described["status"], described["redriveCount"]) == ("SUCCEEDED", 1)
        assert refusal(lambda: sfn.redrive_execution(executionArn=arn)) == (
            "ExecutionNotRedrivable", "Execution is SUCCEEDED and cannot be redriven")
    finally:
        endpoint.stop()


# ---- where a redrive continues when no state is open ----------------------------------------------------------
def test_with_no_state_open_the_run_continues_after_the_last_state_that_exited():
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    definition = {"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Next": "Pick"},
        "Pick": {"Type": "Choice", "Choices": [{"Variable": "$.x", "NumericEquals": 1, "Next": "B"}],
                 "Default": "B"},
        "B": {"Type": "Pass", "End": True}}}
    program = AmazonStateLanguageParser.parse(json.dumps(definition))[0]

    def event(kind: str, name: str, data: Any) -> dict[str, Any]:
        key = "input" if kind.endswith("Entered") else "output"
        details = "stateEnteredEventDetails" if kind.endswith("Entered") else "stateExitedEventDetails"
        return {"id": 0, "type": kind, details: {"name": name, key: json.dumps(data)}}

    a = [event("PassStateEntered", "A", {"x": 1}), event("PassStateExited", "A", {"x": 2})]
    pick = [event("ChoiceStateEntered", "Pick", {"x": 2}), event("ChoiceStateExited", "Pick", {"x": 2})]
    assert engine.resume_point([], program, {"x": 0}) == ("A", {"x": 0})
    assert engine.resume_point(a, program, {"x": 0}) == ("Pick", {"x": 2})
    assert engine.resume_point(a + pick, program, {"x": 0}) == ("Pick", {"x": 2})  # the Choice evaluated again
    b = [event("PassStateEntered", "B", {"x": 2}), event("PassStateExited", "B", {"x": 2})]
    assert engine.resume_point(a + pick + b, program, {"x": 0}) is None
