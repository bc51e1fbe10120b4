"""ReserveInventory: move each line's quantity from available to reserved, all or nothing."""

from __future__ import annotations

import os

import boto3

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.inventory import Inventory
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.step import saga_step

_dynamodb = boto3.client("dynamodb")
TIMING = Timing.from_env()
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(_dynamodb, os.environ["INVENTORY_TABLE"])


@saga_step("ReserveInventory")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    lines, _ = saga.require_priced()
    lease = orders.lease_of(saga, execution_id)
    orders.renew(lease, now_ms())
    now = now_ms()
    inventory.reserve(saga.order_id, lines, now, TIMING.reservation_ttl_ms, guard=orders.guard(lease, now))
    orders.record_step(lease, "ReserveInventory", now_ms())
    return saga
