"""The four ways the saga used to undo a sale that had succeeded, and the crash that cancelled one: each a plain
test on the deterministic simulation (sagalocal/sim), each failing on the code before the pivot (see
docs/simulation.md). The explorer (test_explorer.py) covers them with every other crash point too."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from sagalocal.sim.explore import PATHS, run_case, seed_of
from sagalocal.sim.invariants import check
from sagalocal.sim.world import CLOCK, DAY, NAME_REUSE_DAYS, Fault, Point, World


@functools.cache
def points(path: str) -> tuple[Point, ...]:
    return tuple(run_case(path, None).points)


def at(path: str, attempt: str, call: str) -> int:
    """The index of the side effect that `attempt` (e.g. "ConfirmOrder#1") makes first with a call starting so."""
    return next(p.index for p in points(path) if p.attempt == attempt and p.call.startswith(call))


def run(path: str, fault: Fault | None) -> tuple[World, list[str]]:
    with World(seed=seed_of(f"{path}:{fault.label() if fault else 'clean'}"), fault=fault) as world:
        world.run(PATHS[path])
        return world, check(world)


def the_order(world: World) -> dict[str, Any]:
    from order_saga.orders import is_order  # imported as the simulation's invariants import it (after its set-up)

    (order,) = [item for item in world.items("OrdersTable") if is_order(item)]  # not the customer's open-orders item
    return order


def outcome_events(world: World) -> list[str]:
    from order_saga.events import outcome

    return [e["DetailType"] for e in (outcome(r) for r in world.order_stream()) if e is not None]


def executions(world: World) -> list[str]:
    return [e["status"] for e in world.executions()]


def test_confirm_order_retried_after_its_commit_goes_on_to_capture():
    """Bug 1: the capture fails (a processor time-out) after the stock commit landed. The retry used to re-send
    the commit, read its failed stock conditions as ConcurrentUpdate, and refund and cancel the paid order."""
    world, violations = run("plain", Fault(at("plain", "ConfirmOrder#1", "gateway.capture"), "before"))
    assert violations == []
    assert (the_order(world)["saga_status"], world.attempts["ConfirmOrder"]) == ("COMPLETED", 2)
    assert executions(world) == ["SUCCEEDED"]
    assert outcome_events(world) == ["OrderConfirmed"]


def test_a_crash_right_after_the_commit_is_retried_into_the_capture():
    world, violations = run("plain", Fault(at("plain", "ConfirmOrder#1", "dynamodb.transact"), "crash"))
    assert violations == []
    assert (the_order(world)["saga_status"], executions(world)) == ("COMPLETED", ["SUCCEEDED"])


def test_a_lease_that_expires_between_two_captures_is_finished_by_the_reaper_not_refunded():
    """Bug 2: past the pivot an expired lease rolled back: the reaper refunded the captured card. Now it finishes
    the order (captures the rest, completes it), and the old execution is stopped."""
    fault = Fault(at("two-cards", "ConfirmOrder#1", "gateway.capture(#1)"), "pause", "reaper")
    world, violations = run("two-cards", fault)
    assert violations == []
    order = the_order(world)
    assert (order["saga_status"], order["status"], order["steps"]["Reaper"]["error"]) == (
        "COMPLETED", "CONFIRMED", "LeaseExpired")
    assert sorted(world.gateway.ledger[k]["state"] for k in world.gateway.ledger) == ["CAPTURED", "CAPTURED"]
    assert outcome_events(world) == ["OrderConfirmed"]
    assert executions(world) == ["ABORTED"]  # the reaper stopped the execution whose lease it took


def test_a_resubmission_after_the_execution_name_is_freed_starts_nothing_and_undoes_nothing():
    """Bug 3: 90 days after the execution closed, Step Functions accepts its name again (same ARN); a resubmitted
    request started a new execution that took the completed order for its own and released its sold stock."""
    world, violations = run("plain", Fault(-1, "pause", "resubmit-after-90-days"))
    assert violations == []
    assert [status for status, _ in world.responses] == [202, 202]
    assert world.responses[0][1] == world.responses[1][1]  # the stored answer, replayed
    assert (the_order(world)["saga_status"], executions(world)) == ("COMPLETED", ["SUCCEEDED"])
    assert outcome_events(world) == ["OrderConfirmed"]


def test_an_execution_that_reuses_a_freed_name_is_refused_by_the_completed_order():
    """Bug 3 from the other side: whatever starts a new execution of the freed name (an operator, an old client),
    it has an identity of its own (ARN and start time), so ReserveInventory's lease does not take it for a repeat."""
    with World(seed=1) as world:
        world.run(PATHS["plain"])
        (first,) = world.executions()
        world.clock_advance((NAME_REUSE_DAYS + 1) * DAY)
        described = world.stack.sfn.describe_execution(executionArn=first["executionArn"])
        again = world.stack.sfn.start_execution(stateMachineArn=world.stack.state_machine_arn, name=first["name"],
                                                input=described["input"])
        assert again["executionArn"] == first["executionArn"]  # the same ARN, as on AWS
        ended = world.stack.sfn.describe_execution(executionArn=again["executionArn"])
        assert (ended["status"], ended.get("error")) == ("FAILED", "OrderLocked")
        world.settle()
        assert check(world) == []
        assert the_order(world)["saga_status"] == "COMPLETED"


def test_an_error_after_the_final_write_leaves_the_completed_order_completed():
    """Bug 4: an error no Retry lists, after ConfirmOrder's final write, went to the Catch and RefundPayment
    refunded a COMPLETED order (both OrderConfirmed and OrderCancelled were published). Now RefundPayment finds
    the order past the pivot and the execution ends at SagaConfirmed."""
    world, violations = run("plain", Fault(at("plain", "ConfirmOrder#1", "dynamodb.transact[Update:Payments"),
                                           "error"))
    assert violations == []
    assert (the_order(world)["saga_status"], executions(world)) == ("COMPLETED", ["SUCCEEDED"])
    assert outcome_events(world) == ["OrderConfirmed"]
    assert not [p for p in world.points if p.function == "RefundPayment" and p.call.startswith("gateway")]


def test_an_error_between_the_commit_and_the_capture_is_finished_forward():
    world, violations = run("two-cards", Fault(at("two-cards", "ConfirmOrder#1", "gateway.capture(#1)"), "error"))
    assert violations == []
    assert (the_order(world)["saga_status"], executions(world)) == ("COMPLETED", ["SUCCEEDED"])
    assert ("SagaCompleted", "RefundPayment") in world.metrics


class _LateAndHung:
    """A World's decider (as a Mix's): the previous step's write lands as late as a step can write without renewing
    the lease (half of it left, to the millisecond), then the next step's first call hangs until the invocation
    times out."""

    def __init__(self, late_at: int, hung_at: int) -> None:
        self.late_at, self.hung_at, self.pending = late_at, hung_at, []

    def decide(self, world: World, point: Point) -> tuple[str, str | None] | None:
        if point.index == self.late_at:
            order = the_order(world)
            half = world.lease_seconds() / 2
            CLOCK.now = max(CLOCK.now, int(order["lease_expires_at"]) / 1000 - half)
        return ("hang", None) if point.index == self.hung_at else None


@pytest.mark.parametrize(("late", "hung"), [
    (("AuthorizePayment#1", "dynamodb.transact"), ("ConfirmOrder#1", "dynamodb.transact")),
    (("ReserveInventory#1", "dynamodb.transact"), ("AuthorizePayment#1", "gateway.authorize")),
])
def test_a_step_that_times_out_before_its_first_write_is_retried_within_the_lease_the_last_step_left(late, hung):
    """A forward step renews the lease only once less than half of it is left, so the next step may start with half
    a lease. Its first attempt may hang to its timeout and wait for its retry: the retry must still hold the lease.
    With LeaseSeconds 25 it did not (half a lease, 12.5 s, against ConfirmOrder's 14 s timeout and its wait): the
    retry found the lease expired (LeaseLost) and the saga cancelled a sale that a retry would have made."""
    decider = _LateAndHung(at("plain", *late), at("plain", *hung))
    with World(seed=seed_of(f"plain:late-and-hung:{late[0]}"), mix=decider) as world:  # type: ignore[arg-type]
        world.run(PATHS["plain"])
        violations = check(world)
    assert violations == []
    assert any(line.startswith("hang at") for line in world.log), world.log
    assert (the_order(world)["saga_status"], executions(world)) == ("COMPLETED", ["SUCCEEDED"])


@pytest.mark.parametrize(("path", "attempt", "call"), [
    ("plain", "ReserveInventory#1", "dynamodb.update_item"),
    ("plain", "ReserveInventory#1", "dynamodb.transact"),
    ("coupon", "ApplyCoupon#1", "dynamodb.transact"),
    ("plain", "AuthorizePayment#1", "gateway.authorize"),
    ("plain", "AuthorizePayment#1", "dynamodb.transact"),
    ("two-cards", "AuthorizePayment#2", "dynamodb.transact"),
])
@pytest.mark.parametrize("kind", ["crash", "timeout"])
def test_a_forward_step_whose_sandbox_dies_is_retried_not_compensated(path, attempt, call, kind):
    """A crashed (Runtime.ExitError) or timed-out (States.Timeout) forward step cancelled its order: every step
    is idempotent and fenced, so it is retried and the sale goes through."""
    world, violations = run(path, Fault(at(path, attempt, call), kind))
    assert violations == []
    assert (the_order(world)["saga_status"], executions(world)) == ("COMPLETED", ["SUCCEEDED"])


def test_park_saga_parks_only_an_unfinished_order_its_own_execution_owns():
    """ParkSaga runs on every FAILED execution of the state machine. For an execution whose order is finished
    (here COMPLETED), or that is not the order's owner (another start time: a name reused after 90 days), it
    changes nothing and sends nothing."""
    with World(seed=2) as world:
        world.run(PATHS["plain"])
        (execution,) = world.executions()
        order = the_order(world)
        started = int(execution["startDate"].timestamp() * 1000)
        for start in (started, started + 91 * 86_400_000):
            event = {"version": "0", "id": "1", "detail-type": "Step Functions Execution Status Change",
                     "source": "aws.states", "account": "123456789012", "time": "2027-01-01T00:00:00Z",
                     "region": "us-east-1", "resources": [execution["executionArn"]],
                     "detail": {"executionArn": execution["executionArn"],
                                "stateMachineArn": world.stack.state_machine_arn, "name": execution["name"],
                                "status": "FAILED", "startDate": start,
                                "input": json.dumps({"order_id": order["order_id"]})}}
            assert world.invoke_plain("ParkSagaFunction", event) == (True, {"parked": False})
        assert the_order(world)["saga_status"] == "COMPLETED"
        queue = world.stack.sqs_url
        assert "Messages" not in world.stack.sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0)


@pytest.mark.parametrize("function", ["VoidPaymentFunction", "RefundPaymentFunction"])
def test_a_compensation_that_does_not_own_the_order_calls_no_gateway(function):
    """A late compensation of an execution that no longer owns the order (another execution's identity, the same
    fence) used to reverse the payment at the gateway first and find out afterwards, on the fenced write, that
    the order was not its own: a paid, COMPLETED order lost its money. Now it checks first."""
    with World(seed=3) as world:
        world.run(PATHS["plain"])
        (execution,) = world.executions()
        order = the_order(world)
        saga = {"order_id": order["order_id"], "customer_id": order["customer_id"], "fence": order["fence"],
                "deadline_at": order["deadline_at"], "lease_expires_at": order["lease_expires_at"],
                "failures": {"ConfirmOrder": {"Error": "States.Timeout", "Cause": "late"}}}
        stranger = f"{execution['executionArn']}#2026-09-01T00:00:00.000Z"  # same ARN, another start time
        answer = world.invoke_task(function, {"saga": saga, "execution_id": stranger})
        assert "FunctionError" not in answer
        assert not [p for p in world.points if p.call.startswith("gateway.reverse")]
        assert [entry["state"] for entry in world.gateway.ledger.values()] == ["CAPTURED"]
        assert check(world) == []


def test_a_case_replays_exactly():
    fault = Fault(at("two-cards", "ConfirmOrder#1", "gateway.capture(#2)"), "crash", "reaper")
    first, second = run_case("two-cards", fault), run_case("two-cards", fault)
    assert [str(p) for p in first.points] == [str(p) for p in second.points]
    assert first.log == second.log


class _NoExecution:
    """An API whose StartExecution starts nothing: the test drives the tasks itself."""

    def start_execution(self, **kwargs):
        return {"executionArn": f"arn:aws:states:us-east-1:123456789012:execution:OrderSaga:{kwargs['name']}"}


@pytest.mark.parametrize("when", ["before-its-claim", "after-its-claim"])
def test_a_confirm_order_still_running_when_refund_payment_starts_never_loses_the_sale(monkeypatch, when):
    """A ConfirmOrder invocation outlives its task (a cold start's init is not in the function's timeout; a
    Lambda.ServiceException can come back while the function runs), so RefundPayment starts while it is still
    running. Found by an independent review, not by the explorer: the simulation kills a timed-out invocation.
    Before RefundPayment's claim, the late ConfirmOrder pivots and completes: RefundPayment finishes forward and
    refunds nothing. After it, the late ConfirmOrder cannot pivot (the order is COMPENSATING): refunded, released.
    Before the fix, RefundPayment read the order, the late ConfirmOrder captured and completed, and RefundPayment
    refunded the captured card of a COMPLETED order."""
    with World(seed=4) as world:
        monkeypatch.setattr(world.stack.modules["OrdersApiFunction"], "_sfn", _NoExecution())
        _, answer = world.post(PATHS["plain"])
        monkeypatch.undo()
        order = the_order(world)
        execution = (f"arn:aws:states:us-east-1:123456789012:execution:OrderSaga:{answer['order_id']}"
                     f"#2027-01-01T00:00:00.000Z")
        saga = {"order_id": order["order_id"], "customer_id": order["customer_id"],
                "lease_expires_at": order["lease_expires_at"], "deadline_at": order["deadline_at"]}
        for function in ("ReserveInventoryFunction", "AuthorizePaymentFunction"):
            saga = world.invoke_task(function, {"saga": saga, "execution_id": execution})["Payload"]
        refund = world.stack.modules["RefundPaymentFunction"]
        late = []

        def late_confirm_order():
            if not late:
                late.append(world.invoke_task("ConfirmOrderFunction", {"saga": saga, "execution_id": execution}))

        if when == "before-its-claim":
            claim = refund.orders.claim_for_compensation
            monkeypatch.setattr(refund.orders, "claim_for_compensation",
                                lambda *a: (late_confirm_order(), claim(*a))[1])
        else:
            read = refund.payments.get
            monkeypatch.setattr(refund.payments, "get", lambda pid: (late_confirm_order(), read(pid))[1])
        failed = dict(saga, failures={"ConfirmOrder": {"Error": "States.Timeout", "Cause": "the task timed out"}})
        answer = world.invoke_task("RefundPaymentFunction", {"saga": failed, "execution_id": execution})
        monkeypatch.undo()
        assert "FunctionError" not in answer
        assert late  # the late ConfirmOrder ran inside RefundPayment
        world.settle()
        assert check(world) == []
        ledger = [entry["state"] for entry in world.gateway.ledger.values()]
        if when == "before-its-claim":
            assert answer["Payload"].get("confirmed") is True
            assert (the_order(world)["saga_status"], ledger) == ("COMPLETED", ["CAPTURED"])
        else:
            assert late[0]["Payload"]["errorType"] == "OrderNotActive"
            assert (the_order(world)["saga_status"], ledger) == ("COMPENSATED", ["VOIDED"])
