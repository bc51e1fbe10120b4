"""The stack tier's Target, and scripts/scenarios.py, join the Location the API returns onto the target's API URL
(sagalocal/scenarios.py: location_url): on AWS the stage sits at the URL's root, on LocalStack and other emulators
behind a path of their own, and the embedded stack serves the API with or without the stage."""

from __future__ import annotations

import pytest

from tests.stack.support import location_url

LOCATION = "/dev/orders/ord_1"


@pytest.mark.parametrize(("api_url", "expected"), [
    # AWS: the stage is the URL's path
    ("https://abc123.execute-api.us-east-1.amazonaws.com/dev",
     "https://abc123.execute-api.us-east-1.amazonaws.com/dev/orders/ord_1"),
    ("https://abc123.execute-api.us-east-1.amazonaws.com/dev/",
     "https://abc123.execute-api.us-east-1.amazonaws.com/dev/orders/ord_1"),
    # LocalStack, as scripts/localstack_outputs.py writes it: a path before the stage and one after it
    ("http://localhost.localstack.cloud:4566/restapis/abc123/dev/_user_request_",
     "http://localhost.localstack.cloud:4566/restapis/abc123/dev/_user_request_/orders/ord_1"),
    # a path before the stage only
    ("http://127.0.0.1:4566/apis/abc123/dev", "http://127.0.0.1:4566/apis/abc123/dev/orders/ord_1"),
    # the embedded stack: the stage is not in its URL; it serves the Location's path as it is
    ("http://127.0.0.1:3000", "http://127.0.0.1:3000/dev/orders/ord_1"),
])
def test_a_location_is_joined_after_the_api_url_s_own_path(api_url, expected):
    assert location_url(api_url, LOCATION) == expected


def test_a_location_without_the_stage_follows_the_api_url_whole():
    assert location_url("http://localhost:4566/restapis/abc123/dev/_user_request_", "/orders/ord_1") == \
        "http://localhost:4566/restapis/abc123/dev/_user_request_/orders/ord_1"


def test_a_location_that_holds_the_api_url_s_whole_path_is_joined_onto_its_host():
    api = "http://localhost:4566/restapis/abc123/dev/_user_request_"
    assert location_url(api, "/restapis/abc123/dev/_user_request_/orders/ord_1?x=1") == \
        "http://localhost:4566/restapis/abc123/dev/_user_request_/orders/ord_1?x=1"


def test_a_segment_that_only_looks_like_the_stage_is_not_taken_for_it():
    # the API behind a path whose middle segment has the Location's first segment's name
    assert location_url("http://127.0.0.1:8080/a/orders/api", "/orders/x") == "http://127.0.0.1:8080/a/orders/api/orders/x"


def test_an_absolute_location_is_kept():
    assert location_url("http://localhost:4566/restapis/a/dev/_user_request_", "https://api.example/dev/o") == \
        "https://api.example/dev/o"


def test_a_scenario_reads_its_order_behind_the_api_url_s_own_path(tmp_path):
    """scripts/scenarios.py (`make run`, tests/stack/test_scenarios.py) follows the Location the same way: on an API
    served behind a path (ministack's /_aws/execute-api/<id>/<stage>, LocalStack's), its GET of the order used to go
    to the host's root (urljoin) and every scenario failed with a 404 there."""
    import http.server
    import json
    import threading

    from scripts.scenarios import Customers, load_manifest, run_scenario
    from tests.stack.conftest import ROOT

    prefix, seen = "/_aws/execute-api/abc123/ci", []

    class Api(http.server.BaseHTTPRequestHandler):
        def answer(self, status: int, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            seen.append(("POST", self.path))
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.answer(202, {"order_id": "ord_1", "links": {"order": "/ci/orders/ord_1"}})

        def do_GET(self) -> None:  # noqa: N802
            seen.append(("GET", self.path))
            if self.path == f"{prefix}/orders/ord_1":
                self.answer(200, {"saga_status": "COMPLETED", "status": "CONFIRMED"})
            else:
                self.answer(404, {"message": "Not Found"})

        def log_message(self, *args: object) -> None:
            pass

    class Sfn:
        def describe_execution(self, executionArn: str) -> dict:  # noqa: N803 - boto3's names
            return {"status": "SUCCEEDED"}

        def get_execution_history(self, **kwargs: object) -> dict:
            return {"events": []}

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = next(s for s in load_manifest(ROOT / "events")["scenarios"] if s["name"] == "success")
        outputs = {"ApiAuth": "header", "StateMachineArn": "arn:aws:states:us-east-1:1:stateMachine:m"}
        result = run_scenario(spec, ROOT / "events", f"http://127.0.0.1:{server.server_address[1]}{prefix}", Sfn(),
                              Customers(None, outputs))
    finally:
        server.shutdown()
    assert ("GET", f"{prefix}/orders/ord_1") in seen, seen
    assert not [p for p in result.problems if "GET /orders" in p], result.problems
    assert (result.saga_status, result.order_status) == ("COMPLETED", "CONFIRMED")


def test_what_rests_on_an_error_s_name_is_told_apart_from_what_does_not():
    """On an engine that does not pass a step's error name on (Target.typed_errors), the stack tier skips exactly
    the scenarios whose outcome rests on it: a failed execution's error, a retry of a named error, a compensation
    path; the others run."""
    from scripts.scenarios import load_manifest
    from tests.stack.conftest import ROOT
    from tests.stack.support import depends_on_error_names

    named = {spec["name"]: depends_on_error_names(spec["expect"])
             for spec in load_manifest(ROOT / "events")["scenarios"]}
    assert named == {"success": False, "declined-payment": True, "out-of-stock": True,
                     "transient-payment-failure": True, "duplicate-submission": False, "coupon": False,
                     "split-payment": False, "split-payment-declined": True}
    assert depends_on_error_names({"status": "SUCCEEDED", "path": ["ReserveInventory", "ReleaseInventory"]})


def test_a_matrix_row_rests_on_error_names_when_a_step_raises_not_when_the_engine_times_it_out_or_a_map_iterates():
    import json

    from tests.stack.conftest import ROOT
    from tests.stack.support import depends_on_error_names

    rows = {row["id"]: row for row in json.loads((ROOT / "tests/stack/scenario_matrix.json").read_text())["rows"]}
    named = {row_id: depends_on_error_names(row["expect"], row["trigger"]) for row_id, row in rows.items()}
    for row_id in ("ReserveInventory-transient-recovers", "AuthorizePayments-crash-after-write",
                   "ReserveInventory-order-not-active", "ConfirmOrder-dynamodb-lost-response",
                   "ApplyCoupon-business-failure-expired"):
        assert named[row_id], row_id
    for row_id in ("AuthorizePayments-approved-2-methods", "AuthorizePayments-approved-3-methods-coupon",
                   "ReserveInventory-timeout", "ApplyCoupon-continue-expired",
                   "ApplyCoupon-continue-customer-limit-3-methods"):
        assert not named[row_id], row_id


def test_the_probe_reads_every_failed_task_s_error_from_the_history():
    from tests.stack.support import task_errors

    events = [{"type": "ExecutionStarted"}, {"type": "TaskStateEntered"},
              {"type": "TaskFailed", "taskFailedEventDetails": {"error": "Lambda.ServiceException"}},
              {"type": "LambdaFunctionFailed", "lambdaFunctionFailedEventDetails": {"error": "Runtime.HandlerError"}},
              {"type": "TaskFailed", "taskFailedEventDetails": {"error": "OrderNotActive"}}]
    assert task_errors(events) == ["Lambda.ServiceException", "Runtime.HandlerError", "OrderNotActive"]
    assert task_errors(events[:2]) == []


@pytest.mark.parametrize(("said", "ended", "typed"), [
    (["OrderNotActive"], "OrderNotActive", True),
    (["Lambda.ServiceException", "OrderNotActive"], "OrderNotActive", True),  # a retried service error came first
    (["Runtime.HandlerError"], "Runtime.HandlerError", False),
    ([], "OrderNotActive", True),
    (None, None, True),  # the probe never ended: nothing is decided, nothing skipped
])
def test_a_probe_decides_by_any_answer_naming_the_error_and_a_probe_without_an_end_decides_nothing(
        monkeypatch, said, ended, typed):
    from tests.stack import support

    class Sfn:
        def start_execution(self, **kwargs: object) -> dict:
            return {"executionArn": "arn:aws:states:us-east-1:1:execution:m:" + str(kwargs["name"])}

    def wait(target: object, arn: str, timeout: float) -> dict:
        if said is None:
            raise TimeoutError("still RUNNING")
        return {"status": "FAILED", "error": ended}

    events = [{"taskFailedEventDetails": {"error": e}} for e in said or []]
    monkeypatch.setattr(support, "wait_for_execution", wait)
    monkeypatch.setattr(support, "history", lambda sfn, arn: events)
    target = support.Target("http://127.0.0.1:1/dev", None,
                            {"StateMachineArn": "arn:aws:states:us-east-1:1:stateMachine:m"})
    target._clients["stepfunctions"] = Sfn()
    assert target.typed_errors() is typed
    assert target.probed_error() == (support.UNANSWERED if said is None else
                                     "OrderNotActive" if typed else "Runtime.HandlerError")
