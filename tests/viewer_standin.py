"""A stand-in for the daemon's result stream, for the viewer tests.

Replays a ``loopline synth --video`` folder on a PUB socket as the daemon publishes results:
the frame messages of :func:`build_messages` (the truth through the daemon's own measure step
and publisher), with ``series`` and ``metrics`` messages between them.

Run as a script: ``python tests/viewer_standin.py DIR --fps 20`` binds to a free loopback port
and prints ``ENDPOINT tcp://127.0.0.1:PORT``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import zmq


def build_messages(folder: Path) -> list[tuple[dict, bytes]]:
    """One (header, JPEG) per frame of the first sequence of a synth video folder, as the
    daemon publishes them: the frames' truth detections through the daemon's own measure
    step (:class:`~loopline.daemon.analyzer.Analyzer`) and its own publisher, received on a
    SUB socket (in memory, ``inproc://``)."""
    from loopline.analysis.sources import open_source, truth_detections
    from loopline.daemon.analyzer import Analyzer
    from loopline.daemon.config import PublishConfig
    from loopline.daemon.publisher import Publisher

    truth = json.loads((folder / "truth.json").read_text())
    nm, fps = float(truth["nm_per_px"]), float(truth["fps"])
    cfg = PublishConfig(enabled=True, endpoint="inproc://standin", hwm=1000, jpeg=True,
                        jpeg_quality=80, jpeg_max_side=4096, curve_secret_key="",
                        curve_clients="")  # fmt: skip
    ctx = zmq.Context()
    pub = Publisher(ctx, cfg)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"frame")
    sub.connect(cfg.endpoint)
    an = Analyzer(nm_per_px=nm)
    out = []
    try:
        an.new_series(truth["sequences"][0]["name"], nm)
        for fr in open_source(folder):
            h, w = fr.image.shape
            t = fr.index / fps if fr.time_s is None else fr.time_s
            body = an.process(truth_detections(fr.labels, (h, w)), index=fr.index, time_s=t,
                              image=fr.image)  # fmt: skip
            msg = {**body, "series": an.series, "index": fr.index, "time_s": t,
                   "ts": time.time(), "shape": [h, w], "px_nm": nm, "model": "truth",
                   "engine": "truth", "alarms_active": []}  # fmt: skip
            while True:  # until the subscription has reached the publisher
                pub.frame(msg, fr.image, latency_ms=40.0, counters={"analysed": fr.index + 1})
                if sub.poll(100):
                    break
            _topic, header, jpeg = sub.recv_multipart()
            out.append((json.loads(header), jpeg))
            while sub.poll(0):  # the repeats of a first frame sent before the subscription
                sub.recv_multipart()
    finally:
        sub.close(0)
        pub.close()
        ctx.term()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("--fps", type=float, default=20.0)
    p.add_argument("--endpoint", default="tcp://127.0.0.1:*")
    a = p.parse_args(argv)
    msgs = build_messages(a.folder)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.bind(a.endpoint)
    print("ENDPOINT", sock.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    n = len(msgs)
    i = 0
    t0 = time.monotonic()
    h0 = msgs[0][0]
    series = {"schema": "loopline.series/1", "event": "start", "series": h0["series"],
              "shape": h0["shape"], "dtype": "uint8", "pixel_size_nm": h0["px_nm"]}
    try:
        while not stop:
            header, jpeg = msgs[i % n]
            counters = {"received": i + 1, "analysed": i + 1, "skipped": 0, "malformed": 0,
                        "recorded": i + 1}  # fmt: skip
            if i % 10 == 0:  # as the daemon: series and metrics are messages of their own
                metrics = {"schema": "loopline.metrics/1", "counters": counters,
                           "fps": {"receiver": a.fps, "engine": 48.0, "measure": 310.0,
                                   "output": a.fps},
                           "latency_ms": {"p50": 41.0, "p99": 88.0, "max": 95.0}}  # fmt: skip
                for topic, body in ((b"series", series), (b"metrics", metrics)):
                    try:
                        sock.send_multipart([topic, json.dumps(body).encode()], zmq.NOBLOCK)
                    except zmq.Again:
                        pass
            # keep the frame number running: the replay loops over the sequence
            hdr = dict(header, seq=i, index=i, time_s=i / a.fps, counters=counters,
                       latency_ms=40.0)  # fmt: skip
            try:
                sock.send_multipart([b"frame", json.dumps(hdr).encode(), jpeg], zmq.NOBLOCK)
            except zmq.Again:
                pass
            i += 1
            time.sleep(max(0.0, t0 + i / a.fps - time.monotonic()))
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
