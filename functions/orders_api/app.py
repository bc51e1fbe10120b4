"""The orders API: POST /orders starts a saga, GET /orders/{order_id} shows it.

Both routes sit behind the API's Cognito authorizer: the customer is the signed-in user, the ID token's `sub`
(API Gateway verified the token before this function runs). A customer sees only their own orders; another
customer's order answers 404, exactly like a missing one. A test stack deployed with ApiAuth=header, for an engine
without Cognito, lets a request that arrives without the authorizer's claims name its customer in X-Customer-Id
(the template's Rules refuse that mode on production).

The Idempotency-Key header names the order: the order id, and so the execution name, derive from the customer
and the key, so a resubmission can never start a second saga and two customers' keys never collide. The
order item is the idempotency record: it is written with
the payment (the card token goes to the payments table, and nowhere else) in one conditional transaction;
a resubmission finds it, and replays the first answer if the body is the same (422 otherwise). Starting the
execution is idempotent too (same name, same input), so a resubmission also starts a saga whose first
request died between the write and the start.

A finished order expires (OrderRetentionDays after it finished; DynamoDB's TTL deletes it some time later), and
then its key places a new order with the same order id. Its records in the other tables may outlive it (DynamoDB
deletes expired items in no order, up to days late): the catalog read also reads the order's reservation (and its
redemption of the coupon asked for), and a key whose earlier order is gone but not its records answers 409 until
they are, so that no new order ever meets an old order's records.

A customer has at most MAX_OPEN_ORDERS orders open (unfinished or parked): the order's write also adds it to the
customer's open orders on condition that fewer are open (Orders.take_slot), and the write that finishes an order
takes it out. At the cap, the ids whose order finished without taking itself out, or is gone, are taken out
(Orders.prune_open_orders) and the order's write is tried once more; still over the cap the answer is 429 with
Retry-After, and nothing is written. A resubmission of an order already placed is replayed whatever the count
(its order is there: it takes no second place).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Header, Path
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from order_saga.api import OrderAccepted, OrderDocument, OrderRequest, ProblemBody
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.errors import CouponExpired, CouponInvalid, StoreThrottled, TransientError
from order_saga.inventory import Inventory, reservation_key
from order_saga.models import PENDING, order_id_for, request_hash
from order_saga.orders import OpenOrders, Orders, order_view
from order_saga.payments import Payments
from order_saga.promotions import Promotions, coupon_key, redemption_key
from order_saga.step import aws_client, dynamodb_store, lambda_function, logger
from order_saga.store import ATTEMPT_SECONDS, Cancelled

TIMING = Timing.from_env()
store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(store, os.environ["INVENTORY_TABLE"], TIMING)
payments = Payments(store, os.environ["PAYMENTS_TABLE"])
promotions = Promotions(store, os.environ["PROMOTIONS_TABLE"])
_sfn = aws_client("stepfunctions")
# The state machine's alias `live` (template.yaml): each execution runs the version the alias points at when it
# starts, start to end, whatever a deploy publishes meanwhile.
STATE_MACHINE_ARN = os.environ["STATE_MACHINE_ARN"]
# The most orders a customer may have open at once (the template's MaxOpenOrdersPerCustomer).
MAX_OPEN_ORDERS = int(os.environ.get("MAX_OPEN_ORDERS", "5"))
# ApiAuth=header (test stacks only): a request without the authorizer's claims names its customer in this header.
HEADER_AUTH = os.environ.get("API_AUTH", "cognito") == "header"
CUSTOMER_HEADER = "X-Customer-Id"
NAMED_CUSTOMER = re.compile(r"[A-Za-z0-9._@-]{1,128}")


def execution_arn_of(state_machine_arn: str, name: str) -> str:
    """The ARN of the execution named `name`: Step Functions names it after the state machine alone, whether it was
    started on the state machine's ARN, a version's or an alias's (arn:...:stateMachine:<machine>[:qualifier])."""
    machine = ":".join(state_machine_arn.split(":")[:7])
    return f"{machine.replace(':stateMachine:', ':execution:')}:{name}"



def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


class UnreadableBody(Exception):
    """The JSON body is not exactly one order object: answered 400 before any validation, nothing read or written."""

    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(problem)
        self.kind, self.problem = kind, problem


_JSON_KINDS = {list: "a JSON array", str: "a JSON string", int: "a JSON number", float: "a JSON number"}


def _each_key_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose key appears twice is ambiguous (Python's json keeps the last, other parsers the first or
    refuse it): refused, whichever value would win and even when both are equal. Keys compare as decoded, so
    "payment_token" and "payment\\u005ftoken" are the same key."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise UnreadableBody("duplicate_key", f"the key {json.dumps(key)} appears more than once in one JSON "
                                                  f"object; send each key once")
        data[key] = value
    return data


def _not_json(constant: str) -> Any:
    raise UnreadableBody("json_invalid", f"the body is not valid JSON: {constant} is not a JSON value")


def one_json_object(text: str) -> dict[str, Any]:
    """The request body, parsed: exactly one JSON object, each key once, nothing after it.

    The resolver's validation must never see anything else. Given a JSON array for a body model, Powertools
    (3.x, `_normalize_field_value`, meant for form fields that arrive as lists) validates its first element
    and drops the rest: an array of two orders placed the first (issue 20). A scalar or null would be refused
    by the model, but with pydantic's words about dictionaries, and a duplicate key would silently keep its
    last value."""
    try:
        body = json.loads(text, object_pairs_hook=_each_key_once, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            raise UnreadableBody("json_invalid", f"the body holds more than one JSON value: more follows the "
                                                 f"first at character {exc.pos}; send one order per request") from exc
        raise UnreadableBody("json_invalid", f"the body is not valid JSON: {exc.msg} at character {exc.pos}") from exc
    if not isinstance(body, dict):
        kind = _JSON_KINDS.get(type(body)) or f"JSON {json.dumps(body)}"  # JSON true, false or null
        hint = "; send one order per request" if isinstance(body, list) else ""
        raise UnreadableBody("body_not_an_object", f"the body must be one order, a JSON object; this body is {kind}"
                                                   f"{hint}")
    return body


# A field without a value is left out of every response, never sent as null. The body is parsed by
# one_json_object: one order per request, as one JSON object.
app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=one_json_object,
                             serializer=lambda body: json.dumps(_without_nulls(body), separators=(",", ":")))

IdempotencyKey = Annotated[
    str,
    Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
           description="A client-chosen key, unique per order; resubmitting with it never starts a second saga."),
]
OrderId = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_-]+$")]


class NotSignedIn(Exception):
    """The request reached the function without the authorizer's claims (an API deployed without it)."""


def customer() -> str:
    """The signed-in customer: the `sub` claim API Gateway's Cognito authorizer verified; on a stack deployed with
    ApiAuth=header and no claims, the customer the X-Customer-Id header names."""
    authorizer = app.current_event.request_context.authorizer
    claims = authorizer.claims if authorizer else None
    sub = (claims or {}).get("sub")
    if sub:
        return str(sub)
    # Only a request the authorizer passed no claims for at all; any case of the name (Powertools' headers).
    named = app.current_event.headers.get(CUSTOMER_HEADER) if HEADER_AUTH and not claims else None
    if named and NAMED_CUSTOMER.fullmatch(named):
        return named
    raise NotSignedIn()


def order_location(order_id: str) -> str:
    """Where GET finds the order, as the client called the API: with the stage (or a custom domain's base
    path), which requestContext.path carries and the route's path does not."""
    called = app.current_event.request_context.path or app.current_event.path
    return called[: len(called) - len(app.current_event.path)] + f"/orders/{order_id}"


def error(status: int, message: str, **details: Any) -> Response[ProblemBody]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON,
                    body={"error": message, **{k: v for k, v in details.items() if v is not None}})


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"model": ProblemBody}}}


@app.post("/orders", summary="Place an order: starts the order saga",
          responses={202: {"description": "The saga started (or, for a resubmission, had started)",
                           "content": {"application/json": {"model": OrderAccepted}}},
                     400: _problem("Malformed request or missing Idempotency-Key; a body that is not one JSON object "
                                   "(an array of orders too), or has a key twice"),
                     401: _problem("No valid ID token (answered by API Gateway's authorizer)"),
                     409: _problem("The Idempotency-Key's earlier order has expired and its records are still being "
                                   "deleted: use a new Idempotency-Key"),
                     415: _problem("The body is not JSON"),
                     422: _problem("Unknown sku, unknown or expired coupon, or the Idempotency-Key was used with "
                                   "another body"),
                     429: _problem("Too many requests: the customer already has MaxOpenOrdersPerCustomer orders "
                                   "open (body: open_orders, limit; nothing written), or this client exceeded its "
                                   "request rate (answered by the API's web ACL) or the stage's throttle. Retry "
                                   "after Retry-After seconds"),
                     503: _problem("The order store is busy: retry with the same Idempotency-Key (Retry-After)")})
def place_order(order: OrderRequest, idempotency_key: IdempotencyKey) -> Response[OrderAccepted | ProblemBody]:
    # The catalog's lines and the coupon, in one request; with them, what an earlier order of this key left.
    order_id = order_id_for(customer(), idempotency_key)
    keys = {inventory.table: [*inventory.stock_keys([line.sku for line in order.items]), reservation_key(order_id)]}
    if order.coupon:
        keys[promotions.table] = [coupon_key(order.coupon), redemption_key(order.coupon, order_id)]
    found = store.batch_get_tables(keys)
    catalog = {item["sku"]: item for item in found[inventory.table] if item["sk"] == "STOCK"}
    left = [item for table in found.values() for item in table if str(item["sk"]).startswith(("RESERVATION", "ORDER#"))]
    if left and orders.get(order_id) is None:
        return expired_key()
    unknown = [line.sku for line in order.items if line.sku not in catalog]
    if unknown:
        return error(422, "unknown items", unknown_skus=unknown)
    currencies = sorted({catalog[line.sku]["currency"] for line in order.items})
    if len(currencies) > 1:
        return error(422, f"the items are priced in several currencies: {', '.join(currencies)}; order them apart")
    lines, subtotal, currency = inventory.price(order.items, catalog)
    now = now_ms()
    discount = 0
    if order.coupon:
        coupon = next((item for item in found.get(promotions.table) or [] if item["sk"] == "COUPON"), None)
        try:
            discount = promotions.discount(coupon, order.coupon, subtotal, currency, now)
        except (CouponInvalid, CouponExpired) as exc:
            # A resubmission of an order accepted before the coupon ran out is replayed, not refused.
            accepted = orders.get(order_id)
            if accepted and accepted.get("request_hash") == request_hash(order.model_dump(mode="json",
                                                                                            exclude_none=True)):
                return start_saga(accepted)
            return error(422, str(exc), coupon=order.coupon)
    total = subtotal - discount
    methods = order.methods(total)
    if sum(m.amount for m in methods) != total:
        return error(400, "invalid request", details=[{
            "where": "body.payment", "type": "payment_total",
            "problem": f"the payment amounts sum to {sum(m.amount for m in methods)}; the order's total after "
                       f"discount is {total} {currency}"}])
    customer_id = customer()
    body = order.model_dump(mode="json", exclude_none=True)
    digest = request_hash(body)
    new = orders.new_order(order_id, customer_id, body["items"], lines, total, currency,
                           execution_arn_of(STATE_MACHINE_ARN, order_id), digest, now,
                           coupon=order.coupon, discount=discount, amounts=[m.amount for m in methods])
    write = {"order": orders.put_new(new), **{
        f"payment:{n}": payments.put_new(order_id, n, method.token, method.amount, currency, now)
        for n, method in enumerate(methods, start=1)},
        "customer": orders.take_slot(customer_id, order_id, MAX_OPEN_ORDERS)}
    cancelled = store.transact(write)
    if cancelled is not None and over_the_cap(cancelled):
        # Ids of orders that finished without taking themselves out, or are gone, hold places nothing else frees.
        found = orders.prune_open_orders(customer_id, held(cancelled))
        if not found.pruned:
            return too_many_open_orders(found, found.counted, now)
        if store.time_left() < 2 * ATTEMPT_SECONDS:  # a large cap's pages took it: the write and the start need it
            raise StoreThrottled("no time left in this invocation to place the order after pruning its customer's "
                                 "open orders; the client's retry with the same key places it")
        cancelled = store.transact(write)  # once: places freed by the prune may have been taken meanwhile
        if cancelled is not None and over_the_cap(cancelled):
            return too_many_open_orders(found, len(held(cancelled)), now)
    if cancelled is not None:
        existing = cancelled.item("order")
        if not existing and not cancelled.failed("order"):
            return expired_key()  # no order, but its payment is there: an expired order's, not deleted yet
        if not existing or existing.get("request_hash") != digest:
            return error(422, "this Idempotency-Key was already used with a different request body")
        new = existing  # a resubmission: replay the first answer (and start the saga if it never started)
    return start_saga(new)


def expired_key() -> Response[OrderAccepted | ProblemBody]:
    """The key's earlier order expired, and DynamoDB has not deleted all its records yet: nothing is written."""
    logger.info("an expired order's records are still there: refused")
    return error(409, "this Idempotency-Key's earlier order has expired and its records are still being deleted; "
                      "place the order with a new Idempotency-Key")


def over_the_cap(cancelled: Cancelled) -> bool:
    """The order's write was refused by the customer's count alone: no order of this key, none of its payments."""
    return not cancelled.item("order") and not cancelled.failed("order") and not cancelled.failed_among("payment:")


def held(cancelled: Cancelled) -> set[str]:
    """The customer's open orders as the refused write found them."""
    return set((cancelled.item("customer") or {}).get("open_orders") or ())


def too_many_open_orders(found: OpenOrders, counted: int, now: int) -> Response[OrderAccepted | ProblemBody]:
    """The customer has MAX_OPEN_ORDERS orders open: 429, and nothing of the order written. Retry-After is the time
    until the soonest deadline of those orders still running (by its deadline a saga has finished, or its lease has
    run out and the reaper cancels it at its next sweep), at least 1 s; when none is running (all parked, which only
    an operator's redrive ends), one saga deadline."""
    ends = [max(int(o["deadline_at"]), int(o["lease_expires_at"])) for o in found.running]
    wait_ms = min(ends) - now if ends else TIMING.deadline_ms
    logger.info("too many open orders: refused", extra={"open_orders": counted, "limit": MAX_OPEN_ORDERS,
                                                        "pruned": len(found.pruned)})
    return Response(status_code=429, content_type=content_types.APPLICATION_JSON,
                    headers={"Retry-After": str(max(1, math.ceil(wait_ms / 1000)))},
                    body={"error": f"too many open orders: {counted} of this customer's orders are still "
                                   f"open, and at most {MAX_OPEN_ORDERS} may be; place this order once one of "
                                   f"them has finished (Retry-After), with the same Idempotency-Key",
                          "open_orders": counted, "limit": MAX_OPEN_ORDERS})


def start_saga(new: dict[str, Any]) -> Response[OrderAccepted | ProblemBody]:
    """Start the order's saga (once: the execution is named after the order) and answer 202. A resubmission of
    an order whose saga already began replays the answer and starts nothing: Step Functions frees an execution
    name 90 days after it closed, and a new execution then would act on a finished order."""
    order_id = new["order_id"]
    logger.append_keys(order_id=order_id)
    if new.get("saga_status", PENDING) != PENDING:
        logger.info("a resubmission of an order whose saga began: replayed", extra={"saga": new.get("saga_status")})
        return accepted_response(order_id)
    saga_input = {"order_id": order_id, "customer_id": new["customer_id"],
                  "lease_expires_at": new["lease_expires_at"], "deadline_at": new["deadline_at"]}
    if new.get("coupon"):
        saga_input["coupon"] = new["coupon"]  # RouteOrder sends the saga through ApplyCoupon
    if len(new.get("payment_amounts") or [1]) > 1:  # RouteOrder sends it through the AuthorizePayments Map
        saga_input["methods"] = list(range(1, len(new["payment_amounts"]) + 1))
    try:
        execution_arn = _sfn.start_execution(stateMachineArn=STATE_MACHINE_ARN, name=order_id,
                                             input=json.dumps(saga_input))["executionArn"]
    except _sfn.exceptions.ExecutionAlreadyExists:
        execution_arn = new["execution_arn"]
        logger.info("execution already exists: a resubmission")
    except (ClientError, BotoCoreError) as exc:
        # The order is written, its saga not started: the client's retry with the same key starts it (and if
        # it never retries, the order's lease expires and the reaper cancels it).
        logger.warning("could not start the saga", extra={"reason": str(exc)})
        return Response(status_code=503, content_type=content_types.APPLICATION_JSON, headers={"Retry-After": "1"},
                        body={"error": "the order is recorded but its saga did not start; retry with the same "
                                       "Idempotency-Key"})
    logger.info("saga started", extra={"execution_arn": execution_arn})
    return accepted_response(order_id)


def accepted_response(order_id: str) -> Response[OrderAccepted | ProblemBody]:
    """The answer to an accepted order, the same for the first request and every resubmission."""
    accepted = {"order_id": order_id, "status": "PENDING", "links": {"order": order_location(order_id)}}
    return Response(status_code=202, content_type=content_types.APPLICATION_JSON, body=accepted,
                    headers={"Location": accepted["links"]["order"]})


@app.get("/orders/<order_id>", summary="An order with its saga status and step log",
         responses={200: {"description": "The order", "content": {"application/json": {"model": OrderDocument}}},
                    400: _problem("Malformed order id"),
                    401: _problem("No valid ID token (answered by API Gateway's authorizer)"),
                    404: _problem("No such order among the caller's")})
def get_order(order_id: OrderId) -> Response[OrderDocument | ProblemBody]:
    caller = customer()
    order = orders.get(order_id, consistent=False)
    if order is None or order.get("customer_id") != caller:
        return error(404, f"order {order_id} not found")
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=order_view(order))


@app.exception_handler(NotSignedIn)
def not_signed_in(exc: NotSignedIn) -> Response:
    logger.error("a request arrived without the authorizer's claims: is the API's Cognito authorizer on?")
    return Response(status_code=401, content_type=content_types.APPLICATION_JSON, body={"error": "not signed in"})


@app.exception_handler(RequestValidationError)
def invalid_request(exc: RequestValidationError) -> Response:
    if any(e.get("loc", ("",))[0] == "response" for e in exc.errors()):
        raise exc  # our response broke its own schema: a server error, never the client's fault
    details = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", ""),
                "type": e.get("type", "")} for e in exc.errors()]
    return error(400, "invalid request", details=details)


@app.exception_handler(UnreadableBody)
def unreadable_body(exc: UnreadableBody) -> Response:
    return error(400, "invalid request", details=[{"where": "body", "problem": exc.problem, "type": exc.kind}])


@app.exception_handler(TransientError)
def store_busy(exc: TransientError) -> Response:
    """DynamoDB stayed busy past this request's budget: nothing was decided, the client retries with its key."""
    logger.warning("the order store is busy", extra={"error": type(exc).__name__, "reason": str(exc)})
    return Response(status_code=503, content_type=content_types.APPLICATION_JSON, headers={"Retry-After": "1"},
                    body={"error": "the order store is busy; retry with the same Idempotency-Key"})


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
    """The body could not be parsed: malformed JSON, an integer literal past Python's 4,300 digits, or a
    multipart body without a boundary. That is the client's; any other ValueError is ours (a 5xx)."""
    message = str(exc)
    if isinstance(exc, json.JSONDecodeError) or "digits" in message or "boundary" in message.lower():
        return error(400, "invalid request", details=[{"where": "body", "problem": message[:200], "type": "body"}])
    raise exc


@lambda_function("OrdersApi", store, correlation_id_path=correlation_paths.API_GATEWAY_REST)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
