"""src/sagafaults/rules.py: which items of a DynamoDB request a rule hits. The stack's DynamoDB process applies
these rules (tests/stack/scenario_matrix.json's `key` rows); that process runs without coverage
(sagalocal/untraced.py), so the matching is proven here."""

from __future__ import annotations

from sagafaults.rules import Rule, request_items

TRANSACTION = {"TransactItems": [
    {"Update": {"TableName": "Inventory", "Key": {"pk": {"S": "RESERVATION#ord_1"}, "sk": {"S": "RESERVATION"}}}},
    {"Update": {"TableName": "Inventory", "Key": {"pk": {"S": "SKU#MUG"}, "sk": {"S": "STOCK"}}}},
    {"Put": {"TableName": "Payments", "Item": {"pk": {"S": "PAY#ord_1"}, "n": {"N": "1"}, "note": {"S": "x"}}}},
    {"ConditionCheck": {"TableName": "Orders", "Key": {"order_id": {"S": "ord_1"}}}},
]}


def test_a_transaction_names_each_item_by_table_and_key_values_in_order():
    """A Put names its item by every scalar value it holds, in attribute-name order (a key pattern still finds
    the key among them)."""
    assert request_items("TransactWriteItems", TRANSACTION) == [
        ("Inventory", "RESERVATION#ord_1|RESERVATION"), ("Inventory", "SKU#MUG|STOCK"), ("Payments", "1|x|PAY#ord_1"),
        ("Orders", "ord_1")]


def test_a_key_pattern_hits_only_the_items_it_matches_and_a_rule_that_hits_none_does_not_apply():
    items = request_items("TransactWriteItems", TRANSACTION)
    conflict = {"action": "dynamodb-error", "error": "TransactionConflict"}
    assert Rule(**conflict, key="RESERVATION").dynamodb_targets("TransactWriteItems", items) == [0]
    assert Rule(**conflict, table="Inventory").dynamodb_targets("TransactWriteItems", items) == [0, 1]
    assert Rule(**conflict, table="Inventory", key="^SKU#").dynamodb_targets("TransactWriteItems", items) == [1]
    assert Rule(**conflict, key="COUPON").dynamodb_targets("TransactWriteItems", items) is None
    assert Rule(**conflict).dynamodb_targets("TransactWriteItems", items) == [0, 1, 2, 3]


def test_single_item_requests_name_their_one_item():
    key = {"order_id": {"S": "ord_1"}}
    for operation in ("GetItem", "UpdateItem", "DeleteItem"):
        assert request_items(operation, {"TableName": "Orders", "Key": key}) == [("Orders", "ord_1")]
    assert request_items("PutItem", {"TableName": "Orders", "Item": {**key, "total": {"N": "5"}}}) == [
        ("Orders", "ord_1|5")]
    assert request_items("Query", {"TableName": "Orders"}) == [("Orders", "")]
    lost = Rule(action="dynamodb-response-lost", key="ord_1")
    assert lost.dynamodb_targets("UpdateItem", [("Orders", "ord_1")]) == [0]
    assert lost.dynamodb_targets("GetItem", [("Orders", "ord_1")]) is None  # a read has no response to lose
    throttle = Rule(action="dynamodb-error", error="ThrottlingException", key="ord_1")
    assert throttle.dynamodb_targets("Query", [("Orders", "")]) is None  # the pattern meets no key


def test_a_key_that_is_not_a_regular_expression_is_refused_with_the_reason():
    import pytest

    from sagafaults.rules import RuleError

    with pytest.raises(RuleError, match="key is not a regular expression"):
        Rule.from_json({"action": "dynamodb-error", "error": "TransactionConflict", "key": "RESERVATION("})
