"""How long the reaper takes to drain a backlog of abandoned sagas on the embedded stack: fan-out vs sequential.

Run by hand (`make bench-reaper`, or `python bench/reaper_drain.py --orders 500`), not by `make test`. For each mode
it starts an embedded stack (ReaperSchedule=rate(1 day): only the bench sweeps), abandons N sagas, sweeps once,
and times the drain: from the sweep's invocation until every order is COMPENSATED, and until ReaperQueue is empty
(each saga is two messages: its order and its expired reservation, a no-op once the order is compensated), with
the invariants checked
afterwards (the stock back where it was, no payment authorized or captured, nothing left in the reaper's queues).

The abandoned sagas are written through the domain code the API and the steps use (Orders.new_order/put_new,
Payments.put_new, Inventory.reserve_items, one transaction each): an order whose execution died after
ReserveInventory, its lease and reservation expired, its payment PENDING (the card never charged). No execution
is started; the worker's StopExecution finds none, as for an execution that ended.

Modes, in the same run: `fan-out` (ReaperQueue's mapping with the template's MaximumConcurrency, ReaperConcurrency's
default) and `sequential` (the same mapping with one poller: one batch at a time, as the old single sweep did one
order at a time; 1 is below AWS's minimum of 2 and possible only in the emulation). Writes JSON to
.local/bench/reaper_drain.json and the section of docs/benchmarks.md (bench/report.py:reaper_section).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

from report import reaper_section, write_reaper_section  # noqa: E402

SKU, STOCK, PRICE = "REAPER-1", 1_000_000, 1250
DEADLINE_S = 900.0


def abandon(stack: Any, outputs: dict[str, str], n: int) -> list[str]:
    from order_saga.config import Timing
    from order_saga.dynamo import now_ms
    from order_saga.inventory import Inventory
    from order_saga.models import PricedLine
    from order_saga.orders import Orders
    from order_saga.payments import Payments
    from order_saga.store import Store

    store = Store(stack.client("dynamodb"))
    expired = Timing(lease_ms=1, deadline_ms=60_000, reservation_ttl_ms=1, shards=10)
    orders = Orders(store, outputs["OrdersTableName"], expired)
    inventory = Inventory(store, outputs["InventoryTableName"], expired)
    line = PricedLine(sku=SKU, quantity=1, unit_price=PRICE)
    ids = []
    for _ in range(n):
        order_id = "ord_reaper_bench_" + uuid.uuid4().hex[:16]
        now = now_ms() - 1000
        execution = f"{outputs['StateMachineArn'].replace(':stateMachine:', ':execution:')}:{order_id}"
        order = orders.new_order(order_id, "bench-customer", [{"sku": SKU, "quantity": 1}], [line], PRICE, "USD",
                                 execution, "digest", now, amounts=[PRICE])
        items = {"order": orders.put_new(order),
                 "payment:1": Payments(store, outputs["PaymentsTableName"]).put_new(order_id, 1, "tok_approve", PRICE,
                                                                                     "USD", now)}
        items |= inventory.reserve_items(order_id, [line], now)
        assert store.transact(items) is None
        ids.append(order_id)
    return ids


def statuses(stack: Any, table: str, ids: list[str]) -> dict[str, str]:
    ddb, found = stack.client("dynamodb"), {}
    for start in range(0, len(ids), 100):
        keys = [{"order_id": {"S": i}} for i in ids[start:start + 100]]
        while keys:
            got = ddb.batch_get_item(RequestItems={table: {"Keys": keys, "ConsistentRead": True,
                                                           "ProjectionExpression": "order_id, saga_status"}})
            for item in got["Responses"].get(table, []):
                found[item["order_id"]["S"]] = item["saga_status"]["S"]
            keys = (got.get("UnprocessedKeys") or {}).get(table, {}).get("Keys", [])
    return found


def run(mode: str, orders: int) -> dict[str, Any]:
    from order_saga.inventory import Inventory
    from order_saga.store import Store
    from sagalocal.stack import LocalStack

    stack = LocalStack(ROOT / "template.yaml", api_port=None, log_dir=ROOT / ".local" / "bench" / f"reaper-{mode}",
                       parameter_overrides={"ReaperSchedule": "rate(1 day)"}).start()
    try:
        outputs = stack.outputs
        if mode == "sequential":  # one poller: one batch at a time
            stack.queues[0].stop(polls=True)  # the same queue is mapped again: no poll of the old one left
            stack.queues[0] = stack._queue_mapping({**stack.resources.queue_mappings[0], "max_concurrency": 1})
            stack.queues[0].start()
        store = Store(stack.client("dynamodb"))
        Inventory(store, outputs["InventoryTableName"]).add_item(SKU, "Reaper bench item", PRICE, "USD", STOCK)
        ids = abandon(stack, outputs, orders)
        load_before = os.getloadavg()
        started = time.monotonic()
        swept = stack.invoke("ReaperFunction", {})
        assert not swept.error, swept.payload
        sweep_s = time.monotonic() - started
        sqs = stack.client("sqs")

        def queued() -> int:
            got = sqs.get_queue_attributes(QueueUrl=outputs["ReaperQueueUrl"], AttributeNames=["All"])["Attributes"]
            return int(got["ApproximateNumberOfMessages"]) + int(got["ApproximateNumberOfMessagesNotVisible"])

        deadline, done, compensated_s = started + DEADLINE_S, {}, None
        while time.monotonic() < deadline:  # every order finished, then every message (the reservations') taken
            if compensated_s is None:
                done = statuses(stack, outputs["OrdersTableName"], ids)
                if sum(s == "COMPENSATED" for s in done.values()) == len(ids):
                    compensated_s = time.monotonic() - started
            if compensated_s is not None and queued() == 0:
                break
            time.sleep(0.2)
        drained_s = time.monotonic() - started
        finished = sum(s == "COMPENSATED" for s in done.values())
        item = stack.client("dynamodb").get_item(TableName=outputs["InventoryTableName"], ConsistentRead=True,
                                                 Key={"pk": {"S": f"SKU#{SKU}"}, "sk": {"S": "STOCK"}}).get("Item", {})
        payments = [p for page in stack.client("dynamodb").get_paginator("scan").paginate(
            TableName=outputs["PaymentsTableName"], ConsistentRead=True) for p in page["Items"]]
        held = [p["payment_id"]["S"] for p in payments if p.get("status", {}).get("S") in
                ("AUTHORIZED", "CAPTURING", "CAPTURED")]
        left = {name: sqs.get_queue_attributes(QueueUrl=outputs[name], AttributeNames=["All"])["Attributes"]
                for name in ("ReaperQueueUrl", "ReaperDeadLetterQueueUrl")}
        mapping = stack.queues[0].describe()
        return {"mode": mode, "orders": len(ids), "finished": finished, "sweep_s": round(sweep_s, 2),
                "compensated_s": round(compensated_s, 2) if compensated_s is not None else None,
                "drained_s": round(drained_s, 2),
                "per_s": round(finished / compensated_s, 1) if compensated_s else None,
                "pollers": mapping["pollers"], "peak_concurrency": mapping["peak_concurrency"],
                "invocations": mapping["invocations"], "batch_size": mapping["batch_size"],
                "stock_available": int(item.get("available", {}).get("N", -1)),
                "stock_reserved": int(item.get("reserved", {}).get("N", -1)), "stock_expected": STOCK,
                "payments_held": held, "queued_left": {k: int(v["ApproximateNumberOfMessages"]) +
                                                       int(v["ApproximateNumberOfMessagesNotVisible"])
                                                       for k, v in left.items()},
                "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}
    finally:
        stack.stop()


def one(mode: str, orders: int) -> dict[str, Any]:
    """A mode in a process of its own: moto's backends, and so the stack's fixed names, are per process."""
    ran = subprocess.run([sys.executable, __file__, "--one", mode, "--orders", str(orders)], check=True,
                         capture_output=True, text=True)
    return json.loads(ran.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--modes", nargs="+", default=["fan-out", "sequential"])
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one mode, in a process of its own (moto's names are global)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(args.one, args.orders)))
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    result = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
              "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}",
              "runs": [one(mode, args.orders) for mode in args.modes]}
    out = ROOT / ".local" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reaper_drain.json").write_text(json.dumps(result, indent=2))
    print(reaper_section(result))
    if not args.no_doc:
        write_reaper_section(ROOT / "docs" / "benchmarks.md", result)
    ok = all(r["finished"] == r["orders"] and r["stock_available"] == STOCK and r["stock_reserved"] == 0
             and not r["payments_held"] and not any(r["queued_left"].values()) for r in result["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
