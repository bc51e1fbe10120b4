"""How concurrent requests interact, modelled on what DynamoDB documents and does.

Every request is atomic: it runs against moto's backend under one short mutex (`apply`), so a
conditional write's check and its write can never interleave with another request's.

A transaction (TransactWriteItems, TransactGetItems) is not instantaneous on AWS, and while it runs
its items are "in flight". This engine gives each transaction a prepare window of `window_ms` before it
commits, during which its items are registered as in flight. Inside that window:

  * a second transaction naming one of those items is cancelled: TransactionCanceledException with the
    reason TransactionConflict for that item (DynamoDB: "an item within a TransactWriteItems request is
    part of another ongoing TransactWriteItems request");
  * a single-item write (PutItem, UpdateItem, DeleteItem, or a BatchWriteItem entry) to one of those
    items goes ahead, and the in-flight transaction is cancelled with TransactionConflict for that item
    (the item was changed under the transaction, which DynamoDB resolves optimistically);
  * a TransactGetItems naming an item of an in-flight write transaction is cancelled.

ClientRequestToken makes TransactWriteItems idempotent for 10 minutes, as on AWS: the same token with the
same request returns success without writing again; with another request it is
IdempotentParameterMismatchException; while the first request with the token is still running it is
TransactionInProgressException.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Identity = tuple[str, str]  # (table, primary key text)
TOKEN_TTL_SECONDS = 600.0


class Conflict(Exception):
    """The transaction is cancelled: `indexes` are the items that conflicted."""

    def __init__(self, indexes: list[int]) -> None:
        super().__init__(f"transaction conflict on items {indexes}")
        self.indexes = indexes


@dataclass
class _InFlight:
    identities: list[Identity]
    writes: bool
    touched: set[Identity] = field(default_factory=set)


class TokenState:
    RUNNING = "running"
    DONE = "done"


@dataclass
class _Token:
    digest: str
    state: str
    at: float
    response: bytes = b""


class Coordinator:
    def __init__(self, window_ms: float = 2.0) -> None:
        self.window = max(0.0, window_ms) / 1000.0
        self.apply = threading.RLock()  # every request's read/check/write against the backend
        self._lock = threading.Lock()  # the in-flight registry and the tokens
        self._inflight: dict[Identity, _InFlight] = {}
        self._tokens: dict[str, _Token] = {}
        self.conflicts = 0  # transactions this engine cancelled by itself

    # ---- single-item writes ---------------------------------------------------------------------
    def single_write(self, identity: Identity) -> None:
        """A write outside any transaction: an in-flight write transaction on the item will be cancelled."""
        with self._lock:
            txn = self._inflight.get(identity)
            if txn is not None and txn.writes:
                txn.touched.add(identity)

    # ---- transactions ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self, identities: list[Identity], writes: bool) -> Iterator[None]:
        """Hold the items in flight for the prepare window; raise Conflict as DynamoDB would.

        The body of the `with` runs the transaction (under `apply`) once the window passed cleanly.
        """
        txn = _InFlight(identities, writes)
        with self._lock:
            clash = [i for i, ident in enumerate(identities)
                     if ident in self._inflight and (writes or self._inflight[ident].writes)]
            if clash:
                self.conflicts += 1
                raise Conflict(clash)
            for ident in identities:
                self._inflight[ident] = txn
        try:
            if self.window:
                time.sleep(self.window)
            with self._lock:
                touched = [i for i, ident in enumerate(identities) if ident in txn.touched]
                if touched:
                    self.conflicts += 1
                    raise Conflict(touched)
            yield
        finally:
            with self._lock:
                for ident in identities:
                    if self._inflight.get(ident) is txn:
                        del self._inflight[ident]

    # ---- idempotency tokens ---------------------------------------------------------------------
    @staticmethod
    def digest(raw: bytes) -> str:
        return hashlib.sha256(raw).hexdigest()

    def claim_token(self, token: str, digest: str) -> bytes | str | None:
        """None: run the request. bytes: the stored response to replay. str: the error code to answer."""
        now = time.monotonic()
        with self._lock:
            for old in [t for t, v in self._tokens.items() if now - v.at > TOKEN_TTL_SECONDS]:
                del self._tokens[old]
            known = self._tokens.get(token)
            if known is None:
                self._tokens[token] = _Token(digest, TokenState.RUNNING, now)
                return None
            if known.digest != digest:
                return "IdempotentParameterMismatchException"
            if known.state == TokenState.RUNNING:
                return "TransactionInProgressException"
            return known.response

    def settle_token(self, token: str, response: bytes | None) -> None:
        """Record a successful transaction's response, or forget a token whose transaction failed."""
        with self._lock:
            if response is None:
                self._tokens.pop(token, None)
            elif token in self._tokens:
                self._tokens[token].state = TokenState.DONE
                self._tokens[token].response = response
