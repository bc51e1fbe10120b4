"""The stack's AWS endpoint on 127.0.0.1: one URL for every service, as `--endpoint-url` expects.

moto's server answers every service but DynamoDB, whose requests are forwarded to the stack's DynamoDB
process (the handlers reach that process directly, through AWS_ENDPOINT_URL_DYNAMODB). The endpoint also
serves the stack's own control routes:

  /_sagalocal/dynamodb/faults     the DynamoDB process's fault rules (GET, POST a rule, DELETE all)
  /_sagalocal/dynamodb/stats      its requests and capacity units (DELETE resets them)
  /_sagalocal/lambda/stats        cold starts, throttles and concurrency of every function
  /_sagalocal/executions/wait     ?arn=...&timeout=S: returns when the execution has ended, without polling
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Forwarder:
    """HTTP/1.1 keep-alive connections to one local server, one per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._local = threading.local()

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]],
                                                                                            bytes]:
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.HTTPException, OSError):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def make_app(moto_app: WSGIApp, dynamodb: Forwarder, routes: dict[str, Callable[[str, dict[str, list[str]], bytes],
                                                                                 tuple[int, Any]]]) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_") or path.startswith("/_sagalocal/dynamodb/"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                       if key.startswith("HTTP_")}
            if environ.get("CONTENT_TYPE"):
                headers["Content-Type"] = environ["CONTENT_TYPE"]
            forwarded = "/_sagalocal/" + path.removeprefix("/_sagalocal/dynamodb/") if path.startswith(
                "/_sagalocal/") else path
            query = environ.get("QUERY_STRING")
            status, response_headers, data = dynamodb.send(environ["REQUEST_METHOD"], forwarded + (
                f"?{query}" if query else ""), body, headers)
            hop_by_hop = ("connection", "transfer-encoding")
            start_response(f"{status} {http.client.responses.get(status, 'Status')}",
                           [(k, v) for k, v in response_headers if k.lower() not in hop_by_hop])
            return [data]
        for prefix, handle in routes.items():
            if path.startswith(prefix):
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = environ["wsgi.input"].read(length) if length else b""
                status, payload = handle(environ["REQUEST_METHOD"], parse_qs(environ.get("QUERY_STRING", "")), body)
                data = json.dumps(payload).encode()
                start_response(f"{status} {http.client.responses.get(status, 'Status')}",
                               [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
                return [data]
        return moto_app(environ, start_response)

    return app


class AwsEndpoint:
    """moto's server behind the forwarding app, on 127.0.0.1:`port`, in a thread of this process."""

    def __init__(self, port: int, dynamodb_port: int,
                 routes: dict[str, Callable[[str, dict[str, list[str]], bytes], tuple[int, Any]]]) -> None:
        self.port = port
        self.dynamodb = Forwarder(dynamodb_port)
        self.routes = routes
        self._server: Any = None

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = make_app(DomainDispatcherApplication(create_backend_app), self.dynamodb, self.routes)
        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=MotoRequestHandler)
        self._server.socket.listen(1024)
        threading.Thread(target=self._server.serve_forever, name="sagalocal-aws-endpoint", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
