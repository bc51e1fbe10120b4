"""ParkSaga: an execution of the saga failed with its order unfinished. Park the saga for an operator.

Run by EventBridge on Step Functions' "Execution Status Change" events (status FAILED, this state machine only:
see the rule in template.yaml), not by the state machine: a compensation that spends its retries fails the
execution at that very state, so that RedriveExecution resumes the rollback there once the cause is fixed
(docs/operations.md). Every FAILED execution comes here, most of them finished sagas (SagaCompensated, an
OrderLocked refusal): the conditional write below tells them apart. It parks only an order that this execution
still owns (owner `<ARN>#<start time>`) and that is unfinished: PENDING, EXECUTING or COMPENSATING (one read
tells; the write is conditional on the same). Not an order the reaper took over (it finishes it), nor one past the
pivot, completed, compensated or parked already.

Parking: the order is FAILED and out of the reaper's index (so the reaper does not fight the operator), one
message goes to the parked-sagas FIFO queue (deduplicated on the execution and its redrive count), and the
SagaParked metric feeds the alarm. The message carries no card token.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.models import ExecutionStatusChange
from order_saga.orders import Orders
from order_saga.step import RareClient, count, dynamodb_store, lambda_function, logger

store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], Timing.from_env())
# Called only for a saga to park (rare: most failed executions are not), so made then.
_sqs = RareClient("sqs")
_sfn = RareClient("stepfunctions")
QUEUE_URL = os.environ["PARKED_SAGAS_QUEUE_URL"]


class ExecutionFailed(EventBridgeModel):
    detail: ExecutionStatusChange


def _order_id_of(event: Any) -> str | None:
    detail = event.get("detail") if isinstance(event, dict) else None
    return ExecutionStatusChange.model_validate(detail).order_id() if isinstance(detail, dict) else None


@lambda_function("ParkSaga", store, _order_id_of)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    change = parse(event=event, model=ExecutionFailed).detail
    order_id = change.order_id()
    logger.append_keys(order_id=order_id, execution_arn=change.execution_arn, step="ParkSaga")
    if order_id is None:
        logger.warning("not parked: the execution's input names no order")
        return {"parked": False}
    order = orders.get(order_id)
    owner = orders.owner_of(order, change.execution_arn, change.start_date)
    if owner is None or not (orders.parkable(order) or orders.parked_by(order, owner)):
        # A finished saga (compensated, refused, completed), or one the reaper took over: nothing for an operator.
        return {"parked": False}
    # Only for a saga to park (rare): DescribeExecution has a low API quota, and most failed executions are not.
    described = _sfn.describe_execution(executionArn=change.execution_arn)
    if described["status"] != "FAILED":
        # A late copy of the event (delivery is at least once), and the execution was redriven since: not parked.
        logger.info("not parked: the execution is running again", extra={"status": described["status"]})
        return {"parked": False}
    error, cause = str(described.get("error") or "unknown"), str(described.get("cause") or "")
    redrives = int(described.get("redriveCount") or 0)
    # The message first, then the write that parks: an attempt that dies between them is retried (Lambda's
    # asynchronous retries) and sends the same message again, which the FIFO queue drops as a duplicate within
    # five minutes; one that never parks leaves the order unfinished in the reaper's index, so the reaper takes it
    # over (and the operator's script acknowledges the stale message once the saga finished). Never a parked order
    # that nobody is told about.
    _sqs.send_message(
        QueueUrl=QUEUE_URL,
        MessageBody=json.dumps({"order_id": order_id, "execution_arn": change.execution_arn, "error": error,
                                "cause": cause[:2000], "redrive_count": redrives}),
        MessageAttributes={"order_id": {"DataType": "String", "StringValue": order_id}},
        MessageGroupId=order_id,
        MessageDeduplicationId=hashlib.sha256(f"{owner}#{redrives}".encode()).hexdigest(),
    )
    if orders.parkable(order) and not orders.park(order_id, owner, error, now_ms(), redrives):
        return {"parked": False}  # changed meanwhile (the reaper took it over, or another copy of this event parked it)
    count("SagaParked", "ParkSaga")
    logger.error("saga parked: a compensation spent its retries", extra={"error": error})
    return {"parked": True}
