"""The saga's guarantees under random faults: property-based batches of concurrent orders on the stack.

Hypothesis draws each batch: stock levels for three fresh items, then orders with random lines, test
cards (approve, decline, transient failures that recover or exhaust), duplicate submissions, and faults:
Lambda faults at random forward steps and compensations (transient errors, crash after write, added delay,
timeout) and DynamoDB faults at random steps (transaction conflicts, throttling, internal errors, writes
whose response is lost). The faults are sagafaults rules scoped to the order, so the run works on any stack
deployed with FaultInjection=true. A batch runs concurrently; afterwards the invariants below must hold for
every order of the batch. At least 1,000 sagas run per session (BATCHES x ORDERS_PER_BATCH).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from order_saga.models import order_id_for
from sagalocal.timeline import paginate
from tests.stack.support import post_order, wait_all

BATCHES, ORDERS_PER_BATCH = 5, 200
SKUS = 3
PRICES = (300, 1100, 2500)
FORWARD = ("CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder")
COMPENSATIONS = ("VoidPayment", "RefundPayment", "ReleaseInventory", "CancelOrder")
STEPS = FORWARD + COMPENSATIONS
SAGAS_RUN: list[int] = []
OUTCOMES: Counter[str] = Counter()

tokens = st.sampled_from(["tok_approve"] * 6 + ["tok_decline", "tok_transient_1", "tok_transient_2",
                                                 "tok_transient_4"])
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
    "timeout": st.tuples(st.sampled_from(("CreateOrder", "ReserveInventory")), timeout_fault),
}
fault = st.sampled_from(["none"] * 11 + ["forward"] * 4 + ["dynamodb"] * 3 + ["compensation", "timeout"]).flatmap(
    FAULT_KINDS.__getitem__)
order = st.fixed_dictionaries({
    "lines": st.lists(st.tuples(st.integers(0, SKUS - 1), st.integers(1, 3)), min_size=1, max_size=SKUS,
                      unique_by=lambda line: line[0]),
    "token": tokens,
    "fault": fault,
    "duplicates": st.sampled_from([0] * 8 + [1, 2]),
})
# Stock from sold out to plenty: about 700 units are ordered per batch across the three items.
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

    def place(self, spec) -> dict:
        key = uuid.uuid4().hex
        order_id = order_id_for(self.target.sign_in("invariants")[1], key)
        if spec["fault"] is not None:
            step, rule = spec["fault"]
            self.rules.append(self.faults.add({**rule, "function": step, "order_id": order_id}))
        body = json.dumps({"items": [{"sku": self.skus[i], "quantity": q} for i, q in spec["lines"]],
                           "payment_token": spec["token"]}).encode()
        submit = lambda _: post_order(self.target, body, key, timeout=120, customer="invariants")  # noqa: E731
        with ThreadPoolExecutor(max_workers=1 + spec["duplicates"]) as pool:  # duplicates race the original
            answers = list(pool.map(submit, range(1 + spec["duplicates"])))
        assert all(status == 202 for status, _ in answers), answers
        assert all(payload == answers[0][1] for _, payload in answers), "a resubmission answered differently"
        assert answers[0][1]["order_id"] == order_id
        return {"key": key, "order_id": order_id, "arn": self.target.execution_arn(order_id), "spec": spec}

    def run(self) -> list[dict]:
        with ThreadPoolExecutor(max_workers=32) as pool:
            placed = list(pool.map(self.place, self.orders))
        ended = wait_all(self.target, [p["arn"] for p in placed], timeout=400)
        for rule in self.rules:
            self.faults.remove(rule)
        for p in placed:
            p["status"], p["error"] = ended[p["arn"]]["status"], ended[p["arn"]].get("error")
            p["order"] = self.target.order(p["order_id"])
            p["payment"] = self.target.payment(p["order_id"])
            p["ledger"] = self.target.ledger(p["order_id"])
            p["reservation"] = self.target.reservation(p["order_id"])
        return placed

    def parked_messages(self, order_ids: set[str]) -> set[str]:
        """This batch's messages on the parked-sagas queue (read, then deleted)."""
        sqs = self.target.client("sqs")
        url = self.target.outputs["ParkedSagasQueueUrl"]
        found: set[str] = set()
        for _ in range(60):
            if found == order_ids:
                break
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                                           VisibilityTimeout=30, WaitTimeSeconds=1).get("Messages", [])
            for message in messages:
                order_id = message["MessageAttributes"]["order_id"]["StringValue"]
                if order_id in order_ids:
                    found.add(order_id)
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return found


def check_invariants(batch: Batch, placed: list[dict]) -> None:
    parked = {p["order_id"] for p in placed if p["order"] and p["order"]["saga_status"] == "FAILED"}
    completed = [p for p in placed if p["order"] and p["order"]["saga_status"] == "COMPLETED"]

    # Every saga ended: COMPLETED (the execution succeeded), COMPENSATED, or FAILED and parked on the queue.
    for p in placed:
        status = p["order"]["saga_status"]
        assert status in ("COMPLETED", "COMPENSATED", "FAILED"), (p["spec"], status)
        assert (status == "COMPLETED") == (p["status"] == "SUCCEEDED"), (p["spec"], p["status"], p["error"])
        if status == "FAILED":
            assert p["error"] == "CompensationFailed", (p["spec"], p["error"])
            assert p["order"]["steps"]["ParkSaga"]["status"] == "SUCCEEDED"
    assert batch.parked_messages(parked) == parked

    # Money captured equals the confirmed orders' totals; nothing authorized is left dangling.
    captured = sum(p["ledger"]["amount"] for p in placed
                   if p["ledger"] and p["ledger"].get("state") == "CAPTURED" and p["order_id"] not in parked)
    assert captured == sum(p["order"]["total"] for p in completed)
    for p in placed:
        if p["order_id"] in parked:
            continue
        assert (p["ledger"] or {}).get("state") in (None, "DECLINED", "VOIDED", "REFUNDED", "CAPTURED"), p["spec"]
        assert (p["payment"] or {}).get("status") in ("PENDING", "DECLINED", "VOIDED", "REFUNDED", "CAPTURED")

    # No CONFIRMED order without a captured payment and a committed reservation.
    for p in placed:
        if p["order"]["status"] == "CONFIRMED":
            assert p["payment"]["status"] == "CAPTURED"
            assert (p["ledger"]["state"], p["ledger"]["amount"]) == ("CAPTURED", p["order"]["total"])
            assert p["reservation"]["status"] == "COMMITTED"

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
    OUTCOMES.update(f"fault {p['spec']['fault'][1]['action']}"
                    f"{' ' + p['spec']['fault'][1]['error'] if p['spec']['fault'][1].get('error') else ''}"
                    for p in placed if p["spec"]["fault"])
    check_invariants(run, placed)


def test_at_least_1000_sagas_ran(target, faults):
    if not SAGAS_RUN:
        pytest.fail("the invariants test did not run (run the whole file)")
    assert sum(SAGAS_RUN) >= 1000, f"only {sum(SAGAS_RUN)} sagas ran"
    print(f"\n{sum(SAGAS_RUN)} sagas in {len(SAGAS_RUN)} batches; outcomes:")
    for outcome, n in sorted(OUTCOMES.items()):
        print(f"  {n:5d}  {outcome}")
