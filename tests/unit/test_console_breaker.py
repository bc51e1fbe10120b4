"""The console's reading of the payment gateway's circuit breaker (sagalocal/console/data.py: ConsoleData.breaker):
each state as the breaker itself (src/order_saga/breaker.py) writes it on the tier's DynamoDB, read back through
the console's own client, as it reads any deployed stack's payments table."""

from __future__ import annotations

import os
import time

import pytest

from order_saga import breaker as breaker_module
from order_saga.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker
from order_saga.store import Store
from sagalocal.console.data import ConsoleData, Source, breaker_settings
from tests.unit.test_breaker import Processor, fail, trip

SETTINGS = BreakerSettings(failure_threshold=3, success_threshold=2, open_ms=600_000)
OUTPUTS = {"BreakerFailureThreshold": "3", "BreakerSuccessThreshold": "2", "BreakerOpenSeconds": "600"}


@pytest.fixture
def clock(monkeypatch):
    """The breaker's clock, from the wall clock's now (the console reads `opened_until` against the wall clock)."""
    now = {"ms": int(time.time() * 1000)}
    monkeypatch.setattr(breaker_module, "_now", lambda: now["ms"])
    monkeypatch.setattr(breaker_module, "_opened", lambda was, settings: None)  # no metric line
    return now


@pytest.fixture
def console(aws):
    def new(outputs: dict[str, str] = OUTPUTS) -> ConsoleData:
        source = Source(os.environ["AWS_ENDPOINT_URL_DYNAMODB"], "us-east-1",
                        {"PaymentsTableName": os.environ["PAYMENTS_TABLE"], **outputs})
        return ConsoleData(source)

    return new


@pytest.fixture
def breaker(aws):
    return CircuitBreaker(Processor(), Store(aws), os.environ["PAYMENTS_TABLE"], SETTINGS)


def test_no_item_is_closed_and_never_used(console, breaker):
    view = console().breaker()
    assert breaker.read() == {}
    assert (view.state.state, view.state.version, view.state.failed_payments, view.state.used) == (CLOSED, 0, 0, False)
    assert view.settings == SETTINGS
    assert view.summary.startswith("CLOSED: never opened")
    assert view.key == "breaker#gateway"
    assert view.table == os.environ["PAYMENTS_TABLE"]


def test_closed_with_failures_counts_the_failed_payments_against_the_threshold(console, breaker, clock):
    breaker.gateway.mode = "down"
    for _ in range(3):  # one payment retried: one failure
        fail(breaker, "p#1")
    fail(breaker, "p#2")
    view = console().breaker()
    assert (view.state.state, view.state.failed_payments, view.state.used) == (CLOSED, 2, True)
    assert view.state.updated_at == clock["ms"]
    assert "2 of 3 payments in a row" in view.summary


def test_open_says_until_when_and_once_that_is_over_that_the_next_call_probes(console, breaker, clock):
    trip(breaker, breaker.gateway)
    item = breaker.read()
    view = console().breaker()
    assert view.state.state == OPEN
    assert view.state.version == item["version"] == 1
    assert view.state.opened_until == clock["ms"] + SETTINGS.open_ms
    assert view.state.failed_payments == 0  # the opening removed failed_keys
    assert not view.open_over
    assert view.summary.startswith("OPEN: authorizations fail fast")



def test_open_past_its_time_says_the_next_authorization_probes(console, aws, clock):
    short = BreakerSettings(failure_threshold=3, success_threshold=2, open_ms=1_000)
    clock["ms"] -= 60_000  # opened a minute ago, for a second
    processor = Processor()
    trip(CircuitBreaker(processor, Store(aws), os.environ["PAYMENTS_TABLE"], short), processor)
    view = console().breaker()
    assert view.state.state == OPEN
    assert view.state.opened_until == clock["ms"] + 1_000 < view.now_ms
    assert view.open_over
    assert "the next authorization moves it to HALF_OPEN" in view.summary


def test_half_open_shows_its_probes_and_then_closed_again(console, breaker, clock):
    trip(breaker, breaker.gateway)
    clock["ms"] += SETTINGS.open_ms
    breaker.gateway.mode = "ok"
    assert breaker.authorize("p#10", "tok", 100, "USD")  # the first probe, answered
    view = console().breaker()
    assert view.state.state == HALF_OPEN
    assert (view.state.probes, view.state.successes, view.state.version) == (1, 1, 2)
    assert view.state.probe_until == clock["ms"] + SETTINGS.open_ms
    assert not view.probes_lost
    assert "1 of at most 2 probes let through, 1 answered" in view.summary

    assert breaker.authorize("p#11", "tok", 100, "USD")  # the second: closed
    view = console().breaker()
    assert (view.state.state, view.state.version, view.state.used) == (CLOSED, 3, True)
    assert (view.state.probes, view.state.opened_until, view.state.probe_until) == (0, None, None)
    assert "0 of 3 payments in a row" in view.summary


def test_settings_missing_from_the_outputs_are_unknown_not_guessed(console, breaker, clock):
    view = console({}).breaker()
    assert view.settings is None
    assert view.summary.startswith("CLOSED: never opened")
    trip(breaker, breaker.gateway)
    clock["ms"] += SETTINGS.open_ms
    breaker.gateway.mode = "ok"
    breaker.authorize("p#10", "tok", 100, "USD")
    assert "1 probes let through" in console({}).breaker().summary
    assert breaker_settings({**OUTPUTS, "BreakerOpenSeconds": "soon"}) is None
    assert breaker_settings({"BreakerFailureThreshold": 5, "BreakerSuccessThreshold": 2,
                             "BreakerOpenSeconds": 30}) == BreakerSettings(5, 2, 30_000)
