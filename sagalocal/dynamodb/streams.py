"""DynamoDB Streams for the tables that ask for one (StreamSpecification): one shard per table, each change
recorded once, in order, as a Lambda event source mapping receives it.

moto records stream records in a list whose sequence numbers come from its length, and keeps them for ever;
here every change becomes a record with a process-wide increasing sequence number, and a consumer
acknowledges what it processed, which is then trimmed (as DynamoDB drops records after 24 hours). The
stack's event source mapping reads them through the DynamoDB process's `/_sagalocal/streams` route.

As on DynamoDB, a write that changes nothing (the same item put again, an update to the values it has)
records nothing, and an UpdateItem that creates its item is one INSERT with the whole new item (moto writes
the bare key first, then the update: two changes, which are recorded here as the one the caller made).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any


class Streams:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)  # notified at every record: a waiting read wakes
        self._seq = itertools.count(1)
        self._records: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        # Each item's last new image with the length of its text (a record's SizeBytes is the length of the change's
        # text): the item's next change starts from that image, and its text need not be made again.
        self._last: dict[tuple[Any, ...], tuple[dict[str, Any], int]] = {}

    def add(self, table: Any, old: Any, new: Any) -> None:
        if old is None and new is None:
            return
        old_image = old.to_json()["Attributes"] if old is not None else None
        new_image = new.to_json()["Attributes"] if new is not None else None
        if old_image is not None and old_image == new_image:
            return  # nothing changed: DynamoDB writes no stream record
        view = (table.stream_specification or {}).get("StreamViewType", "NEW_AND_OLD_IMAGES")
        item = old if old is not None else new
        keys = {table.hash_key_attr: item.hash_key.to_json()}
        if table.range_key_attr is not None:
            keys[table.range_key_attr] = item.range_key.to_json()
        change: dict[str, Any] = {"ApproximateCreationDateTime": round(time.time(), 3), "Keys": keys,
                                  "StreamViewType": view}
        if new_image is not None and view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
            change["NewImage"] = new_image
        if old_image is not None and view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
            change["OldImage"] = old_image
        name = "INSERT" if old is None else "REMOVE" if new is None else "MODIFY"
        with self._lock:
            seq = next(self._seq)
            change["SequenceNumber"] = str(seq)
            change["SizeBytes"] = self._size(table.name, item, change)
            record = {"eventID": event_id(), "eventName": name, "eventVersion": "1.1",
                      "eventSource": "aws:dynamodb", "awsRegion": table.region_name, "dynamodb": change}
            self._records.setdefault(table.name, []).append((seq, record))
            self._added.notify_all()

    def _size(self, table: str, item: Any, change: dict[str, Any]) -> int:
        """len(str(change)): the text of a dict is its entries' texts ("'name': value") between braces, separated by
        ", ". The old image's text is as long as the item's last new image's when the two are equal (images hold
        strings, booleans, bytes, lists and dicts: equal ones have texts of one length, whatever their order)."""
        try:
            key = (table, item.hash_key.type, item.hash_key.value, *((item.range_key.type, item.range_key.value)
                                                                     if item.range_key is not None else ()))
            last = self._last.get(key)
        except TypeError:  # a key value that is not hashable: no memo
            key, last = None, None
        size = 2 * len(change)  # the braces, and a ", " between each two entries
        new_size = None
        for name, value in change.items():
            if name == "OldImage" and last is not None and last[0] == value:
                text = last[1]
            else:
                text = len(repr(value))
                if name == "NewImage":
                    new_size = text
            size += len(repr(name)) + 2 + text
        if key is not None:
            if new_size is None:
                self._last.pop(key, None)
            else:
                if len(self._last) >= 4096:
                    self._last.clear()
                self._last[key] = (change["NewImage"], new_size)
        return size

    def read(self, table: str, after: int, limit: int, acknowledged: int, wait: float = 0.0) -> list[dict[str, Any]]:
        """The records after sequence number `after` (at most `limit`), once the consumer's acknowledged ones
        are trimmed; if there are none, waiting up to `wait` seconds for one (a long poll: an idle consumer
        asks once per wait, not once per poll interval)."""
        deadline = time.monotonic() + wait
        with self._lock:
            records = self._records.get(table, [])
            if acknowledged:
                records[:] = [(seq, rec) for seq, rec in records if seq > acknowledged]
            while True:
                found = [rec for seq, rec in self._records.get(table, []) if seq > after][:limit]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._added.wait(left)


STREAMS = Streams()


def event_id(random: Callable[[int], bytes] = os.urandom) -> str:
    """uuid.uuid4().hex without building a UUID (a tenth of a record's cost): 128 random bits with the version (4)
    and the variant set, as UUID(bytes=os.urandom(16), version=4) sets them."""
    n = int.from_bytes(random(16))
    n = (n & ~(0xC000 << 48) | 0x8000 << 48) & ~(0xF000 << 64) | 4 << 76
    return f"{n:032x}"


_pending = threading.local()  # the changes of the UpdateItem running in this thread


def install() -> None:
    """Every change of a table with a stream goes to STREAMS (instead of moto's ever-growing list)."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import StreamShard

    def add(self: Any, old: Any, new: Any) -> None:
        changes = getattr(_pending, "changes", None)
        if changes is not None:
            changes.append((self.table, old, new))
        else:
            STREAMS.add(self.table, old, new)

    original = DynamoDBBackend.update_item

    def update_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer = getattr(_pending, "changes", None)
        _pending.changes = []
        try:
            return original(self, *args, **kwargs)
        finally:
            changes, _pending.changes = _pending.changes, outer
            if changes:  # one record for the call: from the item before it to the item after it
                STREAMS.add(changes[0][0], changes[0][1], changes[-1][2])

    StreamShard.add = add  # type: ignore[method-assign]
    DynamoDBBackend.update_item = update_item  # type: ignore[method-assign]
