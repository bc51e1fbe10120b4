"""moto keeps every model object it ever created (`BaseModel.instances_tracked`, for its server's dashboard,
which sagalocal never serves), until the mock is reset. The embedded stack's processes and the simulation run one
mock for their whole life: every DynamoDB item version, every state machine description stayed alive, memory grew
without end and every garbage collection walked them all (the simulation's explorer: 900 objects a case, each
case slower than the last, 2,950 cases). Nothing in moto reads the list but that dashboard and its own reset."""

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
