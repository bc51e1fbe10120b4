"""DynamoDB's errors on the wire, exactly as the service returns them (status, __type, message, reasons).

botocore parses these like any response from AWS, so code under test sees the real exception classes,
codes and CancellationReasons, not an imitation raised in Python.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "com.amazonaws.dynamodb.v20120810#"
ONGOING = "Transaction is ongoing for the item"

_REQUEST_ERRORS: dict[str, tuple[int, str, str]] = {
    "ProvisionedThroughputExceededException": (
        400, PREFIX + "ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded. Consider increasing your "
        "provisioning level with the UpdateTable API."),
    "ThrottlingException": (
        400, "com.amazon.coral.availability#ThrottlingException",
        "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically scaling your "
        "table or index so please try again shortly."),
    "RequestLimitExceeded": (
        400, PREFIX + "RequestLimitExceeded",
        "Throughput exceeds the current throughput limit for your account. Please contact AWS Support at "
        "https://aws.amazon.com/support request a limit increase"),
    "InternalServerError": (500, PREFIX + "InternalServerError", "Internal server error"),
    "ServiceUnavailable": (503, PREFIX + "ServiceUnavailable", "Service unavailable"),
}


def cancelled(reasons: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """A TransactionCanceledException with one reason per item ({"Code": "None"} for an item that held)."""
    codes = ", ".join(str(r.get("Code", "None")) for r in reasons)
    return 400, {"__type": PREFIX + "TransactionCanceledException", "CancellationReasons": reasons,
                 "Message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]"}


def conflict_reason() -> dict[str, str]:
    return {"Code": "TransactionConflict", "Message": ONGOING}


def error_response(error: str, operation: str, hits: list[int], n_items: int) -> tuple[int, dict[str, Any]]:
    """The status and JSON body DynamoDB answers for `error` on this request."""
    if error == "TransactionConflict":
        if operation in ("TransactWriteItems", "TransactGetItems"):
            return cancelled([conflict_reason() if i in hits else {"Code": "None"} for i in range(n_items)])
        return 400, {"__type": PREFIX + "TransactionConflictException", "message": ONGOING}
    status, kind, message = _REQUEST_ERRORS[error]
    return status, {"__type": kind, "message": message}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
