"""The simulation patches every boto3 client of its process while it runs (moto's mock): stop it after each
module, so that tests sharing the process (`pytest tests` in one go) meet real clients again."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest

from sagalocal import untraced
from sagalocal.sim.world import shutdown


@pytest.fixture(autouse=True, scope="module")
def _simulated_aws_stops_after_the_module():
    yield
    shutdown()


WORKERS = 2


@pytest.fixture(scope="session")
def sim_pool() -> Iterator[ProcessPoolExecutor]:
    """Two worker processes for the explorer's paths and the random mixes, shared by both (each worker boots its
    simulated stack once), untraced: coverage's tracer makes a case 2.6 and a mix 1.8 times slower
    (tests/sim/test_pivot.py runs, traced, the cases that reach the lines only the explorer used to reach)."""
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"),
                             initializer=untraced.here) as pool:
        yield pool
