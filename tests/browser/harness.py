"""What the browser tests stand on, and what `make docs` takes its screenshots with (the same browser):
one embedded stack with its console, the scenarios placed on it, and headless Chromium driven by Playwright.

Chromium is Debian's (`apt-get install chromium chromium-driver`): `playwright install` cannot download a
browser here, so Playwright drives the system binary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from order_saga.models import order_id_for
from sagafaults.handler import rule_entry, scope_of
from sagafaults.rules import Rule

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("SAGA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_PACKAGES = "chromium chromium-driver"
# Without the background-networking switches Chromium waits on services it cannot reach on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
START_TIMEOUT = 120.0
SCENARIO_TIMEOUT = 90.0


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed: `make venv` installs requirements-dev.txt"
    if not (CHROMIUM.is_file() or shutil.which(str(CHROMIUM))):
        return (f"Chromium is not installed ({CHROMIUM} is missing): install Debian's packages with "
                f"`sudo apt-get install -y {CHROMIUM_PACKAGES}` (.ci/run does it in CI)")
    return None


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - the local stack's own URL
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    workdir: Path
    console: str
    api: str
    endpoint: str
    region: str
    outputs: dict[str, Any]

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id="local", aws_secret_access_key="local")

    def signed_in(self, username: str = "browser") -> tuple[str, str]:
        """(ID token, sub) of a customer of the stack's user pool."""
        from sagalocal.signin import sign_in

        signed = sign_in(self.client("cognito-idp"), self.outputs["UserPoolId"], self.outputs["UserPoolClientId"],
                         username)
        return signed["IdToken"], signed["sub"]

    def log_tail(self) -> str:
        return (self.workdir / "stack.log").read_text(errors="replace")[-3000:]


def start_stack(workdir: Path) -> Stack:
    """`sagalocal up` as a person runs it (catalog seeded, console served), plus the fault rules table."""
    ready = workdir / "ready.json"
    seed = f"{sys.executable} {ROOT / 'scripts/seed_catalog.py'} --stack-outputs .local/stack-outputs.json " \
           f"{ROOT / 'events/catalog.json'}"
    log = open(workdir / "stack.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "sagalocal", "up", "--template", str(ROOT / "template.yaml"), "--port", "0",
         "--ready-file", str(ready), "--parameter-overrides", "FaultInjection=true", "--no-cold-start-delay",
         "--init", seed],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(f"sagalocal up exited with {process.returncode}: "
                               f"{(workdir / 'stack.log').read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            stop_stack_process(process)
            raise RuntimeError(f"sagalocal up did not write its ready file in {START_TIMEOUT:.0f} s")
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    if not info.get("console"):
        stop_stack_process(process)
        raise RuntimeError(f"sagalocal up served no console: {(workdir / 'stack.log').read_text()[-2000:]}")
    return Stack(process, workdir, info["console"], info["api"], info["endpoint"], info["region"], info["outputs"])


def stop_stack_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Placed:
    name: str
    token: str
    order_id: str
    execution_arn: str
    status: str = "RUNNING"
    error: str | None = None


def add_fault(stack: Stack, rule: dict[str, Any]) -> None:
    """A rule for the handlers' fault injector (template parameter FaultInjection): it reads this table."""
    parsed = Rule.from_json(rule)
    ddb, table, key = stack.client("dynamodb"), stack.outputs["FaultRulesTableName"], {"scope": {"S": scope_of(parsed)}}
    ddb.update_item(TableName=table, Key=key, UpdateExpression="SET by_id = if_not_exists(by_id, :empty)",
                    ExpressionAttributeValues={":empty": {"M": {}}})
    ddb.update_item(TableName=table, Key=key, UpdateExpression="SET by_id.#id = :entry",
                    ExpressionAttributeNames={"#id": parsed.id},
                    ExpressionAttributeValues={":entry": rule_entry(parsed)})


def place_order(stack: Stack, name: str, token: str | list[str],
                fault: dict[str, Any] | list[dict[str, Any]] | None = None) -> Placed:
    """One Blue mug (12.50), paid with one card, or split evenly over the cards of a list of tokens; with a fault
    rule (or several) scoped to the order."""
    key = f"browser-{name}-{uuid.uuid4().hex[:10]}"
    id_token, sub = stack.signed_in()
    order_id = order_id_for(sub, key)
    for rule in [fault] if isinstance(fault, dict) else fault or []:
        add_fault(stack, {**rule, "order_id": order_id})
    payment: dict[str, Any] = {"payment_token": token} if isinstance(token, str) else {
        "payment": [{"token": t, "amount": 1250 // len(token) + (1250 % len(token) if i == 0 else 0)}
                    for i, t in enumerate(token)]}
    status, accepted = http("POST", f"{stack.api}/orders", {"items": [{"sku": "MUG-BLUE", "quantity": 1}], **payment},
                            {"Idempotency-Key": key, "Authorization": f"Bearer {id_token}"})
    if status != 202:
        raise RuntimeError(f"POST /orders answered {status}: {accepted}")
    arn = f"{stack.outputs['StateMachineArn'].replace(':stateMachine:', ':execution:')}:{accepted['order_id']}"
    return Placed(name, str(token), accepted["order_id"], arn)


def wait_ended(stack: Stack, placed: Placed, timeout: float = SCENARIO_TIMEOUT) -> Placed:
    """Blocks on the stack's wait route (no polling); past the deadline, says the last status seen."""
    query = urllib.parse.urlencode({"arn": placed.execution_arn, "timeout": timeout})
    http("GET", f"{stack.endpoint}/_sagalocal/executions/wait?{query}", timeout=timeout + 10)
    described = stack.client("stepfunctions").describe_execution(executionArn=placed.execution_arn)
    placed.status, placed.error = described["status"], described.get("error")
    if placed.status == "RUNNING":
        raise TimeoutError(f"{placed.name} ({placed.order_id}) still RUNNING after {timeout:.0f} s")
    return placed


# The scenarios the pages are checked on: name -> (test card token, fault at the Lambda seam or None).
SCENARIOS: dict[str, tuple[str | list[str], dict[str, Any] | None]] = {
    "approved": ("tok_approve", None),
    "declined": ("tok_decline", None),
    "transient": ("tok_transient_2", None),  # two PaymentGatewayUnavailable, retried, then approved
    "split-declined": (["tok_approve", "tok_decline"], None),  # two cards; the second declined: both voided
    # Declined, and ReleaseInventory fails on its 4 attempts (1 + 3 retries): the compensation spends its retries,
    # the execution fails there and ParkSaga parks it. The rule is spent then, so a redrive of it succeeds.
    "parked": ("tok_decline", {"action": "invocation-error", "function": "ReleaseInventory",
                               "error": "TransientError", "count": 4}),
}


def wait_parked(stack: Stack, placed: Placed, timeout: float = SCENARIO_TIMEOUT) -> dict[str, Any]:
    """The order once ParkSaga parked it (saga_status FAILED). ParkSaga runs after the execution failed, on its
    status change event (EventBridge, asynchronously): polled, within a deadline."""
    ddb, deadline, status = stack.client("dynamodb"), time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        item = ddb.get_item(TableName=stack.outputs["OrdersTableName"], Key={"order_id": {"S": placed.order_id}},
                            ConsistentRead=True).get("Item") or {}
        status = item.get("saga_status", {}).get("S")
        if status == "FAILED":
            return item
        time.sleep(0.2)
    raise TimeoutError(f"{placed.name} ({placed.order_id}) not parked after {timeout:.0f} s: saga {status}")


def place_scenarios(stack: Stack) -> dict[str, Placed]:
    placed = {name: place_order(stack, name, token, fault) for name, (token, fault) in SCENARIOS.items()}
    ended = {name: wait_ended(stack, p) for name, p in placed.items()}
    wait_parked(stack, ended["parked"])
    return ended
