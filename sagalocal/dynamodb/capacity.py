"""What each request would consume on AWS (on-demand), and how many requests each operation got.

The rules DynamoDB documents, applied to the item images this engine sees:
  * a write costs 1 write request unit (WRU) per started KB of the larger of the item before and after;
    a transactional write costs 2 per KB; a ConditionCheck in a transaction costs 2 read units per 4 KB
    (as a transactional read) and a failed condition still costs the write;
  * every global secondary index the write changes costs index writes (1 WRU per KB of the projected
    index item): an item entering or leaving the index is one write, a changed index key is two
    (a delete and a put), and a projected attribute changing in place is one;
  * a read costs 1 read request unit (RRU) per 4 KB if strongly consistent, 0.5 if eventually consistent,
    2 if transactional; a Query or Scan is charged on the sum of the item sizes it read.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from typing import Any


def write_units(size_before: int, size_after: int, transactional: bool) -> float:
    units = max(1, math.ceil(max(size_before, size_after) / 1024))
    return float(units * (2 if transactional else 1))


def read_units(size: int, consistent: bool, transactional: bool = False) -> float:
    units = max(1, math.ceil(size / 4096))
    if transactional:
        return float(units * 2)
    return float(units) if consistent else units / 2


class Image:
    """What capacity accounting needs of an item before a write: its size and its index entries."""

    def __init__(self, table: Any, item: Any) -> None:
        self.size = item.size() if item is not None else 0
        self.entries = [_entry(index, item) for index in getattr(table, "global_indexes", None) or []]


def _entry(index: Any, item: Any) -> tuple[str, float, Any] | None:
    """(index key values, projected size in KB, what a changed projection is compared on), or None if absent."""
    if item is None or not all(k in item.attrs for k in index.schema_key_attrs):
        return None
    projection = (index.projection or {}).get("ProjectionType", "ALL")
    keys = list(dict.fromkeys(index.table_key_attrs + index.schema_key_attrs))
    key_values = json.dumps([item.attrs[k].to_json() for k in index.schema_key_attrs], sort_keys=True)
    if projection == "ALL":
        return key_values, _kb_of(item.size()), None  # any change of the item changes its index entry
    names = keys + (list(index.projection.get("NonKeyAttributes", [])) if projection == "INCLUDE" else [])
    present = [n for n in names if n in item.attrs]
    size = sum(len(n.encode()) + item.attrs[n].size() for n in present)
    compared = json.dumps([(n, item.attrs[n].to_json()) for n in present if n not in keys], sort_keys=True)
    return key_values, _kb_of(size), compared


def index_writes(table: Any, before: Image | None, after: Any, changed: bool = True) -> float:
    """WRU for the global secondary indexes one item change touches."""
    total = 0.0
    indexes = getattr(table, "global_indexes", None) or []
    for n, index in enumerate(indexes):
        was = before.entries[n] if before is not None else None
        now = _entry(index, after)
        if was is None and now is None:
            continue
        if was is None or now is None:
            total += (was or now)[1]
        elif was[0] != now[0]:
            total += was[1] + now[1]  # the old index item is deleted, the new one put
        elif changed and (was[2] is None or was[2] != now[2]):
            total += max(was[1], now[1])
    return total


def _kb_of(size: int) -> float:
    return float(max(1, math.ceil(size / 1024)))


def wire_size(item: dict[str, Any]) -> int:
    """An item's size from its wire form ({"name": {"S": ...}}), by DynamoDB's sizing rules (approximately)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    (kind, inner), = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return len(str(inner).lstrip("-").replace(".", "")) // 2 + 2
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + _value_size(v) for k, v in inner.items())
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in inner)
    if kind in ("SS", "NS", "BS"):
        return sum(len(str(v)) for v in inner)
    return 1 if kind in ("BOOL", "NULL") else len(str(inner))


class Meter:
    """Counters the /_sagalocal/stats endpoint reports: requests by operation, units by table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.wru: Counter[str] = Counter()  # table -> write request units (base table)
        self.index_wru: Counter[str] = Counter()  # table -> write request units spent on its indexes
        self.rru: Counter[str] = Counter()

    def request(self, operation: str) -> None:
        with self._lock:
            self.requests[operation] += 1

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def charge(self, table: str, wru: float = 0.0, index_wru: float = 0.0, rru: float = 0.0) -> None:
        with self._lock:
            if wru:
                self.wru[table] += wru
            if index_wru:
                self.index_wru[table] += index_wru
            if rru:
                self.rru[table] += rru

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "errors": dict(self.errors), "wru": dict(self.wru),
                    "index_wru": dict(self.index_wru), "rru": dict(self.rru),
                    "total_requests": sum(self.requests.values()),
                    "total_wru": sum(self.wru.values()) + sum(self.index_wru.values()),
                    "total_rru": sum(self.rru.values())}

    def reset(self) -> None:
        with self._lock:
            for counter in (self.requests, self.errors, self.wru, self.index_wru, self.rru):
                counter.clear()
