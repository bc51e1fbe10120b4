"""The Lambda service of the embedded stack: functions by name and ARN, invoked from everywhere.

Three callers reach the same runtimes:
  * moto's Lambda API (Invoke from boto3 or the aws CLI): moto's no-Docker Lambda backend has one job,
    `LambdaSimpleBackend.invoke`, which is replaced here by a call into the runtime;
  * the Step Functions interpreter, which calls `invoke_for_states` directly (no HTTP round trip);
  * the local API and the scheduler.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from sagalocal.awslambda.runtime import (
    Concurrency,
    FunctionRuntime,
    FunctionSpec,
    InvokeResult,
    RuntimeFailure,
    Throttled,
)

log = logging.getLogger("sagalocal.lambda")


class UnknownFunction(Exception):
    pass


class LambdaService:
    def __init__(self, base_environment: dict[str, str], concurrency: int = 1000, cold_start_delay: bool = True,
                 idle_seconds: float = 120.0) -> None:
        self.base_environment = base_environment
        self.account = Concurrency(concurrency)
        self.cold_start_delay = cold_start_delay
        self.idle_seconds = idle_seconds
        self.runtimes: dict[str, FunctionRuntime] = {}  # logical id -> runtime
        self._by_name: dict[str, str] = {}  # physical name -> logical id
        self._stopping = threading.Event()
        threading.Thread(target=self._janitor, name="sagalocal-lambda-janitor", daemon=True).start()

    def add(self, spec: FunctionSpec) -> FunctionRuntime:
        runtime = FunctionRuntime(spec, self.base_environment, self.account, self.cold_start_delay, self.idle_seconds)
        self.runtimes[spec.logical_id] = runtime
        self._by_name[spec.name] = spec.logical_id
        return runtime

    def resolve(self, name_or_arn: str) -> FunctionRuntime:
        """A function by logical id, physical name or ARN (with or without a qualifier)."""
        name = name_or_arn.split(":function:")[-1].split(":")[0]
        logical_id = self._by_name.get(name, name)
        if logical_id in self.runtimes:
            return self.runtimes[logical_id]
        known = ", ".join(sorted(self.runtimes))
        raise UnknownFunction(f"unknown function {name_or_arn!r}; the template defines: {known}")

    def invoke(self, name_or_arn: str, event: Any, watch: Any = None) -> InvokeResult:
        return self.resolve(name_or_arn).invoke(event, watch)

    def invoke_async(self, name_or_arn: str, event: Any, attempts: int = 3) -> None:
        """InvocationType Event: queued, retried on throttling and on errors (Lambda retries twice)."""
        runtime = self.resolve(name_or_arn)

        def run() -> None:
            for attempt in range(attempts):
                try:
                    if not runtime.invoke(event).error:
                        return
                except Throttled:
                    pass
                except RuntimeFailure:
                    return
                time.sleep(min(60.0, 1.0 * 2 ** attempt))

        threading.Thread(target=run, name=f"async-{runtime.spec.logical_id}", daemon=True).start()

    def start_all(self) -> None:
        """Initialize every function's template process (concurrently), with one sandbox ready each."""
        threads = [threading.Thread(target=self._start_quietly, args=(r,), daemon=True) for r in self.runtimes.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)

    @staticmethod
    def _start_quietly(runtime: FunctionRuntime) -> None:
        try:
            runtime.prewarm()
        except Exception as exc:  # noqa: BLE001 - the first invocation reports it properly
            log.warning("could not start %s: %s", runtime.spec.logical_id, exc)

    def _janitor(self) -> None:
        while not self._stopping.wait(5.0):
            for runtime in list(self.runtimes.values()):
                runtime.reap_idle()

    def stop(self) -> None:
        self._stopping.set()
        threads = [threading.Thread(target=runtime.close, daemon=True) for runtime in self.runtimes.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

    def stats(self) -> dict[str, Any]:
        return {"concurrency": {"limit": self.account.limit, "in_use": self.account.in_use,
                                "throttles": self.account.throttles},
                "functions": {lid: {"cold_starts": r.cold_starts, "throttles": r.throttles, "init_ms": round(r.init_ms)}
                              for lid, r in self.runtimes.items()}}

    # ---- the callers' protocols ------------------------------------------------------------------
    def invoke_for_moto(self, function_name: str, body: Any, headers: Any, response_headers: Any) -> bytes:
        """moto's LambdaSimpleBackend.invoke: the Lambda API's Invoke."""
        event = json.loads(body) if body else {}
        if (headers or {}).get("X-Amz-Invocation-Type", "RequestResponse") == "Event":
            self.invoke_async(function_name, event)
            response_headers["status"] = 202
            return b""
        try:
            result = self.invoke(function_name, event)
        except Throttled as exc:
            raise _throttle_error(str(exc)) from exc
        except RuntimeFailure as exc:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "Runtime.ExitError", "errorMessage": str(exc)}).encode()
        if result.error:
            response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps(result.payload).encode()

    def invoke_for_states(self, parameters: dict[str, Any], watch: Any = None) -> dict[str, Any]:
        """The lambda:invoke integration's call, as Lambda's Invoke answers it (raises ClientError on throttling)."""
        payload = parameters.get("Payload")
        event = json.loads(payload) if isinstance(payload, (bytes, str)) and payload else (payload or {})
        try:
            result = self.invoke(str(parameters["FunctionName"]), event, watch)
        except Throttled as exc:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": str(exc)},
                               "ResponseMetadata": {"HTTPStatusCode": 429, "RequestId": str(uuid.uuid4())}},
                              "Invoke") from exc
        except RuntimeFailure as exc:
            return {"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": "$LATEST",
                    "Payload": {"errorType": "Runtime.ExitError", "errorMessage": str(exc)}}
        response: dict[str, Any] = {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": result.payload}
        if result.error:
            response["FunctionError"] = "Unhandled"
        return response


def _throttle_error(message: str) -> Exception:
    """Lambda's TooManyRequestsException through moto's API: the caller sees it as AWS sends it."""
    from moto.core.exceptions import JsonRESTError

    error = JsonRESTError("TooManyRequestsException", message)
    error.code = 429
    return error
