"""The coupon failure policy (CouponFailurePolicy): under `fail` (the default) a coupon refused for a business reason
fails ApplyCoupon, as it always did; under `continue` the order goes on at its original amount, holding nothing,
and says why. As Lambda handlers against the stack's DynamoDB engine."""

from __future__ import annotations

from typing import Any

import pytest

from order_saga.dynamo import now_ms
from order_saga.errors import CouponExhausted
from order_saga.orders import order_view
from order_saga.promotions import held_coupon
from tests.unit.conftest import scan_all
from tests.unit.helpers import order, second_run_changes_nothing
from tests.unit.test_coupons_and_split import (
    authorize_all,
    fail_at,
    invoke,
    ledger_of,
    pay,
    place,
    promotions_of,
    redeemed,
    redemption,
    used,
)

SUBTOTAL = 2500  # 2 x SKU-1 at 1250


@pytest.fixture
def continuing(monkeypatch):
    """ApplyCoupon as a stack with CouponFailurePolicy=continue runs it (the env var is read at cold start)."""
    monkeypatch.setenv("COUPON_FAILURE_POLICY", "continue")


def exhaust_onlytwo(aws: Any, handlers: Any, context: Any) -> None:
    """Two other customers' orders hold both redemptions of ONLYTWO (50 % off)."""
    for n in (7, 8):
        saga = invoke(handlers("reserve_inventory"), context, place(aws, f"ord_{n}", f"cust-{n}", coupon="ONLYTWO"))
        invoke(handlers("apply_coupon"), context, saga)
    assert redeemed(aws, "ONLYTWO") == 2


def skipped_as(aws: Any, code: str, error: str, amounts: list[int]) -> dict[str, Any]:
    """What a skipped coupon leaves: a SKIPPED redemption holding no count, the order at its original amount."""
    item = redemption(aws, code)
    assert (item["status"], item["error"], item["customer"]) == ("SKIPPED", error, "cust-1")
    assert "purge_at" in item  # kept as long as a tombstone
    placed = order(aws)
    assert (placed["total"], placed["discount"], placed["subtotal"]) == (SUBTOTAL, 0, SUBTOTAL)
    assert placed["payment_amounts"] == amounts
    assert (placed["coupon"], placed["coupon_outcome"], placed["coupon_error"]) == (code, "NOT_APPLIED", error)
    assert code in placed["coupon_cause"]
    assert "ApplyCoupon" in placed["steps"]
    assert held_coupon(placed) is None
    return placed


# ---- `fail`: as before ---------------------------------------------------------------------------------------
def test_the_default_policy_is_fail_and_a_hold_records_the_coupon_applied(aws, handlers, context):
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="TENOFF"))
    module = handlers("apply_coupon")
    assert module.COUPON_FAILURE_POLICY == "fail"
    out = invoke(module, context, saga)
    assert (out["coupon"], out["total"]) == ("TENOFF", 2250)
    placed = order(aws)
    assert (placed["coupon_outcome"], placed["total"], placed["discount"]) == ("APPLIED", 2250, 250)
    assert "coupon_error" not in placed
    assert held_coupon(placed) == "TENOFF"


def test_under_fail_a_refused_coupon_fails_the_step_and_writes_nothing(aws, handlers, context):
    exhaust_onlytwo(aws, handlers, context)
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="ONLYTWO"))
    tables = scan_all(aws)
    with pytest.raises(CouponExhausted):
        invoke(handlers("apply_coupon"), context, saga)
    assert scan_all(aws) == tables
    assert redemption(aws, "ONLYTWO") is None


def test_an_unknown_policy_fails_at_cold_start(aws, handlers, monkeypatch):
    monkeypatch.setenv("COUPON_FAILURE_POLICY", "ignore")
    with pytest.raises(ValueError, match="COUPON_FAILURE_POLICY is 'ignore'"):
        handlers("apply_coupon")


# ---- `continue` ------------------------------------------------------------------------------------------------
def test_under_continue_an_exhausted_coupon_is_skipped_and_the_order_goes_on_at_its_original_amount(
        aws, handlers, context, continuing):
    exhaust_onlytwo(aws, handlers, context)
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="ONLYTWO"))
    assert (saga["total"], pay(aws)["amount"]) == (1250, 1250)  # priced at 50 % off
    out = invoke(handlers("apply_coupon"), context, saga)
    assert "coupon" not in out  # the saga holds no redemption from here: nothing to commit or release
    assert out["total"] == SUBTOTAL
    skipped_as(aws, "ONLYTWO", "CouponExhausted", [SUBTOTAL])
    assert (redeemed(aws, "ONLYTWO"), used(aws, "ONLYTWO", "cust-1")) == (2, None)  # no count held
    assert (pay(aws)["status"], pay(aws)["amount"]) == ("PENDING", SUBTOTAL)


def test_under_continue_the_per_customer_limit_is_skipped_too(aws, handlers, context, continuing):
    """The per-customer limit shows only when the hold is refused: the skip follows the refused hold."""
    first = invoke(handlers("reserve_inventory"), context, place(aws, "ord_0", "cust-1", coupon="TENOFF"))
    invoke(handlers("apply_coupon"), context, first)
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="TENOFF"))
    out = invoke(handlers("apply_coupon"), context, saga)
    assert ("coupon" in out, out["total"]) == (False, SUBTOTAL)
    skipped_as(aws, "TENOFF", "CouponExhausted", [SUBTOTAL])
    assert (redeemed(aws, "TENOFF"), used(aws, "TENOFF", "cust-1")) == (1, 1)  # the first order's only


@pytest.mark.parametrize(("code", "error"), [("OLD", "CouponExpired"), ("GONE", "CouponInvalid")])
def test_under_continue_an_expired_or_vanished_coupon_is_skipped(aws, handlers, context, continuing, code, error):
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon=code, discount=100))
    out = invoke(handlers("apply_coupon"), context, saga)
    assert ("coupon" in out, out["total"]) == (False, SUBTOTAL)
    skipped_as(aws, code, error, [SUBTOTAL])


def test_a_skip_run_twice_changes_nothing(aws, handlers, context, continuing):
    exhaust_onlytwo(aws, handlers, context)
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="ONLYTWO"))
    module = handlers("apply_coupon")
    second_run_changes_nothing(aws, lambda: invoke(module, context, saga))
    assert pay(aws)["amount"] == SUBTOTAL  # moved once


def test_a_retry_after_the_skip_landed_keeps_it_even_when_the_coupon_frees_up(aws, handlers, context, continuing):
    """The skip's response was lost; meanwhile another order gave its redemption back. The retry must not hold one
    now (the order already goes on at its original amount): the SKIPPED redemption refuses the hold."""
    exhaust_onlytwo(aws, handlers, context)
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="ONLYTWO"))
    module = handlers("apply_coupon")
    first = invoke(module, context, saga)
    promotions = promotions_of(aws)
    assert promotions.store.transact(promotions.release_items("ONLYTWO", "ord_7", now_ms())) is None
    assert redeemed(aws, "ONLYTWO") == 1
    again = invoke(module, context, saga)
    assert {k: v for k, v in again.items() if k != "lease_expires_at"} == {
        k: v for k, v in first.items() if k != "lease_expires_at"}
    assert redeemed(aws, "ONLYTWO") == 1
    skipped_as(aws, "ONLYTWO", "CouponExhausted", [SUBTOTAL])


def test_a_retry_after_its_own_hold_landed_keeps_the_coupon_though_it_now_looks_exhausted(
        aws, handlers, context, continuing):
    """The hold that took the last redemption was this order's own (its response lost): the retry sees the coupon
    exhausted, tries to skip, finds its own HELD redemption, and goes on with the coupon: a repeat."""
    saga = invoke(handlers("reserve_inventory"), context, place(aws, "ord_7", "cust-7", coupon="ONLYTWO"))
    invoke(handlers("apply_coupon"), context, saga)
    mine = invoke(handlers("reserve_inventory"), context, place(aws, coupon="ONLYTWO"))
    module = handlers("apply_coupon")
    first = invoke(module, context, mine)
    assert redeemed(aws, "ONLYTWO") == 2
    tables = scan_all(aws)
    again = invoke(module, context, mine)
    assert (again["coupon"], again["total"]) == (first["coupon"], first["total"]) == ("ONLYTWO", 1250)
    assert scan_all(aws) == tables
    assert redemption(aws, "ONLYTWO")["status"] == "HELD"


def test_a_skipped_order_is_authorized_and_captured_at_its_original_amount(aws, handlers, context, continuing):
    exhaust_onlytwo(aws, handlers, context)
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="ONLYTWO"))
    saga = invoke(handlers("reserve_inventory"), context, saga)
    saga = invoke(handlers("apply_coupon"), context, saga)
    saga = invoke(handlers("authorize_payment"), context, saga)
    assert ledger_of(aws)["amount"] == SUBTOTAL
    invoke(handlers("confirm_order"), context, saga)
    assert (ledger_of(aws)["state"], ledger_of(aws)["amount"], pay(aws)["status"]) == ("CAPTURED", SUBTOTAL,
                                                                                       "CAPTURED")
    placed = order(aws)
    assert (placed["saga_status"], placed["status"]) == ("COMPLETED", "CONFIRMED")
    assert redemption(aws, "ONLYTWO")["status"] == "SKIPPED"  # never committed: it holds nothing
    assert redeemed(aws, "ONLYTWO") == 2
    view = order_view(placed)
    assert (view["coupon_outcome"], view["coupon_error"], view["total"], view["discount"]) == (
        "NOT_APPLIED", "CouponExhausted", SUBTOTAL, 0)
    assert view["payments"] == [{"method": 1, "amount": SUBTOTAL}]


def test_a_split_payment_s_first_method_pays_the_discount_not_given(aws, handlers, context, continuing):
    exhaust_onlytwo(aws, handlers, context)
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="ONLYTWO", tokens=("tok_approve",) * 3))
    assert [pay(aws, method=m)["amount"] for m in (1, 2, 3)] == [418, 416, 416]  # 1250 split by the client
    saga = invoke(handlers("reserve_inventory"), context, saga)
    saga = invoke(handlers("apply_coupon"), context, saga)
    skipped_as(aws, "ONLYTWO", "CouponExhausted", [1668, 416, 416])
    saga = authorize_all(handlers, context, saga)
    assert [ledger_of(aws, method=m)["amount"] for m in (1, 2, 3)] == [1668, 416, 416]
    invoke(handlers("confirm_order"), context, saga)
    assert sum(ledger_of(aws, method=m)["amount"] for m in (1, 2, 3)) == SUBTOTAL
    assert [ledger_of(aws, method=m)["state"] for m in (1, 2, 3)] == ["CAPTURED"] * 3


def test_release_coupon_after_a_skip_releases_nothing(aws, handlers, context, continuing):
    """A compensation that still has the coupon in its state (ApplyCoupon's skip landed, its answer was lost, its
    retries ran out) gives nothing back: the SKIPPED redemption held no count, and no other order's count moves."""
    exhaust_onlytwo(aws, handlers, context)
    saga = invoke(handlers("reserve_inventory"), context, place(aws, coupon="ONLYTWO"))
    invoke(handlers("apply_coupon"), context, saga)
    invoke(handlers("release_coupon"), context, fail_at(saga, "ApplyCoupon"))
    assert redemption(aws, "ONLYTWO")["status"] == "SKIPPED"
    assert (redeemed(aws, "ONLYTWO"), used(aws, "ONLYTWO", "cust-1")) == (2, None)
    assert [used(aws, "ONLYTWO", f"cust-{n}") for n in (7, 8)] == [1, 1]
    assert "ReleaseCoupon" in order(aws)["steps"]
