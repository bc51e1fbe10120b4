"""The saga's guarantees under random faults: property-based batches of concurrent orders on the stack.

Hypothesis draws each batch: stock levels for three fresh items, then orders with random lines, test
cards (approve, decline, transient failures that recover or exhaust), duplicate submissions, and faults
injected at random forward steps and compensations (throttling, crash after write, delay, timeout).
A batch runs concurrently; afterwards the invariants below must hold for every order of the batch.
At least 1,000 sagas run per session (BATCHES x ORDERS_PER_BATCH).
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

from order_saga.dynamo import from_ddb, to_ddb
from order_saga.gateway import LEDGER_PREFIX
from order_saga.inventory import Inventory
from order_saga.models import order_id_for
from sagalocal.scenarios import http
from sagalocal.timeline import running_executions

BATCHES, ORDERS_PER_BATCH = 20, 50
SKUS = 3
PRICES = (300, 1100, 2500)
FORWARD = ("CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder")
COMPENSATIONS = ("VoidPayment", "RefundPayment", "ReleaseInventory", "CancelOrder")
SAGAS_RUN: list[int] = []
OUTCOMES: Counter[str] = Counter()

tokens = st.sampled_from(["tok_approve"] * 6 + ["tok_decline", "tok_transient_1", "tok_transient_2",
                                                 "tok_transient_4"])
forward_fault = st.sampled_from([
    {"action": "throttle", "count": 1}, {"action": "throttle", "count": 2}, {"action": "throttle", "count": 4},
    {"action": "error-after"}, {"action": "delay", "delay_seconds": 0.05},
])
timeout_fault = st.just({"action": "delay", "delay_seconds": 60})
compensation_fault = st.sampled_from([
    {"action": "throttle", "count": 1}, {"action": "error-after"},
    {"action": "throttle", "count": 4},  # spends the retry budget: the saga is parked
])
# About 60% no fault, 25% a forward fault, 10% a compensation fault, 5% a timeout (the slowest kind: a 4 s
# Lambda timeout). The weights come from sampled_from (one_of would treat repeated branches as one).
FAULT_KINDS = {
    "none": st.none(),
    "forward": st.tuples(st.sampled_from(FORWARD), forward_fault),
    "compensation": st.tuples(st.sampled_from(COMPENSATIONS), compensation_fault),
    "timeout": st.tuples(st.sampled_from(("CreateOrder", "ReserveInventory")), timeout_fault),
}
fault = st.sampled_from(["none"] * 12 + ["forward"] * 5 + ["compensation"] * 2 + ["timeout"]).flatmap(
    FAULT_KINDS.__getitem__)
order = st.fixed_dictionaries({
    "lines": st.lists(st.tuples(st.integers(0, SKUS - 1), st.integers(1, 3)), min_size=1, max_size=SKUS,
                      unique_by=lambda line: line[0]),
    "token": tokens,
    "fault": fault,
    "duplicates": st.sampled_from([0] * 8 + [1, 2]),
})
# Stock from sold out to plenty: about 170 units are ordered per batch across the three items.
batches = st.tuples(st.lists(st.sampled_from([0, 20, 60, 120, 200]), min_size=SKUS, max_size=SKUS),
                    st.lists(order, min_size=ORDERS_PER_BATCH, max_size=ORDERS_PER_BATCH))



class Batch:
    def __init__(self, target, stock_levels, orders):
        self.target = target
        self.ddb = target.client("dynamodb")
        self.sfn = target.client("stepfunctions")
        run = uuid.uuid4().hex[:8]
        self.skus = [f"INV-{run}-{i}" for i in range(SKUS)]
        self.initial = dict(zip(self.skus, stock_levels, strict=True))
        self.orders = orders
        inventory = Inventory(self.ddb, target.outputs["InventoryTableName"])
        for sku, level, price in zip(self.skus, stock_levels, PRICES, strict=True):
            inventory.put_item(sku, sku, price, "USD", level)

    def get(self, output, **key):
        resp = self.ddb.get_item(TableName=self.target.outputs[output], Key=to_ddb(key), ConsistentRead=True)
        return from_ddb(resp["Item"]) if "Item" in resp else None

    def place(self, spec) -> dict:
        key = uuid.uuid4().hex
        order_id = order_id_for(key)
        if spec["fault"] is not None:
            step, rule = spec["fault"]
            rule = {"function": step + "Function", "order_id": order_id, **rule}
            status, body = http("POST", f"{self.target.api_url}/_sagalocal/faults", json.dumps(rule).encode())
            assert status == 201, body
        body = json.dumps({"customer_id": "invariants",
                           "items": [{"sku": self.skus[i], "quantity": q} for i, q in spec["lines"]],
                           "payment_token": spec["token"]}).encode()
        submit = lambda _: http("POST", f"{self.target.api_url}/orders", body, {"Idempotency-Key": key},  # noqa: E731
                                timeout=120)
        with ThreadPoolExecutor(max_workers=1 + spec["duplicates"]) as pool:  # duplicates race the original
            answers = list(pool.map(submit, range(1 + spec["duplicates"])))
        accepted = [payload for status, payload in answers if status == 202]
        # A duplicate may meet the first request still in progress (409); none may start a second saga.
        assert all(status in (202, 409) for status, _ in answers), answers
        assert accepted, answers
        assert all(a == accepted[0] for a in accepted), "a resubmission answered differently"
        return {"key": key, "order_id": order_id, "arn": accepted[0]["execution_arn"], "spec": spec}

    def run(self) -> list[dict]:
        with ThreadPoolExecutor(max_workers=16) as pool:
            placed = list(pool.map(self.place, self.orders))
        deadline = time.monotonic() + 300
        ours = {p["arn"] for p in placed}
        while ours & running_executions(self.sfn, self.target.outputs["StateMachineArn"]):
            assert time.monotonic() < deadline, "sagas still running after 300 s"
            time.sleep(0.5)
        for p in placed:
            described = self.sfn.describe_execution(executionArn=p["arn"])
            p["status"], p["error"] = described["status"], described.get("error")
            p["order"] = self.get("OrdersTableName", order_id=p["order_id"])
            p["payment"] = self.get("PaymentsTableName", payment_id=p["order_id"])
            p["ledger"] = self.get("PaymentsTableName", payment_id=LEDGER_PREFIX + p["order_id"])
            p["reservation"] = self.get("InventoryTableName", pk=f"ORDER#{p['order_id']}", sk="RESERVATION")
        return placed

    def parked_messages(self, order_ids: set[str]) -> set[str]:
        """Read (and delete) this batch's messages from the parked-sagas queue."""
        sqs = self.target.client("sqs")
        url = self.target.outputs["ParkedSagasQueueUrl"]
        found: set[str] = set()
        for _ in range(50):
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                                           VisibilityTimeout=30).get("Messages", [])
            if not messages:
                break
            for message in messages:
                order_id = message["MessageAttributes"]["order_id"]["StringValue"]
                if order_id in order_ids:
                    found.add(order_id)
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return found


def check_invariants(batch: Batch, placed: list[dict]) -> None:
    parked = {p["order_id"] for p in placed if p["order"] and p["order"]["saga_status"] == "FAILED"}
    completed = [p for p in placed if p["order"] and p["order"]["saga_status"] == "COMPLETED"]

    # Every saga that did not complete is COMPENSATED, or FAILED and parked (its state on the queue).
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
        assert (p["payment"] or {}).get("status") in (None, "DECLINED", "VOIDED", "REFUNDED", "CAPTURED")

    # No CONFIRMED order without a captured payment and a committed reservation.
    for p in placed:
        if p["order"]["status"] == "CONFIRMED":
            assert p["payment"]["status"] == "CAPTURED"
            assert (p["ledger"]["state"], p["ledger"]["amount"]) == ("CAPTURED", p["order"]["total"])
            assert p["reservation"]["status"] == "COMMITTED"

    # For every item: initial stock = available + reserved + sold, and reserved / sold are exactly
    # what the reservations hold (reserved only by parked sagas once everything has ended).
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
        stock = batch.get("InventoryTableName", pk=f"SKU#{sku}", sk="STOCK")
        assert stock["available"] + stock["reserved"] + stock["sold"] == batch.initial[sku]
        assert min(stock["available"], stock["reserved"], stock["sold"]) >= 0
        assert (stock["reserved"], stock["sold"]) == (reserved[sku], sold[sku]), sku

    # Each Idempotency-Key started one execution and charged at most once.
    names = Counter()
    token = None
    while True:
        page = batch.sfn.list_executions(stateMachineArn=batch.target.outputs["StateMachineArn"],
                                         **({"nextToken": token} if token else {}))
        names.update(e["name"] for e in page["executions"])
        token = page.get("nextToken")
        if not token:
            break
    for p in placed:
        assert names[p["order_id"]] == 1, p["spec"]


@pytest.fixture(scope="module")
def embedded(target):
    if not target.embedded:
        pytest.skip("random faults are injected through the embedded stack's fault API")
    return target


@settings(max_examples=BATCHES, deadline=None, phases=[Phase.generate], database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=batches)
def test_invariants_hold_after_every_batch(embedded, batch):
    stock_levels, orders = batch
    run = Batch(embedded, stock_levels, orders)
    placed = run.run()
    SAGAS_RUN.append(len(placed))
    OUTCOMES.update(f"{p['order']['saga_status']} {p['error'] or ''}".strip() for p in placed)
    OUTCOMES.update("duplicate submissions" for p in placed for _ in range(p["spec"]["duplicates"]))
    OUTCOMES.update(f"fault {p['spec']['fault'][1]['action']} at {p['spec']['fault'][0]}"
                    for p in placed if p["spec"]["fault"])
    check_invariants(run, placed)


def test_at_least_1000_sagas_ran(embedded):
    assert sum(SAGAS_RUN) >= 1000, f"only {sum(SAGAS_RUN)} sagas ran"
    print(f"\n{sum(SAGAS_RUN)} sagas in {len(SAGAS_RUN)} batches; outcomes:")
    for outcome, n in sorted(OUTCOMES.items()):
        print(f"  {n:5d}  {outcome}")
