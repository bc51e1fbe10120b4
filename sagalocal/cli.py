"""sagalocal: run a SAM template locally, with no Docker and no AWS account.

  python -m sagalocal up        stand the stack up and serve until Ctrl-C
  python -m sagalocal invoke F -e EVENT   what `sam local invoke` does, without Docker
  python -m sagalocal history EXECUTION   an execution's timeline (ARN or execution name)
  python -m sagalocal redrive EXECUTION   RedriveExecution, wait for its end, print its timeline
  python -m sagalocal trigger F           run a scheduled function now, with EventBridge's event
  python -m sagalocal update              redeploy the running stack, as `sam deploy` does: the template and the
                                          code read again, new versions of what changed, the aliases moved there
  python -m sagalocal console --endpoint URL --stack-outputs FILE   the web console for any running stack

`--init CMD` runs a command once the stack serves (as LocalStack's ready hooks do), with the stack's
endpoints in its environment: AWS_ENDPOINT_URL, SAGA_API_URL and SAGA_STACK_OUTPUTS (a JSON file of the
template's Outputs). The application seeds its data that way; sagalocal knows nothing of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sagalocal import booting, untraced
from sagalocal.console.cli import add_parser as add_console_parser
from sagalocal.errors import StackError, UsageError
from sagalocal.template import Template, TemplateError

if TYPE_CHECKING:  # what starts a stack is imported by the commands that start one (0.4 s of every other's start)
    from sagalocal.stack import LocalStack

STATE_FILE = Path(".local/stack.json")


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--parameter-overrides takes Name=Value, not {pair!r}")
        out[key] = value
    return out


def write_whole(path: Path, text: str) -> None:
    """`text` in `path`, which a reader sees either absent or whole: written beside it, then renamed over it (a
    reader that polls for the ready file once read it created and still empty, on a loaded machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def make_stack(args: argparse.Namespace, api_port: int | None, warm: bool = True) -> LocalStack:
    from sagalocal.stack import LocalStack

    template = Path(args.template)
    if not template.is_file():
        raise UsageError(f"no template at {template}")
    return LocalStack(template, api_port=api_port, endpoint_port=getattr(args, "endpoint_port", None),
                      parameter_overrides=parse_overrides(args.parameter_overrides or []),
                      concurrency=args.concurrency, schedule_seconds=getattr(args, "schedule_seconds", None),
                      stack_name=args.stack_name, warm=warm,
                      transaction_window_ms=args.transaction_window_ms,
                      cold_start_delay=not args.no_cold_start_delay, log_dir=Path(args.log_dir).resolve())


def run_init(stack: LocalStack, commands: list[str], workdir: Path) -> None:
    """The --init hooks, in order; the first that fails stops the stack with its output."""
    from sagalocal.stack import CREDENTIALS

    if not commands:
        return
    outputs_file = workdir / "stack-outputs.json"
    outputs_file.parent.mkdir(parents=True, exist_ok=True)
    outputs_file.write_text(json.dumps(stack.outputs, indent=2))
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": stack.endpoint, "AWS_DEFAULT_REGION": stack.region,
           "AWS_REGION": stack.region, "SAGA_STACK_OUTPUTS": str(outputs_file), "SAGA_AWS_ENDPOINT": stack.endpoint}
    if stack.api_url:
        env["SAGA_API_URL"] = stack.api_url
    for command in commands:
        done = subprocess.run(shlex.split(command), env=env, capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0:
            raise UsageError(f"--init {command!r} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
        if done.stdout.strip():
            print(f"  init: {done.stdout.strip()}", file=sys.stderr)


def cmd_up(args: argparse.Namespace) -> int:
    untraced.here()  # the stack's process runs no handler (its functions' processes do, and measure themselves)
    booting.begin()  # no garbage collection until the stack serves (sagalocal/booting.py)
    started = time.perf_counter()
    if args.port == 0:  # any free port (the console's --port 0 is its server's to pick)
        from sagalocal.stack import free_port

        args.port = free_port()
    stack = make_stack(args, args.port)
    stack.start()
    console = None
    try:
        run_init(stack, args.init or [], Path(".local"))
        from sagalocal.console.cli import serve_for_stack

        console, console_note = serve_for_stack(stack.endpoint, stack.region, stack.outputs, args.console_port)
        info = {**stack.describe(), "console": console.url if console else None}
        write_whole(STATE_FILE, json.dumps(info, indent=2))
        if args.ready_file:
            write_whole(Path(args.ready_file), json.dumps(info))
        booting.served()
        print(f"Local stack {stack.template.stack_name} up in {time.perf_counter() - started:.1f} s")
        print(f"  API           {stack.api_url}")
        print(f"  Console       {console.url if console else 'not served: ' + console_note}")
        print(f"  AWS endpoint  {stack.endpoint}   (aws --endpoint-url {stack.endpoint} ..., region {stack.region},"
              f" any credentials)")
        for key, value in stack.outputs.items():
            print(f"  {key:<30} {value}")
        for schedule in info["schedules"]:
            print(f"  schedule      {schedule['function']} {schedule['expression']} (locally every "
                  f"{schedule['every_seconds']} s; on demand: python -m sagalocal trigger {schedule['function']})")
        if stack.resources.skipped:
            print("  not emulated: " + ", ".join(f"{k} ({v})" for k, v in sorted(stack.resources.skipped.items())))
        print("Logs of each function: .local/logs/<Function>.log. Ctrl-C to stop.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        if console is not None:
            console.stop()
        STATE_FILE.unlink(missing_ok=True)
        stack.stop()
    return 0


def _read_event(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read event file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"event file {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from exc


def cmd_invoke(args: argparse.Namespace) -> int:
    event = _read_event(Path(args.event))
    if args.endpoint:
        return _invoke_remote(args, event)
    stack = make_stack(args, None, warm=False)
    known = stack.template.of_type("AWS::Serverless::Function")
    if args.function not in known:  # before starting anything
        raise UsageError(f"unknown function {args.function!r}; the template defines: {', '.join(sorted(known))}")
    booting.begin()  # no garbage collection until the stack serves (sagalocal/booting.py)
    with stack:
        run_init(stack, args.init or [], Path(".local/invoke"))
        booting.served()
        result = stack.invoke(args.function, event)
    cold = f", init {result.init_ms:.0f} ms" if result.init_ms else ""
    print(json.dumps(result.payload, indent=2))
    print(f"{args.function}: {'error' if result.error else 'ok'} in {result.duration_ms:.0f} ms{cold}",
          file=sys.stderr)
    return 1 if result.error else 0


def _client(service: str, endpoint: str | None, region: str) -> Any:
    import boto3

    if endpoint:
        return boto3.client(service, endpoint_url=endpoint, region_name=region,
                            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "local"),
                            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "local"))
    return boto3.client(service, region_name=region)


def physical_function_name(logical_id: str, endpoint: str | None, region: str, stack_name: str | None) -> str:
    """A function's deployed name: from a running sagalocal stack, else from CloudFormation, else as given."""
    if endpoint:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{endpoint}/_sagalocal/info", timeout=10) as response:  # noqa: S310
                functions = json.loads(response.read())["functions"]
            if logical_id in functions:
                return str(functions[logical_id])
            if logical_id in functions.values():
                return logical_id
            raise UsageError(f"unknown function {logical_id!r}; the stack defines: {', '.join(sorted(functions))}")
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass  # not a sagalocal endpoint: ask CloudFormation
    if stack_name:
        cfn = _client("cloudformation", endpoint, region)
        try:
            found = cfn.describe_stack_resource(StackName=stack_name, LogicalResourceId=logical_id)
            return str(found["StackResourceDetail"]["PhysicalResourceId"])
        except Exception as exc:  # noqa: BLE001 - report what CloudFormation said
            raise UsageError(f"stack {stack_name} has no resource {logical_id}: {exc}") from exc
    return logical_id


def _invoke_remote(args: argparse.Namespace, event: Any) -> int:
    name = physical_function_name(args.function, args.endpoint, args.region, args.stack_name)
    lam = _client("lambda", args.endpoint, args.region)
    started = time.perf_counter()
    response = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    payload = json.loads(response["Payload"].read() or b"null")
    print(json.dumps(payload, indent=2))
    failed = bool(response.get("FunctionError"))
    print(f"{args.function}: {'error' if failed else 'ok'} in {(time.perf_counter() - started) * 1000:.0f} ms",
          file=sys.stderr)
    return 1 if failed else 0


def _endpoint(args: argparse.Namespace) -> str:
    if args.endpoint:
        return str(args.endpoint)
    if STATE_FILE.is_file():
        return str(json.loads(STATE_FILE.read_text())["endpoint"])
    raise UsageError("no running local stack found (.local/stack.json); start `python -m sagalocal up` "
                     "or pass --endpoint")


def _execution_arn(sfn: Any, name_or_arn: str) -> str:
    """An execution's ARN from its ARN or its name (looked up on every state machine of the stack)."""
    from sagalocal.timeline import paginate

    if name_or_arn.startswith("arn:"):
        return name_or_arn
    for machine in paginate(sfn.list_state_machines, "stateMachines"):
        candidate = machine["stateMachineArn"].replace(":stateMachine:", ":execution:") + ":" + name_or_arn
        try:
            sfn.describe_execution(executionArn=candidate)
            return str(candidate)
        except sfn.exceptions.ExecutionDoesNotExist:
            continue
    raise UsageError(f"no execution named {name_or_arn!r} on any state machine")


def cmd_redrive(args: argparse.Namespace) -> int:
    """RedriveExecution (a failed, aborted or timed-out execution resumes at the state that did not succeed), then
    wait for the execution to end and print its timeline. Exit status 0 if it then ended where its definition
    ends it (it succeeded, or it reached a Fail state: a saga that compensated), 1 if a state failed again, it
    timed out or it was stopped."""
    from sagalocal.timeline import format_timeline, history

    sfn = _client("stepfunctions", _endpoint(args), args.region)
    arn = _execution_arn(sfn, args.execution)
    try:
        sfn.redrive_execution(executionArn=arn)
    except sfn.exceptions.ExecutionNotRedrivable as exc:
        raise UsageError(f"{arn} cannot be redriven: {exc.response['Error'].get('Message')}") from exc
    deadline = time.monotonic() + args.timeout
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        if time.monotonic() > deadline:
            raise UsageError(f"{arn} still RUNNING after {args.timeout:g} s")
        time.sleep(0.5)
    events = history(sfn, arn)
    print(format_timeline(described, events))
    last_state = next((e["type"] for e in reversed(events) if e["type"].endswith("StateEntered")), None)
    return 0 if described["status"] == "SUCCEEDED" or last_state == "FailStateEntered" else 1


def cmd_history(args: argparse.Namespace) -> int:
    from sagalocal.timeline import format_timeline, history

    sfn = _client("stepfunctions", _endpoint(args), args.region)
    arn = _execution_arn(sfn, args.execution)
    print(format_timeline(sfn.describe_execution(executionArn=arn), history(sfn, arn)))
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    """Run a scheduled function now, with the event EventBridge would send."""
    from sagalocal.scheduler import scheduled_event

    endpoint = _endpoint(args)
    name = physical_function_name(args.function, endpoint, args.region, None)
    lam = _client("lambda", endpoint, args.region)
    event = scheduled_event(args.region, "123456789012")
    response = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    print(json.dumps(json.loads(response["Payload"].read() or b"null"), indent=2))
    return 1 if response.get("FunctionError") else 0


def cmd_update(args: argparse.Namespace) -> int:
    """Redeploy the running stack (POST /_sagalocal/update) and print what each alias points at now."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{_endpoint(args)}/_sagalocal/update", method="POST", data=b"")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - our own 127.0.0.1 stack
            print(json.dumps(json.loads(response.read()), indent=2))
    except urllib.error.HTTPError as exc:
        raise UsageError(f"the stack refused the update: {json.loads(exc.read()).get('error')}") from exc
    return 0


def _stack_outputs(args: argparse.Namespace) -> dict[str, Any]:
    """The stack's outputs: a file, a deployed stack by name, or the running `up` stack."""
    if args.stack_outputs:
        return dict(json.loads(Path(args.stack_outputs).read_text()))
    if args.stack_name and args.endpoint is None:
        cfn = _client("cloudformation", None, args.region)
        stack = cfn.describe_stacks(StackName=args.stack_name)["Stacks"][0]
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    import urllib.request

    with urllib.request.urlopen(f"{_endpoint(args)}/_sagalocal/info", timeout=10) as response:  # noqa: S310
        return dict(json.loads(response.read())["outputs"])


def cmd_token(args: argparse.Namespace) -> int:
    """Sign a (test) user in and print their ID token, for `Authorization: Bearer <token>`."""
    from sagalocal.signin import sign_in

    outputs = _stack_outputs(args)
    missing = [k for k in ("UserPoolId", "UserPoolClientId") if k not in outputs]
    if missing:
        raise UsageError(f"the stack has no output {', '.join(missing)}: is its API behind a Cognito authorizer?")
    endpoint = None if (args.stack_outputs or args.stack_name) and not args.endpoint else _endpoint(args)
    signed = sign_in(_client("cognito-idp", endpoint, args.region), outputs["UserPoolId"],
                     outputs["UserPoolClientId"], args.username)
    if args.json:
        print(json.dumps({k: signed[k] for k in ("IdToken", "ExpiresIn", "sub", "username")}))
    else:
        print(signed["IdToken"])
    print(f"signed in {args.username} (sub {signed['sub']}); the ID token is valid for "
          f"{signed.get('ExpiresIn') or 3600} s", file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """The template's CloudWatch dashboards, computed from the metrics the running stack's functions emitted."""
    import urllib.request

    from sagalocal.metrics import dashboards, read_logs, report

    log_dir = args.log_dir
    if not log_dir:
        with urllib.request.urlopen(f"{_endpoint(args)}/_sagalocal/info", timeout=10) as response:  # noqa: S310
            log_dir = json.loads(response.read()).get("log_dir")
    template = Template(Path(args.template))
    evaluated = dashboards(template, Path(log_dir))
    if not evaluated:
        raise UsageError(f"{args.template} defines no AWS::CloudWatch::Dashboard")
    print(f"(metrics from {log_dir}, the whole run)")
    print(report(evaluated))
    if args.all:
        points = read_logs(Path(log_dir))
        print("== every metric: namespace metric dimensions -> samples, sum")
        for (namespace, name, dims), values in sorted(points.items()):
            print(f"  {namespace} {name} {dict(dims)} -> {len(values)}, {sum(values):g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sagalocal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def stack_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--template", default="template.yaml", help="the SAM template (default: template.yaml)")
        p.add_argument("--parameter-overrides", nargs="*", metavar="NAME=VALUE",
                       help="template parameters, as `sam deploy --parameter-overrides`")
        p.add_argument("--stack-name", help="the stack name (default: samconfig.toml's, else sam-app)")
        p.add_argument("--log-dir", default=".local/logs",
                       help="where the functions', the API's and DynamoDB's logs go (default: .local/logs)")
        p.add_argument("--concurrency", type=int, default=1000,
                       help="the account's concurrent Lambda executions (default 1000, as on AWS)")
        p.add_argument("--transaction-window-ms", type=float, default=2.0,
                       help="how long a DynamoDB transaction holds its items before committing (default 2 ms)")
        p.add_argument("--no-cold-start-delay", action="store_true",
                       help="start new sandboxes at once instead of after the function's measured init time")
        p.add_argument("--init", action="append", metavar="CMD",
                       help="run CMD once the stack serves (repeatable); it gets AWS_ENDPOINT_URL, SAGA_API_URL "
                            "and SAGA_STACK_OUTPUTS")

    up = sub.add_parser("up", help="stand the stack up and serve until Ctrl-C")
    stack_options(up)
    up.add_argument("--port", type=int, default=3000, help="API port on 127.0.0.1 (default 3000)")
    up.add_argument("--endpoint-port", type=int, default=None, help="AWS endpoint port (default: a free one)")
    up.add_argument("--ready-file", help="write the stack's endpoints and outputs here (JSON) once it serves")
    up.add_argument("--schedule-seconds", type=float, default=None,
                    help="run every scheduled function this often instead of its template rate")
    up.add_argument("--console-port", type=int, default=0, help="the console's port on 127.0.0.1 (default: a free one)")
    up.set_defaults(func=cmd_up)

    invoke = sub.add_parser("invoke", help="invoke one function with an event file, as `sam local invoke`")
    stack_options(invoke)
    invoke.add_argument("function", help="logical id in the template (e.g. ReserveInventoryFunction)")
    invoke.add_argument("-e", "--event", required=True, help="the event JSON file")
    invoke.add_argument("--endpoint", help="invoke on this running stack (sagalocal, LocalStack, ...) instead of "
                                           "a fresh embedded one")
    invoke.add_argument("--region", default="us-east-1")
    invoke.set_defaults(func=cmd_invoke)

    hist = sub.add_parser("history", help="an execution's timeline, from a running stack")
    hist.add_argument("execution", help="execution ARN or name")
    hist.add_argument("--endpoint", help="AWS endpoint (default: the running `up` stack)")
    hist.add_argument("--region", default="us-east-1")
    hist.set_defaults(func=cmd_history)

    redrive = sub.add_parser("redrive", help="redrive a failed execution, wait for its end, print its timeline")
    redrive.add_argument("execution", help="execution ARN or name (a parked saga's order id)")
    redrive.add_argument("--endpoint", help="AWS endpoint (default: the running `up` stack)")
    redrive.add_argument("--region", default="us-east-1")
    redrive.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for its end (default 600)")
    redrive.set_defaults(func=cmd_redrive)

    trigger = sub.add_parser("trigger", help="run a scheduled function now, on a running stack")
    trigger.add_argument("function", help="logical id (e.g. ReaperFunction)")
    trigger.add_argument("--endpoint", help="AWS endpoint (default: the running `up` stack)")
    trigger.add_argument("--region", default="us-east-1")
    trigger.set_defaults(func=cmd_trigger)
    update = sub.add_parser("update", help="redeploy the running stack: a new version of each function and state "
                                           "machine that changed, the aliases moved there; running executions keep "
                                           "theirs")
    update.add_argument("--endpoint", help="AWS endpoint (default: the running `up` stack)")
    update.set_defaults(func=cmd_update)
    token = sub.add_parser("token", help="sign a test user in and print their ID token (the API's bearer token)")
    token.add_argument("--username", default="customer-1", help="the user (created if missing; default customer-1)")
    token.add_argument("--endpoint", help="AWS endpoint (default: the running `up` stack)")
    token.add_argument("--stack-outputs", help="a deployed stack's outputs (JSON: UserPoolId, UserPoolClientId)")
    token.add_argument("--stack-name", help="a deployed stack, whose outputs CloudFormation gives")
    token.add_argument("--region", default="us-east-1")
    token.add_argument("--json", action="store_true", help="print the token, its lifetime and the user's sub as JSON")
    token.set_defaults(func=cmd_token)
    stats = sub.add_parser("stats", help="the template's CloudWatch dashboards, from the running stack's metrics")
    stats.add_argument("--template", default="template.yaml")
    stats.add_argument("--endpoint", help="AWS endpoint (default: the running `up` stack)")
    stats.add_argument("--log-dir", help="read these log files instead of the running stack's")
    stats.add_argument("--all", action="store_true", help="also list every metric with its sample count and sum")
    stats.set_defaults(func=cmd_stats)
    add_console_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, StackError, TemplateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        booting.served()  # a boot that failed leaves the collector on (tests run commands in their own process)
