"""Run every benchmark, print its figures, and write docs/benchmarks.md with its plots (what `make bench` runs).

  0. sam build into /tmp/sam-build-bench (shared by the peer and cold-start benchmarks)
  1. engine.py       engine overhead: local stack vs the floor, the moto patches, py-spy profile
  2. throughput.py   sagas/s and latency percentiles at 1, 4, 8, 16 clients
  3. peer.py         the same template on ministack (samlocal deploy), beside the embedded stack
  4. cost.py         transitions, invocations, DynamoDB units and dollars per saga, every scenario
  5. coldstart.py    handler module init vs `import boto3`, -X importtime, package sizes

Each benchmark runs in its own process (the embedded stack and moto's patches are process-global) and
writes .local/bench/results/<name>.json; bench/report.py renders them. A benchmark never fails the
build for being slow; one that crashes is reported as such, the others still run, and the exit
status is 1.

Usage: python bench/run_all.py [--quick] [--only engine,cost,...]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, RESULTS_DIR, ROOT, sam_build  # noqa: E402

HERE = Path(__file__).resolve().parent
FULL = {
    "engine": ["-n", "30", "--variant-n", "8", "--rounds", "2", "--profile-seconds", "15"],
    "throughput": ["--per-level", "60"],
    "peer": ["-n", "15"],
    "cost": [],
    "coldstart": ["--runs", "7"],
}
QUICK = {
    "engine": ["-n", "8", "--variant-n", "3", "--rounds", "1", "--profile-seconds", "6"],
    "throughput": ["--per-level", "16"],
    "peer": ["-n", "4"],
    "cost": [],
    "coldstart": ["--runs", "2"],
}
TIMEOUTS = {"engine": 900, "throughput": 600, "peer": 900, "cost": 300, "coldstart": 600}


def machine() -> str:
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, load average {load} at the start, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small samples: check the pipeline, not the figures")
    parser.add_argument("--only", default="", help="comma-separated benchmarks (default: all)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    only = [x for x in args.only.split(",") if x]
    out_dir = RESULTS_DIR / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    meta = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
            "quick": args.quick, "durations": {}}
    print(f"== make bench: {meta['machine']}", flush=True)

    print("\n== 0. sam build (for the peer and the package sizes)", flush=True)
    built = sam_build()
    meta["sam_build"] = built
    meta["durations"]["sam build"] = built.get("seconds", 0)
    print(f"  built in {built['seconds']:.1f} s: {built['build_dir']}" if built["ok"] else f"  {built['error']}",
          flush=True)

    crashed = []
    for number, (name, extra) in enumerate(plan.items(), 1):
        if only and name not in only:
            continue
        print(f"\n== {number}. {name}", flush=True)
        out = out_dir / f"{name}.json"
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([PY, str(HERE / f"{name}.py"), *extra, "--json", str(out)], cwd=ROOT,
                                  timeout=TIMEOUTS[name])
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {TIMEOUTS[name]} s"
        meta["durations"][name] = time.perf_counter() - t0
        if code != 0 or not out.exists():
            reason = f"the benchmark exited {code}" if not isinstance(code, str) else code
            print(f"  {name}: CRASHED: {reason} (see the output above)", flush=True)
            out.write_text(json.dumps({"crashed": reason}))
            crashed.append(name)

    meta["total_s"] = time.perf_counter() - started
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    print("\n== report", flush=True)
    proc = subprocess.run([PY, str(HERE / "report.py"), str(out_dir)], cwd=ROOT)
    if proc.returncode != 0:
        crashed.append("report")
    print(f"\n== done in {meta['total_s'] / 60:.1f} min"
          + (f"; crashed: {', '.join(crashed)}" if crashed else ""), flush=True)
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
