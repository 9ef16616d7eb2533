"""Rows of the run folder's tables from tracked frames, and the writer ``loopline analyze`` uses.

:class:`SeriesAccumulator` takes the tracked :class:`FrameResult` objects of one series one by
one and turns each into :class:`FrameRows`: one row for ``series.csv``, one per line and loop
for ``tracks.csv``, one per neighbour pair for ``pairs.csv``, and one for
``track_summary.csv`` per track that ended (the tables and their columns are defined once, in
:mod:`loopline.io.runfolder`). It adds what needs history: a line's position along its
pile-up's glide direction (drift-corrected; accumulated from frame-to-frame displacements
measured along the glide direction between the two lines, see
:func:`~loopline.analysis.lines.glide_displacement`, so that a line entering or leaving the
field of view does not seem to move) and its velocity, a loop's growth rate. Velocities and
growth rates are causal: the slope of a least-squares line through the object's last
``window`` samples, so they can be published as the frame arrives (a constant velocity is
recovered exactly; noise is averaged over the window).

Per track it keeps running sums, not the history (the daemon runs for hours): the velocity
fitted over the whole track, the centroid's velocity, and the effective diffusion coefficient
D_eff = <|r(t+tau) - r(t)|^2> / (4 tau) at a lag of one sample (Shen et al. 2021), all from
drift-corrected positions. A track unseen for ``forget_after`` frames has ended: its
``track_summary`` row is emitted with that frame's rows; :meth:`SeriesAccumulator.finish` ends
the rest at the end of the series.

``loopline analyze`` writes the rows with :class:`SeriesWriter`; the daemon's measure worker
(:mod:`loopline.daemon.analyzer`) sends the same rows to its recorder, which writes them with
the same :class:`~loopline.io.runfolder.RunTables`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..calibration import Calibration
from ..io.runfolder import (
    PAIR_COLUMNS,
    SERIES_COLUMNS,
    STAGES,
    TRACK_COLUMNS,
    TRACK_SUMMARY_COLUMNS,
    RunTables,
    json_safe,
    points_cell,
    write_summary,
)
from .alarms import AlarmConfig, AlarmEvaluator
from .container import FrameResult
from .lines import glide_displacement
from .uncertainty import (
    combine_se,
    line_length_se_px,
    poisson_interval,
    residual_sd,
    slope_se,
    t68,
)

__all__ = [
    "PAIR_COLUMNS",
    "SERIES_COLUMNS",
    "STAGES",
    "TRACK_COLUMNS",
    "TRACK_SUMMARY_COLUMNS",
    "FrameRows",
    "SeriesAccumulator",
    "SeriesWriter",
]

_P95_FRAMES = 1000  # the p95 of a stage's time is taken over this many recent frames
_DEFAULT_ALARMS = AlarmConfig()


def thin_polyline(points: np.ndarray, tol_px: float = 0.25) -> np.ndarray:
    """The points of an ordered (K, 2) polyline that keep it within ``tol_px`` of the whole
    (Douglas-Peucker, ends kept): what ``tracks.csv``'s ``points_px`` stores of a line."""
    p = np.asarray(points, np.float32).reshape(-1, 1, 2)
    if len(p) <= 2:
        return p.reshape(-1, 2).astype(float)
    return cv2.approxPolyDP(p, tol_px, False).reshape(-1, 2).astype(float)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope dy/dx; NaN for fewer than 2 distinct x."""
    if x.size < 2:
        return math.nan
    xm = x - x.mean()
    den = float(xm @ xm)
    return float(xm @ (y - y.mean()) / den) if den > 0 else math.nan


class _Fit:
    """Running least-squares slopes of several y against one x (Welford's co-moments)."""

    __slots__ = ("c", "mx", "my", "n", "sxx", "syy")

    def __init__(self, k: int) -> None:
        self.n = 0
        self.mx = self.sxx = 0.0
        self.my = [0.0] * k
        self.c = [0.0] * k
        self.syy = [0.0] * k

    def add(self, x: float, ys: tuple[float, ...]) -> None:
        self.n += 1
        dx = x - self.mx
        self.mx += dx / self.n
        self.sxx += dx * (x - self.mx)
        for j, y in enumerate(ys):
            dy = y - self.my[j]
            self.my[j] += dy / self.n
            self.c[j] += dx * (y - self.my[j])
            self.syy[j] += dy * (y - self.my[j])

    def slope(self, j: int) -> float:
        return self.c[j] / self.sxx if self.n >= 2 and self.sxx > 0 else math.nan

    def slope_se(self, j: int) -> float:
        """Standard error of :meth:`slope` for independent residuals (n - 2 degrees of
        freedom); NaN for fewer than 3 samples."""
        if self.n < 3 or not self.sxx > 0:
            return math.nan
        rss = max(self.syy[j] - self.c[j] ** 2 / self.sxx, 0.0)
        return math.sqrt(rss / (self.n - 2) / self.sxx)

    def mean(self, j: int) -> float:
        return self.my[j] if self.n else math.nan


class _Track:
    """What one track needs: its last sample, recent samples, running sums."""

    __slots__ = ("ffit", "first", "first_size", "last", "last_pts", "last_size", "last_xy",
                 "meta", "pos", "recent", "step_dt", "step_sq", "steps", "tfit",
                 "wins")  # fmt: skip

    def __init__(self, window: int) -> None:
        self.first: tuple[int, float] | None = None  # (frame, time)
        self.last: tuple[int, float] | None = None
        self.first_size = self.last_size = math.nan
        self.last_xy: tuple[float, float] | None = None  # drift-corrected, px
        self.last_pts: np.ndarray | None = None
        self.pos = 0.0  # position along the glide direction, px (lines)
        self.meta: dict[str, Any] = {}
        self.recent: deque = deque(maxlen=window)
        self.steps = 0
        self.step_sq = self.step_dt = 0.0
        self.tfit = _Fit(4)  # against time: x, y (px), position (px), size (px)
        self.ffit = _Fit(1)  # against frame index: position (px)
        self.wins = [0, 0.0, 0.0]  # full windows' slopes (px/s or px/s): n, sum, sum of squares

    def between_sd(self, slope: float, j: int, full: bool) -> float:
        """Add a full window's ``slope``; the rms deviation of the windows' slopes so far from
        the whole track's slope of y ``j`` against time (NaN before 4 windows)."""
        w = self.wins
        if full and math.isfinite(slope):
            w[0] += 1
            w[1] += slope
            w[2] += slope * slope
        if w[0] < 4:
            return math.nan
        b = self.tfit.slope(j)
        return math.sqrt(max(w[2] / w[0] - 2 * b * w[1] / w[0] + b * b, 0.0))

    def add(self, frame: int, t: float, xy: tuple[float, float], pos: float, size: float) -> None:
        if self.last_xy is not None and self.last is not None:
            self.steps += 1
            self.step_sq += (xy[0] - self.last_xy[0]) ** 2 + (xy[1] - self.last_xy[1]) ** 2
            self.step_dt += t - self.last[1]
        if self.first is None:
            self.first = (frame, t)
            self.first_size = size
        self.last = (frame, t)
        self.last_size = size
        self.last_xy = xy
        self.pos = pos
        self.tfit.add(t, (xy[0], xy[1], pos, size))
        self.ffit.add(float(frame), (pos,))


@dataclass(frozen=True)
class FrameRows:
    """One frame's rows of the run folder's tables (dicts keyed by the tables' columns)."""

    series: dict[str, Any]
    tracks: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    track_summary: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe (NaN → None): what the daemon's measure worker sends to its recorder."""
        return json_safe({"series": self.series, "tracks": self.tracks, "pairs": self.pairs,
                          "track_summary": self.track_summary,
                          "alarms": self.alarms})  # fmt: skip


class _Stat:
    """Running mean and max of a stage time, p95 over the last frames."""

    __slots__ = ("max", "n", "recent", "sum")

    def __init__(self) -> None:
        self.n, self.sum, self.max = 0, 0.0, -math.inf
        self.recent: deque[float] = deque(maxlen=_P95_FRAMES)

    def add(self, v: float) -> None:
        if not math.isfinite(v):
            return
        self.n += 1
        self.sum += v
        self.max = max(self.max, v)
        self.recent.append(v)

    def to_dict(self) -> dict[str, float]:
        if not self.n:
            return {"mean": math.nan, "p95": math.nan, "max": math.nan}
        return {"mean": self.sum / self.n, "p95": float(np.percentile(self.recent, 95)),
                "max": self.max}  # fmt: skip


class SeriesAccumulator:
    """Table rows and per-track state from the tracked frame results of one series.

    Memory is bounded: a track unseen for more than ``forget_after`` frames has ended and is
    dropped (its summary row is emitted then).

    Parameters
    ----------
    calibration : Calibration
        Supplies nm/px (NaN-safe) for the nm columns of the track summaries.
    series : str
        Series id: the ``series`` column of every row.
    window : int
        Samples in the causal velocity / growth fit (>= 2).
    forget_after : int
        A track unseen for more than this many frames has ended.
    alarms : AlarmConfig, optional
        The rules evaluated on every frame's rows (:mod:`loopline.analysis.alarms`); their
        raise/clear events are the frame's ``alarms`` rows (``alarms.csv``). Default: the
        default rules; None: none.
    """

    def __init__(self, calibration: Calibration, *, series: str = "series", window: int = 7,
                 forget_after: int = 300,
                 alarms: AlarmConfig | None = _DEFAULT_ALARMS) -> None:  # fmt: skip
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        if forget_after < 1:
            raise ValueError(f"forget_after must be >= 1, got {forget_after}")
        self.calibration = calibration
        self.series = str(series)
        self.window = int(window)
        self.forget_after = int(forget_after)
        self.lines: dict[int, _Track] = {}
        self.loops: dict[int, _Track] = {}
        self.frames = 0
        self.first_time: float | None = None
        self.last: tuple[int, float] | None = None
        self.n_tracks = {"line": 0, "loop": 0}
        self.timings: dict[str, _Stat] = {}
        self.counts = {"line_count": [0.0, 0], "loop_count": [0.0, 0]}  # sum, n
        self.pileup_spacing: dict[int, list[float]] = {}  # id -> [sum nm, n]
        self._ended_speed = [0.0, 0]  # sum of |velocity| of ended line tracks (>= 3 frames), n
        self.without_mask = 0  # instances measured without a mask (loops from boxes, untraced)
        # (track id, partner id) -> (last frame, recent (time, spacing px), fit over all):
        # a pair's scatter
        self.pair_recent: dict[tuple[int, int], tuple[int, deque, _Fit]] = {}
        self.alarms = None if alarms is None else AlarmEvaluator(alarms, series=self.series)

    def _track(self, kind: str, tid: int) -> _Track:
        tracks = self.lines if kind == "line" else self.loops
        tr = tracks.get(tid)
        if tr is None:
            tr = tracks[tid] = _Track(self.window)
            self.n_tracks[kind] += 1
        return tr

    def add(self, r: FrameResult, *, timings_ms: dict[str, float] | None = None) -> FrameRows:
        """Take one tracked frame result of this series; return its rows.

        ``timings_ms`` adds stage times measured outside ``r`` (``measure_track``).

        Raises
        ------
        ValueError
            When the frame's index or time is not later than the previous frame's.
        """
        if self.last is not None and (r.index <= self.last[0] or not r.time_s > self.last[1]):
            raise ValueError(
                f"frames must arrive in order of index and time: frame {r.index} at "
                f"{r.time_s} s after frame {self.last[0]} at {self.last[1]} s"
            )
        self.last = (r.index, r.time_s)
        if self.first_time is None:
            self.first_time = r.time_s
        self.frames += 1
        nm = r.nm_per_px
        key = {"series": self.series, "frame": r.index, "time_s": r.time_s}
        tracks: list[dict[str, Any]] = []
        len_se = line_length_se_px(r.line_length_px)
        cent = r.line_centroid_px
        corr = cent - r.drift_px
        for i in range(r.n_lines):
            tid = int(r.line_track_id[i])
            p = int(r.line_pileup[i])
            g = r.pileup_glide_dir[p]
            pos_px = float(corr[i] @ g)
            vel_s = vel_f = vel_se = math.nan
            n_win = 0
            if tid >= 0:
                tr = self._track("line", tid)
                pts = r.line_points_px[i] - r.drift_px
                if tr.last_pts is not None:
                    pos_px = tr.pos + glide_displacement(tr.last_pts, pts, g)
                tr.last_pts = pts
                tr.add(r.index, r.time_s, (float(corr[i, 0]), float(corr[i, 1])), pos_px,
                       float(r.line_length_px[i]))  # fmt: skip
                tr.meta.update(pileup_id=int(r.pileup_id[p]), rank=int(r.line_rank[i]))
                tr.recent.append((r.index, r.time_s, pos_px))
                n_win = len(tr.recent)
                if n_win >= 2:
                    a = np.array(tr.recent)
                    v, se = slope_se(a[:, 1], a[:, 2])
                    se = combine_se(se, tr.between_sd(v, 2, n_win == self.window))
                    vel_s, vel_se = v * nm, se * nm
                    vel_f = _slope(a[:, 0], a[:, 2])
            tracks.append(dict(
                key, kind="line", track_id=tid, score=float(r.line_score[i]),
                x_px=float(cent[i, 0]), y_px=float(cent[i, 1]),
                length_px=float(r.line_length_px[i]), length_nm=float(r.line_length_px[i]) * nm,
                width_px=float(r.line_width_px[i]), pieces=int(r.line_pieces[i]),
                mean_abs_curvature_per_nm=float(np.abs(r.line_curvature_per_px[i]).mean()) / nm,
                pileup_id=int(r.pileup_id[p]), rank=int(r.line_rank[i]),
                glide_x=float(g[0]), glide_y=float(g[1]),
                glide_source=r.pileup_glide_source[p],
                position_nm=pos_px * nm, velocity_nm_per_s=vel_s, velocity_px_per_frame=vel_f,
                velocity_nm_per_s_se=vel_se, velocity_window=n_win,
                length_nm_se=float(len_se[i]) * nm, position_px=pos_px,
                points_px=points_cell(thin_polyline(r.line_points_px[i])),
                max_abs_curvature_per_nm=float(np.abs(r.line_curvature_per_px[i]).max()) / nm,
            ))  # fmt: skip
        lcorr = r.loop_center_px - r.drift_px
        for j in range(r.n_loops):
            tid = int(r.loop_track_id[j])
            growth = growth_se = math.nan
            major = float(r.loop_major_px[j])
            if tid >= 0:
                tr = self._track("loop", tid)
                tr.add(r.index, r.time_s, (float(lcorr[j, 0]), float(lcorr[j, 1])), 0.0, major)
                tr.recent.append((r.time_s, major))
                if len(tr.recent) >= 2:
                    a = np.array(tr.recent)
                    g, se = slope_se(a[:, 0], a[:, 1])
                    se = combine_se(se, tr.between_sd(g, 3, len(tr.recent) == self.window))
                    growth, growth_se = g * nm, se * nm
            tracks.append(dict(
                key, kind="loop", track_id=tid, score=float(r.loop_score[j]),
                x_px=float(r.loop_center_px[j, 0]), y_px=float(r.loop_center_px[j, 1]),
                major_px=major, major_nm=major * nm, minor_px=float(r.loop_minor_px[j]),
                minor_nm=float(r.loop_minor_px[j]) * nm, angle_deg=float(r.loop_angle_deg[j]),
                area_nm2=float(r.loop_area_px2[j]) * nm**2, growth_nm_per_s=growth,
                from_box=int(r.loop_from_box[j]),
                major_nm_se=float(r.loop_major_se_px[j]) * nm, growth_nm_per_s_se=growth_se,
            ))  # fmt: skip
        pairs = []
        for q in range(r.pair_lines.shape[0]):
            a, b = (int(v) for v in r.pair_lines[q])
            sp = float(r.pair_spacing_px[q])
            ta, tb = int(r.line_track_id[a]), int(r.line_track_id[b])
            pairs.append(dict(
                key, pileup_id=int(r.pileup_id[int(r.pair_pileup[q])]), rank=int(r.pair_rank[q]),
                track_id=ta, partner_id=tb, spacing_px=sp, spacing_nm=sp * nm,
                spacing_nm_se=self._pair_se(ta, tb, r.index, r.time_s, sp) * nm,
            ))  # fmt: skip
        mean_sp = r.pileup_mean_spacing_px
        for p in range(r.n_pileups):
            if math.isfinite(mean_sp[p]):
                acc = self.pileup_spacing.setdefault(int(r.pileup_id[p]), [0.0, 0])
                acc[0] += float(mean_sp[p]) * nm
                acc[1] += 1
        series = self._series_row(r, key, timings_ms or {})
        alarms = self.alarms.update(series, tracks, pairs) if self.alarms is not None else []
        return FrameRows(series, tracks, pairs, self._forget(r.index), alarms)

    def _pair_se(self, ta: int, tb: int, index: int, t: float, sp: float) -> float:
        """Standard error (px) of one spacing of a tracked pair: its scatter about a straight
        line through the pair's last ``window`` spacings (NaN before 4 of them)."""
        if ta < 0 or tb < 0:
            return math.nan
        hit = self.pair_recent.get((ta, tb))
        recent, fit = (hit[1], hit[2]) if hit is not None else (deque(maxlen=self.window),
                                                                _Fit(1))  # fmt: skip
        recent.append((t, sp))
        fit.add(t, (sp,))
        self.pair_recent[(ta, tb)] = (index, recent, fit)
        a = np.array(recent)
        # the scatter in the window, or about the pair's whole history where that is larger
        # (errors smooth over a window, quantisation beats, show only over a longer one)
        pooled = fit.slope_se(0) * math.sqrt(fit.sxx) * t68(fit.n - 2) if fit.n >= 4 else math.nan
        win = residual_sd(a[:, 0], a[:, 1])
        return max(win, pooled) if math.isfinite(pooled) else win

    def _series_row(self, r: FrameResult, key: dict[str, Any],
                    extra_ms: dict[str, float]) -> dict[str, Any]:  # fmt: skip
        nm = r.nm_per_px
        dens = r.densities
        for k in ("line_count", "loop_count"):
            v = dens.get(k, math.nan)
            if math.isfinite(v):
                self.counts[k][0] += v
                self.counts[k][1] += 1
        lengths = r.line_length_px
        mean_len = float(lengths.mean()) if lengths.size else math.nan
        sp = r.pair_spacing_px
        mean_sp = float(sp.mean()) if sp.size else math.nan
        sd_sp = float(sp.std(ddof=1)) if sp.size >= 2 else math.nan
        row: dict[str, Any] = dict(
            key, n_dislocations=r.n_dislocations, n_loops=r.n_loops, n_pileups=r.n_pileups,
            mean_length_px=mean_len, mean_length_nm=mean_len * nm, mean_spacing_px=mean_sp,
            mean_spacing_nm=mean_sp * nm,
            mean_loop_major_nm=float(r.loop_major_px.mean()) * nm if r.n_loops else math.nan,
            drift_x_px=float(r.drift_px[0]), drift_y_px=float(r.drift_px[1]),
            dose_dpa=r.dose_dpa, nm_per_px=nm, instances_without_mask=r.instances_without_mask,
            spacing_sd_nm=sd_sp * nm,
            mean_spacing_nm_se=sd_sp / math.sqrt(sp.size) * nm if sp.size >= 2 else math.nan,
        )  # fmt: skip
        self.without_mask += r.instances_without_mask
        for k in ("field_area_um2", "line_length_density_per_um", "line_density_per_m2",
                  "loop_areal_density_per_um2", "loop_density_per_m3"):  # fmt: skip
            row[k] = dens.get(k, math.nan)
        # Garwood 68 % interval of the loop count, and so of the loop densities (per loop:
        # the visibility factor over the field's area, or over its foil volume)
        lo, hi = (float(v) for v in poisson_interval(r.n_loops))
        row.update(n_loops_lo=lo, n_loops_hi=hi)
        area = dens.get("field_area_um2", math.nan)
        vis = self.calibration.visibility_factor
        th = self.calibration.foil_thickness_nm
        per = {"loop_areal_density_per_um2": vis / area if area else math.nan,
               "loop_density_per_m3": vis / (area * 1e-12 * th * 1e-9) if area and th
               else math.nan}  # fmt: skip
        for k, f in per.items():
            row[f"{k}_lo"], row[f"{k}_hi"] = lo * f, hi * f
        times = {**r.timings_ms, **extra_ms}
        for s in STAGES:
            if s in times:
                row[f"t_{s}_ms"] = float(times[s])
                self.timings.setdefault(s, _Stat()).add(float(times[s]))
        return row

    # ------------------------------------------------------------------ per track
    def _forget(self, index: int) -> list[dict[str, Any]]:
        """End the tracks unseen for more than ``forget_after`` frames: their summary rows."""
        out = []
        for k in [k for k, (last, *_) in self.pair_recent.items()
                  if index - last > self.forget_after]:  # fmt: skip
            del self.pair_recent[k]
        for kind, tracks in (("line", self.lines), ("loop", self.loops)):
            for tid in [t for t, tr in tracks.items()
                        if tr.last is not None and index - tr.last[0] > self.forget_after]:
                out.append(self._end(kind, tid))  # fmt: skip
        return out

    def _end(self, kind: str, tid: int) -> dict[str, Any]:
        tracks = self.lines if kind == "line" else self.loops
        row = self._summary_row(kind, tid, tracks.pop(tid))
        v = row.get("velocity_nm_per_s", math.nan)
        if kind == "line" and row["frames"] >= 3 and math.isfinite(v):
            self._ended_speed[0] += abs(v)
            self._ended_speed[1] += 1
        return row

    def finish(self) -> list[dict[str, Any]]:
        """End every open track (the series is over): their summary rows, by kind and id."""
        out = [self._end("line", t) for t in sorted(self.lines)]
        return out + [self._end("loop", t) for t in sorted(self.loops)]

    def _summary_row(self, kind: str, tid: int, tr: _Track) -> dict[str, Any]:
        nm = self.calibration.scale
        assert tr.first is not None and tr.last is not None
        f = tr.tfit
        row: dict[str, Any] = {
            "series": self.series, "kind": kind, "track_id": tid, "first_frame": tr.first[0],
            "last_frame": tr.last[0], "frames": f.n, "first_time_s": tr.first[1],
            "last_time_s": tr.last[1], "velocity_x_nm_per_s": f.slope(0) * nm,
            "velocity_y_nm_per_s": f.slope(1) * nm,
        }  # fmt: skip
        if tr.steps and tr.step_dt > 0:
            tau = tr.step_dt / tr.steps
            row["d_eff_nm2_per_s"] = tr.step_sq / tr.steps * nm**2 / (4 * tau)
        if kind == "line":
            row.update(tr.meta)
            row["mean_length_nm"] = f.mean(3) * nm
            row["velocity_nm_per_s"] = f.slope(2) * nm
            row["velocity_px_per_frame"] = tr.ffit.slope(0)
            row["velocity_nm_per_s_se"] = f.slope_se(2) * nm
        else:
            row["mean_major_nm"] = f.mean(3) * nm
            row["first_major_nm"] = tr.first_size * nm
            row["last_major_nm"] = tr.last_size * nm
            row["growth_nm_per_s"] = f.slope(3) * nm
            row["growth_nm_per_s_se"] = f.slope_se(3) * nm
        return row

    def open_track_rows(self) -> list[dict[str, Any]]:
        """Summary rows of the open tracks as they stand (they do not end)."""
        rows = [self._summary_row("line", k, v) for k, v in sorted(self.lines.items())]
        return rows + [self._summary_row("loop", k, v) for k, v in sorted(self.loops.items())]

    def summary(self) -> dict[str, Any]:
        """The series' summary: frames, times, calibration, tracks, spacings, stage timings,
        and ``instances_without_mask`` (summed over its frames: see ``series.csv``)."""
        speed_sum, speed_n = self._ended_speed
        for r in self.open_track_rows():
            v = r.get("velocity_nm_per_s", math.nan)
            if r["kind"] == "line" and r["frames"] >= 3 and math.isfinite(v):
                speed_sum += abs(v)
                speed_n += 1

        def mean(acc: list[float]) -> float:
            return acc[0] / acc[1] if acc[1] else math.nan

        return {
            "frames": self.frames,
            "first_time_s": self.first_time,
            "last_time_s": self.last[1] if self.last else None,
            "calibration": self.calibration.to_dict(),
            "line_tracks": self.n_tracks["line"],
            "loop_tracks": self.n_tracks["loop"],
            "mean_line_count": mean(self.counts["line_count"]),
            "mean_loop_count": mean(self.counts["loop_count"]),
            "mean_spacing_nm_by_pileup": {str(k): mean(v)
                                          for k, v in sorted(self.pileup_spacing.items())},
            "mean_abs_line_velocity_nm_per_s": speed_sum / speed_n if speed_n else math.nan,
            "instances_without_mask": self.without_mask,
            "timings_ms": {s: self.timings[s].to_dict() for s in STAGES if s in self.timings},
        }  # fmt: skip


class SeriesWriter:
    """Write one series into a run folder as frames arrive (``loopline analyze``).

    The tables go through :class:`~loopline.io.runfolder.RunTables`, as in the daemon;
    ``summary.json`` holds ``schema_version``, ``frames``, ``calibration``, ``tables`` (rows
    per file) and ``analysis`` (the series' :meth:`SeriesAccumulator.summary`, by series id),
    plus what :meth:`close` is given.

    Parameters
    ----------
    out : path
        Run folder (created).
    calibration : Calibration
    series : str
        Series id (``loopline analyze``: the input's stem).
    window : int
        See :class:`SeriesAccumulator`.
    flush_every : int
        Flush the tables and rewrite ``summary.json`` every this many frames (0: on close).
    append : bool
        Continue the tables already in ``out`` (same layout) instead of replacing them.
    parquet : bool
        Also ``series.parquet`` (needs pyarrow).
    alarms : AlarmConfig, optional
        The alarm rules whose events go to ``alarms.csv`` (default: the default rules; None:
        none).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, out: str | Path, calibration: Calibration, *, series: str = "series",
                 window: int = 7, flush_every: int = 50, append: bool = False,
                 parquet: bool = False,
                 alarms: AlarmConfig | None = _DEFAULT_ALARMS) -> None:  # fmt: skip
        self.out = Path(out)
        self.acc = SeriesAccumulator(calibration, series=series, window=window, alarms=alarms)
        self.tables = RunTables(self.out, parquet="series.parquet" if parquet else None,
                                append=append)  # fmt: skip
        self.flush_every = int(flush_every)
        self.extra: dict[str, Any] = {}
        self.closed = False

    def append(self, result: FrameResult, *, timings_ms: dict[str, float] | None = None
               ) -> FrameRows:  # fmt: skip
        """Add one tracked frame: its rows go to the tables at once (and are returned)."""
        rows = self.acc.add(result, timings_ms=timings_ms)
        self.tables.append(series=rows.series, tracks=rows.tracks, pairs=rows.pairs,
                           track_summary=rows.track_summary, alarms=rows.alarms)  # fmt: skip
        if self.flush_every and self.acc.frames % self.flush_every == 0:
            self.flush()
        return rows

    def summary(self) -> dict[str, Any]:
        return {"frames": self.acc.frames, "calibration": self.acc.calibration.to_dict(),
                "tables": self.tables.counts, "analysis": {self.acc.series: self.acc.summary()},
                **self.extra}  # fmt: skip

    def flush(self) -> dict[str, Any]:
        """Flush the tables and rewrite ``summary.json``."""
        self.tables.flush()
        summary = self.summary()
        write_summary(self.out, summary)
        return summary

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """End every track (their summary rows), close the tables, write ``summary.json``."""
        if extra:
            self.extra.update(extra)
        if not self.closed:
            self.tables.append(track_summary=self.acc.finish())
            self.tables.close()
            self.closed = True
        summary = self.summary()
        write_summary(self.out, summary)
        return summary

    def __enter__(self) -> SeriesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
