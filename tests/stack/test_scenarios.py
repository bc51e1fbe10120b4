"""Orders placed over HTTP through the API: outcome, exact state path, and the tables afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scripts.scenarios import Customers, load_manifest, run_scenario
from tests.stack.conftest import ROOT
from tests.stack.support import TYPED, UNTYPED, depends_on_error_names, http, path_of, place, wait_for_execution

EVENTS = ROOT / "events"
MANIFEST = load_manifest(EVENTS)
SCENARIOS = {spec["name"]: spec for spec in MANIFEST["scenarios"]}
CATALOG = {item["sku"]: item for item in json.loads((EVENTS / "catalog.json").read_text())}


def scenario(target, name: str, unique: str):
    if depends_on_error_names(SCENARIOS[name]["expect"]):
        target.require_error_names()
    result = run_scenario(SCENARIOS[name], EVENTS, target.api_url, target.client("stepfunctions"),
                          Customers(target.client("cognito-idp"), target.outputs),
                          target.endpoint if target.embedded else None, key_suffix=unique)
    assert result.ok, result.problems
    return result


def body_of(name: str) -> dict:
    event = json.loads((EVENTS / SCENARIOS[name]["event"]).read_text())
    return json.loads(event["body"])


def test_success_confirms_captures_once_and_commits_stock(target, unique):
    r = scenario(target, "success", unique)
    assert r.path == ["ReserveInventory", "RouteOrder", "AuthorizePayment", "ConfirmOrder"]
    order = target.order(r.order_id)
    assert (order["status"], order["saga_status"]) == ("CONFIRMED", "COMPLETED")
    expected_total = sum(CATALOG[line["sku"]]["price"] * line["quantity"] for line in body_of("success")["items"])
    assert order["total"] == expected_total
    assert target.payment(r.order_id)["status"] == "CAPTURED"
    assert (target.ledger(r.order_id)["state"], target.ledger(r.order_id)["amount"]) == ("CAPTURED", expected_total)
    assert target.reservation(r.order_id)["status"] == "COMMITTED"


def test_declined_payment_releases_stock_and_holds_no_money(target, unique):
    r = scenario(target, "declined-payment", unique)
    assert r.path == ["ReserveInventory", "RouteOrder", "AuthorizePayment", "CouponHeld",
                      "ReleaseInventory", "CancelOrder", "SagaCompensated"]
    assert r.error == "PaymentDeclined"
    order = target.order(r.order_id)
    assert (order["status"], order["saga_status"]) == ("CANCELLED", "COMPENSATED")
    assert (order["failure"]["step"], order["failure"]["error"]) == ("AuthorizePayment", "PaymentDeclined")
    assert target.reservation(r.order_id)["status"] == "RELEASED"
    assert target.ledger(r.order_id)["state"] == "DECLINED"


def test_out_of_stock_reserves_nothing_and_never_reaches_payment(target, unique):
    r = scenario(target, "out-of-stock", unique)
    assert r.path == ["ReserveInventory", "CancelOrder", "SagaCompensated"]
    assert r.error == "InsufficientStock"
    assert target.reservation(r.order_id) is None
    assert target.payment(r.order_id)["status"] == "PENDING"  # the card on file, never charged
    assert target.ledger(r.order_id) is None


def test_transient_gateway_failure_recovers_after_two_retries_and_charges_once(target, unique):
    r = scenario(target, "transient-payment-failure", unique)
    authorize = next(v for v in r.visits if v.name == "AuthorizePayment")
    # The card fails twice; on a busy machine a slow call can time out at the client once more (LOAD_ERRORS).
    assert authorize.errors[:2] == ["PaymentGatewayUnavailable"] * 2, authorize.errors
    assert set(authorize.errors) == {"PaymentGatewayUnavailable"}, authorize.errors
    assert authorize.attempts == len(authorize.errors) + 1  # each failure retried, the last attempt succeeded
    ledger = target.ledger(r.order_id)
    assert ledger["state"] == "CAPTURED"
    assert 3 <= ledger["failures"] <= authorize.attempts  # every call the processor saw counts


def test_duplicate_submission_starts_one_saga_and_replays_the_response(target, unique):
    r = scenario(target, "duplicate-submission", unique)
    assert r.status == "SUCCEEDED"
    # run_scenario checked: both POSTs answered 202 with the same body, and one execution exists.


def test_a_coupon_is_priced_by_the_api_held_then_redeemed_once(target, unique):
    coupon_before = target.coupon("FIVEOFF")
    r = scenario(target, "coupon", unique)
    order = target.order(r.order_id)
    subtotal = sum(CATALOG[line["sku"]]["price"] * line["quantity"] for line in body_of("coupon")["items"])
    assert (order["subtotal"], order["coupon"], order["discount"], order["total"]) == (
        subtotal, "FIVEOFF", 500, subtotal - 500)
    assert (target.ledger(r.order_id)["state"], target.ledger(r.order_id)["amount"]) == ("CAPTURED", subtotal - 500)
    assert target.redemption("FIVEOFF", r.order_id)["status"] == "COMMITTED"
    assert target.coupon("FIVEOFF")["redeemed"] >= coupon_before["redeemed"] + 1  # (others may redeem it too)


def test_a_split_payment_captures_each_card_for_its_own_amount(target, unique):
    r = scenario(target, "split-payment", unique)
    amounts = [method["amount"] for method in body_of("split-payment")["payment"]]
    assert [(target.ledger(r.order_id, m)["state"], target.ledger(r.order_id, m)["amount"])
            for m in (1, 2)] == [("CAPTURED", amount) for amount in amounts]
    assert sum(amounts) == target.order(r.order_id)["total"]


def test_a_split_payment_with_a_declined_card_voids_the_other(target, unique):
    r = scenario(target, "split-payment-declined", unique)
    states = sorted(target.ledger(r.order_id, m)["state"] for m in (1, 2))
    assert states == ["DECLINED", "VOIDED"]
    order = target.order(r.order_id)
    assert (order["failure"]["step"], order["failure"]["error"]) == ("AuthorizePayments", "PaymentDeclined")
    assert target.reservation(r.order_id)["status"] == "RELEASED"


@pytest.mark.parametrize(("change", "status", "field"), [
    ({"coupon": "NO-SUCH-COUPON"}, 422, "coupon"),
    ({"coupon": "SUMMER25"}, 422, "coupon"),  # its window ended in 2025
    ({"payment_token": None, "payment": [{"token": "tok_approve", "amount": 1}, {"token": "tok_approve", "amount": 1}]},
     400, "payment_total"),
    ({"payment_token": None, "payment": []}, 400, None),
    ({"payment": [{"token": "tok_approve", "amount": 2500}]}, 400, None),  # a token and a payment list
])
def test_a_bad_coupon_or_payment_split_is_refused_and_writes_nothing(target, unique, change, status, field):
    body = {**body_of("success"), **change}
    body = {k: v for k, v in body.items() if v is not None}
    key = "bad-order" + unique
    got, payload = http("POST", f"{target.api_url}/orders", json.dumps(body).encode(),
                        {"Idempotency-Key": key, "Content-Type": "application/json", **target.auth("cust-ada")})
    assert got == status, payload
    if field:
        assert field in json.dumps(payload), payload
    from order_saga.models import order_id_for

    assert target.order(order_id_for(target.sign_in("cust-ada")[1], key)) is None


def test_same_key_with_another_body_is_422(target, unique):
    r = scenario(target, "success", unique)
    headers = {"Idempotency-Key": "order-success-0001" + unique, "Content-Type": "application/json",
               **target.auth("cust-ada")}
    changed = {**body_of("success"), "payment_token": "tok_decline"}
    status, payload = http("POST", f"{target.api_url}/orders", json.dumps(changed).encode(), headers)
    assert status == 422, payload
    assert target.order(r.order_id)["saga_status"] == "COMPLETED"


def test_a_gateway_that_never_answers_costs_the_client_timeout_and_the_saga_compensates(target):
    """tok_hang: the processor takes an hour. The gateway client gives up at its timeout (the outcome is
    unknown), the retries are told the authorization is in progress, and the saga compensates; the payment
    is marked for the reaper's reconciliation. No Lambda timeout: the call fits its function."""
    target.require_error_names()  # PaymentGatewayUnavailable's retries and Catch, and the error it fails with
    accepted = place(target, [{"sku": "MUG-BLUE", "quantity": 1}], "tok_hang")
    described = wait_for_execution(target, accepted["execution_arn"], timeout=90)
    visits = path_of(target, accepted["execution_arn"])
    assert [v.name for v in visits] == [
        "ReserveInventory", "RouteOrder", "AuthorizePayment", "VoidPayment", "CouponHeld",
        "ReleaseInventory", "CancelOrder", "SagaCompensated"]
    authorize = next(v for v in visits if v.name == "AuthorizePayment")
    assert set(authorize.errors) == {"PaymentGatewayUnavailable"}
    assert described["error"] == "PaymentGatewayUnavailable"
    payment = target.payment(accepted["order_id"])
    assert payment["status"] == "VOIDED"
    assert "reconcile_at" in payment
    assert target.ledger(accepted["order_id"])["state"] == "PROCESSING"
    assert target.reservation(accepted["order_id"])["status"] == "RELEASED"


def test_stock_is_conserved_for_every_catalog_item(target):
    """Whatever ran before on this stack: available + reserved + sold is what the catalog started with."""
    for sku, entry in CATALOG.items():
        stock = target.stock(sku)
        assert stock["available"] + stock["reserved"] + stock["sold"] == entry["available"], sku
        assert min(stock["available"], stock["reserved"], stock["sold"]) >= 0


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), [
    ("POST", "/orders", b'{"customer_id": "c"}', {}, 400),
    ("POST", "/orders", b"not json", {"Idempotency-Key": "k"}, 400),
    ("GET", "/orders/ord_unknown", None, {}, 404),
    ("GET", "/nothing-here", None, {}, 403),
])
def test_http_errors_are_clear_json(target, method, path, body, headers, status):
    got, payload = http(method, target.api_url + path, body, {**headers, **target.auth()})
    assert got == status
    assert isinstance(payload, dict)
    assert payload.get("error") or payload.get("message")
    assert None not in payload.values()


def test_history_command_prints_the_timeline(target, unique):
    r = scenario(target, "out-of-stock", unique)
    args = ["--endpoint", target.endpoint] if target.endpoint else []
    out = subprocess.run([sys.executable, "-m", "sagalocal", "history", r.order_id, *args, "--region", target.region],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, check=True).stdout
    assert "InsufficientStock" in out
    for state in ("ReserveInventory", "CancelOrder", "SagaCompensated"):
        assert state in out


def test_outputs_name_every_table_and_queue(target):
    for key in ("OrdersTableName", "InventoryTableName", "PaymentsTableName", "StateMachineArn",
                "ParkedSagasQueueUrl", "ReaperFunctionName"):
        assert target.outputs.get(key), key


def test_a_step_s_error_reaches_the_state_machine_by_its_name(target):
    """The saga's error API is its steps' exception class names: its Retry and Catch list them, an execution fails
    with one. The engine must pass them on: ReserveInventory's OrderNotActive, for an order that does not exist, is what
    the execution's history records (tests/stack/support.py Target.probed_error). Where an engine cannot, the
    scenarios and matrix rows whose outcome rests on an error's name are skipped, saying so."""
    assert target.probed_error() == TYPED, f"the probe: {target.probed_error()!r}; {UNTYPED}"
