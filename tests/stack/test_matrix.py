"""The scenario matrix (tests/stack/scenario_matrix.json): every forward step x every kind of failure, and
every forward step and compensation x the DynamoDB fault kinds (conflict, throttle, lost response).

Each row gets its own catalog item and its own order, and its fault rules are scoped to that order, so all
rows run at once on the shared stack. The faults are sagafaults rules in the stack's fault rules table, so
the matrix runs on any stack deployed with FaultInjection=true. Every row asserts the exact state path, the
attempts of the faulted state, the saga status, and the tables afterwards: no residue (stock back, nothing
held or captured, order cancelled), or, for a recovered failure, a confirmed order charged exactly once.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from order_saga.models import order_id_for
from tests.stack.conftest import ROOT
from tests.stack.support import http, path_of, start_direct, wait_for_execution

MATRIX = json.loads((Path(__file__).with_name("scenario_matrix.json")).read_text())["rows"]
STOCK, PRICE, QUANTITY = 10, 1000, 2
MONEY_GONE = (None, "DECLINED", "VOIDED", "REFUNDED")


def run_row(target, faults, n: int, row: dict) -> dict:
    sku = f"MATRIX-{n}-{uuid.uuid4().hex[:6]}"
    target.add_item(sku, PRICE, STOCK)
    trigger = row["trigger"]
    key = f"matrix-{row['id']}-{uuid.uuid4().hex}"
    _, customer = target.sign_in("matrix")
    order_id = order_id_for(customer, key)
    rules = [faults.add({**rule, "order_id": order_id}) for rule in trigger.get("rules", [])]
    try:
        items = [{"sku": sku, "quantity": trigger.get("quantity", QUANTITY)}]
        order = {"items": items, "payment_token": trigger.get("token", "tok_approve")}
        if trigger.get("direct_start"):
            arn = start_direct(target, order_id, {"order_id": order_id, "customer_id": customer})
        else:
            status, accepted = http("POST", f"{target.api_url}/orders", json.dumps(order).encode(),
                                    {"Idempotency-Key": key, **target.auth("matrix")}, timeout=60)
            assert status == 202, accepted
            arn = target.execution_arn(accepted["order_id"])
        described = wait_for_execution(target, arn, timeout=240)
    finally:
        spent = [faults.remaining(rule) for rule in rules]
        for rule in rules:
            faults.remove(rule)
    return {
        "sku": sku, "order_id": order_id, "status": described["status"], "error": described.get("error"),
        "visits": path_of(target, arn), "order": target.order(order_id), "payment": target.payment(order_id),
        "ledger": target.ledger(order_id), "reservation": target.reservation(order_id), "stock": target.stock(sku),
        "rules_left": spent,
    }


@pytest.fixture(scope="module")
def outcomes(target, faults):
    with ThreadPoolExecutor(max_workers=len(MATRIX)) as pool:
        futures = {row["id"]: pool.submit(run_row, target, faults, n, row) for n, row in enumerate(MATRIX)}
        return {row_id: future.result() for row_id, future in futures.items()}


@pytest.mark.parametrize("row", MATRIX, ids=[row["id"] for row in MATRIX])
def test_matrix_row(outcomes, row):
    got, expect = outcomes[row["id"]], row["expect"]
    assert [v.name for v in got["visits"]] == expect["path"]
    assert got["status"] == expect["status"]
    assert got["error"] == expect.get("error")
    for state, attempts in expect.get("attempts", {}).items():
        assert next(v for v in got["visits"] if v.name == state).attempts == attempts
    for state, (least, most) in expect.get("attempts_between", {}).items():
        assert least <= next(v for v in got["visits"] if v.name == state).attempts <= most
    assert all(left in (None, 0) for left in got["rules_left"]), f"a fault was not applied: {got['rules_left']}"
    stock = got["stock"]
    order, payment, ledger = got["order"], got["payment"], got["ledger"]
    if expect["money"] == "captured once":
        assert (order["status"], order["saga_status"]) == ("CONFIRMED", "COMPLETED")
        assert payment["status"] == "CAPTURED"
        assert (ledger["state"], ledger["amount"]) == ("CAPTURED", PRICE * QUANTITY) == ("CAPTURED", order["total"])
        assert got["reservation"]["status"] == "COMMITTED"
        assert (stock["available"], stock["reserved"], stock["sold"]) == (STOCK - QUANTITY, 0, QUANTITY)
        return
    # No residue: nothing held or captured, stock back, the order cancelled (or never created).
    assert (ledger or {}).get("state") in MONEY_GONE
    assert (payment or {}).get("status") in (*MONEY_GONE, "PENDING")
    assert (got["reservation"] or {}).get("status") in (None, "RELEASED")
    assert (stock["available"], stock["reserved"], stock["sold"]) == (STOCK, 0, 0)
    if "saga_status" in expect:
        assert (order["status"], order["saga_status"]) == ("CANCELLED", expect["saga_status"])
        assert "active" not in order
        assert order["failure"]["error"] == expect["error"].replace("Saga.", "States.")
    else:
        assert order is None


def test_docs_scenarios_md_is_generated_from_the_matrix():
    from scripts.generate_scenarios_doc import render

    assert (ROOT / "docs/scenarios.md").read_text() == render(), "run `make docs` to regenerate docs/scenarios.md"


def test_the_matrix_covers_every_step_and_every_failure_kind():
    lambda_kinds = {"business failure", "transient failure that recovers",
                    "transient failure that exhausts its retries", "timeout", "crash after its write"}
    dynamodb_kinds = {"DynamoDB conflict", "DynamoDB throttle", "DynamoDB lost response"}
    forward = ("CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder")
    compensations = ("VoidPayment", "RefundPayment", "ReleaseInventory", "CancelOrder")
    covered = {(row["step"], row["fault"]) for row in MATRIX}
    assert {(s, k) for s in forward for k in lambda_kinds} <= covered
    assert {(s, k) for s in forward + compensations for k in dynamodb_kinds} <= covered
