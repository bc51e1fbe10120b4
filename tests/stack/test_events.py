"""Every event file under events/ runs through its function and gives the result events/manifest.json
documents for it: an order that does not exist yet, the catalog seeded.

Each invoke is `sagalocal invoke <Function> -e <event> --endpoint <the stack's AWS endpoint>`, as a developer
types it against a running stack, on the stack under test. Two of them (the first file documented to succeed and
the first documented to fail) run as `python -m sagalocal invoke ...` in a process of their own: the command as
typed, its exit status (0, 1) and its streams (the payload on stdout, the outcome on stderr). The others run the
same command line through the same entry point in this process (`sagalocal.cli.main`, its stdout and stderr
captured): what they prove is each event's result through its function on the stack, which a new interpreter per
event (~0.5 CPU-s each, importing boto3 again) adds nothing to. The event's order id (ord_example) and
Idempotency-Key are made unique for the run, so every event meets the state the manifest describes whatever else
ran on the stack. On a deployed stack the logical ids are mapped to the functions through CloudFormation
(SAGA_STACK_NAME).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from order_saga.models import order_id_for
from sagalocal.template import Template
from tests.stack.conftest import DEPLOYED, ROOT

EVENTS = ROOT / "events"
MANIFEST = json.loads((EVENTS / "manifest.json").read_text())
ENTRIES: dict[str, dict[str, Any]] = MANIFEST["events"]
NOT_EVENTS = {"catalog.json", "promotions.json", "scenarios.json", "manifest.json"}  # data, not events
PUBLISHED = "outcomes"  # what the saga publishes (tests/unit/test_outcome_events.py), not a function's event
RUN = uuid.uuid4().hex[:10]


def unique(text: str, file: str) -> str:
    """The event file's text, or its expectation's, with this run's order ids and Idempotency-Keys."""
    event = (EVENTS / file).read_text()
    customer = re.search(r'"sub": "([^"]+)"', event)
    for key in set(re.findall(r'"Idempotency-Key": "([^"]+)"', event)):
        sub = customer.group(1) if customer else ""
        text = text.replace(order_id_for(sub, key), order_id_for(sub, f"{key}-{RUN}")).replace(
            f'"{key}"', f'"{key}-{RUN}"')
    return text.replace("ord_example", f"ord_example_{RUN}")


def invoke(target, file: str, workdir: Path, own_process: bool) -> subprocess.CompletedProcess[str]:
    """`sagalocal invoke` of the event file on the stack under test: in a process of its own (`python -m
    sagalocal`), or through the CLI's entry point in this one (its stdout and stderr captured; one at a time)."""
    event = workdir / file.replace("/", "__")
    event.write_text(unique((EVENTS / file).read_text(), file))
    args = ["invoke", ENTRIES[file]["function"], "-e", str(event), "--region", target.region]
    if target.endpoint:
        args += ["--endpoint", target.endpoint]
    if os.environ.get("SAGA_STACK_NAME"):
        args += ["--stack-name", os.environ["SAGA_STACK_NAME"]]
    if own_process:
        return subprocess.run([sys.executable, "-m", "sagalocal", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=False)
    from sagalocal.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(args)
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def typed(selected: list[str]) -> set[str]:
    """The files whose invoke runs as typed, in a process of its own: the first documented to succeed and the
    first documented to fail (exit status 0 and 1)."""
    ok = [file for file in selected if ENTRIES[file]["expect"].get("ok")]
    failing = [file for file in selected if not ENTRIES[file]["expect"].get("ok")]
    return set(ok[:1] + failing[:1])


@pytest.fixture(scope="module")
def invoked(request: pytest.FixtureRequest, target, tmp_path_factory) -> dict[str, subprocess.CompletedProcess[str]]:
    """The invoke of every manifest entry selected in this session: the typed ones (typed()) in processes of their
    own, meanwhile the others one after the other in this process."""
    if DEPLOYED and not os.environ.get("SAGA_STACK_NAME"):
        pytest.skip("set SAGA_STACK_NAME to map the events' logical ids to the deployed functions")
    workdir = tmp_path_factory.mktemp("events")
    selected = sorted({item.callspec.params["file"] for item in request.session.items
                       if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
                       and "file" in item.callspec.params})
    own = typed(selected)
    with ThreadPoolExecutor(max_workers=max(1, len(own))) as pool:
        running = {file: pool.submit(invoke, target, file, workdir, True) for file in sorted(own)}
        done = {file: invoke(target, file, workdir, False) for file in selected if file not in own}
        done.update({file: future.result() for file, future in running.items()})
    return done


def contains(actual: Any, expected: Any, where: str = "$") -> None:
    """`actual` has every field of `expected` with its value; a JSON string (an API body) is decoded first."""
    if isinstance(expected, dict):
        if isinstance(actual, str):
            try:
                actual = json.loads(actual)
            except ValueError:
                pytest.fail(f"{where}: expected a JSON object, got the string {actual[:200]!r}")
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} is missing from {sorted(actual)}"
            contains(actual[key], value, f"{where}.{key}")
    else:
        assert actual == expected, f"{where}: {actual!r}, documented {expected!r}"


@pytest.mark.parametrize("file", sorted(ENTRIES))
def test_event_gives_its_documented_result(file: str, invoked):
    entry = ENTRIES[file]
    done = invoked[file]
    function = entry["function"]
    expect = json.loads(unique(json.dumps(entry["expect"]), file))
    assert done.returncode in (0, 1), f"invoke failed to run ({done.returncode}): {done.stderr[-2000:]}"
    try:
        payload = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"stdout is not the JSON payload: {done.stdout[:500]!r}\n{done.stderr[-2000:]}")
    if expect.get("ok"):
        assert done.returncode == 0, f"{file} documents success; {function} failed: {payload}"
        assert f"{function}: ok in" in done.stderr
        contains(payload, {k: v for k, v in expect.items() if k != "ok"})
    else:
        assert done.returncode == 1, f"{file} documents {expect['errorType']}; {function} returned {payload}"
        assert f"{function}: error in" in done.stderr
        assert payload["errorType"] == expect["errorType"], payload.get("errorMessage")
        assert payload["errorMessage"], payload


def test_the_manifest_lists_every_event_file_and_only_existing_ones():
    on_disk = {path.relative_to(EVENTS).as_posix() for path in EVENTS.rglob("*.json")
               if path.parent.name != PUBLISHED} - NOT_EVENTS
    assert on_disk, "no event files found"
    assert on_disk - set(ENTRIES) == set(), "event files missing from events/manifest.json"
    assert set(ENTRIES) - on_disk == set(), "manifest entries whose file does not exist"


def test_every_manifest_entry_names_a_function_and_one_documented_result():
    template = Template(ROOT / "template.yaml")
    functions = template.of_type("AWS::Serverless::Function")
    for file, entry in ENTRIES.items():
        assert entry["function"] in functions, f"{file}: {entry['function']} is not a function in template.yaml"
        assert entry.get("why", "").strip(), f"{file}: say why it gives that result"
        expect = entry["expect"]
        assert (expect.get("ok") is True) != ("errorType" in expect), f"{file}: expect ok or an errorType, not both"
        # steps/<name>.json is the event of the function whose code is functions/<name>/; api/ is the API's;
        # schedule/<name>.json is the scheduled function's (functions/<name>/); streams/ holds DynamoDB stream
        # records, for the function a stream event source mapping feeds; eventbridge/ the events a function's
        # EventBridge rule delivers.
        folder = Path(file).parts[0]
        code = Path(str(template.properties(entry["function"])["CodeUri"])).name
        if folder in ("steps", "schedule"):
            assert code == Path(file).stem, f"{file} is listed for {entry['function']} (functions/{code}/)"
        elif folder == "streams":
            events = template.properties(entry["function"]).get("Events") or {}
            streams = [e for e in events.values() if e.get("Type") == "DynamoDB"]
            assert streams, f"{file}: no stream feeds {entry['function']}"
        elif folder == "eventbridge":  # an event an EventBridge rule of the function matches
            events = template.properties(entry["function"]).get("Events") or {}
            event = json.loads((EVENTS / file).read_text())
            patterns = [e["Properties"]["Pattern"] for e in events.values() if e.get("Type") == "EventBridgeRule"]
            assert any(p["source"] == [event["source"]] and p["detail-type"] == [event["detail-type"]]
                       for p in patterns), f"{file}: no EventBridge rule of {entry['function']} matches it"
        else:
            assert (folder, entry["function"]) == ("api", "OrdersApiFunction"), file
