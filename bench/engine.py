"""Benchmark 1, engine overhead: the local stack against the floor, the effect of each moto patch, where the time goes.

  main      bench/local_vs_direct.py's measure(): POST -> SUCCEEDED on the local stack and the
            execution's own duration, against the same four handlers called directly (the floor),
            interleaved in one process against the same DynamoDB endpoint. Target: local <= 3x floor.
  patches   the same measurement in one subprocess per variant and round (variants alternate, rounds
            repeat, samples are pooled), with some of sagalocal/moto_patches.py's three performance
            patches not installed (patches are process-global). The DynamoDB lock (a correctness patch) is
            always installed. The engine's own cost per saga: the median of (execution - the floor run
            right after it), paired so that machine noise cancels out.
  profile   py-spy samples the stack's process (moto, the interpreter, the local API) and the handler
            workers while sagas run back to back; the samples are grouped by component and function.

Usage: python bench/engine.py [-n 30] [--variant-n 8] [--rounds 2] [--profile-seconds 15] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, RESULTS_DIR, ROOT, median, place_order, quiet, start_stack, write_json  # noqa: E402

HERE = Path(__file__).resolve()
PERF_PATCHES = {  # name -> moto_patches function, what it removes
    "txn": ("_check_then_apply_transactions", "TransactWriteItems checks then applies, no table deep copies"),
    "parse": ("_cache_parsed_definitions", "the ASL definition is parsed once, not per execution"),
    "clients": ("_cache_interpreter_clients", "the interpreter's boto3 clients are created once"),
}
VARIANTS = {  # variant -> the performance patches installed
    "all patches": ["txn", "parse", "clients"],
    "without txn": ["parse", "clients"],
    "without parse": ["txn", "clients"],
    "without clients": ["txn", "parse"],
    "none": [],
}


# ---- child processes ------------------------------------------------------------------------------
def child_variant(patches: list[str], n: int) -> dict[str, Any]:
    from sagalocal import moto_patches

    moto_patches._serialize_dynamodb()
    for name in patches:
        getattr(moto_patches, PERF_PATCHES[name][0])()
    moto_patches._installed = True  # LocalStack.start() calls install(): it must not add the others
    import local_vs_direct

    return local_vs_direct.measure(n)


def child_profile(seconds: float, rate: int) -> dict[str, Any]:
    """Run happy-path sagas back to back while py-spy samples this process and its workers."""
    from sagalocal.timeline import wait_for_execution

    pyspy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if pyspy is None:
        return {"error": "py-spy is not installed (pip install -r requirements-bench.txt)"}
    quiet()
    stack = start_stack()
    try:
        sfn = stack.client("stepfunctions")
        for _ in range(3):  # warm
            wait_for_execution(sfn, place_order(stack.api_url)["execution_arn"], timeout=60, poll=0.005)
        out = RESULTS_DIR / "results" / "pyspy-raw.txt"  # kept for a closer look (py-spy's raw format)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        sagas: list[tuple[float, float]] = []  # (finished at, ms)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                wait_for_execution(sfn, place_order(stack.api_url)["execution_arn"], timeout=60, poll=0.02)
                sagas.append((time.perf_counter(), (time.perf_counter() - started) * 1000))

        driver = threading.Thread(target=loop, daemon=True)
        driver.start()
        window_start = time.perf_counter()
        proc = subprocess.Popen([pyspy, "record", "-p", str(os.getpid()), "-d", str(int(seconds)), "-r", str(rate),
                                 "--subprocesses", "--gil", "-f", "raw", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=seconds + 60)
        window_end = time.perf_counter()
        stop.set()
        driver.join(timeout=60)
        in_window = [ms for at, ms in sagas if window_start <= at <= window_end]
        # py-spy samples for `seconds` once attached; the sagas finished in the window are the denominator
        sagas_per_second = len(in_window) / max(1e-9, window_end - window_start)
        if proc.returncode != 0 or not out.exists():
            return {"error": f"py-spy exited {proc.returncode}: {err.decode(errors='replace').strip()[-300:]}"}
        profile = aggregate(out.read_text(), os.getpid())
        version = subprocess.run([pyspy, "--version"], capture_output=True, text=True).stdout.strip()
        profile.update({"pyspy": version.replace("py-spy ", ""), "seconds": seconds, "rate": rate,
                        "sagas": round(sagas_per_second * seconds, 1), "saga_ms_median": median(in_window)})
        return profile
    finally:
        stack.stop()


# ---- py-spy raw output -> where the time goes -----------------------------------------------------
# py-spy --gil samples only the thread holding the GIL: a sample is CPU spent by Python code in that
# process. Each sample of the stack's process is put in one role by the frames on its stack.
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
GENERIC = ("Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "<module>", "main",
           "ThreadingMixIn.process_request_thread", "BaseServer.finish_request", "BaseRequestHandler.__init__",
           "WSGIRequestHandler.handle", "BaseHTTPRequestHandler.handle", "BaseHTTPRequestHandler.handle_one_request",
           "WSGIRequestHandler.run_wsgi", "WSGIRequestHandler.run_wsgi.<locals>.execute")


HOTSPOTS = {  # label -> function-name prefixes; a sample counts once per label if any frame matches
    "DynamoDB expression parsing (condition, update, key expressions; no cache in moto)":
        ("ConditionExpressionParser.parse", "UpdateExpressionParser.make", "ExpressionParser.parse",
         "get_filter_expression", "KeyConditionExpressionParser"),
    "moto's request parsing from the botocore model (moto/core/parse.py)": ("RequestParser.parse",),
    "moto's response serialization (moto/core/serialize.py)": ("ResponseSerializer.serialize",),
    "copy.deepcopy (moto items to JSON, update validation)": ("deepcopy",),
    "a new thread per connection (ThreadingMixIn; moto answers Connection: close)": ("Thread.start",),
    "SigV4 signing of requests made in this process (interpreter, bench)": ("SigV4Auth.add_auth",),
}


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for raw in stack.split(";"):
        match = FRAME.match(raw.strip())
        frames.append((match.group("func"), match.group("file")) if match else (raw.strip(), ""))
    return frames


def role(frames: list[tuple[str, str]]) -> str:
    files = [f for _, f in frames]
    funcs = [f for f, _ in frames]

    def has(fragment: str) -> bool:
        return any(fragment in f for f in files)

    if any("child_profile" in f for f in funcs):
        return "bench driver: POST /orders, DescribeExecution polls (client side)"
    if has("moto/stepfunctions/parser") and not has("werkzeug/serving.py"):
        if has("botocore/") or has("urllib3/") or has("http/client.py"):
            return "interpreter: its boto3 Lambda client (serialize, sign, HTTP, parse)"
        return "interpreter: ASL evaluation (moto's Step Functions parser)"
    if has("werkzeug/serving.py"):
        if has("moto/dynamodb/"):
            return "moto server: DynamoDB requests"
        if has("moto/stepfunctions/"):
            return "moto server: Step Functions API (StartExecution, Describe, History)"
        if has("moto/awslambda") or has("sagalocal/stack.py") or has("sagalocal/workers.py"):
            return "moto server: Lambda Invoke -> worker dispatch"
        return "moto server: HTTP, WSGI, routing, request/response (de)serialization"
    if has("sagalocal/http.py"):
        return "local API: HTTP -> API Gateway proxy event -> worker"
    if any("serve_forever" in f for f in funcs):
        return "moto server: accept loop"
    return "other threads"


def aggregate(raw: str, main_pid: int) -> dict[str, Any]:
    """Group py-spy's raw samples: per process, per role in the stack's process, top functions."""
    by_process: collections.Counter[str] = collections.Counter()
    roles: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    hotspots: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        owner = ""
        while frames and frames[0][0].startswith("process "):
            owner = frames[0][0]
            frames = frames[1:]
        pid_match = re.match(r"process (\d+)", owner)
        if pid_match is not None and int(pid_match.group(1)) != main_pid:
            by_process["handler workers (the real handlers in sagalocal/worker.py processes)"
                       if "worker.py" in owner else "other processes"] += count
            continue
        by_process["stack process (moto, interpreter, local API, bench driver)"] += count
        roles[role(frames)] += count
        for label, prefixes in HOTSPOTS.items():
            if any(func.startswith(prefixes) for func, _ in frames):
                hotspots[label] += count
        seen = set()
        for func, file in frames:
            if func in GENERIC or file.startswith("threading.py"):
                continue
            key = f"{func} ({_short(file)})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
        if frames:
            leaf[f"{frames[-1][0]} ({_short(frames[-1][1])})"] += count
    total = sum(by_process.values()) or 1
    stack_total = sum(roles.values()) or 1
    return {
        "samples": total,
        "stack_samples": sum(roles.values()),
        "processes": [{"what": k, "samples": v, "share": v / total} for k, v in by_process.most_common()],
        "roles": [{"what": k, "samples": v, "share": v / stack_total} for k, v in roles.most_common()],
        "inclusive": [{"what": k, "samples": v, "share": v / stack_total} for k, v in inclusive.most_common(25)],
        "self": [{"what": k, "samples": v, "share": v / stack_total} for k, v in leaf.most_common(15)],
        "hotspots": [{"what": k, "samples": v, "share": v / stack_total} for k, v in hotspots.most_common()],
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.13/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# ---- the orchestrator ------------------------------------------------------------------------------
def summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    local, execution, floor = samples["local_ms"], samples["execution_ms"], samples["floor_ms"]
    return {
        "n": len(floor), "local_ms": median(local), "execution_ms": median(execution), "floor_ms": median(floor),
        "overhead_ms": median([e - f for e, f in zip(execution, floor, strict=True)]),
        "ratio_local_floor": median(local) / median(floor), "ratio_execution_floor": median(execution) / median(floor),
    }


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    try:
        proc = subprocess.run([PY, str(HERE), "--child", *args, "--child-out", out], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": f"exited {proc.returncode}: {' | '.join(tail)}"}
        return json.loads(Path(out).read_text())
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    finally:
        Path(out).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=30, help="sagas of each kind for the main figures")
    parser.add_argument("--variant-n", type=int, default=8, help="sagas of each kind per patch variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the patch variants (alternating)")
    parser.add_argument("--profile-seconds", type=float, default=15)
    parser.add_argument("--json")
    parser.add_argument("--child", choices=["variant", "profile"])
    parser.add_argument("--patches", default="")
    parser.add_argument("--child-out")
    args = parser.parse_args()
    if args.child == "variant":
        result = child_variant([p for p in args.patches.split(",") if p], args.n)
        Path(args.child_out).write_text(json.dumps(result))
        return
    if args.child == "profile":
        Path(args.child_out).write_text(json.dumps(child_profile(args.profile_seconds, 100)))
        return

    results: dict[str, Any] = {"patches": {k: v[1] for k, v in PERF_PATCHES.items()}, "variants": {},
                               "rounds": args.rounds, "variant_n": args.variant_n}
    print(f"engine overhead: {args.n} happy-path sagas on the local stack, interleaved with the floor")
    main_figures = run_child(["variant", "--patches", "txn,parse,clients", "-n", str(args.n)], timeout=600)
    if "samples" in main_figures:
        main_figures.update(summarize(main_figures["samples"]))
        main_figures.pop("samples")
    results["main"] = main_figures
    if "error" in main_figures:
        print(f"  not measured: {main_figures['error']}")
    else:
        print(f"  local stack, POST -> SUCCEEDED   {main_figures['local_ms']:7.1f} ms")
        print(f"  local stack, execution duration  {main_figures['execution_ms']:7.1f} ms")
        print(f"  floor: handlers called directly  {main_figures['floor_ms']:7.1f} ms")
        print(f"  ratio local / floor              {main_figures['ratio_local_floor']:7.2f}   (target <= 3)")
        print(f"  ratio execution / floor          {main_figures['ratio_execution_floor']:7.2f}")
        print(f"  engine overhead (paired median)  {main_figures['overhead_ms']:7.1f} ms per saga")
    print(f"\nmoto patches: {args.rounds} rounds x {args.variant_n} sagas of each kind per variant, one process per "
          "variant and round, variants alternating (median ms; overhead = median of each saga's execution - the "
          "floor run right after it)")
    pooled: dict[str, dict[str, list[float]]] = {v: {"local_ms": [], "execution_ms": [], "floor_ms": []}
                                                 for v in VARIANTS}
    errors: dict[str, str] = {}
    for _ in range(args.rounds):
        for variant, patches in VARIANTS.items():
            figures = run_child(["variant", "--patches", ",".join(patches), "-n", str(args.variant_n)], timeout=400)
            if "error" in figures:
                errors[variant] = figures["error"]
                continue
            for key, values in figures["samples"].items():
                pooled[variant][key].extend(values)
    print(f"  {'variant':<16} {'n':>3} {'local':>7} {'execution':>9} {'floor':>7} {'overhead':>8} {'local/floor':>11}")
    for variant, patches in VARIANTS.items():
        samples = pooled[variant]
        if not samples["floor_ms"]:
            results["variants"][variant] = {"installed": patches, "error": errors.get(variant, "no samples")}
            print(f"  {variant:<16} not measured: {errors.get(variant)}")
            continue
        figures = summarize(samples)
        results["variants"][variant] = {"installed": patches, **figures}
        print(f"  {variant:<16} {figures['n']:>3} {figures['local_ms']:7.1f} {figures['execution_ms']:9.1f} "
              f"{figures['floor_ms']:7.1f} {figures['overhead_ms']:8.1f} {figures['ratio_local_floor']:11.2f}")
    print(f"\nwhere the time goes: py-spy, {args.profile_seconds:.0f} s of back-to-back sagas at 100 Hz")
    profile = run_child(["profile", "--profile-seconds", str(args.profile_seconds)],
                        timeout=args.profile_seconds + 180)
    results["profile"] = profile
    if "error" in profile:
        print(f"  not measured: {profile['error']}")
    else:
        print(f"  {profile['samples']} samples, {profile['sagas']} sagas")
        for row in profile["processes"]:
            print(f"  {row['samples'] * 1000 / profile['rate'] / max(1, profile['sagas']):6.1f} ms per saga "
                  f"{row['share']:6.1%}  {row['what']}")
        per_saga = 1000 / profile["rate"] / max(1, profile["sagas"])
        print("  CPU of the stack process by role (ms per saga; py-spy --gil: GIL-holding samples):")
        for row in profile["roles"]:
            print(f"  {row['samples'] * per_saga:6.1f} ms {row['share']:6.1%}  {row['what']}")
        print("  hot spots in the stack process (inclusive, ms per saga):")
        for row in profile["hotspots"]:
            print(f"  {row['samples'] * per_saga:6.1f} ms {row['share']:6.1%}  {row['what']}")
        print("  the stack process, top functions (inclusive):")
        for row in profile["inclusive"][:12]:
            print(f"  {row['share']:6.1%}  {row['what']}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
