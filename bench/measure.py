"""What is measured on a running stack (bench/stacks.py): latency, requests and units, throughput, POST/s, burst."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common as cm
from common import PRICES as LIST_PRICES
from common import (
    billed_transitions,
    cpu_delta,
    history,
    http,
    median,
    pct,
    place,
    processes,
    role_of,
    saga,
    wait_end,
)

# $ per million, from the one price table (common.PRICES, per unit)
PRICES = {name: LIST_PRICES[name] * 1e6 for name in ("wru", "rru", "transition", "lambda_request")}


def interleaved_latency(stacks: list[Any], n: int, warmup: int = 3) -> dict[str, dict[str, Any]]:
    """n happy sagas on each stack, one at a time, taking turns (every stack sees the same machine load)."""
    for stack in stacks:
        for _ in range(warmup):
            saga(stack)
    samples: dict[str, list[dict[str, Any]]] = {s.name: [] for s in stacks}
    polled: dict[str, list[float]] = {s.name: [] for s in stacks if s.announces_ends}
    cpu_before = {s.name: s.cpu() for s in stacks}
    handlers_before = {s: handler_cpu_ms(s) for s in stacks if s.announces_ends}
    for _ in range(n):
        for stack in stacks:
            samples[stack.name].append(saga(stack))
    cpu_after = {s.name: s.cpu() for s in stacks}
    handlers = {s.name: (handler_cpu_ms(s) - ms) / n for s, ms in handlers_before.items()}
    # A stack that announces its executions' ends, also detected as the others' are (DescribeExecution polled from
    # the bench every 20 ms): the same end detection for every stack compared. After the CPU was read, taking turns
    # with the others again (their sagas of this round are not counted: the machine's load is the same as above).
    failed = 0
    for _ in range(n):
        for stack in stacks:
            run = saga(stack, announced=False)
            failed += run["status"] != "SUCCEEDED"
            if stack.announces_ends:
                polled[stack.name].append(run["wall_ms"])
    out = {}
    for stack in stacks:
        rows = samples[stack.name]
        wall = [r["wall_ms"] for r in rows]
        out[stack.name] = {
            "median_polled_ms": median(polled[stack.name]) if stack.announces_ends else median(wall),
            "n": n, "median_ms": median(wall), "p95_ms": pct(wall, 95),
            "median_stop_ms": median([r["stop_ms"] for r in rows]),
            "median_post_ms": median([r["post_ms"] for r in rows]),
            "failed": sum(r["status"] != "SUCCEEDED" for r in rows) + (failed if stack.announces_ends else 0),
            "cpu_ms_per_saga": cpu_delta(cpu_before[stack.name], cpu_after[stack.name], n),
            "handler_cpu_ms_per_saga": handlers.get(stack.name),
            "end_detection": "announced by the stack (/_sagalocal/executions/wait)" if stack.announces_ends
            else f"DescribeExecution polled every {int(1000 * 0.02)} ms from the bench process"}
    return out


def handler_cpu_ms(stack: Any) -> float:
    """The CPU milliseconds the stack's handlers have spent so far, their SDK calls included (what each sandbox
    measured around each call, /_sagalocal/lambda/stats): the part of a saga's CPU that would run on AWS."""
    functions = http("GET", f"{stack.endpoint}/_sagalocal/lambda/stats")[1]["functions"]
    return float(sum(f.get("handler_cpu_ms", 0.0) for f in functions.values()))


def state_times(events: list[dict[str, Any]]) -> dict[str, float]:
    """ms in each state of one execution (entered -> exited), from its history's timestamps."""
    entered, out = {}, {}
    for event in events:
        for kind, details in event.items():
            if kind.lower().endswith("stateenteredeventdetails"):
                entered[details["name"]] = event["timestamp"]
            elif kind.lower().endswith("stateexitedeventdetails") and details["name"] in entered:
                out[details["name"]] = (event["timestamp"] - entered[details["name"]]).total_seconds() * 1000
    return out


def per_saga_counts(stack: Any, k: int) -> dict[str, Any]:
    """DynamoDB requests, units, transitions and Lambda requests per happy saga (k sagas, one at a time)."""
    from stacks import reset_recording

    if hasattr(stack, "dynamodb_endpoint"):
        stats = f"{stack.dynamodb_endpoint}/_sagalocal/stats"
        before = http("GET", stats)[1]
    else:
        reset_recording(stack, True)
    arns = [saga(stack)["arn"] for _ in range(k)]
    out: dict[str, Any] = {"k": k}
    if hasattr(stack, "dynamodb_endpoint"):
        after = http("GET", stats)[1]
        out["requests"] = (after["total_requests"] - before["total_requests"]) / k
        out["wru"] = (after["total_wru"] - before["total_wru"]) / k
        out["rru"] = (after["total_rru"] - before["total_rru"]) / k
        out["by_operation"] = {op: (n - before["requests"].get(op, 0)) / k for op, n in after["requests"].items()
                               if n != before["requests"].get(op, 0)}
        out["conflicts"] = after.get("conflicts", 0) - before.get("conflicts", 0)
        out["source"] = "the DynamoDB process's own counters (/_sagalocal/stats), before and after"
    else:
        reset_recording(stack, False)
        ops: collections.Counter[str] = collections.Counter()
        with open(stack.recording) as f:
            for line in f:
                target = json.loads(line)["headers"].get("X-Amz-Target", "")
                if target.startswith("DynamoDB_"):
                    ops[target.split(".")[-1]] += 1
        out["requests"] = sum(ops.values()) / k
        out["by_operation"] = {op: n / k for op, n in ops.items()}
        out["source"] = "moto's request recorder on the baseline's server, around the sagas"
    transitions = lambdas = 0
    states: dict[str, list[float]] = collections.defaultdict(list)
    for arn in arns:
        events = history(stack, arn)
        billed, scheduled = billed_transitions(events)
        transitions += billed
        lambdas += 1 + scheduled  # the API's invocation and each task's
        for name, ms in state_times(events).items():
            states[name].append(ms)
    out["transitions"], out["lambda_requests"] = transitions / k, lambdas / k
    out["state_ms"] = {name: median(v) for name, v in states.items()}
    return out


# The kinds of order whose paths differ: (name, extra body fields, payment tokens).
PATHS = [("plain, one card", {}, ["tok_approve"]),
         ("coupon", {"coupon": "FIVEOFF"}, ["tok_approve"]),
         ("2 cards", {}, ["tok_approve"] * 2),
         ("3 cards", {}, ["tok_approve"] * 3),
         ("coupon, 3 cards", {"coupon": "FIVEOFF"}, ["tok_approve"] * 3),
         ("declined", {}, ["tok_decline"]),
         ("coupon, declined", {"coupon": "FIVEOFF"}, ["tok_decline"]),
         ("2 cards, one declined", {}, ["tok_approve", "tok_decline"]),
         ("out of stock", {"sku": "sold out"}, ["tok_approve"])]


def transitions_per_path(stack: Any) -> list[dict[str, Any]]:
    """State transitions (what Standard workflows bill), Lambda requests and $ per million sagas for each kind of
    order, one saga each: the paths differ by a coupon, a split payment, a decline."""
    from common import PATH_SKU, SOLD_OUT, execution_arn, path_order, post_order

    rows = []
    for name, extra, tokens in PATHS:
        extra = dict(extra)
        order = path_order(SOLD_OUT if extra.pop("sku", None) else PATH_SKU, extra, tokens)
        status, accepted = post_order(stack, json.dumps(order).encode(), {"Idempotency-Key": uuid.uuid4().hex})
        if status != 202:
            raise RuntimeError(f"{name}: POST /orders answered {status}: {str(accepted)[:300]}")
        arn = execution_arn(stack, accepted)
        described = wait_end(stack, arn)
        events = history(stack, arn)
        transitions, scheduled = billed_transitions(events)
        rows.append({"path": name, "status": described["status"], "error": described.get("error"),
                     "states": [e["stateEnteredEventDetails"]["name"] for e in events if e["type"].endswith(
                         "StateEntered")], "transitions": transitions, "lambda_requests": 1 + scheduled,
                     "usd_per_million": transitions * PRICES["transition"]
                     + (1 + scheduled) * PRICES["lambda_request"]})
    return rows


def cost(counts: dict[str, Any], wru: float, rru: float) -> dict[str, float]:
    """$ per million happy sagas on AWS: DynamoDB on demand, Standard transitions, Lambda requests."""
    parts = {"DynamoDB": wru * PRICES["wru"] + rru * PRICES["rru"],
             "Step Functions": counts["transitions"] * PRICES["transition"],
             "Lambda requests": counts["lambda_requests"] * PRICES["lambda_request"]}
    return {**parts, "total": sum(parts.values())}


def throughput(stack: Any, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` threads place a saga and wait for its end, again and again, for `seconds` (after a warm-up)."""
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: [saga(stack) for _ in range(2)], range(clients)))  # sandboxes scale out first
        stop_at = time.monotonic() + seconds
        cpu_before, started = stack.cpu(True), time.perf_counter()

        def client(_: int) -> list[dict[str, Any]]:
            done = []
            while time.monotonic() < stop_at:  # polling stacks: 50 DescribeExecution/s in all, as with one client
                done.append(saga(stack, poll=cm.POLL_S * clients))
            return done

        rows = [r for chunk in pool.map(client, range(clients)) for r in chunk]
        elapsed = time.perf_counter() - started
    wall = [r["wall_ms"] for r in rows]
    return {"clients": clients, "sagas": len(rows), "seconds": elapsed, "per_s": len(rows) / elapsed,
            "p50_ms": median(wall), "p95_ms": pct(wall, 95), "failed": sum(r["status"] != "SUCCEEDED" for r in rows),
            "cpu_ms_per_saga": cpu_delta(cpu_before, stack.cpu(True), len(rows))}


def post_rate(stack: Any, threads: int, seconds: float) -> dict[str, Any]:
    """Many concurrent POST /orders (no retries) for `seconds`, after one POST per thread (not counted) so the
    API's sandboxes have scaled out; then every accepted saga is awaited. CPU by process per accepted POST
    (the sagas they start run at the same time, on the same 2 cores)."""
    statuses: collections.Counter[int] = collections.Counter()
    arns: list[str] = []
    lock = threading.Lock()

    def client(stop_at: float) -> None:
        while True:
            status, payload = cm.post_order(stack, cm.order_body(stack), {"Idempotency-Key": os.urandom(12).hex()})
            with lock:
                statuses[status] += 1
                if status in (200, 201, 202):
                    arns.append(cm.execution_arn(stack, payload))
            if time.monotonic() >= stop_at:
                return

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, [0.0] * threads))  # warm-up
        wait_all(stack, arns, 300)
        statuses.clear()
        arns.clear()
        cpu_before, started = stack.cpu(True), time.perf_counter()
        list(pool.map(client, [time.monotonic() + seconds] * threads))
        elapsed = time.perf_counter() - started
        cpu = cpu_delta(cpu_before, stack.cpu(True), len(arns))
    ended = wait_all(stack, arns, 300)
    return {"threads": threads, "seconds": elapsed, "accepted_per_s": len(arns) / elapsed, "cpu_ms_per_post": cpu,
            "statuses": dict(statuses), "drained": sum(s != "RUNNING" for s in ended.values()), "accepted": len(arns)}


def wait_all(stack: Any, arns: list[str], timeout: float) -> dict[str, str]:
    def end(arn: str) -> str:
        try:
            return wait_end(stack, arn, timeout, poll=0.25)["status"]
        except TimeoutError:
            return "RUNNING"
    with ThreadPoolExecutor(16 if stack.announces_ends else 4) as pool:
        return dict(zip(arns, pool.map(end, arns), strict=True))


def burst(stack: Any, orders: int) -> dict[str, Any]:
    """`orders` orders at once against cm.BURST_STOCK units; every one awaited, every history read for timeouts
    the emulator made (States.Timeout, or a Lambda 'Task timed out')."""
    barrier = threading.Barrier(orders)

    def one(_: int) -> tuple[str, int]:
        barrier.wait()
        return place(stack, cm.BURST_SKU, attempts=12)

    started = time.perf_counter()
    with ThreadPoolExecutor(orders) as pool:
        placed = list(pool.map(one, range(orders)))
    posted_s = time.perf_counter() - started
    ended = wait_all(stack, [arn for arn, _ in placed], 600)
    timeouts, outcomes = [], collections.Counter()
    for arn, status in ended.items():
        events = json.dumps(history(stack, arn), default=str)
        if "States.Timeout" in events or "Task timed out" in events:
            timeouts.append(arn)
        outcomes[status] += 1
    return {"orders": orders, "stock": cm.BURST_STOCK, "posted_s": posted_s,
            "all_ended_s": time.perf_counter() - started,
            "outcomes": dict(outcomes), "retried_posts": sum(r for _, r in placed),
            "emulator_timeouts": len(timeouts), "timed_out": timeouts[:5]}


def profile(stack: Any, seconds: float) -> dict[str, Any]:
    """py-spy (--gil: samples only while a thread holds the GIL, i.e. Python CPU) on every process of the stack
    that used CPU during a few warm-up sagas, while happy sagas run back to back: own time by function and role."""
    before = {pid: cpu for pid, _, cpu in processes(stack.proc.pid)}
    for _ in range(10):
        saga(stack)
    busy = [(pid, cmd) for pid, cmd, cpu in processes(stack.proc.pid) if cpu - before.get(pid, cpu) > 0.005]
    spies = []
    for pid, cmd in busy:
        out = os.path.join(cm.OUT, f"py-spy-{stack.name}-{pid}.txt")
        spies.append((role_of(cmd, stack.roles), out, subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid", str(pid), "--gil",
             "--nonblocking", "--nolineno", "--format", "raw", "--rate", "100", "--duration", str(int(seconds)),
             "--output", out],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    time.sleep(0.5)  # py-spy attaches
    n = 0
    while any(p.poll() is None for _, _, p in spies):
        saga(stack)
        n += 1
    by_role: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_module: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for role, out, _ in spies:
        if os.path.exists(out):
            with open(out) as f:
                for line in f:
                    frames, _, count = line.rstrip().rpartition(" ")
                    leaf = frames.split(";")[-1]
                    by_role[role][leaf] += int(count)
                    by_module[role]["/".join(leaf.partition("(")[2].rstrip(")").split("/")[:2])] += int(count)
    per_saga = 10.0 / max(1, n)  # ms per sample at 100 Hz, per saga
    return {"sagas": n, "seconds": seconds, "processes": len(spies),
            "role_ms": {role: sum(c.values()) * per_saga for role, c in by_role.items()},
            "top": {role: [(fn, count * per_saga) for fn, count in c.most_common(6)] for role, c in by_role.items()},
            "modules": {role: [(m, count * per_saga) for m, count in c.most_common(6)]
                        for role, c in by_module.items()}}
