"""DECTRIS Stream v1 and v2 against senders written by others, plus our own encoders."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from loopline.daemon.ingest import DectrisSource, Frame, MemorySource, SeriesEnd, SeriesStart
from loopline.daemon.ingest.dectris import compression as comp
from loopline.daemon.ingest.dectris import source as dx
from loopline.daemon.ingest.loopline1.protocol import MalformedMessage

pytestmark = pytest.mark.timeout(60)
LOOPBACK = "tcp://127.0.0.1"



def _collect(src, timeout_s=20.0) -> list:
    out, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ev = src.get(timeout=0.05)
        if ev is not None:
            out.append(ev)
            if isinstance(ev, SeriesEnd):
                return out
    raise AssertionError(f"timed out; got {[type(e).__name__ for e in out]}")


# --------------------------------------------------------------- v1: libertem-dectris's mock


def test_stream_v1_from_libertem_dectris_mock_decodes_exact_pixels(ctx):
    libertem_dectris = pytest.importorskip("libertem_dectris")
    n = 5
    # the mock binds a PUSH socket (port picked by ZeroMQ) and sends frame i filled with i
    sim = libertem_dectris.DectrisSim.new_mocked(LOOPBACK, n, random_port=True)
    errors: list[BaseException] = []

    def send():
        try:
            sim.send_headers()
            sim.send_frames()
            sim.send_footer()
        except BaseException as e:  # re-raised below
            errors.append(e)

    with DectrisSource(sim.get_uri(), version=1, context=ctx) as src:
        t = threading.Thread(target=send, daemon=True)
        t.start()
        evs = _collect(src)
        t.join(10)
        counters = src.counters
    sim = None  # drops the mock's socket
    assert not errors
    start, frames = evs[0], [e for e in evs if isinstance(e, Frame)]
    assert isinstance(start, SeriesStart) and start.series == "34"
    assert start.frames == n and start.shape == (512, 512)
    assert [f.index for f in frames] == list(range(n))
    for i, f in enumerate(frames):
        assert f.image.dtype == np.uint16 and f.image.shape == (512, 512)
        np.testing.assert_array_equal(f.image, np.full((512, 512), i, np.uint16))
        assert f.meta["hash"] and f.meta["real_time"] == 500000
    assert isinstance(evs[-1], SeriesEnd) and evs[-1].frames == n and not evs[-1].aborted
    assert counters["malformed"] == 0 and counters["received"] == n


# --------------------------------------------------------------- v2: tickit-devices' messages

# The canned Stream v2 messages tickit-devices ships (captured from an EIGER2 16M), vendored
# byte for byte under tests/data/dectris_stream2 (Apache-2.0, see its README); sent here as
# they are. (Its EigerStream2 class cannot re-encode them under cbor2 >= 6, which decodes
# maps as immutable frozendicts.)
TICKIT_SHA256 = "cf12323dbcdb88976a6e32f27a352d8a55b8561fc43409d87dab725dc98c0387"
STREAM2_DATA = Path(__file__).parent / "data" / "dectris_stream2"


def _tickit_messages() -> dict[str, bytes]:
    return {n: (STREAM2_DATA / f"{n}.cbor").read_bytes() for n in ("start", "image", "end")}


def _reference_pixels(image_msg: bytes) -> np.ndarray:
    """Decode the image with DECTRIS's own library, independently of our code path."""
    import cbor2

    compression = pytest.importorskip("dectris.compression")
    raw = cbor2.loads(image_msg)["data"]["threshold_1"]  # tags left undecoded
    assert raw.tag == 40
    (h, w), typed = raw.value
    assert typed.tag == 69  # little-endian uint16
    algorithm, elem_size, blob = typed.value.value
    assert (algorithm, elem_size) == ("bslz4", 2)
    out = compression.decompress(blob, algorithm, elem_size=elem_size)
    return np.frombuffer(out, "<u2").reshape(h, w)


@pytest.mark.parametrize("version", [2, "auto"])
def test_stream_v2_canned_messages_from_tickit_decode_exact_pixels(ctx, version):
    msgs = _tickit_messages()
    cam = ctx.socket(zmq.PUSH)
    cam.setsockopt(zmq.LINGER, 0)
    port = cam.bind_to_random_port(LOOPBACK)
    try:
        with DectrisSource(f"{LOOPBACK}:{port}", version=version, context=ctx) as src:
            for name in ("start", "image", "end"):
                cam.send(msgs[name])
            evs = _collect(src)
            counters = src.counters
    finally:
        cam.close(linger=0)
    start, frame, end = evs
    assert isinstance(start, SeriesStart) and start.series == "15614"
    assert start.shape == (4362, 4148) and start.frames == 1
    assert start.meta["detector_description"] == "Dectris EIGER2 Si 16M"
    assert isinstance(frame, Frame) and frame.index == 0 and frame.series == "15614"
    assert frame.image.shape == (4362, 4148) and frame.image.dtype == np.uint16
    ref = _reference_pixels(msgs["image"])
    assert hashlib.sha256(ref.tobytes()).hexdigest() == TICKIT_SHA256
    # the EIGER2's module gaps (266 rows, 36 columns) carry 0xFFFF: set to the frame median
    gaps = ref == 0xFFFF
    assert gaps.all(axis=1).sum() == 266 and gaps.all(axis=0).sum() == 36
    np.testing.assert_array_equal(frame.image[~gaps], ref[~gaps])
    assert (frame.image[gaps] == np.median(ref[~gaps])).all()
    assert frame.meta["masked_px"] == gaps.sum()
    assert frame.meta["real_time"] == [215873, 50000000]
    assert isinstance(end, SeriesEnd) and not end.aborted
    assert counters["malformed"] == 0


def test_bslz4_decodes_with_lz4_alone(monkeypatch):
    """One codec library: neither bitshuffle nor dectris-compression is imported."""
    import sys

    msgs = _tickit_messages()
    for mod in ("bitshuffle", "dectris", "dectris.compression"):
        monkeypatch.setitem(sys.modules, mod, None)  # import -> ImportError
    import cbor2

    (h, w), typed = cbor2.loads(msgs["image"])["data"]["threshold_1"].value
    _algorithm, _elem_size, blob = typed.value.value
    raw = comp.bslz4_decode(blob, (h, w), np.dtype("<u2"))
    assert hashlib.sha256(raw.tobytes()).hexdigest() == TICKIT_SHA256
    (ev,) = dx.Dectris2Decoder().feed([msgs["image"]])
    np.testing.assert_array_equal(ev.image[raw != 0xFFFF], raw[raw != 0xFFFF])


# --------------------------------------------------------------- our encoders, round trip


@pytest.mark.parametrize("encoding", ["bslz4", "lz4", "raw"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_stream_v1_encoder_round_trip(encoding, dtype):
    rng = np.random.default_rng(5)
    hi = {"uint8": 255, "uint16": 65535, "uint32": 2**24}[dtype]
    imgs = [rng.integers(0, hi, (37, 53)).astype(dtype) for _ in range(3)]  # odd, non-square
    msgs = [dx.encode_v1_header(7, shape=(37, 53), dtype=dtype, nimages=3)]
    msgs += [dx.encode_v1_frame(7, i, im, encoding=encoding) for i, im in enumerate(imgs)]
    msgs += [dx.encode_v1_end(7)]
    src = MemorySource(msgs, protocol="dectris1")
    evs = list(src)
    assert evs[0].shape == (37, 53) and evs[0].frames == 3
    frames = [e for e in evs if isinstance(e, Frame)]
    for f, im in zip(frames, imgs, strict=True):
        want = im.astype(np.float32) if dtype == "uint32" else im  # uint32 -> float32, exact
        assert f.image.dtype == want.dtype
        np.testing.assert_array_equal(f.image, want)
    assert src.counters["malformed"] == 0


@pytest.mark.parametrize("compression", ["bslz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_stream_v2_encoder_round_trip(compression, dtype):
    rng = np.random.default_rng(6)
    img = (rng.random((29, 41)) * 250).astype(dtype)
    msgs = [dx.encode_v2_start(3, shape=(29, 41), nimages=1),
            dx.encode_v2_frame(3, 0, img, compression=compression), dx.encode_v2_end(3)]
    evs = list(MemorySource(msgs, protocol="dectris2"))
    np.testing.assert_array_equal(evs[1].image, img)
    assert evs[1].image.dtype == np.dtype(dtype)


def test_our_bslz4_agrees_with_dectris_compression():
    compression = pytest.importorskip("dectris.compression")
    img = np.random.default_rng(7).integers(0, 4000, (100, 131)).astype(np.uint16)
    blob = comp.bslz4_encode(img)
    ref = compression.decompress(blob, "bslz4", elem_size=2)
    np.testing.assert_array_equal(np.frombuffer(ref, "<u2").reshape(img.shape), img)
    np.testing.assert_array_equal(comp.bslz4_decode(blob, img.shape, np.dtype("<u2")), img)


def test_stream_v2_lz4_framing_agrees_with_dectris_compression():
    import lz4.block

    img = np.random.default_rng(8).integers(0, 9, (64, 100)).astype(np.uint16)
    raw = img.tobytes()
    block = 4096
    body = b""
    for i in range(0, len(raw), block):
        c = lz4.block.compress(raw[i : i + block], store_size=False)
        body += len(c).to_bytes(4, "big") + c
    blob = len(raw).to_bytes(8, "big") + block.to_bytes(4, "big") + body
    np.testing.assert_array_equal(comp.lz4_framed_decode(blob, img.shape, np.dtype("<u2")), img)
    compression = pytest.importorskip("dectris.compression")
    assert compression.decompress(blob, "lz4") == raw


# --------------------------------------------------------------- malformed DECTRIS messages


def _v1_frame_parts():
    return dx.encode_v1_frame(1, 0, np.arange(64, dtype=np.uint16).reshape(8, 8))


def _bad_v1():
    good = _v1_frame_parts()
    cut = [*good[:2], good[2][:-5], good[3]]
    size_lie = [good[0], good[1].replace(b'"size": ', b'"size": 1'), good[2], good[3]]
    lz4_dd = good[1].replace(b"bs16-lz4<", b"lz4<").replace(b'"size": ', b'"sizex": ')
    return {
        "garbage": [b"\x00\x01garbage"],
        "no htype": [b'{"series": 1}'],
        "unknown htype": [b'{"htype": "dzebra-1.0"}'],
        "too few parts": good[:2],
        "truncated bslz4": cut,
        "truncated bslz4, no size": [good[0], good[1].replace(b'"size": ', b'"sizex": '),
                                     good[2][:-5], good[3]],
        "size mismatch": size_lie,
        "bad encoding": [good[0], good[1].replace(b"bs16-lz4<", b"zstd<"), good[2], good[3]],
        "type mismatch": [good[0], good[1].replace(b"uint16", b"uint8"), good[2], good[3]],
        "bad shape": [good[0], good[1].replace(b"[8, 8]", b"[8, -8]"), good[2], good[3]],
        "corrupt lz4": [good[0], lz4_dd, b"\xff" * 40, good[3]],
    }


def _bad_v2():
    import cbor2

    img = np.arange(64, dtype=np.uint16).reshape(8, 8)
    good = dx.encode_v2_frame(1, 0, img)[0]
    blob = comp.bslz4_encode(img)

    def image_msg(array) -> bytes:
        return cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0,
                            "data": {"threshold_1": array}})  # fmt: skip

    tag = cbor2.CBORTag
    return {
        "garbage": [b"\xff\xfe\xfd"],
        "truncated cbor": [good[: len(good) // 2]],
        "two parts": [good, good],
        "not a map": [cbor2.dumps([1, 2, 3])],
        "unknown type": [cbor2.dumps({"type": "zebra"})],
        "no data": [cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0})],
        "1-d array": [image_msg(tag(69, img.tobytes()))],
        "short typed array": [image_msg(tag(40, [[8, 8], tag(69, img.tobytes()[:-2])]))],
        "bad compression tag": [image_msg(tag(40, [[8, 8], tag(69, tag(56500, ["bslz4"]))]))],
        "unknown algorithm": [image_msg(tag(40, [[8, 8], tag(69, tag(56500,
                                                                     ["zip", 2, blob]))]))],
        "elem size mismatch": [image_msg(tag(40, [[8, 8], tag(69, tag(56500,
                                                                      ["bslz4", 4, blob]))]))],
        "truncated bslz4": [image_msg(tag(40, [[8, 8], tag(69, tag(56500,
                                                                   ["bslz4", 2, blob[:-3]]))]))],
        "3-d": [image_msg(tag(40, [[2, 4, 8], tag(69, img.tobytes())]))],
    }  # fmt: skip


@pytest.mark.parametrize(("decoder", "cases"), [(dx.Dectris1Decoder, _bad_v1),
                                                (dx.Dectris2Decoder, _bad_v2)])  # fmt: skip
def test_malformed_dectris_messages_raise_malformed_message(decoder, cases):
    for name, parts in cases().items():
        with pytest.raises(MalformedMessage) as info:
            decoder().feed(parts)
        assert "\n" not in str(info.value), name


def test_corrupt_compressed_bytes_never_crash_the_decoder():
    img = np.random.default_rng(9).integers(0, 3000, (64, 64)).astype(np.uint16)
    blob = bytearray(comp.bslz4_encode(img))
    rng = np.random.default_rng(10)
    outcomes = {"ok": 0, "malformed": 0}
    for _ in range(300):
        bad = bytearray(blob)
        for pos in rng.integers(0, len(bad), 3):
            bad[pos] = int(rng.integers(0, 256))
        try:
            comp.bslz4_decode(bytes(bad), img.shape, np.dtype("<u2"))
            outcomes["ok"] += 1
        except MalformedMessage:
            outcomes["malformed"] += 1
    assert outcomes["malformed"] > 0 and sum(outcomes.values()) == 300


def test_malformed_dectris_messages_are_counted_by_the_source():
    msgs = [dx.encode_v1_header(1, shape=(8, 8), dtype="uint16", nimages=1)]
    msgs += list(_bad_v1().values())
    msgs += [_v1_frame_parts(), dx.encode_v1_end(1)]
    src = MemorySource(msgs, protocol="dectris1")
    evs = list(src)
    assert sum(isinstance(e, Frame) for e in evs) == 1
    assert src.counters["malformed"] == len(_bad_v1())


def test_v1_header_with_config_in_a_separate_message_and_detail_none():
    dec = dx.Dectris1Decoder()
    assert dec.feed([b'{"htype": "dheader-1.0", "series": 5, "header_detail": "basic"}']) == []
    (start,) = dec.feed([b'{"x_pixels_in_detector": 10, "y_pixels_in_detector": 4, '
                         b'"nimages": 2, "ntrigger": 3}'])  # fmt: skip
    assert (start.series, start.shape, start.frames) == ("5", (4, 10), 6)
    (start,) = dx.Dectris1Decoder().feed([b'{"htype": "dheader-1.0", "series": 6, '
                                          b'"header_detail": "none"}'])  # fmt: skip
    assert start.series == "6" and start.shape is None


# --------------------------------------------------------------- pixel mask of the series start


@pytest.mark.parametrize("version", [1, 2])
def test_pixel_mask_of_the_series_start_sets_gap_rows_to_the_median(version):
    """Rows the start message masks (dead: 0, a dark 'line') and the 0xFFFF marker of a gap
    column become the frame median, so the dark-line stand-in engine finds nothing there."""
    from loopline.daemon.standins import ThresholdEngine

    rng = np.random.default_rng(12)
    img = rng.normal(1000, 30, (64, 96)).astype(np.uint16)
    mask = np.zeros(img.shape, np.uint32)
    mask[20:23] = 1  # a module-gap band, bit 0
    img[20:23] = 0  # ... its pixels read 0: a dark line across the frame
    img[:, 50] = 0xFFFF  # the detector's marker of a masked pixel, not in our mask
    if version == 1:
        msgs = [dx.encode_v1_header(4, shape=img.shape, dtype="uint16", nimages=1,
                                    pixel_mask=mask),
                dx.encode_v1_frame(4, 0, img), dx.encode_v1_end(4)]  # fmt: skip
    else:
        msgs = [dx.encode_v2_start(4, shape=img.shape, nimages=1, pixel_mask=mask),
                dx.encode_v2_frame(4, 0, img), dx.encode_v2_end(4)]  # fmt: skip
    src = MemorySource(msgs, protocol=f"dectris{version}")
    start, frame, _end = list(src)
    assert src.counters["malformed"] == 0
    if version == 2:
        assert start.meta["pixel_mask_px"] == 3 * 96
    masked = (mask != 0) | (img == 0xFFFF)
    med = np.median(img[~masked])
    assert frame.meta["masked_px"] == masked.sum()
    assert (frame.image[masked] == np.uint16(med)).all()
    np.testing.assert_array_equal(frame.image[~masked], img[~masked])
    engine = ThresholdEngine(k=2.0)
    unmasked = img.copy()
    unmasked[:, 50] = 1000
    assert len(engine.forward([unmasked])[0].boxes) >= 1  # the dead rows: a "line"
    assert len(engine.forward([frame.image])[0].boxes) == 0


# --------------------------------------------------------------- frame pool sized from the start


def test_slot_pool_grows_a_segment_for_a_larger_series_within_the_cap():
    from loopline.daemon.shm import ANALYSIS, RECORD, PoolTooSmall, SlotPool

    pool = SlotPool.create(4, 64, 64, 2)
    other = SlotPool.attach(pool.spec)  # another process's view: finds the segment by itself
    try:
        cap = pool.total_bytes + 8 * (300 * 200 * 4 + 2 * (300 * 200 // 8)) + 4096
        assert pool.acquire((300, 200)) is None and not pool.fits((300, 200), np.uint16)
        assert pool.grow((300, 200), slots=128, cap_bytes=cap)
        assert not pool.grow((300, 200), slots=128, cap_bytes=cap)  # fits already
        assert pool.total_slots == 4 + 8  # as many as the cap holds, not the 128 asked
        slot, gen = pool.acquire((300, 200))
        assert slot >= 4
        img = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200)
        pool.write_image(slot, img)
        np.testing.assert_array_equal(other.read_image(slot, gen, (300, 200), "uint16"), img)
        masks = np.zeros((2, 300, 200), bool)
        masks[1, 100:110] = True
        assert other.write_masks(slot, gen, masks) == 2
        np.testing.assert_array_equal(pool.read_masks(slot, gen, 2, (300, 200)), masks)
        small = pool.acquire((64, 64))
        assert small is not None and small[0] < 4  # small frames stay in the primary pool
        assert pool.in_use() == 2 and other.in_use() == 2
        assert other.release(slot, gen, RECORD) and pool.release(slot, gen, ANALYSIS)
        with pytest.raises(PoolTooSmall) as info:
            pool.grow((4362, 4148), slots=128, cap_bytes=cap)
        msg = str(info.value)
        assert "\n" not in msg and "4362 x 4148" in msg and "pool.max_memory_mb" in msg
    finally:
        other.close()
        pool.close()
        pool.unlink()
    from multiprocessing import shared_memory

    with pytest.raises(FileNotFoundError):  # the segment went with the pool
        shared_memory.SharedMemory(name=f"{pool.spec.name}_s1")


@pytest.mark.slow
def test_daemon_with_a_sender_that_started_first_and_frames_larger_than_its_pool(tmp_path,
                                                                                 daemons, ctx):
    """libertem-dectris's simulator sends first; its series start goes to a receiver that
    went away (the daemon misses it), its 512² frames are larger than the 256² pool: the
    series is started from the first image header (series_resynced), the pool grows a
    segment from that shape, and --until-series-end ends the run at the series end."""
    libertem_dectris = pytest.importorskip("libertem_dectris")
    from test_daemon import Daemon

    n = 5
    sim = libertem_dectris.DectrisSim.new_mocked(LOOPBACK, n, random_port=True)
    uri = sim.get_uri()  # (the simulator is busy sending, below: ask now)
    early = ctx.socket(zmq.PULL)
    early.setsockopt(zmq.LINGER, 0)
    early.connect(uri)
    sim.send_headers()  # dheader + config: received by a receiver that then goes away
    assert b"dheader" in early.recv() and early.poll(5000)
    early.recv()
    early.close()
    time.sleep(0.5)  # the simulator sees it go: its frames wait for the next receiver
    errors: list[BaseException] = []

    def send():
        try:
            sim.send_frames()  # blocks until the daemon's receiver connects
            sim.send_footer()
        except BaseException as e:  # re-raised below
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    d = Daemon(tmp_path, uri, **{"source.protocol": "dectris1", "pool.max_height": 256,
                                 "pool.max_width": 256, "pool.slots": 16,
                                 "pool.max_memory_mb": 256.0})  # fmt: skip
    daemons.append(d)
    d.thread.start()  # no wait for "ready": the sender is already waiting
    assert d.wait(120) == 0, d.sup.error
    t.join(10)
    assert not errors
    s = d.summary()
    c = s["counters"]
    assert c["received"] == n and c["recorded"] == n and c["rejected_oversize"] == 0
    assert c["series_resynced"] == 1 and c["series_started"] == 1 and c["series_ended"] == 1
    start = next(e for e in s["series"] if e["event"] == "start")
    assert start["synthesized"] and start["shape"] == [512, 512] and start["series"] == "34"
