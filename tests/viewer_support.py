"""Fixtures shared by the viewer tests: a small synthetic video and a live result stream.

``live_stream`` yields the PUB endpoint of something publishing the daemon's result schema:
the real daemon (``loopline serve`` replaying the synthetic frames with the fast threshold
engine) when it is installed and starts, else ``tests/viewer_standin.py``. Every process is
stopped (SIGTERM, then SIGKILL) when the test ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_VIDEO: dict[str, Path] = {}


def make_synth_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 256² video, 16 frames, pile-ups and loops (about 1 s to make; made once a session).

    Test modules wrap this in a fixture of their own: ``@pytest.fixture(name="synth_video")``.
    """
    from loopline.synth.generate import generate

    if "v" in _VIDEO:
        return _VIDEO["v"]
    out = _VIDEO["v"] = tmp_path_factory.mktemp("viewer-synth")
    generate(out, preset="mixed", count=1, seed=5, video=True, frames=16, jobs=1,
             progress=False, overrides={"width": 256, "height": 256, "loops": (2, 4),
                                        "pileups": (1, 2), "dislocations": (3, 5)})  # fmt: skip
    return out


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def start_standin(folder: Path, *, fps: float = 15.0, extra: tuple[str, ...] = ()
                  ) -> tuple[subprocess.Popen, str]:  # fmt: skip
    proc = subprocess.Popen(
        [PY, str(ROOT / "tests" / "viewer_standin.py"), str(folder), "--fps", str(fps), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("ENDPOINT"):
        stop(proc)
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"stand-in publisher did not start: {line!r} {err[-2000:]}")
    return proc, line.split()[1]


def daemon_available() -> bool:
    if os.environ.get("LOOPLINE_VIEWER_STANDIN"):
        return False
    return all(importlib.util.find_spec(m) is not None for m in (
        "loopline.daemon.serve_command", "loopline.daemon.simulate_command",
        "loopline.daemon.publisher"))  # fmt: skip


@contextlib.contextmanager
def real_daemon(synth_video: Path, run_dir: Path, *, fps: float = 10.0) -> Iterator[str]:
    """``loopline simulate`` (the video's frames, looped) → ``loopline serve`` with the fast
    threshold engine; yields the daemon's PUB endpoint."""
    cam, pub = free_port(), free_port()
    serve = subprocess.Popen(
        [PY, "-m", "loopline", "serve", "--endpoint", f"tcp://127.0.0.1:{cam}",
         "--publish", f"tcp://127.0.0.1:{pub}", "--out", str(run_dir), "--nm-per-px", "2",
         "--set", "engine.factory=loopline.daemon.standins:ThresholdEngine",
         "--set", "output.mp4=false", "--duration", "85"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env(),
    )  # fmt: skip
    sim = subprocess.Popen(
        [PY, "-m", "loopline", "simulate", "--from", str(synth_video / "images"),
         "--fps", str(fps), "--endpoint", f"tcp://127.0.0.1:{cam}", "--loop"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env(),
    )  # fmt: skip
    try:
        yield f"tcp://127.0.0.1:{pub}"
    finally:
        stop(sim)
        stop(serve, timeout=15)


@contextlib.contextmanager
def live_stream(synth_video: Path, *, fps: float = 10.0, run_dir: Path | None = None
                ) -> Iterator[str]:  # fmt: skip
    """The endpoint of a live result stream until the block ends: the real daemon when it is
    installed (and ``run_dir`` is given), else the stand-in publisher."""
    if run_dir is not None and daemon_available():
        with real_daemon(synth_video, run_dir, fps=fps) as endpoint:
            yield endpoint
        return
    proc, endpoint = start_standin(synth_video, fps=fps)
    try:
        yield endpoint
    finally:
        stop(proc)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("COLUMNS", "160")
    return e


def wait_for(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class AnalysedFeed:
    """A small daemon in this process for the viewer tests: the measure worker's
    :class:`~loopline.daemon.analyzer.Analyzer` on a synthetic video's true masks, published by
    the daemon's own :class:`~loopline.daemon.publisher.Publisher` (its encoder, its topics).

    The video is played back and forth, one series per pass (as a camera's acquisitions); each
    series starts with the alarm thresholds set then (:meth:`arm`), so a test can raise an
    alarm once the viewer listens. As in the output worker, a frame's alarm events are
    published (``alarm``) just before the frame, whose ``alarms_active`` lists the rules
    raised now. ``events`` keeps every alarm event published.
    """

    def __init__(self, folder: Path, *, fps: float = 10.0) -> None:
        import json
        import threading

        import cv2
        import zmq

        from loopline.analysis.sources import truth_detections
        from loopline.daemon.config import load_config
        from loopline.daemon.publisher import Publisher

        truth = json.loads((folder / "truth.json").read_text())
        seq = truth["sequences"][0]
        self.nm = float(truth["nm_per_px"])
        self.fps = fps
        self.frames = []
        for fr in seq["frames"]:
            img = cv2.imread(str(folder / fr["image"]), cv2.IMREAD_GRAYSCALE)
            label = folder / "labels" / (Path(fr["image"]).stem + ".txt")
            self.frames.append((img, truth_detections(label, img.shape)))
        self.alarms = None  # AlarmConfig of the next series (None: no frame rules)
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        cfg = load_config(overrides={"publish.endpoint": "tcp://127.0.0.1:*"}).publish
        self.pub = Publisher(self._ctx, cfg)
        self.endpoint = self.pub.endpoint
        self._thread = threading.Thread(target=self._run, name="analysed-feed", daemon=True)

    def arm(self, alarms) -> None:
        """Alarm thresholds (a :class:`~loopline.analysis.alarms.AlarmConfig`) for the
        series that starts next."""
        self.alarms = alarms

    def _run(self) -> None:
        from loopline.daemon.analyzer import Analyzer

        an = Analyzer(nm_per_px=self.nm)
        active: dict[str, dict] = {}
        order = list(range(len(self.frames))) + list(range(len(self.frames) - 2, 0, -1))
        k = sent = 0
        t0 = time.monotonic()
        while not self._stop.is_set():
            k += 1
            series = f"s{k:04d}"
            an.alarms = self.alarms
            an.new_series(series, self.nm)
            img0 = self.frames[0][0]
            self.pub.series({"event": "start", "series": series, "shape": list(img0.shape),
                             "dtype": "uint8", "pixel_size_nm": self.nm, "frames": len(order),
                             "ts": time.time()})  # fmt: skip
            for i, j in enumerate(order):
                if self._stop.is_set():
                    return
                img, det = self.frames[j]
                t = an.time_of(i, i / self.fps)
                body = an.process(det, index=i, time_s=t, image=img)
                for ev in body["alarms"]:
                    if ev["state"] == "raise":
                        active[ev["rule"]] = ev
                    else:
                        active.pop(ev["rule"], None)
                    self.pub.alarm(ev)
                    self.events.append(dict(ev))
                sent += 1
                counters = {"received": sent, "analysed": sent, "skipped": 0, "malformed": 0,
                            "recorded": sent}  # fmt: skip
                if sent % 10 == 1:
                    self.pub.metrics({"counters": counters, "fps": {"engine": self.fps},
                                      "latency_ms": {"p50": 30.0, "p99": 60.0, "max": 70.0},
                                      "source": {"protocol": "synthetic", "endpoint": "test"},
                                      "engine": "truth"})  # fmt: skip
                msg = {**body, "series": series, "index": i, "time_s": t, "ts": time.time(),
                       "shape": list(img.shape), "px_nm": self.nm, "model": "truth",
                       "alarms_active": sorted(active)}  # fmt: skip
                self.pub.frame(msg, img, latency_ms=30.0, counters=counters)
                time.sleep(max(0.0, t0 + sent / self.fps - time.monotonic()))

    def __enter__(self) -> AnalysedFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.pub.close()
        self._ctx.term()
