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
    rule = Rule.from_json({"action": "invocation-error", "function": "ReserveInventory", "prevent_execution": False})
    monkeypatch.setattr(faults.Injector, "invocation_rule", lambda self: rule)
    exits = []

    def exit_(code):
        exits.append(code)
        raise Crashed

    monkeypatch.setattr(faults.os, "_exit", exit_)
    return exits


def test_the_sandbox_exits_after_a_handler_that_returned(crash_rule):
    ran = []
    wrapped = faults.wrap(lambda event, context: ran.append(event) or {"ok": True}, "ReserveInventory", [])
    with pytest.raises(Crashed):
        wrapped({"saga": {}}, None)
    assert (ran, crash_rule) == ([{"saga": {}}], [1])


def test_the_sandbox_exits_after_a_handler_that_raised(crash_rule):
    """A step that fails on its own (say, out of time for a write) must not spend the rule without the crash."""
    def raises(event, context):
        raise RuntimeError("the step's own error")

    with pytest.raises(Crashed):
        faults.wrap(raises, "ReserveInventory", [])({"saga": {}}, None)
    assert crash_rule == [1]


@pytest.mark.parametrize("lost_as", ["error", "timeout"])
def test_a_lost_response_rule_applies_the_write_and_the_client_sees_a_failure(aws, lost_as):
    """A handler's own DynamoDB client (sagafaults' botocore hook, as a deployed stack's functions run it): the write
    reaches the table, and its answer is replaced by a 500 or a read timeout, so the caller must retry it."""
    import os

    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, ReadTimeoutError

    table = os.environ["ORDERS_TABLE"]
    client = boto3.client("dynamodb", region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, read_timeout=1))
    injector = faults.Injector("ReserveInventory", "rules", rules_client=None)
    injector.rules = [(Rule(action="dynamodb-response-lost", operation="PutItem", lost_as=lost_as, delay_ms=10,
                            count=None), False)]
    injector.hook(client)
    expected = ClientError if lost_as == "error" else ReadTimeoutError
    with pytest.raises(expected):
        client.put_item(TableName=table, Item={"order_id": {"S": "ord_lost"}, "total": {"N": "5"}})
    assert aws.get_item(TableName=table, Key={"order_id": {"S": "ord_lost"}})["Item"]["total"] == {"N": "5"}
    assert injector.applied  # the rule was spent and logged
