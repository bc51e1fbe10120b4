"""The portable fault injector: a wrapper around a Lambda handler, for any stack the template deploys.

It exists only where the template's FaultInjection parameter is on: that creates the fault rules table and
gives every function its name (FAULT_RULES_TABLE). The handler module wraps itself only when that variable
is set, so with FaultInjection off this module is never imported and no rule can ever apply.

At the start of each invocation the wrapper reads the rules for its order and the general ones (two Queries:
the table is keyed by scope, the order id or "*") and keeps those for this function. Then:
  * invocation-add-delay sleeps before the handler runs (past the timeout, the invocation times out);
  * invocation-error raises the named error instead of running the handler, or (prevent_execution false)
    runs the handler and then exits the sandbox, so the write lands and the answer is lost (Runtime.ExitError);
  * the DynamoDB rules hook the handler's DynamoDB client (botocore's before-send event): a request that
    matches gets DynamoDB's error response, which botocore parses like any answer from AWS, or is sent and
    then has its response replaced by an error or a timeout.
A rule's count is spent with a conditional write on the rules table, so concurrent sandboxes never apply a
rule more often than its count.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from sagafaults.dynamodb import encode, error_response
from sagafaults.rules import CRASH, DYNAMODB_ACTIONS, Rule, request_items

Handler = Callable[[Any, Any], Any]
ANY = "*"  # the scope of a rule that selects no order


def scope_of(rule: Rule) -> str:
    """The rules table item a rule lives in: the order it selects, or "*"."""
    return rule.order_id or ANY


def rule_entry(rule: Rule) -> dict[str, Any]:
    """A rule as its scope item's `by_id` map holds it: the rule as JSON, and its count left."""
    entry: dict[str, Any] = {"rule": {"S": json.dumps(rule.to_json())}}
    if rule.count is not None:
        entry["remaining"] = {"N": str(rule.count)}
    return {"M": entry}


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data


class Injector:
    def __init__(self, function: str, table: str, rules_client: Any) -> None:
        self.function = function
        self.table = table
        self.rules_client = rules_client  # not hooked: reading and spending rules is never itself faulted
        self.order_id: str | None = None
        self.rules: list[tuple[Rule, bool]] = []  # (rule, counted)
        self.applied: list[str] = []

    # ---- the rules table ----------------------------------------------------------------------------------
    def load(self, order_id: str | None) -> None:
        self.order_id = order_id
        self.rules = []
        keys = [{"scope": {"S": scope}} for scope in ([order_id] if order_id else []) + [ANY]]
        request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
        while request:
            page = self.rules_client.batch_get_item(RequestItems=request)
            for item in page.get("Responses", {}).get(self.table, []):
                for entry in (item.get("by_id") or {}).get("M", {}).values():
                    try:
                        rule = Rule.from_json(entry["M"]["rule"]["S"])
                    except (KeyError, ValueError):
                        continue  # a malformed rule never applies
                    if rule.matches_context(self.function, order_id):
                        self.rules.append((rule, "remaining" in entry["M"]))
            request = page.get("UnprocessedKeys") or {}

    def spend(self, rule: Rule, counted: bool) -> bool:
        """Apply `rule` once more if its probability draws it and its count allows (spent atomically)."""
        if not rule.draw():
            return False
        if counted:
            try:
                self.rules_client.update_item(
                    TableName=self.table, Key={"scope": {"S": scope_of(rule)}},
                    UpdateExpression="SET by_id.#id.remaining = by_id.#id.remaining - :one",
                    ConditionExpression="by_id.#id.remaining > :zero",
                    ExpressionAttributeNames={"#id": rule.id},
                    ExpressionAttributeValues={":one": {"N": "1"}, ":zero": {"N": "0"}})
            except self.rules_client.exceptions.ConditionalCheckFailedException:
                return False
        self.applied.append(rule.id)
        print(json.dumps({"level": "WARNING", "message": "fault injected", "rule": rule.id, "action": rule.action,
                          "function": self.function, "order_id": self.order_id}), flush=True)
        return True

    def invocation_rule(self) -> Rule | None:
        for rule, counted in self.rules:
            if rule.matches_invocation(self.function, self.order_id) and self.spend(rule, counted):
                return rule
        return None

    # ---- DynamoDB ------------------------------------------------------------------------------------------
    def hook(self, client: Any) -> None:
        client.meta.events.register("before-send.dynamodb", functools.partial(self._before_send, client))

    def _before_send(self, client: Any, request: Any, event_name: str = "", **_: Any) -> Any:
        dynamodb_rules = [(r, c) for r, c in self.rules if r.action in DYNAMODB_ACTIONS]
        if not dynamodb_rules:
            return None
        operation = event_name.rsplit(".", 1)[-1]
        try:
            params = json.loads(request.body or b"{}")
        except ValueError:
            return None
        items = request_items(operation, params)
        for rule, counted in dynamodb_rules:
            hits = rule.dynamodb_targets(operation, items)
            if hits is None or not self.spend(rule, counted):
                continue
            if rule.action == "dynamodb-error":
                status, body = error_response(str(rule.error), operation, hits, len(params.get("TransactItems") or []))
                return _response(request.url, status, body)
            response = client._endpoint.http_session.send(request)  # applied; the answer is dropped
            response.content  # noqa: B018 - read it in full, as a client whose answer was lost would not
            if rule.lost_as == "timeout":
                from botocore.exceptions import ReadTimeoutError

                time.sleep((rule.delay_ms or client.meta.config.read_timeout * 1000) / 1000)
                raise ReadTimeoutError(endpoint_url=request.url)
            status, body = error_response("InternalServerError", operation, [], 0)
            return _response(request.url, status, body)
        return None


def _response(url: str, status: int, body: dict[str, Any]) -> Any:
    from botocore.awsrequest import AWSResponse

    return AWSResponse(url, status, {"Content-Type": "application/x-amz-json-1.0",
                                     "x-amzn-RequestId": "fault-injected"}, _Body(encode(body)))


def _error(name: str) -> Exception:
    """An exception whose class name is `name`: Lambda reports the class name as the errorType."""
    return type(name, (Exception,), {"__module__": "sagafaults"})(f"fault injected: {name}")


def wrap(handler: Handler, function: str, clients: list[Any],
         order_id_of: Callable[[Any], str | None] | None = None) -> Handler:
    """`handler` with the fault rules of FAULT_RULES_TABLE applied, for `function` (the saga's name)."""
    import boto3

    injector = Injector(function, os.environ["FAULT_RULES_TABLE"], boto3.client("dynamodb"))
    for client in clients:
        injector.hook(client)

    @functools.wraps(handler)
    def wrapped(event: Any, context: Any) -> Any:
        injector.load(order_id_of(event) if order_id_of else None)
        try:
            rule = injector.invocation_rule()
            if rule is not None and rule.action == "invocation-add-delay":
                time.sleep(rule.delay_ms / 1000)
            if rule is not None and rule.action == "invocation-error" and rule.prevent_execution:
                raise _error(str(rule.error))
            try:
                return handler(event, context)
            finally:
                # As FIS's invocation-error without preventExecution: the invocation fails after the handler ran,
                # whether it returned or raised (a step failing on its own must not spend the rule unfailed).
                if rule is not None and rule.action == "invocation-error":
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(1)  # the sandbox dies after the handler's writes: Runtime.ExitError  # noqa: SLF001
        finally:
            injector.rules = []

    wrapped.fault_injector = injector  # type: ignore[attr-defined]
    return wrapped


__all__ = ["CRASH", "Injector", "wrap"]
