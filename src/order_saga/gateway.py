"""The payment gateway adapter and its deterministic fake.

Every gateway call carries an idempotency key (the order id), as real card
processors accept, so a retried call never authorizes or captures twice.

The fake is chosen by configuration (PAYMENT_GATEWAY=fake). Like a processor's
sandbox it knows test tokens, so no saga code ever needs a fault-injection hook:

  tok_approve        always approves
  tok_decline        always declines (PaymentDeclined)
  tok_transient_<N>  fails transiently N times for an order, then approves
  tok_hang           hangs for FAKE_GATEWAY_HANG_SECONDS, then approves
                     (longer than the function's timeout by default)

Any other token is declined, as a processor declines an unknown card. The fake
keeps its ledger in a DynamoDB table (items keyed "fake-gateway#<key>"), so its
state survives across Lambda containers and tests can read what was charged.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Protocol

from botocore.exceptions import ClientError

from order_saga.dynamo import from_ddb, is_condition_failure, raise_if_transient, to_ddb, values
from order_saga.errors import PaymentDeclined, PaymentGatewayUnavailable, PaymentNotAuthorized

LEDGER_PREFIX = "fake-gateway#"


class PaymentGateway(Protocol):
    def authorize(self, key: str, token: str, amount: int, currency: str) -> str: ...
    def capture(self, key: str) -> None: ...
    def void(self, key: str) -> None: ...
    def refund(self, key: str) -> None: ...


class FakeGateway:
    """A deterministic card processor sandbox (see the module docstring)."""

    def __init__(self, client: Any, table: str, hang_seconds: float = 3600.0) -> None:
        self.client = client
        self.table = table
        self.hang_seconds = hang_seconds

    def _key(self, key: str) -> dict[str, Any]:
        return to_ddb({"payment_id": LEDGER_PREFIX + key})

    def entry(self, key: str) -> dict[str, Any] | None:
        resp = self.client.get_item(TableName=self.table, Key=self._key(key), ConsistentRead=True)
        return from_ddb(resp["Item"]) if "Item" in resp else None

    def authorize(self, key: str, token: str, amount: int, currency: str) -> str:
        transient = re.fullmatch(r"tok_transient_(\d+)", token)
        if transient:
            failures = self._count_attempt(key)
            if failures <= int(transient.group(1)):
                raise PaymentGatewayUnavailable(f"gateway unavailable (test token, failure {failures})")
        elif token == "tok_hang":
            time.sleep(self.hang_seconds)
        elif token != "tok_approve":
            self._put_if_new(key, {"state": "DECLINED", "token": token, "amount": amount, "currency": currency})
            raise PaymentDeclined(f"card declined (test token {token!r})")
        entry = self._put_if_new(key, {"state": "AUTHORIZED", "token": token, "amount": amount,
                                       "currency": currency, "auth_ref": f"auth_{key}"})
        if entry.get("state") == "DECLINED":
            raise PaymentDeclined("card declined")
        return str(entry.get("auth_ref", f"auth_{key}"))

    def capture(self, key: str) -> None:
        self._move(key, "AUTHORIZED", "CAPTURED")

    def void(self, key: str) -> None:
        """Release an authorization. Nothing to void (never authorized) is not an error."""
        entry = self.entry(key)
        if entry is None or entry.get("state") in (None, "DECLINED", "VOIDED"):
            return
        self._move(key, "AUTHORIZED", "VOIDED")

    def refund(self, key: str) -> None:
        self._move(key, "CAPTURED", "REFUNDED")

    def _count_attempt(self, key: str) -> int:
        resp = self.client.update_item(
            TableName=self.table, Key=self._key(key),
            UpdateExpression="ADD failures :one", ExpressionAttributeValues=values(one=1),
            ReturnValues="UPDATED_NEW",
        )
        return int(resp["Attributes"]["failures"]["N"])

    def _put_if_new(self, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Record the authorization once; a repeat returns the first outcome."""
        sets = ", ".join(f"#{k} = :{k}" for k in fields)
        try:
            resp = self.client.update_item(
                TableName=self.table, Key=self._key(key),
                UpdateExpression=f"SET {sets}",
                ConditionExpression="attribute_not_exists(#state)",
                ExpressionAttributeNames={f"#{k}": k for k in fields},
                ExpressionAttributeValues=values(**fields),
                ReturnValues="ALL_NEW",
            )
            return from_ddb(resp["Attributes"])
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise_if_transient(exc)
                raise
        return self.entry(key) or {}

    def _move(self, key: str, state_from: str, state_to: str) -> None:
        try:
            self.client.update_item(
                TableName=self.table, Key=self._key(key),
                UpdateExpression="SET #state = :to",
                ConditionExpression="#state = :from",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues=values(to=state_to, **{"from": state_from}),
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise_if_transient(exc)
                raise
            state = (self.entry(key) or {}).get("state")
            if state != state_to:
                message = f"gateway: cannot go {state_from} -> {state_to}, payment is {state}"
                raise PaymentNotAuthorized(message) from exc


def gateway_from_env(client: Any) -> PaymentGateway:
    """The gateway named by PAYMENT_GATEWAY. Only the fake ships; a real adapter implements PaymentGateway."""
    kind = os.environ["PAYMENT_GATEWAY"]
    if kind == "fake":
        hang = float(os.environ.get("FAKE_GATEWAY_HANG_SECONDS", "3600"))
        return FakeGateway(client, os.environ["PAYMENTS_TABLE"], hang)
    raise RuntimeError(f"PAYMENT_GATEWAY={kind!r}: no such adapter (known: fake)")
