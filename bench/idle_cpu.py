"""What an embedded stack burns while nothing happens: CPU per second of wall time, old tree beside new in one run.

Issue 21 asks for ~0 CPU while idle. Each tree (an old commit, extracted with `git archive` into .local/bench/, and
this one) starts its stack with `python -m sagalocal up` (the catalog seeded, the reaper's schedule set to once a
day so that no sweep falls into the window), waits `--settle` seconds after it is ready, then reads the CPU of its
whole process tree (/proc, by role) over `--seconds` of idleness. The trees take turns, one stack at a time.

  python bench/idle_cpu.py [--old COMMIT] [--seconds 60]   # -> docs/benchmarks.md, "An idle stack"

Run by hand (`make bench-idle`), never by `make test`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

from common import extract, free_port  # noqa: E402
from report import write_marked  # noqa: E402
from stacks import NO_REAPER, ROLES, Stack  # noqa: E402

OLD = "c91d32a"  # main before the 20 s long polls
BEGIN = "<!-- idle-cpu: written by bench/idle_cpu.py; bench/run_all.py keeps it -->"
END = "<!-- /idle-cpu -->"


def idle(name: str, tree: Path, settle: float, seconds: float) -> dict[str, float]:
    """ms of CPU per second of idleness, by role and in all, of `tree`'s stack."""
    stack = Stack(name)
    ready = os.path.join(stack.workdir, "ready.json")
    seed = (f"{sys.executable} {tree}/scripts/seed_catalog.py --stack-outputs .local/stack-outputs.json "
            f"{tree}/events/catalog.json")
    try:
        stack.spawn([sys.executable, "-m", "sagalocal", "up", "--template", f"{tree}/template.yaml",
                     "--port", str(free_port()), "--ready-file", ready, "--init", seed,
                     "--parameter-overrides", NO_REAPER],
                    {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'src'}"}, ready)
        time.sleep(settle)
        before, started = stack.cpu(), time.monotonic()
        time.sleep(seconds)
        after, took = stack.cpu(), time.monotonic() - started
    finally:
        stack.stop()
    per_role = {role: (after[role] - before.get(role, 0.0)) * 1000 / took for role in sorted(after)}
    return {**per_role, "all": sum(per_role.values())}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default=OLD, help=f"the commit to compare with (default {OLD})")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                               text=True, check=False).stdout.strip()
    load = os.getloadavg()
    figures = {f"old ({args.old})": idle("idle-old", extract(args.old, ROOT / ".local" / "bench" / f"idle-{args.old}"),
                                          args.settle, args.seconds),
               f"new ({described})": idle("idle-new", ROOT, args.settle, args.seconds)}
    roles = sorted({role for figure in figures.values() for role in figure} - {"all"})
    header = "| tree | " + " | ".join(roles) + " | all |"
    rows = "\n".join(f"| {name} | " + " | ".join(f"{figure.get(role, 0.0):.1f}" for role in roles)
                     + f" | **{figure['all']:.1f}** |" for name, figure in figures.items())
    (_, old), (_, new) = figures.items()
    section = f"""{BEGIN}

## An idle stack (issue 21, point 4: ~0 CPU while idle)

Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.system()} {platform.machine()}, \
{os.cpu_count()} cores, Python {platform.python_version()}; load average at the start {load[0]:.2f}, \
{load[1]:.2f}. `python bench/idle_cpu.py` (`make bench-idle`): each tree's stack started alone (`sagalocal up`, \
the catalog seeded, `{NO_REAPER}`), left {args.settle:.0f} s, then its process tree's CPU read over \
{args.seconds:.0f} s in which nothing was asked of it. ms of CPU per second, by process role \
({", ".join(sorted(set(ROLES.values())))}, and the stack process):

{header}
|---{"|---" * (len(roles) + 1)}|
{rows}

New / old: **{new['all'] / old['all']:.2f}x**. The event source mappings' long polls wait 20 s, as Lambda's \
pollers do (1 s before: an idle queue and an idle stream each cost a request a second), and the scheduler wakes \
when a schedule is due (ten times a second before).

{END}
"""
    write_marked(args.doc, BEGIN, END, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
