"""The local API on 127.0.0.1: an HTTP request becomes an API Gateway proxy event, as `sam local start-api`."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from sagalocal.apigw import find_route, proxy_event

if TYPE_CHECKING:
    from sagalocal.stack import LocalStack

MAX_BODY = 10 * 1024 * 1024  # API Gateway's payload limit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default backlog of 5 resets connections under a burst of clients


def serve_api(stack: LocalStack, port: int) -> _Server:
    stage = "local"
    for logical_id in stack.template.of_type("AWS::Serverless::Api"):
        stage = str(stack.template.resolve(stack.template.properties(logical_id).get("StageName", stage),
                                           f"Resources.{logical_id}.Properties.StageName"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"Content-Type": "application/json"}, b'{"message":"Request Too Long"}')
                return
            body = self.rfile.read(length) if length else None
            if url.path.rstrip("/") == "/_sagalocal/faults":
                self._faults(body)
                return
            found = find_route(stack.routes, self.command, url.path)
            if found is None:
                # API Gateway answers an unknown route with 403 Missing Authentication Token.
                self._send(403, {"Content-Type": "application/json"},
                           b'{"message":"Missing Authentication Token"}')
                return
            route, params = found
            headers = {k: v for k, v in self.headers.items()}
            event = proxy_event(route, self.command, url.path, params, headers,
                                parse_qs(url.query, keep_blank_values=True), body, stage)
            try:
                result = stack.pools[route.function].invoke(event)
            except Exception as exc:  # noqa: BLE001 - a broken function is a 502, as on API Gateway
                self._send(502, {"Content-Type": "application/json"},
                           json.dumps({"message": "Internal server error", "local": str(exc)}).encode())
                return
            if result.error or not isinstance(result.payload, dict) or "statusCode" not in result.payload:
                # What API Gateway returns when the integration fails.
                self._send(502, {"Content-Type": "application/json"}, b'{"message": "Internal server error"}')
                return
            payload = result.payload
            out_headers: dict[str, Any] = dict(payload.get("headers") or {})
            for key, values in (payload.get("multiValueHeaders") or {}).items():
                out_headers[key] = values
            raw = payload.get("body") or ""
            data = base64.b64decode(raw) if payload.get("isBase64Encoded") else str(raw).encode()
            self._send(int(payload["statusCode"]), out_headers, data)

        def _faults(self, body: bytes | None) -> None:
            """The fault-injection control endpoint (see sagalocal/faults.py)."""
            from sagalocal.faults import Fault

            json_type = {"Content-Type": "application/json"}
            if self.command == "POST":
                try:
                    stack.faults.add(Fault.from_json(json.loads(body or b"null"), sorted(stack.pools)))
                except (ValueError, TypeError) as exc:
                    self._send(400, json_type, json.dumps({"error": str(exc)}).encode())
                    return
                self._send(201, json_type, json.dumps(stack.faults.rules()).encode())
            elif self.command == "DELETE":
                stack.faults.clear()
                self._send(200, json_type, b"[]")
            else:
                self._send(200, json_type, json.dumps(stack.faults.rules()).encode())

        def _send(self, status: int, headers: dict[str, Any], data: bytes) -> None:
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

