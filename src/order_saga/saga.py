"""The saga's steps: each forward step and each compensation as one DynamoDB transaction.

A forward step writes its side effect and the order's lease check, step log and renewal in one
TransactWriteItems; when it is cancelled, the items' own state (returned by the failed conditions) says
whether the step already ran (a repeat, or a retry after a lost response: success), lost its lease
(LeaseLost, OrderNotActive) or failed for a business reason.

ConfirmOrder is the pivot, with two transactions around the gateway: the stock is committed, every payment
marked CAPTURING and the order moved to CONFIRMING first; the money is captured next; the order is completed
last. Once the commit landed the saga only goes forward: a retry recognises its own commit (the order
CONFIRMING under its owner and fence) and captures; RefundPayment and the reaper finish such an order instead of
undoing it. Only the processor's refusal of a capture turns it back (docs/leases.md).

A compensation undoes its effect and moves the order to COMPENSATING in one transaction, under the lease
of the execution that compensates (or of the reaper, once it took the order over: then the execution's own
compensations find the order is not theirs and do nothing). It checks that it owns a compensable order before
it calls the gateway. Transactions name their items ("reservation", "stock:<sku>", "payment:<n>", "order"),
and a cancellation is read by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from order_saga import models
from order_saga.errors import (
    ConcurrentUpdate,
    CouponInvalid,
    PaymentNotAuthorized,
    ReservationExpired,
    ReservationReleased,
)
from order_saga.inventory import COMMITTED, RESERVED, Inventory
from order_saga.models import PricedLine, SagaState
from order_saga.orders import Lease, Orders
from order_saga.payments import HOLDS_MONEY, Payments, payment_id
from order_saga.promotions import APPLIED, CONTINUE, FAIL, HELD, SKIPPED, Promotions
from order_saga.promotions import COMMITTED as REDEMPTION_COMMITTED
from order_saga.store import Cancelled, Items, Store

PAST_PIVOT = (models.CONFIRMING, models.COMPLETED)

FORWARD_STEPS = ("ReserveInventory", "ApplyCoupon", "AuthorizePayment", "AuthorizePayments",
                 "ConfirmOrder")


def methods_of(saga: SagaState) -> list[int]:
    """The payment methods' numbers: [1] for an order paid with one card."""
    return saga.methods or [1]


# ---- forward steps ---------------------------------------------------------------------------------------
def reserve_inventory(store: Store, orders: Orders, inventory: Inventory, saga: SagaState, owner: str,
                      now: int) -> SagaState:
    """The saga's first step: take the order's lease, then take every line's quantity from available into reserved,
    all or nothing. Two writes: a retry (after a lost response, a crash between them) repeats the lease's, which
    recognises its own, and finds its reservation made, or makes it."""
    return _reserve(store, orders, inventory, take_lease(orders, saga, owner, now), owner, now)


def take_lease(orders: Orders, saga: SagaState, owner: str, now: int) -> SagaState:
    """ReserveInventory's first write. Take the order's lease: the saga is EXECUTING, with what the API priced and
    stored (the lines, the total, the coupon, the payment methods, the customer), whatever the execution's input
    said."""
    order, lease = orders.acquire(saga, owner, now)
    amounts = order.get("payment_amounts") or []
    return saga.model_copy(update={
        "customer_id": order.get("customer_id", saga.customer_id), "coupon": order.get("coupon"),
        "methods": list(range(1, len(amounts) + 1)) if len(amounts) > 1 else None,
        "lines": [PricedLine(**line) for line in order["lines"]], "total": order["total"],
        "currency": order["currency"], "fence": lease.fence, "deadline_at": lease.deadline_at,
        "lease_expires_at": lease.expires_at})


def _reserve(store: Store, orders: Orders, inventory: Inventory, saga: SagaState, owner: str,
             now: int) -> SagaState:
    lines, _ = saga.require_priced()
    lease = orders.lease_of(saga, owner)
    cancelled = store.transact({**inventory.reserve_items(saga.order_id, lines, now),
                                "order": orders.step_update(lease, "ReserveInventory", now)})
    if cancelled is None:
        return saga.model_copy(update={"lease_expires_at": orders.renewed(lease, now)})
    if cancelled.failed("order"):
        raise orders.refusal(cancelled.item("order"), lease, now)
    if cancelled.failed("reservation"):
        reservation = cancelled.item("reservation") or {}
        if reservation.get("status") in (RESERVED, COMMITTED):
            return _after_repeat(orders, saga)  # reserved before: a repeat, or a retry after a lost response
        raise ReservationReleased(f"the reservation of order {saga.order_id} was released; it cannot be taken again")
    short = inventory.short_of(cancelled)
    if short is not None:
        raise short
    raise ConcurrentUpdate(f"the reservation of order {saga.order_id} was cancelled: {cancelled.reasons}")


def apply_coupon(store: Store, orders: Orders, promotions: Promotions, saga: SagaState, owner: str,
                 now: int, policy: str = FAIL, payments: Payments | None = None) -> SagaState:
    """Hold one redemption of the order's coupon, within its global and per-customer limits. A coupon refused for
    a business reason (CouponInvalid, CouponExpired, CouponExhausted) fails the step under the `fail` policy;
    under `continue` the order goes on at its original amount (_without_coupon)."""
    code = saga.coupon
    if not code:
        raise CouponInvalid("the order has no coupon (ApplyCoupon runs only when there is one)")
    lease = orders.lease_of(saga, owner)
    coupon = promotions.coupon(code)
    # Under `continue`, a refusal the coupon already shows skips it straight away: two requests, as a hold.
    refused = CouponInvalid(f"no coupon {code}") if coupon is None else (
        promotions.refused_as_read(code, coupon, now) if policy == CONTINUE else None)
    if coupon is None or refused is not None:
        return _refused(store, orders, promotions, payments, saga, lease, refused, now, policy)
    cancelled = store.transact({
        **promotions.hold_items(code, saga.order_id, saga.customer_id, int(coupon["per_customer"]), now),
        "order": orders.step_update(lease, "ApplyCoupon", now, coupon_outcome=APPLIED)})
    if cancelled is None:
        return saga.model_copy(update={"lease_expires_at": orders.renewed(lease, now)})
    if cancelled.failed("order"):
        raise orders.refusal(cancelled.item("order"), lease, now)
    if cancelled.failed("redemption"):
        decided = _decided(orders, saga, cancelled.item("redemption"))
        if decided is not None:
            return decided  # held or skipped before: a repeat
        raise CouponInvalid(f"the redemption of coupon {code} for order {saga.order_id} was released")
    if cancelled.failed("coupon") or cancelled.failed("customer"):
        refusal = promotions.refusal(code, cancelled.item("coupon") if cancelled.failed("coupon") else coupon,
                                     cancelled.failed("customer"), now)
        return _refused(store, orders, promotions, payments, saga, lease, refusal, now, policy)
    raise ConcurrentUpdate(f"the coupon hold of order {saga.order_id} was cancelled: {cancelled.reasons}")


def _decided(orders: Orders, saga: SagaState, redemption: dict[str, Any] | None) -> SagaState | None:
    """What an earlier attempt decided for the coupon, from the order's redemption: held (the saga goes on with
    it), skipped (it goes on without it, at the original amount), or None (released, or none)."""
    status = (redemption or {}).get("status")
    if status in (HELD, REDEMPTION_COMMITTED):
        return _after_repeat(orders, saga)
    if status == SKIPPED:
        return _after_repeat(orders, saga, coupon=None, total=_subtotal(saga))
    return None


def _subtotal(saga: SagaState) -> int:
    """The order's original amount (before the coupon's discount), from the lines the API priced."""
    lines, _ = saga.require_priced()
    return sum(line.unit_price * line.quantity for line in lines)


def _refused(store: Store, orders: Orders, promotions: Promotions, payments: Payments | None, saga: SagaState,
             lease: Lease, refusal: Exception | None, now: int, policy: str) -> SagaState:
    """The coupon was refused for a business reason: raise it (`fail`), or go on without it (`continue`)."""
    if refusal is None:
        raise CouponInvalid(f"coupon {saga.coupon} could not be held")
    if policy != CONTINUE:
        raise refusal
    if payments is None:
        raise ValueError("the `continue` coupon policy needs the payments (ApplyCoupon moves an amount)")
    return _without_coupon(store, orders, promotions, payments, saga, lease, refusal, now)


def _without_coupon(store: Store, orders: Orders, promotions: Promotions, payments: Payments, saga: SagaState,
                    lease: Lease, refusal: Exception, now: int) -> SagaState:
    """The `continue` policy: the order goes on at its original amount. One transaction under the lease: the
    order's redemption SKIPPED (no count held; it blocks any later hold for the order, so whichever of a hold and
    a skip lands first decides, and only one skip ever lands); the first payment method's amount up by the discount
    not given (while still PENDING); the order's total back to its subtotal, no discount, and why."""
    subtotal = _subtotal(saga)
    _, total = saga.require_priced()
    not_given = subtotal - total
    cancelled = store.transact({
        "redemption": promotions.skip_item(str(saga.coupon), saga.order_id, saga.customer_id, refusal, now),
        "payment:1": payments.amount_item(payment_id(saga.order_id, 1), not_given, now),
        "order": orders.coupon_skipped_update(lease, now, subtotal, not_given, type(refusal).__name__, str(refusal))})
    if cancelled is None:
        return saga.model_copy(update={"coupon": None, "total": subtotal,
                                       "lease_expires_at": orders.renewed(lease, now)})
    if cancelled.failed("order"):
        raise orders.refusal(cancelled.item("order"), lease, now)
    if cancelled.failed("redemption"):
        decided = _decided(orders, saga, cancelled.item("redemption"))
        if decided is not None:
            return decided  # another attempt held or skipped it first: that decides
        raise refusal  # released (a compensation began): as under `fail`
    raise ConcurrentUpdate(f"the payment of order {saga.order_id} changed while its coupon was skipped: "
                           f"{cancelled.reasons}")


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
    cancelled = store.transact({"payment": payments.authorized_item(pid, reference, now),
                                "order": orders.step_update(lease, step, now)})
    if cancelled is not None:
        if cancelled.failed("order"):
            payments.reverse(pid)  # the lease is gone: this authorization must not hold money
            raise orders.refusal(cancelled.item("order"), lease, now)
        error = payments.late_authorization(pid, cancelled.item("payment")) if cancelled.failed("payment") else (
            ConcurrentUpdate(f"the authorization of order {saga.order_id} was cancelled: {cancelled.reasons}"))
        if error is not None:
            raise error
        return _after_repeat(orders, saga, authorization=reference)
    return saga.model_copy(update={"authorization": reference, "lease_expires_at": orders.renewed(lease, now)})


def confirm_order(store: Store, orders: Orders, inventory: Inventory, payments: Payments, saga: SagaState,
                  owner: str, now: int, promotions: Promotions | None = None) -> SagaState:
    """The pivot. Commit the stock and the coupon's redemption, mark every payment CAPTURING and the order
    CONFIRMING, in one transaction; then capture every payment method and complete the order.

    Before the commit lands, a failure compensates. Once it landed, the saga only goes forward: a retry finds
    the order CONFIRMING under its own owner and fence (its own commit) and goes on to capture.
    """
    lines, _ = saga.require_priced()
    lease = orders.lease_of(saga, owner)
    methods = methods_of(saga)
    items = {**inventory.commit_items(saga.order_id, lines, now),
             **{f"payment:{m}": payments.capturing_item(payment_id(saga.order_id, m), now) for m in methods}}
    if saga.coupon and promotions:
        items["redemption"] = promotions.commit_item(saga.coupon, saga.order_id, now)
    cancelled = store.transact({**items, "order": orders.pivot(lease, now)})
    if cancelled is not None:
        order = cancelled.item("order")
        if cancelled.failed("order"):
            if not (orders.holds(order, lease) and (order or {}).get("saga_status") in PAST_PIVOT):
                raise orders.refusal(order, lease, now)
            # Our own commit landed before (a retry after a lost response, a failed capture, a crash).
        else:
            _not_committable(cancelled, saga, payments, methods)
    return finish_confirmation(store, orders, payments, saga, lease, now, inventory=inventory, promotions=promotions)


def _not_committable(cancelled: Cancelled, saga: SagaState, payments: Payments, methods: list[int]) -> None:
    """Why the stock commit was refused while the order was still ours and unpivoted: raise it."""
    if cancelled.failed("reservation"):
        reservation = cancelled.item("reservation") or {}
        if reservation.get("status") == RESERVED:
            raise ReservationExpired(f"the reservation of order {saga.order_id} expired at "
                                     f"{reservation.get('expires_at')}")
        raise ReservationReleased(f"order {saga.order_id} holds no reservation to commit "
                                  f"({reservation.get('status')})")
    for method in methods:
        if cancelled.failed(f"payment:{method}"):
            raise payments.not_capturable(cancelled.item(f"payment:{method}")) or ConcurrentUpdate(
                f"payment {method} of order {saga.order_id} changed while committing")
    if "redemption" in cancelled.reasons and cancelled.failed("redemption"):
        raise CouponInvalid(f"the coupon redemption of order {saga.order_id} was released before confirming")
    raise ConcurrentUpdate(f"the stock commit of order {saga.order_id} was cancelled: {cancelled.reasons}")


def finish_confirmation(store: Store, orders: Orders, payments: Payments, saga: SagaState, lease: Lease,
                        now: int, step: str = "ConfirmOrder", inventory: Inventory | None = None,
                        promotions: Promotions | None = None) -> SagaState:
    """Past the pivot: capture every payment method (idempotent at the processor), then complete the order, all
    under `lease` (ConfirmOrder's, a compensation's that found the order pivoted, or the reaper's). Only the
    processor's refusal of a capture turns the saga back (the order becomes COMPENSATING).

    The completion is the write that finishes the order's records, so it also starts their retention (`purge_at`):
    the payments and the gateway's ledger entries, and, given `inventory` and `promotions` (a function allowed to
    write those tables: ConfirmOrder, the reaper; not RefundPayment), the committed reservation and redemption."""
    methods = methods_of(saga)
    for method in methods:
        try:
            payments.capture(payment_id(saga.order_id, method))
        except PaymentNotAuthorized:
            orders.give_up_pivot(lease, now)
            raise
    final = {f"payment:{m}": payments.captured_item(payment_id(saga.order_id, m), now) for m in methods}
    retire: Items = {}
    for m in methods:
        ledger = payments.retire_ledger_item(payment_id(saga.order_id, m), now)
        if ledger is not None:
            retire[f"retire:ledger:{m}"] = ledger
    if inventory is not None:
        retire["retire:reservation"] = inventory.retire_items(saga.order_id, now)["reservation"]
    if promotions is not None and saga.coupon:
        retire["retire:redemption"] = promotions.retire_item(saga.coupon, saga.order_id, now)
    # The order stops being one of its customer's open orders in the same write that completes it.
    done = {"order": orders.complete(lease, step, now),
            "customer": orders.release_slot(saga.customer_id, saga.order_id)}
    cancelled = store.transact({**final, **retire, **done})
    if cancelled is not None and retire and cancelled.failed_among("retire:") and not any(
            cancelled.failed(name) for name in cancelled.reasons if not name.startswith("retire:")):
        # A record not in the state its retention expects (it never should be): complete the order without it, so
        # that housekeeping never holds a saga back; that record then never expires.
        kept = {name: item for name, item in retire.items() if not cancelled.failed(name)}
        cancelled = store.transact({**final, **kept, **done})
    if cancelled is None:
        return saga
    order = cancelled.item("order")
    if cancelled.failed("order"):
        if orders.holds(order, lease) and (order or {}).get("saga_status") == models.COMPLETED:
            return saga  # completed before: a repeat
        raise orders.refusal(order, lease, now)
    for method in methods:
        if cancelled.failed(f"payment:{method}"):
            raise payments.not_capturable(cancelled.item(f"payment:{method}")) or ConcurrentUpdate(
                f"payment {method} of order {saga.order_id} changed while confirming it")
    raise ConcurrentUpdate(f"the completion of order {saga.order_id} was cancelled: {cancelled.reasons}")


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


Undo = Callable[[dict[str, Any]], Items]  # given the order as the compensation claimed it


def compensate(store: Store, orders: Orders, saga: SagaState, owner: str, step: str, now: int,
               undo: Undo | None = None, finish: bool = False, redrive_count: int = 0) -> tuple[SagaState, bool]:
    """Run compensation `step` under `owner`'s lease: undo, and log it on the order, in one transaction.

    Returns the state (with the lease it ran under) and whether it acted; False when the order is not this
    owner's to compensate: another owner (the reaper) compensates it, it is already cancelled, it is past the
    pivot (it only goes forward) or COMPLETED (final). That is settled by a conditional write before anything is
    undone (Orders.claim_for_compensation): no call to the gateway for an order that is not ours, and no late
    step of this execution can pivot the order once its compensation began.
    """
    lease = orders.compensation_lease(saga, owner, now)
    if lease is None:
        return saga, False
    held = saga.model_copy(update={"fence": lease.fence, "deadline_at": lease.deadline_at})
    claimed = orders.claim_for_compensation(lease, now, redrive_count)
    if claimed is None:
        # Not ours (another owner compensates), or ours but cancelled before (a repeat), past the pivot, COMPLETED.
        return held if orders.holds(orders.get(saga.order_id), lease) else saga, False
    failure = failed_forward_step(saga)
    for _ in range(5):
        items = undo(claimed) if undo is not None else {}
        update = orders.compensation_update(lease, step, failure, now, finish, log_once=not items)
        if finish:  # the order stops being one of its customer's open orders in the write that cancels it
            items = {**items, "customer": orders.release_slot(saga.customer_id, saga.order_id)}
        if not items:
            acted = store.update(**update["Update"]).ok  # False: done before, or not ours any more
            break
        cancelled = store.transact({**items, "order": update})
        if cancelled is None:
            acted = True
            break
        if cancelled.failed("order"):
            acted = False  # the order is not ours any more: its new owner compensates
            break
        # The payment or reservation changed while undoing it (a late step landed): undo again.
    else:
        raise ConcurrentUpdate(f"order {saga.order_id}: the effect kept changing while {step} undid it")
    return held, acted


def past_pivot(orders: Orders, saga: SagaState, owner: str) -> tuple[Lease, str] | None:
    """The lease under which `owner` may finish an order that is past the pivot, and its status (CONFIRMING or
    COMPLETED, still held by this owner and fence); None when the order is not past the pivot or not ours."""
    if saga.fence is None or saga.deadline_at is None:
        return None
    lease = Lease(saga.order_id, owner, saga.fence, saga.deadline_at, saga.lease_expires_at or 0)
    order = orders.get(saga.order_id) or {}
    if orders.holds(order, lease) and order.get("saga_status") in PAST_PIVOT:
        return lease, str(order["saga_status"])
    return None


def undo_payment(payments: Payments, order_id: str, now: int, methods: list[int] | None = None) -> Undo:
    """Give back what every payment method holds: void each authorization, refund each capture. A PENDING payment
    with no sent marker is voided without the gateway only if the order says its execution marks its sends
    (Orders.sends_marked, stamped when the execution's own ReserveInventory took the lease: the compensation runs
    the `live` code, the execution's AuthorizePayment may be a version that sent without a marker)."""
    def undo(order: dict[str, Any]) -> Items:
        marked = Orders.sends_marked(order)
        items = {f"payment:{m}": payments.undo_item(payment_id(order_id, m), now, sends_marked=marked)
                 for m in methods or [1]}
        return {name: item for name, item in items.items() if item is not None}

    return undo


def undo_coupon(promotions: Promotions, code: str, order_id: str, now: int) -> Undo:
    return lambda _order: promotions.release_items(code, order_id, now)


def undo_reservation(inventory: Inventory, order_id: str, now: int) -> Undo:
    return lambda _order: inventory.release_items(order_id, now)[0]


def outcome(saga: SagaState) -> models.Outcome:
    """The error the execution ends with (SagaCompensated's ErrorPath/CausePath). Step Functions refuses a
    custom error named States.*, so States.Timeout ends the execution as Saga.Timeout."""
    failure = failed_forward_step(saga)
    error = failure["error"] if failure else "Unknown"
    if error.startswith("States."):
        error = "Saga." + error.removeprefix("States.")
    cause = (failure or {}).get("cause") or f"{(failure or {}).get('step', 'a step')} failed"
    return models.Outcome(error=error, cause=cause)
