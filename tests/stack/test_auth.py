"""Signed-in customers who see only their own orders: the API's Cognito authorizer, on any stack.

Tokens come from the stack's own user pool (moto's Cognito on the embedded stack, Cognito on AWS), through
the same sign-in `sagalocal token` uses. The embedded stack verifies them as API Gateway does (signature
against the pool's JWKS, issuer, audience, token use, expiry).
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from order_saga.models import order_id_for
from tests.stack.support import get_order, http, place

ITEMS = [{"sku": "MUG-BLUE", "quantity": 1}]
BODY = json.dumps({"items": ITEMS, "payment_token": "tok_decline"}).encode()


def post(target, headers: dict[str, str], body: bytes = BODY) -> tuple[int, object]:
    return http("POST", f"{target.api_url}/orders", body, headers)


@pytest.mark.parametrize("case", ["no token", "bearer only", "garbage", "access token", "tampered signature",
                                  "tampered claims"])
def test_a_request_without_a_valid_id_token_is_401_and_writes_nothing(target, case):
    if target.header_auth:  # deployed for an engine without Cognito: say so if that engine enforces one after all
        assert not target.enforces_authorizer(), (
            "ApiAuth=header on an engine whose API Gateway enforces the Cognito authorizer: every request naming its "
            "customer is refused; deploy with ApiAuth=cognito")
        pytest.skip("ApiAuth=header: the target's API Gateway does not enforce an authorizer (LocalStack's free "
                    "image); a request names its customer in X-Customer-Id")
    id_token, sub = target.sign_in("auth-alice")
    header, payload, signature = id_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "someone-else"}).encode()).rstrip(b"=").decode()
    value = {
        "no token": None, "bearer only": "Bearer ", "garbage": "Bearer not-a-token",
        "access token": "Bearer " + signed_in_access_token(target, "auth-alice"),
        "tampered signature": f"Bearer {header}.{payload}.{signature[:-4]}AAAA",
        "tampered claims": f"Bearer {header}.{forged}.{signature}",
    }[case]
    key = uuid.uuid4().hex
    headers = {"Idempotency-Key": key, **({"Authorization": value} if value is not None else {})}
    status, answer = post(target, headers)
    assert (status, answer) == (401, {"message": "Unauthorized"})
    assert target.order(order_id_for(sub, key)) is None
    assert target.order(order_id_for("someone-else", key)) is None
    assert http("GET", f"{target.api_url}/orders/ord_x", headers=headers)[0] == 401


def signed_in_access_token(target, username: str) -> str:
    from sagalocal.signin import sign_in

    return str(sign_in(target.client("cognito-idp"), target.outputs["UserPoolId"], target.outputs["UserPoolClientId"],
                       username)["AccessToken"])


@pytest.mark.embedded_only(reason="forges an expired token with the key moto's Cognito signs with")
def test_an_expired_token_is_refused(target):
    from joserfc import jwt
    from joserfc.jwk import RSAKey
    from moto.utilities.utils import load_resource

    id_token, _ = target.sign_in("auth-alice")
    payload = id_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    key = RSAKey.import_key(load_resource("cognitoidp/resources/jwks-private.json"))
    expired = jwt.encode({"alg": "RS256", "kid": "dummy"}, {**claims, "exp": int(time.time()) - 5}, key)
    still_valid = jwt.encode({"alg": "RS256", "kid": "dummy"}, claims, key)
    assert post(target, {"Idempotency-Key": uuid.uuid4().hex, "Authorization": f"Bearer {expired}"}) == (
        401, {"message": "The incoming token has expired"})
    assert http("GET", f"{target.api_url}/orders/ord_x", headers={"Authorization": f"Bearer {still_valid}"})[0] == 404


def test_the_customer_is_the_token_s_subject_and_a_body_naming_one_is_refused(target):
    _, sub = target.sign_in("auth-alice")
    key = uuid.uuid4().hex
    status, answer = post(target, {"Idempotency-Key": key, **target.auth("auth-alice")},
                          json.dumps({"customer_id": "auth-bob", "items": ITEMS,
                                      "payment_token": "tok_decline"}).encode())
    assert status == 400
    assert [d["where"] for d in answer["details"]] == ["body.customer_id"]
    assert target.order(order_id_for(sub, key)) is None
    status, accepted = post(target, {"Idempotency-Key": key, **target.auth("auth-alice")})
    assert status == 202
    assert "execution_arn" not in accepted
    assert target.order(accepted["order_id"])["customer_id"] == sub


def test_a_customer_reads_only_their_own_orders_and_others_look_missing(target):
    accepted = place(target, ITEMS, "tok_decline", customer="auth-alice")
    mine = http("GET", target.url(accepted["links"]["order"]), headers=target.auth("auth-alice"))
    theirs = http("GET", target.url(accepted["links"]["order"]), headers=target.auth("auth-bob"))
    missing = get_order(target, "ord_" + "0" * 32, customer="auth-bob")
    assert mine[0] == 200
    assert mine[1]["order_id"] == accepted["order_id"]
    assert "execution_arn" not in mine[1]  # it carries the account id
    assert theirs == (404, {"error": f"order {accepted['order_id']} not found"})
    assert missing == (404, {"error": f"order {'ord_' + '0' * 32} not found"})


def test_idempotency_keys_are_per_customer(target):
    key = "shared-" + uuid.uuid4().hex
    alice = place(target, ITEMS, "tok_decline", key=key, customer="auth-alice")
    bob = place(target, ITEMS, "tok_decline", key=key, customer="auth-bob")
    assert alice["order_id"] != bob["order_id"]
    assert alice["order_id"] == order_id_for(target.sign_in("auth-alice")[1], key)
    again = place(target, ITEMS, "tok_decline", key=key, customer="auth-alice")
    assert again["order_id"] == alice["order_id"]  # a resubmission, replayed


def test_the_location_carries_the_stage_and_resolves(target):
    accepted = place(target, ITEMS, "tok_decline", customer="auth-alice")
    location = accepted["links"]["order"]
    assert location.endswith(f"/orders/{accepted['order_id']}")
    assert location != f"/orders/{accepted['order_id']}"
    assert http("GET", target.url(location), headers=target.auth("auth-alice"))[0] == 200
