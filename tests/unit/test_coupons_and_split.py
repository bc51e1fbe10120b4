"""Coupons (pricing, ApplyCoupon, ReleaseCoupon, the commit in ConfirmOrder) and split payments (the API's
validation, AuthorizePayment per method, ConfirmOrder / RefundPayment / VoidPayment / the reaper over every
method), as Lambda handlers against the stack's DynamoDB engine."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import boto3
import pytest

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import from_ddb, now_ms, values
from order_saga.errors import (
    CouponExhausted,
    CouponExpired,
    CouponInvalid,
    OrderNotActive,
    PaymentDeclined,
    PaymentNotAuthorized,
    TransientError,
)
from order_saga.gateway import LEDGER_PREFIX
from order_saga.inventory import Inventory
from order_saga.models import OrderLine, SagaState, request_hash
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.promotions import Promotions, coupon_key, redemption_key
from order_saga.store import Store
from sagalocal.apigateway import find_route, proxy_event
from sagalocal.provision import routes_of
from sagalocal.template import Template
from tests.unit.conftest import DAY_MS, ROOT, scan_all
from tests.unit.helpers import EXECUTION, get, leased, order, reap, second_run_changes_nothing, stock

ALICE = "5f0c3c4e-alice"
ITEMS = [{"sku": "SKU-1", "quantity": 2}]  # 2 x 1250 = 2500 USD
ROUTES = routes_of(Template(ROOT / "template.yaml"))


# ---- helpers -------------------------------------------------------------------------------------------------
def promotions_of(client: Any) -> Promotions:
    return Promotions(Store(client), os.environ["PROMOTIONS_TABLE"])


def add_coupon(client: Any, code: str, kind: str = "percent", value: int = 20, limit: int = 1000,
               per_customer: int = 1, currency: str | None = None) -> None:
    now = now_ms()
    assert promotions_of(client).add_coupon(code, kind, value, now - DAY_MS, now + DAY_MS, limit, per_customer,
                                            currency)


def coupon_item(client: Any, code: str) -> dict[str, Any]:
    item = get(client, "PROMOTIONS_TABLE", pk=f"COUPON#{code}", sk="COUPON")
    assert item is not None
    return item


def redeemed(client: Any, code: str) -> int:
    return int(coupon_item(client, code)["redeemed"])


def used(client: Any, code: str, customer: str) -> int | None:
    item = get(client, "PROMOTIONS_TABLE", pk=f"COUPON#{code}", sk=f"CUSTOMER#{customer}")
    return None if item is None else int(item["used"])


def redemption(client: Any, code: str, order_id: str = "ord_1") -> dict[str, Any] | None:
    return get(client, "PROMOTIONS_TABLE", pk=f"COUPON#{code}", sk=f"ORDER#{order_id}")


def pay(client: Any, order_id: str = "ord_1", method: int = 1) -> dict[str, Any] | None:
    return get(client, "PAYMENTS_TABLE", payment_id=f"{order_id}#{method}")


def ledger_of(client: Any, order_id: str = "ord_1", method: int = 1) -> dict[str, Any] | None:
    return get(client, "PAYMENTS_TABLE", payment_id=f"{LEDGER_PREFIX}{order_id}#{method}")


def payment_items(client: Any) -> list[dict[str, Any]]:
    """The payments (not the fake gateway's ledger entries) in the payments table."""
    items = [from_ddb(raw) for raw in client.scan(TableName=os.environ["PAYMENTS_TABLE"], ConsistentRead=True)["Items"]]
    return sorted((i for i in items if not i["payment_id"].startswith(LEDGER_PREFIX)), key=lambda i: i["payment_id"])


def place(client: Any, order_id: str = "ord_1", customer_id: str = "cust-1", coupon: str | None = None,
          tokens: tuple[str, ...] = ("tok_approve",), discount: int | None = None) -> dict[str, Any]:
    """What the API writes before it starts the execution: the priced PENDING order (with its coupon and
    discount) and one PENDING payment per method, in one transaction. Returns the execution input."""
    store, timing = Store(client), Timing.from_env()
    orders = Orders(store, os.environ["ORDERS_TABLE"], timing)
    lines = [OrderLine(**line) for line in ITEMS]
    priced, subtotal, currency = Inventory(store, os.environ["INVENTORY_TABLE"], timing).price(lines)
    now = now_ms()
    if discount is None:
        promotions = promotions_of(client)
        discount = promotions.discount(promotions.coupon(coupon), coupon, subtotal, currency, now) if coupon else 0
    total = subtotal - discount
    amounts = [total // len(tokens)] * len(tokens)
    amounts[0] += total - sum(amounts)
    body = {"items": ITEMS, "payment": [{"token": t, "amount": a} for t, a in zip(tokens, amounts, strict=True)]}
    new = orders.new_order(order_id, customer_id, ITEMS, priced, total, currency,
                           EXECUTION.replace(":ord_1", f":{order_id}"), request_hash(body), now,
                           coupon=coupon, discount=discount, amounts=amounts)
    payments = Payments(store, os.environ["PAYMENTS_TABLE"])
    assert store.transact({"order": orders.put_new(new), **{
        f"payment:{n}": payments.put_new(order_id, n, token, amount, currency, now)
        for n, (token, amount) in enumerate(zip(tokens, amounts, strict=True), 1)}}) is None
    saga: dict[str, Any] = {"order_id": order_id, "customer_id": customer_id,
                            "lease_expires_at": new["lease_expires_at"], "deadline_at": new["deadline_at"]}
    if coupon:
        saga["coupon"] = coupon
    if len(tokens) > 1:
        saga["methods"] = list(range(1, len(tokens) + 1))
    return saga


def invoke(module: Any, context: Any, saga: dict[str, Any], method: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"saga": saga, "execution_id": EXECUTION}
    if method is not None:
        event["method"] = method  # what the AuthorizePayments Map's ItemSelector adds
    return module.lambda_handler(event, context)


def authorize_all(handlers: Any, context: Any, saga: dict[str, Any]) -> dict[str, Any]:
    """AuthorizePayment, or the AuthorizePayments Map (ResultPath null: the saga goes on unchanged)."""
    module = handlers("authorize_payment")
    if "methods" not in saga:
        return invoke(module, context, saga)
    for method in saga["methods"]:
        invoke(module, context, saga, method)
    return saga


def up_to_payment(handlers: Any, context: Any, saga: dict[str, Any]) -> dict[str, Any]:
    """ReserveInventory, ApplyCoupon (when there is a coupon): what RouteOrder runs first."""
    for name in ("reserve_inventory",):
        saga = invoke(handlers(name), context, saga)
    if "coupon" in saga:
        saga = invoke(handlers("apply_coupon"), context, saga)
    return saga


def fail_at(saga: dict[str, Any], step: str, error: str = "States.Timeout") -> dict[str, Any]:
    return {**saga, "failures": {step: {"Error": error, "Cause": "test"}}}


# ---- 1. pricing --------------------------------------------------------------------------------------------
NOW = 1_700_000_000_000


def a_coupon(kind: str = "percent", value: int = 10, currency: str | None = None,
             window: tuple[int, int] = (NOW - DAY_MS, NOW + DAY_MS)) -> dict[str, Any]:
    return {"code": "C", "kind": kind, "value": value, "currency": currency, "valid_from": window[0],
            "valid_until": window[1], "max_redemptions": 10, "per_customer": 1, "redeemed": 0}


@pytest.mark.parametrize(("value", "subtotal", "discount"), [
    (10, 2500, 250),
    (10, 1999, 199),  # 199.9 rounds down: the customer never gets more than the percentage
    (33, 1001, 330),  # 330.33
    (50, 3, 1),  # 1.5
    (1, 99, 0),  # 0.99: less than a cent is no discount
    (99, 100, 99),  # the total is 1
    (99, 1, 0),  # a 1-cent order stays 1 cent
])
def test_percent_coupon_discount_rounds_down(value, subtotal, discount):
    assert Promotions.discount(a_coupon("percent", value), "C", subtotal, "USD", NOW) == discount


@pytest.mark.parametrize(("value", "subtotal", "discount"), [
    (500, 2500, 500),
    (500, 501, 500),  # the total is exactly 1
    (500, 500, 499),  # the total is never below 1
    (500, 300, 299),
    (500, 1, 0),
])
def test_amount_coupon_takes_its_value_but_leaves_at_least_one_cent(value, subtotal, discount):
    assert Promotions.discount(a_coupon("amount", value, "USD"), "C", subtotal, "USD", NOW) == discount
    assert subtotal - discount >= 1


def test_an_amount_coupon_in_another_currency_is_invalid():
    with pytest.raises(CouponInvalid) as raised:
        Promotions.discount(a_coupon("amount", 500, "EUR"), "EURO5", 2500, "USD", NOW)
    assert "EURO5" in str(raised.value)
    assert "EUR" in str(raised.value)
    assert "USD" in str(raised.value)


def test_a_percent_coupon_applies_in_any_currency():
    assert Promotions.discount(a_coupon("percent", 10), "C", 2500, "EUR", NOW) == 250


def test_no_coupon_is_invalid():
    with pytest.raises(CouponInvalid, match="no coupon NOPE"):
        Promotions.discount(None, "NOPE", 2500, "USD", NOW)


@pytest.mark.parametrize("now", [NOW - 2 * DAY_MS, NOW + DAY_MS, NOW + 2 * DAY_MS],
                         ids=["before-its-window", "at-its-end", "after-its-window"])
def test_a_coupon_outside_its_window_is_expired_with_iso_dates(now):
    coupon = a_coupon(window=(1_700_000_000_000, 1_700_086_400_000))
    with pytest.raises(CouponExpired) as raised:
        Promotions.discount(coupon, "OLD", 2500, "USD", now)
    assert str(raised.value) == "coupon OLD is valid from 2023-11-14T22:13:20Z until 2023-11-15T22:13:20Z"


def test_a_coupon_is_valid_from_the_first_millisecond_of_its_window():
    coupon = a_coupon(window=(NOW, NOW + 1))
    assert Promotions.discount(coupon, "C", 2500, "USD", NOW) == 250
    with pytest.raises(CouponExpired):
        Promotions.discount(coupon, "C", 2500, "USD", NOW + 1)


PERCENT_OR_AMOUNT, NAMES_CURRENCY, WINDOW_AND_LIMITS = "1-99 percent off", "names its currency", "validity window"


@pytest.mark.parametrize(("kind", "value", "currency", "window", "limit", "per_customer", "problem"), [
    ("percent", 100, None, (0, 1), 1, 1, PERCENT_OR_AMOUNT),
    ("percent", 0, None, (0, 1), 1, 1, PERCENT_OR_AMOUNT),
    ("fixed", 5, "USD", (0, 1), 1, 1, PERCENT_OR_AMOUNT),
    ("amount", 500, None, (0, 1), 1, 1, NAMES_CURRENCY),
    ("percent", 10, None, (1, 1), 1, 1, WINDOW_AND_LIMITS),
    ("percent", 10, None, (0, 1), 0, 1, WINDOW_AND_LIMITS),
    ("percent", 10, None, (0, 1), 1, 0, WINDOW_AND_LIMITS),
])
def test_add_coupon_refuses_a_malformed_coupon(aws, kind, value, currency, window, limit, per_customer, problem):
    tables = scan_all(aws)
    with pytest.raises(ValueError, match=problem):
        promotions_of(aws).add_coupon("BAD", kind, value, window[0], window[1], limit, per_customer, currency)
    assert scan_all(aws) == tables


def test_add_coupon_never_overwrites_a_coupon_and_its_count(aws, handlers, context):
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="TENOFF"))
    invoke(handlers("apply_coupon"), context, saga)
    assert redeemed(aws, "TENOFF") == 1
    assert promotions_of(aws).add_coupon("TENOFF", "percent", 90, 0, 2**50, 10**6, 100) is False
    assert (coupon_item(aws, "TENOFF")["value"], redeemed(aws, "TENOFF")) == (10, 1)


# ---- 2. the API ------------------------------------------------------------------------------------------------
def post(api, context, body, key="k-1"):
    found = find_route(ROUTES, "POST", "/orders")
    assert found is not None
    route, params = found
    event = proxy_event(route, "POST", "/orders", params, {"Idempotency-Key": key}, {}, json.dumps(body).encode(),
                        "dev", "123456789012", {"claims": {"sub": ALICE, "token_use": "id"}})
    response = api.lambda_handler(event, context)
    return response["statusCode"], json.loads(response["body"])


def get_order(api, context, order_id):
    path = f"/orders/{order_id}"
    route, params = find_route(ROUTES, "GET", path)
    event = proxy_event(route, "GET", path, params, {}, {}, None, "dev", "123456789012",
                        {"claims": {"sub": ALICE, "token_use": "id"}})
    response = api.lambda_handler(event, context)
    assert response["statusCode"] == 200, response["body"]
    return json.loads(response["body"])


def executions() -> list[dict[str, Any]]:
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    return sfn.list_executions(stateMachineArn=os.environ["STATE_MACHINE_ARN"])["executions"]


def saga_input() -> dict[str, Any]:
    [execution] = executions()
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    return json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])


@pytest.mark.parametrize(("coupon", "discount"), [("TENOFF", 250), ("FIVEOFF", 500)])
def test_post_with_a_coupon_prices_the_discount_on_the_server(api, context, aws, coupon, discount):
    status, body = post(api, context, {"items": ITEMS, "payment_token": "tok_approve", "coupon": coupon})
    assert status == 202, body
    order_id = body["order_id"]
    view = get_order(api, context, order_id)
    assert (view["subtotal"], view["coupon"], view["discount"], view["total"]) == (2500, coupon, discount,
                                                                                  2500 - discount)
    assert view["payments"] == [{"method": 1, "amount": 2500 - discount}]
    assert pay(aws, order_id)["amount"] == 2500 - discount  # the card is charged the discounted total
    assert pay(aws, order_id, 2) is None
    started = saga_input()
    assert started["coupon"] == coupon  # RouteOrder sends the saga through ApplyCoupon
    assert "methods" not in started
    assert redeemed(aws, coupon) == 0  # the API only prices: ApplyCoupon holds the redemption


def test_an_order_without_a_coupon_has_no_discount_fields(api, context, aws):
    status, body = post(api, context, {"items": ITEMS, "payment_token": "tok_approve"})
    assert status == 202, body
    view = get_order(api, context, body["order_id"])
    assert view["total"] == 2500
    assert {"subtotal", "coupon", "discount"}.isdisjoint(view)
    assert "coupon" not in saga_input()


def test_the_catalog_and_the_coupon_are_read_in_one_batch_get(api, context, monkeypatch):
    calls: list[tuple[str, dict[str, Any]]] = []
    real = api.store._call

    def record(operation, **kwargs):
        calls.append((operation, kwargs))
        return real(operation, **kwargs)

    monkeypatch.setattr(api.store, "_call", record)
    status, body = post(api, context, {"items": ITEMS, "payment_token": "tok_approve", "coupon": "TENOFF"})
    assert status == 202, body
    assert [operation for operation, _ in calls] == ["batch_get_item", "transact_write_items"]
    request = calls[0][1]["RequestItems"]
    assert set(request) == {os.environ["INVENTORY_TABLE"], os.environ["PROMOTIONS_TABLE"]}
    # With the coupon, the order's redemption of it (an expired earlier order of the same key may have left one).
    assert request[os.environ["PROMOTIONS_TABLE"]]["Keys"] == [coupon_key("TENOFF"),
                                                                redemption_key("TENOFF", body["order_id"])]


@pytest.mark.parametrize(("coupon", "message"), [
    ("NOPE", "no coupon NOPE"),
    ("OLD", "coupon OLD is valid from "),
])
def test_an_unknown_or_expired_coupon_is_422_and_writes_nothing(api, context, aws, coupon, message):
    tables = scan_all(aws)
    status, body = post(api, context, {"items": ITEMS, "payment_token": "tok_approve", "coupon": coupon})
    assert status == 422, body
    assert body["coupon"] == coupon
    assert body["error"].startswith(message)
    assert scan_all(aws) == tables
    assert executions() == []


def test_an_expired_coupon_names_its_window_in_iso_dates(api, context):
    status, body = post(api, context, {"items": ITEMS, "payment_token": "tok_approve", "coupon": "OLD"})
    assert status == 422
    dates = body["error"].removeprefix("coupon OLD is valid from ").split(" until ")
    assert len(dates) == 2
    assert all(len(d) == 20 and d[4] == "-" and d[10] == "T" and d.endswith("Z") for d in dates), dates


def split(*amounts: int, token: str = "tok_approve") -> list[dict[str, Any]]:
    return [{"token": token, "amount": amount} for amount in amounts]


BAD_PAYMENTS = [
    ("both token and split", {"payment_token": "tok_approve", "payment": split(2500)}, "body"),
    ("neither token nor split", {}, "body"),
    ("no methods", {"payment": []}, "body.payment"),
    ("four methods", {"payment": split(1000, 500, 500, 500)}, "body.payment"),
    ("amounts short of the total", {"payment": split(1000, 1000)}, "body.payment"),
    ("amounts over the total", {"payment": split(2000, 1000)}, "body.payment"),
    ("zero amount", {"payment": split(2500, 0)}, "body.payment.1.amount"),
    ("negative amount", {"payment": split(2600, -100)}, "body.payment.1.amount"),
    ("string amount", {"payment": [{"token": "tok_approve", "amount": "2500"}]},
     "body.payment.0.amount"),
    ("method without token", {"payment": [{"amount": 2500}]}, "body.payment.0.token"),
    ("method with an extra field", {"payment": [{"token": "tok_approve", "amount": 2500, "x": 1}]},
     "body.payment.0.x"),
    ("split summing to the subtotal, not the discounted total", {"coupon": "TENOFF", "payment": split(1500, 1000)},
     "body.payment"),
]


@pytest.mark.parametrize(("case", "payment", "where"), BAD_PAYMENTS, ids=[c for c, _, _ in BAD_PAYMENTS])
def test_a_bad_payment_is_400_and_writes_nothing(api, context, aws, case, payment, where):
    tables = scan_all(aws)
    status, body = post(api, context, {"items": ITEMS, **payment})
    assert status == 400, body
    assert body["error"] == "invalid request"
    assert any(d["where"].startswith(where) for d in body["details"]), body["details"]
    assert all(d["problem"] for d in body["details"])
    assert scan_all(aws) == tables
    assert executions() == []


def test_amounts_that_miss_the_discounted_total_name_both_sums(api, context):
    status, body = post(api, context, {"items": ITEMS, "coupon": "TENOFF", "payment": split(1500, 1000)})
    assert status == 400
    [detail] = body["details"]
    assert (detail["where"], detail["type"]) == ("body.payment", "payment_total")
    assert "2500" in detail["problem"]
    assert "2250 USD" in detail["problem"]


def test_a_valid_split_writes_one_payment_per_method_and_starts_the_map(api, context, aws):
    methods = [{"token": "tok_approve", "amount": 1000}, {"token": "tok_decline", "amount": 1200},
               {"token": "tok_capture_fails", "amount": 300}]
    status, body = post(api, context, {"items": ITEMS, "payment": methods})
    assert status == 202, body
    order_id = body["order_id"]
    items = payment_items(aws)
    assert [i["payment_id"] for i in items] == [f"{order_id}#1", f"{order_id}#2", f"{order_id}#3"]
    assert [(i["method"], i["token"], i["amount"], i["status"], i["currency"]) for i in items] == [
        (1, "tok_approve", 1000, "PENDING", "USD"), (2, "tok_decline", 1200, "PENDING", "USD"),
        (3, "tok_capture_fails", 300, "PENDING", "USD")]
    assert order(aws, order_id)["payment_amounts"] == [1000, 1200, 300]
    assert get_order(api, context, order_id)["payments"] == [
        {"method": 1, "amount": 1000}, {"method": 2, "amount": 1200}, {"method": 3, "amount": 300}]
    started = saga_input()
    assert started["methods"] == [1, 2, 3]
    assert "tok_" not in json.dumps(started)


def test_a_split_with_a_coupon_pays_the_discounted_total(api, context, aws):
    status, body = post(api, context, {"items": ITEMS, "coupon": "TENOFF", "payment": split(1250, 1000)})
    assert status == 202, body
    assert [i["amount"] for i in payment_items(aws)] == [1250, 1000]
    started = saga_input()
    assert (started["coupon"], started["methods"]) == ("TENOFF", [1, 2])


def test_a_split_of_one_method_is_paid_like_a_single_token(api, context, aws):
    status, body = post(api, context, {"items": ITEMS, "payment": split(2500)})
    assert status == 202, body
    assert [i["payment_id"] for i in payment_items(aws)] == [f"{body['order_id']}#1"]
    assert "methods" not in saga_input()  # AuthorizePayment, not the Map


# ---- 3. ApplyCoupon and ReleaseCoupon ---------------------------------------------------------------------------
def test_apply_coupon_holds_one_redemption_and_counts_it_twice(aws, handlers, context):
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="TENOFF"))
    out = invoke(handlers("apply_coupon"), context, saga)
    assert out["coupon"] == "TENOFF"
    assert redeemed(aws, "TENOFF") == 1
    assert used(aws, "TENOFF", "cust-1") == 1
    held = redemption(aws, "TENOFF")
    assert (held["status"], held["customer"], held["order_id"], held["code"]) == ("HELD", "cust-1", "ord_1",
                                                                                  "TENOFF")
    assert "ApplyCoupon" in order(aws)["steps"]


def test_apply_coupon_run_twice_counts_once(aws, handlers, context):
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="FIVEOFF"))
    module = handlers("apply_coupon")
    second_run_changes_nothing(aws, lambda: invoke(module, context, saga))
    assert (redeemed(aws, "FIVEOFF"), used(aws, "FIVEOFF", "cust-1")) == (1, 1)


def two_of_three_redeem_onlytwo(aws: Any, handlers: Any, context: Any) -> list[dict[str, Any]]:
    """Three customers' orders with coupon ONLYTWO (two redemptions in all); the first two hold one each."""
    sagas = [invoke(handlers("reserve_inventory"), context, place(aws, f"ord_{n}", f"cust-{n}", coupon="ONLYTWO"))
             for n in range(3)]
    for saga in sagas[:2]:
        invoke(handlers("apply_coupon"), context, saga)
    return sagas


def test_the_global_limit_refuses_the_redemption_past_it(aws, handlers, context):
    module = handlers("apply_coupon")
    sagas = two_of_three_redeem_onlytwo(aws, handlers, context)
    tables = scan_all(aws)
    with pytest.raises(CouponExhausted, match="reached its 2 redemptions"):
        invoke(module, context, sagas[2])
    assert redeemed(aws, "ONLYTWO") == 2
    assert redemption(aws, "ONLYTWO", "ord_2") is None
    assert used(aws, "ONLYTWO", "cust-2") is None
    assert scan_all(aws) == tables


def test_a_released_redemption_can_be_held_by_another_order(aws, handlers, context):
    module = handlers("apply_coupon")
    sagas = two_of_three_redeem_onlytwo(aws, handlers, context)
    invoke(handlers("release_coupon"), context, fail_at(sagas[0], "ReserveInventory"))
    assert redeemed(aws, "ONLYTWO") == 1
    invoke(module, context, sagas[2])
    assert redeemed(aws, "ONLYTWO") == 2
    assert redemption(aws, "ONLYTWO", "ord_2")["status"] == "HELD"


def test_the_per_customer_limit_refuses_a_customer_s_next_order(aws, handlers, context):
    module = handlers("apply_coupon")
    first = invoke(handlers("reserve_inventory"), context, place(aws, "ord_1", "cust-1", coupon="TENOFF"))
    second = invoke(handlers("reserve_inventory"), context, place(aws, "ord_2", "cust-1", coupon="TENOFF"))
    invoke(module, context, first)
    tables = scan_all(aws)
    with pytest.raises(CouponExhausted, match="the customer used coupon TENOFF its 1 times"):
        invoke(module, context, second)
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (1, 1)
    assert redemption(aws, "TENOFF", "ord_2") is None
    assert scan_all(aws) == tables
    other = invoke(handlers("reserve_inventory"), context, place(aws, "ord_3", "cust-2", coupon="TENOFF"))
    invoke(module, context, other)  # another customer is not limited by cust-1's use
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-2")) == (2, 1)


@pytest.mark.parametrize(("code", "error"), [("OLD", CouponExpired), ("GONE", CouponInvalid)])
def test_apply_coupon_refuses_a_coupon_expired_or_gone_since_the_api_priced_it(aws, handlers, context, code,
                                                                               error):
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon=code, discount=100))
    tables = scan_all(aws)
    with pytest.raises(error, match=code):
        invoke(handlers("apply_coupon"), context, saga)
    assert scan_all(aws) == tables
    assert redemption(aws, code) is None


def apply_until_decided(module: Any, context: Any, saga: dict[str, Any], start: threading.Barrier) -> str:
    """One racer: ApplyCoupon, retried on transient errors as the state machine retries it."""
    start.wait()
    for _ in range(20):
        try:
            invoke(module, context, saga)
            return "held"
        except CouponExhausted:
            return "exhausted"
        except TransientError:
            continue
    return "undecided"


def race(handlers, context, sagas: list[dict[str, Any]]) -> list[str]:
    modules = [handlers("apply_coupon") for _ in sagas]  # each racer its own handler module, client and store
    start = threading.Barrier(len(sagas))
    outcomes: list[str] = [""] * len(sagas)

    def run(i: int) -> None:
        try:
            outcomes[i] = apply_until_decided(modules[i], context, sagas[i], start)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes[i] = f"error: {type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sagas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_racing_holds_never_exceed_the_global_limit(aws, handlers, context):
    add_coupon(aws, "RACE3", limit=3, per_customer=1)
    sagas = [leased(aws, place(aws, f"ord_{n}", f"cust-{n}", coupon="RACE3"))
             for n in range(10)]
    outcomes = race(handlers, context, sagas)
    assert sorted(outcomes) == ["exhausted"] * 7 + ["held"] * 3, outcomes
    assert redeemed(aws, "RACE3") == 3
    held = [n for n in range(10) if (redemption(aws, "RACE3", f"ord_{n}") or {}).get("status") == "HELD"]
    assert held == [n for n, outcome in enumerate(outcomes) if outcome == "held"]
    assert sum(used(aws, "RACE3", f"cust-{n}") or 0 for n in range(10)) == 3


def test_racing_holds_never_exceed_the_per_customer_limit(aws, handlers, context):
    add_coupon(aws, "TWICE", limit=1000, per_customer=2)
    sagas = [leased(aws, place(aws, f"ord_{n}", "cust-1", coupon="TWICE"))
             for n in range(8)]
    outcomes = race(handlers, context, sagas)
    assert sorted(outcomes) == ["exhausted"] * 6 + ["held"] * 2, outcomes
    assert (redeemed(aws, "TWICE"), used(aws, "TWICE", "cust-1")) == (2, 2)


def test_release_coupon_gives_the_redemption_back_once(aws, handlers, context):
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="TENOFF"))
    saga = invoke(handlers("apply_coupon"), context, saga)
    module = handlers("release_coupon")
    first = invoke(module, context, fail_at(saga, "AuthorizePayment"))
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (0, 0)
    released = redemption(aws, "TENOFF")
    assert released["status"] == "RELEASED"
    assert "released_at" in released
    item = order(aws)
    assert item["saga_status"] == "COMPENSATING"
    assert "ReleaseCoupon" in item["steps"]
    tables = scan_all(aws)
    assert invoke(module, context, fail_at(saga, "AuthorizePayment")) == first
    assert scan_all(aws) == tables
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (0, 0)


def test_release_without_a_coupon_is_a_no_op(aws, handlers, context):
    saga = invoke(handlers("reserve_inventory"), context, place(aws))
    tables = scan_all(aws)
    assert invoke(handlers("release_coupon"), context, fail_at(saga, "ReserveInventory"))["order_id"] == "ord_1"
    assert scan_all(aws) == tables


def test_release_before_the_hold_leaves_a_tombstone_that_blocks_a_late_apply_coupon(aws, handlers, context):
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="TENOFF"))
    invoke(handlers("release_coupon"), context, fail_at(saga, "ApplyCoupon"))
    tombstone = redemption(aws, "TENOFF")
    assert tombstone["status"] == "RELEASED"
    assert "customer" not in tombstone
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (0, None)  # nothing was given back
    tables = scan_all(aws)
    # The timed-out ApplyCoupon lands late: its lease check refuses it (the saga is compensating)...
    module = handlers("apply_coupon")
    with pytest.raises(OrderNotActive):
        invoke(module, context, saga)
    # ...and even without the check, the tombstone refuses the hold itself.
    cancelled = module.store.transact(module.promotions.hold_items("TENOFF", "ord_1", "cust-1", 1, now_ms()))
    assert cancelled is not None
    assert cancelled.failed("redemption")
    assert scan_all(aws) == tables


def test_a_tombstone_refuses_apply_coupon_with_a_coupon_error(aws, handlers, context):
    """The tombstone alone (the order still EXECUTING): ApplyCoupon answers with a coupon error."""
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="TENOFF"))
    promotions = promotions_of(aws)
    assert promotions.store.transact(promotions.release_items("TENOFF", "ord_1", now_ms())) is None
    tables = scan_all(aws)
    with pytest.raises(CouponInvalid, match="was released"):
        invoke(handlers("apply_coupon"), context, saga)
    assert scan_all(aws) == tables
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (0, None)


# ---- 4. ConfirmOrder, RefundPayment, VoidPayment, the reaper over every method -----------------------------------
def test_confirm_commits_the_redemption_and_captures_every_method(aws, handlers, context):
    saga = up_to_payment(handlers, context, place(aws, coupon="TENOFF", tokens=("tok_approve", "tok_approve")))
    saga = authorize_all(handlers, context, saga)
    out = invoke(handlers("confirm_order"), context, saga)
    assert out["order_id"] == "ord_1"
    committed = redemption(aws, "TENOFF")
    assert committed["status"] == "COMMITTED"
    assert "committed_at" in committed
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (1, 1)  # a commit is not a second use
    assert [(pay(aws, method=m)["status"], pay(aws, method=m)["amount"]) for m in (1, 2)] == [
        ("CAPTURED", 1125), ("CAPTURED", 1125)]
    assert [(ledger_of(aws, method=m)["state"], ledger_of(aws, method=m)["amount"]) for m in (1, 2)] == [
        ("CAPTURED", 1125), ("CAPTURED", 1125)]
    item = order(aws)
    assert (item["status"], item["saga_status"]) == ("CONFIRMED", "COMPLETED")
    assert {"ApplyCoupon", "AuthorizePayment.1", "AuthorizePayment.2", "ConfirmOrder"} <= set(item["steps"])
    assert "AuthorizePayment" not in item["steps"]
    assert stock(aws, "SKU-1") == (8, 0, 2)


def test_confirm_run_twice_changes_nothing_the_second_time(aws, handlers, context):
    saga = up_to_payment(handlers, context, place(aws, coupon="FIVEOFF", tokens=("tok_approve",) * 3))
    saga = authorize_all(handlers, context, saga)
    module = handlers("confirm_order")
    first = invoke(module, context, saga)
    tables = scan_all(aws)
    assert invoke(module, context, saga) == first
    assert scan_all(aws) == tables
    assert [pay(aws, method=m)["status"] for m in (1, 2, 3)] == ["CAPTURED"] * 3


def test_a_single_method_order_with_a_coupon_commits_its_redemption(aws, handlers, context):
    saga = up_to_payment(handlers, context, place(aws, coupon="FIVEOFF"))
    saga = invoke(handlers("authorize_payment"), context, saga)
    invoke(handlers("confirm_order"), context, saga)
    assert redemption(aws, "FIVEOFF")["status"] == "COMMITTED"
    assert (pay(aws)["status"], ledger_of(aws)["amount"]) == ("CAPTURED", 2000)


def test_a_capture_failing_on_method_2_is_refunded_on_method_1_and_voided_on_method_2(aws, handlers, context):
    saga = up_to_payment(handlers, context, place(aws, coupon="TENOFF", tokens=("tok_approve", "tok_capture_fails")))
    saga = authorize_all(handlers, context, saga)
    with pytest.raises(PaymentNotAuthorized, match="expired before its capture"):
        invoke(handlers("confirm_order"), context, saga)
    assert ledger_of(aws, method=1)["state"] == "CAPTURED"  # method 1's money moved before method 2 failed
    assert ledger_of(aws, method=2)["state"] == "VOIDED"
    # Past the pivot the saga only goes forward, but for this: the processor refused a capture. The order turns
    # back (COMPENSATING), so the compensations may undo it.
    assert order(aws)["saga_status"] == "COMPENSATING"
    saga = fail_at(saga, "ConfirmOrder", "PaymentNotAuthorized")
    module = handlers("refund_payment")
    first = invoke(module, context, saga)
    assert (ledger_of(aws, method=1)["state"], pay(aws, method=1)["status"]) == ("REFUNDED", "REFUNDED")
    assert (ledger_of(aws, method=2)["state"], pay(aws, method=2)["status"]) == ("VOIDED", "VOIDED")
    tables = scan_all(aws)
    assert invoke(module, context, saga) == first
    assert scan_all(aws) == tables
    # CouponHeld -> ReleaseCoupon: the committed redemption goes back too.
    invoke(handlers("release_coupon"), context, first)
    assert redemption(aws, "TENOFF")["status"] == "RELEASED"
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (0, 0)
    item = order(aws)
    assert (item["failure"]["step"], item["failure"]["error"]) == ("ConfirmOrder", "PaymentNotAuthorized")
    assert {"RefundPayment", "ReleaseCoupon"} <= set(item["steps"])


def test_void_after_a_split_with_a_declined_method_leaves_nothing_authorized(aws, handlers, context):
    saga = up_to_payment(handlers, context, place(aws, tokens=("tok_approve", "tok_decline", "tok_approve")))
    module = handlers("authorize_payment")
    invoke(module, context, saga, 1)
    with pytest.raises(PaymentDeclined):
        invoke(module, context, saga, 2)
    invoke(module, context, saga, 3)
    assert [pay(aws, method=m)["status"] for m in (1, 2, 3)] == ["AUTHORIZED", "DECLINED", "AUTHORIZED"]
    void = handlers("void_payment")
    saga = fail_at(saga, "AuthorizePayments", "PaymentDeclined")
    first = invoke(void, context, saga)
    assert [pay(aws, method=m)["status"] for m in (1, 2, 3)] == ["VOIDED", "DECLINED", "VOIDED"]
    assert [ledger_of(aws, method=m)["state"] for m in (1, 2, 3)] == ["VOIDED", "DECLINED", "VOIDED"]
    assert not [i for i in payment_items(aws) if i["status"] in ("AUTHORIZED", "CAPTURING", "CAPTURED")]
    tables = scan_all(aws)
    assert invoke(void, context, saga) == first
    assert scan_all(aws) == tables
    assert order(aws)["failure"]["step"] == "AuthorizePayments"


def test_the_reaper_releases_the_coupon_and_voids_every_method_of_an_abandoned_order(aws, handlers, context):
    saga = up_to_payment(handlers, context, place(aws, coupon="TENOFF", tokens=("tok_approve", "tok_approve")))
    authorize_all(handlers, context, saga)
    Store(aws).update(TableName=os.environ["ORDERS_TABLE"], Key={"order_id": {"S": "ord_1"}},
                      UpdateExpression="SET lease_expires_at = :past",
                      ExpressionAttributeValues=values(past=now_ms() - 1000))  # the execution died
    swept = reap(handlers, context)
    assert swept["compensated"] == ["ord_1"]
    assert swept["failed"] == []
    assert [(pay(aws, method=m)["status"], ledger_of(aws, method=m)["state"]) for m in (1, 2)] == [
        ("VOIDED", "VOIDED"), ("VOIDED", "VOIDED")]
    assert redemption(aws, "TENOFF")["status"] == "RELEASED"
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (0, 0)
    assert stock(aws, "SKU-1") == (10, 0, 0)
    item = order(aws)
    assert (item["status"], item["saga_status"]) == ("CANCELLED", "COMPENSATED")
    assert {"VoidPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder"} <= set(item["steps"])


# ---- 5. AuthorizePayment per method ------------------------------------------------------------------------------
def test_authorize_payment_with_a_method_writes_only_that_payment_and_logs_it(aws, handlers, context):
    saga = up_to_payment(handlers, context, place(aws, tokens=("tok_approve", "tok_approve")))
    module = handlers("authorize_payment")
    out = invoke(module, context, saga, 2)
    assert out["authorization"] == "auth_ord_1#2"
    assert (pay(aws, method=2)["status"], pay(aws, method=2)["authorization"]) == ("AUTHORIZED", "auth_ord_1#2")
    assert pay(aws, method=1)["status"] == "PENDING"
    assert ledger_of(aws, method=1) is None  # the gateway was asked about method 2 only
    assert (ledger_of(aws, method=2)["state"], ledger_of(aws, method=2)["amount"]) == ("AUTHORIZED", 1250)
    logged = order(aws)["steps"]
    assert "AuthorizePayment.2" in logged
    assert "AuthorizePayment.1" not in logged
    assert "AuthorizePayment" not in logged
    tables = scan_all(aws)
    invoke(module, context, saga, 2)  # a repeat of the Map's iteration
    assert scan_all(aws) == tables


def test_a_single_method_order_logs_plain_authorize_payment(aws, handlers, context):
    saga = up_to_payment(handlers, context, place(aws))
    invoke(handlers("authorize_payment"), context, saga)
    logged = order(aws)["steps"]
    assert "AuthorizePayment" in logged
    assert not [s for s in logged if s.startswith("AuthorizePayment.")]


def test_methods_of_is_one_for_a_single_card_and_every_method_of_a_split():
    assert steps.methods_of(SagaState(order_id="o", customer_id="c")) == [1]
    assert steps.methods_of(SagaState(order_id="o", customer_id="c", methods=[1, 2, 3])) == [1, 2, 3]


# ---- what the order says wins over the execution's input (an operator's StartExecution) -----------------------
def test_the_lease_takes_the_coupon_and_the_cards_from_the_order_not_from_the_input(api, context, aws, handlers):
    status, body = post(api, context, {"items": ITEMS, "coupon": "TENOFF", "payment": split(1250, 1000)})
    assert status == 202, body
    # An operator starts the execution by hand with only the order's id and customer (the API's start failed).
    saga = invoke(handlers("reserve_inventory"), context, {"order_id": body["order_id"], "customer_id": ALICE})
    assert (saga["coupon"], saga["methods"], saga["total"]) == ("TENOFF", [1, 2], 2250)
    # ...and an input that names another coupon or fewer cards changes nothing either.
    forged = invoke(handlers("reserve_inventory"), context, {"order_id": body["order_id"], "customer_id": ALICE,
                                                        "coupon": "FIVEOFF"})
    assert (forged["coupon"], forged["methods"]) == ("TENOFF", [1, 2])


def test_a_plain_order_of_a_free_item_is_accepted(api, context, aws):
    # One card pays the whole total, whatever it is (the client chose no amount): a free item included.
    Inventory(Store(aws), os.environ["INVENTORY_TABLE"]).add_item("FREEBIE", "Sticker", 0, "USD", 10)
    status, body = post(api, context, {"items": [{"sku": "FREEBIE", "quantity": 1}], "payment_token": "tok_approve"},
                        key="k-free")
    assert status == 202, body
    assert order(aws, body["order_id"])["total"] == 0


def test_a_resubmission_after_the_coupon_expired_replays_the_first_answer(api, context, aws):
    first = post(api, context, {"items": ITEMS, "coupon": "TENOFF", "payment_token": "tok_approve"}, key="k-late")
    assert first[0] == 202, first
    aws.update_item(TableName=os.environ["PROMOTIONS_TABLE"], Key=coupon_key("TENOFF"),
                    UpdateExpression="SET valid_until = :past", ExpressionAttributeValues=values(past=1))
    again = post(api, context, {"items": ITEMS, "coupon": "TENOFF", "payment_token": "tok_approve"}, key="k-late")
    assert again == first  # the order was accepted before the coupon ran out: the same 202
    other = post(api, context, {"items": ITEMS, "coupon": "TENOFF", "payment_token": "tok_decline"}, key="k-late")
    assert other[0] == 422  # another body under the key: the coupon is priced now, and refused
