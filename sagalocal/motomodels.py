"""moto keeps every model object it ever created (`BaseModel.instances_tracked`, for its server's dashboard,
which sagalocal never serves), until the mock is reset. The embedded stack's processes and the simulation run one
mock for their whole life: every DynamoDB item version, every state machine description stayed alive, memory grew
without end and every garbage collection walked them all (the simulation's explorer: 900 objects a case, each
case slower than the last, 2,950 cases). Nothing in moto reads the list but that dashboard and its own reset.

And its backends are looked up, by account, without the lock that only their creation needs."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def stop_tracking_instances() -> None:
    from moto.core import model_instances
    from moto.core.common_models import BaseModel

    def new(cls: type, *args: Any, **kwargs: Any) -> Any:
        return super(BaseModel, cls).__new__(cls)  # what BaseModel.__new__ does, but for the tracking

    BaseModel.__new__ = new  # type: ignore[assignment, method-assign]
    model_instances.reset_model_data()  # let go of what was tracked so far


@functools.cache
def look_backends_up_without_a_lock() -> None:
    """moto's BackendDict (every service's backends, by account) takes a process-wide lock and lists its keys at
    every lookup, to create an account's backends the first time it is asked for (a request looks its backend up
    once or twice: 1% of the simulation's time). An account already there is looked up as a plain dict; the first
    lookup of one still creates it under the lock."""
    from moto.core.base_backend import BackendDict

    original = BackendDict.__getitem__

    def lookup(self: Any, account_id: str) -> Any:
        found = dict.get(self, account_id)
        return found if found is not None else original(self, account_id)

    BackendDict.__getitem__ = lookup  # type: ignore[method-assign]
