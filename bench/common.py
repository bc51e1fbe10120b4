"""What the benchmarks share: paths, the happy-path order, starting the embedded stack, statistics, results files.

Every benchmark is a script that prints its figures and, with --json PATH, writes them for
bench/run_all.py, which renders docs/benchmarks.md. A benchmark never fails for being slow.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "src")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

PY = sys.executable
RESULTS_DIR = ROOT / ".local" / "bench"
SAM_BUILD_DIR = Path(os.environ.get("BENCH_SAM_BUILD_DIR", "/tmp/sam-build-bench"))  # noqa: S108 - as documented
SAM_CACHE_DIR = Path(os.environ.get("BENCH_SAM_CACHE_DIR", "/tmp/sam-build-bench-cache"))  # noqa: S108
SKU = "BENCH-1"
ORDER = {"customer_id": "bench", "items": [{"sku": SKU, "quantity": 1}], "payment_token": "tok_approve"}
FORWARD = ["create_order", "reserve_inventory", "authorize_payment", "confirm_order"]
HANDLERS = ["orders_api", "create_order", "reserve_inventory", "authorize_payment", "confirm_order",
            "refund_payment", "void_payment", "release_inventory", "cancel_order", "park_saga", "reaper"]


def quiet() -> None:
    """The stack logs every caught error and Powertools warns about empty metrics: not figures."""
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")


@contextlib.contextmanager
def silenced_stdout():
    """Handlers called in this process print their EMF metrics lines to stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def start_stack(**kwargs: Any):
    """The embedded stack in this process, the reaper's schedule effectively off, one item in stock."""
    from sagalocal.stack import LocalStack, free_port

    kwargs.setdefault("api_port", free_port())
    kwargs.setdefault("schedule_seconds", 1e9)  # no reaper sweep in the middle of a measurement
    kwargs.setdefault("log_dir", RESULTS_DIR / "logs")
    stack = LocalStack(ROOT / "template.yaml", **kwargs).start()
    seed(stack.client("dynamodb"), stack.outputs["InventoryTableName"])
    return stack


def seed(ddb: Any, table: str, stock: int = 10_000_000) -> None:
    from order_saga.inventory import Inventory

    Inventory(ddb, table).put_item(SKU, "Bench item", 100, "USD", stock)


def place_order(api_url: str, order: dict[str, Any] | None = None, key: str | None = None) -> dict[str, Any]:
    from sagalocal.scenarios import http

    status, accepted = http("POST", f"{api_url}/orders", json.dumps(order or ORDER).encode(),
                            {"Idempotency-Key": key or uuid.uuid4().hex})
    if status != 202:
        raise RuntimeError(f"POST /orders answered {status}: {accepted}")
    return accepted


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, default=str))


def json_arg(argv: list[str] | None = None) -> str | None:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json")
    known, _ = parser.parse_known_args(argv)
    return known.json


def pyenv_env() -> dict[str, str]:
    """The environment `sam build` needs: python3.13 on PATH (pyenv), the venv's sam, no telemetry."""
    env = dict(os.environ)
    env.setdefault("PYENV_VERSION", "3.13.0:3.11.7")
    env["SAM_CLI_TELEMETRY"] = "0"
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def sam_build(timeout: float = 300) -> dict[str, Any]:
    """`sam build` into SAM_BUILD_DIR (cached in SAM_CACHE_DIR). Returns what happened, never raises."""
    sam = shutil.which("sam", path=pyenv_env()["PATH"])
    if sam is None:
        return {"ok": False, "error": "sam not found in .venv/bin or on PATH"}
    cmd = [sam, "build", "--template-file", str(ROOT / "template.yaml"), "--build-dir", str(SAM_BUILD_DIR),
           "--cached", "--cache-dir", str(SAM_CACHE_DIR), "--parallel"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=pyenv_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s"}
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not (SAM_BUILD_DIR / "template.yaml").exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return {"ok": False, "error": f"`{' '.join(cmd)}` exited {proc.returncode}: {' | '.join(tail)}",
                "seconds": seconds}
    return {"ok": True, "seconds": round(seconds, 1), "command": " ".join(cmd), "build_dir": str(SAM_BUILD_DIR)}


def warm_all_workers(stack: Any, functions: list[str] | None = None) -> None:
    """Start every pool's max_workers processes now, so no measured saga waits for a worker's imports.

    Uses WorkerPool's acquire/release (sagalocal/workers.py); if they change, the pools warm as they grow.
    """
    import concurrent.futures

    pools = [pool for logical_id, pool in stack.pools.items() if functions is None or logical_id in functions]

    def fill(pool: Any) -> None:
        acquire, release = getattr(pool, "_acquire", None), getattr(pool, "_release", None)
        if acquire is None or release is None:
            return
        held = [acquire() for _ in range(pool.max_workers)]
        for worker in held:
            release(worker)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        list(executor.map(fill, pools))
