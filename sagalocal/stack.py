"""The embedded local stack: template.yaml on a moto server bound to 127.0.0.1, in this process.

Resources are created from the template in dependency order (a resource whose
Ref or GetAtt is not yet available waits for a later pass). moto's Step Functions
interpreter runs the state machine; its Lambda seam (LambdaSimpleBackend.invoke)
is replaced by a dispatcher to worker processes that run the real handlers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from sagalocal import moto_patches
from sagalocal.apigw import Route, routes_from_template
from sagalocal.faults import Faults
from sagalocal.template import Template, TemplateError
from sagalocal.workers import FunctionSpec, Throttled, WorkerError, WorkerPool

log = logging.getLogger("sagalocal")

SUPPORTED = {
    "AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SNS::Topic", "AWS::Logs::LogGroup",
    "AWS::CloudWatch::Alarm", "AWS::Serverless::LayerVersion", "AWS::Serverless::Function",
    "AWS::Serverless::StateMachine", "AWS::Serverless::Api",
}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


class StackError(Exception):
    """The stack cannot start; the message says what and where."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, what: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise StackError(f"port {port} on 127.0.0.1 is in use ({what}); stop what holds it or pass "
                             f"another port") from exc


@dataclass
class LocalStack:
    template_path: Path
    api_port: int | None = 3000
    endpoint_port: int | None = None
    parameter_overrides: dict[str, str] = field(default_factory=dict)
    max_workers: int = 4
    region: str = "us-east-1"
    log_dir: Path | None = None
    warm: bool = True
    schedule_seconds: float | None = None  # run every Schedule event this often instead of its own rate

    def __post_init__(self) -> None:
        self.template_path = Path(self.template_path).resolve()
        self.root = self.template_path.parent
        self.log_dir = Path(self.log_dir or self.root / ".local" / "logs")
        self.template = Template(self.template_path, region=self.region,
                                 parameter_overrides=self.parameter_overrides)
        self.pools: dict[str, WorkerPool] = {}
        self.functions_by_name: dict[str, str] = {}  # physical name -> logical id
        self.routes: list[Route] = []
        self.outputs: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.layers: dict[str, Path] = {}
        self.state_machines: dict[str, str] = {}
        self._server: Any = None
        self._http: Any = None
        self.schedules: list[Schedule] = []
        self.faults = Faults()
        self._stopping = threading.Event()

    # ---- lifecycle ---------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.endpoint_port}"

    @property
    def api_url(self) -> str | None:
        return None if self.api_port is None else f"http://127.0.0.1:{self.api_port}"

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            config=Config(retries={"max_attempts": 2, "mode": "standard"}))

    def start(self) -> LocalStack:
        if self.api_port is not None:
            check_port_free(self.api_port, "the local API")
        if self.endpoint_port is None:
            self.endpoint_port = free_port()
        else:
            check_port_free(self.endpoint_port, "the AWS endpoint")
        self._start_moto()
        try:
            self._create_resources()
            self.outputs = self._outputs()
            if self.api_port is not None:
                from sagalocal.http import serve_api

                self._http = serve_api(self, self.api_port)
            if self.schedules:
                threading.Thread(target=self._run_schedules, name="sagalocal-schedules", daemon=True).start()
            if self.warm:
                # Warm every function before serving, so no task's timeout pays for imports.
                threads = [threading.Thread(target=_warm_quietly, args=(pool,), daemon=True)
                           for pool in self.pools.values()]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=120)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        for pool in self.pools.values():
            pool.close()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_moto(self) -> None:
        os.environ["MOTO_PORT"] = str(self.endpoint_port)  # moto's interpreter calls localhost:$MOTO_PORT
        os.environ.setdefault("AWS_DEFAULT_REGION", self.region)
        for key, value in CREDENTIALS.items():
            os.environ.setdefault(key, value)
        from moto.core.config import default_user_config
        from moto.server import ThreadedMotoServer

        default_user_config["lambda"]["use_docker"] = False
        default_user_config["stepfunctions"]["execute_state_machine"] = True
        self._install_lambda_seam()
        moto_patches.install()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.endpoint_port, verbose=False)
        self._server.start()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # The interpreter logs every Fail state and caught error at ERROR; the history has them all.
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)

    def _install_lambda_seam(self) -> None:
        """moto's no-Docker Lambda backend has one job, invoke(); ours runs the real handler."""
        from moto.awslambda_simple.models import LambdaSimpleBackend

        stack = self

        def invoke(backend: Any, function_name: str, qualifier: str | None, body: Any, headers: Any,
                   response_headers: Any) -> bytes:
            return stack._invoke_from_moto(function_name, body, headers, response_headers)

        LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]

    def _invoke_from_moto(self, function_name: str, body: Any, headers: Any, response_headers: Any) -> bytes:
        logical_id = self.resolve_function(function_name)
        event = json.loads(body) if body else {}
        invocation_type = (headers or {}).get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "Event":
            threading.Thread(target=self.pools[logical_id].invoke, args=(event,), daemon=True).start()
            response_headers["status"] = 202
            return b""
        fault = self.faults.take(logical_id, event)
        if fault is not None:
            injected = self._inject(fault, logical_id, event)
            if injected is not None:
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps(injected).encode()
        try:
            result = self.pools[logical_id].invoke(event)
        except Throttled as exc:
            raise _throttle(str(exc)) from exc
        except WorkerError as exc:  # the stack is stopping, or the handler cannot start: a failed invocation
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "Runtime.ExitError", "errorMessage": str(exc)}).encode()
        if result.error:
            response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps(result.payload).encode()

    def _inject(self, fault: Any, logical_id: str, event: Any) -> dict[str, Any] | None:
        """Apply a fault: an error payload to return, or None to go on and run the handler."""
        import time

        if fault.action == "throttle":
            raise _throttle("Rate Exceeded. (fault injected by sagalocal)")
        if fault.action == "error":
            return {"errorType": fault.error_type, "errorMessage": fault.error_message}
        if fault.action == "error-after":
            self.pools[logical_id].invoke(event)  # the handler runs and writes; its answer is lost
            return {"errorType": fault.error_type, "errorMessage": fault.error_message}
        timeout = self.pools[logical_id].spec.timeout
        if fault.delay_seconds >= timeout:
            time.sleep(timeout)
            return {"errorType": "Sandbox.Timedout", "errorMessage": f"Task timed out after {timeout:.2f} seconds"}
        time.sleep(fault.delay_seconds)
        return None

    def resolve_function(self, name_or_arn: str) -> str:
        name = name_or_arn.split(":function:")[-1].split(":")[0]
        if name in self.functions_by_name:
            return self.functions_by_name[name]
        if name in self.pools:
            return name
        known = ", ".join(sorted(self.pools))
        raise StackError(f"unknown function {name_or_arn!r}; the template defines: {known}")

    def invoke(self, function: str, event: Any) -> Any:
        """Invoke a function by logical id or name, as `sam local invoke` does."""
        return self.pools[self.resolve_function(function)].invoke(event)

    # ---- resources ---------------------------------------------------------
    def _create_resources(self) -> None:
        pending = {}
        for logical_id, resource in self.template.resources.items():
            kind = resource.get("Type", "")
            if not self.template.included(logical_id):
                continue
            if kind not in SUPPORTED:
                self.skipped[logical_id] = kind
                continue
            pending[logical_id] = resource
        while pending:
            progress, errors = False, {}
            for logical_id in list(pending):
                try:
                    self._create(logical_id, pending[logical_id]["Type"])
                except _NotYet as wait:
                    errors[logical_id] = str(wait)
                    continue
                del pending[logical_id]
                progress = True
            if not progress:
                details = "; ".join(f"{lid}: {msg}" for lid, msg in errors.items())
                raise StackError(f"cannot create resources (unresolvable references): {details}")

    def _resolve(self, logical_id: str, value: Any, prop: str) -> Any:
        try:
            return self.template.resolve(value, f"Resources.{logical_id}.Properties.{prop}")
        except TemplateError as exc:
            if "used before" in str(exc) or "not available locally" in str(exc):
                missing = re.findall(r"(?:Ref|GetAtt) ([A-Za-z0-9]+)", str(exc))
                if missing and missing[0] in self.template.resources and \
                        self.template.resources[missing[0]].get("Type") in SUPPORTED:
                    raise _NotYet(str(exc)) from exc
            raise StackError(str(exc)) from exc

    def _props(self, logical_id: str) -> dict[str, Any]:
        return self._resolve(logical_id, self.template.properties(logical_id), "")

    def _physical_name(self, logical_id: str) -> str:
        return f"{self.template.stack_name}-{logical_id}"[:64]

    def _arn(self, service: str, kind: str, name: str) -> str:
        sep = "/" if kind in ("table", "log-group") else ":"
        account = self.template.account
        return f"arn:aws:{service}:{self.region}:{account}:{kind}{sep}{name}" if kind else \
            f"arn:aws:{service}:{self.region}:{account}:{name}"

    def _create(self, logical_id: str, kind: str) -> None:
        creator = {
            "AWS::DynamoDB::Table": self._table, "AWS::SQS::Queue": self._queue, "AWS::SNS::Topic": self._topic,
            "AWS::Logs::LogGroup": self._log_group, "AWS::CloudWatch::Alarm": self._alarm,
            "AWS::Serverless::LayerVersion": self._layer, "AWS::Serverless::Function": self._function,
            "AWS::Serverless::StateMachine": self._state_machine, "AWS::Serverless::Api": self._api,
        }[kind]
        creator(logical_id)

    def _require(self, logical_id: str, props: dict[str, Any], *names: str) -> None:
        for name in names:
            if name not in props:
                raise StackError(f"Resources.{logical_id}.Properties.{name} is required")

    def _table(self, logical_id: str) -> None:
        props = self._props(logical_id)
        self._require(logical_id, props, "KeySchema", "AttributeDefinitions")
        name = props.get("TableName") or self._physical_name(logical_id)
        args: dict[str, Any] = {"TableName": name, "KeySchema": props["KeySchema"],
                                "AttributeDefinitions": props["AttributeDefinitions"],
                                "BillingMode": props.get("BillingMode", "PROVISIONED")}
        if args["BillingMode"] != "PAY_PER_REQUEST":
            args["ProvisionedThroughput"] = props.get("ProvisionedThroughput",
                                                      {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5})
        for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes", "StreamSpecification"):
            if key in props:
                args[key] = props[key]
        ddb = self.client("dynamodb")
        try:
            ddb.create_table(**args)
        except Exception as exc:
            raise StackError(f"Resources.{logical_id}: DynamoDB rejected the table: {exc}") from exc
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        self.template.refs[logical_id] = name
        self.template.attrs[(logical_id, "Arn")] = self._arn("dynamodb", "table", name)

    def _queue(self, logical_id: str) -> None:
        props = self._props(logical_id)
        name = props.get("QueueName") or (self._physical_name(logical_id) + (".fifo" if props.get("FifoQueue")
                                                                              else ""))
        attributes = {}
        for key, value in props.items():
            if key in ("QueueName", "Tags"):
                continue
            attributes[key] = json.dumps(value) if isinstance(value, dict) else str(value).lower() \
                if isinstance(value, bool) else str(value)
        url = self.client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self.template.refs[logical_id] = url
        self.template.attrs[(logical_id, "QueueName")] = name
        self.template.attrs[(logical_id, "QueueUrl")] = url
        self.template.attrs[(logical_id, "Arn")] = self._arn("sqs", "", name)

    def _topic(self, logical_id: str) -> None:
        props = self._props(logical_id)
        name = props.get("TopicName") or self._physical_name(logical_id)
        arn = self.client("sns").create_topic(Name=name)["TopicArn"]
        self.template.refs[logical_id] = arn
        self.template.attrs[(logical_id, "TopicArn")] = arn
        self.template.attrs[(logical_id, "TopicName")] = name

    def _log_group(self, logical_id: str) -> None:
        props = self._props(logical_id)
        name = props.get("LogGroupName") or self._physical_name(logical_id)
        logs = self.client("logs")
        logs.create_log_group(logGroupName=name)
        if "RetentionInDays" in props:
            logs.put_retention_policy(logGroupName=name, retentionInDays=int(props["RetentionInDays"]))
        self.template.refs[logical_id] = name
        self.template.attrs[(logical_id, "Arn")] = self._arn("logs", "log-group", name) + ":*"

    def _alarm(self, logical_id: str) -> None:
        props = self._props(logical_id)
        self._require(logical_id, props, "MetricName", "Namespace", "ComparisonOperator", "EvaluationPeriods")
        name = props.get("AlarmName") or self._physical_name(logical_id)
        args = {k: v for k, v in props.items() if k in (
            "AlarmDescription", "MetricName", "Namespace", "Statistic", "Period", "EvaluationPeriods",
            "Threshold", "ComparisonOperator", "TreatMissingData", "AlarmActions", "Dimensions")}
        for key in ("Period", "EvaluationPeriods"):
            if key in args:
                args[key] = int(args[key])
        if "Threshold" in args:
            args["Threshold"] = float(args["Threshold"])
        self.client("cloudwatch").put_metric_alarm(AlarmName=name, **args)
        self.template.refs[logical_id] = name
        self.template.attrs[(logical_id, "Arn")] = self._arn("cloudwatch", "alarm", name)

    def _layer(self, logical_id: str) -> None:
        props = self._props(logical_id)
        self._require(logical_id, props, "ContentUri")
        path = (self.root / str(props["ContentUri"])).resolve()
        if not path.is_dir():
            raise StackError(f"Resources.{logical_id}.Properties.ContentUri: {path} is not a directory")
        arn = self._arn("lambda", "layer", f"{props.get('LayerName', logical_id)}:1")
        self.layers[arn] = path
        self.template.refs[logical_id] = arn

    def _function(self, logical_id: str) -> None:
        props = self._props(logical_id)
        self._require(logical_id, props, "CodeUri", "Handler", "Runtime")
        code_dir = (self.root / str(props["CodeUri"])).resolve()
        if not code_dir.is_dir():
            raise StackError(f"Resources.{logical_id}.Properties.CodeUri: {code_dir} is not a directory")
        handler = str(props["Handler"])
        if "." not in handler:
            raise StackError(f"Resources.{logical_id}.Properties.Handler: {handler!r} is not module.function")
        layer_dirs = []
        for layer in props.get("Layers", []):
            if layer not in self.layers:
                raise StackError(f"Resources.{logical_id}.Properties.Layers: {layer} is not a layer of this "
                                 f"template (the local stack cannot fetch published layers)")
            layer_dirs.append(self.layers[layer])
        name = props.get("FunctionName") or self._physical_name(logical_id)
        arn = self._arn("lambda", "function", name)
        env = {k: str(v) for k, v in ((props.get("Environment") or {}).get("Variables") or {}).items()}
        lam = self.client("lambda")
        role = self._role()
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("README.txt", f"runs from {code_dir} in a sagalocal worker")
        lam.create_function(FunctionName=name, Runtime=str(props["Runtime"]), Role=role, Handler=handler,
                            Code={"ZipFile": archive.getvalue()}, Timeout=int(props.get("Timeout", 3)),
                            MemorySize=int(props.get("MemorySize", 128)), Environment={"Variables": env})
        spec = FunctionSpec(logical_id=logical_id, name=name, arn=arn, handler=handler, code_dir=code_dir,
                            layer_dirs=layer_dirs, environment=env, timeout=float(props.get("Timeout", 3)),
                            memory=int(props.get("MemorySize", 128)),
                            log_path=self.log_dir / f"{logical_id}.log")  # type: ignore[operator]
        self.pools[logical_id] = WorkerPool(spec, self._worker_environment(), self.max_workers)
        self.functions_by_name[name] = logical_id
        for event_name, event in (props.get("Events") or {}).items():
            if event.get("Type") in ("Schedule", "ScheduleV2"):
                self.schedules.append(Schedule.parse(logical_id, event_name, event.get("Properties") or {}))
        self.template.refs[logical_id] = name
        self.template.attrs[(logical_id, "Arn")] = arn

    def _worker_environment(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SYSTEMROOT", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(CREDENTIALS)
        env.update({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            # No X-Ray daemon locally; on AWS the template's Tracing: Active turns tracing on.
            "POWERTOOLS_TRACE_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def _role(self) -> str:
        if not hasattr(self, "_role_arn"):
            iam = self.client("iam")
            self._role_arn = iam.create_role(RoleName="sagalocal-execution-role",
                                             AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        return self._role_arn

    def _state_machine(self, logical_id: str) -> None:
        props = self._props(logical_id)
        if "DefinitionUri" in props:
            uri = props["DefinitionUri"]
            if not isinstance(uri, str):
                raise StackError(f"Resources.{logical_id}.Properties.DefinitionUri: only a local file is supported")
            path = self.root / uri
            try:
                text = path.read_text()
            except OSError as exc:
                raise StackError(f"Resources.{logical_id}.Properties.DefinitionUri: cannot read {path}: {exc}") \
                    from exc
        elif "Definition" in props:
            text = json.dumps(props["Definition"])
        else:
            raise StackError(f"Resources.{logical_id}.Properties: needs DefinitionUri or Definition")
        substitutions = {k: str(v) for k, v in (props.get("DefinitionSubstitutions") or {}).items()}
        text, unresolved = substitute(text, substitutions)
        if unresolved:
            raise StackError(f"Resources.{logical_id}.Properties.DefinitionSubstitutions: no value for "
                             f"{', '.join(sorted(unresolved))}")
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise StackError(f"Resources.{logical_id}: the definition is not valid JSON: {exc}") from exc
        name = props.get("Name") or self._physical_name(logical_id)
        arn = self.client("stepfunctions").create_state_machine(
            name=name, definition=text, roleArn=self._role(), type=props.get("Type", "STANDARD"),
        )["stateMachineArn"]
        self.state_machines[logical_id] = arn
        self.template.refs[logical_id] = arn
        self.template.attrs[(logical_id, "Arn")] = arn
        self.template.attrs[(logical_id, "Name")] = name

    def _api(self, logical_id: str) -> None:
        self._props(logical_id)
        self.routes = routes_from_template(self.template)
        self.template.refs[logical_id] = "local"
        self.template.attrs[(logical_id, "RootResourceId")] = "root"

    def _outputs(self) -> dict[str, Any]:
        outputs = {}
        for name, spec in (self.template.raw.get("Outputs") or {}).items():
            try:
                outputs[name] = self.template.resolve(spec.get("Value"), f"Outputs.{name}.Value")
            except TemplateError as exc:
                outputs[name] = f"<not available locally: {exc}>"
        if self.api_url:
            outputs["ApiUrl"] = self.api_url
        return outputs

    def _run_schedules(self) -> None:
        """Invoke each scheduled function on its rate (or every `schedule_seconds`), until the stack stops."""
        import time

        due = {id(s): time.monotonic() + (self.schedule_seconds or s.period or 0) for s in self.schedules}
        while not self._stopping.wait(0.1):
            for schedule in self.schedules:
                period = self.schedule_seconds or schedule.period
                if not schedule.enabled or period is None or time.monotonic() < due[id(schedule)]:
                    continue
                due[id(schedule)] = time.monotonic() + period
                event = schedule.event(self.region, self.template.account)
                threading.Thread(target=self._invoke_scheduled, args=(schedule, event), daemon=True).start()

    def _invoke_scheduled(self, schedule: Schedule, event: dict[str, Any]) -> None:
        try:
            result = self.pools[schedule.function].invoke(event)
            if result.error:
                log.warning("scheduled %s failed: %s", schedule.function, result.payload.get("errorMessage"))
        except Exception as exc:  # noqa: BLE001 - the next tick tries again, as EventBridge would
            if not self._stopping.is_set():
                log.warning("scheduled %s failed: %s", schedule.function, exc)

    def describe(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "api": self.api_url, "region": self.region,
                "outputs": self.outputs, "functions": sorted(self.pools),
                "schedules": [{"function": s.function, "expression": s.expression,
                               "every_seconds": self.schedule_seconds or s.period} for s in self.schedules],
                "not_emulated": {k: v for k, v in sorted(self.skipped.items())}}


@dataclass
class Schedule:
    function: str
    name: str
    expression: str
    period: float | None  # seconds, for rate(); None for cron() (run on demand only)
    enabled: bool = True

    @classmethod
    def parse(cls, function: str, name: str, props: dict[str, Any]) -> Schedule:
        expression = str(props.get("Schedule") or props.get("ScheduleExpression") or "")
        match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression)
        if match:
            unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
            period: float | None = int(match.group(1)) * unit
        elif expression.startswith("cron("):
            period = None
        else:
            raise StackError(f"Resources.{function}.Properties.Events.{name}.Properties.Schedule: "
                             f"{expression!r} is not a rate() or cron() expression")
        return cls(function, name, expression, period, props.get("Enabled", True) not in (False, "false"))

    def event(self, region: str, account: str) -> dict[str, Any]:
        """The event EventBridge delivers for a schedule."""
        import datetime
        import uuid

        return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                "source": "aws.events", "account": account, "region": region, "resources": [],
                "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "detail": {}}


def _throttle(message: str) -> Exception:
    """Lambda's TooManyRequestsException: the state machine sees Lambda.TooManyRequestsException."""
    from moto.core.exceptions import JsonRESTError

    error = JsonRESTError("TooManyRequestsException", message)
    error.code = 429
    return error


class _NotYet(Exception):
    pass


def substitute(text: str, substitutions: dict[str, str]) -> tuple[str, set[str]]:
    """DefinitionSubstitutions: replace ${Name}; return the placeholders left without a value."""
    unresolved: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in substitutions:
            return substitutions[key]
        unresolved.add(key)
        return match.group(0)

    return re.sub(r"\$\{([A-Za-z0-9_.:-]+)\}", replace, text), unresolved


def _warm_quietly(pool: WorkerPool) -> None:
    try:
        pool.warm()
    except Exception as exc:  # noqa: BLE001 - the first invocation reports it properly
        log.warning("could not warm %s: %s", pool.spec.logical_id, exc)
