"""sagalocal/template.py evaluates a template's Rules as CloudFormation does before it creates or updates a stack:
a rule whose RuleCondition is false is skipped, every Assert of the others must hold, and a stack whose parameters
fail one is refused with the assertion's AssertDescription. Then template.yaml's own rules: no fake gateway and no
fault injection in production (Production=true, or a Stage named as production), and a Stage name that is neither a
production nor a known test one must say which it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagalocal.template import Template, TemplateError, check_rules, parameter_values

ROOT = Path(__file__).resolve().parents[2]
PARAMETERS = {"Stage": {"Type": "String", "Default": "dev"},
              "Gateway": {"Type": "String", "Default": "fake"},
              "Zones": {"Type": "CommaDelimitedList", "Default": "a,b"},
              "Size": {"Type": "Number", "Default": 10}}


def refusal(rules: dict, **overrides: str) -> str | None:
    """The TemplateError's message for these rules and parameter values, or None if they pass."""
    raw = {"Parameters": PARAMETERS, "Rules": rules}
    try:
        check_rules(raw, parameter_values(PARAMETERS, overrides), {"AWS::Region": "us-east-1"})
    except TemplateError as exc:
        return str(exc)
    return None


def rule(assertion, condition=None, description: str | None = "refused") -> dict:
    body = {"Assertions": [{"Assert": assertion, **({"AssertDescription": description} if description else {})}]}
    return {"R": body if condition is None else {"RuleCondition": condition, **body}}


PROD = {"Fn::Contains": [["prod", "production"], {"Ref": "Stage"}]}
NOT_FAKE = {"Fn::Not": [{"Fn::Equals": [{"Ref": "Gateway"}, "fake"]}]}


def test_a_false_rule_condition_skips_the_assertions_and_a_true_one_applies_them():
    assert refusal(rule(NOT_FAKE, PROD), Stage="dev") is None
    assert refusal(rule(NOT_FAKE, PROD), Stage="prod") == "Rules.R: refused"
    assert refusal(rule(NOT_FAKE, PROD), Stage="prod", Gateway="real") is None
    assert refusal(rule(NOT_FAKE)) == "Rules.R: refused"  # no condition: always applies


@pytest.mark.parametrize(("assertion", "holds"), [
    ({"Fn::Equals": [{"Ref": "Stage"}, "dev"]}, True),
    ({"Fn::Equals": [{"Ref": "Size"}, 10]}, True),  # values compare as strings: the YAML number 10 is "10"
    ({"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]}, True),
    ({"Fn::Not": [{"Fn::Equals": [{"Ref": "Stage"}, "dev"]}]}, False),
    ({"Fn::And": [{"Fn::Equals": ["a", "a"]}, {"Fn::Equals": ["a", "b"]}]}, False),
    ({"Fn::And": [{"Fn::Equals": ["a", "a"]}, {"Fn::Equals": ["b", "b"]}]}, True),
    ({"Fn::Or": [{"Fn::Equals": ["a", "b"]}, {"Fn::Equals": ["b", "b"]}]}, True),
    ({"Fn::Or": [{"Fn::Equals": ["a", "b"]}, {"Fn::Equals": ["b", "c"]}]}, False),
    ({"Fn::Contains": [["dev", "test"], {"Ref": "Stage"}]}, True),
    ({"Fn::Contains": [["prod"], {"Ref": "Stage"}]}, False),
    ({"Fn::EachMemberEquals": [{"Ref": "Zones"}, "a"]}, False),
    ({"Fn::EachMemberEquals": [["a", "a"], "a"]}, True),
    ({"Fn::EachMemberIn": [{"Ref": "Zones"}, ["a", "b", "c"]]}, True),
    ({"Fn::EachMemberIn": [{"Ref": "Zones"}, ["a"]]}, False),
    ({"Fn::Equals": [{"Ref": "Gateway"}, False]}, False),  # a YAML false is the string "false"
])
def test_each_rule_function_the_local_stack_evaluates(assertion, holds):
    assert (refusal(rule(assertion)) is None) is holds


def test_every_failed_assertion_is_reported_with_its_description_and_one_without_says_which():
    rules = {"A": {"Assertions": [{"Assert": {"Fn::Equals": ["x", "y"]}, "AssertDescription": "first"},
                                  {"Assert": {"Fn::Equals": ["x", "x"]}, "AssertDescription": "holds"},
                                  {"Assert": {"Fn::Equals": ["x", "z"]}}]},
             "B": {"Assertions": [{"Assert": {"Fn::Equals": ["x", "y"]}, "AssertDescription": "second"}]}}
    assert refusal(rules) == "Rules.A: first\nRules.A: assertion 2 is false\nRules.B: second"


@pytest.mark.parametrize(("rules", "message"), [
    (rule({"Fn::ValueOf": ["Subnet", "VpcId"]}), "Fn::ValueOf is not a rule function sagalocal evaluates"),
    (rule({"Fn::RefAll": "AWS::EC2::VPC::Id"}), "Fn::RefAll is not a rule function"),
    (rule({"Fn::Equals": [{"Ref": "SomeBucket"}, "x"]}), "Ref 'SomeBucket': a rule may refer to parameters only"),
    (rule({"Fn::Equals": ["x"]}), "Fn::Equals takes a list of 2 arguments"),
    (rule({"Fn::And": [{"Fn::Equals": ["x", "x"]}]}), "Fn::And takes a list of 2 to 10 arguments"),
    (rule({"Fn::Contains": ["prod", "prod"]}), "first argument is a list of strings"),
    (rule({"Ref": "Stage"}), "is not a condition"),
    ({"R": {"Assert": {"Fn::Equals": ["x", "x"]}}}, "Rules.R: a rule has Assertions"),
    ({"R": {"Assertions": [{"Fn::Equals": ["x", "x"]}]}}, "Rules.R.Assertions[0]: an Assert"),
])
def test_a_rule_the_local_stack_cannot_evaluate_is_an_error_that_names_it(rules, message):
    assert message in refusal(rules)


def test_the_rules_see_the_overrides_after_the_parameters_own_constraints():
    with pytest.raises(TemplateError, match="Parameters.Size: 'x' is not a number"):
        parameter_values(PARAMETERS, {"Size": "x"})
    with pytest.raises(TemplateError, match="no parameter named Nope"):
        parameter_values(PARAMETERS, {"Nope": "1"})


# ---- template.yaml's rules --------------------------------------------------------------------------------------
PRODUCTION_NAMES = ["prod", "production", "prd", "live"]
TEST_NAMES = ["dev", "test", "ci", "qa", "staging", "sandbox", "bench", "local"]
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:order-saga-stripe-AbCdEf"
OTHER_NAMES = ["prod-eu", "prod-test", "preprod", "prod1", "lve", "alice"]  # neither: Production must say


def refused_by(**overrides: str) -> list[str]:
    """The names of the template.yaml rules these parameter values fail, in order ([] when they deploy)."""
    try:
        Template(ROOT / "template.yaml", parameter_overrides=overrides)
    except TemplateError as exc:
        return [line.split(":")[0].removeprefix("Rules.") for line in str(exc).splitlines()]
    return []


@pytest.mark.parametrize("overrides", [*({"Stage": stage} for stage in PRODUCTION_NAMES),
                                       *({"Stage": stage, "Production": "true"}
                                         for stage in [*PRODUCTION_NAMES, *TEST_NAMES, *OTHER_NAMES])])
def test_production_refuses_the_fake_gateway_and_says_what_to_do(overrides):
    """Production: Production=true on any Stage, or a Stage named as production (prd and live too: the names that
    went past a rule comparing against prod and production only)."""
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides=overrides)
    message = str(refused.value)
    assert message.startswith("Rules.NoFakeGatewayInProduction: PaymentGateway=fake cannot deploy to production")
    assert "tok_approve" in message  # why
    assert "Deploy with PaymentGateway=stripe and StripeSecretArn=" in message  # what to do
    assert "implement a real adapter" in message  # or, for another processor
    assert "AllowedValues" in message
    assert "FaultInjection" not in message  # the other rule holds: FaultInjection defaults to false


@pytest.mark.parametrize("overrides", [{"Stage": "prod"}, {"Stage": "live"},
                                       {"Stage": "prod-eu", "Production": "true"}])
def test_production_refuses_fault_injection_too(overrides):
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides={**overrides, "FaultInjection": "true"})
    assert [line.split(":")[0] for line in str(refused.value).splitlines()] == [
        "Rules.NoFakeGatewayInProduction", "Rules.NoFaultInjectionInProduction"]
    assert "Deploy with FaultInjection=false" in str(refused.value)


@pytest.mark.parametrize("stage", OTHER_NAMES)
def test_a_stage_name_neither_production_nor_a_known_test_one_must_say_which_it_is(stage):
    """prod-eu and the like: a rule cannot match a prefix, so an unknown name deploys nothing until Production says."""
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides={"Stage": stage, "FaultInjection": "true"})
    message = str(refused.value)
    assert message.startswith("Rules.ProductionIsStated: This Stage is neither a production name")
    assert "Production=true for a production stack" in message
    assert "Production=false for a test stack" in message
    assert len(message.splitlines()) == 1  # not (yet) production: the other rules hold
    assert refused_by(Stage=stage, Production="false", FaultInjection="true") == []


@pytest.mark.parametrize("stage", PRODUCTION_NAMES)
def test_a_production_stage_name_cannot_be_declared_a_test_stack(stage):
    assert refused_by(Stage=stage, Production="false") == ["ProductionStageIsProduction", "NoFakeGatewayInProduction"]
    assert refused_by(Stage=stage, Production="false", PaymentGateway="stripe", StripeSecretArn=SECRET) == [
        "ProductionStageIsProduction"]


@pytest.mark.parametrize("stage", TEST_NAMES)
@pytest.mark.parametrize("production", ["unstated", "false"])
def test_a_test_stage_deploys_the_fake_gateway_and_fault_injection(stage, production):
    Template(ROOT / "template.yaml", parameter_overrides={"Stage": stage, "Production": production,
                                                          "FaultInjection": "true"})


def test_the_rules_production_names_are_the_parameters_descriptions():
    """The names in the rules are the ones the Stage and Production parameters document, in every rule."""
    raw = Template(ROOT / "template.yaml").raw
    prod = ", ".join(PRODUCTION_NAMES[:-1]) + " and " + PRODUCTION_NAMES[-1]
    assert prod in raw["Parameters"]["Stage"]["Description"]
    assert ", ".join(TEST_NAMES[:-1]) + " and " + TEST_NAMES[-1] in raw["Parameters"]["Stage"]["Description"]
    lists = [node[0] for node in _contains(raw["Rules"])]
    assert len(lists) == 6, lists  # ProductionIsStated, ProductionStageIsProduction, and the four gates
    assert all(names in (PRODUCTION_NAMES, PRODUCTION_NAMES + TEST_NAMES) for names in lists), lists


def _contains(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Fn::Contains":
                yield value
            yield from _contains(value)
    elif isinstance(node, list):
        for value in node:
            yield from _contains(value)


PRODUCTION = [*({"Stage": stage} for stage in PRODUCTION_NAMES), {"Stage": "prod-eu", "Production": "true"}]


@pytest.mark.parametrize("overrides", PRODUCTION)
def test_production_deploys_the_stripe_adapter_on_stripes_own_api(overrides):
    Template(ROOT / "template.yaml", parameter_overrides={**overrides, "PaymentGateway": "stripe",
                                                          "StripeSecretArn": SECRET})


@pytest.mark.parametrize("overrides", PRODUCTION)
def test_production_refuses_the_stripe_adapter_on_any_other_url(overrides):
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides={
            **overrides, "PaymentGateway": "stripe", "StripeSecretArn": SECRET,
            "StripeApiBaseUrl": "http://127.0.0.1:8111"})
    assert str(refused.value).startswith("Rules.NoStripeFakeInProduction: Production (Production=true, or a Stage "
                                         "named prod, production, prd or live) calls Stripe's own API: "
                                         "StripeApiBaseUrl must be https://api.stripe.com")


def test_a_test_stage_may_point_the_stripe_adapter_at_a_local_fake():
    Template(ROOT / "template.yaml", parameter_overrides={"Stage": "dev", "PaymentGateway": "stripe",
                                                          "StripeSecretArn": SECRET,
                                                          "StripeApiBaseUrl": "http://127.0.0.1:8111"})


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_stripe_adapter_needs_its_secret_on_every_stage(stage):
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides={"Stage": stage, "PaymentGateway": "stripe"})
    assert str(refused.value).startswith("Rules.StripeNeedsItsSecretKey: PaymentGateway=stripe needs StripeSecretArn")


def test_a_real_adapter_would_pass_the_production_rule(tmp_path):
    """The rule refuses the fake, not the stage: with another adapter in AllowedValues, prod deploys."""
    text = (ROOT / "template.yaml").read_text().replace("AllowedValues: [fake, stripe]\n",
                                                        "AllowedValues: [fake, stripe, acme]\n")
    (tmp_path / "template.yaml").write_text(text)
    Template(tmp_path / "template.yaml", parameter_overrides={"Stage": "prod", "PaymentGateway": "acme"})
    with pytest.raises(TemplateError, match="NoFakeGatewayInProduction"):
        Template(tmp_path / "template.yaml", parameter_overrides={"Stage": "prod"})


@pytest.mark.parametrize("overrides", [{"Stage": "prod"}, {"Stage": "live"}, {"Stage": "ci", "Production": "true"}])
def test_production_refuses_the_header_auth_that_lets_a_request_name_its_customer(overrides):
    real = {"PaymentGateway": "stripe", "StripeSecretArn": SECRET}
    assert refused_by(**overrides, **real, ApiAuth="header") == ["NoHeaderAuthInProduction"]
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides={**overrides, **real, "ApiAuth": "header"})
    assert "anyone could place and read any customer's orders" in str(refused.value)
    assert "Deploy with ApiAuth=cognito" in str(refused.value)
    assert refused_by(**overrides, **real) == []  # cognito, the default


@pytest.mark.parametrize("stage", TEST_NAMES)
def test_a_test_stage_may_deploy_the_header_auth(stage):
    assert refused_by(Stage=stage, ApiAuth="header", FaultInjection="true") == []
