from __future__ import annotations

import os
from typing import Any

from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.gateway import LEDGER_PREFIX
from order_saga.models import OrderRequest
from order_saga.orders import Orders

EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:order-saga-dev:ord_1"


def new_saga(client: Any, order_id: str = "ord_1", items: list[dict] | None = None,
             token: str = "tok_approve") -> dict[str, Any]:
    """What the API does before starting the execution: the PENDING order, and the execution input."""
    request = OrderRequest(customer_id="cust-1", items=items or [{"sku": "SKU-1", "quantity": 2}],
                           payment_token=token)
    assert orders_of(client).accept(order_id, request, EXECUTION, now_ms())
    return {"order_id": order_id, **request.model_dump()}


def orders_of(client: Any) -> Orders:
    return Orders(client, os.environ["ORDERS_TABLE"], Timing.from_env())


def invoke(module: Any, context: Any, saga: dict[str, Any]) -> dict[str, Any]:
    return module.lambda_handler({"saga": saga, "execution_id": EXECUTION}, context)


def get(client: Any, table_env: str, **key: str) -> dict[str, Any] | None:
    from order_saga.dynamo import from_ddb, to_ddb

    resp = client.get_item(TableName=os.environ[table_env], Key=to_ddb(key), ConsistentRead=True)
    return from_ddb(resp["Item"]) if "Item" in resp else None


def stock(client: Any, sku: str) -> tuple[int, int, int]:
    item = get(client, "INVENTORY_TABLE", pk=f"SKU#{sku}", sk="STOCK")
    assert item is not None
    return item["available"], item["reserved"], item["sold"]


def order(client: Any, order_id: str = "ord_1") -> dict[str, Any]:
    item = get(client, "ORDERS_TABLE", order_id=order_id)
    assert item is not None
    return item


def payment(client: Any, order_id: str = "ord_1") -> dict[str, Any] | None:
    return get(client, "PAYMENTS_TABLE", payment_id=order_id)


def ledger(client: Any, order_id: str = "ord_1") -> dict[str, Any] | None:
    return get(client, "PAYMENTS_TABLE", payment_id=LEDGER_PREFIX + order_id)
