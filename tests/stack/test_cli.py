"""The sagalocal CLI: `invoke` as `sam local invoke`, and clear errors for what it cannot do.

These test the CLI's own embedded stacks (each invoke starts one), not the stack under test. Each command runs as
typed (`python -m sagalocal ...`, its exit status and its stderr), but for the refusals the CLI makes before anything
starts from the template alone (an unknown function, a parameter override the template does not allow, a layer that
names nothing in the template): those run the same command line through the CLI's entry point in this process
(`sagalocal.cli.main`, its stderr captured), as exit status 2 and its message are what they check; a new interpreter
for each (~0.8 CPU-s, importing the template's tools again) proved nothing more, and the other refusals here prove
exit status 2 from a process of its own.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from tests.stack.conftest import ROOT

pytestmark = pytest.mark.embedded_only(reason="tests the sagalocal CLI itself, which starts its own embedded stacks")
SEED = f"{sys.executable} scripts/seed_catalog.py --stack-outputs .local/invoke/stack-outputs.json events/catalog.json"


# A deadline for a hang, not a speed bound: an invoke boots a whole stack (~8 CPU-s, 10 s on an idle machine), and
# at the start of `make test` seven groups boot theirs at once; an idle fresh clone's run saw one take over 120 s.
DEADLINE = 400


def sagalocal(*args: str, cwd: Path = ROOT, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sagalocal", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, check=False)


def refused_here(*args: str, monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess[str]:
    """A command the CLI refuses before it starts anything, through its entry point in this process (from ROOT, as
    `sagalocal()` runs it): its exit status and what it wrote."""
    from sagalocal.cli import main

    monkeypatch.chdir(ROOT)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(list(args))
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def test_invoke_runs_the_real_handler_on_a_fresh_stack():
    done = sagalocal("invoke", "CancelOrderFunction", "-e", "events/steps/cancel_order.json", "--init", SEED)
    assert done.returncode == 0, done.stderr
    saga = json.loads(done.stdout)
    assert saga["outcome"] == {"error": "InsufficientStock", "cause": "sample failure"}
    assert "CancelOrderFunction: ok" in done.stderr
    assert "init: 3 catalog items added" in done.stderr


def test_invoke_unknown_function_names_the_known_ones(monkeypatch):
    done = refused_here("invoke", "NoSuchFunction", "-e", "events/steps/reserve_inventory.json",
                        monkeypatch=monkeypatch)
    assert done.returncode == 2
    assert "unknown function 'NoSuchFunction'" in done.stderr
    assert "ReserveInventoryFunction" in done.stderr
    assert "Traceback" not in done.stderr


def test_invoke_malformed_event_says_where(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"saga": {"order_id": "x",}\n}')
    done = sagalocal("invoke", "ReserveInventoryFunction", "-e", str(bad))
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr
    assert "line 1" in done.stderr


def test_invoke_missing_event_file():
    done = sagalocal("invoke", "ReserveInventoryFunction", "-e", "events/nope.json")
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


def test_a_template_it_cannot_read_names_the_resource_and_property(tmp_path, monkeypatch):
    code = "      CodeUri: functions/cancel_order/\n"
    template = (ROOT / "template.yaml").read_text().replace(code, code + "      Layers: [!Ref NoSuchLayer]\n")
    (tmp_path / "template.yaml").write_text(template)
    for folder in ("src", "functions", "statemachine"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    # Refused from the template alone, before anything starts (sagalocal/provision.py check_layers).
    done = refused_here("invoke", "ReserveInventoryFunction", "-e", str(ROOT / "events/steps/reserve_inventory.json"),
                        "--template", str(tmp_path / "template.yaml"), monkeypatch=monkeypatch)
    assert done.returncode == 2
    assert "Resources.CancelOrderFunction.Properties" in done.stderr
    assert "NoSuchLayer" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("override", "message"), [
    ("FaultInjection=maybe", "Parameters.FaultInjection"),
    ("LeaseSeconds=0", "Parameters.LeaseSeconds: 0 is below MinValue 45"),
    ("LeaseSeconds=44", "Parameters.LeaseSeconds: 44 is below MinValue 45"),
    ("Stage=prod", "Rules.NoFakeGatewayInProduction: PaymentGateway=fake cannot deploy to production"),
    ("Stage=prod-eu", "Rules.ProductionIsStated: This Stage is neither a production name"),
    ("NoSuchParameter=1", "no parameter named NoSuchParameter"),
])
def test_a_parameter_override_the_template_does_not_allow_is_refused(override, message, monkeypatch):
    done = refused_here("invoke", "ReserveInventoryFunction", "-e", "events/steps/reserve_inventory.json",
                        "--parameter-overrides", override, monkeypatch=monkeypatch)
    assert done.returncode == 2
    assert message in done.stderr
