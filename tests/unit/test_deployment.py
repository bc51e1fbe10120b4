"""What makes the template safe to deploy: least privilege, auth, logs without data, alarms, and timeouts that nest.

The stack tier proves the other half of least privilege: every action granted here is one the code uses
(tests/stack/test_privileges.py), and the embedded stack refuses any action not granted, as IAM does.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from order_saga.store import ANSWER_SECONDS, ATTEMPT_SECONDS
from sagalocal.template import Template
from tests.unit.test_template import ROOT, TASKS, TEMPLATE, function_of

RAW = TEMPLATE.raw
FUNCTIONS = TEMPLATE.of_type("AWS::Serverless::Function")
FAULTY = Template(ROOT / "template.yaml", parameter_overrides={"FaultInjection": "true"})
# What the code may call: the data-plane actions it uses, on its own tables, indexes, queue and state machine.
CALLABLE = {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem",
            "dynamodb:BatchGetItem", "dynamodb:Query", "states:StartExecution", "states:StopExecution",
            "states:DescribeExecution",
            "sqs:SendMessage", "events:PutEvents"}
# A function with its own role (PublishOutcome) also needs what Lambda does on its behalf: read its stream (the
# event source mapping; sqs:SendMessage above for its on-failure destination), and write its logs (SAM adds these
# only to the roles it makes).
ON_ITS_BEHALF = {"dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords",
                 "dynamodb:ListStreams", "logs:CreateLogStream", "logs:PutLogEvents",
                 # ...or poll its queue (ReaperWorker's SQS event source mapping)
                 "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
# Actions AWS accepts only on Resource "*": Step Functions' log delivery (and X-Ray, which has no resources).
STAR_ONLY = {"logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
             "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
             "logs:DescribeLogGroups"}


def policies(template: Template, logical_id: str) -> list[Any]:
    """A function's policies: its Policies, or the inline policy documents of the role it names."""
    props = template.properties(logical_id)
    if "Role" in props:
        role = props["Role"]["Fn::GetAtt"][0]
        return [p if set(p) == {"Fn::If"} else p["PolicyDocument"] for p in template.properties(role)["Policies"]]
    return list(props.get("Policies") or [])


def statements(template: Template, logical_id: str) -> list[dict[str, Any]]:
    found = []
    for policy in policies(template, logical_id):
        policy = template.resolve(policy, logical_id) if template is FAULTY else policy
        if isinstance(policy, dict) and "Statement" in policy:
            found += policy["Statement"]
    return found


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_each_function_has_only_explicit_statements_of_callable_actions_on_named_resources(logical_id):
    own_role = "Role" in TEMPLATE.properties(logical_id)
    for policy in policies(TEMPLATE, logical_id):
        if isinstance(policy, dict) and set(policy) == {"Fn::If"}:
            continue  # the fault rules table's statement, only with FaultInjection (checked below)
        assert isinstance(policy, dict), f"{logical_id}: {policy!r} is a managed policy"
        assert set(policy) - {"Version"} == {"Statement"}, \
            f"{logical_id}: {policy!r} is a policy template or managed policy (broader than the code)"
    for statement in statements(TEMPLATE, logical_id):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert statement["Effect"] == "Allow"
        allowed = CALLABLE | (ON_ITS_BEHALF | XRAY if own_role else set())
        assert set(actions) <= allowed, f"{logical_id}: {set(actions) - allowed}"
        assert not any("*" in action for action in actions)
        resource = statement["Resource"]
        if resource == "*":
            assert set(actions) <= XRAY, f"{logical_id}: only X-Ray's actions take no resource"
            continue
        assert not isinstance(resource, list), f"{logical_id}: one named resource per statement"
        text = str(resource)
        assert any(kind in text for kind in ("Table", "Queue", "StateMachine", "EventsBus", "LogGroup")), \
            f"{logical_id}: {resource!r}"


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_fault_injection_adds_only_the_rules_table_and_only_when_it_is_on(logical_id):
    def rules_statements(template: Template) -> list[dict[str, Any]]:
        resolved = [template.resolve(p, logical_id) for p in policies(template, logical_id)
                    if isinstance(p, dict) and set(p) == {"Fn::If"}]
        return [s for p in resolved if isinstance(p, dict) for s in (p.get("PolicyDocument") or p).get("Statement", [])
                if "FaultRulesTable" in str(s.get("Resource"))]

    assert rules_statements(TEMPLATE) == []
    [statement] = rules_statements(FAULTY)
    assert sorted(statement["Action"]) == ["dynamodb:BatchGetItem", "dynamodb:UpdateItem"]


SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:order-saga-stripe-AbCdEf"
STRIPE = Template(ROOT / "template.yaml", parameter_overrides={"PaymentGateway": "stripe", "StripeSecretArn": SECRET})
GATEWAY_FUNCTIONS = ["AuthorizePaymentFunction", "ConfirmOrderFunction", "RefundPaymentFunction",
                     "VoidPaymentFunction", "ReaperWorkerFunction"]


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_the_stripe_adapter_adds_reading_its_one_secret_and_only_where_the_gateway_is_called(logical_id):
    def added(template: Template) -> list[dict[str, Any]]:
        resolved = [template.resolve(p, logical_id) for p in policies(template, logical_id)
                    if isinstance(p, dict) and set(p) == {"Fn::If"}]
        return [s for p in resolved if isinstance(p, dict) for s in (p.get("PolicyDocument") or p).get("Statement", [])
                if "FaultRulesTable" not in str(s.get("Resource"))]

    env = STRIPE.resolve(STRIPE.properties(logical_id).get("Environment", {}).get("Variables", {}), logical_id)
    default_env = TEMPLATE.resolve(TEMPLATE.properties(logical_id).get("Environment", {}).get("Variables", {}),
                                   logical_id)
    assert added(TEMPLATE) == []
    assert not any(name.startswith("STRIPE_") for name in default_env)
    if logical_id not in GATEWAY_FUNCTIONS:
        assert added(STRIPE) == []
        assert "STRIPE_SECRET_ARN" not in env
        return
    assert (env["PAYMENT_GATEWAY"], env["STRIPE_SECRET_ARN"], env["STRIPE_API_BASE_URL"]) == (
        "stripe", SECRET, "https://api.stripe.com")
    reads = [(s["Action"], s["Resource"]) for s in added(STRIPE)]
    assert (["secretsmanager:GetSecretValue"], SECRET) in reads  # exactly the one secret, nothing wider
    extra = [r for r in reads if r != (["secretsmanager:GetSecretValue"], SECRET)]
    # ConfirmOrder reads the payment's PaymentIntent id before it captures (the others already may).
    assert [a for a, _ in extra] == ([["dynamodb:GetItem"]] if logical_id == "ConfirmOrderFunction" else [])


def test_the_state_machine_role_uses_star_only_for_log_delivery_and_xray():
    for policy in TEMPLATE.properties("OrderSagaStateMachine")["Policies"]:
        if isinstance(policy, str):
            assert policy == "AWSXrayWriteOnlyAccess"  # X-Ray's actions take no resource
        elif "Statement" in policy:
            for statement in policy["Statement"]:
                if statement["Resource"] == "*":
                    assert set(statement["Action"]) <= STAR_ONLY
        else:
            assert set(policy) == {"LambdaInvokePolicy"}  # one function each


def test_the_fault_injection_condition_is_off_by_default_and_leaves_nothing_behind():
    assert TEMPLATE.conditions["FaultInjectionEnabled"] is False
    assert "FaultRulesTable" not in TEMPLATE.of_type("AWS::DynamoDB::Table")
    assert "FaultRulesTableName" not in TEMPLATE.outputs({})
    assert FAULTY.conditions["FaultInjectionEnabled"] is True
    for logical_id in FUNCTIONS:
        env = TEMPLATE.resolve(TEMPLATE.properties(logical_id)["Environment"]["Variables"], logical_id)
        assert "FAULT_RULES_TABLE" not in env


def test_apply_coupon_may_move_a_payment_s_amount_only_under_the_continue_coupon_policy():
    """CouponFailurePolicy=continue: ApplyCoupon moves the first payment's amount when it skips a coupon, so its role
    allows UpdateItem on the payments table then, and never under the default `fail` (the stack tier checks every
    grant is used, on a stack with the defaults)."""
    def payments_statements(template: Template) -> list[dict[str, Any]]:
        resolved = [template.resolve(p, "ApplyCouponFunction") for p in policies(template, "ApplyCouponFunction")]
        return [s for p in resolved if isinstance(p, dict) for s in p.get("Statement", [])
                if "PaymentsTable" in str(s.get("Resource"))]

    continuing = Template(ROOT / "template.yaml", parameter_overrides={"CouponFailurePolicy": "continue"})
    assert TEMPLATE.conditions["CouponFailureContinues"] is False
    assert payments_statements(TEMPLATE) == []
    [statement] = payments_statements(continuing)
    assert (statement["Effect"], statement["Action"]) == ("Allow", ["dynamodb:UpdateItem"])
    assert str(statement["Resource"]).endswith("PaymentsTable")  # the table itself, no index
    for template, policy in ((TEMPLATE, "fail"), (continuing, "continue")):
        env = template.resolve(template.properties("ApplyCouponFunction")["Environment"]["Variables"], "ApplyCoupon")
        assert env["COUPON_FAILURE_POLICY"] == policy
    assert TEMPLATE.raw["Parameters"]["CouponFailurePolicy"]["AllowedValues"] == ["fail", "continue"]


def test_every_route_needs_a_signed_in_customer():
    api = TEMPLATE.properties("OrdersApi")
    assert api["Auth"]["DefaultAuthorizer"] == "CustomerAuthorizer"
    assert api["Auth"]["Authorizers"]["CustomerAuthorizer"]["UserPoolArn"] == {"Fn::GetAtt": ["UserPool", "Arn"]}
    for event in TEMPLATE.properties("OrdersApiFunction")["Events"].values():
        assert "Auth" not in event["Properties"], "no route opts out of the authorizer"
    client = TEMPLATE.properties("UserPoolClient")
    assert client["GenerateSecret"] is False
    assert "ALLOW_USER_PASSWORD_AUTH" not in client["ExplicitAuthFlows"]  # passwords never leave the client
    assert TEMPLATE.properties("UserPool")["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True


def test_the_api_has_one_stage_throttling_and_access_logs_without_headers():
    api = TEMPLATE.properties("OrdersApi")
    assert api["OpenApiVersion"].startswith("3.")  # no extra "Stage" stage
    [setting] = api["MethodSettings"]
    assert (setting["ResourcePath"], setting["HttpMethod"]) == ("/*", "*")
    assert {"ThrottlingRateLimit", "ThrottlingBurstLimit"} <= set(setting)
    log_format = api["AccessLogSetting"]["Format"]
    assert "$context.authorizer.claims.sub" in log_format
    assert "$context.requestId" in log_format
    assert not re.search(r"header|authorization|token", log_format, re.IGNORECASE)


def test_logs_carry_no_execution_data_and_the_log_level_parameter_works():
    logging = TEMPLATE.properties("OrderSagaStateMachine")["Logging"]
    assert (logging["Level"], logging["IncludeExecutionData"]) == ("ERROR", False)
    config = RAW["Globals"]["Function"]["LoggingConfig"]
    assert config["LogFormat"] == "JSON"
    assert config["ApplicationLogLevel"] == {"Ref": "LogLevel"}
    assert set(RAW["Parameters"]["LogLevel"]["AllowedValues"]) <= {"TRACE", "DEBUG", "INFO", "WARN", "ERROR",
                                                                   "FATAL"}
    assert "POWERTOOLS_LOG_LEVEL" not in RAW["Globals"]["Function"]["Environment"]["Variables"]


def test_standard_workflows_only():
    assert "WorkflowType" not in RAW["Parameters"]
    assert RAW["Resources"]["OrderSagaStateMachine"]["Properties"]["Type"] == "STANDARD"


COMPENSATIONS = ("RefundPayment", "VoidPayment", "ReleaseCoupon", "ReleaseInventory", "CancelOrder")


def test_an_execution_runs_the_versions_it_was_deployed_with_and_starts_only_on_the_alias():
    """Every forward task invokes the function version published with its state machine version (never the
    unqualified function, whose code a deploy replaces under a running execution); every compensation invokes the
    function's alias, so that a fix deployed for it reaches the executions it parked (a redrive keeps the
    definition the execution started with). The API starts executions on the alias, and its role allows nothing
    else."""
    machine = TEMPLATE.properties("OrderSagaStateMachine")
    alias = machine["AutoPublishAlias"]
    placeholders = {p for p in machine["DefinitionSubstitutions"] if p.endswith("FunctionArn")}
    assert {f"{c}FunctionArn" for c in COMPENSATIONS} <= placeholders
    for placeholder in placeholders:
        function = placeholder.removesuffix("Arn")
        kind = "Alias" if function.removesuffix("Function") in COMPENSATIONS else "Version"
        assert machine["DefinitionSubstitutions"][placeholder] == {"Ref": f"{function}.{kind}"}, placeholder
    for logical_id in FUNCTIONS:  # any change publishes (code, layer, configuration): SAM's AllProperties
        props = TEMPLATE.properties(logical_id)
        assert props["AutoPublishAlias"] == "live"
        assert props["AutoPublishAliasAllProperties"] is True, logical_id
    assert TEMPLATE.properties("SagaLayer")["PublishLambdaVersion"] is True  # a new layer publishes its functions
    api = TEMPLATE.properties("OrdersApiFunction")
    assert api["Environment"]["Variables"]["STATE_MACHINE_ARN"] == {"Ref": f"OrderSagaStateMachineAlias{alias}"}
    [start] = [s for s in statements(TEMPLATE, "OrdersApiFunction") if s["Action"] == "states:StartExecution"]
    assert start["Resource"] == {"Ref": "OrderSagaStateMachine"}  # authorized as the state machine's, ...
    assert start["Condition"] == {"ForAnyValue:StringEquals": {"states:StateMachineQualifier": [alias]}}  # ... on it


def test_a_rollout_is_gradual_and_watched_long_enough_by_the_alarms_that_mean_the_new_version_hurts():
    preference = TEMPLATE.properties("OrderSagaStateMachine")["DeploymentPreference"]
    assert preference["Type"] in ("CANARY", "LINEAR")
    assert 0 < preference["Percentage"] < 100
    alarms = [alarm["Ref"] for alarm in preference["Alarms"]]
    assert set(alarms) <= set(TEMPLATE.of_type("AWS::CloudWatch::Alarm"))
    assert "SagaParkedAlarm" in alarms  # a compensation that failed: the saga's own harm
    assert "ParkedSagasDeadLetterAlarm" not in alarms  # an operator's redrives, not this deploy's doing

    def detection_seconds(logical_id: str) -> float:
        """How long the alarm needs to fire once things go wrong (an iterator age must first grow to its threshold)."""
        alarm = TEMPLATE.properties(logical_id)
        growing = float(alarm["Threshold"]) / 1000 if alarm["MetricName"] == "IteratorAge" else 0.0
        return float(alarm["Period"]) * float(alarm["EvaluationPeriods"]) + growing

    assert preference["Interval"] * 60 >= max(detection_seconds(a) for a in alarms)


def test_a_stream_batch_publish_outcome_gives_up_on_is_kept_in_its_failure_queue_and_raises_an_alarm():
    """Issue 20: a poison record must not block the orders table's stream for its 24 h, nor vanish after them."""
    function = TEMPLATE.properties("PublishOutcomeFunction")
    (mapping,) = [e["Properties"] for e in function["Events"].values() if e["Type"] == "DynamoDB"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]  # the batch goes on past what was done
    assert mapping["BisectBatchOnFunctionError"] is True  # and a failing batch is split until the bad record is alone
    # A record that can never be published is set aside by the function (tests/unit/test_outcome_events.py); any
    # other failure is retried while the record is young enough, so an EventBridge outage loses nothing, and given
    # up on well inside the stream's 24 h, so that it can still be replayed from the stream.
    assert mapping["MaximumRetryAttempts"] == -1
    assert 3600 <= mapping["MaximumRecordAgeInSeconds"] <= 6 * 3600
    publish = TEMPLATE.properties("PublishOutcomeFunction")["Environment"]["Variables"]
    assert publish["OUTCOME_FAILURES_QUEUE_URL"] == {"Ref": "OutcomeFailuresQueue"}
    destination = mapping["DestinationConfig"]["OnFailure"]["Destination"]
    assert destination == {"Fn::GetAtt": ["OutcomeFailuresQueue", "Arn"]}
    queue = TEMPLATE.properties("OutcomeFailuresQueue")
    assert "FifoQueue" not in queue  # a stream's on-failure destination is a standard queue
    assert queue["MessageRetentionPeriod"] == 1209600
    # On AWS the mapping sends the invocation record with the function's role.
    sends = [s for s in statements(TEMPLATE, "PublishOutcomeFunction") if s["Action"] == "sqs:SendMessage"]
    assert [s["Resource"] for s in sends] == [destination]
    alarm = TEMPLATE.properties("OutcomeFailuresAlarm")
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["OutcomeFailuresQueue",
                                                                                "QueueName"]}}]
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # ...and the dashboard shows the queue's depth, by the name the queue has.
    body = json.loads(TEMPLATE.resolve(TEMPLATE.properties("SagaDashboard")["DashboardBody"], "SagaDashboard"))
    name = TEMPLATE.resolve(queue["QueueName"], "OutcomeFailuresQueue")
    depths = [line for widget in body["widgets"] for line in widget["properties"]["metrics"]
              if line[:2] == ["AWS/SQS", "ApproximateNumberOfMessagesVisible"]]
    assert [line[2:4] for line in depths] == [["QueueName", name]]


def test_the_reaper_has_reserved_concurrency_and_its_failures_raise_alarms():
    assert TEMPLATE.properties("ReaperFunction")["ReservedConcurrentExecutions"] == 1
    alarm = TEMPLATE.properties("ReaperFailedAlarm")
    namespace = RAW["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (namespace, "ReaperFailed")
    # The dimensions step.count() emits: service (Powertools) and step.
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {"service": "order-saga", "step": "Reaper"}
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    errors = TEMPLATE.properties("ReaperErrorsAlarm")
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ReaperFunction"}}]


def _number(name: str) -> float:
    return float(TEMPLATE.parameters[name])


def _timeout(logical_id: str) -> float:
    return float(TEMPLATE.resolve(TEMPLATE.properties(logical_id).get("Timeout", 3), logical_id))


def test_every_call_fits_its_function_and_every_function_its_task():
    """docs/timeouts.md's arithmetic, on the template's defaults. A DynamoDB attempt takes at most
    ATTEMPT_SECONDS, the gateway GatewayTimeoutSeconds; the handler keeps ANSWER_SECONDS to answer."""
    gateway = _number("GatewayTimeoutSeconds")
    calls = {  # the calls of the longest path, in order (A: a DynamoDB attempt, G: the gateway)
        "ReserveInventoryFunction": "AA",  # the lease, then the reservation
        # read the payment, the breaker's state, a half-open probe's claim (breaker.py: its other writes only while
        # the rest still fits), mark it sent (payments.py), authorize, record
        "AuthorizePaymentFunction": "AAAAGA",
        # The coupon, the hold (a repeat reads the order back, and under CouponFailurePolicy=continue a skip after a
        # refused hold is written, only if time is left: else StoreThrottled, and the retry skips after one read).
        "ApplyCouponFunction": "AA",
        "ConfirmOrderFunction": "AGGGA",  # commit + CAPTURING, capture each of up to 3 methods, CAPTURED + COMPLETED
        "VoidPaymentFunction": "AAGA",  # take the compensation lease, read the payment, void, record
        "RefundPaymentFunction": "AAGA",
        "ReleaseInventoryFunction": "AAA",
        "ReleaseCouponFunction": "AAA",  # compensation lease, the redemption, the release
        "CancelOrderFunction": "A",
        # catalog, the key's order, order + payment; at the cap the counted orders, their prune, order + payment
        # again (a cap over 99: more pages, each only while the time is left); StartExecution
        "OrdersApiFunction": "AAAAAAA",
    }
    for logical_id, path in calls.items():
        need = ANSWER_SECONDS + path.count("A") * ATTEMPT_SECONDS + path.count("G") * gateway
        assert _timeout(logical_id) >= need, f"{logical_id}: {path} needs {need} s"
    for name, state in TASKS.items():
        assert state["TimeoutSeconds"] >= _timeout(function_of(state)) + 3, name  # + a cold start's init
    forward = [TASKS[name] for name in ("ReserveInventory", "ApplyCoupon", "AuthorizePayment", "ConfirmOrder")]
    longest_attempt = max(state["TimeoutSeconds"] for state in forward)
    longest_delay = max(r["MaxDelaySeconds"] for state in forward for r in state["Retry"])
    # A step renews the lease only once less than half is left: the next step may start with half of it, and its
    # retry after a whole timed-out attempt and the longest wait must still hold it.
    assert _number("LeaseSeconds") / 2 > longest_attempt + longest_delay


def test_the_stack_tier_waits_for_a_late_authorization_as_long_as_authorize_payment_can_run():
    """tests/stack/support.py waits for an AuthorizePayment invocation that outlived its saga (a Map iteration in
    flight when another card failed the Map) up to the function's timeout after it marked its payment sent."""
    from tests.stack.support import LATE_INVOCATION_SECONDS

    timeout = _timeout("AuthorizePaymentFunction")
    assert LATE_INVOCATION_SECONDS - 3 == timeout
    # ...on every stack: no deploy may give the function another timeout.
    assert [float(v) for v in TEMPLATE.raw["Parameters"]["AuthorizePaymentTimeout"]["AllowedValues"]] == [timeout]
