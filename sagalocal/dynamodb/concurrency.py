"""How concurrent requests interact, modelled on what DynamoDB documents and does.

Every request is atomic: it runs against moto's backend under one short mutex (`apply`), so a
conditional write's check and its write can never interleave with another request's.

A transaction is not instantaneous on AWS: its items stay "in flight" while DynamoDB commits it. Here a
write transaction holds its items in flight for `window_ms` from the moment it applies its writes (so the
engine's own queueing never lengthens it), and its answer leaves when the window ends (so its own client
never meets them). While an item is in flight, as DynamoDB documents:

  * a TransactWriteItems that names it is cancelled: TransactionCanceledException, reason TransactionConflict
    for that item ("an item within a TransactWriteItems request is part of another ongoing
    TransactWriteItems request");
  * a PutItem, UpdateItem or DeleteItem on it is rejected with TransactionConflictException ("a PutItem,
    UpdateItem, or DeleteItem request for an item conflicts with an ongoing TransactWriteItems request");
  * a TransactGetItems that names it is cancelled with TransactionConflict.

ClientRequestToken makes TransactWriteItems idempotent for 10 minutes, as on AWS: the same token with the
same request returns success without writing again; with another request it is
IdempotentParameterMismatchException; while the first request with the token is still running it is
TransactionInProgressException.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

Identity = tuple[str, str]  # (table, primary key text)
TOKEN_TTL_SECONDS = 600.0


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
        self._lock = threading.Lock()  # the tokens
        self._inflight: dict[Identity, float] = {}  # item -> when its transaction's commit window ends
        self._tokens: OrderedDict[str, _Token] = OrderedDict()  # oldest first
        self.conflicts = 0  # requests this engine refused for an item in flight

    # ---- items in flight (call under `apply`) ----------------------------------------------------
    def in_flight(self, identities: list[Identity]) -> list[int]:
        """The indexes of the items some committed transaction still holds in flight."""
        now = time.monotonic()
        if len(self._inflight) > 10_000:
            self._inflight = {k: v for k, v in self._inflight.items() if v > now}
        clash = [i for i, ident in enumerate(identities) if self._inflight.get(ident, 0.0) > now]
        if clash:
            self.conflicts += 1
        return clash

    def hold(self, identities: list[Identity]) -> float:
        """A write transaction is committing: its items are in flight for the window, and its answer leaves at
        the end of it (the monotonic time returned), so its own client never meets them."""
        until = time.monotonic() + self.window
        if self.window:
            for ident in identities:
                self._inflight[ident] = until
        return until

    # ---- idempotency tokens ---------------------------------------------------------------------
    @staticmethod
    def digest(raw: bytes) -> str:
        return hashlib.sha256(raw).hexdigest()

    def claim_token(self, token: str, digest: str) -> bytes | str | None:
        """None: run the request. bytes: the stored response to replay. str: the error code to answer."""
        now = time.monotonic()
        with self._lock:
            while self._tokens and now - next(iter(self._tokens.values())).at > TOKEN_TTL_SECONDS:
                self._tokens.popitem(last=False)
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
