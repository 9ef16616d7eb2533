"""Figures of a run folder: what a scientist would show of an in-situ experiment.

A run folder of ``loopline analyze`` or ``loopline serve`` (the same layout, defined once in
:mod:`loopline.io.runfolder` and the README's *Run folder*) holds ``series.csv`` (one row per
frame), ``tracks.csv`` (per object and frame), ``pairs.csv`` (per neighbour pair and frame),
``track_summary.csv`` (per track), ``alarms.csv`` (alarms raised and cleared) and
``summary.json``. They are read as they are, without conversion. Each figure below is drawn
only from the columns it needs; a figure whose data are absent is skipped with the reason,
never faked. A folder with several series (a daemon that saw several acquisitions) is
reported for the one with the most frames.

All figures use matplotlib's Agg backend, are written as PNG and PDF, and carry units on
every axis. Where the tables carry uncertainties (issue 22) they are drawn as translucent
bands of ± 1 standard error: each pair's ``spacing_nm`` ± ``spacing_nm_se`` and a pile-up's
mean spacing ± the standard error of that mean from its pairs' errors (``sqrt(Σ se²) / n``,
:func:`loopline.analysis.uncertainty.mean_se`; not ``series.csv``'s ``mean_spacing_nm_se``, which
is the spread over the pairs), each line's
``velocity_nm_per_s`` ± ``velocity_nm_per_s_se``, and the loop count and densities' 68 %
Poisson intervals (``*_lo``/``*_hi``). A band never stretches an axis by more than the span
of its curves (an early fit of three frames can have a wide error). ``summary.md`` ends with
the alarms of ``alarms.csv`` when the run raised any.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..analysis.uncertainty import mean_se
from ..io.runfolder import EVENT_TABLES, SCHEMA_VERSION, TABLES, read_points

logger = logging.getLogger(__name__)

__all__ = ["Report", "RunData", "load_run", "make_report"]


@dataclass
class RunData:
    """The tables of one series of a run folder (empty frames where a file is absent)."""

    folder: Path
    series: pd.DataFrame  # series.csv: one row per frame
    tracks: pd.DataFrame  # tracks.csv: one row per object and frame
    pairs: pd.DataFrame  # pairs.csv: one row per neighbour pair and frame
    track_summary: pd.DataFrame  # track_summary.csv: one row per track
    summary: dict[str, Any]  # summary.json
    series_id: str | None = None
    others: list[str] = field(default_factory=list)  # series of the folder not reported
    alarms: pd.DataFrame = field(default_factory=pd.DataFrame)  # alarms.csv: one per event

    @property
    def analysis(self) -> dict[str, Any]:
        """``summary.json``'s analysis summary of the reported series ({} if absent)."""
        return (self.summary.get("analysis") or {}).get(str(self.series_id)) or {}

    def kind(self, k: str) -> pd.DataFrame:
        """Rows of ``tracks.csv`` of one kind (``line`` or ``loop``)."""
        t = self.tracks
        return t[t["kind"] == k] if "kind" in t.columns else t.iloc[0:0]


MAX_PILEUPS = 6  # panels of the spacing figure
MAX_PAIR_CURVES = 6  # pairs drawn one by one in a panel; more: their range as a band
MAX_TRACKS = 24  # curves of the kinematics figure
MAX_ALARM_ROWS = 200  # rows of the alarms table in summary.md
BAND_ALPHA = 0.2


@dataclass
class Report:
    out: Path
    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    table: list[tuple[str, str]] = field(default_factory=list)


def _table(folder: Path, name: str) -> pd.DataFrame:
    """One table of the run folder; an empty frame with its columns where it is absent."""
    cols = [c for c, _, _ in {**TABLES, **EVENT_TABLES}[name]]
    p = folder / name
    if not p.exists() or not p.stat().st_size:
        return pd.DataFrame(columns=cols)
    df = pd.read_csv(p, low_memory=False, dtype={"series": str})
    missing = [c for c in ("series", *cols[1:3]) if c not in df.columns]
    if missing:
        raise ValueError(f"{p} is not a run-folder table of schema_version {SCHEMA_VERSION}: "
                         f"expected columns {', '.join(cols[:3])}, ...; got "
                         f"{', '.join(map(str, df.columns[:6]))}, ...")  # fmt: skip
    return df


def load_run(folder: Path) -> RunData:
    """Read the tables and ``summary.json`` of a run folder (the series with most frames).

    Raises
    ------
    FileNotFoundError
        If the folder or its ``series.csv`` is missing.
    ValueError
        If a table or ``summary.json`` is of another layout (``schema_version``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder not found: {folder}")
    if not (folder / "series.csv").exists():
        raise FileNotFoundError(f"{folder} has no series.csv: not a loopline run folder")
    js = folder / "summary.json"
    summary = json.loads(js.read_text()) if js.exists() else {}
    version = summary.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(f"{js}: schema_version must be {SCHEMA_VERSION} (this loopline's "
                         f"run-folder layout), got {version!r}")  # fmt: skip
    tables = {name: _table(folder, name) for name in (*TABLES, *EVENT_TABLES)}
    series = tables["series.csv"]
    counts = series["series"].value_counts()
    sid = str(counts.idxmax()) if len(counts) else None

    def one(df: pd.DataFrame) -> pd.DataFrame:
        return df[df["series"] == sid] if sid is not None else df

    return RunData(folder, one(series), one(tables["tracks.csv"]), one(tables["pairs.csv"]),
                   one(tables["track_summary.csv"]), summary, sid,
                   [str(s) for s in counts.index if str(s) != sid],
                   one(tables["alarms.csv"]))  # fmt: skip


def _length_column(df: pd.DataFrame, base: str) -> tuple[str, str]:
    """``(base_nm, "nm")`` where the table has lengths in nm, else ``(base_px, "px")`` (a run
    without a pixel size keeps its lengths in px only)."""
    nm = f"{base}_nm"
    if nm in df.columns and df[nm].notna().any():
        return nm, "nm"
    px = f"{base}_px"
    return (px, "px") if px in df.columns else (nm, "nm")


def _pileup_key(pid: Any) -> tuple[int, float, str]:
    """Sort key of a pile-up id as read from JSON (a string): by its number, then its text."""
    try:
        return 0, float(pid), ""
    except (TypeError, ValueError):
        return 1, 0.0, str(pid)


def _md_cell(text: Any) -> str:
    """A Markdown table cell: pipes escaped, line breaks as spaces."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _time(df: pd.DataFrame) -> tuple[pd.Series, str]:
    if "time_s" in df.columns and df["time_s"].notna().any():
        return df["time_s"], "time (s)"
    return df["frame"], "frame"


def _fit_ylim(ax: Any, values: Any, *, floor: float | None = 0.0) -> None:
    """Y limits fitted to the finite ``values`` (5 % margin), never below ``floor``."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return
    lo, hi = float(v.min()), float(v.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1.0)
    lo, hi = lo - pad, hi + pad
    if floor is not None:
        lo = max(lo, floor)
    ax.set_ylim(lo, hi)


def _se(df: pd.DataFrame, col: str) -> pd.Series | None:
    """``df[col + "_se"]`` where the table has it with a finite value, else None."""
    c = f"{col}_se"
    if c not in df.columns:
        return None
    se = pd.to_numeric(df[c], errors="coerce")
    return se if np.isfinite(se).any() else None


def _capped(values: Any, band: Any) -> list[float]:
    """``values`` and the band's ends, the ends clipped to the values' range widened by its
    own span (a quarter of its size when flat): what the y limits are fitted to."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    b = np.asarray([x for x in band if x is not None], dtype=float)
    b = b[np.isfinite(b)]
    if not v.size or not b.size:
        return list(v)
    lo, hi = float(v.min()), float(v.max())
    pad = max(hi - lo, 0.25 * max(abs(lo), abs(hi)), 1e-12)
    return list(v) + list(np.clip(b, lo - pad, hi + pad))


def _band(ax: Any, t: Any, y: Any, se: Any, color: Any, label: str | None = None) -> list[float]:
    """A translucent band ``y ± se`` (gaps where either is NaN); its ends, for the limits."""
    y = np.asarray(y, dtype=float)
    se = np.asarray(se, dtype=float)
    ok = np.isfinite(y) & np.isfinite(se)
    if not ok.any():
        return []
    lo, hi = y - se, y + se
    ax.fill_between(np.asarray(t, dtype=float), lo, hi, where=ok, color=color,
                    alpha=BAND_ALPHA, lw=0, label=label, interpolate=False)  # fmt: skip
    return list(lo[ok]) + list(hi[ok])


def _pileup_mean_se(se: pd.Series) -> float:
    """Standard error of a mean over pairs from their own standard errors, as the viewers
    have it (:func:`loopline.analysis.uncertainty.mean_se`; NaN where it gives none)."""
    v = mean_se(pd.to_numeric(se, errors="coerce").tolist())
    return math.nan if v is None else v


def _save(fig: Any, rep: Report, name: str) -> None:
    for ext in ("png", "pdf"):
        p = rep.out / f"{name}.{ext}"
        fig.savefig(p, dpi=130 if ext == "png" else None, bbox_inches="tight")
        rep.written.append(p)
    import matplotlib.pyplot as plt

    plt.close(fig)


def fig_spacing(run: RunData, rep: Report) -> None:
    """Spacing vs time per pile-up: every neighbour pair (by place from the leader) and mean."""
    import matplotlib.pyplot as plt

    col, unit = _length_column(run.pairs, "spacing")
    pairs = run.pairs[run.pairs[col].notna()] if len(run.pairs) else run.pairs
    if pairs.empty:
        rep.skipped["spacing_vs_time"] = "no pile-up spacings in pairs.csv"
        return
    if unit == "px":
        rep.notes.append("spacing_vs_time: no pixel size in the run: spacings in px")
    # each pile-up's mean spacing per frame: the mean over its pairs (as series.csv's
    # mean_spacing_nm is over all pairs of the frame)
    se_col = "spacing_nm_se" if unit == "nm" and _se(pairs, "spacing_nm") is not None else None
    pu = pairs.groupby(["pileup_id", "frame"], as_index=False).agg(
        time_s=("time_s", "first"), mean_spacing_nm=(col, "mean"),
        **({"mean_spacing_nm_se": (se_col, _pileup_mean_se)} if se_col else {}))
    # a lone dislocation has no spacing: only pile-ups with at least one pair get a panel, and
    # at most MAX_PILEUPS of them, those seen in the most frames
    seen = pu["pileup_id"].value_counts()
    ids = sorted(seen.index[:MAX_PILEUPS])
    if len(seen) > MAX_PILEUPS:
        rep.notes.append(f"spacing_vs_time: {len(seen) - MAX_PILEUPS} pile-ups seen in fewer "
                         "frames are not drawn")  # fmt: skip
    fig, axes = plt.subplots(len(ids), 1, figsize=(8.5, 2.4 * len(ids) + 0.4), squeeze=False,
                             sharex=True)  # fmt: skip
    xlabel = "time (s)"
    for ax, pid in zip(axes[:, 0], ids, strict=True):
        p = pairs[pairs["pileup_id"] == pid]
        ranks = sorted(p["rank"].dropna().unique()) if not p.empty else []
        shown: list[float] = []
        bands: list[float] = []
        if len(ranks) <= MAX_PAIR_CURVES:
            cmap = plt.get_cmap("viridis")
            for r in ranks:
                q = p[p["rank"] == r].sort_values("frame")
                t, _ = _time(q)
                c = cmap(r / max(len(ranks), 1))
                ax.plot(t, q[col], lw=0.9, color=c, label=f"pair {int(r)}–{int(r) + 1}")
                shown += list(q[col])
                if se_col:
                    bands += _band(ax, t, q[col], q[se_col], c)
        else:  # many pairs: their range as a band, the leader's pair as a line
            g = p.groupby("frame")
            band = pd.DataFrame({"t": g["time_s"].first(), "lo": g[col].min(),
                                 "hi": g[col].max()}).sort_index()  # fmt: skip
            t = band["t"] if band["t"].notna().any() else band.index.to_series()
            ax.fill_between(t, band["lo"], band["hi"], color="tab:blue", alpha=0.2,
                            label=f"all {len(ranks)} pairs: range")  # fmt: skip
            q = p[p["rank"] == ranks[0]].sort_values("frame")
            tq, _ = _time(q)
            ax.plot(tq, q[col], lw=1.0, color="tab:blue",
                    label=f"pair {int(ranks[0])}–{int(ranks[0]) + 1} (at the leader)")  # fmt: skip
            shown += list(band["lo"]) + list(band["hi"])
            if se_col:
                bands += _band(ax, tq, q[col], q[se_col], "tab:blue")
        m = pu[pu["pileup_id"] == pid].sort_values("frame")
        t, xlabel = _time(m)
        ax.plot(t, m["mean_spacing_nm"], color="k", lw=2.0, label="mean")
        shown += list(m["mean_spacing_nm"])
        if se_col:
            bands += _band(ax, t, m["mean_spacing_nm"], m["mean_spacing_nm_se"], "k",
                           label="± 1 standard error")  # fmt: skip
        _fit_ylim(ax, _capped(shown, bands))
        ax.set_ylabel(f"spacing ({unit})")
        ax.set_title(f"pile-up {int(pid)}: neighbour pairs numbered from the leading "
                     "dislocation (0)", fontsize=9, loc="left")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle("Dislocation spacing vs time per pile-up")
    fig.tight_layout()
    _save(fig, rep, "spacing_vs_time")


def fig_dislocations(run: RunData, rep: Report) -> None:
    """Position along the glide direction and velocity of every dislocation vs time."""
    import matplotlib.pyplot as plt

    ln = run.kind("line")
    if ln.empty or ln["position_nm"].notna().sum() == 0:
        why = "no line positions in tracks.csv"
        if not ln.empty and "length_px" in ln.columns and ln["length_px"].notna().any():
            why = ("line positions are in nm only and the run has no pixel size (give "
                   "--nm-per-px or a calibration profile)")  # fmt: skip
        rep.skipped["dislocation_kinematics"] = why
        return
    ln = ln[(ln["track_id"] >= 0) & ln["position_nm"].notna()]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7.5, 6.4), sharex=True)
    seen = ln["track_id"].value_counts()
    tracks = sorted(seen.index[:MAX_TRACKS])
    if len(seen) > MAX_TRACKS:
        rep.notes.append(f"dislocation_kinematics: the {MAX_TRACKS} longest of {len(seen)} "
                         "tracks are drawn")  # fmt: skip
    cmap = plt.get_cmap("tab20")
    xlabel = "time (s)"
    has_se = _se(ln, "velocity_nm_per_s") is not None
    vel: list[float] = []
    bands: list[float] = []
    for k, tid in enumerate(tracks):
        d = ln[ln["track_id"] == tid].sort_values("frame")
        t, xlabel = _time(d)
        pid = d["pileup_id"].iloc[-1]
        label = f"{int(tid)}" + (f" (pile-up {int(pid)})" if pid is not None and
                                  not pd.isna(pid) else "")  # fmt: skip
        c = cmap(k % 20)
        a1.plot(t, d["position_nm"], color=c, lw=1.1, label=label)
        a2.plot(t, d["velocity_nm_per_s"], color=c, lw=1.0)
        vel += list(d["velocity_nm_per_s"])
        if has_se:
            bands += _band(a2, t, d["velocity_nm_per_s"], d["velocity_nm_per_s_se"], c,
                           label="± 1 standard error" if not bands else None)  # fmt: skip
    if bands:
        _fit_ylim(a2, _capped([*vel, 0.0], bands), floor=None)
        a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    a1.set_ylabel("position along glide (nm)")
    a2.set_ylabel("velocity (nm/s)")
    a2.set_xlabel(xlabel)
    a2.axhline(0, color="0.5", lw=0.6)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a1.legend(fontsize=6, ncol=1 + len(tracks) // 13, title="track (pile-up)",
              title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Dislocation position and velocity (drift-corrected, + toward the leader)")
    fig.tight_layout()
    _save(fig, rep, "dislocation_kinematics")


def fig_loops(run: RunData, rep: Report) -> None:
    """Loop size distribution vs time: median and interquartile band (as Shen et al. Fig. 6)."""
    import matplotlib.pyplot as plt

    lp = run.kind("loop")
    col, unit = _length_column(lp, "major")
    if lp.empty or lp[col].notna().sum() == 0:
        rep.skipped["loop_size_vs_time"] = "no loops in tracks.csv"
        return
    if unit == "px":
        rep.notes.append("loop_size_vs_time: no pixel size in the run: loop axes in px")
    g = lp.groupby("frame")
    q = pd.DataFrame({
        "t": g["time_s"].first(),
        "q1": g[col].quantile(0.25), "med": g[col].median(),
        "q3": g[col].quantile(0.75), "n": g[col].count(),
    }).sort_index()  # fmt: skip
    xlabel = "time (s)"
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7.5, 5.6), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})  # fmt: skip
    a1.fill_between(q["t"], q["q1"], q["q3"], color="tab:blue", alpha=0.25, label="Q1–Q3")
    a1.plot(q["t"], q["med"], color="tab:blue", lw=2, label="median")
    a1.plot(q["t"], q["q1"], color="tab:blue", lw=0.8, ls="--")
    a1.plot(q["t"], q["q3"], color="tab:blue", lw=0.8, ls="--")
    a1.set_ylabel(f"loop major axis ({unit})")
    _fit_ylim(a1, list(q["q1"]) + list(q["q3"]) + list(q["med"]))
    a2.set_ylim(bottom=0)
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.step(q["t"], q["n"], where="mid", color="k", lw=1)
    a2.set_ylabel("loops (count)")
    a2.set_xlabel(xlabel)
    a2.grid(alpha=0.3)
    fig.suptitle("Loop size distribution vs time (median, Q1, Q3)")
    _save(fig, rep, "loop_size_vs_time")


_DENSITIES = (
    ("line_density_per_m2", "dislocation density (m⁻²)"),
    ("line_length_density_per_um", "line length per area (µm⁻¹)"),
    ("loop_areal_density_per_um2", "loop areal density (µm⁻²)"),
    ("loop_density_per_m3", "loop volume density (m⁻³)"),
)


def fig_density(run: RunData, rep: Report) -> None:
    """Densities (and counts) per frame vs time."""
    import matplotlib.pyplot as plt

    fr = run.series
    cols = [(c, lab) for c, lab in _DENSITIES if fr[c].notna().any()]
    counts = [(c, lab) for c, lab in (("n_dislocations", "dislocations (count)"),
                                      ("n_loops", "loops (count)")) if fr[c].notna().any()]
    if not cols and not counts:
        rep.skipped["density_vs_time"] = "no densities or counts in series.csv"
        return
    panels = cols + counts
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 1.9 * len(panels) + 0.6),
                             sharex=True, squeeze=False)  # fmt: skip
    fr = fr.sort_values("frame")
    t, xlabel = _time(fr)
    for ax, (c, lab) in zip(axes[:, 0], panels, strict=True):
        ax.plot(t, fr[c], lw=1.3)
        band: list[float] = []
        if f"{c}_lo" in fr.columns and fr[f"{c}_lo"].notna().any():
            lo, hi = fr[f"{c}_lo"].to_numpy(float), fr[f"{c}_hi"].to_numpy(float)
            ok = np.isfinite(lo) & np.isfinite(hi)
            ax.fill_between(np.asarray(t, float), lo, hi, where=ok, color="tab:blue",
                            alpha=BAND_ALPHA, lw=0, label="68 % Poisson interval")  # fmt: skip
            ax.legend(fontsize=7, loc="upper left")
            band = list(lo[ok]) + list(hi[ok])
        _fit_ylim(ax, _capped(fr[c], band))  # densities and counts are never negative
        ax.set_ylabel(lab, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle("Defect densities vs time")
    _save(fig, rep, "density_vs_time")


def _frame_images(run: RunData, n: int) -> list[tuple[int, np.ndarray]]:
    """Up to ``n`` frames evenly spread over the run, from annotated.mp4 or the input."""
    import cv2

    frames = sorted(run.series["frame"].dropna().astype(int).unique())
    if not frames:
        return []
    want = [frames[round(float(i))] for i in np.linspace(0, len(frames) - 1, min(n, len(frames)))]
    mp4 = run.folder / "annotated.mp4"
    out: list[tuple[int, np.ndarray]] = []
    if mp4.exists():
        cap = cv2.VideoCapture(str(mp4))
        try:
            for f in want:
                cap.set(cv2.CAP_PROP_POS_FRAMES, f)
                ok, img = cap.read()
                if ok:
                    out.append((f, img[..., ::-1]))
        finally:
            cap.release()
        from ..daemon.video_recovery import sidecar

        if not out and sidecar(mp4).exists():
            logger.warning("%s was never finalised (the daemon was killed): run `loopline "
                           "recover %s` to make it readable", mp4, run.folder)  # fmt: skip
        return out
    src = run.summary.get("input")
    if not src:
        return []
    src = Path(src)
    images = []
    truth = src / "truth.json"
    if truth.exists():
        seqs = json.loads(truth.read_text()).get("sequences", [])
        if seqs:
            images = [src / fr["image"] for fr in seqs[0]["frames"]]
    elif src.is_dir():
        images = sorted(p for p in src.iterdir()
                        if p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg"))  # fmt: skip
    for f in want:
        if 0 <= f < len(images):
            img = cv2.imread(str(images[f]), cv2.IMREAD_GRAYSCALE)
            if img is not None:
                out.append((f, img))
    return out


def fig_contact_sheet(run: RunData, rep: Report, *, n: int = 8) -> None:
    """Frames evenly spread over the run, with the measured objects drawn on them."""
    import matplotlib.pyplot as plt

    imgs = _frame_images(run, n)
    if not imgs:
        rep.skipped["contact_sheet"] = "no frames found (no annotated.mp4, input not readable)"
        return
    annotated_mp4 = (run.folder / "annotated.mp4").exists()
    nm = _pixel_size(run)
    cols = min(4, len(imgs))
    rows = math.ceil(len(imgs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (f, img) in zip(axes.ravel(), imgs, strict=False):
        ax.imshow(img, cmap="gray")
        rows_f = run.series[run.series["frame"] == f]
        t = rows_f["time_s"].iloc[0] if len(rows_f) else None
        ax.set_title(f"frame {f}" + (f"  t = {t:.2f} s" if t is not None else ""), fontsize=8)
        if not annotated_mp4:
            _draw_objects(ax, run.tracks[run.tracks["frame"] == f], cmap)
            ax.set_xlim(-0.5, img.shape[1] - 0.5)  # the frame, not what a bar overshoots
            ax.set_ylim(img.shape[0] - 0.5, -0.5)
        if nm:
            h, w = img.shape[:2]
            bar_nm = _nice(w * nm * 0.25)
            px = bar_nm / nm
            ax.plot([w - px - 8, w - 8], [h - 10, h - 10], color="w", lw=3)
            ax.text(w - 8 - px / 2, h - 16, f"{bar_nm:g} nm", color="w", fontsize=7,
                    ha="center")  # fmt: skip
    what = "annotated frames (annotated.mp4: masks, centre lines, track ids)" if annotated_mp4 \
        else ("lines: the measured centre line (tracks.csv points_px); "
              "loops: the fitted ellipse; numbers: track ids")  # fmt: skip
    fig.suptitle("Contact sheet", fontsize=10)
    fig.text(0.5, 0.005, what, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout()
    _save(fig, rep, "contact_sheet")


def _draw_objects(ax: Any, objs: pd.DataFrame, cmap: Any) -> None:
    """What tracks.csv records of one frame's objects, drawn as it is recorded: a line as its
    centre line (``points_px``; a run written before that column: a bar of its centre-line
    length through its centroid, across its pile-up's glide direction, or a dot where the
    glide direction came from the calibration, which says nothing of the line), a loop as
    its fitted ellipse."""
    from matplotlib.patches import Ellipse

    for _, r in objs[objs["kind"] == "line"].iterrows():
        c = cmap(int(r["track_id"]) % 20)
        x, y, n = r["x_px"], r["y_px"], r.get("length_px")
        gx, gy = r.get("glide_x"), r.get("glide_y")
        known = r.get("glide_source") in ("normal", "convention", "spacing")
        pts = np.array(read_points(r.get("points_px")), float).reshape(-1, 2)
        if len(pts) >= 2:
            ax.plot(pts[:, 0], pts[:, 1], "-", lw=1.6, color=c, solid_capstyle="round")
        elif known and all(v is not None and np.isfinite(v) for v in (gx, gy, n)):
            dx, dy = -gy * n / 2, gx * n / 2  # the line: across the glide direction
            ax.plot([x - dx, x + dx], [y - dy, y + dy], "-", lw=1.6, color=c,
                    solid_capstyle="round")  # fmt: skip
        else:
            ax.plot(x, y, "o", ms=3, color=c)
        ax.text(x + 3, y - 3, str(int(r["track_id"])), color=c, fontsize=6, weight="bold")
    for _, r in objs[objs["kind"] == "loop"].iterrows():
        c = cmap(int(r["track_id"]) % 20)
        ax.add_patch(Ellipse((r["x_px"], r["y_px"]), r["major_px"], r["minor_px"],
                             angle=r["angle_deg"], fill=False, color=c, lw=1.0,
                             ls="--" if r.get("from_box") == 1 else "-"))  # fmt: skip


def _nice(x: float) -> float:
    p = 10 ** math.floor(math.log10(max(x, 1e-12)))
    for m in (5, 2, 1):
        if m * p <= x:
            return m * p
    return p


def _pixel_size(run: RunData) -> float | None:
    """nm/px of the reported series: its calibration, else what series.csv measured with."""
    nm = (run.analysis.get("calibration") or {}).get("nm_per_px")
    if nm is None and run.series["nm_per_px"].notna().any():
        nm = float(run.series["nm_per_px"].dropna().iloc[0])
    return nm


def summary_table(run: RunData, rep: Report) -> None:
    """A short table of the run (also written as summary.csv and summary.md).

    Per-series quantities come from ``summary.json``'s ``analysis`` of the reported series;
    where it is absent (a daemon killed before its series ended) only what the tables show.
    """
    s, a = run.summary, run.analysis
    t: list[tuple[str, str]] = []

    def add(name: str, v: Any, fmt: str = "{:.4g}") -> None:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return
        t.append((name, fmt.format(v) if isinstance(v, float) else str(v)))

    if run.others:
        add("series reported", f"{run.series_id} (of {len(run.others) + 1}; the longest)")
    add("frames", a.get("frames", int(run.series["frame"].nunique())))
    times = run.series["time_s"].dropna()
    if len(times):
        add("duration (s)", float(times.max() - times.min()))
    nm = _pixel_size(run)
    add("pixel size (nm/px)", nm if nm is not None else "unknown: lengths in px")
    add("line tracks", a.get("line_tracks"))
    add("loop tracks", a.get("loop_tracks"))
    add("mean dislocations per frame", a.get("mean_line_count"))
    add("mean loops per frame", a.get("mean_loop_count"))
    by_pileup = {str(k): v for k, v in (a.get("mean_spacing_nm_by_pileup") or {}).items()
                 if v is not None and math.isfinite(float(v))}
    unit = "nm"
    if not by_pileup and len(run.pairs) and run.pairs["spacing_px"].notna().any():
        # no pixel size (or a series not yet ended): the pairs' spacings, px
        col, unit = _length_column(run.pairs, "spacing")
        by_pileup = {str(int(k)): float(v) for k, v in
                     run.pairs.groupby("pileup_id")[col].mean().dropna().items()}  # fmt: skip
    for pid in sorted(by_pileup, key=_pileup_key):
        add(f"mean spacing, pile-up {pid} ({unit})", float(by_pileup[pid]))
    add("mean |line velocity| (nm/s)", a.get("mean_abs_line_velocity_nm_per_s"))
    for k in ("length_re", "spacing_re", "velocity_re", "loop_axis_re"):
        if k in s:
            add(f"{k} (vs ground truth)", s[k], "{:.2%}")
    add("id switches (vs ground truth)", s.get("id_switches"))
    for k, v in (s.get("counters") or {}).items():
        add(f"daemon counter: {k}", v)
    for st, d in (a.get("timings_ms") or {}).items():
        if isinstance(d, dict) and d.get("mean") is not None:
            add(f"{st} mean / p95 (ms)", f"{d['mean']:.2f} / {d['p95']:.2f}")
    ts = run.track_summary
    v = ts.loc[ts["kind"] == "line", "velocity_nm_per_s"].dropna() if len(ts) else ts
    if len(v):
        add("line velocity range (nm/s)", f"{v.min():.3g} … {v.max():.3g}")
    al = run.alarms
    if len(al):
        raised = al[al["state"] == "raise"]
        add("alarms raised", len(raised))
        for rule, n in raised["rule"].value_counts().sort_index().items():
            add(f"alarms raised: {rule}", int(n))
    rep.table = t
    pd.DataFrame(t, columns=["quantity", "value"]).to_csv(rep.out / "summary.csv", index=False)
    md = ["| quantity | value |", "|---|---|",
          *(f"| {_md_cell(a)} | {_md_cell(b)} |" for a, b in t), *alarm_table_md(al)]
    (rep.out / "summary.md").write_text("\n".join(md) + "\n", "utf-8")
    rep.written += [rep.out / "summary.csv", rep.out / "summary.md"]


def _md_num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return f"{f:.4g}" if math.isfinite(f) else ""


def alarm_table_md(alarms: pd.DataFrame, *, limit: int = MAX_ALARM_ROWS) -> list[str]:
    """``alarms.csv``'s events as Markdown lines (a heading and a table; none without events):
    frame, time, rule, raise/clear, value and threshold with their unit, and the message."""
    if alarms is None or not len(alarms):
        return []
    a = alarms.sort_values(["frame", "time_s"], kind="stable") if "frame" in alarms else alarms
    out = ["", "## Alarms", "",
           f"{int((a['state'] == 'raise').sum())} raised, {int((a['state'] == 'clear').sum())} "
           "cleared (`alarms.csv`).", "",
           "| frame | time (s) | rule | state | value | threshold | unit | message |",
           "|---:|---:|---|---|---:|---:|---|---|"]  # fmt: skip
    for _, r in a.head(limit).iterrows():
        frame = "" if pd.isna(r.get("frame")) else str(int(r["frame"]))
        cells = [frame, _md_num(r.get("time_s")), r.get("rule"), r.get("state"),
                 _md_num(r.get("value")), _md_num(r.get("threshold")), r.get("unit"),
                 r.get("message")]  # fmt: skip
        out.append("| " + " | ".join(_md_cell("" if c is None or (isinstance(c, float) and
                                                                   math.isnan(c)) else c)
                                     for c in cells) + " |")  # fmt: skip
    if len(a) > limit:
        out += ["", f"({len(a) - limit} more events in `alarms.csv`)"]
    return out


FIGURES: dict[str, Callable[[RunData, Report], None]] = {
    "spacing_vs_time": fig_spacing,
    "dislocation_kinematics": fig_dislocations,
    "loop_size_vs_time": fig_loops,
    "density_vs_time": fig_density,
    "contact_sheet": fig_contact_sheet,
}


def make_report(folder: Path, out: Path | None = None, *, frames: int = 8) -> Report:
    """Write every figure (PNG + PDF) and the summary table of the run folder ``folder``.

    Parameters
    ----------
    folder
        Run folder with ``series.csv`` (and ``tracks.csv``, ``summary.json``).
    out
        Output folder (default ``folder/report``).
    frames
        Frames on the contact sheet.
    """
    import matplotlib

    matplotlib.use("Agg")
    run = load_run(folder)
    rep = Report(Path(out) if out is not None else Path(folder) / "report")
    rep.out.mkdir(parents=True, exist_ok=True)
    if run.others:
        rep.notes.append(f"{len(run.others) + 1} series in the folder; reporting "
                         f"{run.series_id}, the one with the most frames")  # fmt: skip
    for name, fn in FIGURES.items():
        try:
            if name == "contact_sheet":
                fig_contact_sheet(run, rep, n=frames)
            else:
                fn(run, rep)
        except (KeyError, ValueError, TypeError) as e:  # a column of an unexpected kind
            rep.skipped[name] = f"{type(e).__name__}: {e}"
            logger.warning("figure %s skipped: %s", name, e)
    summary_table(run, rep)
    return rep
