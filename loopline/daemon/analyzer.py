"""The measure/track step of the daemon, kept thin: detections in, a frame message out.

:class:`Analyzer` wraps ``loopline.analysis`` (``measure_frame``, ``OnlineTracker`` and the
:class:`~loopline.analysis.series.SeriesAccumulator` that ``loopline analyze`` writes its
run folder with). What leaves here is the body of the frame message
(:mod:`loopline.analysis.message`): the frame's rows of the run folder's tables, which the
recorder writes as they are (so that ``serve`` and ``analyze`` write the same tables), its
``tracks`` rows carrying what a viewer draws. Dislocations without a mask are counted in the
row (``n_dislocations``, ``instances_without_mask``) but have no geometry, so no row.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..analysis import OnlineTracker, SeriesAccumulator, measure_frame
from ..analysis.alarms import AlarmConfig
from ..analysis.measure import BoxOnly
from ..analysis.message import frame_tables
from ..calibration import CalibrationError, frame_time_s
from ..engines.base import Detections
from ..io.runfolder import json_safe

logger = logging.getLogger(__name__)

__all__ = ["Analyzer"]


class Analyzer:
    """Measure and track one series at a time (``new_series`` ends one and starts the next).

    Parameters
    ----------
    nm_per_px : float
        Pixel size used when a frame brings none (0 = unknown, nm values are None).
    calibration_profile : str
        Path of a calibration file for ``loopline.calibration.load_calibration`` ("" = none).
    fps : float
        Frame rate where the profile gives no time axis (0 = the source's frame times).
    alarms : AlarmConfig, optional
        The frame rules (:mod:`loopline.analysis.alarms`); their events are the ``alarms``
        rows of each frame message. None: no alarms.
    """

    def __init__(self, *, nm_per_px: float = 0.0, calibration_profile: str = "",
                 fps: float = 0.0, alarms: AlarmConfig | None = None,
                 override: bool = False) -> None:  # fmt: skip
        self.nm_per_px = nm_per_px
        self.override = override  # nm_per_px and fps win over the profile and the headers
        self.alarms = alarms
        self.fps = fps
        self.profile = calibration_profile
        self._calibration: Any = None
        self._tracker: OnlineTracker | None = None
        self._series: SeriesAccumulator | None = None
        self._warned_time = False
        self.series: str | None = None

    def _calib(self, px_nm: float):
        from ..calibration import Calibration, load_calibration

        cal = load_calibration(self.profile) if self.profile else Calibration()
        if self.override and self.nm_per_px:  # given by the user: it wins (analyze's rule)
            cal = cal.replace(nm_per_px=self.nm_per_px)
        px = px_nm or self.nm_per_px or None
        if px and cal.nm_per_px is None:
            cal = cal.replace(nm_per_px=px)
        if self.override and self.fps:
            cal = cal.replace(fps=self.fps, frame_times_s=None)
        if self.fps and cal.fps is None and cal.frame_times_s is None:
            cal = cal.replace(fps=self.fps)
        return cal

    def new_series(self, series: str, px_nm: float = 0.0) -> dict[str, Any] | None:
        """Start ``series``; the series that ends with it, as :meth:`finish` gives it."""
        ended = self.finish()
        self.series = series
        self._calibration = self._calib(px_nm)
        self._tracker = OnlineTracker(self._calibration)
        self._series = SeriesAccumulator(self._calibration, series=series, alarms=self.alarms)
        return ended

    def finish(self) -> dict[str, Any] | None:
        """End the current series: ``{"series", "summary", "track_summary"}`` (JSON-safe:
        its analysis summary and the summary rows of its open tracks), None without one."""
        acc, self._series = self._series, None
        if acc is None or self.series is None or acc.frames == 0:
            return None
        rows = acc.finish()
        return json_safe({"series": self.series, "summary": acc.summary(),
                          "track_summary": rows})  # fmt: skip

    def warmup(self, shape: tuple[int, int] = (128, 128)) -> None:
        """One synthetic frame through measure and track (compiles Numba kernels now)."""
        h, w = shape
        m = np.zeros((2, h, w), bool)
        m[0, h // 2 - 2 : h // 2 + 2, 10 : w - 10] = True
        m[1, 10:30, 10:30] = True
        det = Detections(m, np.array([[10, h / 2 - 2, w - 10, h / 2 + 2], [10, 10, 30, 30]],
                                     np.float32), np.array([0.9, 0.9], np.float32),
                         np.array([0, 1]))  # fmt: skip
        img = np.full(shape, 128, np.uint8)
        self.new_series("warmup", 1.0)
        for i in range(2):
            self.process(det, index=i, time_s=0.04 * i, image=img)
        self.series = None
        self._series = None

    def time_of(self, index: int, source_time_s: float | None) -> float:
        """Frame time (s) as ``loopline analyze`` takes it: the calibration profile's axis,
        else the source's (a file's own axis, the camera clock), else the index."""
        try:
            t = frame_time_s(self._calibration, index, source_time_s)
        except CalibrationError as e:
            if not self._warned_time:
                logger.error("%s; using the source's frame times", e)
                self._warned_time = True
            t = source_time_s
        return float(index if t is None else t)

    def process(
        self, det: Detections, *, index: int, time_s: float, image: np.ndarray | None = None,
        box_only: BoxOnly | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """One frame of the current series: the body of its frame message
        (:mod:`loopline.analysis.message`): ``row``, ``tracks`` (with what a viewer draws),
        ``pairs``, ``track_summary``, ``alarms`` and ``timings_ms``.

        ``box_only``: the frame's instances whose masks were not kept (see
        :func:`~loopline.analysis.measure.measure_frame`). :meth:`new_series` must have been
        called first.
        """
        if self._tracker is None or self._series is None:
            raise RuntimeError("Analyzer.process: call new_series() first")
        t0 = time.perf_counter()
        res = measure_frame(det, index=index, time_s=time_s, calibration=self._calibration,
                            box_only=box_only)  # fmt: skip
        res = self._tracker.update(res, image)
        t1 = time.perf_counter()
        rows = self._series.add(res, timings_ms={"measure_track": (t1 - t0) * 1e3}).to_json()
        timings = {k: float(v) for k, v in res.timings_ms.items()}
        timings["measure_track"] = (t1 - t0) * 1e3
        return {"row": rows["series"],
                "tracks": frame_tables(res, rows["tracks"], det.masks, det.classes),
                "pairs": rows["pairs"], "track_summary": rows["track_summary"],
                "alarms": rows["alarms"], "timings_ms": timings}  # fmt: skip
