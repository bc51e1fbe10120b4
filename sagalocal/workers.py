"""Worker pools: each function runs in its own processes, imported once and reused (warm).

A pool grows up to `max_workers` processes as concurrent invocations need them;
further invocations wait for a free worker. The template's Timeout is enforced:
a worker that overruns is killed (as Lambda ends the sandbox) and the
invocation fails with Sandbox.Timedout.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagalocal.worker import read_message, write_message

INIT_TIMEOUT_SECONDS = 60.0  # Lambda allows 10 s of init; a busy 2-core machine importing pydantic needs more
ACQUIRE_TIMEOUT_SECONDS = 120.0  # waiting longer for a free worker is throttling, as Lambda reports it


class Throttled(Exception):
    """No worker became free in time: what Lambda reports as TooManyRequestsException."""


@dataclass
class FunctionSpec:
    logical_id: str
    name: str
    arn: str
    handler: str
    code_dir: Path
    layer_dirs: list[Path]
    environment: dict[str, str]
    timeout: float
    memory: int
    log_path: Path


@dataclass
class InvokeResult:
    payload: Any  # the handler's result, or the error payload
    error: bool
    duration_ms: float
    init_ms: float | None = None  # set on a cold start


class WorkerError(Exception):
    pass


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    request_fd: int
    response_fd: int
    init_ms: float | None = None
    used: bool = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        for fd in (self.request_fd, self.response_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _wait_readable(fd: int, timeout: float) -> bool:
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return bool(ready)


@dataclass
class WorkerPool:
    spec: FunctionSpec
    base_environment: dict[str, str]
    max_workers: int = 4
    _idle: list[_Worker] = field(default_factory=list)
    _count: int = 0
    _closed: bool = False

    def __post_init__(self) -> None:
        self._cond = threading.Condition()

    def environment(self) -> dict[str, str]:
        env = dict(self.base_environment)
        env.update(self.spec.environment)
        env.update({
            "_HANDLER": self.spec.handler,
            "AWS_LAMBDA_FUNCTION_NAME": self.spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.spec.memory),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(self.spec.timeout)),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "SAGALOCAL_FUNCTION_ARN": self.spec.arn,
            "SAGALOCAL_PATH": os.pathsep.join(str(p) for p in [self.spec.code_dir, *self.spec.layer_dirs]),
            "LAMBDA_TASK_ROOT": str(self.spec.code_dir),
        })
        return env

    def _spawn(self) -> _Worker:
        req_read, req_write = os.pipe()
        resp_read, resp_write = os.pipe()
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("worker.py")), str(req_read), str(resp_write)],
                env=self.environment(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                pass_fds=(req_read, resp_write), cwd=str(self.spec.code_dir), start_new_session=True,
            )
        os.close(req_read)
        os.close(resp_write)
        worker = _Worker(process, req_write, resp_read)
        if not _wait_readable(resp_read, INIT_TIMEOUT_SECONDS):
            worker.kill()
            raise WorkerError(f"{self.spec.logical_id}: the handler did not initialize in {INIT_TIMEOUT_SECONDS:.0f} s")
        init = read_message(resp_read)
        if init is None:
            worker.kill()
            raise WorkerError(f"{self.spec.logical_id}: the worker exited during init; see {self.spec.log_path}")
        worker.init_ms = init.get("init_ms")
        return worker

    def _acquire(self) -> _Worker:
        deadline = time.monotonic() + ACQUIRE_TIMEOUT_SECONDS
        with self._cond:
            while True:
                if self._closed:
                    raise WorkerError(f"{self.spec.logical_id}: the stack is shutting down")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        return worker
                    self._count -= 1
                if self._count < self.max_workers:
                    self._count += 1
                    break
                if time.monotonic() > deadline:
                    raise Throttled(f"{self.spec.logical_id}: all {self.max_workers} workers busy for "
                                    f"{ACQUIRE_TIMEOUT_SECONDS:.0f} s")
                self._cond.wait(timeout=1.0)
        try:
            return self._spawn()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is not None and worker.alive() and not self._closed:
                self._idle.append(worker)
            else:
                self._count -= 1
                if worker is not None:
                    worker.kill()
            self._cond.notify()

    def warm(self) -> None:
        """Start one worker ahead of the first invocation."""
        self._release(self._acquire())

    def invoke(self, event: Any) -> InvokeResult:
        worker = self._acquire()
        cold_init = None if worker.used else worker.init_ms
        worker.used = True
        started = time.perf_counter()
        deadline = time.time() + self.spec.timeout
        try:
            write_message(worker.request_fd, {"event": event, "request_id": str(uuid.uuid4()), "deadline": deadline})
            if not _wait_readable(worker.response_fd, self.spec.timeout):
                worker.kill()
                self._release(None)
                worker = None
                return InvokeResult(
                    {"errorType": "Sandbox.Timedout",
                     "errorMessage": f"Task timed out after {self.spec.timeout:.2f} seconds"},
                    True, (time.perf_counter() - started) * 1000, cold_init)
            response = read_message(worker.response_fd)
        except (OSError, ValueError) as exc:
            response = None
            reason = str(exc)
        else:
            reason = "the worker process exited"
        elapsed = (time.perf_counter() - started) * 1000
        if response is None:
            if worker is not None:
                worker.kill()
                self._release(None)
            return InvokeResult({"errorType": "Runtime.ExitError",
                                 "errorMessage": f"{self.spec.logical_id}: {reason}; see {self.spec.log_path}"},
                                True, elapsed, cold_init)
        self._release(worker)
        if "error" in response:
            return InvokeResult(response["error"], True, elapsed, cold_init)
        return InvokeResult(response["result"], False, elapsed, cold_init)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            try:
                os.close(worker.request_fd)  # EOF: the worker's loop ends
            except OSError:
                pass
            try:
                worker.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            worker.kill()
