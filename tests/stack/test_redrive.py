"""Parked sagas finished by a redrive (docs/operations.md), and RedriveExecution's rules, on the stack.

The same tests run on a deployed stack (SAGA_API_URL...). A target whose Step Functions has no RedriveExecution
(LocalStack answers "not implemented") skips them, saying so; the parking test needs FaultInjection=true.

The parked saga: an order with a coupon, paid with two cards, the second declined, so the AuthorizePayments Map
fails and VoidPayment compensates; but the gateway is down for VoidPayment on all four of its attempts (a fault
rule, count 4), so the execution fails at VoidPayment and ParkSaga parks the saga. Then the gateway is back (the
rule is spent), and the operator's one command (scripts/redrive_parked.py) redrives it. Its twin, the same order
without the outage, never parks. Afterwards both must be the same: order cancelled, both cards' money released,
stock and coupon counts back, and one outcome event each (plus the SagaParked event of the parked one).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
from botocore.exceptions import ClientError

from order_saga.models import order_id_for
from scripts.redrive_parked import Operator
from tests.stack.support import (
    parked_queue_orders,
    post_order,
    settle_late_authorizations,
    wait_for_execution,
    wait_until,
)

PRICE, STOCK, QUANTITY = 1000, 10, 2
MONEY_GONE = (None, "DECLINED", "VOIDED", "REFUNDED")


def redrive_unsupported(target) -> str | None:
    """Why the target cannot redrive (None: it can), from its answer for an execution that does not exist."""
    arn = target.execution_arn(f"no-such-execution-{uuid.uuid4().hex[:8]}")
    try:
        target.client("stepfunctions").redrive_execution(executionArn=arn)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code == "ExecutionDoesNotExist":
            return None
        return f"the target's Step Functions has no RedriveExecution ({code}: {exc.response['Error'].get('Message')})"
    return "the target redrove an execution that does not exist"


@pytest.fixture(scope="module")
def redrivable(target):
    reason = redrive_unsupported(target)
    if reason:
        pytest.skip(reason)
    return target


@pytest.fixture
def named_errors(redrivable):
    """A redrive of a compensated or parked saga: what it ends with rests on the error names the state machine's
    Catch matches (a declined card, the gateway unavailable), which an engine must pass on (Target.typed_errors)."""
    redrivable.require_error_names()
    return redrivable


def outcome_events(target, order_ids: set[str], until: Counter, timeout: float = 120.0) -> Counter:
    """(order id, event type) -> how often it arrived on the outcome events queue, once `until` arrived (or the
    deadline passed), then 3 s more for repeats. Ours are deleted; others' stay hidden for 30 s (so that the reads
    go on through the queue) and then come back for whoever reads them."""
    sqs, url = target.client("sqs"), target.outputs["OutcomeEventsQueueUrl"]
    seen: Counter = Counter()
    deadline, settle = time.monotonic() + timeout, None
    while time.monotonic() < (settle or deadline):
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           VisibilityTimeout=30).get("Messages", []):
            event = json.loads(message["Body"])
            if event["detail"]["order_id"] in order_ids:
                seen[(event["detail"]["order_id"], event["detail-type"])] += 1
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if settle is None and all(seen[key] >= n for key, n in until.items()):
            settle = time.monotonic() + 3
    return seen


def place(target, sku: str, code: str, customer: str, faults=None) -> tuple[str, list]:
    """The order (a coupon, two cards: the second declined); with `faults`, the gateway is down for its
    VoidPayment on every attempt (1 + 3 retries)."""
    key = f"redrive-{uuid.uuid4().hex}"
    _, sub = target.sign_in(customer)
    order_id = order_id_for(sub, key)
    rules = [] if faults is None else [faults.add({
        "action": "invocation-error", "function": "VoidPayment", "error": "PaymentGatewayUnavailable",
        "order_id": order_id, "count": 4})]
    body = {"items": [{"sku": sku, "quantity": QUANTITY}], "coupon": code,
            "payment": [{"token": "tok_approve", "amount": 900}, {"token": "tok_decline", "amount": 900}]}
    status, answer = post_order(target, json.dumps(body).encode(), key, timeout=60, customer=customer)
    assert status == 202, answer
    assert answer["order_id"] == order_id
    return order_id, rules


def snapshot(target, order_id: str, sku: str, code: str, customer: str) -> dict:
    order = target.order(order_id) or {}
    # Money held at the processor per card (not the ledger's exact state: a card whose Map iteration was still
    # running when the other card failed the Map may be authorized and voided, or never authorized at all).
    return {"order": (order.get("status"), order.get("saga_status")),
            "money held": [(target.ledger(order_id, m) or {}).get("state") not in MONEY_GONE for m in (1, 2)],
            "payments": [(target.payment(order_id, m) or {}).get("status") for m in (1, 2)],
            "reservation": (target.reservation(order_id) or {}).get("status"),
            "redemption": (target.redemption(code, order_id) or {}).get("status"),
            "coupon_use": target.coupon_use(code, customer)}


def test_a_parked_saga_is_finished_by_one_redrive_as_if_it_never_parked(named_errors, faults):
    target = named_errors
    run = uuid.uuid4().hex[:6]
    skus = {name: f"REDRIVE-{name}-{run}" for name in ("parked", "twin")}
    code = f"RD{run.upper()}"
    target.add_coupon(code, "percent", 10, 100, 10)  # 2000 - 10% = 1800, split 900 + 900
    for sku in skus.values():
        target.add_item(sku, PRICE, STOCK)
    customers = {name: f"redrive-{name}" for name in skus}
    parked_id, rules = place(target, skus["parked"], code, customers["parked"], faults)
    twin_id, _ = place(target, skus["twin"], code, customers["twin"])
    twin = wait_for_execution(target, target.execution_arn(twin_id), timeout=240)
    assert (twin["status"], twin.get("error")) == ("FAILED", "PaymentDeclined")

    # Parked: the execution failed at VoidPayment with the gateway's error; ParkSaga (run by EventBridge on that
    # failure) marked the order FAILED and put it on the parked queue. Its stock is still reserved.
    failed = wait_for_execution(target, target.execution_arn(parked_id), timeout=240)
    assert (failed["status"], failed.get("error")) == ("FAILED", "PaymentGatewayUnavailable")
    order = wait_until(lambda: (o := target.order(parked_id)) and o["saga_status"] == "FAILED" and o, 60,
                       "ParkSaga parks the saga")
    assert order["parked_error"] == "PaymentGatewayUnavailable"
    assert "active" not in order  # out of the reaper's index
    assert parked_id in parked_queue_orders(target)  # the operator is told (the message goes before the park)
    assert target.stock(skus["parked"])["reserved"] == QUANTITY  # held while parked
    assert failed["redriveStatus"] == "REDRIVABLE"

    # The gateway is back (the rule is spent). The operator's one command: redrive, wait, check, acknowledge.
    outcomes = Operator(target.outputs, client=target.client, timeout=240).run([parked_id])
    assert [(o.order_id, o.redriven, o.saga_status) for o in outcomes] == [(parked_id, True, "COMPENSATED")], \
        [o.line() for o in outcomes]
    redriven = target.client("stepfunctions").describe_execution(executionArn=target.execution_arn(parked_id))
    assert (redriven["status"], redriven.get("error"), redriven.get("redriveCount")) == (
        "FAILED", "PaymentDeclined", 1)  # ended as its twin: compensated, with the error that started it
    settle_late_authorizations(target, {parked_id: 2, twin_id: 2})

    # Stock, coupon and money exactly as for the saga that never parked.
    parked_now = snapshot(target, parked_id, skus["parked"], code, customers["parked"])
    twin_now = snapshot(target, twin_id, skus["twin"], code, customers["twin"])
    assert parked_now == twin_now, (parked_now, twin_now)
    assert parked_now["order"] == ("CANCELLED", "COMPENSATED")
    assert parked_now["money held"] == [False, False], parked_now
    assert (parked_now["reservation"], parked_now["redemption"], parked_now["coupon_use"]) == ("RELEASED",
                                                                                                "RELEASED", 0)
    for sku in skus.values():
        stock = target.stock(sku)
        assert (stock["available"], stock["reserved"], stock["sold"]) == (STOCK, 0, 0), sku
    assert target.coupon(code)["redeemed"] == 0

    assert [faults.remaining(rule) for rule in rules] == [0]
    # One outcome event each; the parked one also said it was parked, once. Its parked message was acknowledged.
    expected = Counter({(parked_id, "OrderCancelled"): 1, (parked_id, "SagaParked"): 1, (twin_id, "OrderCancelled"): 1})
    assert outcome_events(target, {parked_id, twin_id}, expected) == expected
    assert [o.acknowledged for o in outcomes] == [1]  # its one message deleted (not merely received)
    assert parked_id not in parked_queue_orders(target)


def test_redrive_follows_aws_rules_on_the_stack(redrivable):
    """Only an unsuccessful execution can be redriven: a SUCCEEDED one is refused with ExecutionNotRedrivable and
    keeps its status; DescribeExecution says so (redriveStatus NOT_REDRIVABLE); ListExecutions' redriveFilter
    tells redriven executions from the others."""
    target = redrivable
    sku = f"REDRIVE-OK-{uuid.uuid4().hex[:6]}"
    target.add_item(sku, PRICE, STOCK)
    key = f"redrive-{uuid.uuid4().hex}"
    status, answer = post_order(target, json.dumps({"items": [{"sku": sku, "quantity": 1}],
                                                    "payment_token": "tok_approve"}).encode(), key, timeout=60)
    assert status == 202, answer
    arn = target.execution_arn(answer["order_id"])
    assert wait_for_execution(target, arn, timeout=240)["status"] == "SUCCEEDED"
    sfn = target.client("stepfunctions")
    with pytest.raises(ClientError) as refused:
        sfn.redrive_execution(executionArn=arn)
    assert refused.value.response["Error"]["Code"] == "ExecutionNotRedrivable"
    described = sfn.describe_execution(executionArn=arn)
    assert (described["status"], described["redriveStatus"], described.get("redriveCount", 0)) == (
        "SUCCEEDED", "NOT_REDRIVABLE", 0)
    machine = target.outputs["StateMachineArn"]
    not_redriven = [e["executionArn"] for e in paginate_executions(sfn, machine, "NOT_REDRIVEN")]
    redriven = [e["executionArn"] for e in paginate_executions(sfn, machine, "REDRIVEN")]
    assert arn in not_redriven
    assert arn not in redriven
    assert all(e.get("redriveCount", 0) >= 1 for e in paginate_executions(sfn, machine, "REDRIVEN"))


def paginate_executions(sfn, machine: str, redrive_filter: str) -> list[dict]:
    from sagalocal.timeline import paginate

    return paginate(sfn.list_executions, "executions", stateMachineArn=machine, redriveFilter=redrive_filter)


def test_sagalocal_redrive_redrives_by_order_id_and_refuses_what_cannot_be(named_errors):
    """`python -m sagalocal redrive <order id>`: a declined order's execution (FAILED at SagaCompensated) is redriven,
    re-enters its Fail state and fails again with its error: it ended where its definition ends it (exit 0, the
    timeline printed), and nothing else changes; a SUCCEEDED one is refused with the reason (exit 2)."""
    import subprocess
    import sys

    from tests.stack.conftest import ROOT

    target = named_errors
    if not target.endpoint:
        pytest.skip("the command talks to an AWS endpoint (SAGA_AWS_ENDPOINT): this target has none")
    sku = f"REDRIVE-CLI-{uuid.uuid4().hex[:6]}"
    target.add_item(sku, PRICE, STOCK)
    ids = {}
    for token in ("tok_decline", "tok_approve"):
        status, answer = post_order(target, json.dumps({"items": [{"sku": sku, "quantity": 1}],
                                                        "payment_token": token}).encode(), uuid.uuid4().hex)
        assert status == 202, answer
        ids[token] = answer["order_id"]
        wait_for_execution(target, target.execution_arn(answer["order_id"]), timeout=240)
    before = target.order(ids["tok_decline"])

    def sagalocal_redrive(order_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sagalocal", "redrive", order_id, "--endpoint", target.endpoint,
                               "--region", target.region, "--timeout", "120"], cwd=ROOT, capture_output=True,
                              text=True, timeout=180, check=False)

    declined = sagalocal_redrive(ids["tok_decline"])
    assert declined.returncode == 0, declined.stderr[-2000:]
    assert "SagaCompensated" in declined.stdout
    described = target.client("stepfunctions").describe_execution(executionArn=target.execution_arn(ids["tok_decline"]))
    assert (described["status"], described.get("error"), described["redriveCount"]) == ("FAILED", "PaymentDeclined", 1)
    assert target.order(ids["tok_decline"]) == before
    refused = sagalocal_redrive(ids["tok_approve"])
    assert refused.returncode == 2
    assert "cannot be redriven" in refused.stderr
