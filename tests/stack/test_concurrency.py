"""200 concurrent orders for 50 units of one item: exactly 50 confirmed, 150 compensated, no oversell."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from order_saga.dynamo import from_ddb, to_ddb
from order_saga.gateway import LEDGER_PREFIX
from order_saga.inventory import Inventory
from sagalocal.scenarios import http
from sagalocal.timeline import running_executions

ORDERS, UNITS = 200, 50



def test_200_concurrent_orders_for_50_units(target):
    sku = "CONTENDED-" + uuid.uuid4().hex[:8]
    Inventory(target.client("dynamodb"), target.outputs["InventoryTableName"]).put_item(sku, "contended", 700,
                                                                                        "USD", UNITS)
    body = json.dumps({"customer_id": "crowd", "items": [{"sku": sku, "quantity": 1}],
                       "payment_token": "tok_approve"}).encode()
    sfn = target.client("stepfunctions")

    def order(_):
        status, accepted = http("POST", f"{target.api_url}/orders", body, {"Idempotency-Key": uuid.uuid4().hex},
                                timeout=120)
        assert status == 202, accepted
        return accepted

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=ORDERS) as pool:
        accepted = list(pool.map(order, range(ORDERS)))
    ours = {a["execution_arn"] for a in accepted}
    deadline = time.monotonic() + 600
    while ours & running_executions(sfn, target.outputs["StateMachineArn"]):  # one poll for all, not 200 pollers
        assert time.monotonic() < deadline, "sagas still running after 600 s"
        time.sleep(0.5)
    took = time.monotonic() - started
    results = []
    for a in accepted:
        described = sfn.describe_execution(executionArn=a["execution_arn"])
        results.append((a["order_id"], described["status"], described.get("error")))
    outcomes = [(status, error) for _, status, error in results]
    assert outcomes.count(("SUCCEEDED", None)) == UNITS, sorted(set(outcomes))
    assert outcomes.count(("FAILED", "InsufficientStock")) == ORDERS - UNITS, sorted(set(outcomes))
    ddb = target.client("dynamodb")
    stock = from_ddb(ddb.get_item(TableName=target.outputs["InventoryTableName"],
                                  Key=to_ddb({"pk": f"SKU#{sku}", "sk": "STOCK"}), ConsistentRead=True)["Item"])
    assert (stock["available"], stock["reserved"], stock["sold"]) == (0, 0, UNITS)
    captured = 0
    for order_id, status, _ in results:
        order = from_ddb(ddb.get_item(TableName=target.outputs["OrdersTableName"],
                                      Key=to_ddb({"order_id": order_id}), ConsistentRead=True)["Item"])
        ledger = ddb.get_item(TableName=target.outputs["PaymentsTableName"],
                              Key=to_ddb({"payment_id": LEDGER_PREFIX + order_id}), ConsistentRead=True).get("Item")
        state = from_ddb(ledger)["state"] if ledger else None
        if status == "SUCCEEDED":
            assert (order["saga_status"], state) == ("COMPLETED", "CAPTURED")
            captured += 1
        else:
            assert (order["saga_status"], order["status"], state) == ("COMPENSATED", "CANCELLED", None)
    assert captured == UNITS
    print(f"\n{ORDERS} concurrent sagas in {took:.1f} s")
