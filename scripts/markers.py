"""A generated block in a hand-written file: the text between its two marker lines, replaced whole."""

from __future__ import annotations


def replace_block(text: str, start: str, end: str, block: str, where: str) -> str:
    """`text` with everything from `start` to `end` (the markers included) replaced by `block`."""
    if start not in text or end not in text:
        raise SystemExit(f"{where} has no markers ({start} ... {end}): add them where the block belongs")
    head, rest = text.split(start, 1)
    return head + block + rest.split(end, 1)[1]
