"""The error every part of the stack raises when a stack cannot start, apart from the parts that raise it: the CLI
catches it without importing what starts a stack (`sagalocal invoke --endpoint` never starts one)."""

from __future__ import annotations


class StackError(Exception):
    """The stack cannot start; the message says what and where."""
