"""sagalocal: run the order saga's template.yaml locally, with no Docker and no AWS account.

  python -m sagalocal up        stand the stack up and serve until Ctrl-C
  python -m sagalocal run       the main job: place the sample orders and check every outcome
  python -m sagalocal invoke F -e EVENT   what `sam local invoke` does, without Docker
  python -m sagalocal history EXECUTION   an execution's timeline (ARN or order id)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from sagalocal.stack import LocalStack, StackError
from sagalocal.template import TemplateError

STATE_FILE = Path(".local/stack.json")


class UsageError(Exception):
    pass


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--parameter-overrides takes Name=Value, not {pair!r}")
        out[key] = value
    return out


def make_stack(args: argparse.Namespace, api_port: int | None) -> LocalStack:
    template = Path(args.template)
    if not template.is_file():
        raise UsageError(f"no template at {template}")
    return LocalStack(template, api_port=api_port, endpoint_port=getattr(args, "endpoint_port", None),
                      parameter_overrides=parse_overrides(args.parameter_overrides or []),
                      max_workers=args.workers, schedule_seconds=getattr(args, "schedule_seconds", None))


def seed_catalog(stack: LocalStack, events_dir: Path) -> int:
    """Put events/catalog.json into the inventory table (the table the template names InventoryTable)."""
    from order_saga.inventory import Inventory

    path = events_dir / "catalog.json"
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the catalog: {exc}") from exc
    table = stack.template.refs.get("InventoryTable")
    if table is None:
        raise UsageError("the template has no InventoryTable to seed")
    inventory = Inventory(stack.client("dynamodb"), table)
    for item in items:
        inventory.put_item(item["sku"], item["name"], int(item["price"]), item["currency"], int(item["available"]))
    return len(items)


def cmd_up(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    stack = make_stack(args, args.port)
    stack.start()
    try:
        seeded = seed_catalog(stack, Path(args.events)) if not args.no_seed else 0
        info = stack.describe()
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps(info, indent=2))
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps(info))
        print(f"Local stack up in {time.perf_counter() - started:.1f} s ({seeded} catalog items seeded)")
        print(f"  API           {stack.api_url}   (POST /orders, GET /orders/{{order_id}})")
        print(f"  AWS endpoint  {stack.endpoint}   (aws --endpoint-url {stack.endpoint} ..., region {stack.region},"
              f" any credentials)")
        for key, value in stack.outputs.items():
            print(f"  {key:<30} {value}")
        for schedule in stack.describe()["schedules"]:
            print(f"  schedule      {schedule['function']} {schedule['expression']} (locally every "
                  f"{schedule['every_seconds']} s; on demand: python -m sagalocal trigger {schedule['function']})")
        if stack.skipped:
            print("  not emulated: " + ", ".join(f"{k} ({v})" for k, v in sorted(stack.skipped.items())))
        print("Logs of each function: .local/logs/<Function>.log. Ctrl-C to stop.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        STATE_FILE.unlink(missing_ok=True)
        stack.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from sagalocal.scenarios import format_results, load_manifest, run_scenario
    from sagalocal.timeline import format_timeline, history

    events_dir = Path(args.events)
    manifest = load_manifest(events_dir)
    started = time.perf_counter()
    with make_stack(args, args.port) as stack:
        seed_catalog(stack, events_dir)
        up_s = time.perf_counter() - started
        print(f"Local stack up in {up_s:.1f} s: API {stack.api_url}, AWS endpoint {stack.endpoint}")
        sfn = stack.client("stepfunctions")
        results = []
        for spec in manifest["scenarios"]:
            if args.only and spec["name"] not in args.only:
                continue
            results.append(run_scenario(spec, events_dir, str(stack.api_url), sfn))
            if args.timeline:
                described = sfn.describe_execution(executionArn=results[-1].execution_arn)
                print(format_timeline(described, history(sfn, results[-1].execution_arn)))
        if args.json:
            print(json.dumps([{"name": r.name, "ok": r.ok, "status": r.status, "error": r.error,
                               "saga_status": r.saga_status, "path": r.path, "elapsed_ms": round(r.elapsed_ms, 1),
                               "problems": r.problems} for r in results], indent=2))
        else:
            print(format_results(results))
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} scenarios ended as expected "
          f"({time.perf_counter() - started:.1f} s in all)")
    return 1 if failed or not results else 0


def cmd_invoke(args: argparse.Namespace) -> int:
    event_path = Path(args.event)
    try:
        event = json.loads(event_path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read event file {event_path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"event file {event_path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from exc
    stack = make_stack(args, None)
    stack.warm = False
    with stack:
        stack.resolve_function(args.function)  # an unknown name fails here, listing the known ones
        if not args.no_seed:
            seed_catalog(stack, Path(args.events))
        result = stack.invoke(args.function, event)
    cold = f", init {result.init_ms:.0f} ms" if result.init_ms else ""
    print(json.dumps(result.payload, indent=2))
    print(f"{args.function}: {'error' if result.error else 'ok'} in {result.duration_ms:.0f} ms{cold}",
          file=sys.stderr)
    return 1 if result.error else 0


def _endpoint(args: argparse.Namespace) -> str:
    if args.endpoint:
        return str(args.endpoint)
    if STATE_FILE.is_file():
        return str(json.loads(STATE_FILE.read_text())["endpoint"])
    raise UsageError("no running local stack found (.local/stack.json); start `python -m sagalocal up` "
                     "or pass --endpoint")


def cmd_history(args: argparse.Namespace) -> int:
    import boto3

    from sagalocal.timeline import format_timeline, history

    sfn = boto3.client("stepfunctions", endpoint_url=_endpoint(args), region_name=args.region,
                       aws_access_key_id="local", aws_secret_access_key="local")  # noqa: S106
    arn = args.execution
    if not arn.startswith("arn:"):
        for machine in sfn.list_state_machines()["stateMachines"]:
            candidate = machine["stateMachineArn"].replace(":stateMachine:", ":execution:") + ":" + arn
            try:
                sfn.describe_execution(executionArn=candidate)
                arn = candidate
                break
            except sfn.exceptions.ExecutionDoesNotExist:
                continue
        else:
            raise UsageError(f"no execution named {args.execution!r} on any state machine")
    print(format_timeline(sfn.describe_execution(executionArn=arn), history(sfn, arn)))
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    """Run a scheduled function now, on a running `up` stack, with the event EventBridge would send."""
    import boto3

    from sagalocal.stack import Schedule

    lam = boto3.client("lambda", endpoint_url=_endpoint(args), region_name=args.region,
                       aws_access_key_id="local", aws_secret_access_key="local")  # noqa: S106
    name = args.function
    if STATE_FILE.is_file() and not args.endpoint:
        known = json.loads(STATE_FILE.read_text())["functions"]
        if name not in known:
            raise UsageError(f"unknown function {name!r}; the template defines: {', '.join(known)}")
    event = Schedule(name, "trigger", "on demand", None).event(args.region, "123456789012")
    names = {fn["FunctionName"].rsplit("-", 1)[-1]: fn["FunctionName"] for fn in lam.list_functions()["Functions"]}
    physical = names.get(name, name)
    response = lam.invoke(FunctionName=physical, Payload=json.dumps(event).encode())
    print(json.dumps(json.loads(response["Payload"].read() or b"null"), indent=2))
    return 1 if response.get("FunctionError") else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sagalocal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def stack_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--template", default="template.yaml", help="the SAM template (default: template.yaml)")
        p.add_argument("--events", default="events", help="the events folder (catalog, scenarios)")
        p.add_argument("--parameter-overrides", nargs="*", metavar="NAME=VALUE",
                       help="template parameters, as `sam deploy --parameter-overrides`")
        p.add_argument("--workers", type=int, default=4, help="worker processes per function at most (default 4)")

    up = sub.add_parser("up", help="stand the stack up and serve until Ctrl-C")
    stack_options(up)
    up.add_argument("--port", type=int, default=3000, help="API port on 127.0.0.1 (default 3000)")
    up.add_argument("--endpoint-port", type=int, default=None, help="AWS endpoint port (default: a free one)")
    up.add_argument("--ready-file", help="write the stack's endpoints and outputs here (JSON) once it serves")
    up.add_argument("--no-seed", action="store_true", help="do not load events/catalog.json")
    up.add_argument("--schedule-seconds", type=float, default=None,
                    help="run every scheduled function this often instead of its template rate")
    up.set_defaults(func=cmd_up)

    run = sub.add_parser("run", help="place the sample orders of events/scenarios.json and check each outcome")
    stack_options(run)
    run.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    run.add_argument("--timeline", action="store_true", help="print each execution's timeline too")
    run.add_argument("--json", action="store_true", help="print the results as JSON")
    run.add_argument("--only", nargs="*", help="run only these scenarios")
    run.set_defaults(func=cmd_run)

    invoke = sub.add_parser("invoke", help="invoke one function with an event file, as `sam local invoke`")
    stack_options(invoke)
    invoke.add_argument("function", help="logical id in the template (e.g. CreateOrderFunction)")
    invoke.add_argument("-e", "--event", required=True, help="the event JSON file")
    invoke.add_argument("--no-seed", action="store_true", help="do not load events/catalog.json")
    invoke.set_defaults(func=cmd_invoke)

    hist = sub.add_parser("history", help="an execution's timeline, from a running `up` stack")
    hist.add_argument("execution", help="execution ARN or order id")
    hist.add_argument("--endpoint", help="AWS endpoint (default: the running `up` stack)")
    hist.add_argument("--region", default="us-east-1")
    hist.set_defaults(func=cmd_history)

    trigger = sub.add_parser("trigger", help="run a scheduled function now, on a running `up` stack")
    trigger.add_argument("function", help="logical id (e.g. ReaperFunction)")
    trigger.add_argument("--endpoint", help="AWS endpoint (default: the running `up` stack)")
    trigger.add_argument("--region", default="us-east-1")
    trigger.set_defaults(func=cmd_trigger)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "port", None) == 0:
            from sagalocal.stack import free_port

            args.port = free_port()
        return int(args.func(args))
    except (UsageError, StackError, TemplateError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
