"""Outcome events: what other services learn when a saga ends, published on the order events bus.

  OrderConfirmed   the saga COMPLETED: paid, stock sold
  OrderCancelled   the saga COMPENSATED: every effect undone; `error` is the business error that started it
  SagaParked       a compensation spent its retries: an operator finishes it (docs/operations.md)

They come from the orders table's stream (a transactional outbox: the change that ends the saga is the
event's source), read by PublishOutcome: each change INTO one of those saga statuses is one event, whoever
made it (a step, a retried step, the reaper, ParkSaga). A change that leaves the status as it was (a repeat,
a later refund on a parked order) is not an outcome.

Delivery is at least once: the stream hands a batch to the function until it succeeds, so an event whose
PutEvents succeeded may be sent again if the batch is retried. Every event carries a deterministic id,
`<order id>/<event type>`, in its detail; consumers keep the ids they have seen and ignore a repeat
(docs/events.md).
"""

from __future__ import annotations

from typing import Any

from order_saga import models
from order_saga.dynamo import from_ddb

SOURCE = "order-saga"
OUTCOMES = {models.COMPLETED: "OrderConfirmed", models.COMPENSATED: "OrderCancelled", models.FAILED: "SagaParked"}


def outcome(record: dict[str, Any]) -> dict[str, Any] | None:
    """The outcome event of one stream record (None: the change ends no saga)."""
    change = record.get("dynamodb") or {}
    if "NewImage" not in change:
        return None
    new = from_ddb(change["NewImage"])
    old = from_ddb(change["OldImage"]) if change.get("OldImage") else {}
    status = new.get("saga_status")
    if status not in OUTCOMES or old.get("saga_status") == status:
        return None
    kind = OUTCOMES[status]
    order_id = str(new["order_id"])
    detail: dict[str, Any] = {
        "event_id": f"{order_id}/{kind}", "order_id": order_id, "customer_id": new.get("customer_id"),
        "order_status": new.get("status"), "saga_status": status, "total": new.get("total"),
        "currency": new.get("currency"), "created_at": new.get("created_at"), "ended_at": new.get("updated_at"),
    }
    if new.get("coupon"):
        detail.update(coupon=new["coupon"], discount=new.get("discount"))
    if kind == "OrderCancelled":
        failure = new.get("failure") or {}
        reaped = ((new.get("steps") or {}).get("Reaper") or {}).get("error")  # a takeover: LeaseExpired
        detail.update(error=failure.get("error") or reaped or "Unknown", failed_step=failure.get("step"))
    if kind == "SagaParked":
        detail["parked_error"] = new.get("parked_error")
    return {"DetailType": kind, "Detail": {k: v for k, v in detail.items() if v is not None}}


def duration_ms(event: dict[str, Any]) -> int | None:
    detail = event["Detail"]
    if detail.get("created_at") is None or detail.get("ended_at") is None:
        return None
    return int(detail["ended_at"]) - int(detail["created_at"])
