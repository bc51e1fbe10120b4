"""What the stack tests share: the target, HTTP, waiting for executions, reading items, fault rules.

Everything here works the same on the embedded stack and on a deployed one: names come from the stack's
outputs, every list call paginates, and every wait has a deadline. Waiting uses the embedded stack's
`/_sagalocal/executions/wait` (no polling) where it exists, and otherwise DescribeExecution with backoff,
under one process-wide rate limit kept well below Step Functions' API quotas.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from order_saga.dynamo import from_ddb, to_ddb
from order_saga.gateway import LEDGER_PREFIX
from order_saga.payments import payment_id
from sagafaults.handler import rule_entry, scope_of
from sagafaults.rules import Rule
from sagalocal.scenarios import LOAD_ERRORS, location_url
from sagalocal.timeline import StateVisit, history, paginate, visits

STATE_API_RATE = 20.0  # Step Functions calls per second, all threads of this process together


@dataclass
class Target:
    api_url: str
    endpoint: str | None
    outputs: dict[str, Any]
    region: str = "us-east-1"
    embedded: bool = False
    dynamodb_endpoint: str | None = None
    log_dir: str | None = None  # the embedded stack's logs (functions, API access, DynamoDB)
    workdir: str | None = None  # where the embedded stack runs (its stack.log)
    _clients: dict[str, Any] = field(default_factory=dict)
    _tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # customer -> (token, sub, until)
    _token_lock: threading.Lock = field(default_factory=threading.Lock)
    _capabilities: dict[str, Any] = field(default_factory=dict)  # what the target's engine does (asked once)
    _probe_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def header_auth(self) -> bool:
        """Deployed with ApiAuth=header (an engine without Cognito): a customer names itself in X-Customer-Id."""
        return self.outputs.get("ApiAuth") == "header"

    def enforces_authorizer(self) -> bool:
        """Whether API Gateway itself refuses a request without a valid ID token (401 Unauthorized, before the
        function), as AWS does; LocalStack's free image lets it through to the function. Asked once."""
        with self._token_lock:
            if "enforced" not in self._capabilities:
                status, answer = http("POST", f"{self.api_url}/orders", b"{}",
                                      {"Authorization": "Bearer not-a-token", "Idempotency-Key": "capability-probe"})
                self._capabilities["enforced"] = (status, answer) == (401, {"message": "Unauthorized"})
            return self._capabilities["enforced"]

    def typed_errors(self) -> bool:
        """Whether a step's exception reaches the state machine under its class name (the saga's error API: what
        its Retry and Catch list, what the execution fails with), as on AWS; ministack reports every one under a
        generic name. A probe that did not finish decides nothing: then nothing is skipped (and the capability's
        own test fails, saying so)."""
        return self.probed_error() in (TYPED, UNANSWERED)

    def require_error_names(self) -> None:
        """Skip the calling test, saying why, on an engine that does not pass a step's error on by its name."""
        if not self.typed_errors():
            import pytest

            pytest.skip(UNTYPED)

    def probed_error(self) -> str:
        """The error name the state machine saw from a step that raised OrderNotActive: OrderNotActive itself if any
        failed task or the execution said so (a retried Lambda service error may come first), else the last failed
        task's, UNANSWERED if the probe did not end. Asked once, by an execution of the saga's state machine for an
        order that does not exist: its ReserveInventory raises OrderNotActive (it writes nothing; its compensation
        finds nothing to cancel)."""
        with self._probe_lock:
            if "error" not in self._capabilities:
                sfn = self.client("stepfunctions")
                probe = f"ord_capability_probe_{uuid.uuid4().hex[:12]}"
                arn = sfn.start_execution(stateMachineArn=self.outputs["StateMachineArn"], name=probe,
                                          input=json.dumps({"order_id": probe, "customer_id": "capability-probe"})
                                          )["executionArn"]
                try:
                    ended = wait_for_execution(self, arn, timeout=PROBE_TIMEOUT_S)
                except TimeoutError:
                    self._capabilities["error"] = UNANSWERED
                else:
                    tasks, ended_with = task_errors(history(sfn, arn)), str(ended.get("error"))
                    self._capabilities["error"] = TYPED if TYPED in (*tasks, ended_with) else (
                        tasks[-1] if tasks else ended_with)
            return str(self._capabilities["error"])

    def sign_in(self, customer: str = "cust-stack") -> tuple[str, str]:
        """(ID token, sub) of a test customer, signed in through the stack's user pool (cached, renewed). With
        ApiAuth=header there is no pool: no token, and the customer's name is its id."""
        from sagalocal.signin import sign_in

        if self.header_auth:
            return "", customer
        with self._token_lock:
            cached = self._tokens.get(customer)
            if cached is None or cached[2] < time.monotonic():
                signed = sign_in(self.client("cognito-idp"), self.outputs["UserPoolId"],
                                 self.outputs["UserPoolClientId"], customer)
                lifetime = float(signed.get("ExpiresIn") or 3600)
                cached = (signed["IdToken"], signed["sub"], time.monotonic() + lifetime * 0.8)
                self._tokens[customer] = cached
            return cached[0], cached[1]

    def auth(self, customer: str = "cust-stack") -> dict[str, str]:
        if self.header_auth:
            return {"X-Customer-Id": customer}
        return {"Authorization": f"Bearer {self.sign_in(customer)[0]}"}

    def execution_arn(self, order_id: str) -> str:
        """The order's execution: the state machine's, named by the order id."""
        return f"{self.outputs['StateMachineArn'].replace(':stateMachine:', ':execution:')}:{order_id}"

    def url(self, location: str) -> str:
        """An absolute URL for a path the API returned (its Location carries the stage, as on AWS)."""
        return location_url(self.api_url, location)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            endpoint = self.dynamodb_endpoint if service == "dynamodb" and self.dynamodb_endpoint else self.endpoint
            kwargs: dict[str, Any] = {"region_name": self.region,
                                      "config": Config(max_pool_connections=64, retries={"mode": "standard"})}
            if endpoint:
                kwargs.update(endpoint_url=endpoint, aws_access_key_id="local", aws_secret_access_key="local")
            client = boto3.client(service, **kwargs)
            _ = client.exceptions  # built here: at first use, racing threads could each build their own (no lock)
            self._clients[service] = client
        return self._clients[service]

    def get(self, output: str, **key: Any) -> dict[str, Any] | None:
        resp = self.client("dynamodb").get_item(TableName=self.outputs[output], Key=to_ddb(key), ConsistentRead=True)
        return from_ddb(resp["Item"]) if "Item" in resp else None

    def order(self, order_id: str) -> dict[str, Any] | None:
        return self.get("OrdersTableName", order_id=order_id)

    def payment(self, order_id: str, method: int = 1) -> dict[str, Any] | None:
        return self.get("PaymentsTableName", payment_id=payment_id(order_id, method))

    def ledger(self, order_id: str, method: int = 1) -> dict[str, Any] | None:
        return self.get("PaymentsTableName", payment_id=LEDGER_PREFIX + payment_id(order_id, method))

    def coupon(self, code: str) -> dict[str, Any] | None:
        return self.get("PromotionsTableName", pk=f"COUPON#{code}", sk="COUPON")

    def redemption(self, code: str, order_id: str) -> dict[str, Any] | None:
        return self.get("PromotionsTableName", pk=f"COUPON#{code}", sk=f"ORDER#{order_id}")

    def coupon_use(self, code: str, customer: str) -> int:
        """How many of the coupon's redemptions the customer holds."""
        item = self.get("PromotionsTableName", pk=f"COUPON#{code}", sk=f"CUSTOMER#{customer}")
        return int((item or {}).get("used", 0))

    def promotions(self) -> Any:
        from order_saga.promotions import Promotions
        from order_saga.store import Store

        return Promotions(Store(self.client("dynamodb")), self.outputs["PromotionsTableName"])

    def add_coupon(self, code: str, kind: str = "percent", value: int = 10, max_redemptions: int = 5,
                   per_customer: int = 1, valid_for: float = 3600.0, currency: str | None = None) -> None:
        now = int(time.time() * 1000)
        assert self.promotions().add_coupon(code, kind, value, now - 60_000, now + int(valid_for * 1000),
                                            max_redemptions, per_customer, currency), f"coupon {code} exists already"

    def reservation(self, order_id: str) -> dict[str, Any] | None:
        return self.get("InventoryTableName", pk=f"ORDER#{order_id}", sk="RESERVATION")

    def stock(self, sku: str) -> dict[str, Any] | None:
        return self.get("InventoryTableName", pk=f"SKU#{sku}", sk="STOCK")

    def add_item(self, sku: str, price: int, available: int, currency: str = "USD") -> None:
        from order_saga.inventory import Inventory
        from order_saga.store import Store

        assert Inventory(Store(self.client("dynamodb")), self.outputs["InventoryTableName"]).add_item(
            sku, sku, price, currency, available), f"sku {sku} exists already"


# ---- HTTP ------------------------------------------------------------------------------------------------
def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    headers = dict(headers or {})
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"  # urllib would send form-urlencoded
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the stack under test
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def attempts_beyond_load(visits_of_state: list[StateVisit]) -> int:
    """The state's attempts, less one for each retry that a load error (LOAD_ERRORS) caused."""
    return sum(v.attempts - sum(e in LOAD_ERRORS for e in v.errors) for v in visits_of_state)


RETRIED = (429, 502, 503, 504)  # throttled or busy: what a client retries, with the same Idempotency-Key


def post_order(target: Target, body: bytes, key: str, timeout: float = 60.0, attempts: int = 6,
               customer: str = "cust-stack") -> tuple[int, Any]:
    """POST /orders as a careful signed-in client does: a throttled or busy answer is retried (same key) with
    backoff."""
    headers = {"Idempotency-Key": key, **target.auth(customer)}
    for attempt in range(attempts):
        status, answer = http("POST", f"{target.api_url}/orders", body, headers, timeout=timeout)
        if status not in RETRIED or attempt == attempts - 1:
            return status, answer
        time.sleep(min(4.0, 0.25 * 2 ** attempt))
    raise AssertionError("unreachable")


def place(target: Target, items: list[dict[str, Any]], token: str = "tok_approve", key: str | None = None,
          customer: str = "cust-stack", timeout: float = 60.0, coupon: str | None = None) -> dict[str, Any]:
    """POST /orders as `customer`; the 202 body, with the execution's ARN (which the API does not disclose)."""
    order: dict[str, Any] = {"items": items, "payment_token": token, **({"coupon": coupon} if coupon else {})}
    status, accepted = post_order(target, json.dumps(order).encode(), key or uuid.uuid4().hex, timeout,
                                  customer=customer)
    assert status == 202, (status, accepted)
    return {**accepted, "execution_arn": target.execution_arn(accepted["order_id"]), "customer": customer}


def get_order(target: Target, order_id: str, customer: str = "cust-stack") -> tuple[int, Any]:
    return http("GET", f"{target.api_url}/orders/{order_id}", headers=target.auth(customer))


# ---- Step Functions, within its rate limits ------------------------------------------------------------------
class _Bucket:
    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.at = rate, rate, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


_bucket = _Bucket(STATE_API_RATE)


def describe(target: Target, arn: str) -> dict[str, Any]:
    _bucket.take()
    return target.client("stepfunctions").describe_execution(executionArn=arn)  # type: ignore[no-any-return]


# The compensations: a path through one of them follows a Catch, which matches by error name.
COMPENSATIONS = ("RefundPayment", "VoidPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder")


def task_errors(events: list[dict[str, Any]]) -> list[str]:
    """The error names of the execution's failed Lambda tasks, in order, as its history records them
    (TaskFailed for the lambda:invoke integration; LambdaFunctionFailed where a Task names the function itself)."""
    return [str(event[key].get("error")) for event in events
            for key in ("lambdaFunctionFailedEventDetails", "taskFailedEventDetails") if key in event]


TYPED, UNANSWERED = "OrderNotActive", "no answer: the probe execution did not end in time"
PROBE_TIMEOUT_S = 120.0
# What a test whose outcome rests on a step's error name says where the engine cannot name them.
UNTYPED = ("this engine reports a step's exception under a generic name, not its class name (the capability probe's "
           "ReserveInventory did not fail with OrderNotActive), so the state machine's Retry and Catch by error name, "
           "and the error an execution fails with, cannot be what AWS does: tests/stack/support.py Target.typed_errors")
# Fault rules that make a step raise (retried or caught by the error's name); a delay makes the engine's own
# States.Timeout instead.
RAISING_RULES = ("invocation-error", "dynamodb-error", "dynamodb-response-lost")


def depends_on_error_names(expect: dict[str, Any], trigger: dict[str, Any] | None = None) -> bool:
    """Whether an expected outcome (a scenario's, a matrix row's) rests on a step's error reaching the state machine
    by its name: a failed execution and the error it names, a retry of a named error, a compensation path (a
    Catch), or a fault rule that makes a step raise."""
    return (expect.get("status", "SUCCEEDED") != "SUCCEEDED" or "error" in expect or "retries" in expect
            or any(state in (expect.get("path") or []) for state in COMPENSATIONS)
            or any(rule.get("action") in RAISING_RULES for rule in (trigger or {}).get("rules") or []))


def wait_for_execution(target: Target, arn: str, timeout: float = 180.0) -> dict[str, Any]:
    """The execution once it has ended. Raises TimeoutError naming the last status seen."""
    deadline = time.monotonic() + timeout
    status, pause = "unknown", 0.1
    while True:
        remaining = deadline - time.monotonic()
        if target.embedded and target.endpoint and remaining > 0:
            query = urllib.parse.urlencode({"arn": arn, "timeout": min(remaining, 60)})
            with urllib.request.urlopen(f"{target.endpoint}/_sagalocal/executions/wait?{query}",  # noqa: S310
                                        timeout=70):
                pass
        described = describe(target, arn)
        status = described["status"]
        if status != "RUNNING":
            return described
        if time.monotonic() >= deadline:
            raise TimeoutError(f"execution {arn} still {status} after {timeout:.0f} s")
        if not target.embedded:
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def wait_all(target: Target, arns: list[str], timeout: float = 300.0) -> dict[str, dict[str, Any]]:
    """Every execution once ended (waited for concurrently, within the same deadline)."""
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(arns)))) as pool:
        described = list(pool.map(lambda arn: wait_for_execution(target, arn, timeout), arns))
    return dict(zip(arns, described, strict=True))


def path_of(target: Target, arn: str) -> list[StateVisit]:
    _bucket.take()
    return visits(history(target.client("stepfunctions"), arn))


def executions_named(target: Target, name: str) -> int:
    """How many executions of the state machine carry this name (a paginated list)."""
    _bucket.take()
    listed = paginate(target.client("stepfunctions").list_executions, "executions",
                      stateMachineArn=target.outputs["StateMachineArn"])
    return sum(e["name"] == name for e in listed)


def start_direct(target: Target, order_id: str, saga: dict[str, Any]) -> str:
    """An operator's StartExecution, without the API."""
    _bucket.take()
    return str(target.client("stepfunctions").start_execution(
        stateMachineArn=target.outputs["StateMachineArn"], name=order_id, input=json.dumps(saga))["executionArn"])


def wait_until(read: Any, timeout: float, what: str, cap: float = 2.0) -> Any:
    """`read()` once it is truthy (polled from every 0.1 s, backing off to every `cap` s, within `timeout` seconds);
    else AssertionError naming `what` and the last value read."""
    deadline, pause, last = time.monotonic() + timeout, 0.1, None
    while True:
        last = read()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout:g} s (last: {last})")
        time.sleep(pause)
        pause = min(pause * 2, cap)


def parked_queue_orders(target: Target) -> list[str]:
    """The order ids of every message on the parked-sagas queue, one per message: each held while the queue is read
    through, then given back (visibility reset), as the operator's script reads it."""
    sqs, url = target.client("sqs"), target.outputs["ParkedSagasQueueUrl"]
    held: dict[str, dict[str, Any]] = {}
    for _ in range(200):
        fresh = [m for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                                VisibilityTimeout=60).get("Messages", []) if m["MessageId"] not in held]
        if not fresh:
            break
        held.update((m["MessageId"], m) for m in fresh)
    for message in held.values():
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    return [str(json.loads(m["Body"])["order_id"]) for m in held.values()]


# AuthorizePayment's Lambda timeout (template.yaml, AuthorizePaymentTimeout: its one allowed value, which
# tests/unit/test_deployment.py holds this to), and 3 s for a sandbox's end to be noticed on a loaded machine.
LATE_INVOCATION_SECONDS = 14 + 3


def wait_for_late_invocations(target: Target, orders: dict[str, int]) -> None:
    """Wait until no invocation that may still authorize one of `orders`' payments is running.

    An invocation of AuthorizePayment can outlive the saga that gave up on its payment (a card's Map iteration in
    flight when another card failed the Map): it marked the payment sent, VoidPayment found the gateway with nothing
    yet and voided the payment for reconciliation, and the authorization reaches the gateway afterwards; the late
    invocation's write is refused and it voids what it got. Until it has, the gateway shows nothing, or an
    authorization, for a payment the saga voided (a loaded fresh-clone make test read it in between). Such an
    invocation began before it marked the payment (`sent_at`) and ends within AuthorizePayment's timeout: so each
    payment voided with an undecided gateway (a reconciliation mark, or reconciled as settled) and with nothing final
    at the gateway is waited for until `sent_at` + LATE_INVOCATION_SECONDS (at most that long in all)."""
    final = ("VOIDED", "REFUNDED", "DECLINED", "CAPTURED")

    def running_until() -> float:
        latest = 0.0
        for order_id, methods in orders.items():
            for m in range(1, methods + 1):
                payment = target.payment(order_id, m) or {}
                undecided = "reconcile" in payment or payment.get("reconciled") == "settled"
                if undecided and "sent_at" in payment and \
                        (target.ledger(order_id, m) or {}).get("state") not in final:
                    latest = max(latest, int(payment["sent_at"]) / 1000 + LATE_INVOCATION_SECONDS)
        return latest

    while (until := running_until()) > time.time():
        time.sleep(min(1.0, until - time.time()))


def settle_late_authorizations(target: Target, orders: dict[str, int], rounds: int = 20,
                                pause: float = 3.0) -> set[str]:
    """Let the reaper void what landed after its saga gave up on it, as its schedule would.

    An authorization can land after the saga gave up on it: a card's iteration of the AuthorizePayments Map still
    running when another card failed the Map and VoidPayment ran (the Map stops, the Lambda invocation in flight
    does not), or a gateway call whose answer came too late to record. The late invocation voids it itself when
    its write is refused; if it cannot (it crashed, it timed out), VoidPayment's reconciliation mark has the
    reaper's sweep void it (every ReaperSchedule; ReconcileAfterSeconds=1 on the test stacks). So first wait for
    the late invocations themselves (wait_for_late_invocations); then, where one of `orders` (order id -> number of
    payment methods) still shows an authorization at the gateway, wait and run the sweep, up to `rounds` times
    (~65 s in all, spent only while something still dangles: on a loaded machine a late invocation took longer
    than 4 rounds, 1 of 4 loaded fresh-clone runs). Returns the payment ids the sweeps reversed; what they did not
    void stays, for the caller's invariants to catch."""
    wait_for_late_invocations(target, orders)
    reversed_: set[str] = set()
    for _ in range(rounds):
        dangling = [order_id for order_id, methods in orders.items()
                    if any((target.ledger(order_id, m) or {}).get("state") == "AUTHORIZED"
                           for m in range(1, methods + 1))]
        if not dangling:
            break
        time.sleep(pause)  # past ReconcileAfterSeconds, and past the late invocation's own timeout in a few rounds
        swept = json.loads(target.client("lambda").invoke(
            FunctionName=target.outputs["ReaperFunctionName"], Payload=b"{}")["Payload"].read())
        assert "errorType" not in swept, swept
        # The sweep queued the due reconciliations; ReaperWorker does them (a few seconds at most).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(
                "reconcile" in (target.payment(order_id, m) or {}) and int(
                    (target.payment(order_id, m) or {}).get("reconcile_at", 0)) <= time.time() * 1000
                for order_id in dangling for m in range(1, orders[order_id] + 1)):
            time.sleep(0.3)
        reversed_.update(payment_id(order_id, m) for order_id in dangling for m in range(1, orders[order_id] + 1)
                         if (target.payment(order_id, m) or {}).get("reconciled") == "reversed")
    return reversed_


# ---- fault rules (sagafaults, through the fault rules table) ---------------------------------------------------
class FaultRules:
    """The rules table of a stack deployed with FaultInjection=true: what the handlers' injector reads."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.table = target.outputs["FaultRulesTableName"]

    def add(self, rule: dict[str, Any]) -> Rule:
        parsed = Rule.from_json(rule)
        ddb, key = self.target.client("dynamodb"), {"scope": {"S": scope_of(parsed)}}
        ddb.update_item(TableName=self.table, Key=key, UpdateExpression="SET by_id = if_not_exists(by_id, :empty)",
                        ExpressionAttributeValues={":empty": {"M": {}}})
        ddb.update_item(TableName=self.table, Key=key, UpdateExpression="SET by_id.#id = :entry",
                        ExpressionAttributeNames={"#id": parsed.id},
                        ExpressionAttributeValues={":entry": rule_entry(parsed)})
        return parsed

    def remaining(self, rule: Rule) -> int | None:
        resp = self.target.client("dynamodb").get_item(TableName=self.table, Key={"scope": {"S": scope_of(rule)}},
                                                       ConsistentRead=True)
        entry = from_ddb(resp["Item"]).get("by_id", {}).get(rule.id) if "Item" in resp else None
        return None if entry is None else entry.get("remaining")

    def remove(self, rule: Rule) -> None:
        self.target.client("dynamodb").update_item(
            TableName=self.table, Key={"scope": {"S": scope_of(rule)}}, UpdateExpression="REMOVE by_id.#id",
            ExpressionAttributeNames={"#id": rule.id})

    @contextmanager
    def applied(self, *rules: dict[str, Any]) -> Iterator[list[Rule]]:
        added = [self.add(rule) for rule in rules]
        try:
            yield added
        finally:
            for rule in added:
                self.remove(rule)
