"""The DynamoDB endpoint: AWS JSON 1.0 over HTTP/1.1 with keep-alive, on 127.0.0.1, in its own process.

  python -m sagalocal.dynamodb.server --port P [--ready-file F] [--transaction-window-ms W]

Control endpoints (not DynamoDB's):
  GET|POST|DELETE /_sagalocal/faults   the fault rules this process applies to every request
  GET|DELETE      /_sagalocal/stats    requests by operation, capacity units by table (DELETE: reset)
  GET|POST        /_sagalocal/iam      the functions' identities (POST registers them) and what each used
  GET             /_sagalocal/streams  ?table=&after=&limit=&ack=&wait=&stream_arn=&as=: a table's stream records, read
                                       by an event source mapping with the function's identity (`as`); with
                                       nothing new, it waits up to `wait` seconds (at most 20) for a record
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sagafaults.rules import RuleError
from sagalocal import booting, untraced
from sagalocal.dynamodb.engine import Engine, Reply
from sagalocal.dynamodb.streams import STREAMS
from sagalocal.iam import Principal

log = logging.getLogger("sagalocal.dynamodb")
MAX_BODY = 16 * 1024 * 1024
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
            503: "Service Unavailable"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def make_server(port: int, engine: Engine) -> _Server:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError("request too large")
            return self.rfile.read(length) if length else b""

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self._body()
            if self.path.startswith("/_sagalocal/"):
                self._control(raw)
                return
            target = self.headers.get("X-Amz-Target", "")
            operation = target.split(".", 1)[1] if "." in target else ""
            try:
                reply = engine.handle(operation, raw, self.headers)
            except Exception:  # noqa: BLE001 - a bug of ours must reach the client as a 500, not hang it
                log.exception("DynamoDB %s failed", operation)
                reply = Reply(500, b'{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError",'
                                   b'"message":"sagalocal: internal error (see the stack log)"}')
            if reply.lost_as is not None:
                self._lose(reply)
                return
            self._send(reply.status, reply.body, "application/x-amz-json-1.0")

        def do_GET(self) -> None:  # noqa: N802
            self._control(b"")

        def do_DELETE(self) -> None:  # noqa: N802
            self._control(self._body())

        def _lose(self, reply: Reply) -> None:
            """The write happened; the client must not learn it: an error, or a connection that goes silent."""
            if reply.lost_as == "timeout":
                time.sleep(max(reply.hold_ms, 1000) / 1000)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            self._send(reply.status, reply.body, "application/x-amz-json-1.0")

        def _control(self, raw: bytes) -> None:
            path = self.path.split("?")[0].rstrip("/")
            try:
                if path == "/_sagalocal/faults":
                    if self.command == "POST":
                        rule = engine.rules.add(json.loads(raw or b"null"))
                        self._json(201, rule.to_json())
                    elif self.command == "DELETE":
                        engine.rules.clear()
                        self._json(200, [])
                    else:
                        self._json(200, engine.rules.rules())
                elif path == "/_sagalocal/iam":
                    if self.command == "POST":
                        engine.iam.register([Principal.from_json(p) for p in json.loads(raw or b"[]")])
                    self._json(200, {"principals": engine.iam.principals(), "used": engine.iam.used()})
                elif path == "/_sagalocal/streams":
                    query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                    signer = query.get("as")
                    denial = engine.iam.check(signer, [(action, query.get("stream_arn", "*"))
                                                       for action in ("dynamodb:DescribeStream",
                                                                      "dynamodb:GetShardIterator",
                                                                      "dynamodb:GetRecords",
                                                                      "dynamodb:ListStreams")])
                    if denial is not None:
                        self._json(403, {"error": denial})
                        return
                    self._json(200, STREAMS.read(query["table"], int(query.get("after", 0)),
                                                 int(query.get("limit", 100)), int(query.get("ack", 0)),
                                                 wait=min(20.0, max(0.0, float(query.get("wait", 0))))))
                elif path == "/_sagalocal/stats":
                    if self.command == "DELETE":
                        engine.meter.reset()
                    self._json(200, {**engine.meter.snapshot(), "conflicts": engine.coordinator.conflicts})
                else:
                    self._json(404, {"error": f"no such endpoint {path}"})
            except (RuleError, ValueError, KeyError, TypeError) as exc:
                self._json(400, {"error": str(exc)})

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(data)}\r\nx-amzn-RequestId: {os.urandom(16).hex()}\r\n\r\n")
            self.wfile.write(head.encode() + data)  # one write: no Nagle delay between headers and body

    return _Server(("127.0.0.1", port), Handler)


def serve(port: int, window_ms: float, ready_file: Path | None) -> None:
    engine = Engine(window_ms=window_ms)
    server = make_server(port, engine)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    threading.Thread(target=server.serve_forever, name="dynamodb", daemon=True).start()
    if ready_file is not None:
        ready_file.write_text(json.dumps({"port": server.server_address[1], "pid": os.getpid()}))
    booting.served()
    try:
        while not stop.wait(0.5):
            # The stack that started us is gone: we were handed to another parent (init, or a subreaper such as
            # make test's runner, a container's init or a user's systemd, none of which is pid 1 to us).
            if os.getppid() != parent:
                break
    except KeyboardInterrupt:
        pass
    server.shutdown()


class DynamoDBProcess:
    """The DynamoDB process of a local stack: started, waited for, stopped."""

    def __init__(self, port: int, log_path: Path, window_ms: float = 2.0, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self.window_ms = window_ms
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        ready = self.log_path.with_name(f"DynamoDB-{self.port}.ready")  # its own: stacks may start side by side
        ready.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sagalocal.dynamodb.server", "--port", str(self.port),
                 "--transaction-window-ms", str(self.window_ms), "--ready-file", str(ready)],
                stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the DynamoDB process exited with {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the DynamoDB process did not start in {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.02)
        ready.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def main(argv: list[str] | None = None) -> int:
    untraced.here()  # only moto and sagalocal run here: nothing coverage measures
    booting.begin()  # no garbage collection until it serves (sagalocal/booting.py)
    parser = argparse.ArgumentParser(prog="python -m sagalocal.dynamodb.server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--transaction-window-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    serve(args.port, args.transaction_window_ms, args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
