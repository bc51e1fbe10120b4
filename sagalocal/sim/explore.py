"""The crash-point explorer: every side effect of every path, each fault at it, each follow-up after it.

For each path (an order that takes one route through the state machine), a run without faults lists its side
effects: every DynamoDB write and every gateway call, in order, whoever makes it (the API, a step, a
compensation, the reaper). Then, at each of them, each fault kind (sagalocal.sim.world.KINDS), each combined
with each follow-up (none; the lease expiring and the reaper taking over; StopExecution; the client resubmitting
while the saga runs, after it ended, after its execution name was freed), and a pause (no fault) with each
follow-up at that point; then the parking cases (an outage there, fixed and redriven at the end; a late redrive
after a takeover: world.PARKING_CASES). Every case is a fresh world seeded from its name, so it replays exactly:

  python -m sagalocal.sim.explore                 # every case of every path; the counterexamples
  python -m sagalocal.sim.explore --path plain    # one path
  python -m sagalocal.sim.explore --case plain:crash@12+reaper   # one case, with what happened
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sagalocal.sim.invariants import check
from sagalocal.sim.world import (
    FOLLOW_UPS_AFTER_END,
    FOLLOW_UPS_AT_POINT,
    KINDS,
    PARKING_CASES,
    Fault,
    Mix,
    Order,
    Point,
    World,
)

PATHS: dict[str, Order] = {
    "plain": Order([{"sku": "SKU-1", "quantity": 2}], ["tok_approve"]),
    "coupon": Order([{"sku": "SKU-1", "quantity": 2}], ["tok_approve"], coupon="TENOFF"),
    "two-cards": Order([{"sku": "SKU-1", "quantity": 2}], ["tok_approve", "tok_approve"]),
    "three-cards": Order([{"sku": "SKU-1", "quantity": 1}, {"sku": "SKU-2", "quantity": 1}],
                         ["tok_approve", "tok_approve", "tok_approve"]),
    "declined": Order([{"sku": "SKU-1", "quantity": 2}], ["tok_decline"]),
    "coupon-declined": Order([{"sku": "SKU-1", "quantity": 2}], ["tok_decline"], coupon="TENOFF"),
    "out-of-stock": Order([{"sku": "SKU-2", "quantity": 3}], ["tok_approve"]),
    "coupon-exhausted": Order([{"sku": "SKU-1", "quantity": 1}], ["tok_approve"], coupon="GONE"),
    # A refused coupon under CouponFailurePolicy=continue: the order goes on at its original amount (the skip's crash
    # points: a retry, a takeover or a resubmission after it landed or before). ONCE: the customer's one use is
    # taken, which only the hold sees (a refused hold, then the skip); GONE, on two cards: every redemption is
    # taken, which the coupon's read shows (the skip alone; the first card pays the discount not given).
    "coupon-skipped": Order([{"sku": "SKU-1", "quantity": 1}], ["tok_approve"], coupon="ONCE",
                            coupon_policy="continue"),
    "coupon-skipped-two-cards": Order([{"sku": "SKU-1", "quantity": 2}], ["tok_approve", "tok_approve"],
                                      coupon="GONE", coupon_policy="continue"),
    "capture-refused": Order([{"sku": "SKU-1", "quantity": 1}], ["tok_capture_fails"]),
    "second-capture-refused": Order([{"sku": "SKU-1", "quantity": 2}], ["tok_approve", "tok_capture_fails"]),
    # The second card declined fails the AuthorizePayments Map: VoidPayment voids the first (the one clean path
    # through VoidPayment, so its side effects, and an outage of it that parks the saga, are explored too).
    "second-declined": Order([{"sku": "SKU-1", "quantity": 2}], ["tok_approve", "tok_decline"]),
}


# What the random mixes draw their orders from (tests/sim/test_mix.py): every route, and orders that compete for
# stock (5 SKU-1, 2 SKU-2) and for coupons (FEW: 2 redemptions; TENOFF: one per customer).
MENU = [PATHS["plain"], PATHS["coupon"], PATHS["two-cards"], PATHS["three-cards"], PATHS["declined"],
        PATHS["capture-refused"], PATHS["second-capture-refused"],
        Order([{"sku": "SKU-2", "quantity": 1}], ["tok_approve"], coupon="FEW"),
        Order([{"sku": "SKU-1", "quantity": 3}], ["tok_approve", "tok_approve"], coupon="FEW")]


def mix_orders(seed: int, count: int = 6) -> list[Order]:
    """The orders of random mix `seed`: drawn from MENU, each with its own key, from one of three customers."""
    rng = random.Random(seed)
    return [replace(rng.choice(MENU), key=f"mix-{n}", customer=f"sim-customer-{rng.randrange(3)}")
            for n in range(count)]


@dataclass
class MixResult:
    violations: list[str]
    log: list[str]
    statuses: list[str]  # each order's saga status at the end
    faults: int  # faults that struck (follow-ups and interleavings not counted)


def run_mixes(seeds: list[int]) -> list[tuple[int, MixResult]]:
    return [(seed, run_mix(seed)) for seed in seeds]


def run_mix(seed: int) -> MixResult:
    """One random mix, settled and checked."""
    with World(seed=seed, mix=Mix(mix_orders(seed))) as world:
        world.run_mix()
        faults = sum(1 for line in world.log if line.split(" ", 1)[0].split("+")[0] in KINDS)
        return MixResult(check(world), world.log, sorted(str(o["saga_status"]) for o in world.orders()),
                         faults)


@dataclass
class Result:
    path: str
    fault: Fault | None
    violations: list[str]
    log: list[str]
    points: list[Point]

    @property
    def name(self) -> str:
        return f"{self.path}:{self.fault.label() if self.fault else 'clean'}"


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


# A fault of these kinds is retried (every step is idempotent and fenced), and these follow-ups take nothing away:
# after them an order that succeeds without the fault still succeeds. The others may cancel it: an error no Retry
# lists before the pivot, a takeover by the reaper, a StopExecution.
RETRIED = ("before", "crash", "timeout", "pause")
HARMLESS = (None, "resubmit", "resubmit-after-end", "resubmit-after-90-days")


def run_case(path: str, fault: Fault | None, expect_completed: bool = False) -> Result:
    name = f"{path}:{fault.label() if fault else 'clean'}"
    with World(seed=seed_of(name), fault=fault) as world:
        world.run(PATHS[path])
        violations = check(world)
        if fault is not None and not world.fired and fault.point >= 0:
            violations.append(f"the fault at point {fault.point} never fired: the run diverged before it")
        if expect_completed and fault is not None and fault.kind in RETRIED and fault.follow_up in HARMLESS:
            statuses = {str(o.get("saga_status")) for o in world.orders()}
            if statuses != {"COMPLETED"}:
                violations.append(f"a sale lost to a retried fault: the order ended {', '.join(sorted(statuses))} "
                                  f"where the run without it completed")
    return Result(path, fault, violations, world.log, world.points)


def cases(path: str, points: list[Point]) -> Iterator[Fault]:
    """Single faults, exhaustively: at each point each kind with each follow-up, and a pause with each follow-up
    at the point; the follow-ups after the end once more without a fault. A StopExecution needs an execution: at
    the API's points it is left out."""
    for after in FOLLOW_UPS_AFTER_END:
        yield Fault(-1, "pause", after)
    for point in points:
        at_point = [f for f in FOLLOW_UPS_AT_POINT
                    if f != "stop" or point.function not in ("OrdersApi", "Reaper", "ReaperWorker")]
        for kind in KINDS:
            for follow_up in (None, *at_point, *FOLLOW_UPS_AFTER_END):
                yield Fault(point.index, kind, follow_up)
        for follow_up in at_point:
            yield Fault(point.index, "pause", follow_up)
        for kind, follow_up in PARKING_CASES:
            if follow_up != "stop+redrive" or "stop" in at_point:
                yield Fault(point.index, kind, follow_up)


def parse_case(text: str) -> tuple[str, Fault | None]:
    path, _, label = text.partition(":")
    if label in ("", "clean"):
        return path, None
    kind, _, rest = label.partition("@")
    point, _, follow_up = rest.partition("+")
    return path, Fault(int(point), kind, follow_up or None)


def explore(paths: list[str]) -> tuple[int, list[Result], dict[str, int]]:
    explored, failures, per_path = 0, [], {}
    for path in paths:
        reference = run_case(path, None)
        explored += 1
        if reference.violations:
            failures.append(reference)
        completes = any(line.endswith(": SUCCEEDED") for line in reference.log)
        count = 1
        for fault in cases(path, reference.points):
            result = run_case(path, fault, expect_completed=completes)
            explored += 1
            count += 1
            if result.violations:
                failures.append(result)
        per_path[path] = count
    return explored, failures, per_path


DOC = Path(__file__).resolve().parents[2] / "docs" / "scenarios.md"
MARK = "<!-- explorer: written by python -m sagalocal.sim.explore --write-doc; tests/sim checks it -->"


def count_cases(paths: list[str]) -> dict[str, int]:
    """How many cases each path explores (its clean run and every fault case), without running the faults."""
    return {path: 1 + sum(1 for _ in cases(path, run_case(path, None).points)) for path in paths}


def doc_section(per_path: dict[str, int]) -> str:
    rows = "\n".join(f"| {path} | {PATHS[path].describe()} | {n:,} |" for path, n in per_path.items())
    return f"""
{MARK}
## The crash-point explorer (`tests/sim`)

A deterministic simulation (`sagalocal/sim/`, docs/simulation.md) runs the real handlers and the real state
machine definition, with DynamoDB and the gateway in memory and a virtual clock. For each path below, a run
without faults lists every side effect (each DynamoDB write, each gateway call, whoever makes it); then at
each one it injects each fault (it fails before it lands with a retried error; it lands and the sandbox
crashes; it lands and the task times out; it lands and an error no Retry lists follows), each with each
follow-up (none; the lease expires and the reaper takes over; StopExecution; the client resubmits while the
saga runs, after it ended, and after Step Functions freed its execution name), and a pause with each
follow-up at that point. And the parking cases: an outage of the dependency at that point (every later call of
that function fails too, so its retries run out; a compensation's fails the execution, which parks the saga),
alone or with the reaper taking over there, after which the operator fixes the cause and redrives the parked
execution (docs/operations.md); and the reaper (or a StopExecution) at that point followed, at the end, by a
redrive of every execution that can be redriven, which must change nothing. After every case it checks the
invariants (sagalocal/sim/invariants.py).

**{sum(per_path.values()):,} cases** in all, every one replayable by its name
(`python -m sagalocal.sim.explore --case plain:crash@5+reaper`):

| path | the order | cases |
|---|---|---|
{rows}
"""


def write_doc(per_path: dict[str, int]) -> None:
    text = DOC.read_text()
    head = text[:text.index(MARK) - 1] if MARK in text else text
    DOC.write_text(head.rstrip("\n") + "\n" + doc_section(per_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", action="append", choices=sorted(PATHS), help="explore this path (repeatable)")
    parser.add_argument("--case", help="run one case, e.g. plain:crash@12+reaper, and show what happened")
    parser.add_argument("--points", action="store_true", help="list each path's side effects")
    parser.add_argument("--show", type=int, default=20, help="counterexamples to print (default 20)")
    parser.add_argument("--write-doc", action="store_true", help="write the case counts into docs/scenarios.md")
    parser.add_argument("--mix", type=int, metavar="SEED", help="run one random mix (tests/sim/test_mix.py)")
    args = parser.parse_args(argv)
    if args.mix is not None:
        result = run_mix(args.mix)
        violations, log = result.violations, result.log
        print(f"mix {args.mix}: " + "; ".join(f"{o.key} {o.describe()} ({o.customer})" for o in mix_orders(args.mix)))
        for line in log:
            print(f"  {line}")
        for violation in violations:
            print(f"  VIOLATION: {violation}")
        return 1 if violations else 0
    if args.write_doc:
        write_doc(count_cases(list(PATHS)))
        print(f"wrote the explorer's section of {DOC.relative_to(DOC.parents[1])}")
        return 0
    if args.case:
        path, fault = parse_case(args.case)
        reference = run_case(path, None)
        result = run_case(path, fault, expect_completed=any(line.endswith(": SUCCEEDED") for line in reference.log))
        print(f"{result.name} (seed {seed_of(result.name)})")
        for line in result.log:
            print(f"  {line}")
        for violation in result.violations:
            print(f"  VIOLATION: {violation}")
        return 1 if result.violations else 0
    paths = args.path or list(PATHS)
    if args.points:
        for path in paths:
            print(path)
            for point in run_case(path, None).points:
                print(f"  {point}")
        return 0
    started = time.monotonic()
    explored, failures, per_path = explore(paths)
    took = time.monotonic() - started
    print(f"explored {explored} cases in {took:.1f} s ({', '.join(f'{p} {n}' for p, n in per_path.items())})")
    print(f"{len(failures)} cases broke an invariant")
    for result in failures[:args.show]:
        point = result.points[result.fault.point] if result.fault and 0 <= result.fault.point < len(
            result.points) else None
        print(f"- {result.name}: {result.violations[0]}" + (f"  [at {point}]" if point else "")
              + (f" (+{len(result.violations) - 1} more)" if len(result.violations) > 1 else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
