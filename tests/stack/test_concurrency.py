"""200 concurrent orders for 50 units of one item: no oversell, money equals confirmations, every saga ended.

The checks are invariants, not counts that depend on timing: on a loaded machine (or on AWS) a saga may
end otherwise than by stock running out, but it may never sell a unit twice, charge without confirming,
or confirm without charging. The embedded engine also counts the transaction conflicts the burst made on
the hot item (DynamoDB cancels concurrent transactions on one item; the handlers retry them).
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.stack.support import place, wait_all

ORDERS, UNITS, PRICE = 200, 50, 700


def test_200_concurrent_orders_for_50_units(target):
    sku = "CONTENDED-" + uuid.uuid4().hex[:8]
    target.add_item(sku, PRICE, UNITS)
    conflicts_before = engine_conflicts(target)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=ORDERS) as pool:
        accepted = list(pool.map(lambda _: place(target, [{"sku": sku, "quantity": 1}], timeout=120), range(ORDERS)))
    ended = wait_all(target, [a["execution_arn"] for a in accepted], timeout=600)
    took = time.monotonic() - started
    outcomes = Counter(f"{d['status']} {d.get('error') or ''}".strip() for d in ended.values())
    confirmed = captured = 0
    for a in accepted:
        described = ended[a["execution_arn"]]
        order, ledger = target.order(a["order_id"]), target.ledger(a["order_id"])
        state = (ledger or {}).get("state")
        if described["status"] == "SUCCEEDED":
            assert (order["saga_status"], order["status"], state) == ("COMPLETED", "CONFIRMED", "CAPTURED")
            assert ledger["amount"] == order["total"] == PRICE
            confirmed += 1
        else:
            assert described["status"] == "FAILED", described["status"]
            assert (order["saga_status"], order["status"]) == ("COMPENSATED", "CANCELLED"), described.get("error")
            assert state in (None, "DECLINED", "VOIDED", "REFUNDED")
        captured += state == "CAPTURED"
    stock = target.stock(sku)
    assert stock["available"] + stock["reserved"] + stock["sold"] == UNITS  # nothing created or lost
    assert (stock["reserved"], stock["sold"]) == (0, confirmed)  # no oversell: sold is what was confirmed
    assert captured == confirmed <= UNITS  # money equals confirmations
    assert outcomes["SUCCEEDED"] == confirmed
    print(f"\n{ORDERS} concurrent sagas in {took:.1f} s: {dict(outcomes)}; stock {stock['available']} available, "
          f"{stock['sold']} sold; transaction conflicts made by the engine: "
          f"{engine_conflicts(target) - conflicts_before if conflicts_before is not None else 'n/a'}")


def engine_conflicts(target) -> int | None:
    """The embedded DynamoDB engine's own count of cancelled transactions (None elsewhere)."""
    if not target.embedded or not target.endpoint:
        return None
    with urllib.request.urlopen(f"{target.endpoint}/_sagalocal/dynamodb/stats") as response:  # noqa: S310
        return int(json.loads(response.read())["conflicts"])
