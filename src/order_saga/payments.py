"""The payment service: one payment item per payment method of an order, driven through the gateway.

  payment_id = <order id>#<n>   status PENDING | AUTHORIZED | DECLINED | CAPTURING | CAPTURED | VOIDED | REFUNDED
                                token (the card token: this table is the only place that holds it)
                                sent_at (set before the first authorization request is sent)

The API writes the payment PENDING with its token, in the same transaction as the order. AuthorizePayment
moves it to AUTHORIZED (or DECLINED) after the gateway answered; ConfirmOrder to CAPTURING with the stock
commit, then to CAPTURED once the gateway captured. Every move is conditional on the status it expects, so
a repeat changes nothing and a late authorization (its task timed out and the payment was voided) cannot
land: it finds VOIDED and voids at the gateway what it just authorized.

The sent marker (`sent_at`, epoch ms): AuthorizePayment records on the PENDING payment, with a conditional write
(status PENDING), that it is about to send the payment's authorization, after the circuit breaker let the call
through and before the request leaves (the gateway's `sending` hook), once per payment (a retry that reads the marker
writes nothing). So a PENDING payment without the marker had nothing sent for it, ever: its void is local, no gateway
call (a void while the processor is down, or the breaker open, or a day later), written on the condition that the
marker is still absent. The two conditions decide a race between a void and an authorization in flight: if the
void lands first, the marker's write finds VOIDED and the authorization sends nothing (PaymentVoided); if the marker
lands first, the void's write fails, and the compensation reads the payment again and voids at the gateway.

Who may trust a missing marker: only an execution whose AuthorizePayment writes it. The forward steps are pinned to the
execution's state machine version, which a deploy rolls out as a canary (and an operator may roll back), while the
compensations run the `live` code and the API and the reaper move at once: during a rollout, executions of the previous
version still send unmarked. So the permission comes from the execution's own ReserveInventory (CreateOrder on the
versions that had it), of the same version as its AuthorizePayment: it stamps `marks_sends` on the ORDER in the write
that takes the lease (no request more), and VoidPayment, RefundPayment and the reaper read it from the order their claim
returns (Orders.sends_marked, saga.undo_payment). An order without it (a previous version's execution, an order whose
lease was never taken) has its PENDING payments voided at the gateway, as before the marker. A redrive keeps the
execution's version, so its order's flag stays true to it. The Stripe adapter also reads `sent_at` to tell how old a
search's "not found" is (stripe_gateway.py).

Reconciliation: a payment undone while still PENDING may have an authorization in flight at the gateway (a
call whose outcome was unknown), which can land after the void. Such a payment is marked (`reconcile`, one
of the index shards, and `reconcile_at`), and the reaper asks the gateway about it by its idempotency key,
the payment id, once `reconcile_at` passed: whatever landed is voided (Payments.reconcile).

Retention (`purge_at`, the table's TTL attribute, epoch seconds): a payment is kept for the order retention from
the write that makes it final: DECLINED, VOIDED or REFUNDED (unless marked for reconciliation: then from the
reconciliation's last write), CAPTURED (the write that completes its order). A PENDING, AUTHORIZED or CAPTURING
payment never expires, nor one waiting for its reconciliation.
"""

from __future__ import annotations

from typing import Any

from order_saga.config import Timing, retention_ms_from_env
from order_saga.dynamo import to_ddb, values
from order_saga.errors import PaymentDeclined, PaymentGatewayUnavailable, PaymentNotAuthorized, PaymentVoided
from order_saga.gateway import PROCESSING, PaymentGateway
from order_saga.store import ATTEMPT_SECONDS, Store

PENDING = "PENDING"
AUTHORIZED = "AUTHORIZED"
DECLINED = "DECLINED"
CAPTURING = "CAPTURING"
CAPTURED = "CAPTURED"
VOIDED = "VOIDED"
REFUNDED = "REFUNDED"
HOLDS_MONEY = (AUTHORIZED, CAPTURING, CAPTURED)
UNDONE = (VOIDED, REFUNDED)


def payment_id(order_id: str, method: int = 1) -> str:
    return f"{order_id}#{method}"


def never_sent(payment: dict[str, Any], sends_marked: bool) -> bool:
    """Nothing was ever sent to the gateway for this payment: its order's execution marks every send
    (`sends_marked`, the order's `marks_sends`: Orders.sends_marked), and no send was marked (`sent_at`)."""
    return sends_marked and "sent_at" not in payment


class NotSent(Exception):  # noqa: N818 - not an error: the payment moved on before its authorization was sent
    """The sent marker found the payment no longer PENDING: nothing was sent; `payment` is what it is now."""

    def __init__(self, payment: dict[str, Any] | None) -> None:
        super().__init__("the payment is no longer PENDING: its authorization was not sent")
        self.payment = payment


class Payments:
    def __init__(self, store: Store, table: str, gateway: PaymentGateway | None = None,
                 timing: Timing | None = None) -> None:
        self.store = store
        self.table = table
        self._gateway = gateway
        self.timing = timing or Timing(lease_ms=0, deadline_ms=0, reservation_ttl_ms=0,
                                       retention_ms=retention_ms_from_env())

    @property
    def gateway(self) -> PaymentGateway:
        if self._gateway is None:
            raise RuntimeError("this function has no payment gateway (PAYMENT_GATEWAY is not set)")
        return self._gateway

    def reverse(self, pid: str) -> str | None:
        """Give back at the gateway whatever the payment holds (void or refund)."""
        return self.gateway.reverse(pid)

    def key(self, pid: str) -> dict[str, Any]:
        return to_ddb({"payment_id": pid})

    def get(self, pid: str) -> dict[str, Any] | None:
        return self.store.get(self.table, self.key(pid))

    # ---- the API -----------------------------------------------------------------------------------------
    def put_new(self, order_id: str, method: int, token: str, amount: int, currency: str,
                now: int) -> dict[str, Any]:
        item = {"payment_id": payment_id(order_id, method), "order_id": order_id, "method": method,
                "status": PENDING, "token": token, "amount": amount, "currency": currency,
                "created_at": now, "updated_at": now}
        return {"Put": {"TableName": self.table, "Item": to_ddb(item),
                        "ConditionExpression": "attribute_not_exists(payment_id)"}}

    # ---- ApplyCoupon (the `continue` policy) ----------------------------------------------------------------
    def amount_item(self, pid: str, not_given: int, now: int) -> dict[str, Any]:
        """The coupon was not applied: the payment authorizes `not_given` (the discount) more than the API wrote.
        Only while it is PENDING (nothing authorized yet); the SKIPPED redemption in the same transaction makes it
        happen once."""
        return {"Update": {
            "TableName": self.table, "Key": self.key(pid),
            "UpdateExpression": "SET #amount = #amount + :not_given, updated_at = :now",
            "ConditionExpression": "#status = :pending",
            "ExpressionAttributeNames": {"#status": "status", "#amount": "amount"},
            "ExpressionAttributeValues": values(not_given=not_given, now=now, pending=PENDING)}}

    # ---- AuthorizePayment --------------------------------------------------------------------------------
    def authorize_at_gateway(self, payment: dict[str, Any] | None, now: int) -> str:
        """The gateway's authorization of a PENDING payment (a repeat returns the reference it already has).

        A decline is recorded (DECLINED) and raised as PaymentDeclined.
        """
        if payment is None:
            raise PaymentNotAuthorized("the order has no payment method on file")
        pid, status = payment["payment_id"], payment.get("status")
        if status in HOLDS_MONEY:
            return str(payment["authorization"])
        if status == DECLINED:
            raise PaymentDeclined(payment.get("reason", "card declined"))
        if status in UNDONE:
            raise PaymentVoided(f"payment {pid} was {status} before it was authorized")
        marked = "sent_at" in payment
        self._require_time("authorize", writes=1 if marked else 2)

        def sending() -> None:  # after the breaker let the call through, before the request leaves
            if not marked:
                self._mark_sent(pid, now)
            self._require_time("authorize")  # the marker's write took its time: the call and its record still fit

        try:
            return self.gateway.authorize(pid, str(payment["token"]), int(payment["amount"]),
                                          str(payment["currency"]), sending=sending)
        except NotSent as exc:
            return self.authorize_at_gateway(exc.payment, now)  # it moved on meanwhile: what it is now decides
        except PaymentDeclined as exc:
            self.store.update(
                TableName=self.table, Key=self.key(pid), ConditionExpression="#status = :pending",
                UpdateExpression="SET #status = :declined, reason = :reason, updated_at = :now, purge_at = :purge",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values(pending=PENDING, declined=DECLINED, reason=str(exc), now=now,
                                                 purge=self.timing.retained_until(now)))
            raise

    def _mark_sent(self, pid: str, now: int) -> None:
        """The sent marker, before the first request for the payment leaves (the module docstring). Conditional on
        PENDING: a payment voided meanwhile (or authorized, or declined, by a concurrent attempt) raises NotSent
        with what it is now, and nothing is sent."""
        written = self.store.update(
            TableName=self.table, Key=self.key(pid), ConditionExpression="#status = :pending",
            UpdateExpression="SET sent_at = if_not_exists(sent_at, :now)",
            ExpressionAttributeNames={"#status": "status"}, ExpressionAttributeValues=values(pending=PENDING, now=now))
        if not written.ok:
            raise NotSent(written.item)

    def authorized_item(self, pid: str, reference: str, now: int) -> dict[str, Any]:
        return self._move_item(pid, PENDING, AUTHORIZED, now, authorization=reference)

    def late_authorization(self, pid: str, current: dict[str, Any] | None) -> Exception | None:
        """The authorization could not be recorded: None if a concurrent attempt recorded it, else the error
        to raise, once what the gateway holds was given back."""
        if current is not None and current.get("status") in HOLDS_MONEY:
            return None
        self.gateway.reverse(pid)  # this late authorization must not hold money
        return PaymentVoided(f"payment {pid} was {(current or {}).get('status')} when its authorization returned")

    def _require_time(self, call: str, writes: int = 1) -> None:
        """A gateway call starts only if it and the DynamoDB writes around it (the record after it; for a first
        authorization also the sent marker before it) fit in the invocation: a call cut short by the Lambda
        timeout would leave its outcome unknown."""
        if self.store.time_left() < self.gateway.timeout + writes * ATTEMPT_SECONDS:
            raise PaymentGatewayUnavailable(f"not enough time left in this invocation to {call} at the gateway "
                                            f"({self.gateway.timeout:g} s) and record it")

    # ---- ConfirmOrder ------------------------------------------------------------------------------------
    def capture(self, pid: str) -> None:
        """Take the money at the gateway (idempotent by the payment id); fails loudly if it cannot."""
        self._require_time("capture")
        self.gateway.capture(pid)

    def capturing_item(self, pid: str, now: int) -> dict[str, Any]:
        return self._move_item(pid, AUTHORIZED, CAPTURING, now)

    def captured_item(self, pid: str, now: int) -> dict[str, Any]:
        """CAPTURED, in the transaction that completes the order: kept for the order retention from now."""
        return self._move_item(pid, CAPTURING, CAPTURED, now, purge_at=self.timing.retained_until(now))

    def retire_ledger_item(self, pid: str, now: int) -> dict[str, Any] | None:
        """The gateway's own record of a captured payment kept for the order retention, in the same transaction
        (the fake's ledger entry; None for a processor that keeps its own records)."""
        retire = getattr(self.gateway, "retire_item", None)
        return retire(pid, self.timing.retained_until(now)) if retire is not None else None

    @staticmethod
    def not_capturable(payment: dict[str, Any] | None) -> PaymentNotAuthorized | None:
        """Why a payment cannot move to CAPTURING (None: it already did, a repeat)."""
        status = (payment or {}).get("status")
        if status in (CAPTURING, CAPTURED):
            return None
        return PaymentNotAuthorized(f"payment is {status}; nothing to capture")

    # ---- VoidPayment, RefundPayment, the reaper --------------------------------------------------------
    def undo_item(self, pid: str, now: int, sends_marked: bool = False) -> dict[str, Any] | None:
        """Give back what the payment holds at the gateway, and the item that records it (None: nothing to
        record). Idempotent; the item is conditional on the status read, so a concurrent change is noticed.
        `sends_marked`: the order says its execution writes the sent marker before each first send (the module
        docstring); without it a PENDING payment is always voided at the gateway."""
        payment = self.get(pid)
        status = None if payment is None else payment.get("status")
        # Nothing to give back: undone before, declined, or no payment at all (then nothing can authorize one
        # later either: AuthorizePayment needs the payment the API writes with the order).
        if status is None or status in UNDONE or status == DECLINED:
            return None
        if status == PENDING and payment is not None and never_sent(payment, sends_marked):
            # Nothing was ever sent for it, so nothing can land: voided here, final, on the condition that no
            # authorization marked itself meanwhile (then this transaction fails and the caller reads it again).
            return self._move_item(pid, PENDING, VOIDED, now, unless="sent_at",
                                   purge_at=self.timing.retained_until(now))
        self._require_time("void or refund")
        final = self.gateway.reverse(pid)  # PENDING too: an authorization may have landed at the gateway
        marker: dict[str, Any] = {"purge_at": self.timing.retained_until(now)}  # final: kept for the retention
        if status == PENDING and final in (None, PROCESSING):  # one may still land: reconciled first, kept till then
            marker = {"reconcile": self.timing.shard(pid), "reconcile_at": now + self.timing.reconcile_after_ms}
        return self._move_item(pid, str(status), REFUNDED if final == REFUNDED else VOIDED, now, **marker)

    # ---- the reaper's reconciliation ---------------------------------------------------------------------
    def to_reconcile(self, now: int) -> list[str]:
        """Payment ids whose reconciliation is due, from every shard of the Reconcile index, every page."""
        found: list[str] = []
        for shard in self.timing.all_shards():
            found += [str(item["payment_id"]) for item in self.store.query(
                TableName=self.table, IndexName="Reconcile",
                KeyConditionExpression="#shard = :shard AND reconcile_at <= :now",
                ExpressionAttributeNames={"#shard": "reconcile"},
                ExpressionAttributeValues=values(shard=shard, now=now))]
        return found

    def reconcile(self, pid: str, now: int) -> str:
        """Ask the gateway, by the payment's idempotency key, what it holds for a payment we undid, and give
        back whatever landed. Returns what was found: "reversed", "settled" (nothing held) or "undecided"
        (the processor has not decided yet: asked again later)."""
        state = self.gateway.state(pid)
        marked = "attribute_exists(reconcile)"
        if state == PROCESSING:
            self.store.update(TableName=self.table, Key=self.key(pid), ConditionExpression=marked,
                              UpdateExpression="SET reconcile_at = :later",
                              ExpressionAttributeValues=values(later=now + self.timing.reconcile_after_ms))
            return "undecided"
        outcome = "settled"
        if state in HOLDS_MONEY:
            self.gateway.reverse(pid)
            outcome = "reversed"
        self.store.update(TableName=self.table, Key=self.key(pid), ConditionExpression=marked,
                          UpdateExpression="REMOVE reconcile, reconcile_at SET reconciled_at = :now, "
                                           "reconciled = :outcome, purge_at = :purge",
                          ExpressionAttributeValues=values(now=now, outcome=outcome,
                                                           purge=self.timing.retained_until(now)))
        return outcome

    def _move_item(self, pid: str, status_from: str, status_to: str, now: int, unless: str | None = None,
                   **fields: Any) -> dict[str, Any]:
        """A move from one status to another (`unless`: only while the item has no such attribute)."""
        sets = ["#status = :to", "updated_at = :now"] + [f"#{name} = :{name}" for name in fields]
        return {"Update": {
            "TableName": self.table, "Key": self.key(pid), "UpdateExpression": "SET " + ", ".join(sets),
            "ConditionExpression": "#status = :from" + (f" AND attribute_not_exists({unless})" if unless else ""),
            "ExpressionAttributeNames": {"#status": "status", **{f"#{name}": name for name in fields}},
            "ExpressionAttributeValues": values(to=status_to, now=now, **{"from": status_from}, **fields),
        }}
