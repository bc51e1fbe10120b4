"""sagalocal/eventbridge.py: a rule's Lambda targets get its matching events, and its other targets still get them
from moto (which raises NotImplementedError on a Lambda target: before the fix, no target got anything); SAM's
EventBridgeRule event becomes that rule; an execution's end is a Step Functions status change event
(sagalocal/stepfunctions.py, patch 11)."""

from __future__ import annotations

import datetime
import json
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.events.models import Rule

from sagalocal import eventbridge
from sagalocal.stepfunctions import status_change_event

REGION = "us-east-1"
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:park"


class Invoked:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def invoke_async(self, arn: str, event: Any) -> None:
        self.calls.append((arn, event))


@pytest.fixture
def invoked(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Lambda-target patch on its own, undone after the test (install() also hooks Step Functions' ends)."""
    monkeypatch.setattr(Rule, "send_to_targets", Rule.send_to_targets)
    service = Invoked()
    monkeypatch.setattr(eventbridge, "_installed", [service, "123456789012", REGION])
    eventbridge._lambda_targets()
    with mock_aws():
        yield service


def _rule(events: Any, targets: list[dict[str, Any]]) -> None:
    events.put_rule(Name="failed", EventPattern=json.dumps({"source": ["aws.states"],
                                                            "detail": {"status": ["FAILED"]}}))
    events.put_targets(Rule="failed", Targets=targets)


def _put(events: Any, status: str) -> None:
    events.put_events(Entries=[{"Source": "aws.states", "DetailType": "Step Functions Execution Status Change",
                                "Detail": json.dumps({"status": status, "executionArn": "arn:x"})}])


def test_a_lambda_target_and_a_queue_target_of_one_rule_both_get_the_event(invoked):
    events, sqs = boto3.client("events", region_name=REGION), boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="seen")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    _rule(events, [{"Id": "park", "Arn": FUNCTION}, {"Id": "queue", "Arn": queue_arn}])
    _put(events, "FAILED")
    assert [(arn, event["detail"]["status"]) for arn, event in invoked.calls] == [(FUNCTION, "FAILED")]
    messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
    assert [json.loads(m["Body"])["detail"]["status"] for m in messages] == ["FAILED"]
    assert len(events.list_targets_by_rule(Rule="failed")["Targets"]) == 2  # the rule keeps both targets


def test_a_rule_with_only_a_lambda_target_invokes_it_for_matching_events_only(invoked):
    events = boto3.client("events", region_name=REGION)
    _rule(events, [{"Id": "park", "Arn": FUNCTION}])
    _put(events, "SUCCEEDED")
    assert invoked.calls == []
    _put(events, "FAILED")
    assert [arn for arn, _ in invoked.calls] == [FUNCTION]


PATTERN = {"source": ["aws.states"], "detail-type": ["Step Functions Execution Status Change"],
           "detail": {"status": ["FAILED"]}}


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
        stop_date=started + datetime.timedelta(seconds=2), input_data={"order_id": "ord_1"}, output=None,
        error="PaymentGatewayUnavailable", cause="the gateway is down")
    entry = status_change_event(execution)
    assert (entry["Source"], entry["DetailType"], entry["Resources"]) == (
        "aws.states", "Step Functions Execution Status Change", [execution.exec_arn])
    detail = json.loads(entry["Detail"])
    assert detail == {"executionArn": execution.exec_arn, "stateMachineArn": execution.state_machine_arn,
                      "name": "ord_1", "status": "FAILED", "startDate": 1796540400123, "stopDate": 1796540402123,
                      "input": '{"order_id": "ord_1"}', "inputDetails": {"included": True}, "output": None,
                      "outputDetails": None, "error": "PaymentGatewayUnavailable", "cause": "the gateway is down"}
