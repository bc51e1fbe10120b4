"""The embedded stack's API Gateway and IAM, on their own: the authorizer, throttling, access logs, stage
prefixes, and the identity-based policy evaluation the DynamoDB process and the AWS endpoint enforce."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from sagalocal.apigateway import AccessLog, TokenBucket, serve_api
from sagalocal.cognito import PoolAuthorizer
from sagalocal.iam import Authorizer, Principal, dynamodb_requests, service_request, statements_of
from sagalocal.provision import Route
from sagalocal.stack import free_port

POOL_ARN = "arn:aws:cognito-idp:us-east-1:123456789012:userpool/us-east-1_TESTPOOL"
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TESTPOOL"
KEY = RSAKey.generate_key(2048, parameters={"kid": "test-key"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "test-key"})


def token(key: RSAKey = KEY, **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": "client-1", "token_use": "id", "sub": "sub-1", "exp": int(time.time()) + 600,
            "iat": int(time.time()), **claims}
    return jwt.encode({"alg": "RS256", "kid": "test-key"}, {k: v for k, v in body.items() if v is not None}, key)


@pytest.fixture
def authorizer() -> PoolAuthorizer:
    pool = PoolAuthorizer(POOL_ARN, "http://127.0.0.1:1", {"client-1"})
    from joserfc.jwk import KeySet

    pool._keys = KeySet([RSAKey.import_key(KEY.as_dict(private=False))])  # what the pool's JWKS serves
    return pool


@pytest.mark.parametrize(("header", "refusal"), [
    ({}, "Unauthorized"),
    ({"Authorization": ""}, "Unauthorized"),
    ({"Authorization": "Bearer "}, "Unauthorized"),
    ({"Authorization": "not-a-jwt"}, "Unauthorized"),
    ({"Authorization": token(OTHER_KEY)}, "Unauthorized"),  # signed by someone else
    ({"Authorization": token(iss="https://cognito-idp.us-east-1.amazonaws.com/other")}, "Unauthorized"),
    ({"Authorization": token(aud=None)}, "Unauthorized"),  # an ID token names its app client
    ({"Authorization": token(token_use="access")}, "Unauthorized"),  # no scopes configured: ID tokens only
    ({"Authorization": token(exp=int(time.time()) - 1)}, "The incoming token has expired"),
])
def test_the_authorizer_refuses_anything_but_a_valid_id_token_of_the_pool(authorizer, header, refusal):
    context, refused = authorizer.authorize(header)
    assert context is None
    assert refused == (401, json.dumps({"message": refusal}, separators=(",", ":")).encode())


def test_an_id_token_of_another_app_client_of_the_pool_is_accepted_as_api_gateway_does(authorizer):
    assert authorizer.authorize({"Authorization": token(aud="a-client-made-after-deploy")})[1] is None


@pytest.mark.parametrize("prefix", ["", "Bearer ", "bearer "])
def test_a_valid_id_token_passes_its_claims_as_strings(authorizer, prefix):
    context, refused = authorizer.authorize({"authorization": prefix + token(**{"cognito:username": "ada"})})
    assert refused is None
    claims = context["claims"]
    assert (claims["sub"], claims["cognito:username"], claims["token_use"]) == ("sub-1", "ada", "id")
    assert all(isinstance(v, str) for v in claims.values())
    assert claims["exp"].endswith(time.strftime("%Y"))  # API Gateway's date form, not a number


def _serve(**stage: Any) -> tuple[Any, str, list[Any]]:
    calls: list[Any] = []

    def invoke(function: str, event: dict[str, Any]) -> Any:
        calls.append(event)
        return SimpleNamespace(error=False, payload={"statusCode": 200, "body": json.dumps({"ok": function})})

    port = free_port()
    server = serve_api([Route("GET", "/orders/{order_id}", "Fn", None)], "dev", "123456789012", invoke, port,
                       **stage)
    return server, f"http://127.0.0.1:{port}", calls


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - a local http URL
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_throttling_answers_429_past_the_burst_and_never_reaches_the_function():
    server, url, calls = _serve(throttle=TokenBucket(rate=0.001, burst=2))
    try:
        statuses = [_get(f"{url}/orders/o1")[0] for _ in range(4)]
    finally:
        server.shutdown()
    assert statuses == [200, 200, 429, 429]
    assert len(calls) == 2


def test_every_request_leaves_an_access_log_line_in_the_stage_format(tmp_path):
    fmt = '{"id":"$context.requestId","sub":"$context.authorizer.claims.sub","status":"$context.status"}'

    def authorize(route: Route, headers: dict[str, str]):
        if headers.get("Authorization") == "good":
            return {"claims": {"sub": "sub-1"}}, None
        return None, (401, b'{"message":"Unauthorized"}')

    server, url, calls = _serve(authorize=authorize, access_log=AccessLog(tmp_path / "access.log", fmt))
    try:
        ok = _get(f"{url}/dev/orders/o1", {"Authorization": "good"})  # with the stage prefix, as Location has it
        refused = _get(f"{url}/orders/o1")
    finally:
        server.shutdown()
    assert (ok[0], refused) == (200, (401, {"message": "Unauthorized"}))
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    # One line per request; the order is the order the responses finished in, which a busy machine may swap.
    assert sorted((line["sub"], line["status"]) for line in lines) == [("-", "401"), ("sub-1", "200")]
    [event] = calls
    assert (event["path"], event["requestContext"]["path"]) == ("/orders/o1", "/dev/orders/o1")
    [served] = [line for line in lines if line["sub"] == "sub-1"]  # the request that reached the function
    assert event["requestContext"]["requestId"] == served["id"]  # logs and function logs correlate
    assert event["requestContext"]["authorizer"] == {"claims": {"sub": "sub-1"}}


# ---- IAM ----------------------------------------------------------------------------------------------------
TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders"


def principal(*statements: dict[str, Any]) -> Principal:
    return Principal(function="fn-1", role="role-1", statements=statements_of(list(statements)))


def test_a_transaction_needs_each_item_s_own_action_on_its_table():
    params = {"TransactItems": [{"Put": {"TableName": "Orders"}}, {"ConditionCheck": {"TableName": "Orders"}},
                                {"Update": {"TableName": "Stock"}}]}
    assert dynamodb_requests("TransactWriteItems", params, "us-east-1", "123456789012") == [
        ("dynamodb:PutItem", TABLE), ("dynamodb:ConditionCheckItem", TABLE),
        ("dynamodb:UpdateItem", "arn:aws:dynamodb:us-east-1:123456789012:table/Stock")]
    assert dynamodb_requests("Query", {"TableName": "Orders", "IndexName": "ByLease"}, "us-east-1",
                             "123456789012") == [("dynamodb:Query", TABLE + "/index/ByLease")]


def test_iam_allows_what_is_granted_refuses_the_rest_and_records_what_was_used():
    iam = Authorizer("123456789012")
    me = principal({"Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:Query"],
                    "Resource": [TABLE, TABLE + "/index/*"]},
                   {"Effect": "Deny", "Action": "dynamodb:Query", "Resource": TABLE + "/index/Secret"})
    iam.register([me])
    assert iam.check(me.access_key_id, [("dynamodb:GetItem", TABLE)]) is None
    assert iam.check(me.access_key_id, [("dynamodb:Query", TABLE + "/index/ByLease")]) is None
    refused = iam.check(me.access_key_id, [("dynamodb:GetItem", TABLE), ("dynamodb:PutItem", TABLE)])
    assert refused == ("User: arn:aws:sts::123456789012:assumed-role/role-1/fn-1 is not authorized to perform: "
                       f"dynamodb:PutItem on resource: {TABLE} because no identity-based policy allows the "
                       "dynamodb:PutItem action")
    assert "explicit deny" in iam.check(me.access_key_id, [("dynamodb:Query", TABLE + "/index/Secret")])
    assert iam.check("developer-key", [("dynamodb:DeleteTable", TABLE)]) is None  # not a function's key
    assert iam.used() == {"fn-1": [["dynamodb:GetItem", TABLE], ["dynamodb:Query", TABLE + "/index/ByLease"]]}


def test_other_services_name_the_resource_the_request_acts_on():
    assert service_request("sqs", "SendMessage", {"QueueUrl": "http://h/123456789012/q.fifo"}, "us-east-1",
                           "123456789012") == ("sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:q.fifo")
    arn = "arn:aws:states:us-east-1:123456789012:execution:m:e"
    assert service_request("states", "StopExecution", {"executionArn": arn}, "us-east-1", "1") == (
        "states:StopExecution", arn)
    assert service_request("monitoring", "PutMetricData", {}, "us-east-1", "1") == ("cloudwatch:PutMetricData", "*")


def test_a_start_on_an_alias_is_authorized_as_the_state_machine_s_with_its_qualifier_as_condition():
    """As Step Functions does: the state machine's own ARN is the resource, the version or alias is the condition key
    states:StateMachineQualifier. The API's grant (template.yaml) allows starts on the alias `live` only."""
    from sagalocal.iam import service_context

    machine = "arn:aws:states:us-east-1:123456789012:stateMachine:saga"
    iam = Authorizer("123456789012")
    me = principal({"Effect": "Allow", "Action": "states:StartExecution", "Resource": machine,
                    "Condition": {"ForAnyValue:StringEquals": {"states:StateMachineQualifier": ["live"]}}})
    iam.register([me])

    def start(arn: str) -> str | None:
        params = {"stateMachineArn": arn}
        request = service_request("states", "StartExecution", params, "us-east-1", "123456789012")
        assert request == ("states:StartExecution", machine)
        return iam.check(me.access_key_id, [request], service_context("states", params))

    assert start(f"{machine}:live") is None
    assert "not authorized" in start(machine)  # unqualified: no qualifier, the condition does not hold
    assert "not authorized" in start(f"{machine}:3")
    assert iam.used() == {"fn-1": [["states:StartExecution", machine]]}
    with pytest.raises(ValueError, match="not emulated"):
        statements_of([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
                        "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}])
