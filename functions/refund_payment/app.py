"""RefundPayment: compensates ConfirmOrder's capture. Refunds captured money, or voids if not captured."""

from __future__ import annotations

import os

import boto3

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.gateway import gateway_from_env
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.step import compensate, saga_step

_dynamodb = boto3.client("dynamodb")
TIMING = Timing.from_env()
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)
payments = Payments(_dynamodb, os.environ["PAYMENTS_TABLE"], gateway_from_env(_dynamodb))


@saga_step("RefundPayment")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    return compensate(orders, saga, execution_id, "RefundPayment", lambda: payments.refund(saga.order_id, now_ms()))
