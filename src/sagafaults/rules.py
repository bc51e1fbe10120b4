"""The fault rule: what fails, how, for what, and how often. Plain data, validated on the way in.

Actions (the Lambda ones are named after AWS FIS's Lambda fault actions):

  invocation-error        the invocation fails. With `prevent_execution` (the default) the handler does not
                          run and the error is `error` (a class name, e.g. TransientError). Without it the
                          handler runs and writes, then the sandbox dies: Runtime.ExitError, a crash after
                          the write.
  invocation-add-delay    the handler starts `delay_ms` late. Past the function's timeout, the invocation
                          times out (Sandbox.Timedout) as it would on AWS.
  dynamodb-error          a DynamoDB request fails with `error`, exactly as DynamoDB answers it:
                          TransactionConflict (a transaction is cancelled with that reason for the matching
                          items; a single-item write gets TransactionConflictException), or a request-level
                          ProvisionedThroughputExceededException, ThrottlingException, RequestLimitExceeded,
                          InternalServerError or ServiceUnavailable.
  dynamodb-response-lost  the request is applied, then its response is lost: the client sees an
                          InternalServerError (`lost_as` "error") or a read timeout (`lost_as` "timeout").

Selectors, all optional: `function` and `order_id` (the invocation: the saga's name of the function, such
as ReserveInventory or OrdersApi, and the order it works on), `table` (physical name), `operation` (the
DynamoDB API operation), `key` (a regular expression searched in each item's key values, joined with "|").
`count` invocations or requests are affected (null: every one); `probability` draws for each match.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

LAMBDA_ACTIONS = ("invocation-error", "invocation-add-delay")
DYNAMODB_ACTIONS = ("dynamodb-error", "dynamodb-response-lost")
ACTIONS = LAMBDA_ACTIONS + DYNAMODB_ACTIONS

ITEM_ERRORS = ("TransactionConflict",)
REQUEST_ERRORS = ("ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
                  "InternalServerError", "ServiceUnavailable")
DYNAMODB_ERRORS = ITEM_ERRORS + REQUEST_ERRORS
WRITE_OPERATIONS = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
CRASH = "Runtime.ExitError"  # invocation-error without prevent_execution: the sandbox exits after the handler ran
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class RuleError(ValueError):
    """A rule that cannot be applied; the message says which field and why."""


@dataclass
class Rule:
    action: str
    function: str | None = None
    order_id: str | None = None
    table: str | None = None
    operation: str | None = None
    key: str | None = None
    error: str | None = None
    lost_as: str = "error"
    prevent_execution: bool = True
    delay_ms: int = 0
    count: int | None = 1
    probability: float = 1.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def from_json(cls, data: Any) -> Rule:
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise RuleError(f"a rule is a JSON object: {exc}") from exc
        if not isinstance(data, dict):
            raise RuleError("a rule is a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RuleError(f"unknown rule fields: {unknown}; known: {sorted(known)}")
        if "action" not in data:
            raise RuleError("a rule needs an action, one of " + ", ".join(ACTIONS))
        try:
            rule = cls(**data)
        except TypeError as exc:
            raise RuleError(str(exc)) from exc
        rule.validate()
        return rule

    def validate(self) -> None:
        if self.action not in ACTIONS:
            raise RuleError(f"action {self.action!r}: must be one of {', '.join(ACTIONS)}")
        for name in ("function", "order_id", "table", "operation", "key", "error", "id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or len(value) > 256):
                raise RuleError(f"{name} must be a non-empty string of at most 256 characters")
        if self.key is not None:
            try:
                re.compile(self.key)
            except re.error as exc:
                raise RuleError(f"key is not a regular expression: {exc}") from exc
        if self.count is not None and (type(self.count) is not int or self.count < 1):
            raise RuleError("count must be a positive integer, or null for every match")
        if type(self.probability) not in (int, float) or not 0 < self.probability <= 1:
            raise RuleError("probability must be a number in (0, 1]")
        if type(self.delay_ms) is not int or not 0 <= self.delay_ms <= 900_000:
            raise RuleError("delay_ms must be an integer from 0 to 900000")
        if type(self.prevent_execution) is not bool:
            raise RuleError("prevent_execution must be true or false")
        if self.action == "invocation-error":
            if self.prevent_execution and (self.error is None or not _NAME.match(self.error)):
                raise RuleError("invocation-error needs `error`, an error class name (letters, digits, _)")
            if not self.prevent_execution and self.error not in (None, CRASH):
                raise RuleError(f"invocation-error without prevent_execution ends in {CRASH}; omit `error`")
        if self.action == "invocation-add-delay" and self.delay_ms <= 0:
            raise RuleError("invocation-add-delay needs delay_ms > 0")
        if self.action in LAMBDA_ACTIONS and (self.table or self.operation or self.key):
            raise RuleError(f"{self.action} selects invocations: table, operation and key do not apply")
        if self.action == "dynamodb-error" and self.error not in DYNAMODB_ERRORS:
            raise RuleError(f"dynamodb-error needs `error`, one of {', '.join(DYNAMODB_ERRORS)}")
        if self.action == "dynamodb-response-lost":
            if self.lost_as not in ("error", "timeout"):
                raise RuleError("lost_as must be 'error' or 'timeout'")
            if self.operation is not None and self.operation not in WRITE_OPERATIONS:
                raise RuleError(f"dynamodb-response-lost applies to writes: {', '.join(WRITE_OPERATIONS)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    # ---- matching ---------------------------------------------------------------------------
    def matches_invocation(self, function: str, order_id: str | None) -> bool:
        return (self.action in LAMBDA_ACTIONS and self.function in (None, function)
                and self.order_id in (None, order_id))

    def matches_context(self, function: str | None, order_id: str | None) -> bool:
        """A DynamoDB rule's invocation selectors (a rule without them matches any caller)."""
        return self.function in (None, function) and self.order_id in (None, order_id)

    def dynamodb_targets(self, operation: str, items: list[tuple[str, str]]) -> list[int] | None:
        """For a DynamoDB request: the indexes of the items this rule hits, or None if it does not apply.

        `items` are (table, key text) for each item the request names, in request order.
        """
        if self.action not in DYNAMODB_ACTIONS or self.operation not in (None, operation):
            return None
        if self.action == "dynamodb-response-lost" and operation not in WRITE_OPERATIONS:
            return None
        if self.error in ITEM_ERRORS and operation not in ("PutItem", "UpdateItem", "DeleteItem",
                                                            "TransactWriteItems", "TransactGetItems"):
            return None
        if self.table is None and self.key is None:
            return list(range(len(items))) or [0]
        pattern = re.compile(self.key) if self.key is not None else None
        hits = [i for i, (table, text) in enumerate(items)
                if self.table in (None, table) and (pattern is None or pattern.search(text))]
        return hits or None

    def draw(self) -> bool:
        return self.probability >= 1 or random.random() < self.probability  # noqa: S311 - not cryptographic


def key_text(key: dict[str, Any]) -> str:
    """The text a rule's `key` pattern is searched in: the key's scalar values in attribute-name order."""
    parts = []
    for name in sorted(key):
        value = key[name]
        if isinstance(value, dict):
            scalar = value.get("S", value.get("N"))
            if scalar is not None:
                parts.append(str(scalar))
    return "|".join(parts)


def request_items(operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(table, key text) for each item a DynamoDB request names, in request order."""
    if operation in ("GetItem", "UpdateItem", "DeleteItem"):
        return [(params.get("TableName", ""), key_text(params.get("Key") or {}))]
    if operation == "PutItem":
        return [(params.get("TableName", ""), key_text(params.get("Item") or {}))]
    if operation in ("Query", "Scan"):
        return [(params.get("TableName", ""), "")]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        out = []
        for entry in params.get("TransactItems") or []:
            (kind, op), = entry.items() if isinstance(entry, dict) and len(entry) == 1 else (("?", {}),)
            key = op.get("Item") if kind == "Put" else op.get("Key")
            out.append((op.get("TableName", ""), key_text(key or {})))
        return out
    if operation == "BatchGetItem":
        return [(table, key_text(key)) for table, spec in (params.get("RequestItems") or {}).items()
                for key in spec.get("Keys", [])]
    if operation == "BatchWriteItem":
        out = []
        for table, requests in (params.get("RequestItems") or {}).items():
            for request in requests:
                put, delete = request.get("PutRequest"), request.get("DeleteRequest")
                out.append((table, key_text((put or {}).get("Item") or (delete or {}).get("Key") or {})))
        return out
    return [(params.get("TableName", ""), "")]
