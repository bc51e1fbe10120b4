"""The three stacks a run compares, each in processes of its own, reached only over HTTP:

  new        this tree's embedded stack: `python -m sagalocal up` (DynamoDB process, Lambda sandboxes)
  baseline   the embedded stack of commit 5d5f643 (the published 2026-11 figures), from `git archive`,
             started as that commit started it: `python -m sagalocal up --events DIR` (it seeds the catalog)
  ministack  an independent emulator: the same template, `sam build` + `samlocal deploy`, in its own venv

Every stack runs in its own process group (start_new_session), which is how it is stopped and how its CPU
is read. ministack binds 127.0.0.1 only (BIND_HOST).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from common import CATALOG, OUT, ROOT, extract, free_port, group_cpu, http, processes

from scripts import ministack
from scripts.ministack import Blocked, pyenv_env, run, sam_build, venv  # noqa: F401 - the bench's names for them

BASELINE_COMMIT = "5d5f643"
BASELINE = os.path.join(OUT, "baseline")
NO_REAPER = "ReaperSchedule=rate(1 day)"  # no sweep in the middle of a measurement
# A benchmark is one client placing many orders at once: the per-customer limits lifted to their maximum.
UNLIMITED = ("MaxOpenOrdersPerCustomer=1000", "ApiClientRateLimit=2000000000")
MINISTACK_VENV = ministack.VENV
MINISTACK_REQUIREMENTS = ministack.REQUIREMENTS
ROLES = {"dynamodb.server": "DynamoDB process", "sandbox.py": "Lambda sandboxes", "worker.py": "Lambda sandboxes"}


def client(service: str, endpoint: str) -> Any:
    config = Config(max_pool_connections=256, retries={"mode": "standard"})
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench", config=config)  # noqa: S106 - a local emulator


class Stack:
    announces_ends = False
    roles = ROLES

    def __init__(self, name: str) -> None:
        self.name, self.proc, self.startup_s = name, None, float("nan")
        self.workdir = os.path.join(OUT, "stacks", name)
        shutil.rmtree(self.workdir, ignore_errors=True)
        os.makedirs(self.workdir)

    def spawn(self, cmd: list[str], env: dict[str, str], ready: str, timeout: float = 180) -> dict[str, Any]:
        started = time.perf_counter()
        with open(os.path.join(self.workdir, "stack.log"), "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.perf_counter() - started > timeout:
                self.stop()
                with open(os.path.join(self.workdir, "stack.log")) as f:
                    raise Blocked(f"{self.name} did not start: {f.read()[-1500:]}")
            time.sleep(0.05)
        self.startup_s = time.perf_counter() - started
        with open(ready) as f:
            return json.load(f)

    def connect(self, api: str, endpoint: str, outputs: dict[str, Any]) -> None:
        self.api, self.endpoint, self.outputs = api.rstrip("/"), endpoint, outputs
        self.sfn = client("stepfunctions", endpoint)
        self.auth: dict[str, str] = {}
        if "UserPoolId" in outputs:  # the API needs a signed-in customer: one, signed in once
            from sagalocal.signin import sign_in

            signed = sign_in(client("cognito-idp", endpoint), outputs["UserPoolId"], outputs["UserPoolClientId"],
                             "bench")
            self.auth = {"Authorization": f"Bearer {signed['IdToken']}"}

    def cpu(self, client: bool = False) -> dict[str, float]:
        """CPU seconds by process role; with `client`, the bench process's own too (one stack measured alone)."""
        return {**group_cpu(self.proc.pid, self.roles), **({"bench client": sum(os.times()[:2])} if client else {})}

    def stop(self) -> None:
        """SIGTERM to the stack's group, then SIGKILL to whatever of its process tree is left (by pid)."""
        if self.proc is None:
            return
        tree = [pid for pid, _, _ in processes(self.proc.pid)]
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


def write_catalog(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "catalog.json")
    with open(path, "w") as f:
        json.dump(CATALOG, f)
    return path


def start_new() -> Stack:
    stack = Stack("new")
    stack.announces_ends = True
    catalog = write_catalog(stack.workdir)
    ready = os.path.join(stack.workdir, "ready.json")
    seed = (f"{sys.executable} {ROOT}/scripts/seed_catalog.py --stack-outputs .local/stack-outputs.json {catalog} "
            f"--promotions {ROOT}/events/promotions.json")
    info = stack.spawn([sys.executable, "-m", "sagalocal", "up", "--template", f"{ROOT}/template.yaml",
                        "--port", str(free_port()), "--ready-file", ready, "--init", seed,
                        "--parameter-overrides", NO_REAPER, *UNLIMITED],
                       {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT}/src"}, ready)
    stack.connect(info["api"], info["endpoint"], info["outputs"])
    stack.dynamodb_endpoint = info["dynamodb_endpoint"]
    return stack


def extract_baseline() -> str:
    return str(extract(BASELINE_COMMIT, Path(BASELINE)))


def declared(template: str, overrides: list[str]) -> list[str]:
    """The overrides whose parameter the template declares: 5d5f643's has no per-customer limits to lift (its
    `sagalocal up` refuses an override it does not declare)."""
    from sagalocal.template import _parsed

    with open(template) as f:
        parameters = _parsed(f.read()).get("Parameters") or {}
    return [o for o in overrides if o.split("=", 1)[0] in parameters]


def start_baseline() -> Stack:
    """5d5f643's stack: DynamoDB inside moto's server in the stack's process, so moto's request recorder
    (started and stopped around the sagas counted) counts its DynamoDB requests."""
    root = extract_baseline()
    stack = Stack("baseline")
    stack.roles = {"worker.py": "Lambda sandboxes"}
    stack.legacy_api = True
    write_catalog(stack.workdir)
    ready = os.path.join(stack.workdir, "ready.json")
    stack.recording = os.path.join(stack.workdir, "moto_recording")
    info = stack.spawn([sys.executable, "-m", "sagalocal", "up", "--template", f"{root}/template.yaml",
                        "--events", stack.workdir, "--port", str(free_port()), "--ready-file", ready,
                        "--parameter-overrides", *declared(f"{root}/template.yaml", [NO_REAPER, *UNLIMITED])],
                       {**os.environ, "PYTHONPATH": f"{root}:{root}/src", "MOTO_RECORDER_FILEPATH": stack.recording},
                       ready)
    stack.connect(info["api"], info["endpoint"], info["outputs"])
    return stack


# ---- ministack (scripts/ministack.py, shared with `make test-ministack`) ----------------------------------------
MINISTACK_LEFT_OUT = ministack.LEFT_OUT
ministack_template = ministack.template


def start_ministack(build_dir: str) -> Stack:
    python = venv(MINISTACK_VENV, MINISTACK_REQUIREMENTS)
    stack = Stack("ministack")
    stack.roles = {"_worker.py": "Lambda workers"}
    started = time.perf_counter()
    emulator = ministack.Ministack(stack.workdir, python)
    stack.proc = emulator.process
    try:
        outputs = emulator.deploy(build_dir, "order-saga-bench", "bench", (NO_REAPER, *UNLIMITED))
        stack.startup_s = time.perf_counter() - started
        outputs_file = os.path.join(stack.workdir, "outputs.json")
        with open(outputs_file, "w") as f:
            json.dump(outputs, f)
        run([sys.executable, f"{ROOT}/scripts/seed_catalog.py", "--stack-outputs", outputs_file,
             write_catalog(stack.workdir)], "seeding ministack's catalog", 60,
            env={**os.environ, **ministack.CREDENTIALS, "AWS_ENDPOINT_URL": emulator.endpoint})
        stack.connect(emulator.api_url(outputs, "bench"), emulator.endpoint, outputs)
        stack.version = ministack.VERSION
    except BaseException:
        stack.stop()
        raise
    return stack


def reset_recording(stack: Stack, on: bool) -> None:
    """moto's recorder on the baseline's server: start (emptied) or stop."""
    if on and os.path.exists(stack.recording):
        os.remove(stack.recording)
    http("POST", f"{stack.endpoint}/moto-api/recorder/{'start' if on else 'stop'}-recording")
