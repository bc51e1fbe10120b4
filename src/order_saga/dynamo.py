"""Small helpers over the low-level DynamoDB client (cheaper to create than boto3.resource)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from order_saga.errors import StoreThrottled

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

_TRANSIENT_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
}


def to_ddb(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in item.items() if v is not None}


def from_ddb(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def values(**kwargs: Any) -> dict[str, Any]:
    """ExpressionAttributeValues from keyword arguments: values(status="X") -> {":status": {...}}."""
    return {f":{k}": _serializer.serialize(v) for k, v in kwargs.items()}


def _plain(value: Any) -> Any:
    """Decimals from DynamoDB become ints (all our numbers are integers: units and cents)."""
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set):
        return {_plain(v) for v in value}
    return value


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_condition_failure(exc: ClientError) -> bool:
    return error_code(exc) == "ConditionalCheckFailedException"


def raise_if_transient(exc: ClientError) -> None:
    """Turn throttling that survived the SDK's retries into the saga's transient error."""
    if error_code(exc) in _TRANSIENT_CODES:
        raise StoreThrottled(f"DynamoDB: {error_code(exc)}") from exc


def cancellation_reasons(exc: ClientError) -> list[str | None]:
    """TransactWriteItems: the code for each item of a cancelled transaction, in order (None: it held)."""
    return [r.get("Code") if r.get("Code") != "None" else None
            for r in exc.response.get("CancellationReasons", [])]


def guard_failed(reasons: list[str | None], guard: dict[str, Any] | None) -> bool:
    """Whether the lease guard, always the transaction's last item, is what cancelled it."""
    return guard is not None and bool(reasons) and reasons[-1] == "ConditionalCheckFailed"


def now_ms() -> int:
    return int(time.time() * 1000)
