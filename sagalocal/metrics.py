"""CloudWatch metrics on the embedded stack: the embedded metric format (EMF) records the functions print, and the
template's dashboards evaluated on them (`python -m sagalocal stats`).

On AWS, Lambda sends a function's EMF lines to CloudWatch, which turns them into metrics. Here the same lines
are in the functions' log files; this module reads them, keeps every datapoint by (namespace, metric,
dimensions), and computes what a dashboard widget asks for over the whole run: Sum, SampleCount, Average,
Minimum, Maximum, pNN, and metric math over them (+ - * / and parentheses).
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Key = tuple[str, str, tuple[tuple[str, str], ...]]  # namespace, metric, sorted dimensions


def datapoints(lines: Iterable[str]) -> dict[Key, list[float]]:
    """Every EMF datapoint in these log lines."""
    found: dict[Key, list[float]] = defaultdict(list)
    for line in lines:
        if '"_aws"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        for directive in (record.get("_aws") or {}).get("CloudWatchMetrics") or []:
            for dimension_set in directive.get("Dimensions") or [[]]:
                dims = tuple(sorted((d, str(record.get(d, ""))) for d in dimension_set))
                for metric in directive.get("Metrics") or []:
                    value = record.get(metric["Name"])
                    for v in value if isinstance(value, list) else [value]:
                        if isinstance(v, int | float):
                            found[(directive.get("Namespace", ""), metric["Name"], dims)].append(float(v))
    return found


def read_logs(log_dir: Path) -> dict[Key, list[float]]:
    lines: list[str] = []
    for path in sorted(Path(log_dir).glob("*.log")):
        lines += path.read_text(errors="replace").splitlines()
    return datapoints(lines)


def statistic(values: list[float], stat: str) -> float | None:
    if not values:
        return 0.0 if stat in ("Sum", "SampleCount") else None
    ordered = sorted(values)
    if stat == "Sum":
        return sum(values)
    if stat == "SampleCount":
        return float(len(values))
    if stat == "Average":
        return sum(values) / len(values)
    if stat == "Minimum":
        return ordered[0]
    if stat == "Maximum":
        return ordered[-1]
    if stat.startswith("p"):
        rank = max(1, math.ceil(float(stat[1:]) / 100 * len(ordered)))  # nearest rank
        return ordered[rank - 1]
    raise ValueError(f"statistic {stat} is not computed locally")


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expression: str, values: dict[str, float | None]) -> float | None:
    """Metric math: numbers, metric ids, + - * / and parentheses. A division by zero (or a missing value) is
    no datapoint, as in CloudWatch."""
    def walk(node: ast.AST) -> float | None:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            return values.get(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
                return None
            return float(_OPS[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = walk(node.operand)
            return None if inner is None else -inner
        raise ValueError(f"metric math {expression!r}: only numbers, ids, + - * / are computed locally")

    return walk(ast.parse(expression, mode="eval"))


def widget_values(widget: dict[str, Any], points: dict[Key, list[float]]) -> list[tuple[str, float | None]]:
    """(label, value) for each visible line of a metric widget, over every datapoint."""
    props = widget.get("properties") or {}
    ids: dict[str, float | None] = {}
    shown: list[tuple[str, float | None]] = []
    expressions = []
    for n, line in enumerate(props.get("metrics") or []):
        options = line[-1] if line and isinstance(line[-1], dict) else {}
        spec = line[:-1] if options else line
        if "expression" in options:
            expressions.append(options)
            continue
        namespace, name, *dims = spec
        key = (namespace, name, tuple(sorted(zip(dims[0::2], dims[1::2], strict=True))))
        value = statistic(points.get(key, []), options.get("stat", props.get("stat", "Average")))
        ids[options.get("id", f"m{n}")] = value
        if options.get("visible", True):
            shown.append((options.get("label", name), value))
    for options in expressions:
        value = evaluate(options["expression"], ids)
        ids[options.get("id", "e")] = value
        if options.get("visible", True):
            shown.append((options.get("label", options["expression"]), value))
    return shown


def dashboards(template: Any, log_dir: Path) -> list[dict[str, Any]]:
    """Every AWS::CloudWatch::Dashboard of the template, evaluated on the metrics in `log_dir`:
    [{logical_id, name, widgets: [{title, lines: [[label, value or None]]}]}]."""
    points = read_logs(Path(log_dir))
    out = []
    for logical_id in template.of_type("AWS::CloudWatch::Dashboard"):
        properties = template.properties(logical_id)
        body = template.resolve(properties["DashboardBody"], logical_id)
        body = json.loads(body) if isinstance(body, str) else body
        widgets = [{"title": str((w.get("properties") or {}).get("title", "(untitled)")),
                    "lines": [[label, value] for label, value in widget_values(w, points)]}
                   for w in body.get("widgets") or [] if w.get("type") == "metric"]
        name = template.resolve(properties.get("DashboardName", logical_id), logical_id)
        out.append({"logical_id": logical_id, "name": str(name), "widgets": widgets})
    return out


def report(evaluated: list[dict[str, Any]]) -> str:
    """dashboards() as text (`python -m sagalocal stats`)."""
    lines = []
    for dashboard in evaluated:
        lines.append(f"== {dashboard['logical_id']} ({dashboard['name']})")
        for widget in dashboard["widgets"]:
            lines.append(widget["title"])
            for label, value in widget["lines"]:
                shown = "-" if value is None else f"{value:.1f}" if value % 1 else f"{value:.0f}"
                lines.append(f"  {label:<40} {shown:>10}")
    return "\n".join(lines)
