"""ReaperWorker: does the reaper's work, one item at a time, from ReaperQueue (its sweep, functions/reaper/app.py,
queues one message per item). An SQS event source mapping invokes it with batches, a bounded number at once
(ReaperConcurrency); each message is one of:

1. `order`: an order whose lease expired while its saga was unfinished (the execution was stopped, timed out,
   crashed, or ran past the saga deadline). The worker takes the lease over with a conditional write on the lease
   expiry the sweep saw (a new fencing token, so the old execution's late writes cannot land, and a second worker,
   or a duplicate message, finds the order taken and does nothing), stops the old execution, and compensates:
   money back, stock back, order cancelled. An order past the pivot (CONFIRMING: its stock committed) is finished
   instead: captured, COMPLETED, OrderConfirmed.
2. `reservation`: a reservation past its expiry: stock goes back, exactly once.
3. `payment`: a payment undone while an authorization may have been in flight at the gateway (its call's outcome
   was unknown): the gateway is asked by the payment's idempotency key, and an authorization that landed after
   the void is voided.

An item that fails is logged, counted (ReaperFailed, which an alarm watches) and reported in the partial batch
response: SQS hands it over again after its visibility timeout, and after maxReceiveCount receives moves it to
ReaperDeadLetterQueue (another alarm). An order whose takeover landed before the failure is found by a later sweep
once the reaper's own lease expires, as an execution's would be.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.errors import PaymentNotAuthorized
from order_saga.gateway import gateway_from_env
from order_saga.inventory import Inventory
from order_saga.models import CONFIRMING, ReaperWork, SagaState
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
processor = BatchProcessor(event_type=EventType.SQS)
_sfn = aws_client("stepfunctions")


def reap_order(entry: dict[str, Any], owner: str, now: int) -> str | None:
    """Take an abandoned order over and finish it: "completed" past the pivot, else "compensated"; None when it
    was not abandoned after all (renewed meanwhile, or another worker took it)."""
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


def reap(work: ReaperWork, owner: str) -> str:
    """Do one item; returns what was done: "compensated" or "completed" (an order), "released" (a reservation),
    the reconciliation's outcome ("reversed", "settled", "undecided"), or "nothing" (already done: a duplicate)."""
    now = now_ms()
    if work.kind == "order":
        reaped = reap_order({"order_id": work.id, "lease_expires_at": work.lease_expires_at}, owner, now)
        return reaped or "nothing"
    if work.kind == "reservation":
        if not inventory.release_expired(work.id, now):
            return "nothing"
        count("ReservationExpired", "Reaper")
        return "released"
    outcome = payments.reconcile(work.id, now)
    if outcome == "reversed":
        count("AuthorizationReconciled", "Reaper")
        logger.warning("an authorization left behind was voided", extra={"payment_id": work.id})
    return outcome


def work_on(record: SQSRecord) -> str:
    """One message: its item done, or a failure (logged, counted, raised: reported to the mapping)."""
    try:
        work = ReaperWork.model_validate_json(record.body)
    except ValueError:
        logger.exception("a reaper message that is no reaper work", extra={"message_id": record.message_id})
        count("ReaperFailed", "Reaper")
        raise
    try:
        done = reap(work, f"reaper:{record.message_id}")
    except Exception:
        logger.exception("could not do the reaper's work on an item", extra={
            "kind": work.kind, "id": work.id, "receive_count": record.attributes.approximate_receive_count})
        count("ReaperFailed", "Reaper")
        raise
    logger.info("reaper work done", extra={"kind": work.kind, "id": work.id, "done": done})
    return done


@lambda_function("ReaperWorker", store)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=work_on, processor=processor, context=context)
