"""The docs match the code: every name they use exists, and the tables generated from the code are current.

README.md and docs/*.md name tables, functions, queues, parameters, outputs, states, errors and statuses. Each
such name must be one the project defines, as the diagram test keeps the README's diagram current:

* a name shaped like a resource (`...Table`, `...Function`, `...Queue`, `...Arn`, ...) must be a logical id,
  parameter, output or condition of template.yaml: a table that was removed (`IdempotencyTable`) fails;
* an error in the ASL's namespaces (`States.*`, `Lambda.*`, `Sandbox.*`, `Runtime.*`) must be one the ASL
  retries or catches, and `Saga.X` (CancelOrder's rename) needs `States.X`;
* `Class.member` must be a member of that class in src/, functions/, sagalocal/ or scripts/ (a method that
  was removed, `Orders.guard`, fails);
* every node of a Mermaid state diagram must be a state of the ASL (Map iterations included) or a saga status;
* every other CamelCase name, in backticks or in prose, and every backticked ALL_CAPS name, must belong to some
  vocabulary the project defines or uses: the template (logical ids, parameters, outputs, property names and
  values, metric names), the ASL (state names, error names, field names), the code (classes, their members,
  the names and string constants it uses), docs/events.schema.json, botocore's models of the AWS services the
  template uses (operations, fields, errors, enum values), Python's builtins, or ALLOWED below, each entry with
  its reason (an entry no doc uses, or one a source defines anyway, fails too). A misspelt state name belongs
  to none of them.

And: every relative link and anchor resolves, docs/deploying.md's parameter table is the template's, and the
timing table of docs/timeouts.md is what scripts/generate_timing_table.py writes now.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_DIRS = ("src", "functions", "sagalocal", "scripts")
# The AWS services the template deploys to or the code and docs call: botocore's models name their APIs.
AWS_SERVICES = ("dynamodb", "dynamodbstreams", "stepfunctions", "sqs", "events", "lambda", "cognito-idp",
                "cloudwatch", "sns", "cloudformation", "apigateway", "iam", "sts", "logs")
RESOURCE_SUFFIXES = ("Table", "Function", "Queue", "Bus", "Alarm", "Dashboard", "Api", "Rule", "Topic",
                     "StateMachine", "LogGroup", "Layer", "Role", "Pool", "Client", "Policy", "Arn", "Url", "Name")
ASL_NAMESPACES = ("States", "Lambda", "Sandbox", "Runtime")

# Names no vocabulary above defines, each with the reason it may appear in the docs.
ALLOWED = {
    # Products and projects, named as their makers spell them.
    "EventBridge": "AWS's event bus", "CloudWatch": "AWS's monitoring", "JavaScript": "the console's browser code",
    "CloudFormation": "AWS's deployment service, which runs `sam deploy` and rolls a failed rollout back",
    "OpenAPI": "the API's spec",
    "PyPI": "the Python Package Index, where ministack comes from (README.md, engines.md)",
    "CPython": "the Python interpreter, whose frame stack sagalocal/framestack.py gives room to (testing.md)",
    "JSONPath": "the path syntax of the ASL's InputPath, OutputPath, ResultPath",
    "BatchProcessor": "Powertools' partial batch response processor, which PublishOutcome's InOrderStreamProcessor "
                      "extends (imported, so only its members would be known)",
    "PaymentIntent": "Stripe's payment object, which the Stripe adapter drives (deploying.md)",
    "SetupIntent": "Stripe's object that authenticates a card ahead of a payment (deploying.md, 3-D Secure)",
    # AWS names that are no API operation, field or error of botocore's models.
    "InvalidAction": "AWS's common error code for an action an API does not have: what ministack's Step Functions "
                     "answers RedriveExecution with (test_redrive.py's skip, in engines.md)",
    "ExecutionsFailed": "Step Functions' CloudWatch metric of failed executions",
    "UserPoolClientV2": "operations.md's example name for a second app client, added while rotating",
    # The saga's past.
    "CreateOrder": "the state and function that took the lease until issue 21 (now ReserveInventory's first write): "
                   "named where the docs record measurements and counterexamples of that time, and the upgrade",
    "CreateOrderFunction": "its function, in the cold-start table's column of 5d5f643 (what `make bench` compares)",
}


# ---- the docs, as text to check ------------------------------------------------------------------------------
FENCE = re.compile(r"^(```|~~~)(\w*)")
INLINE_CODE = re.compile(r"``([^`]+)``|`([^`]+)`")
LINK_TARGET = re.compile(r"\]\([^)]*\)|https?://\S+|<!--.*?-->")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
PROSE_NAME = re.compile(r"(?<![\w$/.#-])[A-Z][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
CAMEL = re.compile(r"[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*|[A-Z]{2,}[a-z][A-Za-z0-9]*")
ACRONYM_WORD = re.compile(r"[A-Z]{2,}(?:s|ed|ing)")  # English: ARNs, SCPs, POSTed
ALL_CAPS = re.compile(r"[A-Z][A-Z0-9_]+")


def blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, kind, text) for every line: kind is "prose", or the fenced block's language ("" if none)."""
    kind = None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line.strip())
        if fence:
            kind = fence.group(2) if kind is None else None
            continue
        yield number, "prose" if kind is None else kind, line


def names_in(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, name, where) for every name to check: where is "code" (backticks), "prose" or "block"."""
    for number, kind, line in blocks(path.read_text()):
        if kind == "prose":
            for double, single in INLINE_CODE.findall(line):
                span = (double or single).strip()
                if IDENTIFIER.fullmatch(span) and span[0].isupper():
                    yield number, span, "code"
            line = INLINE_CODE.sub(" ", line)
        line = LINK_TARGET.sub(" ", line)
        for name in PROSE_NAME.findall(line):
            if any(CAMEL.fullmatch(part) for part in name.split(".")) and not ACRONYM_WORD.fullmatch(name):
                yield number, name, "prose" if kind == "prose" else "block"


def state_diagram_nodes(path: Path) -> Iterator[tuple[int, str]]:
    """The nodes of every Mermaid stateDiagram-v2 block."""
    in_diagram = False
    for number, kind, line in blocks(path.read_text()):
        if kind != "mermaid":
            in_diagram = False
            continue
        text = line.strip()
        if text.startswith("stateDiagram"):
            in_diagram = True
            continue
        if not in_diagram or not text or text == "}":
            continue
        declared = re.fullmatch(r"state (\w+)(?: <<\w+>>| \{)", text)
        if declared:
            yield number, declared.group(1)
            continue
        edge = re.fullmatch(r"(\S+) --> (\S+)(?: : .*)?", text)
        assert edge, f"{path.name}:{number}: a state diagram line this test cannot read: {text!r}"
        yield from ((number, node) for node in edge.groups() if node != "[*]")


# ---- what the project defines ------------------------------------------------------------------------------
def walk(value: Any) -> Iterator[tuple[str | None, Any]]:
    """(key, value) of every mapping entry and list item, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield None, item
            yield from walk(item)


def words_of(document: Any) -> set[str]:
    """Every key of a JSON/YAML document, and every string value that is a name (or a list of names)."""
    found = set()
    for key, value in walk(document):
        if key is not None:
            found.add(str(key).removeprefix("Fn::"))  # an intrinsic function: Fn::GetAtt is GetAtt
        if isinstance(value, str):
            found |= set(re.findall(r"(?<![\w.])[A-Za-z_][A-Za-z0-9_.]*[A-Za-z0-9_]", value)) \
                if value.startswith(("{", "[")) else ({value} if IDENTIFIER.fullmatch(value) else set())
    return found


@cache
def template() -> Any:
    from sagalocal.template import Template

    return Template(ROOT / "template.yaml")


@cache
def template_names() -> set[str]:
    """The names a resource-shaped name must be: logical ids, parameters, outputs, conditions."""
    raw = template().raw
    return {name for section in ("Resources", "Parameters", "Outputs", "Conditions")
            for name in raw.get(section) or {}}


@cache
def asl() -> dict[str, Any]:
    return json.loads((ROOT / "statemachine/order_saga.asl.json").read_text())


@cache
def asl_states() -> set[str]:
    def states(definition: dict[str, Any]) -> set[str]:
        found = set(definition["States"])
        for state in definition["States"].values():
            inner = state.get("ItemProcessor") or state.get("Iterator")
            if inner:
                found |= states(inner)
        return found

    return states(asl())


@cache
def asl_errors() -> set[str]:
    found = set()
    for key, value in walk(asl()):
        if key in ("Retry", "Catch"):
            found |= {name for rule in value for name in rule["ErrorEquals"]}
        if key == "Error":
            found.add(value)
    return found


@cache
def code() -> tuple[dict[str, set[str]], set[str], set[str]]:
    """The project's classes with their members, the external names it imports, and every name it uses (its
    definitions and the string constants that are names)."""
    classes: dict[str, set[str]] = {}
    imported: set[str] = set()
    used: set[str] = set()
    for path in (p for folder in CODE_DIRS for p in (ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                members = classes.setdefault(node.name, set())
                for item in ast.walk(node):
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        members.add(item.name)
                    elif isinstance(item, ast.Name) and isinstance(item.ctx, ast.Store):
                        members.add(item.id)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        members.add(item.target.id)
                    elif (isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store)
                          and isinstance(item.value, ast.Name) and item.value.id == "self"):
                        members.add(item.attr)
            elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(
                    ("order_saga", "sagalocal", "sagafaults", "scripts", "tests", "functions")) and node.level == 0:
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                used.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and IDENTIFIER.fullmatch(node.value):
                used.add(node.value)
    return classes, imported, used | set(classes)


@cache
def constants_of_tests() -> set[str]:
    """The ALL_CAPS string constants of the tests: the environment variables they read (SAGA_API_URL, CI)."""
    found = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ALL_CAPS.fullmatch(node.value):
                found.add(node.value)
    return found


@cache
def aws_names() -> set[str]:
    import botocore.session

    session = botocore.session.get_session()
    found: set[str] = set()
    for service in AWS_SERVICES:
        model = session.get_service_model(service)
        found |= set(model.operation_names) | set(model.shape_names)
        for name in model.shape_names:
            shape = model.shape_for(name)
            found |= set(getattr(shape, "members", {}) or {}) | set(getattr(shape, "enum", []) or [])
    return found


@cache
def defined() -> set[str]:
    """Every name the project's sources and AWS's models define, without ALLOWED."""
    from order_saga import orders

    schema = json.loads((ROOT / "docs/events.schema.json").read_text())
    return (template_names() | words_of(template().raw) | asl_states() | asl_errors() | words_of(asl())
            | code()[2] | words_of(schema) | set(orders.STEP_ORDER) | aws_names() | set(dir(builtins)))


def vocabulary() -> set[str]:
    return defined() | set(ALLOWED)


def statuses() -> set[str]:
    from order_saga import models

    return {value for name, value in vars(models).items() if name.isupper() and isinstance(value, str)}


def problem(name: str, where: str) -> str | None:
    """Why `name` is not a name the project defines, or None when it is."""
    head, _, rest = name.partition(".")
    if head in ASL_NAMESPACES and rest:
        return None if name in asl_errors() else "not an error the ASL retries or catches"
    if head == "Saga" and rest:
        return None if f"States.{rest}" in asl_errors() else f"CancelOrder renames States.{rest}, not in the ASL"
    classes, imported, _ = code()
    if rest and head in classes:
        member = rest.split(".")[0]
        return None if member in classes[head] else f"{head} has no member {member}"
    if rest and head in imported:
        return None  # a class of a library the code imports (moto's LambdaSimpleBackend): its members are its own
    parts = [name] if not rest else [part for part in name.split(".") if CAMEL.fullmatch(part)]
    for part in parts:
        if ALL_CAPS.fullmatch(part):
            known = vocabulary() | constants_of_tests() | {"GET", "POST", "PUT", "DELETE", "PATH", "AWS_REGION",
                                                         "AWS_PROFILE", "AWS_ENDPOINT_URL", "LOCALSTACK_AUTH_TOKEN"}
            if part not in known:
                return "not a constant, environment variable or value the project or AWS defines"
            continue
        if part.endswith(RESOURCE_SUFFIXES) and CAMEL.fullmatch(part) and part not in template_names() \
                and part not in aws_names() and part not in ALLOWED:
            return "not a logical id, parameter, output or condition of template.yaml"
        if part not in vocabulary() and not (where == "prose" and part.endswith("s") and part[:-1] in vocabulary()):
            return "not a name the template, the ASL, the code, the event schema or AWS defines"
    return None


def test_every_name_the_docs_use_is_defined_by_the_template_the_asl_the_code_or_aws():
    unknown = [f"{path.relative_to(ROOT)}:{line}: {name} ({why})"
               for path in DOCS for line, name, where in names_in(path)
               for why in [problem(name, where)] if why]
    assert not unknown, "names the project does not define:\n" + "\n".join(unknown)


def test_every_allowed_name_is_used_and_defined_nowhere_else():
    used = {part.removesuffix("s") if part not in ALLOWED else part
            for path in DOCS for _, name, _ in names_in(path) for part in name.split(".")}
    assert set(ALLOWED) <= used, f"allowed but used in no doc: {sorted(set(ALLOWED) - used)}"
    assert not set(ALLOWED) & defined(), f"allowed, but defined anyway: {sorted(set(ALLOWED) & defined())}"


def test_every_state_diagram_node_is_a_state_of_the_asl_or_a_saga_status():
    known = asl_states() | statuses()
    unknown = [f"{path.relative_to(ROOT)}:{line}: {node}"
               for path in DOCS for line, node in state_diagram_nodes(path) if node not in known]
    assert not unknown, "state diagram nodes that are no ASL state and no saga status:\n" + "\n".join(unknown)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for _, kind, line in blocks(path.read_text()) if kind == "prose"
            for heading in re.findall(r"^#+ (.*)", line)}


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for path in DOCS:
        for line, kind, text in blocks(path.read_text()):
            for target in re.findall(r"\]\(([^)\s]+)\)", text) if kind == "prose" else []:
                if re.match(r"\w+:", target):
                    continue
                file, _, anchor = target.partition("#")
                linked = (path.parent / file).resolve() if file else path
                if not linked.exists() or (anchor and anchor not in anchors(linked)):
                    broken.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_the_parameter_table_lists_every_parameter_with_its_default():
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", (ROOT / "docs/deploying.md").read_text(), re.MULTILINE))
    declared = {name: str(spec.get("Default")) for name, spec in template().raw["Parameters"].items()}
    assert rows == declared, "docs/deploying.md's parameter table differs from template.yaml's Parameters"


def test_the_timing_table_is_generated_from_the_template_and_the_asl():
    from scripts.generate_timing_table import DOC, block

    assert block() in DOC.read_text(), "run `make docs` to regenerate the timing table in docs/timeouts.md"
