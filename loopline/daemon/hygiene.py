"""Process hygiene: no worker outlives its supervisor, no killed daemon leaves anything behind.

**Workers follow their supervisor.** Each worker process asks Linux to send it SIGTERM when
its parent dies (``prctl(PR_SET_PDEATHSIG)``) and, everywhere, runs a watchdog thread that
waits on the parent's process sentinel (a pipe that closes when the parent exits). Either way
the worker leaves its loop as on a SIGTERM from the supervisor (the output worker closes the
run folder: pending frames recorded, videos finalised, summary.json written) and exits; one
that is still there :data:`ORPHAN_GRACE_S` later exits at once. A supervisor killed with
SIGKILL therefore leaves no worker behind that keeps recording.

**The run folder names what the daemon holds.** While it runs, the supervisor keeps
``.loopline-daemon.json`` in the run folder (:data:`STATE_FILE`): its pid and start time, the
shared-memory segment's name, the private ``ipc://`` folder, its workers' pids and its control
endpoint (:mod:`.control`: where ``loopline model --run RUN_DIR`` reaches it). A clean
stop removes it. A killed daemon (SIGKILL, out of memory, power cut) leaves it, with the
segment in ``/dev/shm`` (the size of the slot pool: a GB or more) and the ipc folder; the next
daemon started for the same run folder, and ``loopline recover RUN_DIR``, find them there and
remove them (:func:`clean_stale`). A daemon that still runs in the folder is left alone, and a
second daemon is refused (:class:`RunDirBusy`): two writers would interleave the tables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .._procs import process_alive, process_start

logger = logging.getLogger(__name__)

__all__ = [
    "ORPHAN_GRACE_S",
    "STATE_FILE",
    "RunDirBusy",
    "RunState",
    "clean_stale",
    "shm_name",
    "watch_parent",
]

STATE_FILE = ".loopline-daemon.json"
#: how long an orphaned worker may take to close its files before it exits regardless (s)
ORPHAN_GRACE_S = 60.0
#: how long a new daemon waits for orphaned workers of a killed one to go (s)
ORPHAN_WAIT_S = 15.0

_SHM_NAME = re.compile(r"loopline-\d+-[0-9a-f]{8}(?:_s\d)?")  # _sK: segments (shm.grow)
_IPC_FILES = {"ctl", "batch", "work", "det", "out", "control", "receiver.json", "receiver.json.tmp"}
_PR_SET_PDEATHSIG = 1


class RunDirBusy(RuntimeError):
    """Another daemon (or its orphaned workers) still writes the run folder."""


# ----------------------------------------------------------------------------- workers


def _set_pdeathsig(sig: int) -> bool:
    """Linux: deliver ``sig`` to this process when its parent exits; False elsewhere."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(*, grace_s: float = ORPHAN_GRACE_S, name: str = "worker") -> bool:
    """Leave like on SIGTERM when the parent process dies; exit after ``grace_s`` regardless.

    Call it in a ``multiprocessing`` child once its SIGTERM handler is installed. Returns
    whether the parent-death signal could be set (Linux); the watchdog runs either way.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    pdeath = _set_pdeathsig(signal.SIGTERM)
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:  # not a multiprocessing child: poll the parent's pid
        ppid = os.getppid()

        def parent_gone(timeout: float | None) -> bool:
            t_end = None if timeout is None else time.monotonic() + timeout
            while os.getppid() == ppid:
                if t_end is not None and time.monotonic() >= t_end:
                    return False
                time.sleep(0.5)
            return True
    else:

        def parent_gone(timeout: float | None) -> bool:
            return bool(wait([sentinel], timeout))

    def watchdog() -> None:
        parent_gone(None)
        logger.warning("%s: the supervisor is gone; stopping (exit in at most %g s)", name,
                       grace_s)  # fmt: skip
        os.kill(os.getpid(), signal.SIGTERM)  # the same way out as the supervisor's SIGTERM
        time.sleep(grace_s)
        logger.error("%s: still running %g s after the supervisor died; exiting", name, grace_s)
        os._exit(1)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()
    return pdeath


# ----------------------------------------------------------------------------- run folder


def shm_name() -> str:
    """A name for this daemon's shared-memory segment that :func:`clean_stale` recognises."""
    return f"loopline-{os.getpid()}-{secrets.token_hex(4)}"


#: state files of daemons running in this process (a pid cannot tell them from dead ones)
_LIVE: set[Path] = set()


class RunState:
    """The run folder's state file of the running daemon (see the module docstring)."""

    def __init__(self, run_dir: str | Path, *, shm: str, ipc: str) -> None:
        self.path = (Path(run_dir) / STATE_FILE).resolve()
        self.body: dict[str, Any] = {
            "pid": os.getpid(), "start": process_start(), "host": socket.gethostname(),
            "started": time.time(), "shm": shm, "ipc": ipc, "workers": {},
        }  # fmt: skip
        self._write()
        _LIVE.add(self.path)

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.body) + "\n")
        os.replace(tmp, self.path)

    def note(self, **fields: Any) -> None:
        """Record more of what the daemon offers (``control``: its control endpoint)."""
        self.body.update(fields)
        self._write()

    def worker(self, label: str, pid: int) -> None:
        """Record a (re)started worker."""
        self.body["workers"][label] = {"pid": pid, "start": process_start(pid)}
        self._write()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        _LIVE.discard(self.path)


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    try:
        body = json.loads((run_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("%s: unreadable (%s); ignored", run_dir / STATE_FILE, e)
        return {}
    return body if isinstance(body, dict) else {}


def _alive_workers(state: dict[str, Any]) -> dict[str, int]:
    workers = state.get("workers")
    out = {}
    for label, w in (workers.items() if isinstance(workers, dict) else ()):
        if isinstance(w, dict) and process_alive(w.get("pid"), w.get("start")):
            out[str(label)] = int(w["pid"])
    return out


def _unlink_shm(name: object) -> int | None:
    """Remove a segment named by a state file; its size in bytes, None if it was gone."""
    if not isinstance(name, str) or not _SHM_NAME.fullmatch(name):
        if name:
            logger.warning("shared memory %r: not a loopline segment name; left alone", name)
        return None
    dev = Path("/dev/shm") / name
    if Path("/dev/shm").is_dir():
        try:
            size = dev.stat().st_size
            dev.unlink()
        except FileNotFoundError:
            return None
        return size
    from multiprocessing import shared_memory

    try:
        shm = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return None
    size = shm.size
    shm.close()
    shm.unlink()
    return size


def _remove_ipc(folder: object) -> bool:
    """Remove a private ipc folder named by a state file (only one that looks like ours)."""
    if not isinstance(folder, str) or not folder:
        return False
    p = Path(folder)
    try:
        st = p.lstat()
    except FileNotFoundError:
        return False
    names = {c.name for c in p.iterdir()} if p.is_dir() and not p.is_symlink() else None
    if (names is None or not p.name.startswith("loopline-") or st.st_uid != os.getuid()
            or not names <= _IPC_FILES):  # fmt: skip
        logger.warning("%s: not a loopline ipc folder; left alone", p)
        return False
    for n in names:
        (p / n).unlink(missing_ok=True)
    p.rmdir()
    return True


def clean_stale(run_dir: str | Path, *, wait_s: float = ORPHAN_WAIT_S) -> dict[str, Any]:
    """Remove what a killed daemon of ``run_dir`` left: its shared memory and ipc folder.

    Returns what was done: ``{"pid": ..., "shm": name, "shm_bytes": n, "ipc": folder}``
    (empty when the folder holds no state file). Orphaned workers of the killed daemon are
    given ``wait_s`` to go (they stop by themselves, :func:`watch_parent`).

    Raises
    ------
    RunDirBusy
        A daemon still runs in ``run_dir``, or its workers still do after ``wait_s``.
    """
    run_dir = Path(run_dir)
    state = _read_state(run_dir)
    if state is None:
        return {}
    done: dict[str, Any] = {"pid": state.get("pid")}
    host = state.get("host")
    if host not in (None, socket.gethostname()):
        logger.warning("%s was written by a daemon on %s: its shared memory and ipc folder "
                       "are that machine's; left alone", run_dir / STATE_FILE, host)  # fmt: skip
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        return done
    if process_alive(state.get("pid"), state.get("start")) or (
            state.get("pid") == os.getpid() and (run_dir / STATE_FILE).resolve() in _LIVE):
        raise RunDirBusy(f"{run_dir} is written by a running loopline serve (pid "
                         f"{state.get('pid')}); expected a run folder no daemon "
                         "writes")  # fmt: skip
    t_end = time.monotonic() + wait_s
    orphans = _alive_workers(state)
    if orphans:
        logger.warning("%s: workers of a killed daemon still run (%s); waiting up to %g s for "
                       "them to stop", run_dir, orphans, wait_s)  # fmt: skip
    while orphans and time.monotonic() < t_end:
        time.sleep(0.1)
        orphans = _alive_workers(state)
    if orphans:
        raise RunDirBusy(f"{run_dir}: workers of a killed daemon still run "
                         f"({', '.join(f'{k} pid {v}' for k, v in orphans.items())}); expected "
                         "none (stop them, then start again)")  # fmt: skip
    size = _unlink_shm(state.get("shm"))
    if size is not None:
        for k in range(1, 9):  # the segments grown on it for larger frames (shm.segment_name)
            more = _unlink_shm(f"{state['shm']}_s{k}")
            if more is None:
                break
            size += more
        done.update(shm=state["shm"], shm_bytes=size)
    if _remove_ipc(state.get("ipc")):
        done["ipc"] = state["ipc"]
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    what = [f"shared memory {state['shm']} ({size / 2**20:.0f} MiB)"] if size is not None else []
    what += [f"ipc folder {state['ipc']}"] if "ipc" in done else []
    if what:
        logger.warning("%s: removed what the killed daemon (pid %s) left: %s", run_dir,
                       state.get("pid"), ", ".join(what))  # fmt: skip
    return done
