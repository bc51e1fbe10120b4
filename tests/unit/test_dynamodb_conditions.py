"""The engine's condition-expression cache (sagalocal/dynamodb/conditions.py) against moto's own parse, side by side.

Every condition the saga sends (and its filters and key conditions), and edge cases of the grammar, are parsed
by moto with the cache off and then twice through the cache (the first request fills it, the next ones bind
their values into the cached tree), each time with two sets of values of the same types: the same tree, node by
node (classes, paths, each leaf's type and value), the same answer on every item (true on some, false on
others), the same names and placeholders reported found; and for the expressions moto refuses, the same error,
every time (a refusal is never cached).
"""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

N = lambda v: {"N": str(v)}  # noqa: E731
S = lambda v: {"S": v}  # noqa: E731
NOW, LATER = 1_798_761_600_000, 1_798_761_690_000
OWNER = "arn:aws:states:us-east-1:123456789012:execution:OrderSaga:ord_1#2027-01-01T00:00:00.000Z"
STATUS = {"#status": "status"}
STATE = {"#state": "state"}

# (expression, names, values): every condition the saga's code writes (tests below check that grep finds no other)
SAGA = [
    ("attribute_not_exists(pk)", None, None),
    ("attribute_exists(pk)", None, None),
    ("attribute_not_exists(order_id)", None, None),
    ("attribute_not_exists(payment_id)", None, None),
    ("attribute_exists(reconcile)", None, None),
    ("#status = :pending", STATUS, {":pending": S("PENDING"), ":now": N(NOW)}),
    ("#status = :committed", STATUS, {":committed": S("COMMITTED"), ":purge": N(NOW)}),
    ("#status = :from", {**STATUS, "#authorization": "authorization"}, {":from": S("PENDING"), ":to": S("X")}),
    ("#status = :was", STATUS, {":was": S("HELD"), ":released": S("RELEASED")}),
    ("#status = :failed", STATUS, {":failed": S("FAILED")}),
    ("#status IN (:held, :committed)", STATUS, {":held": S("HELD"), ":committed": S("COMMITTED")}),
    ("#status = :from AND expires_at > :now", STATUS, {":from": S("RESERVED"), ":now": N(NOW)}),
    ("#status = :from AND attribute_not_exists(sent_at)", STATUS, {":from": S("PENDING")}),
    ("#state = :captured", STATE, {":captured": S("CAPTURED")}),
    ("#state = :from", STATE, {":from": S("AUTHORIZED")}),
    ("#state = :from AND attribute_not_exists(expires_before_capture)", STATE, {":from": S("AUTHORIZED")}),
    ("attribute_not_exists(#state) OR #purge_at <= :expired_by", {**STATE, "#purge_at": "purge_at"},
     {":expired_by": N(NOW)}),
    ("available >= :q", None, {":q": N(2)}),
    ("reserved >= :q", None, {":q": N(2)}),
    ("sold >= :q", None, {":q": N(1)}),
    ("used > :zero", None, {":zero": N(0), ":one": N(1)}),
    ("redeemed > :zero", None, {":zero": N(0)}),
    ("attribute_not_exists(used) OR used < :limit", None, {":limit": N(1), ":zero": N(0)}),
    ("attribute_not_exists(open_orders) OR size(open_orders) < :cap", None,
     {":cap": N(2), ":order": {"SS": ["ord_1"]}}),
    ("attribute_not_exists(order_id) OR saga_status IN (:s0, :s1)", None, {":s0": S("PENDING"), ":s1": S("FAILED")}),
    ("attribute_exists(pk) AND redeemed < max_redemptions AND valid_from <= :now AND valid_until > :now", None,
     {":now": N(NOW), ":one": N(1)}),
    ("attribute_exists(active) AND lease_expires_at = :seen AND saga_status = :was", {"#step": "Reaper"},
     {":seen": N(LATER), ":was": S("EXECUTING")}),
    ("lease_owner = :owner AND fence = :fence AND lease_expires_at >= :now AND saga_status = :executing",
     {"#step": "ReserveInventory"}, {":owner": S(OWNER), ":fence": N(1), ":now": N(NOW), ":executing": S("EXECUTING"),
                                     ":entry": {"M": {"status": S("SUCCEEDED"), "at": N(NOW)}}}),
    ("lease_owner = :owner AND fence = :fence AND saga_status = :confirming", None,
     {":owner": S(OWNER), ":fence": N(1), ":confirming": S("CONFIRMING")}),
    ("lease_owner = :owner AND saga_status IN (:s0, :s1, :s2)", None,
     {":owner": S(OWNER), ":s0": S("PENDING"), ":s1": S("EXECUTING"), ":s2": S("COMPENSATING")}),
    ("attribute_not_exists(lease_owner) AND saga_status IN (:s0, :s1, :s2)", None,
     {":s0": S("PENDING"), ":s1": S("EXECUTING"), ":s2": S("COMPENSATING")}),
    ("lease_owner = :owner AND fence = :fence AND saga_status IN (:s0, :s1, :s2)", {"#step": "VoidPayment"},
     {":owner": S(OWNER), ":fence": N(1), ":s0": S("PENDING"), ":s1": S("EXECUTING"), ":s2": S("COMPENSATING")}),
    ("lease_owner = :owner AND fence = :fence AND saga_status IN (:s0, :s1, :s2) AND attribute_not_exists(steps.#step)",
     {"#step": "CancelOrder", "#state": "status"},
     {":owner": S(OWNER), ":fence": N(1), ":s0": S("PENDING"), ":s1": S("EXECUTING"), ":s2": S("COMPENSATING")}),
    ("saga_status = :pending AND (attribute_not_exists(lease_owner) OR lease_expires_at < :now)",
     {"#step": "ReserveInventory"}, {":pending": S("PENDING"), ":now": N(NOW), ":marks": {"BOOL": True}}),
    ("begins_with(lease_owner, :execution) AND fence = :fence AND saga_status = :failed "
     "AND parked_redrive_count < :count", None,
     {":execution": S(OWNER.split("#")[0] + "#"), ":fence": N(1), ":failed": S("FAILED"), ":count": N(1)}),
    ("(attribute_not_exists(lease_owner) OR lease_owner = :owner OR (saga_status = :failed "
     "AND begins_with(lease_owner, :execution))) AND saga_status IN (:pending, :executing, :failed)", None,
     {":owner": S(OWNER), ":execution": S(OWNER.split("#")[0] + "#"), ":pending": S("PENDING"),
      ":executing": S("EXECUTING"), ":failed": S("FAILED")}),
    ("by_id.#id.remaining > :zero", {"#id": "ord_1"}, {":zero": N(0)}),
    # the breaker's guards (breaker.py _write), as built, with and without the first write's alternative
    ("(version = :version AND #state IN (:open, :half_open))", STATE,
     {":version": N(3), ":open": S("OPEN"), ":half_open": S("HALF_OPEN")}),
    ("(version = :version AND #state = :half_open AND probes < :most)", STATE,
     {":version": N(3), ":half_open": S("HALF_OPEN"), ":most": N(1)}),
    ("(version = :version AND #state = :half_open AND probes > :zero)", STATE,
     {":version": N(3), ":half_open": S("HALF_OPEN"), ":zero": N(0)}),
    ("(attribute_not_exists(payment_id) OR (version = :version AND #state = :closed))", STATE,
     {":version": N(3), ":closed": S("CLOSED")}),
    ("(version = :version AND #state = :closed AND size(failed_keys) >= :threshold)", STATE,
     {":version": N(3), ":closed": S("CLOSED"), ":threshold": N(2)}),
    ("(version = :version AND #state = :half_open AND successes >= :enough)", STATE,
     {":version": N(3), ":half_open": S("HALF_OPEN"), ":enough": N(2)}),
    # key conditions (moto parses those with another parser; as conditions they must agree all the same)
    ("expiring = :shard AND expires_at < :now", None, {":shard": S("1"), ":now": N(NOW)}),
    ("active = :shard AND lease_expires_at < :now", None, {":shard": S("1"), ":now": N(NOW)}),
    ("#shard = :shard AND reconcile_at <= :now", {"#shard": "reconcile"}, {":shard": S("1"), ":now": N(NOW)}),
]

B64 = base64.b64encode(b"\x00\x01bytes").decode()
EDGE = [
    ("NOT attribute_exists(lease_owner)", None, None),
    ("NOT (fence = :v OR used = :w)", None, {":v": N(1), ":w": N(0)}),
    ("NOT fence = :v", None, {":v": N(1)}),
    ("fence = :v OR used = :w AND sold = :x", None, {":v": N(1), ":w": N(0), ":x": N(0)}),
    ("(fence = :v OR used = :w) AND sold = :x", None, {":v": N(1), ":w": N(0), ":x": N(0)}),
    ("fence = :v AND (used = :w OR (sold = :x AND NOT attribute_exists(pk)))", None,
     {":v": N(1), ":w": N(0), ":x": N(0)}),
    ("fence BETWEEN :lo AND :hi", None, {":lo": N(1), ":hi": N(3)}),
    ("#n BETWEEN :lo AND :hi AND used < :hi", {"#n": "fence"}, {":lo": N(0), ":hi": N(2)}),
    ("size(open_orders) BETWEEN :lo AND :hi", None, {":lo": N(1), ":hi": N(2)}),
    ("fence IN (:a, :b, :c)", None, {":a": N(1), ":b": N(2), ":c": N(7)}),
    ("saga_status IN (:a)", None, {":a": S("EXECUTING")}),
    ("size(steps) = :n", None, {":n": N(2)}),
    ("size(lease_owner) > :n", None, {":n": N(10)}),
    ("size(tags) < :n", None, {":n": N(3)}),
    ("size(bin) >= :n", None, {":n": N(2)}),
    ("attribute_type(fence, :t)", None, {":t": S("N")}),
    ("attribute_type(open_orders, :t) OR attribute_type(tags, :u)", None, {":t": S("SS"), ":u": S("L")}),
    ("begins_with(saga_status, :p)", None, {":p": S("EXEC")}),
    ("begins_with(fence, :p)", None, {":p": S("1")}),
    ("contains(open_orders, :v)", None, {":v": S("ord_1")}),
    ("contains(saga_status, :v)", None, {":v": S("CUT")}),
    ("contains(tags, :v)", None, {":v": S("red")}),
    ("contains(nums, :v)", None, {":v": N(2)}),
    ("contains(fence, :v)", None, {":v": N(1)}),
    ("steps.ReserveInventory.#s = :v", {"#s": "status"}, {":v": S("SUCCEEDED")}),
    ("steps.#step.#s = :v AND attribute_exists(steps.#step)", {"#step": "ReserveInventory", "#s": "status"},
     {":v": S("SUCCEEDED")}),
    ("#a.#b.#c > :v", {"#a": "by_id", "#b": "ord_1", "#c": "remaining"}, {":v": N(0)}),
    ("tags[0] = :v", None, {":v": S("red")}),
    ("tags[1] = :v OR tags[2] = :v", None, {":v": S("blue")}),
    ("records[0].kind = :v", None, {":v": S("a")}),
    ("attribute_exists(records[1].kind)", None, None),
    ("#n = :v AND attribute_exists(#n) AND NOT #n <> :v", {"#n": "saga_status"}, {":v": S("EXECUTING")}),
    ("fence = :v OR used = :v OR sold = :v", None, {":v": N(0)}),
    ("fence < available", None, None),
    ("fence <> :v", None, {":v": N(1)}),
    ("fence <= :v AND used >= :w", None, {":v": N(1), ":w": N(0)}),
    (":v = fence", None, {":v": N(1)}),
    (":v < :w", None, {":v": N(1), ":w": N(2)}),
    ("price = :d", None, {":d": N("1.50")}),
    ("price > :d", None, {":d": N("1.25")}),
    ("flag = :b", None, {":b": {"BOOL": True}}),
    ("gone = :null", None, {":null": {"NULL": True}}),
    ("bin = :bytes", None, {":bytes": {"B": B64}}),
    ("open_orders = :ss", None, {":ss": {"SS": ["ord_1", "ord_2"]}}),
    ("nums = :ns", None, {":ns": {"NS": ["1", "2"]}}),
    ("bins = :bs", None, {":bs": {"BS": [B64]}}),
    ("tags = :l", None, {":l": {"L": [S("red"), S("blue")]}}),
    ("steps = :m", None, {":m": {"M": {"ReserveInventory": {"M": {"status": S("SUCCEEDED")}}}}}),
    ("records[0] = :m", None, {":m": {"M": {"kind": S("a")}}}),
    ("saga_status = :v", None, {":v": S("EXECUTING"), ":unused": {"L": []}}),
    ("  fence   =   :v  ", None, {":v": N(1)}),
]

# What moto refuses: the cache must refuse it the same way, every time.
REFUSED = [
    ("fence = :missing", None, {":v": N(1)}),
    ("#missing = :v", {"#n": "fence"}, {":v": N(1)}),
    ("#n = :v", None, {":v": N(1)}),
    ("fence = :v", None, None),
    ("status = :v", None, {":v": S("x")}),
    ("fence = ", None, None),
    ("fence = :v AND", None, {":v": N(1)}),
    ("((fence = :v))", None, {":v": N(1)}),
    ("fence BETWEEN :null AND :v", None, {":v": N(1), ":null": {"NULL": True}}),
    ("fence IN :v", None, {":v": N(1)}),
    ("attribute_exists(:v)", None, {":v": N(1)}),
    ("size(fence)", None, None),
    ("fence ! :v", None, {":v": N(1)}),
    ("fence = :v)", None, {":v": N(1)}),
    ("(fence = :v", None, {":v": N(1)}),
    ("begins_with(fence)", None, None),
]

# Items the conditions are tested on: most of them hold on some and fail on others.
ITEMS: list[dict[str, Any] | None] = [
    None,
    {"pk": S("ORDER#ord_1"), "order_id": S("ord_1"), "payment_id": S("ord_1#1"), "saga_status": S("EXECUTING"),
     "lease_owner": S(OWNER),
     "fence": N(1), "lease_expires_at": N(LATER), "status": S("PENDING"), "state": S("CAPTURED"),
     "available": N(3), "reserved": N(2), "sold": N(0), "used": N(0), "redeemed": N(1), "max_redemptions": N(2),
     "valid_from": N(NOW - 1), "valid_until": N(LATER), "open_orders": {"SS": ["ord_1"]}, "active": S("1"),
     "steps": {"M": {"ReserveInventory": {"M": {"status": S("SUCCEEDED")}}, "AuthorizePayment": {"M": {}}}},
     "by_id": {"M": {"ord_1": {"M": {"remaining": N(2)}}}}, "tags": {"L": [S("red"), S("blue")]},
     "records": {"L": [{"M": {"kind": S("a")}}, {"M": {"kind": S("b")}}]}, "price": N("1.5"), "flag": {"BOOL": True},
     "gone": {"NULL": True}, "bin": {"B": b"\x00\x01bytes"}, "nums": {"NS": ["1", "2"]},
     "bins": {"BS": [b"\x00\x01bytes"]}, "version": N(3), "probes": N(0), "successes": N(2),
     "failed_keys": {"SS": ["a", "b"]}, "expiring": S("1"), "expires_at": N(NOW - 5), "reconcile": S("1"),
     "reconcile_at": N(NOW), "purge_at": N(NOW - 1), "parked_redrive_count": N(0)},
    {"pk": S("ORDER#ord_2"), "order_id": S("ord_2"), "saga_status": S("FAILED"),
     "lease_owner": S(OWNER.split("#")[0] + "#other"), "fence": N(2), "lease_expires_at": N(NOW - 1),
     "status": S("COMMITTED"), "state": S("HALF_OPEN"), "available": N(0), "reserved": N(5), "sold": N(3),
     "used": N(4), "redeemed": N(0), "max_redemptions": N(0), "valid_from": N(LATER), "valid_until": N(NOW),
     "open_orders": {"SS": ["ord_2", "ord_3", "ord_4"]}, "steps": {"M": {"CancelOrder": {"M": {}}}},
     "by_id": {"M": {"ord_1": {"M": {"remaining": N(0)}}}}, "tags": {"L": [S("green")]},
     "records": {"L": [{"M": {"kind": S("z")}}]}, "price": N("1.25"), "flag": {"BOOL": False}, "bin": {"B": b"\x07"},
     "nums": {"NS": ["3"]}, "version": N(4), "probes": N(1), "successes": N(0), "failed_keys": {"SS": ["a"]},
     "active": S("1"), "expires_at": N(LATER), "reconcile_at": N(LATER), "purge_at": N(LATER),
     "parked_redrive_count": N(3)},
    {"pk": S("COUPON#X"), "saga_status": S("PENDING"), "status": S("HELD"), "fence": N(7), "used": N(1),
     "tags": {"S": "not a list"}, "open_orders": {"S": "ord_1"}, "steps": S("x"), "price": S("1.5")},
    {"pk": S("ORDER#ord_4"), "status": S("RESERVED"), "state": S("AUTHORIZED"), "expires_at": N(LATER),
     "saga_status": S("CONFIRMING"), "lease_owner": S(OWNER), "fence": N(1)},
    {"pk": S("ORDER#ord_5"), "status": S("FAILED"), "saga_status": S("FAILED"), "lease_owner": S(OWNER),
     "fence": N(1), "parked_redrive_count": N(0), "version": N(3), "state": S("HALF_OPEN"), "probes": N(0),
     "successes": N(2)},
    {"payment_id": S("breaker"), "version": N(3), "state": S("HALF_OPEN"), "probes": N(1), "successes": N(0)},
    {"payment_id": S("breaker"), "version": N(3), "state": S("CLOSED"), "failed_keys": {"SS": ["a", "b"]}},
]


def other(value: dict[str, Any]) -> dict[str, Any]:
    """Another value of the same type (the second request of a cached expression binds it)."""
    (kind, inner), = value.items()
    if kind == "S":
        return {"S": inner + "-2" if inner.isupper() or "#" in inner else inner[::-1] + "x"}
    if kind == "N":
        return {"N": str(Decimal(inner) + 1)}
    if kind == "BOOL":
        return {"BOOL": not inner}
    if kind in ("SS", "NS", "BS"):
        return {kind: inner[:1] + [{"SS": "zz", "NS": "9", "BS": base64.b64encode(b"zz").decode()}[kind]]}
    if kind == "L":
        return {"L": [*inner, S("more")]}
    if kind == "M":
        return {"M": {**inner, "more": N(1)}}
    if kind == "B":
        return {"B": base64.b64encode(b"other").decode()}
    return value  # NULL


def shape(node: Any) -> Any:
    """A parsed tree as plain data: every node's class and fields, every leaf's type and value."""
    from moto.dynamodb.comparisons import AttributePath, AttributeValue

    if isinstance(node, AttributeValue):
        return ("value", node.type, repr(node.value))
    if isinstance(node, AttributePath):
        return ("path", tuple(node.path))
    if isinstance(node, tuple):
        return tuple(shape(n) for n in node)
    if hasattr(node, "__dict__"):
        return (type(node).__name__, tuple((k, shape(v)) for k, v in sorted(vars(node).items())))
    return node


def parse(text: str, names: Any, values: Any, cached: bool) -> Any:
    """The parse's outcome: (tree's shape, each item's answer, names found, placeholders found), or the error."""
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.models.dynamo_type import DynamoType, Item

    from sagalocal.dynamodb import conditions

    conditions.ENABLED[0] = cached
    parser = ConditionExpressionParser(text, names, values)
    try:
        tree = parser.parse()
    except Exception as exc:  # noqa: BLE001 - moto's refusals are compared too
        return ("refused", type(exc).__name__, str(exc))
    finally:
        conditions.ENABLED[0] = True
    answers = []
    for attrs in ITEMS:
        try:
            answers.append(tree.expr(None if attrs is None else Item(DynamoType(S("k")), None, attrs)))
        except Exception as exc:  # noqa: BLE001 - size() of a missing attribute, a comparison of two types
            answers.append((type(exc).__name__, str(exc)))
    return shape(tree), answers, list(parser.expr_attr_names_found), list(parser.expr_attr_values_found)


@pytest.fixture(scope="module", autouse=True)
def engine():
    from moto import mock_aws

    from sagalocal.dynamodb.engine import install_backend_patches

    with mock_aws():
        install_backend_patches()
        yield


CASES = SAGA + EDGE


@pytest.mark.parametrize("case", CASES, ids=[f"{n}-{c[0][:50]}" for n, c in enumerate(CASES)])
def test_the_cached_parse_is_moto_s_with_each_request_s_values(case):
    text, names, values = case
    second = None if values is None else {name: other(value) for name, value in values.items()}
    theirs = [parse(text, names, v, cached=False) for v in (values, second)]
    assert theirs[0][0] != "refused", theirs[0]
    # the first request fills the cache; the next ones, with other values and then the first again, bind theirs
    ours = [parse(text, names, v, cached=True) for v in (values, second, values, second)]
    assert ours == [*theirs, *theirs]
    if case in SAGA:  # not vacuous: the saga's conditions hold on some items and fail on others
        answers = {a for _, each, _, _ in theirs for a in each}
        assert {True, False} <= answers, answers


def test_the_values_bound_make_a_difference():
    """The second set of values changes some answers: a tree bound to the first request's values would fail the
    test above (as it did when the cache was made to do so)."""
    changed = [case for case in CASES if case[2] and parse(*case, cached=False)[1] != parse(
        case[0], case[1], {name: other(value) for name, value in case[2].items()}, cached=False)[1]]
    assert len(changed) >= 40


@pytest.mark.parametrize("case", REFUSED, ids=[f"{n}-{c[0][:50]}" for n, c in enumerate(REFUSED)])
def test_what_moto_refuses_is_refused_the_same_way_every_time(case):
    theirs = parse(*case, cached=False)
    assert theirs[0] == "refused"
    assert [parse(*case, cached=True) for _ in range(3)] == [theirs] * 3


def test_a_refusal_is_not_cached_and_a_value_of_another_type_is_parsed_again():
    """The same text and names: a missing value refused, then a good request parsed; a NULL bound where a number
    was cached is moto's refusal, not the cached tree."""
    text = "fence BETWEEN :lo AND :hi"
    assert parse(text, None, {":lo": N(1)}, cached=True)[0] == "refused"
    good = parse(text, None, {":lo": N(1), ":hi": N(3)}, cached=True)
    assert good == parse(text, None, {":lo": N(1), ":hi": N(3)}, cached=False)
    null = parse(text, None, {":lo": {"NULL": True}, ":hi": N(3)}, cached=True)
    assert null == parse(text, None, {":lo": {"NULL": True}, ":hi": N(3)}, cached=False)
    assert null[0] == "refused"


def test_the_same_text_with_other_names_is_another_tree():
    """#n names another attribute in each request: each gets the tree of its own names."""
    for attribute in ("fence", "used", "sold", "fence"):
        ours = parse("#n = :v AND attribute_exists(#n)", {"#n": attribute}, {":v": N(0)}, cached=True)
        assert ours == parse("#n = :v AND attribute_exists(#n)", {"#n": attribute}, {":v": N(0)}, cached=False)
        paths = {str(("path", (name,))) in str(ours[0]) for name in ("fence", "used", "sold") if name != attribute}
        assert str(("path", (attribute,))) in str(ours[0])
        assert paths == {False}


def test_requests_the_cache_does_not_take_are_moto_s():
    from sagalocal.dynamodb.conditions import key_of

    assert key_of("fence = :v", None, {":v": {"N": "1", "S": "x"}}) is None  # not one type
    assert key_of("fence = :v", None, {":v": "1"}) is None
    assert key_of("#n = :v", {"#n": ["fence"]}, {":v": N(1)}) is None
    assert key_of("", None, None) is None
    odd = ("fence = :v", None, {":v": {"N": "1", "S": "x"}})
    assert parse(*odd, cached=True) == parse(*odd, cached=False)


def test_through_the_api_a_condition_and_a_filter_answer_as_moto_does():
    """End to end through moto's handler and backend: a conditional put refused and accepted, a filtered scan."""
    import boto3
    from botocore.exceptions import ClientError

    from sagalocal.dynamodb import conditions

    ddb = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    answers = []
    for cached in (False, True, True):
        table = f"conditions-{len(answers)}"
        ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        conditions.ENABLED[0] = cached
        try:
            seen = []
            for n in range(4):
                try:
                    ddb.put_item(TableName=table, Item={"pk": S(f"p{n % 2}"), "fence": N(n)},
                                 ConditionExpression="attribute_not_exists(pk) OR fence < :f",
                                 ExpressionAttributeValues={":f": N(n - 2)})
                    seen.append("put")
                except ClientError as exc:
                    seen.append(exc.response["Error"]["Code"])
            scanned = ddb.scan(TableName=table, FilterExpression="#f BETWEEN :lo AND :hi",
                               ExpressionAttributeNames={"#f": "fence"},
                               ExpressionAttributeValues={":lo": N(1), ":hi": N(2)})["Items"]
            answers.append((seen, sorted(item["pk"]["S"] for item in scanned)))
        finally:
            conditions.ENABLED[0] = True
    assert answers[0] == answers[1] == answers[2]
    assert answers[0] == (["put", "put", "ConditionalCheckFailedException", "ConditionalCheckFailedException"],
                          ["p1"])


def test_every_condition_the_saga_sends_is_in_the_cases():
    """The cases cover the conditions the code writes as literals (the ones grep finds in src/ and functions/): a
    new one must be added above, where it is held against moto's parse."""
    root = Path(__file__).resolve().parents[2]
    source = "\n".join(p.read_text() for folder in ("src", "functions") for p in (root / folder).rglob("*.py"))
    pattern = (r'(?:ConditionExpression|FilterExpression|KeyConditionExpression|condition|marked)["\']?\s*[=:]\s*'
               r'\(?((?:\s*"[^"{}]*")+)')
    found = {"".join(re.findall(r'"([^"]*)"', group)) for group in re.findall(pattern, source)}
    found = {text for text in found if "=" in text or "(" in text or ">" in text or "<" in text}
    assert len(found) >= 25
    known = {text for text, _, _ in CASES}
    assert sorted(found - known) == []
