"""PublishOutcome: the orders table's stream -> one outcome event per finished saga, on the order events bus
(order_saga.events). Triggered by a DynamoDB stream event source mapping, filtered to the changes that may
end a saga; emits SagaDuration (and the outcome counts) for the dashboard.

Two kinds of failure, two answers:
- A record that can never make a valid event (InvalidOutcome: the order item lacks what the event's schema needs)
  is set aside at once: it goes to the failure queue (OutcomeFailuresQueue) with its sequence number, its order id,
  the reason and the item, and counts as processed. Retrying it would change nothing and hold up its shard.
- Anything else (EventBridge refuses or does not answer, too little time left) is retried: a partial batch
  response (the mapping's ReportBatchItemFailures), through Powertools' BatchProcessor. Each record is published
  on its own, in stream order, and the first one that fails stops the batch there; it and every record after it
  are reported in batchItemFailures, by sequence number, so Lambda goes on from it: nothing before it is published
  twice, nothing after it ahead of it. The mapping retries without a count limit, for as long as the record is
  younger than MaximumRecordAgeInSeconds (an EventBridge outage of hours loses nothing); a record older than that
  is given up on, and the mapping sends its invocation record to the same queue (docs/events.md says how an
  operator replays either kind).
"""

from __future__ import annotations

import json
import os
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga.errors import PublishFailed
from order_saga.events import SOURCE, InvalidOutcome, duration_ms, outcome
from order_saga.step import RareClient, aws_client, count, lambda_function, logger

# PutEvents is not idempotent: one given up on may have landed, and the record's retry repeats its event.
# So wait for the answer (6 s of the function's 10), rather than retry early.
PUT_EVENTS_SECONDS = 6.0
_events = aws_client("events", read_timeout=PUT_EVENTS_SECONDS)
BUS = os.environ["EVENT_BUS_NAME"]
FAILURES_QUEUE_URL = os.environ.get("OUTCOME_FAILURES_QUEUE_URL", "")
_sqs = RareClient("sqs")  # only for a record set aside (rare), so made then
# A record is published only if a PutEvents that takes its whole read timeout still ends before the function's.
ANSWER_MS = int(PUT_EVENTS_SECONDS * 1000) + 500
SET_ASIDE_MS = 2500  # and a record is set aside only while SendMessage's 2 s attempt still fits


class NotAttempted(Exception):
    """The record was not tried in this invocation (an earlier one failed, or too little time is left); it is
    reported failed, so the stream hands it over again."""


class InOrderStreamProcessor(BatchProcessor):
    """BatchProcessor for a DynamoDB stream whose records must not overtake one another: once a record fails, the
    ones after it are reported failed without being tried (Powertools' SqsFifoPartialProcessor does the same for
    FIFO queues). Lambda retries from the first failed record anyway; trying the later ones now would publish them
    twice, or before the record that failed."""

    def __init__(self) -> None:
        super().__init__(EventType.DynamoDBStreams)

    def _process_record(self, record: dict[str, Any]) -> Any:
        if self.fail_messages:
            return self.failure_handler(record=self._to_batch_type(record, event_type=self.event_type),
                                        exception=(NotAttempted, NotAttempted("a record before it failed"), None))
        return super()._process_record(record)


processor = InOrderStreamProcessor()


def publish(record: DynamoDBRecord, lambda_context: LambdaContext) -> str | None:
    """Publish the record's outcome event, if it has one; the event's id. Raises if it is not published."""
    change = record.raw_event.get("dynamodb") or {}
    sequence = change.get("SequenceNumber")
    try:
        try:
            event = outcome(record.raw_event)
        except InvalidOutcome as exc:
            if lambda_context.get_remaining_time_in_millis() < SET_ASIDE_MS:
                raise NotAttempted("too little time left to set the record aside") from exc
            set_aside(record, exc)
            return None
        if event is None:
            return None
        if lambda_context.get_remaining_time_in_millis() < ANSWER_MS:
            raise NotAttempted("too little time left to wait for PutEvents' answer")
        answer = _events.put_events(Entries=[{"Source": SOURCE, "DetailType": event["DetailType"],
                                              "EventBusName": BUS, "Detail": json.dumps(event["Detail"])}])
        if answer.get("FailedEntryCount"):
            refused = answer["Entries"][0]
            raise PublishFailed(f"EventBridge refused {event['Detail']['event_id']}: "
                                f"{refused.get('ErrorCode')} {refused.get('ErrorMessage')}")
    except Exception as exc:
        order_id = ((change.get("Keys") or {}).get("order_id") or {}).get("S")
        logger.warning("outcome not published", extra={"sequence_number": sequence, "order_id": order_id,
                                                        "error": type(exc).__name__, "reason": str(exc)})
        raise
    count(event["DetailType"], "PublishOutcome")
    took = duration_ms(event)
    if took is not None:
        count("SagaDuration", "PublishOutcome", took, MetricUnit.Milliseconds)
    logger.info("outcome published", extra={"event_id": event["Detail"]["event_id"], "sequence_number": sequence})
    return str(event["Detail"]["event_id"])


def set_aside(record: DynamoDBRecord, reason: InvalidOutcome) -> None:
    """A record that can never be published, to the failure queue (raises if the queue does not take it: the
    record is then retried like any other failure)."""
    change = record.raw_event.get("dynamodb") or {}
    order_id = ((change.get("Keys") or {}).get("order_id") or {}).get("S")
    if not FAILURES_QUEUE_URL:
        raise reason
    _sqs.send_message(QueueUrl=FAILURES_QUEUE_URL, MessageBody=json.dumps({
        "source": "PublishOutcome", "reason": type(reason).__name__, "error": str(reason), "order_id": order_id,
        "sequenceNumber": change.get("SequenceNumber"), "eventSourceARN": record.event_source_arn,
        "newImage": change.get("NewImage")}))
    count("OutcomeSetAside", "PublishOutcome")
    logger.error("outcome set aside: the order makes no valid event", extra={
        "sequence_number": change.get("SequenceNumber"), "order_id": order_id, "reason": str(reason)})


@lambda_function("PublishOutcome", None)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=publish, processor=processor, context=context)
