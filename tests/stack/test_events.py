"""Every event file under events/ runs through its function with the local invoke and gives the result
events/manifest.json documents for it (on a fresh stack: the catalog seeded, no orders).

Each invoke is `python -m sagalocal invoke <Function> -e events/<file>`, as a developer types it; each
stands up its own stack, so they run two at a time in one module-scoped fixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sagalocal.template import Template
from tests.stack.conftest import ROOT

EVENTS = ROOT / "events"
MANIFEST = json.loads((EVENTS / "manifest.json").read_text())
ENTRIES: dict[str, dict[str, Any]] = MANIFEST["events"]
NOT_EVENTS = {"catalog.json", "scenarios.json", "manifest.json"}  # data, not events
INVOKE_TIMEOUT = 120


def invoke(file: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sagalocal", "invoke", ENTRIES[file]["function"],
                           "-e", f"events/{file}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=INVOKE_TIMEOUT, check=False)


@pytest.fixture(scope="module")
def invoked(request: pytest.FixtureRequest) -> dict[str, subprocess.CompletedProcess[str]]:
    """The invoke of every manifest entry selected in this session, two at a time."""
    selected = sorted({item.callspec.params["file"] for item in request.session.items
                       if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
                       and "file" in item.callspec.params})
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(selected, pool.map(invoke, selected), strict=True))


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
    function, expect = entry["function"], entry["expect"]
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
    on_disk = {path.relative_to(EVENTS).as_posix() for path in EVENTS.rglob("*.json")} - NOT_EVENTS
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
        # schedule/<name>.json is the scheduled function's (functions/<name>/).
        folder = Path(file).parts[0]
        code = Path(str(template.properties(entry["function"])["CodeUri"])).name
        if folder in ("steps", "schedule"):
            assert code == Path(file).stem, f"{file} is listed for {entry['function']} (functions/{code}/)"
        else:
            assert (folder, entry["function"]) == ("api", "OrdersApiFunction"), file
