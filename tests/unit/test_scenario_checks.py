"""sagalocal/scenarios.py's check of a scenario's retries: exact, but for the retries that load causes."""

from __future__ import annotations

import pytest

from sagalocal.scenarios import retries_problem
from sagalocal.timeline import StateVisit

GATEWAY, INJECTED = "PaymentGatewayUnavailable", "TransientError"


def visit(errors: list[str]) -> list[StateVisit]:
    """A task state that failed with `errors`, each retried, and then succeeded."""
    return [StateVisit("ReserveInventory", "Task", 0.0), StateVisit("Pay", "Task", 1.0, 9.0, len(errors) + 1, errors)]


@pytest.mark.parametrize(("errors", "expected"), [
    ([GATEWAY, GATEWAY], 2),
    ([GATEWAY, GATEWAY, GATEWAY], 2),  # a busy machine: the client timed out once more, and retried
    ([GATEWAY, "StoreThrottled"], 1),
    ([INJECTED, "ConcurrentUpdate"], 1),
])
def test_the_expected_retries_and_any_that_load_caused_pass(errors, expected):
    assert retries_problem(visit(errors), "Pay", expected) == ""


@pytest.mark.parametrize(("errors", "expected"), [
    ([GATEWAY], 2),  # fewer
    ([GATEWAY, GATEWAY, INJECTED], 2),  # one more, after an error that load does not cause
    ([INJECTED, INJECTED, "States.Timeout"], 2),
])
def test_fewer_retries_or_more_after_another_error_are_a_problem(errors, expected):
    problem = retries_problem(visit(errors), "Pay", expected)
    assert problem.startswith(f"Pay retries: expected {expected}, got {len(errors)}"), problem
