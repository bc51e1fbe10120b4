"""Parking and redriving at the edges an independent review found (docs/operations.md "Parked sagas"): a late
attempt of the compensation that parked, ParkSaga dying halfway, the operator's script run after a dry run, its
acknowledgement, and `sagalocal redrive`'s exit status. Each test failed on the first version of the design."""

from __future__ import annotations

import datetime
import json
import time
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError

from scripts.redrive_parked import Operator
from tests.unit.helpers import EXECUTION, failed_execution_event, invoke, order, orders_of

STARTED = datetime.datetime(2026, 12, 6, 7, 0, 0, 123000, tzinfo=datetime.UTC)
OWNER = f"{EXECUTION}#2026-12-06T07:00:00.123Z"
FAR_FUTURE_MS = int(time.time() * 1000) + 10 * 86_400_000


def _queue(monkeypatch) -> str:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="parked.fifo", Attributes={"FifoQueue": "true",
                                                                 "ContentBasedDeduplication": "false"})["QueueUrl"]
    monkeypatch.setenv("PARKED_SAGAS_QUEUE_URL", url)
    return url


def _operator(queue: str) -> Operator:
    import os

    outputs = {"OrdersTableName": os.environ["ORDERS_TABLE"], "ParkedSagasQueueUrl": queue,
               "StateMachineArn": EXECUTION.replace(":execution:", ":stateMachine:").rsplit(":", 1)[0]}
    return Operator(outputs, client=lambda service: boto3.client(service, region_name="us-east-1"), timeout=5)


def _authorized_saga(aws, handlers, context) -> dict:
    from tests.unit.helpers import new_saga

    saga = new_saga(aws)
    for name in ("reserve_inventory", "authorize_payment"):
        saga = invoke(handlers(name), context, saga, execution=OWNER)
    return {**saga, "failures": {"AuthorizePayment": {"Error": "States.Timeout", "Cause": "x"}}}


def _park_module(handlers, monkeypatch):
    park = handlers("park_saga")
    monkeypatch.setattr(park, "_sfn", SimpleNamespace(describe_execution=lambda executionArn: {
        "status": "FAILED", "error": "PaymentGatewayUnavailable", "cause": "the gateway is down", "redriveCount": 0}))
    return park


def _findable(aws, queue: str, operator: Operator) -> dict:
    """Where an operator or the reaper could find the unfinished order: the reaper's index, the tool's listing."""
    item = order(aws)
    abandoned = [e["order_id"] for e in orders_of(aws).abandoned(FAR_FUTURE_MS)]
    outcomes = operator.run([])  # the runbook's command: every parked saga on the queue
    return {"saga_status": item["saga_status"], "in_reaper_index": "ord_1" in abandoned,
            "tool": [o.line() for o in outcomes]}


def test_a_late_compensation_attempt_after_parking_leaves_the_order_parked(aws, handlers, context, monkeypatch):
    """VoidPayment's last attempt is still running when Step Functions gives up on it (States.Timeout:
    Lambda keeps running; a cold start's init is outside the function's 14 s timeout, the task's is 18 s); the
    execution fails and ParkSaga parks the order (FAILED, `active` removed). The late attempt then writes its
    compensation_update, whose condition accepts FAILED (COMPENSABLE): the order is COMPENSATING again, but without
    `active`. The reaper never sees it (no index entry), the operator's script refuses it ("not parked": it is not
    FAILED), the console's Parked page does not list it (saga FAILED only). ReleaseInventory and CancelOrder never
    run: stock reserved until its TTL, the order RECEIVED forever, no OrderCancelled."""
    queue = _queue(monkeypatch)
    failed = _authorized_saga(aws, handlers, context)
    park = _park_module(handlers, monkeypatch)
    void = handlers("void_payment")
    real_reverse = void.payments.gateway.reverse

    def reverse_while_the_execution_fails(key):
        # This attempt was the last; Step Functions timed it out, the execution failed, EventBridge ran ParkSaga.
        assert park.lambda_handler(failed_execution_event(STARTED), context) == {"parked": True}
        assert order(aws)["saga_status"] == "FAILED"
        return real_reverse(key)

    monkeypatch.setattr(void.payments.gateway, "reverse", reverse_while_the_execution_fails)
    invoke(void, context, failed, execution=OWNER)  # the late attempt finishes its write

    found = _findable(aws, queue, _operator(queue))
    # Parked (FAILED, which the tool redrives) or in the reaper's index: never neither.
    assert found["saga_status"] == "FAILED" or found["in_reaper_index"], f"stranded: {found}"


def test_a_park_saga_that_cannot_send_its_message_parks_nothing_and_the_reaper_finds_the_order(aws, handlers, context,
                                                                                        monkeypatch):
    """ParkSaga writes FAILED and removes `active` first, then sends the message, then counts SagaParked
    (the alarm's metric). If SendMessage fails on all three attempts Lambda makes of an asynchronous invocation (no
    on-failure destination nor DLQ on ParkSaga, no alarm on its errors), the order is parked, out of the reaper's
    index, with no queue message and no SagaParked metric: no alarm, and `redrive_parked.py` (which lists the queue)
    reports "no parked saga on the queue"."""
    queue = _queue(monkeypatch)
    _authorized_saga(aws, handlers, context)
    park = _park_module(handlers, monkeypatch)

    def refused(**kwargs):
        raise ClientError({"Error": {"Code": "KMS.ThrottlingException", "Message": "throttled"}}, "SendMessage")

    monkeypatch.setattr(park, "_sqs", SimpleNamespace(send_message=refused))
    for _ in range(3):  # the invocation and Lambda's two retries of an asynchronous invocation
        with pytest.raises(ClientError):
            park.lambda_handler(failed_execution_event(STARTED), context)

    found = _findable(aws, queue, _operator(queue))
    assert found["in_reaper_index"] or found["tool"], f"parked and silent: {found}"


def test_the_run_after_a_dry_run_still_finds_every_parked_saga(aws, handlers, context,
                                                                                  monkeypatch):
    """docs/operations.md §2 then §3: `redrive_parked.py --dry-run` to find the cause, then
    `redrive_parked.py` to redrive. The dry run receives every message on the queue with VisibilityTimeout =
    timeout + 60 s (960 s by default) and deletes none, so the real run right after it receives nothing, prints
    "no parked saga on the queue" and exits 0. (Every run, even one naming a single order, also receives every
    other order's message: five runs within the DLQ's maxReceiveCount move every parked message to the DLQ.)"""
    queue = _queue(monkeypatch)
    _authorized_saga(aws, handlers, context)
    park = _park_module(handlers, monkeypatch)
    assert park.lambda_handler(failed_execution_event(STARTED), context) == {"parked": True}

    dry = _operator(queue).run([], dry_run=True)
    assert [o.order_id for o in dry] == ["ord_1"]  # the dry run sees it and says it would redrive it
    real = _operator(queue).run([])  # the operator's next command
    assert [o.order_id for o in real] == ["ord_1"], f"the run after the dry run saw {[o.line() for o in real]}"


def _queued(queue: str) -> list[str]:
    """The order ids on the queue, read without keeping the messages (held, then given back)."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    held = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=30).get("Messages", [])
    for message in held:
        sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    return [json.loads(m["Body"])["order_id"] for m in held]


@pytest.mark.parametrize("broken", [False, True])
def test_the_script_deletes_a_finished_saga_s_message_and_a_check_sees_whether_it_did(aws, handlers, context,
                                                                                        monkeypatch, broken):
    """Once the saga is finished the operator's script deletes its message and counts it; the stack test's check
    (a read of the queue that keeps nothing) tells a deleted message from one merely received: with the deletion
    broken on purpose, the check finds the message still there."""
    queue = _queue(monkeypatch)
    failed = _authorized_saga(aws, handlers, context)
    park = _park_module(handlers, monkeypatch)
    assert park.lambda_handler(failed_execution_event(STARTED), context) == {"parked": True}
    saga = failed
    for name in ("void_payment", "release_inventory", "cancel_order"):  # finished (as a redrive does)
        saga = invoke(handlers(name), context, saga, execution=OWNER, redrive_count=1)
    assert order(aws)["saga_status"] == "COMPENSATED"
    operator = _operator(queue)
    if broken:
        monkeypatch.setattr(Operator, "acknowledge", lambda self, finished: {})
    (outcome,) = operator.run(["ord_1"])
    assert outcome.finished
    assert outcome.acknowledged == (0 if broken else 1)
    assert ("ord_1" in _queued(queue)) == broken


def test_a_late_attempt_that_starts_after_parking_does_not_pass_for_a_redrive(aws, handlers, context, monkeypatch):
    """Orders.claim_for_compensation's FAILED branch cannot tell the execution redriven from a late
    attempt of the run that failed (same owner, same fence): a VoidPayment attempt that Step Functions gave up on
    but that starts after ParkSaga parked (a slow cold start) un-parks the order, stamps `redriven_at` although no
    redrive happened, and puts it back in the reaper's index; the execution stays FAILED and the parked message
    stays on the queue, which the script then refuses ("not parked") until the reaper has taken it over."""
    _queue(monkeypatch)
    failed = _authorized_saga(aws, handlers, context)
    park = _park_module(handlers, monkeypatch)
    assert park.lambda_handler(failed_execution_event(STARTED), context) == {"parked": True}
    invoke(handlers("void_payment"), context, failed, execution=OWNER)  # the late attempt; nobody redrove
    item = order(aws)
    assert (item["saga_status"], "redriven_at" in item) == ("FAILED", False), \
        f"un-parked without a redrive: {item['saga_status']}, redriven_at={item.get('redriven_at')}"


def test_sagalocal_redrive_exits_0_for_a_parked_saga_it_finished(monkeypatch, capsys):
    """docs/operations.md §3 names `python -m sagalocal redrive ord_...` as the local stack's
    redrive. Its exit status is 0 only if the execution then SUCCEEDED; but a saga whose rollback the redrive
    finishes ends in the Fail state SagaCompensated (the execution FAILED, with the business error), so the command
    exits 1 for every parked saga it finished. Here: a compensation that fails until fixed, then the Fail state."""
    import argparse

    import boto3
    from moto import mock_aws

    from sagalocal import cli, stepfunctions
    from tests.unit.test_redrive import FakeLambda, Switch, task

    previous = stepfunctions._installed[0] if stepfunctions._installed else None
    fake = FakeLambda()
    stepfunctions.install(fake)
    try:
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            sfn = boto3.client("stepfunctions", region_name="us-east-1")
            fake.functions["CancelOrder"] = cancel = Switch(answer=lambda payload: {
                "outcome": {"error": "PaymentDeclined", "cause": "card declined"}})
            definition = {"StartAt": "CancelOrder", "States": {
                "CancelOrder": task("CancelOrder", Next="SagaCompensated"),
                "SagaCompensated": {"Type": "Fail", "ErrorPath": "$.outcome.error", "CausePath": "$.outcome.cause"}}}
            machine = sfn.create_state_machine(name="saga", definition=json.dumps(definition),
                                               roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
            arn = sfn.start_execution(stateMachineArn=machine, name="ord_1", input="{}")["executionArn"]
            assert stepfunctions.wait_for(arn, 10)
            cancel.broken = False  # the cause fixed
            monkeypatch.setattr(cli, "_client", lambda service, endpoint, region: sfn)
            monkeypatch.setattr(cli, "_endpoint", lambda args: "http://127.0.0.1:1")
            status = cli.cmd_redrive(argparse.Namespace(execution=arn, endpoint=None, region="us-east-1",
                                                        timeout=10.0))
            ended = sfn.describe_execution(executionArn=arn)
    finally:
        if previous is not None:
            stepfunctions.install(previous)
    assert len(fake.called("CancelOrder")) == 2  # the failed run and the redriven one: finished, compensated
    assert ended["error"] == "PaymentDeclined"
    assert status == 0, f"the redrive finished the saga (execution {ended['status']} {ended['error']}), exit {status}"
