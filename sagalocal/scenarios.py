"""Place the sample orders of events/scenarios.json through an API and check what each saga did.

Works against any target: the embedded stack, or a deployed one (API URL and a
Step Functions client for the same account).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from order_saga.errors import TRANSIENT_ERROR_NAMES
from sagalocal.timeline import StateVisit, history, table, visits, wait_for_execution

# What a busy machine, or a busy AWS, adds to any state: a gateway call that outlives the client's timeout, a
# throttled or contended store (a split payment's methods write one order at once), a throttled invocation.
# Each is retried by the state's Retry; the scenarios' and the tests' own injected failures are TransientError.
LOAD_ERRORS = frozenset({*TRANSIENT_ERROR_NAMES, "Lambda.TooManyRequestsException"} - {"TransientError"})


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
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    headers = dict(headers or {})
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"  # urllib would send form-urlencoded
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own local URL
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
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the scenario list: {exc}") from exc


def request_from_event(path: Path) -> tuple[dict[str, str], bytes]:
    """Headers and body of an API Gateway proxy event file."""
    try:
        event = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON event: {exc}") from exc
    headers = {k: str(v) for k, v in (event.get("headers") or {}).items()}
    return headers, (event.get("body") or "").encode()


def run_scenario(spec: dict[str, Any], events_dir: Path, api_url: str, sfn: Any, key_suffix: str = "",
                 timeout: float = 120.0) -> ScenarioResult:
    result = ScenarioResult(spec["name"], spec["expect"])
    expect = spec["expect"]
    headers, body = request_from_event(events_dir / spec["event"])
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
    result.order_id, result.execution_arn = accepted["order_id"], accepted["execution_arn"]
    described = wait_for_execution(sfn, result.execution_arn, timeout=timeout)
    events = history(sfn, result.execution_arn)
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    result.status, result.error = described["status"], described.get("error") or ""
    result.visits = visits(events)
    result.path = [v.name for v in result.visits]
    status, order = http("GET", f"{api_url}/orders/{result.order_id}")
    if status != 200:
        result.problems.append(f"GET /orders/{result.order_id} answered {status}")
    else:
        result.saga_status, result.order_status = order["saga_status"], order["status"]
    checks = {"status": result.status, "error": result.error, "saga_status": result.saga_status,
              "order_status": result.order_status, "path": result.path}
    for key, got in checks.items():
        if key in expect and expect[key] != got:
            result.problems.append(f"{key}: expected {expect[key]}, got {got}")
    result.problems += [problem for state, retries in (expect.get("retries") or {}).items()
                        if (problem := retries_problem(result.visits, state, retries))]
    if "executions" in expect:
        machine = result.execution_arn.split(":execution:")[1].rsplit(":", 1)[0]
        arn = result.execution_arn.split(":execution:")[0] + f":stateMachine:{machine}"
        names = [e["name"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]]
        count = names.count(result.order_id)
        if count != expect["executions"]:
            result.problems.append(f"executions for the order: expected {expect['executions']}, got {count}")
    return result


def retries_problem(seen: list[StateVisit], state: str, retries: int) -> str:
    """What is wrong with the state's retries, if anything: fewer than expected, or more, unless each one more
    followed an error that load causes (a busy machine may add one or two; LOAD_ERRORS)."""
    errors = [e for v in seen if v.name == state for e in v.errors]
    count = sum(v.retries for v in seen if v.name == state)
    if count < retries or not all(e in LOAD_ERRORS for e in errors[retries:count]):
        return f"{state} retries: expected {retries}, got {count} (errors: {errors})"
    return ""


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


def location_url(api_url: str, location: str) -> str:
    """The URL of a Location the API returned, on a target whose API URL may carry a path before or after the
    stage. The Location is a path from the stage, `/dev/orders/<id>`, as API Gateway answers for a REST API. On
    AWS the API URL is `https://<id>.execute-api.<region>.amazonaws.com/dev`, but on LocalStack it is
    `<endpoint>/restapis/<id>/dev/_user_request_`, where joining the Location onto the host (`urljoin`) would
    drop the API's own path. So when the API URL ends at the Location's first segment (the stage; on LocalStack,
    before `_user_request_`), the rest of the Location follows the API URL; when it does not (a Location without
    the stage, or an API URL without one, like the embedded stack's), the whole Location does."""
    if urllib.parse.urlsplit(location).scheme:
        return location  # already absolute
    base = api_url.rstrip("/")
    path = urllib.parse.urlsplit(base).path
    if path and (location == path or location.startswith(path + "/")):
        return urllib.parse.urljoin(base, location)  # the Location holds the API URL's whole path already
    stage, _, rest = location.lstrip("/").partition("/")
    segments = [segment for segment in path.split("/") if segment]
    if stage and (segments[-1:] == [stage] or segments[-2:] == [stage, "_user_request_"]):
        return f"{base}/{rest}"
    return f"{base}/{location.lstrip('/')}"
