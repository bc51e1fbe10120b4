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

A row with `parameters` needs a stack deployed with those template parameters (the coupon policy's `continue`
rows: CouponFailurePolicy=continue). The shared stack has the defaults, so those rows run on one more embedded
stack, started with them while the other rows run and stopped once its rows are done; it is started only when
such a row is selected. On a deployed target they are skipped (deploy a second stack with the parameters and
point the tier at it to run them). Only the selected rows run (`-k coupon`: the coupon rows).
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
from tests.stack.conftest import DEPLOYED, ROOT, side_by_side, start_embedded, stop
from tests.stack.support import (
    UNTYPED,
    FaultRules,
    attempts_beyond_load,
    depends_on_error_names,
    get_order,
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
CAPTURED = ("captured once", "captured once at the original amount")  # the latter: the coupon not applied
REFUSALS = ("CouponInvalid", "CouponExpired", "CouponExhausted")
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
    if row["expect"]["money"] not in CAPTURED:
        # A Map iteration still in flight when another method failed the Map may authorize after VoidPayment ran;
        # it voids that itself, or the reaper's reconciliation does: wait for it, as for any cancelled order.
        settle_late_authorizations(target, {order_id: len(tokens)})
    # What the customer sees: the order through GET /orders/{id}, for the rows that check it.
    view = get_order(target, order_id, customer="matrix") if "coupon_outcome" in row["expect"] else None
    return {
        "sku": sku, "order_id": order_id, "status": described["status"], "error": described.get("error"),
        "view": view, "discount": PRICE * quantity - total,
        "parked_error": parked_error,
        "visits": path_of(target, arn), "order": target.order(order_id), "amounts": amounts, "total": total,
        "payments": [target.payment(order_id, m) for m in methods],
        "ledgers": [target.ledger(order_id, m) for m in methods],
        "reservation": target.reservation(order_id), "stock": target.stock(sku), "rules_left": spent,
        "coupon": spec and {"item": target.coupon(code), "redemption": target.redemption(code, order_id),
                            "used": target.coupon_use(code, customer)},
    }


NEEDS_FAULTS = "its fault is a sagafaults rule: the stack must be deployed with FaultInjection=true"
NEEDS_PARAMETERS = ("it needs a stack deployed with {}: the matrix starts one only as an embedded stack; on a "
                    "deployed target, deploy a second stack with them and run the tier against it")


def overrides_of(row: dict) -> tuple[str, ...]:
    return tuple(f"{name}={value}" for name, value in sorted(row.get("parameters", {}).items()))


def selected_rows(request) -> set[str]:
    """The rows whose test this session runs (`-k` deselects the others: they are not run either)."""
    return {item.callspec.params["row"]["id"] for item in request.session.items
            if getattr(item, "originalname", None) == "test_matrix_row" and hasattr(item, "callspec")}


def outcome_events(target, order_ids: set[str], timeout: float = 120.0) -> dict[str, list[dict]]:
    """Order id -> the outcome events its stack published for it, read off the stack's outcome events queue once
    each order has one (or the deadline passed), then 3 s more for repeats. Only for the parameters' own stack,
    whose queue no other test reads."""
    sqs, url = target.client("sqs"), target.outputs["OutcomeEventsQueueUrl"]
    seen: dict[str, list[dict]] = {order_id: [] for order_id in order_ids}
    deadline, settle = time.monotonic() + timeout, None
    while time.monotonic() < (settle or deadline):
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           VisibilityTimeout=30).get("Messages", []):
            event = json.loads(message["Body"])
            if event["detail"]["order_id"] in seen:
                seen[event["detail"]["order_id"]].append(event)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if settle is None and all(seen.values()):
            settle = time.monotonic() + 3
    return seen


def run_on_own_stack(workdir: Path, overrides: tuple[str, ...], rows: list[tuple[int, dict]]) -> dict[str, dict]:
    """The rows that need template parameters, on one more embedded stack deployed with them (and the tier's
    usual ones: fault injection on, the limits lifted), stopped once they are done; with each order's outcome
    events."""
    process, stack = start_embedded(workdir, overrides=overrides)
    try:
        faults = FaultRules(stack)
        with ThreadPoolExecutor(max_workers=len(rows)) as pool:
            futures = {row["id"]: pool.submit(run_row, stack, faults, n, row) for n, row in rows}
            ran = {row_id: future.result() for row_id, future in futures.items()}
        events = outcome_events(stack, {got["order_id"] for got in ran.values()})
    finally:
        stop(process)
    return {row_id: {**got, "events": events[got["order_id"]]} for row_id, got in ran.items()}


@pytest.fixture(scope="module")
def outcomes(target, request):
    """Every selected row's outcome. On a stack without fault injection the rows whose fault is a rule are
    skipped (and say why); the business rows (a sold-out item, a declined card, a coupon used up, a split
    payment) need no rule and always run. The rows with `parameters` run on their own embedded stack, started
    at the same time as the shared stack's rows (one stack: all such rows must name the same parameters)."""
    faults = request.getfixturevalue("faults") if target.outputs.get("FaultRulesTableName") else None
    selected = selected_rows(request)
    shared = [(n, row) for n, row in enumerate(MATRIX) if row["id"] in selected and not row.get("parameters")
              and (faults is not None or not row["trigger"].get("rules"))]
    own = [(n, row) for n, row in enumerate(MATRIX) if row["id"] in selected and row.get("parameters")]
    kinds = {overrides_of(row) for _, row in own}
    assert len(kinds) <= 1, f"the matrix starts one more stack, not one per set of parameters: {kinds}"
    skipped = {row["id"]: {"skipped": NEEDS_PARAMETERS.format(" ".join(overrides_of(row)))} for _, row in own} \
        if DEPLOYED else {}
    if DEPLOYED and shared and not target.typed_errors():  # (the embedded stack's own stacks name them: probed)
        untyped = {"skipped": UNTYPED}
        skipped.update({row["id"]: untyped for _, row in shared
                        if depends_on_error_names(row["expect"], row["trigger"])})
        shared = [(n, row) for n, row in shared if row["id"] not in skipped]
    with ThreadPoolExecutor(max_workers=side_by_side(len(shared)) + 1) as pool:
        separate = pool.submit(run_on_own_stack, request.getfixturevalue("tmp_path_factory").mktemp("parameters"),
                               kinds.pop(), own) if own and not DEPLOYED else None
        futures = {row["id"]: pool.submit(run_row, target, faults, n, row) for n, row in shared}
        ran = {row_id: future.result() for row_id, future in futures.items()}
        if separate is not None:
            ran.update(separate.result())
    return {row["id"]: ran.get(row["id"]) or skipped.get(row["id"]) or {"skipped": NEEDS_FAULTS} for row in MATRIX}


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
    if expect["money"] in CAPTURED:
        assert (order["status"], order["saga_status"]) == ("CONFIRMED", "COMPLETED")
        assert all(payment["status"] == "CAPTURED" for payment in got["payments"])
        amounts, total = got["amounts"], got["total"]  # what the client sent: the discounted total, per card
        if expect.get("coupon_outcome") == "NOT_APPLIED":
            assert got["discount"] > 0
            amounts = [amounts[0] + got["discount"], *amounts[1:]]  # the first card pays the discount not given
            total += got["discount"]
        assert [(ledger["state"], ledger["amount"]) for ledger in got["ledgers"]] == [
            ("CAPTURED", amount) for amount in amounts]
        assert sum(amounts) == total == order["total"] == PRICE * QUANTITY - order.get("discount", 0)
        assert got["reservation"]["status"] == "COMMITTED"
        assert (stock["available"], stock["reserved"], stock["sold"]) == (STOCK - QUANTITY, 0, QUANTITY)
        if expect.get("coupon_outcome") == "NOT_APPLIED":
            coupon_not_applied(got, expect, spec)
        elif coupon:
            assert order["discount"] > 0
            assert order["coupon_outcome"] == "APPLIED"
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
        if expect["error"] in REFUSALS:  # refused under `fail`: ApplyCoupon decided nothing, held nothing
            assert "coupon_outcome" not in order
    else:
        assert order is None


def coupon_not_applied(got: dict, expect: dict, spec: dict) -> None:
    """The `continue` policy: the order completed at its original amount without its coupon, and says why in
    the table, in GET /orders/{id} and in its one OrderConfirmed event; its redemption SKIPPED, no count held."""
    order, coupon, subtotal = got["order"], got["coupon"], PRICE * QUANTITY
    assert (order["coupon_outcome"], order["coupon_error"]) == ("NOT_APPLIED", expect["coupon_error"])
    assert (order["total"], order["subtotal"], order["discount"]) == (subtotal, subtotal, 0)
    assert sum(ledger["amount"] for ledger in got["ledgers"]) == subtotal  # captured: the subtotal
    status, view = got["view"]
    assert status == 200, view
    assert (view["coupon_outcome"], view["coupon_error"], view["total"], view["discount"]) == (
        "NOT_APPLIED", expect["coupon_error"], subtotal, 0)
    assert [p["amount"] for p in view["payments"]] == [ledger["amount"] for ledger in got["ledgers"]]
    (event,) = got["events"]  # exactly one outcome event, and it says what the order says
    assert event["detail-type"] == "OrderConfirmed"
    assert {k: event["detail"].get(k) for k in ("coupon", "coupon_outcome", "coupon_error", "total", "discount")} \
        == {"coupon": order["coupon"], "coupon_outcome": "NOT_APPLIED", "coupon_error": expect["coupon_error"],
            "total": subtotal, "discount": 0}
    # No redemption held: the order's is SKIPPED (why, and no count), the coupon's counts as the row set them.
    assert (coupon["redemption"]["status"], coupon["redemption"]["error"]) == ("SKIPPED", expect["coupon_error"])
    if coupon["item"] is not None:  # (deleted by the row)
        preset = spec["max_redemptions"] if spec.get("preset") == "global limit reached" else 0
        assert coupon["item"]["redeemed"] == preset
    assert coupon["used"] == (spec["per_customer"] if spec.get("preset") == "customer limit reached" else 0)


def test_docs_scenarios_md_is_generated_from_the_matrix():
    from scripts.generate_scenarios_doc import render

    assert (ROOT / "docs/scenarios.md").read_text() == render(), "run `make docs` to regenerate docs/scenarios.md"


def test_the_matrix_covers_every_step_and_every_failure_kind():
    lambda_kinds = {"business failure", "transient failure that recovers",
                    "transient failure that exhausts its retries", "timeout", "crash after its write"}
    dynamodb_kinds = {"DynamoDB conflict", "DynamoDB throttle", "DynamoDB lost response"}
    forward = ("ReserveInventory", "ApplyCoupon", "AuthorizePayment", "ConfirmOrder")
    compensations = ("VoidPayment", "RefundPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder")
    covered = {(row["step"], row["fault"]) for row in MATRIX}
    assert {(s, k) for s in forward for k in lambda_kinds} <= covered
    assert {(s, k) for s in forward + compensations for k in dynamodb_kinds} <= covered
    # Every coupon refusal, and a split payment with each of its methods failing in turn.
    assert {row["expect"].get("error") for row in MATRIX if row["step"] == "ApplyCoupon"} >= set(REFUSALS)
    # ...under both coupon policies: `fail` (the shared stack's default) compensates, `continue` completes.
    assert {row["expect"].get("coupon_error") for row in MATRIX
            if row.get("parameters") == {"CouponFailurePolicy": "continue"}} >= set(REFUSALS)
    split_rows = [row for row in MATRIX if row["step"] == "AuthorizePayments"]
    declined = {(len(row["trigger"]["tokens"]), row["trigger"]["tokens"].index("tok_decline")) for row in split_rows
                if "tok_decline" in row["trigger"]["tokens"]}
    assert {(2, 0), (2, 1), (3, 2)} <= declined
    assert {"transient failure that recovers", "crash after its write", "capture fails after another succeeded"} <= {
        row["fault"] for row in split_rows}
