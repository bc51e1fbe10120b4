"""The payment's sent marker (`sent_at`, src/order_saga/payments.py): written before an authorization's first request
leaves, after the breaker let it through, so a PENDING payment without it is voided with no gateway call; the race
of that local void with an authorization in flight; and the Stripe adapter's Search API lookup past the replay window
(src/order_saga/stripe_gateway.py) with its lag rule.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from order_saga.breaker import CircuitBreaker
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.errors import PaymentGatewayUnavailable, PaymentVoided
from order_saga.payments import Payments, payment_id
from order_saga.store import Store
from order_saga.stripe_gateway import METADATA_KEY, StripeGateway
from sagalocal.stripe_fake import API_KEY, StripeFake
from tests.unit.helpers import new_saga, payment
from tests.unit.test_breaker import SETTINGS
from tests.unit.test_open_findings import open_breaker

PID = payment_id("ord_1")
HOUR_MS = 3600 * 1000


class Recording:
    """A gateway that records every call and authorizes; `sending` as the protocol says."""

    timeout = 3.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def authorize(self, key: str, token: str, amount: int, currency: str, sending: Any = None) -> str:
        if sending is not None:
            sending()
        self.calls.append(("authorize", key))
        return f"auth_{key}"

    def capture(self, key: str) -> None:
        self.calls.append(("capture", key))

    def reverse(self, key: str) -> str | None:
        self.calls.append(("reverse", key))
        return None

    def state(self, key: str) -> str | None:
        self.calls.append(("state", key))
        return None


def payments_on(aws, gateway) -> Payments:
    return Payments(Store(aws), os.environ["PAYMENTS_TABLE"], gateway, Timing.from_env())


def set_fields(aws, **fields: int) -> None:
    names = ", ".join(f"{name} = :{name}" for name in fields)
    aws.update_item(TableName=os.environ["PAYMENTS_TABLE"], Key={"payment_id": {"S": PID}},
                    UpdateExpression="SET " + names,
                    ExpressionAttributeValues={f":{name}": {"N": str(value)} for name, value in fields.items()})


# ---- the marker ----------------------------------------------------------------------------------------------------
def test_a_pending_payment_never_sent_is_voided_with_no_gateway_call(aws):
    new_saga(aws)
    gateway = Recording()
    payments = payments_on(aws, gateway)
    item = payments.undo_item(PID, now_ms(), sends_marked=True)  # its order says its execution marks its sends
    assert item is not None
    assert Store(aws).transact({"payment": item}) is None
    voided = payment(aws)
    assert voided["status"] == "VOIDED"
    assert "reconcile" not in voided  # final: nothing can land
    assert "purge_at" in voided
    assert gateway.calls == []


def test_the_marker_is_written_once_before_the_request_and_kept_by_retries(aws):
    new_saga(aws)
    gateway = Recording()
    payments = payments_on(aws, gateway)
    seen: list[Any] = []
    inner = gateway.authorize

    def authorize(key, token, amount, currency, sending=None):
        def check() -> None:
            sending()
            seen.append(payment(aws).get("sent_at"))  # the marker is there before the request leaves
        return inner(key, token, amount, currency, sending=check)

    gateway.authorize = authorize  # type: ignore[method-assign]
    first = now_ms()
    payments.authorize_at_gateway(payments.get(PID), first)
    payments.authorize_at_gateway(payments.get(PID), first + 5000)  # a retry (its answer lost): same marker
    assert seen == [first, first]
    assert gateway.calls == [("authorize", PID)] * 2


def test_a_call_the_breaker_fails_fast_leaves_no_marker(aws):
    new_saga(aws)
    gateway = Recording()
    open_breaker(aws)
    payments = payments_on(aws, CircuitBreaker(gateway, Store(aws), os.environ["PAYMENTS_TABLE"], SETTINGS))
    with pytest.raises(PaymentGatewayUnavailable, match="circuit open"):
        payments.authorize_at_gateway(payments.get(PID), now_ms())
    assert "sent_at" not in payment(aws)
    assert gateway.calls == []


def test_race_the_marker_lands_between_the_voids_read_and_its_write(aws):
    """The authorization marked its send after the void read the payment: the void's write fails (the compensation
    reads again), and the next reading voids at the gateway and has the payment reconciled."""
    new_saga(aws)
    gateway = Recording()
    payments = payments_on(aws, gateway)
    store = Store(aws)
    local_void = payments.undo_item(PID, now_ms(), sends_marked=True)
    payments.authorize_at_gateway(payments.get(PID), now_ms())  # marker, then the request
    cancelled = store.transact({"payment": local_void})
    assert cancelled is not None
    assert cancelled.failed("payment")
    assert payment(aws)["status"] == "PENDING"  # the local void did not land
    again = payments.undo_item(PID, now_ms(), sends_marked=True)
    assert again is not None
    assert store.transact({"payment": again}) is None
    voided = payment(aws)
    assert voided["status"] == "VOIDED"
    assert "reconcile" in voided  # what was sent may land: the reaper asks the gateway later
    assert ("reverse", PID) in gateway.calls


def test_race_the_local_void_lands_before_the_marker(aws):
    """The void landed first: the authorization's marker finds VOIDED and sends nothing."""
    new_saga(aws)
    gateway = Recording()
    payments = payments_on(aws, gateway)
    read_before = payments.get(PID)  # the authorization read PENDING
    assert Store(aws).transact({"payment": payments.undo_item(PID, now_ms(), sends_marked=True)}) is None
    with pytest.raises(PaymentVoided):
        payments.authorize_at_gateway(read_before, now_ms())
    assert gateway.calls == []
    assert "sent_at" not in payment(aws)


def test_a_payment_of_an_order_whose_execution_may_not_mark_is_voided_at_the_gateway(aws):
    """The order carries no `marks_sends` (its lease was taken by a version before the marker, or never): the
    execution's AuthorizePayment may have sent unmarked."""
    new_saga(aws)
    gateway = Recording()
    item = payments_on(aws, gateway).undo_item(PID, now_ms())
    assert item is not None
    assert gateway.calls == [("reverse", PID)]


# ---- the Stripe adapter past the replay window: the Search API -----------------------------------------------------
@pytest.fixture
def fake():
    with StripeFake() as server:
        yield server


def stripe(aws, fake: StripeFake) -> StripeGateway:
    return StripeGateway(Store(aws), os.environ["PAYMENTS_TABLE"], API_KEY, fake.url, 10.0)


def paths(fake: StripeFake) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _ in fake.requests]


def test_past_the_window_a_sent_authorization_is_found_by_search_and_canceled(aws, fake):
    new_saga(aws, token="pm_card_visa")
    gw = stripe(aws, fake)
    gw.authorize(PID, "pm_card_visa", int(payment(aws)["amount"]), "USD")  # landed; the saga never recorded it
    day_ago = now_ms() - 21 * HOUR_MS
    set_fields(aws, created_at=day_ago, sent_at=day_ago)
    fake.requests.clear()
    assert gw.reverse(PID) == "VOIDED"
    [intent] = fake.intents_with(METADATA_KEY, PID)
    assert intent["status"] == "canceled"
    assert ("POST", "/v1/payment_intents") not in paths(fake)  # never a replay past the window
    assert paths(fake)[0] == ("GET", "/v1/payment_intents/search")


def test_past_the_window_a_search_that_finds_nothing_is_trusted_only_when_the_send_is_old(aws, fake):
    """Old: 2 h after the last request that could have created the intent, the later of the first send and the end
    of the replay window (the adapter's replays, up to then)."""
    new_saga(aws, token="pm_card_visa")
    gw = stripe(aws, fake)
    set_fields(aws, created_at=now_ms() - 23 * HOUR_MS, sent_at=now_ms() - 10 * 60 * 1000)  # sent 10 min ago
    with pytest.raises(PaymentGatewayUnavailable, match="search index's lag"):
        gw.reverse(PID)
    set_fields(aws, created_at=now_ms() - 21 * HOUR_MS, sent_at=now_ms() - 3 * HOUR_MS)  # replays until 1 h ago
    with pytest.raises(PaymentGatewayUnavailable, match="search index's lag"):
        gw.reverse(PID)
    set_fields(aws, created_at=now_ms() - 23 * HOUR_MS)  # the window closed 3 h ago, the send 3 h ago
    assert gw.reverse(PID) is None
    assert ("POST", "/v1/payment_intents") not in paths(fake)


def test_the_fake_search_lags_as_stripes_index_does(aws, fake):
    new_saga(aws, token="pm_card_visa")
    gw = stripe(aws, fake)
    fake.search_lag = 3600
    gw.authorize(PID, "pm_card_visa", int(payment(aws)["amount"]), "USD")
    set_fields(aws, created_at=now_ms() - 21 * HOUR_MS, sent_at=now_ms() - 60 * 1000)
    with pytest.raises(PaymentGatewayUnavailable, match="search index's lag"):  # not indexed yet, and too young
        gw.reverse(PID)
    assert fake.intents_with(METADATA_KEY, PID)[0]["status"] == "requires_capture"
