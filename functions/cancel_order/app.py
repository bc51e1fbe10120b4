"""CancelOrder: compensates CreateOrder. The order is CANCELLED and the saga COMPENSATED."""

from __future__ import annotations

import os

import boto3

from order_saga.dynamo import now_ms
from order_saga.models import Outcome, SagaState
from order_saga.orders import Orders
from order_saga.step import count, failed_forward_step, saga_step

_dynamodb = boto3.client("dynamodb")
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"])


@saga_step("CancelOrder")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    failed, error, cause = failed_forward_step(saga)
    if orders.begin_compensation(saga.order_id, failed, error, cause, now_ms()):
        count("StepFailed", failed)
    orders.cancel(saga.order_id, now_ms())
    count("SagaCompensated", "CancelOrder")
    # The SagaCompensated Fail state ends the execution with this error (ErrorPath/CausePath).
    return saga.model_copy(update={"outcome": Outcome(error=error, cause=cause or f"{failed} failed")})
