"""`make bench`: issue 10's targets, today's (5d5f643) figure beside the new one, measured in one run.

  1. sam build of both trees; cold start of every step handler of both (bench/coldstart.py)
  2. three stacks up (bench/stacks.py): this tree's embedded stack, 5d5f643's, and ministack with the same
     template; happy sagas on all three, taking turns (bench/measure.py)
  3. on each embedded stack alone: DynamoDB requests and units per saga, throughput at 1, 2, 4, 8 clients;
     then on the new one: py-spy, the 200-order burst, POST /orders per second (also on 5d5f643)
  4. the table, printed and written to docs/benchmarks.md (--quick: .local/bench/benchmarks-quick.md)

A benchmark never fails the build for being slow. A phase that cannot run is reported with its reason.
Usage: python bench/run_all.py [--quick] [--make-test-seconds S | --make-test-log FILE]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bill  # noqa: E402
import coldstart  # noqa: E402
import measure  # noqa: E402
import stacks  # noqa: E402
from common import OUT, ROOT, load  # noqa: E402
from idle_cpu import BEGIN as IDLE_BEGIN  # noqa: E402
from idle_cpu import END as IDLE_END  # noqa: E402
from report import kept_marked, kept_reaper_section, render, table  # noqa: E402


def phase(results: dict[str, Any], name: str, fn: Any, *args: Any) -> Any:
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    try:
        value = fn(*args)
    except stacks.Blocked as exc:
        results["blocked"][name] = str(exc)
        print(f"   blocked: {exc}", flush=True)
        return None
    except Exception as exc:  # noqa: BLE001 - reported, the other phases still run
        results["blocked"][name] = f"{type(exc).__name__}: {exc}"
        results["crashed"].append(name)
        traceback.print_exc()
        return None
    print(f"   {time.perf_counter() - started:.0f} s", flush=True)
    return value


def shown(path: str) -> str:
    """A path as the report shows it: relative to the tree when inside it."""
    inside = os.path.abspath(path).startswith(ROOT + os.sep)
    return os.path.relpath(path, ROOT) if inside else os.path.abspath(path)


def make_test_figure(seconds: float | None, log: str | None) -> dict[str, Any]:
    """`make test`'s duration, never run here: from the command line, a log of it, or .local/tests/*.log."""
    if seconds:
        return {"seconds": seconds, "source": "given on the command line (--make-test-seconds)"}
    logs = [log] if log else sorted(glob.glob(os.path.join(ROOT, ".local", "tests", "*.log")))
    found: list[float] = []
    sagas = None
    for path in logs:
        text = open(path, errors="replace").read()
        found += [float(s) for s in re.findall(r"make test: .*?; (\d+) s in all", text)]
        found += [float(s) for s in re.findall(r" in ([\d.]+)s \(", text)]
        sagas = sagas or next(iter(re.findall(r"(\d+) sagas in \d+ batches", text)), None)
    if not found:
        return {"source": "not given (pass --make-test-seconds S or --make-test-log FILE; make test is never run "
                          "by the bench)"}
    return {"seconds": max(found), "invariant_sagas": sagas,
            "source": f"read from {', '.join(shown(p) for p in logs)} (the longest duration in it)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 2 min): small samples, no figures")
    parser.add_argument("--make-test-seconds", type=float)
    parser.add_argument("--make-test-log")
    args = parser.parse_args()
    quick = args.quick
    os.makedirs(OUT, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "quick": quick,
        "ministack_left_out": list(stacks.MINISTACK_LEFT_OUT),
        "commit": commit.stdout.strip(), "baseline": stacks.BASELINE_COMMIT, "load_start": load(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}", "blocked": {}, "crashed": []}
    started = time.perf_counter()
    print(f"make bench{' --quick' if quick else ''}: {results['machine']}, load {results['load_start']}", flush=True)

    builds = {"new": os.path.join(OUT, "build-new"), "baseline": os.path.join(OUT, "build-baseline")}
    phase(results, "sam build (this tree)", stacks.sam_build, ROOT, builds["new"])
    if phase(results, "sam build (5d5f643)", lambda: stacks.sam_build(stacks.extract_baseline(),
                                                                       builds["baseline"])) is None:
        builds.pop("baseline")
    results["coldstart"] = phase(results, "cold start", coldstart.measure, builds, 1 if quick else 7)

    up: dict[str, Any] = {}
    try:
        for name, start in (("new", stacks.start_new), ("baseline", stacks.start_baseline)):
            up[name] = phase(results, f"start the {name} stack", start)
        if "sam build (this tree)" not in results["blocked"]:
            up["ministack"] = phase(results, "start ministack and samlocal deploy", stacks.start_ministack,
                                    builds["new"])
        live = [s for s in up.values() if s is not None]
        results["startup_s"] = {s.name: s.startup_s for s in live}
        results["latency"] = phase(results, "happy sagas, interleaved on " + ", ".join(s.name for s in live),
                                   measure.interleaved_latency, live, 6 if quick else 40)
        if up.get("ministack"):
            up.pop("ministack").stop()
        for name in ("new", "baseline"):
            if up.get(name):
                results[name] = {"counts": phase(results, f"{name}: per saga", measure.per_saga_counts, up[name], 5),
                                 "throughput": [t for c in (1, 2, 4, 8) if (t := phase(
                                     results, f"{name}: {c} clients", measure.throughput, up[name], c,
                                     2 if quick else 8))]}
        if up.get("new"):
            results["profile"] = phase(results, "new: py-spy", measure.profile, up["new"], 4 if quick else 10)
            results["burst"] = phase(results, "new: order burst", measure.burst, up["new"], 60 if quick else 200)
        for name in ("new", "baseline"):
            if up.get(name):
                results.setdefault("post_rate", {})[name] = phase(
                    results, f"{name}: POST /orders per second", measure.post_rate, up[name], 32, 1 if quick else 5)
                up.pop(name).stop()
    finally:
        for stack in up.values():
            if stack is not None:
                stack.stop()
    results["make_test"] = make_test_figure(args.make_test_seconds, args.make_test_log)
    results["load_end"], results["minutes"] = load(), (time.perf_counter() - started) / 60
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print("\n" + table(results, markdown=False))
    path = os.path.join(OUT, "benchmarks-quick.md") if quick else os.path.join(ROOT, "docs", "benchmarks.md")
    img = os.path.join(OUT if quick else os.path.join(ROOT, "docs", "img"), "bench-throughput.png")
    # The sections measured on their own: bench/reaper_drain.py's, bench/bill.py's and bench/idle_cpu.py's.
    kept = kept_reaper_section(path) + bill.kept_section(Path(path)) + kept_marked(path, IDLE_BEGIN, IDLE_END)
    with open(path, "w") as f:
        f.write(render(results, img, os.path.relpath(img, os.path.dirname(path))) + kept)
    print(f"\nwritten: {os.path.relpath(path, ROOT)}, {os.path.relpath(img, ROOT)}; {results['minutes']:.1f} min; "
          f"load {results['load_start']} -> {results['load_end']}")
    return 1 if results["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())
