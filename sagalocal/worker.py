"""One function's worker process: imports the handler once and serves invocations, like a warm Lambda.

Started by sagalocal.workers with the function's environment. It reads requests
from one file descriptor and writes responses to another (length-prefixed JSON),
so whatever the handler prints to stdout/stderr goes to the function's log file
and never into the protocol.
"""

from __future__ import annotations

import os
import sys

# Run as a script: its own folder must not shadow the handler's imports (sagalocal/http.py vs http).
if __name__ == "__main__":
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import importlib  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

_HEADER = struct.Struct(">I")


def read_message(fd: int) -> Any:
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    data = _read_exact(fd, length)
    return None if data is None else json.loads(data)


def write_message(fd: int, message: Any) -> None:
    data = json.dumps(message).encode()
    _write_all(fd, _HEADER.pack(len(data)) + data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class Context:
    """The Lambda context object handlers receive."""

    def __init__(self, request_id: str, deadline: float) -> None:
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.invoked_function_arn = os.environ["SAGALOCAL_FUNCTION_ARN"]
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The payload AWS Lambda returns for an unhandled exception: errorType is the class name."""
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(type(exc), exc, exc.__traceback__)[-10:],
    }


def main() -> None:
    request_fd, response_fd = int(sys.argv[1]), int(sys.argv[2])
    handler_path = os.environ["_HANDLER"]
    sys.path[:0] = [p for p in os.environ.get("SAGALOCAL_PATH", "").split(os.pathsep) if p]
    module_name, _, function_name = handler_path.rpartition(".")
    started = time.perf_counter()
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        init = {"ready": True, "init_ms": (time.perf_counter() - started) * 1000}
    except BaseException as exc:  # noqa: BLE001 - reported to the caller as Lambda does
        handler = None
        payload = error_payload(exc)
        payload["errorType"] = "Runtime.ImportModuleError"
        payload["errorMessage"] = f"Unable to import module '{module_name}': {exc}"
        init = {"ready": False, "error": payload}
        traceback.print_exc()
    sys.stderr.flush()
    write_message(response_fd, init)
    while True:
        request = read_message(request_fd)
        if request is None:
            return
        if handler is None:
            write_message(response_fd, {"error": init["error"]})
            continue
        context = Context(request["request_id"], request["deadline"])
        try:
            result = handler(request["event"], context)
            response = {"result": result}
        except BaseException as exc:  # noqa: BLE001 - a handler's failure is a response, not our crash
            traceback.print_exc()
            response = {"error": error_payload(exc)}
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            write_message(response_fd, response)
        except TypeError as exc:
            write_message(response_fd, {"error": {"errorType": "Runtime.MarshalError",
                                                  "errorMessage": f"Unable to marshal response: {exc}"}})


if __name__ == "__main__":
    main()
