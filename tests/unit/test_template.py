"""The template and the state machine agree with each other and with the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from order_saga import errors
from sagalocal.template import Template

ROOT = Path(__file__).resolve().parents[2]
ASL_PATH = ROOT / "statemachine/order_saga.asl.json"
ASL = json.loads(ASL_PATH.read_text())
TEMPLATE = Template(ROOT / "template.yaml")
MACHINE = TEMPLATE.properties("OrderSagaStateMachine")
STATES = ASL["States"]
TASKS = {name: state for name, state in STATES.items() if state["Type"] == "Task"}
BIN = Path(sys.executable).parent


def function_of(state: dict) -> str:
    placeholder = state["Parameters"]["FunctionName"]
    return re.fullmatch(r"\$\{(\w+)Arn\}", placeholder).group(1)


def test_cfn_lint_reports_nothing():
    done = subprocess.run([str(BIN / "cfn-lint"), str(ROOT / "template.yaml")], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("sam", path=str(BIN)) is None, reason="aws-sam-cli is not installed in the venv")
def test_sam_validate_lint_passes():
    done = subprocess.run([str(BIN / "sam"), "validate", "--lint", "--template", str(ROOT / "template.yaml")],
                          capture_output=True, text=True, check=False, timeout=300,
                          env={**os.environ, "SAM_CLI_TELEMETRY": "0"})
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_placeholder_is_substituted_and_every_substitution_used():
    placeholders = set(re.findall(r"\$\{(\w+)\}", ASL_PATH.read_text()))
    assert placeholders == set(MACHINE["DefinitionSubstitutions"])


def test_every_next_and_catch_target_exists_and_every_state_is_reachable():
    reachable, todo = set(), [ASL["StartAt"]]
    while todo:
        name = todo.pop()
        if name in reachable:
            continue
        assert name in STATES, f"missing state {name}"
        reachable.add(name)
        state = STATES[name]
        todo += [state["Next"]] if "Next" in state else []
        todo += [c["Next"] for c in state.get("Catch", [])]
    assert reachable == set(STATES)


def test_every_state_has_a_comment():
    assert all(state.get("Comment") for state in STATES.values())


COLD_INIT_BUDGET_S = 3  # docs/architecture.md: a cold start's init counts against the task, not the Lambda


def test_every_task_outlasts_its_function_even_on_a_cold_start():
    """The Lambda answers (Sandbox.Timedout at worst) before its task gives up, cold init included."""
    for name, state in TASKS.items():
        props = TEMPLATE.properties(function_of(state))
        timeout = int(TEMPLATE.resolve(props.get("Timeout", 3), name))
        assert state["TimeoutSeconds"] >= timeout + COLD_INIT_BUDGET_S, name


def test_forward_steps_retry_only_transient_errors_and_catch_business_errors_then_all():
    transient = set(errors.TRANSIENT_ERROR_NAMES) | {
        "Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException", "Lambda.ClientExecutionTimeoutException"}
    business = {cls.__name__ for cls in vars(errors).values()
                if isinstance(cls, type) and issubclass(cls, errors.BusinessError) and cls is not errors.BusinessError}
    for name in ("CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder"):
        state = STATES[name]
        retried = {e for r in state["Retry"] for e in r["ErrorEquals"]}
        assert retried == transient, name
        assert all(r["JitterStrategy"] == "FULL" and r["BackoffRate"] > 1 and r["MaxDelaySeconds"]
                   for r in state["Retry"])
        catches = [set(c["ErrorEquals"]) for c in state["Catch"]]
        assert catches[-1] == {"States.ALL"}, name
        named = set().union(*catches[:-1]) if len(catches) > 1 else set()
        assert named <= business, f"{name} catches unknown names {named - business}"


def test_every_compensation_retries_and_parks_when_its_budget_is_spent():
    for name in ("RefundPayment", "VoidPayment", "ReleaseInventory", "CancelOrder"):
        state = STATES[name]
        assert state["Retry"][0]["ErrorEquals"] == ["States.ALL"]
        assert state["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": f"$.failures.{name}",
                                   "Next": "ParkSaga"}]
    assert STATES["ParkSaga"]["Next"] == "CompensationFailed"
    assert STATES["CompensationFailed"]["Error"] == "CompensationFailed"


def compensations_after(state_name: str) -> list[str]:
    """Follow Next from a compensation entry point to the end."""
    path = []
    while state_name in TASKS:
        path.append(state_name)
        state_name = STATES[state_name]["Next"]
    return path


@pytest.mark.parametrize(("step", "effects_before"), [
    ("CreateOrder", set()), ("ReserveInventory", {"CreateOrder"}),
    ("AuthorizePayment", {"CreateOrder", "ReserveInventory"}),
    ("ConfirmOrder", {"CreateOrder", "ReserveInventory", "AuthorizePayment"})])
def test_every_failure_path_compensates_every_step_that_may_have_had_an_effect(step, effects_before):
    undo = {"CreateOrder": "CancelOrder", "ReserveInventory": "ReleaseInventory",
            "AuthorizePayment": "VoidPayment", "ConfirmOrder": "RefundPayment"}
    refund_also_voids = {"VoidPayment": {"VoidPayment", "RefundPayment"}}
    for catch in STATES[step]["Catch"]:
        path = compensations_after(catch["Next"])
        may_have_effect = set(effects_before)
        if catch["ErrorEquals"] == ["States.ALL"]:
            may_have_effect.add(step)  # a timeout or crash may come after the write
        for done in may_have_effect:
            assert refund_also_voids.get(undo[done], {undo[done]}) & set(path), (step, catch, done)
        order = ["RefundPayment", "VoidPayment", "ReleaseInventory", "CancelOrder"]
        assert path == sorted(path, key=order.index), "compensations run in reverse order"


def test_the_asl_uses_no_jsonata_and_no_variables():
    text = ASL_PATH.read_text()
    assert "JSONata" not in text
    assert '"Assign"' not in text
    assert "{%" not in text
