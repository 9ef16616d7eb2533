"""Is the process that wrote a file still running? (pid reuse and zombies taken into account)

A file that names its writer (a video's ``.open`` sidecar, a Parquet parts folder, the
daemon's state file in a run folder) records the writer's pid and, on Linux, its start time
(clock ticks since boot, ``/proc/PID/stat`` field 22): a pid reused by another process after
a reboot or a long run then does not count as the writer. A zombie (killed, not yet reaped by
its parent) is not running.
"""

from __future__ import annotations

import os

__all__ = ["process_alive", "process_start", "writer_record"]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces or parentheses itself
    return text[text.rfind(")") + 2 :].split()


def process_start(pid: int | None = None) -> int | None:
    """Start time of ``pid`` (default: this process) in clock ticks since boot; None where
    ``/proc`` does not tell."""
    f = _stat_fields(os.getpid() if pid is None else pid)
    try:
        return int(f[19]) if f else None  # field 22; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def process_alive(pid: object, start: object = None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, where ``start`` is given and ``/proc``
    tells, is the one that started then. This process is never "another" writer: False."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    f = _stat_fields(pid)
    if f is None:
        return True  # no /proc: os.kill is all there is
    if f and f[0] in ("Z", "X"):
        return False
    if isinstance(start, int) and not isinstance(start, bool):
        return process_start(pid) in (None, start)
    return True


def writer_record() -> dict[str, int | None]:
    """What a file records of its writer: ``{"pid": ..., "start": ...}`` (this process)."""
    return {"pid": os.getpid(), "start": process_start()}
