"""The saga's steps: each forward step and each compensation as one DynamoDB transaction.

A forward step writes its side effect and the order's lease check, step log and renewal in one
TransactWriteItems; when it is cancelled, the items' own state (returned by the failed conditions) says
whether the step already ran (a repeat, or a retry after a lost response: success), lost its lease
(LeaseLost, OrderNotActive) or failed for a business reason.

ConfirmOrder is the one step with two transactions around the gateway: the stock is committed (and the
payment marked CAPTURING) first, the money is captured next, and the order is completed last. Money moves
only once the stock side is certain; a failure after the capture is retried until it completes, so no paid
order is refunded because the store hiccuped.

A compensation undoes its effect and moves the order to COMPENSATING in one transaction, under the lease
of the execution that compensates (or of the reaper, once it took the order over: then the execution's own
compensations find the order is not theirs and do nothing).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from order_saga import models
from order_saga.errors import ConcurrentUpdate, CouponInvalid, ReservationExpired, ReservationReleased
from order_saga.inventory import COMMITTED, RESERVED, Inventory
from order_saga.models import PricedLine, SagaState
from order_saga.orders import Orders
from order_saga.payments import HOLDS_MONEY, Payments, payment_id
from order_saga.promotions import COMMITTED as REDEMPTION_COMMITTED
from order_saga.promotions import HELD, Promotions
from order_saga.store import Store

FORWARD_STEPS = ("CreateOrder", "ReserveInventory", "ApplyCoupon", "AuthorizePayment", "AuthorizePayments",
                 "ConfirmOrder")


def methods_of(saga: SagaState) -> list[int]:
    """The payment methods' numbers: [1] for an order paid with one card."""
    return saga.methods or [1]


# ---- forward steps ---------------------------------------------------------------------------------------
def create_order(orders: Orders, saga: SagaState, owner: str, now: int) -> SagaState:
    """Take the order's lease: the saga is EXECUTING, with what the API priced and stored (the lines, the
    total, the coupon, the payment methods, the customer), whatever the execution's input said."""
    order, lease = orders.acquire(saga, owner, now)
    amounts = order.get("payment_amounts") or []
    return saga.model_copy(update={
        "customer_id": order.get("customer_id", saga.customer_id), "coupon": order.get("coupon"),
        "methods": list(range(1, len(amounts) + 1)) if len(amounts) > 1 else None,
        "lines": [PricedLine(**line) for line in order["lines"]], "total": order["total"],
        "currency": order["currency"], "fence": lease.fence, "deadline_at": lease.deadline_at,
        "lease_expires_at": lease.expires_at})


def reserve_inventory(store: Store, orders: Orders, inventory: Inventory, saga: SagaState, owner: str,
                      now: int) -> SagaState:
    """Take every line's quantity from available into reserved, all or nothing."""
    lines, _ = saga.require_priced()
    lease = orders.lease_of(saga, owner)
    items = inventory.reserve_items(saga.order_id, lines, now) + [orders.step_update(lease, "ReserveInventory", now)]
    cancelled = store.transact(items)
    if cancelled is None:
        return saga.model_copy(update={"lease_expires_at": orders.renewed(lease, now)})
    guard = len(items) - 1
    if cancelled.failed(guard):
        raise orders.refusal(cancelled.item(guard), lease, now)
    if cancelled.failed(0):
        reservation = cancelled.item(0) or {}
        if reservation.get("status") in (RESERVED, COMMITTED):
            return _after_repeat(orders, saga)  # reserved before: a repeat, or a retry after a lost response
        raise ReservationReleased(f"the reservation of order {saga.order_id} was released; it cannot be taken again")
    short = inventory.short_of(lines, [cancelled.failed(i + 1) for i in range(len(lines))])
    if short is not None:
        raise short
    raise ConcurrentUpdate(f"the reservation of order {saga.order_id} was cancelled: {cancelled.reasons}")


def apply_coupon(store: Store, orders: Orders, promotions: Promotions, saga: SagaState, owner: str,
                 now: int) -> SagaState:
    """Hold one redemption of the order's coupon, within its global and per-customer limits."""
    code = saga.coupon
    if not code:
        raise CouponInvalid("the order has no coupon (ApplyCoupon runs only when there is one)")
    lease = orders.lease_of(saga, owner)
    coupon = promotions.coupon(code)
    if coupon is None:
        raise CouponInvalid(f"no coupon {code}")
    items = promotions.hold_items(code, saga.order_id, saga.customer_id, int(coupon["per_customer"]), now) + [
        orders.step_update(lease, "ApplyCoupon", now)]
    cancelled = store.transact(items)
    if cancelled is None:
        return saga.model_copy(update={"lease_expires_at": orders.renewed(lease, now)})
    if cancelled.failed(3):
        raise orders.refusal(cancelled.item(3), lease, now)
    if cancelled.failed(0):
        if (cancelled.item(0) or {}).get("status") in (HELD, REDEMPTION_COMMITTED):
            return _after_repeat(orders, saga)  # held before: a repeat
        raise CouponInvalid(f"the redemption of coupon {code} for order {saga.order_id} was released")
    if cancelled.failed(1) or cancelled.failed(2):
        raise promotions.refusal(code, cancelled.item(1) if cancelled.failed(1) else coupon, cancelled.failed(2), now)
    raise ConcurrentUpdate(f"the coupon hold of order {saga.order_id} was cancelled: {cancelled.reasons}")


def authorize_payment(store: Store, orders: Orders, payments: Payments, saga: SagaState, owner: str,
                      now: int, method: int = 1) -> SagaState:
    """Hold one payment method's amount on its card; record the authorization under the lease. An order paid
    with several methods runs this once per method (the AuthorizePayments Map), each logged on its own."""
    lease = orders.lease_of(saga, owner)
    pid = payment_id(saga.order_id, method)
    step = "AuthorizePayment" if saga.methods is None else f"AuthorizePayment.{method}"
    payment = payments.get(pid)
    reference = payments.authorize_at_gateway(payment, now)
    if payment is not None and payment.get("status") in HOLDS_MONEY:
        return _after_repeat(orders, saga, authorization=reference)
    cancelled = store.transact([payments.authorized_item(pid, reference, now),
                                orders.step_update(lease, step, now)])
    if cancelled is not None:
        if cancelled.failed(1):
            payments.reverse(pid)  # the lease is gone: this authorization must not hold money
            raise orders.refusal(cancelled.item(1), lease, now)
        error = payments.late_authorization(pid, cancelled.item(0)) if cancelled.failed(0) else ConcurrentUpdate(
            f"the authorization of order {saga.order_id} was cancelled: {cancelled.reasons}")
        if error is not None:
            raise error
        return _after_repeat(orders, saga, authorization=reference)
    return saga.model_copy(update={"authorization": reference, "lease_expires_at": orders.renewed(lease, now)})


def confirm_order(store: Store, orders: Orders, inventory: Inventory, payments: Payments, saga: SagaState,
                  owner: str, now: int, promotions: Promotions | None = None) -> SagaState:
    """Commit the stock (and the coupon's redemption), then capture every payment method, then confirm."""
    lines, _ = saga.require_priced()
    lease = orders.lease_of(saga, owner)
    pids = [payment_id(saga.order_id, m) for m in methods_of(saga)]
    stock = inventory.commit_items(saga.order_id, lines, now)
    capturing = [payments.capturing_item(pid, now) for pid in pids]
    coupon = [promotions.commit_item(saga.coupon, saga.order_id, now)] if saga.coupon and promotions else []
    items = stock + capturing + coupon + [orders.guard(lease, now)]
    cancelled = store.transact(items)
    if cancelled is not None:
        guard = len(items) - 1
        if cancelled.failed(guard):
            if _completed_by(cancelled.item(guard), owner):
                return saga  # confirmed before: a repeat
            raise orders.refusal(cancelled.item(guard), lease, now)
        if cancelled.failed(0):
            reservation = cancelled.item(0) or {}
            if reservation.get("status") == RESERVED:
                raise ReservationExpired(f"the reservation of order {saga.order_id} expired at "
                                         f"{reservation.get('expires_at')}")
            if reservation.get("status") != COMMITTED:
                raise ReservationReleased(f"order {saga.order_id} holds no reservation to commit")
        first_payment = len(stock)
        for index in range(first_payment, first_payment + len(pids)):
            if cancelled.failed(index):
                error = payments.not_capturable(cancelled.item(index))
                if error is not None:
                    raise error
        if coupon and cancelled.failed(guard - 1):
            raise CouponInvalid(f"the coupon redemption of order {saga.order_id} was released before confirming")
        # What is left: a repeat (the reservation COMMITTED, the payments CAPTURING), or a conflict we cannot name.
        repeat = cancelled.failed(0) or any(cancelled.failed(i) for i in range(first_payment, guard))
        if not repeat or any(cancelled.failed(i + 1) for i in range(len(lines))):
            raise ConcurrentUpdate(f"the stock commit of order {saga.order_id} was cancelled: {cancelled.reasons}")
    for pid in pids:
        payments.capture(pid)  # the stock is ours: now the money moves, method by method
    final = [payments.captured_item(pid, now) for pid in pids] + [
        orders.step_update(lease, "ConfirmOrder", now, finish=True)]
    cancelled = store.transact(final)
    if cancelled is not None:
        order_index = len(final) - 1
        if cancelled.failed(order_index) and not _completed_by(cancelled.item(order_index), owner):
            raise orders.refusal(cancelled.item(order_index), lease, now)
        if not cancelled.failed(order_index):
            for index in range(len(pids)):
                if cancelled.failed(index):
                    error = payments.not_capturable(cancelled.item(index))
                    raise error or ConcurrentUpdate(f"the payment of order {saga.order_id} changed while "
                                                    f"confirming it")
    return saga


def _completed_by(order: dict[str, Any] | None, owner: str) -> bool:
    return bool(order) and order.get("saga_status") == models.COMPLETED and order.get("lease_owner") == owner


def _after_repeat(orders: Orders, saga: SagaState, **update: Any) -> SagaState:
    """A step that had already run: the state goes on with the lease as the order holds it now."""
    order = orders.get(saga.order_id) or {}
    return saga.model_copy(update={"lease_expires_at": order.get("lease_expires_at", saga.lease_expires_at),
                                   **update})


# ---- compensations ---------------------------------------------------------------------------------------
def failed_forward_step(saga: SagaState) -> dict[str, Any] | None:
    """The forward step whose failure started the compensation, from `$.failures`."""
    for step in FORWARD_STEPS:
        if step in saga.failures:
            failure = saga.failures[step]
            return {"step": step, "error": failure.error, "cause": _message(failure.cause)}
    return None


def _message(cause: str | None) -> str | None:
    """A Lambda failure's Cause is its error JSON (with a stack trace): keep the errorMessage."""
    if cause and cause.startswith("{"):
        try:
            return str(json.loads(cause).get("errorMessage", cause))
        except (ValueError, AttributeError):
            return cause
    return cause


Undo = Callable[[], list[dict[str, Any]]]


def compensate(store: Store, orders: Orders, saga: SagaState, owner: str, step: str, now: int,
               undo: Undo | None = None, finish: bool = False) -> tuple[SagaState, bool]:
    """Run compensation `step` under `owner`'s lease: undo, and log it on the order, in one transaction.

    Returns the state (with the lease it ran under) and whether it acted; False when another owner (the
    reaper) compensates this order, or it is already cancelled: then this is a no-op.
    """
    lease = orders.compensation_lease(saga, owner, now)
    if lease is None:
        return saga, False
    failure = failed_forward_step(saga)
    for _ in range(5):
        items = undo() if undo is not None else []
        update = orders.compensation_update(lease, step, failure, now, finish, log_once=not items)
        if not items:
            acted = store.update(**update["Update"]).ok  # False: done before, or not ours any more
            break
        cancelled = store.transact([*items, update])
        if cancelled is None:
            acted = True
            break
        if cancelled.failed(len(items)):
            acted = False  # the order is not ours any more: its new owner compensates
            break
        # The payment or reservation changed while undoing it (a late step landed): undo again.
    else:
        raise ConcurrentUpdate(f"order {saga.order_id}: the effect kept changing while {step} undid it")
    return saga.model_copy(update={"fence": lease.fence, "deadline_at": lease.deadline_at}), acted


def undo_payment(payments: Payments, order_id: str, now: int, methods: list[int] | None = None) -> Undo:
    """Give back what every payment method holds: void each authorization, refund each capture."""
    def undo() -> list[dict[str, Any]]:
        items = [payments.undo_item(payment_id(order_id, m), now) for m in methods or [1]]
        return [item for item in items if item is not None]

    return undo


def undo_coupon(promotions: Promotions, code: str, order_id: str, now: int) -> Undo:
    return lambda: promotions.release_items(code, order_id, now)


def undo_reservation(inventory: Inventory, order_id: str, now: int) -> Undo:
    return lambda: inventory.release_items(order_id, now)[0]


def outcome(saga: SagaState) -> models.Outcome:
    """The error the execution ends with (SagaCompensated's ErrorPath/CausePath). Step Functions refuses a
    custom error named States.*, so States.Timeout ends the execution as Saga.Timeout."""
    failure = failed_forward_step(saga)
    error = failure["error"] if failure else "Unknown"
    if error.startswith("States."):
        error = "Saga." + error.removeprefix("States.")
    cause = (failure or {}).get("cause") or f"{(failure or {}).get('step', 'a step')} failed"
    return models.Outcome(error=error, cause=cause)
