"""Benchmark 3, against a peer: the same template on ministack (a no-Docker LocalStack-compatible emulator).

ministack runs in its own venv (.local/bench/ministack-venv, Python 3.13 because the layer `sam build`
makes is for python3.13; its pins below: ministack pins a botocore that the project's venv cannot
share). It binds 127.0.0.1 only (BIND_HOST) on a free port. The template is deployed with `samlocal
deploy` (aws-sam-cli-local, from requirements-bench.txt) from the `sam build` output, with AWS_ENDPOINT_URL
pointing at ministack. Then happy-path sagas run interleaved on both stacks, in this one process:
POST /orders -> SUCCEEDED, polled with DescribeExecution every 20 ms on both.

Only the happy path is comparable: ministack reports a Python handler's exception as
Runtime.HandlerError, not as the exception's class, so no Catch on a business error matches.

If anything here fails, the benchmark prints `peer: not measured: <reason>` and carries on.

Usage: python bench/peer.py [-n 15] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    ROOT,
    SAM_BUILD_DIR,
    median,
    place_order,
    pyenv_env,
    quiet,
    sam_build,
    seed,
    start_stack,
    write_json,
)

PEER_VENV = RESULTS_DIR / "ministack-venv"
# ministack 1.5.33 and what it needs, pinned; boto3 stands in for the one the Lambda runtime provides,
# aws-sam-translator lets ministack's CloudFormation expand the AWS::Serverless transform.
PEER_REQUIREMENTS = [
    "ministack==1.5.33", "boto3==1.43.106", "botocore==1.43.106", "aws-sam-translator==1.115.0",
    "Hypercorn==0.18.0", "h11==0.16.0", "h2==4.4.1", "hpack==4.2.0", "hyperframe==6.1.0", "priority==2.0.0",
    "wsproto==1.3.2", "PyYAML==6.0.4", "defusedxml==0.7.1", "jsonata-python==0.7.1", "graphql-core==3.2.12",
    "jmespath==1.1.0", "python-dateutil==2.9.0.post0", "s3transfer==0.19.3", "six==1.17.0", "urllib3==2.8.0",
    "pydantic==2.13.5", "pydantic_core==2.46.5", "annotated-types==0.8.0", "typing_extensions==4.16.0",
    "typing-inspection==0.4.5", "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0", "rpds-py==2026.9.1", "attrs==26.1.0",
]
STAGE = "bench"
STACK_NAME = "order-saga-bench"
CREDS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_REGION": "us-east-1"}


class NotMeasured(Exception):
    pass


def run(cmd: list[str], what: str, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise NotMeasured(f"{what}: `{' '.join(cmd)}` did not finish in {timeout:.0f} s") from exc
    except OSError as exc:
        raise NotMeasured(f"{what}: `{' '.join(cmd)}` could not run: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
        raise NotMeasured(f"{what}: `{' '.join(cmd[:3])} ...` exited {proc.returncode}: {' | '.join(lines[-4:])}")
    return proc


def ensure_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".bench-requirements"
    wanted = hashlib.sha256("\n".join(PEER_REQUIREMENTS).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    py313 = shutil.which("python3.13", path=pyenv_env()["PATH"])
    if py313 is None:
        raise NotMeasured("python3.13 is not on PATH (with PYENV_VERSION=3.13.0:3.11.7); the layer is built "
                          "for python3.13 and ministack runs handlers with its own interpreter")
    if PEER_VENV.exists():
        shutil.rmtree(PEER_VENV)
    print("  creating the ministack venv (once) ...", flush=True)
    run([py313, "-m", "venv", str(PEER_VENV)], "creating ministack's venv", 120, env=pyenv_env())
    run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PEER_REQUIREMENTS],
        "installing ministack", 600)
    stamp.write_text(wanted)
    return python


def free_port() -> int:
    from sagalocal.stack import free_port as free

    return free()


class Ministack:
    def __init__(self, python: Path) -> None:
        self.python = python
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = RESULTS_DIR / "ministack.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **CREDS, "BIND_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port),
               "LOG_LEVEL": "WARNING", "MINISTACK_HOST": "localhost"}
        env.pop("AWS_ENDPOINT_URL", None)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(self.python), "-m", "ministack"], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(RESULTS_DIR), start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NotMeasured(f"ministack exited {self.proc.returncode} at start; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise NotMeasured(f"ministack did not answer on {self.endpoint} in 60 s; see {self.log}")

    def version(self) -> str:
        out = subprocess.run([str(self.python), "-m", "pip", "show", "ministack"], capture_output=True, text=True)
        return next((ln.split(":", 1)[1].strip() for ln in out.stdout.splitlines() if ln.startswith("Version")),
                    "?")

    def stop(self) -> None:
        """ministack and the worker processes it started share its session: end that process group."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: ministack leads its own group
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(pgid, signal.SIGKILL)  # workers left in the group
        except ProcessLookupError:
            pass
        self.proc = None

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])


def deploy(peer: Ministack) -> float:
    samlocal = ROOT / ".venv" / "bin" / "samlocal"
    if not samlocal.exists():
        found = shutil.which("samlocal")
        if found is None:
            raise NotMeasured("samlocal is not installed (pip install -r requirements-bench.txt)")
        samlocal = Path(found)
    env = {**pyenv_env(), **CREDS, "AWS_ENDPOINT_URL": peer.endpoint, "EDGE_PORT": str(peer.port),
           "LOCALSTACK_HOSTNAME": "127.0.0.1", "DISABLE_DEPRECATION_NOTICE": "1"}
    cmd = [str(samlocal), "deploy", "--template-file", str(SAM_BUILD_DIR / "template.yaml"),
           "--stack-name", STACK_NAME, "--resolve-s3", "--capabilities", "CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND",
           "--no-confirm-changeset", "--no-fail-on-empty-changeset", "--region", "us-east-1",
           "--parameter-overrides", f"Stage={STAGE}", "ReaperSchedule=rate(1 day)"]
    started = time.perf_counter()
    # From the build folder: the repository's samconfig.toml (confirm_changeset, stage dev) does not apply.
    run(cmd, "samlocal deploy", 600, env=env, cwd=str(SAM_BUILD_DIR))
    return time.perf_counter() - started


def once(api_url: str, sfn: Any) -> tuple[float, float]:
    from sagalocal.timeline import wait_for_execution

    started = time.perf_counter()
    accepted = place_order(api_url)
    described = wait_for_execution(sfn, accepted["execution_arn"], timeout=120, poll=0.02)
    wall = (time.perf_counter() - started) * 1000
    if described["status"] != "SUCCEEDED":
        raise NotMeasured(f"a happy-path saga ended {described['status']} {described.get('error')}: "
                          f"{str(described.get('cause'))[:200]}")
    return wall, (described["stopDate"] - described["startDate"]).total_seconds() * 1000


def measure(n: int) -> dict[str, Any]:
    quiet()
    python = ensure_venv()
    if not (SAM_BUILD_DIR / "template.yaml").exists():
        built = sam_build()
        if not built["ok"]:
            raise NotMeasured(f"sam build failed: {built['error']}")
    peer = Ministack(python)
    stack = None
    try:
        started = time.perf_counter()
        peer.start()
        start_s = time.perf_counter() - started
        deploy_s = deploy(peer)
        outputs = {o["OutputKey"]: o["OutputValue"] for o in
                   peer.client("cloudformation").describe_stacks(StackName=STACK_NAME)["Stacks"][0]["Outputs"]}
        api_id = outputs["ApiUrl"].split("//", 1)[1].split(".", 1)[0]
        peer_api = f"{peer.endpoint}/_aws/execute-api/{api_id}/{STAGE}"
        seed(peer.client("dynamodb"), outputs["InventoryTableName"])
        peer_sfn = peer.client("stepfunctions")
        cold_ms, _ = once(peer_api, peer_sfn)  # imports every function of the happy path
        once(peer_api, peer_sfn)
        stack = start_stack()
        local_sfn = stack.client("stepfunctions")
        for _ in range(2):
            once(stack.api_url, local_sfn)
        local, local_exec, remote, remote_exec = [], [], [], []
        for _ in range(n):  # interleaved: both see the same machine load
            wall, inside = once(stack.api_url, local_sfn)
            local.append(wall)
            local_exec.append(inside)
            wall, inside = once(peer_api, peer_sfn)
            remote.append(wall)
            remote_exec.append(inside)
        return {
            "n": n, "ministack_version": peer.version(), "ministack_start_s": start_s, "deploy_s": deploy_s,
            "peer_first_saga_ms": cold_ms,
            "local_ms": median(local), "local_execution_ms": median(local_exec),
            "peer_ms": median(remote), "peer_execution_ms": median(remote_exec),
            "ratio_peer_local": median(remote) / median(local),
            "samples": {"local_ms": local, "peer_ms": remote},
        }
    finally:
        if stack is not None:
            stack.stop()
        peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=15, help="happy-path sagas on each stack")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"against a peer: the same template on ministack (samlocal deploy), {args.n} happy-path sagas each, "
          "interleaved with the embedded stack")
    try:
        result = measure(args.n)
    except NotMeasured as exc:
        result = {"not_measured": str(exc)}
        print(f"  peer: not measured: {exc}")
        write_json(args.json, result)
        return
    except Exception as exc:  # noqa: BLE001 - a peer that breaks is a finding, not a failed build
        result = {"not_measured": f"{type(exc).__name__}: {exc}"}
        print(f"  peer: not measured: {type(exc).__name__}: {exc}")
        write_json(args.json, result)
        return
    print(f"  ministack {result['ministack_version']}: started in {result['ministack_start_s']:.1f} s, "
          f"samlocal deploy {result['deploy_s']:.1f} s, first (cold) saga {result['peer_first_saga_ms']:.0f} ms")
    print(f"  {'':30} {'POST -> SUCCEEDED':>18} {'execution':>10}   (median ms)")
    print(f"  {'embedded stack (sagalocal)':30} {result['local_ms']:18.1f} {result['local_execution_ms']:10.1f}")
    print(f"  {'ministack':30} {result['peer_ms']:18.1f} {result['peer_execution_ms']:10.1f}")
    print(f"  ratio ministack / embedded     {result['ratio_peer_local']:18.2f}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
