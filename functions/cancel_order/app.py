"""CancelOrder: compensates CreateOrder. The order is CANCELLED and the saga COMPENSATED."""

from __future__ import annotations

import os

import boto3

from order_saga.config import Timing
from order_saga.models import Outcome, SagaState
from order_saga.orders import Orders
from order_saga.step import compensate, failed_forward_step, saga_step

_dynamodb = boto3.client("dynamodb")
TIMING = Timing.from_env()
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)


@saga_step("CancelOrder")
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    compensate(orders, saga, execution_id, "CancelOrder", None)
    failed, error, cause = failed_forward_step(saga)
    # The SagaCompensated Fail state ends the execution with this error (ErrorPath/CausePath). Step Functions
    # refuses a custom error named States.*, so States.Timeout ends the execution as Saga.Timeout.
    if error.startswith("States."):
        error = "Saga." + error.removeprefix("States.")
    return saga.model_copy(update={"outcome": Outcome(error=error, cause=cause or f"{failed} failed")})
