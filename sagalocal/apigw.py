"""API Gateway REST (v1) proxy events and routing, as `sam local start-api` builds them."""

from __future__ import annotations

import base64
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Route:
    method: str  # upper case, or ANY
    resource: str  # "/orders/{order_id}"
    function: str  # logical id of the function

    @property
    def pattern(self) -> re.Pattern[str]:
        parts = []
        for segment in self.resource.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("+}"):
                parts.append(f"(?P<{segment[1:-2]}>.+)")
            elif segment.startswith("{") and segment.endswith("}"):
                parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
            else:
                parts.append(re.escape(segment))
        return re.compile("^/" + "/".join(parts) + "/?$")

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method.upper()):
            return None
        found = self.pattern.match(path)
        return None if found is None else found.groupdict()


def find_route(routes: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route for a request: static segments win over parameters, as in API Gateway."""
    candidates = []
    for route in routes:
        params = route.match(method, path)
        if params is not None:
            candidates.append((route.resource.count("{"), route, params))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[0])
    return candidates[0][1], candidates[0][2]


def proxy_event(route: Route, method: str, path: str, path_params: dict[str, str],
                headers: dict[str, str], query: dict[str, list[str]], body: bytes | None,
                stage: str, account: str = "123456789012") -> dict[str, Any]:
    text: str | None = None
    is_base64 = False
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode(), True
    request_id = str(uuid.uuid4())
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
        "requestContext": {
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
        },
    }


def routes_from_template(template: Any) -> list[Route]:
    """Every Api event of every function in the template."""
    routes = []
    for logical_id in template.of_type("AWS::Serverless::Function"):
        events = template.properties(logical_id).get("Events", {}) or {}
        for event in events.values():
            if event.get("Type") == "Api":
                props = event.get("Properties", {})
                routes.append(Route(str(props["Method"]).upper(), props["Path"], logical_id))
    return routes
