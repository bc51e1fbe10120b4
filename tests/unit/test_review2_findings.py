"""Findings of the second issue-20 review (an AWS engineer told to break the merges of i20-sent and i20-prune), kept
as strict expected failures: each test asserts what the code SHOULD do and fails today with the error its mark
names. When a fix lands, the test passes, strict xfail turns that into a failure, and the mark must go.
"""

from __future__ import annotations

import os

import pytest

from order_saga.breaker import BREAKER_KEY, HALF_OPEN, OPEN, CircuitBreaker
from order_saga.dynamo import now_ms, to_ddb
from order_saga.errors import PaymentGatewayUnavailable, PaymentVoided
from order_saga.gateway import FakeGateway
from order_saga.store import Store
from order_saga.stripe_gateway import METADATA_KEY, StripeGateway
from sagalocal.stripe_fake import API_KEY, StripeFake
from tests.unit.helpers import new_saga, payment
from tests.unit.test_breaker import SETTINGS
from tests.unit.test_sent_marker import HOUR_MS, PID, Recording, payments_on, set_fields
from tests.unit.test_template import TEMPLATE


# ---- 1. the sent marker during the rollout that introduces it ------------------------------------------------------
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "marks_sends is written by the API, whose alias moves at once with the deploy, but the state machine's alias moves "
    "as a canary (90% of new executions stay on the previous version for 20 minutes) and its forward steps are pinned "
    "to the previous AuthorizePayment version, which sends without a marker; the compensations invoke the `live` "
    "alias (the new VoidPayment), which voids such a payment locally: a hold that landed is never voided, never "
    "reconciled"))
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

    new_saga(aws)  # the new API: the payment carries marks_sends
    store = Store(aws)
    gateway = FakeGateway(store, os.environ["PAYMENTS_TABLE"])
    written = payment(aws)
    assert written is not None
    assert written["marks_sends"] is True
    # AuthorizePayment as the version before the marker calls the gateway (payments.py at 4f8672b:
    # `self.gateway.authorize(pid, token, amount, currency)`, no sending hook): the hold lands, and the invocation
    # times out before it records it (its retries do the same, or the processor's answers keep timing out).
    gateway.authorize(PID, str(written["token"]), int(written["amount"]), str(written["currency"]))
    assert gateway.entry(PID)["state"] == "AUTHORIZED"

    # VoidPayment through the `live` alias: this code.
    item = payments_on(aws, gateway).undo_item(PID, now_ms())
    assert item is not None
    assert store.transact({"payment": item}) is None
    after = payment(aws)
    assert after is not None
    held = gateway.entry(PID)["state"]
    assert held != "AUTHORIZED" or "reconcile" in after, (
        f"the payment is {after['status']} with no reconciliation, and the processor still holds the money ({held})")


# ---- 2. the breaker's half-open probe and the marker ---------------------------------------------------------------
def half_open_breaker(aws) -> None:
    """OPEN, its open time just over: the next call moves it to HALF_OPEN and is its first probe."""
    aws.put_item(TableName=os.environ["PAYMENTS_TABLE"], Item=to_ddb({
        "payment_id": BREAKER_KEY, "state": OPEN, "version": 3, "opened_until": now_ms() - 1}))


@pytest.mark.xfail(strict=True, raises=PaymentGatewayUnavailable, reason=(
    "a probe the breaker let through whose `sending` hook raised (the marker found the payment voided: NotSent; or "
    "the marker's write was throttled, or left too little time) never reached the processor, yet it keeps its probe "
    "slot: with BreakerSuccessThreshold 2 the breaker cannot close, and every authorization fails fast (and its "
    "order is compensated) until probe_until, though the processor answers every call"))
def test_a_probe_whose_marker_found_the_payment_voided_gives_its_slot_back(aws):
    for order_id in ("ord_1", "ord_2", "ord_3"):
        new_saga(aws, order_id=order_id)
    gateway = Recording()
    store = Store(aws)
    payments = payments_on(aws, CircuitBreaker(gateway, store, os.environ["PAYMENTS_TABLE"], SETTINGS))
    half_open_breaker(aws)

    # ord_1's AuthorizePayment read its payment PENDING; the reaper voided it locally meanwhile (its lease ran out).
    read_before = payments.get(PID)
    assert store.transact({"payment": payments_on(aws, gateway).undo_item(PID, now_ms())}) is None
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


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "the adapter's lookups (reverse, state) REPLAY the create within the replay window, and a replay is a request "
    "that can create the intent (the first request never reached Stripe); past the window the search's 'not found' "
    "is trusted by the age of sent_at, the marker of the first request, not of the last replay: a replay that landed "
    "a minute before the window closed (its answer lost) is reported as nothing while the index lags, and the hold "
    "is left (up to Stripe's 7-day expiry)"))
def test_past_the_window_not_found_is_not_trusted_for_a_replay_sent_just_before_it(aws, fake):
    new_saga(aws, token="pm_card_visa")
    gw = StripeGateway(Store(aws), os.environ["PAYMENTS_TABLE"], API_KEY, fake.url, 2.0)
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
