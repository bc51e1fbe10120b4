"""ReserveInventory, the saga's first step: take the order's lease (PENDING -> EXECUTING, with the lines the API
priced), then move each line's quantity from available to reserved, all or nothing, in one transaction."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.inventory import Inventory
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.step import dynamodb_store, saga_step

TIMING = Timing.from_env()
store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(store, os.environ["INVENTORY_TABLE"], TIMING)


@saga_step("ReserveInventory", store)
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    return steps.reserve_inventory(store, orders, inventory, saga, execution_id, now_ms())
