"""Unit-test fixtures: the handlers in this process, DynamoDB served by the stack's own engine.

DynamoDB is the embedded stack's DynamoDB process (started once per session), so the unit tier meets the
same concurrency model, transaction conflicts and error shapes as the stack tier. Every test gets fresh
tables, built from template.yaml's own definitions. The other services (SQS, Step Functions) are moto
in-process.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sagalocal.dynamodb.server import DynamoDBProcess
from sagalocal.stack import free_port
from sagalocal.template import Template

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
TABLES = {"OrdersTable": "ORDERS_TABLE", "InventoryTable": "INVENTORY_TABLE", "PaymentsTable": "PAYMENTS_TABLE",
          "PromotionsTable": "PROMOTIONS_TABLE"}
DAY_MS = 86_400_000
# code: (kind, value, currency, valid from/until relative to now, max redemptions, per customer)
COUPONS = {"TENOFF": ("percent", 10, None, (-DAY_MS, DAY_MS), 1000, 1),
           "FIVEOFF": ("amount", 500, "USD", (-DAY_MS, DAY_MS), 1000, 1000),
           "ONLYTWO": ("percent", 50, None, (-DAY_MS, DAY_MS), 2, 1),
           "OLD": ("percent", 10, None, (-2 * DAY_MS, -DAY_MS), 1000, 1)}
CATALOG = [("SKU-1", "Blue mug", 1250, 10), ("SKU-2", "Red kettle", 4000, 3), ("SKU-3", "Teapot", 2500, 0)]


@dataclass
class FakeContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:test-function"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    # Generous: this tier checks what the handlers do, and runs beside the stack tier on two busy cores, where an
    # invocation's own wall time can pass a step's 9 s. The budget itself is tested with a short one
    # (test_steps.py, test_store.py) and on the stack, where each function has its template timeout.
    remaining_ms: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def context() -> FakeContext:
    return FakeContext(aws_request_id=str(uuid.uuid4()))


@pytest.fixture(scope="session")
def dynamodb_engine(tmp_path_factory: pytest.TempPathFactory):
    process = DynamoDBProcess(free_port(), tmp_path_factory.mktemp("dynamodb") / "DynamoDB.log")
    process.start()
    try:
        yield process.endpoint
    finally:
        process.stop()


def table_definitions() -> dict[str, dict[str, Any]]:
    template = Template(ROOT / "template.yaml")
    defs = {}
    for logical_id in TABLES:
        props = template.properties(logical_id)
        defs[logical_id] = {key: props[key] for key in ("AttributeDefinitions", "KeySchema", "BillingMode",
                                                         "GlobalSecondaryIndexes") if key in props}
    return defs


DEFINITIONS = table_definitions()


@functools.cache
def shared_session() -> boto3.Session:
    return boto3.Session()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, dynamodb_engine: str):
    """Fresh tables from the template, a seeded catalog, and the handlers' environment."""
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "FAULT_RULES_TABLE"):
        monkeypatch.delenv(key, raising=False)
    env = {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_engine, "POWERTOOLS_TRACE_DISABLED": "true",
           "POWERTOOLS_METRICS_NAMESPACE": "OrderSaga", "POWERTOOLS_SERVICE_NAME": "order-saga",
           "PAYMENT_GATEWAY": "fake", "FAKE_GATEWAY_HANG_SECONDS": "0.2", "LEASE_SECONDS": "20",
           "SAGA_DEADLINE_SECONDS": "60", "RESERVATION_TTL_SECONDS": "300", "INDEX_SHARDS": "4",
           "GATEWAY_TIMEOUT_SECONDS": "3", "RECONCILE_AFTER_SECONDS": "300",
           "BREAKER_FAILURE_THRESHOLD": "5", "BREAKER_SUCCESS_THRESHOLD": "2", "BREAKER_OPEN_SECONDS": "30",
           "COUPON_FAILURE_POLICY": "fail"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        # One boto3 session for the whole tier: each test's clients (and the handlers' own, made at import) reuse
        # its loaded service models instead of parsing them again (moto's mock starts each test without a default
        # session; a fresh one costs 150 ms per client). Credentials and endpoints still come from this
        # test's environment, which every test sets alike.
        boto3.DEFAULT_SESSION = shared_session()
        client = boto3.client("dynamodb", region_name=REGION)
        run = uuid.uuid4().hex[:8]
        for logical_id, definition in DEFINITIONS.items():
            name = f"{logical_id}-{run}"
            client.create_table(TableName=name, **definition)
            monkeypatch.setenv(TABLES[logical_id], name)
        # The reaper's queue (its sweep sends there; tests/unit/helpers.py:reap hands the messages to its worker).
        queue = boto3.client("sqs", region_name=REGION).create_queue(QueueName=f"ReaperQueue-{run}")["QueueUrl"]
        monkeypatch.setenv("REAPER_QUEUE_URL", queue)
        from order_saga.inventory import Inventory
        from order_saga.store import Store

        inventory = Inventory(Store(client), os.environ["INVENTORY_TABLE"])
        for sku, name, price, stock in CATALOG:
            inventory.add_item(sku, name, price, "USD", stock)
        from order_saga.dynamo import now_ms
        from order_saga.promotions import Promotions

        promotions, now = Promotions(Store(client), os.environ["PROMOTIONS_TABLE"]), now_ms()
        for code, (kind, value, currency, (start, end), limit, per_customer) in COUPONS.items():
            promotions.add_coupon(code, kind, value, now + start, now + end, limit, per_customer, currency)
        yield client


@pytest.fixture
def handlers(aws):
    """Import (fresh, with this test's environment) the handler module of a function: handlers('reserve_inventory')."""

    def load(name: str):
        module = f"functions.{name}.app"
        sys.modules.pop(module, None)
        return importlib.import_module(module)

    return load


# A repeat must leave every item unchanged, but for one attribute: the time a renewal would move.
HEARTBEAT = "lease_expires_at"


def scan_all(client) -> dict[str, list[dict[str, Any]]]:
    """Every item of every table, sorted: what a run-twice test compares."""
    out = {}
    for env in TABLES.values():
        table = os.environ[env]
        pages = client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
        items = [{k: v for k, v in item.items() if k != HEARTBEAT} for page in pages for item in page["Items"]]
        out[table] = sorted(items, key=lambda i: repr(sorted(i.items())))
    return out


@pytest.fixture
def api(aws, handlers, monkeypatch):
    """The OrdersApi handler, with a state machine from the ASL to start (the API's and the coupon tests')."""
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    definition = Path(ROOT / "statemachine/order_saga.asl.json").read_text()
    arn = sfn.create_state_machine(name="order-saga-test", definition=definition,
                                   roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    monkeypatch.setenv("STATE_MACHINE_ARN", arn)
    return handlers("orders_api")
