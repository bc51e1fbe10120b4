"""The stack under test: the embedded local stack, started once per session from template.yaml.

The same tests run against any deployed stack (LocalStack, AWS) when the environment names it:
  SAGA_API_URL        the API's base URL
  SAGA_AWS_ENDPOINT   the AWS endpoint (omit for real AWS)
  SAGA_STACK_OUTPUTS  a JSON file with the stack's Outputs (OrdersTableName, InventoryTableName, ...)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from sagalocal.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0


@dataclass
class Target:
    api_url: str
    endpoint: str | None
    outputs: dict[str, Any]
    region: str = "us-east-1"
    embedded: bool = False

    def client(self, service: str) -> Any:
        kwargs: dict[str, Any] = {"region_name": self.region}
        if self.endpoint:
            kwargs.update(endpoint_url=self.endpoint, aws_access_key_id="local", aws_secret_access_key="local")
        return boto3.client(service, **kwargs)


def start_embedded(workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Target]:
    ready = workdir / "ready.json"
    port = free_port()
    log = open(workdir / "stack.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "sagalocal", "up", "--template", str(ROOT / "template.yaml"),
         "--events", str(ROOT / "events"), "--port", str(port), "--ready-file", str(ready), *extra],
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
    return process, Target(info["api"], info["endpoint"], info["outputs"], info["region"], embedded=True)


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get("SAGA_API_URL"):
        outputs = json.loads(Path(os.environ["SAGA_STACK_OUTPUTS"]).read_text())
        yield Target(os.environ["SAGA_API_URL"].rstrip("/"), os.environ.get("SAGA_AWS_ENDPOINT"), outputs,
                     os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        return
    process, stack = start_embedded(tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def unique() -> str:
    """A suffix that makes this test's Idempotency-Keys its own on a shared stack."""
    return "-" + uuid.uuid4().hex[:12]
