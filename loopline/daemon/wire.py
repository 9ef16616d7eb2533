"""ZeroMQ plumbing shared by the daemon's processes: endpoints, sockets, JSON messages.

Every internal message is one JSON object (UTF-8), never pickle; pixels stay in shared memory
(:mod:`loopline.daemon.shm`). Sockets are created, used and closed by the one thread that owns
them, always with an explicit linger and high-water mark.

Internal channels (``ipc://`` files in a private run-time folder, mode 0700, which the run
folder's state file names so that a killed daemon's is removed: :mod:`.hygiene`):

=============  =================  ===============================================
channel        bound by           connected by (what flows)
=============  =================  ===============================================
``ctl``        supervisor PULL    every worker PUSH (ready, error, done; an engine's
                                  model, the batcher's model_result)
``batch``      batcher PULL       receiver PUSH (frame headers, series events, eos),
                                  supervisor PUSH (engine_dead, use_model)
``work``       batcher ROUTER     engine DEALERs (ready ↔ batch; prepare → prepared,
                                  abort: a model swap)
``det``        measure PULL       engines, batcher PUSH (detection headers, eos)
``out``        output PULL        receiver, batcher, measure, supervisor PUSH
``control``    supervisor ROUTER  ``loopline model`` REQ (:mod:`.control`; the one
                                  channel from outside)
=============  =================  ===============================================
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

__all__ = ["Endpoints", "recv_json", "send_json", "socket"]

LINGER_MS = 1000


@dataclass(frozen=True)
class Endpoints:
    folder: str
    ctl: str
    batch: str
    work: str
    det: str
    out: str

    @classmethod
    def make(cls) -> Endpoints:
        folder = tempfile.mkdtemp(prefix="loopline-")  # 0700: only this user can connect
        names = ("ctl", "batch", "work", "det", "out")
        return cls(folder, *(f"ipc://{os.path.join(folder, n)}" for n in names))

    def cleanup(self) -> None:
        for p in Path(self.folder).glob("*"):
            p.unlink(missing_ok=True)
        try:
            os.rmdir(self.folder)
        except OSError:
            pass


def socket(
    ctx: zmq.Context, kind: int, *, bind: str | None = None, connect: str | None = None,
    sndhwm: int = 1000, rcvhwm: int = 1000, linger_ms: int = LINGER_MS,
) -> zmq.Socket:  # fmt: skip
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, linger_ms)
    s.setsockopt(zmq.SNDHWM, sndhwm)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    if bind:
        s.bind(bind)
    if connect:
        s.connect(connect)
    return s


def send_json(sock: zmq.Socket, obj: dict[str, Any], *, block: bool = False) -> bool:
    """Send one JSON message; False (message not sent) when the peer's queue is full."""
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_default).encode()
    try:
        sock.send(data, 0 if block else zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def loads(data: bytes) -> dict[str, Any] | None:
    """Parse one JSON object; None if it is not one (callers count and drop it)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def recv_json(sock: zmq.Socket) -> dict[str, Any] | None:
    return loads(sock.recv(zmq.NOBLOCK))


def clean_json(obj: Any) -> Any:
    """NaN/inf → None, recursively (strict JSON for viewers in other languages)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    return obj
