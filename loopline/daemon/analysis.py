"""The measure/track step of the daemon, kept thin: detections in; rows, instances, pairs out.

:class:`Analyzer` wraps ``loopline.pipelines`` (``measure_frame``, ``OnlineTracker`` and the
:class:`~loopline.pipelines.series.SeriesAccumulator` that ``loopline analyze`` writes its
run folder with). What leaves here is plain JSON-able data:

- ``row``: this frame's ``series.csv`` row (see :mod:`loopline.io.runfolder`);
- ``tables``: its ``tracks.csv``, ``pairs.csv``, ``track_summary.csv`` and ``alarms.csv``
  rows (the last: the frame rules' raise/clear events), which the recorder writes as they
  are, so that ``serve`` and ``analyze`` write the same tables;
- ``instances``: one dict per instance (``id``, ``cls``, ``score``, ``centroid`` [x, y] px,
  ``length_px``, ``length_nm``, ``contour`` [[x, y], ...] px, ``skeleton`` [[x, y], ...] px;
  dislocations also ``pileup``, ``rank``, their pile-up's unit ``glide_dir`` [x, y], and the
  drift-corrected ``position_nm`` along it with the glide velocity ``velocity_nm_s`` and
  ``velocity_px_per_frame``: the ``tracks.csv`` values; loops also ``minor_px``,
  ``angle_deg`` and ``from_box``: True where the loop had no mask and is the ellipse of its
  box) for the overlay and the published message. Dislocations without a mask are counted in
  the row (``n_dislocations``, ``instances_without_mask``) but have no geometry, so no
  instance;
- ``pairs``: neighbouring dislocations of a pile-up (track ids ``a``, ``b``, ``spacing_px``,
  ``spacing_nm``, ``pileup``, ``rank``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import cv2
import numpy as np

from ..calibration import CalibrationError, frame_time_s
from ..engines.base import Detections
from ..io.runfolder import json_safe
from ..pipelines import OnlineTracker, SeriesAccumulator, measure_frame
from ..pipelines.alarms import AlarmConfig
from ..pipelines.measure import BoxOnly

logger = logging.getLogger(__name__)

__all__ = ["Analyzer", "contour_of"]

_MAX_CONTOUR_POINTS = 200
_NO_KINEMATICS = {"position_nm": None, "velocity_nm_s": None, "velocity_px_per_frame": None,
                  "velocity_nm_s_se": None}


def contour_of(mask: np.ndarray) -> list[list[float]]:
    """Outer contour of the largest blob of a (H, W) bool mask, simplified, [[x, y], ...] px."""
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not cs:
        return []
    c = max(cs, key=cv2.contourArea)
    c = cv2.approxPolyDP(c, 1.0, True).reshape(-1, 2)
    if len(c) > _MAX_CONTOUR_POINTS:
        c = c[:: math.ceil(len(c) / _MAX_CONTOUR_POINTS)]
    return c.astype(float).tolist()


def _finite(v: Any, nd: int = 3) -> float | None:
    v = float(v)
    return round(v, nd) if math.isfinite(v) else None


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
        The frame rules (:mod:`loopline.pipelines.alarms`); their events are the ``alarms``
        rows of ``tables``. None: no alarms.
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
    ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float], list[dict[str, Any]],
               dict[str, list[dict[str, Any]]]]:  # fmt: skip
        """One frame of the current series: (row, instances, timings_ms, pairs, tables).

        ``box_only``: the frame's instances whose masks were not kept (see
        :func:`~loopline.pipelines.measure.measure_frame`). See the module docstring;
        :meth:`new_series` must have been called first.
        """
        if self._tracker is None or self._series is None:
            raise RuntimeError("Analyzer.process: call new_series() first")
        t0 = time.perf_counter()
        res = measure_frame(det, index=index, time_s=time_s, calibration=self._calibration,
                            box_only=box_only)  # fmt: skip
        res = self._tracker.update(res, image)
        t1 = time.perf_counter()
        rows = self._series.add(res, timings_ms={"measure_track": (t1 - t0) * 1e3}).to_json()
        kin = {r["track_id"]: r for r in rows["tracks"] if r["kind"] == "line"
               and r["track_id"] >= 0}  # fmt: skip
        nm = res.nm_per_px
        line_masks = [i for i in range(len(det)) if int(det.classes[i]) == 0]
        instances: list[dict[str, Any]] = []
        cents = res.line_centroid_px
        h, w = det.shape
        for i in range(res.n_lines):
            pts = res.line_points_px[i]
            # the detection this line was measured from: the class-0 mask its points lie on
            contour: list[list[float]] = []
            if line_masks:
                xs = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
                ys = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
                hits = [int(det.masks[j][ys, xs].sum()) for j in line_masks]
                j = line_masks[int(np.argmax(hits))]
                if max(hits) > 0:
                    contour = contour_of(det.masks[j])
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            glide = None
            if res.n_pileups:
                gx, gy = res.pileup_glide_dir[res.line_pileup[i]]
                glide = [_finite(gx, 4), _finite(gy, 4)]
            k = kin.get(int(res.line_track_id[i]))
            instances.append({
                "id": int(res.line_track_id[i]), "cls": 0, "class": "dislocation",
                "score": _finite(res.line_score[i]),
                "centroid": [_finite(cents[i, 0], 2), _finite(cents[i, 1], 2)],
                "box": [_finite(x0, 1), _finite(y0, 1), _finite(x1, 1), _finite(y1, 1)],
                "length_px": _finite(res.line_length_px[i]),
                "length_nm": _finite(res.line_length_px[i] * nm),
                "width_px": _finite(res.line_width_px[i]),
                "pileup": int(res.pileup_id[res.line_pileup[i]]) if res.n_pileups else -1,
                "rank": int(res.line_rank[i]), "glide_dir": glide,
                **(_NO_KINEMATICS if k is None else {
                    "position_nm": _rounded(k["position_nm"]),
                    "velocity_nm_s": _rounded(k["velocity_nm_per_s"]),
                    "velocity_px_per_frame": _rounded(k["velocity_px_per_frame"], 4),
                    "velocity_nm_s_se": _rounded(k.get("velocity_nm_per_s_se"))}),
                "length_nm_se": _rounded(k.get("length_nm_se")) if k else None,
                "contour": contour, "skeleton": np.round(pts, 2).tolist(),
            })  # fmt: skip
        for i in range(res.n_loops):
            cx, cy = res.loop_center_px[i]
            a, b = res.loop_major_px[i] / 2, res.loop_minor_px[i] / 2
            poly = cv2.ellipse2Poly((round(cx), round(cy)), (max(round(a), 1), max(round(b), 1)),
                                    round(float(res.loop_angle_deg[i])), 0, 360, 15)  # fmt: skip
            instances.append({
                "id": int(res.loop_track_id[i]), "cls": 1, "class": "loop",
                "score": _finite(res.loop_score[i]), "centroid": [_finite(cx, 2), _finite(cy, 2)],
                "box": [_finite(cx - a, 1), _finite(cy - a, 1), _finite(cx + a, 1),
                        _finite(cy + a, 1)],
                "length_px": _finite(res.loop_major_px[i]),
                "length_nm": _finite(res.loop_major_px[i] * nm),
                "minor_px": _finite(res.loop_minor_px[i]),
                "angle_deg": _finite(res.loop_angle_deg[i]),
                "from_box": bool(res.loop_from_box[i]),
                "length_nm_se": _finite(res.loop_major_se_px[i] * nm),
                "contour": poly.astype(float).tolist(), "skeleton": [],
            })  # fmt: skip
        pairs = []
        for q in range(len(res.pair_spacing_px)):
            la, lb = res.pair_lines[q]
            pairs.append({
                "a": int(res.line_track_id[la]), "b": int(res.line_track_id[lb]),
                "pileup": int(res.pileup_id[res.pair_pileup[q]]), "rank": int(res.pair_rank[q]),
                "spacing_px": _finite(res.pair_spacing_px[q]),
                "spacing_nm": _finite(res.pair_spacing_px[q] * nm),
                "spacing_nm_se": _rounded(rows["pairs"][q].get("spacing_nm_se")),
            })  # fmt: skip
        timings = {k: float(v) for k, v in res.timings_ms.items()}
        timings["measure_track"] = (t1 - t0) * 1e3
        tables = {k: rows[k] for k in ("tracks", "pairs", "track_summary", "alarms")}
        return rows["series"], instances, timings, pairs, tables


def _rounded(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else _finite(v, nd)
