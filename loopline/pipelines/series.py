"""Time series across frames, and the run files ``series.csv``, ``tracks.csv``, ``summary.json``.

:class:`SeriesAccumulator` takes tracked :class:`FrameResult` objects one by one and turns each
into rows (one per line, neighbour pair, pile-up, loop, and one for the frame), adding what
needs history: a line's position along its pile-up's glide direction (drift-corrected;
accumulated from frame-to-frame displacements measured along the glide direction between the
two lines, see :func:`~loopline.pipelines.lines.glide_displacement`, so that a line entering or
leaving the field of view does not seem to move) and its velocity, a loop's growth rate.
``velocity_x/y_nm_per_s`` in ``tracks.csv`` are the centroid's, for comparison. Velocities and
growth rates are causal: the slope of a least-squares line through the object's last ``window``
samples, so they can be published as the frame arrives (a constant velocity is recovered
exactly; noise is averaged over the window). Per track it keeps the full history for
``tracks.csv``: the velocity fitted over the whole track and the effective diffusion
coefficient D_eff = <|r(t+tau) - r(t)|^2> / (4 tau) at a lag of one frame (Shen et al. 2021),
both from drift-corrected positions.

:class:`SeriesWriter` appends the rows to ``series.csv`` as frames arrive (the header once) and
rewrites ``tracks.csv`` and ``summary.json`` atomically on :meth:`SeriesWriter.flush` and
:meth:`SeriesWriter.close`. Every column name carries its unit.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import Calibration
from .container import FrameResult
from .lines import glide_displacement

logger = logging.getLogger(__name__)

__all__ = ["SERIES_COLUMNS", "STAGES", "TRACK_COLUMNS", "SeriesAccumulator", "SeriesWriter"]

#: Stages whose time (ms) is written into every row.
STAGES = ("preprocess", "inference", "postprocess", "lines", "loops", "pileups", "measure",
          "drift", "track")  # fmt: skip

SERIES_COLUMNS = (
    "frame", "time_s", "kind", "object_id", "partner_id", "pileup_id", "rank",
    "x_px", "y_px", "length_px", "length_nm", "width_px", "pieces",
    "mean_abs_curvature_per_nm", "position_nm", "velocity_nm_per_s", "velocity_px_per_frame",
    "spacing_px", "spacing_nm", "mean_spacing_nm", "count", "glide_x", "glide_y",
    "glide_source", "major_px", "major_nm", "minor_nm", "angle_deg", "area_nm2",
    "growth_nm_per_s", "line_length_density_per_um", "line_density_per_m2",
    "loop_areal_density_per_um2", "loop_density_per_m3", "drift_x_px", "drift_y_px",
    "dose_dpa", *(f"t_{s}_ms" for s in STAGES),
)  # fmt: skip

TRACK_COLUMNS = (
    "kind", "track_id", "first_frame", "last_frame", "frames", "first_time_s", "last_time_s",
    "pileup_id", "rank", "mean_length_nm", "velocity_nm_per_s", "velocity_x_nm_per_s",
    "velocity_y_nm_per_s", "velocity_px_per_frame", "d_eff_nm2_per_s", "mean_major_nm",
    "first_major_nm", "last_major_nm", "growth_nm_per_s",
)  # fmt: skip


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope dy/dx; NaN for fewer than 2 distinct x."""
    if x.size < 2:
        return math.nan
    xm = x - x.mean()
    den = float(xm @ xm)
    return float(xm @ (y - y.mean()) / den) if den > 0 else math.nan


class _Track:
    __slots__ = ("frames", "g", "last_pts", "major", "meta", "pos", "size", "times", "xy")

    def __init__(self) -> None:
        self.frames: list[int] = []
        self.times: list[float] = []
        self.xy: list[tuple[float, float]] = []  # drift-corrected, px
        self.size: list[float] = []  # line length or loop major axis, px
        self.g = np.zeros(2)  # last glide direction (lines)
        self.major: list[float] = []
        self.pos: list[float] = []  # position along the glide direction, px (lines)
        self.last_pts: np.ndarray | None = None
        self.meta: dict[str, Any] = {}


class SeriesAccumulator:
    """Rows and per-track state from a stream of tracked frame results.

    Parameters
    ----------
    calibration : Calibration
        Supplies nm/px (NaN-safe) for the nm columns.
    window : int
        Samples in the causal velocity / growth fit (>= 2).
    history : bool
        Keep every track's whole history for :meth:`track_rows` and :meth:`summary` (offline
        analysis). False (the daemon, which runs for hours) keeps only what the causal
        per-frame outputs need: memory stays bounded, and ``track_rows``/``summary`` then
        describe the last frame of each recent track only.
    forget_after : int
        Without history: a track unseen for more than this many frames is dropped.
    """

    def __init__(self, calibration: Calibration, *, window: int = 7, history: bool = True,
                 forget_after: int = 300) -> None:  # fmt: skip
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        if forget_after < 1:
            raise ValueError(f"forget_after must be >= 1, got {forget_after}")
        self.calibration = calibration
        self.window = int(window)
        self.history = bool(history)
        self.forget_after = int(forget_after)
        self.lines: dict[int, _Track] = defaultdict(_Track)
        self.loops: dict[int, _Track] = defaultdict(_Track)
        self.frames = 0
        self.first_time: float | None = None
        self.last: tuple[int, float] | None = None
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.counts: dict[str, list[float]] = defaultdict(list)
        self.pileup_spacing: dict[int, list[float]] = defaultdict(list)
        self._recent: dict[tuple[str, int], deque] = {}

    def _recent_of(self, kind: str, tid: int) -> deque:
        key = (kind, tid)
        if key not in self._recent:
            self._recent[key] = deque(maxlen=self.window)
        return self._recent[key]

    def add(self, r: FrameResult) -> list[dict[str, Any]]:
        """Take one tracked frame result; return its rows (dicts keyed by ``SERIES_COLUMNS``).

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
        base = {"frame": r.index, "time_s": r.time_s, "drift_x_px": float(r.drift_px[0]),
                "drift_y_px": float(r.drift_px[1]), "dose_dpa": r.dose_dpa}  # fmt: skip
        for s in STAGES:
            if s in r.timings_ms:
                base[f"t_{s}_ms"] = r.timings_ms[s]
                self.timings[s].append(r.timings_ms[s])
        rows: list[dict[str, Any]] = []
        cent = r.line_centroid_px
        corr = cent - r.drift_px
        for i in range(r.n_lines):
            tid = int(r.line_track_id[i])
            p = int(r.line_pileup[i])
            g = r.pileup_glide_dir[p]
            pos_px = float(corr[i] @ g)
            vel_s = vel_f = math.nan
            if tid >= 0:
                tr = self.lines[tid]
                pts = r.line_points_px[i] - r.drift_px
                if tr.last_pts is not None:
                    pos_px = tr.pos[-1] + glide_displacement(tr.last_pts, pts, g)
                tr.last_pts = pts
                tr.pos.append(pos_px)
                tr.frames.append(r.index)
                tr.times.append(r.time_s)
                tr.xy.append((float(corr[i, 0]), float(corr[i, 1])))
                tr.size.append(float(r.line_length_px[i]))
                tr.g = g.copy()
                tr.meta.update(pileup_id=int(r.pileup_id[p]), rank=int(r.line_rank[i]))
                rec = self._recent_of("line", tid)
                rec.append((r.index, r.time_s, pos_px))
                if len(rec) >= 2:
                    a = np.array(rec)
                    vel_s = _slope(a[:, 1], a[:, 2]) * nm
                    vel_f = _slope(a[:, 0], a[:, 2])
            rows.append(dict(
                base, kind="line", object_id=tid, pileup_id=int(r.pileup_id[p]),
                rank=int(r.line_rank[i]), x_px=float(cent[i, 0]), y_px=float(cent[i, 1]),
                length_px=float(r.line_length_px[i]), length_nm=float(r.line_length_px[i]) * nm,
                width_px=float(r.line_width_px[i]), pieces=int(r.line_pieces[i]),
                mean_abs_curvature_per_nm=float(np.abs(r.line_curvature_per_px[i]).mean()) / nm,
                position_nm=pos_px * nm, velocity_nm_per_s=vel_s, velocity_px_per_frame=vel_f,
                glide_x=float(g[0]), glide_y=float(g[1]),
            ))  # fmt: skip
        for q in range(r.pair_lines.shape[0]):
            a, b = (int(v) for v in r.pair_lines[q])
            p = int(r.pair_pileup[q])
            sp = float(r.pair_spacing_px[q])
            rows.append(dict(
                base, kind="pair", object_id=int(r.line_track_id[a]),
                partner_id=int(r.line_track_id[b]), pileup_id=int(r.pileup_id[p]),
                rank=int(r.pair_rank[q]), spacing_px=sp, spacing_nm=sp * nm,
            ))  # fmt: skip
        mean_sp = r.pileup_mean_spacing_px
        for p in range(r.n_pileups):
            members = np.flatnonzero(r.line_pileup == p)
            leader = members[np.argmin(r.line_rank[members])]
            pid = int(r.pileup_id[p])
            if math.isfinite(mean_sp[p]):
                self.pileup_spacing[pid].append(float(mean_sp[p]) * nm)
            rows.append(dict(
                base, kind="pileup", object_id=pid, partner_id=int(r.line_track_id[leader]),
                count=int(members.size), mean_spacing_nm=float(mean_sp[p]) * nm,
                glide_x=float(r.pileup_glide_dir[p, 0]), glide_y=float(r.pileup_glide_dir[p, 1]),
                glide_source=r.pileup_glide_source[p],
            ))  # fmt: skip
        lcorr = r.loop_center_px - r.drift_px
        for j in range(r.n_loops):
            tid = int(r.loop_track_id[j])
            growth = math.nan
            if tid >= 0:
                tr = self.loops[tid]
                tr.frames.append(r.index)
                tr.times.append(r.time_s)
                tr.xy.append((float(lcorr[j, 0]), float(lcorr[j, 1])))
                tr.size.append(float(r.loop_major_px[j]))
                rec = self._recent_of("loop", tid)
                rec.append((r.time_s, r.loop_major_px[j]))
                if len(rec) >= 2:
                    a = np.array(rec)
                    growth = _slope(a[:, 0], a[:, 1]) * nm
            rows.append(dict(
                base, kind="loop", object_id=tid, x_px=float(r.loop_center_px[j, 0]),
                y_px=float(r.loop_center_px[j, 1]), major_px=float(r.loop_major_px[j]),
                major_nm=float(r.loop_major_px[j]) * nm, minor_nm=float(r.loop_minor_px[j]) * nm,
                angle_deg=float(r.loop_angle_deg[j]), area_nm2=float(r.loop_area_px2[j]) * nm**2,
                growth_nm_per_s=growth,
            ))  # fmt: skip
        dens = r.densities
        for key in ("line_count", "loop_count"):
            self.counts[key].append(dens.get(key, math.nan))
        rows.append(dict(
            base, kind="frame", count=r.n_lines + r.n_loops,
            **{k: dens.get(k, math.nan) for k in (
                "line_length_density_per_um", "line_density_per_m2",
                "loop_areal_density_per_um2", "loop_density_per_m3")},
        ))  # fmt: skip
        if not self.history:
            self._bound(r.index)
        return rows

    def _bound(self, index: int) -> None:
        """Without history: keep each track's last sample; drop tracks unseen for long."""
        for kind, tracks in (("line", self.lines), ("loop", self.loops)):
            for tid in list(tracks):
                tr = tracks[tid]
                if not tr.frames or index - tr.frames[-1] > self.forget_after:
                    del tracks[tid]
                    self._recent.pop((kind, tid), None)
                    continue
                for seq in (tr.frames, tr.times, tr.xy, tr.size, tr.pos):
                    del seq[:-1]
        for table in (self.timings, self.counts, self.pileup_spacing):
            for seq in table.values():
                del seq[:-1]

    # ------------------------------------------------------------------ per track
    def _track_row(self, kind: str, tid: int, tr: _Track) -> dict[str, Any]:
        nm = self.calibration.scale
        t = np.array(tr.times)
        xy = np.array(tr.xy).reshape(-1, 2)
        f = np.array(tr.frames, np.float64)
        vx, vy = _slope(t, xy[:, 0]), _slope(t, xy[:, 1])
        row: dict[str, Any] = {
            "kind": kind, "track_id": tid, "first_frame": tr.frames[0],
            "last_frame": tr.frames[-1], "frames": len(tr.frames), "first_time_s": t[0],
            "last_time_s": t[-1], "velocity_x_nm_per_s": vx * nm, "velocity_y_nm_per_s": vy * nm,
        }  # fmt: skip
        if len(t) >= 2:
            dt = np.diff(t)
            step = np.diff(xy, axis=0)
            tau = float(np.median(dt))
            row["d_eff_nm2_per_s"] = float((step**2).sum(axis=1).mean()) * nm**2 / (4 * tau)
        if kind == "line":
            row.update(tr.meta)
            pos = np.array(tr.pos)
            row["mean_length_nm"] = float(np.mean(tr.size)) * nm
            row["velocity_nm_per_s"] = _slope(t, pos) * nm
            row["velocity_px_per_frame"] = _slope(f, pos)
        else:
            row["mean_major_nm"] = float(np.mean(tr.size)) * nm
            row["first_major_nm"] = tr.size[0] * nm
            row["last_major_nm"] = tr.size[-1] * nm
            row["growth_nm_per_s"] = _slope(t, np.array(tr.size)) * nm
        return row

    def track_rows(self) -> list[dict[str, Any]]:
        """One row per track so far (keyed by ``TRACK_COLUMNS``)."""
        rows = [self._track_row("line", k, v) for k, v in sorted(self.lines.items())]
        rows += [self._track_row("loop", k, v) for k, v in sorted(self.loops.items())]
        return rows

    def summary(self) -> dict[str, Any]:
        """Run summary: frames, duration, calibration, tracks, spacings, stage timings."""

        def stats(v: list[float]) -> dict[str, float]:
            a = np.asarray(v, np.float64)
            a = a[np.isfinite(a)]
            if not a.size:
                return {"mean": math.nan, "p95": math.nan, "max": math.nan}
            return {"mean": float(a.mean()), "p95": float(np.percentile(a, 95)),
                    "max": float(a.max())}  # fmt: skip

        tracks = self.track_rows()
        v = [r["velocity_nm_per_s"] for r in tracks if r["kind"] == "line" and r["frames"] >= 3]
        return {
            "frames": self.frames,
            "first_time_s": self.first_time,
            "last_time_s": self.last[1] if self.last else None,
            "calibration": self.calibration.to_dict(),
            "line_tracks": len(self.lines),
            "loop_tracks": len(self.loops),
            "mean_line_count": stats(self.counts["line_count"])["mean"],
            "mean_loop_count": stats(self.counts["loop_count"])["mean"],
            "mean_spacing_nm_by_pileup": {str(k): float(np.mean(s))
                                          for k, s in sorted(self.pileup_spacing.items())},
            "mean_abs_line_velocity_nm_per_s": (float(np.nanmean(np.abs(v))) if v
                                                else math.nan),
            "timings_ms": {s: stats(self.timings[s]) for s in STAGES if s in self.timings},
        }  # fmt: skip


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)


class SeriesWriter:
    """Write a run folder as frames arrive: ``series.csv``, ``tracks.csv``, ``summary.json``.

    Parameters
    ----------
    out : path
        Run folder (created).
    calibration : Calibration
    window : int
        See :class:`SeriesAccumulator`.
    flush_every : int
        Rewrite ``tracks.csv`` and ``summary.json`` every this many frames (0: only on close).
    append : bool
        Continue an existing ``series.csv`` (its header must match) instead of replacing it.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        out: str | Path,
        calibration: Calibration,
        *,
        window: int = 7,
        flush_every: int = 50,
        append: bool = False,
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.acc = SeriesAccumulator(calibration, window=window)
        self.flush_every = int(flush_every)
        self.extra: dict[str, Any] = {}
        path = self.out / "series.csv"
        fresh = not (append and path.is_file() and path.stat().st_size > 0)
        if not fresh:
            with path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if tuple(header) != SERIES_COLUMNS:
                raise ValueError(f"{path} has other columns; cannot append to it")
        self._file = path.open("w" if fresh else "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(SERIES_COLUMNS)
            self._file.flush()
        self.closed = False

    def append(self, result: FrameResult) -> list[dict[str, Any]]:
        """Add one tracked frame: its rows go to ``series.csv`` at once (and are returned)."""
        rows = self.acc.add(result)
        self._csv.writerows([[_cell(r.get(c)) for c in SERIES_COLUMNS] for r in rows])
        self._file.flush()
        if self.flush_every and self.acc.frames % self.flush_every == 0:
            self.flush()
        return rows

    def flush(self) -> dict[str, Any]:
        """Rewrite ``tracks.csv`` and ``summary.json`` from everything so far."""
        rows = self.acc.track_rows()
        lines = [",".join(TRACK_COLUMNS)]
        lines += [",".join(_cell(r.get(c)) for c in TRACK_COLUMNS) for r in rows]
        _atomic_write(self.out / "tracks.csv", "\n".join(lines) + "\n")
        summary = self.acc.summary()
        summary.update(self.extra)
        _atomic_write(self.out / "summary.json",
                      json.dumps(_jsonable(summary), indent=1, sort_keys=True) + "\n")  # fmt: skip
        return summary

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Flush (adding ``extra`` to the summary) and close ``series.csv``."""
        if extra:
            self.extra.update(extra)
        if self.closed:
            return self.flush()
        summary = self.flush()
        self._file.close()
        self.closed = True
        return summary

    def __enter__(self) -> SeriesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
