"""Sender data on its way out: into file names, CSV cells and log lines.

A series id is whatever the camera (or anyone on its network) sent: ``../../x``, ``/etc``,
a NUL byte, a newline, ``=HYPERLINK(...)``. Values are kept as sent in the data (JSON,
Parquet); each *sink* that could misread them escapes them here:

- :func:`safe_filename` / :func:`inside`: a file name made from sender data is a plain name
  of safe characters, and every path is checked to lie inside the run folder;
- :func:`csv_cell`: a text cell that a spreadsheet would run as a formula starts with ``'``;
- :func:`escape_control` and :class:`EscapingFilter`: control characters in log messages are
  written as escapes, so no sender can forge a log line or send terminal escape sequences.
"""

from __future__ import annotations

import hashlib
import logging
import re
import traceback
from pathlib import Path
from typing import Any

__all__ = [
    "EscapingFilter",
    "MultiLine",
    "csv_cell",
    "escape_control",
    "inside",
    "install_log_escaping",
    "safe_filename",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_KEEP_NL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_filename(name: str, *, max_chars: int = 64) -> str:
    """A file name (no folder) made of ``[A-Za-z0-9._-]`` that stands for ``name``.

    A name that is already safe, at most ``max_chars`` long and not ``.``-led, is kept;
    any other is reduced to its safe characters, cut, and given 8 hex digits of its
    SHA-256, so that two different names never share a file.

    >>> safe_filename("run-7")
    'run-7'
    >>> safe_filename("../../x")
    '_.._x-9cdf6a50'
    """
    if name and len(name) <= max_chars and not name.startswith(".") and not _UNSAFE.search(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = _UNSAFE.sub("_", name)[: max_chars - 9].lstrip(".") or "_"
    return f"{stem}-{digest}"


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, if it lies inside ``root``; else ValueError (nothing is written)."""
    base = Path(root).resolve()
    p = Path(path).resolve()
    if p != base and base not in p.parents:
        raise ValueError(f"path: expected a file inside {base}, got {p}")
    return p


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would take for a formula, prefixed with ``'``.

    Numbers, and text that reads as a plain number (``-3.5``), are left alone.

    >>> csv_cell('=HYPERLINK("http://x")'), csv_cell("-2"), csv_cell("run-7"), csv_cell(5)
    ('\\'=HYPERLINK("http://x")', '-2', 'run-7', 5)
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    r"""``text`` with control characters written as escapes (``\n``, ``\x00``, ``\x1b``).

    With ``keep_newlines`` a newline stays but every following line is indented, so that no
    line of the text can pass for a log record of its own.

    >>> escape_control("a\nb\x1b[2J")
    'a\\nb\\x1b[2J'
    """
    pattern = _CONTROL_KEEP_NL if keep_newlines else _CONTROL
    out = pattern.sub(lambda m: repr(m.group())[1:-1], text)
    if keep_newlines:
        out = out.replace("\n", "\n    ")
    return out


class MultiLine(str):
    """A log argument whose newlines are meant (a traceback): kept, lines after the first
    indented; other control characters are still escaped."""


def _clean_arg(a: Any) -> Any:
    if isinstance(a, MultiLine):
        return escape_control(a, keep_newlines=True)
    if isinstance(a, str):
        return escape_control(a)
    return a


class EscapingFilter(logging.Filter):
    """A handler filter: control characters in a record's arguments are escaped.

    The format string is the program's own and keeps its newlines; arguments (where sender
    data goes) lose theirs, unless passed as :class:`MultiLine`. An exception's traceback
    is kept, every line of it indented.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_clean_arg(a) for a in args)
        elif isinstance(args, dict) and args:
            record.args = {k: _clean_arg(v) for k, v in args.items()}
        elif not args and isinstance(record.msg, str):
            record.msg = escape_control(record.msg, keep_newlines=True)
        if record.exc_info and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = "    " + escape_control(text, keep_newlines=True)
        return True


def install_log_escaping(logger: logging.Logger | None = None) -> None:
    """Add :class:`EscapingFilter` to every handler of ``logger`` (default: the root)."""
    for h in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, EscapingFilter) for f in h.filters):
            h.addFilter(EscapingFilter())
