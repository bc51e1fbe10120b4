"""The embedded local stack: a SAM template's resources on local services, bound to 127.0.0.1.

LocalStack only wires the services together; each lives in its own module:

  dynamodb/      DynamoDB in a process of its own (moto's backend, AWS's concurrency behaviour, faults)
  endpoint.py    the AWS endpoint: moto's server for every other service, DynamoDB forwarded
  awslambda/     Lambda: a template process per function, sandboxes forked from it, scaling and throttling
  stepfunctions  moto's ASL interpreter, calling the Lambda service directly
  apigateway.py  the local API
  scheduler.py   EventBridge schedules
  template.py    the template, read as SAM CLI reads it
  provision.py   the resources, created in dependency order with CloudFormation's physical names
  versions.py    state machine versions and aliases (Lambda's are the Lambda service's)

`update()` redeploys the running stack as `sam deploy` would: the template and the code read again, a new version of
every function and state machine that changed, the aliases moved there. Running executions keep what they started on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from sagalocal import cognito, eventbridge, metrics, motomodels, sqs, stepfunctions
from sagalocal.apigateway import AccessLog, TokenBucket, WebAcl, WebAclError, serve_api
from sagalocal.awslambda.eventsources import SqsDestination, StreamMapping
from sagalocal.awslambda.queues import QueueMapping, queue_url
from sagalocal.awslambda.service import LambdaService
from sagalocal.cognito import PoolAuthorizer
from sagalocal.dynamodb.server import DynamoDBProcess
from sagalocal.endpoint import AwsEndpoint
from sagalocal.iam import Authorizer
from sagalocal.provision import Provisioned, Provisioner, StackError, check_layers
from sagalocal.scheduler import Scheduler
from sagalocal.template import Template, TemplateError

log = logging.getLogger("sagalocal")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
__all__ = ["LocalStack", "StackError", "free_port"]


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


def default_stack_name(template_path: Path) -> str:
    """The stack name samconfig.toml gives `sam deploy` (default.global.parameters.stack_name), else sam-app."""
    config = template_path.parent / "samconfig.toml"
    try:
        data = tomllib.loads(config.read_text())
        return str(data["default"]["global"]["parameters"]["stack_name"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "sam-app"


class LocalStack:
    def __init__(self, template_path: Path, api_port: int | None = 3000, endpoint_port: int | None = None,
                 parameter_overrides: dict[str, str] | None = None, concurrency: int = 1000,
                 region: str = "us-east-1", log_dir: Path | None = None, warm: bool = True,
                 schedule_seconds: float | None = None, stack_name: str | None = None,
                 transaction_window_ms: float = 2.0, cold_start_delay: bool = True) -> None:
        self.template_path = Path(template_path).resolve()
        self.root = self.template_path.parent
        self.api_port = api_port
        self.endpoint_port = endpoint_port
        self.parameter_overrides = dict(parameter_overrides or {})
        self.region = region
        self.log_dir = Path(log_dir or self.root / ".local" / "logs")
        self.warm = warm
        self.schedule_seconds = schedule_seconds
        self.transaction_window_ms = transaction_window_ms
        self.template = Template(self.template_path, region=region, parameter_overrides=self.parameter_overrides,
                                 stack_name=stack_name or default_stack_name(self.template_path))
        check_layers(self.template)  # with the template's other refusals, before anything starts
        self.lambdas = LambdaService({}, concurrency=concurrency, cold_start_delay=cold_start_delay)
        self.iam = Authorizer(self.template.account)
        self.resources = Provisioned()
        self.outputs: dict[str, Any] = {}
        self.dynamodb: DynamoDBProcess | None = None
        self.aws: AwsEndpoint | None = None
        self.scheduler: Scheduler | None = None
        self.streams: list[StreamMapping] = []
        self.queues: list[QueueMapping] = []
        self._api: Any = None
        self._update_lock = threading.Lock()
        self._clients: dict[tuple[str, str], Any] = {}  # (service, endpoint) -> the client `client()` made
        self._clients_lock = threading.Lock()

    # ---- endpoints and clients ---------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.endpoint_port}"

    @property
    def api_url(self) -> str | None:
        return None if self.api_port is None else f"http://127.0.0.1:{self.api_port}"

    def client(self, service: str) -> Any:
        """The stack's own client of a service, made once per endpoint: provisioning asks for one ~60 times a boot,
        and making a client costs ~8 ms of CPU where a call on one costs ~5 (boto3's clients are thread-safe)."""
        endpoint = self.dynamodb.endpoint if service == "dynamodb" and self.dynamodb else self.endpoint
        with self._clients_lock:
            made = self._clients.get((service, endpoint))
            if made is None:
                made = self._clients[(service, endpoint)] = boto3.client(
                    service, endpoint_url=endpoint, region_name=self.region,
                    aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                    config=Config(retries={"max_attempts": 2, "mode": "standard"}))
            return made

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        if self.api_port is not None:
            check_port_free(self.api_port, "the local API")
        if self.endpoint_port is None:
            self.endpoint_port = free_port()
        else:
            check_port_free(self.endpoint_port, "the AWS endpoint")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.dynamodb = DynamoDBProcess(free_port(), self.log_dir / "DynamoDB.log", self.transaction_window_ms)
            self.dynamodb.start()
            self._start_aws_endpoint()
            self.lambdas.base_environment.update(self._function_environment())
            # Each function, version and alias joins the Lambda service as it is created.
            self.resources = Provisioner(self.template, self.client, self.log_dir, lambdas=self.lambdas).create_all()
            self._register_identities()
            self.outputs = self.template.outputs({"ApiUrl": self.api_url} if self.api_url else {})
            if self.warm:
                self.lambdas.start_all()  # every function initialized before the first request
            if self.api_port is not None:
                # Event sources invoke a function's alias where SAM made one (AutoPublishAlias), else the function.
                self._api = serve_api(self.resources.routes, self.resources.stage, self.template.account,
                                      self.lambdas.invoke_event, self.api_port, **self._api_stage())
            self.scheduler = Scheduler(self.resources.schedules, self.lambdas.invoke_event, self.region,
                                       self.template.account, self.schedule_seconds)
            self.scheduler.start()
            self.streams = [self._stream_mapping(spec) for spec in self.resources.stream_mappings]
            for mapping in self.streams:
                mapping.start()
            self.queues = [self._queue_mapping(spec) for spec in self.resources.queue_mappings]
            for queue_mapping in self.queues:
                queue_mapping.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _stream_mapping(self, spec: dict[str, Any]) -> StreamMapping:
        """A stream event source mapping: it invokes the function's alias, and sends what it gives up on to its
        OnFailure queue with the function's own credentials (IAM enforced at the endpoint)."""
        assert self.dynamodb is not None
        send = SqsDestination(self.endpoint, self.region, spec["access_key_id"], spec["secret_access_key"]) \
            if spec.get("on_failure") else None

        def target(logical_id: str) -> tuple[str, str]:
            invoked = self.lambdas.event_target(logical_id)
            return self.lambdas.invoked_arn(invoked), self.lambdas.resolve(invoked).spec.version

        return StreamMapping(spec, self.dynamodb.endpoint, self.lambdas.invoke_event, send=send, target=target)

    def _queue_mapping(self, spec: dict[str, Any]) -> QueueMapping:
        """An SQS event source mapping: it polls with the function's own credentials (IAM enforced at the endpoint)
        and invokes the function's alias."""
        client = boto3.client("sqs", endpoint_url=self.endpoint, region_name=self.region,
                              aws_access_key_id=spec["access_key_id"], aws_secret_access_key=spec["secret_access_key"],
                              config=Config(retries={"total_max_attempts": 1}, read_timeout=30,
                                            max_pool_connections=max(10, int(spec.get("max_concurrency") or 0))))
        return QueueMapping({**spec, "queue_url": queue_url(self.endpoint, spec["queue_arn"])}, client,
                            self.lambdas.invoke_event, self.region)

    def update(self) -> dict[str, Any]:
        """Redeploy: read the template and the code again; publish a new version of each function whose code, layers
        or configuration changed, and a new state machine version where its definition changed (a new function
        version is a new definition); move the aliases there. Executions that run keep the state machine version
        they started on, and with it the function versions it invokes. The aliases move all at once (a
        DeploymentPreference's gradual shift and alarms are CloudFormation's, not emulated). Returns what each
        alias points at now."""
        with self._update_lock:
            before = self.template
            template = Template(self.template_path, region=self.region, parameter_overrides=self.parameter_overrides,
                                stack_name=before.stack_name)
            self.resources = Provisioner(template, self.client, self.log_dir, lambdas=self.lambdas).update_all(
                self.resources, before.created, before)
            self.template = template
            self._register_identities()
            self.outputs = template.outputs({"ApiUrl": self.api_url} if self.api_url else {})
            if self.warm:
                self.lambdas.start_all()
            return self.deployed()

    def deployed(self) -> dict[str, Any]:
        """What each alias points at: function versions, and state machine versions."""
        sfn = self.client("stepfunctions")
        machines = {}
        for logical_id, alias_arn in self.resources.state_machine_aliases.items():
            routing = sfn.describe_state_machine_alias(stateMachineAliasArn=alias_arn)["routingConfiguration"]
            machines[logical_id] = {"alias": alias_arn, "versions": [r["stateMachineVersionArn"] for r in routing]}
        return {"functions": {lid: {"alias": alias, "version": version}
                              for lid, alias, version in self.resources.function_aliases},
                "state_machines": machines}

    def _update_route(self, method: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:
        if method == "GET":
            return 200, self.deployed()
        if method != "POST":
            return 405, {"error": "POST redeploys the stack; GET says what each alias points at"}
        try:
            return 200, self.update()
        except (StackError, TemplateError) as exc:
            return 409, {"error": str(exc)}

    def _api_stage(self) -> dict[str, Any]:
        """The REST API's authorizers, throttling and access log, from the template."""
        authorizers: dict[str, PoolAuthorizer] = {}
        for name, spec in self.resources.authorizers.items():
            if name == "__default__":
                continue
            if "UserPoolArn" not in spec:
                raise StackError(f"authorizer {name}: only Cognito user pool authorizers are emulated")
            arns = spec["UserPoolArn"] if isinstance(spec["UserPoolArn"], list) else [spec["UserPoolArn"]]
            pool_id = str(arns[0]).rsplit("/", 1)[-1]
            header = str((spec.get("Identity") or {}).get("Header", "Authorization"))
            clients = self.resources.pool_clients.get(pool_id, set())
            authorizers[name] = PoolAuthorizer(str(arns[0]), self.endpoint, clients, header)
        default = self.resources.authorizers.get("__default__", {}).get("name")

        def authorize(route: Any, headers: dict[str, str]) -> tuple[dict[str, Any] | None, tuple[int, bytes] | None]:
            name = route.auth or default
            if not name or name == "NONE":
                return None, None
            return authorizers[name].authorize(headers)

        stage: dict[str, Any] = {"authorize": authorize}
        for setting in self.resources.api.get("MethodSettings") or []:
            if setting.get("ResourcePath") == "/*" and "ThrottlingRateLimit" in setting:
                rate = float(setting["ThrottlingRateLimit"])
                stage["throttle"] = TokenBucket(rate, float(setting.get("ThrottlingBurstLimit", rate)))
        access = self.resources.api.get("AccessLogSetting")
        if access and access.get("Format"):
            stage["access_log"] = AccessLog(self.log_dir / "ApiAccess.log", str(access["Format"]))
        acl = self._web_acl()
        if acl is not None:
            stage["web_acl"] = acl
        return stage

    def _web_acl(self) -> WebAcl | None:
        """The web ACL an AWS::WAFv2::WebACLAssociation attaches to the REST API's stage (not a resource the local
        stack creates: the API server applies its rules, read from the template)."""
        t = self.template
        apis = set(t.of_type("AWS::Serverless::Api", "AWS::ApiGateway::RestApi"))
        for association in t.of_type("AWS::WAFv2::WebACLAssociation"):
            props = t.properties(association)
            if not t.references(props.get("ResourceArn")) & apis:
                continue
            acls = sorted(t.references(props.get("WebACLArn")))
            if len(acls) != 1 or t.resources[acls[0]].get("Type") != "AWS::WAFv2::WebACL":
                raise StackError(f"Resources.{association}.Properties.WebACLArn: only a web ACL of this template "
                                 f"is emulated")
            try:
                return WebAcl(acls[0], t.resolve(t.properties(acls[0]), f"Resources.{acls[0]}.Properties"))
            except WebAclError as exc:
                raise StackError(f"Resources.{exc}") from exc
        return None

    def _register_identities(self) -> None:
        """Each function's credentials and role: the DynamoDB process and the endpoint enforce them."""
        principals = self.resources.principals
        self.iam.register(principals)
        assert self.dynamodb is not None
        request = urllib.request.Request(self.dynamodb.endpoint + "/_sagalocal/iam", method="POST",  # noqa: S310
                                         data=json.dumps([p.to_json() for p in principals]).encode())
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own 127.0.0.1 server
            response.read()

    def identities(self) -> dict[str, Any]:
        """What each function's role allows, and what each function used, from both enforcement points."""
        assert self.dynamodb is not None
        with urllib.request.urlopen(self.dynamodb.endpoint + "/_sagalocal/iam", timeout=30) as response:  # noqa: S310
            dynamodb = json.loads(response.read())
        used: dict[str, list[list[str]]] = {}
        for source in (dynamodb["used"], self.iam.used()):
            for function, pairs in source.items():
                used.setdefault(function, []).extend(pairs)
        return {"principals": self.iam.principals(), "used": {k: sorted(v) for k, v in used.items()}}

    def _start_aws_endpoint(self) -> None:
        os.environ["MOTO_PORT"] = str(self.endpoint_port)  # moto's interpreter calls localhost:$MOTO_PORT
        os.environ.setdefault("AWS_DEFAULT_REGION", self.region)
        for key, value in CREDENTIALS.items():
            os.environ.setdefault(key, value)
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.core.config import default_user_config

        default_user_config["lambda"]["use_docker"] = False
        default_user_config["stepfunctions"]["execute_state_machine"] = True
        lambdas = self.lambdas

        def invoke(backend: Any, function_name: str, qualifier: str | None, body: Any, headers: Any,
                   response_headers: Any) -> bytes:
            return lambdas.invoke_for_moto(function_name, body, headers, response_headers, qualifier)

        LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]  # moto's no-Docker Lambda seam
        stepfunctions.install(self.lambdas)
        eventbridge.install(self.lambdas, self.template.account, self.region)
        sqs.install()
        motomodels.stop_tracking_instances()
        cognito.one_signing_key()
        assert self.dynamodb is not None
        self.aws = AwsEndpoint(int(self.endpoint_port or 0), self.dynamodb.port, {
            "/_sagalocal/lambda/stats": lambda method, query, body: (200, self.lambdas.stats()),
            "/_sagalocal/executions/wait": self._wait_route,
            "/_sagalocal/info": lambda method, query, body: (200, self.describe()),
            "/_sagalocal/update": self._update_route,
            "/_sagalocal/iam": lambda method, query, body: (200, self.identities()),
            "/_sagalocal/metrics": lambda method, query, body: (200, {"log_dir": str(self.log_dir), "dashboards":
                                                                      metrics.dashboards(self.template, self.log_dir)}),
        }, self.iam)
        self.aws.start()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # The interpreter logs every Fail state and caught error at ERROR; the history has them all.
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)

    @staticmethod
    def _wait_route(method: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:
        arn = (query.get("arn") or [""])[0]
        try:
            timeout = min(float((query.get("timeout") or ["30"])[0]), 300.0)
        except ValueError:
            return 400, {"error": "timeout must be a number of seconds"}
        if not arn:
            return 400, {"error": "give the execution's arn"}
        return 200, {"arn": arn, "ended": stepfunctions.wait_for(arn, timeout)}

    def _function_environment(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SYSTEMROOT", "VIRTUAL_ENV")
        # COVERAGE_*: when the tests measure coverage, the handlers are measured too.
        env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("COVERAGE_")}
        env.update(CREDENTIALS)
        assert self.dynamodb is not None
        env.update({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_DYNAMODB": self.dynamodb.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            # No X-Ray daemon locally; on AWS the template's Tracing: Active turns tracing on.
            "POWERTOOLS_TRACE_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def stop(self) -> None:
        for mapping in self.streams:
            mapping.stop()
        self.streams = []
        for queue_mapping in self.queues:
            queue_mapping.stop()
        self.queues = []
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._api is not None:
            self._api.shutdown()
            self._api.server_close()
            self._api = None
        self.lambdas.stop()
        if self.aws is not None:
            self.aws.stop()
            self.aws = None
        if self.dynamodb is not None:
            self.dynamodb.stop()
            self.dynamodb = None
        with self._clients_lock:
            clients, self._clients = self._clients, {}
        for made in clients.values():
            made.close()  # their connections to the servers just stopped

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def invoke(self, function: str, event: Any) -> Any:
        """Invoke a function by logical id, name or ARN, as `sam local invoke` does."""
        return self.lambdas.invoke(function, event)

    def describe(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "api": self.api_url, "region": self.region,
                "stack_name": self.template.stack_name, "log_dir": str(self.log_dir),
                "dynamodb_endpoint": self.dynamodb.endpoint if self.dynamodb else None,
                "outputs": self.outputs,
                "functions": {spec.logical_id: spec.name for spec in self.resources.functions},
                "schedules": self.scheduler.describe() if self.scheduler else [],
                "stream_mappings": [mapping.describe() for mapping in self.streams],
                "queue_mappings": [mapping.describe() for mapping in self.queues],
                "not_emulated": dict(sorted(self.resources.skipped.items()))}
