"""The embedded DynamoDB engine's concurrency behaviour, on the wire, as botocore parses it.

docs/dynamodb-emulation.md lists what the engine emulates and what it does not; these tests prove the rows
that no other test proves. tests/unit/test_store.py already covers the store's retries of the engine's
fault rules (throttling, 5xx, conflicts, lost responses, token replay).

Two engines: the session's (`dynamodb_engine`, the stack's default 2 ms commit window) and, for the tests
that need two requests to overlap a committing transaction, one of this module's own with a 600 ms window.
The long window changes only how long a committed transaction holds its items, not what conflicts with them.
The last section pins where the engine is kinder than AWS, so the document is updated when the engine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from sagalocal.dynamodb.server import DynamoDBProcess
from sagalocal.stack import free_port

WINDOW_MS = 600  # the slow engine's commit window: long enough for a second request to land inside it
NO_RETRIES = Config(retries={"total_max_attempts": 1}, max_pool_connections=32)


def client(endpoint: str, config: Config = NO_RETRIES) -> Any:
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=config)


def new_table(ddb: Any, **extra: Any) -> str:
    name = "engine-" + uuid.uuid4().hex[:10]
    ddb.create_table(TableName=name, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}, *extra.pop("attributes", [])],
                     BillingMode="PAY_PER_REQUEST", **extra)
    return name


def key(k: str) -> dict[str, Any]:
    return {"k": {"S": k}}


def bump(table: str, k: str, by: str = "t1") -> dict[str, Any]:
    return {"Update": {"TableName": table, "Key": key(k), "UpdateExpression": "SET who = :who ADD n :one",
                       "ExpressionAttributeValues": {":who": {"S": by}, ":one": {"N": "1"}}}}


def code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def reasons(exc: ClientError) -> list[str]:
    return [r["Code"] for r in exc.response.get("CancellationReasons", [])]


def add_rule(endpoint: str, rule: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{endpoint}/_sagalocal/faults", data=json.dumps(rule).encode(),  # noqa: S310
                                     method="POST")
    with urllib.request.urlopen(request) as response:  # noqa: S310 - the local engine
        assert response.status == 201


def stats(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/_sagalocal/stats") as response:  # noqa: S310 - the local engine
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def slow_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = DynamoDBProcess(free_port(), tmp_path_factory.mktemp("slow-dynamodb") / "DynamoDB.log",
                              window_ms=WINDOW_MS)
    process.start()
    try:
        yield process.endpoint
    finally:
        process.stop()


@pytest.fixture
def ddb(dynamodb_engine: str) -> Any:
    return client(dynamodb_engine)


@contextmanager
def committing(ddb: Any, items: list[dict[str, Any]], marker: tuple[str, str],
               **request: Any) -> Iterator[dict[str, Any]]:
    """A TransactWriteItems (with `request`'s other parameters) running in another thread, inside its commit window
    while the block runs.

    `marker` (table, key) is an item the transaction sets `who = t1` on: once a GetItem sees it, the
    transaction has applied its writes and holds its items in flight.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["response"] = ddb.transact_write_items(TransactItems=items, **request)
        except ClientError as exc:  # pragma: no cover - reported by the assertion below
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    applied_at = time.monotonic()  # the earliest the transaction can have applied, and its window opened
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 5
    # A read that does not see the transaction's write was served before it applied, so after it was sent: the
    # window opened after that. (Timed from the read that saw it, a read served late, on a loaded machine, made
    # the window look younger than it was, and a write past its end passed for one inside it.)
    while True:
        sent = time.monotonic()
        if ddb.get_item(TableName=marker[0], Key=key(marker[1]), ConsistentRead=True).get("Item", {}).get("who") \
                == {"S": "t1"}:
            break
        applied_at = sent
        assert time.monotonic() < deadline, "the first transaction never applied"
        assert thread.is_alive() or "error" not in outcome, outcome.get("error")
        time.sleep(0.005)
    try:
        yield outcome
    except BaseException:  # pytest.raises' "DID NOT RAISE" too
        if time.monotonic() - applied_at >= WINDOW_MS / 1000:
            thread.join(timeout=10)
            raise NoOverlap("the block ran past the commit window (a loaded machine): it did not overlap") from None
        raise
    if time.monotonic() - applied_at >= WINDOW_MS / 1000:
        thread.join(timeout=10)
        raise NoOverlap("the block outlasted the commit window (a loaded machine): it did not overlap")
    thread.join(timeout=10)
    assert "error" not in outcome, outcome.get("error")


class NoOverlap(Exception):
    """The block meant to run inside another transaction's commit window started after it closed: what it saw
    proves nothing either way (a loaded machine stalled the test), so the attempt is made again."""


def overlapping(attempt: Any, tries: int = 5) -> Any:
    """`attempt()`, again (on fresh items) as long as it did not overlap the commit window, `tries` times at most."""
    for n in range(tries):
        try:
            return attempt()
        except NoOverlap:
            if n == tries - 1:
                raise
    return None


# ---- transaction conflicts the engine makes by itself ------------------------------------------------------
def test_a_transaction_naming_an_item_of_a_committing_transaction_is_cancelled_with_transaction_conflict(
        slow_engine):
    ddb = client(slow_engine)

    def attempt() -> tuple[str, Any, int]:
        table = new_table(ddb)
        conflicts = stats(slow_engine)["conflicts"]
        with committing(ddb, [bump(table, "a"), bump(table, "b")], (table, "a")):
            with pytest.raises(ClientError) as cancelled:
                ddb.transact_write_items(TransactItems=[bump(table, "c", "t2"), bump(table, "a", "t2")])
        return table, cancelled, conflicts

    table, cancelled, conflicts = overlapping(attempt)
    assert code(cancelled.value) == "TransactionCanceledException"
    assert reasons(cancelled.value) == ["None", "TransactionConflict"]  # one reason per item, in request order
    assert stats(slow_engine)["conflicts"] == conflicts + 1
    # All or nothing: the cancelled transaction wrote neither item; the first one holds.
    assert "Item" not in ddb.get_item(TableName=table, Key=key("c"), ConsistentRead=True)
    assert ddb.get_item(TableName=table, Key=key("a"), ConsistentRead=True)["Item"]["n"] == {"N": "1"}


@pytest.mark.parametrize("operation", ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"])
def test_a_single_write_to_an_item_in_flight_is_rejected_with_transaction_conflict_exception(slow_engine, operation):
    ddb = client(slow_engine)
    table = ""
    write = {
        "PutItem": lambda: ddb.put_item(TableName=table, Item={**key("a"), "who": {"S": "t2"}}),
        "UpdateItem": lambda: ddb.update_item(TableName=table, Key=key("a"), UpdateExpression="SET who = :w",
                                              ExpressionAttributeValues={":w": {"S": "t2"}}),
        "DeleteItem": lambda: ddb.delete_item(TableName=table, Key=key("a")),
        "BatchWriteItem": lambda: ddb.batch_write_item(
            RequestItems={table: [{"PutRequest": {"Item": {**key("a"), "who": {"S": "t2"}}}}]}),
    }[operation]

    def attempt() -> Any:
        nonlocal table
        table = new_table(ddb)
        with committing(ddb, [bump(table, "a")], (table, "a")):
            with pytest.raises(ClientError) as rejected:
                write()
        return rejected

    rejected = overlapping(attempt)
    assert code(rejected.value) == "TransactionConflictException"
    assert rejected.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert ddb.get_item(TableName=table, Key=key("a"), ConsistentRead=True)["Item"]["who"] == {"S": "t1"}


def test_a_transact_get_naming_an_item_in_flight_is_cancelled_and_plain_reads_are_not(slow_engine):
    ddb = client(slow_engine)

    def attempt() -> tuple[Any, Any]:
        table = new_table(ddb)
        with committing(ddb, [bump(table, "a")], (table, "a")):
            with pytest.raises(ClientError) as cancelled:
                ddb.transact_get_items(TransactItems=[{"Get": {"TableName": table, "Key": key("b")}},
                                                      {"Get": {"TableName": table, "Key": key("a")}}])
            read = ddb.get_item(TableName=table, Key=key("a"))  # GetItem, Query, Scan, BatchGetItem never conflict
        return cancelled, read

    cancelled, read = overlapping(attempt)
    assert (code(cancelled.value), reasons(cancelled.value)) == ("TransactionCanceledException",
                                                                 ["None", "TransactionConflict"])
    assert read["Item"]["who"] == {"S": "t1"}


def test_a_transaction_answers_when_its_window_ends_and_then_its_items_are_free(slow_engine):
    ddb = client(slow_engine)
    table = new_table(ddb)
    with committing(ddb, [bump(table, "a")], (table, "a")) as first:
        pass
    assert first["took"] >= WINDOW_MS / 1000 * 0.9  # its own client never meets its items in flight
    # Sequential requests never conflict, however soon they follow: only overlap makes a conflict.
    for _ in range(3):
        ddb.transact_write_items(TransactItems=[bump(table, "a")])
        ddb.put_item(TableName=table, Item={**key("a"), "n": {"N": "0"}})


def test_a_failed_transaction_holds_nothing_in_flight(slow_engine):
    ddb = client(slow_engine)
    table = new_table(ddb)
    ddb.put_item(TableName=table, Item=key("a"))
    took = []
    for _ in range(5):  # a cancelled transaction has no commit window: one answer inside it proves it (a loaded
        started = time.monotonic()  # machine can only make an answer slower, never one held for the window faster)
        with pytest.raises(ClientError) as cancelled:
            ddb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": key("a"),
                                                             "ConditionExpression": "attribute_not_exists(k)"}}])
        assert reasons(cancelled.value) == ["ConditionalCheckFailed"]
        took.append(time.monotonic() - started)
        if took[-1] < WINDOW_MS / 1000:
            break
    assert min(took) < WINDOW_MS / 1000, took
    ddb.put_item(TableName=table, Item={**key("a"), "v": {"N": "2"}})  # not TransactionConflictException


# ---- idempotency tokens ---------------------------------------------------------------------------------------
def test_a_retry_with_the_same_token_while_the_first_is_committing_is_transaction_in_progress(slow_engine):
    ddb = client(slow_engine)

    def attempt() -> tuple[str, list[dict[str, Any]], str, Any, dict[str, Any]]:
        table, token = new_table(ddb), uuid.uuid4().hex
        items = [bump(table, "a")]
        with committing(ddb, items, (table, "a"), ClientRequestToken=token) as first:
            with pytest.raises(ClientError) as in_progress:
                ddb.transact_write_items(TransactItems=items, ClientRequestToken=token)
        return table, items, token, in_progress, first

    table, items, token, in_progress, first = overlapping(attempt)
    assert code(in_progress.value) == "TransactionInProgressException"
    assert first["response"]["ResponseMetadata"]["HTTPStatusCode"] == 200
    ddb.transact_write_items(TransactItems=items, ClientRequestToken=token)  # done now: replayed, not applied
    assert ddb.get_item(TableName=table, Key=key("a"))["Item"]["n"] == {"N": "1"}


def test_the_same_token_with_another_request_is_idempotent_parameter_mismatch(ddb):
    table = new_table(ddb)
    token = uuid.uuid4().hex
    ddb.transact_write_items(TransactItems=[bump(table, "a")], ClientRequestToken=token)
    with pytest.raises(ClientError) as mismatch:
        ddb.transact_write_items(TransactItems=[bump(table, "b")], ClientRequestToken=token)
    assert code(mismatch.value) == "IdempotentParameterMismatchException"
    assert "Item" not in ddb.get_item(TableName=table, Key=key("b"))


def test_a_token_whose_transaction_was_cancelled_can_be_used_again(ddb):
    table = new_table(ddb)
    token = uuid.uuid4().hex
    guarded = [{"Put": {"TableName": table, "Item": {**key("a"), "v": {"N": "1"}},
                        "ConditionExpression": "attribute_exists(k)"}}]
    with pytest.raises(ClientError) as cancelled:
        ddb.transact_write_items(TransactItems=guarded, ClientRequestToken=token)
    assert reasons(cancelled.value) == ["ConditionalCheckFailed"]
    ddb.put_item(TableName=table, Item=key("a"))
    ddb.transact_write_items(TransactItems=guarded, ClientRequestToken=token)  # runs: not a stored failure
    assert ddb.get_item(TableName=table, Key=key("a"))["Item"]["v"] == {"N": "1"}


# ---- conditions --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("operation", ["PutItem", "UpdateItem", "DeleteItem"])
@pytest.mark.parametrize("return_old", [True, False])
def test_a_failed_condition_is_conditional_check_failed_with_the_item_only_when_asked(ddb, operation, return_old):
    table = new_table(ddb)
    stored = {**key("a"), "v": {"N": "7"}}
    ddb.put_item(TableName=table, Item=stored)
    extra = {"ConditionExpression": "v = :zero", "ExpressionAttributeValues": {":zero": {"N": "0"}}}
    if return_old:
        extra["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    call = {"PutItem": lambda: ddb.put_item(TableName=table, Item={**key("a"), "v": {"N": "8"}}, **extra),
            "UpdateItem": lambda: ddb.update_item(TableName=table, Key=key("a"), UpdateExpression="SET w = :zero",
                                                  **extra),
            "DeleteItem": lambda: ddb.delete_item(TableName=table, Key=key("a"), **extra)}[operation]
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as failed:
        call()
    assert code(failed.value) == "ConditionalCheckFailedException"
    assert failed.value.response.get("Item") == (stored if return_old else None)
    assert ddb.get_item(TableName=table, Key=key("a"), ConsistentRead=True)["Item"] == stored


def test_one_condition_text_is_judged_on_each_request_s_own_names_and_values(ddb):
    """The engine lexes a condition's text once and keeps the tokens: the names and values are each request's."""
    table = new_table(ddb)
    ddb.put_item(TableName=table, Item={**key("a"), "v": {"N": "7"}, "w": {"N": "1"}})
    text = "#f = :x AND attribute_exists(k)"

    def update(field: str, x: str) -> None:
        ddb.update_item(TableName=table, Key=key("a"), UpdateExpression="ADD n :one", ConditionExpression=text,
                        ExpressionAttributeNames={"#f": field},
                        ExpressionAttributeValues={":x": {"N": x}, ":one": {"N": "1"}})

    update("v", "7")
    update("w", "1")
    for field, x in (("v", "1"), ("w", "7"), ("missing", "7")):
        with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
            update(field, x)
    assert ddb.get_item(TableName=table, Key=key("a"), ConsistentRead=True)["Item"]["n"] == {"N": "2"}


def test_a_failed_condition_cancels_the_whole_transaction_and_names_its_item(ddb):
    table = new_table(ddb)
    stored = {**key("a"), "v": {"N": "7"}}
    ddb.put_item(TableName=table, Item=stored)
    with pytest.raises(ddb.exceptions.TransactionCanceledException) as cancelled:
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": table, "Item": key("new")}},
            {"ConditionCheck": {"TableName": table, "Key": key("a"), "ConditionExpression": "v = :zero",
                                "ExpressionAttributeValues": {":zero": {"N": "0"}},
                                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            {"Update": {"TableName": table, "Key": key("other"), "UpdateExpression": "SET v = :one",
                        "ConditionExpression": "attribute_exists(k)",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}}])
    found = cancelled.value.response["CancellationReasons"]
    assert [r["Code"] for r in found] == ["None", "ConditionalCheckFailed", "ConditionalCheckFailed"]
    assert found[1]["Item"] == stored
    assert "Item" not in found[2]  # not asked for (and there is none)
    assert "Item" not in ddb.get_item(TableName=table, Key=key("new"), ConsistentRead=True)  # nothing applied


def test_concurrent_conditional_writes_on_one_item_never_both_pass(ddb):
    """Each request is atomic: a condition and its write never interleave with another request's."""
    table = new_table(ddb)

    def claim(n: int) -> str:
        try:
            ddb.put_item(TableName=table, Item={**key("lock"), "owner": {"N": str(n)}},
                         ConditionExpression="attribute_not_exists(k)")
            return "won"
        except ClientError as exc:
            return code(exc)

    def add(_: int) -> None:
        ddb.update_item(TableName=table, Key=key("counter"), UpdateExpression="ADD n :one",
                        ExpressionAttributeValues={":one": {"N": "1"}})

    with ThreadPoolExecutor(max_workers=16) as pool:
        claims = Counter(pool.map(claim, range(32)))
        list(pool.map(add, range(96)))
    assert claims == {"won": 1, "ConditionalCheckFailedException": 31}
    assert ddb.get_item(TableName=table, Key=key("counter"), ConsistentRead=True)["Item"]["n"] == {"N": "96"}


# ---- errors botocore parses exactly as DynamoDB's ------------------------------------------------------------
@pytest.mark.parametrize("error", ["ProvisionedThroughputExceededException", "ThrottlingException",
                                   "RequestLimitExceeded"])
def test_throttling_is_the_error_code_botocore_knows_and_retries(dynamodb_engine, error):
    ddb = client(dynamodb_engine)
    table = new_table(ddb)
    add_rule(dynamodb_engine, {"action": "dynamodb-error", "error": error, "table": table, "count": 1})
    with pytest.raises(ClientError) as throttled:
        ddb.get_item(TableName=table, Key=key("a"))
    assert code(throttled.value) == error
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert isinstance(throttled.value, getattr(ddb.exceptions, error))  # the client's modeled exception class
    # botocore's standard retry mode takes it for throttling and retries it.
    add_rule(dynamodb_engine, {"action": "dynamodb-error", "error": error, "table": table, "count": 1})
    retrying = client(dynamodb_engine, Config(retries={"mode": "standard", "max_attempts": 2}))
    answered = retrying.get_item(TableName=table, Key=key("a"))
    assert answered["ResponseMetadata"]["RetryAttempts"] == 1


def test_a_response_lost_as_a_timeout_leaves_the_write_applied(dynamodb_engine):
    ddb = client(dynamodb_engine)
    table = new_table(ddb)
    add_rule(dynamodb_engine, {"action": "dynamodb-response-lost", "lost_as": "timeout", "table": table,
                               "operation": "PutItem", "count": 1, "delay_ms": 6000})
    impatient = client(dynamodb_engine, Config(retries={"total_max_attempts": 1}, read_timeout=0.5,
                                               connect_timeout=0.5))
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        impatient.put_item(TableName=table, Item={**key("a"), "v": {"N": "1"}})
    assert time.monotonic() - started < 4  # the client's own timeout, not the server's 6 s hold
    assert ddb.get_item(TableName=table, Key=key("a"), ConsistentRead=True)["Item"]["v"] == {"N": "1"}


# ---- limits ----------------------------------------------------------------------------------------------------
def test_transaction_and_item_limits_are_validation_errors(ddb):
    table = new_table(ddb)
    with pytest.raises(ClientError) as too_many:
        ddb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": key(f"i{n}")}}
                                                for n in range(101)])
    assert code(too_many.value) == "ValidationException"
    assert "100" in str(too_many.value)
    with pytest.raises(ClientError) as same_item:
        ddb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": key("a")}},
                                                {"ConditionCheck": {"TableName": table, "Key": key("a"),
                                                                    "ConditionExpression": "attribute_exists(k)"}}])
    assert code(same_item.value) == "ValidationException"
    with pytest.raises(ClientError) as too_large:
        ddb.put_item(TableName=table, Item={**key("big"), "b": {"S": "x" * 410_000}})
    assert code(too_large.value) == "ValidationException"
    assert ddb.scan(TableName=table)["Count"] == 0
    ddb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": key(f"i{n}")}} for n in range(100)])
    assert ddb.scan(TableName=table)["Count"] == 100


# ---- capacity -------------------------------------------------------------------------------------------------
def test_capacity_is_metered_by_the_documented_rules(dynamodb_engine):
    ddb = client(dynamodb_engine)
    table = new_table(ddb)
    ddb.put_item(TableName=table, Item={**key("a"), "v": {"S": "x" * 1500}})  # 2 KB started: 2 WRU
    ddb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": key("b")}}])  # transactional: 2
    with pytest.raises(ClientError):
        ddb.put_item(TableName=table, Item=key("b"), ConditionExpression="attribute_not_exists(k)")  # failed: 1
    ddb.get_item(TableName=table, Key=key("a"))  # eventually consistent: 0.5 RRU
    ddb.get_item(TableName=table, Key=key("a"), ConsistentRead=True)  # strongly consistent: 1
    ddb.transact_get_items(TransactItems=[{"Get": {"TableName": table, "Key": key("b")}}])  # transactional: 2
    metered = stats(dynamodb_engine)
    assert metered["wru"][table] == 5.0
    assert metered["rru"][table] == 3.5


# ---- where the engine is kinder than AWS (pinned: change docs/dynamodb-emulation.md with the engine) ---------
def test_every_read_sees_the_latest_write_even_eventually_consistent_and_on_an_index(ddb):
    table = new_table(ddb, attributes=[{"AttributeName": "g", "AttributeType": "S"}],
                      GlobalSecondaryIndexes=[{"IndexName": "ByG",
                                               "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                               "Projection": {"ProjectionType": "KEYS_ONLY"}}])
    for n in range(5):
        ddb.put_item(TableName=table, Item={**key("a"), "g": {"S": f"g{n}"}})
        assert ddb.get_item(TableName=table, Key=key("a"))["Item"]["g"] == {"S": f"g{n}"}
        by_index = ddb.query(TableName=table, IndexName="ByG", KeyConditionExpression="g = :g",
                             ExpressionAttributeValues={":g": {"S": f"g{n}"}})
        assert by_index["Items"] == [{**key("a"), "g": {"S": f"g{n}"}}]
    with pytest.raises(ClientError, match="Consistent reads are not supported on global secondary indexes"):
        ddb.query(TableName=table, IndexName="ByG", KeyConditionExpression="g = :g",
                  ExpressionAttributeValues={":g": {"S": "g0"}}, ConsistentRead=True)


def test_expired_ttl_items_are_never_deleted(ddb):
    table = new_table(ddb)
    ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
    ddb.put_item(TableName=table, Item={**key("a"), "ttl": {"N": str(int(time.time()) - 86_400 * 30)}})
    assert "Item" in ddb.get_item(TableName=table, Key=key("a"), ConsistentRead=True)


def test_a_transaction_larger_than_4_mb_is_accepted(ddb):
    table = new_table(ddb)
    big = "x" * 390_000
    ddb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": {**key(f"i{n}"), "b": {"S": big}}}}
                                            for n in range(11)])  # ~4.3 MB: AWS answers ValidationException
    pages = ddb.get_paginator("scan").paginate(TableName=table, Select="COUNT")  # 1 MB a page
    assert sum(page["Count"] for page in pages) == 11


@pytest.mark.parametrize("expression", [
    "SET a = if_not_exists(a, :zero) + :one, #b.c[2] = :v REMOVE d ADD e :n",
    "SET steps.#step = :entry, updated_at = :now, lease_expires_at = :expires",
    "REMOVE active SET saga_status = :failed DELETE tags :t",
])
def test_an_update_expression_tree_is_copied_whole_and_shares_nothing(expression):
    """The engine copies update expression trees node by node (sagalocal/dynamodb/engine.py): every node a new
    object of the same type with the same fields, each child's parent its copied parent, nothing mutable shared."""
    import copy

    from moto.dynamodb.parsing.ast_nodes import Node
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    from sagalocal.dynamodb.engine import install_backend_patches

    install_backend_patches()
    tree = UpdateExpressionParser.make(expression)
    clone = copy.deepcopy(tree)

    def same(a: Any, b: Any, parent_b: Any) -> int:
        assert type(a) is type(b)
        assert a is not b
        assert b.parent is parent_b
        assert set(vars(a)) == set(vars(b))
        for name, value in vars(a).items():
            if name in ("parent", "children"):
                continue
            assert vars(b)[name] == value
            assert isinstance(value, (str, int, float, bool, type(None))) or vars(b)[name] is not value, name
        count = 1
        for x, y in zip(a.children or [], b.children or [], strict=True):
            if isinstance(x, Node):
                count += same(x, y, b)
            else:
                assert x == y
        return count

    assert same(tree, clone, None) > 3
    inner = clone.children[0]  # a node inside a tree copies the tree with it, as the generic copy does
    inner_copy = copy.deepcopy(inner)
    assert inner_copy.parent is not None
    assert inner_copy.parent is not clone
    assert type(inner_copy.parent) is type(clone)


@pytest.mark.parametrize("expression", [
    "SET a = if_not_exists(a, :zero) + :one, #b.c[2] = :v REMOVE d ADD e :n",
    "SET steps.#step = :entry, updated_at = :now, lease_expires_at = :expires",
    "SET #b.c[2] = list_append(:l, if_not_exists(#b.c[2], :l)) REMOVE x.y[1]",
])
def test_the_engines_tree_walk_processes_every_node_as_moto_s_own_walk_does(expression):
    """The engine's walk (sagalocal/dynamodb/engine.py `_traverse`) against moto's traverse_node_recursively, on
    two copies of one tree, through the update validator's processors in its order (those that read the item,
    have a pre-child hook or replace nodes among them): the same nodes processed in the same order (bottom-up,
    left to right), the same tree after each processor, the same error if one raises."""
    import copy

    from moto.dynamodb.models.dynamo_type import DynamoType, Item
    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    from sagalocal.dynamodb.engine import _traverse, install_backend_patches

    install_backend_patches()
    names = {"#b": "b", "#step": "ReserveInventory"}
    values = {":zero": {"N": "0"}, ":one": {"N": "1"}, ":v": {"S": "v"}, ":n": {"N": "2"}, ":entry": {"M": {}},
              ":now": {"N": "5"}, ":expires": {"N": "9"}, ":l": {"L": [{"S": "x"}]}}
    attributes = {"order_id": {"S": "ord_1"}, "a": {"N": "1"}, "d": {"S": "gone"}, "e": {"N": "3"},
                  "b": {"M": {"c": {"L": [{"S": "p"}, {"S": "q"}, {"L": [{"S": "r"}]}]}}},
                  "x": {"M": {"y": {"L": [{"S": "s"}, {"S": "t"}]}}}, "steps": {"M": {}}}

    def shape(node: Any) -> Any:
        if not isinstance(node, Node):
            return repr(node)
        return (type(node).__name__, repr(vars(node).get("value")), [shape(child) for child in node.children or []])

    def chain(walk: Any) -> list[Any]:
        item = Item(DynamoType({"S": "ord_1"}), None, copy.deepcopy(attributes))
        processors = [validators.ActionCountValidator(), validators.OverlappingPathsValidator(names),
                      validators.UpdateHashRangeKeyValidator(["order_id"], names),
                      validators.ExpressionAttributeValueProcessor(values),
                      validators.ExpressionAttributeResolvingProcessor(names, item),
                      validators.UpdateExpressionFunctionEvaluator(), validators.NoneExistingPathChecker(),
                      validators.ExecuteOperations()]
        tree, steps = copy.deepcopy(UpdateExpressionParser.make(expression)), []
        for processor in processors:
            seen: list[str] = []
            original = processor.process

            def recording(node: Any, original: Any = original, seen: list[str] = seen) -> Any:
                seen.append(type(node).__name__)
                return original(node)

            processor.process = recording
            try:
                tree = walk(processor, tree)
            except Exception as exc:  # noqa: BLE001 - compared: both walks must raise the same
                steps.append((type(processor).__name__, seen, f"{type(exc).__name__}: {exc}"))
                break
            steps.append((type(processor).__name__, seen, shape(tree)))
        return steps

    theirs = chain(lambda p, tree: DepthFirstTraverser.traverse_node_recursively(p, tree))
    ours = chain(_traverse)
    assert ours == theirs
    assert DepthFirstTraverser.traverse is _traverse  # the engine's walk is the one moto now uses
    assert len(ours) == 8  # not vacuous: every processor ran, none raised
    assert sum(len(seen) for _, seen, _ in ours) > 5


@pytest.mark.parametrize("expression", [
    "SET a = if_not_exists(a, :zero) + :one, #b.c[2] = :v REMOVE d ADD e :n",
    "SET steps.#step = :entry, updated_at = :now, #f_total = list_append(:l, #b)",
    "REMOVE #x, y",
])
def test_a_cached_tree_finds_the_clauses_moto_s_walk_finds_and_a_copy_walks_its_own(expression):
    """The clauses of a cached update expression tree are looked up once per tree and type (sagalocal/dynamodb/
    engine.py): the same nodes as moto's own walk, in a new list every time; a copy of the tree (the validator's,
    which it changes) is walked as it is."""
    import copy

    from moto.dynamodb.parsing.ast_nodes import ExpressionAttributeName, ExpressionAttributeValue
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    from sagalocal.dynamodb.engine import install_backend_patches

    install_backend_patches()
    tree = UpdateExpressionParser.make(expression)
    assert UpdateExpressionParser.make(expression) is tree
    moto_walk = tree._sagalocal_original_find_clauses
    for types in ([ExpressionAttributeName], [ExpressionAttributeValue],
                  [ExpressionAttributeName, ExpressionAttributeValue]):
        theirs = moto_walk(types)
        first = tree.find_clauses(types)
        assert first == theirs
        assert all(a is b for a, b in zip(first, theirs, strict=True))
        first.clear()
        assert tree.find_clauses(types) == theirs  # a new list every time
    names = tree.find_clauses([ExpressionAttributeName])
    clone = copy.deepcopy(tree)
    clone.children[0].children = []  # a copy changed as the validator changes its own
    assert clone.find_clauses([ExpressionAttributeName]) == clone._sagalocal_original_find_clauses(
        [ExpressionAttributeName]) != names
    assert tree.find_clauses([ExpressionAttributeName]) == names


def test_an_item_s_regular_json_is_moto_s_and_shares_no_container_with_the_item():
    """The engine's DynamoType.to_regular_json (no deep copy first: sagalocal/dynamodb/engine.py) against moto's
    own, on values of every type nested in maps and lists: the same JSON (types included: bytes where moto decodes
    base64), every dict and list in it new, and changing it changes nothing stored."""
    import base64

    from moto.dynamodb.models.dynamo_type import DynamoType, Item

    from sagalocal.dynamodb.engine import install_backend_patches

    install_backend_patches()
    original = DynamoType._sagalocal_original_regular_json
    b64 = base64.b64encode(b"\x00bin").decode()
    attributes = {"s": {"S": "x"}, "n": {"N": "1.50"}, "b": {"B": b64}, "raw": {"B": b"\x01raw"},
                  "t": {"BOOL": True}, "z": {"NULL": True}, "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]},
                  "bs": {"BS": [b64]}, "e": {"L": []}, "m0": {"M": {}},
                  "l": {"L": [{"S": "a"}, {"N": "2"}, {"B": b64}, {"SS": ["q"]}, {"L": [{"M": {"k": {"S": "v"}}}]}]},
                  "m": {"M": {"steps": {"M": {"ReserveInventory": {"M": {"at": {"N": "1"}, "ok": {"BOOL": False}}}}},
                              "bin": {"B": b64}, "set": {"NS": ["3"]}, "list": {"L": [{"NULL": True}]}}}}
    item = Item(DynamoType({"S": "k"}), None, attributes)

    def containers(value: Any) -> list[Any]:
        """Every dict and list in `value` (JSON, or DynamoTypes and what they hold)."""
        if isinstance(value, DynamoType):
            return containers(value.value)
        if isinstance(value, dict):
            return [value, *(c for v in value.values() for c in containers(v))]
        if isinstance(value, list):
            return [value, *(c for v in value for c in containers(v))]
        return []

    stored = containers(list(item.attrs.values()))
    assert len(stored) > 10
    for name, value in item.attrs.items():
        ours = value.to_regular_json()
        assert ours == original(value), name
        assert repr(ours) == repr(original(value)), name  # the same types (bytes, str, bool) too
        assert not any(any(c is s for s in stored) for c in containers(ours)), name
    assert item.to_json() == {"Attributes": {name: (
        {v.type: {k: original(x) for k, x in v.value.items()}} if isinstance(v.value, dict) else
        {v.type: [original(x) if isinstance(x, DynamoType) else x for x in v.value]} if isinstance(v.value, list)
        else {v.type: v.value}) for name, v in item.attrs.items()}}
    image = item.to_json()["Attributes"]
    image["m"]["M"]["steps"]["M"]["ReserveInventory"]["M"]["at"]["N"] = "99"
    image["l"]["L"][3]["SS"].append("changed")
    assert item.to_json()["Attributes"] != image
    assert item.attrs["m"].value["steps"].value["ReserveInventory"].value["at"].value == "1"


def test_the_engine_keeps_no_item_it_no_longer_stores():
    """moto tracks every model object it creates until its mock is reset; the engine's processes and the
    simulation never reset theirs (sagalocal/motomodels.py): an item replaced or deleted must be garbage."""
    import gc
    import weakref

    from moto.dynamodb.models.dynamo_type import DynamoType, Item

    from sagalocal.dynamodb.engine import install_backend_patches

    install_backend_patches()
    item = Item(DynamoType({"S": "ord_1"}), None, {"order_id": {"S": "ord_1"}, "total": {"N": "5"}})
    gone = weakref.ref(item)
    del item
    gc.collect()
    assert gone() is None


def test_an_update_that_would_change_the_key_is_refused_every_time_even_after_its_text_passed(aws):
    """The engine skips the expression-only checks for an expression text, names and table keys that passed
    them before (sagalocal/dynamodb/engine.py): the same text with names that now point at the key is checked
    again, and refused each time."""
    import os

    table = os.environ["ORDERS_TABLE"]
    key = {"order_id": {"S": "ord_key"}}
    aws.put_item(TableName=table, Item={**key, "note": {"S": "a"}})
    update = {"TableName": table, "Key": key, "UpdateExpression": "SET #field = :v",
              "ExpressionAttributeValues": {":v": {"S": "b"}}}
    for _ in range(2):
        aws.update_item(**update, ExpressionAttributeNames={"#field": "note"})
    for _ in range(2):
        with pytest.raises(ClientError, match="Cannot update attribute order_id"):
            aws.update_item(**update, ExpressionAttributeNames={"#field": "order_id"})
    assert aws.get_item(TableName=table, Key=key)["Item"] == {**key, "note": {"S": "b"}}


# A process that adopts orphans (Linux's child subreaper: make test's runner, a container's init, a user's
# systemd): the DynamoDB process whose stack died is handed to it, not to pid 1, and must still notice and end.
_ADOPTER = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[2])
from run_tests import adopt_orphans  # make test's runner, as it adopts its groups' orphans
assert adopt_orphans()
ready = sys.argv[1]
stack = subprocess.Popen([sys.executable, "-c", '''
import subprocess, sys, time, os
server = subprocess.Popen([sys.executable, "-m", "sagalocal.dynamodb.server", "--port", "0",
                           "--ready-file", sys.argv[1]])
deadline = time.monotonic() + 120
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.05)
os._exit(0)  # the stack dies without stopping its DynamoDB process
''', ready])
stack.wait()
pid = json.loads(open(ready).read())["pid"]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, _ = os.waitpid(pid, os.WNOHANG)  # adopted: ours to reap
    if done:
        print("ended")
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("still running")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a child subreaper is Linux's (prctl)")
def test_the_dynamodb_process_ends_when_its_stack_dies_even_under_a_subreaper(tmp_path):
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    done = subprocess.run([sys.executable, "-c", _ADOPTER, str(tmp_path / "ready.json"), str(scripts)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ended", done.stderr
