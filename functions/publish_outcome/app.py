"""PublishOutcome: the orders table's stream -> one outcome event per finished saga, on the order events bus
(order_saga.events). Triggered by a DynamoDB stream event source mapping, filtered to the changes that may
end a saga; emits SagaDuration (and the outcome counts) for the dashboard.

A partial batch response (the mapping's ReportBatchItemFailures), through Powertools' BatchProcessor: each record
is published on its own, in stream order, and the first one that cannot be (EventBridge refuses it or does not
answer, or the order item makes no valid event) stops the batch there. It and every record after it are reported
in batchItemFailures, by sequence number: Lambda goes on from the first of them, so nothing before it is published
twice, and nothing after it is published ahead of it. A batch whose first record fails has failed as a whole:
BatchProcessor raises, a function error, and the mapping splits the batch (BisectBatchOnFunctionError) until the
record is alone; retried alone until MaximumRetryAttempts, it is given up on and its invocation record goes to the
failure queue (docs/events.md), while the records after it go on.
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
from order_saga.events import SOURCE, duration_ms, outcome
from order_saga.step import aws_client, count, lambda_function, logger

# PutEvents is not idempotent: one given up on may have landed, and the record's retry repeats its event.
# So wait for the answer (6 s of the function's 10), rather than retry early.
PUT_EVENTS_SECONDS = 6.0
_events = aws_client("events", read_timeout=PUT_EVENTS_SECONDS)
BUS = os.environ["EVENT_BUS_NAME"]
# A record is published only if a PutEvents that takes its whole read timeout still ends before the function's.
ANSWER_MS = int(PUT_EVENTS_SECONDS * 1000) + 500


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
        event = outcome(record.raw_event)
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


@lambda_function("PublishOutcome", None)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=publish, processor=processor, context=context)
