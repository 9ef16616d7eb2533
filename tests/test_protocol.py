"""The loopline wire protocol: round trips and one clear error for every malformed message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from loopline.daemon.ingest import Frame, SeriesEnd, SeriesStart
from loopline.daemon.ingest.loopline1 import protocol as lp
from loopline.daemon.ingest.loopline1.protocol import MalformedMessage, decode

pytestmark = pytest.mark.timeout(30)


def _hdr(**fields) -> bytes:
    h = {"protocol": "loopline/1", "type": "frame", "series": "s1", "index": 0,
         "timestamp": 1.5, "dtype": "uint8", "shape": [2, 3]}  # fmt: skip
    h.update(fields)
    return json.dumps({k: v for k, v in h.items() if v is not _DROP}).encode()


_DROP = object()
PIX = bytes(range(6))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_frame_round_trip_keeps_every_pixel(dtype):
    rng = np.random.default_rng(1)
    img = (rng.random((5, 7)) * 1000).astype(dtype)
    parts = lp.encode_frame("run-7", 41, img, timestamp=12.25, pixel_size_nm=2.0,
                            meta={"k": [1, 2]})  # fmt: skip
    assert len(parts) == 2
    ev = decode([bytes(p) for p in parts])
    assert isinstance(ev, Frame)
    assert (ev.series, ev.index, ev.timestamp_s, ev.pixel_size_nm) == ("run-7", 41, 12.25, 2.0)
    assert ev.meta == {"k": [1, 2]}
    assert ev.image.dtype == np.dtype(dtype) and ev.image.shape == (5, 7)
    np.testing.assert_array_equal(ev.image, img)


def test_non_contiguous_image_is_sent_in_c_order():
    img = np.arange(24, dtype=np.uint16).reshape(4, 6)[:, ::2]
    ev = decode([bytes(p) for p in lp.encode_frame("s", 0, img)])
    np.testing.assert_array_equal(ev.image, img)


def test_series_messages_round_trip():
    start = decode(lp.encode_series_start("s", timestamp=1.0, shape=(4, 5), dtype="uint16",
                                          pixel_size_nm=0.5, frames=10, meta={"a": 1}))  # fmt: skip
    assert isinstance(start, SeriesStart)
    assert (start.shape, start.dtype, start.pixel_size_nm, start.frames) == ((4, 5), "uint16",
                                                                             0.5, 10)
    end = decode(lp.encode_series_end("s", timestamp=2.0, frames=10))
    assert isinstance(end, SeriesEnd) and end.frames_sent == 10 and end.series == "s"


def test_integer_series_id_reads_as_string():
    ev = decode([_hdr(series=34), PIX])
    assert ev.series == "34"


def test_encode_frame_rejects_unsupported_images():
    with pytest.raises(ValueError, match=r"shape \(H, W\) and dtype"):
        lp.encode_frame("s", 0, np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 3\)"):
        lp.encode_frame("s", 0, np.zeros((2, 2, 3), np.uint8))


MALFORMED = {
    "no parts": ([], "expected 1 or 2 message parts, got 0"),
    "three parts": ([_hdr(), PIX, b""], "expected 1 or 2 message parts, got 3"),
    "frame without pixels": ([_hdr()], "frame: expected 2 message part(s), got 1"),
    "start with pixels": ([_hdr(type="series-start", index=_DROP, dtype=_DROP, shape=_DROP),
                           b"x"], "series-start: expected 1 message part(s), got 2"),
    "bad json": ([b"{not json", PIX], "header: expected JSON, got invalid JSON"),
    "garbage bytes": ([b"\xff\xfe\x00\x81garbage", PIX], "header: expected UTF-8 JSON"),
    "json list": ([b"[1, 2]", PIX], "header: expected a JSON object, got list"),
    "huge header": ([b" " * (lp.MAX_HEADER_BYTES + 1), PIX], "at most 65536 bytes"),
    "wrong protocol": ([_hdr(protocol="loopline/2"), PIX],
                       "protocol: expected 'loopline/1', got 'loopline/2'"),
    "no protocol": ([_hdr(protocol=_DROP), PIX], "protocol: expected 'loopline/1', got None"),
    "bad type": ([_hdr(type="image"), PIX], "type: expected one of"),
    "missing index": ([_hdr(index=_DROP), PIX], "frame: missing field(s) index"),
    "missing shape+dtype": ([_hdr(shape=_DROP, dtype=_DROP), PIX],
                            "frame: missing field(s) dtype, shape"),
    "unknown field": ([_hdr(colour="red"), PIX], "unknown field(s) colour"),
    "negative index": ([_hdr(index=-1), PIX], "index: expected an integer >= 0, got -1"),
    "float index": ([_hdr(index=1.5), PIX], "index: expected an integer, got 1.5"),
    "bool index": ([_hdr(index=True), PIX], "index: expected an integer, got True"),
    "string timestamp": ([_hdr(timestamp="now"), PIX], "timestamp: expected a finite number"),
    "empty series": ([_hdr(series=""), PIX], "series: expected a non-empty string"),
    "wrong dtype": ([_hdr(dtype="int16"), PIX],
                    "dtype: expected one of ['float32', 'uint16', 'uint8'], got 'int16'"),
    "3-d shape": ([_hdr(shape=[1, 2, 3]), PIX], "shape: expected [H, W]"),
    "zero shape": ([_hdr(shape=[0, 3]), PIX], "shape: expected [H, W]"),
    "huge shape": ([_hdr(shape=[1 << 20, 1 << 20]), PIX], "shape: expected [H, W]"),
    "shape mismatch": ([_hdr(shape=[3, 3]), PIX],
                       "pixels: expected 9 bytes for shape [3, 3] uint8, got 6"),
    "truncated buffer": ([_hdr(dtype="uint16"), PIX],
                         "pixels: expected 12 bytes for shape [2, 3] uint16, got 6"),
    "bad pixel size": ([_hdr(pixel_size_nm=-1), PIX], "pixel_size_nm: expected a positive"),
    "meta not object": ([_hdr(meta=[1]), PIX], "meta: expected a JSON object, got list"),
    "nan timestamp": ([_hdr().replace(b'"timestamp": 1.5', b'"timestamp": NaN'), PIX],
                      "timestamp: expected a finite number"),
    "deep json": ([b"[" * 100_000, PIX], "header: expected"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_raises_one_clear_error(case):
    parts, text = MALFORMED[case]
    with pytest.raises(MalformedMessage) as info:
        decode(parts)
    assert text in str(info.value)
    assert "\n" not in str(info.value)
    # no chained traceback to wade through
    e = info.value
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


def test_decoded_image_is_a_view_not_a_copy():
    buf = bytearray(PIX)
    ev = decode([_hdr(), buf])
    buf[0] = 99
    assert ev.image[0, 0] == 99


def test_no_pickle_in_the_ingest_code():
    root = Path(lp.__file__).parents[1]  # loopline/daemon/ingest: every detector's folder
    files = sorted(root.rglob("*.py"))
    assert {f.name for f in files} >= {"protocol.py", "simulator.py", "source.py", "files.py"}
    banned = re.compile(r"import pickle|from pickle|pickle\.|_pyobj|cloudpickle|dill")
    for f in files:
        assert not banned.search(f.read_text("utf-8")), f


def test_default_endpoint_agrees_with_the_command():
    from loopline.daemon import simulate_command

    assert simulate_command.DEFAULT_ENDPOINT == lp.DEFAULT_ENDPOINT
