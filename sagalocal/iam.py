"""IAM, as far as a function's own calls go: each function signs with its own credentials, and its requests are
allowed only by its role's policy statements, as on AWS.

A function's `Policies` (statements, SAM policy templates) become identity-based statements. A request is
allowed when an Allow statement matches its action and resource and no Deny does; otherwise it is refused
with AWS's AccessDeniedException and its message. Credentials that belong to no function (the tests, the
CLI, the console) are the account's administrator, as a developer's own credentials are.

Every allowed call is recorded (function, action, resource), so a test can check that each function's role
grants no action its code never calls (`used()`).

Conditions: the string operators StringEquals and StringLike, alone or with ForAnyValue:, on the context keys a
request here carries: states:StateMachineQualifier (a start on a version or an alias is authorized against the
state machine's own ARN, the qualifier in this key, as Step Functions does). A statement with any other operator
is refused when the stack starts, rather than ignored.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d+/([a-z0-9-]+)/([a-z0-9-]+)/")


CONDITION_OPERATORS = ("StringEquals", "StringLike", "ForAnyValue:StringEquals", "ForAnyValue:StringLike")


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (operator, context key, values)

    def matches(self, action: str, resource: str, context: dict[str, list[str]] | None = None) -> bool:
        return (any(_match(pattern, action, case=False) for pattern in self.actions)
                and any(_match(pattern, resource, case=True) for pattern in self.resources)
                and all(_condition(operator, (context or {}).get(key), values)
                        for operator, key, values in self.conditions))

    def condition_json(self) -> dict[str, dict[str, list[str]]]:
        found: dict[str, dict[str, list[str]]] = {}
        for operator, key, values in self.conditions:
            found.setdefault(operator, {})[key] = list(values)
        return found


def _condition(operator: str, present: list[str] | None, values: tuple[str, ...]) -> bool:
    """A condition on a key the request has (or has not: then no string operator matches, as in IAM)."""
    if not present:
        return False
    like = operator.endswith("StringLike")
    return any(_match(value, got, case=True) if like else got == value for got in present for value in values)


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str, case: bool) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), 0 if case else re.IGNORECASE)


def _match(pattern: str, value: str, case: bool) -> bool:
    return bool(_compiled(pattern, case).match(value))


@dataclass
class Principal:
    """A function's identity: its credentials, the role it assumes and what the role allows."""

    function: str  # the function's physical name
    role: str
    statements: list[Statement]
    access_key_id: str = field(default_factory=lambda: "ASIA" + secrets.token_hex(8).upper())
    secret_access_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))

    def arn(self, account: str) -> str:
        return f"arn:aws:sts::{account}:assumed-role/{self.role}/{self.function}"

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "role": self.role, "access_key_id": self.access_key_id,
                "statements": [{"Effect": s.effect, "Action": list(s.actions), "Resource": list(s.resources),
                                **({"Condition": s.condition_json()} if s.conditions else {})}
                               for s in self.statements]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Principal:
        return cls(function=data["function"], role=data["role"], access_key_id=data["access_key_id"],
                   secret_access_key="", statements=statements_of(data["statements"]))


def statements_of(policies: Any) -> list[Statement]:
    """Statements from a list of policy documents or statements (resolved: no intrinsic functions left)."""
    found: list[Statement] = []
    for policy in policies if isinstance(policies, list) else [policies]:
        if not isinstance(policy, dict):
            raise ValueError(f"not a policy statement: {policy!r}")
        if "Statement" in policy:
            found += statements_of(policy["Statement"])
            continue
        actions, resources = policy.get("Action", []), policy.get("Resource", [])
        if "NotAction" in policy or "NotResource" in policy:
            raise ValueError("NotAction and NotResource are not emulated")
        conditions = []
        for operator, keys in (policy.get("Condition") or {}).items():
            if operator not in CONDITION_OPERATORS:
                raise ValueError(f"the condition operator {operator} is not emulated (only "
                                 f"{', '.join(CONDITION_OPERATORS)})")
            for key, values in keys.items():
                conditions.append((operator, str(key), tuple(str(v) for v in (values if isinstance(values, list)
                                                                               else [values]))))
        found.append(Statement(str(policy.get("Effect", "Allow")),
                               tuple(actions if isinstance(actions, list) else [actions]),
                               tuple(str(r) for r in (resources if isinstance(resources, list) else [resources])),
                               tuple(conditions)))
    return found


def credentials_of(headers: Any) -> tuple[str, str, str] | None:
    """(access key id, region, signing service) from a SigV4 Authorization header."""
    found = _CREDENTIAL.search(headers.get("Authorization") or headers.get("authorization") or "")
    return (found.group(1), found.group(2), found.group(3)) if found else None


class Authorizer:
    """Decides requests by their signer, and records what each function used."""

    def __init__(self, account: str) -> None:
        self.account = account
        self._principals: dict[str, Principal] = {}
        self._used: dict[str, set[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def register(self, principals: list[Principal]) -> None:
        with self._lock:
            for principal in principals:
                self._principals[principal.access_key_id] = principal

    def principals_known(self, access_key_id: str) -> bool:
        return access_key_id in self._principals

    def principals(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self._principals.values()]

    def check(self, access_key_id: str | None, requests: list[tuple[str, str]],
              context: dict[str, list[str]] | None = None) -> str | None:
        """None when every (action, resource) is allowed for this signer (with the request's condition `context`),
        else AWS's denial message."""
        principal = self._principals.get(access_key_id or "")
        if principal is None:
            return None  # not a function: the developer's own (administrator) credentials
        for action, resource in requests:
            denied = any(s.effect == "Deny" and s.matches(action, resource, context) for s in principal.statements)
            allowed = not denied and any(s.effect == "Allow" and s.matches(action, resource, context)
                                         for s in principal.statements)
            if not allowed:
                reason = "with an explicit deny in an identity-based policy" if denied else \
                    f"because no identity-based policy allows the {action} action"
                return (f"User: {principal.arn(self.account)} is not authorized to perform: {action} on resource: "
                        f"{resource} {reason}")
        with self._lock:
            self._used.setdefault(principal.function, set()).update(requests)
        return None

    def used(self) -> dict[str, list[list[str]]]:
        with self._lock:
            return {function: sorted([list(r) for r in requests]) for function, requests in self._used.items()}


# ---- what a request asks for ---------------------------------------------------------------------------
_TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


def dynamodb_requests(operation: str, params: dict[str, Any], region: str, account: str) -> list[tuple[str, str]]:
    """The (action, resource) pairs IAM evaluates for one DynamoDB request: a transaction needs each item's own
    action on its table, a batch its action on every table, a query on an index the index's ARN."""
    def table(name: str) -> str:
        return name if name.startswith("arn:") else f"arn:aws:dynamodb:{region}:{account}:table/{name}"

    if operation in ("TransactWriteItems", "TransactGetItems"):
        pairs = []
        for item in params.get("TransactItems") or []:
            for kind, body in item.items():
                pairs.append((f"dynamodb:{_TRANSACT_ACTIONS.get(kind, kind)}", table(str(body.get("TableName")))))
        return pairs
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [(f"dynamodb:{operation}", table(str(name))) for name in params.get("RequestItems") or {}]
    name = params.get("TableName")
    if not name:
        return [(f"dynamodb:{operation}", "*")]
    resource = table(str(name))
    if operation in ("Query", "Scan") and params.get("IndexName"):
        resource += f"/index/{params['IndexName']}"
    return [(f"dynamodb:{operation}", resource)]


_SERVICE_PREFIX = {"monitoring": "cloudwatch", "email": "ses"}
_SQS_BATCH = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
              "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}


def service_request(service: str, action: str, params: dict[str, Any], region: str,
                    account: str) -> tuple[str, str]:
    """The (action, resource) of a request to another service, for the resources this stack's code uses."""
    prefix = _SERVICE_PREFIX.get(service, service)
    resource = "*"
    if prefix == "sqs":  # SQS's batch actions are authorized as their single actions (IAM has no *Batch action)
        action = _SQS_BATCH.get(action, action)
    if prefix == "sqs" and params.get("QueueUrl"):
        resource = f"arn:aws:sqs:{region}:{account}:{str(params['QueueUrl']).rstrip('/').rsplit('/', 1)[-1]}"
    elif prefix == "states":
        resource = _unqualified(str(params.get("stateMachineArn") or params.get("executionArn") or "*"))
    elif prefix == "secretsmanager" and params.get("SecretId"):  # a secret named by its ARN, or by its name
        secret = str(params["SecretId"])
        resource = secret if secret.startswith("arn:") else f"arn:aws:secretsmanager:{region}:{account}:secret:{secret}"
    elif prefix == "events" and params.get("Entries"):
        bus = (params["Entries"][0] or {}).get("EventBusName") or "default"
        resource = bus if str(bus).startswith("arn:") else f"arn:aws:events:{region}:{account}:event-bus/{bus}"
    return f"{prefix}:{action}", resource


def _unqualified(arn: str) -> str:
    """A state machine's own ARN: a version's or an alias's is authorized as the state machine's."""
    parts = arn.split(":")
    return ":".join(parts[:7]) if len(parts) == 8 and parts[5] == "stateMachine" else arn


def service_context(service: str, params: dict[str, Any]) -> dict[str, list[str]]:
    """The condition keys of a request: the qualifier of a state machine ARN (a version number or an alias name)."""
    if _SERVICE_PREFIX.get(service, service) == "states":
        parts = str(params.get("stateMachineArn") or "").split(":")
        if len(parts) == 8 and parts[5] == "stateMachine":
            return {"states:StateMachineQualifier": [parts[7]]}
    return {}


def denial_body(message: str, json_protocol: bool = True) -> bytes:
    import json

    if json_protocol:
        return json.dumps({"__type": "com.amazon.coral.service#AccessDeniedException", "Message": message}).encode()
    return ("<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
            f"<Message>{message}</Message></Error></ErrorResponse>").encode()
