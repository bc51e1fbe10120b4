"""sagalocal/stepfunctions.py: one execution per name, however many StartExecutions of it race, and a stopped
execution ends ABORTED whatever its task did meanwhile (both as on AWS); GetExecutionHistory written without moto's
generic serializer gives the same answer."""

from __future__ import annotations

import copy
import json
import threading
import time
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from sagalocal import stepfunctions

stepfunctions._one_execution_per_name()  # these patches alone: the others need a stack's Lambda service
stepfunctions._stop_is_final()
stepfunctions._history_without_the_generic_serializer()

# The execution outlasts every racer however loaded the machine (a 2 s one ended before late racers started, which
# then met a closed execution: ExecutionAlreadyExists for the same input); the fixture stops what still runs.
DEFINITION = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 60, "End": True}}})
RACERS = 12


@pytest.fixture
def sfn(monkeypatch):
    """A state machine; moto's StartExecution made slow between its look for the name and its append (it
    deep-copies the state machine there), so that the racers overlap on any machine."""
    from moto.stepfunctions.parser import models

    def slow_deepcopy(*args, **kwargs):
        time.sleep(0.05)
        return copy.deepcopy(*args, **kwargs)

    monkeypatch.setattr(models, "copy", SimpleNamespace(deepcopy=slow_deepcopy))
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        client = boto3.client("stepfunctions", region_name="us-east-1")
        arn = client.create_state_machine(name="race", definition=DEFINITION,
                                          roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
        yield client, arn
        for execution in executions(client, arn):
            if execution["status"] == "RUNNING":
                client.stop_execution(executionArn=execution["executionArn"])


def race(start) -> list:
    """RACERS threads call `start` at once; what each returned or raised."""
    results: list = []
    gate = threading.Barrier(RACERS)

    def one() -> None:
        gate.wait()
        try:
            results.append(start())
        except Exception as exc:  # noqa: BLE001 - the error is the result
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def executions(client, arn) -> list[dict]:
    return [e for page in client.get_paginator("list_executions").paginate(stateMachineArn=arn)
            for e in page["executions"]]


def test_racing_starts_of_one_name_and_input_start_one_execution(sfn):
    client, arn = sfn
    results = race(lambda: client.start_execution(stateMachineArn=arn, name="ord_1", input='{"n": 1}'))
    assert [r for r in results if isinstance(r, Exception)] == []
    assert len({r["executionArn"] for r in results}) == 1
    assert [e["name"] for e in executions(client, arn)] == ["ord_1"]


def test_racing_starts_of_one_name_with_other_inputs_start_one_and_refuse_the_rest(sfn):
    client, arn = sfn
    counter = iter(range(RACERS))
    results = race(lambda: client.start_execution(stateMachineArn=arn, name="ord_2",
                                                  input=json.dumps({"n": next(counter)})))
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == RACERS - 1
    # By code, not class: racing threads that meet a client's first error each build its exception classes
    # (botocore's client.exceptions is built lazily, without a lock), so one ExecutionAlreadyExists is not another.
    assert all(isinstance(r, ClientError) and r.response["Error"]["Code"] == "ExecutionAlreadyExists"
               for r in refused), [repr(r) for r in refused]
    assert [e["name"] for e in executions(client, arn)] == ["ord_2"]


def test_other_names_still_start_their_own_executions(sfn):
    client, arn = sfn
    counter = iter(range(RACERS))
    race(lambda: client.start_execution(stateMachineArn=arn, name=f"ord_{next(counter)}", input="{}"))
    assert sorted(e["name"] for e in executions(client, arn)) == sorted(f"ord_{n}" for n in range(RACERS))


CAUGHT = json.dumps({"StartAt": "Read", "States": {
    "Read": {"Type": "Task", "Resource": "arn:aws:states:::aws-sdk:dynamodb:getItem",
             "Parameters": {"TableName": "missing", "Key": {"pk": {"S": "1"}}},
             "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}], "End": True},
    "Caught": {"Type": "Pass", "End": True}}})


def test_an_execution_stopped_as_its_task_fails_is_aborted_not_failed_with_the_tasks_error(monkeypatch):
    """StopExecution lands between a task's failure and its Catch (moved there deterministically here)."""
    from moto.stepfunctions.parser.asl.component.state.exec.execute_state import ExecutionState

    handle_catch = ExecutionState._handle_catch

    def stopped_first(self, env, failure_event):
        execution = env.states.context_object.context_object_data["Execution"]["Id"]
        boto3.client("stepfunctions", region_name="us-east-1").stop_execution(
            executionArn=execution, error="LeaseExpired", cause="stopped by the test")
        handle_catch(self, env, failure_event)

    monkeypatch.setattr(ExecutionState, "_handle_catch", stopped_first)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        client = boto3.client("stepfunctions", region_name="us-east-1")
        machine = client.create_state_machine(name="stopped", definition=CAUGHT,
                                              roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
        arn = client.start_execution(stateMachineArn=machine, name="ord_stopped")["executionArn"]
        deadline = time.monotonic() + 20
        while (described := client.describe_execution(executionArn=arn))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the execution never ended"
            time.sleep(0.05)
        events = client.get_execution_history(executionArn=arn)["events"]
    assert described["status"] == "ABORTED", described
    assert described.get("error") != "DynamoDb.ResourceNotFoundException"
    assert events[-1]["type"] == "ExecutionAborted"
    assert "TaskFailed" in [e["type"] for e in events]  # the task did fail: the stop came after it



# Every kind of state, and a task that fails (its Retry, its Catch), so the histories hold every kind of event the
# saga's do: Pass, Wait, Map (and its iterations), Parallel (and its branches), Task, Choice, Succeed and Fail.
EVERY_KIND = json.dumps({"StartAt": "Pass", "States": {
    "Pass": {"Type": "Pass", "Result": [1, 2, 3], "ResultPath": "$.items", "Next": "Wait"},
    "Wait": {"Type": "Wait", "Seconds": 0, "Next": "Map"},
    "Map": {"Type": "Map", "ItemsPath": "$.items", "ResultPath": "$.mapped", "Next": "Parallel",
            "Iterator": {"StartAt": "Each", "States": {"Each": {"Type": "Pass", "End": True}}}},
    "Parallel": {"Type": "Parallel", "ResultPath": "$.branches", "Next": "Read", "Branches": [
        {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}},
        {"StartAt": "B", "States": {"B": {"Type": "Pass", "End": True}}}]},
    "Read": {"Type": "Task", "Resource": "arn:aws:states:::aws-sdk:dynamodb:getItem",
             "Parameters": {"TableName": "missing", "Key": {"pk": {"S": "1"}}},
             "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 1, "IntervalSeconds": 1}],
             "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Choice"}], "End": True},
    "Choice": {"Type": "Choice", "Choices": [{"Variable": "$.fail", "BooleanEquals": True, "Next": "Fail"}],
               "Default": "Done"},
    "Done": {"Type": "Succeed"},
    "Fail": {"Type": "Fail", "Error": "Failed", "Cause": "on purpose"}}})


def test_the_history_written_directly_is_the_one_moto_s_serializer_writes(monkeypatch):
    from moto.stepfunctions.responses import StepFunctionResponse

    direct = StepFunctionResponse.get_execution_history
    written_by_wire = []  # (not moto's serializer, which the direct answer falls back to on a shape it cannot write)
    wire = stepfunctions.wire
    monkeypatch.setattr(stepfunctions, "wire", lambda value, shape: written_by_wire.append(shape) or wire(value, shape))
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        client = boto3.client("stepfunctions", region_name="us-east-1")
        role = "arn:aws:iam::123456789012:role/sfn"
        machine = client.create_state_machine(name="every-kind", definition=EVERY_KIND, roleArn=role)
        waits = client.create_state_machine(name="waits", definition=DEFINITION, roleArn=role)
        arns = [client.start_execution(stateMachineArn=machine["stateMachineArn"], name=f"ord_{fail}",
                                       input=json.dumps({"fail": fail}))["executionArn"] for fail in (False, True)]
        stopped = client.start_execution(stateMachineArn=waits["stateMachineArn"], name="ord_stopped")["executionArn"]
        deadline = time.monotonic() + 30
        while "WaitStateEntered" not in [event["type"] for event in
                                         client.get_execution_history(executionArn=stopped)["events"]]:
            assert time.monotonic() < deadline, "the execution never started"
            time.sleep(0.05)
        client.stop_execution(executionArn=stopped, error="Operator", cause="stopped by the test")
        for arn in [*arns, stopped]:
            while client.get_execution_history(executionArn=arn)["events"][-1]["type"] not in (
                    "ExecutionSucceeded", "ExecutionFailed", "ExecutionAborted"):
                assert time.monotonic() < deadline, "the execution never ended"
                time.sleep(0.05)
        written_by_wire.clear()
        written = {arn: client.get_execution_history(executionArn=arn) for arn in [*arns, stopped]}
        assert [shape.name for shape in written_by_wire].count("GetExecutionHistoryOutput") == 3
        monkeypatch.setattr(StepFunctionResponse, "get_execution_history", direct.moto)
        serialized = {arn: client.get_execution_history(executionArn=arn) for arn in [*arns, stopped]}
    for arn in written:
        del written[arn]["ResponseMetadata"], serialized[arn]["ResponseMetadata"]
    assert written == serialized
    kinds = {event["type"] for history in written.values() for event in history["events"]}
    assert {"ExecutionStarted", "PassStateEntered", "WaitStateExited", "MapStateStarted", "MapIterationSucceeded",
            "ParallelStateSucceeded", "TaskScheduled", "TaskFailed", "ChoiceStateEntered", "SucceedStateEntered",
            "FailStateEntered", "ExecutionSucceeded", "ExecutionFailed", "ExecutionAborted"} <= kinds, kinds

def test_the_interpreter_s_json_deep_copy_is_copy_deepcopy_s():
    """sagalocal/stepfunctions.py copies the interpreter's JSON container by container (json_deepcopy): the same
    copy as copy.deepcopy's, shared containers shared once in it, a list that holds itself holding its copy, values
    of other types (tuples, datetimes, objects) copied by copy.deepcopy; nothing shared with the original."""
    import datetime

    shared = {"sku": "SKU-1", "lines": [1, 2.5, True, None]}
    looped: list[object] = ["me"]
    looped.append(looped)
    other = SimpleNamespace(x=[1])
    value = {"a": shared, "b": shared, "c": [shared, {"d": looped}], "t": (shared, 1), "when": datetime.datetime(
        2027, 1, 1, tzinfo=datetime.UTC), "object": other, "again": other, "é": "ü", "n": 10**30, "f": -0.0}

    def aliases(copied: object) -> list[tuple[int, int]]:
        """Which places of the copy hold one object (by the order they are first met), and what is shared with
        the original."""
        seen: dict[int, int] = {}
        out: list[tuple[int, int]] = []

        def walk(node: object) -> None:
            if isinstance(node, (dict, list, tuple, SimpleNamespace, datetime.datetime)):
                new = id(node) not in seen
                first = seen.setdefault(id(node), len(seen))
                out.append((first, len(seen)))
                if not new:
                    return
                items = node.values() if isinstance(node, dict) else vars(node).values() if isinstance(
                    node, SimpleNamespace) else node if isinstance(node, (list, tuple)) else []
                for item in items:
                    walk(item)

        walk(copied)
        return out

    ours, theirs = stepfunctions.json_deepcopy(value), copy.deepcopy(value)
    assert repr(ours) == repr(theirs)
    assert aliases(ours) == aliases(theirs)
    assert ours["c"][1]["d"][1] is ours["c"][1]["d"]
    originals = {id(x) for x in (shared, shared["lines"], looped, value["c"], value["c"][1], other, other.x)}
    assert not originals & {id(x) for x in (ours["a"], ours["a"]["lines"], ours["c"][1]["d"], ours["c"], ours["object"],
                                            ours["object"].x)}
    memo: dict[int, object] = {}
    assert repr(stepfunctions.json_deepcopy(value, memo)) == repr(theirs)
    assert memo  # given a memo, copy.deepcopy itself, which fills it
