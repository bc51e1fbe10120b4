"""Outcome events: one per change INTO an ending saga status, with a deterministic id, in the documented shape;
PublishOutcome publishes them record by record and reports the first it could not publish (a partial batch response).

The samples in events/outcomes/ and every event order_saga.events builds are checked against
docs/events.schema.json; the template's rule and stream filter are checked to let exactly those through.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from order_saga.dynamo import to_ddb
from order_saga.events import OUTCOMES, SOURCE, InvalidOutcome, duration_ms, outcome
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


def test_confirmed_says_whether_the_coupon_applied():
    """CouponFailurePolicy=continue: a refused coupon lets the order go on at its original amount; OrderConfirmed says
    it was not applied, and why. An applied coupon says APPLIED; an order without one says nothing of coupons."""
    skipped = order("COMPLETED", "CONFIRMED", coupon="LAUNCH3", discount=0, subtotal=2500, total=2500,
                    coupon_outcome="NOT_APPLIED", coupon_error="CouponExhausted")
    applied = order("COMPLETED", "CONFIRMED", coupon="WELCOME10", discount=250, subtotal=2500,
                    coupon_outcome="APPLIED")
    details = [outcome(record(new, order("EXECUTING", "RECEIVED"))) for new in (skipped, applied,
                                                                                order("COMPLETED", "CONFIRMED"))]
    for event in details:
        assert list(VALIDATOR.iter_errors(envelope(event))) == []
    first, second, third = (event["Detail"] for event in details)
    assert (first["total"], first["discount"], first["coupon_outcome"], first["coupon_error"]) == (
        2500, 0, "NOT_APPLIED", "CouponExhausted")
    assert (second["coupon_outcome"], "coupon_error" in second) == ("APPLIED", False)
    assert not {"coupon", "coupon_outcome", "coupon_error"} & set(third)
    wrong = envelope(details[0])
    wrong["detail"]["coupon_error"] = "PaymentDeclined"  # not a coupon's refusal: the schema says which
    assert list(VALIDATOR.iter_errors(wrong)) != []


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


@pytest.mark.parametrize(("change", "problem"), [
    ({"customer_id": None}, "no customer_id"),
    ({"total": "22.50"}, "total not an integer"),
    ({"created_at": None, "currency": None}, "no currency, created_at"),
], ids=["no-customer", "total-as-text", "two-missing"])
def test_an_ending_order_that_cannot_make_a_valid_event_is_refused_not_published_malformed(change, problem):
    new = {k: v for k, v in {**order("COMPLETED", "CONFIRMED"), **change}.items() if v is not None}
    with pytest.raises(InvalidOutcome, match=problem):
        outcome(record(new, order("EXECUTING", "RECEIVED")))
    parked = {k: v for k, v in order("FAILED", "RECEIVED").items()}  # parked, but with no parked_error
    with pytest.raises(InvalidOutcome, match="no parked_error"):
        outcome(record(parked, order("COMPENSATING", "RECEIVED")))


# ---- the handler: a partial batch response, in stream order ----------------------------------------------------
class Bus:
    """A stand-in for EventBridge's PutEvents: keeps what it accepted; refuses the event ids in `refuse`."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.refuse: set[str] = set()
        self.set_aside: list[dict[str, Any]] = []  # what PublishOutcome sent to its failure queue

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        answers = []
        for entry in Entries:
            event_id = json.loads(entry["Detail"])["event_id"]
            if event_id in self.refuse:
                answers.append({"ErrorCode": "InternalFailure", "ErrorMessage": "try again"})
            else:
                self.accepted.append(entry)
                answers.append({"EventId": f"eb-{len(self.accepted)}"})
        return {"FailedEntryCount": sum("ErrorCode" in a for a in answers), "Entries": answers}

    def send_message(self, QueueUrl: str, MessageBody: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        self.set_aside.append(json.loads(MessageBody))
        return {"MessageId": f"m-{len(self.set_aside)}"}

    def ids(self) -> list[str]:
        return [json.loads(entry["Detail"])["event_id"] for entry in self.accepted]


@pytest.fixture
def publisher(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Bus]:
    """PublishOutcome's handler module, with the Bus in place of its EventBridge client."""
    for key, value in {"EVENT_BUS_NAME": "order-saga-test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_NAMESPACE": "OrderSaga",
                       "POWERTOOLS_SERVICE_NAME": "order-saga"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FAULT_RULES_TABLE", raising=False)
    sys.modules.pop("functions.publish_outcome.app", None)
    module = importlib.import_module("functions.publish_outcome.app")
    bus = Bus()
    monkeypatch.setattr(module, "_events", bus)
    monkeypatch.setattr(module, "FAILURES_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/failures")
    monkeypatch.setattr(module, "_sqs", bus)  # the Bus keeps what is set aside too
    return module, bus


def ending(order_id: str, sequence: int, **fields: Any) -> dict[str, Any]:
    """The stream record of order `order_id`'s change into COMPLETED, at `sequence`."""
    new = {k: v for k, v in {**order("COMPLETED", "CONFIRMED"), "order_id": order_id, **fields}.items()
           if v is not None}
    change = record(new, {**order("EXECUTING", "RECEIVED"), "order_id": order_id})
    change["dynamodb"].update(Keys=to_ddb({"order_id": order_id}), SequenceNumber=str(sequence))
    return {"eventID": f"e{sequence}", "eventSource": "aws:dynamodb", "awsRegion": "us-east-1", **change}


def failures(answer: dict[str, Any]) -> list[str]:
    return [failure["itemIdentifier"] for failure in answer["batchItemFailures"]]


def test_a_batch_that_publishes_is_a_complete_success_and_each_event_is_published_once_in_order(publisher, context):
    handler, bus = publisher
    inserted = {**ending("ord_skip", 3), "eventName": "INSERT"}
    inserted["dynamodb"]["NewImage"] = to_ddb({**order("EXECUTING", "RECEIVED"), "order_id": "ord_skip"})
    batch = [ending("ord_a", 1), ending("ord_b", 2), inserted, ending("ord_c", 4)]  # a change that ends no saga
    assert handler.lambda_handler({"Records": batch}, context) == {"batchItemFailures": []}
    assert bus.ids() == ["ord_a/OrderConfirmed", "ord_b/OrderConfirmed", "ord_c/OrderConfirmed"]


def test_the_first_record_that_fails_stops_the_batch_there_and_is_reported_with_every_record_after_it(
        publisher, context):
    handler, bus = publisher
    bus.refuse = {"ord_bad/OrderConfirmed"}  # EventBridge refuses it (for now): retried, in order
    batch = [ending("ord_a", 11), ending("ord_bad", 12), ending("ord_c", 13), ending("ord_d", 14)]
    answer = handler.lambda_handler({"Records": batch}, context)
    # Lambda goes on from the lowest: ord_a is not published again; ord_c and ord_d are not published ahead of it.
    assert failures(answer) == ["12", "13", "14"]
    assert bus.ids() == ["ord_a/OrderConfirmed"]
    assert bus.set_aside == []


@pytest.mark.parametrize("change", [{"customer_id": None}, {"total": "12.50"}])
def test_a_record_that_can_never_make_an_event_is_set_aside_at_once_and_holds_nothing_up(publisher, context,
                                                                                        change):
    """InvalidOutcome is not retried (a retry changes nothing and holds up the shard): the record goes to the
    failure queue with its sequence number, order id, reason and item, and the batch goes on."""
    handler, bus = publisher
    batch = [ending("ord_a", 11), ending("ord_bad", 12, **change), ending("ord_c", 13)]
    assert handler.lambda_handler({"Records": batch}, context) == {"batchItemFailures": []}
    assert bus.ids() == ["ord_a/OrderConfirmed", "ord_c/OrderConfirmed"]
    ((aside),) = bus.set_aside
    assert (aside["source"], aside["reason"], aside["order_id"], aside["sequenceNumber"]) == (
        "PublishOutcome", "InvalidOutcome", "ord_bad", "12")
    assert aside["newImage"]["order_id"] == {"S": "ord_bad"}


def test_a_record_that_cannot_be_set_aside_is_retried_like_any_failure(publisher, context, monkeypatch):
    handler, bus = publisher

    def down(**kwargs: Any) -> None:
        raise ConnectionError("SQS did not answer")

    monkeypatch.setattr(bus, "send_message", down)
    answer = handler.lambda_handler({"Records": [ending("ord_a", 11), ending("ord_bad", 12, customer_id=None)]},
                                    context)
    assert failures(answer) == ["12"]
    assert bus.ids() == ["ord_a/OrderConfirmed"]


def test_a_batch_whose_first_record_fails_is_a_function_error_so_the_mapping_splits_it(publisher, context):
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    handler, bus = publisher
    bus.refuse = {"ord_bad/OrderConfirmed"}
    with pytest.raises(BatchProcessingError):
        handler.lambda_handler({"Records": [ending("ord_bad", 21), ending("ord_b", 22)]}, context)
    assert bus.ids() == []
    # Alone, it fails the same way (retried by the mapping); the record beside it goes on.
    with pytest.raises(BatchProcessingError):
        handler.lambda_handler({"Records": [ending("ord_bad", 21)]}, context)
    assert handler.lambda_handler({"Records": [ending("ord_b", 22)]}, context) == {"batchItemFailures": []}
    assert bus.ids() == ["ord_b/OrderConfirmed"]


def test_a_record_is_not_tried_without_the_time_to_wait_for_eventbridge_s_answer(publisher, context):
    handler, bus = publisher
    remaining = iter([60_000, handler.ANSWER_MS - 1])
    context.get_remaining_time_in_millis = lambda: next(remaining)
    answer = handler.lambda_handler({"Records": [ending("ord_a", 31), ending("ord_b", 32), ending("ord_c", 33)]},
                                    context)
    assert failures(answer) == ["32", "33"]
    assert bus.ids() == ["ord_a/OrderConfirmed"]


def test_a_record_is_not_set_aside_without_the_time_for_send_message(publisher, context):
    """Setting a record aside is a 2 s SendMessage: started too late it would outlive the invocation (the batch would
    fail as a whole and repeat what it had done); the record is reported instead, and set aside on its retry."""
    handler, bus = publisher
    remaining = iter([60_000, handler.SET_ASIDE_MS - 1])
    context.get_remaining_time_in_millis = lambda: next(remaining)
    answer = handler.lambda_handler({"Records": [ending("ord_a", 41), ending("ord_bad", 42, customer_id=None)]},
                                    context)
    assert failures(answer) == ["42"]
    assert (bus.ids(), bus.set_aside) == (["ord_a/OrderConfirmed"], [])
