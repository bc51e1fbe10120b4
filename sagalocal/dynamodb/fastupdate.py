"""UpdateItem without moto's expression validator for the updates the saga makes: top-level attributes only.

moto answers an UpdateItem by deep-copying the item (for the stream's old image) and the expression's tree, walking
the tree ten times to validate it and resolve its operands, and then executing it; with the item's size checked
again at every attribute it sets. That was two thirds of an UpdateItem's time, and UpdateItem (alone or in a
transaction) most of the simulation's. Here an update expression whose every path is a top-level attribute
(`SET a = :v, b = b + :n, c = if_not_exists(c, :z) - :n REMOVE d ADD e :s DELETE f :t`) is planned once per text
and applied to a copy of the item's attribute dict, which then replaces the item's: no deep copy, no tree.

Anything else takes moto's own path, unchanged, so moto's errors stay moto's: an expression moto refuses (it is
still parsed by moto first, from its cache), a nested path or another function, an item that does not exist yet,
a placeholder that is not defined, an operand that is missing or of the wrong type, a key attribute updated, one
attribute in two actions, a key attribute read, an index key of the wrong type or empty, a failed condition, an
item that might grow past the size limit. The result is moto's to the attribute and to the order of the item's
attributes (where moto would share one value between two attributes and change it in place later, the fast path
copies, as DynamoDB does): tests/unit/test_dynamodb_fastupdate.py holds the two side by side on every update
expression the saga sends and on the refusals, and tests/sim/test_engine_fast_path.py the simulation's record.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENABLED = [True]  # tests switch it off to compare with moto's own path
# How many updates the fast path answered, and how many it tried and handed to moto's path (tests read the change).
COUNTS = {"answered": 0, "handed_to_moto": 0}
_TOKEN = re.compile(r"\s*(?:(?P<name>#[A-Za-z0-9_]+)|(?P<value>:[A-Za-z0-9_]+)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>[=+\-,().]))")
_CLAUSES = ("SET", "REMOVE", "ADD", "DELETE")
SIZE_LIMIT = 405_000  # moto's LimitedSizeDict: "the actual limit is between 409 and 410KB"


@dataclass(frozen=True)
class Operand:
    kind: str  # "path", "value", "if_not_exists", "+", "-"
    name: str = ""  # a value's :placeholder
    path: tuple[str, ...] = ()  # a path's attributes or #placeholders: ("steps", "#step") is steps.#step
    left: Operand | None = None
    right: Operand | None = None


@dataclass(frozen=True)
class Action:
    clause: str  # SET, REMOVE, ADD, DELETE
    path: tuple[str, ...]  # its attributes or #placeholders, from the item down through maps
    operand: Operand | None = None  # SET's value, ADD's and DELETE's :value


class _Unsupported(Exception):  # noqa: N818 - not an error: this update takes moto's own path
    pass


@functools.lru_cache(maxsize=2048)
def plan(expression: str) -> tuple[Action, ...] | None:
    """The actions of `expression`, in the order moto executes them, or None if it is not one this module takes."""
    try:
        return tuple(_Parser(expression).actions())
    except _Unsupported:
        return None


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise _Unsupported(text[position:])  # '.', '[', anything else
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        token = self.peek()
        if token is None or (kind is not None and token[0] != kind) or (text is not None and token[1] != text):
            raise _Unsupported(str(token))
        self.at += 1
        return token[1]

    def actions(self) -> list[Action]:
        actions: list[Action] = []
        seen: set[str] = set()
        while self.peek() is not None:
            clause = self.take("word").upper()
            if clause not in _CLAUSES or clause in seen:
                raise _Unsupported(clause)  # another word; a clause twice (moto refuses it)
            seen.add(clause)
            group = [self.action(clause)]
            while self.peek() == ("op", ","):
                self.take()
                group.append(self.action(clause))
            if clause == "REMOVE":  # moto's normalize(): the REMOVE actions of a run in reverse (list indexes)
                group.reverse()
            actions.extend(group)
        if not actions:
            raise _Unsupported("empty")
        return actions

    def action(self, clause: str) -> Action:
        path = self.path()
        if clause == "REMOVE":
            return Action(clause, path)
        if clause in ("ADD", "DELETE"):
            return Action(clause, path, Operand("value", self.take("value")))
        self.take("op", "=")
        operand = self.operand()
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in "+-":
            self.take()
            operand = Operand(token[1], left=operand, right=self.operand())
        return Action(clause, path, operand)

    def path(self) -> tuple[str, ...]:
        segments = [self.segment()]
        if self.peek() == ("op", "("):
            raise _Unsupported("a function where a path goes")
        while self.peek() == ("op", "."):
            self.take()
            segments.append(self.segment())
        return tuple(segments)

    def segment(self) -> str:
        from moto.dynamodb.parsing.reserved_keywords import ReservedKeywords

        token = self.peek()
        if token is None or token[0] not in ("name", "word") or token[1].upper() in _CLAUSES:
            raise _Unsupported(str(token))
        if token[0] == "word" and token[1].upper() in ReservedKeywords.get_reserved_keywords():
            raise _Unsupported("a reserved word")  # moto's AttributeIsReservedKeyword
        self.at += 1
        return token[1]

    def operand(self) -> Operand:
        token = self.peek()
        if token is None:
            raise _Unsupported("end")
        if token[0] == "value":
            self.at += 1
            return Operand("value", token[1])
        if token[0] == "word" and token[1] == "if_not_exists":
            self.at += 1
            self.take("op", "(")
            path = self.path()
            self.take("op", ",")
            fallback = self.operand()
            self.take("op", ")")
            return Operand("if_not_exists", left=Operand("path", path=path), right=fallback)
        return Operand("path", path=self.path())  # list_append and the rest: refused by path()


def _names(path: tuple[str, ...], names: dict[str, str] | None) -> tuple[str, ...]:
    resolved = []
    for segment in path:
        if segment.startswith("#"):
            if not names or segment not in names:
                raise _Unsupported(segment)
            segment = names[segment]
        resolved.append(segment)
    return tuple(resolved)


def _read(attrs: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path` (resolved names), or None if it is missing; a step through a non-map is refused."""
    value = attrs.get(path[0])
    for segment in path[1:]:
        if value is None:
            return None
        if value.type != "M":
            raise _Unsupported("a path through a non-map")
        value = value.value.get(segment)
    return value


def _evaluate(operand: Operand, attrs: dict[str, Any], names: dict[str, str] | None,
              values: dict[str, Any] | None) -> Any:
    from moto.dynamodb.models.dynamo_type import DynamoType

    if operand.kind == "value":
        if not values or operand.name not in values:
            raise _Unsupported(operand.name)
        return DynamoType(values[operand.name])
    if operand.kind == "path":
        current = _read(attrs, _names(operand.path, names))
        if current is None:
            raise _Unsupported("a missing attribute")  # moto's ValidationException
        return current
    assert operand.left is not None
    assert operand.right is not None
    if operand.kind == "if_not_exists":
        current = _read(attrs, _names(operand.left.path, names))
        return current if current is not None else _evaluate(operand.right, attrs, names, values)
    left, right = _evaluate(operand.left, attrs, names, values), _evaluate(operand.right, attrs, names, values)
    if left.type != "N" or right.type != "N":
        raise _Unsupported("not numbers")  # moto's IncorrectOperandType
    return left + right if operand.kind == "+" else left - right


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return a[:len(b)] == b or b[:len(a)] == a


def _operands(operand: Operand | None) -> list[Operand]:
    """Every operand inside `operand`, itself included (both arguments of if_not_exists and of + and -)."""
    if operand is None:
        return []
    return [operand, *_operands(operand.left), *_operands(operand.right)]


def _apply(actions: tuple[Action, ...], attrs: dict[str, Any], names: dict[str, str] | None,
           values: dict[str, Any] | None, keys: tuple[str, ...], defined: dict[str, str]) -> dict[str, Any]:
    """The item's attributes after the update: a new dict, with a new map for every map changed on the way down
    (`attrs` and its values are not changed). `keys`: the table's key attributes; `defined`: its attribute
    definitions (the keys of the table and of its indexes) with their types."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    targets = [_names(action.path, names) for action in actions]
    # moto's validator resolves every placeholder and visits every path, the operands' too, before executing: one
    # not defined, or a key attribute read or written anywhere, is its error.
    for operand in (o for action in actions for o in _operands(action.operand)):
        if operand.kind == "value" and (not values or operand.name not in values):
            raise _Unsupported(operand.name)
        if operand.kind == "path" and _names(operand.path, names)[0] in keys:
            raise _Unsupported("a key attribute read")
    for n, target in enumerate(targets):
        if target[0] in keys or any(_overlap(target, other) for other in targets[n + 1:]):
            raise _Unsupported("a key attribute, or overlapping paths")
        if len(target) > 1 and target[0] in defined:
            raise _Unsupported("inside an index key")  # moto checks the type of the path's first attribute
    # moto's SET of a bare path (or of if_not_exists's path) stores the item's own value object under the new name;
    # an action that changes that attribute in place (a SET or REMOVE inside it, an ADD to it) then changes both,
    # and moto's size checks count it twice. Such an update is moto's to answer.
    changed_in_place = {t[0] for t, action in zip(targets, actions, strict=True)
                        if len(t) > 1 or action.clause in ("ADD", "DELETE")}
    for action in actions:
        shared = [action.operand, action.operand.left] if action.operand is not None and \
            action.operand.kind == "if_not_exists" else [action.operand]
        for operand in shared:
            if operand is not None and operand.kind == "path" and _names(operand.path, names)[0] in changed_in_place:
                raise _Unsupported("a value shared with an attribute changed in place")
    # Every operand is read from the item as it was, as moto's validator resolves them all before executing.
    resolved = [None if action.clause == "REMOVE" else _evaluate(action.operand, attrs, names, values)  # type: ignore[arg-type]
                for action in actions]
    result = dict(attrs)
    for action, target, value in zip(actions, targets, resolved, strict=True):
        if len(target) > 1 and action.clause in ("ADD", "DELETE"):
            raise _Unsupported("ADD or DELETE inside a map")
        parent = result  # the dict the last segment lives in: the item's, or a copied map's
        for segment in target[:-1]:
            inner = parent.get(segment)
            if inner is None or inner.type != "M":
                raise _Unsupported("a missing map on the way")  # moto's "document path ... invalid"
            copied = DynamoType.__new__(DynamoType)
            copied.type, copied.value = "M", dict(inner.value)
            parent[segment] = copied
            parent = copied.value
        last = target[-1]
        if action.clause == "REMOVE":
            parent.pop(last, None)
            continue
        assert value is not None
        if value.is_set() and not value.value:
            raise _Unsupported("an empty set")
        if value.is_set():
            value = DynamoType({value.type: list(value.value)})  # not the request's list
        if action.clause == "DELETE":
            # moto's DeleteExecutor: each element removed from the set's list where it is (one missing is no
            # error), and the attribute removed with the set's last element. A DELETE of a non-set (moto's error),
            # from a missing attribute (moto's no-op) or from a set of another type (moto's error): moto's path.
            current = parent.get(last)
            if not value.is_set() or current is None or current.type != value.type:
                raise _Unsupported("DELETE of a non-set, from a missing attribute or from another type")
            remaining = list(current.value)
            for element in value.value:
                if element in remaining:
                    remaining.remove(element)
            if not remaining:
                parent.pop(last)
                continue
            value = DynamoType({current.type: remaining})
        elif action.clause == "ADD":
            current = parent.get(last)
            if value.type == "N":
                if current is not None and current.type != "N":
                    raise _Unsupported("ADD to a non-number")
                value = (current if current is not None else DynamoType({"N": "0"})) + value
            elif value.is_set():
                if current is not None and current.type != value.type:
                    raise _Unsupported("ADD to another type")
                merged = list(current.value) if current is not None else []
                for element in value.value:
                    if element not in merged:
                        merged.append(element)
                value = DynamoType({value.type: merged})
            else:
                raise _Unsupported("ADD of neither a number nor a set")
        if len(target) == 1 and target[0] in defined and (
                value.type != defined[target[0]] or value.value in ("", b"")):
            raise _Unsupported("an index key of the wrong type, or empty")  # moto's type and empty-key checks
        parent[last] = value
    return result


def install(backend_class: Any) -> None:
    """Put the fast path in front of `backend_class.update_item` (moto's DynamoDBBackend)."""
    backend_class.update_item = _fast(backend_class.update_item)


def _fast(original: Callable[..., Any]) -> Callable[..., Any]:
    def update_item(self: Any, table_name: str, key: dict[str, Any], update_expression: str,
                    expression_attribute_names: dict[str, Any], expression_attribute_values: dict[str, Any],
                    attribute_updates: dict[str, Any] | None = None, expected: dict[str, Any] | None = None,
                    condition_expression: str | None = None,
                    return_values_on_condition_check_failure: str | None = None) -> Any:
        arguments = (self, table_name, key, update_expression, expression_attribute_names,
                     expression_attribute_values, attribute_updates, expected, condition_expression,
                     return_values_on_condition_check_failure)
        actions = plan(update_expression) if ENABLED[0] and update_expression and not attribute_updates \
            and not expected else None
        if actions is None:
            return original(*arguments)
        result = _try(self, table_name, key, update_expression, actions, expression_attribute_names,
                      expression_attribute_values, condition_expression)
        COUNTS["handed_to_moto" if result is None else "answered"] += 1
        return original(*arguments) if result is None else result

    return update_item


def _try(backend: Any, table_name: str, key: dict[str, Any], expression: str, actions: tuple[Action, ...],
         names: dict[str, str] | None, values: dict[str, Any] | None, condition: str | None) -> Any:
    """The updated item, or None for moto's own path (which then raises what moto raises)."""
    from moto.dynamodb.comparisons import create_condition_expression_parser
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
    from moto.dynamodb.models.utilities import bytesize
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    UpdateExpressionParser.make(expression)  # moto's own refusals (a reserved word, bad syntax): from its cache
    table = backend.get_table(table_name)
    wanted = {table.hash_key_attr} | ({table.range_key_attr} if table.range_key_attr else set())
    if set(key) != wanted:
        return None
    hash_value = DynamoType(key[table.hash_key_attr])
    range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
    item = table.get_item(hash_value, range_value)
    if item is None:
        return None  # moto creates the item first: its path
    if not create_condition_expression_parser(condition, names, values).parse().expr(item):
        return None
    defined = {d["AttributeName"]: d["AttributeType"] for d in table.attr or []}
    try:
        attrs = _apply(actions, item.attrs, names, values, tuple(table.table_key_attrs), defined)
    except _Unsupported:
        return None
    # moto checks the size at every attribute it sets, counting the item as it is at that moment plus the new value
    # (a replaced one twice): no such sum can exceed the item before plus every value set, so under that bound
    # moto refuses nothing, and over it moto decides.
    before_size = sum(bytesize(name) + value.size() for name, value in item.attrs.items())
    added = sum(bytesize(target) + value.size() for target, value in
                ((t[0], attrs[t[0]]) for t in (_names(a.path, names) for a in actions) if t[0] in attrs))
    if before_size + added > SIZE_LIMIT:
        return None
    before = Item.__new__(Item)
    before.hash_key, before.range_key, before.attrs = item.hash_key, item.range_key, item.attrs
    replaced = LimitedSizeDict.__new__(LimitedSizeDict)
    dict.update(replaced, attrs)
    item.attrs = replaced
    if table.stream_shard is not None:
        table.stream_shard.add(before, item)
    return item


def install_item_init() -> None:
    """moto's Item(...) checks the item's whole size again at every attribute it sets (quadratic in the number of
    attributes: a tenth of a put); sizes only grow as it sets them, so one check of the whole, at the end, fails
    exactly when one of those would have."""
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
    from moto.dynamodb.models.utilities import bytesize

    def __init__(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:  # noqa: N807
        self.hash_key = hash_key
        self.range_key = range_key
        checked = LimitedSizeDict.__new__(LimitedSizeDict)
        total = 0
        for name, value in attrs.items():
            typed = DynamoType(value)
            total += bytesize(name) + typed.size()
            dict.__setitem__(checked, name, typed)
        if total > SIZE_LIMIT:
            raise ItemSizeTooLarge
        self.attrs = checked

    Item.__init__ = __init__  # type: ignore[method-assign]
