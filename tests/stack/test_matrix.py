"""The scenario matrix (tests/stack/scenario_matrix.json): every forward step x every kind of failure, and
every forward step and compensation x the DynamoDB fault kinds (conflict, throttle, lost response).

Each row gets its own catalog item and its own order, and its fault rules are scoped to that order, so all
rows run at once on the shared stack. The faults are sagafaults rules in the stack's fault rules table, so
the matrix runs on any stack deployed with FaultInjection=true. Every row asserts the exact state path, the
attempts of the faulted state (less the retries a busy machine caused: see LOAD_ERRORS), the saga status, and
the tables afterwards: no residue (stock back, nothing held or captured on any method, the coupon's counts
back, order cancelled), or, for a recovered failure, a confirmed order charged exactly once per method for the
discounted total and its coupon redeemed once. The Map's inner state (AuthorizeMethod, once per method) is
left out of the path; its attempts are summed.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from order_saga.models import order_id_for
from order_saga.promotions import Promotions
from scripts.redrive_parked import Operator
from tests.stack.conftest import ROOT
from tests.stack.support import (
    attempts_beyond_load,
    path_of,
    post_order,
    settle_late_authorizations,
    start_direct,
    wait_for_execution,
    wait_until,
)

MATRIX = json.loads((Path(__file__).with_name("scenario_matrix.json")).read_text())["rows"]
STOCK, PRICE, QUANTITY = 10, 1000, 2
MONEY_GONE = (None, "DECLINED", "VOIDED", "REFUNDED")
INNER = "AuthorizeMethod"  # the AuthorizePayments Map's one state


def split(total: int, parts: int) -> list[int]:
    """`total` over `parts` methods, as evenly as minor units allow (the first takes the remainder)."""
    base = total // parts
    return [total - base * (parts - 1)] + [base] * (parts - 1)


def prepare_coupon(target, spec: dict, code: str, customer: str) -> None:
    target.add_coupon(code, spec["kind"], spec["value"], spec["max_redemptions"], spec["per_customer"])
    ddb, table = target.client("dynamodb"), target.outputs["PromotionsTableName"]
    if spec.get("preset") == "global limit reached":
        ddb.update_item(TableName=table, Key={"pk": {"S": f"COUPON#{code}"}, "sk": {"S": "COUPON"}},
                        UpdateExpression="SET redeemed = max_redemptions")
    elif spec.get("preset") == "customer limit reached":
        ddb.put_item(TableName=table, Item={"pk": {"S": f"COUPON#{code}"}, "sk": {"S": f"CUSTOMER#{customer}"},
                                            "used": {"N": str(spec["per_customer"])}})


def after_post(target, spec: dict, code: str) -> None:
    """What happens to the coupon once the API priced it (ApplyCoupon is held back by a delay rule)."""
    ddb, table = target.client("dynamodb"), target.outputs["PromotionsTableName"]
    key = {"pk": {"S": f"COUPON#{code}"}, "sk": {"S": "COUPON"}}
    if spec.get("after_post") == "expire":
        ddb.update_item(TableName=table, Key=key, UpdateExpression="SET valid_until = :now",
                        ExpressionAttributeValues={":now": {"N": str(int(time.time() * 1000) - 1)}})
    elif spec.get("after_post") == "delete":
        ddb.delete_item(TableName=table, Key=key)


def run_row(target, faults, n: int, row: dict) -> dict:
    sku = f"MATRIX-{n}-{uuid.uuid4().hex[:6]}"
    target.add_item(sku, PRICE, STOCK)
    trigger = row["trigger"]
    key = f"matrix-{row['id']}-{uuid.uuid4().hex}"
    _, customer = target.sign_in("matrix")
    order_id = order_id_for(customer, key)
    rules = [faults.add({**rule, "order_id": order_id}) for rule in trigger.get("rules", [])]
    spec, code = trigger.get("coupon"), f"MX{n}{uuid.uuid4().hex[:6].upper()}"
    quantity = trigger.get("quantity", QUANTITY)
    total = PRICE * quantity
    if spec:
        prepare_coupon(target, spec, code, customer)
        total -= Promotions.discount(target.coupon(code), code, total, "USD", int(time.time() * 1000))
    tokens = trigger.get("tokens", [trigger.get("token", "tok_approve")])
    amounts = split(total, len(tokens))
    try:
        order: dict = {"items": [{"sku": sku, "quantity": quantity}]}
        if len(tokens) == 1:
            order["payment_token"] = tokens[0]
        else:
            order["payment"] = [{"token": t, "amount": a} for t, a in zip(tokens, amounts, strict=True)]
        if spec:
            order["coupon"] = code
        if trigger.get("direct_start"):
            arn = start_direct(target, order_id, {"order_id": order_id, "customer_id": customer})
        else:
            # As a careful client: a 429 or a 503 (the store busy, 69 rows at once) is retried with the same key.
            status, accepted = post_order(target, json.dumps(order).encode(), key, timeout=60, customer="matrix")
            assert status == 202, accepted
            if spec:
                after_post(target, spec, code)
            arn = target.execution_arn(accepted["order_id"])
        described = wait_for_execution(target, arn, timeout=240)
        parked_error = None
        if trigger.get("redrive"):
            # docs/operations.md: the failure parks the saga (ParkSaga, on EventBridge: asynchronously); the cause
            # is gone (the rule is spent); the operator's one command redrives it.
            parked = wait_until(lambda: (o := target.order(order_id) or {}).get("saga_status") == "FAILED" and o,
                                90, f"{row['id']}: the saga is parked")
            parked_error = parked.get("parked_error")
            (outcome,) = Operator(target.outputs, client=target.client, timeout=240).run([order_id])
            assert (outcome.redriven, outcome.saga_status) == (True, "COMPENSATED"), outcome.line()
            described = target.client("stepfunctions").describe_execution(executionArn=arn)
    finally:
        spent = [faults.remaining(rule) for rule in rules]
        for rule in rules:
            faults.remove(rule)
    methods = range(1, len(tokens) + 1)
    if row["expect"]["money"] != "captured once":
        # A Map iteration still in flight when another method failed the Map may authorize after VoidPayment ran;
        # it voids that itself, or the reaper's reconciliation does: wait for it, as for any cancelled order.
        settle_late_authorizations(target, {order_id: len(tokens)})
    return {
        "sku": sku, "order_id": order_id, "status": described["status"], "error": described.get("error"),
        "parked_error": parked_error,
        "visits": path_of(target, arn), "order": target.order(order_id), "amounts": amounts, "total": total,
        "payments": [target.payment(order_id, m) for m in methods],
        "ledgers": [target.ledger(order_id, m) for m in methods],
        "reservation": target.reservation(order_id), "stock": target.stock(sku), "rules_left": spent,
        "coupon": spec and {"item": target.coupon(code), "redemption": target.redemption(code, order_id),
                            "used": target.coupon_use(code, customer)},
    }


NEEDS_FAULTS = "its fault is a sagafaults rule: the stack must be deployed with FaultInjection=true"


@pytest.fixture(scope="module")
def outcomes(target, request):
    """Every row's outcome. On a stack without fault injection the rows whose fault is a rule are skipped
    (and say why); the business rows (a sold-out item, a declined card, a coupon used up, a split payment)
    need no rule and always run."""
    faults = request.getfixturevalue("faults") if target.outputs.get("FaultRulesTableName") else None
    runnable = {row["id"] for row in MATRIX if faults is not None or not row["trigger"].get("rules")}
    with ThreadPoolExecutor(max_workers=len(MATRIX)) as pool:
        futures = {row["id"]: pool.submit(run_row, target, faults, n, row) for n, row in enumerate(MATRIX)
                   if row["id"] in runnable}
        ran = {row_id: future.result() for row_id, future in futures.items()}
    return {row["id"]: ran.get(row["id"], {"skipped": NEEDS_FAULTS}) for row in MATRIX}


@pytest.mark.parametrize("row", MATRIX, ids=[row["id"] for row in MATRIX])
def test_matrix_row(outcomes, row):
    got, expect = outcomes[row["id"]], row["expect"]
    if "skipped" in got:
        pytest.skip(got["skipped"])
    assert [v.name for v in got["visits"] if v.name != INNER] == expect["path"]
    assert got["status"] == expect["status"]
    assert got["error"] == expect.get("error")
    assert got["parked_error"] == expect.get("parked_error")  # parked (and then redriven) only where a row says so
    for state, attempts in expect.get("attempts", {}).items():  # the fault's, and any a busy machine added
        seen = [v for v in got["visits"] if v.name == state]
        assert attempts_beyond_load(seen) == attempts, [(v.attempts, v.errors) for v in seen]
    for state, (least, most) in expect.get("attempts_between", {}).items():
        assert least <= sum(v.attempts for v in got["visits"] if v.name == state) <= most
    assert all(left in (None, 0) for left in got["rules_left"]), f"a fault was not applied: {got['rules_left']}"
    stock, order, coupon = got["stock"], got["order"], got["coupon"]
    spec = row["trigger"].get("coupon") or {}
    if expect["money"] == "captured once":
        assert (order["status"], order["saga_status"]) == ("CONFIRMED", "COMPLETED")
        assert all(payment["status"] == "CAPTURED" for payment in got["payments"])
        assert [(ledger["state"], ledger["amount"]) for ledger in got["ledgers"]] == [
            ("CAPTURED", amount) for amount in got["amounts"]]
        assert sum(got["amounts"]) == got["total"] == order["total"] == PRICE * QUANTITY - order.get("discount", 0)
        assert got["reservation"]["status"] == "COMMITTED"
        assert (stock["available"], stock["reserved"], stock["sold"]) == (STOCK - QUANTITY, 0, QUANTITY)
        if coupon:
            assert order["discount"] > 0
            assert coupon["redemption"]["status"] == "COMMITTED"
            assert (coupon["item"]["redeemed"], coupon["used"]) == (1, 1)
        return
    # No residue: nothing held or captured on any method, stock and coupon back, the order cancelled (or never
    # created).
    assert all((ledger or {}).get("state") in MONEY_GONE for ledger in got["ledgers"]), got["ledgers"]
    assert all((payment or {}).get("status") in (*MONEY_GONE, "PENDING") for payment in got["payments"])
    assert (got["reservation"] or {}).get("status") in (None, "RELEASED")
    if coupon:
        assert (coupon["redemption"] or {}).get("status") in (None, "RELEASED")
        if coupon["item"] is not None:  # (deleted by the row)
            preset = spec["max_redemptions"] if spec.get("preset") == "global limit reached" else 0
            assert coupon["item"]["redeemed"] == preset
        assert coupon["used"] == (spec["per_customer"] if spec.get("preset") == "customer limit reached" else 0)
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
    forward = ("CreateOrder", "ReserveInventory", "ApplyCoupon", "AuthorizePayment", "ConfirmOrder")
    compensations = ("VoidPayment", "RefundPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder")
    covered = {(row["step"], row["fault"]) for row in MATRIX}
    assert {(s, k) for s in forward for k in lambda_kinds} <= covered
    assert {(s, k) for s in forward + compensations for k in dynamodb_kinds} <= covered
    # Every coupon refusal, and a split payment with each of its methods failing in turn.
    assert {row["expect"].get("error") for row in MATRIX if row["step"] == "ApplyCoupon"} >= {
        "CouponInvalid", "CouponExpired", "CouponExhausted"}
    split_rows = [row for row in MATRIX if row["step"] == "AuthorizePayments"]
    declined = {(len(row["trigger"]["tokens"]), row["trigger"]["tokens"].index("tok_decline")) for row in split_rows
                if "tok_decline" in row["trigger"]["tokens"]}
    assert {(2, 0), (2, 1), (3, 2)} <= declined
    assert {"transient failure that recovers", "crash after its write", "capture fails after another succeeded"} <= {
        row["fault"] for row in split_rows}
