"""A function's processes: one template that imports the handler once, and sandboxes forked from it.

Run as a script by sagalocal.awslambda.runtime with the function's environment:

  python sandbox.py CONTROL_FD

The template process initializes like a Lambda cold start (the handler module imported, its module-level
code run) and then only forks: each fork is a sandbox that serves invocations one at a time over two pipes
(length-prefixed JSON), like a warm Lambda execution environment. Forking a ready template costs
milliseconds where importing costs hundreds, so a function scales to many sandboxes without burning the
machine's CPU on imports; the runtime adds the template's measured init time as a delay instead, so a
cold start takes as long as it would have.

Whatever the handler prints goes to the function's log file, never into the protocol.
"""

from __future__ import annotations

import os
import sys

# Run as a script: its own folder must not shadow the handler's imports.
if __name__ == "__main__":
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import gc  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
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
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


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

    def __init__(self, request_id: str, deadline: float, invoked_function_arn: str | None = None) -> None:
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")  # the version that runs
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        # The ARN the caller invoked: unqualified, a version's or an alias's.
        self.invoked_function_arn = invoked_function_arn or os.environ["SAGALOCAL_FUNCTION_ARN"]
        self.aws_request_id = request_id
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", f"/aws/lambda/{self.function_name}")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "local")
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


def serve(handler: Any, request_fd: int, response_fd: int) -> None:
    """A sandbox: invocations one at a time until the runtime closes the request pipe."""
    while True:
        request = read_message(request_fd)
        if request is None:
            return
        # The runtime measures the handler's own time from here (it excludes time spent waiting for a CPU).
        write_message(response_fd, {"started": os.getpid()})
        context = Context(request["request_id"], time.time() + request["timeout"], request.get("invoked_function_arn"))
        cpu = time.process_time()  # the handler's own CPU (its SDK calls' too), which the benchmarks compare with
        try:
            response = {"result": handler(request["event"], context)}
        except BaseException as exc:  # noqa: BLE001 - a handler's failure is a response, not our crash
            traceback.print_exc()
            response = {"error": error_payload(exc)}
        sys.stdout.flush()
        sys.stderr.flush()
        response["cpu_ms"] = (time.process_time() - cpu) * 1000
        try:
            write_message(response_fd, response)
        except TypeError as exc:
            write_message(response_fd, {"error": {"errorType": "Runtime.MarshalError",
                                                  "errorMessage": f"Unable to marshal response: {exc}"}})


def _reap(*_: Any) -> None:
    """SIGCHLD: reap every child that ended (a template's sandboxes, the preloader's templates), so that their CPU
    time counts in this process's children's, and in its parent's once this process ends and is waited for. Left to
    the kernel (SIG_IGN), it was discarded: 41 of the stack tier's 261 CPU-s never reached `make test`'s total."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _fork_sandbox(handler: Any, control: socket.socket, request_fd: int, response_fd: int) -> int:
    pid = os.fork()
    if pid:
        os.close(request_fd)
        os.close(response_fd)
        return pid
    # The sandbox.
    control.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    status = 0
    try:
        serve(handler, request_fd, response_fd)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        _save_coverage()
        os._exit(status)
    return 0  # not reached


def _save_coverage() -> None:
    """A forked sandbox ends with os._exit, which skips atexit: save coverage data (when measured) first. A measured
    sandbox has coverage imported already (its template was started measured); an unmeasured one imports nothing
    to find that out, as importing coverage cost each sandbox's exit ~0.03 CPU-s (fifteen at each stack's stop,
    and every sandbox a stack retires)."""
    coverage = sys.modules.get("coverage")
    if coverage is None:
        return
    current = coverage.Coverage.current()
    if current is not None:
        current.stop()
        current.save()


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    sys.path[:0] = [p for p in os.environ.get("SAGALOCAL_PATH", "").split(os.pathsep) if p]
    handler_path = os.environ["_HANDLER"]
    module_name, _, function_name = handler_path.rpartition(".")
    preloaded_ms = float(os.environ.pop("SAGALOCAL_PRELOADED_MS", "0"))  # forked from the preloader: its imports
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        if _LOADER is not None:  # forked from the preloader
            _share_loader()
        handler = getattr(importlib.import_module(module_name), function_name)
        # The init's CPU time is what a sandbox with a CPU of its own takes: the emulated cold start (with what
        # the preloader imported for it, had it imported that itself).
        init: dict[str, Any] = {"ready": True, "init_ms": (time.process_time() - started_cpu) * 1000 + preloaded_ms,
                                "init_wall_ms": (time.perf_counter() - started) * 1000 + preloaded_ms}
    except BaseException as exc:  # noqa: BLE001 - reported to the caller as Lambda does
        handler = None
        payload = error_payload(exc)
        payload["errorType"] = "Runtime.ImportModuleError"
        payload["errorMessage"] = f"Unable to import module '{module_name}': {exc}"
        init = {"ready": False, "error": payload}
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGCHLD, _reap)  # the sandboxes that end
    gc.freeze()  # the garbage collector leaves what init made alone: forked sandboxes keep sharing its pages
    write_message(control.fileno(), init)
    while True:
        request = read_message(control.fileno())
        if request is None:
            return
        if handler is None:
            write_message(control.fileno(), {"error": init["error"]})
            continue
        _, fds, _, _ = socket.recv_fds(control, 1, 2)
        if len(fds) != 2:
            write_message(control.fileno(), {"error": {"errorType": "Runtime.Unknown",
                                                       "errorMessage": "sandbox pipes were not received"}})
            continue
        write_message(control.fileno(), {"pid": _fork_sandbox(handler, control, fds[0], fds[1])})


# What the preloader imports: libraries every function imports, and that read no environment when imported. Never
# the project's own code (a deploy replaces it) nor anything a function's code folder holds a copy of (runtime.py
# starts such a function on its own).
PRELOAD = ("boto3", "botocore.session", "botocore.client", "pydantic")
_LOADER: Any = None  # the preloader's botocore loader, its files read (in a template it forked)


def _share_loader() -> None:
    """boto3's default session, made in this template's environment as its function's first client would make it,
    reading the model files through the preloader's loader: two clients' first creation took 28 ms of CPU, not 86
    (the session's own 18 ms would have shared its user agent, config files and monitoring settings)."""
    import boto3
    import botocore.session

    session = botocore.session.get_session()
    session.register_component("data_loader", _LOADER)
    boto3.setup_default_session(botocore_session=session)


def preloader(control_fd: int) -> None:
    """A stack's preloader: it imports PRELOAD once, then forks the functions' template processes, each of which
    sets its function's environment, folder and log and goes on as `main()` does. A stack starts a template per
    function (fifteen here): each importing boto3 and pydantic again cost ~0.4 CPU-s of a boot's ~13."""
    control = socket.socket(fileno=control_fd)
    started = time.process_time()
    for name in PRELOAD:
        importlib.import_module(name)
    # A botocore loader that has read the model files a first client reads (endpoints, partitions, defaults, a
    # service's model): each template's default session reads them through it (_share_loader). Only the loader is
    # kept: the session (its user agent, config files, credentials) is each template's own, made in its environment.
    global _LOADER
    import botocore.session

    warm = botocore.session.get_session()
    warm.create_client("dynamodb", region_name="us-east-1", aws_access_key_id="preloader",
                       aws_secret_access_key="preloader")  # noqa: S106 - never used: the client sends nothing
    _LOADER = warm.get_component("data_loader")
    preloaded_ms = (time.process_time() - started) * 1000
    # Every top-level package the imports brought in from outside the standard library (urllib3, jmespath, ...):
    # a function whose code holds a copy of one of them must import its own, so it is started on its own.
    loaded = sorted({name.partition(".")[0] for name, module in list(sys.modules.items())
                     if name != "__main__" and any(part in (getattr(module, "__file__", None) or "").split(os.sep)
                                                   for part in ("site-packages", "dist-packages"))})
    signal.signal(signal.SIGCHLD, _reap)  # the templates that end
    gc.freeze()
    write_message(control.fileno(), {"ready": True, "preloaded_ms": preloaded_ms, "modules": loaded})
    while True:
        request = read_message(control.fileno())
        if request is None:
            return
        _, fds, _, _ = socket.recv_fds(control, 1, 2)
        if len(fds) != 2:
            write_message(control.fileno(), {"error": "the template's socket and log were not received"})
            continue
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                control.close()
                os.setsid()
                template_control, log = fds
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.close(log)
                os.chdir(request["cwd"])
                os.environ.clear()
                os.environ.update(request["env"])
                os.environ["SAGALOCAL_PRELOADED_MS"] = str(preloaded_ms)
                time.tzset()  # the function's TZ, as a process started with it would have
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sys.argv = [__file__, str(template_control)]
                main()
                status = 0
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        for fd in fds:
            os.close(fd)
        write_message(control.fileno(), {"pid": pid})


if __name__ == "__main__":
    if sys.argv[1] == "--preloader":
        preloader(int(sys.argv[2]))
    else:
        main()
