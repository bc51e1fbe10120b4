"""PublishOutcome: the orders table's stream -> one outcome event per finished saga, on the order events bus
(order_saga.events). Triggered by a DynamoDB stream event source mapping, filtered to the changes that may
end a saga; emits SagaDuration (and the outcome counts) for the dashboard."""

from __future__ import annotations

import json
import os
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga.errors import PublishFailed
from order_saga.events import SOURCE, duration_ms, outcome
from order_saga.step import aws_client, count, lambda_function, logger

# PutEvents is not idempotent: one given up on may have landed, and the batch's retry repeats its events.
# So wait for the answer (6 s of the function's 10), rather than retry early.
_events = aws_client("events", read_timeout=6.0)
BUS = os.environ["EVENT_BUS_NAME"]


@lambda_function("PublishOutcome", None)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcomes = [o for o in (outcome(record) for record in event.get("Records") or []) if o is not None]
    for start in range(0, len(outcomes), 10):  # PutEvents takes 10 entries
        chunk = outcomes[start:start + 10]
        answer = _events.put_events(Entries=[{"Source": SOURCE, "DetailType": o["DetailType"], "EventBusName": BUS,
                                              "Detail": json.dumps(o["Detail"])} for o in chunk])
        if answer.get("FailedEntryCount"):
            failed = [e for e in answer["Entries"] if e.get("ErrorCode")]
            raise PublishFailed(f"EventBridge refused {len(failed)} of {len(chunk)} events: {failed[:3]}")
    for o in outcomes:
        count(o["DetailType"], "PublishOutcome")
        took = duration_ms(o)
        if took is not None:
            count("SagaDuration", "PublishOutcome", took, MetricUnit.Milliseconds)
        logger.info("outcome published", extra={"event_id": o["Detail"]["event_id"]})
    return {"published": [o["Detail"]["event_id"] for o in outcomes]}
