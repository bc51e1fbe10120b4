"""The payment service: one payment item per order, driven through the gateway adapter.

  payment_id = <order id>   status AUTHORIZING | AUTHORIZED | DECLINED | CAPTURING | CAPTURED
                            | VOIDED | REFUNDED

The item is written before the gateway is called (an intent) and moved after it,
each write conditional on the expected status. A compensation that finds no
payment writes a VOIDED tombstone, so an authorization that arrives late (its
task timed out) cannot land: it sees the tombstone and voids at the gateway.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from order_saga.dynamo import (
    cancellation_reasons,
    from_ddb,
    guard_failed,
    is_condition_failure,
    raise_if_transient,
    to_ddb,
    values,
)
from order_saga.errors import ConcurrentUpdate, LeaseLost, PaymentDeclined, PaymentNotAuthorized, PaymentVoided
from order_saga.gateway import PaymentGateway

AUTHORIZING = "AUTHORIZING"
AUTHORIZED = "AUTHORIZED"
DECLINED = "DECLINED"
CAPTURING = "CAPTURING"
CAPTURED = "CAPTURED"
VOIDED = "VOIDED"
REFUNDED = "REFUNDED"
UNDONE = (VOIDED, REFUNDED)


class Payments:
    def __init__(self, client: Any, table: str, gateway: PaymentGateway) -> None:
        self.client = client
        self.table = table
        self.gateway = gateway

    def get(self, order_id: str) -> dict[str, Any] | None:
        resp = self.client.get_item(TableName=self.table, Key=to_ddb({"payment_id": order_id}), ConsistentRead=True)
        return from_ddb(resp["Item"]) if "Item" in resp else None

    def authorize(self, order_id: str, token: str, amount: int, currency: str, now: int,
                  guard: dict[str, Any] | None = None) -> str:
        """AuthorizePayment. Returns the gateway's reference; a repeat returns the same one.

        `guard` (the order's lease check) joins the intent write and the final write:
        an authorization that returns after the lease was lost is voided at the gateway.
        """
        payment = self.get(order_id)
        if payment is None:
            created = self._write(order_id, None, AUTHORIZING, now, guard=guard, amount=amount, currency=currency)
            payment = {"status": AUTHORIZING} if created else (self.get(order_id) or {})
        status = payment.get("status")
        if status in (AUTHORIZED, CAPTURING, CAPTURED):
            return str(payment["authorization"])
        if status == DECLINED:
            raise PaymentDeclined(payment.get("reason", "card declined"))
        if status in UNDONE:
            raise PaymentVoided(f"payment of order {order_id} was {status} before it was authorized")
        try:
            reference = self.gateway.authorize(order_id, token, amount, currency)
        except PaymentDeclined as exc:
            self._write(order_id, AUTHORIZING, DECLINED, now, reason=str(exc))
            raise
        try:
            landed = self._write(order_id, AUTHORIZING, AUTHORIZED, now, guard=guard, authorization=reference)
        except LeaseLost:
            self.gateway.void(order_id)  # this late authorization must not hold money
            raise
        if not landed:
            current = self.get(order_id) or {}
            if current.get("status") in (AUTHORIZED, CAPTURING, CAPTURED):
                return str(current["authorization"])
            # Compensated while we were at the gateway: this late authorization must not hold money.
            self.gateway.void(order_id)
            raise PaymentVoided(f"payment of order {order_id} was {current.get('status')} while authorizing")
        return reference

    def capture(self, order_id: str, now: int, guard: dict[str, Any] | None = None) -> None:
        """ConfirmOrder: take the authorized money. A repeat is a no-op.

        The intent (CAPTURING) is written under the lease; once the gateway captured,
        the fact is recorded whatever happened to the lease, and a compensation refunds it.
        """
        payment = self.get(order_id) or {}
        status = payment.get("status")
        if status == CAPTURED:
            return
        if status == AUTHORIZED:
            if not self._write(order_id, AUTHORIZED, CAPTURING, now, guard=guard):
                return self.capture(order_id, now, guard)
            status = CAPTURING
        if status != CAPTURING:
            raise PaymentNotAuthorized(f"payment of order {order_id} is {status}; nothing to capture")
        self.gateway.capture(order_id)
        self._write(order_id, CAPTURING, CAPTURED, now)

    def void(self, order_id: str, now: int) -> None:
        """VoidPayment / RefundPayment: give back whatever the order holds. A repeat is a no-op.

        AUTHORIZING or AUTHORIZED is voided at the gateway, CAPTURING or CAPTURED
        is refunded; nothing at all leaves a VOIDED tombstone.
        """
        for _ in range(5):
            payment = self.get(order_id)
            status = None if payment is None else payment.get("status")
            if status in UNDONE or status == DECLINED:
                return
            if status is None:
                if self._write(order_id, None, VOIDED, now, tombstone=True):
                    return
                continue
            if status in (AUTHORIZING, AUTHORIZED):
                self.gateway.void(order_id)
                if self._write(order_id, status, VOIDED, now):
                    return
                continue
            # CAPTURING or CAPTURED: the money may have moved. Refund; the gateway refuses
            # a refund of what it never captured, and then the authorization is voided.
            try:
                self.gateway.refund(order_id)
                target = REFUNDED
            except PaymentNotAuthorized:
                self.gateway.void(order_id)
                target = VOIDED
            if self._write(order_id, status, target, now):
                return
        raise ConcurrentUpdate(f"payment of order {order_id} kept changing while undoing it")

    refund = void

    def _write(self, order_id: str, expected: str | None, status: str, now: int,
               guard: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Move the payment to `status` if it is `expected` (None: absent). False if that condition failed.

        With `guard`, the write is a transaction with the order's lease check, and a
        lost lease raises LeaseLost.
        """
        fields = {"status": status, "updated_at": now, **fields}
        if expected is None:
            fields["created_at"] = now
        names = {f"#{k}": k for k in fields}
        vals = dict(fields)
        if expected is None:
            condition = "attribute_not_exists(payment_id)"
        else:
            vals["expected"] = expected
            condition = "#status = :expected"
        update = {
            "TableName": self.table, "Key": to_ddb({"payment_id": order_id}),
            "UpdateExpression": "SET " + ", ".join(f"#{k} = :{k}" for k in fields),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values(**vals),
        }
        try:
            if guard is None:
                self.client.update_item(**update)
            else:
                self.client.transact_write_items(TransactItems=[{"Update": update}, guard])
        except ClientError as exc:
            reasons = cancellation_reasons(exc)
            if guard_failed(reasons, guard):
                raise LeaseLost(f"order {order_id}: the lease was lost; the payment did not move to {status}") \
                    from exc
            if is_condition_failure(exc) or (reasons and reasons[0] == "ConditionalCheckFailed"):
                return False
            raise_if_transient(exc)
            raise
        return True
