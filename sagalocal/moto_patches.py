"""What the local stack changes in moto, each for a reason measured here. Installed once, at stack start.

1. DynamoDB requests are serialized. moto checks a condition and then writes without a lock, so
   two concurrent conditional writes could both pass; DynamoDB guarantees they cannot.
2. TransactWriteItems checks every condition first, then applies every write. moto applied each
   write as it went and, on a later failure, restored deep copies of every table in the
   transaction: a cost that grows with the table (8% of the engine's CPU with near-empty tables).
   Checking all conditions before writing is also what DynamoDB does.
3. A state machine definition is parsed once, not once per execution (9% of the engine's CPU).
   The parsed program is immutable: an execution's state lives in its Environment.
4. The interpreter's boto3 clients are created once per (service, region), not once per task.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_lock = threading.Lock()
_installed = False


def install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _serialize_dynamodb()
        _check_then_apply_transactions()
        _cache_parsed_definitions()
        _cache_interpreter_clients()
        _installed = True


_dynamodb_lock = threading.Lock()


def _serialize_dynamodb() -> None:
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.call_action

    def call_action(self: Any) -> Any:
        with _dynamodb_lock:
            return original(self)

    DynamoHandler.call_action = call_action  # type: ignore[method-assign]


def _check_then_apply_transactions() -> None:
    from moto.dynamodb.exceptions import (
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models import get_filter_expression as filter_expression

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        seen: set[tuple[str, str]] = set()
        ops, reasons, failed = [], [], False
        for item in transact_items:
            if len(item) > 1:
                raise TransactWriteSingleOpException
            op_type, op = next(iter(item.items()))
            if op_type not in ("ConditionCheck", "Put", "Delete", "Update"):
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            if op_type == "Put":
                table = self.get_table(table_name)
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            identity = (str(table_name), str(dict(sorted(key.items()))))
            if identity in seen:
                raise MultipleTransactionsException()
            seen.add(identity)
            current = self.get_item(table_name, key)
            condition = op.get("ConditionExpression")
            if condition is not None and not filter_expression(
                    condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")).expr(current):
                old = (current.to_json()["Attributes"]
                       if current and op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" else None)
                reasons.append(("ConditionalCheckFailed", "The conditional request failed", old))
                failed = True
            else:
                reasons.append((None, None, None))
            ops.append((op_type, op, key))
        if failed:
            raise TransactionCanceledException(reasons)
        for op_type, op, key in ops:  # every condition held: apply (under the DynamoDB lock)
            if op_type == "Put":
                self.put_item(op["TableName"], op["Item"])
            elif op_type == "Delete":
                self.delete_item(op["TableName"], key)
            elif op_type == "Update":
                self.update_item(op["TableName"], key, update_expression=op["UpdateExpression"],
                                 expression_attribute_names=op.get("ExpressionAttributeNames"),
                                 expression_attribute_values=op.get("ExpressionAttributeValues"))

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _cache_parsed_definitions() -> None:
    from moto.stepfunctions.parser.backend import execution_worker

    parse = functools.lru_cache(maxsize=64)(execution_worker.AmazonStateLanguageParser.parse)

    def entrypoint(self: Any) -> Any:
        return parse(self._evaluation_details.state_machine_details.definition)[0]

    execution_worker.ExecutionWorker._get_evaluation_entrypoint = entrypoint  # type: ignore[method-assign]


def _cache_interpreter_clients() -> None:
    from moto.stepfunctions.parser.asl.utils import boto_client

    original = boto_client.boto_client_for
    clients: dict[tuple[str, str], Any] = {}
    clients_lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        with clients_lock:
            if (region, service) not in clients:
                clients[(region, service)] = original(region=region, service=service,
                                                      state_credentials=state_credentials)
            return clients[(region, service)]

    boto_client.boto_client_for = boto_client_for
    # The modules that imported the function by name get the cached one too.
    import importlib

    for name in ("state_task.lambda_eval_utils", "state_task.service.state_task_service_dynamodb",
                 "state_task.service.state_task_service_sqs", "state_task.service.state_task_service_sns",
                 "state_task.service.state_task_service_aws_sdk", "state_task.service.state_task_service_sfn",
                 "state_task.service.state_task_service_events"):
        module = importlib.import_module(f"moto.stepfunctions.parser.asl.component.state.exec.{name}")
        if getattr(module, "boto_client_for", None) is original:
            module.boto_client_for = boto_client_for  # type: ignore[attr-defined]
