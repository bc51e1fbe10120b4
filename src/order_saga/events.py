"""Outcome events: what other services learn when a saga ends, published on the order events bus.

  OrderConfirmed   the saga COMPLETED: paid, stock sold
  OrderCancelled   the saga COMPENSATED: every effect undone; `error` is the business error that started it
  SagaParked       a compensation spent its retries: an operator finishes it (docs/operations.md)

They come from the orders table's stream (a transactional outbox: the change that ends the saga is the
event's source), read by PublishOutcome: each change INTO one of those saga statuses is one event, whoever
made it (a step, a retried step, the reaper, ParkSaga). A change that leaves the status as it was (a repeat,
a later refund on a parked order) is not an outcome.

Delivery is at least once: the stream hands a batch to the function again from its first record that failed, so
an event whose PutEvents succeeded may be sent again if the function died before it said so. Every event carries a
deterministic id, `<order id>/<event type>`, in its detail; consumers keep the ids they have seen and ignore a
repeat (docs/events.md).

An order item that cannot make a valid event (a field docs/events.schema.json requires is missing, or not a
number where it must be one) raises InvalidOutcome: nothing is published for it, and its stream record ends in
the failure queue for an operator, rather than a malformed event reaching every consumer.
"""

from __future__ import annotations

from typing import Any

from order_saga import models
from order_saga.dynamo import from_ddb

SOURCE = "order-saga"
OUTCOMES = {models.COMPLETED: "OrderConfirmed", models.COMPENSATED: "OrderCancelled", models.FAILED: "SagaParked"}
# What every outcome event's detail must carry (docs/events.schema.json's `required`), and what each kind adds.
REQUIRED = ("customer_id", "order_status", "total", "currency", "created_at", "ended_at")
REQUIRED_OF = {"OrderConfirmed": (), "OrderCancelled": ("error",), "SagaParked": ("parked_error",)}
INTEGERS = ("total", "created_at", "ended_at", "discount")


class InvalidOutcome(ValueError):
    """The order item ends a saga but cannot make a valid outcome event: publishing it would break the contract."""


def outcome(record: dict[str, Any]) -> dict[str, Any] | None:
    """The outcome event of one stream record (None: the change ends no saga)."""
    change = record.get("dynamodb") or {}
    if "NewImage" not in change:
        return None
    image = change["NewImage"]
    # Most changes end no saga: their status is deserialized alone, and the whole image only for an outcome's.
    status = from_ddb({"saga_status": image["saga_status"]})["saga_status"] if "saga_status" in image else None
    if status not in OUTCOMES:
        return None
    new = from_ddb(image)
    old = from_ddb(change["OldImage"]) if change.get("OldImage") else {}  # read only for a change into an outcome
    if old.get("saga_status") == status:
        return None
    kind = OUTCOMES[status]
    order_id = str(new["order_id"])
    detail: dict[str, Any] = {
        "event_id": f"{order_id}/{kind}", "order_id": order_id, "customer_id": new.get("customer_id"),
        "order_status": new.get("status"), "saga_status": status, "total": new.get("total"),
        "currency": new.get("currency"), "created_at": new.get("created_at"), "ended_at": new.get("updated_at"),
    }
    if new.get("coupon"):  # and, once ApplyCoupon decided, whether it applied (the `continue` policy: maybe not)
        detail.update(coupon=new["coupon"], discount=new.get("discount"), coupon_outcome=new.get("coupon_outcome"),
                      coupon_error=new.get("coupon_error"))
    if kind == "OrderCancelled":
        failure = new.get("failure") or {}
        reaped = ((new.get("steps") or {}).get("Reaper") or {}).get("error")  # a takeover: LeaseExpired
        detail.update(error=failure.get("error") or reaped or "Unknown", failed_step=failure.get("step"))
    if kind == "SagaParked":
        detail["parked_error"] = new.get("parked_error")
    detail = {k: v for k, v in detail.items() if v is not None}
    missing = [name for name in REQUIRED + REQUIRED_OF[kind] if name not in detail]
    not_integers = [name for name in INTEGERS if name in detail and
                    (not isinstance(detail[name], int) or isinstance(detail[name], bool))]
    if missing or not_integers:
        raise InvalidOutcome(f"order {order_id} ({kind}): " + "; ".join(
            ([f"no {', '.join(missing)}"] if missing else []) +
            ([f"{', '.join(not_integers)} not an integer"] if not_integers else [])))
    return {"DetailType": kind, "Detail": detail}


def duration_ms(event: dict[str, Any]) -> int | None:
    detail = event["Detail"]
    if detail.get("created_at") is None or detail.get("ended_at") is None:
        return None
    return int(detail["ended_at"]) - int(detail["created_at"])
