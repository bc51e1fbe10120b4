"""Condition expressions (ConditionExpression, FilterExpression) parsed once, not at every request.

moto parses a condition from its text at every call, and twice per write (its handler parses it to check the
names used, its backend again to evaluate it), looking each path element up in a list of 570 reserved words:
an eighth of the simulation's time. The parse depends on the text, on the attribute names it refers to, and on
the placeholders' values only through their types (a BETWEEN refuses a NULL bound when it is built); the tree
holds the values themselves in its AttributeValue leaves.

So a parse is cached per (text, ExpressionAttributeNames, each placeholder's name and type), as a tree whose
value leaves are slots (the tree moto's own parse builds from values that are slots); each request gets a copy
of it with its own values bound, built as moto builds them (AttributeValue(the request's value)). The nodes
above a slot are new for every request, the rest (paths, conditions on names alone) is shared: moto's Op, Func
and AttributePath nodes are only read once built.

A request is parsed by moto itself the first time its key is seen, so whatever moto raises (a syntax error, an
undefined #name or :value, a reserved word, a NULL bound) it still raises, and nothing that failed is cached.
Anything unusual (a value that is not an AttributeValue of one type, names that are not strings) takes moto's
path every time. tests/unit/test_dynamodb_conditions.py holds the two side by side.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

ENABLED = [True]  # tests switch it off to compare with moto's own parse
LIMIT = 4096  # keys kept (the saga sends a few dozen; a client sending ever new texts gets moto's path)


class Slot:
    """The value leaf of a cached tree: the request's value of placeholder `name` goes here."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Slot({self.name})"


def key_of(text: Any, names: Any, values: Any) -> tuple[Any, ...] | None:
    """What the parse depends on, or None if this request is not one to cache."""
    if not isinstance(text, str) or not text:
        return None
    if names is not None:
        if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
            return None
        names = tuple(names.items())
    if values is not None:
        if not isinstance(values, dict):
            return None
        shape = []
        for name, value in values.items():
            if not isinstance(value, dict) or len(value) != 1:
                return None
            shape.append((name, next(iter(value))))
        values = tuple(shape)
    return (text, names, values)


@functools.cache
def install() -> None:
    """Put the cache in front of moto's ConditionExpressionParser.parse."""
    from moto.dynamodb.comparisons import ConditionExpressionParser

    original = ConditionExpressionParser.parse
    cache: dict[tuple[Any, ...], tuple[Any, Any, tuple[str, ...], tuple[str, ...]]] = {}

    def parse(self: Any) -> Any:
        key = key_of(self.condition_expression, self.expression_attribute_names,
                      self.expression_attribute_values) if ENABLED[0] else None
        if key is None:
            return original(self)
        cached = cache.get(key)
        if cached is None:
            result = original(self)  # moto's answer to this request, or its error (not cached)
            if len(cache) < LIMIT:
                with contextlib.suppress(Exception):  # cannot fail where moto's own parse passed; if it did: no cache
                    cache[key] = template(self.condition_expression, self.expression_attribute_names,
                                          self.expression_attribute_values)
            return result
        tree, build, names_found, values_found = cached
        self.expr_attr_names_found.extend(names_found)
        self.expr_attr_values_found.extend(values_found)
        return tree if build is None else build(self.expression_attribute_values)

    ConditionExpressionParser.parse = parse  # type: ignore[method-assign]
    ConditionExpressionParser._sagalocal_original_parse = original  # type: ignore[attr-defined]


def template(text: str, names: dict[str, str] | None,
             values: dict[str, dict[str, Any]] | None) -> tuple[Any, Any, tuple[str, ...], tuple[str, ...]]:
    """moto's parse of `text` with every placeholder's value a Slot of its type: the tree, its builder, and the
    names and placeholders the parser reports it found."""
    from moto.dynamodb.comparisons import ConditionExpressionParser

    slots = None if values is None else {name: {next(iter(value)): Slot(name)} for name, value in values.items()}
    parser = ConditionExpressionParser(text, names, slots)
    tree = ConditionExpressionParser._sagalocal_original_parse(parser)  # type: ignore[attr-defined]
    return tree, builder(tree), tuple(parser.expr_attr_names_found), tuple(parser.expr_attr_values_found)


def builder(node: Any) -> Callable[[dict[str, Any]], Any] | None:
    """A function of a request's values that builds a copy of cached tree `node` with them in its slots, or None
    if `node` holds no slot (then it is shared). Each node is copied as it is: the same class and fields, a field
    that held a child holding a slot now holding the child's copy (once: a Func holds its arguments twice)."""
    from moto.dynamodb.comparisons import AttributeValue, Func, Op

    if isinstance(node, AttributeValue):
        if not isinstance(node.value, Slot):
            return None
        name = node.value.name

        def value(values: dict[str, Any]) -> Any:
            return AttributeValue(values[name])

        return value
    if not isinstance(node, (Op, Func)):
        return None  # an AttributePath, or None (OpNot's right-hand side)
    children: dict[int, Callable[[dict[str, Any]], Any] | None] = {}
    for field in node.__dict__.values():
        for child in field if isinstance(field, tuple) else (field,):
            if id(child) not in children:
                children[id(child)] = builder(child)
    live = [(child, build) for child, build in children.items() if build is not None]
    if not live:
        return None
    cls, fields = type(node), list(node.__dict__.items())

    def build(values: dict[str, Any]) -> Any:
        made = {child: build(values) for child, build in live}
        clone = object.__new__(cls)
        clone.__dict__.update({name: tuple(made.get(id(v), v) for v in field) if isinstance(field, tuple)
                               else made.get(id(field), field) for name, field in fields})
        return clone

    return build
