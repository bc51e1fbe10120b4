"""ReleaseInventory: compensates ReserveInventory (and ConfirmOrder's commit). The stock goes back."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.inventory import Inventory
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.step import count, dynamodb_store, saga_step

TIMING = Timing.from_env()
store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(store, os.environ["INVENTORY_TABLE"], TIMING)


@saga_step("ReleaseInventory", store)
def lambda_handler(saga: SagaState, execution_id: str, redrive_count: int = 0) -> SagaState:
    now = now_ms()
    saga, acted = steps.compensate(store, orders, saga, execution_id, "ReleaseInventory", now,
                                   steps.undo_reservation(inventory, saga.order_id, now), redrive_count=redrive_count)
    if acted:
        count("CompensationRun", "ReleaseInventory")
    return saga
