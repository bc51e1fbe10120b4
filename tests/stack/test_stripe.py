"""The stack with PaymentGateway=stripe, against the local Stripe fake (sagalocal/stripe_fake.py).

The embedded stack deploys template.yaml with the Stripe adapter: its secret key in the stack's Secrets Manager
(created by an --init hook, read by each function once per sandbox under its role's GetSecretValue on that one
secret), its API base URL the fake's, on 127.0.0.1 in this process. One order completes (its intent captured),
one declined card compensates (nothing held, nothing captured), and one authorization outlasts the client's
timeout: the saga compensates while the request still executes at Stripe, the authorization lands later, and the
reaper's reconciliation finds it by the payment's key and cancels it.

A deployed stack would run the same tests against Stripe's test mode only with a public URL for the fake or with
Stripe itself (pm_card_fakeSlow_<S> is the fake's own): so these run on the embedded stack only.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from order_saga.stripe_gateway import METADATA_KEY
from sagalocal.stripe_fake import API_KEY, StripeFake
from tests.stack.conftest import start_embedded, stop
from tests.stack.support import path_of, place, wait_for_execution, wait_until

SECRET_NAME = "order_saga_stripe"
SECRET_ARN = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{SECRET_NAME}"  # a partial ARN: the name's
# Longer than AuthorizePayment's whole retry budget (4 attempts of 3 s, up to 7 s of backoff, the invocations' own
# time on a loaded machine), so that the saga gives up and compensates before the authorization lands (as
# test_leases.py's HANG).
SLOW = 30
pytestmark = pytest.mark.embedded_only(reason="the Stripe fake listens on this machine's 127.0.0.1, and "
                                              "pm_card_fakeSlow_<S> is the fake's own test card")


@pytest.fixture(scope="module")
def fake():
    with StripeFake() as server:
        yield server


@pytest.fixture(scope="module")
def stack(fake, tmp_path_factory):
    create_secret = (f"{sys.executable} -c \"import boto3; boto3.client('secretsmanager').create_secret("
                     f"Name='{SECRET_NAME}', SecretString='{API_KEY}')\"")
    process, target = start_embedded(
        tmp_path_factory.mktemp("stripe"), "--init", create_secret,
        overrides=("PaymentGateway=stripe", f"StripeSecretArn={SECRET_ARN}", f"StripeApiBaseUrl={fake.url}",
                   "ReconcileAfterSeconds=1", "LeaseSeconds=60"))
    try:
        yield target
    finally:
        stop(process)


def intents(fake: StripeFake, order_id: str) -> list[dict]:
    return fake.intents_with(METADATA_KEY, f"{order_id}#1")


def test_an_order_completes_with_its_one_intent_captured(stack, fake):
    accepted = place(stack, [{"sku": "MUG-BLUE", "quantity": 1}], "pm_card_visa")
    order_id = accepted["order_id"]
    assert wait_for_execution(stack, accepted["execution_arn"], 120)["status"] == "SUCCEEDED"
    order = stack.order(order_id)
    assert order["saga_status"] == "COMPLETED"
    [intent] = intents(fake, order_id)  # one intent, however many attempts
    assert (intent["status"], intent["capture_method"], intent["amount"]) == ("succeeded", "manual", order["total"])
    payment = stack.payment(order_id)
    assert (payment["status"], payment["authorization"]) == ("CAPTURED", intent["id"])
    assert stack.ledger(order_id) is None  # no fake gateway's ledger: Stripe keeps the records


def test_a_declined_card_compensates_and_nothing_is_held_or_captured(stack, fake):
    accepted = place(stack, [{"sku": "MUG-BLUE", "quantity": 1}], "pm_card_chargeDeclinedInsufficientFunds")
    order_id = accepted["order_id"]
    described = wait_for_execution(stack, accepted["execution_arn"], 120)
    assert stack.order(order_id)["saga_status"] == "COMPENSATED", described
    assert "PaymentDeclined" in json.dumps(stack.order(order_id).get("failure", {}))
    assert [i["status"] for i in intents(fake, order_id)] == ["requires_payment_method"]  # declined, holds nothing
    assert stack.payment(order_id)["status"] == "DECLINED"
    assert stack.reservation(order_id)["status"] == "RELEASED"


def test_an_authorization_landing_after_the_saga_gave_up_is_canceled_by_the_reaper(stack, fake):
    called = time.time()  # before the request: the saga may reach Stripe before the 202 reaches us
    accepted = place(stack, [{"sku": "MUG-BLUE", "quantity": 1}], f"pm_card_fakeSlow_{SLOW}")
    order_id = accepted["order_id"]
    described = wait_for_execution(stack, accepted["execution_arn"], 120)
    assert described["error"] == "PaymentGatewayUnavailable"  # the client's timeout, then the 409 of the replays
    assert "VoidPayment" in [v.name for v in path_of(stack, accepted["execution_arn"])]
    assert stack.order(order_id)["saga_status"] == "COMPENSATED"
    payment = stack.payment(order_id)
    assert payment["status"] == "VOIDED"
    if time.time() - called < SLOW - 1:  # (a loaded machine may take longer than SLOW to get here)
        assert "reconcile_at" in payment  # the void could not tell: the request still executed at Stripe
        assert intents(fake, order_id) == []
    # The authorization lands SLOW s after the call: money held for a cancelled order, until the reaper asks.
    wait_until(lambda: intents(fake, order_id), SLOW + 30, "the slow authorization landed at the fake")
    reaper = stack.outputs["ReaperFunctionName"]

    def reconciled():
        stack.client("lambda").invoke(FunctionName=reaper, Payload=b"{}")
        return stack.payment(order_id).get("reconciled")

    assert wait_until(reconciled, 60, "the reaper reconciled the payment") == "reversed"
    [intent] = intents(fake, order_id)
    assert intent["status"] == "canceled"
    assert stack.payment(order_id)["status"] == "VOIDED"
