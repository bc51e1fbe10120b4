"""The docs match the code: the tables they generate are current."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_timing_table_is_generated_from_the_template_and_the_asl():
    from scripts.generate_timing_table import DOC, block

    assert block() in DOC.read_text(), "run `make docs` to regenerate the timing table in docs/timeouts.md"
