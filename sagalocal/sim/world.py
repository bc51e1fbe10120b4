"""The simulated world: the saga's real handlers and state machine, DynamoDB and the gateway in memory, a virtual
clock, and a fault plan consulted at every side effect.

Deterministic by construction: one thread. moto's ASL interpreter runs each execution in the thread that starts
it (its program, Map iterations and task time-outs would each start a thread: here they run in place), Retry
waits and the handlers' backoff advance the virtual clock instead of sleeping, and everything random (retry
jitter, backoff jitter, request ids) draws from one generator seeded by the case. What happens concurrently on
AWS happens here at a chosen point: a follow-up (the reaper's takeover, a StopExecution, a resubmission) runs
inline, at the side effect where the fault plan put it, while the step it interrupts is suspended. So every
run replays exactly from its case.

What the world records: every side effect (each DynamoDB write and each gateway call) as a Point, the orders
table's stream (the outcome events come from it, as PublishOutcome derives them), the gateway's ledger.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
import random
import sys
import types
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT, REGION = "123456789012", "us-east-1"
EPOCH = 1_798_761_600.0  # 2027-01-01T00:00:00Z: the virtual clock's start in every run
DAY = 86_400.0
NAME_REUSE_DAYS = 90  # StartExecution: "names can be reused after 90 days"
CUSTOMER = "sim-customer-1"
WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
TABLES = {"OrdersTable": "ORDERS_TABLE", "InventoryTable": "INVENTORY_TABLE", "PaymentsTable": "PAYMENTS_TABLE",
          "PromotionsTable": "PROMOTIONS_TABLE"}
FUNCTIONS = {  # logical id -> the folder of its handler
    "OrdersApiFunction": "orders_api",
    "ReserveInventoryFunction": "reserve_inventory", "ApplyCouponFunction": "apply_coupon",
    "AuthorizePaymentFunction": "authorize_payment", "ConfirmOrderFunction": "confirm_order",
    "RefundPaymentFunction": "refund_payment", "VoidPaymentFunction": "void_payment",
    "ReleaseCouponFunction": "release_coupon", "ReleaseInventoryFunction": "release_inventory",
    "CancelOrderFunction": "cancel_order", "ParkSagaFunction": "park_saga", "ReaperFunction": "reaper",
    "ReaperWorkerFunction": "reaper_worker",
}


# ---- the virtual clock ------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = EPOCH

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, float(seconds))

    def ms(self) -> int:
        return int(self.now * 1000)


CLOCK = Clock()
_ACTIVE: list[World] = []  # the world running now (the patches act only while one does)


class _VirtualDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
        if not _ACTIVE:
            return datetime.datetime.now(tz)
        return datetime.datetime.fromtimestamp(CLOCK.now, tz)


_DATETIME = types.SimpleNamespace(datetime=_VirtualDatetime, timezone=datetime.timezone,
                                  timedelta=datetime.timedelta)


# ---- faults -----------------------------------------------------------------------------------------------
class SandboxCrash(BaseException):  # noqa: N818 - the sandbox died (Runtime.ExitError): nothing catches it
    pass


class SandboxTimeout(BaseException):  # noqa: N818 - the task's TimeoutSeconds passed (States.Timeout)
    pass


class InjectedBug(BaseException):  # noqa: N818 - an error no Retry lists, after the effect landed
    pass


# before: the call fails before it lands with the error its step retries; crash, timeout, error: it lands and
# the invocation then dies (Runtime.ExitError), times out (States.Timeout) or raises an error no Retry lists.
# pause: nothing fails; only the follow-up runs at that point. hang (for named tests, not in KINDS): the call
# never answers and never lands; the invocation runs to its timeout.
KINDS = ("before", "crash", "timeout", "error")
FOLLOW_UPS_AT_POINT = ("reaper", "stop", "resubmit")
FOLLOW_UPS_AFTER_END = ("resubmit-after-end", "resubmit-after-90-days")
# outage: the call fails before it lands, and so does every later call of the same function (the dependency is
# down for it) until an operator fixes the cause: its retries run out, and a compensation's fails the execution,
# which parks the saga. At the end the operator follows docs/operations.md: fix the cause, redrive every parked
# execution, check. The +redrive follow-ups: the reaper takes over (or a StopExecution stops the execution) at
# the point, and at the end an operator redrives every execution that can be redriven, late and needlessly: it
# must change nothing.
OUTAGE = "outage"
PARKING_CASES = ((OUTAGE, None), (OUTAGE, "reaper"), ("pause", "reaper+redrive"), ("pause", "stop+redrive"))


@dataclass(frozen=True)
class Fault:
    point: int  # the index of the side effect (0-based, in the order the run makes them)
    kind: str  # "pause" or one of KINDS
    follow_up: str | None = None  # one of FOLLOW_UPS_AT_POINT or FOLLOW_UPS_AFTER_END

    def label(self) -> str:
        return f"{self.kind}@{self.point}" + (f"+{self.follow_up}" if self.follow_up else "")


@dataclass
class Point:
    index: int
    function: str  # the state or function that made it: "ConfirmOrder", "Reaper", "OrdersApi"
    attempt: str  # which invocation: "ConfirmOrder#2" is ConfirmOrder's second invocation in the run
    call: str  # "dynamodb.transact_write_items[reservation, ...]" or "gateway.capture(ord#1)"

    def __str__(self) -> str:
        return f"#{self.index} {self.attempt} {self.call}"


@dataclass
class Invocation:
    function: str
    label: str
    deadline: float
    execution_arn: str | None


# ---- the gateway ------------------------------------------------------------------------------------------
class SimGateway:
    """The fake processor's test tokens, in memory: tok_approve, tok_decline, tok_capture_fails (its capture is
    refused: the authorization expired). Idempotent by key, as the real adapter's processor is."""

    timeout = 3.0

    def __init__(self, world: World) -> None:
        self.world = world
        self.ledger: dict[str, dict[str, Any]] = {}
        self.refused_captures: set[str] = set()

    def authorize(self, key: str, token: str, amount: int, currency: str,
                  sending: Callable[[], None] | None = None) -> str:
        from order_saga.errors import PaymentDeclined

        if sending is not None:  # behind the breaker it ran there already
            sending()

        def act() -> str:
            entry = self.ledger.get(key)
            if entry is not None and entry["state"] != "DECLINED":
                return str(entry["reference"])
            if token not in ("tok_approve", "tok_capture_fails"):
                self.ledger[key] = {"state": "DECLINED", "amount": amount, "reference": None, "token": token}
                raise PaymentDeclined("card declined")
            self.ledger[key] = {"state": "AUTHORIZED", "amount": amount, "reference": f"auth_{key}", "token": token}
            return f"auth_{key}"

        return self.world.side_effect("gateway", f"gateway.authorize({_short(key)})", act, _gateway_unavailable)

    def capture(self, key: str) -> None:
        from order_saga.errors import PaymentNotAuthorized

        def act() -> None:
            entry = self.ledger.get(key)
            if entry is None or entry["state"] in ("VOIDED", "REFUNDED", "DECLINED"):
                raise PaymentNotAuthorized(f"nothing to capture for {key}")
            if entry["state"] == "CAPTURED":
                return
            if entry["token"] == "tok_capture_fails":
                entry["state"] = "VOIDED"  # the hold expired: it is gone
                self.refused_captures.add(key)
                raise PaymentNotAuthorized(f"the authorization of {key} expired before its capture")
            entry["state"] = "CAPTURED"
            self.world.captures.add(key)

        self.world.side_effect("gateway", f"gateway.capture({_short(key)})", act, _gateway_unavailable)

    def reverse(self, key: str) -> str | None:
        def act() -> str | None:
            entry = self.ledger.get(key)
            if entry is None:
                return None
            if entry["state"] == "AUTHORIZED":
                entry["state"] = "VOIDED"
            elif entry["state"] == "CAPTURED":
                entry["state"] = "REFUNDED"
            return str(entry["state"])

        return self.world.side_effect("gateway", f"gateway.reverse({_short(key)})", act, _gateway_unavailable)

    def state(self, key: str) -> str | None:
        entry = self.ledger.get(key)
        return None if entry is None else str(entry["state"])


def _gateway_unavailable(call: str) -> Exception:
    from order_saga.errors import PaymentGatewayUnavailable

    return PaymentGatewayUnavailable(f"injected: {call} failed before it reached the processor")


def _store_throttled(call: str) -> Exception:
    from order_saga.errors import StoreThrottled

    return StoreThrottled(f"injected: {call} throttled past the handler's retries, before it landed")


def _short(key: str) -> str:
    order_id, _, method = key.partition("#")
    return f"#{method}" if method else order_id[:8]


# ---- DynamoDB: moto's backend called directly, with a point at every write -------------------------------------
class DirectDynamoDB:
    """The low-level client's DynamoDB calls, answered by moto's DynamoDB handler without botocore or HTTP (the
    wire format the client sends is what moto's handler takes). Errors come back as botocore's ClientError, shaped
    as botocore parses them: the code, and the item or cancellation reasons the Store reads."""

    def __getattr__(self, name: str) -> Callable[..., dict[str, Any]]:
        def call(**params: Any) -> dict[str, Any]:
            from botocore.exceptions import ClientError
            from moto.core.exceptions import JsonRESTError
            from moto.dynamodb.responses import DynamoHandler

            handler = _routed(DynamoHandler())
            handler.body = json_copy(params)
            try:
                result = getattr(handler, name)()
            except JsonRESTError as exc:
                code, message, body = _json_error(exc)
                response = {"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": int(exc.code)}, **body}
                raise ClientError(response, _operation(name)) from None
            return json_copy(result.result)  # type: ignore[no-any-return]

        return call


class DirectClient:
    """A boto3 client whose busiest calls in the simulation are answered by moto's own handler method, without
    botocore and moto's URL routing (over a millisecond a call, a tenth of a case): Step Functions' StartExecution
    and StopExecution (the API's start of every saga, the reaper's and the follow-ups' stops: ~1.5 calls a case) and
    SQS's SendMessageBatch (the reaper's sweep). Every other call, and `exceptions` and `meta`, are the boto3
    client's. The request reaches the handler as botocore would have sent it (a JSON body, or the parameters moto's
    parser would have made of it: the same names and values); a Step Functions error comes back as the client's own
    modeled exception (ExecutionAlreadyExists is caught by class). SQS's do not quite: moto's query-protocol codes
    (AWS.SimpleQueueService.NonExistentQueue where botocore raises QueueDoesNotExist), always HTTP 400, which no
    caller catches by class. The answers are moto's, before its serializer: dicts of strings and (naive) datetimes,
    with no ResponseMetadata, which the callers read (executionArn, Failed) or ignore."""

    DIRECT = {"stepfunctions": ("moto.stepfunctions.responses", "StepFunctionResponse",
                                ("start_execution", "stop_execution")),
              "sqs": ("moto.sqs.responses", "SQSResponse", ("send_message_batch",))}

    def __init__(self, client: Any) -> None:
        self._client = client
        self.exceptions = client.exceptions
        self.meta = client.meta
        self._module, self._handler, self._direct = self.DIRECT[client.meta.service_model.service_name]

    def __getattr__(self, name: str) -> Any:
        if name not in self._direct:
            return getattr(self._client, name)
        operation = _operation(name)

        def call(**params: Any) -> dict[str, Any]:
            from moto.core.exceptions import HTTPException, ServiceException

            handler = _routed(getattr(importlib.import_module(self._module), self._handler)())
            handler.body = json.dumps(params)  # what a JSON service's handler reads
            handler.params = json_copy(params)  # and one whose parameters moto parses (SQS)
            handler.querystring, handler.uri_match = {}, {}
            try:
                result = getattr(handler, name)()
            except ServiceException as exc:
                raise self._error(str(exc.code), str(exc.message), 400, operation) from None
            except HTTPException as exc:
                code, message, _ = _json_error(exc)
                raise self._error(code, message, int(exc.code), operation) from None
            return dict(result.result)

        return call

    def _error(self, code: str, message: str, status: int, operation: str) -> Exception:
        response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return self._client.exceptions.from_code(code)(response, operation)  # type: ignore[no-any-return]


def _routed(handler: Any) -> Any:
    """A moto response handler as its URL routing leaves it for the simulation's account and region."""
    handler.current_account, handler.region, handler.headers = ACCOUNT, REGION, {}
    return handler


def _json_error(exc: Any) -> tuple[str, str, dict[str, Any]]:
    """A moto JSON error's code, message and the rest of its body (an item, cancellation reasons)."""
    body = json.loads(exc.description)
    code = str(body.pop("__type", "")).rpartition("#")[2]
    return code, str(body.pop("message", body.pop("Message", ""))), body


def _operation(name: str) -> str:
    """A client method's operation name: start_execution -> StartExecution."""
    return "".join(part.title() for part in name.split("_"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "timestamp"):
        return value.timestamp()
    raise TypeError(type(value).__name__)


class _NotPlain(Exception):  # noqa: N818 - not an error: the value takes the JSON round trip
    pass


def json_copy(value: Any) -> Any:
    """json.loads(json.dumps(value, default=_json_default)): a copy that shares nothing with `value`, as the client
    would have sent it or read it off the wire. What JSON holds as it is (dicts with string keys, lists, strings,
    numbers, booleans, None: every request and answer of the data plane) is copied container by container, three
    times cheaper than through the text; anything else (a tuple, a datetime, another key type) takes the round
    trip, whole."""
    try:
        return _plain_copy(value)
    except _NotPlain:
        return json.loads(json.dumps(value, default=_json_default))


def _plain_copy(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        copied = {}
        for key, nested in value.items():
            if type(key) is not str:
                raise _NotPlain
            copied[key] = _plain_copy(nested)
        return copied
    if kind is list:
        return [_plain_copy(nested) for nested in value]
    if kind is str or kind is int or kind is bool or kind is float or value is None:
        return value
    raise _NotPlain


class PointedClient:
    """A DynamoDB client whose writes are side effects of the simulation (reads pass through)."""

    def __init__(self, client: Any, world_ref: Callable[[], World]) -> None:
        self._client = client
        self._world = world_ref

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name not in WRITES:
            return method

        def write(**kwargs: Any) -> Any:
            return self._world().side_effect("dynamodb", _describe(name, kwargs), lambda: method(**kwargs),
                                             _store_throttled)

        return write


def _describe(operation: str, kwargs: dict[str, Any]) -> str:
    if operation == "transact_write_items":
        parts = []
        for entry in kwargs["TransactItems"]:
            kind, op = next(iter(entry.items()))
            parts.append(f"{kind}:{_table_key(op)}")
        return f"dynamodb.transact[{', '.join(parts)}]"
    return f"dynamodb.{operation}:{_table_key(kwargs)}"


def _table_key(op: dict[str, Any]) -> str:
    """A write's item, readably: Orders(order), Inventory(SKU-1), Inventory(reservation), Payments(#2), ..."""
    key = {k: next(iter(v.values())) for k, v in (op.get("Key") or op.get("Item") or {}).items()
           if k in ("pk", "sk", "payment_id", "order_id")}
    table = str(op.get("TableName", "?")).removesuffix("Table")
    if "payment_id" in key:
        return f"{table}(#{str(key['payment_id']).rpartition('#')[2]})"
    if "order_id" in key and "pk" not in key:
        return f"{table}(order)"
    pk, sk = str(key.get("pk", "")), str(key.get("sk", ""))
    if pk.startswith("SKU#"):
        return f"{table}({pk[4:]})"
    if sk == "RESERVATION":
        return f"{table}(reservation)"
    return f"{table}({ {'COUPON': 'coupon', 'ORDER': 'redemption'}.get(sk.split('#')[0], sk.split('#')[0].lower())})"


# ---- the process-wide set-up: mock AWS, the stack's resources, the handlers ----------------------------------
@dataclass
class Stack:
    state_machine_arn: str
    modules: dict[str, Any]  # logical id -> handler module
    timeouts: dict[str, float]  # logical id -> the function's Timeout (seconds)
    sfn: Any
    sqs: Any
    sqs_url: str
    parameters: dict[str, Any]
    reaper_queue_url: str = ""
    reaper_mapping: dict[str, Any] = field(default_factory=dict)  # BatchSize, visibility timeout, maxReceiveCount
    initial_stock: dict[str, int] = field(default_factory=dict)
    # What the seed data left in the tables and their streams (the first world's, in this process): every later
    # world starts from a copy of it instead of writing it again (3.5 ms of a 46 ms case).
    seeded: tuple[dict[str, Any], dict[str, Any]] | None = None


_STACK: list[Stack] = []
_MOCK: list[Any] = []


def shutdown() -> None:
    """Stop the process's simulated AWS (moto's mock, which patches every boto3 client of the process) and forget
    the stack; the next world boots a new one. Tests that share a process with the simulation call it after."""
    while _MOCK:
        _MOCK.pop().stop()
    _STACK.clear()


# The template's defaults, but for the reaper's index shards: a sweep queries every shard of three indexes, 30
# queries at the default 10, which were 70% of a case's DynamoDB requests and 11% of its time. Two shards still
# spread the writes and make every sweep read more than one shard, which is all the sharding code does.
PARAMETERS = {"IndexShards": "2"}


def stack() -> Stack:
    """Boot once per process: moto in-process (never stopped), the template's tables, queue and state machine,
    every handler module imported with its environment."""
    if _STACK:
        return _STACK[0]
    from moto import mock_aws

    os.environ.update({
        "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "CRITICAL", "POWERTOOLS_DEV": "false",
    })
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE", "FAULT_RULES_TABLE"):
        os.environ.pop(key, None)
    mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}})
    mock.start()
    _MOCK.append(mock)
    logging.getLogger("moto").setLevel(logging.CRITICAL)  # the interpreter logs every caught error
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    _install_patches()

    import boto3

    from sagalocal.template import Template

    template = Template(ROOT / "template.yaml", parameter_overrides=PARAMETERS)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    for logical_id in TABLES:
        props = template.properties(logical_id)
        definition = {key: props[key] for key in ("AttributeDefinitions", "KeySchema", "BillingMode",
                                                   "GlobalSecondaryIndexes") if key in props}
        # Every table streams here: the orders table's stream is the outbox the outcome events come from; the
        # others' let the invariants see what an item ever was (a reservation that was COMMITTED once).
        definition["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
        dynamodb.create_table(TableName=logical_id, **definition)
        template.created[logical_id] = {"Ref": logical_id, "Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/"
                                                                  f"{logical_id}", "StreamArn": "stream"}
    sqs = boto3.client("sqs", region_name=REGION, config=unsigned())
    queue = sqs.create_queue(QueueName="ParkedSagas.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    template.created["ParkedSagasQueue"] = {"Ref": queue, "Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:ParkedSagas.fifo"}
    template.created["OrderEventsBus"] = {"Ref": "OrderEvents", "Arn": "bus"}
    reaper_queue = sqs.create_queue(QueueName="ReaperQueue")["QueueUrl"]
    template.created["ReaperQueue"] = {"Ref": reaper_queue, "Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:ReaperQueue"}
    for logical_id in FUNCTIONS:
        template.created[logical_id] = {"Ref": logical_id, "Arn": function_arn(logical_id)}
        alias = template.auto_publish_alias(logical_id)
        if alias:  # one version of each function (the simulation runs one code): version 1, its alias on it
            template.created[f"{logical_id}.Version"] = {"Ref": f"{function_arn(logical_id)}:1"}
            template.created[f"{logical_id}.Alias"] = {"Ref": f"{function_arn(logical_id)}:{alias}"}
    sfn = boto3.client("stepfunctions", region_name=REGION, config=unsigned())
    machine = template.properties("OrderSagaStateMachine")
    text = (ROOT / machine["DefinitionUri"]).read_text()
    for name, value in (machine.get("DefinitionSubstitutions") or {}).items():
        text = text.replace("${" + name + "}", str(template.resolve(value, f"DefinitionSubstitutions.{name}")))
    created = sfn.create_state_machine(name="OrderSaga", definition=text, type="STANDARD", publish=True,
                                       roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn")
    arn = created["stateMachineArn"]
    template.created["OrderSagaStateMachine"] = {"Ref": arn, "Arn": arn, "Name": "OrderSaga"}
    alias = template.auto_publish_alias("OrderSagaStateMachine")
    if alias:  # the API starts executions on the alias, as on AWS (sagalocal/versions.py runs them)
        alias_arn = sfn.create_state_machine_alias(name=alias, routingConfiguration=[
            {"stateMachineVersionArn": created["stateMachineVersionArn"], "weight": 100}])["stateMachineAliasArn"]
        template.created[f"OrderSagaStateMachineAlias{alias}"] = {"Ref": alias_arn, "Arn": alias_arn}
    modules, timeouts = {}, {}
    for logical_id, folder in FUNCTIONS.items():
        props = template.properties(logical_id)
        variables = (props.get("Environment") or {}).get("Variables") or {}
        env = {k: str(v) for k, v in template.resolve(variables, f"{logical_id}.Environment").items()
               if v is not None and not isinstance(v, dict)}
        env.pop("FAULT_RULES_TABLE", None)
        os.environ.update(env)
        modules[logical_id] = _load(folder)
        timeouts[logical_id] = float(template.resolve(props.get("Timeout", 3), f"{logical_id}.Timeout"))
    queue_props, work = template.properties("ReaperQueue"), template.properties("ReaperWorkerFunction")["Events"]
    reaper_mapping = {"batch_size": int(next(iter(work.values()))["Properties"]["BatchSize"]),
                      "visibility_seconds": float(queue_props["VisibilityTimeout"]),
                      "max_receives": int(queue_props["RedrivePolicy"]["maxReceiveCount"])}
    built = Stack(arn, modules, timeouts, DirectClient(sfn), sqs, queue, dict(template.parameters),
                  reaper_queue, reaper_mapping)
    _STACK.append(built)
    return built


def unsigned(config: Any = None) -> Any:
    """`config` (or the default one) for a client that signs nothing. The simulation's clients of Step Functions and
    SQS (the handlers' and the world's) are unsigned: moto reads no signature (the account is its default one with
    or without it), and signing was a quarter of what botocore spent on each of those calls (2% of a case)."""
    from botocore import UNSIGNED
    from botocore.config import Config

    return (config or Config()).merge(Config(signature_version=UNSIGNED))


def function_arn(logical_id: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{logical_id}"


def _load(folder: str) -> Any:
    """A handler module of its own (not functions.<folder>.app in sys.modules, which other tests re-import)."""
    import boto3
    from botocore.client import BaseClient

    name = f"sagasim_functions.{folder}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "functions" / folder / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    world_ref = _current
    if hasattr(module, "count"):  # the metrics a handler emits go to the running world, not to stdout
        module.count = lambda name, step, value=1, unit=None: _current().metrics.append((name, step))
    store = getattr(module, "store", None)
    if store is not None:
        store.client = PointedClient(DirectDynamoDB(), world_ref)
    for name, value in list(vars(module).items()):  # its Step Functions and SQS clients (_sfn, _sqs): unsigned
        if isinstance(value, BaseClient):
            service = value.meta.service_model.service_name
            client = boto3.client(service, region_name=REGION, config=unsigned(value.meta.config))
            setattr(module, name, DirectClient(client) if service in DirectClient.DIRECT else client)
    payments = getattr(module, "payments", None)
    if payments is not None and getattr(payments, "_gateway", None) is not None:
        from order_saga.breaker import CircuitBreaker

        if isinstance(payments._gateway, CircuitBreaker):  # the breaker stays, its state in the world's DynamoDB
            payments._gateway.gateway = _GatewayProxy()
        else:
            payments._gateway = _GatewayProxy()
    return module


class _GatewayProxy:
    """The handlers' gateway: the running world's."""

    timeout = SimGateway.timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(_current().gateway, name)


def _current() -> World:
    if not _ACTIVE:
        raise RuntimeError("no simulated world is running")
    return _ACTIVE[-1]


# ---- the interpreter, in one thread on the virtual clock ----------------------------------------------------
class TaskTimedOut(Exception):
    """An invocation outlived its task's TimeoutSeconds: the state fails with States.Timeout."""


def _install_patches() -> None:
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import EvalTimeoutError
    from moto.stepfunctions.parser.asl.component.program.program import Program
    from moto.stepfunctions.parser.asl.component.state import state as state_module
    from moto.stepfunctions.parser.asl.component.state.exec.execute_state import ExecutionState
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import inline_iteration_component
    from moto.stepfunctions.parser.asl.eval.event import event_manager
    from moto.stepfunctions.parser.backend import execution as execution_module
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    import order_saga.dynamo
    import order_saga.step
    import order_saga.store
    import sagalocal.stepfunctions as local_sfn
    from sagalocal.dynamodb.engine import install_backend_patches
    from sagalocal.sqs import memoize_attribute_names

    install_backend_patches()
    memoize_attribute_names()
    local_sfn.install(SimLambda())
    # An execution's end is an EventBridge event (its status change): the running world delivers it (deliver_events).
    local_sfn.ENDED.append(lambda event: _current().events.append(event) if _ACTIVE else None)
    original_count = order_saga.step.count
    order_saga.step.count = lambda name, step, value=1, unit=None: (  # type: ignore[assignment]
        _current().metrics.append((name, step)) if _ACTIVE else original_count(name, step, value, unit))
    local_sfn.NOW = lambda: _VirtualDatetime.now(datetime.UTC)

    clock_module = types.SimpleNamespace(time=lambda: CLOCK.now if _ACTIVE else _real_time.time(),
                                         monotonic=lambda: CLOCK.now if _ACTIVE else _real_time.monotonic(),
                                         sleep=lambda s: CLOCK.sleep(s) if _ACTIVE else _real_time.sleep(s))
    for module in (order_saga.dynamo, order_saga.store, retrier_decl):
        module.time = clock_module  # type: ignore[attr-defined]
    for module in (execution_module, event_manager, state_module):
        module.datetime = _DATETIME  # type: ignore[attr-defined]
    import moto.stepfunctions.parser.models as parser_models

    parser_models.datetime = _DATETIME  # type: ignore[attr-defined]

    original_start = ExecutionWorker.start

    def start(self: Any) -> None:
        if not _ACTIVE:
            return original_start(self)
        self._execution_logic()  # in the starting thread: StartExecution returns when the execution ended
        return None

    ExecutionWorker.start = start  # type: ignore[method-assign]

    original_program_eval = Program.eval

    def program_eval(self: Any, env: Any) -> None:
        if not _ACTIVE:
            return original_program_eval(self, env)
        env.next_state_name = self.start_at.start_at_name
        super(Program, self).eval(env)
        return None

    Program.eval = program_eval  # type: ignore[method-assign]

    component = inline_iteration_component.InlineIterationComponent
    original_launch = component._launch_worker

    def launch_worker(self: Any, env: Any, eval_input: Any, job_pool: Any) -> Any:
        if not _ACTIVE:
            return original_launch(self, env, eval_input, job_pool)
        worker = self._create_worker(env=env, eval_input=eval_input, job_pool=job_pool)
        worker.eval()  # the iterations one after another, in the Map's thread
        return worker

    component._launch_worker = launch_worker  # type: ignore[method-assign]

    original_timeout = ExecutionState._evaluate_with_timeout

    def evaluate_with_timeout(self: Any, env: Any) -> None:
        if not _ACTIVE:
            return original_timeout(self, env)
        self.timeout.eval(env=env)
        timeout_seconds: float = env.stack.pop()
        frame = env.open_frame()
        frame.states.reset(input_value=env.states.get_input())
        frame.stack = list(env.stack)
        _current().task_timeouts.append(timeout_seconds)
        try:
            self._eval_execution(frame)
        except TaskTimedOut:
            frame.set_ended()
            env.close_frame(frame)
            raise EvalTimeoutError() from None
        finally:
            _current().task_timeouts.pop()
        output = frame.stack.pop()
        frame.set_ended()
        env.close_frame(frame)
        local_sfn.finish_task_state(self, env, output)
        return None

    ExecutionState._evaluate_with_timeout = evaluate_with_timeout  # type: ignore[method-assign]


import time as _real_time  # noqa: E402 - the real clock, for the patches while no world runs


class SimLambda:
    """The Lambda service the interpreter's lambda:invoke reaches: the running world's handlers."""

    def invoke_for_states(self, parameters: dict[str, Any], watch: Any = None) -> dict[str, Any]:
        payload = parameters.get("Payload")
        event = json.loads(payload) if isinstance(payload, (bytes, str)) and payload else (payload or {})
        logical_id = str(parameters["FunctionName"]).split(":function:")[-1].split(":")[0]
        return _current().invoke_task(logical_id, event)


@dataclass
class FakeContext:
    function_name: str
    aws_request_id: str
    deadline: float
    memory_limit_in_mb: int = 512

    @property
    def invoked_function_arn(self) -> str:
        return function_arn(self.function_name)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - CLOCK.now) * 1000))


# ---- the world --------------------------------------------------------------------------------------------
@dataclass
class Order:
    """What the client sends: items, payment (one token or several cards), coupon."""

    items: list[dict[str, Any]]
    tokens: list[str]
    coupon: str | None = None
    key: str = "key-1"
    customer: str = CUSTOMER
    coupon_policy: str = "fail"  # the stack's CouponFailurePolicy while this order runs (World.run)

    def describe(self) -> str:
        lines = ", ".join(f"{i['quantity']} {i['sku']}" for i in self.items)
        cards = f"{len(self.tokens)} cards ({', '.join(self.tokens)})" if len(self.tokens) > 1 else self.tokens[0]
        return f"{lines}; {cards}" + (f"; coupon {self.coupon}" if self.coupon else "") + (
            f" (CouponFailurePolicy={self.coupon_policy})" if self.coupon_policy != "fail" else "")

    def body(self, total: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"items": self.items}
        if len(self.tokens) == 1:
            body["payment_token"] = self.tokens[0]
        else:
            assert total is not None
            share = total // len(self.tokens)
            amounts = [share] * (len(self.tokens) - 1) + [total - share * (len(self.tokens) - 1)]
            body["payment"] = [{"token": t, "amount": a} for t, a in zip(self.tokens, amounts, strict=True)]
        if self.coupon:
            body["coupon"] = self.coupon
        return body


CATALOG = [("SKU-1", "Blue mug", 1250, 5), ("SKU-2", "Red kettle", 4000, 2)]
COUPONS = {"TENOFF": ("percent", 10, None, 1000, 1), "GONE": ("percent", 50, None, 1, 1),
           "FEW": ("percent", 20, None, 2, 1), "ONCE": ("percent", 10, None, 1000, 1)}
# Coupons an earlier, completed order holds a redemption of: GONE's only one (every redemption taken), ONCE's by
# CUSTOMER (this customer's one use taken: only the hold sees it).
SPENT = {"GONE": ("ord_earlier", "sim-customer-0"), "ONCE": ("ord_earlier_once", CUSTOMER)}


@dataclass
class Mix:
    """Many orders at once, with faults and follow-ups drawn at random (from the world's seeded generator) at
    every side effect: another order placed right there (interleaving it with the step in flight), a fault of
    any kind, or a follow-up. Nested at most `depth` invocations deep."""

    pending: list[Order]  # the orders not placed yet
    interleave: float = 0.25
    fault: float = 0.04
    follow_up: float = 0.02
    depth: int = 4

    def decide(self, world: World, point: Point) -> tuple[str, str | None] | None:
        if len(world.invocations) > self.depth:
            return None
        draw = world.rng.random()
        if draw < self.interleave:
            return ("pause", "order") if self.pending else None
        if draw < self.interleave + self.fault:
            return world.rng.choice(KINDS), None
        if draw < self.interleave + self.fault + self.follow_up:
            return "pause", world.rng.choice(FOLLOW_UPS_AT_POINT)
        return None


class World:
    """One run: fresh tables, a fresh gateway, the clock at EPOCH, everything random seeded by `seed`."""

    def __init__(self, seed: int = 0, fault: Fault | None = None, mix: Mix | None = None) -> None:
        self.stack = stack()
        self.seed = seed
        self.rng = random.Random(seed)
        self.fault = fault
        self.mix = mix
        self.placed: list[Order] = []
        self.points: list[Point] = []
        self.invocations: list[Invocation] = []
        self.task_timeouts: list[float] = []
        self.attempts: dict[str, int] = {}
        self.gateway = SimGateway(self)
        self.captures: set[str] = set()
        self.metrics: list[tuple[str, str]] = []
        self.fired = False
        self.log: list[str] = []  # what happened, for a counterexample's report
        self.responses: list[tuple[int, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []  # execution status changes, not yet delivered by EventBridge
        self.outage: str | None = None  # the function whose every call fails (an outage), until fixed

    # -- set-up and tear-down ---------------------------------------------------------------------------------
    def __enter__(self) -> World:
        from sagalocal.dynamodb.streams import STREAMS

        if _ACTIVE:
            raise RuntimeError("one simulated world at a time")
        _reset_backends(self.stack)
        STREAMS._records.clear()
        CLOCK.now = EPOCH
        random.seed(self.seed)  # the handlers' backoff jitter and moto's retry jitter
        _ACTIVE.append(self)
        self.coupon_policy(str(self.stack.parameters["CouponFailurePolicy"]))
        self._seed_data()
        return self

    def coupon_policy(self, policy: str) -> None:
        """The stack's CouponFailurePolicy: what ApplyCoupon read from its environment at its cold start."""
        self.stack.modules["ApplyCouponFunction"].COUPON_FAILURE_POLICY = policy

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self)

    def _seed_data(self) -> None:
        """The catalog, the coupons and the redemptions already spent: written by the domain code in the first
        world of the process, copied from what that left in every later one (the clock is at EPOCH in both)."""
        import copy

        from moto.dynamodb.models import dynamodb_backends

        from sagalocal.dynamodb.streams import STREAMS

        tables = dynamodb_backends[ACCOUNT][REGION].tables
        if self.stack.seeded is None:
            self._write_seed_data()
            self.stack.seeded = copy.deepcopy(({name: table.items for name, table in tables.items()},
                                               STREAMS._records))
        items, records = self.stack.seeded
        items = copy.deepcopy(items)
        for name, table in tables.items():
            table.items = items[name]
        STREAMS._records.clear()
        # The stream records: JSON but for a binary attribute's bytes, copied as deepcopy copies them, faster.
        from sagalocal.stepfunctions import json_deepcopy

        STREAMS._records.update({table: [(seq, json_deepcopy(record)) for seq, record in kept]
                                 for table, kept in records.items()})

    def _write_seed_data(self) -> None:
        from order_saga.inventory import Inventory
        from order_saga.promotions import Promotions
        from order_saga.store import Store

        store = Store(DirectDynamoDB())
        inventory = Inventory(store, "InventoryTable")
        for sku, name, price, units in CATALOG:
            inventory.add_item(sku, name, price, "USD", units)
            self.stack.initial_stock[sku] = units
        promotions = Promotions(store, "PromotionsTable")
        now = CLOCK.ms()
        for code, (kind, value, currency, limit, per_customer) in COUPONS.items():
            promotions.add_coupon(code, kind, value, now - int(DAY * 1000), now + int(400 * DAY * 1000), limit,
                                  per_customer, currency)
        for code, (order_id, customer) in SPENT.items():
            items = promotions.hold_items(code, order_id, customer, 1, now)
            items["redemption"]["Put"]["Item"]["status"] = {"S": "COMMITTED"}
            store.transact(items)

    # -- side effects and faults ------------------------------------------------------------------------------
    def side_effect(self, service: str, call: str, act: Callable[[], Any],
                    before_error: Callable[[str], Exception]) -> Any:
        """One side effect: recorded as a Point; where the fault plan says so, it fails before it lands, or lands
        and then the invocation dies; a follow-up runs at it."""
        invocation = self.invocations[-1] if self.invocations else None
        point = Point(len(self.points), invocation.function if invocation else "world",
                      invocation.label if invocation else "world", call)
        self.points.append(point)
        if self.outage is not None and invocation is not None and invocation.function == self.outage:
            raise before_error(call)  # the outage goes on: nothing lands
        decision = self._decide(point)
        if decision is None:
            return act()
        kind, follow_up = decision
        if kind != "pause" or follow_up:
            self.log.append(f"{kind}{'+' + follow_up if follow_up else ''} at {point}")
        if kind == "before":
            self._follow_up_at_point(invocation, follow_up)
            raise before_error(call)
        if kind == OUTAGE:
            self.outage = point.function
            self._follow_up_at_point(invocation, follow_up)
            raise before_error(call)
        if kind == "hang":
            self._follow_up_at_point(invocation, follow_up)
            if invocation is not None:
                CLOCK.now = max(CLOCK.now, invocation.deadline)
            raise SandboxTimeout("injected: the call never answered; the invocation timed out before it landed")
        try:
            result = act()
        except Exception:
            self._after_landing(invocation, kind, follow_up)
            raise
        self._after_landing(invocation, kind, follow_up)
        return result

    def _decide(self, point: Point) -> tuple[str, str | None] | None:
        """What happens at this side effect: (fault kind or "pause", follow-up), or None for nothing."""
        if self.mix is not None:
            return self.mix.decide(self, point)
        fault = self.fault
        if fault is None or fault.point != point.index or self.fired:
            return None
        self.fired = True
        return fault.kind, fault.follow_up

    def _after_landing(self, invocation: Invocation | None, kind: str, follow_up: str | None) -> None:
        self._follow_up_at_point(invocation, follow_up)
        if kind == "crash":
            raise SandboxCrash("injected: the sandbox died after the call landed")
        if kind == "timeout":
            raise SandboxTimeout("injected: the invocation outlived its task's timeout after the call landed")
        if kind == "error":
            raise InjectedBug("injected: an unexpected error after the call landed")
        if invocation is not None and CLOCK.now > invocation.deadline:
            raise SandboxTimeout("the follow-up outlasted this invocation's time: it timed out meanwhile")

    def _follow_up_at_point(self, invocation: Invocation | None, follow_up: str | None) -> None:
        follow_up = (follow_up or "").removesuffix("+redrive") or None
        if follow_up == "reaper":
            leases = [int(o["lease_expires_at"]) for o in self.orders() if "active" in o]
            CLOCK.now = max([CLOCK.now, *(ms / 1000 + 1 for ms in leases)])
            self.log.append("the lease expired; the reaper runs")
            self.run_reaper()
        elif follow_up == "stop" and invocation is not None and invocation.execution_arn:
            self.log.append(f"StopExecution {invocation.execution_arn.rsplit(':', 1)[-1]}")
            try:
                self.stack.sfn.stop_execution(executionArn=invocation.execution_arn, error="Operator",
                                              cause="stopped by the simulation")
            except self.stack.sfn.exceptions.ExecutionDoesNotExist:
                pass
        elif follow_up == "resubmit" and self.placed:
            order = self.placed[-1] if self.mix is None else self.rng.choice(self.placed)
            self.log.append(f"the client resubmits {order.key} while sagas run")
            self.post(order)
        elif follow_up == "order" and self.mix is not None and self.mix.pending:
            self.post(self.mix.pending.pop(0))

    def clock_advance(self, seconds: float) -> None:
        CLOCK.sleep(seconds)

    def lease_seconds(self) -> float:
        return float(self.stack.parameters["LeaseSeconds"])

    # -- invocations --------------------------------------------------------------------------------------------
    @contextmanager
    def invocation(self, logical_id: str, execution_arn: str | None) -> Iterator[FakeContext]:
        name = logical_id.removesuffix("Function")
        self.attempts[name] = self.attempts.get(name, 0) + 1
        timeout = self.stack.timeouts[logical_id]
        if self.task_timeouts:
            timeout = min(timeout, self.task_timeouts[-1])
        invocation = Invocation(name, f"{name}#{self.attempts[name]}", CLOCK.now + timeout, execution_arn)
        self.invocations.append(invocation)
        context = FakeContext(logical_id, str(uuid.UUID(int=self.rng.getrandbits(128))), invocation.deadline)
        try:
            yield context
        finally:
            self.invocations.pop()

    def invoke_task(self, logical_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """lambda:invoke from the state machine: Lambda's answer, or TaskTimedOut."""
        execution = str(event.get("execution_id") or "") or None
        arn = execution.split("#")[0] if execution else None
        module = self.stack.modules[logical_id]
        with self.invocation(logical_id, arn) as context:
            try:
                payload = module.lambda_handler(event, context)
            except SandboxCrash as exc:
                return _function_error("Runtime.ExitError", str(exc))
            except SandboxTimeout:
                CLOCK.now = max(CLOCK.now, context.deadline)
                raise TaskTimedOut() from None
            except InjectedBug as exc:
                return _function_error("RuntimeError", str(exc))
            except Exception as exc:  # noqa: BLE001 - a handler's error is the task's error, by class name
                return _function_error(type(exc).__name__, str(exc))
        return {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": payload}

    def invoke_plain(self, logical_id: str, event: dict[str, Any]) -> tuple[bool, Any]:
        """A direct invocation (the API, the reaper): (True, result) or (False, the error's name)."""
        module = self.stack.modules[logical_id]
        with self.invocation(logical_id, None) as context:
            try:
                return True, module.lambda_handler(event, context)
            except SandboxCrash:
                return False, "Runtime.ExitError"
            except SandboxTimeout:
                CLOCK.now = max(CLOCK.now, context.deadline)
                return False, "Sandbox.Timedout"
            except InjectedBug:
                return False, "RuntimeError"
            except Exception as exc:  # noqa: BLE001
                return False, type(exc).__name__

    # -- the actors ---------------------------------------------------------------------------------------------
    def post(self, order: Order, attempts: int = 3) -> tuple[int, dict[str, Any]]:
        """POST /orders as a careful client: a 5xx or no answer is retried with the same Idempotency-Key."""
        from sagalocal.apigateway import proxy_event
        from sagalocal.provision import Route

        if order not in self.placed:
            self.placed.append(order)
        total = sum(_price(i["sku"]) * i["quantity"] for i in order.items)
        if order.coupon in COUPONS:
            total -= total * COUPONS[order.coupon][1] // 100  # every coupon here is a percentage
        body = json.dumps(order.body(total)).encode()
        status, answer = 0, {}
        for _ in range(attempts):
            event = proxy_event(Route("POST", "/orders", "OrdersApiFunction", "Cognito"), "POST", "/orders", {},
                                {"Content-Type": "application/json", "Idempotency-Key": order.key}, {}, body,
                                "dev", ACCOUNT, authorizer={"claims": {"sub": order.customer}},
                                request_id=str(uuid.UUID(int=self.rng.getrandbits(128))))
            ok, result = self.invoke_plain("OrdersApiFunction", event)
            status = int(result["statusCode"]) if ok else 502
            answer = json.loads(result.get("body") or "{}") if ok else {"error": result}
            self.log.append(f"POST /orders -> {status}" + ("" if ok else f" ({result})"))
            if status < 500:
                break
        self.responses.append((status, answer))
        return status, answer

    def redrive(self, parked_only: bool) -> None:
        """RedriveExecution of every execution that can be redriven (FAILED, ABORTED, TIMED_OUT), or only of those
        whose order is parked (FAILED): the operator's command (`python -m sagalocal redrive`)."""
        parked = {str(o["order_id"]) for o in self.orders() if o.get("saga_status") == "FAILED"}
        for execution in self.executions():
            if execution["status"] not in ("FAILED", "ABORTED", "TIMED_OUT"):
                continue
            if parked_only and execution["name"] not in parked:
                continue
            self.stack.sfn.redrive_execution(executionArn=execution["executionArn"])
            described = self.stack.sfn.describe_execution(executionArn=execution["executionArn"])
            self.log.append(f"redrove {execution['name'][:12]}: {described['status']}"
                            + (f" {described.get('error')}" if described.get("error") else ""))

    def deliver_events(self) -> None:
        """EventBridge delivers the execution status changes that ParkSaga's rule matches (template.yaml: FAILED,
        this state machine) to ParkSaga, asynchronously: here when the world goes on after a saga, before the next
        sweep of the reaper (on AWS within seconds; the reaper waits for a lease to expire). Lambda retries a failed
        asynchronous invocation twice."""
        while self.events:
            entry = self.events.pop(0)
            detail = json.loads(entry["Detail"])
            if detail["status"] != "FAILED" or detail["stateMachineArn"] != self.stack.state_machine_arn:
                continue
            event = {"version": "0", "id": str(uuid.UUID(int=self.rng.getrandbits(128))),
                     "detail-type": entry["DetailType"], "source": entry["Source"], "account": ACCOUNT,
                     "time": _VirtualDatetime.now(datetime.UTC).isoformat(), "region": REGION,
                     "resources": entry["Resources"], "detail": detail}
            for _ in range(3):
                ok, result = self.invoke_plain("ParkSagaFunction", event)
                self.log.append(f"ParkSaga {detail['name'][:12]}: {json.dumps(result) if ok else 'died: ' + result}")
                if ok:
                    break
                CLOCK.sleep(60)

    def run_reaper(self) -> dict[str, Any] | None:
        """The reaper: its sweep queues the work (the schedule invokes it again a minute later when an invocation
        dies), then ReaperQueue's event source mapping hands it to ReaperWorker (work_reaper_queue). Returns the
        sweep's answer, None if every sweep died."""
        for _ in range(3):
            ok, result = self.invoke_plain("ReaperFunction", {"source": "aws.events"})
            if ok:
                self.log.append(f"reaper sweep: {json.dumps({k: v for k, v in result.items() if v})}")
                self.work_reaper_queue()
                return result  # type: ignore[no-any-return]
            self.log.append(f"reaper sweep died: {result}")
            CLOCK.sleep(60)
        return None

    def work_reaper_queue(self) -> None:
        """ReaperQueue's event source mapping, in this thread: every message the queue holds, taken off it, handed
        to ReaperWorker in batches of BatchSize in the order sent. A message the worker reports failed (or whose
        invocation died) comes back after the queue's visibility timeout, until it has been received
        maxReceiveCount times; then it goes to the dead-letter queue (logged: the invariants see what it left).
        Standard queues deliver at least once: the first batch is delivered a second time right after, and must
        change nothing. (A follow-up at a worker's side effect may run the reaper again inside it: a second
        sweep and worker at once, as on AWS.)"""
        from moto.sqs.models import sqs_backends

        # The queue is drained through moto's backend itself: through boto3 each call cost ~5 ms, a tenth of a case.
        queues, queue = sqs_backends[ACCOUNT][REGION], self.stack.reaper_queue_url.rpartition("/")[2]
        mapping, messages = self.stack.reaper_mapping, []
        while True:
            got = queues.receive_message(queue, 10, 0, 0)
            if not got:
                break
            for m in got:
                queues.delete_message(queue, m.receipt_handle)
            messages += [{"messageId": str(uuid.UUID(int=self.rng.getrandbits(128))), "body": m.body,
                          "receives": 0} for m in got]
        duplicated = False
        while messages:
            batch, messages = messages[:mapping["batch_size"]], messages[mapping["batch_size"]:]
            failed = self._deliver_reaper_batch(batch)
            if not duplicated:
                duplicated = True
                self.log.append("ReaperQueue delivers the same batch again (at least once)")
                self._deliver_reaper_batch([{**m, "receives": m["receives"] - 1} for m in batch])
            again = [m for m in batch if m["messageId"] in failed and m["receives"] < mapping["max_receives"]]
            for m in batch:
                if m["messageId"] in failed and m not in again:
                    self.log.append(f"ReaperQueue: to the dead-letter queue after {m['receives']} receives: "
                                    f"{m['body']}")
            if again:
                CLOCK.sleep(mapping["visibility_seconds"])
                messages += again

    def _deliver_reaper_batch(self, batch: list[dict[str, Any]]) -> set[str]:
        """One invocation of ReaperWorker with `batch`; the message ids that failed (all of them if it died)."""
        for m in batch:
            m["receives"] += 1
        event = {"Records": [{"messageId": m["messageId"], "receiptHandle": m["messageId"], "body": m["body"],
                              "attributes": {"ApproximateReceiveCount": str(m["receives"])}, "messageAttributes": {},
                              "eventSource": "aws:sqs", "awsRegion": REGION,
                              "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:ReaperQueue"} for m in batch]}
        ok, result = self.invoke_plain("ReaperWorkerFunction", event)
        failed = {str(f["itemIdentifier"]) for f in result.get("batchItemFailures") or []} if ok \
            else {m["messageId"] for m in batch}
        self.log.append(f"ReaperWorker, {len(batch)} messages: " + (f"{len(failed)} failed" if ok else
                                                                    f"died: {result}"))
        return failed

    def settle(self, sweeps: int = 6) -> None:
        """The world goes on: leases, reservations and reconciliations come due, the reaper sweeps, until a
        sweep finds nothing to do."""
        horizon = max(self.lease_seconds(), float(self.stack.parameters["ReservationTtlSeconds"]),
                      float(self.stack.parameters["ReconcileAfterSeconds"]),
                      float(self.stack.parameters["SagaDeadlineSeconds"])) + 1
        for _ in range(sweeps):
            self.deliver_events()
            CLOCK.sleep(horizon)
            result = self.run_reaper()
            if result is not None and not any(result["queued"].values()) and not result["refused"]:
                return

    def run_mix(self) -> None:
        """The mix's orders, placed one after another where no side effect placed them first; then the world
        settles."""
        assert self.mix is not None
        while self.mix.pending:
            self.post(self.mix.pending.pop(0))
        self.settle()

    def run(self, order: Order) -> None:
        """One case: the order placed, the fault plan applied, the follow-up after the end, the world settled."""
        self.coupon_policy(order.coupon_policy)
        self.post(order)
        follow_up = self.fault.follow_up if self.fault else None
        if follow_up == "resubmit-after-end":
            self.log.append("the client resubmits after the saga ended")
            self.post(order)
        elif follow_up == "resubmit-after-90-days":
            CLOCK.sleep((NAME_REUSE_DAYS + 1) * DAY)
            self.log.append("91 days later (the execution name is free again), the client resubmits")
            self.post(order)
        self.settle()
        if self.fault is not None and self.fault.kind == OUTAGE:
            self.outage = None
            self.log.append("the operator fixes the cause and redrives the parked sagas (docs/operations.md)")
            self.redrive(parked_only=True)
            self.settle()
        elif follow_up is not None and follow_up.endswith("+redrive"):
            self.log.append("an operator redrives every execution that can be redriven")
            self.redrive(parked_only=False)
            self.settle()
        for execution in self.executions():
            self.log.append(f"execution started {execution['startDate'].isoformat()}: {execution['status']}"
                            + (f" {execution['error']}" if execution.get("error") else ""))

    # -- what the world holds ----------------------------------------------------------------------------------
    def items(self, table: str) -> list[dict[str, Any]]:
        """Every item of `table`, in a Scan's order, read from moto's table itself (not through a Scan, which
        deep-copies every item and the JSON of it twice)."""
        from moto.dynamodb.models import dynamodb_backends

        from order_saga.dynamo import from_ddb

        return [from_ddb(item.to_json()["Attributes"])
                for item in dynamodb_backends[ACCOUNT][REGION].get_table(table).all_items()]

    def orders(self) -> list[dict[str, Any]]:
        """The orders table's orders (not its per-customer open-orders items)."""
        from order_saga.orders import is_order

        return [item for item in self.items("OrdersTable") if is_order(item)]

    def order_stream(self) -> list[dict[str, Any]]:
        from sagalocal.dynamodb.streams import STREAMS

        return STREAMS.read("OrdersTable", 0, 1_000_000, 0)

    def executions(self) -> list[dict[str, Any]]:
        """ListExecutions' fields the world reads, from the interpreter's backend itself (through boto3 and moto's
        responses each listing cost ~5 ms: a tenth of a case), newest first as ListExecutions lists them."""
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        machine = stepfunctions_parser_backends[ACCOUNT][REGION].describe_state_machine(self.stack.state_machine_arn)
        listed = []
        for execution in sorted(machine.executions, key=lambda e: e.start_date, reverse=True):
            item = {"executionArn": execution.execution_arn, "name": execution.name, "status": execution.status,
                    "startDate": _to_ms(execution.start_date), "stateMachineArn": self.stack.state_machine_arn}
            if execution.stop_date is not None:
                item["stopDate"] = _to_ms(execution.stop_date)
            if execution.error:
                item["error"] = execution.error
            listed.append(item)
        return listed


def _to_ms(moment: datetime.datetime) -> datetime.datetime:
    """A timestamp as the API gives it: to the millisecond (the virtual clock's jittered waits leave microseconds)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _price(sku: str) -> int:
    return next(price for s, _, price, _ in CATALOG if s == sku)


def _function_error(error_type: str, message: str) -> dict[str, Any]:
    return {"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": "$LATEST",
            "Payload": {"errorType": error_type, "errorMessage": message}}


def _reset_backends(built: Stack) -> None:
    """Empty every table and forget every execution: a fresh world without re-creating the stack."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.stepfunctions.models import stepfunctions_backends

    for table in dynamodb_backends[ACCOUNT][REGION].tables.values():
        table.items.clear()
    from moto.sqs.models import sqs_backends

    for queue in sqs_backends[ACCOUNT][REGION].queues.values():
        queue._messages.clear()  # PurgeQueue allows one purge a minute
    for backend_registry in _sfn_registries(stepfunctions_backends):
        backend = backend_registry[ACCOUNT][REGION]
        for machine in backend.state_machines:
            machine.executions.clear()


def _sfn_registries(default: Any) -> list[Any]:
    registries = [default]
    try:
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        registries.append(stepfunctions_parser_backends)
    except ImportError:
        pass
    return registries
