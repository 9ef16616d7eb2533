"""A minimal writer of Gatan DigitalMicrograph DM3/DM4 files, for tests (no DM writer exists).

It writes what DigitalMicrograph writes for a calibrated image, cut down to what RosettaSciIO's
reader (``rsciio.digitalmicrograph``, 0.15) needs to read it back:

* header: version (i4be), length of the tag tree (i4be in DM3 / i8be in DM4: file length - 16
  / - 24), byte order (i4be, 1 = little endian; tag data and pixels are then little endian);
* the root tag group, with
  ``ImageList`` = [thumbnail, image], each ``{ImageData: {Calibrations: {Brightness,
  Dimension: [{Origin, Scale, Units} per axis, x first]}, Data, DataType, Dimensions: [x, y,
  (t)], PixelDepth}, ImageTags: {}}`` and
  ``Thumbnails`` = [{ImageIndex: 0}], which tells readers that image 0 is the thumbnail
  (without it rsciio returns the thumbnail as a first signal, an RGBA one it cannot read
  lazily). rsciio needs ImageList, Thumbnails (to skip the thumbnail) and, per image,
  ImageData.{Calibrations.Dimension, Data, DataType, Dimensions} and ImageTags; Brightness
  and PixelDepth are written as DM does;
* 8 zero bytes that end the file.

A tag entry is: kind (i1: 20 group, 21 data), name length (i2be), name; DM4 then has the byte
length of the rest of the entry (i8be). A group is: sorted, open (i1 each), the number of
entries (i4be / i8be), the entries. A data tag is ``%%%%``, the length of its type description
(i4be / i8be), the description (i4be / i8be each: ``[type]`` for a scalar, ``[20, type, n]`` for
an array), the values. Strings are arrays of UTF-16 code units (type 4), as DM writes them.

Layout notes: Chris Boothroyd's "Digital Micrograph file format" pages; rsciio's
``DigitalMicrographReader`` (which reads the DM4 group length after, not before, the sorted/open
bytes; harmless, as it ignores all three).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

__all__ = ["write_dm"]

# numpy dtype -> DM image DataType (ImageData.DataType)
IMAGE_TYPES = {np.dtype(k): v for k, v in {
    "int16": 1, "float32": 2, "uint8": 6, "int32": 7, "int8": 9, "uint16": 10, "uint32": 11,
    "float64": 12, "bool": 14}.items()}  # fmt: skip
# numpy dtype -> tag element type, for tag values and the pixels (ImageData.Data)
TAG_TYPES = {np.dtype(k): v for k, v in {
    "int16": 2, "int32": 3, "uint16": 4, "uint32": 5, "float32": 6, "float64": 7, "bool": 8,
    "int8": 10, "uint8": 10, "int64": 11, "uint64": 12}.items()}  # fmt: skip
ARRAY, THUMB_PX = 20, 64


def _data(value: object, q: str) -> bytes:
    """A data tag (from ``%%%%`` on): a numpy scalar or 1-D array, or a str."""
    if isinstance(value, str):
        value = np.frombuffer(value.encode("utf-16-le"), "<u2")
    elif isinstance(value, bool):
        value = np.bool_(value)
    elif isinstance(value, int):
        value = np.int32(value)
    elif isinstance(value, float):
        value = np.float64(value)
    a = np.asarray(value)
    code = TAG_TYPES[a.dtype]
    info = [code] if a.ndim == 0 else [ARRAY, code, a.size]
    head = b"%%%%" + struct.pack(q, len(info)) + b"".join(struct.pack(q, i) for i in info)
    return head + a.astype(a.dtype.newbyteorder("<")).tobytes()


def _group(value: dict | list, q: str, v4: bool) -> bytes:
    """A tag group: a dict has named entries, a list unnamed ones (rsciio: TagGroup0, ...)."""
    items = list(value.items()) if isinstance(value, dict) else [("", x) for x in value]
    return b"\x01\x00" + struct.pack(q, len(items)) + b"".join(
        _entry(name, x, q, v4) for name, x in items)  # fmt: skip


def _entry(name: str, value: object, q: str, v4: bool) -> bytes:
    group = isinstance(value, (dict, list))
    body = _group(value, q, v4) if group else _data(value, q)
    raw = name.encode("latin-1")
    head = struct.pack(">bH", 20 if group else 21, len(raw)) + raw
    return head + (struct.pack(">Q", len(body)) if v4 else b"") + body


def _image(data: np.ndarray, scales: list[float], units: list[str]) -> dict:
    """The ImageList entry of an image; axes given in numpy order, written x first."""
    dims = [{"Origin": np.float32(0.0), "Scale": np.float32(s), "Units": u}
            for s, u in zip(scales[::-1], units[::-1], strict=True)]  # fmt: skip
    return {
        "ImageData": {
            "Calibrations": {
                "Brightness": {
                    "Origin": np.float32(0.0),
                    "Scale": np.float32(1.0),
                    "Units": "Counts",
                },
                "Dimension": dims,
            },
            "Data": np.ascontiguousarray(data).reshape(-1),  # x fastest
            "DataType": np.int32(IMAGE_TYPES[data.dtype]),
            "Dimensions": [np.uint32(n) for n in data.shape[::-1]],
            "PixelDepth": np.uint32(data.dtype.itemsize),
        },
        "ImageTags": {},  # rsciio needs it (may be empty)
    }


def _thumbnail(frame: np.ndarray) -> dict:
    """A grey RGBA (DataType 23) thumbnail of at most THUMB_PX pixels a side, as DM makes."""
    step = max(1, -(-max(frame.shape) // THUMB_PX))
    f = np.asarray(frame[::step, ::step], np.float64)
    span = float(f.max() - f.min()) or 1.0
    g = ((f - f.min()) / span * 255).astype(np.uint32)
    rgba = g | g << 8 | g << 16 | np.uint32(255) << 24
    thumb = _image(rgba, [1.0, 1.0], ["", ""])
    thumb["ImageData"]["DataType"] = np.int32(23)
    return thumb


def write_dm(
    path: str | Path,
    data: np.ndarray,
    *,
    scales: list[float] | tuple[float, ...],
    units: list[str] | tuple[str, ...],
    version: int = 3,
) -> Path:
    """Write ``data`` (2-D (y, x) or 3-D (t, y, x)) as a DM3 or DM4 file; return the path.

    ``scales`` and ``units`` give each axis's calibration in numpy axis order (e.g. ``(0.1,
    0.02, 0.02)``, ``("s", "µm", "µm")``); origins are 0. Pixel types: see ``IMAGE_TYPES``.
    """
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(f"data must be 2-D or 3-D, got shape {data.shape}")
    if data.dtype not in IMAGE_TYPES:
        raise ValueError(f"no DM data type for {data.dtype}")
    if version not in (3, 4):
        raise ValueError(f"version must be 3 or 4, got {version}")
    v4 = version == 4
    q = ">Q" if v4 else ">L"
    root = {
        "ImageList": [
            _thumbnail(data.reshape(-1, *data.shape[-2:])[0]),
            _image(data, list(scales), list(units)),
        ],
        "Thumbnails": [{"ImageIndex": np.int32(0)}],
    }
    tree = _group(root, q, v4) + bytes(8)  # the 8 zero bytes end the file
    # the tag-tree length is given as file length - 16 (DM3) / - 24 (DM4); headers: 12 / 16 B
    size = struct.pack(q, len(tree) + (16 - 24 if v4 else 12 - 16))
    path = Path(path)
    path.write_bytes(struct.pack(">l", version) + size + struct.pack(">l", 1) + tree)
    return path
