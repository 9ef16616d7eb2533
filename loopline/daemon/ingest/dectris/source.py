"""DECTRIS detectors (EIGER2, QUADRO, ARINA...): SIMPLON Stream v1 and Stream v2.

The detector's data port **binds** a PUSH socket; this source **connects** a PULL socket to it
(``tcp://DCU:9999`` for v1; v2 uses ``tcp://DCU:31001``), the same pairing as the loopline
protocol.

Stream v1 (JSON multipart)
    ``[dheader-1.0, <config JSON>, ...]`` series header (``header_detail`` basic/all; some
    senders, e.g. libertem-dectris's simulator, send the config as the next one-part message);
    ``[dimage-1.0, dimage_d-1.0, <pixels>, dconfig-1.0]`` per image, where ``dimage_d`` gives
    ``shape`` as ``[x, y]`` (width, height), ``type`` and ``encoding``: ``<``/``>`` raw,
    ``lz4<`` (one LZ4 block) or ``bs8-lz4<``/``bs16-lz4<``/``bs32-lz4<`` (bitshuffle+LZ4);
    ``[dseries_end-1.0]`` at the end.
Stream v2 (one-part CBOR)
    Maps with ``type`` ``start`` / ``image`` / ``end`` (``calibration`` is ignored). An image's
    ``data`` maps channel names (``threshold_1``...) to RFC 8746 multi-dimensional arrays
    (tag 40, row-major ``[H, W]``) of typed arrays (tags 64-87), whose bytes may be wrapped
    in the DECTRIS compression tag 56500 ``[algorithm, elem_size, bytes]`` (``bslz4``, ``lz4``;
    ``bszstd`` needs the ``dectris-compression`` package).

Size limit: with ``max_shape`` (the daemon passes its slot pool's largest frame) an image
whose declared shape is larger is rejected as malformed *before* it is decompressed, so a
small compressed message cannot expand into gigabytes; ``max_message_bytes`` bounds the
compressed message itself (``ZMQ_MAXMSGSIZE``, see :mod:`._zmq`).

Masked pixels: the series start's pixel mask (v2 ``pixel_mask`` map, one 2-D uint32 array per
channel; v1 ``dpixelmask-1.0`` part with ``header_detail: all``; any bit set = gap, dead, hot
...) and the detector's own marker of a masked pixel (the type's largest value, 0xFFFF for
uint16, which module-gap rows carry) are set to the frame's median before the frame is handed
on, so they are never detected as lines; ``meta["masked_px"]`` counts them per frame.

Frames come out as uint8/uint16 (uint32 is converted to float32, exact below 2**24).
``timestamp_s`` is the receive time: the detector's stamps are relative to the series; they
are kept in ``meta`` (``start_time``, ``stop_time``, ``real_time``; v2 as [numerator,
denominator] in s). ``pixel_size_nm`` is None (the detector pixel is not the specimen pixel;
it is in the series-start ``meta``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import zmq

from .._zmq import ZmqSource
from ..base import Event, Frame, SeriesEnd, SeriesStart
from ..loopline1.protocol import MalformedMessage
from .compression import (
    bslz4_decode,
    bslz4_encode,
    lz4_block_decode,
    lz4_block_encode,
    lz4_framed_decode,
)

__all__ = [
    "Dectris1Decoder",
    "Dectris2Decoder",
    "DectrisAutoDecoder",
    "DectrisSource",
    "encode_v1_end",
    "encode_v1_frame",
    "encode_v1_header",
    "encode_v2_end",
    "encode_v2_frame",
    "encode_v2_start",
]

_V1_TYPES = {"uint8": "u1", "uint16": "u2", "uint32": "u4", "float32": "f4"}
_V1_ENCODING = re.compile(r"^(?:bs(8|16|32)-lz4|(lz4))?([<>])$")
_MAX_SIDE = 1 << 16
# Scalar start-message fields worth keeping in SeriesStart.meta (the big tables are left out).
_V1_CONFIG_KEEP = ("description", "detector_number", "count_time", "frame_time", "nimages",
                   "ntrigger", "trigger_mode", "x_pixel_size", "y_pixel_size", "bit_depth_image",
                   "compression", "software_version", "sensor_material")  # fmt: skip
_V2_START_KEEP = ("detector_description", "detector_serial_number", "count_time", "frame_time",
                  "number_of_images", "pixel_size_x", "pixel_size_y", "series_unique_id",
                  "channels", "sensor_material", "saturation_value")  # fmt: skip


def _native(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 stay; uint32 and others become float32; byte order made native."""
    if image.dtype.kind == "u" and image.dtype.itemsize <= 2:
        return image if image.dtype.isnative else image.astype(image.dtype.newbyteorder("="))
    return image.astype(np.float32)


def _check_fits(hw: tuple[int, int], max_shape: tuple[int, int] | int | None,
                what: str) -> None:  # fmt: skip
    """Reject a declared image shape (H, W) larger than ``max_shape`` before decoding it.

    ``max_shape``: (H, W), or an int: the largest pixel count (H x W), whatever the aspect.
    """
    if max_shape is None:
        return
    if isinstance(max_shape, int):
        if hw[0] * hw[1] > max_shape:
            raise MalformedMessage(f"{what}: expected at most {max_shape} px (H x W), got "
                                   f"{hw[0]} x {hw[1]} = {hw[0] * hw[1]}")  # fmt: skip
    elif hw[0] > max_shape[0] or hw[1] > max_shape[1]:
        raise MalformedMessage(f"{what}: expected at most {max_shape[0]} x {max_shape[1]} px "
                               f"(H x W), got {hw[0]} x {hw[1]}")  # fmt: skip


_MEDIAN_SAMPLE = 250_000  # pixels sampled for the median of a large frame


def _apply_mask(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, int]:
    """``image`` with its masked pixels set to the median of the others; and their count.

    Masked: ``mask`` (bool, the image's shape) and, for integer images, the type's largest
    value (DECTRIS marks gap and defective pixels so when the mask is applied on the DCU).
    """
    bad = image == np.iinfo(image.dtype).max if image.dtype.kind == "u" else None
    if mask is not None and mask.shape == image.shape:
        bad = mask if bad is None else bad | mask
    n = int(np.count_nonzero(bad)) if bad is not None else 0
    if not n:
        return image, 0
    step = max(1, image.size // _MEDIAN_SAMPLE)
    vals = image.reshape(-1)[::step][~bad.reshape(-1)[::step]]
    med = np.median(vals) if vals.size else 0
    out = np.array(image)  # a writable copy (the decoded buffer may be read-only)
    out[bad] = np.asarray(med).astype(image.dtype)
    return out, n


def _shape2(value: Any, what: str) -> tuple[int, int]:
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _MAX_SIDE
                for v in value)
    )
    if not ok:
        raise MalformedMessage(f"{what}: expected two positive integers, got {value!r:.60}")
    return int(value[0]), int(value[1])


# ------------------------------------------------------------------------------ Stream v1


def _json(part: Any, what: str) -> dict[str, Any]:
    buf = getattr(part, "buffer", part)
    try:
        obj = json.loads(memoryview(buf).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, RecursionError) as e:
        raise MalformedMessage(f"{what}: expected a JSON object, got undecodable data "
                               f"({type(e).__name__})") from None  # fmt: skip
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _series_id(h: Mapping, key: str = "series") -> str:
    v = h.get(key)
    if isinstance(v, bool) or not isinstance(v, int | str) or v == "":
        raise MalformedMessage(f"{key}: expected an integer series id, got {v!r:.60}")
    return str(v)


def _decode_v1_pixels(data: Any, dd: Mapping[str, Any],
                      max_shape: tuple[int, int] | None = None) -> np.ndarray:  # fmt: skip
    x, y = _shape2(dd.get("shape"), "dimage_d shape")
    _check_fits((y, x), max_shape, "dimage_d shape")
    tname = dd.get("type")
    if tname not in _V1_TYPES:
        raise MalformedMessage(f"dimage_d type: expected one of {sorted(_V1_TYPES)}, "
                               f"got {tname!r:.40}")  # fmt: skip
    enc = dd.get("encoding")
    m = _V1_ENCODING.match(enc) if isinstance(enc, str) else None
    if m is None:
        raise MalformedMessage(f"dimage_d encoding: expected '<', 'lz4<' or 'bsNN-lz4<', "
                               f"got {enc!r:.40}")  # fmt: skip
    bits, lz4, order = m.groups()
    dtype = np.dtype(_V1_TYPES[tname]).newbyteorder(order)
    shape = (y, x)  # dimage_d gives [x, y]
    buf = memoryview(getattr(data, "buffer", data)).cast("B")
    size = dd.get("size")
    if size is not None and size != buf.nbytes:
        raise MalformedMessage(f"pixels: dimage_d says {size!r:.20} bytes, got {buf.nbytes}")
    if bits is not None:
        if int(bits) != 8 * dtype.itemsize:
            raise MalformedMessage(f"dimage_d: encoding {enc} does not fit type {tname}")
        return bslz4_decode(buf, shape, dtype)
    if lz4:
        return lz4_block_decode(buf, shape, dtype)
    expected = x * y * dtype.itemsize
    if buf.nbytes != expected:
        raise MalformedMessage(f"pixels: expected {expected} bytes for [x, y] = [{x}, {y}] "
                               f"{tname}, got {buf.nbytes}")  # fmt: skip
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


class Dectris1Decoder:
    """SIMPLON Stream v1 (JSON multipart) to events; keeps the series-header state.

    ``max_shape`` (H, W): larger images are rejected before they are decompressed.
    """

    def __init__(self, max_shape: tuple[int, int] | int | None = None) -> None:
        self.max_shape = max_shape
        self._pending: tuple[str, dict[str, Any]] | None = None  # dheader awaiting config
        self._mask: tuple[str, np.ndarray | None] = ("", None)  # (series, its pixel mask)

    def _pixel_mask(self, parts: Sequence[Any]) -> np.ndarray | None:
        """The ``dpixelmask-1.0`` part of a ``header_detail: all`` header, as bool (H, W)."""
        for i in range(2, len(parts) - 1, 2):
            try:
                h = _json(parts[i], "detail header")
            except MalformedMessage:
                continue
            if not str(h.get("htype", "")).startswith("dpixelmask"):
                continue
            x, y = _shape2(h.get("shape"), "dpixelmask shape")
            _check_fits((y, x), self.max_shape, "dpixelmask shape")
            tname = h.get("type", "uint32")
            if tname not in _V1_TYPES:
                raise MalformedMessage(f"dpixelmask type: expected one of {sorted(_V1_TYPES)}, "
                                       f"got {tname!r:.40}")  # fmt: skip
            buf = memoryview(getattr(parts[i + 1], "buffer", parts[i + 1])).cast("B")
            dt = np.dtype(_V1_TYPES[tname]).newbyteorder("<")
            want = x * y * dt.itemsize
            if buf.nbytes != want:
                raise MalformedMessage(f"dpixelmask: expected {want} bytes for [x, y] = "
                                       f"[{x}, {y}] {tname}, got {buf.nbytes}")  # fmt: skip
            return np.frombuffer(buf, dt).reshape(y, x) != 0
        return None

    def _start(self, series: str, header: Mapping, config: Mapping | None) -> SeriesStart:
        meta: dict[str, Any] = {"detector": "dectris", "stream": 1,
                                "header_detail": header.get("header_detail")}  # fmt: skip
        frames = None
        shape = None
        if config:
            meta.update({k: config[k] for k in _V1_CONFIG_KEEP if k in config})
            n, t = config.get("nimages"), config.get("ntrigger")
            if isinstance(n, int) and isinstance(t, int):
                frames = n * t
            x, y = config.get("x_pixels_in_detector"), config.get("y_pixels_in_detector")
            if isinstance(x, int) and isinstance(y, int) and x > 0 and y > 0:
                shape = (y, x)
        return SeriesStart(series, time.time(), shape=shape, frames=frames, meta=meta)

    def feed(self, parts: Sequence[Any]) -> list[Event]:
        if not parts:
            raise MalformedMessage("stream v1: expected at least 1 message part, got 0")
        out: list[Event] = []
        first = _json(parts[0], "stream v1 header")
        htype = first.get("htype")
        if self._pending is not None:
            series, header = self._pending
            self._pending = None
            if htype is None and len(parts) == 1:  # the detector config, sent on its own
                return [self._start(series, header, first)]
            out.append(self._start(series, header, None))
        if not isinstance(htype, str):
            raise MalformedMessage(f"stream v1: expected an 'htype' field, got {htype!r:.40}")
        kind = htype.split("-", 1)[0]
        if kind == "dheader":
            series = _series_id(first)
            self._mask = (series, self._pixel_mask(parts))
            if len(parts) >= 2:
                out.append(self._start(series, first, _json(parts[1], "detector config")))
            elif first.get("header_detail", "basic") == "none":
                out.append(self._start(series, first, None))
            else:
                self._pending = (series, first)
        elif kind == "dimage":
            if len(parts) not in (3, 4):
                raise MalformedMessage(f"dimage: expected 4 parts (dimage, dimage_d, data, "
                                       f"dconfig), got {len(parts)}")  # fmt: skip
            series = _series_id(first)
            index = first.get("frame")
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise MalformedMessage(f"dimage frame: expected an integer >= 0, "
                                       f"got {index!r:.40}")  # fmt: skip
            dd = _json(parts[1], "dimage_d")
            if not str(dd.get("htype", "")).startswith("dimage_d"):
                raise MalformedMessage(f"part 2: expected htype dimage_d-1.0, "
                                       f"got {dd.get('htype')!r:.40}")  # fmt: skip
            raw = _decode_v1_pixels(parts[2], dd, self.max_shape)
            raw, masked = _apply_mask(raw, self._mask[1] if self._mask[0] == series else None)
            image = _native(raw)
            meta: dict[str, Any] = {"detector": "dectris", "stream": 1, "masked_px": masked}
            if "hash" in first:
                meta["hash"] = first["hash"]
            if len(parts) == 4:
                cfg = _json(parts[3], "dconfig")
                meta.update({k: cfg[k] for k in ("start_time", "stop_time", "real_time")
                             if k in cfg})  # fmt: skip
            out.append(Frame(series, index, time.time(), image, meta=meta))
        elif kind == "dseries_end":
            out.append(SeriesEnd(_series_id(first), time.time()))
        else:
            raise MalformedMessage(f"stream v1: unexpected htype {htype!r:.40}")
        return out


def encode_v1_header(series: int, *, shape: tuple[int, int], dtype: str, nimages: int,
                     frame_time: float = 0.04, pixel_mask: np.ndarray | None = None
                     ) -> list[bytes]:  # fmt: skip
    """``[dheader-1.0, config]`` as a detector sends it with ``header_detail: basic``; with
    ``pixel_mask`` (H, W; nonzero = masked) the ``all`` detail's flat-field, pixel-mask and
    count-rate parts follow."""
    h, w = shape
    detail = "basic" if pixel_mask is None else "all"
    header = {"htype": "dheader-1.0", "series": int(series), "header_detail": detail}
    config = {"x_pixels_in_detector": w, "y_pixels_in_detector": h, "nimages": 1,
              "ntrigger": int(nimages), "frame_time": frame_time, "count_time": frame_time,
              "bit_depth_image": 8 * np.dtype(dtype).itemsize, "compression": "bslz4",
              "description": "loopline simulator", "trigger_mode": "ints"}  # fmt: skip
    parts = [json.dumps(header).encode(), json.dumps(config).encode()]
    if pixel_mask is not None:
        flat = {"htype": "dflatfield-1.0", "shape": [w, h], "type": "float32"}
        mask = {"htype": "dpixelmask-1.0", "shape": [w, h], "type": "uint32"}
        rate = {"htype": "dcountrate_table-1.0", "shape": [2, 1], "type": "float32"}
        parts += [json.dumps(flat).encode(), np.ones((h, w), "<f4").tobytes(),
                  json.dumps(mask).encode(), np.asarray(pixel_mask, "<u4").tobytes(),
                  json.dumps(rate).encode(), np.zeros(2, "<f4").tobytes()]  # fmt: skip
    return parts


def encode_v1_frame(series: int, index: int, image: np.ndarray, *, encoding: str = "bslz4",
                    start_time_ns: int = 0, frame_time_ns: int = 40_000_000
                    ) -> list[bytes]:  # fmt: skip
    """``[dimage, dimage_d, pixels, dconfig]`` for a uint8/uint16/uint32 image."""
    a = np.ascontiguousarray(image)
    if a.dtype.name not in ("uint8", "uint16", "uint32") or a.ndim != 2:
        raise ValueError(f"stream v1 sends (H, W) uint8/16/32 images, got {a.shape} {a.dtype}")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    if encoding == "bslz4":
        data, enc = bslz4_encode(a), f"bs{8 * a.dtype.itemsize}-lz4<"
    elif encoding == "lz4":
        data, enc = lz4_block_encode(a), "lz4<"
    elif encoding == "raw":
        data, enc = a.tobytes(), "<"
    else:
        raise ValueError(f"encoding must be bslz4, lz4 or raw, got {encoding!r}")
    h, w = a.shape
    dimage = {"htype": "dimage-1.0", "series": int(series), "frame": int(index),
              "hash": hashlib.md5(data).hexdigest()}  # fmt: skip
    dd = {"htype": "dimage_d-1.0", "shape": [w, h], "type": a.dtype.name, "encoding": enc,
          "size": len(data)}  # fmt: skip
    t0 = start_time_ns + index * frame_time_ns
    dconfig = {"htype": "dconfig-1.0", "start_time": t0, "stop_time": t0 + frame_time_ns,
               "real_time": frame_time_ns}  # fmt: skip
    return [json.dumps(dimage).encode(), json.dumps(dd).encode(), data,
            json.dumps(dconfig).encode()]  # fmt: skip


def encode_v1_end(series: int) -> list[bytes]:
    return [json.dumps({"htype": "dseries_end-1.0", "series": int(series)}).encode()]


# ------------------------------------------------------------------------------ Stream v2

# RFC 8746 typed arrays: tag -> numpy dtype
_TYPED = {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
}  # fmt: skip
_TAG_OF = {"uint8": 64, "uint16": 69, "uint32": 70, "float32": 85}
_DECTRIS_COMPRESSION = 56500


class _Compressed:
    __slots__ = ("algorithm", "data", "elem_size")

    def __init__(self, algorithm: str, elem_size: int, data: bytes):
        self.algorithm, self.elem_size, self.data = algorithm, elem_size, data


class _Typed:
    __slots__ = ("dtype", "payload")

    def __init__(self, dtype: np.dtype, payload: bytes | _Compressed):
        self.dtype, self.payload = dtype, payload


def _v2_pixels(typed: _Typed, shape: tuple[int, ...]) -> np.ndarray:
    p = typed.payload
    dt = typed.dtype
    if isinstance(p, _Compressed):
        if p.elem_size != dt.itemsize:
            raise MalformedMessage(f"compression elem_size {p.elem_size} does not match the "
                                   f"typed array's {dt.itemsize}")  # fmt: skip
        if p.algorithm == "bslz4":
            return bslz4_decode(p.data, shape, dt)
        if p.algorithm == "lz4":
            return lz4_framed_decode(p.data, shape, dt)
        if p.algorithm == "bszstd":
            try:
                from dectris.compression import decompress
            except ImportError:
                raise MalformedMessage("bszstd needs the dectris-compression package") from None
            try:
                raw = decompress(p.data, "bszstd", elem_size=dt.itemsize)
            except Exception as e:
                raise MalformedMessage(f"bszstd: corrupt data ({e})") from None
            p = raw
        else:
            raise MalformedMessage(f"compression: expected bslz4, lz4 or bszstd, "
                                   f"got {p.algorithm!r:.40}")  # fmt: skip
    expected = int(np.prod(shape)) * dt.itemsize
    if len(p) != expected:
        raise MalformedMessage(f"typed array: expected {expected} bytes for shape "
                               f"{list(shape)} {dt}, got {len(p)}")  # fmt: skip
    return np.frombuffer(p, dtype=dt).reshape(shape)


def _tag_hook(a: Any, b: Any, max_shape: tuple[int, int] | int | None = None) -> Any:
    """cbor2 tag hook; cbor2 < 6 calls ``(decoder, tag)``, cbor2 >= 6 ``(tag, immutable)``.

    ``max_shape`` (H, W): a larger array is rejected before it is decompressed.
    """
    import cbor2

    tag = a if isinstance(a, cbor2.CBORTag) else b
    num, value = tag.tag, tag.value
    if num == _DECTRIS_COMPRESSION:
        ok = (isinstance(value, list | tuple) and len(value) == 3 and isinstance(value[0], str)
              and isinstance(value[1], int) and isinstance(value[2], bytes))  # fmt: skip
        if not ok:
            raise MalformedMessage("compression tag: expected [algorithm, elem_size, bytes]")
        return _Compressed(value[0], value[1], value[2])
    if num in _TYPED:
        if not isinstance(value, bytes | _Compressed):
            raise MalformedMessage(f"typed array tag {num}: expected a byte string")
        return _Typed(np.dtype(_TYPED[num]), value)
    if num in (40, 1040):
        ok = (isinstance(value, list | tuple) and len(value) == 2
              and isinstance(value[0], list | tuple) and isinstance(value[1], _Typed))  # fmt: skip
        if not ok:
            raise MalformedMessage(f"array tag {num}: expected [dimensions, typed array]")
        dims = value[0]
        if len(dims) != 2:
            raise MalformedMessage(f"array: expected 2 dimensions, got {len(dims)}")
        h, w = _shape2(list(dims), "array dimensions")
        _check_fits((h, w), max_shape, "array dimensions")
        if num == 1040:  # column-major element order, dimensions still [H, W]
            return np.ascontiguousarray(_v2_pixels(value[1], (w, h)).T)
        return _v2_pixels(value[1], (h, w))
    return tag


def _v2_meta(msg: Mapping, keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        if k in msg:
            v = msg[k]
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _rational(v: Any) -> list[int] | None:
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return [int(v[0]), int(v[1])]
    return None


class Dectris2Decoder:
    """SIMPLON Stream v2 (one-part CBOR) to events.

    Parameters
    ----------
    channel : str, optional
        Which ``data`` channel to use (e.g. ``threshold_1``); default: the first one.
    max_shape : (int, int), optional
        Largest image (H, W) accepted; larger ones are rejected before decompression.
    """

    def __init__(self, channel: str | None = None,
                 max_shape: tuple[int, int] | int | None = None):  # fmt: skip
        self.channel = channel
        self.max_shape = max_shape
        self._mask: tuple[str, np.ndarray | None] = ("", None)  # (series, its pixel mask)

    def _pixel_mask(self, msg: Mapping) -> np.ndarray | None:
        """The start message's ``pixel_mask`` of our channel as bool (H, W); None if absent
        or not a 2-D array (some senders put a placeholder there)."""
        pm = msg.get("pixel_mask")
        if not isinstance(pm, Mapping) or not pm:
            return None
        name = self.channel if self.channel in pm else next(iter(pm))
        m = pm[name]
        return m != 0 if isinstance(m, np.ndarray) and m.ndim == 2 else None

    def feed(self, parts: Sequence[Any]) -> list[Event]:
        import cbor2

        if len(parts) != 1:
            raise MalformedMessage(f"stream v2: expected 1 message part, got {len(parts)}")
        raw = memoryview(getattr(parts[0], "buffer", parts[0])).tobytes()
        try:
            hook = (_tag_hook if self.max_shape is None
                    else functools.partial(_tag_hook, max_shape=self.max_shape))  # fmt: skip
            msg = cbor2.loads(raw, tag_hook=hook)
        except MalformedMessage:
            raise
        except Exception as e:  # CBORDecodeError and whatever a crafted input provokes
            cause = e.__cause__ if isinstance(e.__cause__, MalformedMessage) else None
            if cause is not None:
                raise cause from None
            raise MalformedMessage(f"stream v2: expected CBOR, got undecodable data "
                                   f"({type(e).__name__}: {str(e)[:80]})") from None  # fmt: skip
        if not isinstance(msg, Mapping):
            raise MalformedMessage(f"stream v2: expected a CBOR map, got {type(msg).__name__}")
        kind = msg.get("type")
        now = time.time()
        if kind == "image":
            series = _series_id(msg, "series_id")
            index = msg.get("image_id")
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise MalformedMessage(f"image_id: expected an integer >= 0, got {index!r:.40}")
            data = msg.get("data")
            if not isinstance(data, Mapping) or not data:
                raise MalformedMessage("image: expected a non-empty 'data' map of channels")
            name = self.channel if self.channel is not None else next(iter(data))
            if name not in data:
                raise MalformedMessage(f"image: expected channel {name!r}, got {list(data)}")
            image = data[name]
            if not isinstance(image, np.ndarray) or image.ndim != 2:
                got = "a 1-D typed array" if isinstance(image, _Typed) else type(image).__name__
                raise MalformedMessage(f"image channel {name}: expected a 2-D array (tag 40), "
                                       f"got {got}")  # fmt: skip
            mask = self._mask[1] if self._mask[0] == series else None
            image, masked = _apply_mask(image, mask)
            meta: dict[str, Any] = {"detector": "dectris", "stream": 2, "channel": name,
                                    "masked_px": masked}  # fmt: skip
            for k in ("start_time", "stop_time", "real_time"):
                r = _rational(msg.get(k))
                if r is not None:
                    meta[k] = r
            return [Frame(series, index, now, _native(image), meta=meta)]
        if kind == "start":
            series = _series_id(msg, "series_id")
            meta = {"detector": "dectris", "stream": 2, **_v2_meta(msg, _V2_START_KEEP)}
            mask = self._pixel_mask(msg)
            self._mask = (series, mask)
            meta["pixel_mask_px"] = int(np.count_nonzero(mask)) if mask is not None else None
            n = msg.get("number_of_images")
            x, y = msg.get("image_size_x"), msg.get("image_size_y")
            shape = (y, x) if isinstance(x, int) and isinstance(y, int) else None
            return [SeriesStart(series, now, shape=shape,
                                frames=n if isinstance(n, int) else None, meta=meta)]  # fmt: skip
        if kind == "end":
            return [SeriesEnd(_series_id(msg, "series_id"), now)]
        if kind == "calibration":
            return []
        raise MalformedMessage(f"stream v2: expected type start/image/end, got {kind!r:.40}")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def encode_v2_start(series: int, *, shape: tuple[int, int], nimages: int,
                    frame_time: float = 0.04, pixel_mask: np.ndarray | None = None
                    ) -> list[bytes]:  # fmt: skip
    """The start message; ``pixel_mask`` (H, W; nonzero = masked) as the ``pixel_mask`` map."""
    import cbor2

    h, w = shape
    msg = {"type": "start", "series_id": int(series), "series_unique_id": f"loopline-{series}",
           "arm_date": _now_iso(), "channels": ["threshold_1"], "count_time": frame_time,
           "frame_time": frame_time, "image_size_x": w, "image_size_y": h,
           "number_of_images": int(nimages),
           "detector_description": "loopline simulator"}  # fmt: skip
    if pixel_mask is not None:
        m = np.asarray(pixel_mask, "<u4")
        msg["pixel_mask"] = {"threshold_1": cbor2.CBORTag(40, [list(m.shape),
                                                               cbor2.CBORTag(70, m.tobytes())])}
        msg["pixel_mask_enabled"] = True
    return [cbor2.dumps(cbor2.CBORTag(55799, msg))]


def encode_v2_frame(series: int, index: int, image: np.ndarray, *, compression: str = "bslz4",
                    frame_time: float = 0.04) -> list[bytes]:  # fmt: skip
    """One image message; ``compression`` is ``bslz4`` or ``none``."""
    import cbor2

    a = np.ascontiguousarray(image)
    if a.dtype.name not in _TAG_OF or a.ndim != 2:
        raise ValueError(f"stream v2 sends (H, W) uint8/16/32 or float32 images, "
                         f"got {a.shape} {a.dtype}")  # fmt: skip
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    if compression == "bslz4":
        payload: Any = cbor2.CBORTag(_DECTRIS_COMPRESSION,
                                     ["bslz4", a.dtype.itemsize, bslz4_encode(a)])  # fmt: skip
    elif compression == "none":
        payload = a.tobytes()
    else:
        raise ValueError(f"compression must be bslz4 or none, got {compression!r}")
    arr = cbor2.CBORTag(40, [list(a.shape), cbor2.CBORTag(_TAG_OF[a.dtype.name], payload)])
    den = 1_000_000_000
    t0 = round(index * frame_time * den)
    msg = {"type": "image", "series_id": int(series), "series_unique_id": f"loopline-{series}",
           "image_id": int(index), "start_time": [t0, den],
           "stop_time": [t0 + round(frame_time * den), den],
           "real_time": [round(frame_time * den), den], "data": {"threshold_1": arr}}  # fmt: skip
    return [cbor2.dumps(cbor2.CBORTag(55799, msg))]


def encode_v2_end(series: int) -> list[bytes]:
    import cbor2

    msg = {"type": "end", "series_id": int(series), "series_unique_id": f"loopline-{series}"}
    return [cbor2.dumps(cbor2.CBORTag(55799, msg))]


# ------------------------------------------------------------------------------ source


class DectrisAutoDecoder:
    """Picks v1 or v2 per message: JSON starts with ``{``, CBOR does not."""

    def __init__(self, channel: str | None = None,
                 max_shape: tuple[int, int] | int | None = None):  # fmt: skip
        self.v1 = Dectris1Decoder(max_shape)
        self.v2 = Dectris2Decoder(channel, max_shape)

    def feed(self, parts: Sequence[Any]) -> list[Event]:
        if not parts:
            raise MalformedMessage("expected at least 1 message part, got 0")
        head = memoryview(getattr(parts[0], "buffer", parts[0]))[:1].tobytes()
        return (self.v1 if head == b"{" else self.v2).feed(parts)


class DectrisSource(ZmqSource):
    """Frames from a DECTRIS detector (or a simulator of one) over ZeroMQ.

    Parameters
    ----------
    endpoint : str
        The detector's data port, e.g. ``tcp://dcu:9999``.
    version : {1, 2, "auto"}
        Stream v1 (JSON multipart), v2 (CBOR) or detect per message.
    channel : str, optional
        Stream v2 channel to use (default: the first in each image message).
    socket, bind, rcvhwm, max_queued_frames, context, max_message_bytes
        As :class:`~loopline.daemon.ingest._zmq.ZmqSource`.
    max_shape : (int, int) or int, optional
        Largest image (H, W), or largest pixel count, accepted; larger ones are malformed,
        rejected undecompressed.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        version: int | str = 1,
        channel: str | None = None,
        socket: str = "pull",
        bind: bool = False,
        rcvhwm: int = 100,
        max_queued_frames: int = 64,
        context: zmq.Context | None = None,
        curve_server_key: str | bytes | None = None,
        curve_client_secret: str | bytes | None = None,
        curve_clients: str | None = None,
        max_message_bytes: int | None = None,
        max_shape: tuple[int, int] | int | None = None,
    ):
        decoders = {1: lambda: Dectris1Decoder(max_shape),
                    2: lambda: Dectris2Decoder(channel, max_shape),
                    "auto": lambda: DectrisAutoDecoder(channel, max_shape)}  # fmt: skip
        if version not in decoders:
            raise ValueError(f"version must be 1, 2 or 'auto', got {version!r}")
        self.version = version
        super().__init__(endpoint, decoders[version](), socket=socket, bind=bind,
                         rcvhwm=rcvhwm, max_queued_frames=max_queued_frames, context=context,
                         curve_server_key=curve_server_key,
                         curve_client_secret=curve_client_secret,
                         curve_clients=curve_clients,
                         max_message_bytes=max_message_bytes,
                         name=f"dectris{version}")  # fmt: skip
