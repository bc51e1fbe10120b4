"""Reaper: a scheduled sweep that finishes what abandoned sagas left.

1. Orders whose lease expired while their saga is unfinished (the execution was
   stopped, timed out, crashed, or ran past the saga deadline): the reaper takes the
   lease over with a conditional write (a new fencing token, so the old execution's
   late writes cannot land and a second reaper cannot take the same order), stops the
   old execution, and compensates: money back, stock back, order cancelled.
2. Reservations past their expiry: stock goes back, exactly once.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.gateway import gateway_from_env
from order_saga.inventory import Inventory
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.step import count, logger, metrics, tracer

_dynamodb = boto3.client("dynamodb")
_sfn = boto3.client("stepfunctions")
TIMING = Timing.from_env()
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(_dynamodb, os.environ["INVENTORY_TABLE"])
payments = Payments(_dynamodb, os.environ["PAYMENTS_TABLE"], gateway_from_env(_dynamodb))


def reap_order(order: dict[str, Any], owner: str, now: int) -> bool:
    lease = orders.take_over(order, owner, now)
    if lease is None:
        return False  # renewed meanwhile, or another reaper took it
    logger.append_keys(order_id=order["order_id"])
    execution = order.get("execution_arn") or order.get("lease_owner")
    if execution and ":execution:" in str(execution):
        try:
            _sfn.stop_execution(executionArn=execution, error="LeaseExpired",
                                cause=f"the reaper ({owner}) took the order over and compensates it")
        except Exception as exc:  # noqa: BLE001 - already ended, or never started: the fence protects us anyway
            logger.info("could not stop the execution", extra={"execution": execution, "reason": str(exc)})
    payments.void(order["order_id"], now_ms())
    inventory.release(order["order_id"], now_ms())
    orders.cancel(lease, now_ms())
    count("SagaReaped", "Reaper")
    logger.warning("abandoned saga compensated", extra={"was": order.get("saga_status"),
                                                         "previous_owner": order.get("lease_owner")})
    return True


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    now = now_ms()
    owner = f"reaper:{context.aws_request_id}"
    compensated, failed = [], []
    for order in orders.abandoned(now):
        try:
            if reap_order(order, owner, now):
                compensated.append(order["order_id"])
        except Exception:  # one stubborn order must not stop the sweep; its lease expires and it is retried
            logger.exception("could not compensate an abandoned saga", extra={"order_id": order["order_id"]})
            count("ReaperFailed", "Reaper")
            failed.append(order["order_id"])
    released = [r["order_id"] for r in inventory.expired(now) if inventory.release_expired(r, now)]
    for _ in released:
        count("ReservationExpired", "Reaper")
    logger.info("sweep done", extra={"compensated": compensated, "released": released, "failed": failed})
    return {"compensated": compensated, "released_reservations": released, "failed": failed}
