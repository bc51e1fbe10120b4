"""Open orders per customer: the cap at the API (429, Retry-After, nothing written), and the customer's open-orders
item kept exact by every write that opens or finishes an order (docs/api.md, "Limits")."""

from __future__ import annotations

import json
import math
import time

import pytest

from order_saga.errors import PaymentGatewayUnavailable
from order_saga.models import order_id_for
from order_saga.orders import CUSTOMER_PREFIX
from tests.unit.conftest import ROOT, scan_all
from tests.unit.helpers import EXECUTION, get, invoke, order, orders_of, reap, second_run_changes_nothing
from tests.unit.test_api import ALICE, BOB, GOOD, call, executions

CAP = 2


@pytest.fixture
def capped(api, monkeypatch):
    monkeypatch.setattr(api, "MAX_OPEN_ORDERS", CAP)
    return api


def place(api, context, key: str, customer: str = ALICE, body: dict | None = None) -> tuple[int, dict, dict]:
    return call(api, context, "POST", "/orders", body or GOOD, {"Idempotency-Key": key}, customer=customer)


def open_orders(aws, customer: str = ALICE) -> set[str]:
    return set((get(aws, "ORDERS_TABLE", order_id=CUSTOMER_PREFIX + customer) or {}).get("open_orders") or ())


def header(response: dict, name: str) -> str | None:
    return (response.get("headers") or {}).get(name) or ((response.get("multiValueHeaders") or {}).get(name)
                                                           or [None])[0]


def saga_of(aws, order_id: str) -> dict:
    """The execution input the API started the saga with."""
    item = order(aws, order_id)
    return {k: item[k] for k in ("order_id", "customer_id", "lease_expires_at", "deadline_at")}


# ---- the API -------------------------------------------------------------------------------------------------
def test_over_the_cap_is_429_with_retry_after_and_writes_nothing(capped, context, aws):
    placed = [place(capped, context, f"key-{n}")[1]["order_id"] for n in range(CAP)]
    assert open_orders(aws) == set(placed)
    tables, started = scan_all(aws), len(executions())
    asked_at = time.time()  # the time left is read before the request (seconds may pass in it on a loaded machine)
    status, body, response = place(capped, context, "key-over")
    assert status == 429, body
    assert body["open_orders"] == CAP
    assert body["limit"] == CAP
    assert "too many open orders" in body["error"]
    retry_after = int(header(response, "Retry-After"))
    # The soonest end of the open orders: their deadline, SagaDeadlineSeconds after they were placed.
    deadline_at = min(order(aws, o)["deadline_at"] for o in placed)
    assert 1 <= retry_after <= math.ceil((deadline_at - asked_at * 1000) / 1000) + 1
    assert scan_all(aws) == tables  # nothing written: no order, no payment, no count
    assert len(executions()) == started  # no saga started
    # Another customer is not counted against this one.
    assert place(capped, context, "key-over", customer=BOB)[0] == 202
    assert len(open_orders(aws, BOB)) == 1
    assert len(open_orders(aws)) == CAP


def test_a_resubmission_at_the_cap_is_replayed_and_counts_once(capped, context, aws):
    first = [place(capped, context, f"key-{n}") for n in range(CAP)]
    tables = scan_all(aws)
    again = place(capped, context, "key-0")
    assert (again[0], again[1]) == (first[0][0], first[0][1]) == (202, first[0][1])
    assert scan_all(aws) == tables
    assert len(open_orders(aws)) == CAP


def test_a_refused_body_is_refused_before_the_count_and_over_the_cap_a_new_body_for_a_used_key_is_still_422(
        capped, context, aws):
    for n in range(CAP):
        place(capped, context, f"key-{n}")
    other = {**GOOD, "items": [{"sku": "SKU-1", "quantity": 1}]}
    assert place(capped, context, "key-0", body=other)[0] == 422  # the key's order exists: not a new order
    assert place(capped, context, "key-x", body={"items": [{"sku": "NOPE", "quantity": 1}],
                                                   "payment_token": "tok_approve"})[0] == 422


def test_the_api_answer_shape_is_the_documented_problem_body(capped, context, aws):
    for n in range(CAP):
        place(capped, context, f"key-{n}")
    _, body, response = place(capped, context, "key-over")
    assert set(body) == {"error", "open_orders", "limit"}
    assert header(response, "Content-Type") == "application/json"
    spec = json.loads((ROOT / "docs/openapi.json").read_text())
    assert "429" in spec["paths"]["/orders"]["post"]["responses"]


# ---- every write that finishes an order takes it out -----------------------------------------------------------
def test_confirm_order_completes_and_takes_the_order_out(capped, context, aws, handlers):
    order_id = place(capped, context, "key-1")[1]["order_id"]
    saga = saga_of(aws, order_id)
    for name in ("reserve_inventory", "authorize_payment", "confirm_order"):
        saga = invoke(handlers(name), context, saga)
    assert order(aws, order_id)["saga_status"] == "COMPLETED"
    assert open_orders(aws) == set()
    assert place(capped, context, "key-2")[0] == 202  # the place is free again


def test_cancel_order_takes_the_order_out_once(capped, context, aws, handlers):
    order_id = place(capped, context, "key-1")[1]["order_id"]
    place(capped, context, "key-2")
    saga = invoke(handlers("reserve_inventory"), context, saga_of(aws, order_id))
    failed = {**saga, "failures": {"ReserveInventory": {"Error": "OutOfStock", "Cause": "none left"}}}
    cancel = handlers("cancel_order")
    second_run_changes_nothing(aws, lambda: invoke(cancel, context, failed))
    assert order(aws, order_id)["saga_status"] == "COMPENSATED"
    assert len(open_orders(aws)) == 1
    assert order_id not in open_orders(aws)


def test_refund_payment_finishing_past_the_pivot_takes_the_order_out(capped, context, aws, handlers, monkeypatch):
    order_id = place(capped, context, "key-1")[1]["order_id"]
    saga = saga_of(aws, order_id)
    for name in ("reserve_inventory", "authorize_payment"):
        saga = invoke(handlers(name), context, saga)
    confirm = handlers("confirm_order")

    def unavailable(payment_id):
        raise PaymentGatewayUnavailable("the gateway is down")

    monkeypatch.setattr(confirm.payments, "capture", unavailable)
    with pytest.raises(PaymentGatewayUnavailable):
        invoke(confirm, context, saga)
    assert order(aws, order_id)["saga_status"] == "CONFIRMING"  # past the pivot: still open
    assert open_orders(aws) == {order_id}
    failed = {**saga, "failures": {"ConfirmOrder": {"Error": "PaymentGatewayUnavailable", "Cause": "down"}}}
    invoke(handlers("refund_payment"), context, failed)
    assert order(aws, order_id)["saga_status"] == "COMPLETED"
    assert open_orders(aws) == set()


def test_the_reaper_takes_out_what_it_cancels_and_what_it_completes(aws, handlers, context, monkeypatch):
    import boto3

    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    arn = sfn.create_state_machine(name="limits", definition='{"StartAt":"X","States":{"X":{"Type":"Succeed"}}}',
                                   roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    monkeypatch.setenv("STATE_MACHINE_ARN", arn)
    api = handlers("orders_api")
    monkeypatch.setattr(api, "MAX_OPEN_ORDERS", CAP)
    # One order abandoned before the pivot (the reaper cancels it), one past it (the reaper completes it).
    abandoned = place(api, context, "key-1")[1]["order_id"]
    pivoted = place(api, context, "key-2")[1]["order_id"]
    modules = [handlers(name) for name in ("reserve_inventory", "authorize_payment", "confirm_order")]
    invoke(modules[0], context, saga_of(aws, abandoned), execution=EXECUTION.replace("ord_1", abandoned))
    saga = saga_of(aws, pivoted)
    for module in modules[:2]:
        saga = invoke(module, context, saga, execution=EXECUTION.replace("ord_1", pivoted))
    monkeypatch.setattr(modules[2].payments, "capture", lambda payment_id: (_ for _ in ()).throw(
        PaymentGatewayUnavailable("down")))
    with pytest.raises(PaymentGatewayUnavailable):
        invoke(modules[2], context, saga, execution=EXECUTION.replace("ord_1", pivoted))
    assert open_orders(aws) == {abandoned, pivoted}
    assert place(api, context, "key-3")[0] == 429
    # Both leases run out (moved into the past: the steps ran under the template's leases, which no loaded machine
    # outlasts, where 1.5 s ones had to hold four steps).
    for order_id in (abandoned, pivoted):
        aws.update_item(TableName=orders_of(aws).table, Key={"order_id": {"S": order_id}},
                        UpdateExpression="SET lease_expires_at = :past",
                        ExpressionAttributeValues={":past": {"N": "1"}})
    swept = reap(handlers, context)
    assert (swept["compensated"], swept["completed"]) == ([abandoned], [pivoted])
    assert open_orders(aws) == set()
    assert place(api, context, "key-3")[0] == 202


def test_an_order_whose_saga_never_started_stays_open_until_the_reaper_cancels_it(capped, context, aws, handlers,
                                                                                   monkeypatch):
    from botocore.exceptions import ClientError

    def refused(**kwargs):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "StartExecution")

    monkeypatch.setattr(capped._sfn, "start_execution", refused)
    status, body, _ = place(capped, context, "key-1")
    assert status == 503, body
    (order_id,) = open_orders(aws)
    assert order(aws, order_id)["saga_status"] == "PENDING"
    # The reaper cancels it once its lease runs out (as if it had: the lease moved into the past).
    aws.update_item(TableName=orders_of(aws).table, Key={"order_id": {"S": order_id}},
                    UpdateExpression="SET lease_expires_at = :past", ExpressionAttributeValues={":past": {"N": "1"}})
    swept = reap(handlers, context)
    assert swept["compensated"] == [order_id]
    assert open_orders(aws) == set()


def test_a_parked_order_stays_open_until_its_redriven_execution_cancels_it(capped, context, aws, handlers):
    order_id = place(capped, context, "key-1")[1]["order_id"]
    owner = f"{EXECUTION}#2026-12-06T07:00:00.123Z"
    saga = invoke(handlers("reserve_inventory"), context, saga_of(aws, order_id), execution=owner)
    orders = orders_of(aws)
    assert orders.park(order_id, owner, "PaymentGatewayUnavailable", int(time.time() * 1000))
    assert order(aws, order_id)["saga_status"] == "FAILED"
    assert open_orders(aws) == {order_id}  # parked is open: an operator's redrive still finishes it
    failed = {**saga, "failures": {"ReserveInventory": {"Error": "States.Timeout", "Cause": "x"}}}
    invoke(handlers("cancel_order"), context, failed, execution=owner, redrive_count=1)
    assert order(aws, order_id)["saga_status"] == "COMPENSATED"
    assert open_orders(aws) == set()


# ---- ids of orders that finished without taking themselves out, or are gone: pruned at the cap ---------------------
GONE = ["ord_" + f"{n:032x}" for n in range(1, 200)]  # ids whose order no longer exists (TTL, or deleted by hand)


def hand_written(aws, order_id: str, saga_status: str, running: bool = False, customer: str = ALICE) -> str:
    """An order as something other than the saga left it (a rollback's code, an operator): no release_slot."""
    now = int(time.time() * 1000)
    item = {"order_id": {"S": order_id}, "customer_id": {"S": customer}, "saga_status": {"S": saga_status},
            "deadline_at": {"N": str(now + 60_000)}, "lease_expires_at": {"N": str(now + 60_000)}}
    if running:
        item["active"] = {"N": "0"}
    aws.put_item(TableName=orders_of(aws).table, Item=item)
    return order_id


def counted_too(aws, *order_ids: str, customer: str = ALICE) -> None:
    """The ids added to the customer's open orders, as take_slot adds them (no cap: the test sets the scene)."""
    aws.update_item(TableName=orders_of(aws).table, Key={"order_id": {"S": CUSTOMER_PREFIX + customer}},
                    UpdateExpression="ADD open_orders :ids",
                    ExpressionAttributeValues={":ids": {"SS": list(order_ids)}})


def before_the_prune(api, monkeypatch, concurrently) -> list[set[str]]:
    """Run `concurrently` once, after the 429 path read the orders and before its prune writes: what the prune was
    about to take out is recorded."""
    prune, about_to = api.orders.release_finished, []

    def racing(customer_id, order_ids):
        if not about_to:
            concurrently()
        about_to.append(set(order_ids))
        return prune(customer_id, order_ids)

    monkeypatch.setattr(api.orders, "release_finished", racing)
    return about_to


def test_finished_and_gone_ids_are_pruned_at_the_cap_and_admit_exactly_as_many_orders_as_they_held(
        api, context, aws, monkeypatch):
    monkeypatch.setattr(api, "MAX_OPEN_ORDERS", 6)
    live = {place(api, context, f"live-{n}")[1]["order_id"] for n in range(2)}
    parked = hand_written(aws, "ord_" + "a" * 32, "FAILED")  # parked is open: only a redrive finishes it
    finished = {hand_written(aws, "ord_" + "c" * 32, "COMPLETED"), hand_written(aws, "ord_" + "d" * 32, "COMPENSATED")}
    counted_too(aws, parked, *finished, GONE[0])
    assert len(open_orders(aws)) == 6
    admitted = [place(api, context, f"new-{n}") for n in range(3)]  # the three places the finished and gone held
    assert [status for status, _, _ in admitted] == [202, 202, 202], admitted
    new = {body["order_id"] for _, body, _ in admitted}
    assert open_orders(aws) == live | {parked} | new  # exactly the open orders again
    tables = scan_all(aws)
    status, body, _ = place(api, context, "one-too-many")
    assert (status, body["open_orders"], body["limit"]) == (429, 6, 6), body
    assert scan_all(aws) == tables  # nothing to prune: nothing written


def test_at_the_cap_with_only_open_orders_nothing_is_written_and_retry_after_is_the_running_ones(
        capped, context, aws):
    (live,) = [place(capped, context, "live")[1]["order_id"]]
    parked = hand_written(aws, "ord_" + "a" * 32, "FAILED")
    counted_too(aws, parked)
    tables, started = scan_all(aws), len(executions())
    asked_at = time.time()  # the time left is read before the request: on a loaded machine seconds pass in it
    status, body, response = place(capped, context, "over")
    assert (status, body["open_orders"]) == (429, CAP), body
    assert scan_all(aws) == tables
    assert len(executions()) == started
    assert open_orders(aws) == {live, parked}
    remaining_s = (order(aws, live)["deadline_at"] - asked_at * 1000) / 1000
    assert 1 <= int(header(response, "Retry-After")) <= math.ceil(remaining_s) + 1  # the running one's, not parked's


def test_an_order_finishing_and_another_placed_during_the_prune_are_both_kept_right(capped, context, aws,
                                                                                   monkeypatch):
    live = place(capped, context, "live")[1]["order_id"]
    counted_too(aws, GONE[0])
    other = "ord_" + "b" * 32

    def meanwhile():  # the live order finishes (its release_slot), and its place is taken at once
        hand_written(aws, live, "COMPLETED")
        orders_of(aws).store.transact({"customer": orders_of(aws).release_slot(ALICE, live)})
        hand_written(aws, other, "EXECUTING", running=True)
        assert orders_of(aws).store.transact({"customer": orders_of(aws).take_slot(ALICE, other, CAP)}) is None

    about_to = before_the_prune(capped, monkeypatch, meanwhile)
    status, body, _ = place(capped, context, "new")
    assert status == 202, body
    assert about_to == [{GONE[0]}]  # read before the finish: only the gone one was to go
    assert open_orders(aws) == {other, body["order_id"]}  # the concurrent add kept, the finished one out


def test_an_id_read_as_gone_whose_order_is_placed_again_during_the_prune_stays_counted(capped, context, aws,
                                                                                       monkeypatch):
    counted_too(aws, GONE[0], GONE[1])
    # An expired order's key reused meanwhile: its id is live again, and the condition in the prune's write sees it.
    about_to = before_the_prune(capped, monkeypatch,
                                lambda: hand_written(aws, GONE[0], "PENDING", running=True))
    status, body, _ = place(capped, context, "new")
    assert status == 202, body
    assert about_to == [{GONE[0], GONE[1]}]
    assert open_orders(aws) == {GONE[0], body["order_id"]}


def test_the_prune_reads_and_writes_in_bounded_batches(api, context, aws, monkeypatch):
    cap = 150  # more than a BatchGetItem page (100) and a transaction's conditions (99)
    monkeypatch.setattr(api, "MAX_OPEN_ORDERS", cap)
    counted_too(aws, *GONE[:cap])
    calls = []
    send = api.store._call

    def counting(operation, **kwargs):
        calls.append((operation, len(kwargs.get("TransactItems") or [])
                      or sum(len(t["Keys"]) for t in (kwargs.get("RequestItems") or {}).values())))
        return send(operation, **kwargs)

    monkeypatch.setattr(api.store, "_call", counting)
    status, body, _ = place(api, context, "new")
    assert status == 202, body
    assert open_orders(aws) == {body["order_id"]}
    assert calls == [("batch_get_item", 2),  # the catalog, and what an earlier order of the key left
                     ("transact_write_items", 3),  # the order, its payment, the count: refused at the cap
                     ("batch_get_item", 100), ("batch_get_item", 50),  # the counted orders, consistently
                     ("transact_write_items", 100), ("transact_write_items", 52),  # the prune: 99 + 51 conditions
                     ("transact_write_items", 3)]  # the order again: admitted


def test_a_prune_that_leaves_too_little_time_answers_503_and_the_retry_with_the_key_is_admitted(
        capped, context, aws, monkeypatch):
    counted_too(aws, GONE[0], GONE[1])
    time_left, prune = capped.store.time_left, capped.orders.release_finished
    # The reads and the prune took the time (a large cap's pages, a slow DynamoDB): less than the order's write and
    # StartExecution need is left.
    before_the_prune(capped, monkeypatch, lambda: monkeypatch.setattr(capped.store, "time_left", lambda: 3.0))
    status, body, response = place(capped, context, "new")
    assert (status, header(response, "Retry-After")) == (503, "1"), body
    assert open_orders(aws) == set()  # the prune is done; nothing of the order written
    assert get(aws, "ORDERS_TABLE", order_id=order_id_for(ALICE, "new")) is None
    monkeypatch.setattr(capped.store, "time_left", time_left)
    monkeypatch.setattr(capped.orders, "release_finished", prune)
    status, body, _ = place(capped, context, "new")
    assert status == 202, body
    assert open_orders(aws) == {body["order_id"]}


def test_the_prune_reads_as_many_ids_as_the_largest_cap_the_template_allows():
    """A cap lowered by a deploy leaves the set over the new cap, never over the highest: reading that many reads
    every id the set can hold."""
    from order_saga.orders import MOST_OPEN_ORDERS
    from tests.unit.test_template import TEMPLATE

    assert MOST_OPEN_ORDERS == int(TEMPLATE.raw["Parameters"]["MaxOpenOrdersPerCustomer"]["MaxValue"])
