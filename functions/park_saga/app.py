"""ParkSaga: a compensation spent its retry budget. Park the saga state for an operator.

The order is marked FAILED (fenced: only by the execution that still owns it), then the state goes to the
parked-sagas queue (which has a dead-letter queue) and the SagaParked metric feeds an alarm.
docs/operations.md says how to finish a parked saga. The state carries no card token (it never does); the
message names the failures by error only. `execution_id` is the execution's identity, `<ARN>#<start time>`.
"""

from __future__ import annotations

import hashlib
import json
import os

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.step import aws_client, count, dynamodb_store, logger, saga_step

store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], Timing.from_env())
_sqs = aws_client("sqs")
QUEUE_URL = os.environ["PARKED_SAGAS_QUEUE_URL"]


@saga_step("ParkSaga", store)
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    failed = ", ".join(f"{step}: {f.error}" for step, f in saga.failures.items())
    if not orders.park(saga, execution_id, failed, now_ms()):
        # Not this execution's to park: the reaper took the order over (it finishes it), or the order is past
        # the pivot or finished. Nothing for an operator.
        logger.warning("not parked: the order is no longer this execution's", extra={"failures": failed})
        return saga
    _sqs.send_message(
        QueueUrl=QUEUE_URL,
        MessageBody=json.dumps({"execution_id": execution_id, "saga": saga.dump()}),
        MessageAttributes={"order_id": {"DataType": "String", "StringValue": saga.order_id}},
        # A FIFO queue: a retried ParkSaga within five minutes does not park the saga twice.
        MessageGroupId=saga.order_id,
        MessageDeduplicationId=hashlib.sha256(execution_id.encode()).hexdigest(),
    )
    count("SagaParked", "ParkSaga")
    logger.error("saga parked: compensation failed", extra={"failures": failed})
    return saga
