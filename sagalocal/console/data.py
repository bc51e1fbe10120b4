"""What the console reads, through the AWS APIs only: Step Functions, DynamoDB and SQS.

Nothing here knows sagalocal's internals, so the same console reads the embedded stack, LocalStack or AWS:
a `Source` is an endpoint (None: AWS itself), a region and the stack's Outputs. The application's tables are
read with boto3 directly, by the keys docs/architecture.md documents (the console imports nothing from src/).

Every list call follows nextToken; an execution that has ended never changes, so its description is kept.
"""

from __future__ import annotations

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

from sagalocal.console import execution as execution_reading
from sagalocal.console.graph import Graph, overlay, state_graph
from sagalocal.console.redact import is_secret, redact
from sagalocal.timeline import history

ENDED = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
STATUSES = ("RUNNING", *ENDED, "PENDING_REDRIVE")
MAX_PAGE_SIZE = 100
CACHE_SIZE = 2000  # ended executions' descriptions and definitions kept
SAGA_UNFINISHED = ("PENDING", "EXECUTING", "COMPENSATING")
MONEY_RELEASED = ("VOIDED", "REFUNDED", "DECLINED")
MAX_PAYMENT_METHODS = 5  # payment_id = <order id>#<method>, numbered from 1


class NotFound(LookupError):
    pass


@dataclass
class Source:
    endpoint: str | None
    region: str
    outputs: dict[str, Any]

    @classmethod
    def from_file(cls, endpoint: str | None, region: str, outputs_file: Path) -> Source:
        """A JSON file of the stack's Outputs: {OutputKey: OutputValue}, or describe-stacks' list of them."""
        data = json.loads(Path(outputs_file).read_text())
        if isinstance(data, dict) and "Stacks" in data:
            data = data["Stacks"][0].get("Outputs", [])
        if isinstance(data, list):
            data = {o["OutputKey"]: o["OutputValue"] for o in data}
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
class QueueInfo:
    name: str
    url: str
    visible: int
    in_flight: int
    max_receives: int | None  # the redrive policy's maxReceiveCount: that many receives move a message on


@dataclass
class ParkedMessage:
    queue: str  # "parked" or "dead-letter"
    message_id: str
    order_id: str
    execution_arn: str
    sent_at: float | None  # epoch seconds
    receives: int
    body: Any
    failures: list[dict[str, Any]]
    order: OrderView | None
    receive_note: str = ""
    advice: list[str] = field(default_factory=list)  # the steps to take, in order
    checks: list[tuple[str, bool]] = field(default_factory=list)


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
        rows = [ExecutionRow(e["executionArn"], e["name"], e["status"], e["startDate"], e.get("stopDate"))
                for e in page["executions"]]
        failed = [row for row in rows if row.status in ENDED and row.status != "SUCCEEDED"]
        for row, described in zip(failed, self._pool.map(lambda r: self.describe(r.arn), failed), strict=True):
            row.error = described.get("error") or row.status
        return ExecutionPage(rows, page.get("nextToken"), status, size)

    def describe(self, arn: str) -> dict[str, Any]:
        with self._lock:
            if arn in self._ended:
                return self._ended[arn]
        try:
            described = redact(self.sfn.describe_execution(executionArn=arn))
        except self.sfn.exceptions.ExecutionDoesNotExist as exc:
            raise NotFound(f"no execution {arn}") from exc
        if described["status"] in ENDED:
            self._keep(self._ended, arn, described)
        return described

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
        saga = body.get("saga", {}) if isinstance(body, dict) else {}
        attributes = message.get("Attributes", {})
        order_id = str(saga.get("order_id") or message.get("MessageAttributes", {}).get("order_id", {}).get(
            "StringValue") or attributes.get("MessageGroupId", ""))
        failures = [{"state": state, "error": failure.get("Error", ""),
                     "cause": execution_reading.Cause.read(failure.get("Cause"))}
                    for state, failure in (saga.get("failures") or {}).items() if isinstance(failure, dict)]
        sent = attributes.get("SentTimestamp")
        parked = ParkedMessage(queue.name, message["MessageId"], order_id,
                               # the execution's identity is <ARN>#<start time>: the ARN names the page
                               str(body.get("execution_id", "")).split("#")[0] if isinstance(body, dict) else "",
                               int(sent) / 1000 if sent else None, int(attributes.get("ApproximateReceiveCount", 0)),
                               body, failures, self.order(order_id) if order_id else None)
        advise(parked, queue)
        return parked


COMPENSATIONS_IN_ORDER = ("RefundPayment", "VoidPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder")


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
                               "it back with `aws sqs start-message-move-task`, or redrive it from there and delete it "
                               "there.")
    elif queue.max_receives:
        left = queue.max_receives - parked.receives
        parked.receive_note = f"Received {parked.receives} of {queue.max_receives} times: " + (
            f"{left} more receive(s) move it to the dead-letter queue (operations.md §2)." if left > 0
            else "the next receive moves it to the dead-letter queue.")
    advice = []
    if order is None:
        advice.append("No order item: nothing to compensate. Read the execution's history, then delete the message.")
    elif status == "FAILED":
        failed = ", ".join(f"{f['state']}: {f['error']}" for f in parked.failures) or order.get("parked_error", "")
        advice.append(f"Fix the cause ({failed}).")
        advice.append("Nothing to reset: each compensation takes the parked order back to COMPENSATING itself.")
        advice.append("Invoke " + ", then ".join(COMPENSATIONS_IN_ORDER) + " with the message body as the event, "
                      "in that order; stop at the first that fails (operations.md §3).")
        advice.append("Check the order, the payment and the reservation (the checks below).")
        advice.append("Delete the message (receive it with a long visibility timeout to get a receipt handle).")
    elif status == "COMPENSATING":
        advice.append("The order is COMPENSATING: a redrive began and stopped. Run the compensations again, in order "
                      "(operations.md §3, step 3), then check.")
    elif status in SAGA_UNFINISHED or status in ("CONFIRMING", "COMPLETED"):
        advice.append(f"The order is {status}: ParkSaga marks an order FAILED before it sends this message, so it was "
                      "acted on since, and it is the reaper's (never compensate a CONFIRMING or COMPLETED order). Look "
                      "again after LeaseSeconds plus one ReaperSchedule period before you run anything "
                      "(operations.md §3, step 2).")
    elif all(ok for _, ok in parked.checks):
        advice.append("Already compensated and every check passes: delete the message (operations.md §3, step 5).")
    else:
        failing = ", ".join(name for name, ok in parked.checks if not ok)
        advice.append(f"The order is {status} but not every check passes ({failing}): run the compensations "
                      "again with the message body (operations.md §3), then check again.")
    parked.advice = advice
