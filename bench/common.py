"""What the benchmarks share: paths, HTTP with keep-alive, posting orders, waiting for executions, CPU by process.

Every order the benchmarks place goes through `post_order`, with the stack's own body and headers: the current
API needs a signed-in customer's ID token (signed in once per stack, through its user pool) and takes no
customer in the body; 5d5f643's API took `customer_id` in the body and no token. Every wait has a deadline.
"""

from __future__ import annotations

import http.client as httpclient
import json
import math
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, ".local", "bench")
SKU, BURST_SKU, BURST_STOCK = "BENCH-1", "BURST-50", 50
PATH_SKU, PATH_PRICE, SOLD_OUT = "BENCH-PATHS", 2500, "BENCH-SOLD-OUT"  # transitions per path (coupons, split cards)
CATALOG = [{"sku": SKU, "name": "Bench item", "price": 100, "currency": "USD", "available": 10_000_000},
           {"sku": PATH_SKU, "name": "Paths item", "price": PATH_PRICE, "currency": "USD", "available": 1_000_000},
           {"sku": SOLD_OUT, "name": "Sold out", "price": PATH_PRICE, "currency": "USD", "available": 0},
           {"sku": BURST_SKU, "name": "Burst item", "price": 100, "currency": "USD", "available": BURST_STOCK}]
# us-east-1 list prices, December 2026 (../shared/notes/aws-semantics.md; the services' pricing pages).
PRICES = {
    "transition": 25.0 / 1e6,  # Step Functions Standard, per state transition
    "lambda_request": 0.20 / 1e6,
    "gb_s": {"x86_64": 0.0000166667, "arm64": 0.0000133334},  # Lambda duration and INIT, per GB-second
    "wru": 0.625 / 1e6, "rru": 0.125 / 1e6,  # DynamoDB on demand
    "api_request": 3.50 / 1e6,  # API Gateway REST, first 333 million a month
    "waf_request": 0.60 / 1e6,  # AWS WAF, per request the web ACL inspects (plus $5/month the ACL, $1/month a rule)
    "event": 1.00 / 1e6,  # EventBridge custom events (PutEvents entries of up to 64 KB)
    "logs_gb": 0.50,  # CloudWatch Logs ingestion (standard class), per GB
    "trace": 5.00 / 1e6,  # X-Ray traces recorded (the first 100,000 a month are free)
    "sqs_request": 0.40 / 1e6,  # SQS standard queue requests (each 64 KB chunk)
}
HEADERS = {"Content-Type": "application/json"}
POLL_S = 0.02  # DescribeExecution interval where a stack cannot announce an execution's end
RETRIED = (429, 500, 502, 503, 504)

_local = threading.local()


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60.0) -> tuple[int, Any, dict[str, str]]:
    """One request on this thread's keep-alive connection to the URL's host: (status, JSON or text, headers)."""
    parts = urllib.parse.urlsplit(url)
    conns = _local.__dict__.setdefault("conns", {})
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    for attempt in range(2):
        conn = conns.get(parts.netloc)
        if conn is None:
            conn = conns[parts.netloc] = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            break
        except (OSError, httpclient.HTTPException):
            conn.close()
            conns.pop(parts.netloc, None)
            if attempt:
                raise
    try:
        payload = json.loads(raw or b"null")
    except ValueError:
        payload = raw.decode(errors="replace")
    return response.status, payload, dict(response.getheaders())


def order_body(stack: Any, sku: str = SKU) -> bytes:
    order: dict[str, Any] = {"items": [{"sku": sku, "quantity": 1}], "payment_token": "tok_approve"}
    if getattr(stack, "legacy_api", False):  # 5d5f643: the customer in the body, no sign-in
        order["customer_id"] = "bench"
    return json.dumps(order).encode()


def post_order(stack: Any, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST /orders once: (status, body). Every order of every benchmark goes through here."""
    status, payload, _ = http("POST", f"{stack.api}/orders", body,
                              {**HEADERS, **getattr(stack, "auth", {}), **(headers or {})})
    return status, payload


def execution_arn(stack: Any, accepted: dict[str, Any]) -> str:
    """The execution an accepted order started (5d5f643 answered it; the current API does not disclose it)."""
    if "execution_arn" in accepted:
        return str(accepted["execution_arn"])
    machine = str(stack.outputs["StateMachineArn"])
    return f"{machine.replace(':stateMachine:', ':execution:')}:{accepted['order_id']}"


def place(stack: Any, sku: str = SKU, attempts: int = 8) -> tuple[str, int]:
    """POST /orders as a careful client: 429/5xx retried with the same key. (execution ARN, answers retried)."""
    key, body = uuid.uuid4().hex, order_body(stack, sku)
    for attempt in range(attempts):
        status, payload = post_order(stack, body, {"Idempotency-Key": key})
        if status in (200, 201, 202):
            return execution_arn(stack, payload), attempt
        if status not in RETRIED or attempt == attempts - 1:
            raise RuntimeError(f"POST /orders answered {status}: {str(payload)[:300]}")
        time.sleep(min(2.0, 0.1 * 2 ** attempt))
    raise AssertionError("unreachable")


def wait_end(stack: Any, arn: str, timeout: float = 120.0, poll: float = POLL_S,
             announced: bool | None = None) -> dict[str, Any]:
    """The ended execution: the embedded stack announces it (no polling); other stacks are polled every `poll` s.
    `announced=False` polls a stack that could announce (the same end detection as the others)."""
    announced = stack.announces_ends if announced is None else announced and stack.announces_ends
    deadline = time.monotonic() + timeout
    while True:
        if announced:
            query = urllib.parse.urlencode({"arn": arn, "timeout": max(0.1, deadline - time.monotonic())})
            http("GET", f"{stack.endpoint}/_sagalocal/executions/wait?{query}", timeout=timeout + 10)
        described = stack.sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(f"{arn} still RUNNING after {timeout:.0f} s")
        if not announced:
            time.sleep(poll)


def saga(stack: Any, sku: str = SKU, poll: float = POLL_S, announced: bool | None = None) -> dict[str, Any]:
    """One saga, POST to its end: wall ms as the client saw it, and ms to the stopDate the stack stamped."""
    started_at, started = time.time(), time.perf_counter()
    arn, retried = place(stack, sku)
    posted = time.perf_counter()
    described = wait_end(stack, arn, poll=poll, announced=announced)
    return {"arn": arn, "status": described["status"], "retried": retried,
            "post_ms": (posted - started) * 1000, "wall_ms": (time.perf_counter() - started) * 1000,
            "stop_ms": (described["stopDate"].timestamp() - started_at) * 1000}


def path_order(sku: str, extra: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    """One unit of `sku` (priced PATH_PRICE), `extra` fields (a coupon), paid by one card or split over `tokens`."""
    order: dict[str, Any] = {"items": [{"sku": sku, "quantity": 1}], **extra}
    total = PATH_PRICE - (500 if "coupon" in extra else 0)  # FIVEOFF: 5.00 off
    if len(tokens) == 1:
        order["payment_token"] = tokens[0]
    else:
        order["payment"] = [{"token": t, "amount": total // len(tokens) + (total % len(tokens) if i == 0 else 0)}
                            for i, t in enumerate(tokens)]
    return order


def billed_transitions(events: list[dict[str, Any]]) -> tuple[int, int]:
    """(state transitions Standard bills, tasks scheduled) of one execution's history: each state entered, a Map's
    iterations' states included, and each task's retry (a task scheduled again in the state it entered)."""
    entered = sum(e["type"].endswith("StateEntered") for e in events)
    scheduled = sum(e["type"] in ("TaskScheduled", "LambdaFunctionScheduled") for e in events)
    tasks = sum(e["type"] == "TaskStateEntered" for e in events)
    return entered + max(0, scheduled - tasks), scheduled


def history(stack: Any, arn: str) -> list[dict[str, Any]]:
    events, token = [], None
    while True:
        page = stack.sfn.get_execution_history(executionArn=arn, maxResults=1000, **({"nextToken": token} if token
                                                                                    else {}))
        events += page["events"]
        token = page.get("nextToken")
        if not token:
            return events


# ---- CPU by process -----------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def processes(root: int) -> list[tuple[int, str, float]]:
    """(pid, command line, CPU seconds user + system) of `root` and every process below it."""
    table: dict[int, tuple[int, str, float]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(pid)] = (int(stat[1]), cmd, (int(stat[11]) + int(stat[12])) / _TICK)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append((pid, table[pid][1], table[pid][2]))
            todo += [child for child, row in table.items() if row[0] == pid]
    return found


def role_of(cmd: str, roles: dict[str, str]) -> str:
    return next((role for key, role in roles.items() if key in cmd), "stack process")


def group_cpu(root: int, roles: dict[str, str]) -> dict[str, float]:
    """CPU seconds of the process tree under `root`, summed by role (`roles`: command-line substring -> role)."""
    out: dict[str, float] = {}
    for _, cmd, cpu in processes(root):
        out[role_of(cmd, roles)] = out.get(role_of(cmd, roles), 0.0) + cpu
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float], per: int) -> dict[str, float]:
    """ms per unit of work, by role (a process that ended in between is left out)."""
    return {role: (after[role] - before.get(role, 0.0)) * 1000 / max(1, per) for role in sorted(after)}


# ---- statistics and small things ---------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def extract(commit: str, folder: Path) -> Path:
    """`commit`'s tree in `folder` (`git archive`, once: a folder that holds its template is kept)."""
    if not (folder / "template.yaml").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
