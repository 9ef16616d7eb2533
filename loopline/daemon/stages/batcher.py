"""The batcher: frame headers → batches for the engine workers, latest wins; model swaps
between two batches (:mod:`loopline.daemon.stages`)."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import zmq

from ..shm import ANALYSIS
from ..wire import send_json
from .base import _POLL_MS, Stage, _dumps, _loads

logger = logging.getLogger(__name__)

__all__ = ["Batcher"]

#: how long the engine workers may take to load and check a new model (s)
_SWAP_TIMEOUT_S = 300.0


class Batcher(Stage):
    """Frames → batches of up to ``batch.size`` or ``batch.deadline_ms``, latest wins."""

    name = "batcher"

    def setup(self) -> None:
        self.pull = self.sock(zmq.PULL, bind=self.eps.batch, rcvhwm=4096)
        self.router = self.sock(zmq.ROUTER, bind=self.eps.work)
        self.to_out = self.sock(zmq.PUSH, connect=self.eps.out, sndhwm=1_000_000)
        self.to_det = self.sock(zmq.PUSH, connect=self.eps.det)
        self.pending: deque[dict[str, Any]] = deque()
        self.idle_engines: deque[bytes] = deque()
        self.busy: dict[bytes, tuple[float, list[dict[str, Any]]]] = {}
        self.pids: dict[bytes, int] = {}
        self.flush = False
        self.draining = False
        self.size = self.cfg.batch.size
        self.deadline = self.cfg.batch.deadline_ms / 1e3
        self.max_pending = self.cfg.max_pending
        self.max_inflight = self.cfg.max_inflight
        self.stalled_since: float | None = None
        #: the model every batch names since a swap ({"model", "path"}; None: none yet)
        self.model: dict[str, Any] | None = None
        #: the swap in progress: {"req", "path", "waiting": idents, "ready": {ident: reply}}
        self.swap: dict[str, Any] | None = None

    def _skip_oldest(self) -> None:
        h = self.pending.popleft()
        self.pool.release(h["slot"], h["gen"], ANALYSIS)
        self.stats.add("skipped")
        self.stats.add("skipped_backpressure")
        send_json(self.to_out, {"t": "skip", "series": h["series"], "index": h["index"],
                                "seq": h["seq"]}, block=True)  # fmt: skip

    def _on_frame_msg(self, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        if t == "frame":
            msg["_arr"] = time.monotonic()
            self.pending.append(msg)
            while len(self.pending) > self.max_pending and not self.cfg.replay_waits:
                self._skip_oldest()  # latest wins (an unpaced file never skips)
        elif t == "series":
            if msg.get("event") == "end":
                self.flush = True
        elif t == "eos":
            self.draining = True
            self.flush = True
        elif t == "use_model":  # from the supervisor: a model swap (control.py)
            self._start_swap(msg)
        elif t == "model_committed":  # from the supervisor, to a restarted batcher
            self.model = msg.get("model")
        elif t == "engine_dead":  # from the supervisor: that engine's batch is lost
            pid = int(msg.get("pid", -1))
            for ident in [i for i, p in self.pids.items() if p == pid]:
                if self.swap is not None and ident in self.swap["waiting"]:
                    self._end_swap(error=f"engine worker (pid {pid}) died while it loaded "
                                         "the model")  # fmt: skip
                _, batch = self.busy.pop(ident, (0.0, []))
                for h in batch:
                    self.pool.release(h["slot"], h["gen"], ANALYSIS)
                    send_json(self.to_out, {"t": "lost", "series": h["series"],
                                            "index": h["index"], "seq": h["seq"],
                                            "why": "engine died"}, block=True)  # fmt: skip
                if ident in self.idle_engines:
                    self.idle_engines.remove(ident)
                del self.pids[ident]
                if batch:
                    logger.warning("batcher: %d frames lost with engine pid %d", len(batch), pid)

    def _room(self, now: float) -> bool:
        """Frames dispatched but not yet measured stay under ``batch.max_inflight``.

        This puts the measure worker behind the same latest-wins policy as the engines. If
        no progress comes for ``output.result_timeout_s`` (frames lost with a crashed
        worker), the limit is lifted rather than deadlock.
        """
        inflight = self.stats["analysis_seq"] - self.stats["analysis_done"]
        if inflight < self.max_inflight:
            self.stalled_since = None
            return True
        if self.stalled_since is None:
            self.stalled_since = now
        if now - self.stalled_since > self.cfg.output.result_timeout_s:
            logger.warning("batcher: %d frames in flight made no progress for %.0f s; going on",
                           inflight, now - self.stalled_since)  # fmt: skip
            self.stats["analysis_done"] = self.stats["analysis_seq"]
            self.stalled_since = None
            return True
        return False

    # -- model swaps (control.py): prepare every engine, then switch between two batches
    def _start_swap(self, msg: dict[str, Any]) -> None:
        req, path = msg.get("req"), str(msg.get("path"))
        if self.swap is not None:  # the supervisor sends one at a time; be sure
            self.ctl_send("model_result", req=req, ok=False,
                          error="another model swap is in progress")  # fmt: skip
            return
        if not self.pids:
            self.ctl_send("model_result", req=req, ok=False, error="no engine worker is ready")
            return
        self.swap = {"req": req, "path": path, "waiting": set(self.pids), "ready": {},
                     "t0": time.monotonic()}  # fmt: skip
        for ident in self.pids:
            self.router.send_multipart([ident, _dumps({"t": "prepare", "req": req,
                                                       "path": path})])  # fmt: skip

    def _on_prepared(self, ident: bytes, msg: dict[str, Any]) -> None:
        sw = self.swap
        if sw is None or msg.get("req") != sw["req"] or ident not in sw["waiting"]:
            # a swap that ended without this engine (refused by another): drop what it loaded
            self.router.send_multipart([ident, _dumps({"t": "abort", "req": msg.get("req")})])
            return
        sw["waiting"].discard(ident)
        if not msg.get("ok"):
            self._end_swap(error=str(msg.get("error") or "refused"))
            return
        sw["ready"][ident] = msg
        if sw["waiting"]:
            return
        models = {m.get("model") for m in sw["ready"].values()}
        if len(models) != 1:  # the file changed between two workers' loads
            got = ", ".join(sorted(map(str, models)))
            self._end_swap(error=f"the engine workers read different models from "
                                 f"{sw['path']}: {got}")  # fmt: skip
            return
        # the switch: every batch from now on names the new model, every earlier one ran on
        # the old: the model changes once, at a frame boundary in analysis order
        first = next(iter(sw["ready"].values()))
        self.model = {"model": first["model"], "path": sw["path"], "engine": first.get("engine")}
        load_s = max(float(m.get("load_s") or 0) for m in sw["ready"].values())
        self._end_swap(model=first["model"], runtime=first.get("runtime"),
                       engine=first.get("engine"), first_aseq=int(self.stats["analysis_seq"]),
                       load_s=load_s)  # fmt: skip

    def _end_swap(self, *, error: str = "", **info: Any) -> None:
        sw = self.swap
        assert sw is not None
        self.swap = None
        if error:  # engines that loaded it drop it again
            for ident in sw["ready"]:
                self.router.send_multipart([ident, _dumps({"t": "abort", "req": sw["req"]})])
            self.ctl_send("model_result", req=sw["req"], ok=False, error=error, path=sw["path"])
        else:
            self.ctl_send("model_result", req=sw["req"], ok=True, path=sw["path"], **info)

    def _dispatch(self) -> None:
        now = time.monotonic()
        while self.idle_engines and self.pending and self._room(now):
            oldest = self.pending[0]["_arr"]
            if not (len(self.pending) >= self.size or now - oldest >= self.deadline or self.flush):
                break
            ident = self.idle_engines.popleft()
            n = min(self.size, len(self.pending))
            batch = []
            seq = int(self.stats["analysis_seq"])
            for _ in range(n):
                h = self.pending.popleft()
                h.pop("_arr", None)
                h["aseq"] = seq
                seq += 1
                batch.append(h)
            self.stats["analysis_seq"] = seq
            body: dict[str, Any] = {"t": "batch", "frames": batch}
            if self.model is not None:  # since a swap: every batch names the model to run
                body["model"] = self.model
            self.router.send_multipart([ident, _dumps(body)])
            self.busy[ident] = (now, batch)
            self.stats.add("batches")
            self.beat(n)
        if not self.pending:
            self.flush = self.draining

    def loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        timeout_s = self.cfg.output.result_timeout_s
        while not self.terminate:
            wait = _POLL_MS
            if self.pending and self.idle_engines:
                left = self.deadline - (time.monotonic() - self.pending[0]["_arr"])
                wait = max(0, min(wait, int(left * 1e3) + 1))
            events = dict(poller.poll(wait))
            if self.pull in events:
                self.drain(self.pull, self._on_frame_msg)
            if self.router in events:
                while True:
                    try:
                        ident, data = self.router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except ValueError:
                        continue
                    ready = _loads(data) or {}
                    if ready.get("t") == "prepared":  # not a ready: the engine may be busy
                        self._on_prepared(ident, ready)
                        continue
                    self.pids[ident] = int(ready.get("pid", -1))
                    self.busy.pop(ident, None)
                    if ident not in self.idle_engines:
                        self.idle_engines.append(ident)
            now = time.monotonic()
            for ident, (t0, _b) in list(self.busy.items()):
                if now - t0 > timeout_s:  # that engine hangs or died with our batch
                    del self.busy[ident]
            if self.swap is not None and now - self.swap["t0"] > _SWAP_TIMEOUT_S:
                self._end_swap(error=f"the engine workers did not load the model within "
                                     f"{_SWAP_TIMEOUT_S:g} s")  # fmt: skip
            if self.swap is not None and self.draining:
                self._end_swap(error="the daemon is stopping")
            self._dispatch()
            self.stats["queue_batcher"] = len(self.pending)
            self.stats["queue_engine"] = len(self.busy)
            self.beat()
            if self.draining and not self.pending and not self.busy:
                send_json(self.to_det, {"t": "eos", "seq_total": int(self.stats["analysis_seq"])},
                          block=True)  # fmt: skip
                logger.info("batcher: drained")
                self.idle()
                return
