"""The crash-point explorer (sagalocal/sim/explore.py) over every path: every side effect of every step,
compensation, API call and reaper sweep, each fault at it with each follow-up. No case may break an invariant,
and the number of cases explored is the one docs/scenarios.md publishes.

The paths are split over two worker processes (each boots its own simulated stack); every case is
deterministic, so the split changes nothing but the wall time. The workers run without coverage's tracer, which
makes a case 2.6 times slower (49.5 ms against 130.6 ms on the 2-core machine); tests/sim/test_pivot.py runs,
traced, the cases that reach the lines only the explorer used to reach."""

from __future__ import annotations

import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor

from sagalocal import untraced
from sagalocal.sim.explore import DOC, PATHS, Result, explore

# Two groups of about equal work (case counts from docs/scenarios.md).
GROUPS = [["three-cards", "second-capture-refused", "plain", "declined", "coupon-exhausted"],
          ["two-cards", "capture-refused", "coupon", "coupon-declined", "out-of-stock"]]


def explore_group(paths: list[str]) -> tuple[int, list[Result], dict[str, int]]:
    return explore(paths)


def test_every_crash_point_of_every_path_keeps_every_invariant():
    assert sorted(p for group in GROUPS for p in group) == sorted(PATHS)
    with ProcessPoolExecutor(len(GROUPS), mp_context=multiprocessing.get_context("spawn"),
                             initializer=untraced.here) as pool:
        outcomes = list(pool.map(explore_group, GROUPS))
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
