"""CreateOrder: price the order from the catalog and start the saga (PENDING -> EXECUTING)."""

from __future__ import annotations

import os

import boto3

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.inventory import Inventory
from order_saga.models import PricedLine, SagaState
from order_saga.orders import Orders
from order_saga.step import saga_step

_dynamodb = boto3.client("dynamodb")
TIMING = Timing.from_env()
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(_dynamodb, os.environ["INVENTORY_TABLE"])


@saga_step("CreateOrder")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    lines, total, currency = inventory.price(saga.items)
    order, lease = orders.start(saga, execution_id, lines, total, currency, now_ms())
    # A repeat returns the pricing stored the first time, even if the catalog changed since.
    return saga.model_copy(update={
        "lines": [PricedLine(**line) for line in order["lines"]],
        "total": order["total"],
        "currency": order["currency"],
        "fence": lease.fence,
        "deadline_at": lease.deadline_at,
    })
