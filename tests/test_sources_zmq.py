"""The loopline protocol over real ZeroMQ sockets on loopback (random ports, bounded waits)."""

from __future__ import annotations

import itertools
import json
import threading
import time

import numpy as np
import pytest
import zmq

from loopline.daemon.ingest import Frame, LooplineSource, SeriesEnd, SeriesStart, open_source
from loopline.daemon.ingest.loopline1 import protocol as lp
from loopline.daemon.ingest.simulator import Simulator, SimulatorThread

pytestmark = pytest.mark.timeout(30)
LOOPBACK = "tcp://127.0.0.1"



class Camera:
    """A PUSH socket bound to a random loopback port, as a camera binds its data port."""

    def __init__(self, ctx: zmq.Context):
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"{LOOPBACK}:{self.sock.bind_to_random_port(LOOPBACK)}"

    def send_multipart(self, parts, **kw) -> None:
        self.sock.send_multipart(parts, **kw)


@pytest.fixture
def push(ctx):
    cam = Camera(ctx)
    yield cam
    cam.sock.close(linger=0)


def _collect(src, until=SeriesEnd, n=1, timeout_s=10.0) -> list:
    """Events until the n-th event of type ``until`` (bounded in time)."""
    out, seen, deadline = [], 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ev = src.get(timeout=0.05)
        if ev is None:
            continue
        out.append(ev)
        if isinstance(ev, until):
            seen += 1
            if seen == n:
                return out
    raise AssertionError(f"timed out; got {[type(e).__name__ for e in out]}")


def _wait(cond, timeout_s=10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _images(n, shape=(32, 48), dtype=np.uint16):
    rng = np.random.default_rng(3)
    return [(rng.random(shape) * 60000).astype(dtype) for _ in range(n)]


@pytest.mark.parametrize("socket", ["push", "pub"])
def test_simulator_to_source_exact_pixels(ctx, socket):
    imgs = _images(8)
    stop = threading.Event()

    def job(sim: Simulator):
        if socket == "pub":  # PUB drops until the subscriber has joined
            _wait(lambda: src_ready.is_set())
            time.sleep(0.2)
        return sim.send_series(imgs, series="s1", fps=200, pixel_size_nm=1.5)

    src_ready = threading.Event()
    sim = SimulatorThread(job, f"{LOOPBACK}:*", socket=socket, context=ctx, linger_s=1.0,
                          stop=stop)  # fmt: skip
    sim.start()
    with LooplineSource(sim.endpoint, socket="sub" if socket == "pub" else "pull",
                        context=ctx) as src:  # fmt: skip
        src_ready.set()
        evs = _collect(src)
        stats = sim.join_and_raise()
    frames = [e for e in evs if isinstance(e, Frame)]
    assert isinstance(evs[0], SeriesStart) and evs[0].frames == 8 and evs[0].dtype == "uint16"
    assert [f.index for f in frames] == list(range(8))
    for f, img in zip(frames, imgs, strict=True):
        np.testing.assert_array_equal(f.image, img)
        assert f.pixel_size_nm == 1.5 and f.series == "s1"
    assert evs[-1].frames == 8 and evs[-1].frames_sent == 8 and not evs[-1].aborted
    assert stats.sent == 8
    assert src.counters["received"] == 8 and src.counters["malformed"] == 0


def test_source_can_bind_and_simulator_connect(ctx):
    with LooplineSource(f"{LOOPBACK}:0", bind=True, context=ctx) as src:
        assert src.endpoint.startswith(LOOPBACK) and not src.endpoint.endswith(":0")
        with Simulator(src.endpoint, bind=False, context=ctx, linger_s=1.0) as sim:
            sim.send_series(_images(3), series="c", fps=float("inf"))
            evs = _collect(src)
    assert sum(isinstance(e, Frame) for e in evs) == 3


def _malformed_messages():
    """Every kind of broken message, cycling."""
    good = lp.encode_frame("m", 0, np.zeros((4, 4), np.uint8))
    hdr = json.loads(bytes(good[0]))
    pix = bytes(good[1])

    def h(**kw):
        return json.dumps({**hdr, **kw}).encode()

    kinds = [
        [h(shape=[5, 4]), pix],  # wrong shape
        [h(), pix[:7]],  # truncated buffer
        [b'{"protocol": "loopline/1", "type": "fra', pix],  # bad JSON
        [h(dtype="int64"), pix],  # wrong dtype
        [b"\x00\xff\x13garbage\x80", b"\x01\x02"],  # garbage bytes
        [h()],  # wrong part count
        [h(), pix, pix],  # wrong part count
        [h(protocol="loopline/0"), pix],  # wrong version
        [h(index="seven"), pix],  # wrong field type
        [b"[]"],  # not an object
    ]
    return itertools.cycle(kinds)


@pytest.mark.timeout(60)
def test_ten_thousand_malformed_messages_are_counted_and_the_receiver_keeps_running(ctx, push):
    n_bad = 10_000
    with LooplineSource(push.endpoint, context=ctx, rcvhwm=20_000) as src:
        push.send_multipart(lp.encode_series_start("ok", shape=(4, 4), dtype="uint8"))
        bad = _malformed_messages()
        good = 0
        for i in range(n_bad):
            push.send_multipart(next(bad), copy=False)
            if i % 1000 == 999:  # valid frames in between still get through
                push.send_multipart(lp.encode_frame("ok", good, np.full((4, 4), good, np.uint8)))
                good += 1
        push.send_multipart(lp.encode_series_end("ok", frames=good))
        evs = _collect(src, timeout_s=30)
        c = src.counters
    frames = [e for e in evs if isinstance(e, Frame)]
    assert c["malformed"] == n_bad
    assert c["messages"] == n_bad + good + 2
    assert [int(f.image[0, 0]) for f in frames] == list(range(good)) and c["received"] == good
    assert isinstance(evs[-1], SeriesEnd) and not evs[-1].aborted


def test_aborted_series_then_new_series_resynchronises_over_the_wire(ctx, push):
    with LooplineSource(push.endpoint, context=ctx) as src:
        push.send_multipart(lp.encode_series_start("a"))
        for i in range(3):
            push.send_multipart(lp.encode_frame("a", i, np.full((2, 2), i, np.uint8)))
        # the camera restarts: no series-end for "a"; a frame of "b" arrives before its start
        push.send_multipart(lp.encode_frame("b", 0, np.full((2, 2), 9, np.uint8)))
        push.send_multipart(lp.encode_series_start("c"))
        for i in range(2):
            push.send_multipart(lp.encode_frame("c", i, np.full((2, 2), 20 + i, np.uint8)))
        push.send_multipart(lp.encode_series_end("c", frames=2))
        evs = _collect(src, n=3)
        c = src.counters
    kinds = [(type(e).__name__, e.series) for e in evs]
    assert kinds == [("SeriesStart", "a"), ("Frame", "a"), ("Frame", "a"), ("Frame", "a"),
                     ("SeriesEnd", "a"), ("SeriesStart", "b"), ("Frame", "b"),
                     ("SeriesEnd", "b"), ("SeriesStart", "c"), ("Frame", "c"), ("Frame", "c"),
                     ("SeriesEnd", "c")]  # fmt: skip
    assert evs[4].aborted and evs[4].frames == 3
    assert evs[5].synthesized and evs[7].aborted
    assert not evs[-1].aborted and evs[-1].frames == 2
    assert (c["aborted"], c["resynced"], c["series"]) == (2, 1, 3)


def test_receiver_never_waits_for_a_slow_consumer(ctx, push):
    push.sock.setsockopt(zmq.SNDHWM, 5)
    with LooplineSource(push.endpoint, context=ctx, max_queued_frames=4, rcvhwm=5) as src:
        push.send_multipart(lp.encode_series_start("s"))
        img = np.zeros((64, 64), np.uint8)
        t0 = time.monotonic()
        for i in range(200):  # nobody reads: a blocking receiver would stall the PUSH here
            push.send_multipart(lp.encode_frame("s", i, img))
        push.send_multipart(lp.encode_series_end("s", frames=200))
        _wait(lambda: src.counters["messages"] == 202)
        assert time.monotonic() - t0 < 5.0
        c = src.counters
        assert c["received"] == 4 and c["dropped"] == 196
        evs = _collect(src)
    assert sum(isinstance(e, Frame) for e in evs) == 4
    assert evs[-1].frames == 200 and evs[-1].frames_sent == 200  # decoded, then 196 dropped


def test_close_is_prompt_and_iteration_stops(ctx, push):
    src = LooplineSource(push.endpoint, context=ctx)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0
    assert list(src) == []
    src.close()  # idempotent


def test_bad_endpoint_raises_at_construction(ctx):
    with pytest.raises(ValueError, match="cannot bind"):
        LooplineSource("tcp://300.1.1.1:5", bind=True, context=ctx)
    with pytest.raises(ValueError, match="socket must be one of"):
        LooplineSource(f"{LOOPBACK}:1", socket="router", context=ctx)


def test_open_source_builds_zmq_sources(ctx):
    src = open_source(f"{LOOPBACK}:1", "loopline", context=ctx)
    assert isinstance(src, LooplineSource)
    src.close()
    from loopline.daemon.ingest import DectrisSource

    for proto, version in [("dectris1", 1), ("dectris2", 2), ("dectris", "auto")]:
        src = open_source(f"{LOOPBACK}:1", proto, context=ctx)
        assert isinstance(src, DectrisSource) and src.version == version
        src.close()


def test_curve_encrypted_stream(ctx, tmp_path):
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    server_public, server_secret = zmq.curve_keypair()
    key_file = tmp_path / "camera.pub"
    key_file.write_bytes(server_public + b"\n")
    imgs = _images(3)
    sim = SimulatorThread(lambda s: s.send_series(imgs, series="enc", fps=float("inf")),
                          context=ctx, linger_s=1.0, curve_secret=server_secret)  # fmt: skip
    sim.start()
    # a receiver with the wrong server key gets nothing (the handshake fails)
    with LooplineSource(sim.endpoint, context=ctx,
                        curve_server_key=zmq.curve_keypair()[0]) as wrong:  # fmt: skip
        assert wrong.get(timeout=0.3) is None
    with LooplineSource(sim.endpoint, context=ctx, curve_server_key=str(key_file)) as src:
        evs = _collect(src)
        sim.join_and_raise()
    frames = [e for e in evs if isinstance(e, Frame)]
    for f, img in zip(frames, imgs, strict=True):
        np.testing.assert_array_equal(f.image, img)
    with pytest.raises(ValueError, match="CURVE key"):
        LooplineSource(f"{LOOPBACK}:1", context=ctx, curve_server_key="not-a-key")
