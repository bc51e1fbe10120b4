"""Milliseconds per saga on the embedded local stack, next to the floor: the same handlers called directly.

Both run in one process against the same moto DynamoDB endpoint, in the same run, so
the ratio is meaningful on a shared, noisy machine. A benchmark prints figures; it
never fails for being slow.

  local    POST /orders over HTTP -> execution SUCCEEDED (polled every 5 ms), happy path
  engine   the execution's own startDate -> stopDate, as Step Functions reports it
  floor    CreateOrder, ReserveInventory, AuthorizePayment, ConfirmOrder handlers called in sequence
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from sagalocal.scenarios import http  # noqa: E402
from sagalocal.stack import LocalStack, free_port  # noqa: E402
from sagalocal.timeline import wait_for_execution  # noqa: E402

FORWARD = ["create_order", "reserve_inventory", "authorize_payment", "confirm_order"]
ORDER = {"customer_id": "bench", "items": [{"sku": "BENCH-1", "quantity": 1}], "payment_token": "tok_approve"}


class Context:
    function_name = "bench"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    aws_request_id = "bench"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 10_000


def load_handlers(stack: LocalStack) -> list:
    os.environ.update({
        "AWS_ENDPOINT_URL": stack.endpoint, "AWS_DEFAULT_REGION": stack.region,
        "ORDERS_TABLE": stack.outputs["OrdersTableName"], "INVENTORY_TABLE": stack.outputs["InventoryTableName"],
        "PAYMENTS_TABLE": stack.outputs["PaymentsTableName"], "PAYMENT_GATEWAY": "fake",
        "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_SERVICE_NAME": "order-saga",
        "POWERTOOLS_METRICS_NAMESPACE": "OrderSaga", "POWERTOOLS_LOG_LEVEL": "WARNING",
        "LEASE_SECONDS": "20", "SAGA_DEADLINE_SECONDS": "60", "RESERVATION_TTL_SECONDS": "300",
    })
    modules = []
    for name in FORWARD:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "functions" / name / "app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def floor_once(stack: LocalStack, handlers: list) -> float:
    from order_saga.config import Timing
    from order_saga.models import OrderRequest
    from order_saga.orders import Orders

    order_id = "ord_floor_" + uuid.uuid4().hex[:16]
    orders = Orders(stack.client("dynamodb"), stack.outputs["OrdersTableName"], Timing.from_env())
    started = time.perf_counter()
    orders.accept(order_id, OrderRequest(**ORDER), "arn:bench", int(time.time() * 1000))  # what the API writes
    saga = {"order_id": order_id, **ORDER}
    for module in handlers:
        saga = module.lambda_handler({"saga": saga, "execution_id": "arn:bench:" + order_id}, Context())
    return (time.perf_counter() - started) * 1000


def local_once(stack: LocalStack, sfn) -> tuple[float, float]:
    started = time.perf_counter()
    status, accepted = http("POST", f"{stack.api_url}/orders", json.dumps(ORDER).encode(),
                            {"Idempotency-Key": uuid.uuid4().hex})
    assert status == 202, accepted
    described = wait_for_execution(sfn, accepted["execution_arn"], timeout=60, poll=0.005)
    wall = (time.perf_counter() - started) * 1000
    assert described["status"] == "SUCCEEDED", described
    engine = (described["stopDate"] - described["startDate"]).total_seconds() * 1000
    return wall, engine


def measure(n: int = 30, quiet: bool = True) -> dict:
    """The figures main() prints, as a dict (with the per-saga samples). Starts and stops its own stack."""
    import contextlib
    import io
    import logging
    import warnings

    logging.disable(logging.WARNING)
    if quiet:  # the handlers called here print their EMF metric lines; Powertools warns on empty metrics
        warnings.filterwarnings("ignore")
    mute = (lambda: contextlib.redirect_stdout(io.StringIO())) if quiet else contextlib.nullcontext
    with LocalStack(ROOT / "template.yaml", api_port=free_port()) as stack:
        from order_saga.inventory import Inventory

        Inventory(stack.client("dynamodb"), stack.outputs["InventoryTableName"]).put_item(
            "BENCH-1", "Bench item", 100, "USD", 1_000_000)
        sfn = stack.client("stepfunctions")
        handlers = load_handlers(stack)
        local_once(stack, sfn)
        with mute():
            floor_once(stack, handlers)  # warm both paths
        local, engine, floor = [], [], []
        for _ in range(n):  # interleaved, so both see the same machine load
            wall, inside = local_once(stack, sfn)
            local.append(wall)
            engine.append(inside)
            with mute():
                floor.append(floor_once(stack, handlers))
    med = statistics.median
    return {
        "n": n,
        "local_ms": med(local), "execution_ms": med(engine), "floor_ms": med(floor),
        "ratio_local_floor": med(local) / med(floor), "ratio_execution_floor": med(engine) / med(floor),
        "samples": {"local_ms": local, "execution_ms": engine, "floor_ms": floor},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=30, help="sagas of each kind (default 30)")
    args = parser.parse_args()
    figures = measure(args.n)
    print(f"sagas of each kind: {args.n} (happy path), median ms")
    print(f"  local stack, POST -> SUCCEEDED   {figures['local_ms']:7.1f}")
    print(f"  local stack, execution duration  {figures['execution_ms']:7.1f}")
    print(f"  floor: handlers called directly  {figures['floor_ms']:7.1f}")
    print(f"  ratio local / floor              {figures['ratio_local_floor']:7.2f}")
    print(f"  ratio execution / floor          {figures['ratio_execution_floor']:7.2f}")


if __name__ == "__main__":
    main()
