"""Unit-test fixtures: moto in-process, with tables built from template.yaml itself."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sagalocal.template import Template

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
TABLES = {"OrdersTable": "ORDERS_TABLE", "InventoryTable": "INVENTORY_TABLE",
          "PaymentsTable": "PAYMENTS_TABLE", "IdempotencyTable": "IDEMPOTENCY_TABLE"}
CATALOG = [("SKU-1", "Blue mug", 1250, 10), ("SKU-2", "Red kettle", 4000, 3), ("SKU-3", "Teapot", 2500, 0)]


@dataclass
class FakeContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:test-function"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 4000


@pytest.fixture
def context() -> FakeContext:
    return FakeContext()


def table_definitions() -> dict[str, dict[str, Any]]:
    template = Template(ROOT / "template.yaml")
    defs = {}
    for logical_id in TABLES:
        props = template.properties(logical_id)
        defs[logical_id] = {
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props["BillingMode"],
        }
        if "GlobalSecondaryIndexes" in props:
            defs[logical_id]["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    return defs


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    """moto with the template's tables, a seeded catalog, and the handlers' environment."""
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OrderSaga")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "order-saga")
    monkeypatch.setenv("PAYMENT_GATEWAY", "fake")
    monkeypatch.setenv("FAKE_GATEWAY_HANG_SECONDS", "0.2")
    monkeypatch.setenv("LEASE_SECONDS", "20")
    monkeypatch.setenv("SAGA_DEADLINE_SECONDS", "60")
    monkeypatch.setenv("RESERVATION_TTL_SECONDS", "300")
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        for logical_id, definition in table_definitions().items():
            name = f"test-{logical_id}"
            client.create_table(TableName=name, **definition)
            monkeypatch.setenv(TABLES[logical_id], name)
        from order_saga.inventory import Inventory

        inventory = Inventory(client, os.environ["INVENTORY_TABLE"])
        for sku, name, price, stock in CATALOG:
            inventory.put_item(sku, name, price, "USD", stock)
        yield client


@pytest.fixture
def handlers(aws):
    """Import (fresh, inside moto) the handler module of a function: handlers('create_order')."""

    def load(name: str):
        module = f"functions.{name}.app"
        sys.modules.pop(module, None)
        return importlib.import_module(module)

    return load


# Every step renews its lease (a heartbeat), so a repeat moves lease_expires_at forward by design;
# every other attribute of every item must be unchanged.
HEARTBEAT = "lease_expires_at"


def scan_all(client) -> dict[str, list[dict[str, Any]]]:
    """Every item of every table, sorted, without the lease heartbeat: what a run-twice test compares."""
    out = {}
    for env in TABLES.values():
        table = os.environ[env]
        items = [{k: v for k, v in item.items() if k != HEARTBEAT}
                 for item in client.scan(TableName=table, ConsistentRead=True)["Items"]]
        out[table] = sorted(items, key=lambda i: repr(sorted(i.items())))
    return out
