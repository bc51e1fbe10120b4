"""The payment service: one payment item per payment method of an order, driven through the gateway.

  payment_id = <order id>#<n>   status PENDING | AUTHORIZED | DECLINED | CAPTURING | CAPTURED | VOIDED | REFUNDED
                                token (the card token: this table is the only place that holds it)

The API writes the payment PENDING with its token, in the same transaction as the order. AuthorizePayment
moves it to AUTHORIZED (or DECLINED) after the gateway answered; ConfirmOrder to CAPTURING with the stock
commit, then to CAPTURED once the gateway captured. Every move is conditional on the status it expects, so
a repeat changes nothing and a late authorization (its task timed out and the payment was voided) cannot
land: it finds VOIDED and voids at the gateway what it just authorized.
"""

from __future__ import annotations

from typing import Any

from order_saga.dynamo import to_ddb, values
from order_saga.errors import PaymentDeclined, PaymentNotAuthorized, PaymentVoided
from order_saga.gateway import PaymentGateway
from order_saga.store import Store

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


class Payments:
    def __init__(self, store: Store, table: str, gateway: PaymentGateway | None = None) -> None:
        self.store = store
        self.table = table
        self._gateway = gateway

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
        try:
            return self.gateway.authorize(pid, str(payment["token"]), int(payment["amount"]),
                                          str(payment["currency"]))
        except PaymentDeclined as exc:
            self.store.update(
                TableName=self.table, Key=self.key(pid), ConditionExpression="#status = :pending",
                UpdateExpression="SET #status = :declined, reason = :reason, updated_at = :now",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values(pending=PENDING, declined=DECLINED, reason=str(exc), now=now))
            raise

    def authorized_item(self, pid: str, reference: str, now: int) -> dict[str, Any]:
        return self._move_item(pid, PENDING, AUTHORIZED, now, authorization=reference)

    def late_authorization(self, pid: str, current: dict[str, Any] | None) -> Exception | None:
        """The authorization could not be recorded: None if a concurrent attempt recorded it, else the error
        to raise, once what the gateway holds was given back."""
        if current is not None and current.get("status") in HOLDS_MONEY:
            return None
        self.gateway.reverse(pid)  # this late authorization must not hold money
        return PaymentVoided(f"payment {pid} was {(current or {}).get('status')} when its authorization returned")

    # ---- ConfirmOrder ------------------------------------------------------------------------------------
    def capturing_item(self, pid: str, now: int) -> dict[str, Any]:
        return self._move_item(pid, AUTHORIZED, CAPTURING, now)

    def captured_item(self, pid: str, now: int) -> dict[str, Any]:
        return self._move_item(pid, CAPTURING, CAPTURED, now)

    @staticmethod
    def not_capturable(payment: dict[str, Any] | None) -> PaymentNotAuthorized | None:
        """Why a payment cannot move to CAPTURING (None: it already did, a repeat)."""
        status = (payment or {}).get("status")
        if status in (CAPTURING, CAPTURED):
            return None
        return PaymentNotAuthorized(f"payment is {status}; nothing to capture")

    # ---- VoidPayment, RefundPayment, the reaper --------------------------------------------------------
    def undo_item(self, pid: str, now: int) -> dict[str, Any] | None:
        """Give back what the payment holds at the gateway, and the item that records it (None: nothing to
        record). Idempotent; the item is conditional on the status read, so a concurrent change is noticed."""
        payment = self.get(pid)
        status = None if payment is None else payment.get("status")
        if status in UNDONE or status == DECLINED:
            return None
        if status is None:  # no payment at all: a tombstone, so nothing can authorize later
            tombstone = {"payment_id": pid, "order_id": pid.rsplit("#", 1)[0], "status": VOIDED,
                         "created_at": now, "updated_at": now}
            return {"Put": {"TableName": self.table, "Item": to_ddb(tombstone),
                            "ConditionExpression": "attribute_not_exists(payment_id)"}}
        final = self.gateway.reverse(pid)  # PENDING too: an authorization may have landed at the gateway
        return self._move_item(pid, str(status), REFUNDED if final == REFUNDED else VOIDED, now)

    def _move_item(self, pid: str, status_from: str, status_to: str, now: int, **fields: Any) -> dict[str, Any]:
        sets = ["#status = :to", "updated_at = :now"] + [f"#{name} = :{name}" for name in fields]
        return {"Update": {
            "TableName": self.table, "Key": self.key(pid), "UpdateExpression": "SET " + ", ".join(sets),
            "ConditionExpression": "#status = :from",
            "ExpressionAttributeNames": {"#status": "status", **{f"#{name}": name for name in fields}},
            "ExpressionAttributeValues": values(to=status_to, now=now, **{"from": status_from}, **fields),
        }}
