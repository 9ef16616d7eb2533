"""One published result message → one :class:`FrameView`, the only thing the viewers draw.

The daemon publishes, per analysed frame, a multipart message ``[JSON header, overlay JPEG]``
(see ``loopline.daemon.publisher``; the JPEG part is optional). The header carries the
frame's identity, the per-frame measurements (``FrameResult.to_dict()`` of the pipelines) and
the daemon's metrics. This module is the viewers' single adapter to that schema: it accepts
the documented field names and a few spellings of each, so a renamed field shows up as a
blank cell, not a crashed dashboard at the microscope.

Units: positions in px of the published frame, lengths and spacings in nm, velocities in
nm/s, times in s, latencies in ms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FrameView",
    "LineView",
    "LoopView",
    "PileupView",
    "parse_message",
    "to_view",
]

JPEG_MAGIC = b"\xff\xd8"


@dataclass(frozen=True)
class LineView:
    """A dislocation line: track id, pile-up, polyline (K, 2) in px (x, y), length, velocity."""

    id: int | None
    pileup: int | None
    points: list[list[float]]
    length_nm: float | None
    velocity_nm_s: float | None
    position_nm: float | None = None


@dataclass(frozen=True)
class LoopView:
    """A loop: track id, centre (x, y) px, semi-axes (a, b) px, angle (deg), major axis nm."""

    id: int | None
    center: list[float]
    axes: list[float]
    angle_deg: float
    major_nm: float | None


@dataclass(frozen=True)
class PileupView:
    """A pile-up: id, neighbour spacings from the leader (nm), leading velocity (nm/s)."""

    id: int
    spacings_nm: list[float]
    lead_velocity_nm_s: float | None
    lead_id: int | None = None


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_message(parts: list[bytes]) -> tuple[dict[str, Any], bytes | None]:
    """Split a multipart message into (JSON header, JPEG bytes or None).

    A leading topic frame (any part that is not a JSON object) is skipped.

    Raises
    ------
    ValueError
        If no part is a JSON object.
    """
    header: dict[str, Any] | None = None
    jpeg: bytes | None = None
    for p in parts:
        b = bytes(p)
        if b.startswith(JPEG_MAGIC):
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
    return header, jpeg


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
        out.append(
            LineView(
                id=_int(_first(d, "track_id", "track", "id")),
                pileup=_int(_first(d, "pileup", "pileup_id")),
                points=_points(_first(d, "points_px", "points", "polyline", "line", "xy")),
                length_nm=_nm(d, "length", nm_per_px),
                velocity_nm_s=_nm(d, "velocity", nm_per_px, per_s=fps),
                position_nm=_nm(d, "position", nm_per_px),
            )
        )
    return out


def _loops(items: Any, nm_per_px: float | None) -> list[LoopView]:
    out = []
    for d in items or []:
        if not isinstance(d, Mapping):
            continue
        c = _points([_first(d, "center_px", "center", "centre", default=[math.nan, math.nan])])
        if not c:
            continue
        axes = _first(d, "axes_px", "semi_axes_px", "axes")
        if axes is None:
            # full axes (diameters) given: ellipses are drawn with semi-axes
            major = _num(_first(d, "major_px", "major_axis_px", "major"))
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
        spacings = [v for v in (_num(s) for s in (sp or [])) if v is not None]
        pid = _int(_first(d, "id", "pileup", default=i))
        ids = _first(d, "dislocation_ids", "track_ids", "ids", default=[])
        lead = _int(ids[0]) if isinstance(ids, list) and ids else None
        vel = _num(_first(d, "lead_velocity_nm_s", "leading_velocity_nm_s", "lead_velocity"))
        if vel is None:
            lead_line = next((ln for ln in lines if ln.pileup == pid and
                              (lead is None or ln.id == lead)), None)  # fmt: skip
            vel = lead_line.velocity_nm_s if lead_line is not None else None
        out.append(PileupView(id=pid if pid is not None else i, spacings_nm=spacings,
                              lead_velocity_nm_s=vel, lead_id=lead))  # fmt: skip
    return out


def _counters(header: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, int]:
    raw = _first(metrics, "counters") or _first(header, "counters") or {}
    out = {}
    if isinstance(raw, Mapping):
        for k, v in raw.items():
            n = _int(v)
            if n is not None:
                out[str(k)] = n
    return out


def _fps(metrics: Mapping[str, Any]) -> dict[str, float]:
    raw = _first(metrics, "fps", "stage_fps", "fps_per_stage") or {}
    if not isinstance(raw, Mapping):
        v = _num(raw)
        return {} if v is None else {"total": v}
    return {str(k): v for k, v in ((k, _num(v)) for k, v in raw.items()) if v is not None}


def _latency(metrics: Mapping[str, Any]) -> tuple[float | None, float | None]:
    lat = _first(metrics, "latency_ms", "latency")
    if isinstance(lat, Mapping):
        return _num(_first(lat, "p50", "p50_ms")), _num(_first(lat, "p99", "p99_ms"))
    return (_num(_first(metrics, "latency_p50_ms", "p50_ms")),
            _num(_first(metrics, "latency_p99_ms", "p99_ms")))  # fmt: skip


def to_view(header: Mapping[str, Any], *, jpeg: bytes | None = None) -> FrameView:
    """Normalise one published header (and its JPEG, if any) into a :class:`FrameView`.

    Raises
    ------
    ValueError
        If the header has no frame number.
    """
    result = _first(header, "result", "frame_result", default=header)
    metrics = _first(header, "metrics", default={}) or {}
    frame = _int(_first(header, "frame", "frame_index", "index", "frame_id"))
    if frame is None:
        frame = _int(_first(result, "frame", "frame_index", "index", "frame_id"))
    if frame is None:
        raise ValueError(f"header has no frame number (keys: {', '.join(sorted(header))})")
    nm = _num(_first(header, "nm_per_px", "pixel_size_nm")) or _num(
        _first(result, "nm_per_px", "pixel_size_nm"))  # fmt: skip
    shape = _first(header, "shape", default=None) or _first(result, "shape", default=None)
    height = _int(_first(header, "height")) or (_int(shape[0]) if shape else None)
    width = _int(_first(header, "width")) or (_int(shape[1]) if shape else None)
    src_fps = _num(_first(header, "source_fps", "frame_rate")) or _num(_first(metrics, "source_fps"))
    lines = _lines(_first(result, "lines", "dislocations"), nm, src_fps)
    loops = _loops(_first(result, "loops"), nm)
    pileups = _pileups(_first(result, "pileups"), lines, nm)
    if not pileups:
        # derive pile-ups from the lines when the message only carries per-line data
        groups: dict[int, list[LineView]] = {}
        for ln in lines:
            if ln.pileup is not None:
                groups.setdefault(ln.pileup, []).append(ln)
        pileups = [PileupView(id=k, spacings_nm=[], lead_velocity_nm_s=v[0].velocity_nm_s,
                              lead_id=v[0].id) for k, v in sorted(groups.items())]  # fmt: skip
    jpeg_w = _int(_first(header, "jpeg_width"))
    scale = _num(_first(header, "jpeg_scale"))
    if scale is None and jpeg_w and width:
        scale = jpeg_w / width
    n_disl = _int(_first(result, "n_dislocations", "n_lines"))
    n_loops = _int(_first(result, "n_loops"))
    return FrameView(
        frame=frame,
        series=_text(_first(header, "series", "series_id", default="")),
        time_s=_num(_first(header, "t", "time_s", "timestamp", "time")),
        width=width,
        height=height,
        nm_per_px=nm,
        source=_text(_first(header, "source", default="") or _first(metrics, "source")),
        engine=_text(_first(header, "engine", default="") or _first(metrics, "engine")),
        fps=_fps(metrics),
        latency_p50_ms=_latency(metrics)[0],
        latency_p99_ms=_latency(metrics)[1],
        counters=_counters(header, metrics),
        lines=lines,
        loops=loops,
        pileups=pileups,
        n_dislocations=n_disl if n_disl is not None else len(lines),
        n_loops=n_loops if n_loops is not None else len(loops),
        has_jpeg=jpeg is not None,
        jpeg_scale=scale or 1.0,
    )
