"""No card token anywhere but the payments table: logs, queues, execution histories and the other tables.

The orders of the every_path fixture (conftest.py) take every path: every scenario, a payment that never
answers (compensated, then reconciled), a parked saga, repeated steps. Then the test reads everything the
stack keeps: every log (the embedded stack's log files and its own output, or a
deployed stack's CloudWatch log groups), the parked queues' messages, every execution's history, and every
item of every table but the payments table. It runs after the rest of the stack tier, so it also sees what
every other test left behind. The tokens it looks for are the ones the payments table holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sagalocal.timeline import history, paginate

pytestmark = pytest.mark.runs_last
TOKEN_SHAPE = re.compile(r"tok_[A-Za-z0-9_]+")


def scan(target, output: str) -> list[dict[str, Any]]:
    """Every item of a table, every page."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": target.outputs[output], "ConsistentRead": True}
    while True:
        page = target.client("dynamodb").scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def payment_tokens(target) -> set[str]:
    return {item["token"]["S"] for item in scan(target, "PaymentsTableName") if "token" in item}


def logs(target) -> dict[str, str]:
    """Every log the stack keeps: name -> text."""
    if target.embedded:
        found = {str(path): path.read_text(errors="replace") for path in Path(target.log_dir).rglob("*")
                 if path.is_file()}
        found["stack.log"] = (Path(target.workdir) / "stack.log").read_text(errors="replace")
        return found
    client, found = target.client("logs"), {}
    for output in ("FunctionsLogGroupName", "StateMachineLogGroupName", "ApiAccessLogGroupName"):
        events = paginate(client.filter_log_events, "events", logGroupName=target.outputs[output])
        found[output] = "\n".join(event["message"] for event in events)
    if not any(found.values()) and target.endpoint:
        # An embedded stack addressed as a deployed one writes its logs to files, not to CloudWatch Logs: its
        # info route says where (on this machine).
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"{target.endpoint}/_sagalocal/info", timeout=10) as response:  # noqa: S310
                log_dir = json.loads(response.read()).get("log_dir")
        except (OSError, ValueError):
            log_dir = None
        if log_dir and Path(log_dir).is_dir():
            found.update({str(path): path.read_text(errors="replace") for path in Path(log_dir).rglob("*")
                          if path.is_file()})
    return found


def queue_messages(target) -> dict[str, str]:
    sqs, found = target.client("sqs"), {}
    for output in ("ParkedSagasQueueUrl", "ParkedSagasDeadLetterQueueUrl"):
        bodies, seen = [], set()
        for _ in range(50):  # a bounded drain-and-return: every message is made visible again at once
            got = sqs.receive_message(QueueUrl=target.outputs[output], MaxNumberOfMessages=10, VisibilityTimeout=30,
                                      WaitTimeSeconds=0, AttributeNames=["All"]).get("Messages", [])
            fresh = [m for m in got if m["MessageId"] not in seen]
            for message in got:
                sqs.change_message_visibility(QueueUrl=target.outputs[output], ReceiptHandle=message["ReceiptHandle"],
                                              VisibilityTimeout=0)
            if not fresh:
                break
            seen.update(m["MessageId"] for m in fresh)
            bodies += [m["Body"] for m in fresh]
        found[output] = "\n".join(bodies)
    return found


def histories(target) -> dict[str, str]:
    sfn = target.client("stepfunctions")
    found = {}
    for execution in paginate(sfn.list_executions, "executions", stateMachineArn=target.outputs["StateMachineArn"]):
        events = history(sfn, execution["executionArn"])
        described = sfn.describe_execution(executionArn=execution["executionArn"])
        found[execution["executionArn"]] = json.dumps(events, default=str) + json.dumps(described, default=str)
    return found


def tables(target) -> dict[str, str]:
    outputs = ["OrdersTableName", "InventoryTableName"]
    if target.outputs.get("FaultRulesTableName"):
        outputs.append("FaultRulesTableName")
    return {output: json.dumps(scan(target, output)) for output in outputs}


@pytest.fixture(scope="module")
def everything(target, every_path):
    """Every place a token could have leaked to, after orders that took every path (every_path)."""
    tokens = payment_tokens(target)
    assert {"tok_approve", "tok_decline", "tok_hang"} <= tokens  # the payments table does hold them
    return {"tokens": tokens, "logs": logs(target), "queues": queue_messages(target),
            "histories": histories(target), "tables": tables(target)}


@pytest.mark.parametrize("where", ["logs", "queues", "histories", "tables"])
def test_no_card_token_outside_the_payments_table(everything, where):
    sources = everything[where]
    assert sources, f"nothing to read in {where}"
    assert any(text for text in sources.values()), f"nothing to read in {where}: the test saw nothing"
    leaks = {name: sorted(set(TOKEN_SHAPE.findall(text)) | {t for t in everything["tokens"] if t in text})
             for name, text in sources.items()}
    assert {name: found for name, found in leaks.items() if found} == {}


def test_the_parked_saga_message_carries_ids_not_customer_data(everything, target):
    if not target.outputs.get("FaultRulesTableName"):
        pytest.skip("no fault injection on this stack: no saga was parked")
    bodies = [json.loads(line) for line in everything["queues"]["ParkedSagasQueueUrl"].splitlines() if line]
    assert bodies, "the parked saga's message is on the queue"
    for body in bodies:
        assert "payment_token" not in json.dumps(body)
        assert "token" not in body
