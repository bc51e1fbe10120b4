"""What a handler does at INIT and what its first request does: its clients and its tracer wait for the first
request (order_saga.step: LazyClient, _traced), and are made once per sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from order_saga import step
from tests.unit.helpers import invoke, new_saga

FUNCTIONS = sorted(p.parent.name for p in Path(__file__).resolve().parents[2].glob("functions/*/app.py"))


@pytest.fixture
def made(monkeypatch):
    """The clients made, by service, in the order they were (and what the handlers that call other services read at
    import: nothing is called at import, so any well-formed value)."""
    monkeypatch.setenv("STATE_MACHINE_ARN", "arn:aws:states:us-east-1:123456789012:stateMachine:saga")
    monkeypatch.setenv("PARKED_SAGAS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/parked.fifo")
    monkeypatch.setenv("EVENT_BUS_NAME", "saga-events")
    made: list[str] = []
    real = step._make_client

    def counted(service, read_timeout):
        made.append(service)
        return real(service, read_timeout)

    monkeypatch.setattr(step, "_make_client", counted)
    return made


@pytest.mark.parametrize("function", FUNCTIONS)
def test_importing_a_handler_makes_no_client(aws, handlers, made, function):
    module = handlers(function)
    assert made == []
    clients = [v for v in vars(module).values() if isinstance(v, step.LazyClient)]
    clients += [v.client for v in vars(module).values() if isinstance(getattr(v, "client", None), step.LazyClient)]
    assert clients, f"{function} has no client at all: the test would prove nothing"


def test_the_first_request_makes_the_client_and_the_next_reuse_it(aws, handlers, context, made):
    module = handlers("reserve_inventory")
    saga = new_saga(aws)
    reserved = invoke(module, context, saga)
    assert made == ["dynamodb"]
    invoke(module, context, saga)  # a retry, in the same sandbox: the same client
    assert made == ["dynamodb"]
    invoke(handlers("authorize_payment"), context, reserved)  # another function: a client of its own
    assert made == ["dynamodb", "dynamodb"]


def test_first_request_work_makes_every_client_of_the_sandbox(aws, handlers, made):
    handlers("orders_api")
    step.first_request_work()
    assert {"dynamodb", "stepfunctions"} <= set(made)
    count = len(made)
    step.first_request_work()
    assert len(made) == count  # once per sandbox


def test_the_tracer_is_made_at_the_first_invocation_once(monkeypatch):
    import aws_lambda_powertools

    tracers = []

    class Tracer:
        def __init__(self, patch_modules):
            tracers.append(patch_modules)

        def capture_lambda_handler(self, capture_response):
            return lambda fn: lambda event, context: ("traced", fn(event, context))

    monkeypatch.setattr(aws_lambda_powertools, "Tracer", Tracer)
    monkeypatch.setattr(step, "_FIRST_REQUEST", [])
    handler = step._traced(lambda event, context: event)
    assert tracers == []
    assert handler(1, None) == ("traced", 1)
    assert handler(2, None) == ("traced", 2)
    assert tracers == [step.TRACED_LIBRARIES]


def test_a_provisioned_sandbox_makes_its_clients_at_init(aws, handlers, made, monkeypatch):
    monkeypatch.setattr(step, "EAGER_INIT", True)  # AWS_LAMBDA_INITIALIZATION_TYPE=provisioned-concurrency
    handlers("reserve_inventory")
    assert "dynamodb" in made
