"""src/sagafaults/handler.py: an invocation-error rule without prevent_execution (a crash after the handler ran)."""

from __future__ import annotations

import pytest

from sagafaults import handler as faults
from sagafaults.rules import Rule


class Crashed(Exception):
    pass


@pytest.fixture
def crash_rule(monkeypatch):
    """Every invocation draws a crash-after-write rule; the sandbox's exit is recorded instead of taken."""
    monkeypatch.setenv("FAULT_RULES_TABLE", "rules")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # wrap() creates its rules client (never called here)
    monkeypatch.setattr(faults.Injector, "load", lambda self, order_id: None)
    rule = Rule.from_json({"action": "invocation-error", "function": "CreateOrder", "prevent_execution": False})
    monkeypatch.setattr(faults.Injector, "invocation_rule", lambda self: rule)
    exits = []

    def exit_(code):
        exits.append(code)
        raise Crashed

    monkeypatch.setattr(faults.os, "_exit", exit_)
    return exits


def test_the_sandbox_exits_after_a_handler_that_returned(crash_rule):
    ran = []
    wrapped = faults.wrap(lambda event, context: ran.append(event) or {"ok": True}, "CreateOrder", [])
    with pytest.raises(Crashed):
        wrapped({"saga": {}}, None)
    assert (ran, crash_rule) == ([{"saga": {}}], [1])


def test_the_sandbox_exits_after_a_handler_that_raised(crash_rule):
    """A step that fails on its own (say, out of time for a write) must not spend the rule without the crash."""
    def raises(event, context):
        raise RuntimeError("the step's own error")

    with pytest.raises(Crashed):
        faults.wrap(raises, "CreateOrder", [])({"saga": {}}, None)
    assert crash_rule == [1]
