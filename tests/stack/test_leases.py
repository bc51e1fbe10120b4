"""Leases, fencing and the reaper on the embedded local stack, with periods shortened by configuration.

The stack here is started with parameter overrides (what `sam deploy --parameter-overrides` would set)
and runs the reaper on its schedule every second instead of every minute. A deployed stack has its periods
fixed at deploy time, so these tests run on the embedded stack only. Its 3 s lease and reservations break the
timing rules on purpose (half a lease no longer outlasts a retry, a reservation no longer outlives the deadline),
which template.yaml's MinValues refuse on any deploy: it runs a copy of the template with those two minimums lowered
(`relaxed_template`), nothing else changed. (A payment that lands after the saga itself gave up on it, which needs a
lease longer than the gateway's hang, runs on the shared stack: tests/stack/test_reaper_fanout.py.)
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from tests.stack.conftest import relaxed_template, start_embedded, stop
from tests.stack.support import path_of, place, start_direct, wait_for_execution
from tests.stack.support import wait_until as wait_with_backoff

LEASE = 3
# How an execution that did not get the lease ends (error, path): another holds it, or the reaper compensates.
LOCKED = ("OrderLocked", ("ReserveInventory", "OrderLocked"))
REFUSED = {LOCKED, ("OrderNotActive", ("ReserveInventory", "CancelOrder", "SagaCompensated"))}
# tok_hang's processing time: the processor completes the authorization HANG s after the call, after the reaper
# took the stopped saga over and voided it: an authorization left behind, which the reaper's reconciliation voids
# (ReconcileAfterSeconds=1 here). HANG is well past the bound on that takeover (LEASE + 15 s), so the void comes
# first, as the test means it to.
HANG = 30
OVERRIDES = (f"LeaseSeconds={LEASE}", "SagaDeadlineSeconds=60", f"ReservationTtlSeconds={LEASE}",
             f"FakeGatewayHangSeconds={HANG}", "ReconcileAfterSeconds=1")
pytestmark = pytest.mark.embedded_only(reason="shortens LeaseSeconds, ReservationTtlSeconds and the reaper's "
                                              "schedule with parameter overrides, fixed on a deployed stack")


@pytest.fixture(scope="module")
def leased(tmp_path_factory):
    """The stack of short leases and reservations, with a reaper every second."""
    leased_dir = tmp_path_factory.mktemp("leased")
    relaxed = relaxed_template(leased_dir, {"LeaseSeconds": LEASE, "ReservationTtlSeconds": LEASE})
    process, stack = start_embedded(leased_dir, "--schedule-seconds", "1", overrides=OVERRIDES, template=relaxed)
    try:
        yield stack
    finally:
        stop(process)


def stock(stack, sku="MUG-BLUE"):
    item = stack.stock(sku)
    return item["available"], item["reserved"], item["sold"]


def wait_until(read, timeout, what):
    return wait_with_backoff(read, timeout, what, cap=0.1)  # every 0.1 s: these tests measure how long it took


def test_two_executions_racing_for_one_order_one_proceeds_one_is_refused(leased):
    before = stock(leased)  # before the order: its own execution may confirm it before the racers start
    accepted = place(leased, [{"sku": "MUG-BLUE", "quantity": 1}], "tok_approve")
    order_id = accepted["order_id"]
    saga = {"order_id": order_id, "customer_id": leased.sign_in()[1]}
    arns = [None, None]

    def start(i):  # a second execution for the same order, started by hand, races the API's own
        arns[i] = start_direct(leased, f"{order_id}-{i}", saga)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = [wait_for_execution(leased, arn, 60) for arn in [accepted["execution_arn"], *arns]]
    paths = {o["executionArn"]: [v.name for v in path_of(leased, o["executionArn"])] for o in outcomes}
    # At most one execution takes the lease (ReserveInventory's first write); the others are refused there and
    # change nothing: with OrderLocked while the holder runs or has finished, with OrderNotActive once the reaper
    # has begun to compensate the order (their CancelOrder then has nothing of theirs to undo). The reaper stops
    # the execution whose lease it took, wherever that one is (even in a retry of its ReserveInventory).
    ended = {o["executionArn"]: (o.get("error"), tuple(paths[o["executionArn"]])) for o in outcomes}
    holders = [arn for arn, outcome in ended.items() if outcome not in REFUSED]
    assert len(holders) <= 1, paths
    stopped = [o["executionArn"] for o in outcomes if o["status"] == "ABORTED"]
    refused = {arn: outcome for arn, outcome in ended.items() if arn not in holders + stopped}
    order = leased.order(order_id)
    if order["status"] == "CONFIRMED":  # the usual case: it went through
        assert holders == [order["lease_owner"].split("#")[0]], paths  # the owner is <ARN>#<start time>
        assert stopped == [], paths
        assert next(o for o in outcomes if o["executionArn"] == holders[0])["status"] == "SUCCEEDED"
        assert sorted(refused.values()) == [LOCKED] * 2, paths
        assert stock(leased)[2] == before[2] + 1  # sold once
        assert (leased.ledger(order_id)["state"], leased.ledger(order_id)["amount"]) == ("CAPTURED", 1250)
    else:  # on a loaded machine its 3 s lease can run out first: the reaper takes over and nothing is sold
        assert order["saga_status"] == "COMPENSATED", order
        assert stopped in ([], [str(order.get("previous_owner")).split("#")[0]]), (stopped, order)
        assert stock(leased)[2] == before[2]
        assert (leased.ledger(order_id) or {}).get("state") in (None, "VOIDED", "DECLINED")


def test_an_execution_stopped_mid_saga_is_compensated_within_one_lease_period(leased):
    sfn = leased.client("stepfunctions")
    before = stock(leased)
    accepted = place(leased, [{"sku": "MUG-BLUE", "quantity": 1}], "tok_hang")
    order_id = accepted["order_id"]
    # AuthorizePayment has started: its gateway call hangs (the processor's ledger holds it in progress)
    wait_until(lambda: (leased.ledger(order_id) or {}).get("state") == "PROCESSING", 30, "the gateway call hangs")
    sfn.stop_execution(executionArn=accepted["execution_arn"], error="Operator", cause="stopped by the test")
    stopped = time.monotonic()
    order = wait_until(lambda: (o := leased.order(order_id))["saga_status"] == "COMPENSATED" and o, LEASE + 20,
                       "compensated by the reaper")
    took = time.monotonic() - stopped
    # The lease was taken when the saga started; the reaper sweeps every second. Without the takeover at the lease's
    # expiry nothing would compensate it before the saga's deadline (60 s) or the hung call's end (HANG): the bound
    # leaves a loaded machine 15 s for a sweep and a worker, far below both.
    assert took <= LEASE + 15 < min(60, HANG), f"compensated {took:.1f} s after the stop"
    assert order["lease_owner"].startswith("reaper:")
    assert order["steps"]["Reaper"]["error"] == "LeaseExpired"
    assert stock(leased) == before
    # The processor completes the authorization HANG s after the call, after the void: the reaper's
    # reconciliation finds it by the payment's idempotency key and voids it.
    wait_until(lambda: (leased.ledger(order_id) or {}).get("state") == "VOIDED", HANG + 10,
               "the authorization left behind voided at the gateway")
    payment = wait_until(lambda: (p := leased.payment(order_id)).get("reconciled") and p, 10, "reconciled")
    assert (payment["status"], payment["reconciled"]) == ("VOIDED", "reversed")


def test_an_expired_reservation_returns_its_stock_once_even_with_two_reapers(leased):
    before = stock(leased)
    accepted = place(leased, [{"sku": "MUG-BLUE", "quantity": 2}], "tok_hang")
    order_id = accepted["order_id"]
    wait_until(lambda: leased.reservation(order_id), 30, "reserved")
    assert stock(leased)[0] == before[0] - 2
    lam = leased.client("lambda")
    results = []

    def reap():
        # The reaper's reserved concurrency is 1 (the template's), so Lambda throttles the second of two concurrent
        # invocations, on AWS as here: a throttled reaper tries again until it runs, within a deadline.
        deadline = time.monotonic() + 30
        while True:
            try:
                payload = lam.invoke(FunctionName=leased.outputs["ReaperFunctionName"], Payload=b"{}")["Payload"]
            except lam.exceptions.TooManyRequestsException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            results.append(json.loads(payload.read()))
            return

    time.sleep(LEASE + 0.2)
    reapers = [threading.Thread(target=reap) for _ in range(2)]
    for thread in reapers:
        thread.start()
    for thread in reapers:
        thread.join()
    assert len(results) == 2, results  # both reapers ran (a thread that raised would leave its result out)
    assert all("errorType" not in r for r in results), results
    wait_until(lambda: leased.reservation(order_id)["status"] == "RELEASED", 10, "released")
    assert stock(leased) == before  # back once: not twice, whoever released it (two sweeps: two messages)
    wait_for_execution(leased, accepted["execution_arn"], 60)
    assert stock(leased) == before


def test_an_order_whose_execution_never_starts_is_cancelled_by_the_reaper(leased):
    """The API wrote the order, then the saga never started (a crash between the two): no stock, no money."""
    from order_saga.models import order_id_for

    key = uuid.uuid4().hex
    order_id = order_id_for(leased.sign_in()[1], key)
    # Write what the API writes, without starting the execution: an operator's StartExecution never came.
    store_order(leased, order_id)
    order = wait_until(lambda: (o := leased.order(order_id))["saga_status"] == "COMPENSATED" and o, LEASE + 10,
                       "cancelled by the reaper")
    assert order["status"] == "CANCELLED"
    assert leased.payment(order_id)["status"] == "VOIDED"


def store_order(stack, order_id: str) -> None:

    from order_saga.config import Timing
    from order_saga.dynamo import now_ms
    from order_saga.models import PricedLine
    from order_saga.orders import Orders
    from order_saga.payments import Payments
    from order_saga.store import Store

    store = Store(stack.client("dynamodb"))
    timing = Timing(lease_ms=LEASE * 1000, deadline_ms=60_000, reservation_ttl_ms=LEASE * 1000, shards=10)
    orders = Orders(store, stack.outputs["OrdersTableName"], timing)
    now = now_ms()
    line = PricedLine(sku="MUG-BLUE", quantity=1, unit_price=1250)
    order = orders.new_order(order_id, "cust-stack", [{"sku": "MUG-BLUE", "quantity": 1}], [line], 1250, "USD",
                             "arn:none", "digest", now)
    payment = Payments(store, stack.outputs["PaymentsTableName"]).put_new(order_id, 1, "tok_approve", 1250, "USD", now)
    assert store.transact({"order": orders.put_new(order), "payment:1": payment}) is None
