"""`sagalocal console --stack-outputs F` with a file it cannot use: one line that says what is wrong, exit status 2,
nothing served (a traceback and exit 1 before, or a console serving errors). The command itself runs once, in a
process of its own as a user types it; the other files are read in this process (Source.from_file, what it runs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sagalocal.console.data import OutputsUnreadable, Source
from tests.unit.conftest import ROOT

OUTPUTS = {"StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:s", "OrdersTableName": "o",
           "PaymentsTableName": "p"}


def test_the_command_says_what_is_wrong_in_one_line_and_serves_nothing(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"StateMachineArn": "x"}))
    done = subprocess.run([sys.executable, "-m", "sagalocal", "console", "--stack-outputs", str(outputs)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: the stack outputs {outputs} have no OrdersTableName, PaymentsTableName "
                           f"(the console reads StateMachineArn, OrdersTableName, PaymentsTableName)\n")
    assert done.stdout == ""  # it never got as far as serving


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read the stack outputs"),
    ("not json", "are not JSON"),
    ("[1, 2]", "are neither {OutputKey: OutputValue} nor describe-stacks' JSON"),
    ('"a string"', "are neither {OutputKey: OutputValue} nor describe-stacks' JSON"),
    (json.dumps({"Stacks": [{"Outputs": [{"OutputKey": "StateMachineArn"}]}]}), "OutputValue"),
    (json.dumps({"Stacks": [{"Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in OUTPUTS.items()
                                         if k != "OrdersTableName"]}]}), "have no OrdersTableName"),
])
def test_an_outputs_file_it_cannot_use_names_the_file_and_what_is_wrong(tmp_path, content, message):
    outputs = tmp_path / "outputs.json"
    if content is not None:
        outputs.write_text(content)
    with pytest.raises(OutputsUnreadable) as refused:
        Source.from_file(None, "us-east-1", outputs)
    assert message in str(refused.value)
    assert str(outputs) in str(refused.value)


def test_both_forms_of_a_good_outputs_file_are_read(tmp_path):
    plain, described = tmp_path / "plain.json", tmp_path / "described.json"
    plain.write_text(json.dumps(OUTPUTS))
    described.write_text(json.dumps({"Stacks": [{"Outputs": [{"OutputKey": k, "OutputValue": v}
                                                             for k, v in OUTPUTS.items()]}]}))
    assert Source.from_file(None, "us-east-1", plain).outputs == OUTPUTS
    assert Source.from_file(None, "us-east-1", described).outputs == OUTPUTS
