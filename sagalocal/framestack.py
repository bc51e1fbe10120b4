"""Run a call with room on CPython's frame stack, so that a deep, swinging call chain stops mapping memory.

CPython (3.11 and later) keeps a thread's Python frames in chunks of 16 KiB that it maps with mmap: a call that
does not fit in the current chunk maps a new one, and when the frame at a chunk's base returns, the chunk is
unmapped (Python/pystate.c, push_chunk and _PyThreadState_PopFrame; no chunk is kept for later). Code whose call
depth swings across a chunk's edge maps and unmaps 16 KiB at every crossing, and faults its pages in each time.
The simulation's workers did it ~800 times a case: on the explorer's plain path, 221,000 mmap/munmap pairs and
as many page faults, 1.9 of the path's 10.5 CPU-s spent in the kernel. Where the edge falls depends on how deep
the process's own frames start (a pool worker starts deeper than a script), so a run can be lucky or not.

`call(fn, *args)` runs fn from a frame whose code claims a large stack (co_stacksize raised, nothing else
changed): CPython gives that frame a chunk of its own, the first power of two times 16 KiB that holds it plus
its margin (512 KiB here), and the frames that fn's calls push fit in the rest of that chunk (~199 KiB: ~1,700
of the smallest frames, fewer real ones), so none is mapped while fn runs. Measured on CPython 3.13.0 in a
spawned worker, the plain and declined paths: 442,000 page faults and 23.9-26.0 CPU-s before, 300 and 18.4-18.8
CPU-s after. The extra slots are never read (CPython copies, clears and traverses a frame's stack up to its top
only). Where code objects cannot be changed (another Python), `call` is a plain call.

Costs and limits: a frame object made for `call` (a traceback through it, sys._getframe) allocates all its
320 KiB, and each call maps and unmaps its 512 KiB chunk (~11 us): call it once per piece of work, never in a hot
path. Later CPython releases keep one spare chunk per thread (CPython issue gh-142183, merged in March 2026 and
backported to 3.13): there a depth swinging across one edge maps nothing, across more than one it still does, so
the gain may be smaller than measured here.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

ROOM = 40_000  # stack slots the frame claims: 320 KiB, so its chunk is 512 KiB and ~199 KiB are left for the calls


def _call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def _roomy(function: types.FunctionType) -> Callable[..., Any]:
    try:
        code = function.__code__.replace(co_stacksize=ROOM, co_name="call", co_qualname="call")
    except (AttributeError, TypeError, ValueError):  # not CPython 3.11+: nothing to gain
        return function
    roomy = types.FunctionType(code, function.__globals__, "call")
    roomy.__qualname__ = "call"  # pickled by reference (a pool's work), as sagalocal.framestack.call
    roomy.__doc__ = "fn(*args, **kwargs), called from a frame with room for the frames it pushes (module docstring)."
    return roomy


call = _roomy(_call)
