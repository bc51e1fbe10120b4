"""Create a template's resources on the local services, as CloudFormation would: in dependency order, with
CloudFormation's physical names (`<stack>-<LogicalId>-<RANDOM>` where the template names none), so nothing
that runs here can rely on a name a deployed stack would not have.

SAM's AutoPublishAlias is honoured: a function or state machine that has one is published as a version and its
alias points there; the function's event sources (API, schedules, streams) invoke the alias, as SAM wires them.
An update (`Provisioner.update_all`) re-reads the functions and state machines, publishes a new version of each one
that changed (its code, its layers' code or its configuration: AutoPublishAliasAllProperties, whose absence is
refused) and moves the aliases there, all at once: a DeploymentPreference's gradual shift and its alarms are
CloudFormation's and are not emulated. Any other resource must be unchanged: the local stack replaces nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import random
import re
import secrets
import string
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagalocal.awslambda.code import CodeStore
from sagalocal.awslambda.runtime import FunctionSpec
from sagalocal.errors import StackError
from sagalocal.eventbridge import rule_of_function_event
from sagalocal.iam import Principal, Statement, statements_of
from sagalocal.template import Template, TemplateError

SUPPORTED = {
    "AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SNS::Topic", "AWS::Logs::LogGroup",
    "AWS::CloudWatch::Alarm", "AWS::CloudWatch::Dashboard", "AWS::Serverless::LayerVersion",
    "AWS::Serverless::Function", "AWS::Serverless::StateMachine", "AWS::Serverless::Api",
    "AWS::Cognito::UserPool", "AWS::Cognito::UserPoolClient", "AWS::Events::EventBus", "AWS::Events::Rule",
    "AWS::SQS::QueuePolicy", "AWS::IAM::Role",
}


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


@dataclass
class Route:
    method: str  # upper case, or ANY
    resource: str  # "/orders/{order_id}"
    function: str  # logical id of the function
    auth: str | None = None  # the authorizer's name, None for an open route


@dataclass
class Provisioned:
    """What the stack created: functions, routes, schedules, state machines, and what it skipped."""

    functions: list[FunctionSpec] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    stage: str = "Prod"
    authorizers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {type, user_pool_arns, ...}
    schedules: list[Schedule] = field(default_factory=list)
    state_machines: dict[str, str] = field(default_factory=dict)  # logical id -> ARN
    user_pools: dict[str, str] = field(default_factory=dict)  # logical id -> pool id
    pool_clients: dict[str, set[str]] = field(default_factory=dict)  # pool id -> its app client ids
    api: dict[str, Any] = field(default_factory=dict)  # the REST API's MethodSettings, AccessLogSetting
    rules: list[dict[str, Any]] = field(default_factory=list)  # EventBridge rules with their targets
    principals: list[Principal] = field(default_factory=list)  # each function's identity and role policy
    stream_mappings: list[dict[str, Any]] = field(default_factory=list)  # DynamoDB stream -> function
    queue_mappings: list[dict[str, Any]] = field(default_factory=list)  # SQS queue -> function
    roles: dict[str, list[Statement]] = field(default_factory=dict)  # role ARN -> its statements
    skipped: dict[str, str] = field(default_factory=dict)
    function_versions: list[FunctionSpec] = field(default_factory=list)  # versions published (AutoPublishAlias)
    function_aliases: list[tuple[str, str, str]] = field(default_factory=list)  # (logical id, alias, version)
    state_machine_aliases: dict[str, str] = field(default_factory=dict)  # logical id -> its alias's ARN
    layers: dict[str, Path] = field(default_factory=dict)  # layer ARN -> its directory


def routes_of(template: Template) -> list[Route]:
    """Every Api event of every function: the routes of the template's REST API."""
    routes = []
    for logical_id in template.of_type("AWS::Serverless::Function"):
        for event in (template.properties(logical_id).get("Events") or {}).values():
            if event.get("Type") == "Api":
                props = event.get("Properties") or {}
                auth = (props.get("Auth") or {}).get("Authorizer")
                routes.append(Route(str(props["Method"]).upper(), str(props["Path"]), logical_id,
                                    auth if isinstance(auth, str) else None))
    return routes


def check_layers(template: Template) -> None:
    """Refuse, before anything starts, a function's layer that names nothing in the template (`!Ref NoSuchLayer`):
    it could never resolve to a layer this stack creates, and found while provisioning (`_serverless__function`, which
    checks every layer as resolved) it cost a stack's DynamoDB process, its endpoint and half its resources, ~3 CPU-s,
    for the same message."""
    known = set(template.resources) | set(template.parameters) | set(template.pseudo())
    for logical_id in template.of_type("AWS::Serverless::Function"):
        for layer in template.properties(logical_id).get("Layers") or []:
            named = layer.get("Ref") if isinstance(layer, dict) and len(layer) == 1 else None
            if isinstance(named, str) and named not in known:
                raise StackError(f"Resources.{logical_id}.Properties.Layers: {named} is not a layer of this "
                                 f"template (the local stack cannot fetch published layers)")


def suffix(rng: random.Random, length: int = 12) -> str:
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(length))


class Provisioner:
    def __init__(self, template: Template, client: Callable[[str], Any], log_dir: Path,
                 rng: random.Random | None = None, code: CodeStore | None = None, lambdas: Any = None) -> None:
        self.t = template
        self.client = client
        self.log_dir = log_dir
        self.root = template.path.parent.resolve()
        self.rng = rng or random.Random()  # noqa: S311 - names, not secrets
        self.out = Provisioned()
        self.layers = self.out.layers
        self.code = code or CodeStore(Path(log_dir).parent / "code")
        self.previous: Provisioned | None = None  # set by update_all: what the stack runs now
        # The Lambda service (sagalocal.awslambda.service) to register each function, version and alias with as it
        # is made, so a state machine version never names a function version the service does not run yet.
        self.lambdas = lambdas
        self._role_arn: str | None = None

    # ---- naming ---------------------------------------------------------------------------------------
    def physical_name(self, logical_id: str, limit: int = 64, extension: str = "") -> str:
        """CloudFormation's generated name: <stack>-<LogicalId>-<12 random characters>, within `limit`."""
        tail = "-" + suffix(self.rng) + extension
        head = f"{self.t.stack_name}-{logical_id}"[: max(1, limit - len(tail))]
        return head + tail

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.t.region}:{self.t.account}:{resource}"

    def _created(self, logical_id: str, ref: Any, **attributes: Any) -> None:
        self.t.created[logical_id] = {"Ref": ref, **attributes}

    # ---- all ----------------------------------------------------------------------------------------------
    def create_all(self) -> Provisioned:
        order, self.out.skipped = self.t.creation_order(SUPPORTED)
        for logical_id in order:
            self._create(logical_id)
        return self.out

    def _create(self, logical_id: str) -> None:
        """Create (or, in an update, publish anew) one resource, by its type's `_<service>__<type>` method."""
        kind = self.t.resources[logical_id]["Type"]
        creator = getattr(self, "_" + re.sub(r"\W", "_", kind.split("::", 1)[1]).lower())
        try:
            creator(logical_id, self.t.resource_properties(logical_id))
        except TemplateError as exc:
            raise StackError(str(exc)) from exc

    def update_all(self, previous: Provisioned, created: dict[str, dict[str, Any]], before: Template) -> Provisioned:
        """Update the running stack to this template: functions and state machines in place (a new version of each
        that changed, the aliases moved there); every other resource as it was created (`created`, from the template
        `before`), which must be unchanged."""
        self.previous = previous
        order, self.out.skipped = self.t.creation_order(SUPPORTED)
        updated = ("AWS::Serverless::Function", "AWS::Serverless::StateMachine", "AWS::Serverless::LayerVersion")
        self.out = dataclasses.replace(previous, functions=[], routes=[], schedules=[], stream_mappings=[],
                                       principals=[], function_versions=[], function_aliases=[], state_machines={},
                                       state_machine_aliases={}, layers={}, skipped=self.out.skipped)
        self.layers = self.out.layers
        for logical_id in order:
            if self.t.resources[logical_id]["Type"] == "AWS::Serverless::Function" and logical_id in before.resources \
                    and self.t.properties(logical_id).get("Events") != before.properties(logical_id).get("Events"):
                raise StackError(f"Resources.{logical_id}.Properties.Events changed: the local stack keeps its API "
                                 f"routes, schedules and stream mappings; restart it")
        added = sorted(set(order) - set(before.resources))
        removed = sorted(set(before.creation_order(SUPPORTED)[0]) - set(order))
        if added or removed:
            raise StackError(f"the update adds {', '.join(added) or 'nothing'} and removes "
                             f"{', '.join(removed) or 'nothing'}: the local stack updates functions and state machines "
                             f"only; restart it")
        for logical_id in order:
            kind = self.t.resources[logical_id]["Type"]
            if kind not in updated:
                if self.t.resources[logical_id] != before.resources[logical_id]:
                    raise StackError(f"Resources.{logical_id} changed: the local stack updates functions and state "
                                     f"machines only; restart it")
                self.t.created[logical_id] = created[logical_id]
                continue
            self._create(logical_id)
        return self.out

    def _require(self, logical_id: str, props: dict[str, Any], *names: str) -> None:
        for name in names:
            if name not in props:
                raise StackError(f"Resources.{logical_id}.Properties.{name} is required")

    # ---- data and messaging -------------------------------------------------------------------------------
    def _dynamodb__table(self, logical_id: str, props: dict[str, Any]) -> None:
        self._require(logical_id, props, "KeySchema", "AttributeDefinitions")
        name = props.get("TableName") or self.physical_name(logical_id, 255)
        args: dict[str, Any] = {"TableName": name, "KeySchema": props["KeySchema"],
                                "AttributeDefinitions": props["AttributeDefinitions"],
                                "BillingMode": props.get("BillingMode", "PROVISIONED")}
        if args["BillingMode"] != "PAY_PER_REQUEST":
            args["ProvisionedThroughput"] = props.get("ProvisionedThroughput",
                                                      {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5})
        for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if key in props:
                args[key] = props[key]
        if "StreamSpecification" in props:  # CloudFormation names the view; the API also wants it enabled
            args["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        ddb = self.client("dynamodb")
        try:
            created = ddb.create_table(**args)["TableDescription"]
        except Exception as exc:
            raise StackError(f"Resources.{logical_id}: DynamoDB rejected the table: {exc}") from exc
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        self._created(logical_id, name, Arn=self.arn("dynamodb", f"table/{name}"),
                      StreamArn=created.get("LatestStreamArn", ""))

    def _sqs__queue(self, logical_id: str, props: dict[str, Any]) -> None:
        fifo = str(props.get("FifoQueue", "")).lower() == "true"
        name = props.get("QueueName") or self.physical_name(logical_id, 80, ".fifo" if fifo else "")
        attributes = {}
        for key, value in props.items():
            if key in ("QueueName", "Tags"):
                continue
            attributes[key] = json.dumps(value) if isinstance(value, dict) else str(value).lower() \
                if isinstance(value, bool) else str(value)
        url = self.client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self._created(logical_id, url, QueueName=name, QueueUrl=url, Arn=self.arn("sqs", name))

    def _sqs__queuepolicy(self, logical_id: str, props: dict[str, Any]) -> None:
        self._created(logical_id, logical_id)  # policies are not enforced locally

    def _sns__topic(self, logical_id: str, props: dict[str, Any]) -> None:
        name = props.get("TopicName") or self.physical_name(logical_id, 256)
        arn = self.client("sns").create_topic(Name=name)["TopicArn"]
        self._created(logical_id, arn, TopicArn=arn, TopicName=name)

    def _logs__loggroup(self, logical_id: str, props: dict[str, Any]) -> None:
        name = props.get("LogGroupName") or self.physical_name(logical_id, 512)
        logs = self.client("logs")
        logs.create_log_group(logGroupName=name)
        if "RetentionInDays" in props:
            logs.put_retention_policy(logGroupName=name, retentionInDays=int(props["RetentionInDays"]))
        self._created(logical_id, name, Arn=self.arn("logs", f"log-group:{name}:*"))

    def _cloudwatch__alarm(self, logical_id: str, props: dict[str, Any]) -> None:
        self._require(logical_id, props, "ComparisonOperator", "EvaluationPeriods")
        name = props.get("AlarmName") or self.physical_name(logical_id, 255)
        keep = ("AlarmDescription", "MetricName", "Namespace", "Statistic", "ExtendedStatistic", "Period",
                "EvaluationPeriods", "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
                "AlarmActions", "OKActions", "Dimensions", "Metrics", "Unit")
        args = {k: v for k, v in props.items() if k in keep}
        for key in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
            if key in args:
                args[key] = int(args[key])
        if "Threshold" in args:
            args["Threshold"] = float(args["Threshold"])
        self.client("cloudwatch").put_metric_alarm(AlarmName=name, **args)
        self._created(logical_id, name, Arn=self.arn("cloudwatch", f"alarm:{name}"))

    def _cloudwatch__dashboard(self, logical_id: str, props: dict[str, Any]) -> None:
        name = props.get("DashboardName") or self.physical_name(logical_id, 255)
        body = props.get("DashboardBody") or "{}"
        self.client("cloudwatch").put_dashboard(DashboardName=name, DashboardBody=body if isinstance(body, str)
                                                else json.dumps(body))
        self._created(logical_id, name)

    def _events__eventbus(self, logical_id: str, props: dict[str, Any]) -> None:
        self._require(logical_id, props, "Name")
        arn = self.client("events").create_event_bus(Name=props["Name"])["EventBusArn"]
        self._created(logical_id, props["Name"], Arn=arn, Name=props["Name"])

    def _events__rule(self, logical_id: str, props: dict[str, Any]) -> None:
        name = props.get("Name") or self.physical_name(logical_id, 64)
        events = self.client("events")
        args = {k: v for k, v in props.items() if k in ("EventBusName", "Description", "State", "ScheduleExpression")}
        if "EventPattern" in props:
            args["EventPattern"] = json.dumps(props["EventPattern"])
        arn = events.put_rule(Name=name, **args)["RuleArn"]
        targets = [{k: v for k, v in target.items() if k in ("Id", "Arn", "InputPath", "SqsParameters")}
                   for target in props.get("Targets") or []]
        if targets:
            events.put_targets(Rule=name, EventBusName=props.get("EventBusName", "default"), Targets=targets)
        self.out.rules.append({"name": name, **props})
        self._created(logical_id, name, Arn=arn)

    # ---- identity -------------------------------------------------------------------------------------------
    def _cognito__userpool(self, logical_id: str, props: dict[str, Any]) -> None:
        keep = ("Policies", "AutoVerifiedAttributes", "UsernameAttributes", "Schema", "MfaConfiguration",
                "AdminCreateUserConfig", "AccountRecoverySetting", "UserPoolTags")
        args = {k: v for k, v in props.items() if k in keep}
        name = props.get("UserPoolName") or self.physical_name(logical_id, 128)
        pool = self.client("cognito-idp").create_user_pool(PoolName=name, **args)["UserPool"]
        self.out.user_pools[logical_id] = pool["Id"]
        self._created(logical_id, pool["Id"], Arn=pool["Arn"], ProviderName=f"cognito-idp.{self.t.region}"
                      f".amazonaws.com/{pool['Id']}", UserPoolId=pool["Id"])

    def _cognito__userpoolclient(self, logical_id: str, props: dict[str, Any]) -> None:
        self._require(logical_id, props, "UserPoolId")
        keep = ("ExplicitAuthFlows", "GenerateSecret", "AccessTokenValidity", "IdTokenValidity",
                "RefreshTokenValidity", "TokenValidityUnits", "PreventUserExistenceErrors", "AllowedOAuthFlows",
                "AllowedOAuthScopes", "CallbackURLs", "SupportedIdentityProviders")
        args = {k: v for k, v in props.items() if k in keep}
        name = props.get("ClientName") or self.physical_name(logical_id, 128)
        created = self.client("cognito-idp").create_user_pool_client(UserPoolId=props["UserPoolId"],
                                                                     ClientName=name, **args)["UserPoolClient"]
        self.out.pool_clients.setdefault(str(props["UserPoolId"]), set()).add(created["ClientId"])
        self._created(logical_id, created["ClientId"], ClientSecret=created.get("ClientSecret", ""))

    # ---- compute --------------------------------------------------------------------------------------------
    def _serverless__layerversion(self, logical_id: str, props: dict[str, Any]) -> None:
        self._require(logical_id, props, "ContentUri")
        path = (self.root / str(props["ContentUri"])).resolve()
        if not path.is_dir():
            raise StackError(f"Resources.{logical_id}.Properties.ContentUri: {path} is not a directory")
        arn = self.arn("lambda", f"layer:{props.get('LayerName', logical_id)}:1")
        self.layers[arn] = path
        self._created(logical_id, arn)

    def _iam__role(self, logical_id: str, props: dict[str, Any]) -> None:
        """A role the template defines: created, and its inline policies kept for the functions that assume it
        (managed policies are not read locally: a role that has any is refused)."""
        if props.get("ManagedPolicyArns"):
            raise StackError(f"Resources.{logical_id}.Properties.ManagedPolicyArns: the local stack enforces inline "
                             f"policies only")
        name = props.get("RoleName") or self.physical_name(logical_id, 64)
        arn = self.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(
            props.get("AssumeRolePolicyDocument") or {}))["Role"]["Arn"]
        try:
            self.out.roles[arn] = statements_of([p["PolicyDocument"] for p in props.get("Policies") or []])
        except (KeyError, ValueError) as exc:
            raise StackError(f"Resources.{logical_id}.Properties.Policies: {exc}") from exc
        self._created(logical_id, name, Arn=arn, RoleId=name)

    def _role(self) -> str:
        if self._role_arn is None:
            self._role_arn = self.client("iam").create_role(
                RoleName=f"{self.t.stack_name}-sagalocal-{suffix(self.rng, 8)}",
                AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        return self._role_arn

    def _serverless__function(self, logical_id: str, props: dict[str, Any]) -> None:
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
        before = self._previous_function(logical_id)
        name = before.name if before else props.get("FunctionName") or self.physical_name(logical_id, 64)
        arn = self.arn("lambda", f"function:{name}")
        env = {k: str(v) for k, v in ((props.get("Environment") or {}).get("Variables") or {}).items()}
        logging_config = props.get("LoggingConfig") or {}
        if logging_config.get("LogFormat") == "JSON" and "ApplicationLogLevel" in logging_config:
            env.setdefault("AWS_LAMBDA_LOG_LEVEL", str(logging_config["ApplicationLogLevel"]))
        snapshot = self.code.snapshot([code_dir, *layer_dirs])  # the code this deploy gives the function
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("README.txt", f"runs from {code_dir} in a sagalocal sandbox (code {snapshot.digest})")
        timeout, memory = int(props.get("Timeout", 3)), int(props.get("MemorySize", 128))
        if props.get("Role"):
            role_arn = str(props["Role"])
            if role_arn not in self.out.roles:
                raise StackError(f"Resources.{logical_id}.Properties.Role: {role_arn} is not a role of this template "
                                 f"(the local stack cannot read an outside role's policies)")
            principal = Principal(function=name, role=role_arn.rsplit("/", 1)[-1], statements=self.out.roles[role_arn])
        else:
            principal = Principal(function=name, role=self.physical_name(f"{logical_id}Role", 64),
                                  statements=self.role_statements(logical_id, props))
        held = self._previous_principal(name)
        if held is not None:  # an update: the function keeps its role's identity (its sandboxes hold the keys)
            principal = dataclasses.replace(principal, role=held.role, access_key_id=held.access_key_id,
                                            secret_access_key=held.secret_access_key)
        self.out.principals.append(principal)
        env.update({"AWS_ACCESS_KEY_ID": principal.access_key_id,
                    "AWS_SECRET_ACCESS_KEY": principal.secret_access_key,
                    "AWS_SESSION_TOKEN": before.environment["AWS_SESSION_TOKEN"] if before
                    else secrets.token_urlsafe(48)})
        reserved = props.get("ReservedConcurrentExecutions")
        spec = FunctionSpec(
            logical_id=logical_id, name=name, arn=arn, handler=handler, code_dir=code_dir, layer_dirs=layer_dirs,
            environment=env, timeout=float(timeout), memory=memory, log_path=self.log_dir / f"{logical_id}.log",
            reserved_concurrency=int(reserved) if reserved is not None else None, snapshot=snapshot)
        lam = self.client("lambda")
        if before is None:
            lam.create_function(
                FunctionName=name, Runtime=str(props["Runtime"]), Role=self._role(), Handler=handler,
                Code={"ZipFile": archive.getvalue()}, Timeout=timeout, MemorySize=memory,
                Environment={"Variables": env})
        elif _deployed(before) != _deployed(spec):
            lam.update_function_code(FunctionName=name, ZipFile=archive.getvalue())
            lam.update_function_configuration(FunctionName=name, Handler=handler, Timeout=timeout, MemorySize=memory,
                                              Environment={"Variables": env})
        else:
            spec = before  # unchanged: the same $LATEST (and no new version)
        self.out.functions.append(spec)
        if self.lambdas is not None and spec is not before:
            self.lambdas.add(spec)
        for event_name, event in (props.get("Events") or {}).items():
            kind, event_props = event.get("Type"), event.get("Properties") or {}
            if kind in ("Schedule", "ScheduleV2"):
                self.out.schedules.append(Schedule.parse(logical_id, event_name, event_props))
            elif kind == "EventBridgeRule" and before is None:  # an update keeps it (it refuses changed events)
                alias = self.t.auto_publish_alias(logical_id)  # SAM's rule targets the function's alias
                wiring = rule_of_function_event(f"{arn}:{alias}" if alias else arn, event_name, event_props)
                events, rule_name = self.client("events"), self.physical_name(f"{logical_id}{event_name}", 64)
                events.put_rule(Name=rule_name, **wiring["rule"])
                events.put_targets(Rule=rule_name, EventBusName=wiring["rule"].get("EventBusName", "default"),
                                   Targets=[wiring["target"]])
                self.out.rules.append({"name": rule_name, "function": logical_id, **event_props})
            elif kind == "EventBridgeRule":
                self.out.rules += [r for r in self.previous.rules if r.get("function") == logical_id] \
                    if self.previous else []
            elif kind == "DynamoDB":
                stream = str(event_props.get("Stream", ""))
                if "/stream/" not in stream:
                    raise StackError(f"Resources.{logical_id}.Properties.Events.{event_name}.Properties.Stream: "
                                     f"{stream!r} is not a stream of this template's tables")
                filters = [f["Pattern"] for f in (event_props.get("FilterCriteria") or {}).get("Filters", [])]
                on_failure = ((event_props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
                if on_failure is not None and ":sqs:" not in str(on_failure):
                    raise StackError(f"Resources.{logical_id}.Properties.Events.{event_name}.Properties."
                                     f"DestinationConfig.OnFailure.Destination: {on_failure!r}: only an SQS queue "
                                     f"is emulated as a stream's on-failure destination")
                alias = self.t.auto_publish_alias(logical_id)  # SAM's mapping invokes the function's alias
                self.out.stream_mappings.append({
                    "function": logical_id, "stream_arn": stream, "table": stream.split(":table/", 1)[1].split("/")[0],
                    "function_arn": f"{arn}:{alias}" if alias else arn,
                    "batch_size": int(event_props.get("BatchSize", 100)), "filters": filters,
                    "starting_position": str(event_props.get("StartingPosition", "LATEST")),
                    "max_retries": int(event_props.get("MaximumRetryAttempts", -1)),
                    "max_record_age": int(event_props.get("MaximumRecordAgeInSeconds", -1)),
                    "bisect": str(event_props.get("BisectBatchOnFunctionError", "false")).lower() == "true",
                    "report_batch_item_failures": "ReportBatchItemFailures" in (
                        event_props.get("FunctionResponseTypes") or []),
                    "on_failure": str(on_failure) if on_failure is not None else None,
                    "access_key_id": principal.access_key_id, "secret_access_key": principal.secret_access_key})
            elif kind == "SQS":
                self.out.queue_mappings.append(self._queue_mapping(logical_id, event_name, event_props, principal))
        self.out.routes += [route for route in routes_of(self.t) if route.function == logical_id]
        self._created(logical_id, name, Arn=arn)
        self._publish_function(logical_id, props, spec)

    def _queue_mapping(self, logical_id: str, event_name: str, props: dict[str, Any],
                       principal: Principal) -> dict[str, Any]:
        """An SQS event (sagalocal/awslambda/queues.py emulates it): the queue must be one of this template's
        standard queues; BatchSize, MaximumBatchingWindowInSeconds, ReportBatchItemFailures and
        ScalingConfig.MaximumConcurrency are honoured, within AWS's bounds."""
        where = f"Resources.{logical_id}.Properties.Events.{event_name}.Properties"
        queue = str(props.get("Queue", ""))
        name = queue.rsplit(":", 1)[-1]
        if not queue.startswith("arn:") or ":sqs:" not in queue:
            raise StackError(f"{where}.Queue: {queue!r} is not a queue of this template")
        if name.endswith(".fifo"):
            raise StackError(f"{where}.Queue: {queue}: a FIFO queue's event source (ordering per message group) is "
                             f"not emulated")
        if props.get("FilterCriteria"):
            raise StackError(f"{where}.FilterCriteria: filters on an SQS event source are not emulated")
        batch, window = int(props.get("BatchSize", 10)), int(props.get("MaximumBatchingWindowInSeconds", 0))
        if not 1 <= batch <= 10_000 or not 0 <= window <= 300 or (batch > 10 and window == 0):
            raise StackError(f"{where}: BatchSize {batch} with MaximumBatchingWindowInSeconds {window}: a batch "
                             f"holds 1 to 10,000 messages, more than 10 only with a window of 1 to 300 s")
        concurrency = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
        if concurrency is not None and not 2 <= int(concurrency) <= 1000:
            raise StackError(f"{where}.ScalingConfig.MaximumConcurrency: {concurrency}: AWS allows 2 to 1000")
        if str(props.get("Enabled", True)).lower() == "false":
            raise StackError(f"{where}.Enabled: a disabled SQS event source is not emulated")
        return {"function": logical_id, "queue_arn": queue, "batch_size": batch, "window": window,
                "max_concurrency": int(concurrency) if concurrency is not None else None,
                "report_batch_item_failures": "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
                "access_key_id": principal.access_key_id, "secret_access_key": principal.secret_access_key}

    def _previous_function(self, logical_id: str) -> FunctionSpec | None:
        return next((f for f in self.previous.functions if f.logical_id == logical_id), None) if self.previous \
            else None

    def _previous_principal(self, function: str) -> Principal | None:
        return next((p for p in self.previous.principals if p.function == function), None) if self.previous \
            else None

    def _publish_function(self, logical_id: str, props: dict[str, Any], spec: FunctionSpec) -> None:
        """AutoPublishAlias: publish the function's $LATEST as a version (Lambda publishes nothing new when its code
        and configuration did not change: the latest version is the answer), and point the alias there."""
        alias = self.t.auto_publish_alias(logical_id)
        if alias is None:
            return
        if str(props.get("AutoPublishAliasAllProperties", "false")).lower() != "true":
            raise StackError(f"Resources.{logical_id}.Properties.AutoPublishAliasAllProperties: the local stack "
                             f"publishes a version whenever the function's code, layers or configuration change, "
                             f"which is what SAM does with AutoPublishAliasAllProperties: true (without it SAM "
                             f"publishes only when CodeUri, Environment or MemorySize change)")
        lam = self.client("lambda")
        version = str(lam.publish_version(FunctionName=spec.name)["Version"])
        known = {v.version for v in (self.previous.function_versions if self.previous else [])
                 if v.logical_id == logical_id}
        self.out.function_versions += [v for v in self.previous.function_versions if v.logical_id == logical_id] \
            if self.previous else []
        if version not in known:
            published = dataclasses.replace(spec, version=version)
            self.out.function_versions.append(published)
            if self.lambdas is not None:
                self.lambdas.publish(published)
        # A function this deploy created has no alias yet: only an update asks Lambda (one request fewer a function).
        if self.previous is not None and any(a["Name"] == alias
                                             for a in lam.list_aliases(FunctionName=spec.name)["Aliases"]):
            lam.update_alias(FunctionName=spec.name, Name=alias, FunctionVersion=version)
        else:
            lam.create_alias(FunctionName=spec.name, Name=alias, FunctionVersion=version)
        self.out.function_aliases.append((logical_id, alias, version))
        if self.lambdas is not None:  # SAM points the function's event sources at the alias
            self.lambdas.set_alias(logical_id, alias, version, event_target=True)
        self.t.created[f"{logical_id}.Version"] = {"Ref": f"{spec.arn}:{version}", "Version": version}
        alias_ref = {"Ref": f"{spec.arn}:{alias}", "Name": alias}
        self.t.created[f"{logical_id}.Alias"] = alias_ref
        self.t.created[f"{logical_id}Alias{alias.replace('-', 'D').replace('_', 'U')}"] = alias_ref

    def role_statements(self, logical_id: str, props: dict[str, Any]) -> list[Statement]:
        """The function's role as SAM writes it: its Policies (statements and policy templates) plus the
        basic execution role's log actions and, with tracing on, X-Ray's write actions."""
        statements = [Statement("Allow", ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"),
                                ("*",))]
        if props.get("Tracing") == "Active":
            statements.append(Statement("Allow", ("xray:PutTraceSegments", "xray:PutTelemetryRecords"), ("*",)))
        policies = props.get("Policies") or []
        for index, policy in enumerate(policies if isinstance(policies, list) else [policies]):
            where = f"Resources.{logical_id}.Properties.Policies[{index}]"
            if isinstance(policy, dict) and "Statement" in policy:
                try:
                    statements += statements_of(policy)
                except ValueError as exc:
                    raise StackError(f"{where}: {exc}") from exc
            elif isinstance(policy, dict) and len(policy) == 1:
                name, parameters = next(iter(policy.items()))
                try:
                    document = _policy_templates().convert(name, parameters or {})
                except Exception as exc:  # noqa: BLE001 - samtranslator's errors, with the place
                    raise StackError(f"{where}: {exc}") from exc
                statements += statements_of(self.t.resolve(document, where))
            else:
                raise StackError(f"{where}: {policy!r} is a managed policy; the local stack enforces statements "
                                 f"and SAM policy templates only")
        return statements

    def _serverless__statemachine(self, logical_id: str, props: dict[str, Any]) -> None:
        if "DefinitionUri" in props:
            uri = props["DefinitionUri"]
            if not isinstance(uri, str):
                raise StackError(f"Resources.{logical_id}.Properties.DefinitionUri: only a local file is supported")
            path = self.root / uri
            try:
                text = path.read_text()
            except OSError as exc:
                raise StackError(f"Resources.{logical_id}.Properties.DefinitionUri: cannot read {path}: "
                                 f"{exc.strerror}") from exc
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
        sfn = self.client("stepfunctions")
        before = self.previous.state_machines.get(logical_id) if self.previous else None
        if before is None:
            name = props.get("Name") or f"{logical_id}-{suffix(self.rng)}"
            arn = sfn.create_state_machine(name=name, definition=text, roleArn=self._role(),
                                           type=props.get("Type", "STANDARD"))["stateMachineArn"]
        else:  # an update: running executions keep the definition they started with, as on AWS
            arn, name = before, before.rsplit(":", 1)[-1]
            if sfn.describe_state_machine(stateMachineArn=arn)["definition"] != text:
                sfn.update_state_machine(stateMachineArn=arn, definition=text)
        self.out.state_machines[logical_id] = arn
        self._created(logical_id, arn, Arn=arn, Name=name)
        alias = self.t.auto_publish_alias(logical_id)
        if alias is None:
            return
        # AutoPublishAlias: a version of this revision (the latest one again if it did not change), the alias on it.
        version = sfn.publish_state_machine_version(stateMachineArn=arn)["stateMachineVersionArn"]
        routing = [{"stateMachineVersionArn": version, "weight": 100}]
        alias_arn = f"{arn}:{alias}"
        if before is None:
            sfn.create_state_machine_alias(name=alias, routingConfiguration=routing)
        else:
            sfn.update_state_machine_alias(stateMachineAliasArn=alias_arn, routingConfiguration=routing)
        self.out.state_machine_aliases[logical_id] = alias_arn
        self.t.created[f"{logical_id}Version"] = {"Ref": version, "Arn": version}
        self.t.created[f"{logical_id}Alias{alias}"] = {"Ref": alias_arn, "Arn": alias_arn}

    def _serverless__api(self, logical_id: str, props: dict[str, Any]) -> None:
        self.out.stage = str(props.get("StageName", self.out.stage))
        auth = props.get("Auth") or {}
        for name, spec in (auth.get("Authorizers") or {}).items():
            self.out.authorizers[name] = dict(spec)
        if auth.get("DefaultAuthorizer"):
            self.out.authorizers["__default__"] = {"name": auth["DefaultAuthorizer"]}
        self.out.api = {k: props[k] for k in ("MethodSettings", "AccessLogSetting") if k in props}
        self._created(logical_id, "local", RootResourceId="root")


def _deployed(spec: FunctionSpec) -> tuple[Any, ...]:
    """What a deploy of a function sets: its code (the hash of its directories and layers') and configuration."""
    return (spec.snapshot.digest if spec.snapshot else None, spec.handler, sorted(spec.environment.items()),
            spec.timeout, spec.memory, spec.reserved_concurrency, spec.code_dir, tuple(spec.layer_dirs))


@functools.lru_cache(maxsize=1)
def _policy_templates() -> Any:
    from samtranslator.policy_template_processor.processor import PolicyTemplatesProcessor

    return PolicyTemplatesProcessor(PolicyTemplatesProcessor.get_default_policy_templates_json())


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
