"""Exceptions shared across loopline."""

from __future__ import annotations


class CliError(Exception):
    """A user error in a command: printed as one line by ``loopline``, exit status 2."""
