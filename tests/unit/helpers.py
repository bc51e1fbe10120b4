from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from typing import Any

from order_saga.config import Timing
from order_saga.dynamo import from_ddb, now_ms, to_ddb
from order_saga.gateway import LEDGER_PREFIX
from order_saga.inventory import Inventory
from order_saga.models import OrderLine, SagaState, request_hash
from order_saga.orders import Orders
from order_saga.payments import Payments, payment_id
from order_saga.saga import take_lease
from order_saga.store import Store
from tests.unit.conftest import HEARTBEAT, scan_all

EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:order-saga-dev:ord_1"


def orders_of(client: Any) -> Orders:
    return Orders(Store(client), os.environ["ORDERS_TABLE"], Timing.from_env())


def new_saga(client: Any, order_id: str = "ord_1", items: list[dict] | None = None,
             token: str = "tok_approve", customer_id: str = "cust-1") -> dict[str, Any]:
    """What the API does before starting the execution: the priced PENDING order and its payment, in one
    transaction; returns the execution input."""
    store = Store(client)
    timing = Timing.from_env()
    orders = Orders(store, os.environ["ORDERS_TABLE"], timing)
    lines = [OrderLine(**line) for line in items or [{"sku": "SKU-1", "quantity": 2}]]
    priced, total, currency = Inventory(store, os.environ["INVENTORY_TABLE"], timing).price(lines)
    body = {"items": [line.model_dump() for line in lines], "payment_token": token}
    now = now_ms()
    order = orders.new_order(order_id, customer_id, body["items"], priced, total, currency,
                             EXECUTION.replace(":ord_1", f":{order_id}"), request_hash(body), now)
    payments = Payments(store, os.environ["PAYMENTS_TABLE"])
    assert store.transact({"order": orders.put_new(order),
                           "payment:1": payments.put_new(order_id, 1, token, total, currency, now)}) is None
    return {"order_id": order_id, "customer_id": customer_id, "lease_expires_at": order["lease_expires_at"],
            "deadline_at": order["deadline_at"]}


def leased(client: Any, saga: dict[str, Any], execution: str = EXECUTION) -> dict[str, Any]:
    """The saga state once ReserveInventory's first write took the lease, before its reservation (saga.take_lease):
    for a test of what may happen between the two."""
    return take_lease(orders_of(client), SagaState(**saga), execution, now_ms()).model_dump(mode="json",
                                                                                            exclude_none=True)


def invoke(module: Any, context: Any, saga: dict[str, Any], execution: str = EXECUTION,
           redrive_count: int | None = None) -> dict[str, Any]:
    """A saga task's invocation, as the state machine makes it (`redrive_count`: a compensation's
    $$.Execution.RedriveCount)."""
    event = {"saga": saga, "execution_id": execution}
    if redrive_count is not None:
        event["redrive_count"] = redrive_count
    return module.lambda_handler(event, context)


def second_run_changes_nothing(client: Any, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs a step twice: the second run returns what the first returned (but for the lease's expiry) and
    leaves every table as the first run left it. Returns the first run's result."""
    first = run()
    tables = scan_all(client)
    second = run()
    assert {k: v for k, v in second.items() if k != HEARTBEAT} == {k: v for k, v in first.items() if k != HEARTBEAT}
    assert scan_all(client) == tables
    return first


def get(client: Any, table_env: str, **key: str) -> dict[str, Any] | None:
    resp = client.get_item(TableName=os.environ[table_env], Key=to_ddb(key), ConsistentRead=True)
    return from_ddb(resp["Item"]) if "Item" in resp else None


def stock(client: Any, sku: str) -> tuple[int, int, int]:
    item = get(client, "INVENTORY_TABLE", pk=f"SKU#{sku}", sk="STOCK")
    assert item is not None
    return item["available"], item["reserved"], item["sold"]


def order(client: Any, order_id: str = "ord_1") -> dict[str, Any]:
    item = get(client, "ORDERS_TABLE", order_id=order_id)
    assert item is not None
    return item


def payment(client: Any, order_id: str = "ord_1") -> dict[str, Any] | None:
    return get(client, "PAYMENTS_TABLE", payment_id=payment_id(order_id))


def ledger(client: Any, order_id: str = "ord_1") -> dict[str, Any] | None:
    return get(client, "PAYMENTS_TABLE", payment_id=LEDGER_PREFIX + payment_id(order_id))


def reservation(client: Any, order_id: str = "ord_1") -> dict[str, Any] | None:
    return get(client, "INVENTORY_TABLE", pk=f"ORDER#{order_id}", sk="RESERVATION")


def failed_execution_event(started: datetime.datetime, order_id: str = "ord_1") -> dict[str, Any]:
    """The EventBridge event Step Functions sends when the execution EXECUTION, started at `started`, fails."""
    return {"version": "0", "id": "e1", "detail-type": "Step Functions Execution Status Change",
            "source": "aws.states", "account": "123456789012", "time": "2026-12-06T07:00:01Z", "region": "us-east-1",
            "resources": [EXECUTION], "detail": {
                "executionArn": EXECUTION, "stateMachineArn": EXECUTION.replace(":execution:", ":stateMachine:")
                .rsplit(":", 1)[0], "name": order_id, "status": "FAILED",
                "startDate": int(started.timestamp() * 1000), "stopDate": int(started.timestamp() * 1000) + 900,
                "input": json.dumps({"order_id": order_id}), "inputDetails": {"included": True}}}


def reap(handlers: Callable[[str], Any], context: Any, batch_size: int = 5, worker: Any = None,
         sweep: Any = None) -> dict[str, Any]:
    """The reaper as its schedule and its queue run it: the sweep queues the work, then every message goes to the
    worker (ReaperQueue's event source mapping, BatchSize 5) through its handler. Returns what was done, item by
    item: {"compensated": [...], "completed": [...], "released_reservations": [...], "reconciled": {payment id:
    outcome}, "failed": [ids whose message the worker reported failed]}. Those messages stay on the queue (in flight:
    they come back after the visibility timeout). `worker`, `sweep`: the modules, if the test patched them."""
    import boto3

    swept = (sweep or handlers("reaper")).lambda_handler({"source": "aws.events"}, context)
    assert swept["refused"] == [], swept
    sqs, url = boto3.client("sqs", region_name="us-east-1"), os.environ["REAPER_QUEUE_URL"]
    messages = []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages"):
        messages += got
    assert len(messages) == sum(swept["queued"].values()), (swept, messages)
    worker = worker or handlers("reaper_worker")
    real_reap, done = worker.reap, []

    def recorded(work: Any, owner: str) -> str:  # what each item came to (the handler answers failures only)
        outcome = real_reap(work, owner)
        done.append((work, outcome))
        return outcome

    worker.reap = recorded
    try:
        return _work(sqs, url, worker, messages, context, batch_size, done)
    finally:
        worker.reap = real_reap


def _work(sqs: Any, url: str, worker: Any, messages: list[dict[str, Any]], context: Any, batch_size: int,
          done: list[tuple[Any, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"compensated": [], "completed": [], "released_reservations": [], "reconciled": {},
                           "failed": []}
    for start in range(0, len(messages), batch_size):
        batch = messages[start:start + batch_size]
        answer = worker.lambda_handler({"Records": [sqs_record(m) for m in batch]}, context)
        failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
        out["failed"] += [json.loads(m["Body"])["id"] for m in batch if m["MessageId"] in failed]
        for m in batch:
            if m["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    for work, outcome in done:
        if outcome in ("compensated", "completed"):
            out[outcome].append(work.id)
        elif outcome == "released":
            out["released_reservations"].append(work.id)
        elif work.kind == "payment":
            out["reconciled"][work.id] = outcome
    return out


def sqs_record(message: dict[str, Any]) -> dict[str, Any]:
    """An SQS message as Lambda's event source mapping hands it over."""
    return {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
            "attributes": {"ApproximateReceiveCount": message.get("Attributes", {}).get("ApproximateReceiveCount",
                                                                                        "1")},
            "messageAttributes": {}, "md5OfBody": message.get("MD5OfBody", ""), "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ReaperQueue", "awsRegion": "us-east-1"}
