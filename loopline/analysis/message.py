"""The frame message: one analysed frame, from the measure stage to every consumer.

One layout, defined here and nowhere else, travels from the daemon's measure stage (which
builds it with :func:`frame_tables` from the analysis' :class:`FrameResult` and the
:class:`~loopline.analysis.series.SeriesAccumulator`'s rows) to the output stage, where the
recorder writes its rows into the run folder as they are and draws its objects into
``annotated.mp4``, and the publisher sends it (:func:`frame_header`) to the viewers, which
read it back with :func:`read_objects` (``loopline.viewers.schema.to_view``). Its rows *are*
the run folder's rows (:mod:`loopline.io.runfolder`, the README's *Run folder*): the same
names, units and meanings, so a column added there reaches the stream without a change here.

Published header (``[b"frame", header, jpeg?]``, schema :data:`FRAME_SCHEMA`)::

    {
      "schema": "loopline.frame/2",
      "seq": 1234,                 # message counter (gaps = messages this viewer lost)
      "series": "s0001",           # series (acquisition) id
      "index": 57,                 # frame index within the series
      "time_s": 2.28,              # series.csv's time_s (a calibration's axis, a replayed
                                   # file's own, else the camera clock since the series'
                                   # first frame)
      "timestamp": 1716400000.12,  # camera timestamp, s since the UNIX epoch
      "published": 1716400000.19,  # when this message left the daemon (same clock)
      "latency_ms": 70.3,          # timestamp -> published (null if the camera clock is off)
      "shape": [512, 512],         # frame (H, W) px; every coordinate below is frame px
      "px_nm": 2.0,                # pixel size, nm (null if unknown)
      "jpeg": {"width": 512, "height": 512, "scale": 1.0, "overlay": false} | null,
      "row": {...},                # this frame's series.csv row
      "tracks": [{...}, ...],      # its tracks.csv rows (lines, then loops), each with
                                   # "cls" (0 dislocation, 1 loop), "contour_px" (outline,
                                   # [[x, y], ...], <= 200 points: a line's mask, a loop's
                                   # fitted ellipse) and "box_px" [x0, y0, x1, y1]
      "pairs": [{...}, ...],       # its pairs.csv rows
      "timings_ms": {...},         # per-stage times of this frame
      "model": "defects.onnx@9c3e3b90",   # the model that analysed it (frames.csv's model)
      "engine": "defects/openvino",
      "counters": {"received": n, "analysed": n, "skipped": n, ...},
      "alarms_active": ["avalanche"],     # alarm rules raised now
      "fate": "analysed_untracked"        # only for a frame measured after its successors:
                                          # no track ids (-1), no kinematics (null)
    }

A line's centre line is its row's ``points_px`` (:func:`~loopline.io.runfolder.read_points`);
its kinematics are the row's ``position_nm``, ``velocity_nm_per_s`` (and ``_se``), its pile-up
``pileup_id``/``rank``/``glide_x``/``glide_y``. A loop is ``x_px``, ``y_px``, ``major_px``,
``minor_px``, ``angle_deg``. NaN is sent as ``null``; unknown keys are ignored by readers.

Between the measure and the output stage the message also carries ``track_summary`` and
``alarms`` rows (the recorder writes them; alarms are published on their own topic) and the
recorder's bookkeeping (``ts``, ``recv``, ``model_path``); :func:`frame_header` leaves those
out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

import cv2
import numpy as np

from ..io.runfolder import read_points
from .container import FrameResult
from .uncertainty import mean_se

__all__ = [
    "FRAME_SCHEMA",
    "PUBLISHED",
    "FrameHeader",
    "LineView",
    "LoopView",
    "PileupView",
    "TrackRow",
    "as_float",
    "as_int",
    "as_points",
    "contour_of",
    "frame_header",
    "frame_tables",
    "read_objects",
    "untracked",
]

FRAME_SCHEMA = "loopline.frame/2"
_MAX_CONTOUR_POINTS = 200


class TrackRow(TypedDict, total=False):
    """One ``tracks.csv`` row (every column of :data:`~loopline.io.runfolder.TRACK_COLUMNS`)
    with what a viewer draws."""

    kind: str  # "line" | "loop"
    track_id: int
    cls: int  # 0 dislocation, 1 loop
    contour_px: list[list[float]]
    box_px: list[float]


class FrameHeader(TypedDict):
    """The published frame message (see the module docstring)."""

    schema: str
    seq: int
    series: str
    index: int
    time_s: float
    timestamp: float
    published: float
    latency_ms: float | None
    shape: list[int] | None
    px_nm: float | None
    jpeg: dict[str, Any] | None
    row: dict[str, Any]
    tracks: list[TrackRow]
    pairs: list[dict[str, Any]]
    timings_ms: dict[str, float]
    model: str | None
    engine: str | None
    counters: dict[str, int]
    alarms_active: list[str]
    fate: NotRequired[str]


#: Keys of the measure stage's result message that are published (the rest is the
#: recorder's).
PUBLISHED = ("series", "index", "time_s", "shape", "px_nm", "row", "tracks", "pairs",
             "timings_ms", "model", "engine", "alarms_active", "fate")  # fmt: skip


# ----------------------------------------------------------------------------- producer
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


def _r(v: float, nd: int = 1) -> float | None:
    v = float(v)
    return round(v, nd) if math.isfinite(v) else None


def frame_tables(res: FrameResult, tracks: list[dict[str, Any]], masks: np.ndarray | None,
                 classes: np.ndarray | None) -> list[dict[str, Any]]:  # fmt: skip
    """``tracks`` (the frame's ``tracks.csv`` rows from the series accumulator: its lines in
    ``res``'s order, then its loops) with what a viewer draws: ``cls``, ``contour_px`` (a
    line's: the outline of the class-0 mask its centre line lies on; a loop's: its fitted
    ellipse) and ``box_px``. ``masks`` (N, H, W) bool and ``classes`` (N,) are the frame's
    detections (None: no outlines for lines)."""
    if len(tracks) != res.n_lines + res.n_loops:
        raise ValueError(f"expected {res.n_lines + res.n_loops} tracks rows (lines, loops), "
                         f"got {len(tracks)}")  # fmt: skip
    line_masks = [] if masks is None else [j for j in range(len(masks)) if int(classes[j]) == 0]
    out = []
    h, w = res.shape
    for i in range(res.n_lines):
        pts = res.line_points_px[i]
        contour: list[list[float]] = []
        if line_masks:
            xs = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
            ys = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
            hits = [int(masks[j][ys, xs].sum()) for j in line_masks]
            if max(hits) > 0:
                contour = contour_of(masks[line_masks[int(np.argmax(hits))]])
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        out.append({**tracks[i], "cls": 0, "contour_px": contour,
                    "box_px": [_r(x0), _r(y0), _r(x1), _r(y1)]})  # fmt: skip
    for j in range(res.n_loops):
        cx, cy = res.loop_center_px[j]
        a, b = res.loop_major_px[j] / 2, res.loop_minor_px[j] / 2
        poly = cv2.ellipse2Poly((round(cx), round(cy)), (max(round(a), 1), max(round(b), 1)),
                                round(float(res.loop_angle_deg[j])), 0, 360, 15)  # fmt: skip
        out.append({**tracks[res.n_lines + j], "cls": 1,
                    "contour_px": poly.astype(float).tolist(),
                    "box_px": [_r(cx - a), _r(cy - a), _r(cx + a), _r(cy + a)]})  # fmt: skip
    return out


#: Columns that only the series' tracker knows (None in a frame no tracker saw).
_TRACKED = ("position_nm", "position_px", "velocity_nm_per_s", "velocity_px_per_frame",
            "velocity_nm_per_s_se", "velocity_window", "growth_nm_per_s",
            "growth_nm_per_s_se")  # fmt: skip


def untracked(msg: dict[str, Any]) -> dict[str, Any]:
    """A one-frame analysis without what only the series' tracker knows: track and pile-up
    ids (-1, as :func:`~loopline.analysis.measure_frame` leaves them), drift and kinematics
    (None: not measured), no track summary, no alarm."""
    tracks = [{**r, "track_id": -1, **({"pileup_id": -1} if r.get("kind") == "line" else {}),
               **{k: None for k in _TRACKED if k in r}} for r in msg["tracks"]]  # fmt: skip
    pairs = [{**p, "track_id": -1, "partner_id": -1, "pileup_id": -1, "spacing_nm_se": None}
             for p in msg["pairs"]]  # fmt: skip
    row = {**msg["row"], "drift_x_px": None, "drift_y_px": None}
    return {**msg, "row": row, "tracks": tracks, "pairs": pairs, "track_summary": [],
            "alarms": []}  # fmt: skip


def frame_header(msg: Mapping[str, Any], *, seq: int, published: float,
                 latency_ms: float | None, counters: dict[str, int],
                 jpeg: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The published header of the measure stage's result message ``msg``."""
    head = {"schema": FRAME_SCHEMA, "seq": seq, "timestamp": msg.get("ts"),
            "published": published, "latency_ms": latency_ms, "jpeg": jpeg,
            "counters": counters}  # fmt: skip
    head.update((k, msg[k]) for k in PUBLISHED if k in msg)
    head.setdefault("alarms_active", [])
    return head


# ----------------------------------------------------------------------------- consumer
@dataclass(frozen=True)
class LineView:
    """A dislocation line, positions in px (x, y) of the frame.

    ``points`` is its centre line (K, 2), ordered; ``contour`` the outline (M, 2) of its
    mask; ``centroid`` (x, y). ``fields`` holds every other number of its ``tracks.csv`` row
    (name: value), so that a column added to the run folder shows without a change here.
    """

    id: int | None
    pileup: int | None
    points: list[list[float]]
    length_nm: float | None
    velocity_nm_s: float | None
    position_nm: float | None = None
    contour: list[list[float]] = field(default_factory=list)
    centroid: list[float] | None = None
    glide_dir: list[float] | None = None
    velocity_nm_s_se: float | None = None  # standard error of velocity_nm_s (its causal fit)
    length_nm_se: float | None = None  # standard error of length_nm
    rank: int | None = None
    fields: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopView:
    """A loop: track id, centre (x, y) px, semi-axes (a, b) px, angle (deg), major axis nm,
    and its outline (M, 2) px."""

    id: int | None
    center: list[float]
    axes: list[float]
    angle_deg: float
    major_nm: float | None
    contour: list[list[float]] = field(default_factory=list)
    major_nm_se: float | None = None  # standard error of major_nm (ellipse fit residuals)
    fields: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PileupView:
    """A pile-up: id, neighbour spacings from the leader (nm), leading velocity (nm/s).

    ``spacings_nm_se`` is parallel to ``spacings_nm`` (None where a pair has no standard error
    yet: the daemon needs four spacings of a tracked pair); ``mean_spacing_nm_se`` is the
    standard error of the mean of ``spacings_nm`` from the pairs' own errors
    (:func:`~loopline.analysis.uncertainty.mean_se`; None while fewer than half have one).
    """

    id: int
    spacings_nm: list[float]
    lead_velocity_nm_s: float | None
    lead_id: int | None = None
    spacings_nm_se: list[float | None] = field(default_factory=list)
    mean_spacing_nm_se: float | None = None
    lead_velocity_nm_s_se: float | None = None


def as_float(v: Any) -> float | None:
    """A finite float, else None (a viewer never fails on a bad value)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def as_int(v: Any) -> int | None:
    f = as_float(v)
    return None if f is None else int(f)


def as_points(v: Any) -> list[list[float]]:
    """[[x, y], ...] of finite numbers (others left out), 0.01 px."""
    if not isinstance(v, Iterable) or isinstance(v, str | bytes | Mapping):
        return []
    out = []
    for p in v:
        try:
            x, y = float(p[0]), float(p[1])
        except (TypeError, ValueError, IndexError, KeyError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append([round(x, 2), round(y, 2)])
    return out


_SHOWN = {"track_id", "pileup_id", "rank", "x_px", "y_px", "glide_x", "glide_y",
          "points_px", "contour_px", "box_px", "cls", "kind"}  # fmt: skip


def _fields(r: Mapping[str, Any]) -> dict[str, float]:
    return {k: f for k, v in r.items() if k not in _SHOWN and not isinstance(v, bool)
            and (f := as_float(v)) is not None}  # fmt: skip


def _line(r: Mapping[str, Any]) -> LineView:
    try:
        pts = as_points(read_points(r.get("points_px")))
    except ValueError:  # not "x y;x y": drawn without its centre line
        pts = []
    gx, gy = as_float(r.get("glide_x")), as_float(r.get("glide_y"))
    cx, cy = as_float(r.get("x_px")), as_float(r.get("y_px"))
    return LineView(
        id=as_int(r.get("track_id")), pileup=as_int(r.get("pileup_id")), points=pts,
        length_nm=as_float(r.get("length_nm")),
        velocity_nm_s=as_float(r.get("velocity_nm_per_s")),
        position_nm=as_float(r.get("position_nm")), contour=as_points(r.get("contour_px")),
        centroid=None if cx is None or cy is None else [round(cx, 2), round(cy, 2)],
        glide_dir=None if gx is None or gy is None else [gx, gy],
        velocity_nm_s_se=as_float(r.get("velocity_nm_per_s_se")),
        length_nm_se=as_float(r.get("length_nm_se")), rank=as_int(r.get("rank")),
        fields=_fields(r),
    )  # fmt: skip


def _loop(r: Mapping[str, Any]) -> LoopView | None:
    cx, cy = as_float(r.get("x_px")), as_float(r.get("y_px"))
    if cx is None or cy is None:
        return None
    major = abs(as_float(r.get("major_px")) or 0.0)
    minor = abs(as_float(r.get("minor_px")) or major)
    return LoopView(
        id=as_int(r.get("track_id")), center=[round(cx, 2), round(cy, 2)],
        axes=[round(major / 2, 2), round(minor / 2, 2)],
        angle_deg=as_float(r.get("angle_deg")) or 0.0, major_nm=as_float(r.get("major_nm")),
        contour=as_points(r.get("contour_px")), major_nm_se=as_float(r.get("major_nm_se")),
        fields=_fields(r),
    )  # fmt: skip


def _pileups(lines: list[LineView], pairs: list[Mapping[str, Any]]) -> list[PileupView]:
    """Pile-ups of one frame: ids from its lines and pairs, spacings from the pairs in
    ``rank`` order (0 = the pair with the leader), the leader the line of rank 0."""
    ids = sorted({p for p in (ln.pileup for ln in lines) if p is not None and p >= 0}
                 | {p for p in (as_int(q.get("pileup_id")) for q in pairs)
                    if p is not None and p >= 0})  # fmt: skip
    out = []
    for pid in ids:
        mine = sorted((q for q in pairs if as_int(q.get("pileup_id")) == pid),
                      key=lambda q: as_int(q.get("rank")) or 0)  # fmt: skip
        sp = [(v, as_float(q.get("spacing_nm_se"))) for q in mine
              if (v := as_float(q.get("spacing_nm"))) is not None]  # fmt: skip
        members = [ln for ln in lines if ln.pileup == pid]
        lead = min(members, key=lambda ln: ln.rank if ln.rank is not None else 0, default=None)
        ses = [e for _, e in sp]
        out.append(PileupView(
            id=pid, spacings_nm=[v for v, _ in sp], spacings_nm_se=ses,
            mean_spacing_nm_se=mean_se(ses),
            lead_id=None if lead is None else lead.id,
            lead_velocity_nm_s=None if lead is None else lead.velocity_nm_s,
            lead_velocity_nm_s_se=None if lead is None else lead.velocity_nm_s_se,
        ))  # fmt: skip
    return out


def read_objects(header: Mapping[str, Any]
                 ) -> tuple[list[LineView], list[LoopView], list[PileupView]]:  # fmt: skip
    """The lines, loops and pile-ups of a frame message (its ``tracks`` and ``pairs``)."""
    rows = [r for r in header.get("tracks") or () if isinstance(r, Mapping)]
    pairs = [q for q in header.get("pairs") or () if isinstance(q, Mapping)]
    lines = [_line(r) for r in rows if r.get("kind") == "line"]
    loops = [v for v in (_loop(r) for r in rows if r.get("kind") == "loop") if v is not None]
    return lines, loops, _pileups(lines, pairs)
