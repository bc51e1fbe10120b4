"""`sagalocal console --stack-outputs F` with a file it cannot use: one line that says what is wrong, exit status 2,
nothing served (a traceback and exit 1 before). The command runs in a process of its own, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.unit.conftest import ROOT

OUTPUTS = {"StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:s", "OrdersTableName": "o",
           "PaymentsTableName": "p"}


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read the stack outputs"),
    ("not json", "are not JSON"),
    ("[1, 2]", "are neither {OutputKey: OutputValue} nor describe-stacks' JSON"),
    ('"a string"', "are neither {OutputKey: OutputValue} nor describe-stacks' JSON"),
    (json.dumps({"Stacks": [{"Outputs": [{"OutputKey": "StateMachineArn"}]}]}), "OutputValue"),
    (json.dumps({"StateMachineArn": "x"}), "have no OrdersTableName, PaymentsTableName"),
    (json.dumps({"Stacks": [{"Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in OUTPUTS.items()
                                         if k != "OrdersTableName"]}]}), "have no OrdersTableName"),
])
def test_an_outputs_file_it_cannot_use_is_one_clear_error(tmp_path, content, message):
    outputs = tmp_path / "outputs.json"
    if content is not None:
        outputs.write_text(content)
    done = subprocess.run([sys.executable, "-m", "sagalocal", "console", "--stack-outputs", str(outputs)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert str(outputs) in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # it never got as far as serving


def test_both_forms_of_a_good_outputs_file_are_read(tmp_path):
    from sagalocal.console.data import Source

    plain, described = tmp_path / "plain.json", tmp_path / "described.json"
    plain.write_text(json.dumps(OUTPUTS))
    described.write_text(json.dumps({"Stacks": [{"Outputs": [{"OutputKey": k, "OutputValue": v}
                                                             for k, v in OUTPUTS.items()]}]}))
    assert Source.from_file(None, "us-east-1", plain).outputs == OUTPUTS
    assert Source.from_file(None, "us-east-1", described).outputs == OUTPUTS
