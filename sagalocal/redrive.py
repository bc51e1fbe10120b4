"""RedriveExecution in the embedded engine, as AWS does it (patch 10 of sagalocal/stepfunctions.py).

moto 5.2.5 has no RedriveExecution: its server answers "not yet implemented", and its interpreter runs an
execution once. Here a redrive continues a FAILED, ABORTED or TIMED_OUT execution of a STANDARD state machine
where it stopped, as AWS's RedriveExecution does (API reference, and the developer guide's "Restarting state
machine executions with redrive"):

- From the unsuccessful state: the top-level state whose StateEntered event has no StateExited after it, with
  the input that event recorded. The states before it are not run again; their events stay in the history. A
  Fail state is such a state too: AWS "reenters the Fail state and fails again" (the guide's table of redrive
  behaviours). With no state open (an execution stopped between two states), the run continues at the state
  after the last one that exited (a Choice is evaluated again), or at StartAt if none ran.
- With the definition the execution ran (the snapshot moto took at StartExecution, not the state machine's
  current one), the same ARN, the same $$.Execution.Input and StartTime, and the variables as they were.
- As a new run of the interpreter: fresh Retry counters, the state machine's TimeoutSeconds counted from the
  redrive ("reset to 0"), a task's TimeoutSeconds too.
- An inline Map or a Parallel that failed runs again only the iterations or branches that did not succeed
  ("reschedules and redrives only those iterations that failed or aborted"): the outputs of those that did,
  recorded as they ended, are kept, and the state's output is assembled in item order. Not when the execution
  failed with a data-limit error: then the whole state runs again, as on AWS.
- The history goes on in the same list: an ExecutionRedriven event (its details carry the new redriveCount),
  then the run's events. DescribeExecution gives redriveCount, redriveDate, redriveStatus and its reason;
  ListExecutions gives redriveCount and redriveDate and takes redriveFilter; $$.Execution.RedriveCount is 0 on
  the first run and n after the n-th redrive ($$.Execution.RedriveTime, once redriven).
- A clientToken used for one of the execution's last 10 redrives, within 15 minutes of its first use, gets
  that redrive's answer again and redrives nothing.

One lock orders a redrive's switch of the execution (its worker, status, dates, error) against StopExecution,
an execution's end (its status and the announcement `wait_for` waits on) and DescribeExecution, so none of
them sees or leaves a half-switched execution, and a second redrive of a RUNNING execution is refused. The
lock is never held while a state runs: the deterministic simulation runs a redriven execution inside its
RedriveExecution, as it runs an execution inside its StartExecution.
"""

from __future__ import annotations

import copy
import datetime
import json
import threading
from typing import Any

from moto.core.exceptions import AWSError
from moto.stepfunctions.parser.api import ExecutionStatus, HistoryEventType, StateMachineType
from moto.stepfunctions.parser.asl.component.common.flow.start_at import StartAt
from moto.stepfunctions.parser.asl.component.program.program import Program
from moto.stepfunctions.parser.asl.component.state.choice.state_choice import StateChoice
from moto.stepfunctions.parser.asl.component.state.state_continue_with import ContinueWithNext
from moto.stepfunctions.parser.asl.eval.event.event_manager import EventHistoryContext, EventManager
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

REDRIVABLE_PERIOD = datetime.timedelta(days=14)  # "the redrivable period of 14 days", from the execution's end
MAX_OPEN_TIME = datetime.timedelta(days=365)  # "the maximum open time of one year"
HISTORY_LIMIT = 24_999  # "the execution event history count is less than 24,999"
TOKEN_VALID_FOR = datetime.timedelta(minutes=15)  # clientToken: "valid for up to 15 minutes after first used"
TOKENS_KEPT = 10  # "the last 10 client tokens used to successfully redrive the execution"
LAUNCH = datetime.datetime(2023, 11, 15, tzinfo=datetime.UTC)  # executions started before it are not redrivable
DATA_LIMIT_ERROR = "States.DataLimitExceeded"  # a Map or Parallel that failed so runs again whole
ENDS = ("ExecutionFailed", "ExecutionAborted", "ExecutionTimedOut", "ExecutionSucceeded")

_lock = threading.RLock()  # a redrive's switch, a stop, an end and a description, one at a time
_runs_lock = threading.Lock()  # the recorded results of Map iterations and Parallel branches


class ExecutionNotRedrivable(AWSError):
    TYPE = "ExecutionNotRedrivable"
    STATUS = 400


def install() -> None:
    """The patches (stepfunctions.install calls this once per process, after its own). ListExecutions' redrive
    filter and fields live in sagalocal/versions.py's ListExecutions (one patch of it, whichever installs first)."""
    from sagalocal import versions

    versions.install()
    _redrive_count_in_context()
    _map_keeps_successful_iterations()
    _parallel_keeps_successful_branches()
    _switches_under_the_lock()
    _api()


# ---- the redrive -------------------------------------------------------------------------------------------
def redrive_execution(backend: Any, execution_arn: str, client_token: str | None = None) -> datetime.datetime:
    """RedriveExecution on `backend` (a moto Step Functions backend): the redrive's date. The redriven run starts
    in a thread of its own (in the simulation's World: in this one, and this returns when it has ended)."""
    from sagalocal import stepfunctions

    execution = backend.describe_execution(execution_arn)  # InvalidArn, ExecutionDoesNotExist
    with _lock:
        now = stepfunctions.NOW()
        tokens = _tokens(execution, now)
        if client_token and client_token in tokens:
            return tokens[client_token][1]
        reason = not_redrivable_because(execution, now)
        if reason is not None:
            raise ExecutionNotRedrivable(reason)
        count = redrive_count(execution) + 1
        worker = _prepare(execution, count, now)
        execution.exec_worker = worker
        execution.exec_status = ExecutionStatus.RUNNING
        execution.stop_date = execution.output = execution.error = execution.cause = None
        execution.sagalocal_redrive_count = count
        execution.sagalocal_redrive_date = now
        if client_token:
            tokens[client_token] = (now, now)
            for old in list(tokens)[:-TOKENS_KEPT]:
                del tokens[old]
        stepfunctions.rearm(str(execution.exec_arn))
    worker.start()
    return now


def redrive_count(execution: Any) -> int:
    return int(getattr(execution, "sagalocal_redrive_count", 0))


def not_redrivable_because(execution: Any, now: datetime.datetime) -> str | None:
    """Why RedriveExecution refuses `execution` now (DescribeExecution's redriveStatusReason), or None."""
    if getattr(execution, "exec_worker", None) is None:  # moto's other backend, or not started yet
        status = str(getattr(execution, "status", "RUNNING"))
        if status in ("RUNNING", "SUCCEEDED"):
            return f"Execution is {status} and cannot be redriven"
        return "Only an execution the interpreter ran can be redriven (execute_state_machine)"
    if execution.sm_type == StateMachineType.EXPRESS:
        return "RedriveExecution is not supported by EXPRESS state machines"
    status = execution.exec_status.value if execution.exec_status is not None else "RUNNING"
    if status in ("RUNNING", "SUCCEEDED"):
        return f"Execution is {status} and cannot be redriven"
    if execution.start_date < LAUNCH:
        return "Execution was started before the launch of RedriveExecution"
    if now - execution.start_date >= MAX_OPEN_TIME:
        return "Execution has exceeded the max execution time"
    if execution.stop_date is not None and now - execution.stop_date >= REDRIVABLE_PERIOD:
        return "Execution redrivable period exceeded"
    env = execution.exec_worker.env
    if env is not None and len(env.event_manager._history_event_list) >= HISTORY_LIMIT:
        return "Execution history event limit exceeded"
    return None


def redrive_fields(execution: Any, now: datetime.datetime) -> dict[str, Any]:
    """DescribeExecution's redrive fields."""
    fields: dict[str, Any] = {"redriveCount": redrive_count(execution)}
    if getattr(execution, "sagalocal_redrive_date", None) is not None:
        fields["redriveDate"] = execution.sagalocal_redrive_date
    reason = not_redrivable_because(execution, now)
    fields["redriveStatus"] = "REDRIVABLE" if reason is None else "NOT_REDRIVABLE"
    if reason is not None:
        fields["redriveStatusReason"] = reason
    return fields


def _tokens(execution: Any, now: datetime.datetime) -> dict[str, tuple[datetime.datetime, datetime.datetime]]:
    """The execution's redrive tokens still valid: token -> (first used, the redrive's date)."""
    tokens = execution.__dict__.setdefault("sagalocal_redrive_tokens", {})
    for token, (first_used, _) in list(tokens.items()):
        if now - first_used >= TOKEN_VALID_FOR:
            del tokens[token]
    return tokens


class _RedriveWorker(ExecutionWorker):
    """A run of an execution's interpreter that starts at a given state of a prepared environment."""

    program: Program

    def _execution_logic(self) -> None:
        env = self.env
        try:
            self.program.eval(env)
        except RuntimeError:  # stopped between the redrive and this thread's start: the program cannot begin
            if env.is_running():
                raise
            self.program._eval_body(env)  # runs no state: records the end (ExecutionAborted)
        self._execution_communication.terminated()


def _prepare(execution: Any, count: int, now: datetime.datetime) -> _RedriveWorker:
    """The worker of the redriven run: its environment ready to run the unsuccessful state, the history gone on
    with the ExecutionRedriven event."""
    old = execution.exec_worker
    worker = _RedriveWorker(evaluation_details=old._evaluation_details, exec_comm=old._execution_communication,
                            cloud_watch_logging_session=old._cloud_watch_logging_session,
                            activity_store=old._activity_store, mock_test_case=old._mock_test_case)
    program = worker._get_evaluation_entrypoint()  # the execution's own definition
    old_history = old.env.event_manager
    history = _copy_of(old_history)
    events = history._history_event_list
    if execution.exec_status == ExecutionStatus.TIMED_OUT and (not events or _type(events[-1]) not in ENDS):
        # moto records ExecutionTimedOut when the state that was running returns, which it may not have yet
        history.add_event(context=EventHistoryContext(previous_event_id=events[-1]["id"] if events else 0),
                          event_type=HistoryEventType.ExecutionTimedOut,
                          event_details={"executionTimedOutEventDetails": {}})
    point = resume_point(events, program, execution.input_data)
    if point is None:
        raise ExecutionNotRedrivable("Execution has no unsuccessful state to redrive")
    name, state_input = point

    env = worker._get_evaluation_environment()
    context = env.states.context_object.context_object_data["Execution"]
    context["RedriveCount"] = count
    context["RedriveTime"] = now.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    env.event_manager = history
    env.variable_store = old.env.variable_store  # the variables the states before assigned
    env.event_history_context = EventHistoryContext(previous_event_id=events[-1]["id"] if events else 0)
    history.add_event(context=env.event_history_context, event_type=HistoryEventType.ExecutionRedriven,
                      event_details={"executionRedrivenEventDetails": {"redriveCount": count}}, timestamp=now)
    env.states.reset(input_value=state_input)
    env.next_state_name = name  # running from now: a StopExecution before the thread starts stops it

    if execution.error != DATA_LIMIT_ERROR:
        record = _runs(old_history).get(name) or (getattr(old_history, "sagalocal_keep", None) or {}).get(name)
        if record:
            with _runs_lock:
                history.sagalocal_keep = {name: dict(record)}  # type: ignore[attr-defined]
    worker.env = env
    worker.program = Program(query_language=program.query_language, start_at=StartAt(name), states=program.states,
                             timeout_seconds=program.timeout_seconds, comment=program.comment,
                             version=program.version)
    return worker


def _copy_of(history: EventManager) -> EventManager:
    """A new event manager with `history`'s events: the redriven run appends to it. (A run that timed out may
    still be running its last state in moto's thread; what that thread records goes to the old one.)"""
    copied = EventManager(cloud_watch_logging_session=history._cloud_watch_logging_session)
    with history._mutex:
        copied._history_event_list.extend(copy.deepcopy(history._history_event_list))
        copied._event_id_gen._next_id = history._event_id_gen._next_id
    return copied


def _type(event: dict[str, Any]) -> str:
    return str(getattr(event["type"], "value", event["type"]))


def resume_point(events: list[dict[str, Any]], program: Program, execution_input: Any) -> tuple[str, Any] | None:
    """(state, input) where a redrive continues: the top-level state entered and not exited (the last such, in a
    history of several runs), with the input it was entered with. If none: the state after the last one that
    exited (a Choice again, with its input), or StartAt with the execution's input if no state ran; None if the
    last state that exited ended the execution."""
    states = program.states.states
    entered: dict[str, tuple[int, Any]] = {}
    inputs: dict[str, Any] = {}
    last_exit: tuple[str, Any] | None = None
    for event in events:
        kind = _type(event)
        if kind.endswith("StateEntered"):
            details = event.get("stateEnteredEventDetails") or {}
            if details.get("name") in states:
                value = json.loads(details.get("input") or "null")
                entered[details["name"]] = (int(event["id"]), value)
                inputs[details["name"]] = value
        elif kind.endswith("StateExited"):
            details = event.get("stateExitedEventDetails") or {}
            if details.get("name") in states:
                entered.pop(details["name"], None)
                last_exit = (details["name"], json.loads(details.get("output") or "null"))
    if entered:
        name = max(entered, key=lambda n: entered[n][0])
        return name, entered[name][1]
    if last_exit is None:
        return program.start_at.start_at_name, execution_input
    name, output = last_exit
    state = states[name]
    if isinstance(state, StateChoice):
        return name, inputs.get(name, output)
    continue_with = state.continue_with
    if isinstance(continue_with, ContinueWithNext) and getattr(continue_with, "next_state", None) is not None:
        return continue_with.next_state.name, output
    return None


# ---- Map iterations and Parallel branches that succeeded ----------------------------------------------------
def _runs(history: EventManager) -> dict[str, dict[int, tuple[Any, Any]]]:
    """Per Map or Parallel state of the execution, its last run's successful iterations or branches:
    index -> (its input, its output). Kept on the execution's event manager, which every frame shares."""
    runs = getattr(history, "sagalocal_runs", None)
    if runs is None:
        with _runs_lock:
            runs = history.__dict__.setdefault("sagalocal_runs", {})
    return runs


def _begin_run(env: Any, state_name: str | None, inputs: list[Any]) -> tuple[dict[int, Any], dict[int, Any]]:
    """A Map's or Parallel's run begins: what it keeps of the run before a redrive (index -> output; for the
    first run of the redriven state only, and only where the input is the same), and the record of this run."""
    history = env.event_manager
    kept: dict[int, Any] = {}
    with _runs_lock:
        pending = getattr(history, "sagalocal_keep", None)
        if pending and state_name in pending:
            for index, (item, output) in pending.pop(state_name).items():
                if index < len(inputs) and inputs[index] == item:
                    kept[index] = output
        record = {index: (inputs[index], output) for index, output in kept.items()}
    runs = _runs(history)
    with _runs_lock:
        runs[str(state_name)] = record
    return kept, record


def _map_keeps_successful_iterations() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import iteration_worker
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.inline_iteration_component import (
        InlineIterationComponent,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.job import JobClosed, JobPool
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.max_concurrency import (
        DEFAULT_MAX_CONCURRENCY_VALUE,
    )

    def eval_body(self: Any, env: Any) -> None:
        """moto's InlineIterationComponent._eval_body, with the iterations kept from before a redrive closed
        already and every iteration that succeeds recorded."""
        eval_input = env.stack.pop()
        max_concurrency: int = eval_input.max_concurrency
        input_items: list[Any] = eval_input.input_items
        job_pool = JobPool(job_program=self._get_iteration_program(), job_inputs=input_items)
        kept, record = _begin_run(env, eval_input.state_name, input_items)
        if kept:
            with job_pool._mutex:
                job_pool._open_jobs[:] = [job for job in job_pool._open_jobs if job.job_index not in kept]
                for index, output in kept.items():
                    job_pool._closed_jobs.add(JobClosed(job_index=index, job_output=copy.deepcopy(output)))
        job_pool.sagalocal_record = record  # type: ignore[attr-defined]
        workers = len(input_items) if max_concurrency == DEFAULT_MAX_CONCURRENCY_VALUE else max_concurrency
        for _ in range(workers):
            self._launch_worker(env=env, eval_input=eval_input, job_pool=job_pool)
        job_pool.await_jobs()
        worker_exception = job_pool.get_worker_exception()
        if worker_exception is not None:
            raise worker_exception
        env.stack.append([closed_job.job_output for closed_job in job_pool.get_closed_jobs()])

    InlineIterationComponent._eval_body = eval_body  # type: ignore[method-assign]

    original_eval_job = iteration_worker.IterationWorker._eval_job

    def eval_job(self: Any, env: Any, job: Any) -> None:
        original_eval_job(self, env, job)
        record = getattr(self._job_pool, "sagalocal_record", None)
        if record is not None and not isinstance(job.job_output, Exception):
            with _runs_lock:
                record[job.job_index] = (job.job_input, job.job_output)

    iteration_worker.IterationWorker._eval_job = eval_job  # type: ignore[method-assign]


def _parallel_keeps_successful_branches() -> None:
    from moto.stepfunctions.parser.api import HistoryEventType as EventType
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_parallel import branches_decl
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramEnded

    def eval_body(self: Any, env: Any) -> None:
        """moto's BranchesDecl._eval_body, with the branches kept from before a redrive not started again and
        every branch that succeeds recorded."""
        input_val = env.stack.pop()
        state = env.states.context_object.context_object_data.get("State") or {}
        kept, record = _begin_run(env, state.get("Name"), [input_val] * len(self.programs))
        pool = branches_decl.BranchWorkerPool(workers_num=len(self.programs) - len(kept))
        workers: dict[int, Any] = {}
        for index, program in enumerate(self.programs):
            if index in kept:
                continue
            frame = env.open_inner_frame()
            frame.states.reset(input_value=input_val)
            workers[index] = branches_decl.BranchWorker(branch_worker_comm=pool, program=program, env=frame)
            workers[index].start()
        if workers:
            pool.wait()
        for index, worker in workers.items():
            if isinstance(worker.env.program_state(), ProgramEnded):
                with _runs_lock:
                    record[index] = (input_val, worker.env.states.get_input())
        exit_event_details = pool.get_exit_event_details()
        if exit_event_details is not None:
            for worker in workers.values():
                worker.stop(stop_date=datetime.datetime.now(), cause=None, error=None)
                env.close_frame(worker.env)
            raise FailureEventException(failure_event=FailureEvent(
                env=env, error_name=CustomErrorName(error_name=exit_event_details.get("error")),
                event_type=EventType.ExecutionFailed,
                event_details={"executionFailedEventDetails": exit_event_details}))
        results = []
        for index in range(len(self.programs)):
            if index in kept:
                results.append(copy.deepcopy(kept[index]))
            else:
                results.append(workers[index].env.states.get_input())
                env.close_frame(workers[index].env)
        env.stack.append(results)

    branches_decl.BranchesDecl._eval_body = eval_body  # type: ignore[method-assign]


# ---- the context object, the lock, the API ------------------------------------------------------------------
def _redrive_count_in_context() -> None:
    """$$.Execution.RedriveCount is 0 on an execution's first run (a redriven run sets its own)."""
    original = ExecutionWorker._get_evaluation_environment

    def get_evaluation_environment(self: Any) -> Any:
        env = original(self)
        env.states.context_object.context_object_data["Execution"].setdefault("RedriveCount", 0)
        return env

    ExecutionWorker._get_evaluation_environment = get_evaluation_environment  # type: ignore[method-assign]


def _switches_under_the_lock() -> None:
    from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication, Execution

    terminated = BaseExecutionWorkerCommunication.terminated  # moto's, and patch 5's announcement

    def terminated_under_lock(self: Any) -> None:
        with _lock:
            terminated(self)

    BaseExecutionWorkerCommunication.terminated = terminated_under_lock  # type: ignore[method-assign]

    stop = Execution.stop

    def stop_under_lock(self: Any, *args: Any, **kwargs: Any) -> None:
        with _lock:
            stop(self, *args, **kwargs)

    Execution.stop = stop_under_lock  # type: ignore[method-assign]


def list_item_fields(execution: Any) -> dict[str, Any]:
    """ListExecutions' redrive fields of one execution (redriveCount; redriveDate once redriven)."""
    if not _interpreted(execution):
        return {}
    fields: dict[str, Any] = {"redriveCount": redrive_count(execution)}
    if getattr(execution, "sagalocal_redrive_date", None) is not None:
        fields["redriveDate"] = execution.sagalocal_redrive_date
    return fields


def matches_redrive_filter(execution: Any, redrive_filter: str | None) -> bool:
    """ListExecutions' redriveFilter: REDRIVEN, NOT_REDRIVEN, or none."""
    return not redrive_filter or (redrive_count(execution) > 0) == (redrive_filter == "REDRIVEN")


def _interpreted(execution: Any) -> bool:
    from moto.stepfunctions.parser.backend.execution import Execution

    return isinstance(execution, Execution)


def _api() -> None:
    from moto.core.responses import ActionResult
    from moto.stepfunctions.models import StepFunctionBackend
    from moto.stepfunctions.responses import StepFunctionResponse

    from sagalocal import stepfunctions

    def redrive_execution_of_backend(self: Any, execution_arn: str, client_token: str | None = None) -> Any:
        return redrive_execution(self, execution_arn, client_token)

    StepFunctionBackend.redrive_execution = redrive_execution_of_backend  # type: ignore[attr-defined]

    def redrive_execution_response(self: Any) -> ActionResult:
        date = self.stepfunction_backend.redrive_execution(self._get_param("executionArn"),
                                                           client_token=self._get_param("clientToken"))
        return ActionResult({"redriveDate": date})

    StepFunctionResponse.redrive_execution = redrive_execution_response  # type: ignore[attr-defined]


    describe_execution = StepFunctionResponse.describe_execution

    def describe_execution_response(self: Any) -> ActionResult:
        with _lock:
            result = describe_execution(self)
            execution = self.stepfunction_backend.describe_execution(self._get_param("executionArn"))
            if _interpreted(execution):
                result.result.update(redrive_fields(execution, stepfunctions.NOW()))  # type: ignore[attr-defined]
        return result

    StepFunctionResponse.describe_execution = describe_execution_response  # type: ignore[method-assign]
