"""A record PublishOutcome can never publish is set aside, with a trace, and holds nothing else up (issue 20).

An order that ends a saga without a customer (written straight into the orders table, as a faulty writer or a
hand edit would) makes no valid outcome event: PublishOutcome refuses it (InvalidOutcome) and sets it aside at once
in OutcomeFailuresQueue (retrying it would change nothing). It is written in one transaction with six orders that
end properly, so that they reach the stream together; more are written after it. Then, as on AWS:

  * the stream goes on: every other order's outcome event is published exactly once (read from the outcome
    events queue), those written with it and those written after;
  * the poison record alone is set aside: one message on OutcomeFailuresQueue, naming its order and its sequence
    number (on the embedded stack, the one PublishOutcome logged setting aside; elsewhere, read back from the
    stream with DynamoDB Streams' GetRecords, as an operator replaying it does: docs/events.md), with the item;
  * nothing is published for the poison order.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from order_saga.dynamo import now_ms, to_ddb

RUN = uuid.uuid4().hex[:10]


def ended(order_id: str, **change: Any) -> dict[str, Any]:
    """An order item that ends its saga (COMPLETED), with what an outcome event needs, or without (`change`)."""
    now = now_ms()
    order = {"order_id": order_id, "customer_id": "cust-poison-test", "status": "CONFIRMED",
             "saga_status": "COMPLETED", "total": 1250, "currency": "USD", "created_at": now - 1000,
             "updated_at": now, **change}
    return to_ddb({k: v for k, v in order.items() if v is not None})


def outcome_events(target, order_ids: set[str], expected: int, timeout: float = 120.0) -> Counter[str]:
    """Event id -> how often it arrived on the outcome events queue, once `expected` ids arrived (or the deadline
    passed), then 5 s more for repeats. Ours are deleted; others' stay hidden 30 s, then come back for their
    readers."""
    sqs, url = target.client("sqs"), target.outputs["OutcomeEventsQueueUrl"]
    seen: Counter[str] = Counter()
    deadline, settle = time.monotonic() + timeout, None
    while time.monotonic() < (settle or deadline):
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           VisibilityTimeout=30).get("Messages", []):
            detail = json.loads(message["Body"])["detail"]
            if detail["order_id"] in order_ids:
                seen[detail["event_id"]] += 1
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if settle is None and len(seen) >= expected:
            settle = time.monotonic() + 5
    return seen


def invocation_records(target, timeout: float = 120.0, settle: float = 5.0) -> list[dict[str, Any]]:
    """Every message on the failure queue (read and deleted: set-aside records, invocation records), once one
    arrived and then `settle` s more."""
    sqs, url = target.client("sqs"), target.outputs["OutcomeFailuresQueueUrl"]
    found: list[dict[str, Any]] = []
    deadline, until = time.monotonic() + timeout, None
    while time.monotonic() < (until or deadline):
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           VisibilityTimeout=30).get("Messages", []):
            found.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if found and until is None:
            until = time.monotonic() + settle
    return found


def refused_sequence_numbers(target, order_id: str) -> set[str]:
    """The sequence numbers PublishOutcome logged refusing for `order_id` (embedded stack: its log file)."""
    found = set()
    for line in (Path(target.log_dir) / "PublishOutcomeFunction.log").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("message", "").startswith("outcome set aside") \
                and entry.get("order_id") == order_id:
            found.add(str(entry["sequence_number"]))
    return found


def stream_record_key(target, stream_arn: str, sequence_number: str) -> str:
    """The order id of the stream record at `sequence_number`, read back from the stream (DynamoDB Streams: what an
    operator's replay reads), whichever of the stream's shards holds it."""
    streams = target.client("dynamodbstreams")
    shards = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    for shard in shards:
        try:
            iterator = streams.get_shard_iterator(StreamArn=stream_arn, ShardId=shard["ShardId"],
                                                  ShardIteratorType="AT_SEQUENCE_NUMBER",
                                                  SequenceNumber=sequence_number)["ShardIterator"]
        except streams.exceptions.ClientError:
            continue
        records = streams.get_records(ShardIterator=iterator, Limit=1)["Records"]
        if records and records[0]["dynamodb"]["SequenceNumber"] == sequence_number:
            return str(records[0]["dynamodb"]["Keys"]["order_id"]["S"])
    raise AssertionError(f"no record {sequence_number} in {stream_arn}")


def give_up_on_a_poison_order(target) -> str:
    """An order alone that makes no valid outcome event, written and then removed; what PublishOutcome set aside
    waited for and deleted (every_path: PublishOutcome's role sends it). Returns the reason it gives."""
    ddb, table = target.client("dynamodb"), target.outputs["OrdersTableName"]
    poison = f"ord_poison_{uuid.uuid4().hex[:10]}"
    try:
        ddb.put_item(TableName=table, Item=ended(poison, customer_id=None))
        records = invocation_records(target, settle=0)
    finally:
        ddb.delete_item(TableName=table, Key=to_ddb({"order_id": poison}))
    assert records, "nothing arrived on the failure queue"
    return str(records[0]["reason"])


def test_a_record_publish_outcome_cannot_publish_goes_to_the_failure_queue_and_holds_nothing_up(target):
    if "OutcomeFailuresQueueUrl" not in target.outputs:
        pytest.skip("the stack has no OutcomeFailuresQueueUrl output (deployed before issue 20)")
    ddb, table = target.client("dynamodb"), target.outputs["OrdersTableName"]
    invocation_records(target, timeout=2, settle=0)  # (a record left by an earlier run is not this one's)
    poison = f"ord_poison_{RUN}"
    with_it = [f"ord_beside_{RUN}_{n}" for n in range(6)]
    after = [f"ord_after_{RUN}_{n}" for n in range(3)]
    try:
        items = [ended(o) for o in with_it[:3]] + [ended(poison, customer_id=None)] + [ended(o) for o in with_it[3:]]
        ddb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": item}} for item in items])
        records = invocation_records(target)
        for order_id in after:
            ddb.put_item(TableName=table, Item=ended(order_id))
        published = outcome_events(target, {poison, *with_it, *after}, expected=len(with_it) + len(after))
    finally:
        for order_id in [poison, *with_it, *after]:  # (a REMOVE is no outcome: the stream filter drops it)
            ddb.delete_item(TableName=table, Key=to_ddb({"order_id": order_id}))

    assert published == {f"{o}/OrderConfirmed": 1 for o in with_it + after}, "each published once, none for poison"
    assert len(records) == 1, records
    (record,) = records
    assert (record["source"], record["reason"], record["order_id"]) == ("PublishOutcome", "InvalidOutcome", poison)
    assert record["newImage"]["order_id"] == {"S": poison}
    assert record["eventSourceARN"].split("/stream/")[0].endswith(f":table/{table}")
    if target.embedded:
        assert refused_sequence_numbers(target, poison) == {record["sequenceNumber"]}
        # Sent with PublishOutcome's role.
        with urllib.request.urlopen(f"{target.endpoint}/_sagalocal/iam", timeout=30) as response:  # noqa: S310
            used = json.loads(response.read())["used"]
        publisher = next(pairs for function, pairs in used.items() if "PublishOutcomeFunction" in function)
        account, queue = target.outputs["OutcomeFailuresQueueUrl"].rstrip("/").split("/")[-2:]
        assert ["sqs:SendMessage", f"arn:aws:sqs:{target.region}:{account}:{queue}"] in publisher, publisher
    else:
        assert stream_record_key(target, record["eventSourceARN"], record["sequenceNumber"]) == poison


def test_a_poison_order_alone_is_set_aside(target):
    """The path every_path takes (so that the least-privilege check sees PublishOutcome's role send to the queue)."""
    if "OutcomeFailuresQueueUrl" not in target.outputs:
        pytest.skip("the stack has no OutcomeFailuresQueueUrl output (deployed before issue 20)")
    invocation_records(target, timeout=2, settle=0)
    assert give_up_on_a_poison_order(target) == "InvalidOutcome"
