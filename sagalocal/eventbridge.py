"""EventBridge for the embedded stack: what moto's events leave out that the saga relies on.

1. Lambda targets. moto delivers a rule's matching events to queues, log groups and other buses, not to
   functions. Here a rule's Lambda target gets the event as EventBridge sends it (the rule's input transformation
   applied by moto), invoked asynchronously through the local Lambda service: InvocationType Event, with
   Lambda's own two retries on a function error, as on AWS. The rule's RetryPolicy (EventBridge's retries of an
   invocation that could not be made) has nothing to act on here: the local invoke is always accepted.
2. Step Functions' execution status changes reach the default bus (sagalocal/stepfunctions.py, patch 10), where
   the rules match them like any other event.
3. SAM's `EventBridgeRule` function events become a rule on their bus with the function as its target
   (`rule_of_function_event`, used by sagalocal/provision.py), as SAM's transform writes them.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)
_lock = threading.Lock()
_installed: list[Any] = []


def install(lambda_service: Any, account: str, region: str) -> None:
    """Deliver rules' events to Lambda targets through `lambda_service`, and execution status changes to the
    default bus of `account` and `region` (once per process; a new stack replaces the previous one's)."""
    from sagalocal import stepfunctions

    with _lock:
        if _installed:
            _installed[:] = [lambda_service, account, region]
            return
        _installed[:] = [lambda_service, account, region]
        _lambda_targets()
        stepfunctions.ENDED.append(_to_default_bus)


def _to_default_bus(entry: dict[str, Any]) -> None:
    from moto.events.models import events_backends

    _, account, region = _installed
    try:
        events_backends[account][region].put_events([entry])
    except Exception:  # an execution's end must not fail because a listener did; AWS's delivery is best effort too
        log.exception("could not put the execution status change on the default bus")


def _lambda_targets() -> None:
    from moto.events.models import Rule
    from moto.events.utils import EventTemplateParser
    from moto.utilities.arns import parse_arn

    original = Rule.send_to_targets

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        functions = [t for t in self.targets if parse_arn(t["Arn"]).service == "lambda"]
        if len(functions) < len(self.targets):
            # moto's own delivery, to the targets it knows: it raises NotImplementedError on a Lambda target, so it
            # gets a copy of the rule without them (a copy: rules are shared by concurrent PutEvents)
            others = copy.copy(self)
            others.targets = [t for t in self.targets if parse_arn(t["Arn"]).service != "lambda"]
            original(others, original_event, transform_input)
        if not functions or not self.event_pattern.matches_event(original_event):
            return
        for target in functions:
            event = original_event.copy()
            if transform_input and target.get("InputTransformer"):
                transformer = target["InputTransformer"]
                event = EventTemplateParser.parse(input_template=transformer.get("InputTemplate"),
                                                  input_paths_map=transformer.get("InputPathsMap", {}),
                                                  event=original_event)
            elif transform_input and target.get("Input"):
                event = json.loads(target["Input"])
            _installed[0].invoke_async(target["Arn"], event)

    Rule.send_to_targets = send_to_targets  # type: ignore[method-assign]


def rule_of_function_event(function_arn: str, event_name: str, props: dict[str, Any]) -> dict[str, Any]:
    """PutRule and PutTargets arguments for a SAM `EventBridgeRule` event of a function."""
    rule: dict[str, Any] = {"EventPattern": json.dumps(props["Pattern"]), "State": props.get("State", "ENABLED")}
    if props.get("EventBusName"):
        rule["EventBusName"] = props["EventBusName"]
    target: dict[str, Any] = {"Id": props.get("Target", {}).get("Id") or f"{event_name}LambdaTarget",
                              "Arn": function_arn}
    for key in ("Input", "InputPath", "RetryPolicy"):
        if key in props:
            target[key] = props[key]
    return {"rule": rule, "target": target}
