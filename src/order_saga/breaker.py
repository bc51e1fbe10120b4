"""The circuit breaker on the payment gateway: one state, shared by every function instance, in DynamoDB.

While the processor is down, every authorization would wait for its timeout (or get a 5xx) four times per order
(the state machine's retries) before the saga compensates. The breaker notices the outage and fails
authorizations fast instead, with the error they would have raised anyway (PaymentGatewayUnavailable: the
state machine retries it, then compensates the order, as in any outage), and lets a few probes through now and
then to find out when the processor is back.

The state is one item in the payments table (payment_id "breaker#gateway"), every transition a conditional write
on its `version`, so concurrent instances agree on one state and a late outcome never lands in a later period:

  CLOSED     calls go through. A call that fails with an outage (PaymentGatewayUnavailable: a timeout, a 5xx, an
             unknown outcome) adds its payment to `failed_keys`; a call the processor answered (an authorization
             or a decline) clears it. Once `failed_keys` holds BreakerFailureThreshold payments: OPEN.
             Distinct payments, not calls: the state machine retries one authorization up to 4 times, and
             one slow card must not open the breaker for everyone; an outage fails many payments.
  OPEN       calls fail fast (nothing reaches the processor) until `opened_until` (BreakerOpenSeconds).
             The first call after it moves the breaker to HALF_OPEN, as its first probe (one write).
  HALF_OPEN  at most BreakerSuccessThreshold probes are let through, each claimed by a conditional write (`probes`
             below the threshold), the other calls fail fast. BreakerSuccessThreshold probes answered: CLOSED.
             A probe that fails with an outage: OPEN again, for another BreakerOpenSeconds. A half-open period
             whose probes never reported (their sandboxes died) is started afresh after BreakerOpenSeconds
             (`probe_until`), so a lost probe cannot hold the breaker half-open.

An authorization's `sending` hook (the payment's sent marker, payments.py) runs only once the call is let through,
after the time check and before the adapter is called: a call the breaker fails fast leaves no marker, so its
payment is voided without the processor. What the hook raises is not counted (nothing reached the processor), and
a half-open probe whose time check or hook raised gives its slot back (one conditional write at the version it was
claimed under, `probes` down by one): else the marker finding its payment voided (or throttled) would hold a slot
until `probe_until`, and with BreakerSuccessThreshold answered probes needed the breaker could not close.

Only authorizations are gated. They run before the pivot, and an authorization that fails with
PaymentGatewayUnavailable is retried and then compensated, exactly what the breaker's fail-fast does. Captures,
voids, refunds and the reaper's reconciliation always go through and are not counted: a capture past the pivot
must be taken, never turned into a refund; a void or refund is what gives money back, and a reversal held up by
the breaker would only be retried later (or parked); neither would be any safer.

Its own DynamoDB requests fail open: if the breaker's state cannot be read, the call goes through as if CLOSED
(and its outcome is not counted); if an outcome cannot be recorded, it is dropped. An unreadable breaker must not
turn a DynamoDB hiccup into declined payments; at worst, the breaker opens later. The breaker also never makes an
invocation outlive its budget (docs/timeouts.md): after its read it sends the call only if the call and the write
after it still fit (else PaymentGatewayUnavailable, as Payments._require_time), and it records an answered call
only if the saga's own write after it still fits. It reads its item on every authorization (one GetItem; no cache),
and writes only on failures, in HALF_OPEN, and on the first success after failures. On an authorization's path
(docs/timeouts.md counts it) that is the read and, for a half-open probe, one write before the call (the move to
HALF_OPEN that is the period's first probe, or a probe's claim); a second write before the call (after one lost to
another instance) is made only if it, the sent marker, the call and the record still fit, and the writes after an
answered call (the success counted, the close) only if the saga's record still fits after each.

Every opening (CLOSED or HALF_OPEN -> OPEN) is counted once, by the instance whose write won: the metric
GatewayCircuitOpened (step PaymentGateway), which an alarm watches (docs/operations.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from order_saga.dynamo import now_ms, to_ddb, values
from order_saga.errors import PaymentGatewayUnavailable
from order_saga.store import ANSWER_SECONDS, ATTEMPT_SECONDS, Store, Written

if TYPE_CHECKING:
    from order_saga.gateway import PaymentGateway

BREAKER_KEY = "breaker#gateway"
CLOSED, OPEN, HALF_OPEN = "CLOSED", "OPEN", "HALF_OPEN"
METRIC_STEP = "PaymentGateway"  # the `step` dimension of GatewayCircuitOpened, whichever function opened it


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 5  # distinct payments failed with an outage, in a row: CLOSED -> OPEN
    success_threshold: int = 2  # probes answered in HALF_OPEN: -> CLOSED (and the most probes let through at once)
    open_ms: int = 30_000  # how long OPEN fails calls fast before probing

    @classmethod
    def from_env(cls) -> BreakerSettings:
        return cls(failure_threshold=int(os.environ["BREAKER_FAILURE_THRESHOLD"]),
                   success_threshold=int(os.environ["BREAKER_SUCCESS_THRESHOLD"]),
                   open_ms=int(float(os.environ["BREAKER_OPEN_SECONDS"]) * 1000))


@dataclass(frozen=True)
class Admission:
    """Under which state a call was let through: `state` None when the breaker could not be read (not counted)."""

    state: str | None
    version: int = 0
    failing: bool = False  # CLOSED with failures recorded: an answer clears them


@dataclass(frozen=True)
class BreakerState:
    """The breaker's item as read, in its own fields (what the local console shows). No item: CLOSED at version 0,
    never used (the first failure creates it); deleting the item closes the breaker."""

    state: str = CLOSED
    version: int = 0
    failed_payments: int = 0  # CLOSED: distinct payments failed with an outage since the last answer (failed_keys)
    opened_until: int | None = None  # OPEN: until when calls fail fast (epoch ms); the first call after: HALF_OPEN
    probes: int = 0  # HALF_OPEN: probes let through in this period
    successes: int = 0  # HALF_OPEN: probes answered
    probe_until: int | None = None  # HALF_OPEN: when a period whose probes never reported is started afresh
    updated_at: int | None = None  # epoch ms of the last write
    used: bool = False  # the item exists

    @classmethod
    def of(cls, item: dict[str, Any] | None) -> BreakerState:
        """From the item as `read` returns it (or any reading of it with numbers and sets, e.g. lists)."""
        if not item:
            return cls()

        def number(name: str) -> int | None:
            return int(item[name]) if item.get(name) is not None else None

        return cls(state=str(item.get("state", CLOSED)), version=int(item.get("version", 0)),
                   failed_payments=len(item.get("failed_keys") or ()), opened_until=number("opened_until"),
                   probes=int(item.get("probes", 0)), successes=int(item.get("successes", 0)),
                   probe_until=number("probe_until"), updated_at=number("updated_at"), used=True)


class CircuitBreaker:
    """A PaymentGateway around another one (see the module docstring)."""

    def __init__(self, gateway: PaymentGateway, store: Store, table: str,
                 settings: BreakerSettings | None = None) -> None:
        self.gateway = gateway
        self.store = store
        self.table = table
        self.settings = settings or BreakerSettings()

    def __getattr__(self, name: str) -> Any:  # the adapter's optional parts (retire_item) and its own helpers
        if name == "gateway":  # not set yet (a copy being made): no adapter to ask
            raise AttributeError(name)
        return getattr(self.gateway, name)

    @property
    def timeout(self) -> float:  # type: ignore[override]
        return self.gateway.timeout

    # ---- the gateway's calls -----------------------------------------------------------------------------------
    def authorize(self, key: str, token: str, amount: int, currency: str,
                  sending: Callable[[], None] | None = None) -> str:
        admitted = self.admit()
        try:
            if self.store.time_left() < self.gateway.timeout + ATTEMPT_SECONDS:
                raise PaymentGatewayUnavailable(f"not enough time left in this invocation to authorize at the "
                                                f"gateway ({self.gateway.timeout:g} s) and record it")
            if sending is not None:  # let through: the caller's last word before the request leaves (not counted)
                sending()
        except BaseException:
            self.unused(admitted)  # nothing reached the processor: a probe gives its slot back
            raise
        try:
            reference = self.gateway.authorize(key, token, amount, currency)
        except PaymentGatewayUnavailable:
            self.failed(admitted, key)
            raise
        except Exception as exc:
            if _answered(exc):
                self.succeeded(admitted)
            raise
        self.succeeded(admitted)
        return reference

    def capture(self, key: str) -> None:
        self.gateway.capture(key)

    def reverse(self, key: str) -> str | None:
        return self.gateway.reverse(key)

    def state(self, key: str) -> str | None:
        return self.gateway.state(key)

    # ---- the state -------------------------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """The breaker's item ({} while it was never written: CLOSED)."""
        return self.store.get(self.table, to_ddb({"payment_id": BREAKER_KEY})) or {}

    def admit(self) -> Admission:
        """Let a call through (how), or raise PaymentGatewayUnavailable while the breaker is open."""
        try:
            item = self.read()
        except Exception:  # noqa: BLE001 - fail open: the breaker's own store must not fail payments
            return Admission(None)
        for turn in range(4):  # each turn follows a transition another instance made meanwhile
            now, state, version = _now(), item.get("state", CLOSED), int(item.get("version", 0))
            if state == CLOSED:
                return Admission(CLOSED, version, bool(item.get("failed_keys")))
            if state == OPEN and now < int(item["opened_until"]):
                raise PaymentGatewayUnavailable(f"payment gateway circuit open for "
                                                f"{(int(item['opened_until']) - now) / 1000:.1f} s more: "
                                                f"the processor failed {self.settings.failure_threshold} payments")
            if turn and self.store.time_left() < self.gateway.timeout + 3 * ATTEMPT_SECONDS + ANSWER_SECONDS:
                # A write lost to another instance: another one only if it, the sent marker, the call and the
                # record after it still fit (docs/timeouts.md counts one write here).
                raise PaymentGatewayUnavailable("not enough time left in this invocation to claim a probe of the "
                                                "half-open payment gateway circuit, authorize and record it")
            written: Written | None
            if state == OPEN or now >= int(item.get("probe_until", 0)):  # open time over, or a lost half-open
                # The call that starts the half-open period is its first probe: one write, not two.
                written = self._write(version, "#state IN (:open, :half_open)",
                                      "SET #state = :half_open, probes = :one, successes = :zero, "
                                      "probe_until = :until", half_open=HALF_OPEN, open=OPEN, zero=0, one=1,
                                      until=now + self.settings.open_ms)
                if written is not None and written.ok:
                    return Admission(HALF_OPEN, int((written.item or {}).get("version", version + 1)))
            else:  # HALF_OPEN: claim one of the probes
                written = self._write(version, "#state = :half_open AND probes < :most", "ADD probes :one",
                                      half_open=HALF_OPEN, most=self.settings.success_threshold, one=1, bump=False)
                if written is not None and written.ok:
                    return Admission(HALF_OPEN, version)
                if written is not None and (written.item or {}).get("version") == version:
                    raise PaymentGatewayUnavailable("payment gateway circuit half-open: its probes are in flight")
            if written is None:
                return Admission(None)
            item = written.item or {}
        return Admission(None)  # the state kept changing under us: let this one through, uncounted

    def unused(self, admitted: Admission) -> None:
        """A call admitted under `admitted` never reached the processor (the time check, or the `sending` hook,
        raised). A half-open probe gives its slot back, at the version it was claimed under (a period started
        afresh meanwhile has its own count); otherwise nothing was counted, nothing to undo."""
        if admitted.state == HALF_OPEN:
            self._write(admitted.version, "#state = :half_open AND probes > :zero", "ADD probes :minus_one",
                        half_open=HALF_OPEN, zero=0, minus_one=-1, bump=False)

    def failed(self, admitted: Admission, key: str) -> None:
        """A call admitted under `admitted` failed with an outage."""
        now = _now()
        if admitted.state == CLOSED:
            written = self._write(admitted.version, "#state = :closed", "SET #state = :closed ADD failed_keys :key",
                                  closed=CLOSED, key={key}, bump=False, new_item=admitted.version == 0)
            if written is None or not written.ok or \
                    len((written.item or {}).get("failed_keys") or ()) < self.settings.failure_threshold:
                return
            opened = self._write(admitted.version, "#state = :closed AND size(failed_keys) >= :threshold",
                                 "SET #state = :open, opened_until = :until REMOVE failed_keys", closed=CLOSED,
                                 open=OPEN, threshold=self.settings.failure_threshold,
                                 until=now + self.settings.open_ms)
        elif admitted.state == HALF_OPEN:
            opened = self._write(admitted.version, "#state = :half_open",
                                 "SET #state = :open, opened_until = :until REMOVE probes, successes, probe_until",
                                 half_open=HALF_OPEN, open=OPEN, until=now + self.settings.open_ms)
        else:
            return
        if opened is not None and opened.ok:
            _opened(admitted.state, self.settings)

    def succeeded(self, admitted: Admission) -> None:
        """A call admitted under `admitted` was answered by the processor. Recorded only if the saga's own write
        after it still fits in the invocation."""
        if admitted.state not in (CLOSED, HALF_OPEN) or (admitted.state == CLOSED and not admitted.failing):
            return
        if self.store.time_left() < 2 * ATTEMPT_SECONDS + ANSWER_SECONDS:
            return
        if admitted.state == CLOSED:
            self._write(admitted.version, "#state = :closed", "REMOVE failed_keys", closed=CLOSED, bump=False)
            return
        counted = self._write(admitted.version, "#state = :half_open", "ADD successes :one", half_open=HALF_OPEN,
                              one=1, bump=False)
        if counted is None or not counted.ok or \
                int((counted.item or {}).get("successes", 0)) < self.settings.success_threshold:
            return
        if self.store.time_left() < 2 * ATTEMPT_SECONDS + ANSWER_SECONDS:  # the close, only if the record still fits
            return  # the period's probes are spent: it is started afresh at probe_until
        closed = self._write(admitted.version, "#state = :half_open AND successes >= :enough",
                             "SET #state = :closed REMOVE probes, successes, probe_until, opened_until",
                             half_open=HALF_OPEN, closed=CLOSED, enough=self.settings.success_threshold)
        if closed is not None and closed.ok:
            from order_saga.step import logger

            logger.info("payment gateway circuit closed", extra={"breaker": CLOSED})

    def _write(self, version: int, condition: str, update: str, bump: bool = True, new_item: bool = False,
               **names: Any) -> Written | None:
        """One conditional write on the breaker's item at `version` (the next version if `bump`): its answer (the
        item after, or as it is on a failed condition), or None when DynamoDB could not be reached (fail open)."""
        guard = f"(version = :version AND {condition})"
        if new_item:  # CLOSED and never written: the first failure creates the item
            guard = f"(attribute_not_exists(payment_id) OR {guard})"
        sets = "SET version = :next, updated_at = :now"
        update = f"{sets}, {update.removeprefix('SET ')}" if update.startswith("SET ") else f"{sets} {update}"
        try:
            return self.store.update(
                TableName=self.table, Key=to_ddb({"payment_id": BREAKER_KEY}), UpdateExpression=update,
                ConditionExpression=guard, ExpressionAttributeNames={"#state": "state"}, ReturnValues="ALL_NEW",
                ExpressionAttributeValues=values(version=version, next=version + 1 if bump else version, now=_now(),
                                                 **names))
        except Exception:  # noqa: BLE001 - fail open (see the module docstring)
            return None


def _answered(exc: Exception) -> bool:
    """The processor answered (a decline, a refusal): it is up."""
    from order_saga.errors import BusinessError

    return isinstance(exc, BusinessError)


def _opened(was: str, settings: BreakerSettings) -> None:
    from order_saga.step import count, logger

    logger.warning("payment gateway circuit opened", extra={"breaker": OPEN, "was": was,
                                                            "open_seconds": settings.open_ms / 1000})
    count("GatewayCircuitOpened", METRIC_STEP)


def _now() -> int:
    return now_ms()  # the saga's clock (the simulation's virtual one there)
