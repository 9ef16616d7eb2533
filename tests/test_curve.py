"""CURVE on every socket that leaves the machine (issues 17 and 18): one key reader, viewers
that reach a publisher keyed with a ``zmq.auth`` certificate, allow-lists (ZAP) on the
publisher and on a bound source, and a camera reached again after an impostor's failed
handshake. Real sockets on loopback, keys made by ``zmq.auth.create_certificates``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from loopline.daemon.config import load_config
from loopline.daemon.curve import load_allowed_keys, load_curve_key
from loopline.daemon.ingest import LooplineSource
from loopline.daemon.ingest.base import Frame
from loopline.daemon.ingest.loopline1 import protocol
from loopline.daemon.ingest.simulator import Simulator
from loopline.daemon.publisher import Publisher
from loopline.viewers.config import ViewConfigError, load_view_config
from loopline.viewers.stream import ResultSubscriber

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def certs(folder: Path, *names: str) -> dict[str, tuple[Path, Path]]:
    """``zmq.auth`` certificates: name -> (public NAME.key, secret NAME.key_secret)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {n: tuple(map(Path, zmq.auth.create_certificates(folder, n))) for n in names}


def allow_folder(folder: Path, *public: Path) -> Path:
    folder.mkdir()
    for p in public:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def wait_until(what, timeout: float = 10.0) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if what():
            return True
        time.sleep(0.05)
    return False


def sender(endpoint: str, ctx: zmq.Context, **kw) -> Simulator:
    """A simulator whose ``send`` never waits (its stop flag is set): True when queued."""
    return Simulator(endpoint, context=ctx, linger_s=0, stop=threading.Event(), **kw)


def nowait(sim: Simulator, parts: list) -> bool:
    sim.stop.set()
    return sim.send(parts)


def publisher(ctx: zmq.Context, **keys: str) -> Publisher:
    cfg = load_config(overrides={"publish.endpoint": "tcp://127.0.0.1:0",
                                 **{f"publish.{k}": v for k, v in keys.items()}})  # fmt: skip
    return Publisher(ctx, cfg.publish)


def test_one_key_reader_for_certificates_and_bare_keys(tmp_path):
    c = certs(tmp_path, "server")
    public, secret = zmq.auth.load_certificate(c["server"][1])
    # the secret certificate holds both keys; each is read as asked (the old reader returned
    # the public key when asked for the secret one)
    assert load_curve_key(c["server"][1], secret=True) == secret
    assert load_curve_key(str(c["server"][1]), secret=False) == public
    assert load_curve_key(c["server"][0], secret=False) == public
    with pytest.raises(ValueError, match=r"expected a secret key in .*server\.key, got a "
                                         r"certificate with the public key only"):
        load_curve_key(c["server"][0], secret=True)
    bare = tmp_path / "bare"
    bare.write_bytes(secret + b"\n")
    assert load_curve_key(bare, secret=True) == secret
    assert load_curve_key(secret, secret=True) == secret
    assert load_curve_key("", secret=True) is None
    with pytest.raises(ValueError, match="expected a 40-character Z85 key or a key file"):
        load_curve_key("not-a-key", secret=False)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match=r"expected 40 Z85 characters in .*, got 3"):
        load_curve_key(tmp_path / "short", secret=False)
    # allow-lists: a folder of certificates, or a file of keys
    more = certs(tmp_path / "viewers", "a", "b")
    keys = load_allowed_keys(tmp_path / "viewers")
    assert keys == {load_curve_key(more[n][0], secret=False) for n in "ab"}
    listed = tmp_path / "listed"
    listed.write_text(f"# viewers\n{public.decode()}  # the server itself\n")
    assert load_allowed_keys(listed) == {public}
    # "#" is a Z85 character: a key holding one, even at its start, is not cut as a comment
    hashed = next(k for k in (zmq.curve_keypair()[0] for _ in range(1000)) if b"#" in k[:20])
    starts = b"#" + hashed[1:]
    listed.write_text(f"{hashed.decode()}\n{starts.decode()} # another\n")
    assert load_allowed_keys(listed) == {hashed, starts}
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="expected at least one client public key"):
        load_allowed_keys(tmp_path / "none")


def test_publisher_with_a_certificate_reaches_a_viewer(ctx, tmp_path):
    """``publish.curve_secret_key`` = zmq.auth's server.key_secret; the viewer has server.key."""
    c = certs(tmp_path, "server")
    pub = publisher(ctx, curve_secret_key=str(c["server"][1]))
    try:
        cfg = load_view_config(overrides={"endpoint": pub.endpoint,
                                          "curve_server_key": str(c["server"][0])})  # fmt: skip
        with ResultSubscriber(cfg.endpoint, stale_s=5.0, curve_server_key=cfg.curve_server_key,
                              curve_secret_key=None) as sub:  # fmt: skip
            ok = wait_until(lambda: pub.metrics({"uptime_s": 1.0}) or sub.metrics)
            sub.maybe_raise()
        assert ok, "a viewer with the server's public key got nothing"
        assert sub.metrics["schema"] == "loopline.metrics/1"
        # a plain viewer (no CURVE) gets nothing
        with ResultSubscriber(pub.endpoint, stale_s=5.0) as plain:
            assert not wait_until(lambda: pub.metrics({"uptime_s": 2.0}) or plain.metrics, 1.0)
    finally:
        pub.close()
    with pytest.raises(ViewConfigError, match=r"view\.curve_secret_key: .*expected a secret key"):
        load_view_config(overrides={"curve_server_key": str(c["server"][0]),
                                    "curve_secret_key": str(c["server"][0])})  # fmt: skip


def test_publisher_allow_list_refuses_a_viewer_not_on_it(ctx, tmp_path):
    c = certs(tmp_path / "keys", "server", "lab", "stranger")
    allowed = allow_folder(tmp_path / "allowed", c["lab"][0])
    pub = publisher(ctx, curve_secret_key=str(c["server"][1]), curve_clients=str(allowed))
    try:
        with ResultSubscriber(pub.endpoint, stale_s=5.0, curve_server_key=str(c["server"][0]),
                              curve_secret_key=str(c["lab"][1])) as lab, \
             ResultSubscriber(pub.endpoint, stale_s=5.0, curve_server_key=str(c["server"][0]),
                              curve_secret_key=str(c["stranger"][1])) as stranger:  # fmt: skip
            assert wait_until(lambda: pub.metrics({"uptime_s": 1.0}) or lab.metrics)
            # the stranger knows the server's key but is not on the list
            assert wait_until(lambda: pub.allow.refused >= 1, 5.0)
            for _ in range(10):
                pub.metrics({"uptime_s": 3.0})
                time.sleep(0.05)
            assert stranger.metrics == {}
    finally:
        pub.close()
    with pytest.raises(ValueError, match=r"curve_clients \(an allow-list of viewer keys\) needs"):
        publisher(ctx, curve_clients=str(allowed))


def test_bound_source_lets_in_only_listed_senders(ctx, tmp_path):
    c = certs(tmp_path / "keys", "daemon", "camera", "impostor")
    allowed = allow_folder(tmp_path / "allowed", c["camera"][0])
    img = np.zeros((32, 32), np.uint8)
    with LooplineSource("tcp://127.0.0.1:0", bind=True, context=ctx,
                        curve_client_secret=str(c["daemon"][1]),
                        curve_clients=str(allowed)) as src:  # fmt: skip
        impostor = sender(src.endpoint, ctx, bind=False, curve_server_key=str(c["daemon"][0]),
                          curve_secret=str(c["impostor"][1]))  # fmt: skip
        camera = sender(src.endpoint, ctx, bind=False, curve_server_key=str(c["daemon"][0]),
                        curve_secret=str(c["camera"][1]))  # fmt: skip
        try:
            assert nowait(impostor, protocol.encode_frame("evil", 0, img))
            assert wait_until(lambda: src.counters["handshake_failures"] >= 1)
            for i in range(3):
                assert nowait(camera, protocol.encode_frame("cam", i, img))
            evs = []
            assert wait_until(lambda: evs.append(src.get(timeout=0.05)) or sum(
                isinstance(e, Frame) for e in evs) >= 3)  # fmt: skip
        finally:
            impostor.close(linger_s=0)
            camera.close(linger_s=0)
        assert {e.series for e in evs if isinstance(e, Frame)} == {"cam"}
    with pytest.raises(ValueError, match="needs a bound CURVE source"):
        LooplineSource("tcp://127.0.0.1:1", context=ctx, curve_clients=str(allowed))


@pytest.mark.parametrize("impostor", ["plain", "other-key"])
def test_camera_reached_again_after_an_impostors_failed_handshake(ctx, tmp_path, impostor):
    """An impostor on the camera's address fails the handshake (no CURVE, or another server
    key): ZeroMQ would give the address up for good; the source connects again, with a
    back-off, and gets the real camera's frames once it is there."""
    c = certs(tmp_path, "camera", "other")
    fake = ctx.socket(zmq.PUSH)
    fake.setsockopt(zmq.LINGER, 0)
    if impostor == "other-key":
        fake.curve_secretkey = zmq.auth.load_certificate(c["other"][1])[1]
        fake.curve_publickey = zmq.auth.load_certificate(c["other"][1])[0]
        fake.curve_server = True
    port = fake.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    img = np.zeros((32, 32), np.uint8)
    with LooplineSource(endpoint, context=ctx, curve_server_key=str(c["camera"][0])) as src:
        assert wait_until(lambda: src.counters["handshake_failures"] >= 1)
        time.sleep(1.0)
        # backed off, not spinning: a few attempts a second at most
        assert src.counters["handshake_failures"] <= 8, src.counters
        fake.close()  # ZeroMQ lets the port go in its own time
        made: list[Simulator] = []

        def bound() -> bool:
            try:
                made.append(sender(endpoint, ctx, curve_secret=str(c["camera"][1])))
            except ValueError:
                return False
            return True

        assert wait_until(bound, 5.0)
        camera = made[0]
        try:
            evs: list = []

            def got_frames() -> bool:
                nowait(camera, protocol.encode_frame("cam", len(evs), img))
                ev = src.get(timeout=0.1)
                if isinstance(ev, Frame):
                    evs.append(ev)
                return len(evs) >= 2

            assert wait_until(got_frames, 15.0), src.counters
        finally:
            camera.close(linger_s=0)
