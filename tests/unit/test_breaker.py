"""The circuit breaker on the payment gateway (src/order_saga/breaker.py): every transition, on the stack's DynamoDB
engine, with a scripted processor behind it and a clock the test moves. Concurrent instances are separate
CircuitBreaker objects on one table, as separate Lambda sandboxes are."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from order_saga import breaker as breaker_module
from order_saga.breaker import BREAKER_KEY, CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker
from order_saga.errors import PaymentDeclined, PaymentGatewayUnavailable, StoreThrottled
from order_saga.store import Store

SETTINGS = BreakerSettings(failure_threshold=3, success_threshold=2, open_ms=10_000)


class Processor:
    """A gateway whose answers the test scripts: "ok", "down" (PaymentGatewayUnavailable) or "decline"."""

    timeout = 3.0

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.hold: threading.Event | None = None  # set: an authorization waits for it (concurrent probes)

    def authorize(self, key: str, token: str, amount: int, currency: str) -> str:
        with self.lock:
            self.calls.append(("authorize", key))
        if self.hold is not None:
            self.hold.wait(10)
        if self.mode == "down":
            raise PaymentGatewayUnavailable("503")
        if self.mode == "decline":
            raise PaymentDeclined("declined")
        return f"auth_{key}"

    def capture(self, key: str) -> None:
        self.calls.append(("capture", key))
        if self.mode == "down":
            raise PaymentGatewayUnavailable("503")

    def reverse(self, key: str) -> str | None:
        self.calls.append(("reverse", key))
        if self.mode == "down":
            raise PaymentGatewayUnavailable("503")
        return "VOIDED"

    def state(self, key: str) -> str | None:
        self.calls.append(("state", key))
        return None

    def retire_item(self, key: str, purge: int) -> dict[str, Any]:
        return {"retired": key}


@pytest.fixture
def clock(monkeypatch):
    now = {"ms": 1_800_000_000_000}
    monkeypatch.setattr(breaker_module, "_now", lambda: now["ms"])
    return now


@pytest.fixture
def opened(monkeypatch):
    """The openings counted (the GatewayCircuitOpened metric)."""
    seen: list[str] = []
    monkeypatch.setattr(breaker_module, "_opened", lambda was, settings: seen.append(was))
    return seen


@pytest.fixture
def processor() -> Processor:
    return Processor()


@pytest.fixture
def make(aws, processor):
    """A breaker instance (one per sandbox) on the test's payments table."""

    def new(settings: BreakerSettings = SETTINGS, gateway: Any = None) -> CircuitBreaker:
        return CircuitBreaker(gateway or processor, Store(aws), os.environ["PAYMENTS_TABLE"], settings)

    return new


def fail(breaker: CircuitBreaker, key: str) -> None:
    with pytest.raises(PaymentGatewayUnavailable):
        breaker.authorize(key, "tok", 100, "USD")


def trip(breaker: CircuitBreaker, processor: Processor) -> None:
    processor.mode = "down"
    for n in range(SETTINGS.failure_threshold):
        fail(breaker, f"trip#{n}")
    assert breaker.read()["state"] == OPEN


def test_closed_lets_calls_through_and_writes_nothing_while_they_succeed(make, processor, clock):
    breaker = make()
    assert breaker.authorize("p#1", "tok", 100, "USD") == "auth_p#1"
    assert breaker.read() == {}  # the happy path costs one GetItem, no write


def test_failures_of_distinct_payments_open_it_and_the_opening_is_counted_once(make, processor, clock, opened):
    breaker, other = make(), make()
    processor.mode = "down"
    for _ in range(4):  # one payment retried: one failure, however often it is retried
        fail(breaker, "p#1")
    assert breaker.read()["state"] == CLOSED
    assert breaker.read()["failed_keys"] == {"p#1"}
    fail(other, "p#2")  # another instance: the same state
    assert breaker.read()["state"] == CLOSED
    fail(breaker, "p#3")
    item = breaker.read()
    assert item["state"] == OPEN
    assert item["opened_until"] == clock["ms"] + SETTINGS.open_ms
    assert "failed_keys" not in item
    assert opened == [CLOSED]


def test_an_answer_clears_the_failures_declines_included(make, processor, clock):
    breaker = make()
    processor.mode = "down"
    fail(breaker, "p#1")
    fail(breaker, "p#2")
    processor.mode = "decline"
    with pytest.raises(PaymentDeclined):  # the processor answered: it is up
        breaker.authorize("p#3", "tok", 100, "USD")
    assert "failed_keys" not in breaker.read()
    processor.mode = "down"
    fail(breaker, "p#4")
    fail(breaker, "p#5")
    assert breaker.read()["state"] == CLOSED  # two in a row again, not four


def test_open_fails_authorizations_fast_and_lets_everything_else_through(make, processor, clock):
    breaker = make()
    trip(breaker, processor)
    processor.mode = "ok"
    calls = len(processor.calls)
    with pytest.raises(PaymentGatewayUnavailable, match="circuit open"):
        make().authorize("p#9", "tok", 100, "USD")
    assert len(processor.calls) == calls  # nothing reached the processor
    # Captures past the pivot, voids, refunds and reconciliation are never held up, nor counted.
    breaker.capture("p#9")
    assert breaker.reverse("p#9") == "VOIDED"
    assert breaker.state("p#9") is None
    assert breaker.retire_item("p#9", 1) == {"retired": "p#9"}  # the adapter's optional parts show through
    assert breaker.timeout == processor.timeout
    processor.mode = "down"
    with pytest.raises(PaymentGatewayUnavailable):
        breaker.capture("p#9")
    assert breaker.read()["state"] == OPEN
    assert "failed_keys" not in breaker.read()


def test_after_the_open_time_probes_close_it(make, processor, clock):
    breaker = make()
    trip(breaker, processor)
    version = breaker.read()["version"]
    clock["ms"] += SETTINGS.open_ms
    processor.mode = "ok"
    assert breaker.authorize("p#10", "tok", 100, "USD")  # the first probe
    item = breaker.read()
    assert (item["state"], item["probes"], item["successes"]) == (HALF_OPEN, 1, 1)
    assert item["version"] == version + 1
    assert make().authorize("p#11", "tok", 100, "USD")  # the second, from another instance: closes it
    item = breaker.read()
    assert item["state"] == CLOSED
    assert item["version"] == version + 2
    assert not {"probes", "successes", "opened_until", "probe_until"} & set(item)
    assert breaker.authorize("p#12", "tok", 100, "USD")


def test_a_failed_probe_opens_it_again_for_another_open_time(make, processor, clock, opened):
    breaker = make()
    trip(breaker, processor)
    clock["ms"] += SETTINGS.open_ms
    fail(breaker, "p#20")  # the probe: still down
    item = breaker.read()
    assert item["state"] == OPEN
    assert item["opened_until"] == clock["ms"] + SETTINGS.open_ms
    assert opened == [CLOSED, HALF_OPEN]
    processor.mode = "ok"
    clock["ms"] += SETTINGS.open_ms - 1
    with pytest.raises(PaymentGatewayUnavailable, match="circuit open"):
        breaker.authorize("p#21", "tok", 100, "USD")


def test_half_open_admits_at_most_the_success_threshold_of_probes_at_once(make, processor, clock):
    """Concurrent instances race for the probes with conditional writes: exactly `success_threshold` win; the
    others fail fast while the probes are in flight."""
    trip(make(), processor)
    clock["ms"] += SETTINGS.open_ms
    processor.mode = "ok"
    processor.hold = threading.Event()
    calls = len(processor.calls)
    results: list[str] = []

    def call(n: int) -> None:
        try:
            make().authorize(f"p#{30 + n}", "tok", 100, "USD")
            results.append("through")
        except PaymentGatewayUnavailable:
            results.append("refused")

    threads = [threading.Thread(target=call, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    until = time.monotonic() + 30  # the refused ones end at once (a loaded machine: seconds); the probes wait
    while results.count("refused") < 6 - SETTINGS.success_threshold and time.monotonic() < until:
        time.sleep(0.01)
    assert results.count("refused") == 6 - SETTINGS.success_threshold, results
    # The probes that won their write reach the processor, where they wait: however slow the machine, no other.
    reached = time.monotonic() + 10
    while len(processor.calls) - calls < SETTINGS.success_threshold and time.monotonic() < reached:
        time.sleep(0.01)
    assert len(processor.calls) - calls == SETTINGS.success_threshold
    processor.hold.set()
    for thread in threads:
        thread.join(timeout=10)
    assert results.count("through") == SETTINGS.success_threshold
    assert make().read()["state"] == CLOSED


def test_the_first_failures_race_to_create_the_item_and_none_is_lost(make, processor, clock, opened):
    processor.mode = "down"
    settings = BreakerSettings(failure_threshold=8, success_threshold=2, open_ms=10_000)
    threads = [threading.Thread(target=lambda n=n: fail(make(settings), f"p#{40 + n}")) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert make(settings).read()["state"] == OPEN  # every one of the 8 distinct failures counted
    assert opened == [CLOSED]  # opened once, whoever's write won


def test_a_half_open_period_whose_probes_never_reported_starts_afresh(make, processor, clock):
    breaker = make()
    trip(breaker, processor)
    clock["ms"] += SETTINGS.open_ms
    for _n in range(SETTINGS.success_threshold):  # probes claimed; their sandboxes die before they report
        assert breaker.admit().state == HALF_OPEN
    with pytest.raises(PaymentGatewayUnavailable, match="half-open"):
        breaker.admit()
    clock["ms"] += SETTINGS.open_ms
    processor.mode = "ok"
    assert breaker.authorize("p#50", "tok", 100, "USD")
    assert breaker.read()["state"] == HALF_OPEN
    assert breaker.read()["probes"] == 1


def test_a_late_outcome_from_an_earlier_period_changes_nothing(make, processor, clock):
    breaker = make()
    processor.mode = "down"
    admitted = breaker.admit()  # admitted while CLOSED, answers after the breaker opened
    trip(breaker, processor)
    breaker.failed(admitted, "p#60")
    breaker.succeeded(admitted)
    item = breaker.read()
    assert item["state"] == OPEN
    assert "failed_keys" not in item


class BrokenStore(Store):
    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        raise StoreThrottled("DynamoDB unreachable")


def test_a_breaker_that_cannot_be_read_or_written_fails_open(aws, processor, clock):
    breaker = CircuitBreaker(processor, BrokenStore(aws), os.environ["PAYMENTS_TABLE"], SETTINGS)
    assert breaker.authorize("p#70", "tok", 100, "USD") == "auth_p#70"
    processor.mode = "down"
    for n in range(5):  # the call's own error, never the breaker's
        fail(breaker, f"p#7{n}")
    assert len(processor.calls) == 6


def test_no_call_starts_that_would_not_fit_in_the_invocation_after_the_breakers_read(make, processor, clock):
    breaker = make()
    breaker.store.set_deadline(int((processor.timeout + 2.0) * 1000))  # less than the call and a write after it
    with pytest.raises(PaymentGatewayUnavailable, match="not enough time"):
        breaker.authorize("p#80", "tok", 100, "USD")
    assert processor.calls == []


def test_gateway_from_env_wraps_the_configured_adapter(aws, monkeypatch):
    from order_saga.gateway import FakeGateway, gateway_from_env

    monkeypatch.setenv("BREAKER_OPEN_SECONDS", "7")
    gateway = gateway_from_env(Store(aws))
    assert isinstance(gateway, CircuitBreaker)
    assert isinstance(gateway.gateway, FakeGateway)
    assert gateway.settings == BreakerSettings(failure_threshold=5, success_threshold=2, open_ms=7000)
    assert gateway.read() == {}
    assert BREAKER_KEY.startswith("breaker#")
