"""Every saga step and compensation, called as Lambda handlers against moto tables."""

from __future__ import annotations

import pytest

from order_saga.models import PricedLine
from tests.unit.conftest import scan_all
from tests.unit.helpers import invoke, ledger, new_saga, order, payment, stock

FORWARD = ["create_order", "reserve_inventory", "authorize_payment", "confirm_order"]


def run_forward(handlers, context, saga, upto=4):
    for name in FORWARD[:upto]:
        saga = invoke(handlers(name), context, saga)
    return saga


def test_happy_path_confirms_order_and_charges_once(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, items=[{"sku": "SKU-1", "quantity": 2},
                                                             {"sku": "SKU-2", "quantity": 1}]))
    assert saga["total"] == 2 * 1250 + 4000
    assert [line["unit_price"] for line in saga["lines"]] == [1250, 4000]
    assert stock(aws, "SKU-1") == (8, 0, 2)
    assert stock(aws, "SKU-2") == (2, 0, 1)
    item = order(aws)
    assert (item["status"], item["saga_status"]) == ("CONFIRMED", "COMPLETED")
    assert set(item["steps"]) == {"CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder"}
    assert payment(aws)["status"] == "CAPTURED"
    assert ledger(aws)["state"] == "CAPTURED"
    assert ledger(aws)["amount"] == 6500


@pytest.mark.parametrize("step", range(len(FORWARD)), ids=FORWARD)
def test_forward_step_run_twice_changes_nothing_the_second_time(aws, handlers, context, step):
    saga = run_forward(handlers, context, new_saga(aws), upto=step)
    module = handlers(FORWARD[step])
    first = invoke(module, context, saga)
    tables = scan_all(aws)
    second = invoke(module, context, saga)
    assert second == first
    assert scan_all(aws) == tables


def fail_at(saga, step, error="States.Timeout"):
    return {**saga, "failures": {step: {"Error": error, "Cause": "test"}}}


# (forward steps that succeeded, the failed step, the compensations the state machine runs)
COMPENSATION_PATHS = [
    (0, "CreateOrder", ["cancel_order"]),
    (1, "ReserveInventory", ["release_inventory", "cancel_order"]),
    (2, "AuthorizePayment", ["void_payment", "release_inventory", "cancel_order"]),
    (3, "ConfirmOrder", ["refund_payment", "release_inventory", "cancel_order"]),
    (4, "ConfirmOrder", ["refund_payment", "release_inventory", "cancel_order"]),
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
    assert item["steps"][failed]["status"] == "FAILED"
    assert item["steps"][failed]["error"] == "States.Timeout"
    entry = ledger(aws)
    if done >= 3:  # the payment was authorized (and for 4, captured): money goes back
        assert entry["state"] == ("REFUNDED" if done == 4 else "VOIDED")
    else:
        assert entry is None or entry.get("state") in (None, "VOIDED")
    assert saga["outcome"] == {"error": "Saga.Timeout", "cause": "test"}  # States.* is reserved for AWS


def test_insufficient_stock_reserves_nothing(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, items=[{"sku": "SKU-1", "quantity": 1},
                                                             {"sku": "SKU-3", "quantity": 1}]), upto=1)
    from order_saga.errors import InsufficientStock

    with pytest.raises(InsufficientStock, match="SKU-3"):
        invoke(handlers("reserve_inventory"), context, saga)
    assert stock(aws, "SKU-1") == (10, 0, 0)
    assert stock(aws, "SKU-3") == (0, 0, 0)


def test_declined_card_raises_payment_declined_and_holds_nothing(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, token="tok_decline"), upto=2)
    from order_saga.errors import PaymentDeclined

    module = handlers("authorize_payment")
    for _ in range(2):  # a retry of a declined authorization is declined again, without a second gateway call
        with pytest.raises(PaymentDeclined):
            invoke(module, context, saga)
    assert payment(aws)["status"] == "DECLINED"
    assert ledger(aws)["state"] == "DECLINED"


def test_transient_token_fails_n_times_then_approves(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, token="tok_transient_2"), upto=2)
    from order_saga.errors import PaymentGatewayUnavailable

    module = handlers("authorize_payment")
    for _ in range(2):
        with pytest.raises(PaymentGatewayUnavailable):
            invoke(module, context, saga)
    out = invoke(module, context, saga)
    assert out["authorization"] == "auth_ord_1"
    assert payment(aws)["status"] == "AUTHORIZED"


def test_hang_token_hangs_for_the_configured_time_then_approves(aws, handlers, context):
    import time

    saga = run_forward(handlers, context, new_saga(aws, token="tok_hang"), upto=2)
    started = time.monotonic()
    invoke(handlers("authorize_payment"), context, saga)
    assert time.monotonic() - started >= 0.2  # FAKE_GATEWAY_HANG_SECONDS in the fixture


def test_unknown_token_is_declined(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws, token="tok_nonsense"), upto=2)
    from order_saga.errors import PaymentDeclined

    with pytest.raises(PaymentDeclined, match="tok_nonsense"):
        invoke(handlers("authorize_payment"), context, saga)


def test_release_before_reserve_leaves_a_tombstone_that_blocks_a_late_reservation(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    invoke(handlers("release_inventory"), context, fail_at(saga, "ReserveInventory"))
    assert stock(aws, "SKU-1") == (10, 0, 0)
    from order_saga.errors import ReservationReleased

    module = handlers("reserve_inventory")
    with pytest.raises(ReservationReleased):  # the timed-out ReserveInventory, past its order check, lands late
        module.inventory.reserve("ord_1", [PricedLine(**line) for line in saga["lines"]], 2, 300_000)
    assert stock(aws, "SKU-1") == (10, 0, 0)


def test_void_before_authorize_blocks_a_late_authorization(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=2)
    invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment"))
    from order_saga.errors import PaymentVoided

    module = handlers("authorize_payment")
    with pytest.raises(PaymentVoided):  # the timed-out AuthorizePayment, past its order check, lands late
        module.payments.authorize("ord_1", "tok_approve", saga["total"], "USD", 2)
    assert ledger(aws) is None  # the gateway was never called


def test_authorization_that_lands_after_void_is_voided_at_the_gateway(aws, handlers, context):
    """The gateway answers after the compensation ran: the late authorization must not hold money."""
    saga = run_forward(handlers, context, new_saga(aws), upto=2)
    module = handlers("authorize_payment")
    real_authorize = module.payments.gateway.authorize

    def authorize_then_lose_the_race(*args, **kwargs):
        reference = real_authorize(*args, **kwargs)
        invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment"))
        return reference

    module.payments.gateway.authorize = authorize_then_lose_the_race
    from order_saga.errors import PaymentVoided

    with pytest.raises(PaymentVoided):
        invoke(module, context, saga)
    assert payment(aws)["status"] == "VOIDED"
    assert ledger(aws)["state"] == "VOIDED"


def test_step_after_compensation_is_refused(aws, handlers, context):
    saga = run_forward(handlers, context, new_saga(aws), upto=1)
    invoke(handlers("cancel_order"), context, fail_at(saga, "ReserveInventory"))
    from order_saga.errors import OrderNotActive

    with pytest.raises(OrderNotActive):
        invoke(handlers("create_order"), context, saga)


def test_park_saga_sends_full_state_marks_failed_and_dedupes(aws, handlers, context, monkeypatch):
    import json

    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="parked.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    monkeypatch.setenv("PARKED_SAGAS_QUEUE_URL", url)
    saga = run_forward(handlers, context, new_saga(aws), upto=2)
    saga = {**fail_at(saga, "AuthorizePayment"), "failures": {
        "AuthorizePayment": {"Error": "States.Timeout", "Cause": "x"},
        "VoidPayment": {"Error": "PaymentGatewayUnavailable", "Cause": "y"}}}
    module = handlers("park_saga")
    invoke(module, context, saga)
    invoke(module, context, saga)
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 1
    body = json.loads(messages[0]["Body"])
    assert body["saga"]["order_id"] == "ord_1"
    assert body["saga"]["failures"]["VoidPayment"]["Error"] == "PaymentGatewayUnavailable"
    item = order(aws)
    assert item["saga_status"] == "FAILED"
    assert "VoidPayment: PaymentGatewayUnavailable" in item["parked_error"]


def test_malformed_step_event_is_rejected(aws, handlers, context):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        handlers("create_order").lambda_handler({"saga": {"order_id": "x"}}, context)


def test_create_order_creates_a_missing_order_from_the_execution_input(aws, handlers, context):
    """An execution started without the API (an operator's StartExecution) still gets its order."""
    saga = {"order_id": "ord_direct", "customer_id": "cust-9", "items": [{"sku": "SKU-2", "quantity": 1}],
            "payment_token": "tok_approve"}
    module = handlers("create_order")
    out = invoke(module, context, saga)
    tables = scan_all(aws)
    assert invoke(module, context, saga) == out
    assert scan_all(aws) == tables
    item = order(aws, "ord_direct")
    assert (item["saga_status"], item["total"]) == ("EXECUTING", 4000)


@pytest.mark.parametrize("name", ["reserve_inventory", "authorize_payment", "confirm_order"])
def test_forward_step_on_an_unknown_order_fails_before_any_side_effect(aws, handlers, context, name):
    from order_saga.errors import OrderNotActive

    saga = {"order_id": "ord_ghost", "customer_id": "c", "items": [{"sku": "SKU-1", "quantity": 1}],
            "payment_token": "tok_approve", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": 1250}],
            "total": 1250, "currency": "USD", "fence": 1, "deadline_at": 2**50}
    tables = scan_all(aws)
    with pytest.raises(OrderNotActive):
        invoke(handlers(name), context, saga)
    assert scan_all(aws) == tables
