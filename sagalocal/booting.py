"""The boot of a process that then serves for long (the stack's own, its DynamoDB process): no garbage collection
while it builds what lives as long as it does.

Python's collector runs every 2,000 new container objects, walking the young ones, and walks the whole heap each
time that heap has grown by a quarter. A stack's boot makes ~330,000 (moto's and botocore's models, SAM's translator,
the resources), nearly all of them kept until the process ends: in the stack's process, 183 collections to its ready
file freed ~9,000 objects for ~0.25 of its ~2.5 CPU-s. So the collector is off while the process boots; once it
serves, what the boot made is frozen (`gc.freeze`: later collections, which the serving's own garbage triggers as
before, no longer walk it) and the collector is on again. The boot's own few cycles are never freed, once.
"""

from __future__ import annotations

import gc

_booting = False


def begin() -> None:
    """No collection from here until `served()`."""
    global _booting
    gc.disable()
    _booting = True


def served() -> None:
    """The boot is done (or failed): what it made is left alone by the collector from now on, and the collector is on
    again. Nothing, where no boot began (a command refused before it boots, run in a test's own process)."""
    global _booting
    if _booting:
        gc.freeze()
        gc.enable()
        _booting = False
