"""State machine versions and aliases for the embedded stack: moto 5.2.5 has their models, not their behaviour.

Installed by `sagalocal.stepfunctions.install()`. What moto does, and what this changes, each for a reason:
1. StartExecution on a version ARN appended the execution to the version's own list, where DescribeExecution
   (which looks executions up through the state machine) never finds it; on an alias ARN it failed with
   StateMachineDoesNotExist. Here both run the version's definition (an alias picks one of its one or two versions
   by their weights, as AWS routes a start), and the execution belongs to the state machine: one namespace of names
   per state machine whatever ARN started it (the idempotency rules and the 90 days apply across them), and its
   ARN is the unqualified `execution:<machine>:<name>` (the API reference's ExecutionListItem and the developer
   guide's "How Step Functions associates executions with a version or alias").
2. DescribeExecution and ListExecutions say which version and alias an execution was started on
   (stateMachineVersionArn, stateMachineAliasArn: both for an alias, the version only for a version, neither for
   the unqualified ARN); ListExecutions on a version or alias ARN lists the executions started on it.
3. DescribeStateMachineForExecution returns the definition the execution ran. moto returned the state machine's
   current one, which after an update is not what an older execution runs.
4. PublishStateMachineVersion and ListStateMachineVersions exist (moto has only CreateStateMachine's and
   UpdateStateMachine's `publish`). Publishing a revision that is already the latest version returns that version.
"""

from __future__ import annotations

import datetime
import random
import threading
import uuid
from typing import Any

_locks = [threading.RLock() for _ in range(64)]  # one namespace of names per state machine; re-entrant (the sim)
_installed: list[bool] = []


def install() -> None:
    """Install the patches (once per process); sagalocal.stepfunctions.install() calls it."""
    if _installed:
        return
    _installed.append(True)
    _start_on_versions_and_aliases()
    _version_api()
    _describe_versions()


def split(arn: str) -> tuple[str, str | None]:
    """(the state machine's ARN, the qualifier: a version number or an alias name, or None)."""
    parts = str(arn).split(":")
    if len(parts) == 8 and parts[5] == "stateMachine":
        return ":".join(parts[:7]), parts[7]
    return str(arn), None


def route(alias: Any, pick: Any = random.choices) -> str:
    """The version ARN a start on `alias` runs: one of its routing configuration's versions, by weight."""
    versions = [str(r["stateMachineVersionArn"]) for r in alias.routing_configuration]
    weights = [int(r.get("weight", 100)) for r in alias.routing_configuration]
    return str(pick(versions, weights=weights, k=1)[0])


def _resolve(backend: Any, state_machine_arn: str) -> tuple[Any, Any, str | None]:
    """(the state machine, the version a start runs, the alias ARN or None) for a qualified ARN."""
    from moto.stepfunctions.exceptions import ResourceNotFound, StateMachineDoesNotExist

    base_arn, qualifier = split(state_machine_arn)
    machine = backend.describe_state_machine(base_arn)
    alias_arn = None
    if qualifier is not None and qualifier.isdigit():
        version = machine.versions.get(int(qualifier))
    else:
        alias = machine.aliases.get(qualifier)
        if alias is None:
            raise ResourceNotFound(f"State Machine Alias Does Not Exist: '{state_machine_arn}'")
        alias_arn = alias.arn
        version = machine.versions.get(int(split(route(alias))[1] or 0))
    if version is None:
        raise StateMachineDoesNotExist(f"State Machine Does Not Exist: '{state_machine_arn}'")
    return machine, version, alias_arn


# ---- 1. starts on a version or an alias --------------------------------------------------------------------
def _start_on_versions_and_aliases() -> None:
    from moto.stepfunctions.parser import models as parser_models
    from moto.stepfunctions.parser.backend.execution import Execution
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original = StepFunctionsParserBackend.start_execution

    def start_execution(self: Any, state_machine_arn: str, name: Any = None, execution_input: Any = None,
                        trace_header: Any = None) -> Any:
        base_arn, qualifier = split(state_machine_arn)
        with _locks[hash((base_arn, name)) % len(_locks)]:
            if qualifier is None:
                return original(self, state_machine_arn, name, execution_input, trace_header)
            machine, version, alias_arn = _resolve(self, state_machine_arn)
            existing = machine._handle_name_input_idempotency(name, execution_input)
            if existing is not None:
                return existing
            name = name or str(uuid.uuid4())
            execution = Execution(
                name=name, sm_type=version.sm_type, role_arn=version.roleArn,
                exec_arn=f"arn:{self.partition}:states:{self.region_name}:{self.account_id}:execution:"
                         f"{machine.name}:{name}",
                account_id=self.account_id, region_name=self.region_name,
                state_machine=version,  # a version never changes: the execution's definition, shared
                # moto's clock for a start (the simulation sets a virtual one there)
                start_date=parser_models.datetime.datetime.now(tz=datetime.UTC), cloud_watch_logging_session=None,
                input_data="{}" if execution_input is None else execution_input, trace_header=trace_header,
                activity_store={})
            execution.state_machine_arn = machine.arn
            execution.sagalocal_version_arn = version.arn
            execution.sagalocal_alias_arn = alias_arn
            machine.executions.append(execution)
            execution.start()
            return execution

    StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign]


def version_of(execution: Any) -> str | None:
    return getattr(execution, "sagalocal_version_arn", None)


def alias_of(execution: Any) -> str | None:
    return getattr(execution, "sagalocal_alias_arn", None)


# ---- 4. PublishStateMachineVersion, ListStateMachineVersions -------------------------------------------------
def _version_api() -> None:
    from moto.core.responses import ActionResult
    from moto.stepfunctions.models import StepFunctionBackend
    from moto.stepfunctions.responses import StepFunctionResponse

    def publish_state_machine_version(self: Any, arn: str, description: str | None = None) -> Any:
        machine = self.describe_state_machine(split(arn)[0])
        latest = machine.latest_version
        if latest is None or (latest.definition, latest.roleArn) != (machine.definition, machine.roleArn):
            machine.publish(description)
        return machine.latest_version

    StepFunctionBackend.publish_state_machine_version = publish_state_machine_version  # type: ignore[attr-defined]

    def publish_response(self: Any) -> Any:
        version = self.stepfunction_backend.publish_state_machine_version(
            self._get_param("stateMachineArn"), self._get_param("description"))
        return ActionResult({"creationDate": version.creation_date, "stateMachineVersionArn": version.arn})

    def list_versions_response(self: Any) -> Any:
        machine = self.stepfunction_backend.describe_state_machine(split(self._get_param("stateMachineArn"))[0])
        versions = sorted(machine.versions.values(), key=lambda v: v.version, reverse=True)
        return ActionResult({"stateMachineVersions": [{"stateMachineVersionArn": v.arn, "creationDate": v.creation_date}
                                                      for v in versions]})

    StepFunctionResponse.publish_state_machine_version = publish_response  # type: ignore[attr-defined]
    StepFunctionResponse.list_state_machine_versions = list_versions_response  # type: ignore[attr-defined]


# ---- 2. and 3. what an execution was started on, and the definition it ran -----------------------------------
def _describe_versions() -> None:
    from moto.core.responses import ActionResult
    from moto.stepfunctions.models import StepFunctionBackend
    from moto.stepfunctions.responses import StepFunctionResponse
    from moto.stepfunctions.utils import PAGINATION_MODEL
    from moto.utilities.paginator import paginate

    from sagalocal.redrive import list_item_fields, matches_redrive_filter

    @paginate(pagination_model=PAGINATION_MODEL)
    def list_executions(self: Any, state_machine_arn: str, status_filter: str | None = None,
                        redrive_filter: str | None = None) -> list[Any]:
        """ListExecutions on a machine, a version or an alias (sagalocal/redrive.py's redriveFilter kept)."""
        base_arn, qualifier = split(state_machine_arn)
        executions = list(self.describe_state_machine(base_arn).executions)
        if qualifier is not None:
            executions = [e for e in executions if state_machine_arn in (version_of(e), alias_of(e))]
        if status_filter:
            executions = [e for e in executions if e.status == status_filter]
        executions = [e for e in executions if matches_redrive_filter(e, redrive_filter)]
        return sorted(executions, key=lambda e: e.start_date, reverse=True)

    StepFunctionBackend.list_executions = list_executions  # type: ignore[method-assign]

    def list_executions_response(self: Any) -> Any:
        arn = self._get_param("stateMachineArn")
        results, next_token = self.stepfunction_backend.list_executions(
            arn, status_filter=self._get_param("statusFilter"), redrive_filter=self._get_param("redriveFilter"),
            max_results=self._get_int_param("maxResults"), next_token=self._get_param("nextToken"))
        items = []
        for execution in results:
            item = {"executionArn": execution.execution_arn, "name": execution.name,
                    "startDate": execution.start_date, "stateMachineArn": split(arn)[0], "status": execution.status}
            if execution.status in ("SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT"):
                item["stopDate"] = execution.stop_date
            item.update(_started_on(execution))
            item.update(list_item_fields(execution))
            items.append(item)
        return ActionResult({"executions": items, "nextToken": next_token})

    StepFunctionResponse.list_executions = list_executions_response  # type: ignore[method-assign]

    original_describe = StepFunctionResponse.describe_execution

    def describe_execution(self: Any) -> Any:
        answer = original_describe(self)
        execution = self.stepfunction_backend.describe_execution(self._get_param("executionArn"))
        answer.result.update(_started_on(execution))
        return answer

    StepFunctionResponse.describe_execution = describe_execution  # type: ignore[method-assign]

    original_for_execution = StepFunctionResponse.describe_state_machine_for_execution

    def describe_state_machine_for_execution(self: Any) -> Any:
        answer = original_for_execution(self)
        execution = self.stepfunction_backend.describe_execution(self._get_param("executionArn"))
        ran = getattr(execution, "state_machine", None)  # the parser's executions keep what they run
        if ran is not None:
            answer.result["definition"] = ran.definition
        return answer

    StepFunctionResponse.describe_state_machine_for_execution = describe_state_machine_for_execution  # type: ignore[method-assign]


def _started_on(execution: Any) -> dict[str, str]:
    found = {}
    if version_of(execution):
        found["stateMachineVersionArn"] = str(version_of(execution))
    if alias_of(execution):
        found["stateMachineAliasArn"] = str(alias_of(execution))
    return found
