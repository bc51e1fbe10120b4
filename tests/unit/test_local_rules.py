"""sagalocal/template.py evaluates a template's Rules as CloudFormation does before it creates or updates a stack:
a rule whose RuleCondition is false is skipped, every Assert of the others must hold, and a stack whose parameters
fail one is refused with the assertion's AssertDescription. Then template.yaml's own rules: no fake gateway and no
fault injection on a production stage."""

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
@pytest.mark.parametrize("stage", ["prod", "production"])
def test_a_production_stage_refuses_the_fake_gateway_and_says_what_to_do(stage):
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides={"Stage": stage})
    message = str(refused.value)
    assert message.startswith("Rules.NoFakeGatewayInProduction: PaymentGateway=fake cannot deploy to a production")
    assert "tok_approve" in message  # why
    assert "Deploy with PaymentGateway=stripe and StripeSecretArn=" in message  # what to do
    assert "implement a real adapter" in message  # or, for another processor
    assert "AllowedValues" in message
    assert "FaultInjection" not in message  # the other rule holds: FaultInjection defaults to false


def test_a_production_stage_refuses_fault_injection_too():
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides={"Stage": "prod", "FaultInjection": "true"})
    assert [line.split(":")[0] for line in str(refused.value).splitlines()] == [
        "Rules.NoFakeGatewayInProduction", "Rules.NoFaultInjectionInProduction"]
    assert "Deploy with FaultInjection=false" in str(refused.value)


@pytest.mark.parametrize("stage", ["dev", "bench", "prod-test", "preprod"])
def test_any_other_stage_deploys_the_fake_gateway_and_fault_injection(stage):
    Template(ROOT / "template.yaml", parameter_overrides={"Stage": stage, "FaultInjection": "true"})


SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:order-saga-stripe-AbCdEf"


@pytest.mark.parametrize("stage", ["prod", "production"])
def test_a_production_stage_deploys_the_stripe_adapter_on_stripes_own_api(stage):
    Template(ROOT / "template.yaml", parameter_overrides={"Stage": stage, "PaymentGateway": "stripe",
                                                          "StripeSecretArn": SECRET})


@pytest.mark.parametrize("stage", ["prod", "production"])
def test_a_production_stage_refuses_the_stripe_adapter_on_any_other_url(stage):
    with pytest.raises(TemplateError) as refused:
        Template(ROOT / "template.yaml", parameter_overrides={
            "Stage": stage, "PaymentGateway": "stripe", "StripeSecretArn": SECRET,
            "StripeApiBaseUrl": "http://127.0.0.1:8111"})
    assert str(refused.value).startswith("Rules.NoStripeFakeInProduction: A production Stage (prod, production) "
                                         "calls Stripe's own API: StripeApiBaseUrl must be https://api.stripe.com")


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
