"""Lambda event source mappings for DynamoDB streams: poll the stream, filter, batch, invoke, retry.

As Lambda does: records arrive in order; each FilterCriteria pattern (EventBridge pattern syntax, matched by
moto's own matcher) drops what matches none; a batch that fails is retried as a whole (with a backoff)
until it succeeds or MaximumRetryAttempts runs out (-1: until the record expires), and is split in two
on a function error when BisectBatchOnFunctionError is set. A mapping reads the stream with its function's
identity, so the function's role must allow it (GetRecords on the stream). Records are acknowledged once
handed over, and the DynamoDB process drops them.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sagalocal.eventsources")
POLL_SECONDS = 0.05


class StreamMapping:
    def __init__(self, spec: dict[str, Any], dynamodb_endpoint: str,
                 invoke: Callable[[str, Any], Any]) -> None:
        from moto.events.models import EventPattern

        self.spec = spec
        self.endpoint = dynamodb_endpoint
        self.invoke = invoke
        self.patterns = [EventPattern.load(p if isinstance(p, str) else json.dumps(p)) for p in spec["filters"]]
        self.position = 0  # the last sequence number handed over (TRIM_HORIZON: from the start)
        self.delivered = 0
        self.failed_attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sagalocal-stream-{spec['function']}", daemon=True)

    def start(self) -> None:
        if self.spec["starting_position"] == "LATEST":
            records = self._read(after=0, limit=1_000_000)
            self.position = int(records[-1]["dynamodb"]["SequenceNumber"]) if records else 0
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def describe(self) -> dict[str, Any]:
        return {"function": self.spec["function"], "table": self.spec["table"], "position": self.position,
                "delivered": self.delivered, "failed_attempts": self.failed_attempts}

    def _read(self, after: int, limit: int = 100, ack: int = 0) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"table": self.spec["table"], "after": after, "limit": limit, "ack": ack,
                                        "stream_arn": self.spec["stream_arn"], "as": self.spec["access_key_id"]})
        with urllib.request.urlopen(f"{self.endpoint}/_sagalocal/streams?{query}", timeout=30) as response:  # noqa: S310
            return json.loads(response.read())  # type: ignore[no-any-return]

    def matches(self, record: dict[str, Any]) -> bool:
        return not self.patterns or any(pattern.matches_event(record) for pattern in self.patterns)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                records = self._read(self.position, ack=self.position)
            except OSError as exc:
                log.warning("stream of %s unreadable: %s", self.spec["table"], exc)
                self._stop.wait(1)
                continue
            if not records:
                self._stop.wait(POLL_SECONDS)
                continue
            for record in records:
                record["eventSourceARN"] = self.spec["stream_arn"]
            wanted = [r for r in records if self.matches(r)]
            for start in range(0, len(wanted), self.spec["batch_size"]):
                if not self._deliver(wanted[start:start + self.spec["batch_size"]]):
                    return  # stopping
            self.position = int(records[-1]["dynamodb"]["SequenceNumber"])

    def _deliver(self, batch: list[dict[str, Any]]) -> bool:
        """Invoke until the batch succeeds (split on error if asked); False only when the mapping stops."""
        attempts, pause = 0, 0.2
        while not self._stop.is_set():
            try:
                result = self.invoke(self.spec["function"], {"Records": batch})
                failed = bool(getattr(result, "error", False))
            except Exception as exc:  # noqa: BLE001 - throttled or broken: retried like a function error
                log.warning("stream batch for %s not delivered: %s", self.spec["function"], exc)
                failed = True
            if not failed:
                self.delivered += len(batch)
                return True
            self.failed_attempts += 1
            attempts += 1
            if self.spec.get("bisect") and len(batch) > 1:
                half = len(batch) // 2
                return self._deliver(batch[:half]) and self._deliver(batch[half:])
            if 0 <= self.spec["max_retries"] < attempts:
                log.error("dropping %d stream records for %s after %d attempts", len(batch), self.spec["function"],
                          attempts)
                return True
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)
        return False
