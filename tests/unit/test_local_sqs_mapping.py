"""sagalocal/awslambda/queues.py: the SQS event source mapping of the embedded stack, against moto's SQS in-process.
Batches, partial batch responses, bounded concurrency, messages that come back after their visibility timeout and
go to the dead-letter queue after maxReceiveCount receives."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sagalocal.awslambda.queues import QueueMapping

DEADLINE = 30.0


@dataclass
class Result:
    payload: Any
    error: bool = False


@pytest.fixture
def sqs():
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def queue(sqs, name: str, visibility: int = 1, max_receives: int | None = None) -> tuple[str, str]:
    attributes = {"VisibilityTimeout": str(visibility)}
    if max_receives is not None:
        dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives})
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def mapping(sqs, url: str, arn: str, invoke, **spec: Any) -> QueueMapping:
    return QueueMapping({"function": "Worker", "queue_arn": arn, "queue_url": url, "batch_size": 5,
                         "report_batch_item_failures": True, "max_concurrency": 2, **spec}, sqs, invoke)


def until(check, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def counts(sqs, url: str) -> tuple[int, int]:
    got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(got["ApproximateNumberOfMessages"]), int(got["ApproximateNumberOfMessagesNotVisible"])


def test_every_message_is_handed_over_in_batches_within_the_concurrency_and_deleted(sqs):
    url, arn = queue(sqs, "work", visibility=30)  # no message comes back while a loaded machine works the batches
    for start in range(0, 40, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": str(start + n)}
                                                      for n in range(10)])
    seen, sizes, running, peak, lock = [], [], [0], [0], threading.Lock()

    def invoke(function: str, event: dict[str, Any]) -> Result:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
            sizes.append(len(event["Records"]))
            seen.extend(r["body"] for r in event["Records"])
        assert {r["eventSource"] for r in event["Records"]} == {"aws:sqs"}
        assert {r["eventSourceARN"] for r in event["Records"]} == {arn}
        return Result({"batchItemFailures": []})

    m = mapping(sqs, url, arn, invoke, max_concurrency=3)
    m.start()
    try:
        until(lambda: len(seen) >= 40 and counts(sqs, url) == (0, 0), "every message handed over and deleted")
    finally:
        m.stop()
    assert sorted(seen, key=int) == [str(n) for n in range(40)]  # each once: none failed
    assert max(sizes) <= 5
    assert peak[0] <= 3  # MaximumConcurrency
    assert m.describe()["delivered"] == 40


def test_a_reported_failure_comes_back_after_its_visibility_timeout_and_the_others_are_deleted(sqs):
    url, arn = queue(sqs, "partial", visibility=3)  # the good one is deleted well before it could come back
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": b, "MessageBody": b} for b in ("good", "bad")])
    deliveries: list[tuple[str, str]] = []

    def invoke(function: str, event: dict[str, Any]) -> Result:
        failed = []
        for record in event["Records"]:
            deliveries.append((record["body"], record["attributes"]["ApproximateReceiveCount"]))
            if record["body"] == "bad" and record["attributes"]["ApproximateReceiveCount"] == "1":
                failed.append({"itemIdentifier": record["messageId"]})
        return Result({"batchItemFailures": failed})

    m = mapping(sqs, url, arn, invoke)
    m.start()
    try:
        until(lambda: ("bad", "2") in deliveries and counts(sqs, url) == (0, 0), "the failed message handed over "
                                                                                 "again, then deleted")
    finally:
        m.stop()
    assert deliveries.count(("good", "1")) == 1
    assert [d for d in deliveries if d[0] == "good"] == [("good", "1")]  # deleted after its success


@pytest.mark.parametrize("answer", [
    Result({"errorType": "RuntimeError", "errorMessage": "boom"}, error=True),
    Result({"batchItemFailures": [{"itemIdentifier": ""}]}),
    Result({"batchItemFailures": [{"itemIdentifier": "no-such-message"}]}),
], ids=["function error", "empty identifier", "unknown identifier"])
def test_a_whole_batch_fails_and_goes_to_the_dead_letter_queue_after_max_receive_count(sqs, answer):
    url, arn = queue(sqs, "failing", visibility=1, max_receives=2)
    dlq = url + "-dlq"
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    received = []

    def invoke(function: str, event: dict[str, Any]) -> Result:
        received.extend(r["attributes"]["ApproximateReceiveCount"] for r in event["Records"])
        return answer

    m = mapping(sqs, url, arn, invoke)
    m.start()
    try:
        until(lambda: counts(sqs, dlq)[0] == 1, "moved to the dead-letter queue")
    finally:
        m.stop()
    assert received == ["1", "2"]  # handed over maxReceiveCount times, never deleted
    assert counts(sqs, url) == (0, 0)
    assert sqs.receive_message(QueueUrl=dlq)["Messages"][0]["Body"] == "poison"
