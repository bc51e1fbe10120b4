"""ConfirmOrder: commit the reserved stock and the coupon's redemption, then capture every payment method, then
confirm the order."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.gateway import gateway_from_env
from order_saga.inventory import Inventory
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.promotions import Promotions
from order_saga.step import count, dynamodb_store, saga_step

TIMING = Timing.from_env()
store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(store, os.environ["INVENTORY_TABLE"], TIMING)
payments = Payments(store, os.environ["PAYMENTS_TABLE"], gateway_from_env(store), Timing.from_env())
promotions = Promotions(store, os.environ["PROMOTIONS_TABLE"], TIMING)


@saga_step("ConfirmOrder", store)
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    confirmed = steps.confirm_order(store, orders, inventory, payments, saga, execution_id, now_ms(), promotions)
    count("SagaCompleted", "ConfirmOrder")
    return confirmed
