"""sagalocal/framestack.py: a call from a frame with room on CPython's frame stack."""

from __future__ import annotations

import pickle
import resource
import sys

import pytest

from sagalocal import framestack
from sagalocal.framestack import call


def test_call_is_the_call_it_wraps() -> None:
    assert call(divmod, 7, 2) == (3, 1)
    assert call(dict, a=1) == {"a": 1}
    with pytest.raises(ZeroDivisionError):
        call(divmod, 1, 0)


def test_call_pickles_by_reference_for_a_pool() -> None:
    assert pickle.loads(pickle.dumps(call)) is call  # noqa: S301 - bytes this test made


def _dive(depth: int) -> int:
    return 0 if depth == 0 else 1 + _dive(depth - 1)


def _swing(times: int) -> int:
    """A call depth swinging from here to 400 frames deeper and back (a frame of _dive takes ~120 bytes: ~48 KB,
    across at least two edges of 16 KiB chunks each way, each time). The page faults of this thread only: another
    thread of the process (a pool's manager) faults pages of its own meanwhile."""
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(times):
        _dive(400)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


@pytest.mark.skipif(sys.implementation.name != "cpython" or sys.version_info < (3, 11)
                    or not hasattr(resource, "RUSAGE_THREAD"),
                    reason="frame chunks are CPython 3.11+'s; a thread's own page faults are Linux's")
def test_a_swinging_call_depth_maps_no_chunk_from_a_roomy_frame() -> None:
    assert framestack.call.__code__.co_stacksize == framestack.ROOM
    # Without the room, each swing maps a new chunk and faults its first page in: at least one fault a swing. A
    # CPython that keeps its chunks (releases after gh-142183 keep one spare) may not: then there is nothing to show.
    plain = _swing(2000)
    if plain < 2000:
        pytest.skip(f"this CPython keeps its frame chunks ({plain} page faults in 2,000 swings): no mapping to save")
    # From the roomy frame every frame fits in its chunk: no chunk is mapped (a few faults of anything else).
    assert call(_swing, 2000) < 100
