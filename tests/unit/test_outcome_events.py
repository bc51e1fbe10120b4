"""Outcome events: one per change INTO an ending saga status, with a deterministic id, in the documented shape.

The samples in events/outcomes/ and every event order_saga.events builds are checked against
docs/events.schema.json; the template's rule and stream filter are checked to let exactly those through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from order_saga.dynamo import to_ddb
from order_saga.events import OUTCOMES, SOURCE, duration_ms, outcome
from sagalocal.template import Template

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs/events.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def order(saga_status: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"order_id": "ord_1", "customer_id": "sub-1", "status": status, "saga_status": saga_status,
            "total": 2250, "currency": "USD", "created_at": 1_000, "updated_at": 3_500, **extra}


def record(new: dict[str, Any] | None, old: dict[str, Any] | None = None, name: str = "MODIFY") -> dict[str, Any]:
    change: dict[str, Any] = {"Keys": to_ddb({"order_id": "ord_1"})}
    if new is not None:
        change["NewImage"] = to_ddb(new)
    if old is not None:
        change["OldImage"] = to_ddb(old)
    return {"eventName": name, "dynamodb": change}


def envelope(event: dict[str, Any]) -> dict[str, Any]:
    """What a consumer receives: EventBridge's envelope around the detail PublishOutcome puts."""
    return {"version": "0", "id": "x", "detail-type": event["DetailType"], "source": SOURCE, "time": "t",
            "region": "us-east-1", "resources": [], "detail": event["Detail"]}


def test_the_schema_is_valid_and_every_sample_matches_it():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    samples = sorted((ROOT / "events/outcomes").glob("*.json"))
    kinds = set()
    for path in samples:
        sample = json.loads(path.read_text())
        assert list(VALIDATOR.iter_errors(sample)) == [], path.name
        kinds.add(sample["detail-type"])
    assert kinds == set(OUTCOMES.values()), "one sample per outcome event"


@pytest.mark.parametrize(("saga_status", "status", "kind"), [
    ("COMPLETED", "CONFIRMED", "OrderConfirmed"),
    ("COMPENSATED", "CANCELLED", "OrderCancelled"),
    ("FAILED", "RECEIVED", "SagaParked"),
])
def test_a_change_into_an_ending_status_is_one_event_with_a_deterministic_id(saga_status, status, kind):
    extra = {"failure": {"step": "AuthorizePayments", "error": "PaymentDeclined"}, "parked_error": "TransientError"}
    new = order(saga_status, status, **extra)
    event = outcome(record(new, order("EXECUTING", "RECEIVED")))
    assert event is not None
    assert event["DetailType"] == kind
    assert event["Detail"]["event_id"] == f"ord_1/{kind}"
    assert list(VALIDATOR.iter_errors(envelope(event))) == []
    # The same change delivered again (a retried stream batch) is the same event, id and all.
    assert outcome(record(new, order("EXECUTING", "RECEIVED"))) == event


def test_cancelled_names_the_business_error_and_the_step():
    new = order("COMPENSATED", "CANCELLED", failure={"step": "ApplyCoupon", "error": "CouponExhausted"},
                coupon="LAUNCH3", discount=500)
    detail = outcome(record(new, order("COMPENSATING", "RECEIVED")))["Detail"]
    assert (detail["error"], detail["failed_step"]) == ("CouponExhausted", "ApplyCoupon")
    assert (detail["coupon"], detail["discount"]) == ("LAUNCH3", 500)


def test_confirmed_carries_the_coupon_and_the_discounted_total():
    new = order("COMPLETED", "CONFIRMED", coupon="WELCOME10", discount=250, subtotal=2500)
    event = outcome(record(new, order("EXECUTING", "RECEIVED")))
    assert (event["Detail"]["total"], event["Detail"]["discount"]) == (2250, 250)
    assert list(VALIDATOR.iter_errors(envelope(event))) == []


@pytest.mark.parametrize("change", [
    record(order("COMPLETED", "CONFIRMED"), order("COMPLETED", "CONFIRMED")),  # a repeat rewrote the order
    record(order("FAILED", "RECEIVED"), order("FAILED", "RECEIVED")),  # a later write on a parked order
    record(order("EXECUTING", "RECEIVED"), order("PENDING", "RECEIVED")),  # the saga goes on
    record(order("COMPENSATING", "RECEIVED"), order("EXECUTING", "RECEIVED")),  # the reaper took over
    record(None, order("COMPLETED", "CONFIRMED"), name="REMOVE"),  # a deleted order ends nothing
], ids=["repeat", "parked-again", "executing", "compensating", "removed"])
def test_a_change_that_ends_no_saga_is_no_event(change):
    assert outcome(change) is None


def test_an_order_inserted_already_ended_is_an_event():
    # (no OldImage: the operator's import of a finished order, or a stream without OLD images)
    event = outcome(record(order("COMPENSATED", "CANCELLED"), name="INSERT"))
    assert event is not None
    assert event["Detail"]["error"] == "Unknown"


def test_an_order_the_reaper_finished_is_cancelled_with_lease_expired():
    new = order("COMPENSATED", "CANCELLED", steps={"Reaper": {"status": "SUCCEEDED", "error": "LeaseExpired"}})
    detail = outcome(record(new, order("COMPENSATING", "RECEIVED")))["Detail"]
    assert detail["error"] == "LeaseExpired"
    assert "failed_step" not in detail


def test_saga_duration_is_from_acceptance_to_the_ending_write():
    event = outcome(record(order("COMPLETED", "CONFIRMED"), order("EXECUTING", "RECEIVED")))
    assert duration_ms(event) == 2_500
    event["Detail"].pop("created_at")
    assert duration_ms(event) is None


def test_the_template_filters_and_routes_exactly_the_outcome_events():
    template = Template(ROOT / "template.yaml")
    function = template.properties("PublishOutcomeFunction")
    stream = next(e for e in function["Events"].values() if e["Type"] == "DynamoDB")
    patterns = [json.loads(f["Pattern"]) for f in stream["Properties"]["FilterCriteria"]["Filters"]]
    statuses = {s for p in patterns for s in p["dynamodb"]["NewImage"]["saga_status"]["S"]}
    assert statuses == set(OUTCOMES), "the stream filter lets through the changes that may end a saga, no more"
    rule = template.properties("OutcomeEventsRule")
    assert rule["EventPattern"]["source"] == [SOURCE]
    assert set(rule["EventPattern"]["detail-type"]) == set(OUTCOMES.values())
