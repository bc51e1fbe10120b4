"""The crash-point explorer (sagalocal/sim/explore.py) over every path: every side effect of every step,
compensation, API call and reaper sweep, each fault at it with each follow-up. No case may break an invariant,
and the number of cases explored is the one docs/scenarios.md publishes.

The paths are shared out to two worker processes, the longest first (each boots its own simulated stack
once; tests/sim/conftest.py hands them the work as the tests are collected); every case is deterministic, so the
split changes nothing but the wall time. The workers run without
coverage's tracer, which makes a case 2.6 times slower (49.5 ms against 130.6 ms on the 2-core machine);
tests/sim/test_pivot.py runs, traced, the cases that reach the lines only the explorer used to reach."""

from __future__ import annotations

import re

from sagalocal.sim.explore import DOC, PATHS
from tests.sim.conftest import LONGEST_FIRST


def test_every_crash_point_of_every_path_keeps_every_invariant(background_results):
    assert sorted(LONGEST_FIRST) == sorted(PATHS)
    outcomes = background_results  # explore([path]) for each path, in two workers (tests/sim/conftest.py)
    explored = sum(n for n, _, _ in outcomes)
    failures = [f for _, group_failures, _ in outcomes for f in group_failures]
    per_path = {path: n for _, _, counts in outcomes for path, n in counts.items()}
    report = "\n".join(f"{f.name}: {'; '.join(f.violations)}  (replay: python -m sagalocal.sim.explore --case "
                       f"{f.name})" for f in failures[:10])
    assert not failures, f"{len(failures)} of {explored} cases broke an invariant:\n{report}"
    print(f"\nexplored {explored} cases: " + ", ".join(f"{p} {n}" for p, n in per_path.items()))
    published = re.search(r"\*\*([\d,]+) cases\*\* in all", DOC.read_text())
    assert published is not None, "no explorer section in docs/scenarios.md: run make docs"
    assert int(published.group(1).replace(",", "")) == explored, (
        "docs/scenarios.md publishes another case count: python -m sagalocal.sim.explore --write-doc")
    for path, n in per_path.items():
        assert f"| {path} | {PATHS[path].describe()} | {n:,} |" in DOC.read_text(), path
