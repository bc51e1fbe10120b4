"""Every saga step and compensation, called as Lambda handlers against the stack's DynamoDB engine."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest

from order_saga.errors import (
    InsufficientStock,
    OrderNotActive,
    PaymentDeclined,
    PaymentGatewayUnavailable,
    PaymentNotAuthorized,
    PaymentVoided,
    ReservationReleased,
)
from order_saga.inventory import Inventory
from order_saga.models import PricedLine
from order_saga.store import Store
from tests.unit.conftest import scan_all
from tests.unit.helpers import (
    EXECUTION,
    failed_execution_event,
    invoke,
    ledger,
    new_saga,
    order,
    payment,
    reap,
    reservation,
    second_run_changes_nothing,
    stock,
)

FORWARD = ["reserve_inventory", "authorize_payment", "confirm_order"]


def run_forward(handlers, context, saga, upto=3):
    for name in FORWARD[:upto]:
        saga = invoke(handlers(name), context, saga)
    return saga


def test_happy_path_confirms_the_order_and_charges_once(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, items=[{"sku": "SKU-1", "quantity": 2},
                                                             {"sku": "SKU-2", "quantity": 1}]))
    assert saga["total"] == 2 * 1250 + 4000
    assert [line["unit_price"] for line in saga["lines"]] == [1250, 4000]
    assert "payment_token" not in json.dumps(saga)  # the card token never rides in the saga state
    assert stock(aws, "SKU-1") == (8, 0, 2)
    assert stock(aws, "SKU-2") == (2, 0, 1)
    item = order(aws)
    assert (item["status"], item["saga_status"]) == ("CONFIRMED", "COMPLETED")
    assert "active" not in item
    assert set(item["steps"]) == {"ReserveInventory", "AuthorizePayment", "ConfirmOrder"}
    assert payment(aws)["status"] == "CAPTURED"
    assert (ledger(aws)["state"], ledger(aws)["amount"]) == ("CAPTURED", 6500)
    assert reservation(aws)["status"] == "COMMITTED"


def test_each_step_is_one_transaction_plus_its_reads_and_the_gateway(aws, handlers, context):
    """The write path's budget: 10 requests from the three steps (the API adds 2): ReserveInventory's two writes
    (the lease, then the reservation); AuthorizePayment reads the payment, reads the circuit breaker's state (one
    GetItem; it writes nothing while calls succeed), writes the payment's sent marker, calls the gateway (whose fake
    ledger is one write) and writes once; ConfirmOrder commits, captures (one ledger write), completes."""
    saga = new_saga(aws)
    sent = {}
    for name in FORWARD:
        module = handlers(name)
        before = module.store.attempts
        saga = invoke(module, context, saga)
        sent[name] = module.store.attempts - before
    assert sent == {"reserve_inventory": 2, "authorize_payment": 5, "confirm_order": 3}


@pytest.mark.parametrize("step", range(len(FORWARD)), ids=FORWARD)
def test_forward_step_run_twice_changes_nothing_the_second_time(aws, handlers, context, step):
    saga = run_forward(handlers, context, new_saga(aws), upto=step)
    module = handlers(FORWARD[step])
    second_run_changes_nothing(aws, lambda: invoke(module, context, saga))


def fail_at(saga, step, error="States.Timeout"):
    return {**saga, "failures": {step: {"Error": error, "Cause": "test"}}}


# (forward steps that succeeded, the failed step, the compensations the state machine runs)
COMPENSATION_PATHS = [
    (0, "ReserveInventory", ["release_inventory", "cancel_order"]),  # before its lease
    (1, "ReserveInventory", ["release_inventory", "cancel_order"]),  # after its writes (a lost response)
    (1, "AuthorizePayment", ["void_payment", "release_inventory", "cancel_order"]),
    (2, "ConfirmOrder", ["refund_payment", "release_inventory", "cancel_order"]),
]


@pytest.mark.parametrize(("done", "failed", "compensations"), COMPENSATION_PATHS,
                         ids=[f"{d}-steps-then-{f}" for d, f, _ in COMPENSATION_PATHS])
def test_compensations_run_twice_leave_no_residue(aws, handlers, context, done, failed, compensations):
    saga = run_forward(handlers, context, new_saga(aws), upto=done)
    saga = fail_at(saga, failed)
    for name in compensations:
        module = handlers(name)
        first = invoke(module, context, saga)
        tables = scan_all(aws)
        assert invoke(module, context, saga) == first
        assert scan_all(aws) == tables, f"{name} changed the tables when run a second time"
        saga = first
    assert stock(aws, "SKU-1") == (10, 0, 0)
    item = order(aws)
    assert (item["status"], item["saga_status"]) == ("CANCELLED", "COMPENSATED")
    assert "active" not in item
    assert (item["failure"]["step"], item["failure"]["error"]) == (failed, "States.Timeout")
    entry = ledger(aws)
    if done >= 3:  # the payment was authorized (and for 4, captured): money goes back
        assert entry["state"] == ("REFUNDED" if done == 4 else "VOIDED")
        assert payment(aws)["status"] == ("REFUNDED" if done == 4 else "VOIDED")
    else:
        assert entry is None or entry.get("state") in (None, "VOIDED")
    assert saga["outcome"] == {"error": "Saga.Timeout", "cause": "test"}  # States.* is reserved for AWS


def test_insufficient_stock_reserves_nothing(aws, handlers, context):
    saga = new_saga(aws, items=[{"sku": "SKU-1", "quantity": 1}, {"sku": "SKU-3", "quantity": 1}])
    with pytest.raises(InsufficientStock, match="SKU-3") as raised:
        invoke(handlers("reserve_inventory"), context, saga)
    assert "SKU-1" not in str(raised.value)
    assert stock(aws, "SKU-1") == (10, 0, 0)
    assert stock(aws, "SKU-3") == (0, 0, 0)
    assert reservation(aws) is None


def test_declined_card_raises_payment_declined_and_holds_nothing(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, token="tok_decline"), upto=1)
    module = handlers("authorize_payment")
    for _ in range(2):  # a retry of a declined authorization is declined again, without a second gateway call
        with pytest.raises(PaymentDeclined) as raised:
            invoke(module, context, saga)
        assert "tok_" not in str(raised.value)  # no card token in an error (it reaches logs and step causes)
    assert payment(aws)["status"] == "DECLINED"
    assert ledger(aws)["state"] == "DECLINED"


def test_transient_token_fails_n_times_then_approves(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, token="tok_transient_2"), upto=1)
    module = handlers("authorize_payment")
    for _ in range(2):
        with pytest.raises(PaymentGatewayUnavailable):
            invoke(module, context, saga)
    out = invoke(module, context, saga)
    assert out["authorization"] == "auth_ord_1#1"
    assert payment(aws)["status"] == "AUTHORIZED"


def test_hang_token_hangs_for_the_configured_time_then_approves(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, token="tok_hang"), upto=1)
    started = time.monotonic()
    invoke(handlers("authorize_payment"), context, saga)
    assert time.monotonic() - started >= 0.2  # FAKE_GATEWAY_HANG_SECONDS in the fixture


def test_unknown_token_is_declined_without_naming_it(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, token="tok_nonsense"), upto=1)
    with pytest.raises(PaymentDeclined) as raised:
        invoke(handlers("authorize_payment"), context, saga)
    assert "nonsense" not in str(raised.value)


def test_release_before_reserve_leaves_a_tombstone_that_blocks_a_late_reservation(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    invoke(handlers("release_inventory"), context, fail_at(saga, "ReserveInventory"))
    assert reservation(aws)["status"] == "RELEASED"
    # The timed-out ReserveInventory lands late: its lease check refuses it (the saga is compensating)...
    with pytest.raises(OrderNotActive):
        invoke(handlers("reserve_inventory"), context, saga)
    # ...and even without the check, the tombstone refuses the reservation itself.
    module = handlers("reserve_inventory")
    items = module.inventory.reserve_items("ord_1", [PricedLine(**line) for line in saga["lines"]], 2)
    cancelled = module.store.transact(items)
    assert cancelled is not None
    assert cancelled.failed("reservation")
    assert stock(aws, "SKU-1") == (10, 0, 0)


def test_void_before_authorize_blocks_a_late_authorization(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment"))
    with pytest.raises(PaymentVoided):  # the timed-out AuthorizePayment lands late
        invoke(handlers("authorize_payment"), context, saga)
    assert ledger(aws) is None  # the gateway was never called
    assert payment(aws)["status"] == "VOIDED"


def test_authorization_that_lands_after_void_is_voided_at_the_gateway(aws, handlers, context):
    """The gateway answers after the compensation ran: the late authorization must not hold money."""
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    module = handlers("authorize_payment")
    real_authorize = module.payments.gateway.authorize

    def authorize_then_lose_the_race(*args, **kwargs):
        reference = real_authorize(*args, **kwargs)
        invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment"))
        return reference

    module.payments.gateway.authorize = authorize_then_lose_the_race
    with pytest.raises(OrderNotActive):  # the saga is compensating: the late step is refused
        invoke(module, context, saga)
    assert payment(aws)["status"] == "VOIDED"
    assert ledger(aws)["state"] == "VOIDED"


def test_a_step_after_compensation_is_refused(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    invoke(handlers("cancel_order"), context, fail_at(saga, "ReserveInventory"))
    tables = scan_all(aws)
    with pytest.raises(OrderNotActive):
        invoke(handlers("reserve_inventory"), context, saga)
    with pytest.raises(OrderNotActive):
        invoke(handlers("reserve_inventory"), context, saga)
    assert scan_all(aws) == tables


def test_confirm_on_a_voided_payment_commits_nothing(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=2)
    store = Store(aws)
    store.update(TableName=handlers("confirm_order").payments.table, Key={"payment_id": {"S": "ord_1#1"}},
                 UpdateExpression="SET #s = :v", ExpressionAttributeNames={"#s": "status"},
                 ExpressionAttributeValues={":v": {"S": "VOIDED"}})
    with pytest.raises(PaymentNotAuthorized):
        invoke(handlers("confirm_order"), context, saga)
    assert stock(aws, "SKU-1") == (8, 2, 0)  # still reserved, not sold: nothing was committed
    assert reservation(aws)["status"] == "RESERVED"


def test_park_saga_parks_once_with_a_message_that_names_the_failure_and_holds_no_token(aws, handlers, context,
                                                                                          monkeypatch):
    """The execution that owns the order failed (a compensation spent its retries): ParkSaga marks the order FAILED,
    out of the reaper's index, with the execution's error, and sends one message; a repeat of the event (EventBridge
    or Lambda retrying) parks nothing twice and sends no second message; an event whose input names no order parks
    nothing; a late copy of the event once the execution runs again (redriven) parks nothing."""
    import datetime

    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="parked.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    monkeypatch.setenv("PARKED_SAGAS_QUEUE_URL", url)
    started = datetime.datetime(2026, 12, 6, 7, 0, 0, 123000, tzinfo=datetime.UTC)
    owner = f"{EXECUTION}#2026-12-06T07:00:00.123Z"
    saga = new_saga(aws)
    for name in ("reserve_inventory",):
        saga = invoke(handlers(name), context, saga, execution=owner)
    module = handlers("park_saga")
    monkeypatch.setattr(module, "_sfn", SimpleNamespace(describe_execution=lambda executionArn: {
        "status": "FAILED", "error": "PaymentGatewayUnavailable", "cause": "the gateway is down", "redriveCount": 0}))
    event = failed_execution_event(started)
    # A repeat of the event (EventBridge delivers at least once; Lambda retries an attempt that died before its
    # message) sends the message again, which the FIFO queue's deduplication drops: one message, one park.
    assert [module.lambda_handler(event, context) for _ in range(2)] == [{"parked": True}, {"parked": True}]
    parked = order(aws)
    assert (parked["saga_status"], parked["steps"]["ParkSaga"]["status"], "active" in parked) == (
        "FAILED", "SUCCEEDED", False)
    no_order = {**event, "detail": {**event["detail"], "input": "{}"}}
    assert module.lambda_handler(no_order, context) == {"parked": False}
    redriven = SimpleNamespace(describe_execution=lambda executionArn: {"status": "RUNNING", "redriveCount": 1})
    monkeypatch.setattr(module, "_sfn", redriven)
    invoke(handlers("release_inventory"), context, {**saga, "failures": {"X": {"Error": "E", "Cause": "c"}}},
           execution=owner, redrive_count=1)  # the redriven execution's compensation took the order back
    assert module.lambda_handler(event, context) == {"parked": False}
    assert order(aws)["saga_status"] == "COMPENSATING"
    (message,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert json.loads(message["Body"]) == {"order_id": "ord_1", "execution_arn": EXECUTION,
                                           "error": "PaymentGatewayUnavailable", "cause": "the gateway is down",
                                           "redrive_count": 0}
    assert "tok_" not in message["Body"]
    assert order(aws)["parked_error"] == "PaymentGatewayUnavailable"


def test_a_malformed_step_event_is_rejected(aws, handlers, context):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        handlers("reserve_inventory").lambda_handler({"saga": {"order_id": "x"}}, context)


def test_an_execution_for_an_order_the_api_never_wrote_is_refused(aws, handlers, context):
    """An operator's StartExecution for an unknown order (or a stale one the reaper cancelled)."""
    tables = scan_all(aws)
    with pytest.raises(OrderNotActive, match="does not exist"):
        invoke(handlers("reserve_inventory"), context, {"order_id": "ord_ghost", "customer_id": "c"})
    assert scan_all(aws) == tables


@pytest.mark.parametrize("name", ["reserve_inventory", "authorize_payment", "confirm_order"])
def test_a_forward_step_on_an_unknown_order_fails_before_any_side_effect(aws, handlers, context, name):
    saga = {"order_id": "ord_ghost", "customer_id": "c", "lines": [{"sku": "SKU-1", "quantity": 1,
                                                                    "unit_price": 1250}],
            "total": 1250, "currency": "USD", "fence": 1, "deadline_at": 2**50, "lease_expires_at": 2**50}
    tables = scan_all(aws)
    with pytest.raises((OrderNotActive, PaymentNotAuthorized, ReservationReleased)):
        invoke(handlers(name), context, saga)
    assert scan_all(aws) == tables


def test_the_catalog_is_never_overwritten_and_restock_only_adds(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)  # 2 units of SKU-1 reserved
    inventory = Inventory(Store(aws), handlers("reserve_inventory").inventory.table)
    assert inventory.add_item("SKU-1", "Blue mug", 1, "USD", 500) is False  # no reset of reserved / sold
    assert stock(aws, "SKU-1") == (8, 2, 0)
    assert inventory.restock("SKU-1", 5)["available"] == 13
    assert stock(aws, "SKU-1") == (13, 2, 0)
    invoke(handlers("authorize_payment"), context, saga)
    with pytest.raises(ValueError, match="positive"):
        inventory.restock("SKU-1", 0)
    from order_saga.errors import UnknownItem

    with pytest.raises(UnknownItem):
        inventory.restock("SKU-NEW", 5)


def test_compensation_logs_the_execution_as_the_owner(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    invoke(handlers("cancel_order"), context, fail_at(saga, "ReserveInventory", "InsufficientStock"))
    item = order(aws)
    assert item["lease_owner"] == EXECUTION
    assert (item["failure"]["step"], item["failure"]["error"]) == ("ReserveInventory", "InsufficientStock")


# ---- the gateway's time budget and the reconciliation of authorizations left behind ----------------------
def test_a_gateway_call_past_its_timeout_fails_with_an_unknown_outcome_and_a_retry_is_told_it_is_in_progress(
        aws, handlers, context, monkeypatch):
    monkeypatch.setenv("GATEWAY_TIMEOUT_SECONDS", "0.3")
    saga = run_forward(handlers, context, new_saga(aws, token="tok_slow_30"), upto=1)
    module = handlers("authorize_payment")
    started = time.monotonic()
    with pytest.raises(PaymentGatewayUnavailable, match="outcome is unknown"):
        invoke(module, context, saga)
    assert 0.3 <= time.monotonic() - started < 15  # the client's timeout, not the processor's 30 s
    with pytest.raises(PaymentGatewayUnavailable, match="in progress"):
        invoke(module, context, saga)
    assert payment(aws)["status"] == "PENDING"
    assert ledger(aws)["state"] == "PROCESSING"


def test_no_gateway_call_starts_without_time_for_it_and_the_write_after_it(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    context.remaining_ms = 5_000  # 4.5 s of budget < the gateway's 3 s + a DynamoDB attempt's 2 s
    with pytest.raises(PaymentGatewayUnavailable, match="not enough time"):
        invoke(handlers("authorize_payment"), context, saga)
    assert ledger(aws) is None  # never reached the gateway
    assert payment(aws)["status"] == "PENDING"


def test_a_first_authorization_needs_time_for_its_sent_marker_too(aws, handlers, context):
    """Unmarked, the call needs the marker's write before it and the record after it (3 + 2 x 2 s); once marked, a
    retry writes no marker and needs one write less."""
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    context.remaining_ms = 7_000  # 6.5 s of budget < 3 + 2 + 2
    with pytest.raises(PaymentGatewayUnavailable, match="not enough time"):
        invoke(handlers("authorize_payment"), context, saga)
    assert "sent_at" not in payment(aws)  # refused before the marker: still voidable without the gateway
    aws.update_item(TableName=os.environ["PAYMENTS_TABLE"], Key={"payment_id": {"S": "ord_1#1"}},
                    UpdateExpression="SET sent_at = created_at")
    invoke(handlers("authorize_payment"), context, saga)  # 6.5 s >= 3 + 2
    assert payment(aws)["status"] == "AUTHORIZED"


# The processor's authorization lands SLOW_S after the call: time for the void (its module imported and run on
# a loaded machine) to come first; the tests then wait for the landing itself.
SLOW_S = 6


def given_up_and_voided(aws, handlers, context, monkeypatch, token: str = f"tok_slow_{SLOW_S}") -> None:
    """A slow processor: the client gives up after 0.2 s (outcome unknown), and the saga voids the payment,
    marking it for a reconciliation due at once."""
    monkeypatch.setenv("GATEWAY_TIMEOUT_SECONDS", "0.2")
    monkeypatch.setenv("RECONCILE_AFTER_SECONDS", "0")
    saga = run_forward(handlers, context, new_saga(aws, token=token), upto=1)
    void = handlers("void_payment")
    with pytest.raises(PaymentGatewayUnavailable):
        invoke(handlers("authorize_payment"), context, saga)
    invoke(void, context, fail_at(saga, "AuthorizePayment"))


def until_the_authorization_lands(aws) -> None:
    time.sleep(max(0.0, int(ledger(aws)["lands_at"]) / 1000 - time.time()) + 0.1)


def test_an_authorization_that_lands_after_the_void_is_reconciled_by_the_reaper(aws, handlers, context,
                                                                               monkeypatch):
    given_up_and_voided(aws, handlers, context, monkeypatch)  # nothing has landed at the gateway yet
    voided = payment(aws)
    assert voided["status"] == "VOIDED"
    assert "reconcile" in voided
    assert "reconcile_at" in voided
    assert ledger(aws)["state"] == "PROCESSING"
    until_the_authorization_lands(aws)  # the processor completes it after the void: money held for nothing
    swept = reap(handlers, context)
    assert swept["reconciled"] == {"ord_1#1": "reversed"}
    assert ledger(aws)["state"] == "VOIDED"
    after = payment(aws)
    assert "reconcile" not in after
    assert after["reconciled"] == "reversed"
    assert reap(handlers, context)["reconciled"] == {}  # once


def test_reconciliation_waits_while_the_processor_has_not_decided(aws, handlers, context, monkeypatch):
    given_up_and_voided(aws, handlers, context, monkeypatch, "tok_slow_60")
    assert reap(handlers, context)["reconciled"] == {"ord_1#1": "undecided"}
    assert "reconcile" in payment(aws)  # still marked: asked again at a later sweep
    assert ledger(aws)["state"] == "PROCESSING"


def test_a_payment_voided_after_a_clear_decline_or_before_any_call_needs_no_reconciliation(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment"))  # PENDING, never called
    # Nothing was ever sent (no sent marker), so nothing can be in flight: voided without the gateway, final.
    voided = payment(aws)
    assert voided["status"] == "VOIDED"
    assert "reconcile" not in voided
    assert "purge_at" in voided
    assert ledger(aws) is None
    saga2 = run_forward(handlers, context, new_saga(aws, order_id="ord_2", token="tok_approve"), upto=2)
    invoke(handlers("void_payment"), context, fail_at(saga2, "ConfirmOrder"))
    assert payment(aws, "ord_2")["status"] == "VOIDED"
    assert "reconcile" not in payment(aws, "ord_2")  # it was AUTHORIZED: the void itself gave the money back
