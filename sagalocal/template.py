"""Read a SAM template as SAM CLI reads it, and resolve it against the resources the local stack created.

SAM CLI does the reading: its YAML loader (CloudFormation tags), its translator's plugins (Globals merged
into every function, the implicit API of `Api` events), and its intrinsic resolver (Ref, Fn::GetAtt,
Fn::Sub, Fn::Join, Fn::Select, Fn::Split, Fn::If and the conditions, Fn::FindInMap, Fn::Base64, ...). This
module adds what `sam local` leaves out: parameter validation (each parameter's constraints, then the template's
Rules, as CloudFormation checks them before it creates or updates anything), the order to create resources in,
and strict resolution: a reference to something that does not exist locally is an error that names the resource
and the property, never a silent guess.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

ACCOUNT = "123456789012"


_PARSED: dict[str, Any] = {}
_PROCESSED: dict[tuple[str, str], Any] = {}


def _parsed(text: str) -> Any:
    """The template text as SAM reads it (short-form intrinsics too), parsed once per process per text: a parse is
    ~0.15 s, and the tests and the stacks read the same template.yaml hundreds of times. Each caller gets its own
    copy, which it may change."""
    from samcli.yamlhelper import yaml_parse

    if text not in _PARSED:
        if len(_PARSED) >= 16:
            _PARSED.clear()
        _PARSED[text] = yaml_parse(text)
    return copy.deepcopy(_PARSED[text])


class TemplateError(Exception):
    """The template cannot be read or resolved; the message names the resource and property."""


class Template:
    def __init__(self, path: Path, region: str = "us-east-1", parameter_overrides: dict[str, str] | None = None,
                 stack_name: str = "sam-app", account: str = ACCOUNT) -> None:
        self.path = Path(path)
        self.region = region
        self.account = account
        self.stack_name = stack_name
        self.parameter_overrides = {k: str(v) for k, v in (parameter_overrides or {}).items()}
        try:
            self._text = self.path.read_text()
            self.raw: dict[str, Any] = _parsed(self._text)
        except OSError as exc:
            raise TemplateError(f"cannot read {self.path}: {exc.strerror}") from exc
        except Exception as exc:  # noqa: BLE001 - yaml and json errors alike: report where
            raise TemplateError(f"{self.path} is not a valid template: {exc}") from exc
        if not isinstance(self.raw, dict) or not isinstance(self.raw.get("Resources"), dict):
            raise TemplateError(f"{self.path}: a template needs a Resources mapping")
        self.parameters = parameter_values(self.raw.get("Parameters") or {}, self.parameter_overrides)
        check_rules(self.raw, self.parameters, self.pseudo())
        self.processed = self._run_sam_plugins()
        self.resources: dict[str, dict[str, Any]] = self.processed.get("Resources") or {}
        # What the local stack created, for Ref and Fn::GetAtt: logical id -> {"Ref": ..., "Arn": ..., ...}
        self.created: dict[str, dict[str, Any]] = {}
        self.conditions = {name: self.resolve(expression, f"Conditions.{name}") is True
                           for name, expression in (self.processed.get("Conditions") or {}).items()}
        self.derived = self._derived_references()

    def auto_publish_alias(self, logical_id: str) -> str | None:
        """The alias SAM publishes the function or state machine to (AutoPublishAlias), or None."""
        alias = self.properties(logical_id).get("AutoPublishAlias")
        return None if alias is None else str(self.resolve(alias, f"Resources.{logical_id}.AutoPublishAlias"))

    def _derived_references(self) -> dict[str, str]:
        """What a template may refer to that SAM generates from AutoPublishAlias, and the resource that makes it:
        `F.Version` and `F.Alias` (the function's version and alias), the alias's own logical id `FAlias<name>`
        (`-` spelled D, `_` spelled U), and a state machine's `SAlias<name>` and `SVersion`."""
        derived = {}
        for logical_id in self.of_type("AWS::Serverless::Function", "AWS::Serverless::StateMachine"):
            alias = self.auto_publish_alias(logical_id)
            if alias is None:
                continue
            derived[f"{logical_id}Alias{alias.replace('-', 'D').replace('_', 'U')}"] = logical_id
            if self.resources[logical_id]["Type"] == "AWS::Serverless::Function":
                derived.update({f"{logical_id}.Version": logical_id, f"{logical_id}.Alias": logical_id})
            else:
                derived[f"{logical_id}Version"] = logical_id
        return derived

    # ---- parameters ---------------------------------------------------------------------------------
    def pseudo(self) -> dict[str, str]:
        return {"AWS::Region": self.region, "AWS::AccountId": self.account, "AWS::StackName": self.stack_name,
                "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
                "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account}:stack/{self.stack_name}/local"}

    def _run_sam_plugins(self) -> dict[str, Any]:
        from samcli.lib.samlib.wrapper import SamTranslatorWrapper

        values = {**self.pseudo(), **self.parameters}
        # Like the parse, once per template text and parameter values (~0.2 s each); each caller gets its own copy.
        # (The values' names are strings, and each value a string or a list of them.)
        key = (self._text, json.dumps(values, sort_keys=True, default=str))
        if key not in _PROCESSED:
            try:
                processed = SamTranslatorWrapper(copy.deepcopy(self.raw), parameter_values=values).run_plugins()
            except Exception as exc:  # noqa: BLE001 - the translator's own message says what is wrong
                raise TemplateError(f"{self.path}: SAM cannot read the template: {exc}") from exc
            if len(_PROCESSED) >= 64:
                _PROCESSED.clear()
            _PROCESSED[key] = processed
        return copy.deepcopy(_PROCESSED[key])

    # ---- resources ----------------------------------------------------------------------------------
    def included(self, logical_id: str) -> bool:
        condition = self.resources[logical_id].get("Condition")
        return condition is None or self.conditions.get(condition, False)

    def of_type(self, *types: str) -> list[str]:
        return [lid for lid, res in self.resources.items() if res.get("Type") in types and self.included(lid)]

    def properties(self, logical_id: str) -> dict[str, Any]:
        """A resource's Properties with Globals applied (unresolved)."""
        return self.resources[logical_id].get("Properties") or {}

    def own_properties(self, logical_id: str) -> dict[str, Any]:
        """The Properties the resource itself is created with: a state machine's DeploymentPreference belongs to the
        alias SAM generates (created after it, so its alarms may depend on the state machine), not to it."""
        props = self.properties(logical_id)
        if self.resources[logical_id].get("Type") == "AWS::Serverless::StateMachine":
            return {k: v for k, v in props.items() if k != "DeploymentPreference"}
        return props

    def references(self, value: Any) -> set[str]:
        """The logical ids of the resources `value` refers to (Ref, Fn::GetAtt, ${X} in Fn::Sub)."""
        found: set[str] = set()
        if isinstance(value, list):
            for item in value:
                found |= self.references(item)
        elif isinstance(value, dict):
            for key, arg in value.items():
                if key == "Ref" and isinstance(arg, str):
                    found.add(arg)
                elif key == "Fn::GetAtt":
                    parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
                    found.add(str(parts[0]))
                elif key == "Fn::Sub":
                    text = arg[0] if isinstance(arg, list) else arg
                    found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", str(text))}
                    if isinstance(arg, list) and len(arg) > 1:
                        found |= self.references(arg[1])
                else:
                    found |= self.references(arg)
        derived = getattr(self, "derived", {})
        return {derived.get(name, name) for name in found} & set(self.resources)

    def creation_order(self, supported: set[str]) -> tuple[list[str], dict[str, str]]:
        """The supported, included resources in dependency order, and the skipped ones with their types."""
        wanted = {lid for lid in self.resources if self.included(lid)}
        skipped = {lid: self.resources[lid].get("Type", "?") for lid in wanted
                   if self.resources[lid].get("Type") not in supported}
        todo = {lid: self.references(self.own_properties(lid)) & wanted for lid in wanted - set(skipped)}
        order: list[str] = []
        while todo:
            ready = sorted(lid for lid, deps in todo.items() if not (deps - set(order)))
            if not ready:
                details = "; ".join(f"{lid} needs {', '.join(sorted(deps - set(order)))}"
                                    for lid, deps in sorted(todo.items()))
                raise TemplateError(f"cannot create resources (circular or unsupported references): {details}")
            for lid in ready:
                order.append(lid)
                del todo[lid]
        return order, skipped

    # ---- resolution ---------------------------------------------------------------------------------
    def resolve(self, value: Any, where: str) -> Any:
        """Resolve the intrinsic functions in `value`; `where` names the resource and property for errors."""
        from samcli.lib.intrinsic_resolver.intrinsic_property_resolver import IntrinsicResolver
        from samcli.lib.intrinsic_resolver.intrinsics_symbol_table import IntrinsicsSymbolTable

        translator: dict[str, Any] = {**self.pseudo(), **self.parameters}
        translator.update(self.created)
        symbols = IntrinsicsSymbolTable(template=self.processed, logical_id_translator=translator,
                                        default_type_resolver={}, common_attribute_resolver={})
        # One resolver per template: making one deep-copies the whole template (7 ms, 19 times per Template and
        # once per resource a stack creates); the symbols, which change as resources are created, are its to read.
        resolver = self.__dict__.get("_resolver")
        if resolver is None:
            resolver = self.__dict__["_resolver"] = IntrinsicResolver(template=self.processed, symbol_resolver=symbols)
        resolver._symbol_resolver = symbols  # noqa: SLF001 - the one attribute the resolver reads them from
        try:
            return _drop_no_value(resolver.intrinsic_property_resolver(_mark_no_value(value), ignore_errors=False,
                                                                      parent_function=where))
        except Exception as exc:  # noqa: BLE001 - SAM CLI's intrinsic errors, reported with the place
            missing = sorted(self.references(value) - set(self.created))
            hint = (f" ({', '.join(missing)} not created locally: its type is not emulated, or it is not "
                    f"created yet)") if missing else ""
            raise TemplateError(f"{where}: {exc}{hint}") from exc

    def resource_properties(self, logical_id: str) -> dict[str, Any]:
        return self.resolve(self.own_properties(logical_id), f"Resources.{logical_id}.Properties")  # type: ignore[no-any-return]

    def outputs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in (self.processed.get("Outputs") or {}).items():
            if spec.get("Condition") and not self.conditions.get(spec["Condition"], False):
                continue
            if name in overrides:
                out[name] = overrides[name]
                continue
            try:
                out[name] = self.resolve(spec.get("Value"), f"Outputs.{name}.Value")
            except TemplateError as exc:
                out[name] = f"<not available locally: {exc}>"
        return out


_NO_VALUE = "__sagalocal_AWS::NoValue__"


def _mark_no_value(value: Any) -> Any:
    """A copy of `value` with Ref AWS::NoValue as a marker (SAM CLI's resolver cannot carry it through Fn::If)."""
    if isinstance(value, dict):
        if value == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
        return {k: _mark_no_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_no_value(v) for v in value]
    return value


def _drop_no_value(value: Any) -> Any:
    """Drop the keys and list items that resolved to AWS::NoValue, as CloudFormation does."""
    if isinstance(value, dict):
        return {k: _drop_no_value(v) for k, v in value.items() if v is not None and v != _NO_VALUE}
    if isinstance(value, list):
        return [_drop_no_value(v) for v in value if v is not None and v != _NO_VALUE]
    return value


# ---- parameters and rules, as CloudFormation checks them before a create or an update ---------------------------
def parameter_values(declared: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """Each parameter's value (its override, else its Default), checked against its AllowedValues,
    AllowedPattern, MinValue and MaxValue; a TemplateError names the first parameter that fails."""
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise TemplateError(f"Parameters: no parameter named {', '.join(unknown)} in the template")
    values: dict[str, str] = {}
    for name, spec in declared.items():
        if name in overrides:
            value = str(overrides[name])
        elif "Default" in spec:
            value = str(spec["Default"])
        else:
            raise TemplateError(f"Parameters.{name}: no Default and no override given")
        allowed = spec.get("AllowedValues")
        if allowed is not None and value not in [str(a) for a in allowed]:
            raise TemplateError(f"Parameters.{name}: {value!r} is not one of {allowed}")
        pattern = spec.get("AllowedPattern")
        if pattern and not re.fullmatch(pattern, value):
            raise TemplateError(f"Parameters.{name}: {value!r} does not match {pattern}")
        if spec.get("Type") == "Number":
            try:
                number = float(value)
            except ValueError as exc:
                raise TemplateError(f"Parameters.{name}: {value!r} is not a number") from exc
            if "MinValue" in spec and number < float(spec["MinValue"]):
                raise TemplateError(f"Parameters.{name}: {value} is below MinValue {spec['MinValue']}")
            if "MaxValue" in spec and number > float(spec["MaxValue"]):
                raise TemplateError(f"Parameters.{name}: {value} is above MaxValue {spec['MaxValue']}")
        values[name] = value
    return values


# The rule-specific functions CloudFormation evaluates in a rule's RuleCondition and Assert, and how many arguments
# each takes. Fn::RefAll, Fn::ValueOf and Fn::ValueOfAll read the account's resources (a VPC's tags, every key pair):
# not emulated, so a template that uses them is refused here rather than checked wrongly.
_RULE_ARGUMENTS = {"Fn::Equals": (2, 2), "Fn::Not": (1, 1), "Fn::And": (2, 10), "Fn::Or": (2, 10),
                   "Fn::Contains": (2, 2), "Fn::EachMemberEquals": (2, 2), "Fn::EachMemberIn": (2, 2)}


def check_rules(raw: dict[str, Any], values: dict[str, str], pseudo: dict[str, str] | None = None) -> None:
    """Evaluate the template's Rules against the parameter values, as CloudFormation does before it creates or
    updates anything: a rule whose RuleCondition is false is skipped; every Assert of the others must be true. A
    TemplateError carries each failed assertion's AssertDescription (what CloudFormation's ValidationError says)."""
    rules = raw.get("Rules") or {}
    if not isinstance(rules, dict):
        raise TemplateError("Rules: a mapping of rule names to rules")
    declared = raw.get("Parameters") or {}
    failed = []
    for name, rule in rules.items():
        where = f"Rules.{name}"
        if not isinstance(rule, dict) or not isinstance(rule.get("Assertions"), list) \
                or set(rule) - {"RuleCondition", "Assertions"}:
            raise TemplateError(f"{where}: a rule has Assertions (a list) and an optional RuleCondition, nothing else")
        if "RuleCondition" in rule and not _rule_boolean(rule["RuleCondition"], declared, values, pseudo or {},
                                                         f"{where}.RuleCondition"):
            continue
        for i, assertion in enumerate(rule["Assertions"]):
            if not isinstance(assertion, dict) or "Assert" not in assertion \
                    or set(assertion) - {"Assert", "AssertDescription"}:
                raise TemplateError(f"{where}.Assertions[{i}]: an Assert and an optional AssertDescription")
            if not _rule_boolean(assertion["Assert"], declared, values, pseudo or {}, f"{where}.Assertions[{i}]"):
                failed.append(f"{where}: {assertion.get('AssertDescription') or f'assertion {i} is false'}")
    if failed:
        raise TemplateError("\n".join(failed))


def _rule_boolean(expression: Any, declared: dict[str, Any], values: dict[str, str], pseudo: dict[str, str],
                  where: str) -> bool:
    result = _rule_value(expression, declared, values, pseudo, where)
    if not isinstance(result, bool):
        raise TemplateError(f"{where}: {expression!r} is not a condition (true or false)")
    return result


def _rule_value(expression: Any, declared: dict[str, Any], values: dict[str, str], pseudo: dict[str, str],
                where: str) -> Any:
    """A rule expression's value: True or False for a function, a string (or a list of strings) otherwise."""
    if isinstance(expression, list):
        return [_rule_value(item, declared, values, pseudo, where) for item in expression]
    if isinstance(expression, bool):  # a YAML true or false: CloudFormation's values are strings
        return str(expression).lower()
    if not isinstance(expression, dict):
        return str(expression)
    if len(expression) != 1:
        raise TemplateError(f"{where}: {expression!r} is not one function")
    [(function, argument)] = expression.items()
    if function == "Ref":
        if argument in values:
            kind = str(declared.get(argument, {}).get("Type", "String"))
            is_list = kind == "CommaDelimitedList" or kind.startswith("List<")
            return values[argument].split(",") if is_list else values[argument]
        if argument in pseudo:
            return pseudo[argument]
        raise TemplateError(f"{where}: Ref {argument!r}: a rule may refer to parameters only")
    if function not in _RULE_ARGUMENTS:
        raise TemplateError(f"{where}: {function} is not a rule function sagalocal evaluates "
                            f"({', '.join(_RULE_ARGUMENTS)}, Ref)")
    low, high = _RULE_ARGUMENTS[function]
    if not isinstance(argument, list) or not low <= len(argument) <= high:
        raise TemplateError(f"{where}: {function} takes a list of {low}" + (f" to {high}" if high > low else "")
                            + f" arguments, not {argument!r}")
    if function in ("Fn::Not", "Fn::And", "Fn::Or"):
        conditions = [_rule_boolean(item, declared, values, pseudo, where) for item in argument]
        return not conditions[0] if function == "Fn::Not" else (all if function == "Fn::And" else any)(conditions)
    first, second = (_rule_value(item, declared, values, pseudo, where) for item in argument)
    if function == "Fn::Equals":
        return bool(first == second)
    if not isinstance(first, list):
        raise TemplateError(f"{where}: {function}'s first argument is a list of strings, not {first!r}")
    if function == "Fn::Contains":
        return second in first
    if function == "Fn::EachMemberEquals":
        return all(member == second for member in first)
    if not isinstance(second, list):  # Fn::EachMemberIn: every string of the first list is one of the second's
        raise TemplateError(f"{where}: Fn::EachMemberIn's second argument is a list of strings, not {second!r}")
    return all(member in second for member in first)
