"""Metrics: frames/s per stage, queue depths, latency percentiles and drop counters.

Every worker writes its counters and gauges into the shared :class:`~loopline.daemon.shm.Stats`
block (one writer per cell); this module turns them into

- a snapshot dict (:class:`MetricsView`), published on the viewer stream as the
  ``metrics`` message (see :mod:`loopline.daemon.publisher`) and written into summary.json;
- a Prometheus endpoint (:func:`start_prometheus`, prometheus-client), served by the
  supervisor: ``loopline_frames_total{counter=...}``, ``loopline_stage_fps{stage=...}``,
  ``loopline_queue_depth{queue=...}``, ``loopline_stage_cpu_seconds{stage=...}``,
  ``loopline_latency_ms{quantile=...}``,
  ``loopline_alarm_active{rule=...}`` (1 while raised), ``loopline_alarms_raised_total{rule=...}``
  and more (alert rules: ``docs/alarms.md``).

Latency is measured from the camera's timestamp to the moment the result is published
(``latency_ms``); when the camera clock is off by more than a day the receive time is used
instead. ``ingest_latency_ms`` is receive → published (the daemon's own share).
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from typing import Any

import numpy as np

from ..io.runfolder import ALARM_RULES
from .shm import STAGES, Stats

__all__ = ["COUNTERS", "LatencyWindow", "MetricsView", "start_prometheus"]

#: The counters of summary.json and of the metrics message, in that order.
COUNTERS: tuple[str, ...] = (
    "received", "analysed", "skipped", "malformed", "recorded",
    "skipped_backpressure", "skipped_lost", "dropped_no_slot", "dropped_source",
    "rejected_oversize", "published", "published_jpeg", "slots_reclaimed", "late_results",
    "series_started", "series_ended", "series_aborted", "restarts", "batches",
    # series whose start message was missed (the sender started first), started from their
    # first frame's header (sources.base.SeriesTracker)
    "series_resynced",
    # loopline.daemon.validate: frames that decode but make no sense, each counted once
    "rejected_undersize", "rejected_timestamp", "rejected_pixel_size", "rejected_index",
    "rejected_pixels", "rejected_interleaved", "skipped_duplicate", "segments_restarted",
    "ignored_pixel_size",
    # an exception on one frame costs that frame (or, output_errors, its overlay), not the
    # worker (receiver_errors also counts the frame a killed receiver held, if never
    # recorded); source_disconnects: connections to the sender closed (a message over the
    # size limit, or the sender went away)
    "receiver_errors", "analysis_errors", "record_errors", "output_errors",
    "source_disconnects",
    # CURVE handshakes with the sender that failed (no CURVE, another key, not allowed)
    "source_handshake_failures",
    # instances, not frames: those beyond a frame's mask budget (pool.max_instances), counted
    # and measured from their boxes (loops) or counted untraced (dislocations)
    "instances_without_mask",
    # model swaps (loopline model use, engine.watch) done and refused; control requests that
    # were not one (loopline.daemon.control)
    "model_swaps", "models_refused", "control_errors",
    # analysed frames that came back from their engine after later frames were tracked:
    # measured, not tracked (frames.csv fate analysed_untracked; stages.measure.MeasureWorker)
    "late_after_successor",
    # the run folder's disk full or failing (ENOSPC, EDQUOT, EIO, EROFS): frames not recorded,
    # and analysed frames whose table rows were not written, while recording was stopped
    # (recorder.Recorder; the recording_stopped alarm)
    "not_recorded_disk", "results_not_recorded_disk",
    # frames recorded before their analysis came back (output.record_wait_s, or the slots
    # crowded): frames.csv fate late, the video frame marked; analysed if it came within
    # output.result_timeout_s (their rows are in the tables), else also skipped_lost
    "recorded_late",
)  # fmt: skip

QUEUES = ("queue_batcher", "queue_engine", "queue_output", "slots_in_use")


class LatencyWindow:
    """Latencies (ms): percentiles over the last ``window`` samples and over the whole run."""

    def __init__(self, window: int = 2048) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.all = array("f")  # 4 bytes a frame: 8 h at 30 fps is 3.5 MB

    def add(self, ms: float) -> None:
        self.recent.append(ms)
        self.all.append(ms)

    def percentiles(self, *, whole_run: bool = False) -> dict[str, float]:
        data = np.frombuffer(self.all, np.float32) if whole_run else np.asarray(self.recent)
        if len(data) == 0:
            return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"),
                    "mean": float("nan"), "count": 0}  # fmt: skip
        p50, p99 = np.percentile(data, (50, 99))
        return {"p50": round(float(p50), 2), "p99": round(float(p99), 2),
                "max": round(float(data.max()), 2), "mean": round(float(data.mean()), 2),
                "count": len(data)}  # fmt: skip


class MetricsView:
    """Rates and a snapshot from the shared stats (call :meth:`update` once per interval)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._prev = stats.snapshot()
        self._t = time.monotonic()
        self._t0 = self._t
        self._first = dict(self._prev)
        self.last: dict[str, Any] = {}

    def counters(self) -> dict[str, int]:
        s = self.stats
        return {k: int(s[k]) for k in COUNTERS[:5]}

    def update(self) -> dict[str, Any]:
        now = time.monotonic()
        snap = self.stats.snapshot()
        dt = max(now - self._t, 1e-6)
        fps = {st: round((snap[f"frames_{st}"] - self._prev[f"frames_{st}"]) / dt, 2)
               for st in STAGES}  # fmt: skip
        busy = {st: round(min((snap[f"busy_s_{st}"] - self._prev[f"busy_s_{st}"]) / dt, 1.0), 3)
                for st in STAGES}  # fmt: skip
        # cores each stage used (its processes' CPU seconds per second; 2.0 = two cores)
        cpu = {st: round((snap[f"cpu_s_{st}"] - self._prev[f"cpu_s_{st}"]) / dt, 3)
               for st in STAGES}  # fmt: skip
        elapsed = max(now - self._t0, 1e-6)
        self.last = {
            "schema": "loopline.metrics/1",
            "time": time.time(),
            "uptime_s": round(elapsed, 3),
            "counters": {k: int(snap[k]) for k in COUNTERS},
            "fps": fps,
            "fps_mean": {
                "received": round((snap["received"] - self._first["received"]) / elapsed, 2),
                "analysed": round((snap["analysed"] - self._first["analysed"]) / elapsed, 2),
            },
            "busy": busy,
            "cpu": cpu,
            "queues": {k: int(snap[k]) for k in QUEUES},
            "latency_ms": {"p50": snap["latency_p50_ms"], "p99": snap["latency_p99_ms"],
                           "max": snap["latency_max_ms"]},
            "ingest_latency_ms": {"p50": snap["ingest_latency_p50_ms"],
                                  "p99": snap["ingest_latency_p99_ms"]},
            "stage_ms_per_frame": {"engine": round(snap["engine_ms_per_frame"], 3),
                                   "measure": round(snap["measure_ms_per_frame"], 3),
                                   "record": round(snap["record_ms_per_frame"], 3)},
        }  # fmt: skip
        self._prev = snap
        self._t = now
        return self.last


class _Collector:
    """prometheus-client collector reading the shared stats at scrape time."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.view = MetricsView(stats)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.stats.snapshot()
        frames = CounterMetricFamily("loopline_frames", "Frame counters of the daemon",
                                     labels=["counter"])  # fmt: skip
        for k in COUNTERS:
            frames.add_metric([k], snap[k])
        yield frames
        stage_frames = CounterMetricFamily("loopline_stage_frames", "Frames through each stage",
                                           labels=["stage"])  # fmt: skip
        busy = CounterMetricFamily("loopline_stage_busy_seconds", "Busy time of each stage",
                                   labels=["stage"])  # fmt: skip
        cpu = CounterMetricFamily("loopline_stage_cpu_seconds", "CPU time of each stage's "
                                  "processes (all threads)", labels=["stage"])  # fmt: skip
        for st in STAGES:
            stage_frames.add_metric([st], snap[f"frames_{st}"])
            busy.add_metric([st], snap[f"busy_s_{st}"])
            cpu.add_metric([st], snap[f"cpu_s_{st}"])
        yield stage_frames
        yield busy
        yield cpu
        fps = GaugeMetricFamily("loopline_stage_fps", "Frames/s of each stage since the last "
                                "scrape", labels=["stage"])  # fmt: skip
        for st, v in self.view.update()["fps"].items():
            fps.add_metric([st], v)
        yield fps
        q = GaugeMetricFamily("loopline_queue_depth", "Queue depths and slots in use",
                              labels=["queue"])  # fmt: skip
        for k in QUEUES:
            q.add_metric([k], snap[k])
        yield q
        lat = GaugeMetricFamily("loopline_latency_ms", "Camera timestamp to published, ms "
                                "(recent window)", labels=["quantile"])  # fmt: skip
        lat.add_metric(["0.5"], snap["latency_p50_ms"])
        lat.add_metric(["0.99"], snap["latency_p99_ms"])
        yield lat
        active = GaugeMetricFamily("loopline_alarm_active", "1 while the alarm rule is raised "
                                   "(loopline.analysis.alarms)", labels=["rule"])  # fmt: skip
        raised = CounterMetricFamily("loopline_alarms_raised", "Times each alarm rule was "
                                     "raised", labels=["rule"])  # fmt: skip
        for r in ALARM_RULES:
            active.add_metric([r], snap[f"alarm_active_{r}"])
            raised.add_metric([r], snap[f"alarms_raised_{r}"])
        yield active
        yield raised


def start_prometheus(stats: Stats, *, port: int, host: str = "127.0.0.1"):
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the server."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(_Collector(stats))  # type: ignore[arg-type]
    return start_http_server(port, addr=host, registry=registry)
