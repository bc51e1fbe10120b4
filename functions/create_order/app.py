"""CreateOrder: take the order's lease and start the saga (PENDING -> EXECUTING), with the lines the API priced."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.step import dynamodb_store, saga_step

store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], Timing.from_env())


@saga_step("CreateOrder", store)
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    return steps.create_order(orders, saga, execution_id, now_ms())
