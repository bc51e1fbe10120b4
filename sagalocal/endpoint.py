"""The stack's AWS endpoint on 127.0.0.1: one URL for every service, as `--endpoint-url` expects.

moto's server answers every service but DynamoDB, whose requests are forwarded to the stack's DynamoDB
process (the handlers reach that process directly, through AWS_ENDPOINT_URL_DYNAMODB). The endpoint also
serves the stack's own control routes:

  /_sagalocal/dynamodb/faults     the DynamoDB process's fault rules (GET, POST a rule, DELETE all)
  /_sagalocal/dynamodb/stats      its requests and capacity units (DELETE resets them)
  /_sagalocal/lambda/stats        each function's cold starts, throttles, invocations, billed ms, handlers' CPU ms
  /_sagalocal/executions/wait     ?arn=...&timeout=S: returns when the execution has ended, without polling
  /_sagalocal/metrics             the template's CloudWatch dashboards, evaluated on the functions' EMF lines
  /_sagalocal/update              POST: redeploy (the template and code read again, new versions, aliases moved);
                                  GET: what each alias points at
"""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from sagalocal.iam import Authorizer, credentials_of, denial_body, service_context, service_request

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


def _denied(environ: dict[str, Any], iam: Authorizer) -> tuple[bytes, str] | None:
    """A function's request that its role does not allow: the denial body and its content type."""
    signer = credentials_of({"Authorization": environ.get("HTTP_AUTHORIZATION", "")})
    if signer is None or not iam.principals_known(signer[0]):
        return None
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:  # the JSON protocols: the action is the target's suffix
        action, json_protocol = target.rsplit(".", 1)[-1], True
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
    else:  # the query protocol: Action=... in the form body or the query string
        form = parse_qs(body.decode("utf-8", "replace")) or parse_qs(environ.get("QUERY_STRING", ""))
        params = {k: v[-1] for k, v in form.items()}
        action, json_protocol = params.get("Action", ""), False
    request = service_request(signer[2], action, params if isinstance(params, dict) else {}, signer[1], iam.account)
    message = iam.check(signer[0], [request], service_context(signer[2], params if isinstance(params, dict) else {}))
    if message is None:
        return None
    return denial_body(message, json_protocol), "application/x-amz-json-1.0" if json_protocol else "text/xml"


def make_app(moto_app: WSGIApp, dynamodb: Forwarder, routes: dict[str, Callable[[str, dict[str, list[str]], bytes],
                                                                                 tuple[int, Any]]],
             iam: Authorizer | None = None) -> WSGIApp:
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
        denied = _denied(environ, iam) if iam is not None else None
        if denied is not None:
            start_response("400 Bad Request", [("Content-Type", denied[1]), ("Content-Length", str(len(denied[0])))])
            return [denied[0]]
        return moto_app(environ, start_response)

    return app


def _list_moto_modules_once() -> None:
    """moto's server lists its own package folder (an isdir for each of ~150 entries) at every request to find
    the service a host names; the folder does not change while the stack runs, so list it once."""
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())  # a second stack in this process lists the tuple again
    backends.list_of_moto_modules = lambda: modules


class AwsEndpoint:
    """moto's server behind the forwarding app, on 127.0.0.1:`port`, in a thread of this process."""

    def __init__(self, port: int, dynamodb_port: int,
                 routes: dict[str, Callable[[str, dict[str, list[str]], bytes], tuple[int, Any]]],
                 iam: Authorizer | None = None) -> None:
        self.port = port
        self.iam = iam
        self.dynamodb = Forwarder(dynamodb_port)
        self.routes = routes
        self._server: Any = None

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        _list_moto_modules_once()
        app = make_app(DomainDispatcherApplication(create_backend_app), self.dynamodb, self.routes, self.iam)
        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=MotoRequestHandler)
        self._server.socket.listen(1024)
        threading.Thread(target=self._server.serve_forever, name="sagalocal-aws-endpoint", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
