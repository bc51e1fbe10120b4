"""The reaper on a stack (docs/operations.md, "The reaper").

Its fan-out: a backlog of abandoned sagas, queued by one sweep, drained by ReaperWorker through ReaperQueue's event
source mapping, every one to an allowed end with the stock and the money intact; and a duplicate message for each
changes nothing. Not timed: bench/reaper_drain.py measures the drain.

Its reconciliation of a payment that completes after the saga itself gave up on it (the gateway's client timed out,
the saga compensated): the authorization that lands later is found by the payment's key and voided. Its order is
placed when this module starts (`late_payment`), so that the processor's SLOW seconds pass while the fan-out drains.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.stack.conftest import DEPLOYED, abandon
from tests.stack.support import path_of, place, wait_for_execution, wait_until

ABANDONED = 30
# The late payment's processing time (tok_slow_<S>, the fake gateway's card): the gateway client gives up after
# GatewayTimeoutSeconds (3 s) with an unknown outcome, the saga compensates, and the processor completes the
# authorization SLOW s after the call: an authorization left behind, which the reaper's reconciliation voids
# (ReconcileAfterSeconds=1 on the test stacks). SLOW is longer than AuthorizePayment's whole retry budget takes on a
# loaded machine (4 attempts of 3 s, up to 7 s of backoff, the invocations' own time): with 10 s a late retry could
# find the authorization landed, and the saga then rightly confirmed the order instead of compensating it. The
# stack's lease (LeaseSeconds, 45 s by default) outlasts that budget, so the execution itself gives up, not the reaper.
SLOW = 30


@pytest.fixture(scope="module", autouse=True)
def late_payment(target):
    """The late payment's order, placed first: a catalog item of its own (its stock checked exactly), the clock read
    before the request (the saga may reach the gateway before the 202 reaches us); and, in a thread, what the saga
    left the moment it ended (a sweep of the reaper's schedule may reconcile the payment any time after)."""
    if DEPLOYED:
        yield None  # (its test runs on the embedded stack only)
        return
    sku = "LATE-" + uuid.uuid4().hex[:10].upper()
    target.add_item(sku, 1250, 5)
    before = units(target, sku)
    called = time.time()
    accepted = place(target, [{"sku": sku, "quantity": 1}], f"tok_slow_{SLOW}")

    def when_ended() -> dict:
        described = wait_for_execution(target, accepted["execution_arn"], 60)
        order_id = accepted["order_id"]
        return {"described": described, "payment": target.payment(order_id), "ledger": target.ledger(order_id),
                "path": [v.name for v in path_of(target, accepted["execution_arn"])]}

    with ThreadPoolExecutor(max_workers=1) as pool:
        ended = pool.submit(when_ended)
        yield {"sku": sku, "before": before, "called": called, "accepted": accepted, "ended": ended}


def in_queue(target) -> int:
    got = target.client("sqs").get_queue_attributes(
        QueueUrl=target.outputs["ReaperQueueUrl"], AttributeNames=["ApproximateNumberOfMessages",
                                                                    "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in got["Attributes"].values())


def test_a_backlog_of_abandoned_sagas_drains_to_compensated_and_a_duplicate_changes_nothing(target):
    before = target.stock("MUG-BLUE")
    ids = [abandon(target, with_payment=True) for _ in range(ABANDONED)]
    seen = {order_id: int(target.order(order_id)["lease_expires_at"]) for order_id in ids}  # as a sweep reads it
    swept = json.loads(target.client("lambda").invoke(FunctionName=target.outputs["ReaperFunctionName"],
                                                      Payload=b"{}")["Payload"].read())
    assert "errorType" not in swept, swept
    assert swept["refused"] == [], swept
    # (the schedule's own sweeps may have queued some first: the sweep finds what is still due)
    for order_id in ids:
        wait_until(lambda o=order_id: (target.order(o) or {}).get("saga_status") == "COMPENSATED", 120,
                   f"{order_id} compensated by ReaperWorker")
    for order_id in ids:
        order = target.order(order_id)
        assert (order["status"], order["saga_status"]) == ("CANCELLED", "COMPENSATED")
        assert order["lease_owner"].startswith("reaper:")
        assert order["steps"]["Reaper"]["error"] == "LeaseExpired"
        assert target.payment(order_id)["status"] == "VOIDED"  # the card never charged
        assert target.reservation(order_id)["status"] == "RELEASED"
    # Every unit is somewhere (a scheduled sweep may meanwhile release another test's expired reservation, which
    # moves units from reserved to available), and none was sold.
    after = target.stock("MUG-BLUE")
    assert sum(after[k] for k in ("available", "reserved", "sold")) == sum(
        before[k] for k in ("available", "reserved", "sold"))
    assert after["sold"] == before["sold"]
    # No execution ever took an abandoned order's lease, so nothing says its PENDING payment was never sent: the
    # worker voided it at the gateway and marked it for reconciliation, which a later scheduled sweep does (a change the
    # duplicates below must not be blamed for): wait for it first.
    wait_until(lambda: not any("reconcile" in (target.payment(o) or {}) for o in ids), 120,
               "every voided payment reconciled by the schedule's sweeps")
    # Standard queues deliver at least once: the very messages again, for every order.
    snapshot = {order_id: (target.order(order_id), target.payment(order_id), target.reservation(order_id))
                for order_id in ids}
    sqs = target.client("sqs")
    for start in range(0, len(ids), 10):
        sqs.send_message_batch(QueueUrl=target.outputs["ReaperQueueUrl"], Entries=[
            {"Id": str(n), "MessageBody": json.dumps({"kind": kind, "id": order_id, **extra})}
            for n, (order_id, kind, extra) in enumerate(
                (o, k, {"lease_expires_at": seen[o]} if k == "order" else {})
                for o in ids[start:start + 5] for k in ("order", "reservation"))])
    wait_until(lambda: in_queue(target) == 0, 60, "the duplicates taken from ReaperQueue")
    time.sleep(0.5)  # the last invocation's writes, had it made any
    assert {order_id: (target.order(order_id), target.payment(order_id), target.reservation(order_id))
            for order_id in ids} == snapshot


@pytest.mark.embedded_only(reason="the reconciliation is due 1 s after the void on the test stacks "
                                  "(ReconcileAfterSeconds=1); a deployed stack's is its own")
def test_a_payment_completing_after_the_saga_gave_up_on_it_is_reconciled_and_leaves_no_money(target, late_payment):
    called, order_id = late_payment["called"], late_payment["accepted"]["order_id"]
    ended = late_payment["ended"].result()
    assert ended["described"]["error"] == "PaymentGatewayUnavailable"  # the client's timeout, then "in progress"
    assert ended["path"] == [
        "ReserveInventory", "RouteOrder", "AuthorizePayment", "VoidPayment", "CouponHeld",
        "ReleaseInventory", "CancelOrder", "SagaCompensated"]
    payment, ledger = ended["payment"], ended["ledger"]
    assert payment["status"] == "VOIDED"
    assert "reconcile_at" in payment
    assert ledger["state"] == "PROCESSING"
    # The processor completes the authorization SLOW s after the call: money held for a cancelled order...
    time.sleep(max(0.0, int(ledger["lands_at"]) / 1000 - time.time()) + 0.2)
    assert time.time() - called >= SLOW - 1
    swept = json.loads(target.client("lambda").invoke(FunctionName=target.outputs["ReaperFunctionName"],
                                                      Payload=b"{}")["Payload"].read())
    assert "errorType" not in swept, swept
    # ...until the reaper (its sweep queues it, ReaperWorker does it; a scheduled sweep may have done it already)
    # asks the gateway about the payment by its idempotency key, and voids it.
    wait_until(lambda: target.payment(order_id).get("reconciled") == "reversed", 15, "reconciled by ReaperWorker")
    assert target.ledger(order_id)["state"] == "VOIDED"
    assert target.payment(order_id)["reconciled"] == "reversed"
    assert target.order(order_id)["saga_status"] == "COMPENSATED"
    assert units(target, late_payment["sku"]) == late_payment["before"]


def units(target, sku: str) -> tuple[int, int, int]:
    stock = target.stock(sku)
    return stock["available"], stock["reserved"], stock["sold"]
