"""Rows of the run folder's tables from tracked frames, and the writer ``loopline analyze`` uses.

:class:`SeriesAccumulator` takes the tracked :class:`FrameResult` objects of one series one by
one and turns each into :class:`FrameRows`: one row for ``series.csv``, one per line and loop
for ``tracks.csv``, one per neighbour pair for ``pairs.csv``, and one for
``track_summary.csv`` per track that ended (the tables and their columns are defined once, in
:mod:`loopline.io.runfolder`). It adds what needs history: a line's position along its
pile-up's glide direction (drift-corrected; accumulated from frame-to-frame displacements
measured along the glide direction between the two lines, see
:func:`~loopline.pipelines.lines.glide_displacement`, so that a line entering or leaving the
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
(:mod:`loopline.daemon.analysis`) sends the same rows to its recorder, which writes them with
the same :class:`~loopline.io.runfolder.RunTables`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    write_summary,
)
from .container import FrameResult
from .lines import glide_displacement

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


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope dy/dx; NaN for fewer than 2 distinct x."""
    if x.size < 2:
        return math.nan
    xm = x - x.mean()
    den = float(xm @ xm)
    return float(xm @ (y - y.mean()) / den) if den > 0 else math.nan


class _Fit:
    """Running least-squares slopes of several y against one x (Welford's co-moments)."""

    __slots__ = ("c", "mx", "my", "n", "sxx")

    def __init__(self, k: int) -> None:
        self.n = 0
        self.mx = self.sxx = 0.0
        self.my = [0.0] * k
        self.c = [0.0] * k

    def add(self, x: float, ys: tuple[float, ...]) -> None:
        self.n += 1
        dx = x - self.mx
        self.mx += dx / self.n
        self.sxx += dx * (x - self.mx)
        for j, y in enumerate(ys):
            self.my[j] += (y - self.my[j]) / self.n
            self.c[j] += dx * (y - self.my[j])

    def slope(self, j: int) -> float:
        return self.c[j] / self.sxx if self.n >= 2 and self.sxx > 0 else math.nan

    def mean(self, j: int) -> float:
        return self.my[j] if self.n else math.nan


class _Track:
    """What one track needs: its last sample, recent samples, running sums."""

    __slots__ = ("ffit", "first", "first_size", "last", "last_pts", "last_size", "last_xy",
                 "meta", "pos", "recent", "step_dt", "step_sq", "steps", "tfit")  # fmt: skip

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

    def to_json(self) -> dict[str, Any]:
        """JSON-safe (NaN → None): what the daemon's measure worker sends to its recorder."""
        return json_safe({"series": self.series, "tracks": self.tracks, "pairs": self.pairs,
                          "track_summary": self.track_summary})  # fmt: skip


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
    """

    def __init__(self, calibration: Calibration, *, series: str = "series", window: int = 7,
                 forget_after: int = 300) -> None:  # fmt: skip
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
        cent = r.line_centroid_px
        corr = cent - r.drift_px
        for i in range(r.n_lines):
            tid = int(r.line_track_id[i])
            p = int(r.line_pileup[i])
            g = r.pileup_glide_dir[p]
            pos_px = float(corr[i] @ g)
            vel_s = vel_f = math.nan
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
                if len(tr.recent) >= 2:
                    a = np.array(tr.recent)
                    vel_s = _slope(a[:, 1], a[:, 2]) * nm
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
            ))  # fmt: skip
        lcorr = r.loop_center_px - r.drift_px
        for j in range(r.n_loops):
            tid = int(r.loop_track_id[j])
            growth = math.nan
            major = float(r.loop_major_px[j])
            if tid >= 0:
                tr = self._track("loop", tid)
                tr.add(r.index, r.time_s, (float(lcorr[j, 0]), float(lcorr[j, 1])), 0.0, major)
                tr.recent.append((r.time_s, major))
                if len(tr.recent) >= 2:
                    a = np.array(tr.recent)
                    growth = _slope(a[:, 0], a[:, 1]) * nm
            tracks.append(dict(
                key, kind="loop", track_id=tid, score=float(r.loop_score[j]),
                x_px=float(r.loop_center_px[j, 0]), y_px=float(r.loop_center_px[j, 1]),
                major_px=major, major_nm=major * nm, minor_px=float(r.loop_minor_px[j]),
                minor_nm=float(r.loop_minor_px[j]) * nm, angle_deg=float(r.loop_angle_deg[j]),
                area_nm2=float(r.loop_area_px2[j]) * nm**2, growth_nm_per_s=growth,
                from_box=int(r.loop_from_box[j]),
            ))  # fmt: skip
        pairs = []
        for q in range(r.pair_lines.shape[0]):
            a, b = (int(v) for v in r.pair_lines[q])
            sp = float(r.pair_spacing_px[q])
            pairs.append(dict(
                key, pileup_id=int(r.pileup_id[int(r.pair_pileup[q])]), rank=int(r.pair_rank[q]),
                track_id=int(r.line_track_id[a]), partner_id=int(r.line_track_id[b]),
                spacing_px=sp, spacing_nm=sp * nm,
            ))  # fmt: skip
        mean_sp = r.pileup_mean_spacing_px
        for p in range(r.n_pileups):
            if math.isfinite(mean_sp[p]):
                acc = self.pileup_spacing.setdefault(int(r.pileup_id[p]), [0.0, 0])
                acc[0] += float(mean_sp[p]) * nm
                acc[1] += 1
        series = self._series_row(r, key, timings_ms or {})
        return FrameRows(series, tracks, pairs, self._forget(r.index))

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
        mean_sp = float(r.pair_spacing_px.mean()) if r.pair_spacing_px.size else math.nan
        row: dict[str, Any] = dict(
            key, n_dislocations=r.n_dislocations, n_loops=r.n_loops, n_pileups=r.n_pileups,
            mean_length_px=mean_len, mean_length_nm=mean_len * nm, mean_spacing_px=mean_sp,
            mean_spacing_nm=mean_sp * nm,
            mean_loop_major_nm=float(r.loop_major_px.mean()) * nm if r.n_loops else math.nan,
            drift_x_px=float(r.drift_px[0]), drift_y_px=float(r.drift_px[1]),
            dose_dpa=r.dose_dpa, nm_per_px=nm, instances_without_mask=r.instances_without_mask,
        )  # fmt: skip
        self.without_mask += r.instances_without_mask
        for k in ("field_area_um2", "line_length_density_per_um", "line_density_per_m2",
                  "loop_areal_density_per_um2", "loop_density_per_m3"):  # fmt: skip
            row[k] = dens.get(k, math.nan)
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
        else:
            row["mean_major_nm"] = f.mean(3) * nm
            row["first_major_nm"] = tr.first_size * nm
            row["last_major_nm"] = tr.last_size * nm
            row["growth_nm_per_s"] = f.slope(3) * nm
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

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, out: str | Path, calibration: Calibration, *, series: str = "series",
                 window: int = 7, flush_every: int = 50, append: bool = False,
                 parquet: bool = False) -> None:  # fmt: skip
        self.out = Path(out)
        self.acc = SeriesAccumulator(calibration, series=series, window=window)
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
                           track_summary=rows.track_summary)  # fmt: skip
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
