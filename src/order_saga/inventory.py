"""The inventory service: the catalog with stock levels, and one reservation per order.

Keys (one table):
  pk = "SKU#<sku>",     sk = "STOCK"        name, price, currency, available, reserved, sold
  pk = "ORDER#<id>",    sk = "RESERVATION"  lines, status RESERVED | COMMITTED | RELEASED, expires_at

A RESERVED reservation carries `expiring` = "RESERVED" and `expires_at`, the keys of the
sparse index ExpiringReservations: the reaper returns expired ones to stock, and
ConfirmOrder cannot commit one that has expired.

For every sku, available + reserved + sold never changes except by restocking,
and every change happens in one transaction with the reservation's status change,
conditional on the status it expects: stock never goes below zero and a repeat
changes nothing.
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
from order_saga.errors import (
    ConcurrentUpdate,
    InsufficientStock,
    LeaseLost,
    ReservationExpired,
    ReservationReleased,
    StoreThrottled,
    UnknownItem,
)
from order_saga.models import OrderLine, PricedLine

RESERVED = "RESERVED"
COMMITTED = "COMMITTED"
RELEASED = "RELEASED"


def stock_key(sku: str) -> dict[str, Any]:
    return to_ddb({"pk": f"SKU#{sku}", "sk": "STOCK"})


def reservation_key(order_id: str) -> dict[str, Any]:
    return to_ddb({"pk": f"ORDER#{order_id}", "sk": "RESERVATION"})


class Inventory:
    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    # -- catalog -----------------------------------------------------------
    def put_item(self, sku: str, name: str, price: int, currency: str, available: int) -> None:
        """Add or restock a catalog item (administration, not part of the saga)."""
        self.client.put_item(
            TableName=self.table,
            Item=to_ddb({"pk": f"SKU#{sku}", "sk": "STOCK", "sku": sku, "name": name, "price": price,
                         "currency": currency, "available": available, "reserved": 0, "sold": 0}),
        )

    def stock(self, skus: list[str]) -> dict[str, dict[str, Any]]:
        """Catalog items by sku (consistent reads); unknown skus are absent from the result."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(skus), 100):
            keys = [stock_key(s) for s in skus[start:start + 100]]
            request = {self.table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                resp = self.client.batch_get_item(RequestItems=request)
                for raw in resp["Responses"].get(self.table, []):
                    item = from_ddb(raw)
                    found[item["sku"]] = item
                request = resp.get("UnprocessedKeys") or {}
        return found

    def price(self, items: list[OrderLine]) -> tuple[list[PricedLine], int, str]:
        """Price the lines from the catalog. Raises UnknownItem for a sku the catalog lacks."""
        catalog = self.stock([line.sku for line in items])
        missing = [line.sku for line in items if line.sku not in catalog]
        if missing:
            raise UnknownItem(f"unknown sku: {', '.join(missing)}")
        currencies = {catalog[line.sku]["currency"] for line in items}
        if len(currencies) != 1:
            raise UnknownItem(f"the items are priced in several currencies: {sorted(currencies)}")
        lines = [PricedLine(sku=line.sku, quantity=line.quantity, unit_price=catalog[line.sku]["price"])
                 for line in items]
        return lines, sum(line.unit_price * line.quantity for line in lines), currencies.pop()

    # -- reservations ------------------------------------------------------
    def reservation(self, order_id: str) -> dict[str, Any] | None:
        resp = self.client.get_item(TableName=self.table, Key=reservation_key(order_id), ConsistentRead=True)
        return from_ddb(resp["Item"]) if "Item" in resp else None

    def reserve(self, order_id: str, lines: list[PricedLine], now: int, ttl_ms: int,
                guard: dict[str, Any] | None = None) -> None:
        """ReserveInventory: take every line's quantity from available into reserved, atomically.

        `guard` (the order's lease check) joins the transaction: without the lease, nothing lands.
        """
        existing = self.reservation(order_id)
        if existing is not None:
            self._check_reserved(order_id, existing)
            return
        reservation = {"pk": f"ORDER#{order_id}", "sk": "RESERVATION", "order_id": order_id,
                       "status": RESERVED, "lines": [line.model_dump() for line in lines], "reserved_at": now,
                       "expires_at": now + ttl_ms, "expiring": RESERVED}
        ops: list[dict[str, Any]] = [{"Put": {
            "TableName": self.table, "Item": to_ddb(reservation),
            "ConditionExpression": "attribute_not_exists(pk)",
        }}]
        for line in lines:
            ops.append({"Update": {
                "TableName": self.table, "Key": stock_key(line.sku),
                "UpdateExpression": "SET available = available - :q, reserved = reserved + :q",
                "ConditionExpression": "available >= :q",
                "ExpressionAttributeValues": values(q=line.quantity),
            }})
        if guard is not None:
            ops.append(guard)
        try:
            self.client.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            reasons = cancellation_reasons(exc)
            if not reasons:
                raise_if_transient(exc)
                raise
            if guard_failed(reasons, guard):
                raise LeaseLost(f"order {order_id}: the lease was lost; the reservation did not land") from exc
            if reasons[0] == "ConditionalCheckFailed":
                # Another attempt of this step (or its compensation) wrote the reservation first.
                self._check_reserved(order_id, self.reservation(order_id) or {})
                return
            short = [lines[i - 1].sku for i, code in enumerate(reasons[:len(lines) + 1])
                     if i and code == "ConditionalCheckFailed"]
            if short:
                raise InsufficientStock(f"not enough stock for: {', '.join(short)}") from exc
            if any(code in ("ThrottlingError", "TransactionConflict", "ProvisionedThroughputExceeded")
                   for code in reasons):
                raise StoreThrottled(f"reservation transaction cancelled: {reasons}") from exc
            raise

    @staticmethod
    def _check_reserved(order_id: str, reservation: dict[str, Any]) -> None:
        if reservation.get("status") in (RESERVED, COMMITTED):
            return
        raise ReservationReleased(f"the reservation of order {order_id} was released; it cannot be taken again")

    def commit(self, order_id: str, now: int, guard: dict[str, Any] | None = None) -> None:
        """ConfirmOrder: the reserved units become sold, unless the reservation expired. A repeat is a no-op."""
        reservation = self.reservation(order_id)
        if reservation is None or reservation["status"] == RELEASED:
            raise ReservationReleased(f"order {order_id} holds no reservation to commit")
        if reservation["status"] == COMMITTED:
            return
        if reservation.get("expires_at", now + 1) <= now:
            raise ReservationExpired(f"the reservation of order {order_id} expired at {reservation['expires_at']}")
        self._move(order_id, reservation, RESERVED, COMMITTED, "reserved", "sold", now, guard=guard,
                   unexpired=True)

    def expired(self, now: int, limit: int = 100) -> list[dict[str, Any]]:
        """RESERVED reservations past their expiry (index ExpiringReservations), oldest first."""
        resp = self.client.query(
            TableName=self.table, IndexName="ExpiringReservations", Limit=limit,
            KeyConditionExpression="expiring = :reserved AND expires_at < :now",
            ExpressionAttributeValues=values(reserved=RESERVED, now=now),
        )
        return [from_ddb(item) for item in resp.get("Items", [])]

    def release_expired(self, reservation: dict[str, Any], now: int) -> bool:
        """The reaper: return an expired reservation's stock. Exactly once, however many reapers run."""
        try:
            return self._move(reservation["order_id"], reservation, RESERVED, RELEASED, "reserved", "available",
                              now, expired=True)
        except ConcurrentUpdate:
            return False  # committed or released meanwhile: not ours to return

    def release(self, order_id: str, now: int) -> None:
        """ReleaseInventory: return reserved (or committed) units to available. A repeat is a no-op.

        With no reservation, it writes a RELEASED tombstone, so a ReserveInventory
        that arrives late (a timed-out attempt) can never reserve afterwards.
        """
        reservation = self.reservation(order_id)
        if reservation is None:
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item=to_ddb({"pk": f"ORDER#{order_id}", "sk": "RESERVATION", "order_id": order_id,
                                 "status": RELEASED, "lines": [], "released_at": now}),
                    ConditionExpression="attribute_not_exists(pk)",
                )
                return
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise_if_transient(exc)
                    raise
                reservation = self.reservation(order_id)
                assert reservation is not None
        if reservation["status"] == RESERVED:
            self._move(order_id, reservation, RESERVED, RELEASED, "reserved", "available", now)
        elif reservation["status"] == COMMITTED:
            self._move(order_id, reservation, COMMITTED, RELEASED, "sold", "available", now)

    def _move(self, order_id: str, reservation: dict[str, Any], status_from: str, status_to: str,
              field_from: str, field_to: str, now: int, guard: dict[str, Any] | None = None,
              unexpired: bool = False, expired: bool = False) -> bool:
        """Move the reservation and its stock in one transaction. False if it had already moved there."""
        condition = "#status = :from"
        if unexpired:
            condition += " AND expires_at > :now"
        if expired:
            condition += " AND expires_at < :now"
        ops: list[dict[str, Any]] = [{"Update": {
            "TableName": self.table, "Key": reservation_key(order_id),
            "UpdateExpression": "SET #status = :to, updated_at = :now REMOVE expiring",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": values(to=status_to, now=now, **{"from": status_from}),
        }}]
        for line in reservation["lines"]:
            ops.append({"Update": {
                "TableName": self.table, "Key": stock_key(line["sku"]),
                "UpdateExpression": f"SET {field_from} = {field_from} - :q, {field_to} = {field_to} + :q",
                "ConditionExpression": f"{field_from} >= :q",
                "ExpressionAttributeValues": values(q=line["quantity"]),
            }})
        if guard is not None:
            ops.append(guard)
        try:
            self.client.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            reasons = cancellation_reasons(exc)
            if guard_failed(reasons, guard):
                raise LeaseLost(f"order {order_id}: the lease was lost; the reservation did not move") from exc
            if reasons and reasons[0] == "ConditionalCheckFailed":
                # A concurrent attempt moved it first; done if it reached the same status.
                current = self.reservation(order_id) or {}
                if current.get("status") == status_to:
                    return False
                if status_to == COMMITTED:
                    if current.get("status") == RESERVED:
                        raise ReservationExpired(f"the reservation of order {order_id} expired") from exc
                    raise ReservationReleased(f"the reservation of order {order_id} was released") from exc
                if current.get("status") == RELEASED:
                    return False
                raise ConcurrentUpdate(f"reservation of order {order_id} changed under {status_to}") from exc
            raise_if_transient(exc)
            raise
        return True
