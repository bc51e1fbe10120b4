"""Step Functions for the embedded stack: moto's ASL interpreter, wired to the local Lambda service.

What this module changes in moto's interpreter, each for a reason:
1. `lambda:invoke` tasks call the Lambda service directly instead of through moto's Lambda HTTP API
   (about 28 ms per saga of serialization and HTTP on this machine).
2. A task's TimeoutSeconds does not count time the Lambda sandbox spent waiting for a CPU of this
   machine, as the Lambda timeout does not: on AWS the sandbox has its own CPU. Cold start delay, the
   handler's own time and throttling retries all count, as on AWS.
3. A definition is parsed once, not once per execution (9% of the engine's CPU). The parsed program is
   immutable: an execution's state lives in its Environment. Likewise each JSONPath: moto parses every
   path at every use (and so do EventBridge's input transformers), and jsonpath_ng builds a new ply
   parser for each parse (a third of the stack process's CPU per saga). A parsed path is not changed
   by find() or update_or_create().
4. The interpreter's boto3 clients (for the other service integrations) are created once per service.
5. The end of every execution is announced (`wait_for`), so a waiter needs no polling.
6. One execution per name, as on AWS. moto's StartExecution looks for an execution of that name, then
   (after deep-copying the state machine) appends a new one: two concurrent StartExecutions of one name
   both started. The saga's API starts the execution named after the order at every retry of a POST, so
   racing retries made two executions of one order. Here the look and the append are one step per name.
7. A stopped execution stays stopped. moto's interpreter skips every step of a program that no longer
   runs, its Catch included, so a task that failed just as StopExecution landed went on as uncaught, and
   its error replaced the stop: the execution ended FAILED with the task's error (a saga's first step
   refused with OrderNotActive, seen once when the reaper stopped the execution whose lease it took).
   On AWS a stopped execution is ABORTED. Here an error does not replace a stop or a time-out.
8. Names are reused after 90 days, as on AWS ("names can be reused after 90 days", StartExecution's API
   reference): a closed execution older than that is forgotten (its history is gone on AWS too), and a
   StartExecution of its name starts a new execution with the same ARN. moto refuses a closed name for ever.
   `NOW` is the clock this rule reads (the deterministic simulation sets its virtual clock there).
9. `$$.Execution.StartTime` is an ISO 8601 string, as on AWS. moto puts a datetime object in the context
   object, which no intrinsic function can format (States.Format failed with "Object of type datetime is
   not JSON serializable"). The saga's tasks get their execution's identity from it: `<ARN>#<StartTime>`.
10. RedriveExecution, as on AWS (sagalocal/redrive.py, which says how). moto has none: its server answers "not yet
   implemented". A FAILED, ABORTED or TIMED_OUT execution continues from its unsuccessful state, with that
   state's input, the definition it started with and the same ARN; an inline Map or a Parallel runs again only
   what did not succeed. DescribeExecution and ListExecutions give the redrive fields, ListExecutions filters on
   them, and the end of the redriven run is announced again (5). `redrive(arn)` does it in this process.
11. An execution's end is a "Step Functions Execution Status Change" event, as AWS sends one to the account's
   default EventBridge bus for every status change of a Standard execution. Here only the ends (SUCCEEDED,
   FAILED, TIMED_OUT, ABORTED; AWS also sends RUNNING at a start and at a redrive, not sent here), with
   executionArn, stateMachineArn (the unqualified one), name, status, startDate and stopDate in epoch
   milliseconds, input and output, error and cause, the redrive fields (redriveCount, redriveDate, redriveStatus)
   and, for a start on a version or an alias, stateMachineVersionArn and stateMachineAliasArn. `ENDED` holds who
   hears them: the embedded stack's EventBridge (sagalocal/eventbridge.py), or the simulation. The saga parks a
   saga on its execution's failure this way (functions/park_saga), reading none but the first seven.
12. GetExecutionHistory's answer is written without moto's generic response serializer, which spent ~2.4 ms of the
   stack's CPU on each event (it looks every member of the HistoryEvent shape, ~60 of them, up under six aliases in
   every event, and parses each event's ISO timestamp back with dateutil): 30 ms for a 13-event history, more than
   the saga's own steps, and the stack tier reads a history for each execution it checks. The events are already
   the API's shape (member names as keys), so each is written member by member by its shape (`wire`), with the
   serializer's rules for each type; the answer is the same (tests/unit/test_local_stepfunctions.py compares both
   on every kind of event).
13. The interpreter deep-copies the JSON it passes between states (each state's input, every path's result, the
   context object, every history event's details) with copy.deepcopy, whose generic dispatch was a twentieth of
   a simulated saga. Here its modules copy JSON (dicts, lists, strings, numbers, booleans, None) container by
   container, as copy.deepcopy copies it (shared containers stay shared in the copy, once each), and anything
   else through copy.deepcopy itself, with the same memo.
"""

from __future__ import annotations

import base64
import calendar
import copy
import datetime
import enum
import functools
import importlib
import json
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_installed: list[Any] = []
_ended: dict[str, threading.Event] = {}
_ended_lock = threading.Lock()
STALL_ATTRIBUTE = "sagalocal_stall"
NAME_REUSE_AFTER = datetime.timedelta(days=90)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


NOW: Callable[[], datetime.datetime] = _utcnow  # set on the task's frame: () -> seconds the sandbox waited for a CPU
ENDED: list[Callable[[dict[str, Any]], None]] = []  # who hears an execution's end: its status change event


def install(lambda_service: Any) -> None:
    """Install the patches (once per process) and route lambda:invoke to `lambda_service`."""
    with _lock:
        if _installed:
            _installed[0] = lambda_service
            return
        _installed.append(lambda_service)
        _interpreter_without_batch()
        _direct_lambda_dispatch()
        _timeouts_without_cpu_waits()
        _cache_parsed_definitions()
        _cache_parsed_json_paths()
        _cache_interpreter_clients()
        _announce_ends()
        _one_execution_per_name()
        _stop_is_final()
        _names_reused_after_90_days()
        _start_time_as_text()
        _history_without_the_generic_serializer()
        _redrive()
        _json_deep_copies()
        importlib.import_module("sagalocal.versions").install()  # state machine versions and aliases


def _service() -> Any:
    return _installed[0]


# ---- 12. JSON deep-copied as JSON ----------------------------------------------------------------------
_JSON_COPIERS = ("eval.states", "eval.environment", "eval.event.event_manager",
                 "component.common.string.string_expression", "component.common.path.result_path",
                 "component.state.exec.execute_state", "component.state.exec.state_task.service.state_task_service",
                 "component.state.exec.state_map.state_map", "component.state.exec.state_map.iteration.job",
                 "component.state.exec.state_parallel.state_parallel",
                 "component.intrinsic.function.statesfunction.json_manipulation.json_merge")


def _json_deep_copies() -> None:
    import types

    shim = types.ModuleType("copy")
    shim.__dict__.update(vars(copy))
    shim.deepcopy = json_deepcopy  # type: ignore[attr-defined]
    for name in _JSON_COPIERS:
        module = importlib.import_module(f"moto.stepfunctions.parser.asl.{name}")
        if getattr(module, "copy", None) is copy:
            module.copy = shim  # type: ignore[attr-defined]


def json_deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """copy.deepcopy(value), faster for JSON: the same copy (every dict and list new, each once however often it is
    shared, the values of other types copied by copy.deepcopy with the same memo)."""
    return copy.deepcopy(value, memo) if memo is not None else _json_copy(value, {})


def _json_copy(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        copied = memo.get(id(value))
        if copied is None:
            copied = memo[id(value)] = {}
            for key, nested in value.items():
                copied[_json_copy(key, memo)] = _json_copy(nested, memo)
        return copied
    if kind is list:
        copied = memo.get(id(value))
        if copied is None:
            copied = memo[id(value)] = []
            for nested in value:
                copied.append(_json_copy(nested, memo))
        return copied
    return copy.deepcopy(value, memo)


# ---- 0. the interpreter without moto's Batch and EC2 --------------------------------------------------
def _interpreter_without_batch() -> None:
    """moto's ASL interpreter imports `moto.batch.utils` for one enum (JobStatus, of its Batch integration), and
    importing it runs `moto.batch`, which imports all of moto's EC2: 1.4 CPU-s in every process that interprets a
    state machine (every stack, every simulation worker), for a service the template never calls. `moto.batch.utils`
    is loaded here under a bare stand-in of its package, which is then forgotten: a later `import moto.batch` (a
    Batch request, should one come) runs the real package."""
    import importlib.util
    import sys
    import types

    if "moto.batch.utils" in sys.modules or "moto.batch" in sys.modules:
        return
    spec = importlib.util.find_spec("moto.batch")
    if spec is None or not spec.submodule_search_locations:
        return
    stand_in = types.ModuleType("moto.batch")
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["moto.batch"] = stand_in
    try:
        importlib.import_module("moto.batch.utils")
    finally:
        del sys.modules["moto.batch"]


# ---- 1. lambda:invoke without HTTP ---------------------------------------------------------------
def _direct_lambda_dispatch() -> None:
    from moto.stepfunctions.parser.api import InvocationResponse
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.utilities.collections import select_from_typed_dict

    def execute_lambda_function_integration(env: Any, parameters: dict[str, Any], region: str,
                                            state_credentials: Any) -> None:
        if env.is_mocked_mode():
            response = lambda_eval_utils._mocked_invoke_lambda_function(env=env)
        else:
            response = _service().invoke_for_states(parameters, watch=_watcher(env))
        if response.get("FunctionError"):
            raise lambda_eval_utils.LambdaFunctionErrorException(
                response["FunctionError"], lambda_eval_utils.to_json_str(response["Payload"]))
        env.stack.append(select_from_typed_dict(typed_dict=InvocationResponse, obj=response))

    def exec_lambda_function(env: Any, parameters: dict[str, Any], region: str, account: str,
                             credentials: Any) -> None:
        response = _service().invoke_for_states(parameters, watch=_watcher(env))
        if response.get("FunctionError"):
            raise lambda_eval_utils.LambdaFunctionErrorException(
                response["FunctionError"], lambda_eval_utils.to_json_str(response["Payload"]))
        env.stack.append(response)

    lambda_eval_utils.execute_lambda_function_integration = execute_lambda_function_integration
    lambda_eval_utils.exec_lambda_function = exec_lambda_function


def _watcher(env: Any) -> Callable[[Callable[[], float]], None]:
    def watch(stall: Callable[[], float]) -> None:
        setattr(env, STALL_ATTRIBUTE, stall)

    return watch


# ---- 2. task timeouts in the sandbox's own time --------------------------------------------------
def _timeouts_without_cpu_waits() -> None:
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import EvalTimeoutError
    from moto.stepfunctions.parser.asl.component.state.exec.execute_state import ExecutionState
    from moto.stepfunctions.parser.utils import TMP_THREADS

    def _evaluate_with_timeout(self: Any, env: Any) -> None:
        """moto's ExecutionState._evaluate_with_timeout, with the wait extended by the sandbox's CPU waits."""
        import time

        self.timeout.eval(env=env)
        timeout_seconds: float = env.stack.pop()
        frame = env.open_frame()
        frame.states.reset(input_value=env.states.get_input())
        frame.stack = copy.deepcopy(env.stack)
        outputs: list[Any] = []
        exceptions: list[Exception | None] = [None]
        done = threading.Event()

        def run() -> None:
            try:
                self._eval_execution(frame)
                outputs.extend(frame.stack)
            except Exception as ex:  # noqa: BLE001 - re-raised in the state's thread below
                exceptions.append(ex)
            done.set()

        thread = threading.Thread(target=run, daemon=True)
        TMP_THREADS.append(thread)
        thread.start()
        started = time.monotonic()
        finished = False
        while True:
            stall = getattr(frame, STALL_ATTRIBUTE, None)
            remaining = timeout_seconds + (stall() if stall else 0.0) - (time.monotonic() - started)
            if remaining <= 0:
                break
            if done.wait(min(remaining, 0.5)):
                finished = True
                break
        frame.set_ended()
        env.close_frame(frame)
        exception = exceptions.pop()
        if exception:
            raise exception
        if not finished:
            raise EvalTimeoutError()
        finish_task_state(self, env, outputs.pop())

    ExecutionState._evaluate_with_timeout = _evaluate_with_timeout  # type: ignore[method-assign]


def finish_task_state(state: Any, env: Any, output: Any) -> None:
    """The end of moto's ExecutionState._evaluate_with_timeout once the task produced `output`: the result, its
    Assign, ResultSelector and ResultPath (or the output as the state's new input)."""
    env.stack.append(output)
    if not state._is_language_query_jsonpath():
        env.states.set_result(output)
    if state.assign_decl:
        state.assign_decl.eval(env=env)
    if state.result_selector:
        state.result_selector.eval(env=env)
    if state.result_path:
        state.result_path.eval(env)
    else:
        env.states.reset(input_value=env.stack.pop())


# ---- 3. and 4. parse once (definitions and JSONPaths), one client per service ------------------------
def _cache_parsed_definitions() -> None:
    from moto.stepfunctions.parser import models
    from moto.stepfunctions.parser.backend import execution_worker

    parse = functools.lru_cache(maxsize=64)(execution_worker.AmazonStateLanguageParser.parse)

    def entrypoint(self: Any) -> Any:
        return parse(self._evaluation_details.state_machine_details.definition)[0]

    execution_worker.ExecutionWorker._get_evaluation_entrypoint = entrypoint  # type: ignore[method-assign]
    # CreateStateMachine (and UpdateStateMachine) validate a definition by parsing it: with the same cache, the first
    # execution does not parse it again (~0.2 CPU-s for the saga's, at every stack's start). A definition that does
    # not parse raises as before (an exception is not cached).
    validate = models.StepFunctionsParserBackend._validate_definition

    def validate_definition(definition: str) -> None:
        if isinstance(definition, str):
            try:
                parse(definition)
                return
            except Exception:  # noqa: BLE001, S110 - moto's own validation says why, in its own words
                pass
        validate(definition=definition)

    models.StepFunctionsParserBackend._validate_definition = staticmethod(validate_definition)  # type: ignore[method-assign]


def _cache_parsed_json_paths() -> None:
    """jsonpath_ng's two parse functions, cached; moto's modules that bound them at import, rebound. EventBridge's
    input transformer (moto/events/utils.py) imports jsonpath_ng.ext's at each call, so it gets the cached one."""
    import jsonpath_ng
    import jsonpath_ng.ext
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    for package, users in ((jsonpath_ng, [result_path]), (jsonpath_ng.ext, [json_path])):
        parse = functools.lru_cache(maxsize=4096)(package.parse)
        for module in (package, *users):
            module.parse = parse  # type: ignore[attr-defined]


def _cache_interpreter_clients() -> None:
    from moto.stepfunctions.parser.asl.utils import boto_client

    original = boto_client.boto_client_for
    clients: dict[tuple[str, str], Any] = {}
    clients_lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        with clients_lock:
            if (region, service) not in clients:
                clients[(region, service)] = original(region=region, service=service,
                                                      state_credentials=state_credentials)
            return clients[(region, service)]

    boto_client.boto_client_for = boto_client_for
    for name in ("state_task.lambda_eval_utils", "state_task.service.state_task_service_dynamodb",
                 "state_task.service.state_task_service_sqs", "state_task.service.state_task_service_sns",
                 "state_task.service.state_task_service_aws_sdk", "state_task.service.state_task_service_sfn",
                 "state_task.service.state_task_service_events"):
        module = importlib.import_module(f"moto.stepfunctions.parser.asl.component.state.exec.{name}")
        if getattr(module, "boto_client_for", None) is original:
            module.boto_client_for = boto_client_for  # type: ignore[attr-defined]


# ---- 5. ends, announced --------------------------------------------------------------------------
def _announce_ends() -> None:
    from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication

    original = BaseExecutionWorkerCommunication.terminated

    def terminated(self: Any) -> None:
        original(self)
        _event_for(str(self.execution.exec_arn)).set()
        if ENDED:
            event = status_change_event(self.execution)
            for listener in list(ENDED):
                listener(event)

    BaseExecutionWorkerCommunication.terminated = terminated  # type: ignore[method-assign]


def _event_for(arn: str) -> threading.Event:
    with _ended_lock:
        if arn not in _ended:
            if len(_ended) > 100_000:  # keep memory bounded on a long-running stack
                for old in list(_ended)[:50_000]:
                    del _ended[old]
            _ended[arn] = threading.Event()
        return _ended[arn]


def status_change_event(execution: Any) -> dict[str, Any]:
    """The EventBridge event AWS sends for an execution's current status (PutEvents' entry form)."""

    def ms(when: Any) -> int | None:
        return int(when.timestamp() * 1000) if isinstance(when, datetime.datetime) else None

    output = execution.output
    detail: dict[str, Any] = {
        "executionArn": str(execution.exec_arn), "stateMachineArn": str(execution.state_machine_arn),
        "name": execution.name, "status": str(getattr(execution.exec_status, "value", execution.exec_status)),
        "startDate": ms(execution.start_date), "stopDate": ms(execution.stop_date),
        "input": json.dumps(execution.input_data), "inputDetails": {"included": True},
        "output": None if output is None else json.dumps(output),
        "outputDetails": None if output is None else {"included": True},
    }
    if getattr(execution, "error", None) is not None or getattr(execution, "cause", None) is not None:
        detail.update(error=execution.error, cause=execution.cause)
    if hasattr(execution, "exec_worker"):  # an execution the interpreter ran: its redrive and version fields
        from sagalocal import redrive, versions

        fields = redrive.redrive_fields(execution, NOW())
        detail.update({k: ms(v) if k == "redriveDate" else v for k, v in fields.items()})
        detail.update(versions._started_on(execution))
    return {"Source": "aws.states", "DetailType": "Step Functions Execution Status Change",
            "Resources": [str(execution.exec_arn)], "Detail": json.dumps(detail)}


def wait_for(arn: str, timeout: float) -> bool:
    """Block until the execution has ended (True), or `timeout` seconds passed (False)."""
    return _event_for(arn).wait(timeout)


def rearm(arn: str) -> None:
    """The execution runs again (a redrive): `wait_for` waits for its next end. A waiter of the end before has
    been released already."""
    with _ended_lock:
        _ended[arn] = threading.Event()


# ---- 6. one execution per name -------------------------------------------------------------------
def _one_execution_per_name() -> None:
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original = StepFunctionsParserBackend.start_execution
    # Striped: names that differ seldom wait for each other. Re-entrant: the deterministic simulation runs an
    # execution inside its StartExecution, and a step of it may start the same name again (a resubmission).
    locks = [threading.RLock() for _ in range(64)]

    def start_execution(self: Any, state_machine_arn: str, name: Any = None, execution_input: Any = None,
                        trace_header: Any = None) -> Any:
        with locks[hash((state_machine_arn, name)) % len(locks)]:
            return original(self, state_machine_arn, name, execution_input, trace_header)

    StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign]


# ---- 7. a stop is final --------------------------------------------------------------------------
def _stop_is_final() -> None:
    from moto.stepfunctions.parser.asl.eval.environment import Environment
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped, ProgramTimedOut

    original = Environment.set_error

    def set_error(self: Any, error: Any) -> None:
        with self._state_mutex:  # an RLock, taken again by moto's set_error
            if isinstance(self.program_state(), ProgramStopped | ProgramTimedOut):
                return  # ended already: the error is a pruned step's, as though uncaught
            original(self, error)

    Environment.set_error = set_error  # type: ignore[method-assign]


# ---- 8. names reused after 90 days ---------------------------------------------------------------
def _names_reused_after_90_days() -> None:
    from moto.stepfunctions.models import StateMachine

    original = StateMachine._handle_name_input_idempotency

    def handle_name_input_idempotency(self: Any, name: str, execution_input: str) -> Any:
        freed_before = NOW() - NAME_REUSE_AFTER
        self.executions[:] = [e for e in self.executions
                              if not (e.name == name and getattr(e, "stop_date", None) is not None
                                      and e.stop_date < freed_before)]
        return original(self, name, execution_input)

    StateMachine._handle_name_input_idempotency = handle_name_input_idempotency  # type: ignore[method-assign]


# ---- 9. $$.Execution.StartTime as text -----------------------------------------------------------
def _start_time_as_text() -> None:
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    original = ExecutionWorker._get_evaluation_environment

    def get_evaluation_environment(self: Any) -> Any:
        env = original(self)
        execution = env.states.context_object.context_object_data["Execution"]
        started = execution.get("StartTime")
        if isinstance(started, datetime.datetime):
            execution["StartTime"] = started.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z")
        return env

    ExecutionWorker._get_evaluation_environment = get_evaluation_environment  # type: ignore[method-assign]


# ---- 12. GetExecutionHistory without the generic serializer ---------------------------------------------
def _history_without_the_generic_serializer() -> None:
    from moto.core.utils import get_service_model
    from moto.stepfunctions.responses import StepFunctionResponse

    original = StepFunctionResponse.get_execution_history
    if getattr(original, "moto", None) is not None:
        return

    def get_execution_history(self: Any) -> Any:
        output = self.stepfunction_backend.get_execution_history(self._get_param("executionArn"))
        shape = get_service_model("stepfunctions").operation_model("GetExecutionHistory").output_shape
        try:
            body = json.dumps(wire(output, shape))
        except (AttributeError, TypeError, ValueError):  # not the shape wire() knows: moto's serializer writes it
            return original(self)
        return body, {"Content-Type": "application/x-amz-json-1.0"}

    get_execution_history.moto = original  # type: ignore[attr-defined]  # (the test compares the two)
    StepFunctionResponse.get_execution_history = get_execution_history  # type: ignore[method-assign]


def wire(value: Any, shape: Any) -> Any:
    """`value` (a dict keyed by the shape's member names, for a structure) as moto's JSON serializer writes it for
    `shape`: members that are None or not in the shape left out; strings (an Enum's value) as text, integers and
    floats converted, timestamps as epoch seconds to the millisecond, blobs in base64; lists, maps and documents
    item by item."""
    kind = shape.type_name
    if kind == "structure":
        if shape.is_document_type:
            return value
        members = shape.members
        return {member.serialization.get("name", key): wire(item, member) for key, item in value.items()
                if item is not None and (member := members.get(key)) is not None}
    if kind == "list":
        return [item if item is None else wire(item, shape.member) for item in value]
    if kind == "map":  # (a None is kept, as text would be, but for a structure)
        return {key: item if item is None else wire(item, shape.value) for key, item in value.items()
                if item is not None or shape.value.type_name != "structure"}
    if kind == "string":
        if isinstance(value, enum.Enum):
            value = value.value
        return value if value in (None, {}, []) else str(value)
    if kind == "timestamp":
        return _epoch_seconds(value)
    if kind in ("integer", "long"):
        return int(value)
    if kind in ("float", "double"):
        return float(value)
    if kind == "blob":
        return base64.b64encode(value.encode() if isinstance(value, str) else value).strip().decode()
    return value


def _epoch_seconds(value: Any) -> int | float:
    """A timestamp as moto's serializer writes it in JSON (unixtimestamp): whole seconds, plus milliseconds if any."""
    if isinstance(value, str) and value.endswith("Z") and "T" in value:
        when = datetime.datetime.fromisoformat(value)  # the interpreter's own form: 2026-01-31T12:00:00.123Z
    else:
        from botocore.utils import parse_to_aware_datetime

        when = parse_to_aware_datetime(value)
    when = when.astimezone(datetime.UTC) if when.tzinfo is not None else when
    seconds = calendar.timegm(when.timetuple())
    return seconds + (when.microsecond // 1000) / 1000.0 if when.microsecond else seconds


# ---- 10. RedriveExecution --------------------------------------------------------------------------------
def _redrive() -> None:
    from sagalocal import redrive as engine

    engine.install()


def redrive(execution_arn: str, client_token: str | None = None) -> datetime.datetime:
    """RedriveExecution in this process, without HTTP: the moto backend of the ARN's account and region, as
    StepFunctionResponse.redrive_execution calls it. Returns the redrive's date; raises what the API returns
    (ExecutionDoesNotExist, ExecutionNotRedrivable, InvalidArn). Needs `install` first. In the simulation's
    World the redriven run runs in this thread, and this returns when it has ended."""
    from moto.stepfunctions.responses import get_backend

    region, account = execution_arn.split(":")[3:5]
    backend: Any = get_backend(account, region)
    return backend.redrive_execution(execution_arn, client_token=client_token)
