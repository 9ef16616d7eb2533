"""One published result message → one :class:`FrameView`, the only thing the viewers draw.

The daemon publishes, per analysed frame, a multipart message ``[JSON header, overlay JPEG]``
(see ``loopline.daemon.publisher``; the JPEG part is optional). The header carries the
frame's identity, the per-frame measurements (``FrameResult.to_dict()`` of the pipelines) and
the daemon's metrics. This module is the viewers' single adapter to that schema: it accepts
the documented field names and a few spellings of each, so a renamed field shows up as a
blank cell, not a crashed dashboard at the microscope. An ``alarm`` message (the daemon's
alarms raised and cleared) becomes an :class:`AlarmEvent` (:func:`to_alarm`); the standard
errors the daemon sends (``*_se``, the loop count's ``n_loops_lo``/``_hi``) are read into the
views beside their values.

Units: positions in px of the published frame, lengths and spacings in nm, velocities in
nm/s, times in s, latencies in ms.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ALARM_STATES",
    "AlarmEvent",
    "FrameView",
    "LineView",
    "LoopView",
    "PileupView",
    "mean_se",
    "parse_message",
    "to_alarm",
    "to_view",
]

JPEG_MAGIC = b"\xff\xd8"


@dataclass(frozen=True)
class LineView:
    """A dislocation line, positions in px (x, y) of the frame.

    ``points`` is the line's polyline (K, 2) when ``ordered``, else unordered skeleton pixels;
    ``contour`` the outline (M, 2) of its mask; ``centroid`` (x, y).
    """

    id: int | None
    pileup: int | None
    points: list[list[float]]
    length_nm: float | None
    velocity_nm_s: float | None
    position_nm: float | None = None
    contour: list[list[float]] = field(default_factory=list)
    centroid: list[float] | None = None
    ordered: bool = True
    glide_dir: list[float] | None = None
    velocity_nm_s_se: float | None = None  # standard error of velocity_nm_s (its causal fit)
    length_nm_se: float | None = None  # standard error of length_nm


@dataclass(frozen=True)
class LoopView:
    """A loop: track id, centre (x, y) px, semi-axes (a, b) px, angle (deg), major axis nm,
    and the outline (M, 2) px of its mask when the stream carries one."""

    id: int | None
    center: list[float]
    axes: list[float]
    angle_deg: float
    major_nm: float | None
    contour: list[list[float]] = field(default_factory=list)
    major_nm_se: float | None = None  # standard error of major_nm (ellipse fit residuals)


@dataclass(frozen=True)
class PileupView:
    """A pile-up: id, neighbour spacings from the leader (nm), leading velocity (nm/s).

    ``spacings_nm_se`` is parallel to ``spacings_nm`` (None where a pair has no standard error
    yet: the daemon needs four spacings of a tracked pair); ``mean_spacing_nm_se`` is the
    standard error of the mean of ``spacings_nm`` from the pairs' own errors
    (:func:`mean_se`; None while fewer than half of the pairs have one).
    """

    id: int
    spacings_nm: list[float]
    lead_velocity_nm_s: float | None
    lead_id: int | None = None
    spacings_nm_se: list[float | None] = field(default_factory=list)
    mean_spacing_nm_se: float | None = None
    lead_velocity_nm_s_se: float | None = None


ALARM_STATES = ("raise", "clear", "active")


@dataclass(frozen=True)
class AlarmEvent:
    """One alarm raised or cleared by the daemon (a ``loopline.alarm/1`` message, one row of
    ``alarms.csv``).

    ``state`` is ``raise`` or ``clear``, or ``active`` for a rule this viewer only knows from a
    frame's ``alarms_active`` (raised before it joined, or its message was lost): then
    ``message`` says so and the numbers are None. ``received`` numbers the alarm messages in
    the order this viewer got them (0: not received as a message).
    """

    rule: str
    state: str
    message: str
    series: str = ""
    frame: int | None = None
    time_s: float | None = None
    value: float | None = None
    threshold: float | None = None
    unit: str = ""
    timestamp: float | None = None  # when the daemon sent it, s since the epoch
    seq: int | None = None  # the daemon's alarm message counter
    received: int = 0
    level: str = ""  # "error" for a raise that stops something (recording_stopped), else ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FrameView:
    """Everything a viewer shows about one published frame."""

    frame: int
    series: str = ""
    time_s: float | None = None
    width: int | None = None
    height: int | None = None
    nm_per_px: float | None = None
    source: str = ""
    engine: str = ""
    fps: dict[str, float] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    lines: list[LineView] = field(default_factory=list)
    loops: list[LoopView] = field(default_factory=list)
    pileups: list[PileupView] = field(default_factory=list)
    n_dislocations: int = 0
    n_loops: int = 0
    has_jpeg: bool = False
    jpeg_scale: float = 1.0  # published JPEG px per frame px (the daemon may downscale)
    jpeg_overlay: bool = False  # the JPEG has the overlay burnt in (else: draw it)
    timestamp: float | None = None  # camera clock, s since the epoch
    series_label: str = ""  # the series id as shown: a date-time for an epoch-like id
    # the daemon's alarm rules raised now (None: the stream does not say, e.g. an older daemon)
    alarms_active: list[str] | None = None
    mean_spacing_nm_se: float | None = None  # series.csv: se of the mean over all pairs
    spacing_sd_nm: float | None = None  # series.csv: spread of the frame's spacings
    n_loops_lo: float | None = None  # series.csv: 68 % Poisson interval of the loop count
    n_loops_hi: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_message(parts: list[bytes]) -> tuple[str, dict[str, Any], bytes | None]:
    """Split a multipart message into (topic, JSON header, JPEG bytes or None).

    The daemon sends ``[topic, header, jpeg?]`` with topics ``frame``, ``metrics``,
    ``series`` and ``alarm``; without a topic part the topic is read from the header's ``schema``
    (``loopline.frame/1`` → ``frame``) and defaults to ``frame``.

    Raises
    ------
    ValueError
        If no part is a JSON object.
    """
    header: dict[str, Any] | None = None
    jpeg: bytes | None = None
    topic = ""
    for i, p in enumerate(parts):
        b = bytes(p)
        if i == 0 and len(b) < 64 and b[:1] != b"{" and not b.startswith(JPEG_MAGIC):
            topic = b.decode("ascii", "replace")
        elif b.startswith(JPEG_MAGIC):
            jpeg = b
        elif header is None and b[:1] == b"{":
            try:
                obj = json.loads(b)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(obj, dict):
                header = obj
    if header is None:
        raise ValueError(f"no JSON header in a {len(parts)}-part message")
    if not topic:
        schema = header.get("schema")
        topic = schema.split(".", 1)[-1].split("/")[0] if isinstance(schema, str) else "frame"
    return topic, header, jpeg


def mean_se(ses: Iterable[float | None]) -> float | None:
    """Standard error of a mean of ``n`` values with independent standard errors ``ses``:
    ``sqrt(sum se²) / n``. Values without one yet (a pair tracked for fewer than four frames)
    count with the mean variance of the others; None when fewer than half have one.

    >>> mean_se([3.0, 4.0])
    2.5
    >>> mean_se([3.0, 4.0, None]) == mean_se([3.0, 4.0, 12.5 ** 0.5])
    True
    >>> mean_se([1.0, None, None]) is None
    True
    """
    vals = [_num(v) for v in ses]
    known = [v for v in vals if v is not None]
    if not known or 2 * len(known) < len(vals):
        return None
    return math.sqrt(sum(v * v for v in known) / len(known) / len(vals))


def to_alarm(header: Mapping[str, Any], *, received: int = 0) -> AlarmEvent:
    """One ``alarm`` message (``loopline.alarm/1``) as an :class:`AlarmEvent`.

    Raises
    ------
    ValueError
        If the header names no rule, or its ``state`` is not ``raise`` or ``clear``.
    """
    rule = _text(_first(header, "rule", default="")).strip()
    state = _text(_first(header, "state", default="")).strip().lower()
    if not rule:
        raise ValueError(f"alarm message without a rule (keys: {', '.join(sorted(header))})")
    if state not in ("raise", "clear"):
        raise ValueError(f"alarm {rule!r}: state must be 'raise' or 'clear', got {state!r}")
    message = _text(_first(header, "message", default="")).replace("\n", " ").strip()
    return AlarmEvent(
        rule=rule, state=state, message=message or f"{rule} {state}d",
        series=_text(_first(header, "series", default="")), frame=_int(header.get("frame")),
        time_s=_num(header.get("time_s")), value=_num(header.get("value")),
        threshold=_num(header.get("threshold")), unit=_text(header.get("unit")),
        timestamp=_num(header.get("timestamp")), seq=_int(header.get("seq")), received=received,
        level=_text(header.get("level")),
    )  # fmt: skip


def _first(d: Mapping[str, Any] | None, *keys: str, default: Any = None) -> Any:
    if not isinstance(d, Mapping):
        return default
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = _num(v)
    return None if f is None else int(f)


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, Mapping):
        bits = [str(v[k]) for k in ("name", "kind", "protocol", "engine", "model", "endpoint",
                                    "path", "device") if v.get(k)]  # fmt: skip
        return " ".join(dict.fromkeys(bits))
    return str(v)


def _points(v: Any) -> list[list[float]]:
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


def _nm(obj: Mapping[str, Any], base: str, nm_per_px: float | None, *, per_s: float | None = None
        ) -> float | None:  # fmt: skip
    """``base_nm`` (or ``base_nm_s``) if given, else ``base_px`` converted with the pixel size."""
    v = _num(_first(obj, f"{base}_nm", f"{base}_nm_s", f"{base}_nm_per_s"))
    if v is not None:
        return v
    px = _num(_first(obj, f"{base}_px", f"{base}_px_s", f"{base}_px_per_s"))
    if px is not None and nm_per_px:
        return px * nm_per_px
    px = _num(_first(obj, f"{base}_px_per_frame"))
    if px is not None and nm_per_px and per_s:
        return px * nm_per_px * per_s
    return _num(_first(obj, base))


def _lines(items: Any, nm_per_px: float | None, fps: float | None) -> list[LineView]:
    out = []
    for d in items or []:
        if not isinstance(d, Mapping):
            continue
        pts = _points(_first(d, "points_px", "points", "polyline", "line", "xy"))
        ordered = bool(pts)
        if not pts:  # the daemon's instances: a centre line, or skeleton pixels (fallback)
            pts = _points(_first(d, "skeleton_px", "skeleton"))
            ordered = _is_polyline(pts)
        cen = _points([_first(d, "centroid_px", "centroid", default=[math.nan, math.nan])])
        out.append(
            LineView(
                id=_int(_first(d, "track_id", "track", "id")),
                pileup=_int(_first(d, "pileup", "pileup_id")),
                points=pts,
                length_nm=_nm(d, "length", nm_per_px),
                velocity_nm_s=_nm(d, "velocity", nm_per_px, per_s=fps),
                position_nm=_nm(d, "position", nm_per_px),
                contour=_points(_first(d, "contour_px", "contour", "polygon")),
                centroid=cen[0] if cen else None,
                ordered=ordered,
                glide_dir=(_points([d["glide_dir"]]) or [None])[0] if d.get("glide_dir") else None,
                velocity_nm_s_se=_num(_first(d, "velocity_nm_s_se", "velocity_nm_per_s_se")),
                length_nm_se=_num(_first(d, "length_nm_se")),
            )
        )
    return out


def _is_line(d: Mapping[str, Any]) -> bool:
    name = _first(d, "class", "class_name", "kind")
    if isinstance(name, str):
        return name.lower() in ("dislocation", "line", "dislocations")
    return _int(_first(d, "cls", "class_id", default=0)) == 0


def _loops(items: Any, nm_per_px: float | None) -> list[LoopView]:
    out = []
    for d in items or []:
        if not isinstance(d, Mapping):
            continue
        c = _points([_first(d, "center_px", "center", "centre", "centroid_px", "centroid",
                            default=[math.nan, math.nan])])  # fmt: skip
        if not c:
            continue
        axes = _first(d, "axes_px", "semi_axes_px", "axes")
        if axes is None:
            # full axes (diameters) given: ellipses are drawn with semi-axes
            major = _num(_first(d, "major_px", "major_axis_px", "major", "length_px"))
            minor = _num(_first(d, "minor_px", "minor_axis_px", "minor", default=major))
            axes = [(major or 0.0) / 2, (minor or 0.0) / 2]
        ax = [abs(_num(a) or 0.0) for a in list(axes)[:2]] + [0.0, 0.0]
        major_nm = _num(_first(d, "major_nm", "major_axis_nm"))
        if major_nm is None and nm_per_px:
            major_nm = 2 * max(ax[0], ax[1]) * nm_per_px
        out.append(
            LoopView(
                id=_int(_first(d, "track_id", "track", "id")),
                center=c[0],
                axes=[round(ax[0], 2), round(ax[1], 2)],
                angle_deg=_num(_first(d, "angle_deg", "angle", default=0.0)) or 0.0,
                major_nm=major_nm,
                contour=_points(_first(d, "contour_px", "contour", "polygon")),
                major_nm_se=_num(_first(d, "major_nm_se", "length_nm_se")),
            )
        )
    return out


def _pileups(items: Any, lines: list[LineView], nm_per_px: float | None) -> list[PileupView]:
    out = []
    for i, d in enumerate(items or []):
        if not isinstance(d, Mapping):
            continue
        sp = _first(d, "spacings_nm", "spacing_nm", "spacings")
        if sp is None and nm_per_px:
            px = _first(d, "spacings_px", "spacing_px")
            sp = None if px is None else [(_num(v) or math.nan) * nm_per_px for v in px]
        sp = sp if isinstance(sp, list) else []
        raw_se = d.get("spacings_nm_se")
        raw_se = raw_se if isinstance(raw_se, list) and len(raw_se) == len(sp) else [None] * len(sp)
        kept = [(v, _num(e)) for v, e in zip((_num(s) for s in sp), raw_se, strict=True)
                if v is not None]  # fmt: skip
        spacings = [v for v, _ in kept]
        spacings_se = [e for _, e in kept]
        pid = _int(_first(d, "id", "pileup", default=i))
        ids = _first(d, "dislocation_ids", "track_ids", "ids", default=[])
        lead = _int(ids[0]) if isinstance(ids, list) and ids else None
        vel = _num(_first(d, "lead_velocity_nm_s", "leading_velocity_nm_s", "lead_velocity"))
        vel_se = _num(_first(d, "lead_velocity_nm_s_se"))
        if vel is None:
            lead_line = next((ln for ln in lines if ln.pileup == pid and
                              (lead is None or ln.id == lead)), None)  # fmt: skip
            vel = lead_line.velocity_nm_s if lead_line is not None else None
            vel_se = lead_line.velocity_nm_s_se if lead_line is not None else None
        out.append(PileupView(id=pid if pid is not None else i, spacings_nm=spacings,
                              lead_velocity_nm_s=vel, lead_id=lead, spacings_nm_se=spacings_se,
                              mean_spacing_nm_se=mean_se(spacings_se),
                              lead_velocity_nm_s_se=vel_se))  # fmt: skip
    return out


def _counters(header: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, int]:
    # the frame's own counters are the freshest; the metrics message adds the rest
    out: dict[str, int] = {}
    for raw in (_first(metrics, "counters"), _first(header, "counters")):
        if isinstance(raw, Mapping):
            for k, v in raw.items():
                n = _int(v)
                if n is not None:
                    out[str(k)] = n
    return out


def _source_from_series(info: Mapping[str, Any]) -> str:
    if not info:
        return ""
    shape = info.get("shape")
    dims = "×".join(str(x) for x in shape) if isinstance(shape, list) else ""
    return " ".join(x for x in (f"series {info.get('series', '')}", dims,
                                str(info.get("dtype") or "")) if x.strip())  # fmt: skip


def _num_map(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, v in ((k, _num(v)) for k, v in raw.items()) if v is not None}


def _fps(metrics: Mapping[str, Any]) -> dict[str, float]:
    raw = _first(metrics, "fps", "stage_fps", "fps_per_stage") or {}
    if not isinstance(raw, Mapping):
        v = _num(raw)
        return {} if v is None else {"total": v}
    return _num_map(raw)


def _latency(metrics: Mapping[str, Any]) -> tuple[float | None, float | None]:
    lat = _first(metrics, "latency_ms", "latency")
    if isinstance(lat, Mapping):
        return _num(_first(lat, "p50", "p50_ms")), _num(_first(lat, "p99", "p99_ms"))
    return (_num(_first(metrics, "latency_p50_ms", "p50_ms")),
            _num(_first(metrics, "latency_p99_ms", "p99_ms")))  # fmt: skip


def _rows(x: Any) -> list[dict[str, Any]] | None:
    """A list of per-object dicts from either a list of dicts or a dict of columns."""
    if isinstance(x, Mapping):
        cols = {k: v for k, v in x.items() if isinstance(v, list)}
        n = max((len(v) for v in cols.values()), default=0)
        return [{k: v[i] for k, v in cols.items() if i < len(v)} for i in range(n)]
    if isinstance(x, list):
        return [d for d in x if isinstance(d, Mapping)]
    return None


def _pair_spacings_nm(pairs: list[Mapping[str, Any]], pileup: int, nm: float | None
                      ) -> list[tuple[float | None, float | None]]:  # fmt: skip
    """(spacing, its standard error) in nm of one pile-up's pairs, from its leader back
    (``rank`` order); a pair with only ``spacing_px`` is converted with ``nm`` (NaN where it
    has none, None without ``nm``); the se is None where the pair has none."""
    mine = sorted((q for q in pairs if _int(q.get("pileup")) == pileup),
                  key=lambda q: _int(q.get("rank")) or 0)  # fmt: skip
    out: list[tuple[float | None, float | None]] = []
    for q in mine:
        v = _num(q.get("spacing_nm"))
        if v is None and nm:
            v = (_num(q.get("spacing_px")) or math.nan) * nm
        out.append((v, _num(_first(q, "spacing_nm_se"))))
    return out


def _columnar_pileups(result: Mapping[str, Any], line_rows: list[dict[str, Any]],
                      nm: float | None) -> list[dict[str, Any]]:  # fmt: skip
    """Pile-ups of a ``FrameResult.to_dict()``: spacings from its pairs, leader from rank 0.

    There, ``lines.pileup`` and ``pairs.pileup`` index the ``pileups`` columns; this turns
    them into the pile-up ids (persistent after tracking) the viewers show.
    """
    pu = _rows(result.get("pileups")) or []
    pairs = _rows(result.get("pairs")) or []
    out = []
    for idx, p in enumerate(pu):
        sp = _pair_spacings_nm(pairs, idx, nm)
        lead = next((ln for ln in line_rows
                     if _int(ln.get("pileup")) == idx and _int(ln.get("rank")) == 0), None)
        sp = [(v, e) for v, e in sp if v is not None]
        out.append({"id": _int(p.get("id")) if p.get("id") is not None else idx,
                    "spacings_nm": [v for v, _ in sp], "spacings_nm_se": [e for _, e in sp],
                    "dislocation_ids": [] if lead is None else [lead.get("track_id")],
                    "glide_dir": p.get("glide_dir")})  # fmt: skip
    return out


def series_label(series: str, *, source: str = "") -> str:
    """The series id as a person reads it: an id of 10 digits (or 13, ms) that is a plausible
    UNIX time (2001-2286) is shown as its UTC date-time, followed by the source's name when
    known; any other id as it is.

    >>> series_label("1716400000")
    '2024-05-22 17:46:40 UTC'
    >>> series_label("s0001")
    's0001'
    """
    text = str(series)
    digits = text.isdigit() and len(text) in (10, 13)
    if not digits:
        return text
    t = int(text) / (1000.0 if len(text) == 13 else 1.0)
    if not 1e9 <= t < 1e10:
        return text
    when = _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{when} · {source}" if source else when


def to_view(header: Mapping[str, Any], *, jpeg: bytes | None = None,
            metrics: Mapping[str, Any] | None = None,
            series_info: Mapping[str, Any] | None = None) -> FrameView:  # fmt: skip
    """Normalise one published header (and its JPEG, if any) into a :class:`FrameView`.

    Understood layouts: a header whose ``result`` is a ``FrameResult.to_dict()`` (columns per
    object kind), lists of per-object dicts under ``lines``/``loops``/``pileups``, and the
    daemon's per-instance list ``instances`` (class, track id, contour, skeleton, centroid);
    when both a ``result`` and ``instances`` are present the instances' mask contours are
    attached to the result's lines and loops by track id. ``metrics`` is the newest
    ``metrics`` message (fps per stage, latency percentiles, counters) and ``series_info`` the
    newest ``series`` start message, both published apart from the frames.

    Raises
    ------
    ValueError
        If the header has no frame number.
    """
    result = _first(header, "result", "frame_result", default=header)
    if not isinstance(result, Mapping):
        result = header
    row = _first(header, "row", default={}) or {}
    metrics = metrics or _first(header, "metrics", default={}) or {}
    series_info = series_info or {}
    frame = _int(_first(header, "frame", "frame_index", "index", "frame_id"))
    if frame is None:
        frame = _int(_first(result, "frame", "frame_index", "index", "frame_id"))
    if frame is None:
        raise ValueError(f"header has no frame number (keys: {', '.join(sorted(header))})")
    nm = (_num(_first(header, "nm_per_px", "px_nm", "pixel_size_nm"))
          or _num(_first(result, "nm_per_px", "px_nm", "pixel_size_nm"))
          or _num(_first(series_info, "pixel_size_nm", "px_nm")))  # fmt: skip
    shape = _first(header, "shape", default=None) or _first(result, "shape", default=None)
    height = _int(_first(header, "height")) or (_int(shape[0]) if shape else None)
    width = _int(_first(header, "width")) or (_int(shape[1]) if shape else None)
    src_fps = _num(_first(header, "source_fps", "frame_rate")) or _num(
        _first(metrics, "source_fps"))  # fmt: skip

    line_rows = _rows(_first(result, "lines", "dislocations"))
    loop_rows = _rows(_first(result, "loops"))
    pileup_rows = _rows(_first(result, "pileups"))
    if isinstance(result.get("lines"), Mapping):  # FrameResult.to_dict(): columns
        lines_idx = line_rows or []
        pileup_rows = _columnar_pileups(result, lines_idx, nm)
        for ln in lines_idx:  # pile-up index -> pile-up id
            k = _int(ln.get("pileup"))
            ok = k is not None and 0 <= k < len(pileup_rows)
            ln["pileup"] = pileup_rows[k]["id"] if ok else None
            ln["glide_dir"] = pileup_rows[k]["glide_dir"] if ok else None
    instances = _rows(_first(header, "instances") or _first(result, "instances")) or []
    if nm is None:
        # no pixel size in the header: the daemon's instances may still carry px and nm
        for d in instances:
            px, n_ = _num(d.get("length_px")), _num(d.get("length_nm"))
            if px and n_:
                nm = n_ / px
                break
    inst_lines = [d for d in instances if _is_line(d)]
    inst_loops = [d for d in instances if not _is_line(d)]
    if line_rows is None and loop_rows is None:
        line_rows, loop_rows = inst_lines, inst_loops
        if pileup_rows is None:
            pileup_rows = _instance_pileups(inst_lines, _rows(header.get("pairs")) or [], nm)
    else:
        _attach_contours(line_rows or [], inst_lines)
        _attach_contours(loop_rows or [], inst_loops)
    lines = _lines(line_rows, nm, src_fps)
    loops = _loops(loop_rows, nm)
    pileups = _pileups(pileup_rows, lines, nm)
    if not pileups:
        # derive pile-ups from the lines when the message only carries per-line data
        groups: dict[int, list[LineView]] = {}
        for ln in lines:
            if ln.pileup is not None:
                groups.setdefault(ln.pileup, []).append(ln)
        pileups = [PileupView(id=k, spacings_nm=[], lead_velocity_nm_s=v[0].velocity_nm_s,
                              lead_id=v[0].id, lead_velocity_nm_s_se=v[0].velocity_nm_s_se)
                   for k, v in sorted(groups.items())]  # fmt: skip
    jpeg_info = header.get("jpeg")
    jpeg_w = _int(_first(header, "jpeg_width")) or _int(_first(jpeg_info, "width"))
    scale = _num(_first(header, "jpeg_scale")) or _num(_first(jpeg_info, "scale"))
    if scale is None and jpeg_w and width:
        scale = jpeg_w / width
    n_disl = _int(_first(row, "n_dislocations")) if row else None
    n_disl = n_disl if n_disl is not None else _int(_first(result, "n_dislocations", "n_lines"))
    n_loops = _int(_first(row, "n_loops")) if row else None
    n_loops = n_loops if n_loops is not None else _int(_first(result, "n_loops"))
    timings = _first(header, "timings_ms") or _first(result, "timings_ms") or {}
    series = _text(_first(header, "series", "series_id", default=""))
    source = _text(_first(header, "source", default="") or _first(metrics, "source")
                   or _source_from_series(series_info))  # fmt: skip
    return FrameView(
        frame=frame,
        series=series,
        # the frame's own time (never the camera's epoch clock: see ViewState for that)
        time_s=_num(_first(header, "time_s", "t", "time")),
        width=width,
        height=height,
        nm_per_px=nm,
        source=source,
        engine=_text(_first(header, "engine", default="") or _first(metrics, "engine")),
        fps=_fps(metrics),
        stage_ms=_num_map(timings),
        latency_ms=_num(_first(header, "latency_ms")),
        latency_p50_ms=_latency(metrics)[0] or _latency(header)[0],
        latency_p99_ms=_latency(metrics)[1] or _latency(header)[1],
        counters=_counters(header, metrics),
        lines=lines,
        loops=loops,
        pileups=pileups,
        n_dislocations=n_disl if n_disl is not None else len(lines),
        n_loops=n_loops if n_loops is not None else len(loops),
        has_jpeg=jpeg is not None,
        jpeg_scale=scale or 1.0,
        jpeg_overlay=isinstance(jpeg_info, Mapping) and jpeg_info.get("overlay") is True,
        timestamp=_num(_first(header, "timestamp")),
        series_label=series_label(series),
        alarms_active=_rules(header.get("alarms_active")),
        mean_spacing_nm_se=_num(_first(row, "mean_spacing_nm_se")),
        spacing_sd_nm=_num(_first(row, "spacing_sd_nm")),
        n_loops_lo=_num(_first(row, "n_loops_lo")),
        n_loops_hi=_num(_first(row, "n_loops_hi")),
    )


def _rules(v: Any) -> list[str] | None:
    """``alarms_active``: rule names (None where the header has no such list)."""
    if not isinstance(v, list):
        return None
    return [str(r) for r in v if isinstance(r, str) and r]


def _instance_pileups(lines: list[dict[str, Any]], pairs: list[dict[str, Any]],
                      nm: float | None) -> list[dict[str, Any]]:  # fmt: skip
    """Pile-ups of the daemon's message: instances carry ``pileup``/``rank``, ``pairs`` the
    neighbour spacings (``rank`` 0 = the pair with the leader)."""
    ids = sorted({p for p in (_int(d.get("pileup")) for d in lines) if p is not None}
                 | {p for p in (_int(q.get("pileup")) for q in pairs) if p is not None})
    out = []
    for pid in ids:
        sp = [(v, e) for v, e in _pair_spacings_nm(pairs, pid, nm)
              if v is not None and math.isfinite(v)]  # fmt: skip
        members = [d for d in lines if _int(d.get("pileup")) == pid]
        lead = min(members, key=lambda d: _int(d.get("rank")) or 0, default=None)
        out.append({"id": pid, "spacings_nm": [v for v, _ in sp],
                    "spacings_nm_se": [e for _, e in sp],
                    "dislocation_ids": [] if lead is None else [_first(lead, "track_id", "id")]})
    return out


def _is_polyline(pts: list[list[float]]) -> bool:
    """True when consecutive points follow the line (no jumps), as a resampled centre line
    does; skeleton pixels listed in raster order jump where the line recrosses a row."""
    if len(pts) < 3:
        return True
    a = np.asarray(pts)
    step = np.hypot(*np.diff(a, axis=0).T)
    return bool(step.max() <= 3 * np.median(step) + 2.0)


def _attach_contours(rows: list[dict[str, Any]], instances: list[dict[str, Any]]) -> None:
    by_id = {_int(_first(d, "track_id", "id")): d for d in instances}
    for r in rows:
        inst = by_id.get(_int(_first(r, "track_id", "id")))
        if inst is not None and "contour" not in r and "contour_px" not in r:
            r["contour"] = inst.get("contour") or inst.get("contour_px") or []
