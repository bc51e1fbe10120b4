"""Benchmark 2, throughput: happy-path sagas per second and latency percentiles at 1, 4, 8 and 16 clients.

Each client places sagas back to back (POST /orders, then waits for the execution to finish) until the
level's total is reached. Latency is POST sent -> the execution's stopDate (as Step Functions reports
it; same machine, same clock), so it does not include the poll interval. One poller thread learns
which executions finished with ListExecutions(statusFilter=RUNNING) every 20 ms, for every client at
once, then reads each finished one's stopDate with one DescribeExecution: the clients never hammer
the endpoint. Throughput is sagas finished / the level's wall time (first POST -> last finish).

The stack is the default one (`python -m sagalocal up`): at most 4 worker processes per function.

Usage: python bench/throughput.py [--levels 1,4,8,16] [--per-level 60] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, percentile, place_order, quiet, start_stack, warm_all_workers, write_json  # noqa: E402

from sagalocal import timeline  # noqa: E402


class Poller:
    """One thread that tells every waiting client when its execution has finished."""

    def __init__(self, sfn: Any, state_machine_arn: str, interval: float = 0.02) -> None:
        self.sfn, self.arn, self.interval = sfn, state_machine_arn, interval
        self.waiting: dict[str, threading.Event] = {}
        self.finished: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.polls = 0
        self.thread = threading.Thread(target=self._run, name="bench-poller", daemon=True)
        self.thread.start()

    def wait(self, execution_arn: str, timeout: float = 120) -> dict[str, Any]:
        event = threading.Event()
        with self.lock:
            self.waiting[execution_arn] = event
        if not event.wait(timeout):
            raise TimeoutError(f"{execution_arn} did not finish in {timeout:.0f} s")
        with self.lock:
            return self.finished.pop(execution_arn)

    def _running(self) -> set[str]:
        arns, token = set(), None
        while True:
            page = self.sfn.list_executions(stateMachineArn=self.arn, statusFilter="RUNNING", maxResults=1000,
                                            **({"nextToken": token} if token else {}))
            arns |= {e["executionArn"] for e in page["executions"]}
            token = page.get("nextToken")
            if not token:
                return arns

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                candidates = list(self.waiting)
            if not candidates:
                continue
            running = self._running()
            self.polls += 1
            for arn in candidates:
                if arn in running:
                    continue
                described = self.sfn.describe_execution(executionArn=arn)
                if described["status"] == "RUNNING":  # started after the list was read
                    continue
                with self.lock:
                    self.finished[arn] = described
                    self.waiting.pop(arn).set()


def run_level(stack: Any, poller: Poller, clients: int, total: int) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    arns: list[str] = []
    remaining = [total]
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            sent = time.time()
            try:
                accepted = place_order(stack.api_url)
                described = poller.wait(accepted["execution_arn"])
            except Exception as exc:  # noqa: BLE001 - counted and reported, the level goes on
                with lock:
                    failures.append(str(exc)[:200])
                continue
            with lock:
                arns.append(accepted["execution_arn"])
                if described["status"] != "SUCCEEDED":
                    failures.append(f"{described['status']} {described.get('error')}")
                else:
                    latencies.append((described["stopDate"].timestamp() - sent) * 1000)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    retried, retry_errors = 0, collections.Counter()
    for arn in arns:  # after the clock stopped: which sagas retried a step, and on what error
        visits = timeline.visits(timeline.history(stack.client_sfn, arn))
        if any(v.retries for v in visits):
            retried += 1
            for visit in visits:
                retry_errors.update(f"{visit.name}: {e}" for e in visit.errors)
    return {
        "clients": clients, "sagas": len(latencies), "failures": len(failures), "failure_examples": failures[:3],
        "wall_s": wall, "sagas_per_s": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p95_ms": percentile(latencies, 95) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
        "median_ms": median(latencies), "max_ms": max(latencies, default=None),
        "sagas_with_retries": retried, "retry_errors": dict(retry_errors.most_common(5)),
    }


def measure(levels: list[int], per_level: int) -> dict[str, Any]:
    quiet()
    stack = start_stack()
    try:
        sfn = stack.client("stepfunctions")
        stack.client_sfn = sfn
        poller = Poller(sfn, stack.outputs["StateMachineArn"])
        # Every pool of the happy path at its max_workers processes before measuring: no cold start in a level.
        warm_all_workers(stack, ["OrdersApiFunction", "CreateOrderFunction", "ReserveInventoryFunction",
                                 "AuthorizePaymentFunction", "ConfirmOrderFunction"])
        run_level(stack, poller, 4, 8)
        results = [run_level(stack, poller, clients, per_level) for clients in levels]
        poller.stop.set()
        return {"levels": results, "per_level": per_level, "max_workers_per_function": stack.max_workers,
                "poll_interval_s": poller.interval}
    finally:
        stack.stop()


def fmt(value: float | None) -> str:
    return f"{value:8.0f}" if value is not None else f"{'-':>8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--per-level", type=int, default=60, help="sagas per concurrency level")
    parser.add_argument("--json")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print(f"throughput: {args.per_level} happy-path sagas per level, clients back to back; "
          "latency = POST -> execution stopDate")
    results = measure(levels, args.per_level)
    print(f"  {'clients':>7} {'sagas/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'failed':>6} {'retried':>7}")
    for row in results["levels"]:
        print(f"  {row['clients']:>7} {row['sagas_per_s']:8.2f} {fmt(row['p50_ms'])} {fmt(row['p95_ms'])} "
              f"{fmt(row['p99_ms'])} {row['failures']:>6} {row['sagas_with_retries']:>7}")
        if row["retry_errors"]:
            print("          retried on: " + ", ".join(f"{k} x{v}" for k, v in row["retry_errors"].items()))
        for example in row["failure_examples"]:
            print(f"          failure: {example}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
