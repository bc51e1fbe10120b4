"""ReserveInventory: move each line's quantity from available to reserved, all or nothing."""

from __future__ import annotations

import os

import boto3

from order_saga.dynamo import now_ms
from order_saga.inventory import Inventory
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.step import saga_step

_dynamodb = boto3.client("dynamodb")
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"])
inventory = Inventory(_dynamodb, os.environ["INVENTORY_TABLE"])


@saga_step("ReserveInventory")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    orders.require_active(saga.order_id)
    lines, _ = saga.require_priced()
    inventory.reserve(saga.order_id, lines, now_ms())
    orders.record_step(saga.order_id, "ReserveInventory", now_ms())
    return saga
