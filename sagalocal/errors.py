"""The errors the CLI reports in one line (exit status 2), apart from the parts that raise them: the CLI catches them
without importing what starts a stack (`sagalocal invoke --endpoint` never starts one) or serves the console."""

from __future__ import annotations


class StackError(Exception):
    """The stack cannot start; the message says what and where."""


class UsageError(Exception):
    """What the command was given cannot be used (a file, an argument); the message says which and why."""
