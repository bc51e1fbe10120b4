"""Cold start: each step handler's module initialization against `import boto3`, as deployed on Lambda.

A fresh Python 3.13 interpreter with the runtime's boto3/botocore (RUNTIME_REQUIREMENTS, compiled as the
runtime's are) imports the handler module `app` from the `sam build` output: the function's folder and the
SagaLayer on PYTHONPATH, PYTHONDONTWRITEBYTECODE=1 (/var/task and /opt are read-only on Lambda), and the
environment the template gives the function (ENV; and the plain-text Globals of the tree's own template).
The template says `Tracing: Active`, so POWERTOOLS_TRACE_DISABLED is not set (Powertools' Tracer and the X-Ray
SDK load, as on AWS). The import is timed inside the process (perf_counter), so the interpreter's own start is
left out; `import boto3` is timed the same way. Runs are interleaved (one of each per round); medians are reported.
"""

from __future__ import annotations

import collections
import functools
import os
import re
import subprocess
from typing import Any

from common import OUT, median
from stacks import venv

RUNTIME_REQUIREMENTS = ("boto3==1.43.108 botocore==1.43.127 jmespath==1.1.0 python-dateutil==2.9.0.post0 "
                        "s3transfer==0.19.3 six==1.17.0 urllib3==2.8.0").split()
ENV = {  # every variable the handlers of both trees read, with deployed-looking values
    "ORDERS_TABLE": "order-saga-dev-OrdersTable", "INVENTORY_TABLE": "order-saga-dev-InventoryTable",
    "PAYMENTS_TABLE": "order-saga-dev-PaymentsTable", "IDEMPOTENCY_TABLE": "order-saga-dev-IdempotencyTable",
    "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:order-saga-dev",
    "PARKED_SAGAS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/order-saga-parked-dev.fifo",
    "PAYMENT_GATEWAY": "fake", "FAKE_GATEWAY_HANG_SECONDS": "3600", "LEASE_SECONDS": "20",
    "SAGA_DEADLINE_SECONDS": "60", "RESERVATION_TTL_SECONDS": "300", "INDEX_SHARDS": "10",
    "GATEWAY_TIMEOUT_SECONDS": "3", "RECONCILE_AFTER_SECONDS": "300",
    "PROMOTIONS_TABLE": "order-saga-dev-PromotionsTable", "EVENT_BUS_NAME": "order-saga-dev",
    "COUPON_FAILURE_POLICY": "fail", "BREAKER_FAILURE_THRESHOLD": "5", "BREAKER_SUCCESS_THRESHOLD": "2",
    "BREAKER_OPEN_SECONDS": "30",
    "REAPER_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/order-saga-reaper-dev",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench", "POWERTOOLS_SERVICE_NAME": "order-saga",
    "POWERTOOLS_METRICS_NAMESPACE": "OrderSaga", "POWERTOOLS_LOG_LEVEL": "INFO",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
    "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin",
}
TIMED = "import time; t = time.perf_counter(); {0}; print((time.perf_counter() - t) * 1000)"
CLIENT = "import boto3; boto3.client('dynamodb')"  # the least a handler that uses DynamoDB does at init


def functions(build_dir: str) -> list[str]:
    return sorted(d for d in os.listdir(build_dir) if os.path.exists(os.path.join(build_dir, d, "app.py")))


@functools.lru_cache
def template_constants(build_dir: str) -> dict[str, str]:
    """The variables the tree's template gives every function as plain text (its Globals), e.g. the new tree's
    PYDANTIC_DISABLE_PLUGINS: each tree is measured with its own."""
    from samcli.yamlhelper import yaml_parse

    with open(os.path.join(build_dir, "template.yaml")) as f:
        template = yaml_parse(f.read())
    variables = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    return {name: value for name, value in variables.items() if isinstance(value, str)}


def env_for(build_dir: str | None, function: str | None, tracing: bool = True) -> dict[str, str]:
    env = dict(ENV)
    if build_dir and function:
        env.update(template_constants(build_dir))
        code = os.path.join(build_dir, function)
        env.update(PYTHONPATH=f"{code}:{build_dir}/SagaLayer/python", LAMBDA_TASK_ROOT=code,
                   AWS_LAMBDA_FUNCTION_NAME=function)
    if not tracing:
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
    return env


def timed(python: str, build_dir: str | None, function: str | None, tracing: bool = True) -> float:
    code = "import app" if function and build_dir else (CLIENT if function else "import boto3")
    done = subprocess.run([python, "-c", TIMED.format(code)], env=env_for(
        build_dir, function, tracing), cwd=OUT, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode:
        raise RuntimeError(f"importing {function or 'boto3'}: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.split()[-1])


def importtime(python: str, build_dir: str, function: str, tracing: bool = True) -> dict[str, Any]:
    """python -X importtime: own time by top-level package, and the cumulative time of app's own imports."""
    done = subprocess.run([python, "-X", "importtime", "-c", "import app"], env=env_for(build_dir, function, tracing),
                          cwd=OUT, capture_output=True, text=True, timeout=120, check=False)
    packages: collections.Counter[str] = collections.Counter()
    direct = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            own, cumulative, depth, name = int(match[1]), int(match[2]), (len(match[3]) - 1) // 2, match[4]
            packages[name.split(".")[0]] += own
            if depth == 1 or name == "app":
                direct.append((name if depth else "app module body (clients, Powertools objects)",
                               (own if name == "app" else cumulative) / 1000))
    return {"function": function, "total_ms": sum(packages.values()) / 1000,
            "packages": [(p, us / 1000) for p, us in packages.most_common(8)],
            "direct": sorted(direct, key=lambda x: -x[1])[:8]}


def measure(builds: dict[str, str], runs: int) -> dict[str, Any]:
    """builds: tree name -> its `sam build` folder. Every step handler of each, interleaved with import boto3."""
    python = venv(os.path.join(OUT, "lambda-runtime-venv"), RUNTIME_REQUIREMENTS)
    plan = [("import boto3", None, None), ("client", None, "client")]
    plan += [(f"{tree}:{fn}", path, fn) for tree, path in builds.items() for fn in functions(path)]
    samples: dict[str, list[float]] = {row: [] for row, _, _ in plan}
    for round_number in range(runs + 1):  # round 0 warms the page cache, not counted
        for row, path, fn in plan:
            value = timed(python, path, fn)
            if round_number:
                samples[row].append(value)
    boto3_ms = median(samples["import boto3"])
    trees: dict[str, Any] = {}
    for tree in builds:
        rows = {row.split(":", 1)[1]: median(v) for row, v in samples.items() if row.startswith(f"{tree}:")}
        ratios = {fn: ms / boto3_ms for fn, ms in rows.items()}
        trees[tree] = {"init_ms": rows, "ratio": ratios, "min": min(ratios.values()), "max": max(ratios.values()),
                       "slowest": max(ratios, key=ratios.get)}
    new = trees.get("new")
    if new:
        slowest = new["slowest"]
        untraced = median([timed(python, builds["new"], slowest, tracing=False) for _ in range(max(3, runs))])
        new["untraced"] = {"function": slowest, "init_ms": untraced, "ratio": untraced / boto3_ms}
        new["importtime"] = importtime(python, builds["new"], slowest)
    client_ms = median(samples["client"])
    return {"runs": runs, "boto3_ms": boto3_ms, "client_ms": client_ms, "trees": trees}


def main() -> int:
    """The cold-start phase of `make bench` alone: this tree (`new`) and, with --against, another commit's, built
    with `sam build` into .local/bench and measured in one interleaved run."""
    import argparse
    import json
    from pathlib import Path

    from common import ROOT, extract, load
    from stacks import sam_build

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--runs", type=int, default=7, help="rounds counted (one more warms the page cache)")
    parser.add_argument("--against", metavar="COMMIT", help="also build and measure this commit's tree (`baseline`)")
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    args = parser.parse_args()
    builds = {"new": os.path.join(OUT, "build-new")}
    sam_build(ROOT, builds["new"])
    if args.against:
        commit = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        tree = extract(commit, Path(OUT, f"tree-{commit}"))
        builds["baseline"] = os.path.join(OUT, f"build-{commit}")
        sam_build(tree, builds["baseline"])
    started = load()
    results = measure(builds, args.runs)
    results["load"] = {"start": started, "end": load()}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    trees = results["trees"]
    print(f"import boto3 {results['boto3_ms']:.0f} ms, + client('dynamodb') {results['client_ms']:.0f} ms; "
          f"{args.runs} rounds, load average {started} at the start, {results['load']['end']} at the end")
    print("function".ljust(28) + "".join(f"{t} ms (x boto3)".rjust(24) for t in trees))
    for fn in sorted(set().union(*[t["init_ms"] for t in trees.values()])):
        print(fn.ljust(28) + "".join((f"{t['init_ms'][fn]:.0f} ({t['ratio'][fn]:.2f}x)" if fn in t["init_ms"]
                                      else "-").rjust(24) for t in trees.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
