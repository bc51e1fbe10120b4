"""The simulation's DynamoDB answers UpdateItem on the engine's fast path (sagalocal/dynamodb/fastupdate.py). The
proof may rest on it only if nothing a saga can see changes: here a few cases of the explorer run twice, with it and
with moto's own path, and everything the world records must be the same, side effect by side effect. The runs are
handed to the simulation's untraced workers (tests/sim/conftest.py), like the explorer's."""

from __future__ import annotations

from typing import Any

from sagalocal.sim.explore import PATHS, parse_case, seed_of
from sagalocal.sim.invariants import check
from sagalocal.sim.world import TABLES, World

# Between them: every step and compensation, coupons, split payment, the reaper's takeover, a parked saga and its
# redrive, a resubmission after the name was freed, a crash after a commit.
CASES = ["three-cards:clean", "coupon-declined:clean", "second-capture-refused:clean",
         "coupon-skipped-two-cards:crash@14+reaper", "second-declined:outage@20", "plain:pause@6+reaper+redrive",
         "coupon:crash@17+resubmit-after-90-days"]


def record(case: str, fast: bool) -> dict[str, Any]:
    from sagalocal.dynamodb import fastupdate

    path, fault = parse_case(case)
    fastupdate.ENABLED[0] = fast
    try:
        with World(seed=seed_of(case), fault=fault) as world:
            world.run(PATHS[path])
            return {"log": list(world.log), "points": [str(p) for p in world.points], "violations": check(world),
                    "tables": {table: world.items(table) for table in TABLES},
                    "stream": [(r["eventName"], r["dynamodb"].get("OldImage"), r["dynamodb"].get("NewImage"))
                               for r in world.order_stream()],
                    "ledger": dict(world.gateway.ledger)}
    finally:
        fastupdate.ENABLED[0] = True


def both_ways(case: str) -> tuple[str, dict[str, Any], dict[str, Any], int]:
    """The case on moto's own path, then on the fast path: both records, and how many updates the fast path
    answered (off, it must not even be asked)."""
    from sagalocal.dynamodb.fastupdate import COUNTS

    before = dict(COUNTS)
    theirs = record(case, fast=False)
    assert COUNTS == before, case
    ours = record(case, fast=True)
    return case, theirs, ours, COUNTS["answered"] - before["answered"]


def test_every_case_runs_the_same_on_the_fast_path_and_on_moto_s_own(background_results):
    assert [case for case, *_ in background_results] == CASES
    for case, theirs, ours, answered in background_results:
        assert answered >= 10, case  # the fast path answered most of the run's updates
        assert ours == theirs, case
        assert len(ours["points"]) > 5, case
        assert ours["violations"] == [], case
