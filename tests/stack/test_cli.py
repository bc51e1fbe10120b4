"""The sagalocal CLI: `invoke` as `sam local invoke`, and clear errors for what it cannot do."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.conftest import ROOT


def sagalocal(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sagalocal", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, check=False)


def test_invoke_runs_the_real_handler_on_a_fresh_stack():
    done = sagalocal("invoke", "CreateOrderFunction", "-e", "events/steps/create_order.json")
    assert done.returncode == 0, done.stderr
    saga = json.loads(done.stdout)
    assert (saga["order_id"], saga["total"], saga["currency"]) == ("ord_example", 2500, "USD")
    assert "CreateOrderFunction: ok" in done.stderr


def test_invoke_reports_a_business_error_as_lambda_does():
    done = sagalocal("invoke", "ReserveInventoryFunction", "-e", "events/steps/reserve_inventory.json")
    assert done.returncode == 1
    payload = json.loads(done.stdout)
    assert payload["errorType"] == "OrderNotActive"  # no order on a fresh stack: refused before any effect
    assert "ord_example" in payload["errorMessage"]


def test_invoke_unknown_function_names_the_known_ones():
    done = sagalocal("invoke", "NoSuchFunction", "-e", "events/steps/create_order.json")
    assert done.returncode == 2
    assert "unknown function 'NoSuchFunction'" in done.stderr
    assert "CreateOrderFunction" in done.stderr
    assert "Traceback" not in done.stderr


def test_invoke_malformed_event_says_where(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"saga": {"order_id": "x",}\n}')
    done = sagalocal("invoke", "CreateOrderFunction", "-e", str(bad))
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr
    assert "line 1" in done.stderr


def test_invoke_missing_event_file():
    done = sagalocal("invoke", "CreateOrderFunction", "-e", "events/nope.json")
    assert done.returncode == 2
    assert "cannot read event file" in done.stderr


def test_up_refuses_a_port_in_use():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = sagalocal("up", "--port", str(port), timeout=60)
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr


def test_a_template_it_cannot_read_names_the_resource_and_property(tmp_path):
    template = (ROOT / "template.yaml").read_text().replace(
        "      CodeUri: functions/cancel_order/\n", "")
    (tmp_path / "template.yaml").write_text(template)
    for folder in ("src", "functions", "statemachine"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    done = sagalocal("invoke", "CreateOrderFunction", "-e", str(ROOT / "events/steps/create_order.json"),
                     "--template", str(tmp_path / "template.yaml"), "--events", str(ROOT / "events"))
    assert done.returncode == 2
    assert "Resources.CancelOrderFunction.Properties.CodeUri is required" in done.stderr


def test_a_parameter_override_outside_allowed_values_is_refused():
    done = sagalocal("invoke", "CreateOrderFunction", "-e", "events/steps/create_order.json",
                     "--parameter-overrides", "WorkflowType=SIDEWAYS")
    assert done.returncode == 2
    assert "Parameters.WorkflowType" in done.stderr


@pytest.mark.parametrize(("content_type", "status"), [("application/x-www-form-urlencoded", 400),
                                                      ("text/plain", 415)])
def test_a_body_that_is_not_json_is_refused(target, content_type, status):
    from sagalocal.scenarios import http

    got, payload = http("POST", f"{target.api_url}/orders", b"customer_id=c",
                        {"Idempotency-Key": "form", "Content-Type": content_type})
    assert got == status, payload
