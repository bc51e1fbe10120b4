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
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import boto3
from botocore.config import Config
from common import CATALOG, OUT, ROOT, free_port, group_cpu, http, processes

BASELINE_COMMIT = "5d5f643"
BASELINE = os.path.join(OUT, "baseline")
PYENV = {"PYENV_VERSION": "3.13.0:3.11.7", "SAM_CLI_TELEMETRY": "0"}
NO_REAPER = "ReaperSchedule=rate(1 day)"  # no sweep in the middle of a measurement
# A benchmark is one client placing many orders at once: the per-customer limits lifted to their maximum.
UNLIMITED = ("MaxOpenOrdersPerCustomer=1000", "ApiClientRateLimit=2000000000")
MINISTACK_VENV = os.path.join(OUT, "ministack-venv")
# ministack pins a botocore this venv cannot share; aws-sam-translator expands the SAM transform.
MINISTACK_REQUIREMENTS = (
    "ministack==1.5.33 boto3==1.43.106 botocore==1.43.106 aws-sam-translator==1.115.0 Hypercorn==0.18.0 h11==0.16.0 "
    "h2==4.4.1 hpack==4.2.0 hyperframe==6.1.0 priority==2.0.0 wsproto==1.3.2 PyYAML==6.0.4 defusedxml==0.7.1 "
    "jsonata-python==0.7.1 graphql-core==3.2.12 jmespath==1.1.0 python-dateutil==2.9.0.post0 s3transfer==0.19.3 "
    "six==1.17.0 urllib3==2.8.0 pydantic==2.13.5 pydantic_core==2.46.5 annotated-types==0.8.0 "
    "typing_extensions==4.16.0 typing-inspection==0.4.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 "
    "referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 "
    # ministack verifies a Cognito token's RS256 signature with cryptography, and without it refuses every token
    # (401): the API's Cognito authorizer needs it.
    "cryptography==50.0.2 cffi==2.1.1 pycparser==3.12").split()
ROLES = {"dynamodb.server": "DynamoDB process", "sandbox.py": "Lambda sandboxes", "worker.py": "Lambda sandboxes"}


class Blocked(Exception):
    """A stack that cannot be measured; the message says why, and goes into the report."""


def run(cmd: list[str], what: str, timeout: float = 600, **kwargs: Any) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Blocked(f"{what}: {exc}") from exc
    if done.returncode:
        tail = " | ".join([ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()][-5:])
        raise Blocked(f"{what} exited {done.returncode}: {tail}")
    return done.stdout


def pyenv_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **PYENV, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", **extra}


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
    if not os.path.exists(os.path.join(BASELINE, "template.yaml")):
        os.makedirs(BASELINE, exist_ok=True)
        archive = subprocess.run(["git", "archive", BASELINE_COMMIT], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", BASELINE], input=archive.stdout, check=True)
    return BASELINE


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


# ---- ministack ---------------------------------------------------------------------------------------------
def sam_build(template_dir: str, build_dir: str) -> float:
    started = time.perf_counter()
    run(["sam", "build", "--template-file", f"{template_dir}/template.yaml", "--build-dir", build_dir, "--cached",
         "--cache-dir", f"{build_dir}-cache", "--parallel"], f"sam build of {template_dir}", 600,
        cwd=template_dir, env=pyenv_env())
    return time.perf_counter() - started


def venv(path: str, requirements: list[str]) -> str:
    """A Python 3.13 venv with exactly these pins (made once; remade when they change)."""
    python, stamp = os.path.join(path, "bin", "python"), os.path.join(path, ".bench-requirements")
    wanted = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    if os.path.exists(stamp) and open(stamp).read() == wanted:
        return python
    py313 = shutil.which("python3.13", path=pyenv_env()["PATH"])
    if py313 is None:
        raise Blocked("python3.13 is not on PATH (PYENV_VERSION=3.13.0:3.11.7)")
    shutil.rmtree(path, ignore_errors=True)
    run([py313, "-m", "venv", path], "python3.13 -m venv", 120, env=pyenv_env())
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        f"pip install into {path}", 900)
    with open(stamp, "w") as f:
        f.write(wanted)
    return python


# What ministack (1.5.33, PyPI's newest) cannot create, taken out of the template it deploys: its deploy fails with
# "Unrecognized resource types: [AWS::StepFunctions::StateMachineAlias, AWS::StepFunctions::StateMachineVersion,
# AWS::WAFv2::WebACLAssociation]". The state machine is then unversioned (the API starts executions on it, not on
# the alias `live`) and the stage has no WAF; nothing a happy saga's latency depends on.
MINISTACK_LEFT_OUT = ("the state machine's AutoPublishAlias (its version and alias `live`)",
                      "the association of the stage with its WAF web ACL")


def ministack_template(build_dir: str) -> str:
    """`sam build`'s template without what ministack cannot create (MINISTACK_LEFT_OUT), as JSON beside it."""
    from samcli.yamlhelper import yaml_parse

    with open(os.path.join(build_dir, "template.yaml")) as f:
        template = yaml_parse(f.read())
    resources = template["Resources"]
    aliases = {}
    for name, resource in list(resources.items()):
        props = resource.get("Properties") or {}
        if resource["Type"] == "AWS::Serverless::StateMachine" and props.pop("AutoPublishAlias", None):
            props.pop("DeploymentPreference", None)
            aliases[f"{name}Aliaslive"] = name  # SAM's name for the alias it would have made
        elif resource["Type"] == "AWS::WAFv2::WebACLAssociation":
            del resources[name]

    def repoint(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Ref"} and node["Ref"] in aliases:
                return {"Ref": aliases[node["Ref"]]}
            if "states:StateMachineQualifier" in json.dumps(node.get("Condition", "")) \
                    and node.get("Resource") in [{"Ref": machine} for machine in aliases.values()]:
                # A start allowed on the alias only: with no alias, on the state machine itself.
                return {k: repoint(v) for k, v in node.items() if k != "Condition"}
            return {k: repoint(v) for k, v in node.items()}
        if isinstance(node, list):
            return [repoint(v) for v in node]
        return node

    shimmed = repoint(template)
    left = [alias for alias in aliases if alias in json.dumps(shimmed)]
    if left:
        raise Blocked(f"ministack's template still names {', '.join(left)}, which it cannot create")
    path = os.path.join(build_dir, "template-ministack.json")
    with open(path, "w") as f:
        json.dump(shimmed, f, indent=1)
    return path


def start_ministack(build_dir: str) -> Stack:
    python = venv(MINISTACK_VENV, MINISTACK_REQUIREMENTS)
    stack = Stack("ministack")
    stack.roles = {"_worker.py": "Lambda workers"}
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    ready = os.path.join(stack.workdir, "health")
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**os.environ, **creds, "BIND_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "LOG_LEVEL": "WARNING"}
    env.pop("AWS_ENDPOINT_URL", None)
    waiter = (f"import time,urllib.request\nwhile True:\n try:\n  urllib.request.urlopen('{endpoint}/_localstack/"
              f"health',timeout=1);break\n except OSError: time.sleep(0.05)\nopen('{ready}','w').close()")
    started = time.perf_counter()
    stack.proc = subprocess.Popen([python, "-m", "ministack"], cwd=stack.workdir, env=env, start_new_session=True,
                                  stdout=open(os.path.join(stack.workdir, "stack.log"), "wb"),
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    run([sys.executable, "-c", waiter], "waiting for ministack's health endpoint", 60)
    samlocal = os.path.join(os.path.dirname(sys.executable), "samlocal")
    try:
        run([samlocal, "deploy", "--template-file", ministack_template(build_dir), "--stack-name", "order-saga-bench",
             "--resolve-s3", "--capabilities", "CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND", "--no-confirm-changeset",
             "--no-fail-on-empty-changeset", "--region", "us-east-1", "--parameter-overrides", "Stage=bench",
             NO_REAPER, *UNLIMITED], "samlocal deploy to ministack", 600, cwd=build_dir,
            env=pyenv_env(**creds, AWS_ENDPOINT_URL=endpoint, EDGE_PORT=str(port), LOCALSTACK_HOSTNAME="127.0.0.1"))
        stack.startup_s = time.perf_counter() - started
        described = client("cloudformation", endpoint).describe_stacks(StackName="order-saga-bench")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Stacks"][0]["Outputs"]}
        outputs_file = os.path.join(stack.workdir, "outputs.json")
        with open(outputs_file, "w") as f:
            json.dump(outputs, f)
        run([sys.executable, f"{ROOT}/scripts/seed_catalog.py", "--stack-outputs", outputs_file,
             write_catalog(stack.workdir)], "seeding ministack's catalog", 60, env={**os.environ, **creds,
                                                                                   "AWS_ENDPOINT_URL": endpoint})
        api_id = outputs["ApiUrl"].split("//", 1)[1].split(".", 1)[0]
        stack.connect(f"{endpoint}/_aws/execute-api/{api_id}/bench", endpoint, outputs)
        stack.version = MINISTACK_REQUIREMENTS[0].split("==")[1]
    except BaseException:
        stack.stop()
        raise
    return stack


def reset_recording(stack: Stack, on: bool) -> None:
    """moto's recorder on the baseline's server: start (emptied) or stop."""
    if on and os.path.exists(stack.recording):
        os.remove(stack.recording)
    http("POST", f"{stack.endpoint}/moto-api/recorder/{'start' if on else 'stop'}-recording")
