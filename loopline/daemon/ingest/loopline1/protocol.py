"""The loopline frame protocol over ZeroMQ (version ``loopline/1``).

Transport and pairing
---------------------
The sender (the camera PC, or ``loopline simulate``) **binds** a PUSH socket (or PUB) and the
daemon **connects** a PULL (or SUB) socket to the same URL, as with a detector's data port::

    loopline simulate --from synth --endpoint tcp://127.0.0.1:5555      # binds
    loopline serve --endpoint tcp://127.0.0.1:5555                       # connects

PUSH/PULL is the default: nothing is lost while the daemon keeps up, and the sender stalls
(its high-water mark) instead of the daemon dropping silently. PUB/SUB lets several viewers
listen but drops messages at the high-water mark and loses what was sent before a
subscriber joined. ``--connect`` on the simulator and ``bind=True`` on a source reverse the
roles (e.g. for a camera PC that can only make outgoing connections).

Messages
--------
Every message is a ZeroMQ multipart message whose first part is a UTF-8 JSON object (the
header). A ``frame`` message has exactly two parts, ``[header, pixels]``; ``series-start``
and ``series-end`` messages have exactly one part, ``[header]``. No pickle, ever.

Header fields (unknown top-level keys are rejected; put extras in ``meta``):

================  ===========  ==================================================================
field             messages     value
================  ===========  ==================================================================
``protocol``      all          ``"loopline/1"``
``type``          all          ``"series-start"``, ``"frame"`` or ``"series-end"``
``series``        all          series id: a non-empty string (or an integer, read as its string)
``timestamp``     all          s since the UNIX epoch (float), when the frame was acquired
``index``         frame        frame index in the series, integer >= 0
``dtype``         frame        ``"uint8"``, ``"uint16"`` or ``"float32"`` (little-endian);
                  start (opt)  optional on series-start, announcing the series' dtype
``shape``         frame        ``[H, W]``, positive integers (rows, columns);
                  start (opt)  optional on series-start
``pixel_size_nm`` optional     specimen pixel size in nm (positive number) or null
``frames``        start, end   optional: frames announced (start) or sent (end), integer >= 0
``meta``          optional     a JSON object of free metadata
================  ===========  ==================================================================

The pixel part of a frame holds ``H * W * itemsize`` bytes, row-major (C order),
little-endian, without padding or compression.

Example (a 512 x 512 8-bit frame)::

    [b'{"protocol":"loopline/1","type":"frame","series":"run-7","index":41,'
     b'"timestamp":1717171717.04,"dtype":"uint8","shape":[512,512],"pixel_size_nm":2.0}',
     <262144 bytes>]

Validation
----------
:func:`decode` checks everything above and raises :class:`MalformedMessage` (one exception
type, a one-line message naming what was expected and what came) for a wrong part count,
undecodable or non-object JSON, a missing or unknown field, a wrong type or value, an
unknown dtype, or a pixel buffer whose length does not match ``shape`` and ``dtype``.
Receivers count these (``counters["malformed"]``) and go on. A message that decodes can
still make no sense (an index going back, a timestamp of 1e308): what the daemon does with
each such frame is defined, and counted, in :mod:`loopline.daemon.validate`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..base import Frame, SeriesEnd, SeriesStart

__all__ = [
    "DEFAULT_ENDPOINT",
    "DTYPES",
    "MAX_HEADER_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL",
    "MalformedMessage",
    "decode",
    "encode_frame",
    "encode_series_end",
    "encode_series_start",
]

PROTOCOL = "loopline/1"
#: Where ``loopline simulate`` binds and ``loopline serve`` connects by default.
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MESSAGE_TYPES: tuple[str, ...] = ("series-start", "frame", "series-end")
#: Wire dtypes (always little-endian).
DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}
MAX_HEADER_BYTES = 64 * 1024
MAX_SIDE = 1 << 16  # px; larger sides are rejected as implausible
MAX_SERIES_CHARS = 256

_ALLOWED = {
    "series-start": {"protocol", "type", "series", "timestamp", "dtype", "shape",
                     "pixel_size_nm", "frames", "meta"},
    "frame": {"protocol", "type", "series", "timestamp", "index", "dtype", "shape",
              "pixel_size_nm", "meta"},
    "series-end": {"protocol", "type", "series", "timestamp", "frames", "meta"},
}  # fmt: skip
_REQUIRED = {
    "series-start": ("protocol", "type", "series", "timestamp"),
    "frame": ("protocol", "type", "series", "timestamp", "index", "dtype", "shape"),
    "series-end": ("protocol", "type", "series", "timestamp"),
}
_PARTS = {"series-start": 1, "frame": 2, "series-end": 1}


class MalformedMessage(ValueError):
    """A message that does not follow its protocol; the text says what was expected."""


# ---------------------------------------------------------------------------------- encode


def _base(kind: str, series: str, timestamp: float | None, meta: Mapping | None) -> dict:
    h: dict[str, Any] = {
        "protocol": PROTOCOL,
        "type": kind,
        "series": str(series),
        "timestamp": float(time.time() if timestamp is None else timestamp),
    }
    if meta:
        h["meta"] = dict(meta)
    return h


def _dumps(h: dict) -> bytes:
    return json.dumps(h, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_series_start(
    series: str,
    *,
    timestamp: float | None = None,
    shape: tuple[int, int] | None = None,
    dtype: str | None = None,
    pixel_size_nm: float | None = None,
    frames: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """The one-part ``series-start`` message."""
    h = _base("series-start", series, timestamp, meta)
    if shape is not None:
        h["shape"] = [int(shape[0]), int(shape[1])]
    if dtype is not None:
        h["dtype"] = str(dtype)
    if pixel_size_nm is not None:
        h["pixel_size_nm"] = float(pixel_size_nm)
    if frames is not None:
        h["frames"] = int(frames)
    return [_dumps(h)]


def encode_frame(
    series: str,
    index: int,
    image: np.ndarray,
    *,
    timestamp: float | None = None,
    pixel_size_nm: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[bytes | memoryview]:
    """The two-part ``frame`` message: ``[header, pixels]``.

    Parameters
    ----------
    image : ndarray, shape (H, W), uint8 | uint16 | float32
        Sent as little-endian, C order (copied only if it is not already).
    """
    image = np.asarray(image)
    name = image.dtype.name
    if name not in DTYPES or image.ndim != 2:
        raise ValueError(
            f"image must have shape (H, W) and dtype uint8, uint16 or float32, "
            f"got shape {image.shape} dtype {image.dtype}"
        )
    wire = np.ascontiguousarray(image, dtype=DTYPES[name])
    h = _base("frame", series, timestamp, meta)
    h["index"] = int(index)
    h["dtype"] = name
    h["shape"] = [int(wire.shape[0]), int(wire.shape[1])]
    if pixel_size_nm is not None:
        h["pixel_size_nm"] = float(pixel_size_nm)
    return [_dumps(h), memoryview(wire).cast("B")]


def encode_series_end(
    series: str,
    *,
    timestamp: float | None = None,
    frames: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """The one-part ``series-end`` message; ``frames`` is how many frames were sent."""
    h = _base("series-end", series, timestamp, meta)
    if frames is not None:
        h["frames"] = int(frames)
    return [_dumps(h)]


# ---------------------------------------------------------------------------------- decode


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _int(h: Mapping, key: str, *, lo: int = 0, hi: int | None = None) -> int:
    v = h[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedMessage(f"{key}: expected an integer, got {_short(v)}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise MalformedMessage(f"{key}: expected an integer {rng}, got {v}")
    return v


def _number(h: Mapping, key: str, *, positive: bool = False) -> float:
    v = h[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise MalformedMessage(f"{key}: expected a finite number, got {_short(v)}")
    if positive and v <= 0:
        raise MalformedMessage(f"{key}: expected a positive number, got {v}")
    return float(v)


def _series(h: Mapping) -> str:
    v = h["series"]
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str) or not v or len(v) > MAX_SERIES_CHARS:
        raise MalformedMessage(
            f"series: expected a non-empty string of at most {MAX_SERIES_CHARS} characters "
            f"or an integer, got {_short(v)}"
        )
    return v


def _dtype(h: Mapping) -> str:
    v = h["dtype"]
    if not isinstance(v, str) or v not in DTYPES:
        raise MalformedMessage(f"dtype: expected one of {sorted(DTYPES)}, got {_short(v)}")
    return v


def _shape(h: Mapping) -> tuple[int, int]:
    v = h["shape"]
    ok = (
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIDE for s in v)
    )
    if not ok:
        raise MalformedMessage(f"shape: expected [H, W] with 1 <= H, W <= {MAX_SIDE}, "
                               f"got {_short(v)}")  # fmt: skip
    return int(v[0]), int(v[1])


def _pixel_size(h: Mapping) -> float | None:
    if h.get("pixel_size_nm") is None:
        return None
    return _number(h, "pixel_size_nm", positive=True)


def _meta(h: Mapping) -> Mapping[str, Any]:
    v = h.get("meta")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise MalformedMessage(f"meta: expected a JSON object, got {type(v).__name__}")
    return v


def _header(part: Any) -> dict[str, Any]:
    try:
        raw = memoryview(part)
    except TypeError:
        raise MalformedMessage(
            f"header: expected bytes, got {type(part).__name__}"
        ) from None
    if raw.nbytes > MAX_HEADER_BYTES:
        raise MalformedMessage(f"header: expected at most {MAX_HEADER_BYTES} bytes of JSON, "
                               f"got {raw.nbytes}")  # fmt: skip
    try:
        h = json.loads(raw.tobytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MalformedMessage(f"header: expected UTF-8 JSON, got undecodable bytes ({e.reason} "
                               f"at byte {e.start})") from None  # fmt: skip
    except json.JSONDecodeError as e:
        raise MalformedMessage(f"header: expected JSON, got invalid JSON ({e.msg} at "
                               f"char {e.pos})") from None  # fmt: skip
    except RecursionError:
        raise MalformedMessage("header: expected JSON, got nesting too deep") from None
    if not isinstance(h, dict):
        raise MalformedMessage(f"header: expected a JSON object, got {type(h).__name__}")
    return h


def decode(parts: Sequence[Any]) -> SeriesStart | Frame | SeriesEnd:
    """Decode and validate one multipart message.

    Parameters
    ----------
    parts : sequence of bytes-like (bytes, memoryview, ``zmq.Frame``)
        The message parts as received.

    Returns
    -------
    SeriesStart, Frame or SeriesEnd
        A frame's image is a read-only view on ``parts[1]`` (no copy), shape (H, W).

    Raises
    ------
    MalformedMessage
        If the message breaks the protocol in any way.
    """
    n = len(parts)
    if n not in (1, 2):
        raise MalformedMessage(f"expected 1 or 2 message parts, got {n}")
    h = _header(getattr(parts[0], "buffer", parts[0]))
    proto = h.get("protocol")
    if proto != PROTOCOL:
        raise MalformedMessage(f"protocol: expected {PROTOCOL!r}, got {_short(proto)}")
    kind = h.get("type")
    if kind not in _PARTS:
        raise MalformedMessage(f"type: expected one of {list(MESSAGE_TYPES)}, got {_short(kind)}")
    missing = [k for k in _REQUIRED[kind] if k not in h]
    if missing:
        raise MalformedMessage(f"{kind}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(h) - _ALLOWED[kind])
    if unknown:
        raise MalformedMessage(f"{kind}: unknown field(s) {', '.join(unknown)} (extras go in meta)")
    if n != _PARTS[kind]:
        raise MalformedMessage(f"{kind}: expected {_PARTS[kind]} message part(s), got {n}")

    series = _series(h)
    ts = _number(h, "timestamp")
    meta = _meta(h)
    pixel = _pixel_size(h)
    if kind == "frame":
        index = _int(h, "index")
        dtype = _dtype(h)
        shape = _shape(h)
        buf = getattr(parts[1], "buffer", parts[1])
        try:
            mv = memoryview(buf)
        except TypeError:
            raise MalformedMessage(f"pixels: expected bytes, got {type(buf).__name__}") from None
        expected = shape[0] * shape[1] * DTYPES[dtype].itemsize
        if mv.nbytes != expected:
            raise MalformedMessage(
                f"pixels: expected {expected} bytes for shape {list(shape)} {dtype}, "
                f"got {mv.nbytes}"
            )
        image = np.frombuffer(mv, dtype=DTYPES[dtype]).reshape(shape)
        if not image.dtype.isnative:  # pragma: no cover - big-endian hosts only
            image = image.astype(image.dtype.newbyteorder("="))
        return Frame(series, index, ts, image, pixel_size_nm=pixel, meta=meta)
    frames = _int(h, "frames") if h.get("frames") is not None else None
    if kind == "series-start":
        shape_s = _shape(h) if h.get("shape") is not None else None
        dtype_s = _dtype(h) if h.get("dtype") is not None else None
        return SeriesStart(series, ts, shape=shape_s, dtype=dtype_s, pixel_size_nm=pixel,
                           frames=frames, meta=meta)  # fmt: skip
    return SeriesEnd(series, ts, frames_sent=frames, meta=meta)
