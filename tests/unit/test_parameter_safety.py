"""No combination of parameter values the template accepts breaks a rule of docs/timeouts.md's timing table.

CloudFormation's Rules cannot compare numbers, so each timing parameter's MinValue, MaxValue or AllowedValues keep
its rules for every accepted value of the others. Here every such parameter is tried at its bounds and past them
(and at the old bounds of issue 20: a gateway timeout up to 60, a Lambda timeout up to 900, leases, deadline and
TTL down to 1): alone, in pairs, and all together, with the table's own arithmetic
(scripts/generate_timing_table.relations). A combination the template accepts (its parameters' constraints and its
Rules, as sagalocal and CloudFormation check them) keeps every rule; every combination that breaks one is refused.
"""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path

import pytest

from sagalocal.template import TemplateError, check_rules, parameter_values
from scripts.generate_timing_table import Facts, fmt, relations
from tests.unit.test_template import TEMPLATE

ROOT = Path(__file__).resolve().parents[2]
RAW = TEMPLATE.raw
DECLARED = RAW["Parameters"]
UNBOUNDED = 10**6  # "as large as you like", for a parameter with no MaxValue
OLD_BOUNDS = {"GatewayTimeoutSeconds": (1, 60), "AuthorizePaymentTimeout": (1, 900)}  # before issue 20; others >= 1


@cache
def facts() -> Facts:
    return Facts()


def timing_parameters() -> list[str]:
    """Every parameter a rule of the table depends on."""
    return sorted({p for rule in relations(facts()).values() for p in rule.parameters})


def accepted_bounds(name: str) -> tuple[float, float]:
    spec = DECLARED[name]
    if "AllowedValues" in spec:
        allowed = [float(v) for v in spec["AllowedValues"]]
        return min(allowed), max(allowed)
    return float(spec.get("MinValue", 0)), float(spec.get("MaxValue", UNBOUNDED))


def probes(name: str) -> list[str]:
    """A parameter's edges: its lowest and highest accepted values and what lies just past them, its default, and
    the bounds it had before issue 20."""
    low, high = accepted_bounds(name)
    values = {low, high, low - 1, low - 0.5, float(DECLARED[name]["Default"]), 0, 1, *OLD_BOUNDS.get(name, ())}
    if high < UNBOUNDED:
        values |= {high + 0.5, high + 1, UNBOUNDED}
    return [fmt(v) for v in sorted(values) if v >= 0]


def refusal(overrides: dict[str, str]) -> str | None:
    """Why the template refuses these values (a parameter's constraint or a Rule), or None if it accepts them."""
    try:
        check_rules(RAW, parameter_values(DECLARED, overrides), TEMPLATE.pseudo())
    except TemplateError as exc:
        return str(exc)
    return None


def broken(overrides: dict[str, str]) -> list[str]:
    return [str(rule) for rule in relations(facts(), overrides).values() if not rule.holds]


def check(combinations: list[dict[str, str]]) -> tuple[int, set[str]]:
    """Every accepted combination keeps every rule. Returns how many were refused and which rules the refused ones
    would have broken."""
    refused, would_break = 0, set()
    for overrides in combinations:
        failures = broken(overrides)
        if refusal(overrides) is None:
            assert not failures, f"accepted, but breaks the timing table's rules: {overrides}: {failures}"
        else:
            refused += 1
            would_break |= {failure.split(":")[0] for failure in failures}
    return refused, would_break


def test_the_defaults_are_accepted_and_keep_every_rule():
    assert refusal({}) is None
    assert broken({}) == []


def test_the_rules_cover_every_timing_parameter():
    assert timing_parameters() == ["AuthorizePaymentTimeout", "FakeGatewayHangSeconds", "GatewayTimeoutSeconds",
                                   "LeaseSeconds", "PivotLeaseSeconds", "ReservationTtlSeconds", "SagaDeadlineSeconds"]


@pytest.mark.parametrize("name", timing_parameters())
def test_each_parameter_alone_at_and_past_its_bounds(name):
    refused, _ = check([{name: value} for value in probes(name)])
    assert refused, f"{name}: no probe was refused: {probes(name)}"


def test_every_pair_of_parameters_at_and_past_their_bounds():
    combinations = [{a: x, b: y} for a, b in itertools.combinations(timing_parameters(), 2)
                    for x in probes(a) for y in probes(b)]
    refused, would_break = check(combinations)
    every_rule = {str(rule).split(":")[0] for rule in relations(facts()).values() if rule.parameters}
    assert would_break == every_rule, f"rules no refused pair would have broken: {every_rule - would_break}"


def test_every_parameter_at_its_accepted_extremes_together():
    """All 2^n corners of the accepted box: every one accepted, every one keeps every rule."""
    extremes = [[(name, fmt(v)) for v in accepted_bounds(name)] for name in timing_parameters()]
    for corner in itertools.product(*extremes):
        overrides = dict(corner)
        assert refusal(overrides) is None, overrides
        assert broken(overrides) == [], overrides


def test_every_parameter_at_and_just_past_its_accepted_extremes_together():
    """The corners with every parameter also one past each bound: each combination that breaks a rule is refused."""
    def edges(name: str) -> list[tuple[str, str]]:
        low, high = accepted_bounds(name)
        return [(name, fmt(v)) for v in (low - 1, low, high, high + 1) if 0 <= v <= UNBOUNDED]

    combinations = [dict(c) for c in itertools.product(*(edges(name) for name in timing_parameters()))]
    refused, _ = check(combinations)
    assert 0 < refused < len(combinations)


# Bounds that no rule of the table needs: a client timeout needs some floor, but no rule breaks below 1 s.
NOT_FROM_A_RULE = {("GatewayTimeoutSeconds", "low")}


@pytest.mark.parametrize("name", timing_parameters())
def test_each_bound_is_where_a_rule_breaks(name):
    """One second past each bound breaks a rule for some accepted values of the others: no bound is stricter than
    the arithmetic (to the second)."""
    low, high = accepted_bounds(name)
    others = [[(other, fmt(v)) for v in accepted_bounds(other)] for other in timing_parameters() if other != name]
    for side, past in (("low", low - 1), ("high", high + 1)):
        if (name, side) in NOT_FROM_A_RULE or past < 0 or past >= UNBOUNDED:
            continue
        assert any(broken({name: fmt(past), **dict(rest)}) for rest in itertools.product(*others)), \
            f"{name} = {fmt(past)}, one past its {side} bound, breaks no rule whatever the others are"


@pytest.mark.parametrize(("overrides", "refused_by", "breaks"), [
    # Issue 20: a gateway timeout of 8 s with the default AuthorizePaymentTimeout refused every authorization.
    ({"GatewayTimeoutSeconds": "8"}, "Parameters.GatewayTimeoutSeconds: 8 is above MaxValue 3",
     "AuthorizePaymentFunction's longest path"),
    # ConfirmOrder's three captures in its 14 s: 4 s each would never capture a third card.
    ({"GatewayTimeoutSeconds": "4"}, "MaxValue 3", "ConfirmOrderFunction's longest path"),
    # A Lambda timeout above the ASL's task timeout less the cold start: the task times out while it runs.
    ({"AuthorizePaymentTimeout": "15"}, "Parameters.AuthorizePaymentTimeout: '15' is not one of",
     "AuthorizePayment's TimeoutSeconds covers"),
    ({"AuthorizePaymentTimeout": "7"}, "is not one of", "AuthorizePaymentFunction's longest path"),
    # Issue 20, review 2: the breaker's read and a half-open probe's claim on AuthorizePayment's path (13.5 s); the
    # 10 s the table allowed before, counting neither.
    ({"AuthorizePaymentTimeout": "10"}, "is not one of", "AuthorizePaymentFunction's longest path"),
    # A reservation TTL below the saga deadline releases live reservations.
    ({"ReservationTtlSeconds": "30"}, "Parameters.ReservationTtlSeconds: 30 is below MinValue 300",
     "ReservationTtlSeconds outlasts SagaDeadlineSeconds"),
    ({"SagaDeadlineSeconds": "298"}, "Parameters.SagaDeadlineSeconds: 298 is above MaxValue 296",
     "ReservationTtlSeconds outlasts SagaDeadlineSeconds"),
    ({"LeaseSeconds": "25"}, "Parameters.LeaseSeconds: 25 is below MinValue 45", "half of LeaseSeconds"),
    ({"PivotLeaseSeconds": "60"}, "Parameters.PivotLeaseSeconds: 60 is below MinValue 79", "PivotLeaseSeconds covers"),
    ({"SagaDeadlineSeconds": "30"}, "Parameters.SagaDeadlineSeconds: 30 is below MinValue 51",
     "SagaDeadlineSeconds covers"),
    ({"FakeGatewayHangSeconds": "2"}, "Parameters.FakeGatewayHangSeconds: 2 is below MinValue 4", "tok_hang"),
])
def test_the_unsafe_values_of_the_issue_are_refused_and_say_which_parameter(overrides, refused_by, breaks):
    assert any(failure.startswith(breaks) for failure in broken(overrides)), broken(overrides)
    assert refused_by in (refusal(overrides) or "")


def test_the_template_the_local_stack_reads_refuses_them_too():
    """sagalocal's Template (what `sagalocal up` and `invoke` read) checks the same constraints and Rules."""
    from sagalocal.template import Template

    with pytest.raises(TemplateError, match="GatewayTimeoutSeconds: 8 is above MaxValue 3"):
        Template(ROOT / "template.yaml", parameter_overrides={"GatewayTimeoutSeconds": "8"})
