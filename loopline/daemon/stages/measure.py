"""The measure worker: detections back in analysis order (:class:`Reorder`) → measurements
and track ids → the output worker (:mod:`loopline.daemon.stages`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import zmq

from ..shm import ANALYSIS
from ..wire import send_json
from .base import _POLL_MS, UNTRACKED, Stage, _log_frame_error, alarm_config

logger = logging.getLogger(__name__)

__all__ = ["MeasureWorker", "Reorder", "detections_of"]


def detections_of(msg: dict[str, Any], masks: np.ndarray):
    """A ``det`` message and its ``n`` masks → (Detections, BoxOnly or None).

    The message lists every instance's box, score and class, the ``n`` with masks first (the
    mask budget, package docstring); the rest become a
    :class:`~loopline.analysis.measure.BoxOnly`.

    Raises
    ------
    ValueError
        When the lists' lengths disagree with each other or with the masks.
    """
    from ...analysis.measure import BoxOnly
    from ...engines.base import Detections

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


#: what only a tracker knows about an instance: unknown (None) for an untracked frame


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


class MeasureWorker(Stage):
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
        from ..analyzer import Analyzer

        c = self.cfg.calibration
        self.analyzer = Analyzer(nm_per_px=c.nm_per_px, calibration_profile=c.profile,
                                 fps=self._fps(), alarms=alarm_config(self.cfg),
                                 override=c.override)  # fmt: skip
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

    def _fps(self) -> float:
        """calibration.fps as the time axis; with times from file names (the file source's
        frame times) it only turned their numbers into times there."""
        return 0.0 if self.cfg.source.times_from_names else self.cfg.calibration.fps

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
                t, body = self._measure_untracked(h, det, box_only)
            else:
                t, body = self._measure(h, det, box_only, image)
            row = body["row"]
            self._without_mask(h, row, len(det))
            keys = ("series", "index", "seq", "ts", "recv", "shape")
            out = {k: h[k] for k in keys}
            out["time_s"] = t
            # the camera's pixel size, else the calibration's (profile or calibration.nm_per_px);
            # the calibration's where the user made it win (calibration.override)
            out["px_nm"] = ((row.get("nm_per_px") if self.cfg.calibration.override else None)
                            or h.get("px_nm") or row.get("nm_per_px"))  # fmt: skip
            # the frame message (analysis/message.py): its rows of the run folder's tables
            out.update(body, t="result", timings_ms={**h["timings_ms"], **body["timings_ms"]},
                       engine=h.get("engine"), model=h.get("model"),
                       model_path=h.get("model_path"))  # fmt: skip
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
        """One frame of the series being tracked: (time_s, frame message body)."""
        seg = (h["series"], h.get("segment"))
        if seg != self._segment:
            self._segment = seg
            self._send_analysis(self.analyzer.new_series(h["series"],
                                                         h.get("px_nm") or 0.0))  # fmt: skip
        # the calibration profile's time axis, else the header's (the file's own, the camera's)
        t = self.analyzer.time_of(h["index"], h["time_s"])
        return t, self.analyzer.process(det, index=h["index"], time_s=t, image=image,
                                        box_only=box_only)  # fmt: skip

    def _measure_untracked(self, h: dict[str, Any], det: Any, box_only: Any):
        """A late frame, measured by an analyzer of its own (the series' tracker has gone past
        it): as :meth:`_measure`, without tracks or track tables
        (:func:`~loopline.analysis.message.untracked`)."""
        from ...analysis.message import untracked
        from ..analyzer import Analyzer

        c = self.cfg.calibration
        one = Analyzer(nm_per_px=c.nm_per_px, calibration_profile=c.profile, fps=self._fps(),
                       override=c.override)
        one.new_series(h["series"], h.get("px_nm") or 0.0)
        t = one.time_of(h["index"], h["time_s"])
        body = untracked(one.process(det, index=h["index"], time_s=t, box_only=box_only))
        return t, {**body, "fate": UNTRACKED}

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
                self.drain(self.pull, lambda msg: self._take(msg, time.monotonic()))
            self._advance()
            self.beat()
            if self._drained(time.monotonic()):
                self._send_analysis(self.analyzer.finish())
                send_json(self.to_out, {"t": "eos_analysis"}, block=True)
                logger.info("measure: drained")
                self.idle()
                return
