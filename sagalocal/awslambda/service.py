"""The Lambda service of the embedded stack: functions by name and ARN, invoked from everywhere.

A function has its $LATEST (what the last deploy put there) and the versions published from it, each a runtime of
its own with its own code; an alias names a version. An invocation names the function (its $LATEST), a version or an
alias, in the function name or ARN (`name:qualifier`) or in a separate qualifier, as Lambda's Invoke does.

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
    Preloader,
    RuntimeFailure,
    Throttled,
)

log = logging.getLogger("sagalocal.lambda")


class UnknownFunction(Exception):
    pass


def parse(name_or_arn: str, qualifier: str | None = None) -> tuple[str, str | None]:
    """(the function's name or logical id, the qualifier or None) from a name, `name:qualifier` or an ARN."""
    text = str(name_or_arn)
    tail = text.split(":function:", 1)[1] if ":function:" in text else text
    name, _, qualified = tail.partition(":")
    return name, (qualified or qualifier or None)


class LambdaService:
    def __init__(self, base_environment: dict[str, str], concurrency: int = 1000, cold_start_delay: bool = True,
                 idle_seconds: float = 120.0) -> None:
        self.base_environment = base_environment
        self.preloader = Preloader(base_environment)
        self.account = Concurrency(concurrency)
        self.cold_start_delay = cold_start_delay
        self.idle_seconds = idle_seconds
        self.runtimes: dict[str, FunctionRuntime] = {}  # logical id -> runtime of $LATEST
        self.versions: dict[str, dict[str, FunctionRuntime]] = {}  # logical id -> version -> runtime
        self.aliases: dict[str, dict[str, str]] = {}  # logical id -> alias name -> version
        self.event_alias: dict[str, str] = {}  # logical id -> the alias its event sources invoke (AutoPublishAlias)
        self._reserved: dict[str, Concurrency] = {}  # logical id -> its reserved concurrency, all versions
        self._retired: list[FunctionRuntime] = []  # replaced $LATEST runtimes, closed once idle
        self._by_name: dict[str, str] = {}  # physical name -> logical id
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        threading.Thread(target=self._janitor, name="sagalocal-lambda-janitor", daemon=True).start()

    def _runtime(self, spec: FunctionSpec) -> FunctionRuntime:
        if spec.reserved_concurrency is not None and spec.logical_id not in self._reserved:
            self._reserved[spec.logical_id] = Concurrency(spec.reserved_concurrency)
        return FunctionRuntime(spec, self.base_environment, self.account, self.cold_start_delay, self.idle_seconds,
                               reserved=self._reserved.get(spec.logical_id), preloader=self.preloader)

    def add(self, spec: FunctionSpec) -> FunctionRuntime:
        """The function's $LATEST (a deploy's new one replaces it: the old one ends its invocations, then closes)."""
        runtime = self._runtime(spec)
        with self._lock:
            previous = self.runtimes.get(spec.logical_id)
            self.runtimes[spec.logical_id] = runtime
            self._by_name[spec.name] = spec.logical_id
            if previous is not None:
                previous.retiring = True
                self._retired.append(previous)
        return runtime

    def publish(self, spec: FunctionSpec) -> FunctionRuntime:
        """A published version (spec.version): a runtime of its own, with the code and configuration in `spec`."""
        runtime = self._runtime(spec)
        with self._lock:
            if spec.version in self.versions.setdefault(spec.logical_id, {}):
                raise ValueError(f"{spec.logical_id}: version {spec.version} is published already")
            self.versions[spec.logical_id][spec.version] = runtime
            self._by_name[spec.name] = spec.logical_id
        return runtime

    def set_alias(self, logical_id: str, name: str, version: str, event_target: bool = False) -> None:
        """Point the alias `name` at `version` (created if new); `event_target`: the function's event sources
        invoke it (SAM's AutoPublishAlias points them there)."""
        with self._lock:
            if version not in self.versions.get(logical_id, {}):
                raise UnknownFunction(f"{logical_id}: no version {version} to point alias {name} at")
            self.aliases.setdefault(logical_id, {})[name] = version
            if event_target:
                self.event_alias[logical_id] = name

    def resolve(self, name_or_arn: str, qualifier: str | None = None) -> FunctionRuntime:
        """A function by logical id, physical name or ARN; its $LATEST, or the version a qualifier (a version
        number or an alias name, in the name, the ARN or `qualifier`) names."""
        name, qualifier = parse(name_or_arn, qualifier)
        logical_id = self._by_name.get(name, name)
        with self._lock:
            if logical_id not in self.runtimes:
                known = ", ".join(sorted(self.runtimes))
                raise UnknownFunction(f"unknown function {name_or_arn!r}; the template defines: {known}")
            if qualifier is None or qualifier == "$LATEST":
                return self.runtimes[logical_id]
            version = qualifier if qualifier.isdigit() else self.aliases.get(logical_id, {}).get(qualifier)
            runtime = self.versions.get(logical_id, {}).get(version or "")
            if runtime is None:
                raise UnknownFunction(f"Function not found: {self.runtimes[logical_id].spec.arn}:{qualifier}")
            return runtime

    def invoked_arn(self, name_or_arn: str, qualifier: str | None = None) -> str:
        """The ARN an invocation named (the context's invoked_function_arn): the function's, qualified as asked."""
        name, qualifier = parse(name_or_arn, qualifier)
        base = self.resolve(name).spec.arn
        return base if qualifier is None else f"{base}:{qualifier}"

    def invoked_arn_or_name(self, name_or_arn: str, qualifier: str | None) -> str:
        try:
            return self.invoked_arn(name_or_arn, qualifier)
        except UnknownFunction:
            return name_or_arn

    def event_target(self, logical_id: str) -> str:
        """What the function's event sources (the API, schedules, streams) invoke: its alias, if SAM made one."""
        alias = self.event_alias.get(logical_id)
        return f"{logical_id}:{alias}" if alias else logical_id

    def invoke(self, name_or_arn: str, event: Any, watch: Any = None, qualifier: str | None = None) -> InvokeResult:
        return self.resolve(name_or_arn, qualifier).invoke(event, watch, self.invoked_arn(name_or_arn, qualifier))

    def invoke_event(self, logical_id: str, event: Any) -> InvokeResult:
        """An invocation by one of the function's event sources: on its alias, as SAM wires them."""
        return self.invoke(self.event_target(logical_id), event)

    def invoke_async(self, name_or_arn: str, event: Any, attempts: int = 3, qualifier: str | None = None) -> None:
        """InvocationType Event: queued, retried on throttling and on errors (Lambda retries twice)."""
        runtime = self.resolve(name_or_arn, qualifier)
        invoked = self.invoked_arn(name_or_arn, qualifier)

        def run() -> None:
            for attempt in range(attempts):
                try:
                    if not runtime.invoke(event, invoked_arn=invoked).error:
                        return
                except Throttled:
                    pass
                except RuntimeFailure:
                    return
                time.sleep(min(60.0, 1.0 * 2 ** attempt))

        threading.Thread(target=run, name=f"async-{runtime.spec.logical_id}", daemon=True).start()

    def start_all(self) -> None:
        """Initialize every function's template process (concurrently), with one sandbox ready each: the version
        its event sources invoke where it has one (its $LATEST starts at its first invocation), else its $LATEST."""
        threads = [threading.Thread(target=self._start_quietly, args=(self.resolve(self.event_target(lid)),),
                                    daemon=True) for lid in list(self.runtimes)]
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

    def all_runtimes(self) -> list[FunctionRuntime]:
        with self._lock:
            return [*self.runtimes.values(), *(r for vs in self.versions.values() for r in vs.values()),
                    *self._retired]

    def _janitor(self) -> None:
        while not self._stopping.wait(5.0):
            for runtime in self.all_runtimes():
                runtime.reap_idle()
            with self._lock:
                done = [r for r in self._retired if r.busy == 0]
                self._retired = [r for r in self._retired if r not in done]
            for runtime in done:
                runtime.close()

    def stop(self) -> None:
        self._stopping.set()
        threads = [threading.Thread(target=runtime.close, daemon=True) for runtime in self.all_runtimes()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        self.preloader.close()

    def stats(self) -> dict[str, Any]:
        """Each function's cold starts, throttles, invocations, billed milliseconds (each run's duration rounded
        up to the millisecond; a run that ended in a crash counts ~0 ms, and an import error none) and its handlers'
        own CPU milliseconds (what its sandboxes measured around each call: the handler and its SDK calls), all its
        versions together; and each version's cold starts and throttles. A $LATEST replaced by a redeploy takes its
        counts with it."""
        functions: dict[str, Any] = {}
        for lid, latest in list(self.runtimes.items()):
            runtimes = {"$LATEST": latest, **self.versions.get(lid, {})}
            functions[lid] = {"cold_starts": sum(r.cold_starts for r in runtimes.values()),
                              "throttles": sum(r.throttles for r in runtimes.values()),
                              "init_ms": round(max(r.init_ms for r in runtimes.values())),
                              "invocations": sum(r.invocations for r in runtimes.values()),
                              "billed_ms": sum(r.billed_ms for r in runtimes.values()),
                              "handler_cpu_ms": round(sum(r.handler_cpu_ms for r in runtimes.values()), 3),
                              "aliases": dict(self.aliases.get(lid, {})),
                              "versions": {v: {"cold_starts": r.cold_starts, "throttles": r.throttles}
                                           for v, r in runtimes.items()}}
        return {"concurrency": {"limit": self.account.limit, "in_use": self.account.in_use,
                                "throttles": self.account.throttles},
                "functions": functions}

    # ---- the callers' protocols ------------------------------------------------------------------
    def invoke_for_moto(self, function_name: str, body: Any, headers: Any, response_headers: Any,
                        qualifier: str | None = None) -> bytes:
        """moto's LambdaSimpleBackend.invoke: the Lambda API's Invoke (Qualifier: a version or an alias)."""
        event = json.loads(body) if body else {}
        if (headers or {}).get("X-Amz-Invocation-Type", "RequestResponse") == "Event":
            self.invoke_async(function_name, event, qualifier=qualifier)
            response_headers["status"] = 202
            return b""
        try:
            response_headers["x-amz-executed-version"] = self.resolve(function_name, qualifier).spec.version
        except UnknownFunction as exc:
            from moto.awslambda.exceptions import UnknownFunctionException

            raise UnknownFunctionException(self.invoked_arn_or_name(function_name, qualifier)) from exc
        try:
            result = self.invoke(function_name, event, qualifier=qualifier)
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
        runtime = self.resolve(str(parameters["FunctionName"]), parameters.get("Qualifier"))
        executed = runtime.spec.version
        try:
            result = self.invoke(str(parameters["FunctionName"]), event, watch, parameters.get("Qualifier"))
        except Throttled as exc:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": str(exc)},
                               "ResponseMetadata": {"HTTPStatusCode": 429, "RequestId": str(uuid.uuid4())}},
                              "Invoke") from exc
        except RuntimeFailure as exc:
            return {"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": executed,
                    "Payload": {"errorType": "Runtime.ExitError", "errorMessage": str(exc)}}
        response: dict[str, Any] = {"StatusCode": 200, "ExecutedVersion": executed, "Payload": result.payload}
        if result.error:
            response["FunctionError"] = "Unhandled"
        return response


def _throttle_error(message: str) -> Exception:
    """Lambda's TooManyRequestsException through moto's API: the caller sees it as AWS sends it."""
    from moto.core.exceptions import JsonRESTError

    error = JsonRESTError("TooManyRequestsException", message)
    error.code = 429
    return error
