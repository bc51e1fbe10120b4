"""Benchmark 5, cold start: each handler module's initialization against `import boto3`, and package sizes.

  init      a fresh interpreter imports the handler module (app.py): its imports and module-scope
            setup (boto3 clients, Powertools Logger/Tracer/Metrics, pydantic models), timed inside the
            process with perf_counter, so the interpreter's own start-up is left out. The baseline is
            `import boto3` alone, timed the same way in the same interpreter. Runs are interleaved
            (every row once, N rounds) so all see the same machine load; the median of each is
            reported, and the ratio init / import boto3. Target: <= 1.3x.
            As on Lambda: Python 3.13 with boto3 and botocore installed (compiled, like the runtime's)
            in .local/bench/lambda-runtime-venv; the function's code and the SagaLayer exactly as
            `sam build` made them (no .pyc files) on PYTHONPATH, with PYTHONDONTWRITEBYTECODE=1 since
            /opt and /var/task are read-only on Lambda: every cold start compiles the layer's modules.
            Extra rows: the layer precompiled (compileall, unchecked-hash), tracing disabled, and the
            project's dev venv (Python 3.11, functions/ and src/ with their .pyc).
            Environment: every table/queue/ARN variable the handlers read, PAYMENT_GATEWAY=fake, and
            LAMBDA_TASK_ROOT + AWS_LAMBDA_FUNCTION_NAME as on Lambda. POWERTOOLS_TRACE_DISABLED is NOT
            set, so Powertools' Tracer imports aws-xray-sdk and patches botocore, as on Lambda with the
            template's Tracing: Active. One handler is also measured with tracing disabled.
  imports   `python -X importtime` of two handlers, grouped by top-level package (self time).
  packages  the size of each function and of the layer after `sam build` (unzipped and zipped).

Usage: python bench/coldstart.py [--runs 15] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HANDLERS, PY, RESULTS_DIR, ROOT, SAM_BUILD_DIR, median, pyenv_env, sam_build, write_json  # noqa: E402

LOGICAL = {"orders_api": "OrdersApiFunction", "create_order": "CreateOrderFunction",
           "reserve_inventory": "ReserveInventoryFunction", "authorize_payment": "AuthorizePaymentFunction",
           "confirm_order": "ConfirmOrderFunction", "refund_payment": "RefundPaymentFunction",
           "void_payment": "VoidPaymentFunction", "release_inventory": "ReleaseInventoryFunction",
           "cancel_order": "CancelOrderFunction", "park_saga": "ParkSagaFunction", "reaper": "ReaperFunction"}

RUNTIME_VENV = RESULTS_DIR / "lambda-runtime-venv"
RUNTIME_REQUIREMENTS = ["boto3==1.43.108", "botocore==1.43.127", "jmespath==1.1.0", "python-dateutil==2.9.0.post0",
                        "s3transfer==0.19.3", "six==1.17.0", "urllib3==2.8.0"]
PRECOMPILED_LAYER = RESULTS_DIR / "layer-precompiled"
NO_BOTOCORE_LAYER = RESULTS_DIR / "layer-without-botocore"
ENV = {
    "ORDERS_TABLE": "order-saga-dev-OrdersTable", "INVENTORY_TABLE": "order-saga-dev-InventoryTable",
    "PAYMENTS_TABLE": "order-saga-dev-PaymentsTable", "IDEMPOTENCY_TABLE": "order-saga-dev-IdempotencyTable",
    "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:order-saga-dev",
    "PARKED_SAGAS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/order-saga-parked-dev.fifo",
    "PAYMENT_GATEWAY": "fake", "FAKE_GATEWAY_HANG_SECONDS": "3600",
    "LEASE_SECONDS": "20", "SAGA_DEADLINE_SECONDS": "60", "RESERVATION_TTL_SECONDS": "300",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
    "POWERTOOLS_SERVICE_NAME": "order-saga", "POWERTOOLS_METRICS_NAMESPACE": "OrderSaga",
    "POWERTOOLS_LOG_LEVEL": "INFO", "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
}
TIMED = ("import sys, time\n"
         "started = time.perf_counter()\n"
         "import {module}\n"
         "print((time.perf_counter() - started) * 1000)\n")


class Setup:
    """Where a module is imported from: an interpreter and the paths its handler code comes from."""

    def __init__(self, name: str, python: str, code: Any, layer: Path | None, read_only: bool) -> None:
        self.name, self.python, self.code, self.layer, self.read_only = name, python, code, layer, read_only

    def environment(self, handler: str | None, tracing: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        env.update(ENV)
        if self.read_only:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        if handler is not None:
            code = self.code(handler)
            env["LAMBDA_TASK_ROOT"] = str(code)
            env["AWS_LAMBDA_FUNCTION_NAME"] = f"order-saga-dev-{handler}"
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (code, self.layer) if p is not None)
        if not tracing:
            env["POWERTOOLS_TRACE_DISABLED"] = "true"
        return env

    def cwd(self, handler: str | None) -> Path:
        return self.code(handler) if handler else RESULTS_DIR

    def timed_import(self, handler: str | None, tracing: bool = True) -> float:
        module = "app" if handler else "boto3"
        proc = subprocess.run([self.python, "-c", TIMED.format(module=module)], cwd=self.cwd(handler),
                              env=self.environment(handler, tracing), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: importing {module} for {handler}: "
                               f"{proc.stderr.strip().splitlines()[-1:]}")
        return float(proc.stdout.strip().splitlines()[-1])

    def import_times(self, handler: str) -> dict[str, Any]:
        """python -X importtime: self time grouped by top-level package, and app's direct imports."""
        proc = subprocess.run([self.python, "-X", "importtime", "-c", "import app"], cwd=self.cwd(handler),
                              env=self.environment(handler), capture_output=True, text=True, timeout=120)
        by_package: collections.Counter[str] = collections.Counter()
        direct: list[tuple[str, int]] = []
        total = 0
        for line in proc.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if not match:
                continue
            self_us, cum_us, depth, name = (int(match.group(1)), int(match.group(2)),
                                            (len(match.group(3)) - 1) // 2, match.group(4))
            by_package[name.split(".")[0]] += self_us
            total += self_us
            if depth == 1:  # imported by app itself
                direct.append((name, cum_us))
            if name == "app":
                direct.append(("app (module body: clients, Powertools objects)", self_us))
        return {
            "handler": handler, "setup": self.name, "total_ms": total / 1000,
            "by_package": [{"package": k, "ms": v / 1000, "share": v / max(1, total)}
                           for k, v in by_package.most_common(12)],
            "direct": [{"module": n, "ms": us / 1000} for n, us in sorted(direct, key=lambda x: -x[1])[:10]],
        }


def ensure_runtime_venv() -> str | None:
    """Python 3.13 with boto3/botocore as the Lambda runtime provides them (compiled). None if unavailable."""
    import hashlib
    import shutil

    python = RUNTIME_VENV / "bin" / "python"
    stamp = RUNTIME_VENV / ".bench-requirements"
    wanted = hashlib.sha256("\n".join(RUNTIME_REQUIREMENTS).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python)
    py313 = shutil.which("python3.13", path=pyenv_env()["PATH"])
    if py313 is None:
        return None
    shutil.rmtree(RUNTIME_VENV, ignore_errors=True)
    subprocess.run([py313, "-m", "venv", str(RUNTIME_VENV)], env=pyenv_env(), check=True, timeout=120)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *RUNTIME_REQUIREMENTS], check=True, timeout=600)
    stamp.write_text(wanted)
    return str(python)


def precompiled_layer(python: str) -> Path:
    import shutil

    source = SAM_BUILD_DIR / "SagaLayer" / "python"
    shutil.rmtree(PRECOMPILED_LAYER, ignore_errors=True)
    shutil.copytree(source, PRECOMPILED_LAYER)
    subprocess.run([python, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
                    str(PRECOMPILED_LAYER)], check=True, capture_output=True, timeout=300)
    return PRECOMPILED_LAYER


def layer_without_botocore() -> Path:
    """The layer as built, less the botocore aws-xray-sdk pulled in: boto3 then loads the runtime's."""
    import shutil

    source = SAM_BUILD_DIR / "SagaLayer" / "python"
    shutil.rmtree(NO_BOTOCORE_LAYER, ignore_errors=True)
    shutil.copytree(source, NO_BOTOCORE_LAYER, ignore=lambda folder, names: [
        n for n in names if folder == str(source) and (n == "botocore" or n.startswith("botocore-"))])
    return NO_BOTOCORE_LAYER


def package_sizes() -> dict[str, Any]:
    if not (SAM_BUILD_DIR / "template.yaml").exists():
        built = sam_build()
        if not built["ok"]:
            return {"error": built["error"]}
    rows = []
    for folder in sorted(p for p in SAM_BUILD_DIR.iterdir() if p.is_dir()):
        files = [f for f in folder.rglob("*") if f.is_file()]
        unzipped = sum(f.stat().st_size for f in files)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for f in files:
                archive.write(f, f.relative_to(folder))
        rows.append({"name": folder.name, "files": len(files), "unzipped": unzipped, "zipped": buffer.tell()})
    layer = SAM_BUILD_DIR / "SagaLayer" / "python"
    contents = []
    if layer.is_dir():
        sizes: collections.Counter[str] = collections.Counter()
        for f in layer.rglob("*"):
            if f.is_file():
                top = f.relative_to(layer).parts[0]
                top = re.sub(r"-[0-9][^-]*\.(dist-info|data)$", "", top)  # fold dist-info into its package
                sizes[top] += f.stat().st_size
        contents = [{"package": k, "bytes": v} for k, v in sizes.most_common(10)]
        versions = {p.name.split("-")[0]: p.name.split("-")[1].removesuffix(".dist-info")
                    for p in layer.glob("*.dist-info")}
    else:
        versions = {}
    return {"build_dir": str(SAM_BUILD_DIR), "artifacts": rows, "layer_contents": contents, "layer_versions": versions}


def measure(runs: int) -> dict[str, Any]:
    dev = Setup("dev venv (Python 3.11, functions/ + src/, .pyc cached)", PY,
                lambda h: ROOT / "functions" / h, ROOT / "src", read_only=False)
    notes = []
    built = (SAM_BUILD_DIR / "template.yaml").exists() or sam_build()["ok"]
    runtime = ensure_runtime_venv() if built else None
    if runtime is not None:
        lam = Setup("Lambda-like (Python 3.13, sam build output, layer without .pyc, read-only)", runtime,
                    lambda h: SAM_BUILD_DIR / LOGICAL[h], SAM_BUILD_DIR / "SagaLayer" / "python", read_only=True)
        pre = Setup("Lambda-like, layer precompiled (compileall --invalidation-mode unchecked-hash)", runtime,
                    lambda h: SAM_BUILD_DIR / LOGICAL[h], precompiled_layer(runtime), read_only=True)
        slim = Setup("Lambda-like, layer without its botocore (boto3 uses the runtime's)", runtime,
                     lambda h: SAM_BUILD_DIR / LOGICAL[h], layer_without_botocore(), read_only=True)
        primary = lam
        # row -> (setup, handler or None for `import boto3`, tracing, baseline row)
        plan = {"import boto3": (lam, None, True, "import boto3")}
        plan.update({h: (lam, h, True, "import boto3") for h in HANDLERS})
        plan["create_order, layer without botocore"] = (slim, "create_order", True, "import boto3")
        plan["create_order, layer precompiled"] = (pre, "create_order", True, "import boto3")
        plan["orders_api, layer precompiled"] = (pre, "orders_api", True, "import boto3")
        plan["create_order, tracing disabled"] = (lam, "create_order", False, "import boto3")
        plan["import boto3 (dev venv)"] = (dev, None, True, "import boto3 (dev venv)")
        plan["create_order (dev venv)"] = (dev, "create_order", True, "import boto3 (dev venv)")
    else:
        notes.append("python3.13 or the sam build output is missing: measured in the dev venv only")
        primary = pre = dev
        plan = {"import boto3": (dev, None, True, "import boto3")}
        plan.update({h: (dev, h, True, "import boto3") for h in HANDLERS})
        plan["create_order, tracing disabled"] = (dev, "create_order", False, "import boto3")
    samples: dict[str, list[float]] = {row: [] for row in plan}
    for round_number in range(runs + 1):  # round 0 warms the page cache and is not counted
        for row, (setup, handler, tracing, _base) in plan.items():
            value = setup.timed_import(handler, tracing)
            if round_number:
                samples[row].append(value)
    rows = []
    for row, (setup, handler, _tracing, base) in plan.items():
        value, baseline = median(samples[row]), median(samples[base])
        rows.append({"module": row, "setup": setup.name, "median_ms": value, "ratio": value / baseline,
                     "min_ms": min(samples[row]), "max_ms": max(samples[row]), "handler": handler is not None})
    return {"runs": runs, "baseline_ms": median(samples["import boto3"]), "rows": rows, "target": 1.3,
            "primary_setup": primary.name, "notes": notes,
            "importtime": [primary.import_times("create_order"), pre.import_times("create_order"),
                           pre.import_times("orders_api")],
            "packages": package_sizes(), "python": {"primary": primary.python, "dev": sys.version.split()[0]}}


def size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"cold start: module init in a fresh interpreter, median of {args.runs} interleaved runs, "
          "against `import boto3` alone in the same interpreter")
    result = measure(args.runs)
    print(f"  rows without a note: {result['primary_setup']}")
    for note in result["notes"]:
        print(f"  note: {note}")
    print(f"  {'module':<34} {'median ms':>9} {'x boto3':>8}")
    for row in result["rows"]:
        print(f"  {row['module']:<34} {row['median_ms']:9.0f} {row['ratio']:8.2f}")
    print(f"  target: <= {result['target']}x")
    for times in result["importtime"]:
        print(f"  -X importtime {times['handler']}, {times['setup']}: {times['total_ms']:.0f} ms of imports")
        print("    self time by top-level package: "
              + ", ".join(f"{r['package']} {r['ms']:.0f}" for r in times["by_package"][:8]))
        print("    app's own imports (cumulative): "
              + ", ".join(f"{r['module']} {r['ms']:.0f}" for r in times["direct"][:8]))
    packages = result["packages"]
    if "error" in packages:
        print(f"  package sizes: not measured: {packages['error']}")
    else:
        print(f"  package sizes after sam build ({packages['build_dir']}):")
        for row in packages["artifacts"]:
            print(f"    {row['name']:<26} {size(row['unzipped']):>9} unzipped {size(row['zipped']):>9} zipped "
                  f"({row['files']} files)")
        print("    layer: "
              + ", ".join(f"{r['package']} {r['bytes'] / 1e6:.1f} MB" for r in packages["layer_contents"]))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
