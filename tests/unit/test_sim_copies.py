"""The simulation's copies (sagalocal/sim/world.py): the direct DynamoDB client's copy of each request and answer
(json_copy), and a world's copy of the seed data's stream records (sagalocal.stepfunctions.json_deepcopy, the
interpreter's own JSON copy), against what they replace (the JSON round trip, copy.deepcopy): the same value, with
the same types, sharing no container with the original."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pytest

from sagalocal.sim.world import _json_default, json_copy
from sagalocal.stepfunctions import json_deepcopy

PLAIN = [
    {},
    [],
    "",
    0,
    None,
    {"TableName": "OrdersTable", "Key": {"pk": {"S": "ORDER#ord_1"}}, "ConsistentRead": True,
     "ExpressionAttributeValues": {":n": {"N": "1.50"}, ":ss": {"SS": ["a", "b"]}, ":m": {"M": {"x": {"L": []}}},
                                   ":b": {"BOOL": False}, ":z": {"NULL": True}}},
    {"ConsumedCapacity": [{"TableName": "t", "CapacityUnits": 0.5, "WriteCapacityUnits": 2.0}],
     "Items": [{"a": {"N": "12345678901234567890"}}, {"é ü": {"S": "unicode ✓\n\"quoted\""}}], "Count": 2},
    [[[]], [{}], 1.0, -0.0, 1e300, 3, True, None, "x"],
]
NOT_PLAIN = [
    ("a tuple", {"TransactItems": ({"Put": {"Item": {}}},)}),
    ("a datetime", {"CreationDateTime": datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)}),
    ("an int key", {"counts": {1: "one"}}),
    ("a bool key", {True: "yes"}),
    ("a str subclass", {"k": type("Name", (str,), {})("v")}),
]


def round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def containers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [value, *(c for v in value.values() for c in containers(v))]
    if isinstance(value, (list, tuple)):
        return [value, *(c for v in value for c in containers(v))]
    return []


def shared(a: Any, b: Any) -> bool:
    return any(x is y for x in containers(a) for y in containers(b) if isinstance(x, (dict, list)))


@pytest.mark.parametrize("value", PLAIN)
def test_json_copy_is_the_json_round_trip_and_shares_nothing(value):
    ours = json_copy(value)
    assert ours == round_trip(value)
    assert repr(ours) == repr(round_trip(value))  # the same types (a float stays a float, an int an int)
    assert not shared(ours, value)


@pytest.mark.parametrize(("what", "value"), NOT_PLAIN, ids=[what for what, _ in NOT_PLAIN])
def test_what_json_changes_takes_the_round_trip(what, value):
    assert repr(json_copy(value)) == repr(round_trip(value))
    assert not shared(json_copy(value), value)


def test_what_json_refuses_is_refused_as_the_round_trip_refuses_it():
    for value in ({"B": b"bytes"}, {"n": {1.5j}}):
        with pytest.raises(TypeError) as theirs:
            round_trip(value)
        with pytest.raises(TypeError) as ours:
            json_copy(value)
        assert str(ours.value) == str(theirs.value)


def test_a_record_copy_is_a_deep_copy_even_of_a_record_holding_bytes():
    record = {"eventID": "e", "eventName": "MODIFY", "dynamodb": {
        "ApproximateCreationDateTime": 1798761600.123, "Keys": {"pk": {"S": "COUPON#X"}}, "SequenceNumber": "12",
        "NewImage": {"pk": {"S": "COUPON#X"}, "used": {"N": "1"}, "by": {"M": {"c": {"SS": ["a"]}}}},
        "OldImage": {"pk": {"S": "COUPON#X"}, "used": {"N": "0"}}, "SizeBytes": 321}}
    binary = copy.deepcopy(record)
    binary["dynamodb"]["NewImage"]["blob"] = {"B": b"\x00raw"}
    for original in (record, binary):
        ours = json_deepcopy(original)
        assert repr(ours) == repr(copy.deepcopy(original))
        assert not shared(ours, original)
