"""The scenario matrix (tests/stack/scenario_matrix.json): every forward step x every kind of failure.

Each row gets its own catalog item and its own order, and its faults are scoped to that order, so all
rows run at once on the shared stack. Every row asserts the exact state path, the saga status, and the
tables afterwards: no residue (stock back, nothing held or captured, order cancelled), or for a recovered
failure, a confirmed order charged exactly once.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from order_saga.dynamo import from_ddb, to_ddb
from order_saga.gateway import LEDGER_PREFIX
from order_saga.inventory import Inventory
from order_saga.models import order_id_for
from sagalocal.scenarios import http
from sagalocal.timeline import history, visits, wait_for_execution
from tests.stack.conftest import ROOT

MATRIX = json.loads((Path(__file__).with_name("scenario_matrix.json")).read_text())["rows"]
STOCK, PRICE, QUANTITY = 10, 1000, 2
MONEY_GONE = (None, "DECLINED", "VOIDED", "REFUNDED")


def get(target, output, **key):
    resp = target.client("dynamodb").get_item(TableName=target.outputs[output], Key=to_ddb(key), ConsistentRead=True)
    return from_ddb(resp["Item"]) if "Item" in resp else None


def run_row(target, n: int, row: dict) -> dict:
    sku = f"MATRIX-{n}-{uuid.uuid4().hex[:6]}"
    Inventory(target.client("dynamodb"), target.outputs["InventoryTableName"]).put_item(
        sku, row["id"], PRICE, "USD", STOCK)
    trigger = row["trigger"]
    key = f"matrix-{row['id']}-{uuid.uuid4().hex}"
    order_id = order_id_for(key)
    if "fault" in trigger:
        rule = {"function": row["step"] + "Function", "order_id": order_id, **trigger["fault"]}
        status, body = http("POST", f"{target.api_url}/_sagalocal/faults", json.dumps(rule).encode())
        assert status == 201, body
    items = [{"sku": sku + ("-UNKNOWN" if trigger.get("unknown_sku") else ""),
              "quantity": trigger.get("quantity", QUANTITY)}]
    order = {"customer_id": "matrix", "items": items, "payment_token": trigger.get("token", "tok_approve")}
    sfn = target.client("stepfunctions")
    if trigger.get("direct_start"):
        arn = sfn.start_execution(stateMachineArn=target.outputs["StateMachineArn"], name=order_id,
                                  input=json.dumps({"order_id": order_id, **order}))["executionArn"]
    else:
        status, accepted = http("POST", f"{target.api_url}/orders", json.dumps(order).encode(),
                                {"Idempotency-Key": key})
        assert status == 202, accepted
        arn = accepted["execution_arn"]
    described = wait_for_execution(sfn, arn, timeout=120)
    return {
        "sku": sku, "order_id": order_id, "status": described["status"], "error": described.get("error"),
        "visits": visits(history(sfn, arn)),
        "order": get(target, "OrdersTableName", order_id=order_id),
        "payment": get(target, "PaymentsTableName", payment_id=order_id),
        "ledger": get(target, "PaymentsTableName", payment_id=LEDGER_PREFIX + order_id),
        "reservation": get(target, "InventoryTableName", pk=f"ORDER#{order_id}", sk="RESERVATION"),
        "stock": get(target, "InventoryTableName", pk=f"SKU#{sku}", sk="STOCK"),
    }


@pytest.fixture(scope="module")
def outcomes(target):
    if not target.embedded:
        pytest.skip("the matrix injects faults through the embedded stack's fault API")
    with ThreadPoolExecutor(max_workers=len(MATRIX)) as pool:
        futures = {row["id"]: pool.submit(run_row, target, n, row) for n, row in enumerate(MATRIX)}
        return {row_id: future.result() for row_id, future in futures.items()}


@pytest.mark.parametrize("row", MATRIX, ids=[row["id"] for row in MATRIX])
def test_matrix_row(outcomes, row):
    got, expect = outcomes[row["id"]], row["expect"]
    assert [v.name for v in got["visits"]] == expect["path"]
    assert got["status"] == expect["status"]
    assert got["error"] == expect.get("error")
    for state, attempts in expect.get("attempts", {}).items():
        assert next(v for v in got["visits"] if v.name == state).attempts == attempts
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
    assert (payment or {}).get("status") in MONEY_GONE
    assert (got["reservation"] or {}).get("status") in (None, "RELEASED")
    assert (stock["available"], stock["reserved"], stock["sold"]) == (STOCK, 0, 0)
    if "saga_status" in expect:
        assert (order["status"], order["saga_status"]) == ("CANCELLED", expect["saga_status"])
        assert "active" not in order
    else:
        assert order is None


def test_docs_scenarios_md_is_generated_from_the_matrix():
    from scripts.generate_scenarios_doc import render

    assert (ROOT / "docs/scenarios.md").read_text() == render(), "run `make docs` to regenerate docs/scenarios.md"


def test_the_matrix_covers_every_forward_step_and_every_failure_kind():
    kinds = {"business failure", "transient failure that recovers", "transient failure that exhausts its retries",
             "timeout", "crash after its write"}
    steps = ("CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder")
    assert {(row["step"], row["fault"]) for row in MATRIX} == {(s, k) for s in steps for k in kinds}
