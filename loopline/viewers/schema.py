"""One published result message → one :class:`FrameView`, the only thing the viewers draw.

The daemon publishes, per analysed frame, a multipart message ``[b"frame", JSON header,
JPEG?]``: the frame message of :mod:`loopline.analysis.message`, which defines its layout
for the producer and for this reader alike (:func:`~loopline.analysis.message.read_objects`
gives its lines, loops and pile-ups). Each field has one name; a value that is missing or
not a number reads as None, so a damaged message shows blank cells, not a crashed dashboard
at the microscope. The ``metrics`` message (:mod:`loopline.daemon.metrics`) adds fps per
stage, latency percentiles and counters; an ``alarm`` message (the daemon's alarms raised and
cleared) becomes an :class:`AlarmEvent` (:func:`to_alarm`).

Units: positions in px of the published frame, lengths and spacings in nm, velocities in
nm/s, times in s, latencies in ms.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..analysis.message import (
    LineView,
    LoopView,
    PileupView,
    as_float,
    as_int,
    read_objects,
)

__all__ = [
    "ALARM_STATES",
    "AlarmEvent",
    "FrameView",
    "parse_message",
    "to_alarm",
    "to_view",
]

JPEG_MAGIC = b"\xff\xd8"


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
    (``loopline.frame/2`` → ``frame``) and defaults to ``frame``.

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


def to_alarm(header: Mapping[str, Any], *, received: int = 0) -> AlarmEvent:
    """One ``alarm`` message (``loopline.alarm/1``) as an :class:`AlarmEvent`.

    Raises
    ------
    ValueError
        If the header names no rule, or its ``state`` is not ``raise`` or ``clear``.
    """
    rule = _text(header.get("rule")).strip()
    state = _text(header.get("state")).strip().lower()
    if not rule:
        raise ValueError(f"alarm message without a rule (keys: {', '.join(sorted(header))})")
    if state not in ("raise", "clear"):
        raise ValueError(f"alarm {rule!r}: state must be 'raise' or 'clear', got {state!r}")
    message = _text(header.get("message")).replace("\n", " ").strip()
    return AlarmEvent(
        rule=rule, state=state, message=message or f"{rule} {state}d",
        series=_text(header.get("series")), frame=as_int(header.get("frame")),
        time_s=as_float(header.get("time_s")), value=as_float(header.get("value")),
        threshold=as_float(header.get("threshold")), unit=_text(header.get("unit")),
        timestamp=as_float(header.get("timestamp")), seq=as_int(header.get("seq")),
        received=received,
        level=_text(header.get("level")),
    )  # fmt: skip


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _num_map(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, v in ((k, as_float(v)) for k, v in raw.items()) if v is not None}


def _counters(header: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, int]:
    # the frame's own counters are the freshest; the metrics message adds the rest
    out: dict[str, int] = {}
    for raw in (metrics.get("counters"), header.get("counters")):
        if isinstance(raw, Mapping):
            out.update((str(k), n) for k, n in ((k, as_int(v)) for k, v in raw.items())
                       if n is not None)  # fmt: skip
    return out


def _source(metrics: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """The metrics message's ``source`` ({protocol, endpoint}), else the series start's."""
    src = metrics.get("source")
    if isinstance(src, Mapping):
        return " ".join(str(src[k]) for k in ("protocol", "endpoint") if src.get(k))
    if not info:
        return ""
    shape = info.get("shape")
    dims = "×".join(str(x) for x in shape) if isinstance(shape, list) else ""
    return " ".join(x for x in (f"series {info.get('series', '')}", dims,
                                str(info.get("dtype") or "")) if x.strip())  # fmt: skip


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
    """One published frame header (and its JPEG, if any) as a :class:`FrameView`.

    ``metrics`` is the newest ``metrics`` message (fps per stage, latency percentiles,
    counters) and ``series_info`` the newest ``series`` start message, both published apart
    from the frames.

    Raises
    ------
    ValueError
        If the header has no frame number (``index``).
    """
    metrics = metrics or {}
    series_info = series_info or {}
    row = header.get("row") if isinstance(header.get("row"), Mapping) else {}
    frame = as_int(header.get("index"))
    if frame is None:
        raise ValueError(f"expected a frame message with an index, got keys "
                         f"{', '.join(sorted(header)) or '(none)'}")  # fmt: skip
    nm = as_float(header.get("px_nm")) or as_float(series_info.get("pixel_size_nm"))
    shape = header.get("shape") if isinstance(header.get("shape"), list) else None
    height, width = (as_int(shape[0]), as_int(shape[1])) if shape and len(shape) == 2 \
        else (None, None)  # fmt: skip
    lines, loops, pileups = read_objects(header)
    jpeg_info = header.get("jpeg") if isinstance(header.get("jpeg"), Mapping) else {}
    scale = as_float(jpeg_info.get("scale"))
    lat = metrics.get("latency_ms") if isinstance(metrics.get("latency_ms"), Mapping) else {}
    n_disl, n_loops = as_int(row.get("n_dislocations")), as_int(row.get("n_loops"))
    series = _text(header.get("series"))
    return FrameView(
        frame=frame,
        series=series,
        # the frame's own time (never the camera's epoch clock: see ViewState for that)
        time_s=as_float(header.get("time_s")),
        width=width,
        height=height,
        nm_per_px=nm,
        source=_source(metrics, series_info),
        engine=_text(header.get("engine") or metrics.get("engine")),
        fps=_num_map(metrics.get("fps")),
        stage_ms=_num_map(header.get("timings_ms")),
        latency_ms=as_float(header.get("latency_ms")),
        latency_p50_ms=as_float(lat.get("p50")),
        latency_p99_ms=as_float(lat.get("p99")),
        counters=_counters(header, metrics),
        lines=lines,
        loops=loops,
        pileups=pileups,
        n_dislocations=n_disl if n_disl is not None else len(lines),
        n_loops=n_loops if n_loops is not None else len(loops),
        has_jpeg=jpeg is not None,
        jpeg_scale=scale or 1.0,
        jpeg_overlay=jpeg_info.get("overlay") is True,
        timestamp=as_float(header.get("timestamp")),
        series_label=series_label(series),
        alarms_active=_rules(header.get("alarms_active")),
        mean_spacing_nm_se=as_float(row.get("mean_spacing_nm_se")),
        spacing_sd_nm=as_float(row.get("spacing_sd_nm")),
        n_loops_lo=as_float(row.get("n_loops_lo")),
        n_loops_hi=as_float(row.get("n_loops_hi")),
    )


def _rules(v: Any) -> list[str] | None:
    """``alarms_active``: rule names (None where the header has no such list)."""
    if not isinstance(v, list):
        return None
    return [str(r) for r in v if isinstance(r, str) and r]
