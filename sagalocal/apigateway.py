"""API Gateway (REST, proxy integration) on 127.0.0.1: routes, proxy events, and the local HTTP server.

An HTTP request becomes the API Gateway proxy event `sam local start-api` builds, the route's function runs
in the Lambda service, and its answer becomes the HTTP response. Requests are served concurrently. As on
the stage: the web ACL associated with it (AWS WAF: its rate-based rules, emulated by WebAcl) comes first, then
the stage's throttling (a token bucket: rate and burst, 429 past them), then the route's authorizer (401 without
a valid token), and every request leaves an access log line in the stage's format. Paths are served with or
without the stage prefix (/dev/orders and /orders), so a Location that carries the stage resolves here as on AWS.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sagalocal.provision import Route

MAX_BODY = 10 * 1024 * 1024  # API Gateway's payload limit
JSON = {"Content-Type": "application/json"}


def _pattern(resource: str) -> re.Pattern[str]:
    parts = []
    for segment in resource.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("+}"):
            parts.append(f"(?P<{segment[1:-2]}>.+)")
        elif segment.startswith("{") and segment.endswith("}"):
            parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("^/" + "/".join(parts) + "/?$")


def find_route(routes: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route for a request: static segments win over parameters, as in API Gateway."""
    candidates = []
    for route in routes:
        if route.method not in ("ANY", method.upper()):
            continue
        found = _pattern(route.resource).match(path)
        if found is not None:
            candidates.append((route.resource.count("{"), route, found.groupdict()))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[0])
    return candidates[0][1], candidates[0][2]


def proxy_event(route: Route, method: str, path: str, path_params: dict[str, str], headers: dict[str, str],
                query: dict[str, list[str]], body: bytes | None, stage: str, account: str,
                authorizer: dict[str, Any] | None = None, request_id: str | None = None) -> dict[str, Any]:
    text: str | None = None
    is_base64 = False
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode(), True
    request_id = request_id or str(uuid.uuid4())
    context: dict[str, Any] = {
        "resourcePath": route.resource,
        "httpMethod": method.upper(),
        "path": f"/{stage}{path}",
        "stage": stage,
        "accountId": account,
        "apiId": "local",
        "protocol": "HTTP/1.1",
        "requestId": request_id,
        "extendedRequestId": request_id,
        "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
        "requestTimeEpoch": int(time.time() * 1000),
        "identity": {"sourceIp": "127.0.0.1", "userAgent": headers.get("User-Agent", "")},
    }
    if authorizer is not None:
        context["authorizer"] = authorizer
    return {
        "resource": route.resource,
        "path": path,
        "httpMethod": method.upper(),
        "headers": dict(headers) or None,
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": dict(query) or None,
        "pathParameters": path_params or None,
        "stageVariables": None,
        "body": text,
        "isBase64Encoded": is_base64,
        "requestContext": context,
    }


class TokenBucket:
    """API Gateway's throttling: `rate` requests per second in steady state, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.at = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


class WebAclError(Exception):
    """The web ACL uses something WebAcl does not emulate: the message names the rule and the property."""


CONTENT_TYPES = {"APPLICATION_JSON": "application/json", "TEXT_PLAIN": "text/plain", "TEXT_HTML": "text/html"}
WINDOWS = (60, 120, 300, 600)  # WAF's EvaluationWindowSec values


@dataclass
class RateRule:
    name: str
    limit: int
    window: float  # seconds
    header: str  # the aggregation key: this header's value (lower case name)
    status: int
    headers: dict[str, str]
    body: bytes
    seen: dict[str, deque[float]] = field(default_factory=dict)  # key -> the times of its requests in the window


class WebAcl:
    """An AWS WAF web ACL on the stage (AWS::WAFv2::WebACL, from the template), as far as this template uses one:
    rate-based rules aggregated on one header's value (CUSTOM_KEYS, a Header, no text transformation), blocking
    with a custom response; the default action Allow. Anything else is refused at start, naming it.

    It counts exactly, over a sliding window of EvaluationWindowSec, every request that carries the header (blocked
    ones too, as WAF counts them), and blocks a key's request while its count exceeds the limit. WAF itself counts
    approximately, re-evaluates the rates every few seconds and starts (and stops) blocking some seconds late, so a
    client there may pass the limit by a little before the first 429; a request without the header is not counted
    by either (the authorizer answers it 401)."""

    def __init__(self, name: str, props: dict[str, Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.clock = name, clock
        self._lock = threading.Lock()
        if "Allow" not in (props.get("DefaultAction") or {}):
            raise WebAclError(f"{name}.DefaultAction: only Allow is emulated")
        bodies = props.get("CustomResponseBodies") or {}
        self.rules = [self._rule(rule, bodies) for rule in sorted(props.get("Rules") or [],
                                                                   key=lambda r: int(r.get("Priority", 0)))]

    def _rule(self, rule: dict[str, Any], bodies: dict[str, Any]) -> RateRule:
        where = f"{self.name}.Rules.{rule.get('Name')}"
        rate = (rule.get("Statement") or {}).get("RateBasedStatement")
        if not rate or set(rule["Statement"]) != {"RateBasedStatement"}:
            raise WebAclError(f"{where}.Statement: only a RateBasedStatement is emulated")
        keys = rate.get("CustomKeys") or []
        header = (keys[0].get("Header") or {}) if len(keys) == 1 else {}
        if rate.get("AggregateKeyType") != "CUSTOM_KEYS" or not header or "ScopeDownStatement" in rate or any(
                t.get("Type") != "NONE" for t in header.get("TextTransformations") or []):
            raise WebAclError(f"{where}: only CUSTOM_KEYS on one Header, without transformation or scope-down, "
                              f"is emulated")
        window = int(rate.get("EvaluationWindowSec", 300))
        limit = int(rate["Limit"])
        if window not in WINDOWS or limit < 10:
            raise WebAclError(f"{where}: EvaluationWindowSec {window} (one of {WINDOWS}), Limit {limit} (at least 10)")
        response = ((rule.get("Action") or {}).get("Block") or {}).get("CustomResponse")
        if not response:
            raise WebAclError(f"{where}.Action: only Block with a CustomResponse is emulated")
        body = bodies.get(response.get("CustomResponseBodyKey")) or {}
        headers = {str(h["Name"]): str(h["Value"]) for h in response.get("ResponseHeaders") or []}
        if body:
            headers["Content-Type"] = CONTENT_TYPES[str(body.get("ContentType"))]
        return RateRule(str(rule.get("Name")), limit, float(window), str(header["Name"]).lower(),
                        int(response["ResponseCode"]), headers, str(body.get("Content", "")).encode())

    def check(self, headers: dict[str, str]) -> RateRule | None:
        """Count the request; the rule that blocks it, or None (allowed)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        now = self.clock()
        with self._lock:
            for rule in self.rules:
                key = lowered.get(rule.header)
                if key is None:
                    continue
                seen = rule.seen.setdefault(key, deque())
                while seen and seen[0] <= now - rule.window:
                    seen.popleft()
                seen.append(now)
                if len(seen) > rule.limit:
                    return rule
        return None


class AccessLog:
    """The stage's access log: the AccessLogSetting format with its $context variables, one line a request."""

    _VARIABLE = re.compile(r"\$context\.([A-Za-z0-9_.]+)")

    def __init__(self, path: Any, fmt: str) -> None:
        self.path, self.format = path, fmt
        self._lock = threading.Lock()

    def write(self, context: dict[str, Any]) -> None:
        def value(match: re.Match[str]) -> str:
            found: Any = context
            for part in match.group(1).split("."):
                found = found.get(part) if isinstance(found, dict) else None
            return "-" if found is None else json.dumps(found)[1:-1] if isinstance(found, str) else str(found)

        line = self._VARIABLE.sub(value, self.format)
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default backlog of 5 resets connections under a burst of clients


Authorize = Callable[[Route, dict[str, str]], tuple[dict[str, Any] | None, tuple[int, bytes] | None]]


def serve_api(routes: list[Route], stage: str, account: str, invoke: Callable[[str, Any], Any], port: int,
              authorize: Authorize | None = None, throttle: TokenBucket | None = None,
              access_log: AccessLog | None = None, web_acl: WebAcl | None = None) -> _Server:
    """Serve `routes` on 127.0.0.1:`port`. `authorize` returns the authorizer context, or the refusal."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _handle(self) -> None:
            started = time.monotonic()
            self.log_context: dict[str, Any] = {
                "requestId": str(uuid.uuid4()), "httpMethod": self.command, "resourcePath": "-",
                "identity": {"sourceIp": self.client_address[0]}, "requestTimeEpoch": int(time.time() * 1000)}
            try:
                self._route()
            finally:
                if access_log is not None:
                    self.log_context["responseLatency"] = int((time.monotonic() - started) * 1000)
                    access_log.write(self.log_context)

        def _route(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, JSON, b'{"message":"Request Too Long"}')
                return
            body = self.rfile.read(length) if length else None
            blocked = web_acl.check({k: v for k, v in self.headers.items()}) if web_acl is not None else None
            if blocked is not None:
                self.log_context["error"] = {"messageString": f"blocked by {web_acl.name}: {blocked.name}"}
                self._send(blocked.status, blocked.headers, blocked.body)
                return
            if throttle is not None and not throttle.take():
                self.log_context["error"] = {"messageString": "Too Many Requests"}
                self._send(429, JSON, b'{"message":"Too Many Requests"}')
                return
            path = url.path
            if path == f"/{stage}" or path.startswith(f"/{stage}/"):
                path = path[len(stage) + 1:] or "/"
            found = find_route(routes, self.command, path)
            if found is None:
                # API Gateway answers an unknown route with 403 Missing Authentication Token.
                self._send(403, JSON, b'{"message":"Missing Authentication Token"}')
                return
            route, params = found
            self.log_context["resourcePath"] = route.resource
            headers = {k: v for k, v in self.headers.items()}
            context = None
            if authorize is not None:
                context, refusal = authorize(route, headers)
                if refusal is not None:
                    self.log_context["error"] = {"messageString": json.loads(refusal[1]).get("message")}
                    self._send(refusal[0], JSON, refusal[1])
                    return
                self.log_context["authorizer"] = context
            event = proxy_event(route, self.command, path, params, headers,
                                parse_qs(url.query, keep_blank_values=True), body, stage, account, context,
                                self.log_context["requestId"])
            try:
                result = invoke(route.function, event)
            except Exception as exc:  # noqa: BLE001 - throttled or broken: what API Gateway answers
                status = 429 if type(exc).__name__ == "Throttled" else 502
                message = "Too Many Requests" if status == 429 else "Internal server error"
                self._send(status, JSON, json.dumps({"message": message}).encode())
                return
            if result.error or not isinstance(result.payload, dict) or "statusCode" not in result.payload:
                # What API Gateway returns when the integration fails.
                self._send(502, JSON, b'{"message": "Internal server error"}')
                return
            payload = result.payload
            out_headers: dict[str, Any] = dict(payload.get("headers") or {})
            for key, values in (payload.get("multiValueHeaders") or {}).items():
                out_headers[key] = values
            raw = payload.get("body") or ""
            data = base64.b64decode(raw) if payload.get("isBase64Encoded") else str(raw).encode()
            self._send(int(payload["statusCode"]), out_headers, data)

        def _send(self, status: int, headers: dict[str, Any], data: bytes) -> None:
            self.log_context["status"] = status
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() in ("content-length", "connection"):
                    continue
                for item in value if isinstance(value, list) else [value]:
                    self.send_header(key, str(item))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def __getattr__(self, name: str) -> Any:
            # Every method reaches the router (an unknown route or method is API Gateway's 403), not 501.
            if name.startswith("do_"):
                return self._handle
            raise AttributeError(name)

    server = _Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="sagalocal-api", daemon=True).start()
    return server
