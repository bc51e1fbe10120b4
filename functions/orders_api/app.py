"""The orders API: POST /orders starts a saga, GET /orders/{order_id} shows it.

The Idempotency-Key header names the order: the order id, and so the execution
name, derive from it, so a resubmission can never start a second saga. The same
key with the same body replays the first response; with another body it is 422.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Header, Path
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.inventory import Inventory
from order_saga.models import OrderAccepted, OrderDocument, OrderRequest, ProblemBody, order_id_for
from order_saga.orders import Orders, order_view

logger = Logger()
tracer = Tracer()
metrics = Metrics()

_dynamodb = boto3.client("dynamodb")
TIMING = Timing.from_env()
_sfn = boto3.client("stepfunctions")
orders = Orders(_dynamodb, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(_dynamodb, os.environ["INVENTORY_TABLE"])
STATE_MACHINE_ARN = os.environ["STATE_MACHINE_ARN"]
idempotency = IdempotencyConfig(
    event_key_jmespath="idempotency_key",
    payload_validation_jmespath="body",
    raise_on_no_idempotency_key=True,
    expires_after_seconds=24 * 3600,
)
persistence = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"], boto3_client=_dynamodb)

app = APIGatewayRestResolver(enable_validation=True)

IdempotencyKey = Annotated[
    str,
    Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
           description="A client-chosen key, unique per order; resubmitting with it never starts a second saga."),
]
OrderId = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_-]+$")]


class IdempotencyKeyReused(Exception):
    """The key already placed an order with a different body."""


def error(status: int, message: str, **details: Any) -> Response[ProblemBody]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON,
                    body={"error": message, **details})


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"model": ProblemBody}}}


@app.post("/orders", summary="Place an order: starts the order saga",
          responses={202: {"description": "The saga started (or, for a resubmission, had started)",
                           "content": {"application/json": {"model": OrderAccepted}}},
                     400: _problem("Malformed request or missing Idempotency-Key"),
                     409: _problem("The same Idempotency-Key is being processed right now"),
                     415: _problem("The body is not JSON"),
                     422: _problem("Unknown sku, or the Idempotency-Key was used with another body")})
def place_order(order: OrderRequest, idempotency_key: IdempotencyKey) -> Response[OrderAccepted | ProblemBody]:
    catalog = inventory.stock([line.sku for line in order.items])
    unknown = [line.sku for line in order.items if line.sku not in catalog]
    if unknown:
        return error(422, "unknown items", unknown_skus=unknown)
    try:
        body = start_saga(request={"idempotency_key": idempotency_key, "body": order.model_dump(mode="json")})
    except (IdempotencyValidationError, IdempotencyKeyReused):
        return error(422, "this Idempotency-Key was already used with a different request body")
    except IdempotencyAlreadyInProgressError:
        return error(409, "a request with this Idempotency-Key is in progress; retry shortly")
    return Response(status_code=202, content_type=content_types.APPLICATION_JSON, body=body,
                    headers={"Location": body["links"]["order"]})


@idempotent_function(data_keyword_argument="request", config=idempotency, persistence_store=persistence)
def start_saga(request: dict[str, Any]) -> dict[str, Any]:
    order = OrderRequest.model_validate(request["body"])
    order_id = order_id_for(request["idempotency_key"])
    execution_arn = f"{STATE_MACHINE_ARN.replace(':stateMachine:', ':execution:')}:{order_id}"
    if not orders.accept(order_id, order, execution_arn, now_ms()):
        existing = orders.get(order_id) or {}
        if existing.get("customer_id") != order.customer_id or existing.get("items") != request["body"]["items"]:
            raise IdempotencyKeyReused(order_id)
    logger.append_keys(order_id=order_id)
    saga_input = {"order_id": order_id, **request["body"]}
    try:
        execution_arn = _sfn.start_execution(stateMachineArn=STATE_MACHINE_ARN, name=order_id,
                                             input=json.dumps(saga_input))["executionArn"]
    except _sfn.exceptions.ExecutionAlreadyExists:
        logger.info("execution already exists: a resubmission")
    logger.info("saga started", extra={"execution_arn": execution_arn})
    return {"order_id": order_id, "execution_arn": execution_arn, "status": "PENDING",
            "links": {"order": f"/orders/{order_id}"}}


@app.get("/orders/<order_id>", summary="An order with its saga status and step log",
         responses={200: {"description": "The order", "content": {"application/json": {"model": OrderDocument}}},
                    400: _problem("Malformed order id"), 404: _problem("No such order")})
def get_order(order_id: OrderId) -> Response[OrderDocument | ProblemBody]:
    order = orders.get(order_id, consistent=False)
    if order is None:
        return error(404, f"order {order_id} not found")
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON,
                    body=order_view(order))


@app.exception_handler(RequestValidationError)
def invalid_request(exc: RequestValidationError) -> Response:
    if any(e.get("loc", ("",))[0] == "response" for e in exc.errors()):
        raise exc  # our response broke its own schema: a server error, never the client's fault
    details = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", ""),
                "type": e.get("type", "")} for e in exc.errors()]
    return error(400, "invalid request", details=details)


@app.exception_handler(RequestUnsupportedContentType)
def unsupported_content_type(exc: RequestUnsupportedContentType) -> Response:
    return error(415, "the body must be JSON (Content-Type: application/json)")


@app.exception_handler(UnicodeDecodeError)
def undecodable_body(exc: UnicodeDecodeError) -> Response:
    return error(400, "invalid request", details=[{"where": "body", "problem": "the body is not UTF-8 text",
                                                   "type": "body_encoding"}])


@app.exception_handler(RecursionError)
def too_deep_body(exc: RecursionError) -> Response:
    return error(400, "invalid request", details=[{"where": "body", "problem": "the JSON body is nested too deeply",
                                                   "type": "json_too_deep"}])


@app.exception_handler(ValueError)
def unparsable_body(exc: ValueError) -> Response:
    """Powertools' body parsing raises ValueError for a malformed multipart body; that is the client's."""
    if "boundary" in str(exc).lower():
        return error(400, "invalid request", details=[{"where": "body", "problem": str(exc), "type": "body"}])
    raise exc


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return app.resolve(event, context)
