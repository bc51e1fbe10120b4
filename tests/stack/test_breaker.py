"""The payment gateway's circuit breaker on a whole stack: a processor outage, then its recovery.

The outage is the fake gateway's switch (FAKE_GATEWAY_SWITCH, on with FaultInjection=true): an item in the
payments table (the stack's PaymentsTableName output) whose `outage` set names the calls that get a 503, and whose
`calls_<call>` counters count what reached the processor. It works the same on a deployed FaultInjection stack;
this test runs on an embedded stack of its own because it needs a short BreakerOpenSeconds and a known
BreakerFailureThreshold (parameter overrides; a deployed stack has them fixed at deploy time), and because an
open breaker would fail the other tests' authorizations on a shared stack.

What it checks, with bounds rather than exact counts (a loaded machine spreads the retries over time):
- during an outage of authorizations, every order is compensated (nothing held or captured), some of their
  attempts failed fast without reaching the processor, and the calls that did reach it stay within
  ATTEMPTS x FAILURES (before the breaker can open, only the first wave's payments exist: at most every attempt of
  each) + PROBES x (outage seconds / OPEN_S + 2) (after it opened, only probes go through: at most PROBES per
  half-open period, and a period starts at most every OPEN_S seconds; +2 for the periods at either end);
- after the outage, probes close the breaker and new orders complete.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from order_saga.breaker import BREAKER_KEY, CLOSED, HALF_OPEN, OPEN
from order_saga.dynamo import to_ddb, values
from order_saga.gateway import SWITCH_KEY
from sagalocal.metrics import read_logs
from sagalocal.timeline import history
from tests.stack.conftest import ROOT, start_embedded, stop
from tests.stack.support import place, wait_all, wait_for_execution, wait_until

FAILURES, PROBES, OPEN_S = 3, 2, 4  # BreakerFailureThreshold, BreakerSuccessThreshold, BreakerOpenSeconds here
SECOND_WAVE = 10  # orders placed while the breaker is open
OVERRIDES = (f"BreakerFailureThreshold={FAILURES}", f"BreakerSuccessThreshold={PROBES}",
             f"BreakerOpenSeconds={OPEN_S}")
ITEMS = [{"sku": "MUG-BLUE", "quantity": 1}]
pytestmark = pytest.mark.embedded_only(reason="starts its own stack with BreakerOpenSeconds and "
                                              "BreakerFailureThreshold overridden (fixed on a deployed stack)")


def authorize_attempts() -> int:
    """AuthorizePayment's attempts per order: the first and its Retry's MaxAttempts (from the ASL)."""
    machine = json.loads((ROOT / "statemachine/order_saga.asl.json").read_text())
    return 1 + max(r["MaxAttempts"] for r in machine["States"]["AuthorizePayment"]["Retry"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    process, target = start_embedded(tmp_path_factory.mktemp("breaker"), overrides=OVERRIDES)
    try:
        yield target
    finally:
        stop(process)


def switch(stack, outage: set[str] | None) -> None:
    """The fake processor's outage switch: these calls get a 503 (None: none do)."""
    update = {"UpdateExpression": "SET outage = :outage", "ExpressionAttributeValues": values(outage=outage)} \
        if outage else {"UpdateExpression": "REMOVE outage"}
    stack.client("dynamodb").update_item(TableName=stack.outputs["PaymentsTableName"],
                                         Key=to_ddb({"payment_id": SWITCH_KEY}), **update)


def authorize_calls(stack) -> int:
    return int((stack.get("PaymentsTableName", payment_id=SWITCH_KEY) or {}).get("calls_authorize", 0))


def breaker(stack) -> dict:
    return stack.get("PaymentsTableName", payment_id=BREAKER_KEY) or {}


def failed_fast(stack, arn: str) -> int:
    """How many of the execution's task failures the breaker made (its message, in the failure's cause)."""
    return sum("payment gateway circuit" in json.dumps(event, default=str) for event in
               history(stack.client("stepfunctions"), arn) if event["type"] in ("TaskFailed", "LambdaFunctionFailed"))


def test_during_an_outage_gateway_calls_stay_bounded_and_orders_are_compensated_then_the_breaker_closes(stack):
    attempts = authorize_attempts()
    switch(stack, {"authorize"})
    started, before = time.monotonic(), authorize_calls(stack)
    try:
        first = [place(stack, ITEMS) for _ in range(FAILURES)]  # their failures open the breaker
        wait_until(lambda: breaker(stack).get("state") in (OPEN, HALF_OPEN), 120, "the breaker opened")
        second = [place(stack, ITEMS) for _ in range(SECOND_WAVE)]
        ended = wait_all(stack, [o["execution_arn"] for o in first + second], timeout=300)
        during = time.monotonic() - started
        made = authorize_calls(stack) - before
        state = breaker(stack).get("state")
    finally:
        switch(stack, None)
    for placed in first + second:
        order = stack.order(placed["order_id"])
        assert order["saga_status"] == "COMPENSATED", (placed["order_id"], order)
        assert stack.ledger(placed["order_id"]) is None  # the 503 came before anything reached the processor
        assert ended[placed["execution_arn"]]["status"] == "FAILED"  # compensated: it ends at SagaCompensated
    bound = attempts * FAILURES + PROBES * (during / OPEN_S + 2)
    assert made <= bound, f"{made} authorizations reached the processor in {during:.0f} s; bound {bound:.0f}"
    fast = sum(failed_fast(stack, o["execution_arn"]) for o in first + second)
    assert fast >= 1, "no attempt was failed fast by the breaker"
    # Every attempt either reached the processor or was failed fast (or refused for time), never more.
    assert made + fast <= attempts * (FAILURES + SECOND_WAVE)
    assert state in (OPEN, HALF_OPEN)
    opened = sum(sum(v) for (ns, name, dims), v in read_logs(Path(stack.log_dir)).items()
                 if (ns, name) == ("OrderSaga", "GatewayCircuitOpened") and ("step", "PaymentGateway") in dims)
    assert opened >= 1  # the metric the GatewayCircuitOpened alarm watches

    # The outage is over: after the open time, probes close the breaker, and orders complete again.
    deadline = time.monotonic() + 180
    completed = []
    while breaker(stack).get("state") != CLOSED or not completed:
        assert time.monotonic() < deadline, f"the breaker did not close: {breaker(stack)}"
        placed = place(stack, ITEMS)
        if wait_for_execution(stack, placed["execution_arn"], 120)["status"] == "SUCCEEDED" and \
                stack.order(placed["order_id"])["saga_status"] == "COMPLETED":
            completed.append(placed["order_id"])
    after = [place(stack, ITEMS, key=uuid.uuid4().hex) for _ in range(3)]
    wait_all(stack, [o["execution_arn"] for o in after], timeout=180)
    assert [stack.order(o["order_id"])["saga_status"] for o in after] == ["COMPLETED"] * 3
    assert breaker(stack).get("state") == CLOSED
