"""A function's code as a version holds it: a content-addressed copy of its directories, taken when it is published.

Lambda keeps a published version's code and configuration as they were (a later deploy changes neither), so two
versions of one function can run side by side, each its own code. Here a version's code is the hash of its
directories (the function's CodeUri and its layers' ContentUri, without bytecode caches) and a copy of them under
that hash, made once per distinct content. A version's sandboxes run from the directories themselves while they
still hold that content (so coverage and tracebacks name the project's files), and from the copy once they changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def _files(root: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(folder, name)


def tree_hash(dirs: Iterable[Path]) -> str:
    """The hash of the directories' files: their paths (relative to each directory) and contents, in order."""
    digest = hashlib.sha256()
    for index, root in enumerate(dirs):
        root = Path(root)
        digest.update(f"\0dir {index}\0".encode())
        for path in _files(root):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """A version's code: the directories it was published from, their hash then, and the copy of them."""

    sources: tuple[Path, ...]
    digest: str
    copies: tuple[Path, ...]

    def dirs(self) -> tuple[Path, ...]:
        """Where the version's code is now: the sources while they still hash the same, else the copy."""
        return self.sources if tree_hash(self.sources) == self.digest else self.copies


class CodeStore:
    """Copies of published code under `root`, one per distinct content (the digest names the folder)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def snapshot(self, dirs: Iterable[Path]) -> Snapshot:
        sources = tuple(Path(d).resolve() for d in dirs)
        digest = tree_hash(sources)
        target = self.root / digest[:16]
        copies = tuple(target / f"{index}-{source.name}" for index, source in enumerate(sources))
        with self._lock:
            if not target.is_dir():
                self.root.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
                for source, copy in zip(sources, copies, strict=True):
                    shutil.copytree(source, staging / copy.name, ignore=shutil.ignore_patterns(*_SKIPPED_DIRS,
                                                                                                 "*.pyc", "*.pyo"))
                staging.rename(target)
        if tree_hash(copies) != digest:  # the sources changed while they were copied: copy what is there now
            shutil.rmtree(target, ignore_errors=True)
            return self.snapshot(sources)
        return Snapshot(sources, digest, copies)
