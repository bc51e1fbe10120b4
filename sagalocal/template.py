"""Read a SAM template as SAM CLI reads it, and resolve it against the resources the local stack created.

SAM CLI does the reading: its YAML loader (CloudFormation tags), its translator's plugins (Globals merged
into every function, the implicit API of `Api` events), and its intrinsic resolver (Ref, Fn::GetAtt,
Fn::Sub, Fn::Join, Fn::Select, Fn::Split, Fn::If and the conditions, Fn::FindInMap, Fn::Base64, ...). This
module adds what `sam local` leaves out: parameter validation, the order to create resources in, and strict
resolution: a reference to something that does not exist locally is an error that names the resource and
the property, never a silent guess.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

ACCOUNT = "123456789012"


class TemplateError(Exception):
    """The template cannot be read or resolved; the message names the resource and property."""


class Template:
    def __init__(self, path: Path, region: str = "us-east-1", parameter_overrides: dict[str, str] | None = None,
                 stack_name: str = "sam-app", account: str = ACCOUNT) -> None:
        from samcli.yamlhelper import yaml_parse

        self.path = Path(path)
        self.region = region
        self.account = account
        self.stack_name = stack_name
        self.parameter_overrides = {k: str(v) for k, v in (parameter_overrides or {}).items()}
        try:
            self.raw: dict[str, Any] = yaml_parse(self.path.read_text())
        except OSError as exc:
            raise TemplateError(f"cannot read {self.path}: {exc.strerror}") from exc
        except Exception as exc:  # noqa: BLE001 - yaml and json errors alike: report where
            raise TemplateError(f"{self.path} is not a valid template: {exc}") from exc
        if not isinstance(self.raw, dict) or not isinstance(self.raw.get("Resources"), dict):
            raise TemplateError(f"{self.path}: a template needs a Resources mapping")
        self.parameters = self._parameter_values()
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
    def _parameter_values(self) -> dict[str, Any]:
        declared = self.raw.get("Parameters") or {}
        unknown = sorted(set(self.parameter_overrides) - set(declared))
        if unknown:
            raise TemplateError(f"Parameters: no parameter named {', '.join(unknown)} in the template")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in self.parameter_overrides:
                value = self.parameter_overrides[name]
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

    def pseudo(self) -> dict[str, str]:
        return {"AWS::Region": self.region, "AWS::AccountId": self.account, "AWS::StackName": self.stack_name,
                "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
                "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account}:stack/{self.stack_name}/local"}

    def _run_sam_plugins(self) -> dict[str, Any]:
        from samcli.lib.samlib.wrapper import SamTranslatorWrapper

        try:
            return SamTranslatorWrapper(copy.deepcopy(self.raw),
                                        parameter_values={**self.pseudo(), **self.parameters}).run_plugins()
        except Exception as exc:  # noqa: BLE001 - the translator's own message says what is wrong
            raise TemplateError(f"{self.path}: SAM cannot read the template: {exc}") from exc

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
        resolver = IntrinsicResolver(template=self.processed, symbol_resolver=symbols)
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
