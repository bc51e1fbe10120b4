"""Leases, fencing and the reaper, with periods shortened through the environment."""

from __future__ import annotations

import datetime
import json
import os
import time
from types import SimpleNamespace

import pytest

from order_saga.errors import LeaseLost, OrderLocked, OrderNotActive, PaymentVoided, ReservationReleased
from tests.unit.conftest import scan_all
from tests.unit.helpers import (
    EXECUTION,
    failed_execution_event,
    invoke,
    leased,
    ledger,
    new_saga,
    order,
    orders_of,
    payment,
    reap,
    reservation,
    sqs_record,
    stock,
)

OTHER = EXECUTION.replace(":ord_1", ":intruder")
LEASE_S = 1.5  # long enough for consecutive steps on a loaded machine; the tests sleep past it


def run_steps(handlers, context, saga, *names, execution=EXECUTION):
    """The steps one after another, their modules imported first: a fresh import under load (a cold start)
    took longer than the short lease once, and the lease runs from ReserveInventory on."""
    modules = [handlers(name) for name in names]
    for module in modules:
        saga = invoke(module, context, saga, execution=execution)
    return saga


@pytest.fixture
def short(monkeypatch):
    monkeypatch.setenv("LEASE_SECONDS", str(LEASE_S))
    monkeypatch.setenv("RESERVATION_TTL_SECONDS", str(LEASE_S))


def test_a_second_execution_is_refused_while_the_lease_is_live_and_changes_nothing(aws, handlers, context):
    saga = new_saga(aws)
    module = handlers("reserve_inventory")
    mine = invoke(module, context, saga)
    tables = scan_all(aws)
    with pytest.raises(OrderLocked):
        invoke(module, context, saga, OTHER)
    assert scan_all(aws) == tables
    assert order(aws)["lease_owner"] == EXECUTION
    assert mine["fence"] == 1


def test_the_fence_only_increases_and_one_takeover_wins(aws, handlers, context, short):
    saga = invoke(handlers("reserve_inventory"), context, new_saga(aws))
    time.sleep(LEASE_S + 0.1)
    orders = orders_of(aws)
    now = int(time.time() * 1000)
    [entry] = orders.abandoned(now)
    assert set(entry) == {"order_id", "active", "lease_expires_at"}  # the index holds keys only
    winners = [orders.take_over(entry, f"reaper:{n}", now) for n in range(2)]
    assert [w is not None for w in winners] == [True, False]
    assert winners[0][1].fence == saga["fence"] + 1 == order(aws)["fence"]


def test_the_reaper_compensates_an_abandoned_saga_once(aws, handlers, context, short):
    saga = new_saga(aws)
    saga = run_steps(handlers, context, saga, "reserve_inventory", "authorize_payment")
    assert stock(aws, "SKU-1") == (8, 2, 0)
    time.sleep(LEASE_S + 0.1)  # the execution stopped: no more heartbeats
    first = reap(handlers, context)
    assert first["compensated"] == ["ord_1"]
    assert stock(aws, "SKU-1") == (10, 0, 0)
    assert payment(aws)["status"] == "VOIDED"
    assert ledger(aws)["state"] == "VOIDED"
    item = order(aws)
    assert (item["status"], item["saga_status"]) == ("CANCELLED", "COMPENSATED")
    assert item["lease_owner"].startswith("reaper:")
    assert item["previous_owner"] == EXECUTION
    assert item["steps"]["Reaper"]["error"] == "LeaseExpired"
    assert "active" not in item
    tables = scan_all(aws)
    second = reap(handlers, context)
    assert second == {"compensated": [], "completed": [], "released_reservations": [], "reconciled": {}, "failed": []}
    assert scan_all(aws) == tables


def test_a_duplicate_message_finds_the_order_taken_and_changes_nothing(aws, handlers, context, short):
    """A standard queue delivers at least once, and a sweep may queue an order again before a worker took it: the
    takeover is conditional on the lease expiry the message carries, so every repeat does nothing."""
    import boto3

    new_saga(aws)
    time.sleep(LEASE_S + 0.1)
    tables = scan_all(aws)
    for _ in range(2):  # two sweeps before any worker ran: two messages for the one order
        assert handlers("reaper").lambda_handler({}, context)["queued"] == {"order": 1, "reservation": 0, "payment": 0}
    assert scan_all(aws) == tables  # the sweep writes nothing
    sqs = boto3.client("sqs", region_name="us-east-1")
    messages = sqs.receive_message(QueueUrl=os.environ["REAPER_QUEUE_URL"], MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 2
    assert json.loads(messages[0]["Body"]) == json.loads(messages[1]["Body"])
    worker = handlers("reaper_worker")
    first = {"Records": [sqs_record(messages[0])]}
    assert worker.lambda_handler(first, context) == {"batchItemFailures": []}
    assert order(aws)["saga_status"] == "COMPENSATED"
    tables = scan_all(aws)
    for event in (first, {"Records": [sqs_record(messages[1])]}):  # the same message again; the second sweep's
        assert worker.lambda_handler(event, context) == {"batchItemFailures": []}
        assert scan_all(aws) == tables


def test_a_message_that_is_no_reaper_work_is_reported_failed_and_changes_nothing(aws, handlers, context):
    new_saga(aws)
    tables = scan_all(aws)
    bodies = ['{"kind": "order", "id": "ord_1"}', "not json", '{"kind": "refund", "id": "ord_1"}',
              '{"kind": "reservation", "id": "ord_1", "lease_expires_at": 1}']
    event = {"Records": [sqs_record({"MessageId": f"m{n}", "ReceiptHandle": f"r{n}", "Body": body})
                         for n, body in enumerate(bodies)]}
    # ...beside one that is (a reservation that is not there: nothing to do). Were every message bad, the batch
    # would fail as a whole (Powertools raises), which returns every message to the queue as well.
    event["Records"].append(sqs_record({"MessageId": "ok", "ReceiptHandle": "rok",
                                        "Body": '{"kind": "reservation", "id": "ord_none"}'}))
    answer = handlers("reaper_worker").lambda_handler(event, context)
    assert answer == {"batchItemFailures": [{"itemIdentifier": f"m{n}"} for n in range(len(bodies))]}
    assert scan_all(aws) == tables


def test_late_steps_of_the_old_execution_cannot_land_after_takeover(aws, handlers, context, short):
    saga = new_saga(aws)
    saga = run_steps(handlers, context, saga, "reserve_inventory")
    time.sleep(LEASE_S + 0.1)
    reap(handlers, context)
    tables = scan_all(aws)
    with pytest.raises(PaymentVoided):  # the reaper voided the payment before it was ever authorized
        invoke(handlers("authorize_payment"), context, saga)
    with pytest.raises(LeaseLost):
        invoke(handlers("confirm_order"), context, saga)
    assert scan_all(aws) == tables
    assert ledger(aws) is None  # the gateway was never called
    # Its own compensations find the reaper owns the order: no-ops.
    out = invoke(handlers("release_inventory"), context, {**saga, "failures": {
        "AuthorizePayment": {"Error": "LeaseLost", "Cause": "x"}}})
    assert out["order_id"] == "ord_1"
    assert scan_all(aws) == tables


def test_an_authorization_answered_after_takeover_is_voided_at_the_gateway(aws, handlers, context, short):
    saga = new_saga(aws)
    module = handlers("authorize_payment")
    saga = run_steps(handlers, context, saga, "reserve_inventory")
    real_authorize = module.payments.gateway.authorize

    def slow_gateway(*args, **kwargs):
        reference = real_authorize(*args, **kwargs)
        time.sleep(LEASE_S + 0.1)  # the gateway answers after the lease expired...
        reap(handlers, context)  # ...and the reaper took over and compensated
        return reference

    module.payments.gateway.authorize = slow_gateway
    with pytest.raises(LeaseLost):
        invoke(module, context, saga)
    assert ledger(aws)["state"] == "VOIDED"
    assert payment(aws)["status"] == "VOIDED"
    assert stock(aws, "SKU-1") == (10, 0, 0)


def test_an_order_whose_execution_never_started_is_cancelled(aws, handlers, context, short):
    new_saga(aws)  # the API wrote PENDING, then StartExecution never happened
    time.sleep(LEASE_S + 0.1)
    assert reap(handlers, context)["compensated"] == ["ord_1"]
    assert order(aws)["saga_status"] == "COMPENSATED"
    assert payment(aws)["status"] == "VOIDED"  # the card on file will never be charged


def test_an_expired_reservation_returns_its_stock_exactly_once(aws, handlers, context, short, monkeypatch):
    monkeypatch.setenv("LEASE_SECONDS", "60")  # the saga is alive; only its reservation expires
    saga = new_saga(aws)
    saga = run_steps(handlers, context, saga, "reserve_inventory")
    time.sleep(LEASE_S + 0.1)
    assert reap(handlers, context)["released_reservations"] == ["ord_1"]
    assert reap(handlers, context)["released_reservations"] == []
    assert stock(aws, "SKU-1") == (10, 0, 0)
    # The saga goes on: its authorization works, but ConfirmOrder cannot commit a released reservation.
    saga = invoke(handlers("authorize_payment"), context, saga)
    with pytest.raises(ReservationReleased):
        invoke(handlers("confirm_order"), context, saga)
    assert stock(aws, "SKU-1") == (10, 0, 0)
    assert payment(aws)["status"] == "AUTHORIZED"  # nothing captured; RefundPayment voids it next


def test_the_reaper_reads_every_shard(aws, handlers, context, short):
    """Orders spread over the index's shards (INDEX_SHARDS=4 here); one sweep finds them all. (On a loaded
    machine it may run out of its time before it has compensated every one: those it leaves, with the reason,
    to the next sweep, as the schedule would.)"""
    ids = [f"ord_shard_{n}" for n in range(12)]
    for order_id in ids:
        new_saga(aws, order_id=order_id)
    shards = {order(aws, order_id)["active"] for order_id in ids}
    assert len(shards) > 1
    time.sleep(LEASE_S + 0.1)
    first = reap(handlers, context)
    assert sorted(first["compensated"] + first["failed"]) == sorted(ids)  # found on every shard
    compensated = set(first["compensated"])
    for _ in range(4):
        if compensated == set(ids):
            break
        compensated |= set(reap(handlers, context)["compensated"])
    assert compensated == set(ids)


def test_one_order_that_cannot_be_reaped_does_not_stop_the_others_and_stays_queued(aws, handlers, context, short):
    import boto3

    for order_id in ("ord_a", "ord_b"):
        new_saga(aws, order_id=order_id)
    time.sleep(LEASE_S + 0.1)
    worker = handlers("reaper_worker")
    real = worker.reap_order

    def flaky(entry, owner, now):
        if entry["order_id"] == "ord_a":
            raise RuntimeError("the gateway is down")
        return real(entry, owner, now)

    worker.reap_order = flaky
    result = reap(handlers, context, worker=worker)
    assert (result["compensated"], result["failed"]) == (["ord_b"], ["ord_a"])
    assert order(aws, "ord_a")["saga_status"] == "PENDING"  # untouched
    # Its message was reported failed, so not deleted: SQS hands it over again after the visibility timeout.
    counts = boto3.client("sqs", region_name="us-east-1").get_queue_attributes(
        QueueUrl=os.environ["REAPER_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert counts["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_a_parked_saga_is_finished_by_its_own_execution_redriven(aws, handlers, context, monkeypatch):
    """docs/operations.md: VoidPayment spent its retries and failed the execution; the failure's event parks the
    saga (FAILED, out of the reaper's index, one message); the execution, redriven (the same owner: ARN and start
    time), runs the compensation again and the ones after it, and finishes the rollback."""
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    queue = sqs.create_queue(QueueName="parked.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    monkeypatch.setenv("PARKED_SAGAS_QUEUE_URL", queue)
    started = datetime.datetime(2026, 12, 6, 7, 0, 0, 123000, tzinfo=datetime.UTC)
    owner = f"{EXECUTION}#2026-12-06T07:00:00.123Z"
    saga = new_saga(aws)
    for name in ("reserve_inventory", "authorize_payment"):
        saga = invoke(handlers(name), context, saga, execution=owner)
    failed = {**saga, "failures": {"AuthorizePayment": {"Error": "States.Timeout", "Cause": "x"}}}
    park = handlers("park_saga")
    monkeypatch.setattr(park, "_sfn", SimpleNamespace(describe_execution=lambda executionArn: {
        "status": "FAILED", "error": "PaymentGatewayUnavailable", "cause": "the gateway is down", "redriveCount": 0}))
    assert park.lambda_handler(failed_execution_event(started), context) == {"parked": True}
    item = order(aws)
    assert (item["saga_status"], item["parked_error"], "active" in item) == ("FAILED", "PaymentGatewayUnavailable",
                                                                               False)
    assert stock(aws, "SKU-1") == (8, 2, 0)
    # EventBridge's or Lambda's retry of the same event parks nothing twice, and its message is deduplicated.
    assert park.lambda_handler(failed_execution_event(started), context) == {"parked": True}
    (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert json.loads(message["Body"])["execution_arn"] == EXECUTION
    # The same execution's failure event at another start time (another execution of that name) is not its own.
    other = started + datetime.timedelta(days=91)
    assert park.lambda_handler(failed_execution_event(other), context) == {"parked": False}
    # A late attempt of the run that failed (its task gave up on it; Lambda ran on) cannot take the order back.
    before = order(aws)
    invoke(handlers("void_payment"), context, failed, execution=owner, redrive_count=0)
    assert order(aws) == before
    # The redrive: VoidPayment again ($$.Execution.RedriveCount 1), under the same owner; the order is back in
    # the reaper's index meanwhile.
    saga = invoke(handlers("void_payment"), context, failed, execution=owner, redrive_count=1)
    assert order(aws)["saga_status"] == "COMPENSATING"
    assert "active" in order(aws)
    for name in ("release_inventory", "cancel_order"):
        saga = invoke(handlers(name), context, saga, execution=owner, redrive_count=1)
    item = order(aws)
    assert (item["status"], item["saga_status"], "active" in item) == ("CANCELLED", "COMPENSATED", False)
    assert stock(aws, "SKU-1") == (10, 0, 0)
    assert ledger(aws)["state"] == "VOIDED"


def test_a_late_redrive_after_a_takeover_changes_nothing(aws, handlers, context, short, monkeypatch):
    """The reaper took the order over (a new owner and fence) before the failure parked it: the parking finds it
    not the execution's own, and a redriven compensation of the old execution acts on nothing."""
    monkeypatch.setenv("PARKED_SAGAS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/none.fifo")
    started = datetime.datetime(2026, 12, 6, 7, 0, 0, 123000, tzinfo=datetime.UTC)
    owner = f"{EXECUTION}#2026-12-06T07:00:00.123Z"
    saga = run_steps(handlers, context, new_saga(aws), "reserve_inventory", execution=owner)
    time.sleep(LEASE_S + 0.2)  # past the short lease
    assert reap(handlers, context)["compensated"] == ["ord_1"]
    assert handlers("park_saga").lambda_handler(failed_execution_event(started), context) == {"parked": False}
    before = order(aws)
    for name in ("release_inventory", "cancel_order"):
        invoke(handlers(name), context, saga, execution=owner, redrive_count=1)
    assert order(aws) == before
    assert stock(aws, "SKU-1") == (10, 0, 0)


def test_no_lease_outlives_the_saga_deadline_and_an_overrunning_saga_is_reaped(aws, handlers, context, monkeypatch):
    monkeypatch.setenv("LEASE_SECONDS", "60")
    # Room for two steps on a loaded machine (the deadline runs from the order's creation), then slept past.
    monkeypatch.setenv("SAGA_DEADLINE_SECONDS", "6")
    saga = new_saga(aws)
    saga = run_steps(handlers, context, saga, "reserve_inventory")
    item = order(aws)
    assert item["lease_expires_at"] <= item["deadline_at"]  # a 60 s lease is capped at the 6 s deadline
    time.sleep(max(0.0, item["deadline_at"] / 1000 - time.time()) + 0.2)
    with pytest.raises(LeaseLost, match="deadline"):
        invoke(handlers("authorize_payment"), context, saga)
    assert reap(handlers, context)["compensated"] == ["ord_1"]
    assert stock(aws, "SKU-1") == (10, 0, 0)
    assert order(aws)["saga_status"] == "COMPENSATED"


def test_the_lease_is_renewed_only_past_half_its_life(aws, handlers, context, monkeypatch):
    """On a clock of the test's own (the steps take `now` from it), so a loaded machine changes nothing."""
    monkeypatch.setenv("LEASE_SECONDS", "20")
    clock = [time.time() * 1000]

    def step(name):
        module = handlers(name)
        monkeypatch.setattr(module, "now_ms", lambda: int(clock[0]))
        return module

    saga = invoke(step("reserve_inventory"), context, new_saga(aws))
    first = order(aws)["lease_expires_at"]
    clock[0] += 9_000  # 9 of the lease's 20 s: less than half its life gone
    saga = invoke(step("reserve_inventory"), context, saga)
    assert order(aws)["lease_expires_at"] == first  # early in the lease: the index entry is not rewritten
    clock[0] += 2_000  # 11 s: past half its life
    saga = invoke(step("authorize_payment"), context, saga)
    renewed = order(aws)["lease_expires_at"]
    assert renewed > first
    assert saga["lease_expires_at"] == renewed


def test_a_side_effect_is_refused_once_the_saga_is_compensating(aws, handlers, context):
    """A ReserveInventory that arrives after InsufficientStock and CancelOrder holds no stock."""
    saga = leased(aws, new_saga(aws))
    invoke(handlers("cancel_order"), context, {**saga, "failures": {
        "ReserveInventory": {"Error": "InsufficientStock", "Cause": "x"}}})
    with pytest.raises(OrderNotActive):
        invoke(handlers("reserve_inventory"), context, saga)
    assert stock(aws, "SKU-1") == (10, 0, 0)
    assert reservation(aws) is None


def test_a_compensation_without_a_fence_leaves_alone_an_order_another_execution_owns(aws, handlers, context):
    """An execution whose ReserveInventory failed compensates with a state that carries no fence: it takes the order
    only from nobody or from itself. One that another execution owns is left exactly as it is."""
    saga = new_saga(aws)
    invoke(handlers("reserve_inventory"), context, saga, execution=EXECUTION + "#2026-01-01T00:00:00Z")  # another one
    tables = scan_all(aws)
    invoke(handlers("cancel_order"), context, saga)  # this execution's state: no fence
    assert scan_all(aws) == tables
