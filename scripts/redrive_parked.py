"""Finish parked sagas: redrive each parked execution, wait for it, check its order, acknowledge its messages.

  python scripts/redrive_parked.py --stack-name order-saga-prod                 # every parked saga
  python scripts/redrive_parked.py --stack-name order-saga-prod ord_123 ord_456  # these orders only
  python scripts/redrive_parked.py --stack-outputs .local/stack-outputs.json     # the local stack (AWS_ENDPOINT_URL)
  python scripts/redrive_parked.py ... --dry-run                                # say what would be redriven

docs/operations.md's runbook: fix the cause (the alarm, the message and the execution's history say which
compensation failed, and why), then run this. The parked sagas are the orders whose saga is FAILED (the orders
table is the record; the queue's messages are the notice). For each it redrives the execution that parked it
(RedriveExecution: the same execution, resumed at the compensation that spent its retries, which takes its parked
order back), waits for the execution to end (DescribeExecution, with backoff, within a deadline), and checks the
order: COMPENSATED (or COMPLETED, for an order RefundPayment found past the pivot and finished). Then it deletes
the queue's messages of every order that is finished (these, and stale ones of orders finished otherwise) and
gives the others back at once. A saga that parks again (the cause is not fixed) is reported and keeps its
message; a new one arrives for the new failure. A dry run reads no message and changes nothing.

It refuses, naming the reason and changing nothing, an order that is not parked (saga_status FAILED), whose
execution cannot be redriven (RedriveExecution's own reasons: running, succeeded, older than 14 days), or that it
cannot find. Credentials and region from the usual boto3 environment (AWS_ENDPOINT_URL for a local stack).
Exit status 0 when every order it was asked about ended finished, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

FINISHED = ("COMPENSATED", "COMPLETED")
POLL_CAP_S = 5.0  # DescribeExecution at most every 5 s per saga: far below its API quota


@dataclass
class Outcome:
    order_id: str
    execution_arn: str | None
    redriven: bool
    saga_status: str | None
    detail: str
    acknowledged: int = 0  # its messages deleted from the parked queue

    @property
    def finished(self) -> bool:
        return self.saga_status in FINISHED

    def line(self) -> str:
        return f"{self.order_id}: {self.saga_status or '-'} ({self.detail})"


class Operator:
    def __init__(self, outputs: dict[str, str], client: Callable[[str], Any] = boto3.client,
                 timeout: float = 900.0) -> None:
        self.outputs = outputs
        self.sfn = client("stepfunctions")
        self.sqs = client("sqs")
        self.ddb = client("dynamodb")
        self.timeout = timeout

    # ---- what is parked ----------------------------------------------------------------------------------------
    def parked_orders(self) -> list[str]:
        """Every parked order (saga_status FAILED), from the orders table, every page: the record of what is
        parked, whatever happened to the queue's messages. A scan: an operator's tool, run rarely."""
        found: list[str] = []
        kwargs: dict[str, Any] = {"TableName": self.outputs["OrdersTableName"], "ConsistentRead": True,
                                  "FilterExpression": "saga_status = :failed", "ProjectionExpression": "order_id",
                                  "ExpressionAttributeValues": {":failed": {"S": "FAILED"}}}
        while True:
            page = self.ddb.scan(**kwargs)
            found += [item["order_id"]["S"] for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return sorted(found)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def acknowledge(self, finished: set[str]) -> dict[str, int]:
        """Delete the queue's messages of `finished` orders and of every order named there that is finished now (a
        stale message: the reaper finished it, or an earlier run died before acknowledging); order id -> how many.
        Every other message is given back at once (its visibility reset), so that no run hides the queue from the
        next one. The messages are held while the queue is read through, so the reads go past them."""
        url = self.outputs["ParkedSagasQueueUrl"]
        held: dict[str, dict[str, Any]] = {}
        for _ in range(1000):  # a bound: 10 messages a receive
            messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                                VisibilityTimeout=120).get("Messages", [])
            fresh = [m for m in messages if m["MessageId"] not in held]
            if not fresh:
                break
            held.update((m["MessageId"], m) for m in fresh)
        deleted: dict[str, int] = {}
        statuses: dict[str, str] = {}
        for message in held.values():
            order_id = str(json.loads(message["Body"]).get("order_id"))
            if order_id not in finished and order_id not in statuses:
                statuses[order_id] = str((self.order(order_id) or {}).get("saga_status"))
            if order_id in finished or statuses.get(order_id) in FINISHED:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                deleted[order_id] = deleted.get(order_id, 0) + 1
            else:
                self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"],
                                                   VisibilityTimeout=0)
        return deleted

    def order(self, order_id: str) -> dict[str, Any] | None:
        item = self.ddb.get_item(TableName=self.outputs["OrdersTableName"], Key={"order_id": {"S": order_id}},
                                 ConsistentRead=True).get("Item")
        return None if item is None else {k: next(iter(v.values())) for k, v in item.items()}

    def execution_arn(self, order_id: str) -> str:
        machine = self.outputs["StateMachineArn"]
        return machine.replace(":stateMachine:", ":execution:") + ":" + order_id

    # ---- one order ------------------------------------------------------------------------------------------------
    def finish(self, order_id: str, dry_run: bool = False) -> Outcome:
        order = self.order(order_id)
        if order is None:
            return Outcome(order_id, None, False, None, "no such order")
        status = str(order.get("saga_status"))
        owner = str(order.get("lease_owner") or "")
        arn = owner.split("#")[0] if ":execution:" in owner else self.execution_arn(order_id)
        if status in FINISHED:
            return Outcome(order_id, arn, False, status, "already finished")
        if status != "FAILED":
            return Outcome(order_id, arn, False, status, "not parked: its saga is still running or being taken over")
        try:
            described = self.sfn.describe_execution(executionArn=arn)
        except self.sfn.exceptions.ExecutionDoesNotExist:
            return Outcome(order_id, arn, False, status, f"no execution {arn}")
        if described.get("redriveStatus") == "NOT_REDRIVABLE":
            return Outcome(order_id, arn, False, status,
                           f"cannot be redriven: {described.get('redriveStatusReason') or described['status']}")
        if dry_run:
            return Outcome(order_id, arn, False, status, f"would redrive {arn} ({described.get('error')})")
        count = int(described.get("redriveCount") or 0)
        token = hashlib.sha256(f"{arn}#{count}".encode()).hexdigest()[:64]  # a retried run redrives once
        self.sfn.redrive_execution(executionArn=arn, clientToken=token)
        ended = self._wait(arn)
        status = str((self.order(order_id) or {}).get("saga_status"))
        if status in FINISHED:
            return Outcome(order_id, arn, True, status, f"redriven: execution {ended['status']}")
        return Outcome(order_id, arn, True, status, f"redriven, but the execution ended {ended['status']} "
                                                    f"{ended.get('error') or ''}: fix the cause and run this again")

    def _wait(self, arn: str) -> dict[str, Any]:
        deadline, pause = time.monotonic() + self.timeout, 0.2
        while True:
            described = self.sfn.describe_execution(executionArn=arn)
            if described["status"] != "RUNNING":
                return dict(described)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{arn} still RUNNING after {self.timeout:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, POLL_CAP_S)

    def run(self, order_ids: list[str], dry_run: bool = False) -> list[Outcome]:
        """Finish `order_ids` (default: every parked order, from the orders table); then acknowledge the queue's
        messages of every order that is finished now. A dry run reads no message."""
        outcomes = [self.finish(order_id, dry_run) for order_id in order_ids or self.parked_orders()]
        if dry_run:
            return outcomes
        deleted = self.acknowledge({o.order_id for o in outcomes if o.finished})
        for outcome in outcomes:
            outcome.acknowledged = deleted.get(outcome.order_id, 0)
        return outcomes


def stack_outputs(args: argparse.Namespace) -> dict[str, str]:
    if args.stack_outputs:
        return dict(json.loads(Path(args.stack_outputs).read_text()))
    stack = boto3.client("cloudformation").describe_stacks(StackName=args.stack_name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack-name", help="a deployed stack (its outputs from CloudFormation)")
    where.add_argument("--stack-outputs", help="a JSON file of the stack's outputs (a local stack writes one)")
    parser.add_argument("order_ids", nargs="*", help="these orders (default: every order on the parked queue)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be redriven; change nothing")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each execution")
    args = parser.parse_args(argv)
    outcomes = Operator(stack_outputs(args), timeout=args.timeout).run(args.order_ids, args.dry_run)
    for outcome in outcomes:
        print(outcome.line())
    if not outcomes:
        print("no parked saga on the queue")
    return 0 if all(o.finished for o in outcomes) or args.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
