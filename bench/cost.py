"""Benchmark 4, cost per saga: from real execution histories and the DynamoDB requests each saga made.

Every scenario of events/scenarios.json runs on the embedded stack in this process, one at a time,
plus two compensations made with the stack's fault injection (POST /_sagalocal/faults): ConfirmOrder
failing (refund path) and AuthorizePayment crashing (void path). For each saga:

  state transitions   one per StateEntered event (Succeed and Fail states included), plus one per
                      retry: every TaskScheduled beyond the first within one state visit. (Standard
                      workflows bill each state entered and each retry attempt as a transition.)
  Lambda invocations  the saga's TaskScheduled events, plus the API's OrdersApi invocation per POST
  Lambda duration     each invocation's measured handler time on this machine (the worker round
                      trip), billed rounded up to 1 ms, at the function's MemorySize (512 MB)
  DynamoDB            every request the saga made, recorded in moto's DynamoHandler in this process
                      (the stack's server runs here), with the item sizes (rules in RULES below)

Prices (us-east-1, on-demand, no free tier): PRICES below. Local durations stand in for AWS ones:
handlers here talk to moto, not to DynamoDB; read the Lambda and EXPRESS duration figures as an
order of magnitude.

Usage: python bench/cost.py [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, quiet, write_json  # noqa: E402

PRICES = {
    "standard_per_transition": 25 / 1e6,
    "express_per_request": 1 / 1e6,
    "express_per_gb_s": 0.00001667,
    "express_memory_mb": 64,
    "express_increment_ms": 100,
    "lambda_per_request": 0.20 / 1e6,
    "lambda_per_gb_s": 0.0000166667,
    "lambda_memory_mb": 512,
    "ddb_per_wru": 0.625 / 1e6,
    "ddb_per_rru": 0.125 / 1e6,
}
RULES = [
    "Item size: attribute name bytes + value bytes (S: UTF-8 bytes; N: 1 byte per 2 significant digits + 1; "
    "B: raw bytes; BOOL/NULL: 1; L/M: 3 + elements, 1 byte each + their sizes; sets: sum of members).",
    "PutItem/UpdateItem/DeleteItem: ceil(max(size before, size after) / 1 KB) WRU, at least 1, also when the "
    "condition fails (DynamoDB bills a failed conditional write).",
    "TransactWriteItems: 2 x ceil(size / 1 KB) per item (Put, Update, Delete and ConditionCheck alike), "
    "size = max(before, after).",
    "Global secondary indexes (both are sparse, ProjectionType ALL): a write that puts an item into an index, "
    "removes it, or changes it while it is in one costs one index write of ceil(size / 1 KB) WRU; a change of "
    "the index key costs two (delete + put). Index writes are not doubled for transactions.",
    "GetItem: ceil(size / 4 KB) RRU for a consistent read (at least 1, also for a missing item), half for an "
    "eventually consistent one. Query/Scan: ceil(sum of returned item sizes / 4 KB), at least 1, halved when "
    "eventually consistent. BatchGetItem: each item as a GetItem. TransactGetItems: 2 x ceil(size / 4 KB) per item.",
]
ACCOUNT = "123456789012"


# ---- DynamoDB item sizes and capacity units ------------------------------------------------------
def value_size(value: dict[str, Any]) -> int:
    (kind, inner), = value.items()
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        digits = str(Decimal(inner).normalize()).lstrip("-").replace(".", "").lstrip("0") or "0"
        digits = digits.split("E")[0]
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(base64.b64decode(inner)) if isinstance(inner, str) else len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in inner)
    if kind == "NS":
        return sum(value_size({"N": n}) for n in inner)
    if kind == "BS":
        return sum(value_size({"B": b}) for b in inner)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in inner.items())
    raise ValueError(kind)


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def kb_units(size: int, unit: int) -> int:
    return max(1, math.ceil(size / unit))


class DynamoRecorder:
    """Wraps moto's DynamoHandler.call_action (installed before the stack, so it runs inside its lock)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def install(self) -> None:
        from moto.dynamodb.responses import DynamoHandler

        original = DynamoHandler.call_action
        recorder = self

        def call_action(handler: Any) -> Any:
            try:
                target = handler.headers.get("X-Amz-Target", "")
                request = json.loads(handler.body) if isinstance(handler.body, (str, bytes)) and handler.body \
                    else dict(getattr(handler, "params", {}) or {})
                backend = handler.dynamodb_backend
            except Exception:  # noqa: BLE001 - never break the stack for a measurement
                return original(handler)
            operation = target.split(".")[-1]
            before = recorder._images(backend, operation, request)
            response = original(handler)
            try:
                after = recorder._images(backend, operation, request)
                recorder._record(backend, operation, request, response, before, after)
            except Exception as exc:  # noqa: BLE001
                with recorder.lock:
                    recorder.records.append({"at": time.monotonic(), "operation": operation, "error": str(exc)})
            return response

        DynamoHandler.call_action = call_action  # type: ignore[method-assign]

    # the items a write touches, before and after it
    @staticmethod
    def _key(backend: Any, table_name: str, item_or_key: dict[str, Any]) -> dict[str, Any]:
        table = backend.get_table(table_name)
        key = {table.hash_key_attr: item_or_key[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = item_or_key[table.range_key_attr]
        return key

    def _targets(self, backend: Any, operation: str, request: dict[str, Any]) -> list[tuple[str, str, dict]]:
        if operation == "PutItem":
            return [("Put", request["TableName"], self._key(backend, request["TableName"], request["Item"]))]
        if operation in ("UpdateItem", "DeleteItem"):
            return [(operation[:-4], request["TableName"], request["Key"])]
        if operation == "TransactWriteItems":
            out = []
            for entry in request["TransactItems"]:
                (kind, op), = entry.items()
                key = self._key(backend, op["TableName"], op["Item"]) if kind == "Put" else op["Key"]
                out.append((kind, op["TableName"], key))
            return out
        return []

    def _images(self, backend: Any, operation: str, request: dict[str, Any]) -> list[dict[str, Any] | None]:
        images = []
        for _, table_name, key in self._targets(backend, operation, request):
            try:
                item = backend.get_item(table_name, key)
            except Exception:  # noqa: BLE001 - a missing table is the request's own error
                item = None
            images.append(item.to_json()["Attributes"] if item is not None else None)
        return images

    def _gsi_wru(self, backend: Any, table_name: str, before: dict | None, after: dict | None,
                 succeeded: bool) -> int:
        if not succeeded:
            return 0
        table = backend.get_table(table_name)
        wru = 0
        for index in getattr(table, "global_indexes", []) or []:
            keys = [k["AttributeName"] for k in index.schema]
            was = before is not None and all(k in before for k in keys)
            now = after is not None and all(k in after for k in keys)
            if was and now:
                if any(before[k] != after[k] for k in keys):
                    wru += kb_units(item_size(before), 1024) + kb_units(item_size(after), 1024)
                elif before != after:
                    wru += kb_units(item_size(after), 1024)
            elif was:
                wru += kb_units(item_size(before), 1024)
            elif now:
                wru += kb_units(item_size(after), 1024)
        return wru

    def _record(self, backend: Any, operation: str, request: dict[str, Any], response: Any,
                before: list, after: list) -> None:
        status = response[0] if isinstance(response, tuple) else 200
        body = response[2] if isinstance(response, tuple) and len(response) > 2 else ""
        succeeded = status == 200
        record: dict[str, Any] = {"at": time.monotonic(), "operation": operation, "ok": succeeded,
                                  "wru": 0.0, "rru": 0.0, "gsi_wru": 0, "items": []}
        targets = self._targets(backend, operation, request)
        if targets:
            factor = 2 if operation == "TransactWriteItems" else 1
            for (kind, table_name, _), old, new in zip(targets, before, after, strict=True):
                size = max(item_size(old), item_size(new))
                record["wru"] += factor * kb_units(size, 1024)
                if kind != "ConditionCheck":
                    record["gsi_wru"] += self._gsi_wru(backend, table_name, old, new, succeeded)
                record["items"].append({"kind": kind, "table": _short_table(table_name), "bytes": size})
            record["table"] = ",".join(sorted({_short_table(t) for _, t, _ in targets}))
        elif operation == "GetItem":
            item = _loads(body).get("Item")
            units = kb_units(item_size(item), 4096)
            record["rru"] = units if request.get("ConsistentRead") else units / 2
            record["table"] = _short_table(request["TableName"])
            record["items"].append({"kind": "Get", "bytes": item_size(item),
                                    "consistent": bool(request.get("ConsistentRead"))})
        elif operation in ("Query", "Scan"):
            items = _loads(body).get("Items", [])
            units = kb_units(sum(item_size(i) for i in items), 4096)
            record["rru"] = units if request.get("ConsistentRead") else units / 2
            record["table"] = _short_table(request["TableName"])
            record["items"].append({"kind": operation, "bytes": sum(item_size(i) for i in items),
                                    "count": len(items), "consistent": bool(request.get("ConsistentRead"))})
        elif operation == "TransactGetItems":
            for _entry, got in zip(request["TransactItems"], _loads(body).get("Responses", []), strict=False):
                record["rru"] += 2 * kb_units(item_size(got.get("Item")), 4096)
                record["items"].append({"kind": "TransactGet", "bytes": item_size(got.get("Item"))})
            record["table"] = ",".join(sorted({_short_table(e["Get"]["TableName"]) for e in request["TransactItems"]}))
        elif operation == "BatchGetItem":
            for table_name, got in _loads(body).get("Responses", {}).items():
                consistent = bool(request.get("RequestItems", {}).get(table_name, {}).get("ConsistentRead"))
                for item in got:
                    units = kb_units(item_size(item), 4096)
                    record["rru"] += units if consistent else units / 2
                    record["items"].append({"kind": "BatchGet", "bytes": item_size(item), "consistent": consistent})
            record["table"] = ",".join(sorted(_short_table(t) for t in request.get("RequestItems", {})))
        else:
            record["table"] = _short_table(request.get("TableName", ""))
            record["control_plane"] = True
        with self.lock:
            self.records.append(record)

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if start <= r["at"] <= end]


def _loads(body: Any) -> dict[str, Any]:
    try:
        return json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {}


def _short_table(name: str) -> str:
    for table in ("OrdersTable", "InventoryTable", "PaymentsTable", "IdempotencyTable"):
        if table in name:
            return table
    return name


class LambdaRecorder:
    """Wraps WorkerPool.invoke: each invocation's function and measured duration."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def install(self) -> None:
        from sagalocal.workers import WorkerPool

        original = WorkerPool.invoke
        recorder = self

        def invoke(pool: Any, event: Any) -> Any:
            result = original(pool, event)
            with recorder.lock:
                recorder.records.append({"at": time.monotonic(), "function": pool.spec.logical_id,
                                         "ms": result.duration_ms, "error": result.error,
                                         "memory": pool.spec.memory})
            return result

        WorkerPool.invoke = invoke  # type: ignore[method-assign]

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if start <= r["at"] <= end]


# ---- scenarios -------------------------------------------------------------------------------------
def scenarios(events_dir: Path) -> list[dict[str, Any]]:
    from sagalocal.scenarios import load_manifest

    specs = [dict(spec) for spec in load_manifest(events_dir)["scenarios"]]
    success = next((s for s in specs if s["name"] == "success"), specs[0])
    specs.append({"name": "compensation: ConfirmOrder fails (refund path)", "event": success["event"],
                  "key": "bench-compensate-confirm-0001",
                  "fault": {"function": "ConfirmOrderFunction", "action": "error",
                            "error_type": "Runtime.ExitError"}, "expect": {}})
    specs.append({"name": "compensation: AuthorizePayment crashes (void path)", "event": success["event"],
                  "key": "bench-compensate-authorize-0001",
                  "fault": {"function": "AuthorizePaymentFunction", "action": "error",
                            "error_type": "Runtime.ExitError"}, "expect": {}})
    return specs


def run_one(stack: Any, sfn: Any, spec: dict[str, Any], events_dir: Path, ddb: DynamoRecorder,
            lam: LambdaRecorder) -> dict[str, Any]:
    from order_saga.models import order_id_for
    from sagalocal.scenarios import http, request_from_event
    from sagalocal.timeline import history, visits, wait_for_execution

    headers, body = request_from_event(events_dir / spec["event"])
    if spec.get("key"):
        headers["Idempotency-Key"] = spec["key"]
    if spec.get("fault"):
        fault = {**spec["fault"], "order_id": order_id_for(headers["Idempotency-Key"])}
        status, answer = http("POST", f"{stack.api_url}/_sagalocal/faults", json.dumps(fault).encode())
        if status != 201:
            raise RuntimeError(f"fault not accepted: {status} {answer}")
    submits = int(spec.get("submit", 1))
    start = time.monotonic()
    responses = [http("POST", f"{stack.api_url}/orders", body, headers) for _ in range(submits)]
    if any(status != 202 for status, _ in responses):
        raise RuntimeError(f"{spec['name']}: POST /orders answered {[s for s, _ in responses]}")
    arn = responses[0][1]["execution_arn"]
    described = wait_for_execution(sfn, arn, timeout=120, poll=0.02)
    end = time.monotonic()
    events = history(sfn, arn)
    path = visits(events)
    entered = sum(1 for e in events if e["type"].endswith("StateEntered"))
    scheduled = sum(1 for e in events if e["type"] in ("TaskScheduled", "LambdaFunctionScheduled"))
    retries = sum(v.retries for v in path)
    duration_ms = (described["stopDate"] - described["startDate"]).total_seconds() * 1000
    requests = [r for r in ddb.between(start, end) if not r.get("control_plane")]
    invocations = lam.between(start, end)
    return {
        "name": spec["name"], "status": described["status"], "error": described.get("error") or "",
        "path": [v.name + (f" (+{v.retries} retries)" if v.retries else "") for v in path],
        "expected_path": spec.get("expect", {}).get("path"),
        "submits": submits, "state_entered": entered, "retries": retries, "transitions": entered + retries,
        "task_scheduled": scheduled, "lambda_invocations": scheduled + submits,
        "lambda_durations": [{"function": r["function"], "ms": r["ms"]} for r in invocations],
        "lambda_billed_ms": sum(math.ceil(r["ms"]) for r in invocations),
        "execution_ms": duration_ms,
        "ddb_requests": len(requests),
        "ddb_by_operation": _count(requests),
        "ddb_wru": sum(r["wru"] + r["gsi_wru"] for r in requests),
        "ddb_gsi_wru": sum(r["gsi_wru"] for r in requests),
        "ddb_rru": sum(r["rru"] for r in requests),
        "ddb_log": [{k: r.get(k) for k in ("operation", "table", "ok", "wru", "gsi_wru", "rru", "items")}
                    for r in requests],
        "history": [{"type": e["type"], "state": (e.get("stateEnteredEventDetails") or {}).get("name")}
                    for e in events],
    }


def _count(requests: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in requests:
        key = f"{r['operation']} {r.get('table', '')}".strip()
        out[key] = out.get(key, 0) + 1
    return out


def dollars(row: dict[str, Any]) -> dict[str, float]:
    """Dollars per million sagas, by service."""
    p = PRICES
    million = 1e6
    express_units = max(1, math.ceil(row["execution_ms"] / p["express_increment_ms"]))
    express_gb_s = express_units * p["express_increment_ms"] / 1000 * p["express_memory_mb"] / 1024
    lambda_gb_s = row["lambda_billed_ms"] / 1000 * p["lambda_memory_mb"] / 1024
    out = {
        "standard": row["transitions"] * p["standard_per_transition"] * million,
        "express": (p["express_per_request"] + express_gb_s * p["express_per_gb_s"]) * million,
        "lambda_requests": row["lambda_invocations"] * p["lambda_per_request"] * million,
        "lambda_duration": lambda_gb_s * p["lambda_per_gb_s"] * million,
        "dynamodb": (row["ddb_wru"] * p["ddb_per_wru"] + row["ddb_rru"] * p["ddb_per_rru"]) * million,
    }
    out["lambda"] = out["lambda_requests"] + out["lambda_duration"]
    out["total_standard"] = out["standard"] + out["lambda"] + out["dynamodb"]
    out["total_express"] = out["express"] + out["lambda"] + out["dynamodb"]
    return out


HAPPY_EXPLAINED = {
    "CreateOrder": "Task: take the order's lease, price it from the catalog, saga EXECUTING",
    "ReserveInventory": "Task: reserve every line's stock in one transaction (pending)",
    "AuthorizePayment": "Task: authorize the total at the gateway (pending)",
    "ConfirmOrder": "Task: capture the payment, commit the reservation, confirm the order",
    "OrderConfirmed": "Succeed: the terminal state; Standard bills entering it like any state",
}


def measure() -> dict[str, Any]:
    quiet()
    ddb, lam = DynamoRecorder(), LambdaRecorder()
    ddb.install()  # before the stack starts: moto_patches wraps it in the DynamoDB lock
    lam.install()
    from common import start_stack

    events_dir = ROOT / "events"
    stack = start_stack()
    try:
        from order_saga.inventory import Inventory

        inventory = Inventory(stack.client("dynamodb"), stack.outputs["InventoryTableName"])
        for item in json.loads((events_dir / "catalog.json").read_text()):
            inventory.put_item(item["sku"], item["name"], int(item["price"]), item["currency"],
                               int(item["available"]))
        sfn = stack.client("stepfunctions")
        rows = []
        for spec in scenarios(events_dir):
            row = run_one(stack, sfn, spec, events_dir, ddb, lam)
            row["dollars_per_million"] = dollars(row)
            rows.append(row)
        template_memory = {p.spec.logical_id: p.spec.memory for p in stack.pools.values()}
    finally:
        stack.stop()
    happy = rows[0]
    return {"scenarios": rows, "prices": PRICES, "rules": RULES, "memory_mb": template_memory,
            "happy_path": {"transitions": happy["transitions"], "target": 6,
                           "states": [{"state": name, "why": HAPPY_EXPLAINED.get(name.split(" (")[0], "")}
                                      for name in happy["path"]]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    print("cost per saga: real histories and DynamoDB requests of every scenario, $ per million sagas")
    result = measure()
    print(f"  {'scenario':<48} {'status':<20} {'trans':>5} {'λ inv':>5} {'λ ms':>6} {'ddb req':>7} "
          f"{'WRU':>5} {'RRU':>5} {'STD $':>7} {'EXP $':>7} {'λ $':>7} {'DDB $':>7} {'tot STD':>8} {'tot EXP':>8}")
    for row in result["scenarios"]:
        d = row["dollars_per_million"]
        outcome = row["status"] + (f" {row['error']}" if row["error"] else "")
        print(f"  {row['name']:<48} {outcome[:20]:<20} {row['transitions']:>5} {row['lambda_invocations']:>5} "
              f"{row['lambda_billed_ms']:>6} {row['ddb_requests']:>7} {row['ddb_wru']:>5.0f} {row['ddb_rru']:>5.1f} "
              f"{d['standard']:>7.2f} {d['express']:>7.2f} {d['lambda']:>7.2f} {d['dynamodb']:>7.2f} "
              f"{d['total_standard']:>8.2f} {d['total_express']:>8.2f}")
    happy = result["happy_path"]
    print(f"  happy path: {happy['transitions']} state transitions (target <= {happy['target']}):")
    for state in happy["states"]:
        print(f"    {state['state']:<18} {state['why']}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
