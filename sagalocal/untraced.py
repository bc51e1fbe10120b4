"""Leave coverage out of a process that runs none of the measured code.

`make test` measures src/ and functions/ in every process it starts (pyproject.toml's [tool.coverage]). The
DynamoDB process and the stack's own process run neither: only moto and sagalocal, millions of Python calls
per run that coverage's tracer sees and throws away, which makes them 2.6 times slower (the simulation's cases,
measured on this machine: 49.5 ms without the tracer, 130.6 ms with it). Their children are measured as before:
the environment that tells a new process to measure itself is left as it is.
"""

from __future__ import annotations

import sys


def here() -> None:
    """Stop coverage's tracer in this process, if it runs; call it first thing, before any thread starts. A process
    that coverage measures has imported it before its own code ran: where it has not, nothing is imported to find
    that out (importing coverage costs ~0.03 CPU-s, for nothing in every process `make test` leaves unmeasured)."""
    coverage = sys.modules.get("coverage")
    if coverage is None:  # not measured (a deployed stack's image, a venv without the test dependencies too)
        return
    current = coverage.Coverage.current()
    if current is not None:
        current.stop()
