"""sagalocal/versions.py: state machine versions and aliases as AWS runs them. An execution started on an alias runs
the version the alias pointed at when it started, whatever is published or moved afterwards; its ARN is the state
machine's unqualified execution ARN, and DescribeExecution names the version and the alias."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from sagalocal import stepfunctions, versions

versions.install()
stepfunctions._names_reused_after_90_days()  # the name rules the versions share with unqualified starts

ROLE = "arn:aws:iam::123456789012:role/sfn"


def definition(result: str, wait: int = 0) -> str:
    """A Pass state whose output says which definition ran, after a Wait of `wait` seconds."""
    states = {"P": {"Type": "Pass", "Result": {"ran": result}, "End": True}}
    if wait:
        return json.dumps({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": wait, "Next": "P"}, **states}})
    return json.dumps({"StartAt": "P", "States": states})


@pytest.fixture
def machine():
    """A state machine with version 1 (it waits 1 s, then says v1) and the alias `live` on it."""
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        client = boto3.client("stepfunctions", region_name="us-east-1")
        created = client.create_state_machine(name="saga", definition=definition("v1", wait=1), roleArn=ROLE,
                                              publish=True)
        alias = client.create_state_machine_alias(name="live", routingConfiguration=[
            {"stateMachineVersionArn": created["stateMachineVersionArn"], "weight": 100}])["stateMachineAliasArn"]
        yield client, created["stateMachineArn"], created["stateMachineVersionArn"], alias


def publish_and_move(client, arn: str, alias: str, text: str) -> str:
    version = client.update_state_machine(stateMachineArn=arn, definition=text, publish=True)["stateMachineVersionArn"]
    client.update_state_machine_alias(stateMachineAliasArn=alias, routingConfiguration=[
        {"stateMachineVersionArn": version, "weight": 100}])
    return version


def ended(client, execution_arn: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        described = client.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.05)
    raise AssertionError(f"{execution_arn} still runs")


def test_an_execution_started_on_the_alias_runs_its_version_to_the_end_after_the_alias_moved(machine):
    client, arn, v1, alias = machine
    first = client.start_execution(stateMachineArn=alias, name="ord_1", input="{}")["executionArn"]
    v2 = publish_and_move(client, arn, alias, definition("v2"))  # while ord_1 waits
    second = client.start_execution(stateMachineArn=alias, name="ord_2", input="{}")["executionArn"]

    old, new = ended(client, first), ended(client, second)
    assert (json.loads(old["output"]), json.loads(new["output"])) == ({"ran": "v1"}, {"ran": "v2"})
    assert (old["stateMachineVersionArn"], new["stateMachineVersionArn"]) == (v1, v2)
    assert old["stateMachineAliasArn"] == new["stateMachineAliasArn"] == alias
    assert old["stateMachineArn"] == new["stateMachineArn"] == arn
    # The definition each ran, not the state machine's current one.
    ran = [json.loads(client.describe_state_machine_for_execution(executionArn=e)["definition"])["States"]["P"]
           ["Result"]["ran"] for e in (first, second)]
    assert ran == ["v1", "v2"]


def test_the_execution_arn_is_the_unqualified_one_whatever_arn_started_it(machine):
    client, arn, v1, alias = machine
    prefix = arn.replace(":stateMachine:", ":execution:")
    assert client.start_execution(stateMachineArn=alias, name="a", input="{}")["executionArn"] == f"{prefix}:a"
    assert client.start_execution(stateMachineArn=v1, name="b", input="{}")["executionArn"] == f"{prefix}:b"
    started_on_version = ended(client, f"{prefix}:b")
    assert started_on_version["stateMachineVersionArn"] == v1
    assert "stateMachineAliasArn" not in started_on_version  # a version start names no alias, as on AWS
    unqualified = client.start_execution(stateMachineArn=arn, name="c", input="{}")["executionArn"]
    assert "stateMachineVersionArn" not in ended(client, unqualified)


def test_names_are_one_namespace_per_state_machine_across_alias_version_and_unqualified_starts(machine):
    client, arn, v1, alias = machine
    running = client.start_execution(stateMachineArn=alias, name="ord_1", input='{"n": 1}')["executionArn"]
    # Same name and input while it runs: the same execution, whichever ARN asks.
    assert client.start_execution(stateMachineArn=arn, name="ord_1", input='{"n": 1}')["executionArn"] == running
    with pytest.raises(ClientError) as other_input:
        client.start_execution(stateMachineArn=v1, name="ord_1", input='{"n": 2}')
    assert other_input.value.response["Error"]["Code"] == "ExecutionAlreadyExists"
    ended(client, running)
    with pytest.raises(ClientError) as closed:
        client.start_execution(stateMachineArn=alias, name="ord_1", input='{"n": 1}')
    assert closed.value.response["Error"]["Code"] == "ExecutionAlreadyExists"


def test_list_executions_on_a_version_or_an_alias_lists_what_started_on_it(machine):
    client, arn, v1, alias = machine
    client.start_execution(stateMachineArn=alias, name="on-alias", input="{}")
    client.start_execution(stateMachineArn=v1, name="on-version", input="{}")
    client.start_execution(stateMachineArn=arn, name="unqualified", input="{}")

    def names(of: str) -> set[str]:
        return {e["name"] for e in client.list_executions(stateMachineArn=of)["executions"]}

    assert names(arn) == {"on-alias", "on-version", "unqualified"}
    assert names(alias) == {"on-alias"}
    assert names(v1) == {"on-alias", "on-version"}


def test_publishing_an_unchanged_revision_returns_the_latest_version(machine):
    client, arn, v1, alias = machine
    assert client.publish_state_machine_version(stateMachineArn=arn)["stateMachineVersionArn"] == v1
    client.update_state_machine(stateMachineArn=arn, definition=definition("v2"))
    v2 = client.publish_state_machine_version(stateMachineArn=arn)["stateMachineVersionArn"]
    assert v2 == f"{arn}:2"
    listed = [v["stateMachineVersionArn"] for v in client.list_state_machine_versions(stateMachineArn=arn)
              ["stateMachineVersions"]]
    assert listed == [v2, v1]


def test_an_unknown_alias_or_version_is_refused(machine):
    client, arn, v1, alias = machine
    with pytest.raises(ClientError) as alias_missing:
        client.start_execution(stateMachineArn=f"{arn}:canary", name="x", input="{}")
    assert alias_missing.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as version_missing:
        client.start_execution(stateMachineArn=f"{arn}:9", name="y", input="{}")
    assert version_missing.value.response["Error"]["Code"] == "StateMachineDoesNotExist"


def test_an_alias_with_two_versions_routes_each_start_by_weight():
    from types import SimpleNamespace

    alias = SimpleNamespace(routing_configuration=[{"stateMachineVersionArn": "m:1", "weight": 90},
                                                   {"stateMachineVersionArn": "m:2", "weight": 10}])
    seen = []
    assert versions.route(alias, pick=lambda population, weights, k: seen.append((population, weights)) or ["m:2"]) \
        == "m:2"
    assert seen == [(["m:1", "m:2"], [90, 10])]
    assert versions.split("arn:aws:states:us-east-1:1:stateMachine:saga:live") == (
        "arn:aws:states:us-east-1:1:stateMachine:saga", "live")
    assert versions.split("arn:aws:states:us-east-1:1:stateMachine:saga") == (
        "arn:aws:states:us-east-1:1:stateMachine:saga", None)
