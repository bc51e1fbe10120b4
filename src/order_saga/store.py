"""DynamoDB as the saga uses it: conditional writes whose failure says what the item holds, and one retry
policy for everything DynamoDB does that is not an answer.

An answer is a success or a failed condition: a failed condition comes back with the item as it is
(ReturnValuesOnConditionCheckFailure ALL_OLD), so the caller decides "already done", "someone else's"
or "business failure" without reading again.

Everything else is transient and retried here, with full-jitter backoff, for as long as the invocation's
time budget allows: throttling (ProvisionedThroughputExceeded, Throttling, RequestLimitExceeded), server
errors (InternalServerError, ServiceUnavailable), transaction conflicts (TransactionCanceledException with
TransactionConflict, TransactionConflictException, TransactionInProgressException), and a request whose
response was lost (a timeout or a dropped connection; the write may have happened). Transactions carry one
ClientRequestToken across these retries, so DynamoDB applies a transaction at most once however many times
it is sent; a single-item write retried after a lost response finds its own write and reports a failed
condition with the item, which the caller reads as "already done".

When the budget is spent the error becomes the saga's transient error (StoreContention for conflicts,
StoreThrottled for the rest), which the state machine retries. No call starts that could outlive the
invocation: an attempt takes at most ATTEMPT_SECONDS (connect plus read timeout), and it is sent only if it
ends ANSWER_SECONDS before the function's timeout, so a Lambda timeout never cuts a DynamoDB call short
(docs/timeouts.md has the arithmetic).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from order_saga.dynamo import from_ddb
from order_saga.errors import StoreContention, StoreThrottled

# Every DynamoDB call: 0.5 s to connect, 1.5 s to answer (DynamoDB answers in milliseconds; a request that has
# not answered in 1.5 s is better retried), no SDK retries (this module retries, within the budget).
CLIENT_CONFIG = Config(connect_timeout=0.5, read_timeout=1.5, retries={"total_max_attempts": 1},
                       tcp_keepalive=True, max_pool_connections=16)
THROTTLING = {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
              "InternalServerError", "ServiceUnavailable", "TransactionInProgressException"}
CONFLICTS = {"TransactionConflictException"}
TRANSIENT_REASONS = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
BACKOFF_BASE, BACKOFF_CAP = 0.025, 0.5  # seconds: full jitter in [0, min(cap, base * 2**attempt)]
MAX_ATTEMPTS = 8
ATTEMPT_SECONDS = 2.0  # the longest one attempt can take: connect_timeout + read_timeout
ANSWER_SECONDS = 0.5  # kept after the last call for the handler to answer


@dataclass
class Written:
    """A conditional write's answer: `ok`, and the item (ALL_NEW when asked for, else ALL_OLD on failure)."""

    ok: bool
    item: dict[str, Any] | None = None


Items = dict[str, dict[str, Any]]  # a transaction's items by name: {"reservation": {...}, "order": {...}}


@dataclass
class Cancelled:
    """A transaction cancelled by its conditions: per item name, the reason code (None: held) and the item as it
    was (ALL_OLD), so a caller reads `cancelled.failed("order")`, never an index."""

    reasons: dict[str, str | None]
    items: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def failed(self, name: str) -> bool:
        if name not in self.reasons:
            raise KeyError(f"the transaction had no item named {name!r} (it had {', '.join(self.reasons)})")
        return self.reasons[name] == "ConditionalCheckFailed"

    def item(self, name: str) -> dict[str, Any] | None:
        return self.items.get(name)

    def failed_among(self, prefix: str) -> list[str]:
        """The names starting with `prefix` whose condition failed: failed_among("stock:")."""
        return [name for name in self.reasons if name.startswith(prefix) and self.failed(name)]


class Store:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._deadline: float | None = None
        self.attempts = 0  # requests sent, retries included (what a benchmark counts)

    def set_deadline(self, remaining_ms: int) -> None:
        """The invocation's time budget: no attempt starts that could end after it."""
        self._deadline = time.monotonic() + remaining_ms / 1000 - ANSWER_SECONDS

    def time_left(self) -> float:
        """Seconds until the budget's end (infinite without one): what a call to another service may take."""
        return float("inf") if self._deadline is None else self._deadline - time.monotonic()

    # ---- reads -------------------------------------------------------------------------------------------
    def get(self, table: str, key: dict[str, Any], consistent: bool = True) -> dict[str, Any] | None:
        resp = self._call("get_item", TableName=table, Key=key, ConsistentRead=consistent)
        return from_ddb(resp["Item"]) if "Item" in resp else None

    def batch_get(self, table: str, keys: list[dict[str, Any]], consistent: bool = False) -> list[dict[str, Any]]:
        return self.batch_get_tables({table: keys}, consistent)[table]

    def batch_get_tables(self, keys_by_table: dict[str, list[dict[str, Any]]],
                         consistent: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Items of several tables in one BatchGetItem (100 keys a request; unprocessed keys asked again)."""
        found: dict[str, list[dict[str, Any]]] = {table: [] for table in keys_by_table}
        pending = [(table, key) for table, keys in keys_by_table.items() for key in keys]
        for start in range(0, len(pending), 100):
            request: dict[str, Any] = {}
            for table, key in pending[start:start + 100]:
                request.setdefault(table, {"Keys": [], "ConsistentRead": consistent})["Keys"].append(key)
            while request:
                resp = self._call("batch_get_item", RequestItems=request)
                for table, raws in resp["Responses"].items():
                    found[table].extend(from_ddb(raw) for raw in raws)
                request = resp.get("UnprocessedKeys") or {}
                if request:
                    self._pause(0, "UnprocessedKeys")
        return found

    def query(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Every page of a Query."""
        items: list[dict[str, Any]] = []
        while True:
            resp = self._call("query", **kwargs)
            items.extend(from_ddb(raw) for raw in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    # ---- writes ------------------------------------------------------------------------------------------
    def put(self, **kwargs: Any) -> Written:
        return self._write("put_item", kwargs)

    def update(self, **kwargs: Any) -> Written:
        return self._write("update_item", kwargs)

    def _write(self, operation: str, kwargs: dict[str, Any]) -> Written:
        if "ConditionExpression" in kwargs:
            kwargs.setdefault("ReturnValuesOnConditionCheckFailure", "ALL_OLD")
        try:
            resp = self._call(operation, **kwargs)
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            return Written(False, from_ddb(old) if old else None)
        attributes = resp.get("Attributes")
        return Written(True, from_ddb(attributes) if attributes else None)

    def transact(self, items: Items) -> Cancelled | None:
        """One TransactWriteItems of the named items, in their order. None: applied. Cancelled: its conditions
        failed (and nothing was written); the reasons and old items come back under the same names."""
        for entry in items.values():
            op = next(iter(entry.values()))
            if "ConditionExpression" in op:
                op.setdefault("ReturnValuesOnConditionCheckFailure", "ALL_OLD")
        try:
            self._call("transact_write_items", TransactItems=list(items.values()),
                       ClientRequestToken=str(uuid.uuid4()))
        except ClientError as exc:
            if _code(exc) != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons", [])
            return Cancelled({name: None if r.get("Code") in (None, "None") else r.get("Code")
                              for name, r in zip(items, reasons, strict=False)},
                             {name: from_ddb(r["Item"]) if r.get("Item") else None
                              for name, r in zip(items, reasons, strict=False)})
        return None

    # ---- the retry policy --------------------------------------------------------------------------------
    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        attempt = 0
        if self.time_left() < ATTEMPT_SECONDS:
            raise StoreThrottled(f"DynamoDB: no time left in this invocation for a {operation} "
                                 f"({self.time_left():.1f} s < {ATTEMPT_SECONDS} s); the step is retried")
        while True:
            self.attempts += 1
            try:
                return getattr(self.client, operation)(**kwargs)  # type: ignore[no-any-return]
            except ClientError as exc:
                kind = _transient(exc)
                if kind is None:
                    raise
                self._pause(attempt, kind, exc)
            except (ConnectionError, HTTPClientError) as exc:  # timeouts and dropped connections included
                self._pause(attempt, "lost response", exc)
            attempt += 1

    def _pause(self, attempt: int, kind: str, cause: Exception | None = None) -> None:
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))  # noqa: S311 - jitter
        out_of_time = self.time_left() < delay + ATTEMPT_SECONDS
        if attempt + 1 >= MAX_ATTEMPTS or out_of_time:
            error = StoreContention if kind == "conflict" else StoreThrottled
            raise error(f"DynamoDB: {kind} after {attempt + 1} attempts"
                        + (f" ({_code(cause) or type(cause).__name__})" if cause is not None else "")) from cause
        time.sleep(delay)


def _code(exc: Exception | None) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _transient(exc: ClientError) -> str | None:
    """'conflict' or 'throttled' for what is retried, None for an answer."""
    code = _code(exc)
    if code in CONFLICTS:
        return "conflict"
    if code in THROTTLING:
        return "throttled"
    if code == "TransactionCanceledException":
        reasons = {r.get("Code") for r in exc.response.get("CancellationReasons", [])}
        if "TransactionConflict" in reasons:
            return "conflict"
        if reasons & TRANSIENT_REASONS:
            return "throttled"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return "throttled" if status >= 500 else None
