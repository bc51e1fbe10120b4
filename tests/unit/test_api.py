"""The orders API handler: validation, idempotency, starting the saga, reading an order."""

from __future__ import annotations

import json
import os

import boto3
import pytest

from sagalocal.apigateway import find_route, proxy_event
from sagalocal.provision import Route, routes_of
from sagalocal.template import Template
from tests.unit.conftest import ROOT, scan_all

ROUTES = routes_of(Template(ROOT / "template.yaml"))
GOOD = {"items": [{"sku": "SKU-1", "quantity": 2}], "payment_token": "tok_approve"}
ALICE, BOB = "5f0c3c4e-alice", "9a1d7b22-bob"  # the `sub` claims API Gateway's authorizer passes


def call(api, context, method, path, body=None, headers=None, customer: str | None = ALICE):
    """The request as API Gateway passes it, signed in as `customer` (None: no authorizer claims)."""
    path = path.removeprefix("/dev")
    found = find_route(ROUTES, method, path)
    assert found is not None, f"no route for {method} {path}"
    route, params = found
    raw = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    authorizer = None if customer is None else {"claims": {"sub": customer, "token_use": "id"}}
    event = proxy_event(route, method, path, params, headers or {}, {}, raw, "dev", "123456789012", authorizer)
    response = api.lambda_handler(event, context)
    return response["statusCode"], json.loads(response["body"]), response


def executions():
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    return sfn.list_executions(stateMachineArn=os.environ["STATE_MACHINE_ARN"])["executions"]


def test_post_starts_one_named_execution_and_returns_202(api, context, aws):
    status, body, response = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-1"})
    assert status == 202, body
    assert body["status"] == "PENDING"
    assert "execution_arn" not in body  # it carries the account id
    assert body["links"]["order"] == f"/dev/orders/{body['order_id']}"  # with the stage, as the client called
    assert response["multiValueHeaders"]["Location"] == [body["links"]["order"]]
    assert [e["name"] for e in executions()] == [body["order_id"]]
    status, view, _ = call(api, context, "GET", body["links"]["order"])
    assert status == 200
    assert view["saga_status"] == "PENDING"
    assert (view["items"], view["total"]) == (GOOD["items"], 2500)
    assert view["steps"] == []
    assert "tok_" not in json.dumps(view)
    assert "execution_arn" not in view
    assert view["customer_id"] == ALICE


def test_the_order_records_the_unqualified_execution_arn_whichever_arn_starts_it(api):
    """The API starts executions on the alias `live`; the execution's ARN is the state machine's all the same
    (Step Functions names an execution after the state machine alone), which the reaper stops it by."""
    machine = "arn:aws:states:us-east-1:123456789012:stateMachine:order-saga-dev"
    expected = "arn:aws:states:us-east-1:123456789012:execution:order-saga-dev:ord_1"
    for started_on in (machine, f"{machine}:live", f"{machine}:7"):
        assert api.execution_arn_of(started_on, "ord_1") == expected


def test_the_customer_is_the_signed_in_user_never_the_body(api, context, aws):
    tables = scan_all(aws)
    status, payload, _ = call(api, context, "POST", "/orders", {**GOOD, "customer_id": BOB}, {"Idempotency-Key": "k"})
    assert status == 400, payload
    assert [d["where"] for d in payload["details"]] == ["body.customer_id"]
    assert payload["details"][0]["type"] == "extra_forbidden"
    assert scan_all(aws) == tables
    assert executions() == []


def test_without_the_authorizer_s_claims_the_api_answers_401_and_writes_nothing(api, context, aws):
    tables = scan_all(aws)
    for method, path, body in (("POST", "/orders", GOOD), ("GET", "/orders/ord_x", None)):
        status, payload, _ = call(api, context, method, path, body, {"Idempotency-Key": "k"}, customer=None)
        assert (status, payload) == (401, {"error": "not signed in"})
    assert scan_all(aws) == tables


def test_the_default_cognito_mode_never_takes_the_customer_from_a_header(api, context, aws):
    assert api.HEADER_AUTH is False  # API_AUTH unset: cognito, the template's default
    tables = scan_all(aws)
    status, payload, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "k", "X-Customer-Id": BOB},
                              customer=None)
    assert (status, payload) == (401, {"error": "not signed in"})
    assert scan_all(aws) == tables


def test_the_header_mode_names_the_customer_only_without_claims_and_only_a_well_formed_one(api, context, aws,
                                                                                            monkeypatch):
    """ApiAuth=header (a test stack on an engine without Cognito): without the authorizer's claims the request's
    X-Customer-Id is the customer; with claims, the claims are (a header never overrides a verified token)."""
    monkeypatch.setattr(api, "HEADER_AUTH", True)
    named = {"Idempotency-Key": "by-header", "x-customer-id": BOB}  # any case, as HTTP headers are
    status, placed, _ = call(api, context, "POST", "/orders", GOOD, named, customer=None)
    assert status == 202, placed
    assert call(api, context, "GET", placed["links"]["order"], headers={"X-Customer-Id": BOB}, customer=None)[1][
        "customer_id"] == BOB
    assert call(api, context, "GET", placed["links"]["order"], headers={"X-Customer-Id": ALICE}, customer=None)[0] \
        == 404
    status, signed, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "k2", "X-Customer-Id": BOB})
    assert status == 202
    assert call(api, context, "GET", signed["links"]["order"])[1]["customer_id"] == ALICE
    tables = scan_all(aws)
    for bad in ("", "a b", "x" * 129, "../etc", "bob\n"):
        headers = {"Idempotency-Key": "k3", "X-Customer-Id": bad}
        status, payload, _ = call(api, context, "POST", "/orders", GOOD, headers, customer=None)
        assert (status, payload) == (401, {"error": "not signed in"}), bad
    assert scan_all(aws) == tables


def test_a_customer_sees_only_their_own_orders(api, context):
    placed = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "mine"})[1]
    assert call(api, context, "GET", placed["links"]["order"])[0] == 200
    status, theirs, _ = call(api, context, "GET", placed["links"]["order"], customer=BOB)
    status_missing, missing, _ = call(api, context, "GET", "/orders/ord_00000000000000000000000000000000",
                                      customer=BOB)
    assert (status, status_missing) == (404, 404)
    assert theirs == {"error": f"order {placed['order_id']} not found"}  # word for word what a missing one says
    assert set(theirs) == set(missing)


def test_idempotency_keys_are_scoped_per_customer(api, context):
    alice = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "same-key"})
    bob = call(api, context, "POST", "/orders", {**GOOD, "payment_token": "tok_decline"},
               {"Idempotency-Key": "same-key"}, customer=BOB)
    assert (alice[0], bob[0]) == (202, 202)  # not 422: Bob's key is not Alice's
    assert alice[1]["order_id"] != bob[1]["order_id"]
    assert len(executions()) == 2


def test_the_api_writes_the_order_and_the_card_in_two_requests(api, context):
    before = api.store.attempts
    status, _, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-count"})
    assert status == 202
    assert api.store.attempts - before == 2  # the catalog read, and one transaction: order and payment


def test_the_card_token_is_stored_only_in_the_payments_table(api, context, aws):
    _, body, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-token"})
    tables = scan_all(aws)
    holders = [table for table, items in tables.items() if "tok_approve" in json.dumps(items)]
    assert holders == [os.environ["PAYMENTS_TABLE"]]
    [execution] = executions()
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    assert "tok_" not in sfn.describe_execution(executionArn=execution["executionArn"])["input"]


def test_same_key_same_body_replays_the_first_response(api, context):
    first = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-1"})
    second = call(api, context, "POST", "/orders", GOOD, {"idempotency-key": "key-1"})
    assert second[0] == 202
    assert second[1] == first[1]
    assert len(executions()) == 1


def test_a_resubmission_starts_a_saga_the_first_request_never_started(api, context, monkeypatch):
    """The first request wrote the order, then died before StartExecution: the retry starts it."""
    real = api._sfn.start_execution

    def crash(**kwargs):
        raise RuntimeError("the function died here")

    monkeypatch.setattr(api._sfn, "start_execution", crash)
    with pytest.raises(RuntimeError):
        call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-crash"})
    assert executions() == []
    monkeypatch.setattr(api._sfn, "start_execution", real)
    status, body, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-crash"})
    assert status == 202
    assert [e["name"] for e in executions()] == [body["order_id"]]


def test_same_key_different_body_is_422_and_starts_nothing(api, context, aws):
    call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-1"})
    tables = scan_all(aws)
    for changed in ({**GOOD, "items": [{"sku": "SKU-1", "quantity": 3}]}, {**GOOD, "payment_token": "tok_decline"}):
        status, body, _ = call(api, context, "POST", "/orders", changed, {"Idempotency-Key": "key-1"})
        assert status == 422
        assert "different request body" in body["error"]
    assert len(executions()) == 1
    assert scan_all(aws) == tables


def test_different_keys_start_different_sagas(api, context):
    a = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-a"})[1]
    b = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-b"})[1]
    assert a["order_id"] != b["order_id"]
    assert len(executions()) == 2


BAD_REQUESTS = [
    ("missing key", GOOD, {}),
    ("empty key", GOOD, {"Idempotency-Key": ""}),
    ("no body", None, {"Idempotency-Key": "k"}),
    ("not json", b"{nope", {"Idempotency-Key": "k"}),
    ("json array", [1, 2], {"Idempotency-Key": "k"}),
    ("no items", {**GOOD, "items": []}, {"Idempotency-Key": "k"}),
    ("zero quantity", {**GOOD, "items": [{"sku": "SKU-1", "quantity": 0}]}, {"Idempotency-Key": "k"}),
    ("negative quantity", {**GOOD, "items": [{"sku": "SKU-1", "quantity": -1}]}, {"Idempotency-Key": "k"}),
    ("string quantity", {**GOOD, "items": [{"sku": "SKU-1", "quantity": "2"}]}, {"Idempotency-Key": "k"}),
    ("float quantity", {**GOOD, "items": [{"sku": "SKU-1", "quantity": 1.5}]}, {"Idempotency-Key": "k"}),
    ("huge quantity", {**GOOD, "items": [{"sku": "SKU-1", "quantity": 10**9}]}, {"Idempotency-Key": "k"}),
    ("5,000-digit quantity", ('{"payment_token": "tok_approve", "items": [{"sku": "SKU-1", '
                              '"quantity": ' + "9" * 5000 + "}]}").encode(), {"Idempotency-Key": "k"}),
    ("client amount", {**GOOD, "amount": 1}, {"Idempotency-Key": "k"}),
    ("price in line", {**GOOD, "items": [{"sku": "SKU-1", "quantity": 1, "unit_price": 1}]},
     {"Idempotency-Key": "k"}),
    ("duplicate sku", {**GOOD, "items": [{"sku": "SKU-1", "quantity": 1}] * 2}, {"Idempotency-Key": "k"}),
    ("too many lines", {**GOOD, "items": [{"sku": f"S{i}", "quantity": 1} for i in range(51)]},
     {"Idempotency-Key": "k"}),
    ("customer in the body", {**GOOD, "customer_id": "c"}, {"Idempotency-Key": "k"}),
    ("missing token", {k: v for k, v in GOOD.items() if k != "payment_token"}, {"Idempotency-Key": "k"}),
    ("huge body", {**GOOD, "filler": "x" * 1_000_000}, {"Idempotency-Key": "k"}),
    ("token with spaces", {**GOOD, "payment_token": "tok approve"}, {"Idempotency-Key": "k"}),
]


@pytest.mark.parametrize(("case", "body", "headers"), BAD_REQUESTS, ids=[c for c, _, _ in BAD_REQUESTS])
def test_bad_request_is_400_with_a_clear_error_and_writes_nothing(api, context, aws, case, body, headers):
    tables = scan_all(aws)
    status, payload, _ = call(api, context, "POST", "/orders", body, headers)
    assert status == 400, payload
    assert payload["error"] == "invalid request"
    assert payload["details"]
    assert all(d["problem"] for d in payload["details"])
    assert None not in payload.values()
    assert scan_all(aws) == tables
    assert executions() == []


# A request places exactly one order: its body is one JSON object, each key once. Anything else is a 400 that
# writes nothing and starts no saga (issue 20: an array of two orders was answered 202 and placed the first).
OTHER = {"items": [{"sku": "SKU-2", "quantity": 1}], "payment_token": "tok_approve"}
GOOD_TEXT = json.dumps(GOOD)
NOT_AN_OBJECT = "the body must be one order, a JSON object"
MORE = "the body holds more than one JSON value"
NOT_ONE_ORDER = [  # (case, body, the detail's type, what its problem says)
    ("array of one order", [GOOD], "body_not_an_object", "a JSON array"),
    ("array of two orders", [GOOD, OTHER], "body_not_an_object", "a JSON array"),
    ("empty array", [], "body_not_an_object", "a JSON array"),
    ("string", json.dumps(GOOD_TEXT).encode(), "body_not_an_object", "a JSON string"),
    ("number", b"1", "body_not_an_object", "a JSON number"),
    ("null", b"null", "body_not_an_object", "JSON null"),
    ("true", b"true", "body_not_an_object", "JSON true"),
    ("false", b"false", "body_not_an_object", "JSON false"),
    # Python's json keeps a duplicate key's last value, other parsers the first: every duplicate is refused.
    ("duplicate key, both values valid", b'{"items": [{"sku": "SKU-1", "quantity": 2}], '
                                         b'"payment_token": "tok_decline", "payment_token": "tok_approve"}',
     "duplicate_key", '"payment_token"'),
    ("duplicate key, same value twice", b'{"items": [{"sku": "SKU-1", "quantity": 2}], '
                                        b'"payment_token": "tok_approve", "payment_token": "tok_approve"}',
     "duplicate_key", '"payment_token"'),
    ("duplicate key, escaped the second time", b'{"items": [{"sku": "SKU-1", "quantity": 2}], '
                                               b'"payment_token": "tok_decline", "payment\\u005ftoken": "tok_approve"}',
     "duplicate_key", '"payment_token"'),
    ("duplicate key in a line", b'{"items": [{"sku": "SKU-1", "quantity": 1, "quantity": 2}], '
                                b'"payment_token": "tok_approve"}', "duplicate_key", '"quantity"'),
    ("duplicate items", b'{"items": [{"sku": "SKU-1", "quantity": 1}], "payment_token": "tok_approve", '
                        b'"items": [{"sku": "SKU-2", "quantity": 1}]}', "duplicate_key", '"items"'),
    ("two concatenated objects", (GOOD_TEXT + json.dumps(OTHER)).encode(), "json_invalid", MORE),
    ("two objects, one per line", (GOOD_TEXT + "\n" + json.dumps(OTHER) + "\n").encode(), "json_invalid", MORE),
    ("an object then an array", (GOOD_TEXT + "[]").encode(), "json_invalid", MORE),
    ("NaN, which is not JSON", b'{"items": [{"sku": "SKU-1", "quantity": NaN}], "payment_token": "tok_approve"}',
     "json_invalid", "NaN is not a JSON value"),
]


@pytest.mark.parametrize(("case", "body", "kind", "named"), NOT_ONE_ORDER, ids=[c for c, *_ in NOT_ONE_ORDER])
def test_a_body_that_is_not_exactly_one_order_object_is_400_and_writes_nothing(api, context, aws, case, body,
                                                                                kind, named):
    tables = scan_all(aws)
    status, payload, _ = call(api, context, "POST", "/orders", body, {"Idempotency-Key": "k"})
    assert status == 400, payload
    assert payload["error"] == "invalid request"
    [detail] = payload["details"]
    assert (detail["where"], detail["type"]) == ("body", kind), detail
    assert named in detail["problem"], detail
    if kind == "body_not_an_object":
        assert detail["problem"].startswith(NOT_AN_OBJECT), detail
    assert scan_all(aws) == tables
    assert executions() == []


def test_an_order_wrapped_in_another_key_is_400_and_writes_nothing(api, context, aws):
    """`{"order": {...}}` is an object, but not an order: its key is unknown and its items are missing."""
    tables = scan_all(aws)
    status, payload, _ = call(api, context, "POST", "/orders", {"order": GOOD}, {"Idempotency-Key": "k"})
    assert status == 400, payload
    assert {(d["where"], d["type"]) for d in payload["details"]} == {("body.order", "extra_forbidden"),
                                                                    ("body.items", "missing")}
    assert scan_all(aws) == tables
    assert executions() == []


def test_the_same_order_as_one_object_is_accepted(api, context):
    """The cases above are refused for their shape alone: the order they carry is a good one."""
    for n, order in enumerate((GOOD, OTHER)):
        status, body, _ = call(api, context, "POST", "/orders", order, {"Idempotency-Key": f"k-{n}"})
        assert status == 202, body
    assert len(executions()) == 2


def test_unknown_sku_is_422_and_writes_nothing(api, context, aws):
    tables = scan_all(aws)
    body = {**GOOD, "items": [{"sku": "SKU-1", "quantity": 1}, {"sku": "NOPE", "quantity": 1}]}
    status, payload, _ = call(api, context, "POST", "/orders", body, {"Idempotency-Key": "k"})
    assert status == 422
    assert payload == {"error": "unknown items", "unknown_skus": ["NOPE"]}
    assert scan_all(aws) == tables


def test_get_unknown_order_is_404(api, context):
    status, payload, _ = call(api, context, "GET", "/orders/ord_doesnotexist")
    assert status == 404
    assert payload == {"error": "order ord_doesnotexist not found"}


def test_get_malformed_order_id_is_400(api, context):
    status, _, _ = call(api, context, "GET", "/orders/" + "x" * 200)
    assert status == 400


def test_route_table_matches_the_template():
    assert {(r.method, r.resource) for r in ROUTES} == {("POST", "/orders"), ("GET", "/orders/{order_id}")}
    assert find_route(ROUTES, "DELETE", "/orders/x") is None
    assert isinstance(find_route(ROUTES, "GET", "/orders/abc")[0], Route)


def test_openapi_document_is_current(api):
    """docs/openapi.json is generated from the resolver; regenerate with `make openapi`."""
    from scripts.generate_openapi import document

    committed = json.loads((ROOT / "docs/openapi.json").read_text())
    assert committed == document()
    assert set(committed["paths"]) == {"/orders", "/orders/{order_id}"}
    post = committed["paths"]["/orders"]["post"]
    assert {p["name"].lower() for p in post["parameters"]} == {"idempotency-key"}
    assert {"202", "400", "401", "422"} <= set(post["responses"])


def test_a_start_execution_refused_is_503_and_the_retry_starts_the_saga(api, context, monkeypatch):
    """Step Functions refuses the start (throttled): the order is recorded, the answer says to retry with the
    same key, and the retry starts the saga once."""
    from botocore.exceptions import ClientError

    real = api._sfn.start_execution

    def throttled(**kwargs):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "StartExecution")

    monkeypatch.setattr(api._sfn, "start_execution", throttled)
    status, body, response = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-throttled"})
    retry_after = (response.get("headers") or {}).get("Retry-After") or \
        ((response.get("multiValueHeaders") or {}).get("Retry-After") or [None])[0]
    assert (status, retry_after) == (503, "1")
    assert "retry with the same Idempotency-Key" in body["error"]
    assert executions() == []
    monkeypatch.setattr(api._sfn, "start_execution", real)
    status, body, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-throttled"})
    assert status == 202
    assert [e["name"] for e in executions()] == [body["order_id"]]


@pytest.mark.parametrize(("case", "body", "headers", "status", "problem"), [
    ("not JSON content", b"items=1", {"Idempotency-Key": "k", "Content-Type": "text/plain"}, 415, None),
    ("not UTF-8", b'{"items": "\xff\xfe"}', {"Idempotency-Key": "k", "Content-Type": "application/json"}, 400,
     "the body is not UTF-8 text"),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, {"Idempotency-Key": "k"}, 400,
     "the JSON body is nested too deeply"),
], ids=["415", "utf-8", "depth"])
def test_a_body_the_api_cannot_read_is_refused_and_writes_nothing(api, context, aws, case, body, headers, status,
                                                                   problem):
    """Bodies that only a raw HTTP client sends (the stack tier's fuzzing sends them too): a clear 4xx, nothing
    written, no saga started."""
    tables = scan_all(aws)
    answered, payload, _ = call(api, context, "POST", "/orders", body, headers)
    assert answered == status, payload
    if problem:
        assert [d["problem"] for d in payload["details"]] == [problem]
    else:
        assert "application/json" in payload["error"]
    assert scan_all(aws) == tables
    assert executions() == []


def test_a_start_execution_whose_answer_was_lost_is_found_by_the_retry(api, context, monkeypatch):
    """The first request's StartExecution started the saga but its answer never came back (the API answered 503);
    by the retry the execution has ended, so StartExecution answers ExecutionAlreadyExists (as it does for a closed
    execution of that name): the retry answers 202 for the execution already there and starts nothing more."""
    real = api._sfn.start_execution

    def lost(**kwargs):
        real(**kwargs)
        raise api._sfn.exceptions.ClientError(
            {"Error": {"Code": "ServiceUnavailable", "Message": "the answer was lost"}}, "StartExecution")

    def closed(**kwargs):
        raise api._sfn.exceptions.ExecutionAlreadyExists(
            {"Error": {"Code": "ExecutionAlreadyExists", "Message": "Execution Already Exists"}}, "StartExecution")

    monkeypatch.setattr(api._sfn, "start_execution", lost)
    first, _, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-lost"})
    assert first == 503
    monkeypatch.setattr(api._sfn, "start_execution", closed)
    status, body, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-lost"})
    assert status == 202, body
    assert [e["name"] for e in executions()] == [body["order_id"]]


def test_a_cancelled_order_shows_the_step_that_failed_in_its_step_log(api, context, aws):
    """GET /orders/{id}: the failure a compensation recorded appears in the step log, in time order."""
    _, placed, _ = call(api, context, "POST", "/orders", GOOD, {"Idempotency-Key": "key-failed"})
    aws.update_item(TableName=os.environ["ORDERS_TABLE"], Key={"order_id": {"S": placed["order_id"]}},
                    UpdateExpression="SET failure = :f",
                    ExpressionAttributeValues={":f": {"M": {"step": {"S": "AuthorizePayment"}, "at": {"N": "1"},
                                                            "error": {"S": "PaymentDeclined"}}}})
    status, order, _ = call(api, context, "GET", f"/orders/{placed['order_id']}")
    assert status == 200, order
    failed = [s for s in order["steps"] if s["status"] == "FAILED"]
    assert failed == [{"step": "AuthorizePayment", "status": "FAILED", "at": 1, "error": "PaymentDeclined"}]
