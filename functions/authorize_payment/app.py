"""AuthorizePayment: hold the order's total on the customer's card (nothing is captured yet)."""

from __future__ import annotations

import os

import boto3

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.gateway import gateway_from_env
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.step import saga_step

_dynamodb = boto3.client("dynamodb")
TIMING = Timing.from_env()
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)
payments = Payments(_dynamodb, os.environ["PAYMENTS_TABLE"], gateway_from_env(_dynamodb))


@saga_step("AuthorizePayment")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    _, total = saga.require_priced()
    lease = orders.lease_of(saga, execution_id)
    orders.renew(lease, now_ms())
    reference = payments.authorize(saga.order_id, saga.payment_token, total, saga.currency or "USD", now_ms(),
                                   guard=orders.guard(lease, now_ms()))
    orders.record_step(lease, "AuthorizePayment", now_ms())
    return saga.model_copy(update={"authorization": reference})
