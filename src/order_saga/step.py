"""What every handler shares: Powertools set-up, the time budget, the event envelope, fault injection.

A saga task receives {"saga": <SagaState>, "execution_id": <arn>} (see the ASL's Parameters) and returns
the updated saga state; a failure is an exception whose class name is the error the state machine catches.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import boto3
import botocore.loaders
import botocore.session
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from order_saga.errors import SagaError, TransientError
from order_saga.models import SagaState, StepEvent
from order_saga.store import CLIENT_CONFIG, Store

logger = Logger()
metrics = Metrics()
TRACING = os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").lower() != "true"
# The libraries X-Ray traces calls through: the AWS SDK, and requests where the Stripe adapter may call Stripe with it.
# Tracer()'s default patches every library the X-Ray SDK knows that can be imported, importing each one first:
# requests (with charset_normalizer and idna) and sqlite3 in every function, ~30 ms of its cold start.
TRACED_LIBRARIES = ("botocore", "requests") if os.environ.get("PAYMENT_GATEWAY") == "stripe" else ("botocore",)

Handler = Callable[[dict[str, Any], LambdaContext], Any]
Step = Callable[..., SagaState]  # fn(saga, execution_id[, method=n]) -> saga


class _Loader(botocore.loaders.Loader):
    """botocore's model loader, which tells the services it knows from its folders' names alone. botocore asks before
    it loads a client's model, to refuse an unknown name (UnknownServiceError, as before); its own answer opens each of
    its ~440 service folders to look for that kind of file (~2,800 stats, ~17 ms of a cold start per client kind).
    A folder without the model fails when the model is loaded (DataNotFoundError)."""

    def list_available_services(self, type_name: str) -> list[str]:
        return sorted({entry.name for path in self.search_paths if os.path.isdir(path)
                       for entry in os.scandir(path) if entry.is_dir()})


def _default_session() -> None:
    """boto3's default session, on a botocore session that loads models through _Loader (honouring AWS_DATA_PATH as
    botocore's own loader does). One already set up is kept: the local stack's sandboxes share a preloaded loader
    (sagalocal/awslambda/sandbox.py)."""
    if boto3.DEFAULT_SESSION is None:
        session = botocore.session.get_session()
        paths = session.get_config_variable("data_path")
        session.register_component("data_loader", _Loader(extra_search_paths=[
            os.path.expanduser(os.path.expandvars(p)) for p in paths.split(os.pathsep)] if paths else None))
        boto3.setup_default_session(botocore_session=session)


def dynamodb_store() -> Store:
    """The function's DynamoDB access (one client, created once per sandbox)."""
    _default_session()
    return Store(boto3.client("dynamodb", config=CLIENT_CONFIG))


def aws_client(service: str, read_timeout: float | None = None) -> Any:
    """A client for another service with the same bounds as DynamoDB's: one attempt of at most 2 s (connect
    0.5 s, read 1.5 s), so the call fits the function's timeout (docs/timeouts.md); the state machine (or the
    API's client, with its Idempotency-Key) retries the whole step. A longer `read_timeout` where a call given
    up on may have landed anyway and a retry repeats it (PutEvents: a repeated event)."""
    config = CLIENT_CONFIG if read_timeout is None else CLIENT_CONFIG.merge(Config(read_timeout=read_timeout))
    _default_session()
    return boto3.client(service, config=config)


class RareClient:
    """aws_client(service, ...) made at its first use, for a client that only a rare path calls: most sandboxes never
    make it (a client kind's first one is ~5-10 ms of a cold start: its model and endpoint rules, read and parsed)."""

    def __init__(self, service: str, read_timeout: float | None = None) -> None:
        self._made: Any = None
        self._args = (service, read_timeout)

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            self._made = aws_client(*self._args)
        return getattr(self._made, name)


def count(name: str, step: str, value: float = 1, unit: str = MetricUnit.Count) -> None:
    """One metric with its own `step` dimension (alarms and the dashboard select on service and step)."""
    with single_metric(name=name, unit=unit, value=value, default_dimensions=metrics.default_dimensions) as metric:
        metric.add_dimension(name="step", value=step)


def lambda_function(name: str, store: Store | None, order_id_of: Callable[[Any], str | None] | None = None,
                    **log_context: Any) -> Callable[[Handler], Handler]:
    """A Lambda handler with Powertools, the store's time budget, tracing where it is on, and fault injection
    where the template turned it on (FaultInjection)."""

    def decorate(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def budgeted(event: dict[str, Any], context: LambdaContext) -> Any:
            if store is not None:
                store.set_deadline(context.get_remaining_time_in_millis())
            return fn(event, context)

        handler: Handler = metrics.log_metrics(logger.inject_lambda_context(clear_state=True, **log_context)(budgeted))
        if TRACING:
            from aws_lambda_powertools import Tracer

            handler = Tracer(patch_modules=TRACED_LIBRARIES).capture_lambda_handler(capture_response=False)(handler)
        if os.environ.get("FAULT_RULES_TABLE"):
            from sagafaults.handler import wrap

            handler = wrap(handler, name, [store.client] if store is not None else [], order_id_of)
        return handler

    return decorate


def _saga_order_id(event: Any) -> str | None:
    saga = event.get("saga") if isinstance(event, dict) else None
    return saga.get("order_id") if isinstance(saga, dict) else None


def saga_step(name: str, store: Store) -> Callable[[Step], Handler]:
    """Turn `fn(saga, execution_id) -> saga` into the Lambda handler of the state named `name`."""

    def decorate(fn: Step) -> Handler:
        takes_redrive_count = "redrive_count" in inspect.signature(fn).parameters  # the compensations

        @lambda_function(name, store, _saga_order_id)
        @functools.wraps(fn)
        def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            step = StepEvent.model_validate(event)
            logger.append_keys(order_id=step.saga.order_id, execution_id=step.execution_id, step=name)
            # Inside the AuthorizePayments Map, each iteration names its payment method; a compensation learns how
            # many times its execution was redriven.
            extra: dict[str, Any] = {"method": step.method} if step.method else {}
            if takes_redrive_count:
                extra["redrive_count"] = step.redrive_count
            try:
                result = fn(step.saga, step.execution_id, **extra)
            except SagaError as exc:
                logger.warning("step failed", extra={"error": type(exc).__name__, "reason": str(exc)})
                if isinstance(exc, TransientError):  # the dashboard's retries per step (CancelOrder counts failures)
                    count("StepRetried", name)
                raise
            logger.info("step succeeded")
            return result.dump()

        return handler

    return decorate
