"""ministack, an independent no-Docker emulator of AWS (PyPI), as a deployed-stack target on this machine.

`make test-ministack` runs `python scripts/ministack.py`: it starts ministack in a venv of its own (REQUIREMENTS:
ministack pins a botocore the project's venv cannot share), builds template.yaml (`sam build`), deploys it with
samlocal as a test stack is deployed (TEST_OVERRIDES), seeds the catalog and the coupons, runs tests/stack against
it (tests/stack/conftest.py reads SAGA_API_URL, SAGA_AWS_ENDPOINT, SAGA_STACK_OUTPUTS and SAGA_ENGINE=ministack,
whose known gaps are strict expected failures: tests/stack/engines.py), stops it, and regenerates docs/engines.md
from the run's JUnit report (scripts/engines_doc.py). The exit status is pytest's.

  python scripts/ministack.py [extra pytest arguments]

bench/stacks.py starts the same ministack for the benchmarks. Every process binds 127.0.0.1 (BIND_HOST).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".local" / "ministack"
VENV = ROOT / ".local" / "bench" / "ministack-venv"  # shared with `make bench`: made once
PYENV = {"PYENV_VERSION": "3.13.0:3.11.7", "SAM_CLI_TELEMETRY": "0"}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
REGION = "us-east-1"
# ministack pins a botocore this venv cannot share; aws-sam-translator expands the SAM transform.
REQUIREMENTS = (
    "ministack==1.5.33 boto3==1.43.106 botocore==1.43.106 aws-sam-translator==1.115.0 Hypercorn==0.18.0 h11==0.16.0 "
    "h2==4.4.1 hpack==4.2.0 hyperframe==6.1.0 priority==2.0.0 wsproto==1.3.2 PyYAML==6.0.4 defusedxml==0.7.1 "
    "jsonata-python==0.7.1 graphql-core==3.2.12 jmespath==1.1.0 python-dateutil==2.9.0.post0 s3transfer==0.19.3 "
    "six==1.17.0 urllib3==2.8.0 pydantic==2.13.5 pydantic_core==2.46.5 annotated-types==0.8.0 "
    "typing_extensions==4.16.0 typing-inspection==0.4.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 "
    "referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 "
    # ministack verifies a Cognito token's RS256 signature with cryptography, and without it refuses every token
    # (401): the API's Cognito authorizer needs it.
    "cryptography==50.0.2 cffi==2.1.1 pycparser==3.12").split()
VERSION = REQUIREMENTS[0].split("==")[1]
# What ministack cannot create, taken out of the template it deploys: its deploy fails with "Unrecognized resource
# types: [AWS::StepFunctions::StateMachineAlias, AWS::StepFunctions::StateMachineVersion,
# AWS::WAFv2::WebACLAssociation]". The state machine is then unversioned (the API starts executions on it, not on
# the alias `live`) and the stage has no WAF.
LEFT_OUT = ("the state machine's AutoPublishAlias (its version and alias `live`)",
            "the association of the stage with its WAF web ACL")
# What ministack's CloudFormation would deploy wrong, written so that it deploys what AWS does: it passes a Number
# parameter on as the string it was given, where AWS's converts it, and its SQS poller then compares ReaperWorker's
# ScalingConfig.MaximumConcurrency ("10") with an int at every poll and fails ("'>=' not supported between instances
# of 'int' and 'str'"), so ReaperWorker is never invoked. The parameter's value, as a number, is written in its place.
AS_NUMBERS = ("ScalingConfig.MaximumConcurrency of an SQS event source (a Number parameter)",)
# The layer's packages that only the Stripe adapter imports (src/requirements.txt; order_saga.stripe_gateway imports
# them when it is called, on a stack deployed with PaymentGateway=stripe). `make test-ministack` deploys the fake
# gateway and leaves them out of the layer: they are 3,800 of its 4,700 files, and ministack unpacks the layer into
# every Lambda worker it starts, inside its own process (1.0 CPU-s with them, 0.26 without, measured 2026-12-08), at
# every cold start and again after every error (it ends a worker whose handler raised).
STRIPE_ONLY = ("stripe", "requests", "charset_normalizer", "idna", "certifi")
# A test stack as the stack tier expects one (tests/stack/conftest.py: UNLIMITED, and the fault rules).
TEST_OVERRIDES = ("FaultInjection=true", "ReconcileAfterSeconds=1", "MaxOpenOrdersPerCustomer=1000",
                  "ApiClientRateLimit=2000000000", "BreakerFailureThreshold=100")

TEST_TIMEOUT_S = 300  # per test (pytest-timeout): a hang fails its test, named, and the tier goes on


class Blocked(Exception):
    """ministack cannot be stood up or deployed here; the message says why."""


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
    """This environment with python3.13 on PATH (sam build needs the functions' runtime) and the venv's tools."""
    return {**os.environ, **PYENV, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", **extra}


def venv(path: Path | str, requirements: list[str]) -> str:
    """A Python 3.13 venv with exactly these pins (made once; remade when they change); its python."""
    path = str(path)
    python, stamp = os.path.join(path, "bin", "python"), os.path.join(path, ".bench-requirements")
    wanted = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    if os.path.exists(stamp) and Path(stamp).read_text() == wanted:
        return python
    py313 = shutil.which("python3.13", path=pyenv_env()["PATH"])
    if py313 is None:
        raise Blocked("python3.13 is not on PATH (PYENV_VERSION=3.13.0:3.11.7)")
    shutil.rmtree(path, ignore_errors=True)
    run([py313, "-m", "venv", path], "python3.13 -m venv", 120, env=pyenv_env())
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        f"pip install into {path}", 900)
    Path(stamp).write_text(wanted)
    return python


def sam_build(template_dir: Path | str, build_dir: Path | str) -> float:
    """`sam build` of the template in `template_dir` into `build_dir` (cached); the seconds it took."""
    started = time.perf_counter()
    run(["sam", "build", "--template-file", f"{template_dir}/template.yaml", "--build-dir", str(build_dir), "--cached",
         "--cache-dir", f"{build_dir}-cache", "--parallel"], f"sam build of {template_dir}", 600,
        cwd=template_dir, env=pyenv_env())
    return time.perf_counter() - started


def template(build_dir: Path | str, overrides: tuple[str, ...] = (), slim: bool = False) -> str:
    """`sam build`'s template without what ministack cannot create (LEFT_OUT), its Number parameters as numbers where
    ministack needs them (AS_NUMBERS, with these `Name=value` overrides), as JSON beside it; its path. `slim`: its
    layer without the Stripe adapter's packages (STRIPE_ONLY), unless these overrides choose PaymentGateway=stripe."""
    from samcli.yamlhelper import yaml_parse

    with open(os.path.join(build_dir, "template.yaml")) as f:
        parsed = yaml_parse(f.read())
    resources = parsed["Resources"]
    values = {name: spec.get("Default") for name, spec in parsed.get("Parameters", {}).items()
              if spec.get("Type") == "Number"}
    values.update(item.split("=", 1) for item in overrides if item.split("=", 1)[0] in values)
    aliases = {}
    for name, resource in list(resources.items()):
        props = resource.get("Properties") or {}
        for event in (props.get("Events") or {}).values() if resource["Type"] == "AWS::Serverless::Function" else ():
            scaling = (event.get("Properties") or {}).get("ScalingConfig") or {}
            ref = scaling.get("MaximumConcurrency")
            if event.get("Type") == "SQS" and isinstance(ref, dict) and ref.get("Ref") in values:
                scaling["MaximumConcurrency"] = int(values[ref["Ref"]])
        if resource["Type"] == "AWS::Serverless::StateMachine" and props.pop("AutoPublishAlias", None):
            props.pop("DeploymentPreference", None)
            aliases[f"{name}Aliaslive"] = name  # SAM's name for the alias it would have made
        elif resource["Type"] == "AWS::WAFv2::WebACLAssociation":
            del resources[name]
        elif resource["Type"] == "AWS::Serverless::LayerVersion" and slim \
                and "PaymentGateway=stripe" not in overrides:
            props["ContentUri"] = os.path.basename(slim_layer(os.path.join(build_dir, props["ContentUri"])))

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

    shimmed = repoint(parsed)
    left = [alias for alias in aliases if alias in json.dumps(shimmed)]
    if left:
        raise Blocked(f"ministack's template still names {', '.join(left)}, which it cannot create")
    path = os.path.join(build_dir, "template-ministack.json")
    with open(path, "w") as f:
        json.dump(shimmed, f, indent=1)
    return path


def slim_layer(layer: str) -> str:
    """A copy of the built layer beside it without STRIPE_ONLY's packages (and their dist-info); its path."""
    slim = f"{layer}-ministack"
    shutil.rmtree(slim, ignore_errors=True)
    shutil.copytree(layer, slim, ignore=lambda folder, names: [
        name for name in names if folder == os.path.join(layer, "python") and name.split("-")[0] in STRIPE_ONLY])
    return slim


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(root: int) -> list[int]:
    """`root` and every process below it (ministack's Lambda workers among them)."""
    parents: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return found


class Ministack:
    """One ministack process (and its workers) on a free port of 127.0.0.1, logging to `workdir`/ministack.log."""

    def __init__(self, workdir: Path | str, python: str, **settings: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # BIND_HOST keeps its gateway on 127.0.0.1; its IoT mTLS listener (on whenever cryptography is installed,
        # which the Cognito authorizer needs) and its SFTP server would bind 0.0.0.0 on fixed ports: both off.
        # Its own temporary folder, removed when it stops: ministack unpacks each Lambda worker's code and layer into
        # a folder of TMPDIR and leaves them there when it is stopped (~60 MB a worker; a run of the tier starts
        # dozens). In memory (tmpfs, /dev/shm) where the machine has one: it starts a worker again after every error,
        # and on disk six erroring invocations of one function in a row took 1.5, 1.6, 2.3, 3.3, 3.4 and 4.0 s (its
        # process's CPU time growing alike, the unpacking slowing as the disk wrote back), on tmpfs eight took 1.1 to
        # 1.5 s each (2026-12-08).
        memory = "/dev/shm"  # noqa: S108 - a folder of our own in it (mkdtemp), removed at stop
        self.tmp = Path(tempfile.mkdtemp(prefix="ministack-", dir=memory if os.access(memory, os.W_OK) else workdir))
        env = {**os.environ, **CREDENTIALS, "BIND_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port),
               "IOT_MTLS_ENABLED": "0", "SFTP_ENABLED": "0", "LOG_LEVEL": "WARNING", "TMPDIR": str(self.tmp),
               **settings}
        env.pop("AWS_ENDPOINT_URL", None)
        with open(self.workdir / "ministack.log", "wb") as log:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [python, "-m", "ministack"], cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=1)  # noqa: S310 - local
                break
            except OSError as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = (self.workdir / "ministack.log").read_text()[-1500:]
                    raise Blocked(f"ministack did not start: {log}") from exc
                time.sleep(0.05)

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="test",
                            aws_secret_access_key="test")  # noqa: S106 - a local emulator

    def deploy(self, build_dir: Path | str, stack_name: str, stage: str, overrides: tuple[str, ...],
               slim: bool = False) -> dict[str, str]:
        """samlocal deploy of the built template (less LEFT_OUT; `slim`: see template()); the stack's outputs."""
        samlocal = os.path.join(os.path.dirname(sys.executable), "samlocal")
        run([samlocal, "deploy", "--template-file", template(build_dir, overrides, slim), "--stack-name", stack_name,
             "--resolve-s3", "--capabilities", "CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND", "--no-confirm-changeset",
             "--no-fail-on-empty-changeset", "--region", REGION, "--parameter-overrides", f"Stage={stage}",
             *overrides], "samlocal deploy to ministack", 600, cwd=build_dir,
            env=pyenv_env(**CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint, EDGE_PORT=str(self.port),
                          LOCALSTACK_HOSTNAME="127.0.0.1"))
        described = self.client("cloudformation").describe_stacks(StackName=stack_name)
        return {o["OutputKey"]: o["OutputValue"] for o in described["Stacks"][0]["Outputs"]}

    def api_url(self, outputs: dict[str, str], stage: str) -> str:
        """The stage's URL on ministack: `<endpoint>/_aws/execute-api/<api id>/<stage>`."""
        api_id = outputs["ApiUrl"].split("//", 1)[1].split(".", 1)[0]
        return f"{self.endpoint}/_aws/execute-api/{api_id}/{stage}"

    def stop(self) -> None:
        """SIGTERM to its group, then SIGKILL to whatever of its process tree is left (by pid)."""
        if self.process is None:
            return
        pids = tree(self.process.pid)
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.process = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    started = time.monotonic()
    stage, stack_name = "ci", "order-saga-ci"
    OUT.mkdir(parents=True, exist_ok=True)
    build_dir = OUT / "build"
    print(f"ministack {VERSION}: its venv ({VENV.relative_to(ROOT)}), sam build, deploy", flush=True)
    python = venv(VENV, REQUIREMENTS)
    built = sam_build(ROOT, build_dir)
    stack = Ministack(OUT, python)
    try:
        deployed = time.monotonic()
        outputs = stack.deploy(build_dir, stack_name, stage, TEST_OVERRIDES, slim=True)
        print(f"sam build {built:.0f} s; deployed in {time.monotonic() - deployed:.0f} s at {stack.endpoint}",
              flush=True)
        outputs_file = OUT / "stack-outputs.json"
        outputs_file.write_text(json.dumps(outputs, indent=1))
        env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": stack.endpoint}
        run([sys.executable, str(ROOT / "scripts/seed_catalog.py"), "--stack-outputs", str(outputs_file),
             str(ROOT / "events/catalog.json"), "--promotions", str(ROOT / "events/promotions.json")],
            "seeding the catalog", 120, env=env)
        env.pop("AWS_ENDPOINT_URL")
        env.update(SAGA_API_URL=stack.api_url(outputs, stage), SAGA_AWS_ENDPOINT=stack.endpoint,
                   SAGA_STACK_OUTPUTS=str(outputs_file), SAGA_STACK_NAME=stack_name, SAGA_ENGINE="ministack")
        report = OUT / "junit.xml"
        paths = [] if any(arg.startswith("tests/stack/") for arg in argv) else ["tests/stack"]
        status = subprocess.run([sys.executable, "-m", "pytest", *paths, f"--junitxml={report}",
                                 f"--timeout={TEST_TIMEOUT_S}", "--durations=15", *argv], cwd=ROOT, env=env,
                                check=False).returncode
    finally:
        stack.stop()
    if not argv:  # the whole tier: its report is the engine's column of docs/engines.md, beside make test's last
        embedded = sorted(str(path) for path in (ROOT / ".local" / "tests").glob("stack*.xml"))
        subprocess.run([sys.executable, str(ROOT / "scripts/engines_doc.py"), "--ministack", str(report),
                        *(["--embedded", *embedded] if embedded else [])], cwd=ROOT, check=False)
    print(f"make test-ministack: pytest exit {status}; {time.monotonic() - started:.0f} s in all")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Blocked as exc:
        print(f"ministack: {exc}", file=sys.stderr)
        sys.exit(2)
