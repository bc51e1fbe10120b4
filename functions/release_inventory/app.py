"""ReleaseInventory: compensates ReserveInventory (and ConfirmOrder's commit). Stock goes back."""

from __future__ import annotations

import os

import boto3

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.inventory import Inventory
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.step import compensate, saga_step

_dynamodb = boto3.client("dynamodb")
TIMING = Timing.from_env()
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(_dynamodb, os.environ["INVENTORY_TABLE"])


@saga_step("ReleaseInventory")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    return compensate(orders, saga, execution_id, "ReleaseInventory",
                      lambda: inventory.release(saga.order_id, now_ms()))
