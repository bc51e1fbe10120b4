"""The stack under test: an embedded local stack started once per session, or any deployed stack.

A deployed stack (LocalStack, another emulator, AWS, or a second embedded stack started by hand) is named
by the environment, and then reached only through it:
  SAGA_API_URL        the API's base URL
  SAGA_AWS_ENDPOINT   the AWS endpoint (omit for real AWS)
  SAGA_STACK_OUTPUTS  a JSON file with the stack's Outputs (OrdersTableName, FaultRulesTableName, ...)
Fault injection works on any stack deployed with FaultInjection=true (the FaultRulesTableName output).
Tests that need the embedded stack itself are marked `embedded_only`, skip elsewhere with their reason,
and are listed at the end of the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sagalocal.stack import free_port
from tests.stack.support import Target

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180.0
SEED = f"{sys.executable} {ROOT / 'scripts/seed_catalog.py'} --stack-outputs .local/stack-outputs.json " \
       f"{ROOT / 'events/catalog.json'} --promotions {ROOT / 'events/promotions.json'}"
DEPLOYED = bool(os.environ.get("SAGA_API_URL"))
ENGINE = os.environ.get("SAGA_ENGINE") or ("deployed" if DEPLOYED else "embedded")


def side_by_side(sagas: int) -> int:
    """How many of a test's independent sagas run at once: all of them on the embedded stack, at most 4 on a deployed
    engine (on AWS the rows only take longer), fewer on an engine that says so (tests/stack/engines.py
    SAGAS_AT_ONCE: ministack, two)."""
    from tests.stack.engines import SAGAS_AT_ONCE

    return max(1, min(sagas, SAGAS_AT_ONCE.get(ENGINE, 4 if DEPLOYED else sagas)))

SKIPPED_ELSEWHERE: list[tuple[str, str]] = []
# The stack tier places hundreds of orders at once from one customer and one token (tests/stack/test_concurrency.py):
# its stacks lift the per-customer limits to their maximum; tests/stack/test_limits.py starts its own stack with low
# ones. They also raise the circuit breaker's threshold to its maximum: the matrix's slow and failing test cards,
# running side by side, are distinct failed payments, and five of them would open the breaker under rows that expect
# their authorizations to reach the gateway (tests/stack/test_breaker.py starts its own stack with a low one).
# A deployed stack under test is deployed with these too (docs/api.md, "Limits").
UNLIMITED = ("MaxOpenOrdersPerCustomer=1000", "ApiClientRateLimit=2000000000", "BreakerFailureThreshold=100")


def start_embedded(workdir: Path, *extra: str, overrides: tuple[str, ...] = (),
                   template: Path = ROOT / "template.yaml") -> tuple[subprocess.Popen[bytes], Target]:
    """`sagalocal up` in a subprocess, with fault injection on and the catalog seeded."""
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)  # a stale file from an earlier stack would read as this one
    log = open(workdir / "stack.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "sagalocal", "up", "--template", str(template), "--port", str(free_port()),
         "--ready-file", str(ready), "--init", SEED, "--parameter-overrides", "FaultInjection=true",
         "ReconcileAfterSeconds=1", *UNLIMITED, *overrides,
         *extra],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the local stack exited with {process.returncode}: "
                               f"{(workdir / 'stack.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the local stack did not start in {START_TIMEOUT:.0f} s")
        time.sleep(0.1)
    try:
        info = json.loads(ready.read_text())
    except BaseException:
        stop(process)  # not left serving after a failed start
        raise
    return process, Target(info["api"], info["endpoint"], info["outputs"], info["region"], embedded=True,
                           dynamodb_endpoint=info.get("dynamodb_endpoint"), log_dir=info.get("log_dir"),
                           workdir=str(workdir))


def relaxed_template(workdir: Path, minimums: dict[str, float]) -> Path:
    """A copy of template.yaml in `workdir` whose parameters named in `minimums` have those MinValues, beside links
    to the code it deploys. For the stacks that break the timing rules on purpose (tests/stack/test_leases.py: a 3 s
    lease and reservation, so that takeovers and expiries happen in seconds), which the template refuses on any
    deploy (docs/timeouts.md); everything else is template.yaml's."""
    text = (ROOT / "template.yaml").read_text()
    for name, minimum in minimums.items():
        text, found = re.subn(rf"(\n  {name}:\n(?:    .*\n)*?    MinValue: )\S+\n", rf"\g<1>{minimum:g}\n", text)
        assert found == 1, f"template.yaml has no MinValue for {name} to relax"
    folder = workdir / "relaxed-template"
    folder.mkdir(exist_ok=True)
    (folder / "template.yaml").write_text(text)
    for linked in ("src", "functions", "statemachine", "samconfig.toml"):
        if not (folder / linked).exists():
            (folder / linked).symlink_to(ROOT / linked)
    return folder / "template.yaml"


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def deployed_target() -> Target:
    outputs = json.loads(Path(os.environ["SAGA_STACK_OUTPUTS"]).read_text())
    return Target(os.environ["SAGA_API_URL"].rstrip("/"), os.environ.get("SAGA_AWS_ENDPOINT"), outputs,
                  os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory):
    if DEPLOYED:
        yield deployed_target()
        return
    process, stack = start_embedded(tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        stop(process)


@pytest.fixture(scope="session")
def faults(target: Target):
    """The portable fault rules (sagafaults), for stacks deployed with FaultInjection=true."""
    from tests.stack.support import FaultRules

    if not target.outputs.get("FaultRulesTableName"):
        pytest.skip("the stack was deployed without FaultInjection=true (no FaultRulesTableName output)")
    return FaultRules(target)


@pytest.fixture
def unique() -> str:
    """A suffix that makes this test's Idempotency-Keys its own on a shared stack."""
    return "-" + uuid.uuid4().hex[:12]


def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    # Tests that read what the whole tier left behind (marked runs_last) run after everything else.
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)
    expect_gaps(items, check_stale=not config.getoption("deselect"))
    if not DEPLOYED:
        return
    for item in items:
        marker = item.get_closest_marker("embedded_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "embedded stack only")
            item.add_marker(pytest.mark.skip(reason=f"embedded only: {reason}"))
            SKIPPED_ELSEWHERE.append((item.nodeid, reason))


def expect_gaps(items: list[Any], check_stale: bool = True) -> None:
    """The engine's known gaps (tests/stack/engines.py) as strict expected failures, each with its reason. A gap
    that names no collected test, on a run of the whole tier (no file left out, nothing deselected), is an error:
    the list must not rot."""
    from tests.stack.engines import gap, stale, unrunnable

    for item in items:
        reason = gap(ENGINE, item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=f"{ENGINE}: {reason}", strict=True, run=True))
        reason = unrunnable(ENGINE, item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=f"{ENGINE}, not run: {reason}", run=False))
    every_file = {f"tests/stack/{path.name}" for path in ROOT.glob("tests/stack/test_*.py")}
    if check_stale and {item.nodeid.split("::")[0] for item in items} >= every_file:
        rotten = stale(ENGINE, [item.nodeid for item in items])
        if rotten:
            raise pytest.UsageError(f"tests/stack/engines.py names {ENGINE} gaps that no test has: {rotten}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SKIPPED_ELSEWHERE:
        terminalreporter.write_sep("-", f"{len(SKIPPED_ELSEWHERE)} embedded-only tests skipped on the deployed target")
        for nodeid, reason in SKIPPED_ELSEWHERE:
            terminalreporter.write_line(f"{nodeid}: {reason}")


@pytest.fixture(scope="session")
def every_path(target: Target, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Orders that take every path the code has, for the tests that read what the stack did (runs_last):
    every scenario of events/scenarios.json (a coupon and split payments among them); a payment that never
    answers (the saga gives up and voids it, marked for reconciliation); a coupon released after a decline;
    with fault injection, a lost DynamoDB response on each forward step (the retry finds the step done: the
    repeat path) and a compensation that fails until the saga is parked; a refund (ConfirmOrder fails after
    its capture); an order abandoned mid-saga (stopped) that the reaper takes over; and the reaper's sweep,
    which reconciles what is due; and an order whose outcome event cannot be published (its stream record given
    up on, into the failure queue)."""
    from order_saga.models import order_id_for
    from scripts.scenarios import Customers, load_manifest, request_from_event, run_scenario
    from tests.stack.engines import GAPS
    from tests.stack.support import place, wait_for_execution

    events = ROOT / "events"
    customers = Customers(target.client("cognito-idp"), target.outputs)
    unique = "-" + uuid.uuid4().hex[:10]
    scenarios = load_manifest(events)["scenarios"]
    # The sagas below are independent orders, run side by side (one after another they were ~30 s of the stack
    # group's run, most of it waiting on retries and backoffs). What threads would race on is done first, here:
    # each customer signed in once (a sign-in sets the user's password, so two at once can refuse each other), and
    # every client this fixture uses made.
    for spec in scenarios:
        customers.auth(request_from_event(events / spec["event"])[2])
    sub = target.sign_in()[1]
    for service in ("stepfunctions", "dynamodb", "lambda", "sqs"):
        target.client(service)
    # The scenarios' outcomes are test_scenarios.py's to check, with an engine's known gaps as expected failures there
    # (tests/stack/engines.py: on ministack a step's error has no name, a Map's iterations no history). Here they are
    # checked on an engine without known gaps (the embedded stack, AWS); on the others they are only run, for what
    # they leave behind for the tests after them.
    checked = not GAPS.get(ENGINE)

    def scenario(spec: dict[str, Any]) -> str:
        result = run_scenario(spec, events, target.api_url, target.client("stepfunctions"), customers,
                              target.endpoint if target.embedded else None, key_suffix=unique)
        assert result.ok or not checked, result.problems
        return str(result.status)

    def placed_and_ended(token: str, coupon: str | None = None) -> str:
        placed = place(target, [{"sku": "MUG-BLUE", "quantity": 1}], token, coupon=coupon)
        return str(wait_for_execution(target, placed["execution_arn"], timeout=120)["status"])

    def faulted(token: str, rules: list[dict[str, Any]], coupon: str | None = None) -> str:
        key = uuid.uuid4().hex
        order_id = order_id_for(sub, key)
        added = [faults.add({**rule, "order_id": order_id}) for rule in rules]
        try:
            placed = place(target, [{"sku": "MUG-BLUE", "quantity": 1}], token, key=key, coupon=coupon)
            return str(wait_for_execution(target, placed["execution_arn"], timeout=180)["status"])
        finally:
            for rule in added:
                faults.remove(rule)

    runs: dict[str, tuple[Any, ...]] = {spec["name"]: (scenario, spec) for spec in scenarios}
    runs["hang"] = (placed_and_ended, "tok_hang")
    # A coupon held, then given back (ReleaseCoupon) when the card is declined.
    runs["coupon-released"] = (placed_and_ended, "tok_decline", "FIVEOFF")
    # A customer at the cap with ids of orders that are gone: the API prunes them, then places the order.
    runs["pruned-at-the-cap"] = (prune_at_the_cap, target)
    if target.outputs.get("FaultRulesTableName"):
        faults = request.getfixturevalue("faults")
        # ApplyCoupon never gets to hold: ReleaseCoupon runs first and leaves its tombstone.
        runs["coupon-tombstone"] = (faulted, "tok_approve", [{"action": "invocation-error", "function": "ApplyCoupon",
                                                              "error": "TransientError", "count": 4}], "FIVEOFF")
        # ReserveInventory never gets to reserve: ReleaseInventory runs first and leaves its tombstone.
        runs["release-first"] = (faulted, "tok_approve", [{"action": "invocation-error",
                                                           "function": "ReserveInventory", "error": "TransientError",
                                                           "count": 4}])
        runs["parked"] = (faulted, "tok_decline", [{"action": "invocation-error", "error": "TransientError",
                                                    "function": "ReleaseInventory", "count": 10}])
        # ConfirmOrder captures, then its invocation fails (crash after its write) on every attempt: RefundPayment
        # gives the money back.
        runs["refund"] = (faulted, "tok_approve", [{"action": "invocation-error", "function": "ConfirmOrder",
                                                    "prevent_execution": False, "count": None}])
        # ConfirmOrder fails before its commit (the pivot never lands): RefundPayment gives the authorization back,
        # its first transaction's answer lost, so its retry finds its own claim and the payment already undone.
        runs["refund-retried"] = (faulted, "tok_approve", [
            {"action": "invocation-error", "function": "ConfirmOrder", "error": "ReservationExpired"},
            {"action": "dynamodb-response-lost", "function": "RefundPayment", "operation": "TransactWriteItems",
             "count": 1}])
    if target.embedded:
        runs["repeats"] = (run_twice, target)
    with ThreadPoolExecutor(max_workers=side_by_side(len(runs))) as pool:
        futures = {name: pool.submit(*run) for name, run in runs.items()}
        ended: dict[str, Any] = {name: future.result() for name, future in futures.items()}
    # Orders the reaper must finish: written as the API writes them, with a lease and a reservation already
    # expired (an execution that died), one with its payment and one whose payment never got written.
    abandoned = [abandon(target, with_payment=True), abandon(target, with_payment=False, reserve=False)]
    # ...with a coupon: one whose redemption was held (the reaper gives it back), one whose ApplyCoupon never ran
    # (the reaper leaves a tombstone).
    abandoned += [abandon(target, with_payment=True, coupon="FIVEOFF", hold=True),
                  abandon(target, with_payment=True, coupon="FIVEOFF", hold=False)]
    # ...and a live order whose reservation expired: the reaper returns the stock and leaves the order be.
    live = abandon(target, with_payment=True, lease_ms=60_000)
    if target.outputs.get("OutcomeFailuresQueueUrl"):
        # An order whose outcome event can never be published: PublishOutcome sets its record aside in
        # OutcomeFailuresQueue, with its role (tests/stack/test_outcome_failures.py).
        from tests.stack.test_outcome_failures import give_up_on_a_poison_order

        ended["outcome-given-up"] = give_up_on_a_poison_order(target)
    lam = target.client("lambda")
    swept = json.loads(lam.invoke(FunctionName=target.outputs["ReaperFunctionName"], Payload=b"{}")["Payload"].read())
    assert "errorType" not in swept, swept
    # The sweep queued them (the schedule's own sweeps may have queued some first); ReaperWorker finishes them.
    assert swept["refused"] == [], swept
    from tests.stack.support import wait_until

    for order_id in abandoned:
        wait_until(lambda o=order_id: (target.order(o) or {}).get("saga_status") == "COMPENSATED", 60,
                   f"{order_id} compensated by ReaperWorker")
    wait_until(lambda: (target.reservation(live) or {}).get("status") == "RELEASED", 60,
               "the live order's expired reservation released by ReaperWorker")
    return {"ended": ended, "swept": swept}


def prune_at_the_cap(target: Target) -> str:
    """A fresh customer whose open-orders set holds 1000 ids (the most any cap allows) of orders that are gone, as a
    rollback or TTL leaves them: POST /orders reads them (BatchGetItem), takes them out on condition that each is
    still gone (ConditionCheckItem), and places the order. Its saga's status when it ends."""
    from order_saga.orders import CUSTOMER_PREFIX, MOST_OPEN_ORDERS
    from tests.stack.support import place, wait_for_execution

    customer = "cust-pruned-" + uuid.uuid4().hex[:8]
    sub = target.sign_in(customer)[1]
    gone = [f"ord_{uuid.uuid4().hex}" for _ in range(MOST_OPEN_ORDERS)]
    target.client("dynamodb").update_item(
        TableName=target.outputs["OrdersTableName"], Key={"order_id": {"S": CUSTOMER_PREFIX + sub}},
        UpdateExpression="ADD open_orders :ids", ExpressionAttributeValues={":ids": {"SS": gone}})
    placed = place(target, [{"sku": "MUG-BLUE", "quantity": 1}], customer=customer)
    held = (target.get("OrdersTableName", order_id=CUSTOMER_PREFIX + sub) or {}).get("open_orders") or set()
    assert set(held) <= {placed["order_id"]}, f"{len(held)} ids left after the prune"
    return str(wait_for_execution(target, placed["execution_arn"], timeout=120)["status"])


def run_twice(target: Target) -> str:
    """Lambda delivers at least once: each forward step of a saga invoked twice with the same event, as the
    state machine would after a lost invocation response. The second finds its step done. Then every compensation
    invoked once, late, on the COMPLETED order (a duplicate delivery, an operator's mistake): capture is the pivot,
    so each finds the order not its to undo (its claim refused, it reads the order) and the order stays COMPLETED,
    its money captured."""
    import urllib.request

    with urllib.request.urlopen(f"{target.endpoint}/_sagalocal/info", timeout=30) as response:  # noqa: S310
        functions = json.loads(response.read())["functions"]
    order_id = abandon(target, with_payment=True, reserve=False, lease_ms=60_000, coupon="FIVEOFF")
    lam = target.client("lambda")
    arn = target.execution_arn(order_id)

    def invoked(step: str, event: dict[str, Any]) -> dict[str, Any]:
        answer = lam.invoke(FunctionName=functions[f"{step}Function"], Payload=json.dumps(event).encode())
        return json.loads(answer["Payload"].read())

    # The input the API gives an order with a coupon: its id, its customer, its coupon.
    saga: dict[str, Any] = {"order_id": order_id, "customer_id": target.sign_in()[1], "coupon": "FIVEOFF"}
    for step in ("ReserveInventory", "ApplyCoupon", "AuthorizePayment", "ConfirmOrder"):
        answers = [invoked(step, {"saga": saga, "execution_id": arn}) for _ in range(2)]
        assert all("errorType" not in answer for answer in answers), (step, answers)
        saga = answers[0]
    order = target.order(order_id)
    assert order is not None
    assert order["saga_status"] == "COMPLETED", order
    for step in ("RefundPayment", "VoidPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder"):
        answer = invoked(step, {"saga": saga, "execution_id": arn, "redrive_count": 0})
        assert "errorType" not in answer, (step, answer)
    assert (target.order(order_id) or {}).get("saga_status") == "COMPLETED", target.order(order_id)
    assert (target.payment(order_id) or {}).get("status") == "CAPTURED", target.payment(order_id)
    return "COMPLETED"


def abandon(target: Target, with_payment: bool, reserve: bool = True, lease_ms: int = 1, coupon: str | None = None,
            hold: bool = False) -> str:
    """An order as the API writes it, without its execution. By default one whose execution died after
    ReserveInventory: its lease and its reservation have expired. With a coupon (5.00 off), and with its
    redemption held if `hold` (the execution died after ApplyCoupon)."""
    from order_saga.config import Timing
    from order_saga.dynamo import now_ms
    from order_saga.inventory import Inventory
    from order_saga.models import PricedLine
    from order_saga.orders import Orders
    from order_saga.payments import Payments
    from order_saga.promotions import Promotions
    from order_saga.store import Store

    store = Store(target.client("dynamodb"))
    expired = Timing(lease_ms=lease_ms, deadline_ms=60_000, reservation_ttl_ms=1, shards=10)
    order_id = "ord_abandoned_" + uuid.uuid4().hex[:16]
    line = PricedLine(sku="MUG-BLUE", quantity=1, unit_price=1250)
    now = now_ms() - (1000 if lease_ms == 1 else 0)
    execution = target.execution_arn(order_id)  # never started
    discount = 500 if coupon else 0
    customer = target.sign_in()[1]
    order = Orders(store, target.outputs["OrdersTableName"], expired).new_order(
        order_id, customer, [{"sku": "MUG-BLUE", "quantity": 1}], [line], 1250 - discount, "USD", execution,
        "digest", now, coupon=coupon, discount=discount, amounts=[1250 - discount])
    items = {"order": Orders(store, target.outputs["OrdersTableName"], expired).put_new(order)}
    if with_payment:
        items["payment:1"] = Payments(store, target.outputs["PaymentsTableName"]).put_new(
            order_id, 1, "tok_approve", 1250 - discount, "USD", now)
    if coupon and hold:
        items |= Promotions(store, target.outputs["PromotionsTableName"]).hold_items(coupon, order_id, customer, 1000,
                                                                                     now)
    if reserve:
        items |= Inventory(store, target.outputs["InventoryTableName"], expired).reserve_items(order_id, [line], now)
    assert store.transact(items) is None
    return order_id
