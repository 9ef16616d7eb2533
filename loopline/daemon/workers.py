"""The daemon's worker processes: receiver → batcher → engine(s) → measure/track → output.

Each stage is a class with ``setup()`` (open sockets, load the model) and ``loop()``; one
process runs one stage through :func:`worker_main`, which reports ``ready`` to the
supervisor, and on any exception sends the stage name, the exception and its traceback on
the ``ctl`` channel before exiting non-zero (the supervisor logs it with the stage and
re-raises it, or restarts the stage). Frames move through shared memory slots
(:mod:`loopline.daemon.shm`); only JSON headers travel on the sockets (:mod:`.wire`).

Backpressure policy (stated once, here): the receiver never waits for analysis. The batcher
keeps at most ``batch.max_pending`` frames waiting for an engine; when a newer frame arrives
and the queue is full, the *oldest* waiting frame is skipped (latest wins): its analysis claim
is released, the recorder is told, and ``skipped``/``skipped_backpressure`` count it. The
recording path has no such policy: every frame the receiver could place in a slot is recorded;
if the pool is exhausted (the recorder itself is too slow) the frame is dropped, counted in
``dropped_no_slot`` and logged at ERROR.

A file replayed unpaced (``serve --from FILE``, ``source.pace = false``: the default) is not a
camera: it can wait. Then the receiver reads the next frame only when fewer than
``max_pending + max_inflight`` frames wait for their analysis, waits for a free slot instead
of dropping, and the batcher never skips, so every frame is analysed, as ``loopline analyze``
does (:attr:`~.config.DaemonConfig.replay_waits`). Paced like a camera
(``source.pace = true``) the policy above applies. Either way a file's frame times come from
the file (:meth:`loopline.io.frames.FrameFile.stamped`), never from the replay clock.

Mask budget (stated once, here): a slot holds the masks of at most ``pool.max_instances``
instances a frame, but every instance is counted and measured. The engine worker gives the
masks to dislocations first (a line cannot be traced without its mask; a loop can be
measured from its box), each class by score, highest first (:func:`mask_priority`), and sends
every instance's box, score and class in the ``det`` message, masked ones first. The measure
worker measures the rest from their boxes (a loop: the ellipse inscribed in its box, marked
``from_box``; a dislocation: counted in ``n_dislocations``, not traced) and counts them in
``instances_without_mask`` (series.csv, the series' summary, the daemon's counters).
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
import traceback
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..io.sanitize import install_log_escaping
from .config import DaemonConfig
from .hygiene import watch_parent
from .shm import ANALYSIS, RECORD, PoolSpec, PoolTooSmall, SlotPool, largest_frame_px
from .validate import (
    PIXEL_SIZE_RANGE_NM,
    FrameValidator,
    Verdict,
    max_message_bytes,
    plausible_pixel_size,
)
from .wire import Endpoints, recv_json, send_json, socket

logger = logging.getLogger(__name__)

__all__ = ["STAGE_CLASSES", "engine_label", "make_engine", "mask_priority", "source_label",
           "worker_main"]

_POLL_MS = 50
#: how long the engine workers may take to load and check a new model (s)
_SWAP_TIMEOUT_S = 300.0
#: daemon counter <- the source's counter of the same events (the source's restart from 0)
#: how long a restarted receiver waits for the recorder to show whether it got the header of
#: the frame its predecessor was killed on (s)
_RECONCILE_WAIT_S = 5.0
#: series whose clock a restarted receiver keeps (the most recent ones)
_STATE_SERIES = 64
_SOURCE_COUNTERS = {"malformed": "malformed", "dropped_source": "dropped",
                    "rejected_interleaved": "interleaved", "source_disconnects": "disconnects",
                    "source_handshake_failures": "handshake_failures",
                    "series_resynced": "resynced"}


class _Stage:
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

    def ctl_send(self, kind: str, **kw: Any) -> None:
        send_json(self.ctl, {"t": kind, "stage": self.name, "pid": os.getpid(), **kw}, block=True)

    def idle(self) -> None:
        """Drained: wait for the supervisor to end this process."""
        while not self.terminate:
            time.sleep(0.05)
            self.beat()


# ----------------------------------------------------------------------------- receiver


def open_source(cfg: DaemonConfig):
    """The configured frame source (:func:`loopline.daemon.sources.open_source`), listening."""
    from .sources import open_source as _open

    s = cfg.source
    if s.protocol == "file":  # unpaced unless told to pace like a camera (s.rate 0: own rate)
        return _open(s.path, "file", fps=(s.rate or None) if s.pace else math.inf)
    kw: dict[str, Any] = {"socket": s.socket, "bind": s.bind, "rcvhwm": s.rcvhwm,
                          "max_queued_frames": 256}  # fmt: skip
    # nothing larger than the largest frame the pool can grow to (pool.max_memory_mb) is read
    # into memory (ZMQ_MAXMSGSIZE), nor decompressed (DECTRIS)
    budget = max_frame_px(cfg)
    kw["max_message_bytes"] = max_message_bytes(1, budget)
    if s.protocol.startswith("dectris"):
        kw["max_shape"] = budget
    if s.curve_server_key or s.curve_client_secret or s.curve_clients:
        kw["curve_server_key"] = s.curve_server_key
        kw["curve_client_secret"] = s.curve_client_secret
        kw["curve_clients"] = s.curve_clients
    return _open(s.endpoint, s.protocol, **kw)


def max_frame_px(cfg: DaemonConfig) -> int:
    """The largest frame (pixels) the slot pool takes: its own size, or a segment it grows
    within ``pool.max_memory_mb`` (:meth:`SlotPool.grow`)."""
    p = cfg.pool
    primary = PoolSpec("", p.slots, p.max_height, p.max_width, p.max_instances).total_bytes
    return max(p.max_height * p.max_width,
               largest_frame_px(int(p.max_memory_mb * 2**20), primary, p.max_instances))


class Receiver(_Stage):
    """Source → slots. Never waits for a camera's analysis; see the module docstring."""

    name = "receiver"

    def setup(self) -> None:
        from .sources.base import Frame, SeriesEnd, SeriesStart

        self._types = (Frame, SeriesStart, SeriesEnd)
        self.src = open_source(self.cfg)
        self.to_batch = self.sock(zmq.PUSH, connect=self.eps.batch, sndhwm=4096)
        self.to_out = self.sock(zmq.PUSH, connect=self.eps.out, sndhwm=1_000_000)
        # counters in shared memory survive a restart; the source's start from 0 again
        self._base = {k: self.stats[k] for k in _SOURCE_COUNTERS}
        self.validator = FrameValidator()  # what makes no sense (loopline.daemon.validate)
        self._segment = int(self.stats["segment_seq"])
        self._warned_reject = 0.0
        self._series_t0: dict[str, float] = {}
        self._px: dict[str, float | None] = {}
        self._warned = 0.0
        self._last_house = 0.0
        # a restarted receiver: settle the frame its predecessor was killed on, and go on
        # numbering (seq) and timing (series t0) where it stopped
        self._reconcile()
        self._seq = int(max(self.stats["received"], self.stats["receiver_next_seq"]))
        self._state_file = Path(self.eps.folder) / "receiver.json"
        self._slot: tuple[int, int] | None = None  # the frame in hand: its slot
        self._hdr_sent = False  # ... and whether the recorder has its header
        # an unpaced file waits for its analysis (module docstring)
        self.waits = self.cfg.replay_waits
        self.file = self.cfg.source.protocol == "file"
        self._limit = self.cfg.max_pending + self.cfg.max_inflight
        self._sent = 0
        self._done0 = int(self.stats["analysis_done"])
        self._progress = (self._done0, time.monotonic())
        self._fps: dict[str, float | None] = {}
        self._warned_time = False
        self._too_large: dict[tuple[int, ...], str] = {}  # shapes the pool cannot take
        self._load_state()

    def close(self) -> None:
        src = getattr(self, "src", None)
        if src is not None:
            src.close()
        super().close()

    def _housekeeping(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_house < 0.25 and not force:
            return
        self._last_house = now
        c = self.src.counters
        for k, src_key in _SOURCE_COUNTERS.items():
            self.stats[k] = self._base[k] + c.get(src_key, 0)
        self.stats["slots_in_use"] = self.pool.in_use()
        n = self.pool.reclaim(older_than_s=self.cfg.pool.slot_timeout_s)
        if n:
            self.stats.add("slots_reclaimed", n)
            logger.warning("reclaimed %d frame slots held longer than %.0f s", n,
                           self.cfg.pool.slot_timeout_s)  # fmt: skip
        self.beat()

    def _room_for(self, shape: tuple[int, ...]) -> str:
        """'' if the pool holds frames of ``shape`` (grown from it if need be), else why not."""
        shape = tuple(int(v) for v in shape)
        if shape in self._too_large:
            return self._too_large[shape]
        if len(shape) != 2 or self.pool.fits(shape, np.uint8):
            return ""
        try:
            self.pool.grow(shape, slots=self.cfg.pool.slots,
                           cap_bytes=int(self.cfg.pool.max_memory_mb * 2**20))  # fmt: skip
        except (PoolTooSmall, OSError) as e:  # OSError: /dev/shm itself is full
            self._too_large[shape] = str(e)
            logger.error("frame pool: %s; frames of that size are rejected (rejected_oversize)",
                         e)  # fmt: skip
            return str(e)
        return ""

    def _series(self, ev: Any, kind: str) -> None:
        msg = {"t": "series", "event": kind, "series": ev.series, "ts": ev.timestamp_s}
        if kind == "start" and ev.shape:
            self._room_for(ev.shape)  # a larger detector: slots sized from its shape
        if kind == "start":
            # an announced start begins the series' clock afresh; one the source made up
            # (after a restart of this receiver, or a start message missed) keeps it
            if not ev.synthesized:
                self._series_t0.pop(ev.series, None)
            self.validator.series_start(ev.series)
            px = ev.pixel_size_nm
            if not plausible_pixel_size(px):  # kept without it; its frames may bring theirs
                self.stats.add("ignored_pixel_size")
                logger.warning("series %s: pixel_size_nm %r ignored (expected a size in "
                               "[%g, %g] nm)", ev.series, px, *PIXEL_SIZE_RANGE_NM)  # fmt: skip
                px = None
            if px is None and ev.synthesized:
                px = self._px.get(ev.series)
            self._px[ev.series] = px
            # a file's own frame rate: the annotated video keeps it
            fps = ev.meta.get("input_fps") if self.file else None
            if fps is None and ev.synthesized:
                fps = self._fps.get(ev.series)
            self._fps[ev.series] = fps
            self._save_state()
            msg.update(shape=list(ev.shape) if ev.shape else None, dtype=ev.dtype,
                       pixel_size_nm=px, frames=ev.frames,
                       synthesized=ev.synthesized, fps=fps)  # fmt: skip
            self.stats.add("series_started")
        else:
            msg.update(frames=ev.frames, aborted=ev.aborted)
            self.stats.add("series_aborted" if ev.aborted else "series_ended")
        send_json(self.to_batch, msg)
        send_json(self.to_out, msg, block=True)

    def _frame(self, ev: Any) -> None:
        """One frame to a slot, the recorder and the batcher; its counters but ``received``
        (the caller adds it last: see :meth:`_reconcile`)."""
        t_recv = time.time()
        img = ev.image
        if self._room_for(img.shape) or not self.pool.fits(img.shape, img.dtype):
            self.stats.add("rejected_oversize")
            self.stats.add("skipped")
            logger.debug("frame %s/%d %s %s does not fit the slot pool; rejected", ev.series,
                         ev.index, img.shape, img.dtype)  # fmt: skip
            return
        bad = self.validator.values(int(ev.index), ev.timestamp_s, ev.pixel_size_nm, img)
        if bad is not None:
            self._reject(ev, bad)
            return
        got = self.pool.acquire(img.shape)
        while got is None and self.waits and not (self.terminate or self.stats["stopping"]):
            time.sleep(0.005)  # a file waits for a free slot
            self._housekeeping()
            got = self.pool.acquire(img.shape)
        if got is None:
            self.stats.add("dropped_no_slot")
            self.stats.add("skipped")
            if time.monotonic() - self._warned > 5:
                self._warned = time.monotonic()
                logger.error("all %d frame slots in use: frame %s/%d NOT RECORDED (the "
                             "recorder is behind; raise pool.slots)", self.pool.spec.slots,
                             ev.series, ev.index)  # fmt: skip
            return
        slot, gen = got
        self._slot = got
        self.stats["receiver_open_slot"] = slot
        self.stats["receiver_open_gen"] = gen
        self.pool.write_image(slot, img)
        if ev.series not in self._series_t0:
            self._series_t0[ev.series] = ev.timestamp_s
            self._save_state()
        t0 = self._series_t0[ev.series]
        px = ev.pixel_size_nm or self._px.get(ev.series) or None
        hdr = {
            "t": "frame", "slot": slot, "gen": gen, "series": ev.series, "index": int(ev.index),
            "ts": ev.timestamp_s, "time_s": self._time_s(ev, t0), "recv": t_recv,
            "shape": list(img.shape), "dtype": img.dtype.name, "px_nm": px, "seq": self._seq,
            "fps": self._fps.get(ev.series),
        }  # fmt: skip
        order = self.validator.sequence(ev.series, hdr["index"], hdr["time_s"])
        if order.new_segment:  # the measure worker starts tracking afresh
            self.stats.add("segment_seq")
            self._segment = int(self.stats["segment_seq"])
            if order.restarted:
                self.stats.add("segments_restarted")
                logger.info("series %s restarts at frame %d (index or time went back): a new "
                            "segment", ev.series, hdr["index"])  # fmt: skip
        hdr["segment"] = self._segment
        self._seq += 1
        self.stats["receiver_next_seq"] = self._seq  # never reused, whatever happens next
        self.stats["receiver_open_seq"] = hdr["seq"]
        if not send_json(self.to_out, hdr):  # cannot happen with the pool bounding it; be loud
            self.pool.release(slot, gen, RECORD)
            self.stats.add("dropped_no_slot")
            self.stats.add("skipped")
            logger.error("recorder queue full: frame %s/%d NOT RECORDED", ev.series, ev.index)
        self._hdr_sent = True
        if order.duplicate:  # recorded, not analysed: a tracker takes one frame per index
            self.pool.release(slot, gen, ANALYSIS)
            self.stats.add("skipped")
            self.stats.add("skipped_duplicate")
            logger.debug("frame %s/%d: duplicate index, recorded, not analysed", ev.series,
                         hdr["index"])  # fmt: skip
            send_json(self.to_out, {"t": "skip", "series": ev.series, "index": hdr["index"],
                                    "seq": hdr["seq"]}, block=True)  # fmt: skip
            return
        if not send_json(self.to_batch, hdr, block=self.waits):
            self.pool.release(slot, gen, ANALYSIS)
            self.stats.add("skipped")
            self.stats.add("skipped_backpressure")
            send_json(self.to_out, {"t": "skip", "series": ev.series, "index": int(ev.index),
                                    "seq": hdr["seq"]}, block=True)  # fmt: skip
        else:
            self._sent += 1

    # -- a receiver killed in the middle of a frame (SIGKILL): counters that still add up
    def _open_frame(self) -> None:
        """Mark a frame in hand in shared memory (what :meth:`_reconcile` reads)."""
        st = self.stats
        self._slot = None
        self._hdr_sent = False
        st["receiver_open_slot"] = -1
        st["receiver_open_seq"] = -1
        st["receiver_open_received"] = st["received"]
        st["receiver_open"] = 1

    def _frame_failed(self) -> None:
        """An exception in :meth:`_frame`: before the recorder had its header the frame is
        not recorded (``receiver_errors``, its slot freed); after, the recorder records it and
        counts its missing analysis."""
        if self._hdr_sent:
            return
        if self._slot is not None:
            for holder in (RECORD, ANALYSIS):
                self.pool.release(*self._slot, holder)
        self.stats.add("receiver_errors")
        self.stats.add("skipped")

    def _reconcile(self) -> None:
        """Settle the frame a killed predecessor held, so that ``received = recorded +
        dropped + rejected`` and ``received = analysed + skipped`` still hold.

        Every frame's counters are added before ``received``, which comes last; the frame in
        hand is marked (``receiver_open*``). A mark with ``received`` unchanged is a frame the
        kill cut short: if the recorder got its header (``output_next_seq``; waited for up to
        :data:`_RECONCILE_WAIT_S`), it is recorded and its analysis is settled downstream
        (analysed, or lost when it never reached the batcher): it is counted received. If
        not, it never will be recorded: counted in ``receiver_errors`` (and ``skipped``) and
        its slot freed; should its header reach the recorder after all, the recorder takes
        those two back (``receiver_lost_seq``).
        """
        st = self.stats
        if not st["receiver_open"]:
            return
        if st["received"] != st["receiver_open_received"]:  # killed after counting it
            st["receiver_open"] = 0
            return
        seq = int(st["receiver_open_seq"])
        t_end = time.monotonic() + _RECONCILE_WAIT_S
        while seq >= 0 and st["output_next_seq"] <= seq and time.monotonic() < t_end:
            time.sleep(0.01)
        if seq >= 0 and st["output_next_seq"] > seq:
            logger.warning("receiver: restarted; frame seq %d, in hand when the previous one "
                           "died, reached the recorder", seq)  # fmt: skip
        else:
            slot, gen = int(st["receiver_open_slot"]), int(st["receiver_open_gen"])
            if slot >= 0:
                for holder in (RECORD, ANALYSIS):
                    self.pool.release(slot, gen, holder)
            if seq >= 0:
                st["receiver_lost_seq"] = seq + 1
            st.add("receiver_errors")
            st.add("skipped")
            logger.warning("receiver: restarted; the frame in hand when the previous one died "
                           "is lost (counted in receiver_errors)")  # fmt: skip
        st.add("received")
        st["receiver_open"] = 0

    def _save_state(self) -> None:
        """Each series' clock origin, pixel size and rate, for a restarted receiver (written
        when they change: once per series)."""
        keep = _STATE_SERIES  # the latest series only: a sender's churn of ids costs little
        body = {k: dict(list(d.items())[-keep:])
                for k, d in (("t0", self._series_t0), ("px", self._px), ("fps", self._fps))}
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(body, allow_nan=False))
            os.replace(tmp, self._state_file)
        except (OSError, ValueError) as e:  # a restart then starts these afresh; no more
            logger.debug("receiver: state not saved: %s", e)

    def _load_state(self) -> None:
        try:
            body = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return
        if isinstance(body, dict):
            for attr, key in (("_series_t0", "t0"), ("_px", "px"), ("_fps", "fps")):
                if isinstance(body.get(key), dict):
                    getattr(self, attr).update(body[key])
            logger.info("receiver: restarted; %d series continue on their own clock",
                        len(self._series_t0))  # fmt: skip

    def _reject(self, ev: Any, bad: Verdict) -> None:
        """A frame whose values make no sense: counted, not recorded (see validate.py)."""
        assert bad.counter is not None
        self.stats.add(bad.counter)
        self.stats.add("skipped")
        logger.debug("frame %s/%d rejected (%s): %s", ev.series, ev.index, bad.counter,
                     bad.reason)  # fmt: skip
        now = time.monotonic()
        if now - self._warned_reject > 5:
            self._warned_reject = now
            logger.warning("frame %s/%d rejected: %s (counted in %s; further rejections are "
                           "logged at DEBUG for 5 s)", ev.series, ev.index, bad.reason,
                           bad.counter)  # fmt: skip

    def _time_s(self, ev: Any, t0: float) -> float:
        """A camera frame's time: its clock since the series' first frame. A file's: its own
        time axis (FileSource), never the replay clock; the index where the file has none."""
        if not self.file:
            return round(ev.timestamp_s - t0, 6)
        t = ev.meta.get("time_s")
        if t is None:
            if not self._warned_time:
                logger.warning("%s states no frame rate or frame times: time_s counts frames "
                               "(1 frame = 1 s); give a calibration profile with fps",
                               self.cfg.source.path)  # fmt: skip
                self._warned_time = True
            return float(ev.index)
        return float(t)

    def _room(self) -> bool:
        """An unpaced file: may the next frame be read? (fewer than ``_limit`` frames wait
        for their analysis; if none was analysed for ``output.result_timeout_s``, the
        missing ones are taken as lost.) Nothing is read before every stage runs: a model
        that loads slowly costs no frame."""
        done, now = int(self.stats["analysis_done"]), time.monotonic()
        if not all(self.stats[f"heartbeat_{s}"] for s in ("batcher", "engine", "measure",
                                                          "output")):  # fmt: skip
            self._progress = (done, now)
            return False
        if done != self._progress[0]:
            self._progress = (done, now)
        if self._sent - (done - self._done0) < self._limit:
            return True
        if now - self._progress[1] > self.cfg.output.result_timeout_s:
            logger.warning("receiver: no frame analysed for %.0f s; reading on",
                           now - self._progress[1])  # fmt: skip
            self._sent = done - self._done0
            self._progress = (done, now)
            return True
        return False

    def loop(self) -> None:
        Frame, SeriesStart, SeriesEnd = self._types
        until_end = self.cfg.run.until_series_end
        done_reason = ""
        while not self.terminate:
            self._housekeeping()
            if self.stats["stopping"]:
                done_reason = "stop requested"
                break
            if self.waits and not self._room():
                time.sleep(0.005)
                continue
            try:
                ev = self.src.get(timeout=0.05)
            except StopIteration:
                done_reason = "source exhausted"
                break
            if ev is None:
                continue
            t0 = time.perf_counter()
            if isinstance(ev, Frame):
                self._open_frame()
                try:
                    self._frame(ev)
                except Exception as e:  # one odd frame costs that frame, never the receiver
                    self._frame_failed()
                    logger.error("frame %s/%s dropped: %s: %s", ev.series, ev.index,
                                 type(e).__name__, e)  # fmt: skip
                    logger.debug("receiver error", exc_info=True)
                self.stats.add("received")  # last: see _reconcile
                self.stats["receiver_open"] = 0
                self.beat(1, time.perf_counter() - t0)
            elif isinstance(ev, SeriesStart):
                self._series(ev, "start")
            elif isinstance(ev, SeriesEnd):
                self._series(ev, "end")
                if until_end and not ev.aborted:
                    done_reason = f"series {ev.series} ended"
                    break
        if self.terminate:
            return
        self.src.close()
        self._housekeeping(force=True)  # the source's last counts, before the recorder's summary
        logger.info("receiver: %s; draining", done_reason)
        eos = {"t": "eos", "reason": done_reason, "frames": self._seq}
        send_json(self.to_batch, eos, block=True)
        send_json(self.to_out, eos, block=True)
        self.ctl_send("draining", reason=done_reason)
        self.idle()


# ----------------------------------------------------------------------------- batcher


class Batcher(_Stage):
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
                for _ in range(1000):
                    try:
                        msg = recv_json(self.pull)
                    except zmq.Again:
                        break
                    if msg is not None:
                        self._on_frame_msg(msg)
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
    from .wire import loads

    return loads(data)


# ----------------------------------------------------------------------------- engine


def make_engine(cfg: DaemonConfig):
    """The configured :class:`~loopline.engines.base.Engine`, loaded."""
    e = cfg.engine
    kw: dict[str, Any] = {"imgsz": e.imgsz, "conf": e.conf, "iou": e.iou,
                          "mask_annotations": e.mask_annotations,
                          "ignore_regions": e.ignore_regions}  # fmt: skip
    if e.factory:
        mod, _, fn = e.factory.partition(":")
        engine = getattr(importlib.import_module(mod), fn)(e.model or None, **kw)
    else:
        from ..engines import create_engine  # type: ignore[attr-defined]

        if e.device != "cpu":
            kw["device"] = e.device
        if e.threads:
            kw["threads"] = e.threads
        if e.mask_threshold:
            kw["mask_threshold"] = e.mask_threshold
        for key in ("line_snap", "line_dedupe"):  # -1: the model's own operating point
            if getattr(e, key) >= 0:
                kw[key] = getattr(e, key)
        engine = create_engine(e.model, engine=e.engine or None, inference=e.inference,
                               tile_overlap=e.tile_overlap, **kw)  # fmt: skip
    engine.load()
    engine.loaded = True
    return engine


def engine_label(engine: Any) -> str:
    """Model name and runtime of an engine, e.g. ``"defects/openvino"`` (``"ridge"``)."""
    runtime = getattr(engine, "name", None) or type(engine).__name__
    model = getattr(engine, "model", None)
    if model is None:
        return runtime
    return f"{Path(str(model)).stem.removesuffix('_openvino_model')}/{runtime}"


def source_label(cfg: DaemonConfig) -> dict[str, str]:
    """Where the frames come from: ``{"protocol": ..., "endpoint": ...}`` (a path for files)."""
    s = cfg.source
    return {"protocol": s.protocol, "endpoint": s.path if s.protocol == "file" else s.endpoint}


def mask_priority(classes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Order in which a frame's instances get one of its ``pool.max_instances`` mask places.

    Dislocations (class 0) first: a line without its mask cannot be traced, while a loop is
    still measured from its box. Within a class, highest score first; ties keep their order.

    Parameters
    ----------
    classes : (N,) int
    scores : (N,) float

    Returns
    -------
    (N,) int64
        Indices into the instances.

    Examples
    --------
    >>> mask_priority(np.array([1, 0, 1, 0]), np.array([0.9, 0.3, 0.95, 0.8])).tolist()
    [3, 1, 2, 0]
    """
    c, s = np.asarray(classes).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
    if c.shape != s.shape:
        raise ValueError(f"classes and scores must have one length, got {c.shape} and {s.shape}")
    return np.lexsort((-s, c != 0)).astype(np.int64)


def probe_frame(shape: tuple[int, int]) -> np.ndarray:
    """A synthetic frame (uint8): a bright noisy field crossed by one dark line."""
    h, w = shape
    img = (np.random.default_rng(0).random((h, w)) * 40 + 170).astype(np.uint8)
    import cv2

    cv2.line(img, (w // 4, h // 8), (w // 2, h - h // 8), 40, max(2, min(h, w) // 64))
    return img


def _class_count(engine: Any, frame: np.ndarray) -> int | None:
    """The number of classes the model predicts, where the runtime tells (else None)."""
    names = getattr(getattr(engine, "yolo", None), "names", None)  # torch: ultralytics' model
    if names is not None:
        return len(names)
    infer = getattr(engine, "_infer", None)  # an exported YOLOv8-seg network
    if infer is None:
        return None
    from ..engines import ops

    batch, _ = ops.preprocess([frame], engine.imgsz)
    static = getattr(engine, "static_batch", None)
    if static and static > 1:
        batch = np.concatenate([batch, np.zeros((static - 1, *batch.shape[1:]), batch.dtype)])
    pred, protos = infer(batch)  # pred rows: 4 box coordinates, the classes, mask coefficients
    return int(pred.shape[1] - 4 - protos.shape[1])


def check_engine(engine: Any, shape: tuple[int, int]) -> None:
    """Run a loaded engine on one synthetic frame of ``shape``; ValueError if its output is not
    what the measuring stages take (one result, masks of the frame's shape, the classes of
    :data:`~loopline.engines.base.CLASS_NAMES`)."""
    from ..engines.base import CLASS_NAMES, Detections

    frame = probe_frame(shape)
    dets = engine([frame])
    if len(dets) != 1 or not isinstance(dets[0], Detections):
        raise ValueError(f"expected 1 Detections for 1 frame, got {len(dets)} "
                         f"{type(dets[0]).__name__ if dets else ''}".rstrip())  # fmt: skip
    d = dets[0]
    if d.shape != tuple(shape):
        raise ValueError(f"expected masks of the frame's shape {tuple(shape)}, got {d.shape}")
    names = ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES))
    bad = sorted({int(c) for c in d.classes if not 0 <= c < len(CLASS_NAMES)})
    if bad:
        raise ValueError(f"expected classes {names}; got class {bad[0]}")
    nc = _class_count(engine, frame)
    if nc is not None and nc != len(CLASS_NAMES):
        raise ValueError(f"expected a model of {len(CLASS_NAMES)} classes ({names}), got {nc}")


def warm_up(engine: Any, shape: tuple[int, int], batch: int) -> None:
    """Run the engine once at every batch size from 2 to ``batch`` on synthetic frames of
    ``shape`` (:func:`check_engine` ran 1): a runtime that compiles per input shape (OpenVINO)
    does it now, before the daemon says ready, not on the first frames of a series."""
    from ..engines import ops
    from ..engines.base import Detections
    from ..engines.duplicates import suppress_duplicate_lines
    from ..engines.snap import snap_lines

    t0 = time.perf_counter()
    frame = probe_frame(shape)
    for b in range(2, batch + 1):
        engine([frame] * b)
    # and what runs only on frames with detections (the probe may have none): the Numba
    # kernels compiled, the line geometry's modules imported
    ops.warmup()
    h, w = shape
    masks = np.zeros((2, h, w), bool)
    masks[:, h // 2 - 2 : h // 2 + 2, w // 8 : w - w // 8] = True
    boxes = np.array([[w // 8, h // 2 - 2, w - w // 8, h // 2 + 2]] * 2, np.float32)
    det = Detections(masks, boxes, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64))
    suppress_duplicate_lines(snap_lines(frame, det), tol=1.5)
    logger.info("engine: warmed up for batches 1-%d of %dx%d in %.2f s", batch, *shape,
                time.perf_counter() - t0)  # fmt: skip


#: runtime -> the model files it reads, by suffix ("": a folder, an OpenVINO IR)
_READS = {"openvino": (".onnx", ".xml", ""), "onnx": (".onnx",), "torch": (".pt",),
          "tensorrt": (".engine",)}  # fmt: skip


def swap_runtime(cfg: DaemonConfig, running: str, path: str) -> str:
    """The runtime (``engine.engine``) for a model swapped in: the configured one; with none
    configured, the running one where it reads the new file (OpenVINO reads ONNX: a new
    ``.onnx`` is not moved to the slower ONNX Runtime), else "" (by the file's suffix)."""
    from ..models import SHIPPED

    if cfg.engine.engine or cfg.engine.factory:
        return cfg.engine.engine
    if path in SHIPPED and not Path(path).exists():  # a name: every runtime of _READS runs it
        return running if running in _READS else ""
    p = Path(path)
    return running if ("" if p.is_dir() else p.suffix.lower()) in _READS.get(running, ()) else ""


def load_model(cfg: DaemonConfig, path: str, *, shape: tuple[int, int],
               runtime: str | None = None) -> Any:  # fmt: skip
    """An engine for the model ``path`` in ``runtime`` (default: the configured one) with the
    configured options, loaded and checked on one synthetic frame (:func:`check_engine`). What
    the engine worker does before it switches models; raises what went wrong."""
    from ..models import SHIPPED

    if path != "ridge" and path not in SHIPPED and not Path(path).exists():
        raise FileNotFoundError(f"no model file {path}")
    engine = make_engine(cfg.replace(engine={
        "model": path, "engine": cfg.engine.engine if runtime is None else runtime}))  # fmt: skip
    check_engine(engine, shape)
    warm_up(engine, shape, cfg.batch.size)
    return engine


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (what a refused model's caller is told); lines
    that only name a runtime's source file (OpenVINO's ``Exception from src/...cpp:84:``) are
    passed over."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    said = [x for x in lines if not re.fullmatch(r"Exception from \S+:\d+:?", x)]
    text = (said or lines or [""])[0]
    return f"{type(e).__name__}: {text}".rstrip(": ")


def engine_model_id(engine: Any) -> str:
    """The run folder's name of an engine's model (:func:`loopline.io.runfolder.model_id`)."""
    from ..io.runfolder import model_id

    name = getattr(engine, "name", None) or type(engine).__name__
    return model_id(getattr(engine, "model", None), name=name)


class EngineWorker(_Stage):
    """Batches → detections; masks go into the frames' slots, headers to the measure worker.

    Model swaps (:mod:`.control`): a ``prepare`` message from the batcher starts loading the
    new model in a thread beside the running one (:func:`load_model`: it loads in the
    configured runtime and runs one synthetic frame); the worker goes on analysing and tells
    the batcher ``prepared`` (or why not). Once every engine worker is prepared, the batcher
    names the new model in every batch it sends from then on; the worker switches to it when
    the first such batch arrives, between two batches, in the same process. Every ``det``
    message names the model that made it (``model``: ``name@sha256[:8]``).
    """

    name = "engine"

    def setup(self) -> None:
        # the synthetic frame a model is checked on (then: the last frame's shape)
        c = self.cfg
        self._shape = (min(c.engine.imgsz, c.pool.max_height),
                       min(c.engine.imgsz, c.pool.max_width))  # fmt: skip
        engine = make_engine(self.cfg)
        # the configured model passes the check a swapped-in one does (a model of other
        # classes stops the daemon at start-up, named), and the runtime's first call, slow in
        # most, is not the first frame's
        check_engine(engine, self._shape)
        warm_up(engine, self._shape, c.batch.size)
        self._adopt(engine)
        logger.info("engine: %r (%s)", self.engine, self.model)
        self.dealer = self.sock(zmq.DEALER, connect=self.eps.work)
        self.to_det = self.sock(zmq.PUSH, connect=self.eps.det, sndhwm=100_000)
        self._loading: threading.Thread | None = None
        # models loaded beside the running one, by swap request: each waits for the first
        # batch that names it (or for an abort)
        self._candidates: dict[int, dict[str, Any]] = {}
        self._refused: set[str] = set()  # models a batch named that would not load here

    def _adopt(self, engine: Any) -> None:
        """Run ``engine`` from the next batch on."""
        self.engine = engine
        self.label = engine_label(engine)
        self.runtime = str(getattr(engine, "name", "") or "")
        self.model = engine_model_id(engine)
        path = getattr(engine, "model", None)
        self.model_path = None if path is None else str(path)
        # a model card that gives its training pixel size: frames are resampled to it, using
        # the calibration's pixel size, else the camera's (header px_nm), else none
        self.nm_per_px: float | None = None
        self.scaled = bool(getattr(engine, "model_nm_per_px", None))
        if self.scaled:
            from ..calibration import load_calibration

            c = self.cfg.calibration
            self.nm_per_px = (load_calibration(c.profile).nm_per_px if c.profile else None) or None
        self._ready = _dumps({"t": "ready", "pid": os.getpid(), "model": self.model})
        self.ctl_send("model", model=self.model, runtime=self.label, path=self.model_path)

    # -- model swaps
    def _prepare(self, msg: dict[str, Any]) -> None:
        """Start loading the model of a ``prepare`` message in a thread (no socket there)."""
        req, path = msg.get("req"), str(msg.get("path"))
        if self._loading is not None:
            self._prepared(req, error="this engine worker is still loading another model")
            return
        cand: dict[str, Any] = {"req": req, "path": path}
        shape = self._shape
        runtime = swap_runtime(self.cfg, self.runtime, path)

        def work() -> None:
            t0 = time.perf_counter()
            try:
                cand["engine"] = load_model(self.cfg, path, shape=shape, runtime=runtime)
                cand["model"] = engine_model_id(cand["engine"])
            except Exception as e:  # any failure refuses this model; the old one runs on
                cand["error"] = one_line(e)
                logger.debug("engine: %s did not load", path, exc_info=True)
            cand["load_s"] = time.perf_counter() - t0

        logger.info("engine: loading %s beside %s", path, self.model)
        self._candidates[req] = cand
        self._loading = threading.Thread(target=work, name="model-loader", daemon=True)
        self._loading.start()

    def _prepared(self, req: Any, *, error: str = "", **info: Any) -> None:
        body = {"t": "prepared", "pid": os.getpid(), "req": req, "ok": not error, **info}
        if error:
            body["error"] = error
        self.dealer.send(_dumps(body))

    def _poll_loading(self) -> None:
        """A finished load: tell the batcher (from this thread, which owns the socket)."""
        if self._loading is None or self._loading.is_alive():
            return
        self._loading = None
        req, cand = next((k, c) for k, c in self._candidates.items() if "load_s" in c
                         and not c.get("told"))  # fmt: skip
        cand["told"] = True
        if cand.get("aborted") or cand.get("error"):
            del self._candidates[req]
        if cand.get("aborted"):
            return
        if cand.get("error"):
            logger.warning("engine: %s refused: %s", cand["path"], cand["error"])
            self._prepared(req, error=cand["error"])
            return
        logger.info("engine: %s loaded and checked in %.2f s; waiting for the switch",
                    cand["model"], cand["load_s"])  # fmt: skip
        engine = cand["engine"]
        self._prepared(req, model=cand["model"], runtime=engine_label(engine),
                       engine=getattr(engine, "name", ""),
                       load_s=round(cand["load_s"], 3))  # fmt: skip

    def _abort(self, msg: dict[str, Any]) -> None:
        cand = self._candidates.get(msg.get("req"))
        if cand is None:
            return
        if "load_s" in cand and cand.get("told"):
            del self._candidates[msg.get("req")]
        else:  # still loading: dropped when it is done
            cand["aborted"] = True

    def _use(self, want: dict[str, Any] | None, first: dict[str, Any]) -> None:
        """Before a batch: switch to the model it names, if that is not the running one."""
        if not want:
            return
        if want.get("model") == self.model:
            if self._candidates:  # a swap to the running model: its second copy goes
                for k in [k for k, c in self._candidates.items()
                          if c.get("told") and c.get("model") == self.model]:  # fmt: skip
                    del self._candidates[k]
            return
        model, path = str(want.get("model")), str(want.get("path"))
        old = self.model
        # the newest loaded candidate of that model (a swap committed, its first batch here)
        found = [(k, c) for k, c in self._candidates.items()
                 if c.get("told") and c.get("model") == model]  # fmt: skip
        if found:
            req, cand = found[-1]
            self._adopt(cand["engine"])
            # candidates of earlier swaps were superseded by this one: never used
            for k in [k for k in self._candidates if k <= req and self._candidates[k].get("told")]:
                del self._candidates[k]
            logger.info("engine: switched from %s to %s at frame %s/%s", old, self.model,
                        first.get("series"), first.get("index"))  # fmt: skip
            return
        if model in self._refused:
            return
        # not prepared here (this worker was restarted during the swap): load it now, once
        logger.warning("engine: a batch asks for %s, not loaded here; loading it now", model)
        try:
            engine = load_model(self.cfg, path, shape=self._shape, runtime=want.get("engine"))
            got = engine_model_id(engine)
            if got != model:
                raise ValueError(f"{path} now reads as {got}, expected {model}")
        except Exception as e:  # the frames are analysed by the running model, and say so
            self._refused.add(model)
            logger.error("engine: %s: %s; %s keeps running here", model, one_line(e), old)
            return
        self._adopt(engine)

    def _infer(self, imgs: list[np.ndarray], live: list[dict[str, Any]]) -> list[Any]:
        if self.scaled:
            px = [self.nm_per_px or h.get("px_nm") or self.cfg.calibration.nm_per_px or None
                  for h in live]  # fmt: skip
            dets = self.engine(imgs, nm_per_px=px)
        else:  # factory engines (tests, plug-ins) take frames only
            dets = self.engine(imgs)
        if len(dets) != len(imgs):
            raise RuntimeError(f"engine: expected {len(imgs)} detections, got {len(dets)}")
        return dets

    def _failed(self, h: dict[str, Any], e: Exception) -> None:
        """The engine raised on this frame: it is lost (counted), the worker goes on."""
        self.stats.add("analysis_errors")
        _log_frame_error("engine: lost", h, e)
        send_json(self.to_det, {**h, "t": "lost", "why": f"engine error: {type(e).__name__}"},
                  block=True)  # fmt: skip

    def _run_batch(self, frames: list[dict[str, Any]]) -> None:
        from ..engines.base import Detections

        t0 = time.perf_counter()
        imgs, live = [], []
        for h in frames:
            img = self.pool.read_image(h["slot"], h["gen"], tuple(h["shape"]), h["dtype"])
            if img is None:
                send_json(self.to_det, {**h, "t": "lost", "why": "slot reused"}, block=True)
            else:
                imgs.append(img)
                live.append(h)
        if not imgs:
            return
        self._shape = imgs[0].shape[:2]
        try:
            dets: list[Detections] = self._infer(imgs, live)
        except Exception:  # one bad frame must not cost its batch: each alone, then
            dets, ok = [], []
            for img, h in zip(imgs, live, strict=True):
                try:
                    dets += self._infer([img], [h])
                    ok.append(h)
                except Exception as e:
                    self._failed(h, e)
            live = ok
        dt = time.perf_counter() - t0
        k = self.cfg.pool.max_instances
        for h, d in zip(live, dets, strict=True):
            try:
                # the mask budget (module docstring): every instance's box, score and class
                # travel in the message, the masks of the first k (in this order) in the slot
                boxes, scores, classes, masks = d.boxes, d.scores, d.classes, d.masks
                if len(d) > k:
                    order = mask_priority(classes, scores)
                    boxes, scores, classes = boxes[order], scores[order], classes[order]
                    masks = masks[order[:k]]  # copies of k masks, not of all
                n = self.pool.write_masks(h["slot"], h["gen"], masks)
                timings = dict(d.timings_ms)
                timings["engine_total"] = dt * 1e3 / len(imgs)
                msg = {
                    **h, "t": "det", "n": n, "boxes": boxes.tolist(), "scores": scores.tolist(),
                    "classes": classes.tolist(), "timings_ms": timings, "engine": self.label,
                    "model": self.model, "model_path": self.model_path,
                }  # fmt: skip
                send_json(self.to_det, msg, block=True)
            except Exception as e:
                self._failed(h, e)
        self.stats["engine_ms_per_frame"] = dt * 1e3 / len(imgs)
        self.beat(len(imgs), time.perf_counter() - t0)

    def loop(self) -> None:
        self.dealer.send(self._ready)
        last = time.monotonic()
        while not self.terminate:
            self._poll_loading()
            if not self.dealer.poll(_POLL_MS):
                self.beat()
                if time.monotonic() - last > 2.0:  # a restarted batcher forgot us: ask again
                    self.dealer.send(self._ready)
                    last = time.monotonic()
                continue
            msg = recv_json(self.dealer) or {}
            t = msg.get("t")
            if t == "prepare":  # not a batch: no ready (the batcher may have sent us one)
                self._prepare(msg)
                continue
            if t == "abort":
                self._abort(msg)
                continue
            if t == "batch" and msg.get("frames"):
                self._use(msg.get("model"), msg["frames"][0])
                self._run_batch(msg["frames"])
            self.dealer.send(self._ready)
            last = time.monotonic()

    def close(self) -> None:
        loading = getattr(self, "_loading", None)
        if loading is not None:  # a load in progress: let it end before the process does
            loading.join(30)
        super().close()


# ----------------------------------------------------------------------------- measure


def alarm_config(cfg: DaemonConfig):
    """The ``[alarms]`` section as :class:`loopline.pipelines.alarms.AlarmConfig`."""
    import dataclasses

    from ..pipelines.alarms import AlarmConfig

    values = dataclasses.asdict(cfg.alarms)
    values.pop("disk_check_s")
    return AlarmConfig.from_mapping(values)


def detections_of(msg: dict[str, Any], masks: np.ndarray):
    """A ``det`` message and its ``n`` masks → (Detections, BoxOnly or None).

    The message lists every instance's box, score and class, the ``n`` with masks first (the
    mask budget, module docstring); the rest become a
    :class:`~loopline.pipelines.measure.BoxOnly`.

    Raises
    ------
    ValueError
        When the lists' lengths disagree with each other or with the masks.
    """
    from ..engines.base import Detections
    from ..pipelines.measure import BoxOnly

    boxes = np.asarray(msg["boxes"], np.float32)
    scores = np.asarray(msg["scores"], np.float32)
    classes = np.asarray(msg["classes"], np.int64)
    n, total = int(msg["n"]), len(scores)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if (scores.ndim != 1 or boxes.shape != (total, 4) or classes.shape != (total,)
            or masks.shape[0] != n or n > total):
        raise ValueError(f"det message: expected boxes ({total}, 4), classes ({total},) and "
                         f"{n} <= {total} masks, got boxes {boxes.shape}, classes "
                         f"{classes.shape}, scores {scores.shape}, {masks.shape[0]} "
                         "masks")  # fmt: skip
    det = Detections(masks=masks, boxes=boxes[:n], scores=scores[:n], classes=classes[:n],
                     timings_ms=msg["timings_ms"])  # fmt: skip
    box_only = BoxOnly(boxes[n:], scores[n:], classes[n:]) if total > n else None
    return det, box_only


#: frames.csv fate of a frame measured but not tracked: it came back from its engine after
#: its successors were tracked (:class:`Reorder`; counted in ``late_after_successor``)
UNTRACKED = "analysed_untracked"
#: what only a tracker knows about an instance: unknown (None) for an untracked frame
_TRACKED_KEYS = ("position_nm", "velocity_nm_s", "velocity_px_per_frame")


class Reorder:
    """Results of several engine workers back in analysis order, in a bounded window.

    The batcher numbers frames (``aseq``) as it hands them to the engines; engines finish in
    any order (two workers: frame 1 can come back before frame 0). A result waits here until
    every earlier number was handed on, or until its wait is over: the gap before it has been
    open ``wait_s``, or ``window`` results wait behind it (a batch lost with a dead engine, a
    very slow one). Then the missing numbers are given up and the rest handed on. A result
    whose number was given up comes *late*: its successors were handed on (and tracked)
    before it; :meth:`put` refuses it and the caller measures it without tracking it.

    Parameters
    ----------
    start : int
        The first number to hand on: 0 (the batcher numbers from 0), or, for a restarted
        measure worker, ``analysis_done`` (what its predecessor handed on or gave up).
    window : int
        Most results held behind a gap (>= 1).
    wait_s : float
        Longest wait for a missing number (s, >= 0), from when a later one is first seen.

    Examples
    --------
    >>> r = Reorder(window=8, wait_s=1.0)
    >>> r.put(1, "b"), r.ready(now=0.0)
    (True, [])
    >>> r.put(0, "a"), r.ready(now=0.1)
    (True, [(0, 'a'), (1, 'b')])
    >>> r.put(3, "d"), r.ready(now=0.2), r.ready(now=1.3)
    (True, [], [(2, None), (3, 'd')])
    >>> r.put(2, "c")  # late: 3 was handed on before it
    False
    """

    def __init__(self, *, start: int = 0, window: int, wait_s: float) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self.next = int(start)
        self.window = int(window)
        self.wait_s = float(wait_s)
        self.buffer: dict[int, Any] = {}
        self.gap_since: float | None = None

    def __len__(self) -> int:
        return len(self.buffer)

    def put(self, aseq: int, item: Any) -> bool:
        """Hold ``item`` until its turn; False if ``aseq`` was handed on or given up already
        (the item is late: not held)."""
        if aseq < self.next:
            return False
        self.buffer[aseq] = item
        return True

    def ready(self, now: float) -> list[tuple[int, Any]]:
        """What may be handed on at time ``now`` (s, monotonic), in order: ``(aseq, item)``,
        item None for a number given up."""
        out: list[tuple[int, Any]] = []
        while self.buffer:
            if self.next in self.buffer:
                out.append((self.next, self.buffer.pop(self.next)))
                self.next += 1
                self.gap_since = None
                continue
            if self.gap_since is None:
                self.gap_since = now
            if now - self.gap_since < self.wait_s and len(self.buffer) < self.window:
                break
            out += self._give_up(min(self.buffer))
        return out

    def flush(self) -> list[tuple[int, Any]]:
        """Everything held, in order, the gaps given up (the end of the run)."""
        out: list[tuple[int, Any]] = []
        while self.buffer:
            out += self._give_up(min(self.buffer))
            out.append((self.next, self.buffer.pop(self.next)))
            self.next += 1
        return out

    def _give_up(self, until: int) -> list[tuple[int, Any]]:
        out = [(a, None) for a in range(self.next, until)]
        self.next = max(self.next, until)
        self.gap_since = None
        return out


def _untracked(row: dict[str, Any], instances: list[dict[str, Any]],
               pairs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                      list[dict[str, Any]]]:  # fmt: skip
    """A one-frame analysis without what only the series' tracker knows: track and pile-up
    ids (-1, as :func:`~loopline.pipelines.measure_frame` leaves them), drift and kinematics
    (None: not measured)."""
    row = {**row, "drift_x_px": None, "drift_y_px": None}
    instances = [{**i, "id": -1, **({"pileup": -1} if "pileup" in i else {}),
                  **{k: None for k in _TRACKED_KEYS if k in i}} for i in instances]  # fmt: skip
    pairs = [{**p, "a": -1, "b": -1, "pileup": -1} for p in pairs]
    return row, instances, pairs


class MeasureWorker(_Stage):
    """Detections in analysis order → measurements and track ids → the output worker.

    Results come back from the engine workers in any order; :class:`Reorder` puts them back
    in the batcher's order (``aseq``) within a bounded window (``batch.max_inflight`` +
    ``batch.size`` frames, ``min(2, output.result_timeout_s / 2)`` s). A frame that comes
    back after its successors were tracked cannot join its series' track (a tracker takes
    frames in increasing index only): it is measured on its own, without track ids, drift or
    kinematics, counted in ``late_after_successor`` (and, measured, in ``analysed``), and
    recorded with the fate ``analysed_untracked``; its ``series.csv`` row comes after its
    successors', it has no ``tracks.csv`` or ``pairs.csv`` rows (they hold tracked objects).
    """

    name = "measure"

    def setup(self) -> None:
        from .analysis import Analyzer

        c = self.cfg.calibration
        self.analyzer = Analyzer(nm_per_px=c.nm_per_px, calibration_profile=c.profile,
                                 fps=c.fps, alarms=alarm_config(self.cfg))  # fmt: skip
        self.analyzer.warmup()  # compile the kernels before frames arrive, not on frame 1
        self.pull = self.sock(zmq.PULL, bind=self.eps.det, rcvhwm=100_000)
        self.to_out = self.sock(zmq.PUSH, connect=self.eps.out, sndhwm=1_000_000)
        self.gap_s = min(2.0, self.cfg.output.result_timeout_s / 2)
        # the batcher keeps fewer than max_inflight frames unmeasured before it sends a batch
        # of up to batch.size: never more wait behind a gap unless it lifted that limit
        self.reorder = Reorder(start=int(self.stats["analysis_done"]),
                               window=self.cfg.max_inflight + self.cfg.batch.size,
                               wait_s=self.gap_s)  # fmt: skip
        self.eos_total: int | None = None
        self.eos_since = 0.0
        # (series, segment) being tracked: a new segment (a restarted series, validate.py)
        # starts a new tracker
        self._segment: tuple[str, Any] | None = None
        self._warned_budget = False
        self._warned_late = 0.0

    def _lost(self, h: dict[str, Any], why: str, *, late: bool = False) -> None:
        self.pool.release(h["slot"], h["gen"], ANALYSIS)
        if not late:  # a late one was counted done when its number was given up
            self.stats.add("analysis_done")
        send_json(self.to_out, {"t": "lost", "series": h["series"], "index": h["index"],
                                "seq": h["seq"], "why": why}, block=True)  # fmt: skip

    def _handle(self, h: dict[str, Any], *, late: bool = False) -> None:
        """Measure one engine result; ``late``: after its successors (not tracked)."""
        if h.get("t") != "det":
            self._lost(h, h.get("why", "lost"), late=late)
            return
        t0 = time.perf_counter()
        shape = tuple(h["shape"])
        masks = self.pool.read_masks(h["slot"], h["gen"], h["n"], shape)
        image = self.pool.read_image(h["slot"], h["gen"], shape, h["dtype"])  # for drift
        if masks is None or image is None:
            self._lost(h, "slot reused", late=late)
            return
        self.pool.release(h["slot"], h["gen"], ANALYSIS)
        if not late:
            self.stats.add("analysis_done")
        try:
            det, box_only = detections_of(h, masks)
            if late:
                t, row, instances, timings, pairs, tables = self._measure_untracked(
                    h, det, box_only)  # fmt: skip
            else:
                t, row, instances, timings, pairs, tables = self._measure(
                    h, det, box_only, image)  # fmt: skip
            self._without_mask(h, row, len(det))
            timings = {**h["timings_ms"], **timings}
            keys = ("series", "index", "seq", "ts", "recv", "shape")
            out = {k: h[k] for k in keys}
            out["time_s"] = t
            # the camera's pixel size, else the calibration's (profile or calibration.nm_per_px)
            out["px_nm"] = h.get("px_nm") or row.get("nm_per_px")
            # row and tables: this frame's rows of the run folder's tables (io/runfolder.py)
            out.update(t="result", row=row, instances=instances, pairs=pairs, timings_ms=timings,
                       engine=h.get("engine"), model=h.get("model"),
                       model_path=h.get("model_path"), tables=tables)  # fmt: skip
            if late:
                out["fate"] = UNTRACKED
            send_json(self.to_out, out, block=True)  # strict JSON: raises before it sends
        except Exception as e:  # costs this frame; the next one starts a fresh tracker
            if not late:  # a late frame never touched the series' tracker
                self._segment = None
            self.stats.add("analysis_errors")
            _log_frame_error("measure: lost", h, e)
            send_json(self.to_out, {"t": "lost", "series": h["series"], "index": h["index"],
                                    "seq": h["seq"], "why": f"measure error: {type(e).__name__}"},
                      block=True)  # fmt: skip
            return
        if late:
            self.stats.add("late_after_successor")
        dt = time.perf_counter() - t0
        self.stats["measure_ms_per_frame"] = dt * 1e3
        self.beat(1, dt)

    def _measure(self, h: dict[str, Any], det: Any, box_only: Any, image: np.ndarray):
        """One frame of the series being tracked: (time_s, row, instances, timings, pairs,
        tables)."""
        seg = (h["series"], h.get("segment"))
        if seg != self._segment:
            self._segment = seg
            self._send_analysis(self.analyzer.new_series(h["series"],
                                                         h.get("px_nm") or 0.0))  # fmt: skip
        # the calibration profile's time axis, else the header's (the file's own, the camera's)
        t = self.analyzer.time_of(h["index"], h["time_s"])
        row, instances, timings, pairs, tables = self.analyzer.process(
            det, index=h["index"], time_s=t, image=image, box_only=box_only
        )
        return t, row, instances, timings, pairs, tables

    def _measure_untracked(self, h: dict[str, Any], det: Any, box_only: Any):
        """A late frame, measured by an analyzer of its own (the series' tracker has gone past
        it): as :meth:`_measure`, without tracks (:func:`_untracked`) or track tables."""
        from .analysis import Analyzer

        c = self.cfg.calibration
        one = Analyzer(nm_per_px=c.nm_per_px, calibration_profile=c.profile, fps=c.fps)
        one.new_series(h["series"], h.get("px_nm") or 0.0)
        t = one.time_of(h["index"], h["time_s"])
        row, instances, timings, pairs, _ = one.process(det, index=h["index"], time_s=t,
                                                        box_only=box_only)  # fmt: skip
        row, instances, pairs = _untracked(row, instances, pairs)
        return t, row, instances, timings, pairs, {}

    def _without_mask(self, h: dict[str, Any], row: dict[str, Any], masked: int) -> None:
        """Count the frame's instances measured without a mask; say so once at WARNING."""
        k = int(row.get("instances_without_mask") or 0)
        if not k:
            return
        self.stats.add("instances_without_mask", k)
        level = logging.DEBUG if self._warned_budget else logging.WARNING
        self._warned_budget = True
        logger.log(level, "frame %s/%d: %d instances beyond the mask budget (pool.max_instances "
                   "= %d): loops measured from their boxes (tracks.csv from_box = 1), "
                   "dislocations counted, not traced; counted in instances_without_mask "
                   "(further frames at DEBUG)", h["series"], h["index"], k, masked)  # fmt: skip

    def _send_analysis(self, ended: dict[str, Any] | None) -> None:
        """An ended series' summary and open tracks' summary rows to the recorder."""
        if ended is not None:
            send_json(self.to_out, {"t": "analysis", **ended}, block=True)

    def _take(self, msg: dict[str, Any], now: float) -> None:
        """One message from an engine (a result) or the batcher (``eos``)."""
        if msg.get("t") == "eos":
            self.eos_total = int(msg["seq_total"])
            self.eos_since = now
        elif "aseq" in msg and not self.reorder.put(int(msg["aseq"]), msg):
            level = logging.WARNING if now - self._warned_late > 5 else logging.DEBUG
            if level == logging.WARNING:
                self._warned_late = now
            logger.log(level, "measure: frame %s/%s came back from its engine after later "
                       "frames were tracked (more than %.1f s or %d frames late): measured, "
                       "not tracked; counted in late_after_successor", msg.get("series"),
                       msg.get("index"), self.reorder.wait_s, self.reorder.window)  # fmt: skip
            self._handle(msg, late=True)

    def _hand_on(self, released: list[tuple[int, Any]]) -> None:
        """Measure what the reorder window released, in order; count what it gave up."""
        missing = [a for a, h in released if h is None]
        if missing:
            logger.warning("measure: frames %d..%d did not come back from the engine in time; "
                           "going on without them", missing[0], missing[-1])  # fmt: skip
            self.stats.add("analysis_done", len(missing))
        for _, h in released:
            if h is not None:
                self._handle(h)

    def _advance(self, now: float | None = None) -> None:
        self._hand_on(self.reorder.ready(time.monotonic() if now is None else now))

    def _drained(self, now: float) -> bool:
        """After ``eos``: everything came back (or the wait for it is over), and is handed on."""
        if self.eos_total is None:
            return False
        caught_up = self.reorder.next >= self.eos_total and not self.reorder.buffer
        if not (caught_up or now - self.eos_since > self.gap_s * 2):
            return False
        self._hand_on(self.reorder.flush())
        return True

    def loop(self) -> None:
        while not self.terminate:
            if self.pull.poll(_POLL_MS):
                for _ in range(1000):
                    try:
                        msg = recv_json(self.pull)
                    except zmq.Again:
                        break
                    if msg is not None:
                        self._take(msg, time.monotonic())
            self._advance()
            self.beat()
            if self._drained(time.monotonic()):
                self._send_analysis(self.analyzer.finish())
                send_json(self.to_out, {"t": "eos_analysis"}, block=True)
                logger.info("measure: drained")
                self.idle()
                return


# ----------------------------------------------------------------------------- output


class OutputWorker(_Stage):
    """Publisher and recorder: every frame to the run folder in order, results to viewers."""

    name = "output"

    def setup(self) -> None:
        from .metrics import LatencyWindow, MetricsView
        from .publisher import Publisher
        from .recorder import Recorder

        self.pull = self.sock(zmq.PULL, bind=self.eps.out, rcvhwm=0)
        self.publisher = Publisher(self.ctx, self.cfg.publish) if self.cfg.publish.enabled else None
        if self.publisher is not None:
            self.sockets.append(self.publisher.sock)
        # a full disk stops recording, not the worker: the recorder raises recording_stopped
        self.recorder = Recorder(self.run_dir, self.cfg.output, part=self.part,
                                 on_alarm=self._alarm_event, count=self.stats.add)  # fmt: skip
        # frames are keyed by the receiver's seq, unique whatever (series, index) a sender
        # repeats (a duplicate index is recorded as a frame of its own)
        self.pending: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.written: OrderedDict[int, bool] = OrderedDict()  # recent, for late ones
        self.early: dict[int, dict[str, Any]] = {}  # results ahead of their header
        self.reset_before = 0.0
        self.latency = LatencyWindow()
        self.ingest_latency = LatencyWindow()
        self.metrics = MetricsView(self.stats)
        self.eos_frames: int | None = None
        self.eos_analysis = False
        self.eos_at = 0.0
        self.last_metrics = time.monotonic()
        self.finished = False
        self.timeout = self.cfg.output.result_timeout_s
        # a camera's frame is recorded after record_wait_s whatever its analysis does (fate
        # ``late``); its result may still come within result_timeout_s: seq -> that deadline
        self.record_wait = min(self.cfg.output.record_wait_s, self.timeout)
        self.awaiting: OrderedDict[int, tuple[float, dict[str, Any]]] = OrderedDict()
        # an unpaced file waits for slow analysis: a frame is late only when no frame at all
        # came back for the timeout (a camera's frame: when it is that old)
        self.waits = self.cfg.replay_waits
        self.last_progress = time.monotonic()
        # names for viewers and summary.json; the engine's comes with the first result
        self.names: dict[str, Any] = {"source": source_label(self.cfg), "engine": None}
        from ..pipelines.alarms import DaemonAlarms

        # alarms: the daemon's own rules here; the frame rules' events come with the results
        self.daemon_alarms = DaemonAlarms(alarm_config(self.cfg))
        self.alarms_active: dict[str, dict[str, Any]] = {}  # rule -> its raise event
        self.next_disk_check = 0.0
        self.disk_seen: tuple[float, float] | None = None  # (monotonic s, free GB)
        self.disk_gb_per_h = math.nan  # the rate the disk has been filling at (smoothed)

    # -- messages
    def _on(self, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        if t in ("result", "skip", "lost"):
            key = msg["seq"]
            if key not in self.pending and key not in self.written:
                # Channels are fair-queued: a result can overtake its frame's header (e.g.
                # after a stall of this process). Keep it until the header arrives.
                self.early[key] = msg
                return
            self.last_progress = time.monotonic()
        if t == "frame":
            msg["_arr"] = time.monotonic()
            key = msg["seq"]
            st = self.stats
            st["output_next_seq"] = max(st["output_next_seq"], key + 1)  # receiver._reconcile
            if key == st["receiver_lost_seq"] - 1:  # declared lost by a restarted receiver
                st["receiver_lost_seq"] = 0
                st.add("receiver_errors", -1)
                st.add("skipped", -1)
            self.pending[key] = msg
            self._maybe_reset(msg)
            early = self.early.pop(key, None)
            if early is not None:
                self._on(early)
        elif t == "result":
            self._on_result(msg)
        elif t in ("skip", "lost"):
            key = msg["seq"]
            e = self.pending.get(key)
            if self.awaiting.pop(key, None) is not None:  # recorded late: counted here, once
                self.written[key] = False
            if t == "lost":
                self.stats.add("skipped")
                self.stats.add("skipped_lost")
            if e is not None:
                e["fate"] = "skipped" if t == "skip" else "lost"
        elif t == "series":
            if self.publisher is not None:
                self.publisher.series(msg)
            self.recorder.series_event(msg)
        elif t == "eos":
            self.eos_frames = int(msg.get("frames", 0))
            self.eos_at = time.monotonic()
        elif t == "analysis":  # a series ended in the measure worker: its summary
            self.recorder.analysis(msg)
        elif t == "eos_analysis":
            self.eos_analysis = True
        elif t == "chain_reset":  # an analysis worker died: what it held will not come back
            self.reset_before = max(self.reset_before, float(msg["before"]))
            for e in self.pending.values():
                self._maybe_reset(e)

    def _maybe_reset(self, e: dict[str, Any]) -> None:
        """A frame received before a batcher/measure crash without a fate: presumed lost.

        Frames may still come back (then they count as analysed after all); what matters
        is that the recorder does not hold every later frame while it waits for them.
        """
        if "fate" not in e and e["recv"] < self.reset_before:
            e["fate"] = "lost"
            e["_lost_counted"] = True
            self.stats.add("skipped")
            self.stats.add("skipped_lost")

    def _on_result(self, msg: dict[str, Any]) -> None:
        key = msg["seq"]
        now = time.time()
        lat = (now - msg["ts"]) * 1e3
        ok_clock = abs(now - msg["ts"]) < 86400  # a camera clock far off: use receive time
        self.latency.add(lat if ok_clock else (now - msg["recv"]) * 1e3)
        self.ingest_latency.add((now - msg["recv"]) * 1e3)
        self.stats.add("analysed")
        if msg.get("engine"):
            self.names["engine"] = msg["engine"]
        e = self.pending.get(key)
        image = None
        if e is not None:
            if e.get("_lost_counted") or e.get("fate") == "lost":  # came back after all
                self.stats.add("skipped", -1)
                self.stats.add("skipped_lost", -1)
            # analysed, or measured without tracking (a late frame: MeasureWorker)
            e["fate"] = UNTRACKED if msg.get("fate") == UNTRACKED else "analysed"
            e["result"] = msg
            image = self.pool.read_image(e["slot"], e["gen"], tuple(e["shape"]), e["dtype"])
        else:
            self.stats.add("late_results")
            late = self.awaiting.pop(key, None)
            if late is not None:  # recorded before it came: tables and viewers still get it
                self.written[key] = True
                h = late[1]  # the frame is still there while the analysis holds its slot
                image = self.pool.read_image(h["slot"], h["gen"], tuple(h["shape"]), h["dtype"])
            elif self.written.get(key) is False:  # recorded as lost: it is analysed after all
                self.stats.add("skipped", -1)
                self.stats.add("skipped_lost", -1)
        t0 = time.perf_counter()
        if image is not None and e is not None:  # drawn for the video (not for a late frame)
            e["annotated"] = self.recorder.annotate(image, msg)
        if not self.recorder.append_result(msg, latency_ms=lat if ok_clock else None):
            self.stats.add("results_not_recorded_disk")  # recording stopped: disk full
        self._alarms(msg, (now - msg["recv"]) * 1e3)
        if self.publisher is not None:
            msg["alarms_active"] = sorted(self.alarms_active)
            # the frame without overlay: the viewers draw it, each layer switchable
            self.publisher.frame(msg, image, latency_ms=lat if ok_clock else None,
                                 counters=self.metrics.counters())  # fmt: skip
            self.stats["published"] = self.publisher.sent
            self.stats["published_jpeg"] = self.publisher.sent_jpeg
        self.beat(0, time.perf_counter() - t0)

    def _alarms(self, msg: dict[str, Any], ingest_ms: float) -> None:
        """The frame rules' events of this result, and the daemon's own rules (latency, and
        every ``alarms.disk_check_s`` the free disk): recorded (alarms.csv), published
        (``alarm`` messages), counted (Prometheus)."""
        disk = math.nan
        now = time.monotonic()
        if now >= self.next_disk_check:
            self.next_disk_check = now + self.cfg.alarms.disk_check_s
            try:
                disk = shutil.disk_usage(self.run_dir).free / 1e9
            except OSError as e:
                logger.debug("alarms: free disk of %s unknown: %s", self.run_dir, e)
            else:
                self._disk_rate(now, disk)
        own = self.daemon_alarms.update(series=msg["series"], frame=msg["index"],
                                        time_s=msg["time_s"], latency_ms=ingest_ms,
                                        disk_free_gb=disk,
                                        disk_gb_per_h=self.disk_gb_per_h)  # fmt: skip
        if own:
            self.recorder.alarms(own)
        for ev in [*((msg.get("tables") or {}).get("alarms") or ()), *own]:
            self._alarm_event(ev)

    def _disk_rate(self, now: float, free_gb: float) -> None:
        """The rate the run folder's disk fills at (GB/h, smoothed over about a minute): with
        the free space, the hours left in the ``disk_low`` alarm."""
        seen, self.disk_seen = self.disk_seen, (now, free_gb)
        if seen is None or now <= seen[0]:
            return
        dt = now - seen[0]
        rate = max(seen[1] - free_gb, 0.0) / (dt / 3600.0)
        a = min(dt / 60.0, 1.0)
        old = self.disk_gb_per_h
        self.disk_gb_per_h = rate if math.isnan(old) else old + a * (rate - old)

    def _alarm_event(self, ev: dict[str, Any]) -> None:
        """One alarm raised or cleared: counted (Prometheus), published (``alarm``)."""
        rule = ev["rule"]
        if ev["state"] == "raise":
            self.alarms_active[rule] = ev
            self.stats.add(f"alarms_raised_{rule}")
        else:
            self.alarms_active.pop(rule, None)
        self.stats[f"alarm_active_{rule}"] = float(rule in self.alarms_active)
        if self.publisher is not None:
            self.publisher.alarm(ev)

    # -- recording in arrival order
    def _crowded(self) -> bool:
        """Most frame slots in use (``output.record_crowded``): record without waiting."""
        return self.pool.in_use() >= self.cfg.output.record_crowded * self.pool.total_slots

    def _write_ready(self, *, force: bool = False) -> None:
        """Record the frames at the head of the queue whose fate is known, or that waited long
        enough: a camera's frame ``output.record_wait_s`` (then at once while the slots are
        crowded), an unpaced file's frame until no analysis came back for
        ``output.result_timeout_s`` (its reader waits for the analysis anyway)."""
        now = time.monotonic()
        crowded = self._crowded() if self.pending else False
        while self.pending:
            key, e = next(iter(self.pending.items()))
            fate = e.get("fate")
            if fate is None:
                if force:  # the run ends: what has not come back will not
                    fate = e["fate"] = "lost"
                    self.stats.add("skipped")
                    self.stats.add("skipped_lost")
                    logger.warning("frame %s/%d: no analysis after %.1f s; recorded "
                                   "unannotated", e["series"], e["index"], now - e["_arr"])
                elif self.waits:
                    if now - max(e["_arr"], self.last_progress) < self.timeout:
                        break
                    fate = e["fate"] = "lost"
                    self.stats.add("skipped")
                    self.stats.add("skipped_lost")
                    logger.warning("frame %s/%d: no analysis after %.1f s; recorded "
                                   "unannotated", e["series"], e["index"], now - e["_arr"])
                else:
                    if now - e["_arr"] < self.record_wait and not crowded:
                        break
                    # recorded as it came; the result may still come for the tables
                    fate = e["fate"] = "late"
                    self.stats.add("recorded_late")
                    self.awaiting[key] = (e["_arr"] + self.timeout, e)
                    logger.debug("frame %s/%d: recorded before its analysis (%.2f s%s)",
                                 e["series"], e["index"], now - e["_arr"],
                                 ", slots crowded" if crowded else "")  # fmt: skip
            self.pending.popitem(last=False)
            self._record(e, fate)
            self.written[key] = fate in ("analysed", UNTRACKED)
            if len(self.written) > 4096:
                self.written.popitem(last=False)
        self._expire(now, force=force)
        self.stats["queue_output"] = len(self.pending)

    def _record(self, e: dict[str, Any], fate: str) -> None:
        """One frame to the run folder (video, raw, frames.csv); its slot released."""
        t0 = time.perf_counter()
        image = self.pool.read_image(e["slot"], e["gen"], tuple(e["shape"]), e["dtype"])
        if image is None:
            self.stats.add("record_errors")
            logger.error("frame %s/%d: slot reused before recording; NOT RECORDED",
                         e["series"], e["index"])  # fmt: skip
        else:
            try:
                if self.recorder.write_frame(image, e, e.get("annotated"), fate):
                    self.stats.add("recorded")
                else:  # recording stopped: the disk is full (the recorder's alarm)
                    self.stats.add("not_recorded_disk")
            except Exception as err:  # costs this frame's recording, not the worker
                self.stats.add("record_errors")
                _log_frame_error("output: NOT RECORDED", e, err)
        self.pool.release(e["slot"], e["gen"], RECORD)
        dt = time.perf_counter() - t0
        self.stats["record_ms_per_frame"] = dt * 1e3
        self.beat(1, dt)

    def _expire(self, now: float, *, force: bool = False) -> None:
        """Frames recorded late whose analysis did not come within result_timeout_s: lost."""
        while self.awaiting:
            key, (deadline, _e) = next(iter(self.awaiting.items()))
            if not force and now < deadline:
                break
            self.awaiting.popitem(last=False)
            self.written[key] = False
            self.stats.add("skipped")
            self.stats.add("skipped_lost")

    def _maybe_metrics(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_metrics < self.cfg.metrics.interval_s:
            return
        self.last_metrics = now
        p = self.latency.percentiles()
        self.stats["latency_p50_ms"] = p["p50"]
        self.stats["latency_p99_ms"] = p["p99"]
        self.stats["latency_max_ms"] = p["max"]
        self.stats["latency_count"] = p["count"]
        q = self.ingest_latency.percentiles()
        self.stats["ingest_latency_p50_ms"] = q["p50"]
        self.stats["ingest_latency_p99_ms"] = q["p99"]
        snap = {**self.metrics.update(), **self.names}
        if self.publisher is not None:
            self.publisher.metrics(snap)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._write_ready(force=True)
        self._maybe_metrics(force=True)
        lat = self.latency.percentiles(whole_run=True)
        ing = self.ingest_latency.percentiles(whole_run=True)
        self.recorder.close(self.stats.snapshot(), latency=lat, ingest_latency=ing,
                            metrics=self.metrics.last, names=self.names)  # fmt: skip

    def loop(self) -> None:
        while not self.terminate:
            if self.pull.poll(20):
                for _ in range(2000):
                    try:
                        msg = recv_json(self.pull)
                    except zmq.Again:
                        break
                    if msg is not None:
                        try:
                            self._on(msg)
                        except Exception as e:  # costs this message (an overlay, a row)
                            self.stats.add("output_errors")
                            _log_frame_error(f"output ({msg.get('t')})", msg, e)
            self._write_ready()
            self.recorder.tick()  # a stopped recording resumes when the disk has room
            self._maybe_metrics()
            self.beat()
            if self.eos_frames is not None:
                since = max(self.eos_at, self.last_progress) if self.waits else self.eos_at
                analysis_done = self.eos_analysis or (time.monotonic() - since > self.timeout)
                if analysis_done:
                    self._finish()
                    self.ctl_send("done")
                    logger.info("output: run folder closed")
                    self.idle()
                    return

    def close(self) -> None:
        # SIGTERM before the drain finished (timeout or a forced stop): still close the files
        if hasattr(self, "recorder") and not self.finished:
            try:
                self._finish()
            except Exception:
                logger.exception("output: closing the run folder failed")
        if getattr(self, "publisher", None) is not None:
            self.publisher.close()  # and its ZAP thread, before the context is terminated
        super().close()


STAGE_CLASSES: dict[str, type[_Stage]] = {
    "receiver": Receiver, "batcher": Batcher, "engine": EngineWorker,
    "measure": MeasureWorker, "output": OutputWorker,
}  # fmt: skip


def worker_main(stage: str, cfg: DaemonConfig, spec: PoolSpec, eps: Endpoints, part: int,
                run_dir: str, log_level: int) -> None:  # fmt: skip
    """Process entry point of one stage (``multiprocessing`` target)."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s {stage}[%(process)d] %(message)s")
    install_log_escaping()  # sender data (series ids) cannot forge a log line
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a worker is stuck
    ctx = zmq.Context()
    pool = SlotPool.attach(spec)
    ctl = socket(ctx, zmq.PUSH, connect=eps.ctl, linger_ms=2000)
    runner = STAGE_CLASSES[stage](cfg, pool, eps, ctx, ctl, part, run_dir)

    def on_term(_sig: int, _frame: Any) -> None:
        runner.terminate = True

    signal.signal(signal.SIGTERM, on_term)
    watch_parent(name=stage)  # the supervisor killed: leave as on its SIGTERM (hygiene.py)
    phase = "setup"
    code = 0
    try:
        runner.setup()
        runner._cpu = time.process_time()  # start-up (model compile, kernel warm-up) not counted
        phase = "run"
        runner.ctl_send("ready")
        runner.loop()
    except BaseException as e:
        code = 1
        send_json(ctl, {
            "t": "error", "stage": stage, "pid": os.getpid(), "phase": phase,
            "type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc(),
        }, block=True)  # fmt: skip
    finally:
        try:
            runner.close()
        except Exception:
            logger.exception("%s: close failed", stage)
            code = code or 1
        ctl.close()
        ctx.term()
        pool.close()
    os._exit(code)  # skip interpreter teardown: the supervisor owns the shared memory
