"""The store's retry policy, against the engine's own error responses, and every step under every fault.

The faults are the engine's (DynamoDB rules on its control endpoint) or, to hit one request exactly, a
botocore hook that answers with sagafaults' rendering of DynamoDB's error: either way botocore parses a
real error response, as it would from AWS.
"""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from order_saga.dynamo import to_ddb, values
from order_saga.errors import StoreContention, StoreThrottled
from order_saga.store import CLIENT_CONFIG, Store
from sagafaults.dynamodb import encode, error_response
from tests.unit.helpers import invoke, ledger, new_saga, order, payment, reservation, stock

FORWARD = ["reserve_inventory", "authorize_payment", "confirm_order"]


@pytest.fixture
def engine_rules(dynamodb_engine):
    def add(rule: dict) -> dict:
        request = urllib.request.Request(f"{dynamodb_engine}/_sagalocal/faults",  # noqa: S310 - the local engine
                                         data=json.dumps(rule).encode(), method="POST")
        with urllib.request.urlopen(request) as response:  # noqa: S310
            return json.loads(response.read())

    yield add
    urllib.request.urlopen(urllib.request.Request(f"{dynamodb_engine}/_sagalocal/faults", method="DELETE"))  # noqa: S310


@pytest.fixture
def table(aws):
    name = "store-" + __import__("uuid").uuid4().hex[:8]
    aws.create_table(TableName=name, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    return name


def store() -> Store:
    return Store(boto3.client("dynamodb", config=CLIENT_CONFIG))


@pytest.mark.parametrize("error", ["ProvisionedThroughputExceededException", "ThrottlingException",
                                   "InternalServerError", "ServiceUnavailable", "RequestLimitExceeded"])
def test_throttling_and_server_errors_are_retried(aws, table, engine_rules, error):
    engine_rules({"action": "dynamodb-error", "error": error, "table": table, "count": 3})
    s = store()
    assert s.put(TableName=table, Item=to_ddb({"k": "a", "v": 1})).ok
    assert s.attempts == 4


def test_a_transaction_conflict_is_retried_and_lands_once(aws, table, engine_rules):
    engine_rules({"action": "dynamodb-error", "error": "TransactionConflict", "table": table, "key": "^b$",
                  "count": 2})
    s = store()
    items = {"a": {"Put": {"TableName": table, "Item": to_ddb({"k": "a"}),
                           "ConditionExpression": "attribute_not_exists(k)"}},
             "b": {"Update": {"TableName": table, "Key": to_ddb({"k": "b"}), "UpdateExpression": "ADD n :one",
                              "ExpressionAttributeValues": values(one=1)}}}
    assert s.transact(items) is None
    assert s.attempts == 3
    assert s.get(table, to_ddb({"k": "b"}))["n"] == 1


def test_a_single_write_conflicting_with_a_transaction_is_retried(aws, table, engine_rules):
    engine_rules({"action": "dynamodb-error", "error": "TransactionConflict", "operation": "UpdateItem", "count": 1})
    s = store()
    written = s.update(TableName=table, Key=to_ddb({"k": "c"}), UpdateExpression="ADD n :one",
                       ExpressionAttributeValues=values(one=1), ReturnValues="ALL_NEW")
    assert (written.ok, written.item["n"], s.attempts) == (True, 1, 2)


def test_a_lost_transaction_response_is_retried_with_its_token_and_applies_once(aws, table, engine_rules):
    engine_rules({"action": "dynamodb-response-lost", "operation": "TransactWriteItems", "table": table, "count": 1})
    s = store()
    items = {"d": {"Update": {"TableName": table, "Key": to_ddb({"k": "d"}), "UpdateExpression": "ADD n :one",
                              "ExpressionAttributeValues": values(one=1)}},
             "e": {"Put": {"TableName": table, "Item": to_ddb({"k": "e"}),
                           "ConditionExpression": "attribute_not_exists(k)"}}}
    assert s.transact(items) is None  # the retry carries the same ClientRequestToken: success, not a conflict
    assert s.attempts == 2
    assert s.get(table, to_ddb({"k": "d"}))["n"] == 1  # applied once


def test_a_lost_single_write_response_is_retried_and_finds_its_own_write(aws, table, engine_rules):
    engine_rules({"action": "dynamodb-response-lost", "operation": "PutItem", "table": table, "count": 1})
    s = store()
    written = s.put(TableName=table, Item=to_ddb({"k": "f", "v": 7}), ConditionExpression="attribute_not_exists(k)")
    # The retry's condition fails on the write that did land; the item tells the caller it is its own.
    assert (written.ok, written.item, s.attempts) == (False, {"k": "f", "v": 7}, 2)


def test_a_conflict_that_outlasts_the_budget_is_store_contention(aws, table, engine_rules, monkeypatch):
    engine_rules({"action": "dynamodb-error", "error": "TransactionConflict", "table": table, "count": None})
    s = store()
    # The invocation's time left, as the store reads it: before the call, then after each conflict. On the
    # wall clock a loaded machine could spend the budget inside the first attempt and never show the retry.
    left = iter([2.7, 2.1, 0.5])  # room for a first attempt, for a retry, then not for another
    monkeypatch.setattr(s, "time_left", lambda: next(left, 0.0))
    with pytest.raises(StoreContention, match="conflict after 2 attempts"):
        s.transact({"g": {"Put": {"TableName": table, "Item": to_ddb({"k": "g"})}}})
    assert s.attempts == 2


def test_no_call_starts_that_could_outlive_the_invocation(aws, table):
    s = store()
    s.set_deadline(2_400)  # 1.9 s of budget: less than one attempt's 2 s (connect + read timeout)
    with pytest.raises(StoreThrottled, match="no time left"):
        s.put(TableName=table, Item=to_ddb({"k": "late"}))
    assert s.attempts == 0
    assert aws.get_item(TableName=table, Key=to_ddb({"k": "late"})).get("Item") is None


def test_throttling_that_outlasts_the_attempts_is_store_throttled(aws, table, engine_rules):
    engine_rules({"action": "dynamodb-error", "error": "ThrottlingException", "table": table, "count": None})
    s = store()
    with pytest.raises(StoreThrottled, match="ThrottlingException"):
        s.get(table, to_ddb({"k": "h"}))
    assert s.attempts == 8


def test_a_failed_condition_is_an_answer_not_retried(aws, table):
    s = store()
    assert s.put(TableName=table, Item=to_ddb({"k": "i"})).ok
    written = s.put(TableName=table, Item=to_ddb({"k": "i"}), ConditionExpression="attribute_not_exists(k)")
    assert (written.ok, written.item, s.attempts) == (False, {"k": "i"}, 2)
    cancelled = s.transact({"again": {"Put": {"TableName": table, "Item": to_ddb({"k": "i"}),
                                              "ConditionExpression": "attribute_not_exists(k)"}},
                            "other": {"Put": {"TableName": table, "Item": to_ddb({"k": "j"})}}})
    assert cancelled is not None
    assert (cancelled.failed("again"), cancelled.failed("other")) == (True, False)
    assert (cancelled.item("again"), cancelled.item("other")) == ({"k": "i"}, None)
    assert cancelled.failed_among("ag") == ["again"]
    with pytest.raises(KeyError, match="no item named 'nope'"):
        cancelled.failed("nope")


def test_other_errors_are_raised_as_they_are(aws, table):
    with pytest.raises(ClientError, match="ResourceNotFound"):
        store().get("no-such-table", to_ddb({"k": "x"}))


# ---- every request of every step, under every fault ---------------------------------------------------------
KINDS = ["TransactionConflict", "ThrottlingException", "InternalServerError", "lost-error", "lost-timeout"]


class FaultAt:
    """A botocore hook on one handler's client: request number `at` gets fault `kind`, once."""

    def __init__(self, client, at: int, kind: str) -> None:
        self.client, self.at, self.kind, self.seen, self.fired = client, at, kind, 0, False
        client.meta.events.register("before-send.dynamodb", self)

    def __call__(self, request, event_name="", **_):
        self.seen += 1
        if self.seen != self.at or self.fired:
            return None
        self.fired = True
        operation = event_name.rsplit(".", 1)[-1]
        if self.kind.startswith("lost"):
            self.client._endpoint.http_session.send(request).content  # noqa: B018, SLF001 - applied, then lost
            if self.kind == "lost-timeout":
                from botocore.exceptions import ReadTimeoutError

                raise ReadTimeoutError(endpoint_url=request.url)
            status, body = error_response("InternalServerError", operation, [], 0)
        else:
            n = len(json.loads(request.body).get("TransactItems") or [])
            status, body = error_response(self.kind, operation, [0], n)

        class Raw:
            def stream(self, **_):
                yield encode(body)

        return AWSResponse(request.url, status, {}, Raw())

    def remove(self):
        self.client.meta.events.unregister("before-send.dynamodb", self)


REQUESTS = {"reserve_inventory": 2, "authorize_payment": 3, "confirm_order": 3}
CASES = [(step, at, kind) for step, n in REQUESTS.items() for at in range(1, n + 1) for kind in KINDS]


@pytest.mark.parametrize(("step", "at", "kind"), CASES, ids=[f"{s}-request{a}-{k}" for s, a, k in CASES])
def test_every_step_survives_a_fault_on_any_of_its_requests(aws, handlers, context, step, at, kind):
    """The saga completes exactly as without the fault: stock moved once, money captured once."""
    saga = new_saga(aws)
    for name in FORWARD:
        module = handlers(name)
        fault = FaultAt(module.store.client, at, kind) if name == step else None
        try:
            saga = invoke(module, context, saga)
        finally:
            if fault is not None:
                fault.remove()
        if fault is not None:
            assert fault.fired, f"{step} made fewer than {at} requests"
    assert stock(aws, "SKU-1") == (8, 0, 2)
    assert reservation(aws)["status"] == "COMMITTED"
    assert payment(aws)["status"] == "CAPTURED"
    assert (ledger(aws)["state"], ledger(aws)["amount"]) == ("CAPTURED", 2500)
    assert (order(aws)["status"], order(aws)["saga_status"]) == ("CONFIRMED", "COMPLETED")
