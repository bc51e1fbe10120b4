"""Reaper (the sweep): a scheduled function that finds what abandoned sagas left and queues it, one message per item.

It reads every shard of the three indexes, every page of each, and sends each item to ReaperQueue (SendMessageBatch,
ten at a time), where ReaperWorker takes it with a bounded concurrency (functions/reaper_worker/app.py says what is
done with each kind):

1. orders whose lease expired while their saga is unfinished, with the lease expiry seen (the worker's takeover is
   conditional on it);
2. reservations past their expiry;
3. payments whose reconciliation is due.

The sweep writes nothing, so it cannot race a saga. It skips nothing either: an item found again while its first
message is still queued is queued again (docs/operations.md, "The reaper": a duplicate finds the order already taken,
the reservation released, the payment reconciled, and does nothing). A message SQS refuses is logged and counted
(ReaperFailed); the item is still there at the next sweep.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.inventory import Inventory
from order_saga.models import ReaperWork
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.step import aws_client, count, dynamodb_store, lambda_function, logger

TIMING = Timing.from_env()
store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], TIMING)
inventory = Inventory(store, os.environ["INVENTORY_TABLE"], TIMING)
payments = Payments(store, os.environ["PAYMENTS_TABLE"], timing=TIMING)
QUEUE_URL = os.environ["REAPER_QUEUE_URL"]
_sqs = aws_client("sqs")
BATCH = 10  # SendMessageBatch's limit


def found(now: int) -> list[ReaperWork]:
    """Everything the sweep finds due at `now`: abandoned orders first (oldest lease first), then expired
    reservations, then due reconciliations."""
    return ([ReaperWork(kind="order", id=e["order_id"], lease_expires_at=int(e["lease_expires_at"]))
             for e in orders.abandoned(now)]
            + [ReaperWork(kind="reservation", id=str(e["pk"]).removeprefix("ORDER#")) for e in inventory.expired(now)]
            + [ReaperWork(kind="payment", id=pid) for pid in payments.to_reconcile(now)])


def enqueue(work: list[ReaperWork]) -> list[str]:
    """Send each item as one message; returns the ids of those SQS refused (each logged and counted)."""
    refused: list[str] = []
    for start in range(0, len(work), BATCH):
        batch = work[start:start + BATCH]
        answer = _sqs.send_message_batch(QueueUrl=QUEUE_URL, Entries=[
            {"Id": str(n), "MessageBody": item.model_dump_json(exclude_none=True)} for n, item in enumerate(batch)])
        for failure in answer.get("Failed") or []:
            item = batch[int(failure["Id"])]
            logger.error("the reaper queue refused an item; the next sweep finds it again",
                         extra={"kind": item.kind, "id": item.id, "code": failure.get("Code"),
                                "reason": failure.get("Message")})
            count("ReaperFailed", "Reaper")
            refused.append(item.id)
    return refused


@lambda_function("Reaper", store)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    work = found(now_ms())
    refused = enqueue(work)
    queued = {kind: sum(item.kind == kind for item in work) for kind in ("order", "reservation", "payment")}
    logger.info("sweep done", extra={"queued": queued, "refused": refused})
    return {"queued": queued, "refused": refused}
