"""What every saga task handler shares: Powertools set-up and the event envelope.

A task receives {"saga": <SagaState>, "execution_id": <arn>} (see the ASL's
Parameters) and returns the updated saga state; a failure is an exception whose
class name is the error the state machine catches.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga.dynamo import now_ms
from order_saga.errors import SagaError
from order_saga.models import SagaState, StepEvent

logger = Logger()
tracer = Tracer()
metrics = Metrics()

FORWARD_STEPS = ("CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder")

Step = Callable[[SagaState, str], SagaState]


def count(name: str, step: str) -> None:
    """One metric with its own `step` dimension (alarms select on service and step)."""
    with single_metric(name=name, unit=MetricUnit.Count, value=1,
                       default_dimensions=metrics.default_dimensions) as metric:
        metric.add_dimension(name="step", value=step)


def saga_step(name: str) -> Callable[[Step], Callable[[dict[str, Any], LambdaContext], dict[str, Any]]]:
    """Turn `fn(saga, execution_id) -> saga` into a Lambda handler for the state named `name`."""

    def decorate(fn: Step) -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
        @logger.inject_lambda_context(clear_state=True)
        @metrics.log_metrics
        @tracer.capture_lambda_handler(capture_response=False)
        @functools.wraps(fn)
        def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            step = StepEvent.model_validate(event)
            logger.append_keys(order_id=step.saga.order_id, execution_id=step.execution_id, step=name)
            tracer.put_annotation(key="order_id", value=step.saga.order_id)
            try:
                result = fn(step.saga, step.execution_id)
            except SagaError as exc:
                logger.warning("step failed", extra={"error": type(exc).__name__, "reason": str(exc)})
                raise
            logger.info("step succeeded")
            return result.dump()

        return handler

    return decorate


def failed_forward_step(saga: SagaState) -> tuple[str, str, str | None]:
    """The forward step whose failure started the compensation, from `$.failures`."""
    for step in FORWARD_STEPS:
        if step in saga.failures:
            failure = saga.failures[step]
            return step, failure.error, _message(failure.cause)
    return "Unknown", "Unknown", None


def _message(cause: str | None) -> str | None:
    """A Lambda failure's Cause is its error JSON (with a stack trace): keep the errorMessage."""
    if cause and cause.startswith("{"):
        try:
            return str(json.loads(cause).get("errorMessage", cause))
        except (ValueError, AttributeError):
            return cause
    return cause


def compensate(orders: Any, saga: SagaState, execution_id: str, name: str,
               undo: Callable[[], None] | None) -> SagaState:
    """Run compensation `name` under this execution's lease: mark the saga COMPENSATING (once), undo, log.

    When another owner holds the order (the reaper took it over), it compensates:
    this compensation is a no-op.
    """
    lease = orders.compensation_lease(saga.order_id, execution_id, now_ms())
    if lease is None:
        logger.info("another owner compensates this order, or it is already compensated; nothing to do")
        return saga
    failed, error, cause = failed_forward_step(saga)
    if orders.begin_compensation(lease, failed, error, cause, now_ms()):
        count("StepFailed", failed)
    if undo is not None:
        undo()
    if name == "CancelOrder":
        orders.cancel(lease, now_ms())
        count("SagaCompensated", name)
    else:
        orders.record_compensation(lease, name, now_ms())
    count("CompensationRun", name)
    return saga
