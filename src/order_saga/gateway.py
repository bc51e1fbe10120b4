"""The payment gateway adapter and its deterministic fake.

Every gateway call carries an idempotency key (the payment id), as real card processors accept, so a
retried call never authorizes or captures twice, and an authorization can always be found and voided by
its key (the reconciliation path uses that).

Every call is bounded by the client's timeout (GATEWAY_TIMEOUT_SECONDS), which fits inside the function's
own timeout, so no Lambda timeout ever cuts a gateway call short (docs/timeouts.md). A call that times out
has an unknown outcome: the processor may still complete the authorization after the client gave up, and
after the saga's compensation tried to void it. The reaper's reconciliation finds those by the payment's
idempotency key (Payments.reconcile).

The fake is chosen by configuration (PAYMENT_GATEWAY=fake). Like a processor's sandbox it knows test
tokens, so no saga code ever needs a fault-injection hook:

  tok_approve        always approves
  tok_decline        always declines (PaymentDeclined)
  tok_transient_<N>  fails transiently N times for a payment, then approves
  tok_slow_<S>       the processor takes S seconds to authorize, whatever the client does: past the client's
                     timeout the call fails with an unknown outcome, and the authorization lands S s after
                     the first call (a retry meanwhile is told the request is in progress)
  tok_hang           tok_slow_<FAKE_GATEWAY_HANG_SECONDS> (3600 by default)
  tok_capture_fails  authorizes, but the authorization has expired when it is captured: the capture is
                     refused (PaymentNotAuthorized) and the hold is gone

Any other token is declined, as a processor declines an unknown card. The fake keeps its ledger in a
DynamoDB table (items keyed "fake-gateway#<key>"), so its state survives across Lambda sandboxes and
tests can read what was charged. No message it raises carries the card token.

The ledger's retention (`purge_at`, the table's TTL attribute, epoch seconds), like a processor's records: an
entry that holds nothing any more (DECLINED, VOIDED, REFUNDED) is kept for the order retention from the write that
made it so; a CAPTURED one from the write that completes its order (the saga's transaction: `retire_item`). An
AUTHORIZED, CAPTURED-but-unfinished or PROCESSING entry never expires. An entry past its `purge_at` that DynamoDB
has not deleted yet is treated as deleted, as a processor forgets an idempotency key: so when an order id comes
back after its order expired (the customer reused an Idempotency-Key), its payment starts from nothing, however
late DynamoDB deletes.

The outage switch (FAKE_GATEWAY_SWITCH=true: the template sets it on FaultInjection stacks only): every call first
adds one to its counter (`calls_<call>`) on the item "fake-gateway#switch", and fails with a 503
(PaymentGatewayUnavailable, before anything reaches the processor) while that item's `outage` string set names the
call ("authorize", "capture", "reverse", "state"). A test turns an outage on and off, and counts what reached the
processor, by writing and reading that item (its table is the stack's PaymentsTableName output). One UpdateItem per
call, on one item: a test stack's load only. A switch that cannot be reached is no outage.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from order_saga.breaker import BreakerSettings, CircuitBreaker
from order_saga.config import purge_at, retention_ms_from_env
from order_saga.dynamo import to_ddb, values
from order_saga.errors import PaymentDeclined, PaymentGatewayUnavailable, PaymentNotAuthorized, TransientError
from order_saga.store import Store, Written

LEDGER_PREFIX = "fake-gateway#"
SWITCH_KEY = LEDGER_PREFIX + "switch"  # the outage switch and call counters (no payment id is "switch")
AUTHORIZED, CAPTURED, VOIDED, REFUNDED, DECLINED = "AUTHORIZED", "CAPTURED", "VOIDED", "REFUNDED", "DECLINED"
PROCESSING = "PROCESSING"  # the processor has the request and has not decided yet
HOLDS_NOTHING = (DECLINED, VOIDED, REFUNDED)  # final ledger states: kept for the retention, then expired
# What an entry can hold besides what a new authorization sets: cleared when one overwrites an expired entry.
STALE_FIELDS = ("purge_at", "lands_at", "auth_ref", "expires_before_capture")


class PaymentGateway(Protocol):
    timeout: float  # seconds: the longest any one call takes

    # `sending`: called once, right before the request leaves (after any gate in front of the processor); what it
    # raises stops the call with nothing sent. Payments uses it for the payment's sent marker (payments.py).
    def authorize(self, key: str, token: str, amount: int, currency: str,
                  sending: Callable[[], None] | None = None) -> str: ...
    def capture(self, key: str) -> None: ...
    def reverse(self, key: str) -> str | None: ...
    def state(self, key: str) -> str | None: ...
    # Optional: retire_item(key, purge_at) -> a transaction item that lets the adapter's own record of a captured
    # payment expire with its order (the fake's ledger); an adapter whose processor keeps the records has none.


class FakeGateway:
    """A deterministic card processor sandbox (see the module docstring)."""

    def __init__(self, store: Store, table: str, hang_seconds: float = 3600.0, timeout: float = 3.0,
                 retention_ms: int | None = None, switch: bool = False) -> None:
        self.store = store
        self.switch = switch
        self.table = table
        self.hang_seconds = hang_seconds
        self.timeout = timeout
        self.retention_ms = retention_ms_from_env() if retention_ms is None else retention_ms

    def _purge_at(self) -> int:
        return purge_at(int(time.time() * 1000), self.retention_ms)

    @staticmethod
    def _expired(entry: dict[str, Any]) -> bool:
        return "purge_at" in entry and int(entry["purge_at"]) <= time.time()

    def _key(self, key: str) -> dict[str, Any]:
        return to_ddb({"payment_id": LEDGER_PREFIX + key})

    def entry(self, key: str) -> dict[str, Any] | None:
        entry = self.store.get(self.table, self._key(key))
        if entry is not None and self._expired(entry):
            return None  # past its retention: forgotten, whether or not DynamoDB deleted it yet
        if entry is not None and entry.get("state") == PROCESSING and time.time() * 1000 >= int(entry["lands_at"]):
            self._move(key, PROCESSING, AUTHORIZED)  # the processor completed it meanwhile
            entry = self.store.get(self.table, self._key(key))
        return entry

    def through_switch(self, call: str) -> None:
        """Count the call on the outage switch, and fail it while the switch names it (module docstring)."""
        if not self.switch:
            return
        try:
            written = self.store.update(
                TableName=self.table, Key=to_ddb({"payment_id": SWITCH_KEY}), UpdateExpression="ADD #calls :one",
                ExpressionAttributeNames={"#calls": f"calls_{call}"}, ExpressionAttributeValues=values(one=1),
                ReturnValues="ALL_NEW")
        except TransientError:
            return
        if call in ((written.item or {}).get("outage") or ()):
            raise PaymentGatewayUnavailable(f"gateway: 503 Service Unavailable ({call}; the outage switch is on)")

    def state(self, key: str) -> str | None:
        self.through_switch("state")
        return self._state(key)

    def _state(self, key: str) -> str | None:
        entry = self.entry(key)
        return None if entry is None else entry.get("state")

    def authorize(self, key: str, token: str, amount: int, currency: str,
                  sending: Callable[[], None] | None = None) -> str:
        if sending is not None:
            sending()
        self.through_switch("authorize")
        transient = re.fullmatch(r"tok_transient_(\d+)", token)
        slow = re.fullmatch(r"tok_slow_(\d+)", token)
        if transient:
            failures = self._count_attempt(key)
            if failures <= int(transient.group(1)):
                raise PaymentGatewayUnavailable(f"gateway unavailable (test card, failure {failures})")
        elif slow or token == "tok_hang":
            return self._slow(key, float(slow.group(1)) if slow else self.hang_seconds, amount, currency)
        elif token == "tok_capture_fails":
            entry = self._record_once(key, {"state": AUTHORIZED, "amount": amount, "currency": currency,
                                            "auth_ref": f"auth_{key}", "expires_before_capture": True})
            return str(entry.get("auth_ref", f"auth_{key}"))
        elif token != "tok_approve":
            self._record_once(key, {"state": DECLINED, "amount": amount, "currency": currency,
                                    "purge_at": self._purge_at()})
            raise PaymentDeclined("card declined (test card)")
        entry = self._record_once(key, {"state": AUTHORIZED, "amount": amount, "currency": currency,
                                        "auth_ref": f"auth_{key}"})
        if entry.get("state") == DECLINED:
            raise PaymentDeclined("card declined")
        return str(entry.get("auth_ref", f"auth_{key}"))

    def _slow(self, key: str, seconds: float, amount: int, currency: str) -> str:
        """The processor takes `seconds` from the first call; the client waits at most its timeout, counted from
        the start of its call (time spent recording the request counts too)."""
        started = time.time()
        lands_at = int((started + seconds) * 1000)
        entry = self._record_once(key, {"state": PROCESSING, "lands_at": lands_at, "amount": amount,
                                        "currency": currency, "auth_ref": f"auth_{key}"})
        lands = int(entry.get("lands_at", 0)) / 1000
        if entry.get("state") == PROCESSING and lands - started > self.timeout:
            if int(entry["lands_at"]) != lands_at:  # a repeat of a call the processor is still working on
                raise PaymentGatewayUnavailable("gateway: this payment's authorization is still in progress")
            time.sleep(max(0.0, started + self.timeout - time.time()))
            raise PaymentGatewayUnavailable(f"gateway: no answer within {self.timeout:g} s; the authorization's "
                                            f"outcome is unknown")
        wait = lands - time.time()
        if wait > 0:
            time.sleep(wait)
        state = self._state(key)
        if state == DECLINED:
            raise PaymentDeclined("card declined")
        if state in (VOIDED, REFUNDED):
            raise PaymentNotAuthorized(f"gateway: the authorization was {state}")
        return str(entry.get("auth_ref", f"auth_{key}"))

    def capture(self, key: str) -> None:
        """Take the authorized money. A repeat is a no-op; anything but an authorization is refused."""
        self.through_switch("capture")
        written = self.store.update(
            TableName=self.table, Key=self._key(key), UpdateExpression="SET #state = :to",
            ConditionExpression="#state = :from AND attribute_not_exists(expires_before_capture)",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues=values(to=CAPTURED, **{"from": AUTHORIZED}))
        if not written.ok and (written.item or {}).get("expires_before_capture") and \
                (written.item or {}).get("state") == AUTHORIZED:
            self._move(key, AUTHORIZED, VOIDED)  # the issuer released the hold
            raise PaymentNotAuthorized("gateway: the authorization expired before its capture (test card)")
        if not written.ok and (written.item or {}).get("state") != CAPTURED:
            raise PaymentNotAuthorized(f"gateway: nothing to capture, the payment is "
                                       f"{(written.item or {}).get('state')}")

    def reverse(self, key: str) -> str | None:
        """Give back whatever the key holds: void an authorization, refund a capture. Returns the state after
        (None: nothing was ever authorized; PROCESSING: nothing to void yet, the processor has not decided, so
        the authorization may still land: the caller has it reconciled). Idempotent."""
        self.through_switch("reverse")
        for _ in range(3):
            state = self._state(key)
            if state not in (AUTHORIZED, CAPTURED):
                return state
            target = VOIDED if state == AUTHORIZED else REFUNDED
            if self._move(key, state, target).ok:
                return target
        raise PaymentGatewayUnavailable("gateway: the payment kept changing while it was being reversed")

    def retire_item(self, key: str, purge: int) -> dict[str, Any]:
        """A transaction item for the saga's completion: the CAPTURED entry is kept until `purge` (epoch seconds),
        as the order that completes in the same transaction."""
        return {"Update": {"TableName": self.table, "Key": self._key(key), "UpdateExpression": "SET purge_at = :purge",
                           "ConditionExpression": "#state = :captured", "ExpressionAttributeNames": {"#state": "state"},
                           "ExpressionAttributeValues": values(purge=purge, captured=CAPTURED)}}

    def _count_attempt(self, key: str) -> int:
        written = self.store.update(
            TableName=self.table, Key=self._key(key), UpdateExpression="ADD failures :one",
            ExpressionAttributeValues=values(one=1), ReturnValues="UPDATED_NEW")
        return int((written.item or {}).get("failures", 1))

    def _record_once(self, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Record the authorization's outcome once; a repeat returns the first outcome. An entry past its retention
        counts as none (its stale fields go)."""
        stale = [k for k in STALE_FIELDS if k not in fields]
        written = self.store.update(
            TableName=self.table, Key=self._key(key),
            UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in fields)
                             + (" REMOVE " + ", ".join(stale) if stale else ""),
            ConditionExpression="attribute_not_exists(#state) OR #purge_at <= :expired_by",
            ExpressionAttributeNames={f"#{k}": k for k in [*fields, "purge_at"]},
            ExpressionAttributeValues=values(**fields, expired_by=int(time.time())), ReturnValues="ALL_NEW")
        return written.item or {}

    def _move(self, key: str, state_from: str, state_to: str) -> Written:
        """One state change; into a state that holds nothing, the entry is kept for the retention from now."""
        final = state_to in HOLDS_NOTHING
        return self.store.update(
            TableName=self.table, Key=self._key(key),
            UpdateExpression="SET #state = :to" + (", purge_at = :purge" if final else ""),
            ConditionExpression="#state = :from", ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues=values(to=state_to, **{"from": state_from},
                                             **({"purge": self._purge_at()} if final else {})))


def adapter_from_env(store: Store) -> PaymentGateway:
    """The adapter named by PAYMENT_GATEWAY: the fake, or the Stripe adapter (src/order_saga/stripe_gateway.py,
    imported only when chosen: the stripe SDK costs a fake stack nothing)."""
    kind = os.environ["PAYMENT_GATEWAY"]
    if kind == "fake":
        hang = float(os.environ.get("FAKE_GATEWAY_HANG_SECONDS", "3600"))
        return FakeGateway(store, os.environ["PAYMENTS_TABLE"], hang, float(os.environ["GATEWAY_TIMEOUT_SECONDS"]),
                           retention_ms_from_env(), os.environ.get("FAKE_GATEWAY_SWITCH") == "true")
    if kind == "stripe":
        from order_saga.stripe_gateway import StripeGateway, secret_key_from_secrets_manager

        return StripeGateway(store, os.environ["PAYMENTS_TABLE"],
                             secret_key_from_secrets_manager(os.environ["STRIPE_SECRET_ARN"]),
                             os.environ.get("STRIPE_API_BASE_URL") or "https://api.stripe.com",
                             float(os.environ["GATEWAY_TIMEOUT_SECONDS"]))
    raise RuntimeError(f"PAYMENT_GATEWAY={kind!r}: no such adapter (known: fake, stripe)")


def gateway_from_env(store: Store) -> PaymentGateway:
    """The adapter PAYMENT_GATEWAY names, behind the circuit breaker every function instance shares (breaker.py)."""
    return CircuitBreaker(adapter_from_env(store), store, os.environ["PAYMENTS_TABLE"], BreakerSettings.from_env())
