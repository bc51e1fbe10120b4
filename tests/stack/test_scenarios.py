"""Orders placed over HTTP through the API on the stack: outcome, exact state path, and the tables after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from order_saga.dynamo import from_ddb, to_ddb
from order_saga.gateway import LEDGER_PREFIX
from sagalocal.scenarios import http, load_manifest, run_scenario
from tests.stack.conftest import ROOT

EVENTS = ROOT / "events"
MANIFEST = load_manifest(EVENTS)
SCENARIOS = {spec["name"]: spec for spec in MANIFEST["scenarios"]}
CATALOG = {item["sku"]: item for item in json.loads((EVENTS / "catalog.json").read_text())}


def item(target, output: str, **key) -> dict | None:
    resp = target.client("dynamodb").get_item(TableName=target.outputs[output], Key=to_ddb(key),
                                              ConsistentRead=True)
    return from_ddb(resp["Item"]) if "Item" in resp else None


def place(target, name: str, unique: str):
    result = run_scenario(SCENARIOS[name], EVENTS, target.api_url, target.client("stepfunctions"), key_suffix=unique)
    assert result.ok, result.problems
    return result


def body_of(name: str) -> dict:
    event = json.loads((EVENTS / SCENARIOS[name]["event"]).read_text())
    return json.loads(event["body"])


def test_success_confirms_captures_once_and_commits_stock(target, unique):
    r = place(target, "success", unique)
    assert r.path == ["CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder", "OrderConfirmed"]
    order = item(target, "OrdersTableName", order_id=r.order_id)
    assert (order["status"], order["saga_status"]) == ("CONFIRMED", "COMPLETED")
    expected_total = sum(CATALOG[line["sku"]]["price"] * line["quantity"] for line in body_of("success")["items"])
    assert order["total"] == expected_total
    assert item(target, "PaymentsTableName", payment_id=r.order_id)["status"] == "CAPTURED"
    ledger = item(target, "PaymentsTableName", payment_id=LEDGER_PREFIX + r.order_id)
    assert (ledger["state"], ledger["amount"]) == ("CAPTURED", expected_total)
    reservation = item(target, "InventoryTableName", pk=f"ORDER#{r.order_id}", sk="RESERVATION")
    assert reservation["status"] == "COMMITTED"


def test_declined_payment_releases_stock_and_holds_no_money(target, unique):
    r = place(target, "declined-payment", unique)
    assert r.path == ["CreateOrder", "ReserveInventory", "AuthorizePayment", "ReleaseInventory", "CancelOrder",
                      "SagaCompensated"]
    assert r.error == "PaymentDeclined"
    order = item(target, "OrdersTableName", order_id=r.order_id)
    assert (order["status"], order["saga_status"]) == ("CANCELLED", "COMPENSATED")
    assert order["steps"]["AuthorizePayment"]["error"] == "PaymentDeclined"
    assert item(target, "InventoryTableName", pk=f"ORDER#{r.order_id}", sk="RESERVATION")["status"] == "RELEASED"
    assert item(target, "PaymentsTableName", payment_id=LEDGER_PREFIX + r.order_id)["state"] == "DECLINED"


def test_out_of_stock_reserves_nothing_and_never_reaches_payment(target, unique):
    r = place(target, "out-of-stock", unique)
    assert r.path == ["CreateOrder", "ReserveInventory", "CancelOrder", "SagaCompensated"]
    assert r.error == "InsufficientStock"
    assert item(target, "InventoryTableName", pk=f"ORDER#{r.order_id}", sk="RESERVATION") is None
    assert item(target, "PaymentsTableName", payment_id=r.order_id) is None


def test_transient_gateway_failure_recovers_after_two_retries_and_charges_once(target, unique):
    r = place(target, "transient-payment-failure", unique)
    authorize = next(v for v in r.visits if v.name == "AuthorizePayment")
    assert (authorize.attempts, authorize.errors) == (3, ["PaymentGatewayUnavailable"] * 2)
    ledger = item(target, "PaymentsTableName", payment_id=LEDGER_PREFIX + r.order_id)
    assert (ledger["state"], ledger["failures"]) == ("CAPTURED", 3)


def test_duplicate_submission_starts_one_saga_and_replays_the_response(target, unique):
    r = place(target, "duplicate-submission", unique)
    assert r.status == "SUCCEEDED"
    # run_scenario checked: both POSTs answered 202 with the same body, and one execution exists.


def test_same_key_with_another_body_is_422(target, unique):
    r = place(target, "success", unique)
    headers = {"Idempotency-Key": "order-success-0001" + unique, "Content-Type": "application/json"}
    changed = {**body_of("success"), "payment_token": "tok_decline"}
    status, payload = http("POST", f"{target.api_url}/orders", json.dumps(changed).encode(), headers)
    assert status == 422, payload
    order = item(target, "OrdersTableName", order_id=r.order_id)
    assert order["saga_status"] == "COMPLETED"


def test_payment_that_hangs_past_its_timeout_is_voided_and_stock_released(target, unique):
    """tok_hang outlives AuthorizePayment's 9 s Lambda timeout: Sandbox.Timedout, then compensation."""
    body = json.dumps({"customer_id": "cust-hang", "items": [{"sku": "MUG-BLUE", "quantity": 1}],
                       "payment_token": "tok_hang"}).encode()
    status, accepted = http("POST", f"{target.api_url}/orders", body, {"Idempotency-Key": "hang" + unique})
    assert status == 202
    from sagalocal.timeline import history, visits, wait_for_execution

    sfn = target.client("stepfunctions")
    described = wait_for_execution(sfn, accepted["execution_arn"], timeout=60)
    path = visits(history(sfn, accepted["execution_arn"]))
    assert [v.name for v in path] == ["CreateOrder", "ReserveInventory", "AuthorizePayment", "VoidPayment",
                                      "ReleaseInventory", "CancelOrder", "SagaCompensated"]
    assert described["error"] == "Sandbox.Timedout"
    order_id = accepted["order_id"]
    assert item(target, "PaymentsTableName", payment_id=order_id)["status"] == "VOIDED"
    assert item(target, "InventoryTableName", pk=f"ORDER#{order_id}", sk="RESERVATION")["status"] == "RELEASED"


def test_stock_is_conserved_for_every_item(target):
    """Whatever ran before on this stack: available + reserved + sold is what the catalog started with."""
    for sku, entry in CATALOG.items():
        stock = item(target, "InventoryTableName", pk=f"SKU#{sku}", sk="STOCK")
        assert stock["available"] + stock["reserved"] + stock["sold"] == entry["available"], sku
        assert min(stock["available"], stock["reserved"], stock["sold"]) >= 0


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), [
    ("POST", "/orders", b'{"customer_id": "c"}', {}, 400),
    ("POST", "/orders", b"not json", {"Idempotency-Key": "k"}, 400),
    ("GET", "/orders/ord_unknown", None, {}, 404),
    ("GET", "/nothing-here", None, {}, 403),
])
def test_http_errors_are_clear_json(target, method, path, body, headers, status):
    got, payload = http(method, target.api_url + path, body, headers)
    assert got == status
    assert isinstance(payload, dict)
    assert payload.get("error") or payload.get("message")


def test_history_command_prints_the_timeline(target, unique):
    if not target.embedded:
        pytest.skip("the history command reads the embedded stack's endpoint")
    r = place(target, "out-of-stock", unique)
    out = subprocess.run([sys.executable, "-m", "sagalocal", "history", r.order_id, "--endpoint", target.endpoint],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, check=True).stdout
    assert "InsufficientStock" in out
    for state in ("CreateOrder", "ReserveInventory", "CancelOrder", "SagaCompensated"):
        assert state in out


def test_outputs_name_every_table(target):
    for key in ("OrdersTableName", "InventoryTableName", "PaymentsTableName", "IdempotencyTableName",
                "StateMachineArn", "ParkedSagasQueueUrl"):
        assert target.outputs.get(key), key
    assert Path(ROOT / "template.yaml").is_file()
