"""Fault injection at the Lambda seam, modelled on AWS FIS's Lambda actions. No saga code knows of it.

  throttle     the Lambda service refuses the invocation (Lambda.TooManyRequestsException, as when
               concurrency runs out); the handler does not run
  error        the invocation fails with `error_type` before the handler runs
  error-after  the handler runs (and writes), then the invocation fails with `error_type`:
               a crash after the write, as when the sandbox dies before returning
  delay        the invocation starts `delay_seconds` late; at or past the function's timeout it
               ends with Sandbox.Timedout and the handler never runs

A rule applies to one function (logical id), optionally only to one order's invocations (the
event's saga.order_id), for `count` invocations; then it is spent. Control it over HTTP on the
local API: POST /_sagalocal/faults (a rule), GET (the rules), DELETE (clear them).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

ACTIONS = ("throttle", "error", "error-after", "delay")


@dataclass
class Fault:
    function: str
    action: str
    count: int = 1
    order_id: str | None = None
    error_type: str = "Runtime.ExitError"
    error_message: str = "fault injected by sagalocal"
    delay_seconds: float = 0.0

    @classmethod
    def from_json(cls, data: Any, known_functions: list[str]) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("a fault is a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        fault = cls(**data)
        if fault.function not in known_functions:
            raise ValueError(f"unknown function {fault.function!r}; known: {', '.join(known_functions)}")
        if fault.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}")
        if not isinstance(fault.count, int) or fault.count < 1:
            raise ValueError("count must be a positive integer")
        if fault.action == "delay" and not (isinstance(fault.delay_seconds, (int, float)) and fault.delay_seconds > 0):
            raise ValueError("a delay needs delay_seconds > 0")
        return fault


class Faults:
    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._rules.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(rule) for rule in self._rules]

    def take(self, function: str, event: Any) -> Fault | None:
        """The rule that applies to this invocation, spending one of its count."""
        saga = event.get("saga") if isinstance(event, dict) else None
        order_id = saga.get("order_id") if isinstance(saga, dict) else None
        with self._lock:
            for rule in self._rules:
                if rule.function == function and rule.order_id in (None, order_id):
                    rule.count -= 1
                    if rule.count == 0:
                        self._rules.remove(rule)
                    return rule
        return None
