"""What every stage shares: the :class:`Stage` base class (sockets, heartbeat, the ``ctl``
channel, the idle wait after a drain) and small helpers (JSON on the ``work`` channel, one
log line for an error that cost one frame, one line for an exception, the ``[alarms]``
section, the fate of a frame measured but not tracked).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import zmq

from ..config import DaemonConfig
from ..shm import SlotPool
from ..wire import Endpoints, recv_json, send_json, socket

logger = logging.getLogger(__name__)

__all__ = ["UNTRACKED", "Stage", "alarm_config", "one_line"]

_POLL_MS = 50

#: frames.csv fate of a frame measured but not tracked: it came back from its engine after
#: its successors were tracked (:class:`~.measure.Reorder`; counted in ``late_after_successor``)
UNTRACKED = "analysed_untracked"


class Stage:
    """One stage of the pipeline; one process runs it (:func:`~.stages.worker_main`)."""

    name = "stage"

    def __init__(self, cfg: DaemonConfig, pool: SlotPool, eps: Endpoints, ctx: zmq.Context,
                 ctl: zmq.Socket, part: int, run_dir: str) -> None:  # fmt: skip
        self.cfg = cfg
        self.pool = pool
        self.stats = pool.stats
        self.eps = eps
        self.ctx = ctx
        self.ctl = ctl
        self.part = part
        self.run_dir = run_dir
        self.terminate = False  # set by SIGTERM: leave the loop now
        self.sockets: list[zmq.Socket] = []
        self._cpu = time.process_time()  # this process's CPU (all threads) at the last beat
        self._cpu_at = 0.0  # ... read at this time.time()

    def sock(self, kind: int, **kw: Any) -> zmq.Socket:
        s = socket(self.ctx, kind, **kw)
        self.sockets.append(s)
        return s

    def setup(self) -> None:
        pass

    def loop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for s in self.sockets:
            s.close()

    def beat(self, frames: int = 0, busy_s: float = 0.0) -> None:
        st = self.stats
        now = time.time()
        st[f"heartbeat_{self.name}"] = now
        if frames:
            st.add(f"frames_{self.name}", frames)
        if busy_s:
            st.add(f"busy_s_{self.name}", busy_s)
        if now - self._cpu_at >= 0.25:  # the process clock sums every thread: not per frame
            self._cpu_at = now
            cpu = time.process_time()
            st.add(f"cpu_s_{self.name}", cpu - self._cpu)
            self._cpu = cpu

    def drain(self, sock: zmq.Socket, handle: Callable[[dict[str, Any]], None], *,
              most: int = 1000) -> None:  # fmt: skip
        """Up to ``most`` messages already waiting on ``sock`` (never blocks), each decoded
        one to ``handle`` (one that does not decode was counted by :func:`recv_json`)."""
        for _ in range(most):
            try:
                msg = recv_json(sock)
            except zmq.Again:
                return
            if msg is not None:
                handle(msg)

    def ctl_send(self, kind: str, **kw: Any) -> None:
        send_json(self.ctl, {"t": kind, "stage": self.name, "pid": os.getpid(), **kw}, block=True)

    def idle(self) -> None:
        """Drained: wait for the supervisor to end this process."""
        while not self.terminate:
            time.sleep(0.05)
            self.beat()


_last_error_log = [0.0]


def _log_frame_error(stage: str, h: dict[str, Any], e: BaseException) -> None:
    """An exception that cost one frame: ERROR at most every 5 s, the traceback at DEBUG."""
    now = time.monotonic()
    level = logging.ERROR if now - _last_error_log[0] > 5 else logging.DEBUG
    if level == logging.ERROR:
        _last_error_log[0] = now
    logger.log(level, "%s: frame %s/%s: %s: %s (counted; the worker goes on)", stage,
               h.get("series"), h.get("index"), type(e).__name__, e)  # fmt: skip
    logger.debug("%s: traceback", stage, exc_info=e)


def _dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()


def _loads(data: bytes) -> dict[str, Any] | None:
    from ..wire import loads

    return loads(data)


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (what a refused model's caller is told); lines
    that only name a runtime's source file (OpenVINO's ``Exception from src/...cpp:84:``) are
    passed over."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    said = [x for x in lines if not re.fullmatch(r"Exception from \S+:\d+:?", x)]
    text = (said or lines or [""])[0]
    return f"{type(e).__name__}: {text}".rstrip(": ")


def alarm_config(cfg: DaemonConfig):
    """The ``[alarms]`` section as :class:`loopline.analysis.alarms.AlarmConfig`."""
    import dataclasses

    from ...analysis.alarms import AlarmConfig

    values = dataclasses.asdict(cfg.alarms)
    values.pop("disk_check_s")
    return AlarmConfig.from_mapping(values)
