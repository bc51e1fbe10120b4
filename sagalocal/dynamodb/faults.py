"""The fault rules this DynamoDB process applies to every request, whoever sends it.

Rules are sagafaults rules (DynamoDB actions only). A rule with a count is spent one match at a time and
removed when spent; the control endpoint (/_sagalocal/faults on this process) adds, lists and clears them.
"""

from __future__ import annotations

import threading
from typing import Any

from sagafaults.rules import DYNAMODB_ACTIONS, Rule, RuleError


class RuleBook:
    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self.applied: dict[str, int] = {}  # rule id -> times applied

    def add(self, data: Any) -> Rule:
        rule = Rule.from_json(data)
        if rule.action not in DYNAMODB_ACTIONS:
            raise RuleError(f"this endpoint applies DynamoDB rules ({', '.join(DYNAMODB_ACTIONS)}); "
                            f"{rule.action} belongs to the handler wrapper (the fault rules table)")
        if rule.function is not None or rule.order_id is not None:
            raise RuleError("the DynamoDB endpoint cannot see which function or order sends a request: "
                            "select by table, operation and key instead")
        with self._lock:
            self._rules.append(rule)
        return rule

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_json() for rule in self._rules]

    def pick(self, operation: str, items: list[tuple[str, str]]) -> tuple[Rule, list[int]] | None:
        """The first rule that applies to this request (spending one of its count), with the items it hits."""
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                hits = rule.dynamodb_targets(operation, items)
                if hits is None or not rule.draw():
                    continue
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count == 0:
                        self._rules.remove(rule)
                self.applied[rule.id] = self.applied.get(rule.id, 0) + 1
                return rule, hits
        return None
