"""The saga's guarantees under random faults: property-based batches of concurrent orders on the stack.

Hypothesis draws each batch: stock levels for three fresh items, then orders with random lines, test
cards (approve, decline, transient failures that recover or exhaust), coupons (one with a small global
limit, one with a per-customer limit), payments split over up to three cards, four customers, duplicate
submissions, and faults:
Lambda faults at random forward steps and compensations (transient errors, crash after write, added delay,
timeout) and DynamoDB faults at random steps (transaction conflicts, throttling, internal errors, writes
whose response is lost). The faults are sagafaults rules scoped to the order, so the run works on any stack
deployed with FaultInjection=true. A batch runs concurrently; afterwards the invariants below must hold for
every order of the batch, and every finished saga must have published exactly one outcome event (read from
the outcome queue that the bus's rule fills). 60 sagas run per session (BATCHES x ORDERS_PER_BATCH): enough to
prove the wiring under concurrency (HTTP, processes, the stream, the bus, the queue) on the full stack; the
volume of faults and interleavings runs in the deterministic simulation (tests/sim: the crash-point explorer
and the random mixes), where every failure replays from its seed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from order_saga.models import order_id_for
from order_saga.promotions import Promotions
from sagalocal.timeline import paginate
from scripts.redrive_parked import Operator
from tests.stack.support import post_order, settle_late_authorizations, wait_all

BATCHES, ORDERS_PER_BATCH = 2, 30
SKUS = 3
PRICES = (300, 1100, 2500)
FORWARD = ("ReserveInventory", "ApplyCoupon", "AuthorizePayment", "ConfirmOrder")
COMPENSATIONS = ("VoidPayment", "RefundPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder")
CUSTOMERS = 4
# Each batch's own coupons: (kind, value, global limit, per-customer limit). Each is drawn by one order in six,
# about 5 orders a batch: "few" (3 redemptions in all) runs out in most batches, and "once" (one per customer, 4
# customers) is asked for twice by one customer in every batch where 5 orders draw it.
COUPONS = {"plenty": ("percent", 10, 10_000, 10_000), "few": ("amount", 200, 3, 10_000),
           "once": ("percent", 20, 10_000, 1)}
ENDED = {"COMPLETED": "OrderConfirmed", "COMPENSATED": "OrderCancelled"}
STEPS = FORWARD + COMPENSATIONS
SAGAS_RUN: list[int] = []
REPEATED: set[str] = set()  # outcome events delivered more than once (same event_id)
RECONCILED: set[str] = set()  # authorizations left behind, voided by the reaper's reconciliation
PARKED_AND_REDRIVEN: list[str] = []  # sagas a compensation fault parked, finished by a redrive
OUTCOMES: Counter[str] = Counter()

tokens = st.sampled_from(["tok_approve"] * 6 + ["tok_decline", "tok_capture_fails", "tok_transient_1",
                                                 "tok_transient_2", "tok_transient_4"])
forward_fault = st.sampled_from([
    {"action": "invocation-error", "error": "TransientError", "count": 1},
    {"action": "invocation-error", "error": "TransientError", "count": 2},
    {"action": "invocation-error", "error": "TransientError", "count": 4},  # exhausts: compensated
    {"action": "invocation-error", "prevent_execution": False},  # crash after the write
    {"action": "invocation-add-delay", "delay_ms": 50},
])
dynamodb_fault = st.sampled_from([
    {"action": "dynamodb-error", "error": "TransactionConflict", "count": 2},
    {"action": "dynamodb-error", "error": "TransactionConflict", "count": 9},  # past the handler's budget
    {"action": "dynamodb-error", "error": "ProvisionedThroughputExceededException", "count": 3},
    {"action": "dynamodb-error", "error": "ThrottlingException", "count": 2},
    {"action": "dynamodb-error", "error": "InternalServerError", "count": 1},
    {"action": "dynamodb-response-lost", "count": 1},
    {"action": "dynamodb-response-lost", "lost_as": "timeout", "count": 1},
])
compensation_fault = st.sampled_from([
    {"action": "invocation-error", "error": "TransientError", "count": 1},
    {"action": "invocation-error", "prevent_execution": False},
    {"action": "invocation-error", "error": "TransientError", "count": 4},  # spends the retry budget: parked
])
timeout_fault = st.just({"action": "invocation-add-delay", "delay_ms": 60_000})
# About 55% no fault, 20% a forward Lambda fault, 15% a DynamoDB fault, 5% a compensation fault, 5% a timeout
# (the slowest kind: a 4 s Lambda timeout). sampled_from weights them (one_of would merge repeated branches).
FAULT_KINDS = {
    "none": st.none(),
    "forward": st.tuples(st.sampled_from(FORWARD), forward_fault),
    "dynamodb": st.tuples(st.sampled_from(STEPS), dynamodb_fault),
    "compensation": st.tuples(st.sampled_from(COMPENSATIONS), compensation_fault),
    "timeout": st.tuples(st.sampled_from(("ReserveInventory",)), timeout_fault),
}
fault = st.sampled_from(["none"] * 11 + ["forward"] * 4 + ["dynamodb"] * 3 + ["compensation", "timeout"]).flatmap(
    FAULT_KINDS.__getitem__)
order = st.fixed_dictionaries({
    "lines": st.lists(st.tuples(st.integers(0, SKUS - 1), st.integers(1, 3)), min_size=1, max_size=SKUS,
                      unique_by=lambda line: line[0]),
    "tokens": st.lists(tokens, min_size=3, max_size=3),  # the first `methods` of them are used
    "methods": st.sampled_from([1] * 6 + [2, 3]),
    "coupon": st.sampled_from([None] * 3 + list(COUPONS)),
    "customer": st.integers(0, CUSTOMERS - 1),
    "fault": fault,
    "duplicates": st.sampled_from([0] * 8 + [1, 2]),
})
# Stock from sold out to plenty: about 120 units (4 an order) are ordered per batch across the three items.
batches = st.tuples(st.lists(st.sampled_from([0, 60, 200, 400, 700]), min_size=SKUS, max_size=SKUS),
                    st.lists(order, min_size=ORDERS_PER_BATCH, max_size=ORDERS_PER_BATCH))


class Batch:
    def __init__(self, target, faults, stock_levels, orders):
        self.target = target
        self.faults = faults
        run = uuid.uuid4().hex[:8]
        self.skus = [f"INV-{run}-{i}" for i in range(SKUS)]
        self.initial = dict(zip(self.skus, stock_levels, strict=True))
        self.orders = orders
        self.rules: list = []
        for sku, level, price in zip(self.skus, stock_levels, PRICES, strict=True):
            target.add_item(sku, price, level)
        self.codes = {name: f"INV{run.upper()}{name.upper()}" for name in COUPONS}
        for name, (kind, value, limit, per_customer) in COUPONS.items():
            target.add_coupon(self.codes[name], kind, value, limit, per_customer,
                              currency="USD" if kind == "amount" else None)
        self.coupons = {name: target.coupon(code) for name, code in self.codes.items()}

    def body(self, spec) -> tuple[dict, list[int]]:
        """The order's request, its payment split evenly over its methods (after the discount, priced as the
        API prices it)."""
        subtotal = sum(PRICES[i] * q for i, q in spec["lines"])
        order: dict = {"items": [{"sku": self.skus[i], "quantity": q} for i, q in spec["lines"]]}
        total = subtotal
        if spec["coupon"]:
            code = self.codes[spec["coupon"]]
            order["coupon"] = code
            total -= Promotions.discount(self.coupons[spec["coupon"]], code, subtotal, "USD", int(time.time() * 1000))
        n = spec["methods"]
        amounts = [total - (total // n) * (n - 1)] + [total // n] * (n - 1)
        if n == 1:
            order["payment_token"] = spec["tokens"][0]
        else:
            order["payment"] = [{"token": t, "amount": a} for t, a in zip(spec["tokens"], amounts, strict=False)]
        return order, amounts

    def place(self, spec) -> dict:
        key = uuid.uuid4().hex
        customer = f"invariants-{spec['customer']}"
        order_id = order_id_for(self.target.sign_in(customer)[1], key)
        if spec["fault"] is not None:
            step, rule = spec["fault"]
            self.rules.append(self.faults.add({**rule, "function": step, "order_id": order_id}))
        order, amounts = self.body(spec)
        body = json.dumps(order).encode()
        submit = lambda _: post_order(self.target, body, key, timeout=120, customer=customer)  # noqa: E731
        with ThreadPoolExecutor(max_workers=1 + spec["duplicates"]) as pool:  # duplicates race the original
            answers = list(pool.map(submit, range(1 + spec["duplicates"])))
        assert all(status == 202 for status, _ in answers), answers
        assert all(payload == answers[0][1] for _, payload in answers), "a resubmission answered differently"
        assert answers[0][1]["order_id"] == order_id
        return {"key": key, "order_id": order_id, "arn": self.target.execution_arn(order_id), "spec": spec,
                "amounts": amounts, "customer": customer}

    def run(self) -> list[dict]:
        with ThreadPoolExecutor(max_workers=32) as pool:
            placed = list(pool.map(self.place, self.orders))
        ended = wait_all(self.target, [p["arn"] for p in placed], timeout=400)
        for rule in self.rules:
            self.faults.remove(rule)
        self.redrive_parked(placed, ended)
        for p in placed:
            p["status"], p["error"] = ended[p["arn"]]["status"], ended[p["arn"]].get("error")
            p["order"] = self.target.order(p["order_id"])
            methods = range(1, p["spec"]["methods"] + 1)
            p["payments"] = [self.target.payment(p["order_id"], m) for m in methods]
            p["ledgers"] = [self.target.ledger(p["order_id"], m) for m in methods]
            p["reservation"] = self.target.reservation(p["order_id"])
            if p["spec"]["coupon"]:
                p["redemption"] = self.target.redemption(self.codes[p["spec"]["coupon"]], p["order_id"])
        self.reconcile(placed)
        return placed

    def redrive_parked(self, placed: list[dict], ended: dict[str, dict]) -> None:
        """A compensation that spent its retries failed its execution, and ParkSaga (on that failure, through
        EventBridge: asynchronously) parks the saga. Wait for every such saga to be parked; then, the faults gone,
        do what docs/operations.md says: redrive it (the operator's script, which acknowledges its message on the
        parked queue once the saga finished), and take the redriven execution's end as the saga's."""
        unfinished = [p for p in placed if ended[p["arn"]]["status"] == "FAILED"
                      and (self.target.order(p["order_id"]) or {}).get("saga_status") not in ("COMPLETED",
                                                                                               "COMPENSATED")]
        deadline = time.monotonic() + 90
        while unfinished and time.monotonic() < deadline:
            unfinished = [p for p in unfinished if (self.target.order(p["order_id"]) or {}).get("saga_status")
                          != "FAILED"]
            time.sleep(0.5)
        assert not unfinished, [(p["spec"], (self.target.order(p["order_id"]) or {}).get("saga_status"))
                                for p in unfinished]
        parked = {p["order_id"] for p in placed if (self.target.order(p["order_id"]) or {}).get("saga_status")
                  == "FAILED"}
        if not parked:
            return
        for p in placed:
            if p["order_id"] in parked:
                p["parked_error"] = ended[p["arn"]].get("error")
                PARKED_AND_REDRIVEN.append(p["order_id"])
        operator = Operator(self.target.outputs, client=self.target.client, timeout=300)
        outcomes = operator.run(sorted(parked))
        assert all(o.redriven and o.finished for o in outcomes), [o.line() for o in outcomes]
        # Each parked saga's message acknowledged (ParkSaga sends it just after its write: a run that came before
        # the message finds the order finished the next time, and acknowledges it then).
        acknowledged = Counter({o.order_id: o.acknowledged for o in outcomes})
        deadline = time.monotonic() + 60
        while set(+acknowledged) != parked and time.monotonic() < deadline:
            acknowledged.update({o.order_id: o.acknowledged for o in operator.run(sorted(parked - set(+acknowledged)))})
        assert set(+acknowledged) == parked, acknowledged
        for arn in (p["arn"] for p in placed if p["order_id"] in parked):
            ended[arn] = self.target.client("stepfunctions").describe_execution(executionArn=arn)

    def reconcile(self, placed: list[dict]) -> None:
        """Where a cancelled order still shows an authorization (one that landed after its saga gave up on it),
        run the reaper's sweep as its schedule would (support.settle_late_authorizations), and read again."""
        cancelled = {p["order_id"]: p["spec"]["methods"] for p in placed
                     if (p["order"] or {}).get("saga_status") != "COMPLETED"}
        RECONCILED.update(settle_late_authorizations(self.target, cancelled))
        for p in placed:
            if p["order_id"] in cancelled:
                methods = range(1, p["spec"]["methods"] + 1)
                p["payments"] = [self.target.payment(p["order_id"], m) for m in methods]
                p["ledgers"] = [self.target.ledger(p["order_id"], m) for m in methods]

    def outcome_events(self, expected: set[str], timeout: float = 180.0) -> Counter[str]:
        """How often each of this batch's outcome events arrived on the outcome queue (read, then deleted),
        once every expected event id arrived or the deadline passed; then a little longer, for repeats."""
        sqs = self.target.client("sqs")
        url = self.target.outputs["OutcomeEventsQueueUrl"]
        ours = {event_id.split("/")[0] for event_id in expected}
        seen: Counter[str] = Counter()
        deadline = time.monotonic() + timeout
        settle: float | None = None
        while time.monotonic() < (settle or deadline):
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           VisibilityTimeout=600).get("Messages", [])
            for message in messages:
                detail = json.loads(message["Body"])["detail"]
                if detail["order_id"] in ours:
                    seen[detail["event_id"]] += 1
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            if settle is None and expected <= set(seen):
                settle = time.monotonic() + 3
        return seen


def check_invariants(batch: Batch, placed: list[dict]) -> None:
    parked: set[str] = set()  # redriven to their end (Batch.redrive_parked): nothing is left parked
    completed = [p for p in placed if p["order"] and p["order"]["saga_status"] == "COMPLETED"]
    done = {p["order_id"] for p in completed}

    # Every saga ended COMPLETED (the execution succeeded) or COMPENSATED: a parked one once redriven (it keeps
    # its ParkSaga step), with the error that started its rollback, as a saga that never parked.
    for p in placed:
        status = p["order"]["saga_status"]
        assert status in ("COMPLETED", "COMPENSATED"), (p["spec"], status)
        assert (status == "COMPLETED") == (p["status"] == "SUCCEEDED"), (p["spec"], p["status"], p["error"])
        assert ("parked_error" in p) == ("ParkSaga" in p["order"]["steps"]), p["spec"]

    # Money captured equals the discounted total of every confirmed order, across all its methods, and zero for
    # every other order; nothing authorized is left dangling.
    for p in placed:
        if p["order_id"] in parked:
            continue
        captured = sum(ledger["amount"] for ledger in p["ledgers"] if ledger and ledger.get("state") == "CAPTURED")
        order = p["order"]
        assert order["total"] == order.get("subtotal", order["total"]) - order.get("discount", 0) == sum(p["amounts"])
        assert captured == (order["total"] if p["order_id"] in done else 0), (p["spec"], p["ledgers"])
        for ledger, payment in zip(p["ledgers"], p["payments"], strict=True):
            assert (ledger or {}).get("state") in (None, "DECLINED", "VOIDED", "REFUNDED", "CAPTURED"), p["spec"]
            assert (payment or {}).get("status") in ("PENDING", "DECLINED", "VOIDED", "REFUNDED", "CAPTURED")

    # No CONFIRMED order without every method captured for its amount and a committed reservation.
    for p in placed:
        if p["order"]["status"] == "CONFIRMED":
            assert all(payment["status"] == "CAPTURED" for payment in p["payments"])
            assert [(ledger["state"], ledger["amount"]) for ledger in p["ledgers"]] == [
                ("CAPTURED", amount) for amount in p["amounts"]]
            assert p["reservation"]["status"] == "COMMITTED"

    # Redemptions never exceed either limit; a coupon's count is exactly its held and committed redemptions
    # (committed: the confirmed orders; held: only parked sagas, once everything has ended), and so is each
    # customer's.
    for name, code in batch.codes.items():
        _, _, limit, per_customer = COUPONS[name]
        coupon = batch.target.coupon(code)
        using = [p for p in placed if p["spec"]["coupon"] == name]
        holding = [p for p in using if (p.get("redemption") or {}).get("status") in ("HELD", "COMMITTED")]
        for p in holding:  # a compensated order holds no redemption
            assert p["order_id"] in done or p["order_id"] in parked, (p["spec"], p["redemption"])
        for p in using:  # a confirmed order's redemption is committed
            if p["order_id"] in done:
                assert p["redemption"]["status"] == "COMMITTED", (p["spec"], p["redemption"])
        assert coupon["redeemed"] == len(holding) <= limit, name
        for n in range(CUSTOMERS):
            held = sum(p["customer"] == f"invariants-{n}" for p in holding)
            assert batch.target.coupon_use(code, batch.target.sign_in(f"invariants-{n}")[1]) == held <= per_customer

    # Exactly one outcome event per finished saga: the one of the status it ended in; and SagaParked once for a
    # saga that was parked before its redrive finished it.
    expected = {f"{p['order_id']}/{ENDED[p['order']['saga_status']]}" for p in placed} | {
        f"{p['order_id']}/SagaParked" for p in placed if "parked_error" in p}
    seen = batch.outcome_events(expected)
    missing, unexpected = sorted(expected - set(seen)), sorted(set(seen) - expected)
    assert (missing, unexpected) == ([], []), f"{len(missing)} missing, {len(unexpected)} unexpected outcome events"
    # A delivery repeated (a PutEvents whose answer was lost, retried with its batch) carries the same id: what
    # the documented at-least-once rule is for (docs/events.md). Counted, and reported at the end.
    REPEATED.update(event_id for event_id, n in seen.items() if n > 1)

    # For every item: initial stock = available + reserved + sold, and reserved / sold are exactly what the
    # reservations hold (reserved only by parked sagas once everything has ended).
    reserved, sold = Counter(), Counter()
    for p in placed:
        reservation = p["reservation"] or {}
        for line in reservation.get("lines", []):
            if reservation["status"] == "RESERVED":
                assert p["order_id"] in parked, p["spec"]
                reserved[line["sku"]] += line["quantity"]
            elif reservation["status"] == "COMMITTED":
                assert p["order"]["saga_status"] == "COMPLETED" or p["order_id"] in parked, p["spec"]
                sold[line["sku"]] += line["quantity"]
    for sku in batch.skus:
        stock = batch.target.stock(sku)
        assert stock["available"] + stock["reserved"] + stock["sold"] == batch.initial[sku]
        assert min(stock["available"], stock["reserved"], stock["sold"]) >= 0
        assert (stock["reserved"], stock["sold"]) == (reserved[sku], sold[sku]), sku

    # Each Idempotency-Key started one execution and charged at most once.
    names = Counter(e["name"] for e in paginate(batch.target.client("stepfunctions").list_executions, "executions",
                                                stateMachineArn=batch.target.outputs["StateMachineArn"]))
    for p in placed:
        assert names[p["order_id"]] == 1, p["spec"]


@settings(max_examples=BATCHES, deadline=None, phases=[Phase.generate], database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=batches)
def test_invariants_hold_after_every_batch(target, faults, batch):
    stock_levels, orders = batch
    run = Batch(target, faults, stock_levels, orders)
    placed = run.run()
    SAGAS_RUN.append(len(placed))
    OUTCOMES.update(f"{p['order']['saga_status']} {p['error'] or ''}".strip() for p in placed)
    OUTCOMES.update("duplicate submissions" for p in placed for _ in range(p["spec"]["duplicates"]))
    OUTCOMES.update(f"coupon {p['spec']['coupon']}" for p in placed if p["spec"]["coupon"])
    OUTCOMES.update(f"paid with {p['spec']['methods']} methods" for p in placed if p["spec"]["methods"] > 1)
    OUTCOMES.update(f"fault {p['spec']['fault'][1]['action']}"
                    f"{' ' + p['spec']['fault'][1]['error'] if p['spec']['fault'][1].get('error') else ''}"
                    for p in placed if p["spec"]["fault"])
    check_invariants(run, placed)


def test_every_batch_ran_all_its_sagas(target, faults):
    if not SAGAS_RUN:
        pytest.fail("the invariants test did not run (run the whole file)")
    assert sum(SAGAS_RUN) >= BATCHES * ORDERS_PER_BATCH, f"only {sum(SAGAS_RUN)} sagas ran"
    print(f"\n{sum(SAGAS_RUN)} sagas in {len(SAGAS_RUN)} batches; {len(REPEATED)} outcome events delivered more "
          f"than once (same event_id); {len(RECONCILED)} authorizations left behind voided by the reaper's "
          f"reconciliation; {len(PARKED_AND_REDRIVEN)} parked sagas finished by a redrive; outcomes:")
    for outcome, n in sorted(OUTCOMES.items()):
        print(f"  {n:5d}  {outcome}")
