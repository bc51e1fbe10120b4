"""The sent marker across a rollout, and the two places it met other rules: the three findings of the second
issue-20 review (an AWS engineer told to break the merges of i20-sent and i20-prune), fixed, with their regression
tests (more in test_sent_marker.py).

1. The permission to void a PENDING payment without the gateway comes from the order's `marks_sends`, which the
   execution's own ReserveInventory (pinned to its state machine version, as its AuthorizePayment is) stamps in its
   write that takes the lease; not from the API (not pinned) nor the compensation (the `live` alias).
2. A half-open probe whose `sending` hook (or time check) raised gives its probe slot back.
3. Past the replay window, the Stripe adapter trusts search's "not found" only 2 h after the last request that could
   have created the intent: the later of the first send and the window's end (its own replays).
"""

from __future__ import annotations

import os

import pytest

from order_saga.breaker import BREAKER_KEY, HALF_OPEN, OPEN, CircuitBreaker
from order_saga.dynamo import now_ms, to_ddb
from order_saga.errors import PaymentGatewayUnavailable, PaymentVoided
from order_saga.gateway import FakeGateway
from order_saga.orders import Orders
from order_saga.store import ANSWER_SECONDS, ATTEMPT_SECONDS, Store
from order_saga.stripe_gateway import METADATA_KEY, StripeGateway
from sagalocal.stripe_fake import API_KEY, StripeFake
from tests.unit.helpers import invoke, new_saga, order, payment, reap
from tests.unit.test_breaker import SETTINGS
from tests.unit.test_sent_marker import HOUR_MS, PID, Recording, payments_on, set_fields
from tests.unit.test_steps import fail_at, run_forward
from tests.unit.test_template import TEMPLATE


# ---- 1. the sent marker during the rollout that introduces it ------------------------------------------------------
def test_a_payment_the_previous_authorize_version_sent_unmarked_is_not_voided_locally(aws):
    resources = TEMPLATE.raw["Resources"]
    machine = resources["OrderSagaStateMachine"]["Properties"]
    # The deploy's facts the scenario rests on: the saga is a canary, the API is not; the forward step is the
    # version its execution started with, the compensation whatever `live` is now.
    assert machine["DeploymentPreference"]["Type"] == "CANARY"
    assert "DeploymentPreference" not in resources["OrdersApiFunction"]["Properties"]
    assert machine["DefinitionSubstitutions"]["AuthorizePaymentFunctionArn"] == {
        "Ref": "AuthorizePaymentFunction.Version"}
    assert machine["DefinitionSubstitutions"]["VoidPaymentFunctionArn"] == {"Ref": "VoidPaymentFunction.Alias"}

    new_saga(aws)  # the new API (its alias moved at once)
    # Even a payment that says its API knew the marker (as the API of i20-sent wrote it, `marks_sends`) does not
    # tell which AuthorizePayment the execution runs: the order does, and the previous ReserveInventory (pinned to the
    # previous version) did not stamp it.
    aws.update_item(TableName=os.environ["PAYMENTS_TABLE"], Key={"payment_id": {"S": PID}},
                    UpdateExpression="SET marks_sends = :yes", ExpressionAttributeValues={":yes": {"BOOL": True}})
    assert "marks_sends" not in order(aws)
    store = Store(aws)
    gateway = FakeGateway(store, os.environ["PAYMENTS_TABLE"])
    written = payment(aws)
    assert written is not None
    # AuthorizePayment as the version before the marker calls the gateway (payments.py at 4f8672b:
    # `self.gateway.authorize(pid, token, amount, currency)`, no sending hook): the hold lands, and the invocation
    # times out before it records it (its retries do the same, or the processor's answers keep timing out).
    gateway.authorize(PID, str(written["token"]), int(written["amount"]), str(written["currency"]))
    assert gateway.entry(PID)["state"] == "AUTHORIZED"

    # VoidPayment through the `live` alias: this code, with what the order it claimed says.
    item = payments_on(aws, gateway).undo_item(PID, now_ms(), sends_marked=Orders.sends_marked(order(aws)))
    assert item is not None
    assert store.transact({"payment": item}) is None
    after = payment(aws)
    assert after is not None
    held = gateway.entry(PID)["state"]
    assert held != "AUTHORIZED" or "reconcile" in after, (
        f"the payment is {after['status']} with no reconciliation, and the processor still holds the money ({held})")


def test_reserve_inventory_stamps_the_order_in_the_write_that_takes_its_lease(aws, handlers, context):
    new_saga(aws)
    assert "marks_sends" not in order(aws)  # the API's write says nothing about the execution's code
    run_forward(handlers, context, new_saga(aws, order_id="ord_2"), upto=1)
    stamped = order(aws, "ord_2")
    assert (stamped["marks_sends"], stamped["saga_status"]) == (True, "EXECUTING")


def test_void_payment_voids_locally_only_an_order_its_execution_stamped(aws, handlers, context):
    """The same PENDING, unmarked payment: voided without the gateway when the execution's ReserveInventory stamped the
    order; at the gateway (and reconciled) when it did not (the previous version's ReserveInventory)."""
    for order_id, stamped in (("ord_1", True), ("ord_2", False)):
        saga = run_forward(handlers, context, new_saga(aws, order_id=order_id), upto=1)
        if not stamped:
            aws.update_item(TableName=os.environ["ORDERS_TABLE"], Key={"order_id": {"S": order_id}},
                            UpdateExpression="REMOVE marks_sends")
        invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment", "PaymentGatewayUnavailable"))
        voided = payment(aws, order_id)
        assert voided["status"] == "VOIDED"
        assert ("reconcile" in voided) is not stamped, (order_id, voided)


def test_the_reaper_voids_at_the_gateway_an_order_whose_lease_was_never_taken(aws, handlers, context):
    """No lease taken, no stamp: the reaper's compensation goes to the gateway (and has the payment reconciled); an
    order its ReserveInventory stamped is voided locally."""
    new_saga(aws, order_id="ord_1")
    run_forward(handlers, context, new_saga(aws, order_id="ord_2"), upto=1)
    for order_id in ("ord_1", "ord_2"):  # both executions died: their leases ran out
        aws.update_item(TableName=os.environ["ORDERS_TABLE"], Key={"order_id": {"S": order_id}},
                        UpdateExpression="SET lease_expires_at = :past",
                        ExpressionAttributeValues={":past": {"N": str(now_ms() - 1000)}})
    assert sorted(reap(handlers, context)["compensated"]) == ["ord_1", "ord_2"]
    assert (payment(aws, "ord_1")["status"], "reconcile" in payment(aws, "ord_1")) == ("VOIDED", True)
    assert (payment(aws, "ord_2")["status"], "reconcile" in payment(aws, "ord_2")) == ("VOIDED", False)


# ---- 2. the breaker's half-open probe and the marker ---------------------------------------------------------------
def half_open_breaker(aws) -> None:
    """OPEN, its open time just over: the next call moves it to HALF_OPEN and is its first probe."""
    aws.put_item(TableName=os.environ["PAYMENTS_TABLE"], Item=to_ddb({
        "payment_id": BREAKER_KEY, "state": OPEN, "version": 3, "opened_until": now_ms() - 1}))


def test_a_probe_whose_marker_found_the_payment_voided_gives_its_slot_back(aws):
    for order_id in ("ord_1", "ord_2", "ord_3"):
        new_saga(aws, order_id=order_id)
    gateway = Recording()
    store = Store(aws)
    payments = payments_on(aws, CircuitBreaker(gateway, store, os.environ["PAYMENTS_TABLE"], SETTINGS))
    half_open_breaker(aws)

    # ord_1's AuthorizePayment read its payment PENDING; the reaper voided it locally meanwhile (its lease ran out).
    read_before = payments.get(PID)
    assert store.transact({"payment": payments_on(aws, gateway).undo_item(PID, now_ms(), sends_marked=True)}) is None
    with pytest.raises(PaymentVoided):
        payments.authorize_at_gateway(read_before, now_ms())  # probe 1: the marker finds VOIDED, nothing is sent
    assert gateway.calls == []
    payments.authorize_at_gateway(payments.get("ord_2#1"), now_ms())  # probe 2: answered
    assert payments.gateway.read()["state"] == HALF_OPEN
    # The processor answered the only probe that reached it: a third payment must not fail fast.
    payments.authorize_at_gateway(payments.get("ord_3#1"), now_ms())
    assert [key for _, key in gateway.calls] == ["ord_2#1", "ord_3#1"]


# ---- 3. the Stripe adapter's search trusts "not found" from the marker, not from its own last replay ---------------
@pytest.fixture
def fake():
    with StripeFake() as server:
        yield server


def test_past_the_window_not_found_is_not_trusted_for_a_replay_sent_just_before_it(aws, fake):
    new_saga(aws, token="pm_card_visa")
    gw = StripeGateway(Store(aws), os.environ["PAYMENTS_TABLE"], API_KEY, fake.url, 10.0)
    fake.search_lag = 3600  # Stripe: searchable in under a minute, up to an hour behind during incidents
    written = payment(aws)
    assert written is not None
    # Created and marked 19 h 59 min ago; the first request never reached Stripe (it was down; the saga parked).
    marked = now_ms() - (20 * HOUR_MS - 60_000)
    set_fields(aws, created_at=marked, sent_at=marked)
    # The redriven VoidPayment's reverse looks the intent up by a replay (still within the window): it is the first
    # request Stripe sees, so it authorizes; its answer is lost (the client's timeout), the step is retried.
    with gw._call("reverse"):
        gw._create(PID, "pm_card_visa", int(written["amount"]), str(written["currency"]))
    [intent] = fake.intents_with(METADATA_KEY, PID)
    assert intent["status"] == "requires_capture"
    # Two minutes later (the retry waits 1 + 2 + 4 s, the reaper sweeps later still): past the window, search only.
    set_fields(aws, created_at=marked - 120_000, sent_at=marked - 120_000)
    try:
        found = gw.state(PID)
    except PaymentGatewayUnavailable:
        found = "asked again later"
    assert found is not None, "search found nothing and the adapter trusted it: the hold from the replay stays"


# ---- (a) the breaker on AuthorizePayment's path: what docs/timeouts.md counts ------------------------------------
def test_a_half_open_probe_makes_one_breaker_write_before_its_call(aws, monkeypatch):
    """The call that starts the half-open period is its first probe, in the same write: the breaker's read and one
    write before the call (the timing table's 'a half-open probe's claim')."""
    new_saga(aws)
    store = Store(aws)
    events: list[str] = []
    monkeypatch.setattr(store, "get", lambda *a, **k: (events.append("read"), Store.get(store, *a, **k))[1])
    monkeypatch.setattr(store, "update", lambda **k: (events.append(f"write {k['Key']['payment_id']['S']}"),
                                                      Store.update(store, **k))[1])

    class Gateway(Recording):
        def authorize(self, key, token, amount, currency, sending=None):
            events.append("call")
            return super().authorize(key, token, amount, currency, sending)

    breaker = CircuitBreaker(Gateway(), store, os.environ["PAYMENTS_TABLE"], SETTINGS)
    half_open_breaker(aws)
    breaker.authorize(PID, "tok_approve", 100, "USD")
    assert events[:events.index("call")] == ["read", f"write {BREAKER_KEY}"]
    item = breaker.read()
    assert (item["state"], item["probes"], item["successes"]) == (HALF_OPEN, 1, 1)


def test_a_second_breaker_write_before_the_call_only_if_the_rest_still_fits(aws, monkeypatch):
    """The move to HALF_OPEN lost to another instance (which took the first probe): claiming another probe is a
    second write, made only if it, the sent marker, the call and the record still fit; else the call fails fast
    (PaymentGatewayUnavailable, retried), nothing sent, nothing claimed."""
    new_saga(aws)
    store = Store(aws)
    gateway = Recording()
    breaker = CircuitBreaker(gateway, store, os.environ["PAYMENTS_TABLE"], SETTINGS)
    aws.put_item(TableName=os.environ["PAYMENTS_TABLE"], Item=to_ddb({
        "payment_id": BREAKER_KEY, "state": HALF_OPEN, "version": 4, "probes": 1, "successes": 0,
        "probe_until": now_ms() + 60_000}))
    stale = {"payment_id": BREAKER_KEY, "state": OPEN, "version": 3, "opened_until": now_ms() - 1}
    monkeypatch.setattr(breaker, "read", lambda: dict(stale))  # read before the other instance's move
    needed = gateway.timeout + 3 * ATTEMPT_SECONDS + ANSWER_SECONDS  # the claim, the marker, the call, the record
    monkeypatch.setattr(store, "time_left", lambda: needed - 0.1)
    with pytest.raises(PaymentGatewayUnavailable, match="claim a probe"):
        breaker.authorize(PID, "tok_approve", 100, "USD")
    assert gateway.calls == []
    held = aws.get_item(TableName=os.environ["PAYMENTS_TABLE"], Key={"payment_id": {"S": BREAKER_KEY}})["Item"]
    assert held["probes"] == {"N": "1"}  # the other instance's probe only
    monkeypatch.setattr(store, "time_left", lambda: needed)
    breaker.authorize(PID, "tok_approve", 100, "USD")
    assert gateway.calls == [("authorize", PID)]
