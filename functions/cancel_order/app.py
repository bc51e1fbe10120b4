"""CancelOrder: the last compensation. The order is CANCELLED and the saga COMPENSATED."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.step import count, dynamodb_store, saga_step

store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], Timing.from_env())


@saga_step("CancelOrder", store)
def lambda_handler(saga: SagaState, execution_id: str, redrive_count: int = 0) -> SagaState:
    saga, acted = steps.compensate(store, orders, saga, execution_id, "CancelOrder", now_ms(), finish=True,
                                   redrive_count=redrive_count)
    outcome = steps.outcome(saga)
    if acted:
        failure = steps.failed_forward_step(saga)
        count("StepFailed", failure["step"] if failure else "Unknown")
        count("SagaCompensated", "CancelOrder")
    # The SagaCompensated Fail state ends the execution with this error (ErrorPath/CausePath).
    return saga.model_copy(update={"outcome": outcome})
