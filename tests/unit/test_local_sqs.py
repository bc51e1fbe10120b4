"""sagalocal/sqs.py: moto's Queue.attributes, built only when read as a whole. A caller sees what moto gives."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws
from moto.sqs.models import Queue

from sagalocal import sqs

sqs.install()


@pytest.fixture
def client():
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def queue_of(url: str) -> Queue:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sqs.models import sqs_backends

    return sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].queues[url.rsplit("/", 1)[1]]


@pytest.mark.parametrize("attributes", [
    {},
    {"FifoQueue": "true"},
    {"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    {"KmsMasterKeyId": "alias/aws/sqs", "DelaySeconds": "1"},
], ids=["standard", "fifo", "fifo, content-based deduplication", "kms, delay"])
def test_the_attributes_are_moto_s_whatever_is_read(client, attributes):
    name = "q.fifo" if attributes.get("FifoQueue") else "q"
    url = client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    queue = queue_of(url)
    moto_s = sqs._moto_attributes(queue)
    seen = queue.attributes
    assert isinstance(seen, sqs.QueueAttributes)
    assert dict(seen) == moto_s
    assert len(seen) == len(moto_s)
    for key in [*moto_s, "ContentBasedDeduplication", "NoSuchAttribute"]:
        assert seen.get(key) == moto_s.get(key), key
        assert seen.get(key, "absent") == moto_s.get(key, "absent"), key
    assert ("ContentBasedDeduplication" in seen) == ("ContentBasedDeduplication" in moto_s)
    with pytest.raises(KeyError):
        seen["NoSuchAttribute"]


def test_content_based_deduplication_still_drops_a_repeated_body(client):
    url = client.create_queue(QueueName="d.fifo", Attributes={"FifoQueue": "true",
                                                              "ContentBasedDeduplication": "true"})["QueueUrl"]
    for _ in range(2):
        client.send_message(QueueUrl=url, MessageBody="same", MessageGroupId="g")
    counts = client.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert counts["Attributes"] == {"ApproximateNumberOfMessages": "1"}


def test_the_counts_still_follow_the_queue(client):
    url = client.create_queue(QueueName="c")["QueueUrl"]
    for n in range(3):
        client.send_message(QueueUrl=url, MessageBody=str(n))
    client.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=60)
    got = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (got["ApproximateNumberOfMessages"], got["ApproximateNumberOfMessagesNotVisible"]) == ("2", "1")


def test_a_send_does_not_count_the_messages_already_queued(client, monkeypatch):
    """What the patch is for: SendMessage reads ContentBasedDeduplication without the counts."""
    url = client.create_queue(QueueName="big")["QueueUrl"]
    counted = []
    monkeypatch.setattr(Queue, "approximate_number_of_messages",
                        property(lambda q: counted.append(q.name) or len(q._messages)))
    for n in range(5):
        client.send_message(QueueUrl=url, MessageBody=str(n))
    assert counted == []
    client.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert counted
