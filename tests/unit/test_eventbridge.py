"""sagalocal/eventbridge.py: a rule's Lambda target gets the event (moto delivers to queues, not to functions),
its other targets still get theirs, and SAM's EventBridgeRule event becomes that rule; an execution's end is a
Step Functions status change event (sagalocal/stepfunctions.py, patch 11)."""

from __future__ import annotations

import datetime
import json
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from sagalocal import eventbridge
from sagalocal.stepfunctions import status_change_event

ACCOUNT, REGION = "123456789012", "us-east-1"
FUNCTION = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:park"
PATTERN = {"source": ["aws.states"], "detail-type": ["Step Functions Execution Status Change"],
           "detail": {"status": ["FAILED"]}}


class FakeLambda:
    def __init__(self) -> None:
        self.invoked: list[tuple[str, dict]] = []

    def invoke_async(self, name_or_arn: str, event: dict) -> None:
        self.invoked.append((name_or_arn, event))


@pytest.fixture
def events():
    service = FakeLambda()
    with mock_aws():
        eventbridge.install(service, ACCOUNT, REGION)
        client = boto3.client("events", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        queue = sqs.create_queue(QueueName="audit")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        wiring = eventbridge.rule_of_function_event(FUNCTION, "ExecutionFailed", {"Pattern": PATTERN})
        client.put_rule(Name="park", **wiring["rule"])
        client.put_targets(Rule="park", Targets=[wiring["target"], {"Id": "audit", "Arn": queue_arn}])
        yield SimpleNamespace(client=client, sqs=sqs, queue=queue, service=service)


def status(value: str) -> dict:
    return {"Source": "aws.states", "DetailType": "Step Functions Execution Status Change",
            "Detail": json.dumps({"executionArn": "arn:x", "status": value})}


def test_a_matching_event_reaches_the_function_and_the_other_targets(events):
    events.client.put_events(Entries=[status("FAILED")])
    ((arn, event),) = events.service.invoked
    assert arn == FUNCTION
    assert (event["source"], event["detail-type"], event["detail"]) == (
        "aws.states", "Step Functions Execution Status Change", {"executionArn": "arn:x", "status": "FAILED"})
    (message,) = events.sqs.receive_message(QueueUrl=events.queue)["Messages"]
    assert json.loads(message["Body"])["detail"]["status"] == "FAILED"


def test_an_event_the_pattern_does_not_match_reaches_no_target(events):
    events.client.put_events(Entries=[status("SUCCEEDED")])
    assert events.service.invoked == []
    assert "Messages" not in events.sqs.receive_message(QueueUrl=events.queue)


def test_the_sam_event_becomes_a_rule_with_the_function_as_its_target():
    wiring = eventbridge.rule_of_function_event(FUNCTION, "ExecutionFailed", {
        "Pattern": PATTERN, "RetryPolicy": {"MaximumRetryAttempts": 185}, "EventBusName": "bus"})
    assert json.loads(wiring["rule"]["EventPattern"]) == PATTERN
    assert wiring["rule"]["EventBusName"] == "bus"
    assert wiring["target"] == {"Id": "ExecutionFailedLambdaTarget", "Arn": FUNCTION,
                                "RetryPolicy": {"MaximumRetryAttempts": 185}}


def test_an_execution_s_end_is_the_status_change_event_aws_documents():
    started = datetime.datetime(2026, 12, 6, 7, 0, 0, 123000, tzinfo=datetime.UTC)
    execution = SimpleNamespace(
        exec_arn="arn:aws:states:us-east-1:123456789012:execution:m:ord_1",
        state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:m", name="ord_1",
        exec_status=SimpleNamespace(value="FAILED"), start_date=started,
        stop_date=started + datetime.timedelta(seconds=2), input_data={"order_id": "ord_1"}, output=None)
    entry = status_change_event(execution)
    assert (entry["Source"], entry["DetailType"], entry["Resources"]) == (
        "aws.states", "Step Functions Execution Status Change", [execution.exec_arn])
    detail = json.loads(entry["Detail"])
    assert detail == {"executionArn": execution.exec_arn, "stateMachineArn": execution.state_machine_arn,
                      "name": "ord_1", "status": "FAILED", "startDate": 1796540400123, "stopDate": 1796540402123,
                      "input": '{"order_id": "ord_1"}', "inputDetails": {"included": True}, "output": None,
                      "outputDetails": None}
