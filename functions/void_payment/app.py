"""VoidPayment: compensates AuthorizePayment. Releases the authorization (nothing to void is not an error)."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.gateway import gateway_from_env
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.step import count, dynamodb_store, saga_step

store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], Timing.from_env())
payments = Payments(store, os.environ["PAYMENTS_TABLE"], gateway_from_env(store), Timing.from_env())


@saga_step("VoidPayment", store)
def lambda_handler(saga: SagaState, execution_id: str, redrive_count: int = 0) -> SagaState:
    now = now_ms()
    saga, acted = steps.compensate(store, orders, saga, execution_id, "VoidPayment", now,
                                   steps.undo_payment(payments, saga.order_id, now, steps.methods_of(saga)),
                                   redrive_count=redrive_count)
    if acted:
        count("CompensationRun", "VoidPayment")
    return saga
