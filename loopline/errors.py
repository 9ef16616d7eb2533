"""Exceptions shared across loopline."""

from __future__ import annotations


class CliError(Exception):
    """A user error in a command: printed as one line by ``loopline``, exit status 2."""


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid (the daemon's sections and the
    viewer's ``[view]`` alike: one error type, one message naming the key)."""
