"""The engines' known gaps (tests/stack/engines.py) and docs/engines.md's reading of JUnit reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import engines_doc
from tests.stack import engines

REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.stack.test_auth" name="test_a[no token]" time="0.1"/>
<testcase classname="tests.stack.test_auth" name="test_a[access token]" time="0.1">
  <skipped type="pytest.xfail" message="ministack: accepts an access token"/></testcase>
<testcase classname="tests.stack.test_cli" name="test_b" time="0.0">
  <skipped type="pytest.skip" message="embedded only: tests the CLI">skip</skipped></testcase>
<testcase classname="tests.stack.test_cli" name="test_c" time="0.0">
  <skipped type="pytest.skip" message="embedded only: tests the CLI">skip</skipped></testcase>
<testcase classname="tests.stack.test_matrix" name="test_row" time="1.0"><failure message="boom"/></testcase>
<testcase classname="tests.stack.test_matrix" name="test_row" time="1.0"><error message="teardown"/></testcase>
<testcase classname="tests.stack.test_matrix" name="test_other" time="1.0"><error message="setup"/></testcase>
</testsuite></testsuites>"""


def test_a_gap_names_one_test_or_every_parameter_of_one(monkeypatch):
    monkeypatch.setattr(engines, "GAPS", {"emu": {"tests/stack/test_a.py::test_x[one]": "one",
                                                  "tests/stack/test_a.py::test_y[": "every"}})
    assert engines.gap("emu", "tests/stack/test_a.py::test_x[one]") == "one"
    assert engines.gap("emu", "tests/stack/test_a.py::test_x[two]") is None
    assert engines.gap("emu", "tests/stack/test_a.py::test_y[anything]") == "every"
    assert engines.gap("emu", "tests/stack/test_a.py::test_yy") is None
    assert engines.gap("other", "tests/stack/test_a.py::test_x[one]") is None
    # A renamed test leaves its gap naming nothing: found, so the list follows the tests.
    assert engines.stale("emu", ["tests/stack/test_a.py::test_x[one]"]) == ["tests/stack/test_a.py::test_y["]
    assert engines.stale("emu", ["tests/stack/test_a.py::test_x[one]", "tests/stack/test_a.py::test_y[z]"]) == []


def test_every_gap_names_a_test_of_the_tier():
    """Each gap names a test function that exists in its file, or a file (parameters are checked when the tier
    runs)."""
    for table in (engines.GAPS, engines.UNRUNNABLE):
        for engine, gaps in table.items():
            assert engine in engines.ENGINES
            for name, reason in gaps.items():
                path, function = name.split("::")
                assert Path(path).exists(), name
                if function:
                    assert f"def {function.split('[')[0]}(" in Path(path).read_text(), name
                assert reason.strip(), name


def test_a_report_counts_each_file_and_keeps_the_reasons(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(REPORT)
    found = engines_doc.outcomes(report)
    assert found["files"] == {"tests/stack/test_auth.py": {"passed": 1, "xfailed": 1},
                              "tests/stack/test_cli.py": {"skipped": 2},
                              "tests/stack/test_matrix.py": {"failed": 2}}
    assert found["reasons"] == {"tests/stack/test_auth.py": {"xfailed: ministack: accepts an access token": 1},
                                "tests/stack/test_cli.py": {"skipped: embedded only: tests the CLI": 2}}
    # Two reports of one engine (make test's stack groups) add up.
    assert engines_doc.merged([report, report])["files"]["tests/stack/test_cli.py"] == {"skipped": 4}


def test_the_page_shows_runs_and_says_what_did_not_run(tmp_path, monkeypatch):
    report = tmp_path / "junit.xml"
    report.write_text(REPORT)
    monkeypatch.setattr(engines_doc, "DATA", tmp_path / "engines.json")
    monkeypatch.setattr(engines_doc, "PAGE", tmp_path / "engines.md")
    assert engines_doc.main(["--ministack", str(report)]) == 0
    data = json.loads((tmp_path / "engines.json").read_text())
    assert set(data) == {"ministack"}
    assert data["ministack"]["commit"]
    page = (tmp_path / "engines.md").read_text()
    assert "| `test_auth.py` | not run | 1 passed, 1 xfailed |" in page
    assert "| `test_matrix.py` | not run | 2 failed |" in page
    assert "not run here: LocalStack runs Lambda functions in Docker" in page
    assert "- `test_cli.py` (2): skipped: embedded only: tests the CLI" in page
    # A later run of another engine keeps ministack's figures.
    assert engines_doc.main(["--embedded", str(report)]) == 0
    assert set(json.loads((tmp_path / "engines.json").read_text())) == {"embedded", "ministack"}
    # A report that is not there is an error, and changes nothing.
    before = (tmp_path / "engines.md").read_text()
    assert engines_doc.main(["--ministack", str(tmp_path / "missing.xml")]) == 2
    assert (tmp_path / "engines.md").read_text() == before


@pytest.mark.parametrize("engine", sorted(engines_doc.NOT_RUN_HERE))
def test_an_engine_that_cannot_run_here_is_never_given_figures(engine):
    """docs/engines.json, as committed, has figures only for the engines that run on this project's machines."""
    assert engine in engines.ENGINES
    assert engine not in json.loads(engines_doc.DATA.read_text())


def test_an_unrunnable_test_is_counted_as_not_run(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text('<testsuites><testsuite><testcase classname="tests.stack.test_concurrency" name="test_x">'
                      '<skipped type="pytest.xfail" message="[NOTRUN] ministack, not run: hangs"/></testcase>'
                      '</testsuite></testsuites>')  # pytest's own words for xfail(run=False)
    found = engines_doc.outcomes(report)
    assert found["files"] == {"tests/stack/test_concurrency.py": {"not run": 1}}
    assert found["reasons"] == {"tests/stack/test_concurrency.py": {"not run: ministack, not run: hangs": 1}}
    assert engines.unrunnable("ministack", "tests/stack/test_concurrency.py::test_anything")
    assert engines.unrunnable("ministack", "tests/stack/test_auth.py::test_anything") is None
