"""RedriveExecution inside the deterministic simulation: called in this process through the moto backend
(`sagalocal.stepfunctions.redrive`), the redriven run runs in this thread, on the virtual clock, and the call
returns when it has ended. A state machine of Pass, Choice and Map states only, which fails on its first run
where it reads $$.Execution.RedriveTime (present once redriven), so it needs no Lambda function."""

from __future__ import annotations

import json
import uuid

import pytest
from botocore.exceptions import ClientError

from sagalocal import stepfunctions
from sagalocal.sim.world import CLOCK, DAY, World

DEFINITION = {"StartAt": "Before", "States": {
    "Before": {"Type": "Pass", "Result": "once", "ResultPath": "$.before", "Next": "Each"},
    "Each": {"Type": "Map", "ItemsPath": "$.items", "End": True, "ItemProcessor": {"StartAt": "Which", "States": {
        "Which": {"Type": "Choice", "Choices": [{"Variable": "$", "NumericEquals": 2, "Next": "Second"}],
                  "Default": "Other"},
        "Second": {"Type": "Pass", "Parameters": {"redriven.$": "$$.Execution.RedriveTime"}, "End": True},
        "Other": {"Type": "Pass", "End": True}}}}}}


def run_failing(world: World) -> str:
    sfn = world.stack.sfn
    machine = sfn.create_state_machine(name=f"redrive{uuid.uuid4().hex[:8]}", definition=json.dumps(DEFINITION),
                                       roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    arn = sfn.start_execution(stateMachineArn=machine, name="e1", input=json.dumps({"items": [1, 2, 3]}))[
        "executionArn"]
    assert sfn.describe_execution(executionArn=arn)["status"] == "FAILED"  # ended inside StartExecution
    return arn


def test_a_redrive_in_the_world_runs_inline_and_keeps_what_succeeded():
    with World(seed=1) as world:
        arn = run_failing(world)
        CLOCK.sleep(DAY)
        date = stepfunctions.redrive(arn)
        described = world.stack.sfn.describe_execution(executionArn=arn)  # ended inside the redrive
        events = world.stack.sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    assert described["status"] == "SUCCEEDED"
    assert date.timestamp() == described["redriveDate"].timestamp() == CLOCK.now  # the virtual clock
    assert json.loads(described["output"]) == [1, {"redriven": "2027-01-02T00:00:00.000Z"}, 3]
    names = [e["stateEnteredEventDetails"]["name"] for e in events if e["type"].endswith("StateEntered")]
    redriven = names[names.index("Each", names.index("Each") + 1):]
    assert names.count("Before") == 1
    assert redriven == ["Each", "Which", "Second", "Which", "Other"]  # items 2 and 3 (3 never began before)


def test_the_redrivable_period_is_read_on_the_virtual_clock():
    with World(seed=2) as world:
        arn = run_failing(world)
        CLOCK.sleep(14 * DAY)
        with pytest.raises(ClientError) as refused:
            world.stack.sfn.redrive_execution(executionArn=arn)
    assert refused.value.response["Error"] == {"Code": "ExecutionNotRedrivable",
                                                "Message": "Execution redrivable period exceeded"}
