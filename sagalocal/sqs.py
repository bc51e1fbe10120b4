"""SQS for the embedded stack: moto's backend, with SendMessage's cost kept flat as a queue grows.

moto reads `Queue.attributes` on every SendMessage (and on every message added to a FIFO queue) only to
look at ContentBasedDeduplication, and that property builds the whole attribute dict: the three
ApproximateNumberOfMessages* counts scan every message in the queue. A queue nobody drains (the outcome
events queue of a bench or a long `make up`) made each send slower than the last: 15 ms of the stack
process's CPU per saga after a few thousand sagas. Here `Queue.attributes` is a read-only mapping that
answers ContentBasedDeduplication from the queue itself and builds the whole dict, as moto does, for
anything else. What a caller sees is unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_moto_getter: list[Callable[[Any], dict[str, Any]]] = []  # moto's own Queue.attributes getter, once installed


class QueueAttributes(Mapping[str, Any]):
    """moto's `Queue.attributes`, built when first read as a whole."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._all: dict[str, Any] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        if key == "ContentBasedDeduplication":
            if not self._queue.fifo_queue:
                return default  # moto lists the FIFO attributes of FIFO queues only
            value = self._queue.content_based_deduplication
            return str(value).lower() if isinstance(value, bool) else value
        return super().get(key, default)

    def _whole(self) -> dict[str, Any]:
        if self._all is None:
            self._all = _moto_attributes(self._queue)
        return self._all

    def __getitem__(self, key: str) -> Any:
        return self._whole()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())


def _moto_attributes(queue: Any) -> dict[str, Any]:
    """The whole dict, built by moto's own getter."""
    return _moto_getter[0](queue)


@functools.cache
def install() -> None:
    """Patch moto's SQS Queue (once per process)."""
    from moto.sqs.models import Queue

    _moto_getter.append(Queue.attributes.fget)
    Queue.attributes = property(QueueAttributes)  # type: ignore[method-assign,assignment]


@functools.cache
def memoize_attribute_names() -> None:
    """moto's Queue.attributes turns every attribute's name into its Python name with camelcase_to_underscores (a
    loop over the name's characters) each time it is built, and SendMessage and ReceiveMessage build it three
    times per message (their retention check reads MessageRetentionPeriod through GetQueueAttributes): 1% of the
    simulation's time. The conversion is a pure function of the name: memoized (once per process)."""
    from moto.sqs import models

    models.camelcase_to_underscores = functools.lru_cache(maxsize=1024)(models.camelcase_to_underscores)
