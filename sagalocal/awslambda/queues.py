"""Lambda event source mappings for SQS queues: poll, batch, invoke, delete what succeeded.

As Lambda does (https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html, services-sqs-scaling.html,
services-sqs-errorhandling.html):

  * pollers long-poll the queue (ReceiveMessage with a wait) with the function's own identity, so its role must
    allow sqs:ReceiveMessage, sqs:DeleteMessage and sqs:GetQueueAttributes (read when the mapping starts) on the
    queue (IAM is enforced at the endpoint);
  * a batch holds at most BatchSize messages: receives are repeated (10 messages each at most) until BatchSize is
    reached or MaximumBatchingWindowInSeconds has passed since the first message (0: one receive);
  * at most ScalingConfig.MaximumConcurrency invocations run at once (each poller thread runs one at a time);
  * a batch succeeds when the function returns without error: every message is deleted. With FunctionResponseTypes
    ReportBatchItemFailures, the messages its answer's `batchItemFailures` name (by messageId) stay and the others
    are deleted; an empty or null list, or no answer, is a success; an item without a non-empty `itemIdentifier`,
    or naming no message of the batch, fails the whole batch;
  * a message that is not deleted (a function error, a reported failure, a throttled invocation) becomes visible
    again when its visibility timeout ends, and is received again; the queue's redrive policy moves it to the
    dead-letter queue once it has been received maxReceiveCount times (moto's SQS does that at the next receive,
    as SQS does).

Where it differs from AWS: the number of pollers is fixed at MaximumConcurrency (5 without one), where Lambda starts
with 5 concurrent batches and adds up to 300 a minute up to 1,000 (or MaximumConcurrency), and while the queue is
idle only the first of them polls (the others start as soon as it receives a message), with 20 s long polls as
Lambda's pollers: one request per 20 s while idle (1 s polls, with the stream's reads, were most of an idle
stack's CPU). Stopping waits for the batches being delivered, not for a long poll: a poller whose long poll
returns after the stop delivers nothing (its messages come back after their visibility timeout) and ends. A
throttled invocation leaves the batch to its visibility timeout (Lambda's poller backs off too); FIFO queues'
per-group ordering and filter criteria are not emulated (the provisioner refuses them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sagalocal.queues")
WAIT_SECONDS = 20  # a long poll's wait, as AWS's pollers (ReceiveMessage's most)
STOP_WAIT_SECONDS = 30.0  # how long stop() waits for the batches in delivery
DEFAULT_POLLERS = 5  # without a MaximumConcurrency: the 5 concurrent batches Lambda starts with


class QueueMapping:
    def __init__(self, spec: dict[str, Any], client: Any, invoke: Callable[[str, Any], Any],
                 region: str = "us-east-1") -> None:
        """`client`: an SQS client signed with the function's credentials; `invoke(logical id, event)`: an
        invocation on the function's event target (its alias), returning an InvokeResult (.payload, .error)."""
        self.spec = spec
        self.client = client
        self.invoke = invoke
        self.region = region
        self.pollers = int(spec.get("max_concurrency") or DEFAULT_POLLERS)
        self.delivered = 0  # messages deleted after the function took them
        self.failed = 0  # messages handed over and left on the queue (they come back)
        self.invocations = 0
        self.last_processing_result = "No records processed"
        self._lock = threading.Lock()
        self._delivered_all = threading.Condition(self._lock)  # notified when a batch's delivery ends
        self._delivering = 0  # batches being delivered (invoked, then deleted)
        # The pollers receive one at a time: two ReceiveMessage calls scanning one moto queue at once could both
        # take a message (no lock guards the scan), and a poller waiting out a long poll rescans every second.
        self._receiving = threading.Lock()
        self._running = 0
        self.peak = 0  # the most invocations that ran at once
        self._stop = threading.Event()
        # Set while the queue has messages: the other pollers poll only then. An idle queue is long-polled by the
        # first poller alone (one request per WAIT_SECONDS, not one per poller), as Lambda scales its pollers
        # with the queue's backlog.
        self._busy = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), name=f"sagalocal-sqs-{spec['function']}-{n}",
                                          daemon=True) for n in range(self.pollers)]

    def start(self) -> None:
        # Lambda reads the queue's attributes when the mapping is created (the queue must exist and be one it may
        # read); a mapping that cannot still starts, and its pollers report why.
        try:
            self.client.get_queue_attributes(QueueUrl=self.spec["queue_url"],
                                             AttributeNames=["VisibilityTimeout", "RedrivePolicy"])
        except Exception as exc:  # noqa: BLE001 - denied, no such queue: said here and at every receive
            log.error("%s: cannot read %s: %s", self.spec["function"], self.spec["queue_url"], exc)
            self.last_processing_result = f"PROBLEM: cannot read the queue: {exc}"
        for thread in self._threads:
            thread.start()

    def stop(self, polls: bool = False) -> None:
        """Start nothing more, and wait for the batches being delivered. A poller in a long poll is not waited
        for (a daemon thread): when its poll returns it sees the flag and delivers nothing, and what that poll
        received stays invisible for the queue's visibility timeout (the function's role may not change it). So a
        caller that maps the same queue again in this process passes `polls=True`, which waits for the polls too
        (up to WAIT_SECONDS)."""
        with self._lock:
            self._stop.set()
            self._busy.set()  # the waiting pollers look at the stop flag now
            self._delivered_all.wait_for(lambda: self._delivering == 0, timeout=STOP_WAIT_SECONDS)
        if polls:
            for thread in self._threads:
                thread.join(timeout=WAIT_SECONDS + 10)

    def describe(self) -> dict[str, Any]:
        return {"function": self.spec["function"], "queue": self.spec["queue_arn"], "pollers": self.pollers,
                "batch_size": self.spec["batch_size"], "delivered": self.delivered, "failed": self.failed,
                "invocations": self.invocations, "peak_concurrency": self.peak,
                "last_processing_result": self.last_processing_result}

    # ---- one poller ------------------------------------------------------------------------------------------
    def _run(self, n: int) -> None:
        while not self._stop.is_set():
            if n and not self._busy.wait(WAIT_SECONDS):
                continue  # the queue is idle: the first poller watches it
            try:
                with self._receiving:  # one receive at a time: moto's scan of a queue is not thread-safe
                    batch = self._receive()
            except Exception as exc:  # noqa: BLE001 - denied, no such queue, the endpoint stopping: wait, try again
                if self._stop.is_set():
                    return
                log.warning("%s: cannot receive from %s: %s", self.spec["function"], self.spec["queue_url"], exc)
                self.last_processing_result = f"PROBLEM: cannot receive: {exc}"
                self._stop.wait(1)
                continue
            if batch:
                with self._lock:
                    if self._stop.is_set():
                        return  # stopped during the poll: the messages come back after their visibility timeout
                    self._delivering += 1
                self._busy.set()
                try:
                    self._deliver(batch)
                finally:
                    with self._lock:
                        self._delivering -= 1
                        self._delivered_all.notify_all()
            elif not n:
                self._busy.clear()  # a whole long poll found nothing

    def _receive(self) -> list[dict[str, Any]]:
        """One batch: up to BatchSize messages, gathered for at most the batching window after the first."""
        size, window = int(self.spec["batch_size"]), float(self.spec.get("window") or 0)
        batch: list[dict[str, Any]] = []
        first_at: float | None = None
        while len(batch) < size and not self._stop.is_set():
            waited = WAIT_SECONDS if first_at is None else max(0, min(WAIT_SECONDS, int(
                first_at + window - time.monotonic())))
            got = self.client.receive_message(
                QueueUrl=self.spec["queue_url"], MaxNumberOfMessages=min(10, size - len(batch)),
                WaitTimeSeconds=waited, AttributeNames=["All"], MessageAttributeNames=["All"]).get("Messages") or []
            if got and first_at is None:
                first_at = time.monotonic()
            batch += got
            if first_at is None:
                return batch  # nothing came in a whole long poll: poll again (and look at the stop flag)
            if time.monotonic() >= first_at + window:
                break
        return batch

    def _deliver(self, messages: list[dict[str, Any]]) -> None:
        event = {"Records": [self.record(m) for m in messages]}
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            result = self.invoke(self.spec["function"], event)
        except Exception as exc:  # noqa: BLE001 - throttled, no sandbox: the messages come back after their timeout
            log.warning("%s: batch of %d not delivered: %s", self.spec["function"], len(messages), exc)
            self.failed += len(messages)
            self.last_processing_result = f"PROBLEM: Function call failed: {exc}"
            return
        finally:
            with self._lock:
                self._running -= 1
        self.invocations += 1
        failed = {m["MessageId"] for m in messages} if result.error else self.failures(messages, result.payload)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                       for n, m in enumerate(done[start:start + 10])]
            try:
                answer = self.client.delete_message_batch(QueueUrl=self.spec["queue_url"], Entries=entries)
            except Exception as exc:  # noqa: BLE001 - not deleted: it comes back, and the function does it again
                log.warning("%s: could not delete %d messages: %s", self.spec["function"], len(entries), exc)
                continue
            for failure in answer.get("Failed") or []:
                log.warning("%s: could not delete a message: %s", self.spec["function"], failure)
        self.delivered += len(done)
        self.failed += len(failed)
        self.last_processing_result = "OK" if not failed else (
            "PROBLEM: Function call failed" if result.error else "PROBLEM: Function reported batch item failures")

    def failures(self, messages: list[dict[str, Any]], payload: Any) -> set[str]:
        """The message ids an answer without a function error says failed: none, but with ReportBatchItemFailures
        those it names (all of them if it names one that is malformed, or no message of the batch)."""
        every = {m["MessageId"] for m in messages}
        if not self.spec.get("report_batch_item_failures") or not isinstance(payload, dict):
            return set()
        reported = payload.get("batchItemFailures")
        if not reported:  # absent, null or empty: a complete success
            return set()
        if not isinstance(reported, list):
            return every
        named = set()
        for failure in reported:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not isinstance(identifier, str) or identifier not in every:
                log.warning("%s reported %r as a failed message: the whole batch failed", self.spec["function"],
                            failure)
                return every
            named.add(identifier)
        return named

    def record(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message as Lambda hands it over in an SQS event."""
        attributes = message.get("Attributes") or {}
        return {
            "messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
            "attributes": {k: attributes[k] for k in ("ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                                      "ApproximateFirstReceiveTimestamp") if k in attributes},
            "messageAttributes": {name: {**{_lower(k): v for k, v in value.items()}, "stringListValues": [],
                                         "binaryListValues": []}
                                  for name, value in (message.get("MessageAttributes") or {}).items()},
            "md5OfBody": message.get("MD5OfBody", ""), "eventSource": "aws:sqs",
            "eventSourceARN": self.spec["queue_arn"], "awsRegion": self.region,
        }


def _lower(key: str) -> str:
    return key[:1].lower() + key[1:]


def queue_url(endpoint: str, queue_arn: str) -> str:
    """The queue's URL on the local endpoint, from its ARN (arn:aws:sqs:<region>:<account>:<name>)."""
    parts = queue_arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise ValueError(f"{queue_arn!r} is not an SQS queue's ARN")
    return f"{endpoint.rstrip('/')}/{parts[4]}/{parts[5]}"
