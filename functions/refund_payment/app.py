"""RefundPayment: compensates ConfirmOrder's capture. Refunds captured money, or voids what was only authorized.

It follows ConfirmOrder's failure. If ConfirmOrder's stock commit had landed (the order is past the pivot, still
this execution's), nothing is undone: the saga only goes forward, so RefundPayment finishes the confirmation
(captures, completes) and the state machine ends at SagaConfirmed. Only the processor's refusal of a capture
turns it back, and then it refunds as usual."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.errors import PaymentNotAuthorized
from order_saga.gateway import gateway_from_env
from order_saga.models import COMPLETED, SagaState
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.step import count, dynamodb_store, saga_step

store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], Timing.from_env())
payments = Payments(store, os.environ["PAYMENTS_TABLE"], gateway_from_env(store), Timing.from_env())


@saga_step("RefundPayment", store)
def lambda_handler(saga: SagaState, execution_id: str, redrive_count: int = 0) -> SagaState:
    now = now_ms()
    # Twice at most: the order may pivot between the two looks (a ConfirmOrder of this execution still running
    # after its task timed out); then it goes forward, unless the processor refuses a capture, then it is refunded.
    for _ in range(2):
        finished = finish_if_past_pivot(saga, execution_id, now)
        if finished is not None:
            return finished
        compensated, acted = steps.compensate(store, orders, saga, execution_id, "RefundPayment", now,
                                              steps.undo_payment(payments, saga.order_id, now, steps.methods_of(saga)),
                                              redrive_count=redrive_count)
        if acted:
            count("CompensationRun", "RefundPayment")
            return compensated
    return compensated


def finish_if_past_pivot(saga: SagaState, execution_id: str, now: int) -> SagaState | None:
    """The saga state marked confirmed if the order is past the pivot and this execution's (finished here if
    ConfirmOrder had not); None when it is not, or when the processor refused a capture (then it is refunded)."""
    pivoted = steps.past_pivot(orders, saga, execution_id)
    if pivoted is None:
        return None
    lease, status = pivoted
    if status != COMPLETED:
        try:
            steps.finish_confirmation(store, orders, payments, saga, lease, now)
            count("SagaCompleted", "RefundPayment")
        except PaymentNotAuthorized:
            return None  # the processor refused a capture: the order is COMPENSATING, and this refunds it
    return saga.model_copy(update={"confirmed": True})
