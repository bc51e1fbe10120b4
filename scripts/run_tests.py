"""`make test`: every tier, side by side, with coverage of src/ and functions/ in every process.

Four pytest processes: the stack tier, its two heaviest tests (on a stack of their own), the unit and browser
tiers, and the simulation (its crash-point explorer and random mixes run in two worker processes of their
own). Much of the stack tier waits (timeouts, backoffs, leases), so the others fill the machine.
Coverage follows every process they start (the stacks, the DynamoDB processes, the Lambda sandboxes:
pyproject.toml's [tool.coverage]); the data is combined and reported at the end. The exit status is the
first failing group's.

  python scripts/run_tests.py [extra pytest arguments for every group]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["tests/stack/test_invariants.py", "tests/stack/test_concurrency.py"]
# The first group's output is shown as it runs; the others' when they end. Each stack group starts its own
# embedded stack; the heavy load (1,000 sagas, the 200-order burst) gets one to itself.
GROUPS = {
    "stack": ["tests/stack", *[f"--deselect={path}" for path in HEAVY]],
    "stack, under load": [*HEAVY, "-s"],  # -s: their summaries (outcomes of the 1,000 sagas, the races) print
    "unit and browser": ["tests/unit", "tests/browser"],
    "simulation": ["tests/sim", "-s"],  # -s: the explorer's and the mixes' summaries print
}


def main(argv: list[str]) -> int:
    for old in ROOT.glob(".coverage*"):
        old.unlink()
    env = {**os.environ, "COVERAGE_FILE": str(ROOT / ".coverage")}
    logs = ROOT / ".local" / "tests"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    command = [sys.executable, "-m", "coverage", "run", "-m", "pytest"]
    (first, first_args), *others = GROUPS.items()
    running = []
    for name, args in others:
        log = logs / (name.replace(" ", "-").replace(",", "") + ".log")
        out = open(log, "w")  # noqa: SIM115 - closed below
        running.append((name, log, out, subprocess.Popen([*command, *args, *argv], cwd=ROOT, env=env, stdout=out,
                                                         stderr=subprocess.STDOUT)))
    statuses = {first: subprocess.run([*command, *first_args, *argv], cwd=ROOT, env=env, check=False).returncode}
    for name, log, out, process in running:
        statuses[name] = process.wait()
        out.close()
        print(f"\n{'=' * 25} {name} (ran alongside; {log.relative_to(ROOT)}) {'=' * 25}")
        print(log.read_text(), end="")
    for empty in ROOT.glob(".coverage.*"):  # a worker killed before it wrote anything (a stack's stop)
        try:
            if empty.stat().st_size == 0:
                empty.unlink()
        except FileNotFoundError:  # a worker's temporary file, gone since the listing
            continue
    subprocess.run([sys.executable, "-m", "coverage", "combine", "-q"], cwd=ROOT, env=env, check=False)
    print(f"\n{'=' * 25} coverage of src/ and functions/, every process {'=' * 25}")
    subprocess.run([sys.executable, "-m", "coverage", "report", "--skip-covered"], cwd=ROOT, env=env, check=False)
    summary = ", ".join(f"{name} exit {status}" for name, status in statuses.items())
    print(f"\nmake test: {summary}; {time.monotonic() - started:.0f} s in all")
    return next((status for status in statuses.values() if status), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
