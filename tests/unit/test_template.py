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


def test_cfn_lint_reports_nothing_not_even_an_informational_check():
    # One run for errors, warnings and the informational checks (the retention settings' I3011, I3013 among them).
    done = subprocess.run([str(BIN / "cfn-lint"), "--include-checks", "I", "--", str(ROOT / "template.yaml")],
                          capture_output=True, text=True, check=False, timeout=300)
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


def successors(state: dict) -> list[str]:
    """Every state a state can go to: Next, its Catches, a Choice's branches and Default."""
    found = [state["Next"]] if "Next" in state else []
    found += [c["Next"] for c in state.get("Catch", [])]
    found += [c["Next"] for c in state.get("Choices", [])] + ([state["Default"]] if "Default" in state else [])
    return found


def test_every_next_and_catch_target_exists_and_every_state_is_reachable():
    def reach(states: dict, start: str) -> set[str]:
        reachable, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name in reachable:
                continue
            assert name in states, f"missing state {name}"
            reachable.add(name)
            todo += successors(states[name])
        return reachable

    assert reach(STATES, ASL["StartAt"]) == set(STATES)
    processor = STATES["AuthorizePayments"]["ItemProcessor"]
    assert reach(processor["States"], processor["StartAt"]) == set(processor["States"])
    inner = set(processor["States"])
    assert not inner & set(STATES), "state names are unique across the whole machine"


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
    # Every forward step also retries what a crashed or timed-out sandbox produces: every step is idempotent and
    # fenced, so its repeat finds what the dead attempt left (no sale is cancelled because a sandbox died).
    crash = {"Runtime.ExitError", "Sandbox.Timedout", "Lambda.Unknown", "States.Timeout"}
    inner = STATES["AuthorizePayments"]["ItemProcessor"]["States"]["AuthorizeMethod"]
    assert {e for r in inner["Retry"] for e in r["ErrorEquals"]} == transient | crash
    assert STATES["AuthorizePayments"]["Catch"][-1]["ErrorEquals"] == ["States.ALL"]
    for name in ("ReserveInventory", "ApplyCoupon", "AuthorizePayment", "ConfirmOrder"):
        state = STATES[name]
        retried = {e for r in state["Retry"] for e in r["ErrorEquals"]}
        assert retried == transient | crash, name
        assert all(r["JitterStrategy"] == "FULL" and r["BackoffRate"] > 1 and r["MaxDelaySeconds"]
                   for r in state["Retry"])
        catches = [set(c["ErrorEquals"]) for c in state["Catch"]]
        assert catches[-1] == {"States.ALL"}, name
        named = set().union(*catches[:-1]) if len(catches) > 1 else set()
        assert named <= business, f"{name} catches unknown names {named - business}"


def test_every_compensation_retries_and_then_fails_the_execution_at_its_own_state():
    """No Catch: a compensation that spends its retries fails the execution right there, so that RedriveExecution
    resumes the rollback at that state (docs/operations.md). Parking is the failure's business (ParkSaga's rule)."""
    for name in ("RefundPayment", "VoidPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder"):
        state = STATES[name]
        assert state["Retry"][0]["ErrorEquals"] == ["States.ALL"]
        assert "Catch" not in state, name
    assert not {"ParkSaga", "CompensationFailed"} & set(STATES)


def test_a_failed_execution_of_this_state_machine_runs_park_saga():
    """ParkSaga's EventBridge rule: Step Functions' status change events, FAILED, of this state machine only."""
    event = TEMPLATE.properties("ParkSagaFunction")["Events"]["ExecutionFailed"]
    assert event["Type"] == "EventBridgeRule"
    assert event["Properties"]["Pattern"] == {
        "source": ["aws.states"], "detail-type": ["Step Functions Execution Status Change"],
        "detail": {"status": ["FAILED"], "stateMachineArn": [{"Ref": "OrderSagaStateMachine"}]}}


def compensation_paths(state_name: str) -> list[list[str]]:
    """Every sequence of compensations from an entry point to the end (a Choice splits it: coupon or not). The
    branch where RefundPayment found the order past the pivot and finished it (FinishedForward -> SagaConfirmed)
    compensates nothing, by design: it is left out here and checked on its own."""
    state = STATES.get(state_name)
    if state_name == "SagaConfirmed":
        return []
    if state is None or state["Type"] in ("Fail", "Succeed"):
        return [[]]
    if state["Type"] == "Choice":
        return [path for branch in successors(state) for path in compensation_paths(branch)]
    return [[state_name, *rest] for rest in compensation_paths(state["Next"])]


# "Lease": ReserveInventory's first write, the order's lease (the saga EXECUTING), which CancelOrder ends.
UNDO = {"Lease": "CancelOrder", "ReserveInventory": "ReleaseInventory", "ApplyCoupon": "ReleaseCoupon",
        "AuthorizePayment": "VoidPayment", "AuthorizePayments": "VoidPayment", "ConfirmOrder": "RefundPayment"}
ORDER = ["RefundPayment", "VoidPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder"]


@pytest.mark.parametrize(("step", "effects_before"), [
    ("ReserveInventory", set()),
    ("ApplyCoupon", {"Lease", "ReserveInventory"}),
    ("AuthorizePayment", {"Lease", "ReserveInventory", "ApplyCoupon"}),
    ("AuthorizePayments", {"Lease", "ReserveInventory", "ApplyCoupon"}),
    ("ConfirmOrder", {"Lease", "ReserveInventory", "ApplyCoupon", "AuthorizePayment"})])
def test_every_failure_path_compensates_every_step_that_may_have_had_an_effect(step, effects_before):
    """On every branch: each effect is undone (a coupon's only where the order has one), in reverse order."""
    refund_also_voids = {"VoidPayment": {"VoidPayment", "RefundPayment"}}
    for catch in STATES[step]["Catch"]:
        paths = compensation_paths(catch["Next"])
        may_have_effect = set(effects_before)
        if catch["ErrorEquals"] == ["States.ALL"]:
            may_have_effect.add(step)  # a timeout or crash may come after the write
        if step == "ReserveInventory" and catch["ErrorEquals"] != ["OrderLocked"]:
            may_have_effect.add("Lease")  # its first write took the lease, unless another execution holds it
        for done in may_have_effect:
            needed = refund_also_voids.get(UNDO[done], {UNDO[done]})
            if done == "ApplyCoupon":  # held only on the coupon branch: some branch must release it
                assert any(needed & set(path) for path in paths), (step, catch)
            else:
                assert all(needed & set(path) for path in paths), (step, catch, done, paths)
        for path in paths:
            assert path == sorted(path, key=ORDER.index), "compensations run in reverse order"


def test_the_pivot_lease_outlasts_confirm_orders_worst_case():
    """From its stock commit on, ConfirmOrder holds the order for PivotLeaseSeconds: every attempt at its full
    TimeoutSeconds plus the longest retry waits must fit, so a live ConfirmOrder is never taken over."""
    from scripts.generate_timing_table import worst_case  # the arithmetic of docs/timeouts.md's table

    worst = worst_case(STATES["ConfirmOrder"])
    assert worst == 79
    assert int(TEMPLATE.parameters["PivotLeaseSeconds"]) >= worst
    assert int(TEMPLATE.parameters["LeaseSeconds"]) < worst  # why the pivot needs a lease of its own


def test_only_refund_payment_may_finish_an_order_forward():
    """Past the pivot the saga only goes forward: the one way out of the compensations to success is RefundPayment
    (which follows ConfirmOrder) finding the order past the pivot; its Choice tests the flag it sets."""
    leading = [name for name, state in STATES.items() if "SagaConfirmed" in successors(state)]
    assert leading == ["FinishedForward"]
    assert [name for name, state in STATES.items() if "FinishedForward" in successors(state)] == ["RefundPayment"]
    assert STATES["FinishedForward"]["Choices"] == [{"Variable": "$.confirmed", "IsPresent": True,
                                                     "Next": "SagaConfirmed"}]
    assert STATES["SagaConfirmed"]["Type"] == "Succeed"


def test_the_plain_path_keeps_its_transitions_and_a_coupon_adds_two():
    """ReserveInventory (which takes the lease first), RouteOrder, AuthorizePayment, ConfirmOrder: 4 states, 4
    transitions (issue 21: CreateOrder was a state and a Lambda invocation of its own, 5)."""
    def happy(saga: dict) -> list[str]:
        path, name = [], ASL["StartAt"]
        while name:
            path.append(name)
            state = STATES[name]
            if state["Type"] == "Choice":
                name = next((c["Next"] for c in state["Choices"]
                             if (c["Variable"] == "$.coupon" and "coupon" in saga)
                             or (c["Variable"] == "$.methods[1]" and len(saga.get("methods", [])) > 1)),
                            state["Default"])
            else:
                name = state.get("Next")
        return path

    plain = happy({})
    assert plain == ["ReserveInventory", "RouteOrder", "AuthorizePayment", "ConfirmOrder"]
    assert len(happy({"coupon": "X"})) == len(plain) + 2
    assert happy({"methods": [1, 2]})[2] == "AuthorizePayments"


def test_the_asl_uses_no_jsonata_and_no_variables():
    text = ASL_PATH.read_text()
    assert "JSONata" not in text
    assert '"Assign"' not in text
    assert "{%" not in text


def test_the_readme_diagram_is_generated_from_the_asl():
    from scripts.generate_diagram import block

    assert block() in (ROOT / "README.md").read_text(), "run `make docs` to regenerate the README's diagram"
