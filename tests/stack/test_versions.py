"""A deploy in the middle of sagas: each execution runs one version of the saga start to end, new ones the new version.

The embedded stack of a copy of the project is redeployed (`POST /_sagalocal/update`, what `sagalocal update` and
`sam deploy` do) after the domain code changed (src/, the layer of every function: every function publishes a new
version, and so does the state machine whose tasks name them), while sagas wait in AuthorizePayment (a fault rule's
delay) with ReserveInventory behind them and ConfirmOrder ahead. Every task records the version it
ran: the ARN it was invoked as (Powertools logs the context's invoked_function_arn) and whether it ran the new code
(the new code logs a marker). What must hold:
  * every task of an execution ran the function version its state machine version names, and the code of that
    version (the marker exactly in version 2);
  * the sagas in flight ran version 1 throughout, ConfirmOrder included, although it ran after the code changed;
  * the sagas started after the deploy ran version 2 throughout.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from order_saga.models import order_id_for
from tests.stack.conftest import ROOT, start_embedded, stop
from tests.stack.support import (
    FaultRules,
    Target,
    path_of,
    place,
    post_order,
    wait_all,
    wait_for_execution,
    wait_until,
)

pytestmark = pytest.mark.embedded_only(reason="redeploys the embedded stack of a copy of the project")

MARKER = "v2-marker"
HELD = 3  # sagas in flight during the deploy
HOLD_MS = 10_000  # AuthorizePayment's delay: under its 14 s timeout, longer than the code change and the deploy's start
TASKS = ("ReserveInventory", "AuthorizePayment", "ConfirmOrder")


@pytest.fixture(scope="module")
def copy_stack(tmp_path_factory: pytest.TempPathFactory):
    """The project's template and code copied, and an embedded stack of the copy (so its code can change)."""
    workdir = tmp_path_factory.mktemp("versions")
    project = workdir / "project"
    project.mkdir()
    for name in ("template.yaml", "samconfig.toml"):
        shutil.copy(ROOT / name, project / name)
    for name in ("functions", "src", "statemachine"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    process, target = start_embedded(workdir, template=project / "template.yaml")
    try:
        yield project, target
    finally:
        stop(process)


def redeploy(target: Target) -> dict[str, Any]:
    request = urllib.request.Request(f"{target.endpoint}/_sagalocal/update", method="POST", data=b"")  # noqa: S310
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - the stack under test
        return dict(json.loads(response.read()))


def wait_until_in(target: Target, arn: str, state: str, timeout: float = 60.0) -> None:
    """Until the execution has entered `state` (and stays there: the fault rule holds its task)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(visit.name == state for visit in path_of(target, arn)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{arn} did not reach {state} in {timeout:.0f} s")


def ran(target: Target) -> dict[str, list[dict[str, Any]]]:
    """What each saga task ran, from the functions' logs: order id -> [{step, arn, marker, at}]."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in Path(str(target.log_dir)).glob("*Function.log"):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("message") == "step succeeded" and entry.get("step") in TASKS:
                at = datetime.datetime.strptime(entry["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z").timestamp()
                found.setdefault(entry["order_id"], []).append(
                    {"step": entry["step"], "arn": entry["function_arn"], "marker": entry.get("code_marker"),
                     "at": at})
    return found


def versions_named(target: Target, execution: dict[str, Any]) -> dict[str, str]:
    """The function version each task of the execution's state machine version invokes: task -> version ARN."""
    definition = json.loads(target.client("stepfunctions").describe_state_machine(
        stateMachineArn=execution["stateMachineVersionArn"])["definition"])
    return {name: state["Parameters"]["FunctionName"] for name, state in definition["States"].items()
            if name in TASKS}


def test_sagas_in_flight_keep_their_version_through_a_deploy_and_new_sagas_take_the_new_one(copy_stack):
    project, target = copy_stack
    faults, customer = FaultRules(target), "cust-versions"
    sub = target.sign_in(customer)[1]
    keys = [f"held-{n}-{uuid.uuid4().hex[:8]}" for n in range(HELD)]
    holds = [{"action": "invocation-add-delay", "function": "AuthorizePayment", "delay_ms": HOLD_MS,
              "order_id": order_id_for(sub, key)} for key in keys]
    with faults.applied(*holds):
        # Placed side by side: the first held saga's hold runs from when it enters AuthorizePayment, and placing the
        # others one after another (and polling for each) had to fit in it on a loaded machine before the change.
        with ThreadPoolExecutor(HELD) as pool:
            held = list(pool.map(lambda key: place(target, [{"sku": "MUG-BLUE", "quantity": 1}], key=key,
                                                   customer=customer), keys))
            list(pool.map(lambda order: wait_until_in(target, order["execution_arn"], "AuthorizePayment"), held))
        step = project / "src" / "order_saga" / "step.py"  # the domain code every function's layer holds
        changed_at = time.time()
        step.write_text(step.read_text().replace('logger.info("step succeeded")',
                                                 f'logger.info("step succeeded", extra={{"code_marker": "{MARKER}"}})'))
        deployed = redeploy(target)
    assert {f["version"] for f in deployed["functions"].values()} == {"2"}, deployed
    [machine] = deployed["state_machines"].values()
    assert machine["versions"] == [f"{target.outputs['StateMachineArn']}:2"]
    fresh = [place(target, [{"sku": "MUG-BLUE", "quantity": 1}], customer=customer) for _ in range(2)]

    ended = wait_all(target, [o["execution_arn"] for o in held + fresh], timeout=120)
    tasks = ran(target)
    for order in held + fresh:
        execution = ended[order["execution_arn"]]
        assert execution["status"] == "SUCCEEDED", execution
        assert execution["stateMachineAliasArn"] == target.outputs["StateMachineAliasArn"]
        version = execution["stateMachineVersionArn"].rsplit(":", 1)[1]
        assert version == ("1" if order in held else "2"), (order["order_id"], version)
        named = versions_named(target, execution)
        mine = tasks.get(order["order_id"], [])
        assert sorted(t["step"] for t in mine) == sorted(TASKS), mine
        for task in mine:  # the version its state machine version names, and that version's code
            assert task["arn"] == named[task["step"]], (order["order_id"], task)
            assert task["arn"].rsplit(":", 1)[1] == version, (order["order_id"], task)
            assert (task["marker"] == MARKER) == (version == "2"), (order["order_id"], task)
    for order in held:  # in flight indeed: their last step ran the old version after the code had changed
        confirm = next(t for t in tasks[order["order_id"]] if t["step"] == "ConfirmOrder")
        assert confirm["at"] > changed_at, (order["order_id"], confirm)


def test_a_fix_deployed_for_a_compensation_reaches_the_saga_it_parked(copy_stack):
    """docs/operations.md: fix the cause, redrive. A compensation with a defect spends its retries and the saga is
    parked; the fix is deployed (a new VoidPayment version, the alias `live` moved to it); the redrive runs the
    definition the execution started with (RedriveExecution's rule), whose compensations invoke the alias: the fix
    runs and finishes the saga. (Pinned to a version, the redrive would run the defect again for ever.)"""
    from scripts.redrive_parked import Operator

    project, target = copy_stack
    void = project / "functions" / "void_payment" / "app.py"
    healthy = void.read_text()
    defect = "    raise RuntimeError('a defect in VoidPayment')  # deployed by the test\n"
    void.write_text(healthy.replace("    now = now_ms()\n", "    now = now_ms()\n" + defect, 1))
    assert defect in void.read_text()
    broken = redeploy(target)["functions"]
    customer = "cust-fix"
    sub = target.sign_in(customer)[1]
    key = f"fix-{uuid.uuid4().hex[:8]}"
    body = {"items": [{"sku": "MUG-BLUE", "quantity": 2}],
            "payment": [{"token": "tok_approve", "amount": 1250}, {"token": "tok_decline", "amount": 1250}]}
    status, answer = post_order(target, json.dumps(body).encode(), key, customer=customer)
    assert status == 202, answer
    order_id = order_id_for(sub, key)
    arn = target.execution_arn(order_id)
    failed = wait_for_execution(target, arn, timeout=120)
    assert (failed["status"], failed.get("error")) == ("FAILED", "RuntimeError"), failed
    wait_until(lambda: (target.order(order_id) or {}).get("saga_status") == "FAILED", 60, "parked")
    void.write_text(healthy)  # the fix
    fixed = redeploy(target)["functions"]
    assert fixed["VoidPaymentFunction"]["version"] != broken["VoidPaymentFunction"]["version"]
    (outcome,) = Operator(target.outputs, client=target.client, timeout=120).run([order_id])
    assert (outcome.redriven, outcome.saga_status) == (True, "COMPENSATED"), outcome.line()
    redriven = target.client("stepfunctions").describe_execution(executionArn=arn)
    assert redriven["stateMachineVersionArn"] == failed["stateMachineVersionArn"]  # the same definition
