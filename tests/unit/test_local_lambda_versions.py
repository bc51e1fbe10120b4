"""The embedded Lambda service's versions and aliases: a published version keeps the code and configuration it was
published with (a later change of the directories changes neither), qualified invokes (a version ARN, an alias,
`name:qualifier`, a Qualifier) run that version, and two versions of one function run side by side."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from pathlib import Path

import pytest

from sagalocal.awslambda.code import CodeStore, tree_hash
from sagalocal.awslambda.runtime import FunctionSpec, Throttled
from sagalocal.awslambda.service import LambdaService, UnknownFunction

ARN = "arn:aws:lambda:us-east-1:123456789012:function:stack-Fn-ABC"
HANDLER = '''
import os, time
from shared import LAYER_MARK
CODE_MARK = {mark!r}

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    spin_until = time.process_time() + event.get("spin", 0)
    while time.process_time() < spin_until:
        pass
    return {{"code": CODE_MARK, "layer": LAYER_MARK, "version": context.function_version,
            "env_version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"], "invoked": context.invoked_function_arn,
            "setting": os.environ["SETTING"]}}
'''


def write_code(root: Path, mark: str) -> None:
    (root / "fn").mkdir(parents=True, exist_ok=True)
    (root / "layer").mkdir(parents=True, exist_ok=True)
    (root / "fn" / "app.py").write_text(HANDLER.format(mark=mark))
    (root / "layer" / "shared.py").write_text(f"LAYER_MARK = {mark!r}\n")


@pytest.fixture
def lambdas(tmp_path):
    write_code(tmp_path, "one")
    service = LambdaService({"PATH": os.environ.get("PATH", "")}, cold_start_delay=False)
    latest = FunctionSpec(logical_id="Fn", name="stack-Fn-ABC", arn=ARN, handler="app.handler",
                          code_dir=tmp_path / "fn", layer_dirs=[tmp_path / "layer"], environment={"SETTING": "a"},
                          timeout=10, memory=128, log_path=tmp_path / "Fn.log", reserved_concurrency=1)
    store = CodeStore(tmp_path / "code")

    def publish(spec: FunctionSpec, version: str) -> FunctionSpec:
        published = dataclasses.replace(spec, version=version,
                                        snapshot=store.snapshot([spec.code_dir, *spec.layer_dirs]))
        service.publish(published)
        return published

    service.add(latest)
    yield service, latest, publish, tmp_path
    service.stop()


def test_a_published_version_keeps_its_code_and_configuration_after_they_change(lambdas):
    service, latest, publish, root = lambdas
    publish(latest, "1")
    write_code(root, "two")  # a later deploy's code, before version 1 ever ran
    service.add(dataclasses.replace(latest, environment={"SETTING": "b"}))
    publish(service.runtimes["Fn"].spec, "2")

    one, two = service.invoke("Fn:1", {}).payload, service.invoke("Fn:2", {}).payload
    assert (one["code"], one["layer"], one["setting"]) == ("one", "one", "a")
    assert (two["code"], two["layer"], two["setting"]) == ("two", "two", "b")
    assert (one["version"], one["env_version"], two["version"]) == ("1", "1", "2")
    assert service.invoke("Fn", {}).payload["version"] == "$LATEST"


def test_qualified_invokes_run_the_version_they_name_and_an_alias_resolves_when_invoked(lambdas):
    service, latest, publish, root = lambdas
    publish(latest, "1")
    service.set_alias("Fn", "live", "1", event_target=True)
    write_code(root, "two")
    service.add(dataclasses.replace(latest))
    publish(service.runtimes["Fn"].spec, "2")

    assert service.invoke(f"{ARN}:1", {}).payload["invoked"] == f"{ARN}:1"
    by_alias = service.invoke(f"{ARN}:live", {}).payload
    assert (by_alias["code"], by_alias["version"], by_alias["invoked"]) == ("one", "1", f"{ARN}:live")
    assert service.invoke("stack-Fn-ABC", {}, qualifier="live").payload["code"] == "one"
    assert service.invoke_event("Fn", {}).payload["invoked"] == f"{ARN}:live"  # event sources use the alias
    service.set_alias("Fn", "live", "2", event_target=True)
    assert service.invoke("Fn:live", {}).payload["code"] == "two"
    assert service.invoke("Fn", {}).payload["code"] == "two"  # $LATEST: the last deploy's
    assert service.invoke_for_states({"FunctionName": f"{ARN}:1", "Payload": "{}"})["ExecutedVersion"] == "1"
    headers: dict = {}  # Lambda's Invoke through moto's API, with a Qualifier
    answer = json.loads(service.invoke_for_moto("stack-Fn-ABC", b"{}", {}, headers, qualifier="live"))
    assert (answer["version"], headers["x-amz-executed-version"]) == ("2", "2")
    with pytest.raises(UnknownFunction):
        service.invoke("Fn:7", {})
    with pytest.raises(UnknownFunction):
        service.invoke("Fn:canary", {})


def test_two_versions_run_side_by_side_within_the_functions_reserved_concurrency(lambdas):
    service, latest, publish, root = lambdas
    publish(latest, "1")
    write_code(root, "two")
    publish(dataclasses.replace(latest), "2")
    service.invoke("Fn:2", {})  # started: its template process runs version 2's code
    answers: list = []
    slow = threading.Thread(target=lambda: answers.append(service.invoke("Fn:1", {"sleep": 1.5}).payload))
    slow.start()
    time.sleep(0.8)
    with pytest.raises(Throttled):  # reserved concurrency 1 is the function's, whichever version asks
        service.invoke("Fn:2", {})
    slow.join(10)
    assert answers
    assert answers[0]["code"] == "one"
    assert service.invoke("Fn:2", {}).payload["code"] == "two"


def test_a_snapshot_is_taken_once_per_content_and_runs_from_the_sources_while_they_are_unchanged(tmp_path):
    write_code(tmp_path, "one")
    store = CodeStore(tmp_path / "code")
    dirs = [tmp_path / "fn", tmp_path / "layer"]
    first, again = store.snapshot(dirs), store.snapshot(dirs)
    assert first == again
    assert len(list((tmp_path / "code").iterdir())) == 1
    assert first.dirs() == tuple(d.resolve() for d in dirs)  # unchanged: the project's own files run
    (tmp_path / "fn" / "__pycache__").mkdir()
    (tmp_path / "fn" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"bytecode")
    assert tree_hash(dirs) == first.digest  # bytecode caches are not code
    write_code(tmp_path, "two")
    assert first.dirs() == first.copies
    assert "'one'" in (first.copies[0] / "app.py").read_text()


def test_stats_count_every_invocation_of_every_version_and_the_milliseconds_lambda_bills(lambdas):
    """What the bill reads (bench/bill.py): each run's duration rounded up to the millisecond, summed."""
    service, latest, publish, _ = lambdas
    publish(latest, "1")
    durations = [service.invoke("Fn", {"sleep": 0.02}).duration_ms, service.invoke("Fn:1", {}).duration_ms]
    stats = service.stats()["functions"]["Fn"]
    assert stats["invocations"] == 2
    assert stats["billed_ms"] == sum(math.ceil(d) for d in durations)
    assert stats["billed_ms"] >= 20


def test_stats_count_the_handlers_own_cpu_and_not_their_waits(lambdas):
    """What the benchmarks compare a saga's CPU with (bench/run_all.py): the handler's CPU, as its sandbox measured."""
    service, _, _, _ = lambdas
    service.invoke("Fn", {"sleep": 0.05})
    slept = service.stats()["functions"]["Fn"]["handler_cpu_ms"]
    service.invoke("Fn", {"spin": 0.05})
    spun = service.stats()["functions"]["Fn"]["handler_cpu_ms"] - slept
    assert 0 <= slept < 25  # 50 ms asleep: no CPU
    assert spun >= 50
