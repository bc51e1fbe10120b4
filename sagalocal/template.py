"""Read a SAM template: CloudFormation YAML tags, Parameters, Globals, and intrinsic functions.

Only what a SAM application like ours uses is supported: Ref, Fn::GetAtt, Fn::Sub,
Fn::Join, Fn::Select, Fn::If/Conditions with Fn::Equals/Not/And/Or. Anything else is a
TemplateError that names the resource and property, never a silent guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_SHORT_TAGS = {
    "Ref": "Ref", "GetAtt": "Fn::GetAtt", "Sub": "Fn::Sub", "Join": "Fn::Join", "Select": "Fn::Select",
    "If": "Fn::If", "Equals": "Fn::Equals", "Not": "Fn::Not", "And": "Fn::And", "Or": "Fn::Or",
    "FindInMap": "Fn::FindInMap", "Split": "Fn::Split", "Base64": "Fn::Base64", "GetAZs": "Fn::GetAZs",
    "ImportValue": "Fn::ImportValue", "Condition": "Condition",
}


class TemplateError(Exception):
    """The template cannot be read or resolved; the message names the resource and property."""


class _Loader(yaml.SafeLoader):
    pass


def _tag_constructor(name: str) -> Callable[[yaml.Loader, yaml.Node], dict[str, Any]]:
    def construct(loader: yaml.Loader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "Fn::GetAtt" and isinstance(value, str):
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}
    return construct


for _short, _long in _SHORT_TAGS.items():
    _Loader.add_constructor(f"!{_short}", _tag_constructor(_long))


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"{path}: cannot read the template: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError(f"{path}: not a CloudFormation template (no Resources mapping)")
    return data


def _merge(base: Any, override: Any) -> Any:
    """SAM Globals semantics: maps merge, lists concatenate (globals first), scalars override."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


@dataclass
class Template:
    path: Path
    region: str = "us-east-1"
    account: str = "123456789012"
    stack_name: str = "order-saga"
    parameter_overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.root = self.path.parent
        self.raw = load_yaml(self.path)
        self.resources: dict[str, dict[str, Any]] = self.raw["Resources"]
        self.parameters = self._parameters()
        self.conditions = {name: self._condition(name) for name in self.raw.get("Conditions", {})}
        # Filled by the stack as it creates resources: logical id -> Ref value, and GetAtt values.
        self.refs: dict[str, str] = {}
        self.attrs: dict[tuple[str, str], str] = {}

    def _parameters(self) -> dict[str, str]:
        declared = self.raw.get("Parameters", {}) or {}
        unknown = set(self.parameter_overrides) - set(declared)
        if unknown:
            raise TemplateError(f"parameter override for undeclared parameter(s): {', '.join(sorted(unknown))}")
        values: dict[str, str] = {}
        for name, spec in declared.items():
            if name in self.parameter_overrides:
                value = str(self.parameter_overrides[name])
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
            values[name] = value
        return values

    def _condition(self, name: str) -> bool:
        return bool(self.resolve(self.raw["Conditions"][name], f"Conditions.{name}"))

    def included(self, logical_id: str) -> bool:
        cond = self.resources[logical_id].get("Condition")
        return cond is None or self.conditions.get(cond, False)

    def of_type(self, *types: str) -> dict[str, dict[str, Any]]:
        return {lid: res for lid, res in self.resources.items() if res.get("Type") in types and self.included(lid)}

    def properties(self, logical_id: str) -> dict[str, Any]:
        """A resource's Properties with the template's Globals applied (SAM resources only)."""
        resource = self.resources[logical_id]
        props = resource.get("Properties", {}) or {}
        kind = resource.get("Type", "").removeprefix("AWS::Serverless::")
        globals_ = (self.raw.get("Globals") or {}).get(kind) if resource.get("Type", "").startswith(
            "AWS::Serverless::") else None
        return _merge(globals_, props) if globals_ else props

    def pseudo(self) -> dict[str, str]:
        return {"AWS::Region": self.region, "AWS::AccountId": self.account, "AWS::StackName": self.stack_name,
                "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None}  # type: ignore[dict-item]

    def resolve(self, value: Any, where: str) -> Any:
        """Resolve intrinsic functions in `value`; `where` names the resource and property for errors."""
        if isinstance(value, list):
            return [v for v in (self.resolve(v, where) for v in value) if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self._ref(arg, where)
            if key == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
                return self._getatt(str(parts[0]), str(parts[1]), where)
            if key == "Fn::Sub":
                return self._sub(arg, where)
            if key == "Fn::Join":
                sep, items = arg
                return str(sep).join(str(i) for i in self.resolve(items, where))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items, where)[int(self.resolve(index, where))]
            if key == "Fn::Equals":
                a, b = (self.resolve(x, where) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0], where)
            if key == "Fn::And":
                return all(self.resolve(x, where) for x in arg)
            if key == "Fn::Or":
                return any(self.resolve(x, where) for x in arg)
            if key == "Fn::If":
                cond, yes, no = arg
                if cond not in self.conditions:
                    raise TemplateError(f"{where}: Fn::If names unknown condition {cond!r}")
                return self.resolve(yes if self.conditions[cond] else no, where)
            if key == "Condition":
                return self.conditions[arg]
            if key.startswith("Fn::"):
                raise TemplateError(f"{where}: {key} is not supported by the local stack")
        return {k: r for k, r in ((k, self.resolve(v, f"{where}.{k}")) for k, v in value.items())
                if r is not _NO_VALUE}

    def _ref(self, name: str, where: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        pseudo = self.pseudo()
        if name in pseudo:
            return pseudo[name]
        if name in self.refs:
            return self.refs[name]
        if name in self.resources:
            raise TemplateError(f"{where}: Ref {name} is used before {name} was created "
                                f"(or its type {self.resources[name].get('Type')} is not supported locally)")
        raise TemplateError(f"{where}: Ref to unknown parameter or resource {name!r}")

    def _getatt(self, resource: str, attribute: str, where: str) -> Any:
        if (resource, attribute) in self.attrs:
            return self.attrs[(resource, attribute)]
        if resource not in self.resources:
            raise TemplateError(f"{where}: Fn::GetAtt names unknown resource {resource!r}")
        raise TemplateError(f"{where}: Fn::GetAtt {resource}.{attribute} is not available locally")

    def _sub(self, arg: Any, where: str) -> str:
        if isinstance(arg, list):
            text, variables = arg[0], {k: self.resolve(v, where) for k, v in arg[1].items()}
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name:
                res, att = name.split(".", 1)
                return str(self._getatt(res, att, where))
            return str(self._ref(name, where))

        return re.sub(r"\$\{([^}]+)\}", replace, str(text))


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


_NO_VALUE: Any = _NoValue()
