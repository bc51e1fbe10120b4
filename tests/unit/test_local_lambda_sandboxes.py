"""The embedded Lambda service's processes: templates forked from one preloader, sandboxes forked from a template.

A template forked from the preloader must be what a process started with its function's environment would be: its
clients made from that environment (the preloader shares only botocore's loader, whose files it has read), and a
sandbox that died must never be handed out again, even before its template has reaped it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from sagalocal.awslambda.runtime import Concurrency, FunctionRuntime, FunctionSpec, Preloader

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the sandboxes' states are read in /proc")

HANDLERS = '''
import os, threading
import boto3

def clients(event, context):
    client = boto3.client("dynamodb")
    session = boto3.DEFAULT_SESSION._session
    return {"key": client._request_signer._credentials.access_key, "region": client.meta.region_name,
            "endpoint": client.meta.endpoint_url, "retries": client.meta.config.retries,
            "user_agent": [p for p in client.meta.config.user_agent.split() if p.startswith("exec-env")],
            "monitored": session._get_internal_component("monitor") is not None}

def dies(event, context):
    threading.Timer(0.2, lambda: os._exit(3)).start()  # the sandbox dies once it has answered
    return "answered"
'''
BASE = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"),
        "AWS_ACCESS_KEY_ID": "stack", "AWS_SECRET_ACCESS_KEY": "stack", "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13"}


@pytest.fixture
def runtimes(tmp_path: Path):
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text(HANDLERS)
    preloader, account, made = Preloader(BASE), Concurrency(10), []

    def runtime(handler: str, environment: dict[str, str]) -> FunctionRuntime:
        spec = FunctionSpec(handler, handler, f"arn:aws:lambda:us-east-1:123456789012:function:{handler}",
                            f"app.{handler}", tmp_path / "fn", [], environment, 10.0, 128, tmp_path / f"{handler}.log")
        made.append(FunctionRuntime(spec, BASE, account, cold_start_delay=False, preloader=preloader))
        return made[-1]

    yield runtime
    for each in made:
        each.close()
    preloader.close()


def state(pid: int) -> str:
    """The process's state letter ("Z": a zombie), or "gone" once it was reaped (its /proc entry can vanish between
    any check and the read: ENOENT at the open, ESRCH at the read)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def test_a_function_forked_from_the_preloader_makes_its_clients_from_its_own_environment(runtimes):
    own = {"AWS_ACCESS_KEY_ID": "AKFUNCTION", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu-west-1",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:2", "AWS_MAX_ATTEMPTS": "7",
           "AWS_RETRY_MODE": "adaptive", "AWS_EXECUTION_ENV": "AWS_Lambda_custom", "AWS_CSM_ENABLED": "true"}
    runtime = runtimes("clients", own)
    result = runtime.invoke({})
    assert type(runtime._template).__name__ == "_Forked"  # forked from the preloader, not started on its own
    answer: dict[str, Any] = result.payload
    assert (answer["key"], answer["region"], answer["endpoint"]) == ("AKFUNCTION", "eu-west-1", "http://127.0.0.1:2")
    assert answer["retries"] == {"total_max_attempts": 7, "mode": "adaptive"}
    assert answer["user_agent"] == ["exec-env/AWS_Lambda_custom"]  # not the stack's AWS_Lambda_python3.13
    assert answer["monitored"] is True  # AWS_CSM_ENABLED is read when the session is made: the function's


def test_a_dead_sandbox_its_template_has_not_reaped_yet_is_not_alive(runtimes):
    runtime = runtimes("dies", {})
    assert runtime.invoke({}).payload == "answered"
    (sandbox,) = runtime._idle
    template = runtime._template.pid
    os.kill(template, signal.SIGSTOP)  # a loaded machine: the template is not scheduled to reap its sandbox
    try:
        deadline = time.monotonic() + 10
        while state(sandbox.pid) != "Z":
            assert time.monotonic() < deadline, "the sandbox never died"
            time.sleep(0.02)
        assert not sandbox.alive()  # a zombie: handing it out would fail the next invocation with a broken pipe
    finally:
        os.kill(template, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while state(sandbox.pid) == "Z":  # reaped once it runs
        assert time.monotonic() < deadline, "the template never reaped its sandbox"
        time.sleep(0.02)
    assert runtime.invoke({}).payload == "answered"  # a new sandbox
