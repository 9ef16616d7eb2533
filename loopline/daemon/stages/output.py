"""The output worker: the recorder (every frame to the run folder, in arrival order) and the
publisher (results, metrics and alarms to viewers) (:mod:`loopline.daemon.stages`)."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import OrderedDict
from typing import Any

import zmq

from ..config import DaemonConfig
from ..shm import RECORD
from .base import UNTRACKED, Stage, _log_frame_error, alarm_config

logger = logging.getLogger(__name__)

__all__ = ["OutputWorker", "source_label"]


def source_label(cfg: DaemonConfig) -> dict[str, str]:
    """Where the frames come from: ``{"protocol": ..., "endpoint": ...}`` (a path for files)."""
    s = cfg.source
    return {"protocol": s.protocol, "endpoint": s.path if s.protocol == "file" else s.endpoint}


class OutputWorker(Stage):
    """Publisher and recorder: every frame to the run folder in order, results to viewers."""

    name = "output"

    def setup(self) -> None:
        from ..metrics import LatencyWindow, MetricsView
        from ..publisher import Publisher
        from ..recorder import Recorder

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
        from ...analysis.alarms import DaemonAlarms

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
        for ev in [*(msg.get("alarms") or ()), *own]:
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
                # the run ends (what has not come back will not), or an unpaced file's
                # analysis made no progress for the timeout: lost
                if force or (self.waits and
                             now - max(e["_arr"], self.last_progress) >= self.timeout):  # fmt: skip
                    fate = e["fate"] = "lost"
                    self.stats.add("skipped")
                    self.stats.add("skipped_lost")
                    logger.warning("frame %s/%d: no analysis after %.1f s; recorded "
                                   "unannotated", e["series"], e["index"], now - e["_arr"])
                elif self.waits:
                    break
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

    def _on_guarded(self, msg: dict[str, Any]) -> None:
        try:
            self._on(msg)
        except Exception as e:  # costs this message (an overlay, a row)
            self.stats.add("output_errors")
            _log_frame_error(f"output ({msg.get('t')})", msg, e)

    def loop(self) -> None:
        while not self.terminate:
            if self.pull.poll(20):
                self.drain(self.pull, self._on_guarded, most=2000)
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
