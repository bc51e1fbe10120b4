"""One function's execution environments, scaling as Lambda does, and the account's concurrency.

An invocation takes an idle sandbox, or starts a new one if the function and the account have
concurrency left; past that it is throttled at once (TooManyRequestsException), as Lambda throttles,
and the caller's retry policy decides what happens next. Nothing queues.

A new sandbox is forked from the function's template process and then waits for the template's measured
init time before it serves (a cold start as long as on a real cold start, without the CPU of one). Idle
sandboxes are closed after `idle_seconds`.

The function's Timeout measures the handler's own time, as on AWS where each sandbox has its CPU: time the
sandbox spent runnable but waiting for a CPU of this machine (Linux's schedstat) does not count.

Each version of a function (and its unpublished $LATEST) is a runtime of its own, with its own template process:
two versions run side by side, each its own code (sagalocal/awslambda/code.py) and configuration. Reserved
concurrency is the function's, shared by all of its versions, as on AWS.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagalocal.awslambda.code import Snapshot
from sagalocal.awslambda.sandbox import read_message, write_message

INIT_TIMEOUT_SECONDS = 60.0  # Lambda allows 10 s of init; a loaded 2-core machine importing pydantic needs more
SANDBOX = str(Path(__file__).with_name("sandbox.py"))


class Throttled(Exception):
    """No concurrency left: what Lambda reports as TooManyRequestsException (Rate Exceeded)."""


class RuntimeFailure(Exception):
    """The function cannot run at all (its template process failed to start, or the stack is stopping)."""


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
    reserved_concurrency: int | None = None
    version: str = "$LATEST"  # a published version's number, as Lambda names it
    snapshot: Snapshot | None = None  # the code this version holds (None: the directories as they are)

    def code_dirs(self) -> list[Path]:
        """Where this version's code is: its function's directory first, then its layers'."""
        if self.snapshot is None:
            return [self.code_dir, *self.layer_dirs]
        return list(self.snapshot.dirs())

    @property
    def qualified_arn(self) -> str:
        return self.arn if self.version == "$LATEST" else f"{self.arn}:{self.version}"


@dataclass
class InvokeResult:
    payload: Any  # the handler's result, or the error payload
    error: bool
    duration_ms: float  # the handler's own time
    init_ms: float | None = None  # set on a cold start
    cpu_ms: float = 0.0  # the handler's own CPU time, as its sandbox measured it (0 for a run that died)


class Concurrency:
    """The account's concurrent executions (1000 by default, as on AWS)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.throttles = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.in_use >= self.limit:
                self.throttles += 1
                return False
            self.in_use += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.in_use -= 1


def _runqueue_ns(pid: int) -> int:
    """Nanoseconds the process has spent runnable but waiting for a CPU (0 where schedstat is missing)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


class _CpuWaits:
    """Seconds a sandbox has waited for a CPU since this was made. Never decreases: once the process is gone
    (its schedstat with it) the last reading stands."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _runqueue_ns(pid)
        self.last = 0.0

    def __call__(self) -> float:
        now = _runqueue_ns(self.pid)
        if now >= self.start:
            self.last = max(self.last, (now - self.start) / 1e9)
        return self.last


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name (state first), None if the process is gone; OSError
    if it cannot be read now."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


@dataclass
class _Sandbox:
    pid: int
    request_fd: int
    response_fd: int
    idle_since: float = field(default_factory=time.monotonic)
    used: bool = False

    def alive(self) -> bool:
        """Running: not gone, and not a zombie (ended, its template not yet scheduled to reap it). Where /proc cannot
        be read (another OS, or no fd to read it with now): whether the pid exists."""
        try:
            fields = _stat(self.pid) if os.path.isdir("/proc/self") else []
        except OSError:
            fields = []
        if fields is None:
            return False  # gone
        if fields:
            return fields[0] != "Z"
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self, kill: bool = False) -> None:
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for fd in (self.request_fd, self.response_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Preloader:
    """A stack's preloader process (sandbox.py `preloader`): it imports the libraries every function imports once,
    and forks each function's template process from there, instead of each template importing them again.

    Not used (`get()` is None) where a template must start on its own: when coverage measures the stack's
    functions (a measured process is started by coverage's subprocess patch), or if the preloader cannot start.
    """

    # What is read when an interpreter starts, when the preloaded libraries are imported or when the preloader's
    # botocore loader is made (where it looks for model files): a function whose environment sets one of these
    # differently from the stack's starts on its own (TZ is applied after the fork).
    STARTUP = ("PYTHON", "LC_", "LANG", "BOTO", "AWS_NEW_RETRIES", "HOME", "PATH", "LD_", "MALLOC_", "OPENSSL_",
               "SSL_", "AWS_DATA_PATH")

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment  # the stack's base environment (the stack adds to it after this)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._started_with: dict[str, str] = {}
        self.modules: list[str] = []  # the top-level packages it imported
        self._failed = False

    def serves(self, environment: dict[str, str], dirs: list[Path]) -> bool:
        """Whether a template with this environment and code can be forked from the preloader."""
        changed = {k for k in set(environment) | set(self._started_with)
                   if environment.get(k) != self._started_with.get(k)}
        if any(k.startswith(self.STARTUP) for k in changed):
            return False
        return not any((d / name).is_dir() or any(d.glob(f"{name}.*")) for d in dirs for name in self.modules)

    def get(self, log_dir: Path) -> Preloader | None:
        with self._lock:
            # A measured stack's functions are started by coverage's subprocess patch, which measures them.
            measured = any(k in self.environment for k in ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"))
            if self._failed or measured:
                return None
            if self._process is None or self._process.poll() is not None:
                try:
                    self._start(log_dir)
                except (OSError, RuntimeFailure) as exc:
                    self._failed = True
                    print(f"sagalocal: the functions' preloader did not start ({exc}); each starts on its own",
                          file=sys.stderr)
                    return None
            return self

    def _start(self, log_dir: Path) -> None:
        ours, theirs = socket.socketpair()
        log_dir.mkdir(parents=True, exist_ok=True)
        environment = dict(self.environment)
        with open(log_dir / "LambdaPreloader.log", "ab") as log:
            process = subprocess.Popen([sys.executable, SANDBOX, "--preloader", str(theirs.fileno())],
                                       env=environment, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        ready, _, _ = select.select([ours], [], [], INIT_TIMEOUT_SECONDS)
        answer = read_message(ours.fileno()) if ready else None
        if not answer or not answer.get("ready"):
            process.kill()
            process.wait()
            ours.close()
            raise RuntimeFailure(f"no answer from the preloader: {answer}")
        self._process, self._control = process, ours
        self._started_with, self.modules = environment, list(answer.get("modules") or [])

    def fork(self, environment: dict[str, str], cwd: str, control_fd: int, log_fd: int) -> int:
        """A template process with this environment, folder, control socket and log: its pid."""
        with self._lock:
            if self._control is None or self._failed:
                raise RuntimeFailure("the preloader is closed")
            try:
                write_message(self._control.fileno(), {"env": environment, "cwd": cwd})
                socket.send_fds(self._control, [b"T"], [control_fd, log_fd])
                ready, _, _ = select.select([self._control], [], [], INIT_TIMEOUT_SECONDS)
                answer = read_message(self._control.fileno()) if ready else None
            except OSError as exc:
                answer = {"error": str(exc)}
            if not answer or "pid" not in answer:
                # The next templates start on their own; this one too, on a new socket (the preloader may still
                # hold this one): the preloader is stopped so that it forks nothing more.
                self._failed = True
                if self._process is not None:
                    self._process.kill()
                raise RuntimeFailure(f"the preloader did not start a template: {answer}")
        return int(answer["pid"])

    def close(self) -> None:
        with self._lock:
            self._failed = True
            if self._control is not None:
                self._control.close()  # EOF: the preloader ends
            if self._process is not None:
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()


class _Forked:
    """A template process the preloader forked (not this process's child): what FunctionRuntime asks of a Popen.
    It is known by its pid and its start time (so a pid reused by another process is not taken for it), and a
    zombie (its preloader gone, its new parent not reaping it) counts as ended."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._started = self._start_time()

    def _start_time(self) -> str | None:
        try:
            fields = _stat(self.pid)
        except OSError:
            return getattr(self, "_started", None)  # cannot look now (out of fds, say): taken as still running
        if fields is None:
            return None  # gone
        return "Z" if fields[0] == "Z" else fields[19]

    def poll(self) -> int | None:
        if os.path.isdir("/proc/self"):
            now = self._start_time()
            return None if now is not None and now != "Z" and now == self._started else 0
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 0  # gone (the preloader reaps it)
        except PermissionError:
            return 0  # another user's process has its pid now
        return None

    def wait(self, timeout: float | None = None) -> int:
        """Until it ends; without a timeout, at most 30 s (then it is killed: it is not ours to wait for forever)."""
        deadline = time.monotonic() + (30.0 if timeout is None else timeout)
        while self.poll() is None:
            if time.monotonic() > deadline:
                if timeout is not None:
                    raise subprocess.TimeoutExpired(f"template {self.pid}", timeout)
                self.kill()
                return 0
            time.sleep(0.02)
        return 0

    def kill(self) -> None:
        """Its session: its sandboxes too, even once the template itself has ended (a hung handler's sandbox).
        Linux gives no new process a pid while a process group of that id still has members."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass


class FunctionRuntime:
    def __init__(self, spec: FunctionSpec, base_environment: dict[str, str], account: Concurrency,
                 cold_start_delay: bool = True, idle_seconds: float = 120.0,
                 reserved: Concurrency | None = None, preloader: Preloader | None = None) -> None:
        self.spec = spec
        self.preloader = preloader
        self.base_environment = base_environment
        self.account = account
        # The function's reserved concurrency, one count for all its versions (None: unreserved).
        self.reserved = reserved if reserved is not None or spec.reserved_concurrency is None \
            else Concurrency(spec.reserved_concurrency)
        self.cold_start_delay = cold_start_delay
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._fork_lock = threading.Lock()
        self._idle: list[_Sandbox] = []
        self._busy = 0
        self._template: subprocess.Popen[bytes] | _Forked | None = None
        self._control: socket.socket | None = None
        self._init_ms: float = 0.0
        self._init_error: dict[str, Any] | None = None
        self._closed = False
        self.retiring = False  # replaced (a deploy's new $LATEST): closed once its last invocation ends
        self.cold_starts = 0
        self.throttles = 0
        self.invocations = 0  # each handler run that ended (an answer, an error, a crash, a time-out)
        self.billed_ms = 0  # their durations, each rounded up to the millisecond, as Lambda bills them
        self.handler_cpu_ms = 0.0  # the handlers' own CPU in them (the sandboxes' plumbing left out)

    # ---- the template process -----------------------------------------------------------------
    def environment(self, dirs: list[Path] | None = None) -> dict[str, str]:
        dirs = dirs or self.spec.code_dirs()
        env = dict(self.base_environment)
        env.update(self.spec.environment)
        env.update({
            "_HANDLER": self.spec.handler,
            "AWS_LAMBDA_FUNCTION_NAME": self.spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.spec.memory),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(self.spec.timeout)),
            "AWS_LAMBDA_FUNCTION_VERSION": self.spec.version,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.spec.name}",
            "SAGALOCAL_FUNCTION_ARN": self.spec.qualified_arn,
            "SAGALOCAL_PATH": os.pathsep.join(str(p) for p in dirs),
            "LAMBDA_TASK_ROOT": str(dirs[0]),
        })
        return env

    def start(self) -> None:
        """Start the template process and wait for its init (the function's one real cold start)."""
        with self._fork_lock:
            if self._template is not None and self._template.poll() is None:
                return
            if self._closed:
                raise RuntimeFailure(f"{self.spec.logical_id}: the stack is shutting down")
            ours, theirs = socket.socketpair()
            self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            dirs = self.spec.code_dirs()  # a version's code, as it was published
            environment = self.environment(dirs)
            preloader = self.preloader.get(self.spec.log_path.parent) if self.preloader is not None else None
            if preloader is not None and not preloader.serves(environment, [Path(d) for d in dirs]):
                preloader = None  # its interpreter settings differ, or its code holds its own copy of a library
            with open(self.spec.log_path, "ab") as log:
                process: subprocess.Popen[bytes] | _Forked | None = None
                if preloader is not None:
                    try:
                        process = _Forked(preloader.fork(environment, str(dirs[0]), theirs.fileno(), log.fileno()))
                    except RuntimeFailure as exc:
                        print(f"sagalocal: {self.spec.logical_id} starts on its own: {exc}", file=sys.stderr)
                        ours.close()
                        theirs.close()
                        ours, theirs = socket.socketpair()  # the failed fork's may still be held
                if process is None:
                    process = subprocess.Popen(
                        [sys.executable, SANDBOX, str(theirs.fileno())], env=environment,
                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(theirs.fileno(),),
                        cwd=str(dirs[0]), start_new_session=True)
            theirs.close()
            ready, _, _ = select.select([ours], [], [], INIT_TIMEOUT_SECONDS)
            init = read_message(ours.fileno()) if ready else None
            if init is None:
                process.kill()
                ours.close()
                raise RuntimeFailure(f"{self.spec.logical_id}: the handler did not initialize "
                                     f"(see {self.spec.log_path})")
            self._template, self._control = process, ours
            self._init_ms = float(init.get("init_ms") or 0.0)
            self._init_error = None if init.get("ready") else init.get("error")

    @property
    def init_ms(self) -> float:
        return self._init_ms

    def prewarm(self) -> None:
        """One sandbox ready before the first invocation (as provisioned concurrency 1 would be)."""
        self.start()
        if self._init_error is not None:
            return
        with self._lock:
            if self._idle or not self.account.take():
                return
        try:
            sandbox = self._fork()
        except BaseException:
            self.account.give()
            raise
        with self._lock:
            self._idle.append(sandbox)

    def _fork(self) -> _Sandbox:
        self.start()
        assert self._control is not None
        req_read, req_write = os.pipe()
        resp_read, resp_write = os.pipe()
        try:
            with self._fork_lock:
                write_message(self._control.fileno(), {"op": "fork"})
                socket.send_fds(self._control, [b"F"], [req_read, resp_write])
                answer = read_message(self._control.fileno())
        finally:
            os.close(req_read)
            os.close(resp_write)
        if not answer or "pid" not in answer:
            os.close(req_write)
            os.close(resp_read)
            raise RuntimeFailure(f"{self.spec.logical_id}: could not start a sandbox: {answer}")
        self.cold_starts += 1
        return _Sandbox(int(answer["pid"]), req_write, resp_read)

    # ---- invocations ---------------------------------------------------------------------------
    def _acquire(self) -> tuple[_Sandbox | None, bool]:
        """An idle sandbox, or (None, True) when a new one may start; Throttled when none may."""
        with self._lock:
            if self._closed:
                raise RuntimeFailure(f"{self.spec.logical_id}: the stack is shutting down")
            if self.reserved is not None and not self.reserved.take():  # the function's, all versions together
                self.throttles += 1
                raise Throttled(f"Rate Exceeded. ({self.spec.name}: reserved concurrency {self.reserved.limit} "
                                f"in use)")
            while self._idle:
                sandbox = self._idle.pop()
                if sandbox.alive():
                    self._busy += 1
                    return sandbox, False
                sandbox.close()
                self.account.give()
            if not self.account.take():
                self.throttles += 1
                if self.reserved is not None:
                    self.reserved.give()
                raise Throttled(f"Rate Exceeded. (account concurrency {self.account.limit} in use)")
            self._busy += 1
            return None, True

    @property
    def busy(self) -> int:
        return self._busy

    def _release(self, sandbox: _Sandbox | None) -> None:
        with self._lock:
            self._busy -= 1
            if self.reserved is not None:
                self.reserved.give()
            if sandbox is not None and not self._closed:
                sandbox.idle_since = time.monotonic()
                self._idle.append(sandbox)
                return
        if sandbox is not None:
            sandbox.close(kill=True)
        self.account.give()

    def invoke(self, event: Any, watch: Callable[[Callable[[], float]], None] | None = None,
               invoked_arn: str | None = None) -> InvokeResult:
        """Run the handler on `event`. `watch` receives a function that tells how long, so far, the sandbox
        waited for a CPU of this machine (the Step Functions task timeout leaves that time out too).
        `invoked_arn` is the ARN the caller named (the context's invoked_function_arn: an alias's, say)."""
        sandbox, new = self._acquire()
        cold_ms: float | None = None
        if new:
            try:
                self.start()
                if self._init_error is not None:  # the handler cannot import: every invocation fails so
                    self._release(None)
                    return InvokeResult(self._init_error, True, 0.0, self._init_ms)
                sandbox = self._fork()
            except BaseException:
                self._release(None)
                raise
            cold_ms = self._init_ms
            if self.cold_start_delay:
                time.sleep(self._init_ms / 1000)
        assert sandbox is not None
        try:
            result = self._run(sandbox, event, watch, invoked_arn or self.spec.qualified_arn)
        except BaseException:
            self._release(None)
            sandbox.close(kill=True)
            raise
        result.init_ms = cold_ms
        with self._lock:
            self.invocations += 1
            self.billed_ms += math.ceil(result.duration_ms)
            self.handler_cpu_ms += result.cpu_ms
        if result.payload is _DEAD:
            self._release(None)
            sandbox.close(kill=True)
            result.payload = {"errorType": result.error_type, "errorMessage": result.error_message}
        else:
            self._release(sandbox)
        return result

    def _run(self, sandbox: _Sandbox, event: Any, watch: Callable[[Callable[[], float]], None] | None,
             invoked_arn: str) -> _Run:
        timeout = self.spec.timeout
        try:
            write_message(sandbox.request_fd, {"event": event, "request_id": str(uuid.uuid4()), "timeout": timeout,
                                               "invoked_function_arn": invoked_arn})
            started_wall = time.monotonic()
            waits = _CpuWaits(sandbox.pid)
            if watch is not None:
                watch(waits)
            first = self._await(sandbox, started_wall, waits, timeout)
            if first is None:
                return _Run.dead(*self._timed_out(timeout), started_wall)
            if "started" in first:
                response = self._await(sandbox, started_wall, waits, timeout)
                if response is None:
                    return _Run.dead(*self._timed_out(timeout), started_wall)
            else:
                response = first
        except _Exited:
            return _Run.dead("Runtime.ExitError", f"RequestId: {uuid.uuid4()} Error: Runtime exited without "
                                                  f"providing a reason (see {self.spec.log_path})", time.monotonic())
        except OSError as exc:
            return _Run.dead("Runtime.ExitError", f"{self.spec.logical_id}: {exc}", time.monotonic())
        own, cpu = (time.monotonic() - started_wall) * 1000, response.get("cpu_ms", 0.0)
        if "error" in response:
            return _Run(response["error"], True, own, cpu_ms=cpu)
        return _Run(response["result"], False, own, cpu_ms=cpu)

    def _await(self, sandbox: _Sandbox, started: float, waits: _CpuWaits, timeout: float) -> dict[str, Any] | None:
        """The sandbox's next message; None once the handler's own time passed the timeout."""
        while True:
            remaining = timeout - (time.monotonic() - started - waits())
            ready, _, _ = select.select([sandbox.response_fd], [], [], max(0.0, min(remaining, 0.25)))
            if ready:
                message = read_message(sandbox.response_fd)
                if message is None:
                    raise _Exited()
                return message  # type: ignore[no-any-return]
            if remaining <= 0:
                return None

    @staticmethod
    def _timed_out(timeout: float) -> tuple[str, str]:
        return "Sandbox.Timedout", f"Task timed out after {timeout:.2f} seconds"

    # ---- housekeeping --------------------------------------------------------------------------
    def reap_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self._idle if now - s.idle_since > self.idle_seconds]
            self._idle = [s for s in self._idle if s not in stale]
        for sandbox in stale:
            sandbox.close(kill=True)
            self.account.give()

    def close(self) -> None:
        """Idle sandboxes and the template end on EOF; whatever still runs after a grace period is killed."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sandbox in idle:
            sandbox.close()  # EOF: the sandbox's loop ends and it exits (saving coverage, when measured)
            self.account.give()
        if self._control is not None:
            self._control.close()
        if self._template is not None:
            try:
                self._template.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            try:  # the template's process group: its busy sandboxes too (a hung handler, say)
                os.killpg(self._template.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._template.wait()


class _Exited(Exception):
    pass


_DEAD = object()


@dataclass
class _Run(InvokeResult):
    error_type: str = ""
    error_message: str = ""

    @classmethod
    def dead(cls, error_type: str, message: str, started: float) -> _Run:
        return cls(_DEAD, True, (time.monotonic() - started) * 1000, error_type=error_type, error_message=message)
