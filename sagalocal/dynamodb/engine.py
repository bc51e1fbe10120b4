"""Requests into moto's DynamoDB backend: fault rules, the concurrency model, capacity, and fast paths.

Data-plane operations take a fast path: the JSON body goes to moto's handler method as it is (DynamoDB's
wire format is already what moto's models take) and the result is dumped as JSON, instead of moto's
generic model-driven parser and serializer, which were about half of the engine's CPU. Control-plane
operations (CreateTable, DescribeTable, ...) take moto's generic path.
"""

from __future__ import annotations

import base64
import collections
import copy
import functools
import json
import logging
import re
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sagafaults.dynamodb import PREFIX, cancelled, conflict_reason, encode, error_response
from sagafaults.rules import request_items
from sagalocal import motomodels
from sagalocal.dynamodb import conditions, fastupdate, streams
from sagalocal.dynamodb.capacity import Image, Meter, index_writes, read_units, wire_size, write_units
from sagalocal.dynamodb.concurrency import Coordinator, Identity
from sagalocal.dynamodb.faults import RuleBook
from sagalocal.iam import Authorizer, credentials_of, denial_body, dynamodb_requests

log = logging.getLogger("sagalocal.dynamodb")
ACCOUNT = "123456789012"
SINGLE_WRITES = ("PutItem", "UpdateItem", "DeleteItem")
FAST = ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "BatchWriteItem",
        "TransactWriteItems", "TransactGetItems")
_REGION = re.compile(r"Credential=[^/]+/\d+/([a-z0-9-]+)/")


@dataclass
class Reply:
    status: int
    body: bytes
    lost_as: str | None = None  # "error" or "timeout": the request was applied, its response must not arrive
    hold_ms: int = 0


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "isoformat"):
        return value.timestamp()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _dump(result: Any) -> bytes:
    return json.dumps(result, default=_default, separators=(",", ":")).encode()


class Engine:
    def __init__(self, window_ms: float = 2.0) -> None:
        install_backend_patches()
        self.coordinator = Coordinator(window_ms)
        self.rules = RuleBook()
        self.meter = Meter()
        self.iam = Authorizer(ACCOUNT)

    # ---- the entry point -----------------------------------------------------------------------
    def handle(self, operation: str, raw: bytes, headers: Mapping[str, str]) -> Reply:
        self.meter.request(operation)
        try:
            params = json.loads(raw or b"{}")
            if not isinstance(params, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            return self._error(400, "SerializationException", str(exc))
        region = _region(headers)
        signer = credentials_of(headers)
        denial = self.iam.check(signer[0] if signer else None, dynamodb_requests(operation, params, region, ACCOUNT))
        if denial is not None:
            self.meter.error("AccessDeniedException")
            return Reply(400, denial_body(denial))
        picked = self.rules.pick(operation, request_items(operation, params)) if self.rules.active else None
        if picked is not None and picked[0].action == "dynamodb-error":
            rule, hits = picked
            n_items = len(params.get("TransactItems") or [])
            status, body = error_response(str(rule.error), operation, hits, n_items)
            self.meter.error(str(rule.error))
            return Reply(status, encode(body))
        token = params.get("ClientRequestToken") if operation == "TransactWriteItems" else None
        if token:
            claimed = self.coordinator.claim_token(str(token), self.coordinator.digest(raw))
            if isinstance(claimed, bytes):
                return Reply(200, claimed)
            if isinstance(claimed, str):
                return self._error(400, claimed, "Request with this ClientRequestToken: " + (
                    "another transaction is still in progress" if claimed.startswith("Transaction")
                    else "the token was already used with different parameters"))
        try:
            reply = self._execute(operation, params, raw, headers, region)
        except Exception:
            if token:
                self.coordinator.settle_token(str(token), None)
            raise
        if token:
            self.coordinator.settle_token(str(token), reply.body if reply.status == 200 else None)
        if picked is not None and reply.status == 200:  # dynamodb-response-lost: applied, answer lost
            rule = picked[0]
            return Reply(500, encode({"__type": PREFIX + "InternalServerError", "message": "Internal server error"}),
                         lost_as=rule.lost_as, hold_ms=rule.delay_ms)
        if reply.status >= 400:
            self.meter.error(_error_code(reply.body))
        return reply

    def _error(self, status: int, code: str, message: str) -> Reply:
        self.meter.error(code)
        return Reply(status, encode({"__type": PREFIX + code, "message": message}))

    # ---- execution under the concurrency model -----------------------------------------------
    def _execute(self, operation: str, params: dict[str, Any], raw: bytes, headers: Mapping[str, str],
                 region: str) -> Reply:
        if operation not in FAST:
            with self.coordinator.apply:
                return self._generic(raw, headers)
        backend = _backend(region)
        if operation in ("TransactWriteItems", "TransactGetItems"):
            identities = [self._identity(backend, entry) for entry in params.get("TransactItems") or []]
        elif operation in SINGLE_WRITES:
            key = params.get("Item") if operation == "PutItem" else params.get("Key")
            identities = [_identity_of(backend, params.get("TableName", ""), key or {})]
        elif operation == "BatchWriteItem":
            identities = [_identity_of(backend, table, (r.get("PutRequest") or {}).get("Item")
                                       or (r.get("DeleteRequest") or {}).get("Key") or {})
                          for table, requests in (params.get("RequestItems") or {}).items() for r in requests]
        else:
            identities = []
        with self.coordinator.apply:
            clash = self.coordinator.in_flight(identities) if identities else []
            if clash:
                if operation in ("TransactWriteItems", "TransactGetItems"):
                    status, body = cancelled([conflict_reason() if i in clash else {"Code": "None"}
                                              for i in range(len(identities))])
                    return Reply(status, encode(body))
                status, body = error_response("TransactionConflict", operation, clash, 0)
                return Reply(status, encode(body))
            reply = self._moto(operation, params, region)
            until = self.coordinator.hold(identities) if operation == "TransactWriteItems" and reply.status == 200 \
                else None
        if until is not None:  # the commit takes its time: the answer leaves when the items are no longer in flight
            time.sleep(max(0.0, until - time.monotonic()))
        return reply

    def _identity(self, backend: Any, entry: dict[str, Any]) -> Identity:
        if not isinstance(entry, dict) or len(entry) != 1:
            return ("?", repr(entry))
        (kind, op), = entry.items()
        return _identity_of(backend, op.get("TableName", ""), (op.get("Item") if kind == "Put" else op.get("Key"))
                            or {})

    def _moto(self, operation: str, params: dict[str, Any], region: str) -> Reply:
        from moto.core.exceptions import JsonRESTError
        from moto.dynamodb.responses import DynamoHandler

        handler = DynamoHandler()
        handler.body = params
        handler.current_account = ACCOUNT
        handler.region = region
        handler.headers = {}
        _meter_slot.charges = []
        _meter_slot.transactional = operation in ("TransactWriteItems", "TransactGetItems")
        try:
            result = getattr(handler, _snake(operation))()
        except JsonRESTError as exc:
            return Reply(int(exc.code), exc.description.encode())
        except KeyError as exc:  # moto reads a missing required parameter
            return Reply(400, encode({"__type": PREFIX + "ValidationException",
                                      "message": f"1 validation error detected: {exc} is required"}))
        finally:
            charges, _meter_slot.charges = _meter_slot.charges, None
            for charge in charges or []:
                self.meter.charge(*charge)
        self._charge_reads(operation, params, result.result)
        return Reply(200, _dump(result.result))

    def _charge_reads(self, operation: str, params: dict[str, Any], result: Any) -> None:
        if operation in ("Query", "Scan"):
            size = sum(wire_size(item) for item in result.get("Items", []))
            self.meter.charge(params.get("TableName", ""), rru=read_units(size, bool(params.get("ConsistentRead"))))
        elif operation == "GetItem":
            size = wire_size(result.get("Item") or {})
            self.meter.charge(params.get("TableName", ""), rru=read_units(size, bool(params.get("ConsistentRead"))))
        elif operation == "BatchGetItem":
            for table, items in (result.get("Responses") or {}).items():
                consistent = bool(((params.get("RequestItems") or {}).get(table) or {}).get("ConsistentRead"))
                for item in items:
                    self.meter.charge(table, rru=read_units(wire_size(item), consistent))
        elif operation == "TransactGetItems":
            for entry, response in zip(params.get("TransactItems") or [], result.get("Responses") or [], strict=False):
                table = (entry.get("Get") or {}).get("TableName", "")
                self.meter.charge(table, rru=read_units(wire_size(response.get("Item") or {}), True, True))

    def _generic(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        from moto.core.request import Request
        from moto.dynamodb.responses import DynamoHandler

        url = f"http://{headers.get('Host', 'localhost')}/"
        request = Request.from_primitives("POST", url, dict(headers.items()), raw)
        status, _, body = DynamoHandler.dispatch(request, url, request.headers)
        return Reply(int(status), body.encode() if isinstance(body, str) else body)


def _region(headers: Mapping[str, str]) -> str:
    found = _REGION.search(headers.get("Authorization", "") or "")
    return found.group(1) if found else "us-east-1"


def _backend(region: str) -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[ACCOUNT][region]


def _identity_of(backend: Any, table_name: str, key: dict[str, Any]) -> Identity:
    try:
        table = backend.get_table(table_name)
    except Exception:  # noqa: BLE001 - moto answers ResourceNotFound when it runs the request
        return (table_name, json.dumps(key, sort_keys=True))
    parts = [key.get(table.hash_key_attr)]
    if table.range_key_attr:
        parts.append(key.get(table.range_key_attr))
    return (table.name, json.dumps(parts, sort_keys=True))


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body).get("__type", "")).split("#")[-1] or "Unknown"
    except ValueError:
        return "Unknown"


# ---- capacity: the item images around each write ----------------------------------------------
_meter_slot = threading.local()


def _record(table: str, wru: float = 0.0, iwru: float = 0.0, rru: float = 0.0) -> None:
    charges = getattr(_meter_slot, "charges", None)
    if charges is not None:
        charges.append((table, wru, iwru, rru))


def _write_metered(table: Any, before: Image | None, after: Any, changed: bool = True) -> None:
    transactional = getattr(_meter_slot, "transactional", False)
    _record(table.name, write_units(before.size if before else 0, after.size() if after else 0, transactional),
            index_writes(table, before, after, changed))


# ---- moto backend patches (in this process only) ------------------------------------------------
@functools.cache
def install_backend_patches() -> None:
    """Check-then-apply transactions, parsed-expression caches, and capacity metering."""
    from moto.dynamodb.models import DynamoDBBackend

    DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
    motomodels.stop_tracking_instances()
    fastupdate.install(DynamoDBBackend)  # inside the stream's and the meter's wrappers
    fastupdate.install_item_init()
    streams.install()
    for name in ("put_item", "update_item", "delete_item"):
        setattr(DynamoDBBackend, name, _metered_write(getattr(DynamoDBBackend, name)))
    _cache_update_expressions()
    _cache_condition_lexing()
    conditions.install()
    _regular_json_without_copies()
    _update_item_handler_without_item_copy()
    motomodels.look_backends_up_without_a_lock()


def _key_values(table: Any, key: dict[str, Any]) -> tuple[Any, Any]:
    from moto.dynamodb.models.dynamo_type import DynamoType

    hash_value = DynamoType(key[table.hash_key_attr])
    range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
    return hash_value, range_value


def _metered_write(original: Callable[..., Any]) -> Callable[..., Any]:
    def write(self: Any, table_name: str, key_or_item: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        from moto.dynamodb.exceptions import ConditionalCheckFailed

        if getattr(_meter_slot, "charges", None) is None:
            return original(self, table_name, key_or_item, *args, **kwargs)
        table = self.get_table(table_name)
        try:
            hash_value, range_value = _key_values(table, key_or_item)
            current = table.get_item(hash_value, range_value)
        except Exception:  # noqa: BLE001 - a malformed key: moto reports it below
            return original(self, table_name, key_or_item, *args, **kwargs)
        before = Image(table, current) if current is not None else None
        try:
            result = original(self, table_name, key_or_item, *args, **kwargs)
        except ConditionalCheckFailed:
            _write_metered(table, before, current, changed=False)  # a failed condition still costs the write
            raise
        after = table.get_item(hash_value, range_value)
        _write_metered(table, before, after)
        return result

    return write


def _cache_update_expressions() -> None:
    """The saga sends the same few update expressions over and over: parse each once, and let the validator's
    tree walks stop rebuilding their dispatch tables at every node.

    A cached AST is safe to share: moto's validator works on a deep copy of the tree it is given.
    """
    from moto.dynamodb.parsing import ast_nodes, expressions

    original = expressions.UpdateExpressionParser.make.__func__  # type: ignore[attr-defined]
    parse = functools.lru_cache(maxsize=2048)(lambda cls, text: original(cls, text))
    # The clauses found in each cached tree, by the types asked for: moto's UpdateItem handlers look for the names
    # and values an expression uses at every request, walking the tree (with an isinstance of an ABC at each node);
    # a cached tree never changes, so they are the same every time. Only the cached tree itself (not a copy of it,
    # which the validator changes) answers from here.
    found: dict[int, tuple[Any, dict[tuple[type, ...], list[Any]]]] = {}
    original_find = ast_nodes.Node.find_clauses

    @classmethod  # type: ignore[misc]
    def make(cls: Any, expression_str: str) -> Any:
        tree = parse(cls, expression_str)
        tree._sagalocal_text = expression_str  # the key of the checks that depend on the text alone
        if (found.get(id(tree)) or (None,))[0] is not tree:
            if len(found) >= 4096:
                found.clear()
            found[id(tree)] = (tree, {})
        return tree

    def find_clauses(self: Any, clause_types: list[type]) -> list[Any]:
        entry = found.get(id(self))
        if entry is None or entry[0] is not self:
            return original_find(self, clause_types)  # type: ignore[no-any-return]
        clauses = entry[1].get(tuple(clause_types))
        if clauses is None:
            clauses = entry[1][tuple(clause_types)] = original_find(self, clause_types)
        return list(clauses)

    expressions.UpdateExpressionParser.make = make  # type: ignore[method-assign]
    ast_nodes.Node.find_clauses = find_clauses  # type: ignore[method-assign]
    ast_nodes.Node._sagalocal_original_find_clauses = original_find  # type: ignore[attr-defined]

    traverser = ast_nodes.DepthFirstTraverser

    def nodes_to_be_processed(self: Any) -> tuple[type, ...]:
        cached = self.__dict__.get("_sagalocal_types")
        if cached is None:
            cached = self.__dict__["_sagalocal_types"] = tuple(self._sagalocal_map().keys())
        return cached  # type: ignore[no-any-return]

    def processing_map(self: Any) -> dict[type, Any]:
        cached = self.__dict__.get("_sagalocal_map_value")
        if cached is None:
            cached = self.__dict__["_sagalocal_map_value"] = type(self)._processing_map(self)
        return cached  # type: ignore[no-any-return]

    def process(self: Any, node: Any) -> Any:
        for class_key, processor in self._sagalocal_map().items():
            if isinstance(node, class_key):
                return processor(node)
        return None

    traverser._sagalocal_map = processing_map  # type: ignore[attr-defined]
    traverser.nodes_to_be_processed = nodes_to_be_processed  # type: ignore[method-assign]
    traverser.process = process  # type: ignore[method-assign]
    traverser.traverse = _traverse  # type: ignore[method-assign]
    ast_nodes.Node.__deepcopy__ = _deepcopy_node  # type: ignore[attr-defined]
    _skip_checks_already_passed()


def _traverse(self: Any, root: Any) -> Any:
    """moto's depth-first walk (traverse_node_recursively: children first, then the node if it is of a type this
    walk processes, put back in its parent's place), with what it looked up at every node looked up once per
    walk: the node types, and whether the walk has a pre-child hook at all. The UpdateItem validator makes seven
    walks per request, a tenth of the simulation's time."""
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node

    types = self.nodes_to_be_processed()
    process = self.process
    hook = None if type(self).pre_processing_of_child is DepthFirstTraverser.pre_processing_of_child \
        else self.pre_processing_of_child

    def walk(node: Any, child_id: int) -> Any:
        if isinstance(node, Node):
            parent = node.parent
            children = node.children
            if children is not None:
                for i, child in enumerate(children):
                    if hook is not None:
                        hook(node, i)
                    walk(child, i)
            if isinstance(node, types):
                node = process(node)
                node.parent = parent
                if parent:
                    parent.children[child_id] = node
        return node

    return walk(root, -1)


def _skip_checks_already_passed() -> None:
    """Three of the validator's ten tree walks check the expression alone (how many clauses, overlapping paths,
    no key attribute updated): given the same expression text, attribute names and table keys they pass or fail
    alike. Once they passed for a combination, they are not walked again; a combination that failed is checked
    every time, so it fails every time."""
    from moto.dynamodb.parsing import validators

    pure = (validators.ActionCountValidator, validators.OverlappingPathsValidator,
            validators.UpdateHashRangeKeyValidator)
    passed: set[tuple[Any, ...]] = set()
    update_validator = validators.UpdateExpressionValidator
    original_init, original_processors = update_validator.__init__, update_validator.get_ast_processors
    original_validate = update_validator.validate

    def __init__(self: Any, expression: Any, expression_attribute_names: Any, *args: Any, **kwargs: Any) -> None:
        text = getattr(expression, "_sagalocal_text", None)
        table = kwargs.get("table", args[-1] if args else None)
        self._sagalocal_key = None if text is None or table is None else (
            text, tuple(sorted((expression_attribute_names or {}).items())), tuple(table.table_key_attrs))
        original_init(self, expression, expression_attribute_names, *args, **kwargs)

    def get_ast_processors(self: Any) -> list[Any]:
        processors = original_processors(self)
        if getattr(self, "_sagalocal_key", None) in passed:
            return [p for p in processors if not isinstance(p, pure)]
        return processors  # type: ignore[no-any-return]

    def validate(self: Any) -> Any:
        result = original_validate(self)
        key = getattr(self, "_sagalocal_key", None)
        if key is not None and len(passed) < 4096:
            passed.add(key)
        return result

    update_validator.__init__ = __init__  # type: ignore[method-assign]
    update_validator.get_ast_processors = get_ast_processors  # type: ignore[method-assign]
    update_validator.validate = validate  # type: ignore[method-assign]


_IMMUTABLE = (str, int, float, bool, type(None))


def _deepcopy_node(node: Any, memo: dict[int, Any]) -> Any:
    """The validator deep-copies the update expression's tree at every UpdateItem: copy it node by node (the
    children, the parent links, anything mutable), not through the generic pickle protocol, which took an eighth
    of the simulation's time. A node inside a tree is copied with its whole tree, as the generic copy does."""
    if id(node) in memo:
        return memo[id(node)]
    if node.parent is not None:
        copy.deepcopy(node.parent, memo)  # copies the tree above, this node with it
        if id(node) in memo:
            return memo[id(node)]
    return _clone_tree(node, None if node.parent is None else memo.get(id(node.parent), node.parent), memo)


def _clone_tree(node: Any, parent: Any, memo: dict[int, Any]) -> Any:
    from moto.dynamodb.parsing.ast_nodes import Node

    clone = object.__new__(type(node))
    memo[id(node)] = clone
    state = clone.__dict__
    for name, value in node.__dict__.items():
        if name == "parent":
            value = parent
        elif name == "children" and value is not None:
            value = [_clone_tree(child, clone, memo) if isinstance(child, Node) else copy.deepcopy(child, memo)
                     for child in value]
        elif not isinstance(value, _IMMUTABLE):
            value = copy.deepcopy(value, memo)
        state[name] = value
    return clone


def _cache_condition_lexing() -> None:
    """Condition expressions: the lexing (a dozen regexes compiled and tried at each token) depends on the text
    alone, the rest of the parse on the names and values too. The tokens are immutable named tuples with empty
    children that the parser's later passes only read, so one tuple of them serves every request."""
    from moto.dynamodb.comparisons import ConditionExpressionParser

    original = ConditionExpressionParser._lex_condition_expression
    lex = functools.lru_cache(maxsize=2048)(lambda text: tuple(original(ConditionExpressionParser(text, None, None))))

    def lex_condition_expression(self: Any) -> Any:
        return collections.deque(lex(self.condition_expression))

    ConditionExpressionParser._lex_condition_expression = lex_condition_expression  # type: ignore[method-assign]


_ATOMIC = (str, bytes, int, float, bool, type(None))


def _regular_json_without_copies() -> None:
    """moto's DynamoType.to_regular_json (every item image: a stream record's two, a GetItem's, a Query's) deep-copies
    the value and then replaces every map value and list element of the copy by its own regular JSON, deep-copied
    again at every level. Here each container is built once: a map value or list element that is a DynamoType
    becomes its regular JSON (as moto's), anything else a deep copy (one memo per value, as moto's one copy), a leaf
    of an immutable type is its own copy. The same result, new containers all the way down; any other value (a dict
    or list of a subclass) takes moto's own method."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    original = DynamoType.to_regular_json

    def to_regular_json(self: Any) -> dict[str, Any]:
        value, kind = self.value, type(self.value)
        if kind is dict:
            memo: dict[int, Any] = {}
            value = {key: nested.to_regular_json() if isinstance(nested, DynamoType) else copy.deepcopy(nested, memo)
                     for key, nested in value.items()}
        elif kind is list:
            memo = {}
            value = [nested.to_regular_json() if isinstance(nested, DynamoType) else copy.deepcopy(nested, memo)
                     for nested in value]
        elif kind not in _ATOMIC:
            return original(self)  # type: ignore[no-any-return]
        if self.type == "B" and isinstance(value, str):
            value = base64.b64decode(value)
        return {self.type: value}

    DynamoType.to_regular_json = to_regular_json  # type: ignore[method-assign]
    DynamoType._sagalocal_original_regular_json = original  # type: ignore[attr-defined]


class _ItemImage:
    """What moto's UpdateItem handler keeps of the item as it was before the update: the item's JSON."""

    def __init__(self, item: Any) -> None:
        self.attributes = item.to_json()["Attributes"]

    def to_json(self, root_attr_name: str = "Attributes") -> dict[str, Any]:
        return {root_attr_name: self.attributes}


def _update_item_handler_without_item_copy() -> None:
    """moto's UpdateItem handler deep-copies the item before the update only to read its JSON (the old values
    ReturnValues may ask for) before the update runs: its JSON taken then is the same, and new all the way down (an
    item's JSON shares nothing with the item), without copying the item first. The handler's module uses `copy` for
    nothing else; any other value is deep-copied as before."""
    from moto.dynamodb import responses
    from moto.dynamodb.models.dynamo_type import Item

    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return _ItemImage(value) if type(value) is Item else copy.deepcopy(value, memo)

    responses.copy = types.SimpleNamespace(deepcopy=deepcopy)  # type: ignore[attr-defined]


def _transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    """Check every condition, then apply every write: what DynamoDB guarantees, without moto's table copies."""
    from moto.dynamodb.exceptions import (
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models import get_filter_expression as filter_expression

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    seen: set[tuple[str, str]] = set()
    ops, reasons, failed = [], [], False
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(entry.items()))
        if op_type not in ("ConditionCheck", "Put", "Delete", "Update"):
            raise ValueError("Unsupported transaction operation")
        table = self.get_table(op["TableName"])
        source = op["Item"] if op_type == "Put" else op["Key"]
        key = {table.hash_key_attr: source[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = source[table.range_key_attr]
        identity = (table.name, json.dumps(key, sort_keys=True))
        if identity in seen:
            raise MultipleTransactionsException()
        seen.add(identity)
        current = table.get_item(*_key_values(table, key))
        if op_type == "ConditionCheck":
            _record(table.name, rru=read_units(current.size() if current else 0, True, transactional=True))
        condition = op.get("ConditionExpression")
        if condition is not None and not filter_expression(
                condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")).expr(current):
            old = (current.to_json()["Attributes"]
                   if current and op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" else None)
            reasons.append(("ConditionalCheckFailed", "The conditional request failed", old))
            failed = True
        else:
            reasons.append((None, None, None))
        ops.append((op_type, op, key, table))
    if failed:
        for op_type, _op, key, table in ops:  # a cancelled transaction still costs its writes
            if op_type != "ConditionCheck":
                current = table.get_item(*_key_values(table, key))
                _write_metered(table, Image(table, current) if current else None, current, changed=False)
        raise TransactionCanceledException(reasons)
    for op_type, op, key, _table in ops:
        if op_type == "Put":
            self.put_item(op["TableName"], op["Item"])
        elif op_type == "Delete":
            self.delete_item(op["TableName"], key)
        elif op_type == "Update":
            self.update_item(op["TableName"], key, update_expression=op["UpdateExpression"],
                             expression_attribute_names=op.get("ExpressionAttributeNames"),
                             expression_attribute_values=op.get("ExpressionAttributeValues"))
