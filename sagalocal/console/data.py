"""What the console reads, through the AWS APIs only: Step Functions, DynamoDB and SQS.

Nothing here knows sagalocal's internals, so the same console reads the embedded stack, LocalStack or AWS:
a `Source` is an endpoint (None: AWS itself), a region and the stack's Outputs. The application's tables are
read with boto3 directly, by the keys docs/architecture.md documents. The console imports nothing from src/ but
the circuit breaker's reading of its own item (order_saga.breaker: its key, states and fields), so the page and
the breaker speak one vocabulary.

Every list call follows nextToken. An execution that succeeded never changes, so its description is kept; one
that failed, timed out or was aborted changes again only if it is redriven (RedriveExecution), so its description
is kept too but read again when ListExecutions shows another status or redrive count, or the page is its own.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config
from botocore.exceptions import ClientError

from order_saga.breaker import BREAKER_KEY, CLOSED, HALF_OPEN, OPEN, BreakerSettings, BreakerState
from sagalocal.console import execution as execution_reading
from sagalocal.console.graph import Graph, overlay, state_graph
from sagalocal.console.redact import is_secret, redact
from sagalocal.timeline import details, history

ENDED = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
STATUSES = ("RUNNING", *ENDED, "PENDING_REDRIVE")
MAX_PAGE_SIZE = 100
CACHE_SIZE = 2000  # ended executions' descriptions and definitions kept
SAGA_UNFINISHED = ("PENDING", "EXECUTING", "COMPENSATING")
MONEY_RELEASED = ("VOIDED", "REFUNDED", "DECLINED")
MAX_PAYMENT_METHODS = 5  # payment_id = <order id>#<method>, numbered from 1
# The breaker's template parameters, each also a stack Output of the same name (what the console knows of them).
BREAKER_OUTPUTS = ("BreakerFailureThreshold", "BreakerSuccessThreshold", "BreakerOpenSeconds")


# The outputs every page reads (the state machine, the orders, the payments); the others are optional.
REQUIRED_OUTPUTS = ("StateMachineArn", "OrdersTableName", "PaymentsTableName")


class NotFound(LookupError):
    pass


class OutputsUnreadable(ValueError):
    """The stack's Outputs file cannot be read or lacks what the console reads; the message says which."""


@dataclass
class Source:
    endpoint: str | None
    region: str
    outputs: dict[str, Any]

    @classmethod
    def from_file(cls, endpoint: str | None, region: str, outputs_file: Path) -> Source:
        """A JSON file of the stack's Outputs: {OutputKey: OutputValue}, or describe-stacks' list of them. A file
        that cannot be read, is not JSON of either form, or lacks an output the console reads raises
        OutputsUnreadable, which says which."""
        try:
            data = json.loads(Path(outputs_file).read_text())
        except OSError as exc:
            raise OutputsUnreadable(f"cannot read the stack outputs {outputs_file}: {exc.strerror}") from exc
        except ValueError as exc:
            raise OutputsUnreadable(f"the stack outputs {outputs_file} are not JSON: {exc}") from exc
        try:
            if isinstance(data, dict) and "Stacks" in data:
                data = data["Stacks"][0].get("Outputs", [])
            if isinstance(data, list):
                data = {o["OutputKey"]: o["OutputValue"] for o in data}
        except (LookupError, TypeError, AttributeError) as exc:
            raise OutputsUnreadable(f"the stack outputs {outputs_file} are neither {{OutputKey: OutputValue}} nor "
                                    f"describe-stacks' JSON ({type(exc).__name__}: {exc})") from exc
        if not isinstance(data, dict):
            raise OutputsUnreadable(f"the stack outputs {outputs_file} are neither {{OutputKey: OutputValue}} nor "
                                    f"describe-stacks' JSON")
        missing = [name for name in REQUIRED_OUTPUTS if name not in data]
        if missing:
            raise OutputsUnreadable(f"the stack outputs {outputs_file} have no {', '.join(missing)} (the console "
                                    f"reads {', '.join(REQUIRED_OUTPUTS)})")
        return cls(endpoint, region, data)

    def client(self, service: str) -> Any:
        kwargs: dict[str, Any] = {"region_name": self.region,
                                  "config": Config(retries={"max_attempts": 3, "mode": "standard"},
                                                   connect_timeout=5, read_timeout=30)}
        if self.endpoint:
            # A local endpoint takes any credentials; AWS itself gets the usual credential chain.
            kwargs.update(endpoint_url=self.endpoint, aws_access_key_id="local",
                          aws_secret_access_key="local")  # noqa: S106 - not a secret
        client = boto3.client(service, **kwargs)
        # botocore builds a client's exception classes at first use, without a lock: request threads meeting their
        # first error at once could each build their own, and `except client.exceptions.X` then missed. Built here.
        _ = client.exceptions
        return client


def _item(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    item = {k: TypeDeserializer().deserialize(v) for k, v in raw.items()}
    return redact({k: _plain(v) for k, v in item.items() if not is_secret(k)})


def _plain(value: Any) -> Any:
    """DynamoDB's Decimals and sets as the JSON-like values a page shows."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, set, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


@dataclass
class ExecutionRow:
    arn: str
    name: str
    status: str
    start: Any
    stop: Any
    error: str = ""

    @property
    def duration_s(self) -> float | None:
        end = self.stop
        if end is None:
            return None if self.status != "RUNNING" else time.time() - self.start.timestamp()
        return end.timestamp() - self.start.timestamp()


@dataclass
class ExecutionPage:
    rows: list[ExecutionRow]
    next_token: str | None
    status: str | None
    size: int

    @property
    def running(self) -> int:
        return sum(1 for row in self.rows if row.status == "RUNNING")


@dataclass
class ExecutionView:
    described: dict[str, Any]
    graph: Graph
    reading: execution_reading.Reading
    order_id: str
    input: Any
    output: Any

    @property
    def compensations(self) -> list[str]:
        return [v.name for v in self.reading.visits if v.role == "compensation"]

    @property
    def end_state(self) -> execution_reading.Visit | None:
        last = self.reading.visits[-1] if self.reading.visits else None
        return last if last is not None and last.type in ("Fail", "Succeed") else None


@dataclass
class OrderView:
    order_id: str
    order: dict[str, Any] | None
    reservation: dict[str, Any] | None
    payments: list[dict[str, Any]]
    steps: list[dict[str, Any]]  # the step log in time order

    @property
    def unfinished(self) -> bool:
        return self.order is not None and self.order.get("saga_status") in SAGA_UNFINISHED


@dataclass
class BreakerView:
    """The payment gateway's circuit breaker as its item says now (order_saga.breaker), with the stack's settings."""
    state: BreakerState
    settings: BreakerSettings | None  # None: the stack's Outputs do not name them (a stack deployed before they did)
    now_ms: int
    table: str

    @property
    def key(self) -> str:
        return BREAKER_KEY

    @property
    def open_over(self) -> bool:
        """OPEN past `opened_until`: the next authorization moves it to HALF_OPEN."""
        return self.state.state == OPEN and (self.state.opened_until or 0) <= self.now_ms

    @property
    def probes_lost(self) -> bool:
        """HALF_OPEN past `probe_until`: its probes never reported; the next authorization starts a new period."""
        return self.state.state == HALF_OPEN and (self.state.probe_until or 0) <= self.now_ms

    @property
    def summary(self) -> str:
        state, settings = self.state, self.settings
        if state.state == CLOSED:
            if not state.used:
                return "CLOSED: never opened (no breaker item yet); authorizations go through."
            of = f" of {settings.failure_threshold}" if settings else ""
            return (f"CLOSED: authorizations go through; {state.failed_payments}{of} payments in a row failed with an "
                    "outage (that many open it).")
        if state.state == OPEN:
            if self.open_over:
                return "OPEN, its time over: the next authorization moves it to HALF_OPEN and probes the processor."
            return "OPEN: authorizations fail fast with PaymentGatewayUnavailable (retried, then compensated)."
        if state.state == HALF_OPEN:
            if self.probes_lost:
                return "HALF_OPEN, its probes never reported: the next authorization starts a new half-open period."
            most = f" of at most {settings.success_threshold}" if settings else ""
            return (f"HALF_OPEN: probing the processor, {state.probes}{most} probes let through, {state.successes} "
                    "answered; the other authorizations fail fast.")
        return f"{state.state}: not a state order_saga.breaker knows."


def breaker_settings(outputs: dict[str, Any]) -> BreakerSettings | None:
    """The breaker's settings from the stack's Outputs, or None where they are missing or not numbers."""
    try:
        failures, successes, seconds = (outputs[name] for name in BREAKER_OUTPUTS)
        return BreakerSettings(failure_threshold=int(failures), success_threshold=int(successes),
                               open_ms=int(float(seconds) * 1000))
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class QueueInfo:
    name: str
    url: str
    visible: int
    in_flight: int
    max_receives: int | None  # the redrive policy's maxReceiveCount: that many receives move a message on


@dataclass
class ParkedMessage:
    """A message of the parked-sagas queue (or its dead-letter queue), as ParkSaga sends it:
    {"order_id", "execution_arn", "error", "cause", "redrive_count"}."""
    queue: str  # "parked" or "dead-letter"
    message_id: str
    order_id: str
    execution_arn: str
    sent_at: float | None  # epoch seconds
    receives: int
    body: Any
    error: str  # the execution's error when it failed (the compensation's that spent its retries)
    cause: execution_reading.Cause | None
    redrive_count: int  # the execution's redrives before this failure: a message per failure
    order: OrderView | None
    receive_note: str = ""
    advice: list[str] = field(default_factory=list)  # the steps to take, in order
    checks: list[tuple[str, bool]] = field(default_factory=list)


@dataclass
class ParkedSaga:
    """An order ParkSaga parked (saga_status FAILED) and the execution that failed with it, to redrive."""
    order_id: str
    execution_arn: str
    parked_error: str
    parked_at: Any  # epoch ms (the order's ParkSaga step), or None
    described: dict[str, Any] | None  # DescribeExecution now; None: no such execution
    failed_state: str = ""  # where a redrive resumes: the state its last run entered and never left
    failed_cause: execution_reading.Cause | None = None
    advice: list[str] = field(default_factory=list)

    @property
    def redrivable(self) -> bool:
        return self.described is not None and self.described.get("redriveStatus", "REDRIVABLE") == "REDRIVABLE" \
            and self.described["status"] in ENDED and self.described["status"] != "SUCCEEDED"

    @property
    def redrive_count(self) -> int:
        return int((self.described or {}).get("redriveCount") or 0)

    @property
    def not_redrivable_because(self) -> str:
        if self.described is None:
            return f"no execution {self.execution_arn}"
        if self.redrivable:
            return ""
        return str(self.described.get("redriveStatusReason") or f"the execution is {self.described['status']}")


class NotRedrivable(Exception):
    """RedriveExecution refused: its error code and message, as the page shows them."""

    def __init__(self, arn: str, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.arn, self.code, self.message = arn, code, message


REDRIVE_REFUSALS = ("ExecutionNotRedrivable", "ExecutionDoesNotExist", "InvalidArn", "ExecutionLimitExceeded",
                    "ValidationException")


def redrive_token(arn: str, redrive_count: int) -> str:
    """RedriveExecution's clientToken for the redrive that follows `redrive_count` redrives: the one
    scripts/redrive_parked.py uses, so a resubmitted form, or the script and the page at once, redrive once."""
    return hashlib.sha256(f"{arn}#{redrive_count}".encode()).hexdigest()[:64]


def open_state(events: list[dict[str, Any]], states: Any = None) -> str:
    """The state a redrive resumes at: the latest one entered and never exited (a Fail state counts), among
    `states` (the definition's top-level ones) if given; "" if none."""
    entered: dict[str, int] = {}
    for n, event in enumerate(events):
        name = details(event).get("name")
        if states is not None and name not in states:
            continue
        if event["type"].endswith("StateEntered"):
            entered[str(name)] = n
        elif event["type"].endswith("StateExited"):
            entered.pop(str(name), None)
    return max(entered, key=lambda name: entered[name]) if entered else ""


class ConsoleData:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.outputs = source.outputs
        self.sfn = source.client("stepfunctions")
        self.dynamodb = source.client("dynamodb")
        self.sqs = source.client("sqs")
        # What an ended execution cannot change, kept so a refresh asks AWS only about what runs.
        self._ended: OrderedDict[str, dict[str, Any]] = OrderedDict()  # executionArn -> DescribeExecution
        self._definitions: OrderedDict[str, dict[str, Any]] = OrderedDict()  # executionArn -> its definition
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="console-describe")

    @property
    def state_machine_arn(self) -> str:
        return str(self.outputs["StateMachineArn"])

    def execution_arn(self, name: str) -> str:
        if name.startswith("arn:"):
            return name
        return self.state_machine_arn.replace(":stateMachine:", ":execution:") + ":" + name

    # ---- the dashboard ---------------------------------------------------------------------------------
    def dashboards(self) -> tuple[list[dict[str, Any]], str]:
        """The template's CloudWatch dashboards, evaluated by the embedded stack on its functions' metrics, and
        where they came from. ([], why) where no embedded stack answers: on AWS the dashboard is CloudWatch's."""
        import urllib.error
        import urllib.request

        name = self.outputs.get("DashboardName", "the stack's dashboard")
        elsewhere = f"On AWS, open the CloudWatch dashboard {name}: CloudWatch computes it from the same metrics."
        if not self.source.endpoint:
            return [], elsewhere
        try:
            with urllib.request.urlopen(f"{self.source.endpoint}/_sagalocal/metrics", timeout=30) as response:  # noqa: S310
                answer = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return [], f"{self.source.endpoint} is not an embedded stack's endpoint ({exc}). {elsewhere}"
        return answer["dashboards"], f"metrics from the functions' log files in {answer['log_dir']}, the whole run"

    # ---- the state machine ---------------------------------------------------------------------------
    def state_machine(self) -> tuple[dict[str, Any], Graph]:
        described = self.sfn.describe_state_machine(stateMachineArn=self.state_machine_arn)
        return described, state_graph(json.loads(described["definition"]))

    # ---- executions ----------------------------------------------------------------------------------
    def executions(self, status: str | None, size: int, token: str | None) -> ExecutionPage:
        kwargs: dict[str, Any] = {"stateMachineArn": self.state_machine_arn, "maxResults": size}
        if status:
            kwargs["statusFilter"] = status
        if token:
            kwargs["nextToken"] = token
        page = self.sfn.list_executions(**kwargs)
        listed = {e["executionArn"]: e for e in page["executions"]}
        rows = [ExecutionRow(e["executionArn"], e["name"], e["status"], e["startDate"], e.get("stopDate"))
                for e in page["executions"]]
        failed = [row for row in rows if row.status in ENDED and row.status != "SUCCEEDED"]
        for row, described in zip(failed, self._pool.map(lambda r: self.describe(r.arn, listed[r.arn]), failed),
                                  strict=True):
            row.error = described.get("error") or row.status
        return ExecutionPage(rows, page.get("nextToken"), status, size)

    def describe(self, arn: str, listed: dict[str, Any] | None = None) -> dict[str, Any]:
        """DescribeExecution, kept once ended. A kept description of an execution that can still be redriven is
        used only where ListExecutions (`listed`) shows the same status and redrive count: a redrive changes both."""
        with self._lock:
            kept = self._ended.get(arn)
        if kept is not None and (_final(kept) or (listed is not None and listed["status"] == kept["status"] and int(
                listed.get("redriveCount") or 0) == int(kept.get("redriveCount") or 0))):
            return kept
        try:
            described = redact(self.sfn.describe_execution(executionArn=arn))
        except self.sfn.exceptions.ExecutionDoesNotExist as exc:
            raise NotFound(f"no execution {arn}") from exc
        if described["status"] in ENDED:
            self._keep(self._ended, arn, described)
        return described

    def forget(self, arn: str) -> None:
        """The execution changed (this console redrove it): describe it again next time."""
        with self._lock:
            self._ended.pop(arn, None)

    def _keep(self, cache: OrderedDict[str, dict[str, Any]], key: str, value: dict[str, Any]) -> None:
        with self._lock:
            cache[key] = value
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)

    def _definition(self, arn: str) -> dict[str, Any]:
        """The definition this execution ran (it may differ from the live one after an update)."""
        with self._lock:
            if arn in self._definitions:
                return self._definitions[arn]
        definition = json.loads(self.sfn.describe_state_machine_for_execution(executionArn=arn)["definition"])
        self._keep(self._definitions, arn, definition)
        return definition

    def execution(self, name: str) -> ExecutionView:
        arn = self.execution_arn(name)
        described = self.describe(arn)
        graph = state_graph(self._definition(arn))
        roles = {node.name: node.role for node in graph.nodes}
        events = redact(history(self.sfn, arn))
        reading = execution_reading.read(events, roles, described["status"], described.get("error", ""),
                                         described.get("cause"), now_ms=time.time() * 1000)
        overlay(graph, reading.visits)
        execution_input = execution_reading.parse_json(described.get("input"))
        order_id = execution_input.get("order_id", described["name"]) if isinstance(execution_input, dict) \
            else described["name"]
        return ExecutionView(described, graph, reading, str(order_id), execution_input,
                             execution_reading.parse_json(described.get("output")))

    # ---- the order and what it holds -----------------------------------------------------------------
    def _get(self, output: str, key: dict[str, str]) -> dict[str, Any] | None:
        found = self.dynamodb.get_item(TableName=self.outputs[output], ConsistentRead=True,
                                       Key={k: {"S": v} for k, v in key.items()})
        return _item(found.get("Item"))

    def order(self, order_id: str) -> OrderView:
        order = self._get("OrdersTableName", {"order_id": order_id})
        reservation = self._get("InventoryTableName", {"pk": f"ORDER#{order_id}", "sk": "RESERVATION"})
        payments = []
        for method in range(1, MAX_PAYMENT_METHODS + 1):
            payment = self._get("PaymentsTableName", {"payment_id": f"{order_id}#{method}"})
            if payment is None:
                break
            payments.append(payment)
        steps = sorted(({"step": step, **entry} for step, entry in ((order or {}).get("steps") or {}).items()),
                       key=lambda s: (s.get("at") or 0, s["step"]))
        return OrderView(order_id, order, reservation, payments, steps)

    # ---- the payment gateway's circuit breaker -----------------------------------------------------------------
    def breaker(self) -> BreakerView:
        """Its item in the payments table (order_saga.breaker.BREAKER_KEY), read consistently; none is CLOSED."""
        item = self._get("PaymentsTableName", {"payment_id": BREAKER_KEY})
        return BreakerView(BreakerState.of(item), breaker_settings(self.outputs), int(time.time() * 1000),
                           str(self.outputs["PaymentsTableName"]))

    # ---- parked sagas ------------------------------------------------------------------------------------
    def queues(self) -> list[QueueInfo]:
        out = []
        for name, output in (("parked", "ParkedSagasQueueUrl"), ("dead-letter", "ParkedSagasDeadLetterQueueUrl")):
            url = self.outputs.get(output)
            if not url:
                continue
            attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "RedrivePolicy"])["Attributes"]
            policy = json.loads(attributes.get("RedrivePolicy") or "{}")
            out.append(QueueInfo(name, url, int(attributes.get("ApproximateNumberOfMessages", 0)),
                                 int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                                 int(policy["maxReceiveCount"]) if "maxReceiveCount" in policy else None))
        return out

    def parked_sagas(self) -> list[ParkedSaga]:
        """The parked sagas, oldest parked first: the orders whose saga_status is FAILED (a Scan of the orders table,
        every page; nothing is received from the queue), each with its execution as it is now."""
        table, found, start = self.outputs["OrdersTableName"], [], None
        while True:
            kwargs: dict[str, Any] = {
                "TableName": table, "ConsistentRead": True, "FilterExpression": "#status = :failed",
                "ProjectionExpression": "#id, #owner, #arn, #error, #steps.#park, #updated",
                "ExpressionAttributeNames": {"#status": "saga_status", "#id": "order_id", "#owner": "lease_owner",
                                             "#arn": "execution_arn", "#error": "parked_error", "#steps": "steps",
                                             "#park": "ParkSaga", "#updated": "updated_at"},
                "ExpressionAttributeValues": {":failed": {"S": "FAILED"}}}
            if start:
                kwargs["ExclusiveStartKey"] = start
            page = self.dynamodb.scan(**kwargs)
            found += [_item(raw) or {} for raw in page.get("Items", [])]
            start = page.get("LastEvaluatedKey")
            if not start:
                break
        parked = list(self._pool.map(self._parked_saga, found))
        return sorted(parked, key=lambda p: (p.parked_at or 0, p.order_id))

    def _parked_saga(self, order: dict[str, Any]) -> ParkedSaga:
        # ParkSaga parks only an order its execution still owns: the lease owner is <ARN>#<start time>
        arn = str(order.get("lease_owner") or order.get("execution_arn") or "").split("#")[0] or \
            self.execution_arn(str(order["order_id"]))
        parked = ParkedSaga(str(order["order_id"]), arn, str(order.get("parked_error") or ""),
                            ((order.get("steps") or {}).get("ParkSaga") or {}).get("at") or order.get("updated_at"),
                            None)
        try:
            parked.described = redact(self.sfn.describe_execution(executionArn=arn))
        except (self.sfn.exceptions.ExecutionDoesNotExist, self.sfn.exceptions.InvalidArn):
            advise_parked(parked)
            return parked
        parked.failed_state = open_state(redact(history(self.sfn, arn)), self._definition(arn)["States"])
        parked.failed_cause = execution_reading.Cause.read(parked.described.get("cause"))
        advise_parked(parked)
        return parked

    def redrive(self, arn: str, redrive_count: int) -> None:
        """RedriveExecution of a parked saga's execution (an execution of this state machine only). Raises
        NotRedrivable with Step Functions' reason when it refuses."""
        prefix = self.execution_arn("")
        if not arn.startswith(prefix) or len(arn) == len(prefix):
            raise NotRedrivable(arn, "NotThisStateMachine", f"not an execution of {self.state_machine_arn}")
        try:
            self.sfn.redrive_execution(executionArn=arn, clientToken=redrive_token(arn, redrive_count))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") not in REDRIVE_REFUSALS:
                raise
            raise NotRedrivable(arn, str(error.get("Code")), str(error.get("Message") or "")) from exc
        finally:
            self.forget(arn)

    def read_parked(self) -> list[ParkedMessage]:
        """Up to 10 messages of each queue, left on it (VisibilityTimeout=0). Each read counts as a receive."""
        out = []
        for queue in self.queues():
            received = self.sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10, VisibilityTimeout=0,
                                                WaitTimeSeconds=0, AttributeNames=["All"],
                                                MessageAttributeNames=["All"])
            for message in received.get("Messages", []):
                out.append(self._parked(queue, message))
        return out

    def _parked(self, queue: QueueInfo, message: dict[str, Any]) -> ParkedMessage:
        body = redact(execution_reading.parse_json(message.get("Body", "")))
        fields = body if isinstance(body, dict) else {}
        attributes = message.get("Attributes", {})
        order_id = str(fields.get("order_id") or message.get("MessageAttributes", {}).get("order_id", {}).get(
            "StringValue") or attributes.get("MessageGroupId", ""))
        sent = attributes.get("SentTimestamp")
        parked = ParkedMessage(queue.name, message["MessageId"], order_id, str(fields.get("execution_arn") or ""),
                               int(sent) / 1000 if sent else None, int(attributes.get("ApproximateReceiveCount", 0)),
                               body, str(fields.get("error") or ""), execution_reading.Cause.read(fields.get("cause")),
                               int(fields.get("redrive_count") or 0), self.order(order_id) if order_id else None)
        advise(parked, queue)
        return parked


RUNBOOK = "operations.md, Parked sagas"
SCRIPT = "python scripts/redrive_parked.py --stack-name <stack>"  # the operator's command (--stack-outputs locally)


def _final(described: dict[str, Any]) -> bool:
    """The description cannot change any more: succeeded, or ended and not redrivable."""
    return described["status"] == "SUCCEEDED" or (
        described["status"] in ENDED and described.get("redriveStatus") == "NOT_REDRIVABLE")


def advise_parked(parked: ParkedSaga) -> None:
    """docs/operations.md's runbook for a parked saga: fix the cause, redrive, check."""
    where = f"{parked.failed_state} failed" if parked.failed_state else "the execution failed"
    cause = f": {parked.failed_cause.message}" if parked.failed_cause else ""
    advice = [f"Fix the cause: {where} with {parked.parked_error or 'an error'}{cause} ({RUNBOOK} §2 and §3)."]
    if parked.redrivable:
        advice.append(f"Redrive the execution (the button, or `{SCRIPT} {parked.order_id}`): "
                      f"it resumes at {parked.failed_state or 'the state that failed'}, which takes the parked order "
                      "back, and the compensations after it run.")
        advice.append("Check: the execution ends FAILED at SagaCompensated with the error that started the rollback, "
                      "and the order COMPENSATED. An execution that fails again parks again: the cause is not fixed.")
        advice.append(f"Then `{SCRIPT} {parked.order_id}` deletes its message from the parked queue (for an order "
                      "that ended COMPENSATED it redrives nothing).")
    else:
        advice.append(f"It cannot be redriven ({parked.not_redrivable_because}): finish it by invoking the remaining "
                      f"compensations with the execution's identity ({RUNBOOK} §3), then check.")
    parked.advice = advice


def advise(parked: ParkedMessage, queue: QueueInfo) -> None:
    """What docs/operations.md says to do about this message, given the order as it is now."""
    view = parked.order
    order = view.order if view else None
    status = (order or {}).get("saga_status")
    reservation = (view.reservation or {}).get("status") if view else None
    payment_states = [p.get("status") for p in view.payments] if view else []
    parked.checks = [
        ("order COMPENSATED and CANCELLED", status == "COMPENSATED" and (order or {}).get("status") == "CANCELLED"),
        ("payment VOIDED, REFUNDED or DECLINED (or none)", all(s in MONEY_RELEASED for s in payment_states)),
        ("reservation RELEASED (or none)", reservation in (None, "RELEASED")),
    ]
    if queue.name == "dead-letter":
        parked.receive_note = ("Received too often, so SQS moved it to the dead-letter queue (operations.md §5): move "
                               "it back with `aws sqs start-message-move-task`, or redrive its order by name and "
                               "delete the message there.")
    elif queue.max_receives:
        left = queue.max_receives - parked.receives
        parked.receive_note = f"Received {parked.receives} of {queue.max_receives} times: " + (
            f"{left} more receive(s) move it to the dead-letter queue (operations.md §5)." if left > 0
            else "the next receive moves it to the dead-letter queue.")
    advice = []
    if order is None:
        advice.append("No order item: nothing to compensate. Read the execution's history, then delete the message.")
    elif status == "FAILED":
        advice.append(f"Parked: fix the cause ({parked.error or order.get('parked_error', '')}), redrive its execution "
                      f"(Parked executions above, or `{SCRIPT} {parked.order_id}`), check "
                      f"({RUNBOOK} §3).")
    elif status == "COMPENSATING":
        advice.append("The order is COMPENSATING: its execution was redriven and took it back. Wait for the execution "
                      "to end (should it die, the reaper takes the order over once its lease expires), then check.")
    elif status in SAGA_UNFINISHED or status in ("CONFIRMING", "COMPLETED"):
        advice.append(f"The order is {status}: ParkSaga marks an order FAILED before it sends this message, so it was "
                      "acted on since, and it is its execution's or the reaper's (never compensate a CONFIRMING or "
                      "COMPLETED order). Look again once its execution ended.")
    elif all(ok for _, ok in parked.checks):
        advice.append(f"Finished, and every check passes: delete the message (`{SCRIPT} {parked.order_id}` does "
                      "it for a finished order).")
    else:
        failing = ", ".join(name for name, ok in parked.checks if not ok)
        advice.append(f"The order is {status} but not every check passes ({failing}): read its execution, and redrive "
                      f"it if it can be ({RUNBOOK} §3), then check again.")
    parked.advice = advice
