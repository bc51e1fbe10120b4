"""The simulation patches every boto3 client of its process while it runs (moto's mock): stop it after each
module, so that tests sharing the process (`pytest tests` in one go) meet real clients again.

The explorer's paths, the random mixes and the replay of one mix run in two worker processes of their own,
untraced (coverage's tracer makes a case 2.6 and a mix 1.8 times slower; tests/sim/test_pivot.py runs, traced,
the cases that reach the lines only the explorer used to reach). Their work is handed to the workers as soon as
the tests are collected, and the four tests that read it run last: meanwhile this process runs the other tests
of the tier. Each piece runs from a frame with room on the frame stack (sagalocal/framestack.py): a pool
worker's call depth otherwise swung across the edge of CPython's 16 KiB frame chunks, mapping and unmapping one
~800 times a case (a fifth of the workers' CPU)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import pytest

from sagalocal import untraced
from sagalocal.framestack import call
from sagalocal.sim.explore import explore, run_mix, run_mixes
from sagalocal.sim.world import shutdown

WORKERS = 2
EXPLORER = "test_every_crash_point_of_every_path_keeps_every_invariant"
MIXES = "test_random_mixes_of_orders_faults_and_takeovers_keep_every_invariant"
REPLAY = "test_a_mix_replays_exactly"
FAST_PATH = "test_every_case_runs_the_same_on_the_fast_path_and_on_moto_s_own"
# The paths, the longest first (their case counts in docs/scenarios.md), then the mixes in small chunks: each
# worker takes the next piece as it finishes one, so the two end together.
LONGEST_FIRST = ["second-capture-refused", "capture-refused", "three-cards", "second-declined", "coupon-declined",
                 "coupon-skipped-two-cards", "coupon-skipped",
                 "two-cards", "declined", "coupon", "plain", "coupon-exhausted", "out-of-stock"]
SEEDS = range(120)
MIX_CHUNKS = 8

_pool: list[ProcessPoolExecutor] = []
_work: dict[str, list[Future[Any]]] = {}


def _start(names: set[str]) -> None:
    pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=untraced.here)
    _pool.append(pool)
    if EXPLORER in names:
        _work[EXPLORER] = [pool.submit(call, explore, [path]) for path in LONGEST_FIRST]
    if MIXES in names:
        _work[MIXES] = [pool.submit(call, run_mixes, list(SEEDS)[n::MIX_CHUNKS]) for n in range(MIX_CHUNKS)]
    if REPLAY in names:  # one mix twice, each in whichever worker is free: the same result from any process
        _work[REPLAY] = [pool.submit(call, run_mix, 7), pool.submit(call, run_mix, 7)]
    if FAST_PATH in names:
        from tests.sim.test_engine_fast_path import CASES, both_ways

        _work[FAST_PATH] = [pool.submit(call, both_ways, case) for case in CASES]


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they deselect
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    background = [item for item in items if item.name in (EXPLORER, MIXES, REPLAY, FAST_PATH)]
    if not background:
        return
    items[:] = [item for item in items if item not in background] + background
    _start({item.name for item in background})


def pytest_sessionfinish(session: pytest.Session) -> None:
    while _pool:
        _pool.pop().shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def background_results(request: pytest.FixtureRequest) -> list[Any]:
    """The results of the work handed to the workers for this test (explorer: one per path, in LONGEST_FIRST's
    order; mixes: one list of (seed, result) per chunk; the replay: one mix's result, twice)."""
    name = request.node.name
    if name not in _work:  # collected some other way (a plugin reordering): start it now
        _start({name})
    return [future.result() for future in _work[name]]


@pytest.fixture(autouse=True, scope="module")
def _simulated_aws_stops_after_the_module():
    yield
    shutdown()
