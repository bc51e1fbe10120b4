"""Leases, fencing and the reaper on the embedded local stack, with periods shortened by configuration.

The stack here is started with parameter overrides (what `sam deploy --parameter-overrides` would set)
and runs the reaper on its schedule every second instead of every minute.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from order_saga.dynamo import from_ddb, to_ddb
from order_saga.gateway import LEDGER_PREFIX
from sagalocal.scenarios import http
from sagalocal.timeline import history, state_path, wait_for_execution
from tests.stack.conftest import start_embedded, stop

LEASE = 3
HANG = 12  # the fake gateway's tok_hang: longer than AuthorizePayment's 10 s task timeout
OVERRIDES = [f"LeaseSeconds={LEASE}", "SagaDeadlineSeconds=60", f"ReservationTtlSeconds={LEASE}",
             f"FakeGatewayHangSeconds={HANG}", "AuthorizePaymentTimeout=30"]


@pytest.fixture(scope="module")
def leased(tmp_path_factory, target):
    if not target.embedded:
        pytest.skip("these tests shorten the stack's periods: they run on the embedded stack")
    process, stack = start_embedded(tmp_path_factory.mktemp("leased"), "--schedule-seconds", "1",
                                    "--parameter-overrides", *OVERRIDES)
    try:
        yield stack
    finally:
        stop(process)


@pytest.fixture(scope="module")
def long_lease(tmp_path_factory, target):
    """A lease longer than the gateway's hang: the execution itself times out and compensates."""
    if not target.embedded:
        pytest.skip("these tests shorten the stack's periods: they run on the embedded stack")
    overrides = [f"FakeGatewayHangSeconds={HANG}", "AuthorizePaymentTimeout=30", "LeaseSeconds=60"]
    process, stack = start_embedded(tmp_path_factory.mktemp("long-lease"), "--parameter-overrides", *overrides)
    try:
        yield stack
    finally:
        stop(process)


def get(stack, output, **key):
    resp = stack.client("dynamodb").get_item(TableName=stack.outputs[output], Key=to_ddb(key), ConsistentRead=True)
    return from_ddb(resp["Item"]) if "Item" in resp else None


def stock(stack, sku="MUG-BLUE"):
    item = get(stack, "InventoryTableName", pk=f"SKU#{sku}", sk="STOCK")
    return item["available"], item["reserved"], item["sold"]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not true after {timeout} s (last: {last})")


def place(stack, token, quantity=1):
    body = json.dumps({"customer_id": "cust-lease", "items": [{"sku": "MUG-BLUE", "quantity": quantity}],
                       "payment_token": token}).encode()
    status, accepted = http("POST", f"{stack.api_url}/orders", body, {"Idempotency-Key": uuid.uuid4().hex})
    assert status == 202, accepted
    return accepted


def test_two_executions_racing_for_one_order_one_proceeds_one_is_refused(leased):
    sfn = leased.client("stepfunctions")
    order_id = "ord_race_" + uuid.uuid4().hex[:8]
    before = stock(leased)
    saga = json.dumps({"order_id": order_id, "customer_id": "racer",
                       "items": [{"sku": "MUG-BLUE", "quantity": 1}], "payment_token": "tok_approve"})
    arns = [None, None]

    def start(i):
        arns[i] = sfn.start_execution(stateMachineArn=leased.outputs["StateMachineArn"],
                                      name=f"{order_id}-{i}", input=saga)["executionArn"]

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = sorted((wait_for_execution(sfn, arn, 60)["status"], arn) for arn in arns)
    (failed, loser), (succeeded, winner) = outcomes
    assert (failed, succeeded) == ("FAILED", "SUCCEEDED")
    assert sfn.describe_execution(executionArn=loser)["error"] == "OrderLocked"
    assert state_path(history(sfn, loser)) == ["CreateOrder", "OrderLocked"]
    assert get(leased, "OrdersTableName", order_id=order_id)["lease_owner"] == winner
    assert stock(leased)[0] == before[0] - 1  # reserved and sold once
    ledger = get(leased, "PaymentsTableName", payment_id=LEDGER_PREFIX + order_id)
    assert (ledger["state"], ledger["amount"]) == ("CAPTURED", 1250)


def test_an_execution_stopped_mid_saga_is_compensated_within_one_lease_period(leased):
    sfn = leased.client("stepfunctions")
    before = stock(leased)
    accepted = place(leased, "tok_hang")
    order_id = accepted["order_id"]
    wait_until(lambda: (get(leased, "PaymentsTableName", payment_id=order_id) or {}).get("status") == "AUTHORIZING",
               30, "AuthorizePayment started")
    sfn.stop_execution(executionArn=accepted["execution_arn"], error="Operator", cause="stopped by the test")
    stopped = time.monotonic()
    order = wait_until(lambda: (o := get(leased, "OrdersTableName", order_id=order_id))["saga_status"] ==
                       "COMPENSATED" and o, LEASE + 10, "compensated by the reaper")
    took = time.monotonic() - stopped
    # The lease was renewed when AuthorizePayment started, before the stop; the reaper sweeps every second.
    assert took <= LEASE + 2, f"compensated {took:.1f} s after the stop"
    assert order["lease_owner"].startswith("reaper:")
    assert order["steps"]["Reaper"]["error"] == "LeaseExpired"
    assert stock(leased) == before
    # The stopped execution's Lambda still answers (after HANG s): its late authorization must not hold money.
    wait_until(lambda: (get(leased, "PaymentsTableName", payment_id=LEDGER_PREFIX + order_id) or {}).get("state")
               == "VOIDED", HANG + 10, "the late authorization voided at the gateway")
    assert get(leased, "PaymentsTableName", payment_id=order_id)["status"] == "VOIDED"


def test_a_payment_completing_after_its_task_timed_out_and_after_void_leaves_no_money(long_lease):
    leased = long_lease
    sfn = leased.client("stepfunctions")
    before = stock(leased)
    accepted = place(leased, "tok_hang")
    order_id = accepted["order_id"]
    described = wait_for_execution(sfn, accepted["execution_arn"], 60)
    path = state_path(history(sfn, accepted["execution_arn"]))
    assert described["error"] == "Saga.Timeout"  # the 10 s task timeout, with the Lambda still running
    assert path == ["CreateOrder", "ReserveInventory", "AuthorizePayment", "VoidPayment", "ReleaseInventory",
                    "CancelOrder", "SagaCompensated"]
    assert get(leased, "PaymentsTableName", payment_id=order_id)["status"] == "VOIDED"  # before the answer
    # Now the gateway answers (HANG s after the call): the authorization lands nowhere and is voided.
    wait_until(lambda: (e := get(leased, "PaymentsTableName", payment_id=LEDGER_PREFIX + order_id))
               and e.get("state") in ("VOIDED", "CAPTURED", "AUTHORIZED"), HANG + 10, "the gateway answered")
    time.sleep(0.5)  # the late handler's own void, right after its refused write
    ledger = get(leased, "PaymentsTableName", payment_id=LEDGER_PREFIX + order_id)
    assert ledger["state"] == "VOIDED"
    assert get(leased, "PaymentsTableName", payment_id=order_id)["status"] == "VOIDED"
    assert get(leased, "OrdersTableName", order_id=order_id)["saga_status"] == "COMPENSATED"
    assert stock(leased) == before


def test_an_expired_reservation_returns_its_stock_once_even_with_two_reapers(leased):
    before = stock(leased)
    accepted = place(leased, "tok_hang", quantity=2)
    order_id = accepted["order_id"]
    wait_until(lambda: get(leased, "InventoryTableName", pk=f"ORDER#{order_id}", sk="RESERVATION"), 30,
               "reserved")
    assert stock(leased)[0] == before[0] - 2
    lam = leased.client("lambda")
    results = []

    def reap():
        payload = lam.invoke(FunctionName="order-saga-ReaperFunction", Payload=b"{}")["Payload"].read()
        results.append(json.loads(payload))

    time.sleep(LEASE + 0.2)
    reapers = [threading.Thread(target=reap) for _ in range(2)]
    for thread in reapers:
        thread.start()
    for thread in reapers:
        thread.join()
    assert all("errorType" not in r for r in results), results
    wait_until(lambda: get(leased, "InventoryTableName", pk=f"ORDER#{order_id}", sk="RESERVATION")["status"]
               == "RELEASED", 10, "released")
    assert stock(leased) == before  # back once: not twice, whoever released it
    released_by_us = sum(order_id in r["released_reservations"] for r in results)
    assert released_by_us <= 1
    wait_for_execution(leased.client("stepfunctions"), accepted["execution_arn"], 60)
    assert stock(leased) == before
