"""The reaper's fan-out on a stack (docs/operations.md, "The reaper"): a backlog of abandoned sagas, queued by one
sweep, drained by ReaperWorker through ReaperQueue's event source mapping, every one to an allowed end with the
stock and the money intact; and a duplicate message for each changes nothing. Not timed: bench/reaper_drain.py
measures the drain."""

from __future__ import annotations

import json
import time

from tests.stack.conftest import abandon
from tests.stack.support import wait_until

ABANDONED = 30


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
    # An abandoned order's CreateOrder never ran, so nothing says its PENDING payment was never sent: the worker
    # voided it at the gateway and marked it for reconciliation, which a later scheduled sweep does (a change the
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
