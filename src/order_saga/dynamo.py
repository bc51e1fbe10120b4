"""DynamoDB's wire format and back, for the low-level client (cheaper to create than boto3.resource)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_ddb(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in item.items() if v is not None}


def from_ddb(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def values(**kwargs: Any) -> dict[str, Any]:
    """ExpressionAttributeValues from keyword arguments: values(status="X") -> {":status": {...}}."""
    return {f":{k}": _serializer.serialize(v) for k, v in kwargs.items()}


def _plain(value: Any) -> Any:
    """Decimals from DynamoDB become ints (all our numbers are integers: units, cents, epoch ms)."""
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set):
        return {_plain(v) for v in value}
    return value


def now_ms() -> int:
    return int(time.time() * 1000)
