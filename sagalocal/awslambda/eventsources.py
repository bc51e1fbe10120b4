"""Lambda event source mappings for DynamoDB streams: poll the stream, filter, batch, invoke, retry, give up.

As Lambda does (https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html and
services-ddb-batchfailurereporting.html):

  * records arrive in order; each FilterCriteria pattern (EventBridge pattern syntax, matched by moto's own
    matcher) drops what matches none; batches hold at most BatchSize records;
  * a batch succeeds when the function returns without error. With FunctionResponseTypes ReportBatchItemFailures,
    its answer's `batchItemFailures` name the records that failed by sequence number: the records before the
    lowest one are done, and the batch is retried from it. An empty or null list, or no answer, is a success; an
    item without a non-empty `itemIdentifier` (or naming no record of the batch) fails the whole batch;
  * a function error splits the batch in two (BisectBatchOnFunctionError), each half delivered in turn, first the
    first; a split is not a retry. A partial failure is not split: the rest of the batch is retried;
  * a batch that failed is retried (after a pause that doubles, from 0.2 s to 5 s) until MaximumRetryAttempts
    retries are spent (-1: no limit). An invocation that never ran (throttled, no sandbox) is retried without
    spending one;
  * records older than MaximumRecordAgeInSeconds (-1: no limit) are not handed over any more;
  * records given up on (retries spent: RetryAttemptsExhausted; too old: RecordAgeExceeded) are skipped, and the
    shard goes on. With an OnFailure destination (an SQS queue), the mapping first sends it an invocation record:
    which function, why, how many invocations, and the batch's shard, first and last sequence numbers, arrival
    times and size (DDBStreamBatchInfo), not the records themselves. It sends with the function's identity, as
    Lambda sends with the function's execution role: the role must allow sqs:SendMessage on the queue.

A mapping reads the stream with its function's identity too, so the role must allow DescribeStream,
GetShardIterator, GetRecords and ListStreams on the stream. Records are acknowledged once handed over or given up
on, and the DynamoDB process drops them: unlike DynamoDB's 24 hours, a record given up on cannot be read from the
local stream afterwards (docs/local-stack.md).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger("sagalocal.eventsources")
# A read that finds nothing new waits this long for a record (a long poll: a record wakes it at once). Stopping
# does not wait for it (stop()); with 1 s polls an idle stack spent several ms of CPU a second in both processes.
POLL_SECONDS = 20.0
STOP_WAIT_SECONDS = 10.0  # how long stop() waits for a batch being delivered
FIRST_PAUSE, MAX_PAUSE = 0.2, 5.0  # between retries of a failed batch
RETRY_ATTEMPTS_EXHAUSTED, RECORD_AGE_EXCEEDED = "RetryAttemptsExhausted", "RecordAgeExceeded"

Send = Callable[[str, str], None]  # (destination ARN, message body)


@dataclass
class _Batch:
    records: list[dict[str, Any]]
    retries: int = 0  # retries spent on these records (a split spends none)
    invocations: int = 0  # invocations that carried them
    pause: float = 0.0  # before its next retry
    function_error: bool = False  # how the last invocation ended: a function error, or a partial failure


class StreamMapping:
    def __init__(self, spec: dict[str, Any], dynamodb_endpoint: str, invoke: Callable[[str, Any], Any],
                 send: Send | None = None, target: Callable[[str], tuple[str, str]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`send` delivers an invocation record to the OnFailure destination; `target` names the function's
        ARN and version the invocations run on (requestContext.functionArn, responseContext.executedVersion)."""
        from moto.events.models import EventPattern

        self.spec = spec
        self.endpoint = dynamodb_endpoint
        self.invoke = invoke
        self.send = send
        self.target = target
        self.clock = clock
        self.patterns = [EventPattern.load(p if isinstance(p, str) else json.dumps(p)) for p in spec["filters"]]
        self.position = 0  # the last sequence number handed over or given up on (TRIM_HORIZON: from the start)
        self.delivered = 0  # records the function took
        self.discarded = 0  # records given up on
        self.failed_attempts = 0
        self.invocation_records = 0  # sent to the OnFailure destination
        self.last_processing_result = "No records processed"
        self._stop = threading.Event()
        self._idle = threading.Event()  # set while no batch is being delivered
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name=f"sagalocal-stream-{spec['function']}", daemon=True)

    def start(self) -> None:
        if self.spec["starting_position"] == "LATEST":
            records = self._read(after=0, limit=1_000_000)
            self.position = int(records[-1]["dynamodb"]["SequenceNumber"]) if records else 0
        self._thread.start()

    def stop(self) -> None:
        """Hand nothing more over, and wait for a batch being delivered (its invocation in flight) to end; a read
        waiting for records is not waited for (a daemon thread, which ends when the read returns)."""
        self._stop.set()
        self._idle.wait(STOP_WAIT_SECONDS)

    def describe(self) -> dict[str, Any]:
        return {"function": self.spec["function"], "table": self.spec["table"], "position": self.position,
                "delivered": self.delivered, "discarded": self.discarded, "failed_attempts": self.failed_attempts,
                "invocation_records": self.invocation_records, "on_failure": self.spec.get("on_failure"),
                "last_processing_result": self.last_processing_result}

    def _read(self, after: int, limit: int = 100, ack: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"table": self.spec["table"], "after": after, "limit": limit, "ack": ack,
                                        "wait": wait, "stream_arn": self.spec["stream_arn"],
                                        "as": self.spec["access_key_id"]})
        with urllib.request.urlopen(f"{self.endpoint}/_sagalocal/streams?{query}", timeout=30) as response:  # noqa: S310
            return json.loads(response.read())  # type: ignore[no-any-return]

    def matches(self, record: dict[str, Any]) -> bool:
        return not self.patterns or any(pattern.matches_event(record) for pattern in self.patterns)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                records = self._read(self.position, ack=self.position, wait=POLL_SECONDS)
            except OSError as exc:
                if self._stop.is_set():
                    return  # stopped while its read waited: the DynamoDB process may be gone already
                log.warning("stream of %s unreadable: %s", self.spec["table"], exc)
                self._stop.wait(1)
                continue
            if not records:
                continue  # the read waited POLL_SECONDS for one
            for record in records:
                record["eventSourceARN"] = self.spec["stream_arn"]
            wanted = [r for r in records if self.matches(r)]
            self._idle.clear()
            try:
                for start in range(0, len(wanted), self.spec["batch_size"]):
                    if not self._deliver(wanted[start:start + self.spec["batch_size"]]):
                        return  # stopping
                self.position = int(records[-1]["dynamodb"]["SequenceNumber"])
            finally:
                self._idle.set()

    # ---- one batch, until done or given up on ---------------------------------------------------------------
    def _deliver(self, batch: list[dict[str, Any]]) -> bool:
        """Hand the batch over until every record is done or given up on; False only when the mapping stops."""
        todo = [_Batch(batch, pause=FIRST_PAUSE)]  # a stack, the last one next: a split pushes its second half first
        while todo:
            if self._stop.is_set():
                return False
            work = todo.pop()
            expired = self._expired(work.records)
            if expired:
                if not self._give_up(replace(work, records=work.records[:expired]), RECORD_AGE_EXCEEDED):
                    return False
                work = replace(work, records=work.records[expired:])
                if not work.records:
                    continue
            try:
                result = self.invoke(self.spec["function"], {"Records": work.records})
            except Exception as exc:  # noqa: BLE001 - throttled, no sandbox: the function never ran
                log.warning("stream batch for %s not delivered: %s", self.spec["function"], exc)
                self.failed_attempts += 1
                self.last_processing_result = f"PROBLEM: Function call failed: {exc}"
                self._stop.wait(work.pause)
                todo.append(replace(work, pause=min(work.pause * 2, MAX_PAUSE)))  # no retry spent
                continue
            work.invocations += 1
            work.function_error = bool(getattr(result, "error", False))
            done = 0 if work.function_error else self._done(work.records, getattr(result, "payload", None))
            self.delivered += done
            if done == len(work.records):
                self.last_processing_result = "OK"
                continue
            self.failed_attempts += 1
            self.last_processing_result = "PROBLEM: Function call failed" if work.function_error else \
                "PROBLEM: Function reported batch item failures"
            if work.function_error and self.spec.get("bisect") and len(work.records) > 1:
                half = len(work.records) // 2  # a split is no retry
                todo.append(replace(work, records=work.records[half:], pause=FIRST_PAUSE))
                todo.append(replace(work, records=work.records[:half], pause=FIRST_PAUSE))
                continue
            rest = replace(work, records=work.records[done:])
            if 0 <= self.spec["max_retries"] <= work.retries:
                if not self._give_up(rest, RETRY_ATTEMPTS_EXHAUSTED):
                    return False
                continue
            self._stop.wait(work.pause)
            todo.append(replace(rest, retries=work.retries + 1, pause=min(work.pause * 2, MAX_PAUSE)))
        return True

    def _expired(self, records: list[dict[str, Any]]) -> int:
        """How many of the records, from the first, are older than MaximumRecordAgeInSeconds."""
        limit = int(self.spec.get("max_record_age", -1))
        if limit < 0:
            return 0
        now = self.clock()
        return next((i for i, record in enumerate(records)
                     if now - float(record["dynamodb"].get("ApproximateCreationDateTime", now)) <= limit),
                    len(records))

    def _done(self, records: list[dict[str, Any]], payload: Any) -> int:
        """How many records, from the first, an answer without a function error says are done: all of them, but
        with ReportBatchItemFailures those before the lowest sequence number it reports (none if it reports one
        that is malformed, or no record of the batch)."""
        if not self.spec.get("report_batch_item_failures") or not isinstance(payload, dict):
            return len(records)
        failures = payload.get("batchItemFailures")
        if not failures:  # absent, null or empty: a complete success
            return len(records)
        if not isinstance(failures, list):
            return 0
        index = {str(record["dynamodb"]["SequenceNumber"]): i for i, record in enumerate(records)}
        reported = []
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not isinstance(identifier, str) or identifier not in index:
                log.warning("%s reported %r as a failed record: the whole batch failed", self.spec["function"],
                            failure)
                return 0
            reported.append(index[identifier])
        return min(reported)

    # ---- giving up -----------------------------------------------------------------------------------------
    def _give_up(self, work: _Batch, condition: str) -> bool:
        """Skip the records, after sending their invocation record to the OnFailure destination if there is one
        (retried until it is sent: a record is never skipped without its trace); False when the mapping stops."""
        destination = self.spec.get("on_failure")
        first, last = work.records[0]["dynamodb"]["SequenceNumber"], work.records[-1]["dynamodb"]["SequenceNumber"]
        log.error("%s: giving up on %d stream records (%s to %s): %s after %d invocations%s",
                  self.spec["function"], len(work.records), first, last, condition, work.invocations,
                  f"; invocation record to {destination}" if destination else "; no OnFailure destination")
        pause = FIRST_PAUSE
        while destination and self.send is not None:
            try:
                self.send(destination, json.dumps(self.invocation_record(work, condition)))
                self.invocation_records += 1
                break
            except Exception as exc:  # noqa: BLE001 - denied, no such queue: the shard waits, as it does on AWS
                log.error("%s: the invocation record could not be sent to %s: %s", self.spec["function"],
                          destination, exc)
                self.last_processing_result = f"PROBLEM: could not send to the OnFailure destination: {exc}"
                if self._stop.wait(pause):
                    return False
                pause = min(pause * 2, MAX_PAUSE)
        self.discarded += len(work.records)
        return True

    def invocation_record(self, work: _Batch, condition: str) -> dict[str, Any]:
        """What Lambda sends a stream mapping's OnFailure destination for records it gave up on."""
        function_arn, version = self.target(self.spec["function"]) if self.target else (
            self.spec.get("function_arn", self.spec["function"]), "$LATEST")
        first, last = work.records[0]["dynamodb"], work.records[-1]["dynamodb"]
        record: dict[str, Any] = {
            "requestContext": {"requestId": str(uuid.uuid4()), "functionArn": function_arn, "condition": condition,
                               "approximateInvokeCount": work.invocations},
        }
        if work.invocations:  # (records too old before their first invocation: no response to describe)
            record["responseContext"] = {"statusCode": 200, "executedVersion": version,
                                         **({"functionError": "Unhandled"} if work.function_error else {})}
        record.update({
            "version": "1.0",
            "timestamp": _iso(self.clock(), milliseconds=True),
            "DDBStreamBatchInfo": {
                "shardId": shard_id(self.spec["stream_arn"]),
                "startSequenceNumber": str(first["SequenceNumber"]), "endSequenceNumber": str(last["SequenceNumber"]),
                "approximateArrivalOfFirstRecord": _iso(float(first.get("ApproximateCreationDateTime", 0))),
                "approximateArrivalOfLastRecord": _iso(float(last.get("ApproximateCreationDateTime", 0))),
                "batchSize": len(work.records), "streamArn": self.spec["stream_arn"],
            },
        })
        return record


def shard_id(stream_arn: str) -> str:
    """The local stream's one shard (a table's stream has a single shard here)."""
    return f"shardId-{'0' * 20}-{hashlib.sha256(stream_arn.encode()).hexdigest()[:8]}"


def _iso(epoch_seconds: float, milliseconds: bool = False) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds" if milliseconds else "seconds").replace("+00:00", "Z")


class SqsDestination:
    """Sends invocation records to an SQS queue named by its ARN, through the stack's AWS endpoint, signed with the
    function's credentials: IAM is enforced there, and the function's role must allow sqs:SendMessage."""

    def __init__(self, endpoint: str, region: str, access_key_id: str, secret_access_key: str) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint.rstrip("/")
        self.client = boto3.client("sqs", endpoint_url=self.endpoint, region_name=region,
                                   aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                   config=Config(retries={"total_max_attempts": 1}))

    def __call__(self, destination: str, body: str) -> None:
        parts = destination.split(":")
        if len(parts) != 6 or parts[2] != "sqs":
            raise ValueError(f"{destination}: only SQS queues are emulated as OnFailure destinations")
        self.client.send_message(QueueUrl=f"{self.endpoint}/{parts[4]}/{parts[5]}", MessageBody=body)
