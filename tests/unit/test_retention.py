"""Retention (issue 20, point 6): every record that has done its job carries `purge_at` (epoch seconds, the tables'
DynamoDB TTL attribute), written by the very write that finishes it; nothing unfinished carries it; and a record
gone (expired) changes no outcome, whenever DynamoDB deletes it. docs/architecture.md ("Data") lists each item
kind's lifetime, docs/operations.md ("Retention") the operator's view.

`retention_problems` is the rule, item kind by item kind; the flows below check it after every step.
"""

from __future__ import annotations

import datetime
import os
import time
from types import SimpleNamespace
from typing import Any

import pytest

from order_saga.config import LONGEST_EXECUTION_MS, Timing, purge_at
from order_saga.dynamo import from_ddb, to_ddb
from order_saga.errors import (
    InsufficientStock,
    LeaseLost,
    OrderNotActive,
    PaymentDeclined,
    PaymentNotAuthorized,
    PaymentVoided,
)
from order_saga.events import outcome
from order_saga.gateway import LEDGER_PREFIX
from order_saga.orders import CUSTOMER_PREFIX
from sagalocal.template import Template
from tests.unit.conftest import ROOT, TABLES
from tests.unit.helpers import (
    EXECUTION,
    failed_execution_event,
    invoke,
    leased,
    new_saga,
    order,
    payment,
    reap,
    reservation,
    stock,
)

TEMPLATE = Template(ROOT / "template.yaml")
STARTED = datetime.datetime(2026, 12, 6, 7, 0, 0, 123000, tzinfo=datetime.UTC)
OWNER = f"{EXECUTION}#2026-12-06T07:00:00.123Z"


# ---- the rule ---------------------------------------------------------------------------------------------------
def every_item(client: Any) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for env in TABLES.values():
        pages = client.get_paginator("scan").paginate(TableName=os.environ[env], ConsistentRead=True)
        found += [(env, from_ddb(raw)) for page in pages for raw in page["Items"]]
    return found


def expected_purge(env: str, item: dict[str, Any], orders: dict[str, dict[str, Any]], timing: Timing,
                   completed_without: tuple[str, ...]) -> int | None | str:
    """What `purge_at` an item must carry: a value, None (never expires), or "final" (a ledger entry's, written at a
    time the entry does not record: checked against the clock)."""
    def completion(order_id: str) -> int | None:
        owner = orders.get(order_id) or {}
        return owner["updated_at"] if owner.get("saga_status") == "COMPLETED" else None

    status = item.get("status")
    if env == "ORDERS_TABLE" and str(item["order_id"]).startswith(CUSTOMER_PREFIX):
        return None  # a customer's open-orders item: kept
    if env == "ORDERS_TABLE":
        done = item["saga_status"] in ("COMPLETED", "COMPENSATED")
        return timing.retained_until(item["updated_at"]) if done else None
    if env == "INVENTORY_TABLE" and item["sk"] == "RESERVATION":
        if status == "RELEASED":
            return timing.tombstone_until(item.get("updated_at", item.get("released_at")))
        completed = completion(item["order_id"]) if status == "COMMITTED" else None
        return None if completed is None or "reservation" in completed_without else timing.retained_until(completed)
    if env == "PROMOTIONS_TABLE" and str(item["sk"]).startswith("ORDER#"):
        if status == "RELEASED":
            return timing.tombstone_until(item["released_at"])
        completed = completion(item["order_id"]) if status == "COMMITTED" else None
        return None if completed is None or "redemption" in completed_without else timing.retained_until(completed)
    if env == "PAYMENTS_TABLE" and str(item["payment_id"]).startswith(LEDGER_PREFIX):
        if item.get("state") in ("DECLINED", "VOIDED", "REFUNDED"):
            return "final"
        completed = completion(str(item["payment_id"]).removeprefix(LEDGER_PREFIX).split("#")[0]) \
            if item.get("state") == "CAPTURED" else None
        return None if completed is None else timing.retained_until(completed)
    if env == "PAYMENTS_TABLE":
        if "reconcile" in item:
            return None  # waiting for its reconciliation
        if "reconciled_at" in item:
            return timing.retained_until(item["reconciled_at"])
        if status in ("DECLINED", "VOIDED", "REFUNDED"):
            return timing.retained_until(item["updated_at"])
        completed = completion(item["order_id"]) if status == "CAPTURED" else None
        return None if completed is None else timing.retained_until(completed)
    return None  # the catalog (STOCK), coupons, customers' counts: never


def retention_problems(client: Any, completed_without: tuple[str, ...] = ()) -> list[str]:
    """Every item whose `purge_at` is not what the rule says (empty: all as it should be)."""
    timing = Timing.from_env()
    items = every_item(client)
    orders = {item["order_id"]: item for env, item in items if env == "ORDERS_TABLE"}
    problems = []
    for env, item in items:
        want = expected_purge(env, item, orders, timing, completed_without)
        have = item.get("purge_at")
        if want == "final":
            ok = have is not None and abs(have - (time.time() + timing.retention_ms / 1000)) < 600
        else:
            ok = have == want
        if not ok:
            problems.append(f"{env} {item.get('order_id') or item.get('payment_id') or item.get('sk')} "
                            f"{item.get('status') or item.get('state') or item.get('saga_status')}: "
                            f"purge_at {have}, expected {want}")
    return problems


def expire_all_but_orders(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """TTL at its harshest: every record carrying `purge_at` (but the orders, kept for days) deleted at once."""
    gone = []
    for env, item in every_item(client):
        if "purge_at" in item and env != "ORDERS_TABLE":
            keys = [k["AttributeName"] for k in TEMPLATE.properties(
                next(t for t, e in TABLES.items() if e == env))["KeySchema"]]
            client.delete_item(TableName=os.environ[env], Key=to_ddb({k: item[k] for k in keys}))
            gone.append((env, item))
    return gone


def scoped(client: Any, env: str, **key: str) -> dict[str, Any] | None:
    resp = client.get_item(TableName=os.environ[env], Key=to_ddb(key), ConsistentRead=True)
    return from_ddb(resp["Item"]) if "Item" in resp else None


# ---- the lifetimes ------------------------------------------------------------------------------------------------
def test_the_tombstone_outlives_the_longest_execution_and_the_reconciliation_delay():
    from scripts.generate_timing_table import Facts, longest_execution

    facts = Facts()
    assert longest_execution(facts) * 1000 == LONGEST_EXECUTION_MS, "update LONGEST_EXECUTION_MS (config.py)"
    timing = Timing(lease_ms=0, deadline_ms=0, reservation_ttl_ms=0,
                    reconcile_after_ms=int(facts.number("ReconcileAfterSeconds") * 1000))
    assert timing.tombstone_ms >= LONGEST_EXECUTION_MS + timing.reconcile_after_ms
    slow = Timing(lease_ms=0, deadline_ms=0, reservation_ttl_ms=0, reconcile_after_ms=2 * 86_400_000)
    assert slow.tombstone_ms == LONGEST_EXECUTION_MS + 2 * 86_400_000  # a longer reconciliation delay, too
    assert timing.retention_ms == int(TEMPLATE.parameters["OrderRetentionDays"]) * 86_400_000  # the same default
    assert timing.retention_ms > timing.tombstone_ms
    assert purge_at(1_000_001, 0) == 1_001  # epoch seconds, rounded up: never before the lifetime is over


def test_every_stateful_table_expires_on_purge_at_and_survives_the_stack():
    for logical_id in TABLES:
        resource = TEMPLATE.raw["Resources"][logical_id]
        assert resource["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "purge_at", "Enabled": True}
    kept = [*TABLES, "ParkedSagasQueue", "ParkedSagasDeadLetterQueue", "OutcomeEventsQueue", "FunctionsLogGroup",
            "ApiAccessLogGroup", "StateMachineLogGroup", "UserPool"]
    for logical_id in kept:
        resource = TEMPLATE.raw["Resources"][logical_id]
        assert (resource.get("DeletionPolicy"), resource.get("UpdateReplacePolicy")) == ("Retain", "Retain"), logical_id
    fault_rules = TEMPLATE.raw["Resources"]["FaultRulesTable"]  # test stacks only: dies with its stack
    assert (fault_rules["DeletionPolicy"], fault_rules["UpdateReplacePolicy"]) == ("Delete", "Delete")
    env = TEMPLATE.raw["Globals"]["Function"]["Environment"]["Variables"]
    assert env["ORDER_RETENTION_DAYS"] == {"Ref": "OrderRetentionDays"}


# cfn-lint's informational checks (retention among them) run with its others, once: tests/unit/test_template.py.


# ---- what each write leaves ----------------------------------------------------------------------------------------
def test_nothing_carries_purge_at_until_the_order_completes_and_then_every_record_of_it_does(aws, handlers, context):
    from tests.unit.test_coupons_and_split import place

    saga = place(aws, coupon="TENOFF", tokens=("tok_approve", "tok_approve"))
    for name in ("reserve_inventory", "apply_coupon"):
        saga = invoke(handlers(name), context, saga)
        assert [i for _, i in every_item(aws) if "purge_at" in i] == []
    for method in saga["methods"]:
        handlers("authorize_payment").lambda_handler({"saga": saga, "execution_id": EXECUTION, "method": method},
                                                     context)
    assert [i for _, i in every_item(aws) if "purge_at" in i] == []
    confirm = handlers("confirm_order")
    before = confirm.store.attempts
    invoke(confirm, context, saga)
    assert confirm.store.attempts - before == 4  # commit, two captures, complete: the retention costs no request
    done = order(aws)
    assert done["saga_status"] == "COMPLETED"
    expected = Timing.from_env().retained_until(done["updated_at"])
    stamped = {(env, item.get("status") or item.get("state")) for env, item in every_item(aws)
               if item.get("purge_at") == expected}
    assert stamped == {("ORDERS_TABLE", "CONFIRMED"), ("INVENTORY_TABLE", "COMMITTED"),
                       ("PROMOTIONS_TABLE", "COMMITTED"), ("PAYMENTS_TABLE", "CAPTURED")}
    assert sum(1 for _, item in every_item(aws) if item.get("purge_at") == expected) == 1 + 1 + 1 + 2 + 2
    assert retention_problems(aws) == []


def test_a_record_not_in_the_state_its_retention_expects_never_holds_the_completion_back(aws, handlers, context,
                                                                                        monkeypatch):
    """Housekeeping never blocks a saga: if a retire item's condition failed (it never should), the completion is
    written again without the retire items, and that record simply never expires."""
    saga = new_saga(aws)
    for name in ("reserve_inventory", "authorize_payment"):
        saga = invoke(handlers(name), context, saga)
    confirm = handlers("confirm_order")
    real = confirm.inventory.retire_items

    def unexpected_state(order_id, now):
        items = real(order_id, now)
        items["reservation"]["Update"]["ExpressionAttributeValues"][":committed"] = {"S": "SOMETHING ELSE"}
        return items

    monkeypatch.setattr(confirm.inventory, "retire_items", unexpected_state)
    invoke(confirm, context, saga)
    assert order(aws)["saga_status"] == "COMPLETED"
    assert "purge_at" in order(aws)
    assert payment(aws)["status"] == "CAPTURED"
    assert "purge_at" not in reservation(aws)
    assert retention_problems(aws, completed_without=("reservation",)) == []


def test_a_compensated_order_s_records_expire_each_from_the_write_that_finished_it(aws, handlers, context):
    from tests.unit.test_coupons_and_split import fail_at, place

    saga = place(aws, coupon="TENOFF", tokens=("tok_decline",))
    for name in ("reserve_inventory", "apply_coupon"):
        saga = invoke(handlers(name), context, saga)
    with pytest.raises(PaymentDeclined):
        invoke(handlers("authorize_payment"), context, saga)
    assert retention_problems(aws) == []
    assert payment(aws)["status"] == "DECLINED"
    assert "purge_at" in payment(aws)
    saga = fail_at(saga, "AuthorizePayment", "PaymentDeclined")
    for name in ("release_coupon", "release_inventory"):  # PaymentDeclined skips VoidPayment
        saga = invoke(handlers(name), context, saga)
        assert retention_problems(aws) == []
        assert "purge_at" not in order(aws)  # COMPENSATING: unfinished
    released = reservation(aws)
    assert released["purge_at"] == Timing.from_env().tombstone_until(released["updated_at"])
    invoke(handlers("cancel_order"), context, saga)
    cancelled = order(aws)
    assert cancelled["saga_status"] == "COMPENSATED"
    assert cancelled["purge_at"] == Timing.from_env().retained_until(cancelled["updated_at"])
    assert retention_problems(aws) == []


@pytest.mark.parametrize("compensation", ["release_inventory", "release_coupon"])
def test_a_tombstone_lives_past_any_late_step(aws, handlers, context, compensation):
    from tests.unit.test_coupons_and_split import fail_at, place

    saga = leased(aws, place(aws, coupon="TENOFF"))
    invoke(handlers(compensation), context, fail_at(saga, "ReserveInventory"))  # nothing was reserved or held
    kind = "INVENTORY_TABLE" if compensation == "release_inventory" else "PROMOTIONS_TABLE"
    [tombstone] = [i for env, i in every_item(aws) if env == kind and i.get("status") == "RELEASED"]
    assert tombstone.get("lines", []) == []
    timing = Timing.from_env()
    assert tombstone["purge_at"] == timing.tombstone_until(tombstone["released_at"])
    assert tombstone["purge_at"] * 1000 >= tombstone["released_at"] + LONGEST_EXECUTION_MS + timing.reconcile_after_ms
    assert retention_problems(aws) == []


def test_an_order_cancelled_before_any_payment_step_keeps_its_pending_payment(aws, handlers, context):
    """Pinned, not wanted: InsufficientStock goes straight to CancelOrder, which may write only the orders table, so
    the PENDING payment (with its card token) is never finished and never expires. Closing it needs CancelOrder's
    role to allow dynamodb:UpdateItem on the payments table (docs/operations.md, "Retention")."""
    saga = leased(aws, new_saga(aws, items=[{"sku": "SKU-3", "quantity": 1}]))
    with pytest.raises(InsufficientStock):
        invoke(handlers("reserve_inventory"), context, saga)
    invoke(handlers("cancel_order"), context, {**saga, "failures": {"ReserveInventory": {
        "Error": "InsufficientStock", "Cause": "x"}}})
    assert order(aws)["saga_status"] == "COMPENSATED"
    assert "purge_at" in order(aws)
    assert payment(aws)["status"] == "PENDING"
    assert "purge_at" not in payment(aws)
    assert retention_problems(aws) == []


def test_a_payment_waiting_for_its_reconciliation_never_expires_until_it_is_reconciled(aws, handlers, context,
                                                                                      monkeypatch):
    from tests.unit.test_steps import given_up_and_voided, until_the_authorization_lands

    given_up_and_voided(aws, handlers, context, monkeypatch)
    assert payment(aws)["status"] == "VOIDED"
    assert "reconcile" in payment(aws)
    assert "purge_at" not in payment(aws)
    assert retention_problems(aws) == []
    until_the_authorization_lands(aws)  # the authorization lands at the processor after the void
    assert reap(handlers, context)["reconciled"] == {"ord_1#1": "reversed"}
    reconciled = payment(aws)
    assert reconciled["purge_at"] == Timing.from_env().retained_until(reconciled["reconciled_at"])
    assert retention_problems(aws) == []


def test_a_parked_saga_keeps_everything_it_still_needs_and_finishes_the_same_without_what_expired(
        aws, handlers, context, monkeypatch):
    """Parked at ReleaseInventory (VoidPayment done): the order (FAILED) and the reservation (RESERVED) carry no
    purge_at; the voided payment and its ledger entry do (they hold nothing). Even with those gone, the redrive gives
    the stock back and cancels the order, as it would have."""
    saga = new_saga(aws)
    for name in ("reserve_inventory", "authorize_payment"):
        saga = invoke(handlers(name), context, saga, execution=OWNER)
    failed = {**saga, "failures": {"AuthorizePayment": {"Error": "States.Timeout", "Cause": "x"}}}
    invoke(handlers("void_payment"), context, failed, execution=OWNER)
    monkeypatch.setenv("PARKED_SAGAS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/parked.fifo")
    park = handlers("park_saga")
    monkeypatch.setattr(park, "_sqs", SimpleNamespace(send_message=lambda **kwargs: {}))
    monkeypatch.setattr(park, "_sfn", SimpleNamespace(describe_execution=lambda executionArn: {
        "status": "FAILED", "error": "StoreThrottled", "cause": "x", "redriveCount": 0}))
    assert park.lambda_handler(failed_execution_event(STARTED), context) == {"parked": True}
    assert order(aws)["saga_status"] == "FAILED"
    assert retention_problems(aws) == []
    assert {(env, item.get("status") or item.get("state")) for env, item in every_item(aws) if "purge_at" in item} \
        == {("PAYMENTS_TABLE", "VOIDED")}  # the payment and the ledger entry
    assert "purge_at" not in order(aws)
    assert "purge_at" not in reservation(aws)
    assert len(expire_all_but_orders(aws)) == 2
    for name in ("release_inventory", "cancel_order"):  # the redrive resumes at ReleaseInventory
        invoke(handlers(name), context, failed, execution=OWNER, redrive_count=1)
    assert order(aws)["saga_status"] == "COMPENSATED"
    assert stock(aws, "SKU-1") == (10, 0, 0)
    assert retention_problems(aws) == []


# ---- no outcome depends on when (or whether) DynamoDB deletes ----------------------------------------------------
def _happy(handlers, context, saga, step):
    for name in ("reserve_inventory", "apply_coupon", "authorize_payment", "confirm_order"):
        saga = step(name, saga)
    return saga


def _declined(handlers, context, saga, step):
    from tests.unit.test_coupons_and_split import fail_at

    for name in ("reserve_inventory", "apply_coupon"):
        saga = step(name, saga)
    with pytest.raises(PaymentDeclined):
        step("authorize_payment", saga)
    failed = fail_at(saga, "AuthorizePayment", "PaymentDeclined")
    for name in ("release_coupon", "release_inventory"):
        failed = step(name, failed)
    with pytest.raises((LeaseLost, OrderNotActive)):  # a ReserveInventory attempt arriving late, its tombstone gone
        step("reserve_inventory", saga)
    with pytest.raises((LeaseLost, OrderNotActive)):
        step("apply_coupon", saga)
    return step("cancel_order", failed)


def _voided(handlers, context, saga, step):
    from tests.unit.test_coupons_and_split import fail_at

    for name in ("reserve_inventory", "apply_coupon", "authorize_payment"):
        saga = step(name, saga)
    failed = fail_at(saga, "ConfirmOrder", "States.Timeout")
    for name in ("refund_payment", "release_coupon", "release_inventory", "cancel_order"):
        failed = step(name, failed)
    with pytest.raises((PaymentVoided, PaymentNotAuthorized)):  # a late AuthorizePayment: its payment VOIDED, or gone
        step("authorize_payment", saga)
    return failed


def _reaped(handlers, context, saga, step):
    for name in ("reserve_inventory", "apply_coupon", "authorize_payment"):
        saga = step(name, saga)
    step("reaper", saga)
    return saga


@pytest.mark.parametrize("flow", [_happy, _declined, _voided, _reaped], ids=["confirmed", "declined", "voided",
                                                                             "reaped"])
def test_records_expiring_at_once_change_no_outcome(aws, handlers, context, monkeypatch, flow):
    """The same saga twice, once as is and once with every expirable record deleted after every step (TTL could
    never be quicker): the orders, the stock, the coupon's counts and the money end the same."""
    from tests.unit.test_coupons_and_split import place

    results = {}
    for order_id, sweep in (("ord_a", False), ("ord_b", True)):
        gone: list[tuple[str, dict[str, Any]]] = []
        token = "tok_decline" if flow is _declined else "tok_approve"
        saga = place(aws, order_id=order_id, coupon="FIVEOFF", tokens=(token,))

        def step(name, state, sweep=sweep, gone=gone):
            try:
                if name == "reaper":  # an hour later: the lease ran out, and the reaper takes the order over
                    reaper = handlers("reaper")
                    later = reaper.now_ms() + 3_600_000
                    monkeypatch.setattr(reaper, "now_ms", lambda: later)
                    return reap(handlers, context, sweep=reaper)
                return invoke(handlers(name), context, state)
            finally:
                if sweep:
                    gone.extend(expire_all_but_orders(aws))

        before = {sku: stock(aws, sku) for sku in ("SKU-1", "SKU-2")}
        coupon_before = scoped(aws, "PROMOTIONS_TABLE", pk="COUPON#FIVEOFF", sk="COUPON")["redeemed"]
        flow(handlers, context, saga, step)
        ledger_states = {}
        for env, item in [*gone, *every_item(aws)]:
            if env == "PAYMENTS_TABLE" and str(item["payment_id"]).startswith(LEDGER_PREFIX + order_id):
                ledger_states[item["payment_id"].split("#")[-1]] = item.get("state")
        final = order(aws, order_id)
        results[order_id] = {
            "order": (final["status"], final["saga_status"]),
            "stock": {sku: tuple(a - b for a, b in zip(stock(aws, sku), before[sku], strict=True))
                      for sku in before},
            "redeemed": scoped(aws, "PROMOTIONS_TABLE", pk="COUPON#FIVEOFF", sk="COUPON")["redeemed"]
            - coupon_before,
            "ledger": ledger_states}
        assert retention_problems(aws) == []
    assert results["ord_a"] == results["ord_b"]


def test_a_key_comes_back_only_once_its_earlier_order_s_records_are_gone(api, aws, handlers, context):
    """OrderRetentionDays after an order finished, DynamoDB deletes it; its records in the other tables may go later.
    Until they are all gone, the key answers 409 and writes nothing; a ledger entry past its purge_at that DynamoDB
    has not deleted yet counts as gone. Then the key places a new order, charged anew."""
    from tests.unit.test_api import GOOD, call

    body = {**GOOD, "payment_token": "tok_approve"}
    status, placed, _ = call(api, context, "POST", "/orders", body, {"Idempotency-Key": "key-1"})
    assert status == 202
    order_id = placed["order_id"]

    def run(order_id: str) -> None:
        item = order(aws, order_id)
        saga = {"order_id": order_id, "customer_id": item["customer_id"],
                "lease_expires_at": item["lease_expires_at"], "deadline_at": item["deadline_at"]}
        for name in ("reserve_inventory", "authorize_payment", "confirm_order"):
            saga = invoke(handlers(name), context, saga)

    run(order_id)
    assert order(aws, order_id)["saga_status"] == "COMPLETED"

    def delete(env: str, **key: str) -> None:
        aws.delete_item(TableName=os.environ[env], Key=to_ddb(key))

    delete("ORDERS_TABLE", order_id=order_id)  # the order expired and was deleted first
    assert call(api, context, "POST", "/orders", body, {"Idempotency-Key": "key-1"})[0] == 409
    delete("INVENTORY_TABLE", pk=f"ORDER#{order_id}", sk="RESERVATION")
    status, refused, _ = call(api, context, "POST", "/orders", body, {"Idempotency-Key": "key-1"})
    assert status == 409, refused  # its payment is still there
    assert scoped(aws, "ORDERS_TABLE", order_id=order_id) is None  # nothing written
    delete("PAYMENTS_TABLE", payment_id=f"{order_id}#1")
    ledger_key = to_ddb({"payment_id": f"{LEDGER_PREFIX}{order_id}#1"})
    aws.update_item(TableName=os.environ["PAYMENTS_TABLE"], Key=ledger_key, UpdateExpression="SET purge_at = :past",
                    ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}})  # expired, not deleted
    status, again, _ = call(api, context, "POST", "/orders", body, {"Idempotency-Key": "key-1"})
    assert (status, again["order_id"]) == (202, order_id)
    run(order_id)
    assert order(aws, order_id)["saga_status"] == "COMPLETED"
    assert stock(aws, "SKU-1") == (6, 0, 4)  # sold twice: two orders
    entry = from_ddb(aws.get_item(TableName=os.environ["PAYMENTS_TABLE"], Key=ledger_key)["Item"])
    assert entry["state"] == "CAPTURED"
    assert entry["purge_at"] > time.time() + 86_400


# ---- the stream: a TTL delete is no outcome ------------------------------------------------------------------------
def test_a_ttl_delete_on_the_orders_stream_publishes_nothing():
    from moto.events.models import EventPattern

    finished = {"order_id": "ord_1", "customer_id": "c", "status": "CONFIRMED", "saga_status": "COMPLETED",
                "total": 1250, "currency": "USD", "created_at": 0, "updated_at": 1, "purge_at": 2}
    ttl_delete = {"eventID": "1", "eventName": "REMOVE", "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
                  "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
                  "dynamodb": {"Keys": to_ddb({"order_id": "ord_1"}), "OldImage": to_ddb(finished),
                               "StreamViewType": "NEW_AND_OLD_IMAGES"}}
    function = TEMPLATE.properties("PublishOutcomeFunction")
    stream = next(e for e in function["Events"].values() if e["Type"] == "DynamoDB")
    patterns = [EventPattern.load(f["Pattern"]) for f in stream["Properties"]["FilterCriteria"]["Filters"]]
    assert not any(p.matches_event(ttl_delete) for p in patterns)  # the filter drops it
    assert outcome(ttl_delete) is None  # and the handler would too
    completed = {**ttl_delete, "eventName": "MODIFY", "dynamodb": {
        "NewImage": to_ddb(finished), "OldImage": to_ddb({**finished, "saga_status": "CONFIRMING"})}}
    completed.pop("userIdentity")
    assert any(p.matches_event(completed) for p in patterns)
    assert outcome(completed)["DetailType"] == "OrderConfirmed"


# ---- the embedded stack -------------------------------------------------------------------------------------------
def test_the_embedded_engine_turns_the_template_s_ttl_on_and_deletes_nothing(aws):
    """What sagalocal's provisioning does with a table's TimeToLiveSpecification (UpdateTimeToLive, as
    CloudFormation), and what the engine then does: it reports TTL on, and never deletes an expired item
    (docs/local-stack.md, docs/dynamodb-emulation.md)."""
    spec = TEMPLATE.properties("OrdersTable")["TimeToLiveSpecification"]
    table = os.environ["ORDERS_TABLE"]
    aws.update_time_to_live(TableName=table, TimeToLiveSpecification=spec)
    described = aws.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert (described["TimeToLiveStatus"], described["AttributeName"]) == ("ENABLED", "purge_at")
    aws.put_item(TableName=table, Item=to_ddb({"order_id": "ord_old", "saga_status": "COMPLETED",
                                               "purge_at": int(time.time()) - 30 * 86_400}))
    assert "Item" in aws.get_item(TableName=table, Key=to_ddb({"order_id": "ord_old"}), ConsistentRead=True)
