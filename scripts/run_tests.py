"""`make test`: every tier, side by side, with coverage of src/ and functions/.

Eight pytest processes: the stack tier; its two heaviest tests (on a stack of their own); its tests that start
stacks of their own, in two groups (the CLI's, the short-lease stacks; the gateway's, the limits'); the unit tier
in two halves; the browser tier; and the simulation (its crash-point explorer and random mixes run in two worker
processes of their own). Much of the stack tier waits (timeouts, backoffs, leases), so the others fill the machine;
the simulation, which never waits, runs niced (NICE below) and takes what the others leave. The project's modules
are compiled once first (compile_sources).

Coverage (pyproject.toml's [tool.coverage]) measures where it pays: the unit, browser and simulation pytest
processes and whatever they start. It is left out where it does not (sagalocal/untraced.py, GROUPS below): the
DynamoDB processes and the stacks' own processes run none of src/ or functions/; the simulation's explorer and
mixes run 2.6 and 1.8 times faster without it; the stack groups reach no line the other tiers do not. The data
is combined and reported at the end, with each group's CPU seconds, and (on Linux, where this process adopts the
orphans its groups leave: a stack's DynamoDB process, a sandbox forked by a preloader) the CPU of every process
the run started, how much of the machine it kept busy, and any process still running once every group ended.
The exit status is the first failing group's.

  python scripts/run_tests.py [extra pytest arguments for every group]
"""

from __future__ import annotations

import compileall
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["tests/stack/test_invariants.py", "tests/stack/test_concurrency.py"]
# They start their own, and mostly wait.
OWN_STACKS = ["tests/stack/test_cli.py", "tests/stack/test_leases.py", "tests/stack/test_versions.py"]
# They start their own too (the gateway's outage, Stripe's fake, the API's limits): ~130 s of the stack group's
# waiting, which left it the run's last group.
OWN_STACKS_TOO = ["tests/stack/test_breaker.py", "tests/stack/test_stripe.py", "tests/stack/test_limits.py"]
UNIT = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests" / "unit").glob("test_*.py"))
# The pytest plugins a group's tests use, of those the venv installs: each one a group loads without using cost
# its process ~0.4-1.2 CPU-s at start-up (schemathesis 1.2, hypothesis 0.8), nearly all of a short group's set-up.
PLUGINS = ("anyio", "hypothesispytest", "schemathesis")


def using(*plugins: str) -> list[str]:
    """pytest arguments that leave out every plugin of PLUGINS but `plugins`."""
    return [arg for name in PLUGINS if name not in plugins for arg in ("-p", f"no:{name}")]


# name: (pytest arguments, measured by coverage). The first group's output is shown as it runs; the others' when
# they end. Each stack group starts its own embedded stack; the heavy load (60 fault-injected sagas, the
# 40-order burst) gets one to itself. The stack groups run untraced: measured, their Lambda sandboxes added 15
# lines to the unit, browser and simulation tiers' (the API's error handlers for raw bodies, a lost
# StartExecution answer, the client-side lost-response hook), now unit tests of their own, for ~45 CPU-s a run.
GROUPS = {
    # test_fuzz: schemathesis and hypothesis; test_invariants: hypothesis. No test uses anyio.
    "stack": (["tests/stack", *[f"--deselect={path}" for path in HEAVY + OWN_STACKS + OWN_STACKS_TOO],
               *using("hypothesispytest", "schemathesis")], False),
    "stack, under load": ([*HEAVY, "-s", *using("hypothesispytest")], False),  # -s: their summaries print
    "stack, own stacks": ([*OWN_STACKS, *using()], False),
    "stack, own stacks too": ([*OWN_STACKS_TOO, *using()], False),
    # The unit tier in two halves (every other file): much of it waits (slow fakes, visibility timeouts, commit
    # windows), and one process waiting alone made it the run's longest group.
    "unit, first half": ([*UNIT[0::2], *using()], True),
    "unit, second half": ([*UNIT[1::2], *using()], True),
    "browser": (["tests/browser", *using()], True),
    "simulation": (["tests/sim", "-s", *using()], True),  # -s: the explorer's and the mixes' summaries print
}


# Groups that run at a lower priority: the simulation is CPU alone (its clock is virtual, nothing in it waits or
# times out), while the other groups alternate between CPU and waits (timeouts, backoffs, leases, a browser) and
# their runs lengthen with every second they wait for a core. Niced, the simulation takes what the others leave
# and ends last instead of stretching them: its CPU fills the gaps their waits leave.
NICE = {"simulation": 10}


def slug(group: str) -> str:
    """A group's file name: its log (.log) and its JUnit report (.xml, which scripts/engines_doc.py reads for the
    stack groups) in .local/tests."""
    return group.replace(" ", "-").replace(",", "")


def niced(increment: int):  # noqa: ANN201 - Popen's preexec_fn, or None
    """Popen's preexec_fn that lowers a group's priority by `increment` (POSIX), or None for none."""
    if not increment or not hasattr(os, "nice"):
        return None
    return lambda: os.nice(increment)


def adopt_orphans() -> bool:
    """Make this process the reaper of every process its groups start that outlives its own parent (a stack's
    DynamoDB process, a Lambda sandbox forked by a preloader, a browser's helpers): Linux's child subreaper. Their
    CPU then reaches this process when they end, and the run's total counts it (55-64 of 645-712 CPU-s in the runs
    measured, which the groups' own figures never showed). Elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0


def reap(pids: set[int]) -> tuple[int, int, float]:
    """The next of `pids` to end: its pid, its exit status and the CPU seconds it used (its pytest process and every
    process that it, or they, started and waited for: the stacks, their DynamoDB and Lambda processes, the
    simulation's workers). Adopted orphans that end meanwhile are reaped too (their CPU is in the run's total)."""
    while True:
        pid, status, usage = os.wait4(-1, 0)
        if pid in pids:
            return pid, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def leftovers(grace: float = 5.0) -> list[str]:
    """Reap the adopted orphans that have ended; describe those still running after `grace` seconds (a process a
    test left behind; a pool's resource tracker, say, ends on its own once its pipe closes)."""
    until = time.monotonic() + grace
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return []  # no child left
        if time.monotonic() >= until:
            break
        time.sleep(0.1)
    running = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                running.append(f"{entry.name}: {command[:160]}")
        except (OSError, ValueError, IndexError):
            continue
    return running


def compile_sources() -> None:
    """The project's own modules compiled once, before any group starts. Where PYTHONDONTWRITEBYTECODE is set (as on
    this machine) no process writes what it compiles, so each of a run's stacks compiled src/, functions/ and
    sagalocal/ again in every process it starts (its own, its DynamoDB's, a Lambda preloader per function), as did
    every pytest process: importing the stack's modules took 0.59-0.69 CPU-s uncompiled, 0.47-0.59 compiled.
    compileall writes regardless of the variable, and only what is stale."""
    for folder in ("src", "functions", "sagalocal", "scripts", "tests"):
        compileall.compile_dir(ROOT / folder, quiet=1)  # in this process: a pool's forkserver outlived it


def main(argv: list[str]) -> int:
    for old in ROOT.glob(".coverage*"):
        old.unlink()
    env = {**os.environ, "COVERAGE_FILE": str(ROOT / ".coverage")}
    if sys.version_info >= (3, 12):  # sys.monitoring: the traced unit tier took 120 CPU-s, not 201 (3.11's tracer)
        env.setdefault("COVERAGE_CORE", "sysmon")
    logs = ROOT / ".local" / "tests"
    logs.mkdir(parents=True, exist_ok=True)
    compile_sources()
    adopted = adopt_orphans()
    started = time.monotonic()
    # --durations: each group names its slowest tests, where the time of a run goes.
    traced = [sys.executable, "-m", "coverage", "run", "-m", "pytest", "--durations=12"]
    plain = [sys.executable, "-m", "pytest", "--durations=12"]
    (first, (first_args, first_traced)), *others = GROUPS.items()
    running = []
    for stale in logs.glob("*.xml"):
        stale.unlink()
    # Which tree the reports are of (scripts/engines_doc.py dates the embedded stack's column with it).
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                               check=False).stdout.strip()
    (logs / "run.json").write_text(json.dumps({"commit": described or "unknown",
                                               "date": datetime.date.today().isoformat()}))
    for name, (args, measured) in others:
        log = logs / (slug(name) + ".log")
        out = open(log, "w")  # noqa: SIM115 - closed below
        running.append((name, log, out, subprocess.Popen([*(traced if measured else plain), *args, *argv,
                                                          f"--junitxml={logs / slug(name)}.xml"], cwd=ROOT,
                                                         env=env, stdout=out, stderr=subprocess.STDOUT,
                                                         preexec_fn=niced(NICE.get(name, 0)))))
    foreground = subprocess.Popen([*(traced if first_traced else plain), *first_args, *argv,
                                   f"--junitxml={logs / slug(first)}.xml"], cwd=ROOT, env=env)
    processes = {foreground.pid: foreground, **{process.pid: process for _, _, _, process in running}}
    groups = {foreground.pid: first, **{process.pid: name for name, _, _, process in running}}
    statuses, cpu, ended = {}, {}, {}
    while len(statuses) < len(groups):
        pid, status, used = reap(set(groups) - {p for p, n in groups.items() if n in statuses})
        name, processes[pid].returncode = groups[pid], status
        statuses[name], cpu[name], ended[name] = status, used, time.monotonic() - started
    wall = time.monotonic() - started
    left = leftovers() if adopted else []
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # before coverage's combine and report run
    for name, log, out, _process in running:
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
    summary = ", ".join(f"{name} exit {statuses[name]} ({cpu[name]:.0f} CPU-s, ended at {ended[name]:.0f} s)"
                        for name in GROUPS)
    print(f"\nmake test: {summary}; {time.monotonic() - started:.0f} s in all")
    if adopted:  # every descendant's CPU: the groups', and that of the processes that outlived their parent
        total, groups_cpu = children.ru_utime + children.ru_stime, sum(cpu.values())
        cores = os.cpu_count() or 1
        print(f"CPU: {total:.0f} CPU-s in all ({groups_cpu:.0f} in the groups, {total - groups_cpu:.0f} in processes "
              f"that outlived the group process that started them), {100 * total / (cores * wall):.0f}% of {cores} "
              f"cores for the groups' {wall:.0f} s")
    if left:
        print(f"{len(left)} processes started by the tests were still running when every group had ended:\n  "
              + "\n  ".join(left))
    return next((statuses[name] for name in GROUPS if statuses[name]), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
