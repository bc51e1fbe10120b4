"""The inventory service: the catalog with stock levels, and one reservation per order.

Keys (one table):
  pk = "SKU#<sku>",     sk = "STOCK"        name, price, currency, available, reserved, sold
  pk = "ORDER#<id>",    sk = "RESERVATION"  lines, status RESERVED | COMMITTED | RELEASED, expires_at

A RESERVED reservation carries `expiring` (one of IndexShards values) and `expires_at`, the keys of the
sparse index ExpiringReservations: the reaper returns expired ones to stock, and ConfirmOrder cannot
commit one that has expired.

Retention (`purge_at`, the table's TTL attribute, epoch seconds): a RELEASED reservation (a release, or a
tombstone) is kept for Timing.tombstone_ms from the write that releases it; a COMMITTED one for the order
retention from the write that completes its order (never before: a capture the processor refuses after the
pivot still releases it). A RESERVED reservation and the catalog's STOCK items never expire.

For every sku, available + reserved + sold changes only by restocking, and every change happens in one
transaction with the reservation's status change, conditional on the status it expects: stock never goes
below zero and a repeat changes nothing.
"""

from __future__ import annotations

from typing import Any

from order_saga.config import Timing
from order_saga.dynamo import to_ddb, values
from order_saga.errors import ConcurrentUpdate, InsufficientStock, UnknownItem
from order_saga.models import OrderLine, PricedLine
from order_saga.store import Cancelled, Items, Store

RESERVED = "RESERVED"
COMMITTED = "COMMITTED"
RELEASED = "RELEASED"


def stock_key(sku: str) -> dict[str, Any]:
    return to_ddb({"pk": f"SKU#{sku}", "sk": "STOCK"})


def reservation_key(order_id: str) -> dict[str, Any]:
    return to_ddb({"pk": f"ORDER#{order_id}", "sk": "RESERVATION"})


class Inventory:
    def __init__(self, store: Store, table: str, timing: Timing | None = None) -> None:
        self.store = store
        self.table = table
        self._timing = timing

    @property
    def timing(self) -> Timing:
        if self._timing is None:
            raise RuntimeError("reservations need the saga's timing (Timing.from_env())")
        return self._timing

    # ---- the catalog (administration, not part of the saga) ------------------------------------------
    def add_item(self, sku: str, name: str, price: int, currency: str, available: int) -> bool:
        """Add a catalog item. False if the sku exists: restock it instead (an overwrite would reset the
        reserved and sold counts of live orders)."""
        return self.store.put(
            TableName=self.table, ConditionExpression="attribute_not_exists(pk)",
            Item=to_ddb({"pk": f"SKU#{sku}", "sk": "STOCK", "sku": sku, "name": name, "price": price,
                         "currency": currency, "available": available, "reserved": 0, "sold": 0})).ok

    def restock(self, sku: str, units: int) -> dict[str, Any]:
        """Add units to what is available; reserved and sold are untouched. Raises UnknownItem for a new sku."""
        if units <= 0:
            raise ValueError("restock adds a positive number of units")
        written = self.store.update(
            TableName=self.table, Key=stock_key(sku), UpdateExpression="SET available = available + :units",
            ConditionExpression="attribute_exists(pk)", ExpressionAttributeValues=values(units=units),
            ReturnValues="ALL_NEW")
        if not written.ok:
            raise UnknownItem(f"no catalog item {sku!r} to restock; add it first")
        return written.item or {}

    def stock(self, skus: list[str], consistent: bool = False) -> dict[str, dict[str, Any]]:
        """Catalog items by sku; unknown skus are absent from the result."""
        return {item["sku"]: item for item in self.store.batch_get(self.table, [stock_key(s) for s in skus],
                                                                     consistent)}

    def stock_keys(self, skus: list[str]) -> list[dict[str, Any]]:
        return [stock_key(s) for s in skus]

    def price(self, items: list[OrderLine], catalog: dict[str, dict[str, Any]] | None = None
              ) -> tuple[list[PricedLine], int, str]:
        """Price the lines from the catalog (read now, unless given). Raises UnknownItem for a sku the catalog
        lacks, or for lines priced in several currencies."""
        if catalog is None:
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

    # ---- reservations ------------------------------------------------------------------------------------
    def reservation(self, order_id: str) -> dict[str, Any] | None:
        return self.store.get(self.table, reservation_key(order_id))

    def reserve_items(self, order_id: str, lines: list[PricedLine], now: int) -> Items:
        """ReserveInventory's part of its transaction: the reservation, then each line's stock ("stock:<sku>")."""
        reservation = {"pk": f"ORDER#{order_id}", "sk": "RESERVATION", "order_id": order_id,
                       "status": RESERVED, "lines": [line.model_dump() for line in lines], "reserved_at": now,
                       "expires_at": now + self.timing.reservation_ttl_ms, "expiring": self.timing.shard(order_id)}
        items: Items = {"reservation": {"Put": {
            "TableName": self.table, "Item": to_ddb(reservation), "ConditionExpression": "attribute_not_exists(pk)",
        }}}
        for line in lines:
            items[f"stock:{line.sku}"] = {"Update": {
                "TableName": self.table, "Key": stock_key(line.sku),
                "UpdateExpression": "SET available = available - :q, reserved = reserved + :q",
                "ConditionExpression": "available >= :q", "ExpressionAttributeValues": values(q=line.quantity),
            }}
        return items

    @staticmethod
    def short_of(cancelled: Cancelled) -> InsufficientStock | None:
        """InsufficientStock naming the lines whose stock condition failed in a cancelled reservation."""
        short = [name.removeprefix("stock:") for name in cancelled.failed_among("stock:")]
        return InsufficientStock(f"not enough stock for: {', '.join(short)}") if short else None

    def move_items(self, order_id: str, lines: list[dict[str, Any]], status_from: str, status_to: str,
                   field_from: str, field_to: str, now: int, unexpired: bool = False,
                   expired: bool = False) -> Items:
        """A reservation's status change and its stock moving between counters, as transaction items."""
        condition = "#status = :from"
        if unexpired:
            condition += " AND expires_at > :now"
        if expired:
            condition += " AND expires_at < :now"
        sets, extra = "SET #status = :to, updated_at = :now", {}
        if status_to == RELEASED:  # its stock is back: from now on only a tombstone
            sets, extra = sets + ", purge_at = :purge", {"purge": self.timing.tombstone_until(now)}
        items: Items = {"reservation": {"Update": {
            "TableName": self.table, "Key": reservation_key(order_id),
            "UpdateExpression": f"{sets} REMOVE expiring",
            "ConditionExpression": condition, "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": values(to=status_to, now=now, **{"from": status_from}, **extra),
        }}}
        for line in lines:
            items[f"stock:{line['sku']}"] = {"Update": {
                "TableName": self.table, "Key": stock_key(line["sku"]),
                "UpdateExpression": f"SET {field_from} = {field_from} - :q, {field_to} = {field_to} + :q",
                "ConditionExpression": f"{field_from} >= :q", "ExpressionAttributeValues": values(q=line["quantity"]),
            }}
        return items

    def commit_items(self, order_id: str, lines: list[PricedLine], now: int) -> Items:
        """ConfirmOrder's stock part: the reserved units become sold, unless the reservation expired."""
        return self.move_items(order_id, [line.model_dump() for line in lines], RESERVED, COMMITTED, "reserved",
                               "sold", now, unexpired=True)

    def retire_items(self, order_id: str, now: int) -> Items:
        """The completion's part (the same transaction that makes the order COMPLETED): the COMMITTED reservation
        is kept for the order retention from now, as its order is."""
        return {"reservation": {"Update": {
            "TableName": self.table, "Key": reservation_key(order_id), "UpdateExpression": "SET purge_at = :purge",
            "ConditionExpression": "#status = :committed", "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": values(committed=COMMITTED, purge=self.timing.retained_until(now)),
        }}}

    def release_items(self, order_id: str, now: int) -> tuple[Items, dict[str, Any] | None]:
        """ReleaseInventory's part of its transaction, from the reservation as it is now (and that reservation).

        Reserved (or committed) units go back to available. With no reservation, a RELEASED tombstone, so a
        ReserveInventory that arrives late (a timed-out attempt) can never reserve afterwards. Nothing to do
        for a released one.
        """
        reservation = self.reservation(order_id)
        if reservation is None:
            tombstone = {"pk": f"ORDER#{order_id}", "sk": "RESERVATION", "order_id": order_id, "status": RELEASED,
                         "lines": [], "released_at": now, "purge_at": self.timing.tombstone_until(now)}
            return {"reservation": {"Put": {"TableName": self.table, "Item": to_ddb(tombstone),
                                            "ConditionExpression": "attribute_not_exists(pk)"}}}, None
        status = reservation["status"]
        if status == RESERVED:
            return self.move_items(order_id, reservation["lines"], RESERVED, RELEASED, "reserved", "available",
                                   now), reservation
        if status == COMMITTED:
            return self.move_items(order_id, reservation["lines"], COMMITTED, RELEASED, "sold", "available",
                                   now), reservation
        return {}, reservation

    # ---- expiry (the reaper) -----------------------------------------------------------------------------
    def expired(self, now: int) -> list[dict[str, Any]]:
        """RESERVED reservations past their expiry, from every shard of ExpiringReservations (keys only)."""
        found: list[dict[str, Any]] = []
        for shard in self.timing.all_shards():
            found += self.store.query(
                TableName=self.table, IndexName="ExpiringReservations",
                KeyConditionExpression="expiring = :shard AND expires_at < :now",
                ExpressionAttributeValues=values(shard=shard, now=now))
        return sorted(found, key=lambda entry: entry["expires_at"])

    def release_expired(self, order_id: str, now: int) -> bool:
        """Return an expired reservation's stock. Exactly once, however many reapers run."""
        reservation = self.reservation(order_id)
        if reservation is None or reservation["status"] != RESERVED or reservation["expires_at"] >= now:
            return False
        cancelled = self.store.transact(self.move_items(order_id, reservation["lines"], RESERVED, RELEASED,
                                                        "reserved", "available", now, expired=True))
        if cancelled is None:
            return True
        if cancelled.failed("reservation"):
            return False  # committed or released meanwhile: not ours to return
        raise ConcurrentUpdate(f"the stock of order {order_id}'s reservation changed under its release: "
                               f"{cancelled.reasons}")
