"""ConfirmOrder: approve the pending effects. Capture the payment, commit the reservation, confirm."""

from __future__ import annotations

import os

import boto3

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.gateway import gateway_from_env
from order_saga.inventory import Inventory
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.step import count, saga_step

_dynamodb = boto3.client("dynamodb")
TIMING = Timing.from_env()
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(_dynamodb, os.environ["INVENTORY_TABLE"])
payments = Payments(_dynamodb, os.environ["PAYMENTS_TABLE"], gateway_from_env(_dynamodb))


@saga_step("ConfirmOrder")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    lease = orders.lease_of(saga, execution_id)
    orders.renew(lease, now_ms())
    payments.capture(saga.order_id, now_ms(), guard=orders.guard(lease, now_ms()))
    inventory.commit(saga.order_id, now_ms(), guard=orders.guard(lease, now_ms()))
    orders.complete(lease, now_ms())
    count("SagaCompleted", "ConfirmOrder")
    return saga
