"""The Stripe adapter (src/order_saga/stripe_gateway.py) against the local Stripe fake (sagalocal/stripe_fake.py).

Every mapping of Stripe's answers to the saga's errors, idempotent replays, the SDK's network retries off, and the
unknown outcome: an authorization that lands after the client gave up, which the saga voids and the reaper's
reconciliation cancels at Stripe. The handlers run as in test_steps.py, with PAYMENT_GATEWAY=stripe and the
secret key in (moto's) Secrets Manager.
"""

from __future__ import annotations

import os
import threading
import time

import boto3
import pytest
import stripe

from order_saga.breaker import CircuitBreaker
from order_saga.errors import PaymentDeclined, PaymentGatewayUnavailable, PaymentNotAuthorized
from order_saga.gateway import gateway_from_env
from order_saga.store import Store
from order_saga.stripe_gateway import METADATA_KEY, GatewayMisconfigured, StripeGateway
from sagalocal.stripe_fake import API_KEY, StripeFake
from tests.unit.helpers import invoke, new_saga, payment, reap
from tests.unit.test_steps import fail_at, run_forward

PID = "ord_1#1"


@pytest.fixture
def fake():
    with StripeFake() as server:
        yield server


@pytest.fixture
def stripe_env(aws, fake, monkeypatch):
    """The handlers' environment for the Stripe adapter: the fake's URL, the key in Secrets Manager."""
    arn = boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="order-saga-stripe", SecretString=API_KEY)["ARN"]
    monkeypatch.setenv("PAYMENT_GATEWAY", "stripe")
    monkeypatch.setenv("STRIPE_SECRET_ARN", arn)
    monkeypatch.setenv("STRIPE_API_BASE_URL", fake.url)
    return fake


def gateway(aws, fake, timeout: float = 10.0, **kwargs) -> StripeGateway:
    # 10 s where a test needs an answer: the adapter's budget covers the whole call, the stripe library's first
    # imports included, and a loaded `make test` saw a 2 s budget run out before the fake answered.
    return StripeGateway(Store(aws), os.environ["PAYMENTS_TABLE"], API_KEY, fake.url, timeout, **kwargs)


def intents(fake: StripeFake, key: str = PID) -> list[dict]:
    return fake.intents_with(METADATA_KEY, key)


def creates(fake: StripeFake) -> int:
    return sum(1 for method, path, _ in fake.requests if (method, path) == ("POST", "/v1/payment_intents"))


def authorize(gw: StripeGateway, aws, token: str, order_id: str = "ord_1") -> str:
    new_saga(aws, order_id=order_id, token=token)
    return gw.authorize(f"{order_id}#1", token, 2500, "USD")


# ---- authorize ---------------------------------------------------------------------------------------------------
def test_an_authorization_is_one_manual_capture_intent_keyed_by_the_payment_and_a_repeat_replays_it(aws, fake):
    gw = gateway(aws, fake)
    reference = authorize(gw, aws, "pm_card_visa")
    [intent] = intents(fake)
    assert reference == intent["id"]
    assert (intent["status"], intent["capture_method"], intent["amount"], intent["currency"]) == (
        "requires_capture", "manual", 2500, "usd")
    assert intent["metadata"] == {METADATA_KEY: PID}
    assert gw.authorize(PID, "pm_card_visa", 2500, "USD") == reference  # a retry: the saved response
    assert len(intents(fake)) == 1
    assert [key for method, path, key in fake.requests if path == "/v1/payment_intents"] == [PID, PID]
    assert gw.state(PID) == "AUTHORIZED"


@pytest.mark.parametrize(("token", "reason"), [
    ("pm_card_chargeDeclined", "card_declined/generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined/insufficient_funds"),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card/expired_card"),
    ("pm_card_unknownToStripe", "resource_missing"),
])
def test_a_decline_is_payment_declined_naming_the_reason_never_the_card(aws, fake, token, reason):
    gw = gateway(aws, fake)
    with pytest.raises(PaymentDeclined, match=reason) as declined:
        authorize(gw, aws, token)
    assert token not in str(declined.value)
    with pytest.raises(PaymentDeclined):  # a retry replays the decline
        gw.authorize(PID, token, 2500, "USD")
    assert all(intent["status"] == "requires_payment_method" for intent in intents(fake))
    assert gw.state(PID) in ("DECLINED", None)
    assert gw.reverse(PID) in ("DECLINED", None)


def test_a_card_asking_for_3d_secure_is_declined_and_its_intent_canceled(aws, fake):
    gw = gateway(aws, fake)
    with pytest.raises(PaymentDeclined, match="authentication_required"):
        authorize(gw, aws, "pm_card_authenticationRequired")
    [intent] = intents(fake)
    assert intent["status"] == "canceled"
    assert gw.state(PID) == "VOIDED"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_server_error_or_throttling_is_unavailable_sent_once_and_a_retry_authorizes_once(aws, fake, status):
    gw = gateway(aws, fake)
    fake.fail_next(status)
    with pytest.raises(PaymentGatewayUnavailable, match="outcome is unknown"):
        authorize(gw, aws, "pm_card_visa")
    assert creates(fake) == 1  # the SDK's own retries are off: the saga's Retry owns retries
    assert gw.authorize(PID, "pm_card_visa", 2500, "USD").startswith("pi_")
    assert len(intents(fake)) == 1


def test_a_wrong_secret_key_is_a_configuration_error_not_a_transient_one(aws, fake):
    gw = StripeGateway(Store(aws), os.environ["PAYMENTS_TABLE"], "sk_test_wrong", fake.url, 10.0)
    with pytest.raises(GatewayMisconfigured, match="401"):
        authorize(gw, aws, "pm_card_visa")
    assert intents(fake) == []


def test_the_same_key_with_other_parameters_is_refused_and_never_charges_twice(aws, fake):
    gw = gateway(aws, fake)
    authorize(gw, aws, "pm_card_visa")
    with pytest.raises(PaymentNotAuthorized, match="other parameters"):
        gw.authorize(PID, "pm_card_visa", 9999, "USD")
    [intent] = intents(fake)
    assert intent["amount"] == 2500


def test_a_repeat_while_the_first_request_still_executes_is_unavailable(aws, fake):
    # The processor takes 6 s: wide enough that the other calls land while it executes on a loaded machine.
    gw = gateway(aws, fake, timeout=10.0)
    new_saga(aws, token="pm_card_fakeSlow_6")
    first = threading.Thread(target=lambda: gw.authorize(PID, "pm_card_fakeSlow_6", 2500, "USD"))
    first.start()
    deadline = time.monotonic() + 5
    while creates(fake) == 0:
        assert time.monotonic() < deadline, "the first request never reached the fake"
        time.sleep(0.01)
    other = gateway(aws, fake)
    with pytest.raises(PaymentGatewayUnavailable, match="409 idempotency_key_in_use"):
        other.authorize(PID, "pm_card_fakeSlow_6", 2500, "USD")
    assert other.state(PID) == "PROCESSING"
    assert other.reverse(PID) == "PROCESSING"  # nothing to cancel yet
    first.join(30)
    assert len(intents(fake)) == 1


def test_every_call_is_bounded_by_the_timeout_and_the_outcome_is_then_unknown(aws, fake):
    gw = gateway(aws, fake, timeout=0.4)
    new_saga(aws, token="pm_card_fakeSlow_6")
    started = time.monotonic()
    with pytest.raises(PaymentGatewayUnavailable, match="outcome is unknown"):
        gw.authorize(PID, "pm_card_fakeSlow_6", 2500, "USD")
    assert 0.4 <= time.monotonic() - started < 5  # the client's timeout, not the processor's 6 s
    deadline = time.monotonic() + 30
    while not intents(fake):  # the request executes all the same: the authorization lands later
        assert time.monotonic() < deadline, "the slow authorization never landed"
        time.sleep(0.05)
    # Found by replaying its key, the moment it landed. Asked with a roomier timeout: the 0.4 s one bounds the
    # call above, and a loaded fresh clone's run saw this read itself miss it.
    assert gateway(aws, fake, timeout=10).state(PID) == "AUTHORIZED"


# ---- capture, reverse, state ---------------------------------------------------------------------------------------
def record(aws, reference: str, order_id: str = "ord_1") -> None:
    """What AuthorizePayment records: the payment AUTHORIZED with the intent's id."""
    aws.update_item(TableName=os.environ["PAYMENTS_TABLE"], Key={"payment_id": {"S": f"{order_id}#1"}},
                    UpdateExpression="SET #s = :a, #r = :r",
                    ExpressionAttributeNames={"#s": "status", "#r": "authorization"},
                    ExpressionAttributeValues={":a": {"S": "AUTHORIZED"}, ":r": {"S": reference}})


def test_capture_takes_the_hold_once_and_a_refund_gives_it_back_once(aws, fake):
    gw = gateway(aws, fake)
    record(aws, authorize(gw, aws, "pm_card_visa"))
    gw.capture(PID)
    gw.capture(PID)  # a repeat: a no-op
    [intent] = intents(fake)
    assert intent["status"] == "succeeded"
    assert gw.state(PID) == "CAPTURED"
    assert gw.reverse(PID) == "REFUNDED"
    assert gw.reverse(PID) == "REFUNDED"
    assert fake.charges[intent["latest_charge"]]["amount_refunded"] == 2500
    assert sum(1 for _, path, _ in fake.requests if path == "/v1/refunds") == 1
    assert gw.state(PID) == "REFUNDED"


def test_a_hold_is_voided_once_and_cannot_be_captured_after(aws, fake):
    gw = gateway(aws, fake)
    record(aws, authorize(gw, aws, "pm_card_visa"))
    assert gw.reverse(PID) == "VOIDED"
    assert gw.reverse(PID) == "VOIDED"
    assert intents(fake)[0]["status"] == "canceled"
    with pytest.raises(PaymentNotAuthorized, match="VOIDED"):
        gw.capture(PID)


def test_a_hold_that_expired_before_its_capture_is_not_authorized(aws, fake):
    gw = gateway(aws, fake)
    reference = authorize(gw, aws, "pm_card_visa")
    record(aws, reference)
    fake.expire(reference)  # Stripe cancels an uncaptured intent after 7 days
    with pytest.raises(PaymentNotAuthorized):
        gw.capture(PID)
    assert intents(fake)[0]["status"] == "canceled"


def test_a_capture_that_loses_a_race_with_the_expiry_is_not_authorized(aws, fake, monkeypatch):
    """The intent reads requires_capture, then Stripe refuses the capture (payment_intent_unexpected_state)."""
    gw = gateway(aws, fake)
    reference = authorize(gw, aws, "pm_card_visa")
    record(aws, reference)
    real = fake.capture
    monkeypatch.setattr(fake, "capture", lambda intent_id: (fake.expire(intent_id), real(intent_id))[1])
    with pytest.raises(PaymentNotAuthorized, match="VOIDED"):
        gw.capture(PID)


def test_an_unknown_payment_has_no_state_and_nothing_to_reverse(aws, fake):
    gw = gateway(aws, fake)
    assert gw.state("ord_none#1") is None
    assert gw.reverse("ord_none#1") is None
    assert fake.requests == []


def test_no_replay_past_the_window_where_stripe_may_have_pruned_the_key(aws, fake):
    """Past the window the adapter searches instead (it never replays the create); a search that finds nothing
    just after the request was sent is not proof (the index lags): unavailable, asked again later."""
    gw = gateway(aws, fake, replay_window_seconds=0)
    new_saga(aws, token="pm_card_visa")
    time.sleep(0.01)
    with pytest.raises(PaymentGatewayUnavailable, match="search index's lag"):
        gw.reverse(PID)
    assert intents(fake) == []
    assert creates(fake) == 0
    assert [path for _, path, _ in fake.requests] == ["/v1/payment_intents/search"]


# ---- the saga's handlers on the adapter ----------------------------------------------------------------------------
def test_the_handlers_read_the_secret_key_from_secrets_manager(aws, stripe_env, handlers, context):
    gw = gateway_from_env(Store(aws))
    assert isinstance(gw, CircuitBreaker)  # every adapter sits behind the shared circuit breaker
    assert isinstance(gw.gateway, StripeGateway)
    saga = run_forward(handlers, context, new_saga(aws, token="pm_card_visa"))
    assert saga["order_id"] == "ord_1"
    assert payment(aws)["status"] == "CAPTURED"
    [intent] = intents(stripe_env)
    assert intent["status"] == "succeeded"
    assert payment(aws)["authorization"] == intent["id"]


def test_an_authorization_that_lands_after_the_void_is_canceled_by_the_reaper(aws, stripe_env, handlers, context,
                                                                              monkeypatch):
    """The unknown outcome end to end: the client gives up, the saga voids the PENDING payment while the request
    still executes at Stripe (the replay gets a 409: undecided, so it is marked for reconciliation), the
    authorization lands, and the reaper's reconciliation finds it by its key and cancels it."""
    # The client gives up after 2 s and the processor takes 8: wide enough that on a loaded machine every other
    # call (the void's replay, the reaper's look) still answers within its 2 s while the authorization executes.
    monkeypatch.setenv("GATEWAY_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("RECONCILE_AFTER_SECONDS", "0")
    saga = run_forward(handlers, context, new_saga(aws, token="pm_card_fakeSlow_8"), upto=1)
    with pytest.raises(PaymentGatewayUnavailable):
        invoke(handlers("authorize_payment"), context, saga)
    invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment"))
    voided = payment(aws)
    assert voided["status"] == "VOIDED"
    assert "reconcile" in voided
    assert reap(handlers, context)["reconciled"] == {PID: "undecided"}  # still executing at Stripe
    deadline = time.monotonic() + 30
    while not intents(stripe_env):
        assert time.monotonic() < deadline, "the slow authorization never landed"
        time.sleep(0.05)
    assert intents(stripe_env)[0]["status"] == "requires_capture"  # money held for a cancelled order...
    assert reap(handlers, context)["reconciled"] == {PID: "reversed"}  # ...until the reaper
    [intent] = intents(stripe_env)
    assert intent["status"] == "canceled"
    assert payment(aws)["reconciled"] == "reversed"
    assert reap(handlers, context)["reconciled"] == {}  # once


def test_a_void_before_any_request_was_sent_needs_no_stripe_and_fences_the_authorization(aws, stripe_env, handlers,
                                                                                            context):
    """Nothing was sent (no sent marker): the void is local, not one request to Stripe, and final (no
    reconciliation); an authorization attempt arriving later finds VOIDED at its marker's write and sends nothing."""
    saga = run_forward(handlers, context, new_saga(aws, token="pm_card_visa"), upto=1)
    invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment"))
    voided = payment(aws)
    assert voided["status"] == "VOIDED"
    assert "reconcile" not in voided
    assert "purge_at" in voided
    assert stripe_env.requests == []
    with pytest.raises(Exception, match="VOIDED before it was authorized"):
        invoke(handlers("authorize_payment"), context, saga)
    assert stripe_env.requests == []
    assert "sent_at" not in payment(aws)


def test_a_void_of_a_sent_authorization_still_replays_to_find_it(aws, stripe_env, handlers, context):
    """The marker was written (a request may have left): the void finds the intent by replaying the key."""
    saga = run_forward(handlers, context, new_saga(aws, token="pm_card_visa"), upto=1)
    gw = gateway(aws, stripe_env)
    gw.authorize(PID, "pm_card_visa", int(payment(aws)["amount"]), "USD")  # landed; its answer was lost
    aws.update_item(TableName=os.environ["PAYMENTS_TABLE"], Key={"payment_id": {"S": PID}},
                    UpdateExpression="SET sent_at = created_at")
    invoke(handlers("void_payment"), context, fail_at(saga, "AuthorizePayment"))
    assert payment(aws)["status"] == "VOIDED"
    [intent] = intents(stripe_env)
    assert intent["status"] == "canceled"


def test_the_sdk_is_stripes_official_one_with_its_network_retries_off(aws, fake):
    gw = gateway(aws, fake)
    client = gw.client
    assert isinstance(client, stripe.StripeClient)
    assert client._requestor._options.max_network_retries == 0
