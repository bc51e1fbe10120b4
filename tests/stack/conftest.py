"""The stack under test: an embedded local stack started once per session, or any deployed stack.

A deployed stack (LocalStack, another emulator, AWS, or a second embedded stack started by hand) is named
by the environment, and then reached only through it:
  SAGA_API_URL        the API's base URL
  SAGA_AWS_ENDPOINT   the AWS endpoint (omit for real AWS)
  SAGA_STACK_OUTPUTS  a JSON file with the stack's Outputs (OrdersTableName, FaultRulesTableName, ...)
Fault injection works on any stack deployed with FaultInjection=true (the FaultRulesTableName output).
Tests that need the embedded stack itself are marked `embedded_only`, skip elsewhere with their reason,
and are listed at the end of the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sagalocal.stack import free_port
from tests.stack.support import Target

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180.0
SEED = f"{sys.executable} {ROOT / 'scripts/seed_catalog.py'} --stack-outputs .local/stack-outputs.json " \
       f"{ROOT / 'events/catalog.json'}"
DEPLOYED = bool(os.environ.get("SAGA_API_URL"))
SKIPPED_ELSEWHERE: list[tuple[str, str]] = []


def start_embedded(workdir: Path, *extra: str, overrides: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes],
                                                                                          Target]:
    """`sagalocal up` in a subprocess, with fault injection on and the catalog seeded."""
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)  # a stale file from an earlier stack would read as this one
    log = open(workdir / "stack.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "sagalocal", "up", "--template", str(ROOT / "template.yaml"), "--port", str(free_port()),
         "--ready-file", str(ready), "--init", SEED, "--parameter-overrides", "FaultInjection=true", *overrides,
         *extra],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the local stack exited with {process.returncode}: "
                               f"{(workdir / 'stack.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the local stack did not start in {START_TIMEOUT:.0f} s")
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    return process, Target(info["api"], info["endpoint"], info["outputs"], info["region"], embedded=True,
                           dynamodb_endpoint=info.get("dynamodb_endpoint"))


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def deployed_target() -> Target:
    outputs = json.loads(Path(os.environ["SAGA_STACK_OUTPUTS"]).read_text())
    return Target(os.environ["SAGA_API_URL"].rstrip("/"), os.environ.get("SAGA_AWS_ENDPOINT"), outputs,
                  os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory):
    if DEPLOYED:
        yield deployed_target()
        return
    process, stack = start_embedded(tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        stop(process)


@pytest.fixture(scope="session")
def faults(target: Target):
    """The portable fault rules (sagafaults), for stacks deployed with FaultInjection=true."""
    from tests.stack.support import FaultRules

    if not target.outputs.get("FaultRulesTableName"):
        pytest.skip("the stack was deployed without FaultInjection=true (no FaultRulesTableName output)")
    return FaultRules(target)


@pytest.fixture
def unique() -> str:
    """A suffix that makes this test's Idempotency-Keys its own on a shared stack."""
    return "-" + uuid.uuid4().hex[:12]


def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    if not DEPLOYED:
        return
    for item in items:
        marker = item.get_closest_marker("embedded_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "embedded stack only")
            item.add_marker(pytest.mark.skip(reason=f"embedded only: {reason}"))
            SKIPPED_ELSEWHERE.append((item.nodeid, reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SKIPPED_ELSEWHERE:
        terminalreporter.write_sep("-", f"{len(SKIPPED_ELSEWHERE)} embedded-only tests skipped on the deployed target")
        for nodeid, reason in SKIPPED_ELSEWHERE:
            terminalreporter.write_line(f"{nodeid}: {reason}")
