"""The embedded stack's DynamoDB streams, its stream event source mapping, and its dashboard metrics.

  * sagalocal/dynamodb/streams.py, through the DynamoDB process's /_sagalocal/streams route (the session's
    `dynamodb_engine`): one record per change, in order, with the images the table's view type asks for.
  * sagalocal/awslambda/eventsources.py: a StreamMapping on that engine, with a recording function in place
    of Lambda: the template's FilterCriteria, batch size, retries of a failing batch, bisection, partial batch
    responses, MaximumRetryAttempts and MaximumRecordAgeInSeconds, and the invocation record of what it gives up
    on, sent to a recording OnFailure destination (the stack tier sends it to the real queue:
    tests/stack/test_outcome_failures.py).
  * sagalocal/metrics.py: EMF lines printed by the functions' own metric helper, evaluated on the template's
    dashboard (`sagalocal stats`).

No stack is started: each part is exercised on its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sagalocal.awslambda.eventsources import StreamMapping
from sagalocal.metrics import dashboards, report, statistic
from sagalocal.template import Template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template(ROOT / "template.yaml")
ENDING = ["COMPLETED", "COMPENSATED", "FAILED"]
FAILURE_QUEUE = "arn:aws:sqs:us-east-1:123456789012:outcome-failures"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:sam-app-PublishOutcomeFunction-X:live"


# ---- helpers ----------------------------------------------------------------------------------------------------
@pytest.fixture
def ddb(dynamodb_engine: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=dynamodb_engine, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"total_max_attempts": 1}))


def new_table(ddb: Any, view: str | None = "NEW_AND_OLD_IMAGES", range_key: bool = False) -> str:
    name = "streams-" + uuid.uuid4().hex[:10]
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}] + ([{"AttributeName": "sk", "KeyType": "RANGE"}]
                                                             if range_key else [])
    extra = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": view}} if view else {}
    ddb.create_table(TableName=name, KeySchema=keys, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": k["AttributeName"], "AttributeType": "S"} for k in keys],
                     **extra)
    return name


def item(pk: str, **attrs: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, **{name: {"S": value} for name, value in attrs.items()}}


def stream(endpoint: str, table: str, after: int = 0, limit: int = 1000, ack: int = 0) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"table": table, "after": after, "limit": limit, "ack": ack})
    with urllib.request.urlopen(f"{endpoint}/_sagalocal/streams?{query}") as response:  # noqa: S310 - local engine
        return json.loads(response.read())  # type: ignore[no-any-return]


def seq(record: dict[str, Any]) -> int:
    return int(record["dynamodb"]["SequenceNumber"])


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---- streams.py ---------------------------------------------------------------------------------------------
def test_each_change_is_one_record_in_write_order_with_new_and_old_images(ddb, dynamodb_engine):
    table = new_table(ddb)
    ddb.put_item(TableName=table, Item=item("a", v="1"))
    ddb.put_item(TableName=table, Item=item("b", v="1"))
    ddb.update_item(TableName=table, Key=item("a"), UpdateExpression="SET v = :v",
                    ExpressionAttributeValues={":v": {"S": "2"}})
    with pytest.raises(ClientError):  # a failed condition changes nothing: no record
        ddb.put_item(TableName=table, Item=item("a", v="9"), ConditionExpression="attribute_not_exists(pk)")
    ddb.transact_write_items(TransactItems=[
        {"Update": {"TableName": table, "Key": item("b"), "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": {"S": "5"}}}},
        {"Put": {"TableName": table, "Item": item("c", v="1")}}])
    ddb.delete_item(TableName=table, Key=item("a"))
    ddb.delete_item(TableName=table, Key=item("missing"))  # deletes nothing: no record
    ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": item("d", v="1")}}]})

    records = stream(dynamodb_engine, table)
    changes = [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"],
                (r["dynamodb"].get("OldImage") or {}).get("v", {}).get("S"),
                (r["dynamodb"].get("NewImage") or {}).get("v", {}).get("S")) for r in records]
    assert changes == [("INSERT", "a", None, "1"), ("INSERT", "b", None, "1"), ("MODIFY", "a", "1", "2"),
                       ("MODIFY", "b", "1", "5"), ("INSERT", "c", None, "1"), ("REMOVE", "a", "2", None),
                       ("INSERT", "d", None, "1")]
    numbers = [seq(r) for r in records]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == len(numbers)
    assert len({r["eventID"] for r in records}) == len(records)
    assert records[2]["dynamodb"]["NewImage"] == item("a", v="2")  # whole images, in the wire format
    assert records[2]["dynamodb"]["OldImage"] == item("a", v="1")
    assert {(r["eventSource"], r["awsRegion"], r["dynamodb"]["StreamViewType"]) for r in records} == {
        ("aws:dynamodb", "us-east-1", "NEW_AND_OLD_IMAGES")}
    assert "OldImage" not in records[0]["dynamodb"]
    assert "NewImage" not in records[5]["dynamodb"]


def test_an_update_that_creates_its_item_is_one_insert_and_a_write_that_changes_nothing_is_no_record(
        ddb, dynamodb_engine):
    table = new_table(ddb)
    ddb.update_item(TableName=table, Key=item("a"), UpdateExpression="SET v = :v",
                    ExpressionAttributeValues={":v": {"S": "1"}})
    ddb.transact_write_items(TransactItems=[
        {"Update": {"TableName": table, "Key": item("b"), "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": {"S": "1"}}}}])
    ddb.put_item(TableName=table, Item=item("a", v="1"))  # the same item again
    ddb.update_item(TableName=table, Key=item("b"), UpdateExpression="SET v = :v",  # the value it has
                    ExpressionAttributeValues={":v": {"S": "1"}})
    ddb.update_item(TableName=table, Key=item("b"), UpdateExpression="SET v = :v",
                    ExpressionAttributeValues={":v": {"S": "2"}})
    records = stream(dynamodb_engine, table)
    assert [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in records] == [
        ("INSERT", "a"), ("INSERT", "b"), ("MODIFY", "b")]
    assert records[0]["dynamodb"]["NewImage"] == item("a", v="1")  # the whole item, not the bare key first
    assert records[1]["dynamodb"]["NewImage"] == item("b", v="1")
    assert (records[2]["dynamodb"]["OldImage"], records[2]["dynamodb"]["NewImage"]) == (item("b", v="1"),
                                                                                         item("b", v="2"))


@pytest.mark.parametrize(("view", "images"), [("KEYS_ONLY", set()), ("NEW_IMAGE", {"NewImage"}),
                                              ("OLD_IMAGE", {"OldImage"}),
                                              ("NEW_AND_OLD_IMAGES", {"NewImage", "OldImage"})])
def test_a_record_carries_the_keys_and_the_images_of_the_table_s_view_type(ddb, dynamodb_engine, view, images):
    table = new_table(ddb, view=view, range_key=True)
    ddb.put_item(TableName=table, Item={**item("a", v="1"), "sk": {"S": "s1"}})
    ddb.put_item(TableName=table, Item={**item("a", v="2"), "sk": {"S": "s1"}})
    modify = stream(dynamodb_engine, table)[-1]
    assert modify["eventName"] == "MODIFY"
    assert modify["dynamodb"]["Keys"] == {"pk": {"S": "a"}, "sk": {"S": "s1"}}
    assert {k for k in ("NewImage", "OldImage") if k in modify["dynamodb"]} == images


def test_a_record_s_event_id_is_a_version_4_uuid_s_hex_from_its_random_bytes():
    """streams.event_id builds uuid4().hex without a UUID: the same string from the same 16 random bytes."""
    import os

    from sagalocal.dynamodb.streams import event_id

    for random in [b"\x00" * 16, b"\xff" * 16, *(os.urandom(16) for _ in range(200))]:
        assert event_id(lambda n, random=random: random[:n]) == uuid.UUID(bytes=random, version=4).hex
    assert uuid.UUID(event_id()).version == 4


def test_a_record_s_size_is_the_length_of_its_change_s_text_whatever_came_before():
    """SizeBytes is len(str(change)) (sagalocal/dynamodb/streams.py reuses the length of the item's last new image's
    text for the next old image): so for every record, through puts, updates on and off the fast path, a put of the
    same content in another order (no record), a delete, binary and boolean values."""
    from moto import mock_aws
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import DynamoType

    from sagalocal.dynamodb.engine import install_backend_patches
    from sagalocal.dynamodb.streams import STREAMS

    with mock_aws():
        install_backend_patches()
        client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        table = new_table(client, range_key=True)
        key = {"pk": {"S": "a"}, "sk": {"S": "b"}}
        client.put_item(TableName=table, Item={**key, "v": {"N": "1"}, "m": {"M": {"x": {"S": "é"}}}})
        client.update_item(TableName=table, Key=key, UpdateExpression="SET v = v + :one",
                           ExpressionAttributeValues={":one": {"N": "1"}})
        client.update_item(TableName=table, Key=key, UpdateExpression="SET m.x = :v",
                           ExpressionAttributeValues={":v": {"S": "yy"}})
        client.put_item(TableName=table, Item={**key, "m": {"M": {"x": {"S": "yy"}}}, "v": {"N": "2"}})
        client.update_item(TableName=table, Key=key, UpdateExpression="SET w = list_append(:l, :l)",
                           ExpressionAttributeValues={":l": {"L": [{"S": "q"}]}})  # moto's own path
        client.delete_item(TableName=table, Key=key)
        client.put_item(TableName=table, Item={**key, "b": {"B": b"\x00"}})
        client.update_item(TableName=table, Key=key, UpdateExpression="SET c = :v",
                           ExpressionAttributeValues={":v": {"BOOL": True}})
        # the item changed where no record is written (as a simulated world resets its tables), then updated
        stored = dynamodb_backends["123456789012"]["us-east-1"].get_table(table).get_item(
            DynamoType(key["pk"]), DynamoType(key["sk"]))
        stored.attrs["c"] = DynamoType({"S": "changed where no stream sees it"})
        client.update_item(TableName=table, Key=key, UpdateExpression="SET d = :v",
                           ExpressionAttributeValues={":v": {"N": "3"}})
        records = STREAMS.read(table, 0, 100, 0)
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "MODIFY", "MODIFY", "REMOVE", "INSERT", "MODIFY",
                                                 "MODIFY"]
    for record in records:
        change = record["dynamodb"]
        assert change["SizeBytes"] == len(str({k: v for k, v in change.items() if k != "SizeBytes"}))


def test_a_table_without_a_stream_records_nothing(ddb, dynamodb_engine):
    table = new_table(ddb, view=None)
    ddb.put_item(TableName=table, Item=item("a"))
    ddb.delete_item(TableName=table, Key=item("a"))
    assert stream(dynamodb_engine, table) == []


def test_records_are_read_after_a_position_and_kept_until_acknowledged(ddb, dynamodb_engine):
    table = new_table(ddb)
    for n in range(5):
        ddb.put_item(TableName=table, Item=item(f"i{n}"))
    everything = stream(dynamodb_engine, table)
    numbers = [seq(r) for r in everything]
    assert len(numbers) == 5
    assert [seq(r) for r in stream(dynamodb_engine, table, limit=2)] == numbers[:2]
    assert [seq(r) for r in stream(dynamodb_engine, table, after=numbers[1])] == numbers[2:]
    assert stream(dynamodb_engine, table) == everything  # reading acknowledges nothing
    assert [seq(r) for r in stream(dynamodb_engine, table, ack=numbers[2])] == numbers[3:]
    assert [seq(r) for r in stream(dynamodb_engine, table)] == numbers[3:]  # acknowledged records are gone


# ---- eventsources.py ----------------------------------------------------------------------------------------
class Function:
    """A stand-in for the Lambda service's invoke: records every batch; `fails(batch)` says whether it fails."""

    def __init__(self, fails: Callable[[list[dict[str, Any]], int], Any] | None = None) -> None:
        self.fails = fails or (lambda batch, n: False)
        self.calls: list[list[dict[str, Any]]] = []
        self.ok: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, function: str, event: dict[str, Any]) -> Any:
        batch = event["Records"]
        with self._lock:
            self.calls.append(batch)
            failure = self.fails(batch, len(self.calls))
        if isinstance(failure, Exception):
            raise failure
        if not failure:
            with self._lock:
                self.ok.append(batch)
        return SimpleNamespace(error=bool(failure), payload=None)

    def keys(self, batches: list[list[dict[str, Any]]]) -> list[list[str]]:
        return [[r["dynamodb"]["Keys"]["pk"]["S"] for r in batch] for batch in batches]


def template_mapping() -> dict[str, Any]:
    """PublishOutcome's DynamoDB event, as the template declares it."""
    events = TEMPLATE.properties("PublishOutcomeFunction")["Events"]
    return next(e["Properties"] for e in events.values() if e["Type"] == "DynamoDB")


def spec(table: str, **overrides: Any) -> dict[str, Any]:
    declared = template_mapping()
    return {"function": "PublishOutcome", "table": table,
            "stream_arn": f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}/stream/2026-11-01T00:00:00.000",
            "batch_size": int(declared["BatchSize"]), "starting_position": str(declared["StartingPosition"]),
            "max_retries": int(declared["MaximumRetryAttempts"]),
            "max_record_age": int(declared["MaximumRecordAgeInSeconds"]),
            "bisect": bool(declared["BisectBatchOnFunctionError"]),
            "report_batch_item_failures": "ReportBatchItemFailures" in declared["FunctionResponseTypes"],
            "on_failure": FAILURE_QUEUE, "function_arn": FUNCTION_ARN,
            "filters": [f["Pattern"] for f in declared["FilterCriteria"]["Filters"]],
            "access_key_id": "testing", **overrides}


@contextlib.contextmanager
def running(mapping: StreamMapping) -> Iterator[StreamMapping]:
    mapping.start()
    try:
        yield mapping
    finally:
        mapping.stop()


def test_the_template_s_filter_hands_over_only_changes_into_an_ending_status(ddb, dynamodb_engine):
    table = new_table(ddb)
    ddb.put_item(TableName=table, Item=item("o1", saga_status="EXECUTING"))
    ddb.put_item(TableName=table, Item=item("o1", saga_status="COMPLETED"))
    ddb.put_item(TableName=table, Item=item("o2", saga_status="COMPENSATING"))
    ddb.put_item(TableName=table, Item=item("o2", saga_status="COMPENSATED"))
    ddb.put_item(TableName=table, Item=item("o3", status="COMPLETED"))  # another attribute: not matched
    ddb.put_item(TableName=table, Item=item("o4", saga_status="FAILED"))
    ddb.delete_item(TableName=table, Key=item("o1"))  # a REMOVE has no NewImage: not matched
    ddb.put_item(TableName=table, Item=item("o5", saga_status="PENDING"))
    last = seq(stream(dynamodb_engine, table)[-1])  # (read before the mapping acknowledges and trims them)
    function = Function()
    with running(StreamMapping(spec(table), dynamodb_engine, function)) as mapping:
        wait_for(lambda: mapping.position == last and stream(dynamodb_engine, table) == [])
    delivered = [r for batch in function.ok for r in batch]
    assert [(r["dynamodb"]["Keys"]["pk"]["S"], r["dynamodb"]["NewImage"]["saga_status"]["S"]) for r in delivered] \
        == [("o1", "COMPLETED"), ("o2", "COMPENSATED"), ("o4", "FAILED")]
    assert {r["eventSourceARN"] for r in delivered} == {spec(table)["stream_arn"]}
    assert mapping.describe()["delivered"] == 3
    assert function.calls == function.ok  # no failed attempt


def test_batches_hold_at_most_batch_size_records_in_stream_order(ddb, dynamodb_engine):
    table = new_table(ddb)
    for n in range(7):
        ddb.put_item(TableName=table, Item=item(f"i{n}"))
    function = Function()
    with running(StreamMapping(spec(table, filters=[], batch_size=3), dynamodb_engine, function)) as mapping:
        wait_for(lambda: mapping.delivered == 7)
    assert function.keys(function.calls) == [["i0", "i1", "i2"], ["i3", "i4", "i5"], ["i6"]]


def test_a_failing_batch_is_retried_whole_until_it_succeeds_and_nothing_is_lost(ddb, dynamodb_engine):
    table = new_table(ddb)
    for n in range(3):
        ddb.put_item(TableName=table, Item=item(f"i{n}"))
    # The first attempt is a function error, the second an invocation that raises (throttled, say).
    function = Function(lambda batch, n: {1: True, 2: RuntimeError("throttled")}.get(n, False))
    with running(StreamMapping(spec(table, filters=[], bisect=False), dynamodb_engine, function)) as mapping:
        wait_for(lambda: mapping.delivered == 3)
        ddb.put_item(TableName=table, Item=item("later"))
        wait_for(lambda: mapping.delivered == 4)
    assert function.keys(function.calls) == [["i0", "i1", "i2"]] * 3 + [["later"]]
    assert mapping.failed_attempts == 2


def test_bisect_splits_a_failing_batch_and_every_record_is_delivered_once_in_order(ddb, dynamodb_engine):
    table = new_table(ddb)
    for name in ("a", "b", "poison", "d"):
        ddb.put_item(TableName=table, Item=item(name))
    failures = []

    def fails(batch: list[dict[str, Any]], _: int) -> bool:
        if any(r["dynamodb"]["Keys"]["pk"]["S"] == "poison" for r in batch) and len(failures) < 2:
            failures.append(len(batch))
            return True
        return False

    function = Function(fails)
    with running(StreamMapping(spec(table, filters=[]), dynamodb_engine, function)) as mapping:  # bisect: template's
        wait_for(lambda: mapping.delivered == 4)
    assert function.keys(function.calls) == [["a", "b", "poison", "d"], ["a", "b"], ["poison", "d"], ["poison"],
                                             ["d"]]
    assert function.keys(function.ok) == [["a", "b"], ["poison"], ["d"]]


def test_past_its_maximum_retry_attempts_a_batch_is_dropped_and_the_stream_goes_on(ddb, dynamodb_engine):
    table = new_table(ddb)
    ddb.put_item(TableName=table, Item=item("bad"))
    ddb.put_item(TableName=table, Item=item("good"))
    function = Function(lambda batch, n: batch[0]["dynamodb"]["Keys"]["pk"]["S"] == "bad")
    mapping = StreamMapping(spec(table, filters=[], batch_size=1, max_retries=1, bisect=False), dynamodb_engine,
                            function)
    with running(mapping):
        wait_for(lambda: mapping.delivered == 1)
    assert function.keys(function.calls) == [["bad"], ["bad"], ["good"]]  # the first attempt and one retry


def test_latest_starts_after_the_records_already_in_the_stream(ddb, dynamodb_engine):
    table = new_table(ddb)
    ddb.put_item(TableName=table, Item=item("before"))
    function = Function()
    with running(StreamMapping(spec(table, filters=[], starting_position="LATEST"), dynamodb_engine,
                               function)) as mapping:
        ddb.put_item(TableName=table, Item=item("after"))
        wait_for(lambda: mapping.delivered == 1)
        time.sleep(0.2)  # a few more polls: nothing else arrives
    assert function.keys(function.calls) == [["after"]]


# ---- eventsources.py: partial batch responses, retries, record age, the on-failure destination ----------------
@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after 10 ms (Lambda's own pauses, from 0.2 s, are tested by nothing here but their doubling)."""
    import sagalocal.awslambda.eventsources as eventsources

    monkeypatch.setattr(eventsources, "FIRST_PAUSE", 0.01)
    monkeypatch.setattr(eventsources, "MAX_PAUSE", 0.04)


class Destination:
    """The OnFailure queue: keeps each invocation record sent; `refuse` sends fail first (AccessDenied, say)."""

    def __init__(self, refuse: int = 0) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse

    def __call__(self, destination: str, body: str) -> None:
        if self.refuse:
            self.refuse -= 1
            raise RuntimeError("AccessDenied: not authorized to perform sqs:SendMessage")
        self.sent.append((destination, json.loads(body)))

    def records(self) -> list[dict[str, Any]]:
        return [record for _, record in self.sent]


class Handler:
    """A stand-in for the Lambda service's invoke whose function answers as `answer(batch, n)` says: True for a
    function error, a dict for its response (a partial batch response), an exception if it cannot be invoked."""

    def __init__(self, answer: Callable[[list[dict[str, Any]], int], Any]) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def __call__(self, function: str, event: dict[str, Any]) -> Any:
        batch = event["Records"]
        with self._lock:
            self.calls.append([r["dynamodb"]["Keys"]["pk"]["S"] for r in batch])
            answer = self.answer(batch, len(self.calls))
        if isinstance(answer, Exception):
            raise answer
        if answer is True:
            return SimpleNamespace(error=True, payload={"errorType": "BatchProcessingError", "errorMessage": "x"})
        return SimpleNamespace(error=False, payload=answer)


def key(record: dict[str, Any]) -> str:
    return str(record["dynamodb"]["Keys"]["pk"]["S"])


def failed_from(batch: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """A partial batch response reporting the record `name` and every record after it (as PublishOutcome does)."""
    start = next(i for i, r in enumerate(batch) if key(r) == name)
    return {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in batch[start:]]}


def put(ddb: Any, table: str, names: list[str]) -> None:
    for name in names:
        ddb.put_item(TableName=table, Item=item(name))


def sequences(endpoint: str, table: str) -> dict[str, str]:
    return {key(r): r["dynamodb"]["SequenceNumber"] for r in stream(endpoint, table)}


def test_a_partial_batch_response_goes_on_from_the_lowest_sequence_number_it_reports(ddb, dynamodb_engine):
    table = new_table(ddb)
    put(ddb, table, ["a", "b", "c", "d"])
    seqs = sequences(dynamodb_engine, table)

    def answer(batch: list[dict[str, Any]], n: int) -> Any:
        if n == 1:  # c and b reported, in any order: Lambda takes the lowest
            return {"batchItemFailures": [{"itemIdentifier": seqs["c"]}, {"itemIdentifier": seqs["b"]}]}
        return {"batchItemFailures": []}

    function = Handler(answer)
    with running(StreamMapping(spec(table, filters=[]), dynamodb_engine, function)) as mapping:
        wait_for(lambda: mapping.delivered == 4)
    assert function.calls == [["a", "b", "c", "d"], ["b", "c", "d"]]  # a is done: not handed over again
    assert mapping.describe()["failed_attempts"] == 1


@pytest.mark.parametrize("response", [
    {"batchItemFailures": [{"itemIdentifier": ""}]},  # an empty identifier
    {"batchItemFailures": [{"itemIdentifier": None}]},  # a null one
    {"batchItemFailures": [{"ItemIdentifier": "1"}]},  # the wrong key
    {"batchItemFailures": [{"itemIdentifier": "999999999"}]},  # no record of the batch
], ids=["empty", "null", "wrong-key", "not-in-batch"])
def test_a_malformed_partial_batch_response_fails_the_whole_batch(ddb, dynamodb_engine, response):
    table = new_table(ddb)
    put(ddb, table, ["a", "b"])
    function = Handler(lambda batch, n: response if n == 1 else None)  # then: no answer at all, a success
    with running(StreamMapping(spec(table, filters=[]), dynamodb_engine, function)) as mapping:
        wait_for(lambda: mapping.delivered == 2)
    assert function.calls == [["a", "b"], ["a", "b"]]  # retried whole, and not split (no function error)


def test_without_report_batch_item_failures_a_response_is_no_failure(ddb, dynamodb_engine):
    table = new_table(ddb)
    put(ddb, table, ["a", "b"])
    seqs = sequences(dynamodb_engine, table)
    function = Handler(lambda batch, n: {"batchItemFailures": [{"itemIdentifier": seqs["b"]}]})
    mapping = StreamMapping(spec(table, filters=[], report_batch_item_failures=False), dynamodb_engine, function)
    with running(mapping):
        wait_for(lambda: mapping.delivered == 2)
        time.sleep(0.1)
    assert function.calls == [["a", "b"]]


def test_records_whose_retries_are_spent_go_to_the_on_failure_destination_and_the_stream_goes_on(
        ddb, dynamodb_engine):
    table = new_table(ddb)
    put(ddb, table, ["a", "bad", "c"])
    seqs = sequences(dynamodb_engine, table)
    function = Handler(lambda batch, n: failed_from(batch, "bad") if any(key(r) == "bad" for r in batch) else None)
    destination = Destination()
    mapping = StreamMapping(spec(table, filters=[], bisect=False, max_retries=2), dynamodb_engine, function,
                            send=destination)
    with running(mapping):
        wait_for(lambda: mapping.describe()["discarded"] == 2)
        put(ddb, table, ["later"])
        wait_for(lambda: mapping.delivered == 2)
    # The first attempt and 2 retries of what it reported; then bad and c are given up on together (no bisection:
    # c goes with it), and the stream goes on.
    assert function.calls == [["a", "bad", "c"], ["bad", "c"], ["bad", "c"], ["later"]]
    ((sent_to, record),) = destination.sent
    assert sent_to == FAILURE_QUEUE
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestContext"]["functionArn"] == FUNCTION_ARN
    assert record["responseContext"]["statusCode"] == 200
    assert "functionError" not in record["responseContext"]  # it answered: a partial failure, no function error
    info = record["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (seqs["bad"], seqs["c"], 2)
    assert info["streamArn"] == spec(table)["stream_arn"]
    assert info["shardId"].startswith("shardId-")
    assert info["approximateArrivalOfFirstRecord"].endswith("Z")
    assert record["version"] == "1.0"
    assert mapping.describe()["invocation_records"] == 1


def test_with_a_retry_limit_a_poison_record_alone_reaches_the_destination_and_the_rest_goes_once(
        ddb, dynamodb_engine):
    """PublishOutcome's way (stop at the first failure, report it and the rest; a first record that fails is a
    function error) with the template's mapping (ReportBatchItemFailures, bisection) and a retry limit of 5 (the
    template retries without a count limit, and PublishOutcome sets aside a record that can never be published
    itself; this is the mapping's own way out): every other record is handed over once, in order, and the
    invocation record names the poison record alone."""
    table = new_table(ddb)
    names = [f"r{n}" for n in range(7)] + ["poison"] + [f"s{n}" for n in range(6)]
    put(ddb, table, names)
    seqs = sequences(dynamodb_engine, table)
    done: list[str] = []

    def publish_outcome(batch: list[dict[str, Any]], n: int) -> Any:
        for index, record in enumerate(batch):
            if key(record) == "poison":
                return True if index == 0 else failed_from(batch, "poison")
            done.append(key(record))
        return {"batchItemFailures": []}

    function, destination = Handler(publish_outcome), Destination()
    with running(StreamMapping(spec(table, filters=[], max_retries=5), dynamodb_engine, function,
                               send=destination)) as mapping:
        wait_for(lambda: mapping.delivered == len(names) - 1 and mapping.describe()["discarded"] == 1)
        put(ddb, table, ["later"])
        wait_for(lambda: mapping.delivered == len(names))
    assert done == [n for n in names if n != "poison"] + ["later"]  # each once, in stream order
    ((_, record),) = destination.sent
    info = record["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        seqs["poison"], seqs["poison"], 1)
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["responseContext"]["functionError"] == "Unhandled"
    # The batch it came in; the retry from it (reported: a retry spent); that retry split (a function error: no
    # retry); alone, then, until the retries are spent.
    retries = 5
    assert function.calls[1] == ["poison", "s0", "s1"]
    assert function.calls.count(["poison"]) == retries
    assert record["requestContext"]["approximateInvokeCount"] == 2 + retries


def test_records_older_than_the_maximum_age_are_not_handed_over_but_given_up_on(ddb, dynamodb_engine):
    table = new_table(ddb)
    put(ddb, table, ["old", "older"])
    created = float(stream(dynamodb_engine, table)[0]["dynamodb"]["ApproximateCreationDateTime"])
    function, destination = Handler(lambda batch, n: None), Destination()
    mapping = StreamMapping(spec(table, filters=[], max_record_age=60), dynamodb_engine, function, send=destination,
                            clock=lambda: created + 61)
    with running(mapping):
        wait_for(lambda: mapping.describe()["discarded"] == 2)
    assert function.calls == []
    ((_, record),) = destination.sent
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record  # no invocation to describe
    assert record["DDBStreamBatchInfo"]["batchSize"] == 2


def test_an_invocation_that_never_ran_spends_no_retry(ddb, dynamodb_engine):
    table = new_table(ddb)
    put(ddb, table, ["a"])
    function = Handler(lambda batch, n: RuntimeError("Rate Exceeded.") if n <= 3 else None)
    mapping = StreamMapping(spec(table, filters=[], max_retries=0), dynamodb_engine, function, send=Destination())
    with running(mapping):
        wait_for(lambda: mapping.delivered == 1)
    assert function.calls == [["a"]] * 4
    assert mapping.describe()["discarded"] == 0


def test_the_shard_waits_until_the_invocation_record_is_sent(ddb, dynamodb_engine):
    table = new_table(ddb)
    put(ddb, table, ["bad", "good"])
    function = Handler(lambda batch, n: key(batch[0]) == "bad")
    destination, calls_when_sent = Destination(refuse=2), []

    def send(queue: str, body: str) -> None:
        destination(queue, body)
        calls_when_sent.append(len(function.calls))

    mapping = StreamMapping(spec(table, filters=[], batch_size=1, max_retries=0), dynamodb_engine, function,
                            send=send)
    with running(mapping):
        wait_for(lambda: mapping.delivered == 1)
    assert function.calls == [["bad"], ["good"]]
    assert calls_when_sent == [1]  # sent on its third try, before the stream went on to "good"
    assert mapping.describe()["invocation_records"] == 1


# ---- metrics.py ---------------------------------------------------------------------------------------------------
def emitted(monkeypatch: pytest.MonkeyPatch, counts: list[tuple[str, str, float]]) -> list[str]:
    """The EMF lines the functions print for these (metric, step, value), through their own helper."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OrderSaga")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "order-saga")
    from aws_lambda_powertools.metrics import MetricUnit

    from order_saga.step import count

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for name, step, value in counts:
            count(name, step, value, MetricUnit.Milliseconds if name == "SagaDuration" else MetricUnit.Count)
    return printed.getvalue().splitlines()


def widgets(log_dir: Path) -> dict[str, dict[str, float | None]]:
    """The template's dashboard evaluated on the logs in `log_dir`: {widget title: {line label: value}}."""
    (evaluated,) = dashboards(TEMPLATE, log_dir)
    assert evaluated["logical_id"] == "SagaDashboard"
    return {w["title"]: {label: value for label, value in w["lines"]} for w in evaluated["widgets"]}


def line_of(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(label)).split(label, 1)[1].strip()


def test_the_functions_emf_lines_fill_the_template_s_dashboard(monkeypatch, tmp_path):
    lines = emitted(monkeypatch, [("OrderConfirmed", "PublishOutcome", 1)] * 3
                    + [("OrderCancelled", "PublishOutcome", 1), ("SagaParked", "PublishOutcome", 1)]
                    + [("SagaDuration", "PublishOutcome", ms) for ms in range(100, 0, -1)]
                    + [("StepFailed", "ReserveInventory", 1)] * 2 + [("StepFailed", "AuthorizePayments", 1)]
                    + [("StepRetried", "AuthorizePayment", 1)] * 3
                    + [("OrderConfirmed", "ConfirmOrder", 1)])  # another step: not the dashboard's line
    other = json.loads(lines[0])
    other["_aws"]["CloudWatchMetrics"][0]["Namespace"] = "SomeoneElse"  # same metric, another namespace
    (tmp_path / "PublishOutcome.log").write_text("\n".join(lines[:60]) + "\nplain log line\n")
    (tmp_path / "Others.log").write_text("\n".join(lines[60:]) + '\n{"_aws": broken json\n' + json.dumps(other))
    (tmp_path / "ignored.txt").write_text("\n".join(lines))  # only *.log files are read
    shown = widgets(tmp_path)

    assert shown["Sagas by outcome"] == {"confirmed": 3, "cancelled": 1, "parked": 1}
    assert shown["Success rate (%)"] == {"confirmed / finished": 60.0}  # the hidden lines stay hidden
    assert shown["Saga duration (ms)"] == {"p50": 50.0, "p99": 99.0}
    failures = shown["Failures per step (business errors)"]
    assert (failures["ReserveInventory"], failures["AuthorizePayments"]) == (2, 1)
    assert sum(failures.values()) == 3
    retries = shown["Retries per step (transient errors)"]
    assert (retries["AuthorizePayment"], sum(retries.values())) == (3, 3)
    text = report(dashboards(TEMPLATE, tmp_path))
    assert (line_of(text, "confirmed / finished"), line_of(text, "p99")) == ("60", "99")


def test_an_empty_run_shows_zero_counts_and_no_rate_or_percentile(tmp_path):
    shown = widgets(tmp_path)
    assert shown["Sagas by outcome"] == {"confirmed": 0, "cancelled": 0, "parked": 0}
    assert shown["Success rate (%)"] == {"confirmed / finished": None}  # 0 / 0 is no datapoint, as in CloudWatch
    assert shown["Saga duration (ms)"] == {"p50": None, "p99": None}
    assert line_of(report(dashboards(TEMPLATE, tmp_path)), "confirmed / finished") == "-"
    # No SQS metrics locally: the failure queue's depth has no datapoint.
    assert shown["Outcome records given up on (replay them: docs/events.md)"] == {
        "invocation records in OutcomeFailuresQueue": None}


@pytest.mark.parametrize(("values", "stat", "expected"), [
    ([10.0, 20.0], "p50", 10.0), ([10.0, 20.0], "p99", 20.0), ([5.0], "p99", 5.0),
    ([3.0, 1.0, 2.0], "Minimum", 1.0), ([3.0, 1.0, 2.0], "Maximum", 3.0), ([3.0, 1.0, 2.0], "Average", 2.0),
    ([3.0, 1.0, 2.0], "SampleCount", 3.0), ([], "Sum", 0.0), ([], "Average", None)])
def test_statistics_are_cloudwatch_s_nearest_rank_percentiles_and_plain_aggregates(values, stat, expected):
    assert statistic(values, stat) == expected
