"""Reaper: a scheduled sweep that finishes what abandoned sagas left.

1. Orders whose lease expired while their saga is unfinished (the execution was stopped, timed out,
   crashed, or ran past the saga deadline): the reaper takes the lease over with a conditional write (a new
   fencing token, so the old execution's late writes cannot land and a second reaper cannot take the same
   order), stops the old execution, and compensates: money back, stock back, order cancelled. An order past
   the pivot (CONFIRMING: its stock committed) is finished instead: captured, COMPLETED, OrderConfirmed.
2. Reservations past their expiry: stock goes back, exactly once.
3. Payments undone while an authorization may have been in flight at the gateway (its call's outcome was
   unknown): once their reconciliation is due, the gateway is asked by the payment's idempotency key, and
   an authorization that landed after the void is voided.

Every shard of the indexes is read, every page of each (the payments' Reconcile index too). One order that
cannot be finished is logged and
counted (ReaperFailed, which an alarm watches) and the sweep goes on; its lease stays expired, so the next
sweep tries it again.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.errors import PaymentNotAuthorized
from order_saga.gateway import gateway_from_env
from order_saga.inventory import Inventory
from order_saga.models import CONFIRMING, SagaState
from order_saga.orders import Orders
from order_saga.payments import CAPTURED, CAPTURING, Payments, payment_id
from order_saga.promotions import Promotions, held_coupon
from order_saga.step import aws_client, count, dynamodb_store, lambda_function, logger

TIMING = Timing.from_env()
store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(store, os.environ["INVENTORY_TABLE"], TIMING)
payments = Payments(store, os.environ["PAYMENTS_TABLE"], gateway_from_env(store), TIMING)
promotions = Promotions(store, os.environ["PROMOTIONS_TABLE"], TIMING)
_sfn = aws_client("stepfunctions")


def reap_order(entry: dict[str, Any], owner: str, now: int) -> str | None:
    """Take an abandoned order over and finish it: "completed" past the pivot, else "compensated"; None when it
    was not abandoned after all (renewed meanwhile, or another reaper took it)."""
    taken = orders.take_over(entry, owner, now)
    if taken is None:
        return None
    order, lease = taken
    logger.append_keys(order_id=order["order_id"])
    previous = str(order.get("previous_owner", "")).split("#")[0]  # an execution's owner id: <arn>#<start time>
    execution = previous if ":execution:" in previous else str(order.get("execution_arn", ""))
    if ":execution:" in execution:
        try:
            _sfn.stop_execution(executionArn=execution, error="LeaseExpired",
                                cause="the reaper took the order over and compensates it")
        except Exception as exc:  # noqa: BLE001 - already ended, or never started: the fence protects us anyway
            logger.info("could not stop the execution", extra={"execution": execution, "reason": str(exc)})
    methods = list(range(1, len(order.get("payment_amounts") or [0]) + 1))
    saga = SagaState(order_id=order["order_id"], customer_id=order["customer_id"], fence=lease.fence,
                     deadline_at=lease.deadline_at, lease_expires_at=lease.expires_at, coupon=held_coupon(order),
                     methods=methods if len(methods) > 1 else None)
    if order.get("saga_status") == CONFIRMING:  # past the pivot: finish it, never undo it
        try:
            steps.finish_confirmation(store, orders, payments, saga, lease, now_ms(), inventory=inventory,
                                      promotions=promotions)
            count("SagaReaped", "Reaper")
            logger.warning("abandoned saga past the pivot completed", extra={"previous_owner": previous})
            return "completed"
        except PaymentNotAuthorized:
            pass  # the processor refused a capture: the order is COMPENSATING; compensate it below
    captured = any((payments.get(payment_id(saga.order_id, m)) or {}).get("status") in (CAPTURING, CAPTURED)
                   for m in methods)
    steps.compensate(store, orders, saga, owner, "RefundPayment" if captured else "VoidPayment", now_ms(),
                     steps.undo_payment(payments, saga.order_id, now_ms(), methods))
    if saga.coupon:
        steps.compensate(store, orders, saga, owner, "ReleaseCoupon", now_ms(),
                         steps.undo_coupon(promotions, saga.coupon, saga.order_id, now_ms()))
    steps.compensate(store, orders, saga, owner, "ReleaseInventory", now_ms(),
                     steps.undo_reservation(inventory, saga.order_id, now_ms()))
    steps.compensate(store, orders, saga, owner, "CancelOrder", now_ms(), finish=True)
    count("SagaReaped", "Reaper")
    logger.warning("abandoned saga compensated", extra={"was": entry.get("saga_status"),
                                                         "previous_owner": order.get("previous_owner")})
    return "compensated"


@lambda_function("Reaper", store)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    now = now_ms()
    owner = f"reaper:{context.aws_request_id}"
    compensated, completed, released, failed = [], [], [], []
    for entry in orders.abandoned(now):
        try:
            reaped = reap_order(entry, owner, now)
            if reaped is not None:
                (completed if reaped == "completed" else compensated).append(entry["order_id"])
        except Exception:  # one stubborn order must not stop the sweep; its lease stays expired: next sweep
            logger.exception("could not compensate an abandoned saga", extra={"order_id": entry["order_id"]})
            count("ReaperFailed", "Reaper")
            failed.append(entry["order_id"])
    for entry in inventory.expired(now):
        order_id = str(entry["pk"]).removeprefix("ORDER#")
        try:
            if inventory.release_expired(order_id, now):
                released.append(order_id)
                count("ReservationExpired", "Reaper")
        except Exception:  # noqa: BLE001 - as above: logged, counted, retried at the next sweep
            logger.exception("could not release an expired reservation", extra={"order_id": order_id})
            count("ReaperFailed", "Reaper")
            failed.append(order_id)
    reconciled: dict[str, str] = {}
    for pid in payments.to_reconcile(now):
        try:
            reconciled[pid] = payments.reconcile(pid, now_ms())
            if reconciled[pid] == "reversed":
                count("AuthorizationReconciled", "Reaper")
                logger.warning("an authorization left behind was voided", extra={"payment_id": pid})
        except Exception:  # noqa: BLE001 - as above
            logger.exception("could not reconcile a payment", extra={"payment_id": pid})
            count("ReaperFailed", "Reaper")
            failed.append(pid)
    logger.info("sweep done", extra={"compensated": compensated, "completed": completed, "released": released,
                                     "reconciled": reconciled, "failed": failed})
    return {"compensated": compensated, "completed": completed, "released_reservations": released,
            "reconciled": reconciled, "failed": failed}
