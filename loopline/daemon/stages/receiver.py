"""The receiver: frames from the configured source into shared-memory slots, their headers
to the batcher and the recorder (:mod:`loopline.daemon.stages`)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..config import DaemonConfig
from ..shm import ANALYSIS, RECORD, PoolSpec, PoolTooSmall, largest_frame_px
from ..validate import (
    PIXEL_SIZE_RANGE_NM,
    FrameValidator,
    Verdict,
    max_message_bytes,
    plausible_pixel_size,
)
from ..wire import send_json
from .base import Stage

logger = logging.getLogger(__name__)

__all__ = ["Receiver", "max_frame_px", "open_source"]

#: how long a restarted receiver waits for the recorder to show whether it got the header of
#: the frame its predecessor was killed on (s)
_RECONCILE_WAIT_S = 5.0
#: series whose clock a restarted receiver keeps (the most recent ones)
_STATE_SERIES = 64
#: daemon counter <- the source's counter of the same events (the source's restart from 0)
_SOURCE_COUNTERS = {"malformed": "malformed", "dropped_source": "dropped",
                    "rejected_interleaved": "interleaved", "source_disconnects": "disconnects",
                    "source_handshake_failures": "handshake_failures",
                    "series_resynced": "resynced"}


def open_source(cfg: DaemonConfig):
    """The configured frame source (:func:`loopline.daemon.ingest.open_source`), listening."""
    from ..ingest import open_source as _open

    s = cfg.source
    if s.protocol == "file":  # unpaced unless told to pace like a camera (s.rate 0: own rate)
        names = {"": None, "number": ""}.get(s.times_from_names, s.times_from_names)
        return _open(s.path, "file", fps=(s.rate or None) if s.pace else math.inf,
                     times_from_names=names, names_fps=cfg.calibration.fps or None)  # fmt: skip
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


class Receiver(Stage):
    """Source → slots. Never waits for a camera's analysis; see the package docstring."""

    name = "receiver"

    def setup(self) -> None:
        from ..ingest.base import Frame, SeriesEnd, SeriesStart

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
        # an unpaced file waits for its analysis (package docstring)
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
