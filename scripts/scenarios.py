"""The main job (`make run`): place the sample orders of events/scenarios.json and check what each saga did.

  python scripts/scenarios.py                 on a fresh embedded stack (started and stopped here)
  python scripts/scenarios.py --timeline      with each execution's timeline
  python scripts/scenarios.py --api URL --endpoint URL --stack-outputs FILE   on a running or deployed stack

Each scenario signs its event's customer in (the user pool of the stack's outputs; on a deployed stack that
takes an operator's credentials), posts the event's request with the customer's ID token, waits for the
execution, and compares the outcome, the state path, the retries and the order's statuses with what the
scenario expects.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from sagalocal.scenarios import location_url  # noqa: E402
from sagalocal.timeline import StateVisit, format_timeline, history, paginate, table, visits  # noqa: E402


@dataclass
class ScenarioResult:
    name: str
    expect: dict[str, Any]
    status: str = ""
    error: str = ""
    saga_status: str = ""
    order_status: str = ""
    path: list[str] = field(default_factory=list)
    visits: list[StateVisit] = field(default_factory=list)
    elapsed_ms: float = 0.0
    problems: list[str] = field(default_factory=list)
    order_id: str = ""
    execution_arn: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    headers = dict(headers or {})
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - http(s) only
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def load_manifest(events_dir: Path) -> dict[str, Any]:
    path = events_dir / "scenarios.json"
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the scenario list: {exc}") from exc


def request_from_event(path: Path) -> tuple[dict[str, str], bytes, str]:
    """Headers, body and customer (the authorizer's `cognito:username`) of an API Gateway proxy event file."""
    try:
        event = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON event: {exc}") from exc
    headers = {k: str(v) for k, v in (event.get("headers") or {}).items()}
    claims = ((event.get("requestContext") or {}).get("authorizer") or {}).get("claims") or {}
    return headers, (event.get("body") or "").encode(), str(claims.get("cognito:username", "customer-1"))


class Customers:
    """Signs the scenarios' customers in to the stack's user pool, once each, and knows their executions."""

    def __init__(self, cognito: Any, outputs: dict[str, Any]) -> None:
        self.cognito, self.outputs = cognito, outputs
        self.tokens: dict[str, str] = {}

    def auth(self, username: str) -> dict[str, str]:
        """Its Authorization header; on a stack deployed with ApiAuth=header (no Cognito), the customer's name."""
        from sagalocal.signin import sign_in

        if self.outputs.get("ApiAuth") == "header":
            return {"X-Customer-Id": username}
        if username not in self.tokens:
            self.tokens[username] = sign_in(self.cognito, self.outputs["UserPoolId"],
                                            self.outputs["UserPoolClientId"], username)["IdToken"]
        return {"Authorization": f"Bearer {self.tokens[username]}"}

    def execution_arn(self, order_id: str) -> str:
        return f"{self.outputs['StateMachineArn'].replace(':stateMachine:', ':execution:')}:{order_id}"


def wait_for(sfn: Any, arn: str, endpoint: str | None, timeout: float = 120.0) -> dict[str, Any]:
    """The ended execution: the embedded stack announces the end; elsewhere, DescribeExecution with backoff."""
    deadline, pause, status = time.monotonic() + timeout, 0.1, "unknown"
    while time.monotonic() < deadline:
        if endpoint:
            query = urllib.parse.urlencode({"arn": arn, "timeout": min(60.0, deadline - time.monotonic())})
            try:
                with urllib.request.urlopen(f"{endpoint}/_sagalocal/executions/wait?{query}", timeout=70):  # noqa: S310
                    pass
            except urllib.error.URLError:
                endpoint = None  # not a sagalocal endpoint: poll
        described = sfn.describe_execution(executionArn=arn)
        status = described["status"]
        if status != "RUNNING":
            return described  # type: ignore[no-any-return]
        if not endpoint:
            time.sleep(pause)
            pause = min(2.0, pause * 2)
    raise TimeoutError(f"execution {arn} still {status} after {timeout:.0f} s")


def run_scenario(spec: dict[str, Any], events_dir: Path, api_url: str, sfn: Any, customers: Customers,
                 endpoint: str | None = None, key_suffix: str = "", timeout: float = 120.0) -> ScenarioResult:
    result = ScenarioResult(spec["name"], spec["expect"])
    expect = spec["expect"]
    headers, body, customer = request_from_event(events_dir / spec["event"])
    auth = customers.auth(customer)
    headers.update(auth)
    if key_suffix:
        headers["Idempotency-Key"] = headers.get("Idempotency-Key", "") + key_suffix
    started = time.perf_counter()
    responses = [http("POST", f"{api_url}/orders", body, headers) for _ in range(int(spec.get("submit", 1)))]
    for status, payload in responses:
        if status != 202:
            result.problems.append(f"POST /orders answered {status}: {payload}")
    if result.problems:
        return result
    if any(payload != responses[0][1] for _, payload in responses[1:]):
        result.problems.append("a resubmission did not replay the first response")
    accepted = responses[0][1]
    result.order_id, result.execution_arn = accepted["order_id"], customers.execution_arn(accepted["order_id"])
    described = wait_for(sfn, result.execution_arn, endpoint, timeout)
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    result.status, result.error = described["status"], described.get("error") or ""
    result.visits = visits(history(sfn, result.execution_arn))
    result.path = [v.name for v in result.visits]
    status, order = http("GET", location_url(api_url, accepted["links"]["order"]), headers=auth)
    if status != 200:
        result.problems.append(f"GET /orders/{result.order_id} answered {status}")
    else:
        result.saga_status, result.order_status = order["saga_status"], order["status"]
    checks = {"status": result.status, "error": result.error, "saga_status": result.saga_status,
              "order_status": result.order_status, "path": result.path}
    for key, got in checks.items():
        if key in expect and expect[key] != got:
            result.problems.append(f"{key}: expected {expect[key]}, got {got}")
    for state, retries in (expect.get("retries") or {}).items():
        seen = sum(v.retries for v in result.visits if v.name == state)
        if seen != retries:
            result.problems.append(f"{state} retries: expected {retries}, got {seen}")
    if "executions" in expect:
        machine = result.execution_arn.split(":execution:")[0] + ":stateMachine:" + \
            result.execution_arn.split(":execution:")[1].rsplit(":", 1)[0]
        names = [e["name"] for e in paginate(sfn.list_executions, "executions", stateMachineArn=machine)]
        if names.count(result.order_id) != expect["executions"]:
            result.problems.append(f"executions for the order: expected {expect['executions']}, "
                                   f"got {names.count(result.order_id)}")
    return result


def format_results(results: list[ScenarioResult]) -> str:
    rows = [("scenario", "expected", "outcome", "saga status", "states (ms each)", "total ms", "result")]
    for r in results:
        expected = r.expect.get("status", "") + (f" {r.expect['error']}" if r.expect.get("error") else "")
        outcome = r.status + (f" {r.error}" if r.error else "")
        states = " > ".join(
            v.name + ("" if v.duration_ms is None or v.kind in ("Succeed", "Fail") else f" {v.duration_ms:.0f}")
            + (f" ({v.retries} retries)" if v.retries else "")
            for v in r.visits)
        rows.append((r.name, expected, outcome, r.saga_status, states, f"{r.elapsed_ms:.0f}",
                     "ok" if r.ok else "FAIL"))
    lines = [table(rows)]
    for r in results:
        for problem in r.problems:
            lines.append(f"FAIL {r.name}: {problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=Path, default=ROOT / "events")
    parser.add_argument("--timeline", action="store_true", help="print each execution's timeline too")
    parser.add_argument("--only", nargs="*", help="run only these scenarios")
    parser.add_argument("--api", help="the API of a running or deployed stack (default: start an embedded one)")
    parser.add_argument("--endpoint", help="its AWS endpoint (omit for AWS)")
    parser.add_argument("--stack-outputs", type=Path, help="its Outputs, as JSON (for StateMachineArn)")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.events)
    started = time.perf_counter()
    if args.api:
        import boto3

        if not args.stack_outputs:
            parser.error("--api needs --stack-outputs (UserPoolId, UserPoolClientId, StateMachineArn)")
        remote = {"endpoint_url": args.endpoint} if args.endpoint else {}
        sfn = boto3.client("stepfunctions", **remote)
        customers = Customers(boto3.client("cognito-idp", **remote), json.loads(args.stack_outputs.read_text()))
        results = run_all(manifest, args, args.api, sfn, customers, args.endpoint)
    else:
        from sagalocal.stack import LocalStack, free_port
        from scripts.seed_catalog import seed, seed_promotions

        with LocalStack(ROOT / "template.yaml", api_port=free_port()) as stack:
            seed(stack.client("dynamodb"), stack.outputs["InventoryTableName"], args.events / "catalog.json")
            seed_promotions(stack.client("dynamodb"), stack.outputs["PromotionsTableName"],
                            args.events / "promotions.json")
            print(f"Local stack up in {time.perf_counter() - started:.1f} s: API {stack.api_url}, "
                  f"AWS endpoint {stack.endpoint}")
            customers = Customers(stack.client("cognito-idp"), stack.outputs)
            results = run_all(manifest, args, str(stack.api_url), stack.client("stepfunctions"), customers,
                              stack.endpoint)
    failed = [r for r in results if not r.ok]
    print(format_results(results))
    print(f"{len(results) - len(failed)} of {len(results)} scenarios ended as expected "
          f"({time.perf_counter() - started:.1f} s in all)")
    return 1 if failed or not results else 0


def run_all(manifest: dict[str, Any], args: argparse.Namespace, api: str, sfn: Any, customers: Customers,
            endpoint: str | None) -> list[ScenarioResult]:
    results = []
    for spec in manifest["scenarios"]:
        if args.only and spec["name"] not in args.only:
            continue
        results.append(run_scenario(spec, args.events, api, sfn, customers, endpoint))
        if args.timeline:
            described = sfn.describe_execution(executionArn=results[-1].execution_arn)
            print(format_timeline(described, history(sfn, results[-1].execution_arn)))
    return results


if __name__ == "__main__":
    sys.exit(main())
