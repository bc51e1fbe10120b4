"""sagalocal/stepfunctions.py: one execution per name, however many StartExecutions of it race (as on AWS)."""

from __future__ import annotations

import copy
import json
import threading
import time
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from sagalocal import stepfunctions

stepfunctions._one_execution_per_name()  # the patch alone: the others need a stack's Lambda service

DEFINITION = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 2, "End": True}}})
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
    assert all(isinstance(r, client.exceptions.ExecutionAlreadyExists) for r in refused)
    assert [e["name"] for e in executions(client, arn)] == ["ord_2"]


def test_other_names_still_start_their_own_executions(sfn):
    client, arn = sfn
    counter = iter(range(RACERS))
    race(lambda: client.start_execution(stateMachineArn=arn, name=f"ord_{next(counter)}", input="{}"))
    assert sorted(e["name"] for e in executions(client, arn)) == sorted(f"ord_{n}" for n in range(RACERS))
