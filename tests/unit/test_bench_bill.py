"""bench/bill.py: the full bill's arithmetic, from a measurement, and where its section goes in docs/benchmarks.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import bill  # noqa: E402

MEASURED = {"k": 3, "transitions": 5.0, "tasks": 4.0, "wru": 40.0, "rru": 2.0, "log_bytes": 5000.0, "events": 1.0,
            "functions": {"OrdersApiFunction": {"invocations": 1.0, "billed_ms": 20.0, "init_ms": 600},
                          "ReserveInventoryFunction": {"invocations": 1.0, "billed_ms": 6.0, "init_ms": 500},
                          "PublishOutcomeFunction": {"invocations": 1.0, "billed_ms": 10.0, "init_ms": 500}}}
SETTINGS = {"memory_gb": 0.5, "architecture": "x86_64", "event_queue_targets": 1}


def dollars(rows: list[tuple[str, str, float, float]], component: str) -> float:
    return next(d for name, _, _, d in rows if name.startswith(component))


def test_each_component_is_its_count_times_its_list_price_per_million_sagas():
    rows = bill.bill(MEASURED, SETTINGS, "x86_64")
    assert dollars(rows, "Step Functions") == pytest.approx(5 * 25.0)
    assert dollars(rows, "Lambda requests") == pytest.approx(3 * 0.20)
    assert dollars(rows, "Lambda duration") == pytest.approx(0.036 * 0.5 * 0.0000166667 * 1e6)
    assert dollars(rows, "Lambda INIT") == pytest.approx(0.01 * 1.6 * 0.5 * 0.0000166667 * 1e6)
    assert dollars(rows, "DynamoDB write") == pytest.approx(40 * 0.625)
    assert dollars(rows, "DynamoDB read") == pytest.approx(2 * 0.125)
    assert dollars(rows, "API Gateway") == pytest.approx(3.50)
    assert dollars(rows, "EventBridge") == pytest.approx(1.00)
    assert dollars(rows, "CloudWatch Logs") == pytest.approx(5000 / 1e9 * 0.50 * 1e6)
    assert dollars(rows, "SQS") == pytest.approx(1 * 0.40)
    # 10 sagas a second: the default rule's reservoir (1 a second) and 5% of the other 9, for each of two traces.
    assert dollars(rows, "X-Ray") == pytest.approx(2 * (1 + 0.05 * 9) / 10 * 5.00)


def test_arm64_costs_less_only_in_duration_and_init():
    x86, arm = bill.bill(MEASURED, SETTINGS, "x86_64"), bill.bill(MEASURED, SETTINGS, "arm64")
    differ = [a[0] for a, b in zip(x86, arm, strict=True) if a[3] != b[3]]
    assert [name.split(" (")[0] for name in differ] == ["Lambda duration", "Lambda INIT"]
    assert sum(r[3] for r in arm) < sum(r[3] for r in x86)


def test_the_section_replaces_its_old_self_and_keeps_the_rest_of_the_page(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nbefore\n")
    results = {"k": 3, "settings": SETTINGS, "paths": {"plain": MEASURED}, "date": "d", "commit": "c",
               "machine": "m", "load_start": [0, 0, 0], "load_end": [0, 0, 0]}
    bill.write_section(bill.section(results), page)
    bill.write_section(bill.section({**results, "commit": "c2"}), page)
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n")
    assert text.count(bill.BEGIN) == text.count(bill.END) == 1
    assert "commit `c2`" in text
    assert "commit `c`" not in text
    assert bill.kept_section(page).strip().startswith(bill.BEGIN)
    assert "| **total, arm64** |" in text


def test_the_template_gives_the_functions_memory_architecture_and_the_queues_outcome_events_go_to():
    settings = bill.template_settings()
    assert settings["architecture"] in ("x86_64", "arm64")
    assert 0.125 <= settings["memory_gb"] <= 10.24
    assert settings["event_queue_targets"] == 1  # OutcomeEventsRule -> OutcomeEventsQueue


def test_docs_publish_the_full_bill():
    assert bill.BEGIN in (ROOT / "docs" / "benchmarks.md").read_text()


BUILT = """
Transform: AWS::Serverless-2016-10-31
Resources:
  Machine:
    Type: AWS::Serverless::StateMachine
    Properties: {AutoPublishAlias: live, DeploymentPreference: {Type: ALL_AT_ONCE}, DefinitionUri: m.json}
  OrdersApi:
    Type: AWS::Serverless::Function
    Properties:
      Environment: {Variables: {STATE_MACHINE_ARN: !Ref MachineAliaslive}}
      Policies:
        - Statement:
            - Effect: Allow
              Action: states:StartExecution
              Resource: !Ref Machine
              Condition: {"ForAnyValue:StringEquals": {"states:StateMachineQualifier": [live]}}
            - Effect: Allow
              Action: states:DescribeExecution
              Resource: "*"
  Association:
    Type: AWS::WAFv2::WebACLAssociation
    Properties: {ResourceArn: x, WebACLArn: y}
Outputs:
  StateMachineAliasArn: {Value: !Ref MachineAliaslive}
"""


def test_ministack_gets_the_template_without_the_state_machine_alias_and_the_waf_association(tmp_path):
    import json

    import stacks

    (tmp_path / "template.yaml").write_text(BUILT)
    shimmed = json.loads(Path(stacks.ministack_template(str(tmp_path))).read_text())
    resources = shimmed["Resources"]
    assert set(resources) == {"Machine", "OrdersApi"}
    assert resources["Machine"]["Properties"] == {"DefinitionUri": "m.json"}
    function = resources["OrdersApi"]["Properties"]
    assert function["Environment"]["Variables"]["STATE_MACHINE_ARN"] == {"Ref": "Machine"}
    start, describe = function["Policies"][0]["Statement"]
    assert start == {"Effect": "Allow", "Action": "states:StartExecution", "Resource": {"Ref": "Machine"}}
    assert describe["Resource"] == "*"
    assert shimmed["Outputs"]["StateMachineAliasArn"]["Value"] == {"Ref": "Machine"}


def test_the_baseline_gets_only_the_overrides_its_template_declares(tmp_path):
    import stacks

    (tmp_path / "template.yaml").write_text("Parameters:\n  ReaperSchedule: {Type: String}\nResources: {}\n")
    assert stacks.declared(str(tmp_path / "template.yaml"), ["ReaperSchedule=rate(1 day)", "ApiClientRateLimit=9"]) \
        == ["ReaperSchedule=rate(1 day)"]


def test_transitions_are_the_states_entered_plus_each_task_retry():
    from common import billed_transitions

    events = [{"type": t} for t in ("ExecutionStarted", "TaskStateEntered", "TaskScheduled", "TaskFailed",
                                    "TaskScheduled", "TaskSucceeded", "TaskStateExited", "ChoiceStateEntered",
                                    "MapStateEntered", "TaskStateEntered", "TaskScheduled", "TaskSucceeded")]
    assert billed_transitions(events) == (4 + 1, 3)  # 4 states entered, one retry; 3 tasks scheduled


def test_a_path_order_splits_its_total_over_its_cards_the_remainder_on_the_first():
    from common import PATH_PRICE, path_order

    assert path_order("S", {}, ["tok"]) == {"items": [{"sku": "S", "quantity": 1}], "payment_token": "tok"}
    split = path_order("S", {"coupon": "FIVEOFF"}, ["a", "b", "c"])["payment"]
    assert sum(p["amount"] for p in split) == PATH_PRICE - 500
    assert [p["token"] for p in split] == ["a", "b", "c"]
    assert split[0]["amount"] >= split[1]["amount"] == split[2]["amount"]
