"""Least privilege, proven on the running stack: every action a function's role grants is one its code used.

The embedded stack signs each function's requests with its own credentials and enforces its role's
statements (an action not granted fails with AccessDeniedException, as on AWS), so a missing grant fails the
tier. This test shows the other half: after every_path's orders ran (every path the code has, the late and
repeated steps, the parked and reconciled payments: enough on their own, so the file runs alone too) and
whatever else of the tier ran before it, every granted (action, resource) pair was used by its function at least
once. Granted-but-never-used means the role is broader than the code. The grants come from the template
through the stack, the uses from the DynamoDB process and the AWS endpoint, where IAM is enforced.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from sagalocal.iam import Statement, statements_of

pytestmark = [pytest.mark.runs_last, pytest.mark.embedded_only(
    reason="reads which actions each function used from the embedded stack's IAM enforcement")]
ALWAYS_ALLOWED = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments",
                  "xray:PutTelemetryRecords"}  # what SAM adds to every role; Lambda's runtime calls them


def exempt(action: str, resource: str) -> bool:
    """The fault injector's UpdateItem on the rules table (FaultInjection stacks only) is spent only when a
    counted rule fires for that very function; its BatchGetItem, on every invocation, is checked."""
    return action == "dynamodb:UpdateItem" and "-FaultRulesTable-" in resource


def identities(target) -> dict:
    with urllib.request.urlopen(f"{target.endpoint}/_sagalocal/iam", timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def test_every_granted_action_was_used_by_its_function(target, every_path):
    found = identities(target)
    used = {function: {tuple(pair) for pair in pairs} for function, pairs in found["used"].items()}
    unused = {}
    for principal in found["principals"]:
        mine = used.get(principal["function"], set())
        for statement in statements_of(principal["statements"]):
            for action in set(statement.actions) - ALWAYS_ALLOWED:
                for resource in statement.resources:
                    if exempt(action, resource):
                        continue
                    grant = Statement("Allow", (action,), (resource,))
                    if not any(grant.matches(a, r) for a, r in mine):
                        unused.setdefault(principal["function"].split("-")[2], []).append(
                            f"{action} on {resource.rsplit(':', 1)[-1]}")
    assert unused == {}, "granted but never used (the role is broader than the code):\n" + json.dumps(unused, indent=1)


def test_the_stack_refuses_what_a_role_does_not_grant(target):
    """A function's credentials cannot do what its role does not allow (here: CancelOrder scanning orders)."""
    import boto3
    from botocore.exceptions import ClientError

    found = identities(target)
    cancel = next(p for p in found["principals"] if "CancelOrderFunction" in p["function"])
    with urllib.request.urlopen(f"{target.endpoint}/_sagalocal/info", timeout=30) as response:  # noqa: S310
        info = json.loads(response.read())
    # The function's own credentials, as its sandbox holds them (the secret is not checked, only the key id).
    client = boto3.client("dynamodb", endpoint_url=info["dynamodb_endpoint"], region_name=target.region,
                          aws_access_key_id=cancel["access_key_id"], aws_secret_access_key="unused")
    with pytest.raises(ClientError) as denied:
        client.scan(TableName=target.outputs["OrdersTableName"], Limit=1)
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "dynamodb:Scan" in denied.value.response["Error"]["Message"]
    assert cancel["function"] in denied.value.response["Error"]["Message"]
