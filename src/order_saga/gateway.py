"""The payment gateway adapter and its deterministic fake.

Every gateway call carries an idempotency key (the payment id), as real card processors accept, so a
retried call never authorizes or captures twice, and an authorization can always be found and voided by
its key (the reconciliation path uses that).

The fake is chosen by configuration (PAYMENT_GATEWAY=fake). Like a processor's sandbox it knows test
tokens, so no saga code ever needs a fault-injection hook:

  tok_approve        always approves
  tok_decline        always declines (PaymentDeclined)
  tok_transient_<N>  fails transiently N times for a payment, then approves
  tok_hang           hangs for FAKE_GATEWAY_HANG_SECONDS, then approves
                     (longer than the function's timeout by default)

Any other token is declined, as a processor declines an unknown card. The fake keeps its ledger in a
DynamoDB table (items keyed "fake-gateway#<key>"), so its state survives across Lambda sandboxes and
tests can read what was charged. No message it raises carries the card token.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Protocol

from order_saga.dynamo import to_ddb, values
from order_saga.errors import PaymentDeclined, PaymentGatewayUnavailable, PaymentNotAuthorized
from order_saga.store import Store, Written

LEDGER_PREFIX = "fake-gateway#"
AUTHORIZED, CAPTURED, VOIDED, REFUNDED, DECLINED = "AUTHORIZED", "CAPTURED", "VOIDED", "REFUNDED", "DECLINED"


class PaymentGateway(Protocol):
    def authorize(self, key: str, token: str, amount: int, currency: str) -> str: ...
    def capture(self, key: str) -> None: ...
    def reverse(self, key: str) -> str | None: ...
    def state(self, key: str) -> str | None: ...


class FakeGateway:
    """A deterministic card processor sandbox (see the module docstring)."""

    def __init__(self, store: Store, table: str, hang_seconds: float = 3600.0) -> None:
        self.store = store
        self.table = table
        self.hang_seconds = hang_seconds

    def _key(self, key: str) -> dict[str, Any]:
        return to_ddb({"payment_id": LEDGER_PREFIX + key})

    def entry(self, key: str) -> dict[str, Any] | None:
        return self.store.get(self.table, self._key(key))

    def state(self, key: str) -> str | None:
        entry = self.entry(key)
        return None if entry is None else entry.get("state")

    def authorize(self, key: str, token: str, amount: int, currency: str) -> str:
        transient = re.fullmatch(r"tok_transient_(\d+)", token)
        if transient:
            failures = self._count_attempt(key)
            if failures <= int(transient.group(1)):
                raise PaymentGatewayUnavailable(f"gateway unavailable (test card, failure {failures})")
        elif token == "tok_hang":
            time.sleep(self.hang_seconds)
        elif token != "tok_approve":
            self._record_once(key, {"state": DECLINED, "amount": amount, "currency": currency})
            raise PaymentDeclined("card declined (test card)")
        entry = self._record_once(key, {"state": AUTHORIZED, "amount": amount, "currency": currency,
                                        "auth_ref": f"auth_{key}"})
        if entry.get("state") == DECLINED:
            raise PaymentDeclined("card declined")
        return str(entry.get("auth_ref", f"auth_{key}"))

    def capture(self, key: str) -> None:
        """Take the authorized money. A repeat is a no-op; anything but an authorization is refused."""
        written = self._move(key, AUTHORIZED, CAPTURED)
        if not written.ok and (written.item or {}).get("state") != CAPTURED:
            raise PaymentNotAuthorized(f"gateway: nothing to capture, the payment is "
                                       f"{(written.item or {}).get('state')}")

    def reverse(self, key: str) -> str | None:
        """Give back whatever the key holds: void an authorization, refund a capture. Returns the final state
        (None: nothing was ever authorized). Idempotent."""
        for _ in range(3):
            state = self.state(key)
            if state not in (AUTHORIZED, CAPTURED):
                return state
            target = VOIDED if state == AUTHORIZED else REFUNDED
            if self._move(key, state, target).ok:
                return target
        raise PaymentGatewayUnavailable("gateway: the payment kept changing while it was being reversed")

    def _count_attempt(self, key: str) -> int:
        written = self.store.update(
            TableName=self.table, Key=self._key(key), UpdateExpression="ADD failures :one",
            ExpressionAttributeValues=values(one=1), ReturnValues="UPDATED_NEW")
        return int((written.item or {}).get("failures", 1))

    def _record_once(self, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Record the authorization's outcome once; a repeat returns the first outcome."""
        written = self.store.update(
            TableName=self.table, Key=self._key(key),
            UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in fields),
            ConditionExpression="attribute_not_exists(#state)",
            ExpressionAttributeNames={f"#{k}": k for k in fields},
            ExpressionAttributeValues=values(**fields), ReturnValues="ALL_NEW")
        return written.item or {}

    def _move(self, key: str, state_from: str, state_to: str) -> Written:
        return self.store.update(
            TableName=self.table, Key=self._key(key), UpdateExpression="SET #state = :to",
            ConditionExpression="#state = :from", ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues=values(to=state_to, **{"from": state_from}))


def gateway_from_env(store: Store) -> PaymentGateway:
    """The gateway named by PAYMENT_GATEWAY. Only the fake ships; a real adapter implements PaymentGateway."""
    kind = os.environ["PAYMENT_GATEWAY"]
    if kind == "fake":
        hang = float(os.environ.get("FAKE_GATEWAY_HANG_SECONDS", "3600"))
        return FakeGateway(store, os.environ["PAYMENTS_TABLE"], hang)
    raise RuntimeError(f"PAYMENT_GATEWAY={kind!r}: no such adapter (known: fake)")
