"""``loopline simulate`` and the simulator behind it, on loopback sockets."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile
import zmq

from loopline.cli import main
from loopline.daemon.ingest import (
    DectrisSource,
    Frame,
    LooplineSource,
    SeriesEnd,
    SeriesStart,
    open_source,
)
from loopline.daemon.ingest.simulator import Simulator, SimulatorThread, file_supply, synth_supply

pytestmark = pytest.mark.timeout(60)
LOOPBACK = "tcp://127.0.0.1"



def _collect(src, n_ends=1, timeout_s=20.0) -> list:
    out, ends, deadline = [], 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ev = src.get(timeout=0.05)
        if ev is not None:
            out.append(ev)
            if isinstance(ev, SeriesEnd):
                ends += 1
                if ends == n_ends:
                    return out
    raise AssertionError(f"timed out; got {[type(e).__name__ for e in out]}")


@pytest.mark.parametrize("proto", ["loopline", "dectris1", "dectris2"])
def test_simulator_paces_frames_in_every_protocol(ctx, proto):
    imgs = [np.full((16, 24), 10 * i, np.uint16) for i in range(6)]
    sim = SimulatorThread(lambda s: s.send_series(imgs, series="42", fps=50),
                          protocol=proto, context=ctx, linger_s=1.0)  # fmt: skip
    sim.start()
    with open_source(sim.endpoint, proto, context=ctx) as src:
        evs = _collect(src)
        stats = sim.join_and_raise()
    frames = [e for e in evs if isinstance(e, Frame)]
    assert [int(f.image[0, 0]) for f in frames] == [0, 10, 20, 30, 40, 50]
    assert all(f.series == "42" for f in frames)
    gaps = np.diff([f.timestamp_s for f in frames])
    assert gaps.mean() == pytest.approx(0.02, abs=0.01)  # 50 fps on an absolute schedule
    assert stats.sent == 6 and stats.seconds >= 5 / 50 * 0.9


def test_stop_flag_ends_the_series_cleanly(ctx):
    stop = threading.Event()
    imgs = (np.zeros((8, 8), np.uint8) for _ in range(10_000))
    sim = SimulatorThread(lambda s: s.send_series(imgs, series="s", fps=100), stop=stop,
                          context=ctx, linger_s=1.0)  # fmt: skip
    sim.start()
    with LooplineSource(sim.endpoint, context=ctx) as src:
        while src.counters["received"] < 5:
            src.get(timeout=0.05)
        stop.set()
        evs = _collect(src)
        stats = sim.join_and_raise()
    assert stats.stopped and 5 <= stats.sent < 10_000
    assert isinstance(evs[-1], SeriesEnd) and not evs[-1].aborted
    assert evs[-1].frames_sent == stats.sent


def _stall_push_receiver(ctx, endpoint: str) -> None:
    """Connect a PULL to a PUSH simulator, take a few messages, then go away."""
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.connect(endpoint)
    try:
        for _ in range(3):
            assert pull.poll(10_000), "the simulator sent nothing"
            pull.recv_multipart()
    finally:
        pull.close(linger=0)
    time.sleep(0.3)  # the simulator now waits for a receiver that is gone


def test_stop_ends_a_push_series_whose_receiver_has_gone(ctx):
    stop = threading.Event()
    imgs = (np.zeros((8, 8), np.uint8) for _ in range(1_000_000))
    sim = SimulatorThread(lambda s: s.send_series(imgs, series="s", fps=math.inf), stop=stop,
                          context=ctx, sndhwm=2, linger_s=5.0)  # fmt: skip
    sim.start()
    _stall_push_receiver(ctx, sim.endpoint)
    t0 = time.monotonic()
    stop.set()
    stats = sim.join_and_raise(timeout_s=5.0)  # it used to wait forever on the series-end
    assert time.monotonic() - t0 < 1.0
    assert stats.stopped


def test_open_series_then_new_series_resynchronises(ctx):
    """The camera aborts a series (no series-end) and starts another."""

    def job(sim: Simulator):
        sim.send_series([np.zeros((4, 4), np.uint8)] * 3, series="1", fps=math.inf, end=False)
        sim.send_series([np.ones((4, 4), np.uint8)] * 2, series="2", fps=math.inf)

    sim = SimulatorThread(job, protocol="dectris2", context=ctx, linger_s=1.0)
    sim.start()
    with DectrisSource(sim.endpoint, version=2, context=ctx) as src:
        evs = _collect(src, n_ends=2)
        sim.join_and_raise()
    ends = [e for e in evs if isinstance(e, SeriesEnd)]
    assert [(e.series, e.aborted, e.frames) for e in ends] == [("1", True, 3), ("2", False, 2)]
    assert [int(e.image[0, 0]) for e in evs if isinstance(e, Frame) and e.series == "2"] == [1, 1]


def test_synth_supply_in_memory():
    sup = synth_supply(frames=3, preset="M1", seed=1)
    frames = list(sup.frames)
    assert len(frames) == 3 and frames[0].shape == (512, 512) and frames[0].dtype == np.uint8
    assert (sup.fps, sup.pixel_size_nm, sup.count) == (25.0, 2.0, 3)
    assert sup.frame_meta is not None and sup.frame_meta(2) == {"synth_frame": 2}


def test_synth_supply_saves_the_ground_truth(tmp_path):
    sup = synth_supply(frames=3, preset="M1", seed=1, truth_out=tmp_path / "truth")
    truth = json.loads((tmp_path / "truth" / "truth.json").read_text())
    assert len(truth["sequences"][0]["frames"]) == 3
    assert sup.truth == tmp_path / "truth" / "truth.json"
    mem = synth_supply(frames=3, preset="M1", seed=1)
    for a, b in zip(sup.frames, mem.frames, strict=True):  # the same video either way
        np.testing.assert_array_equal(a, b)


def test_file_supply_cuts_and_loops(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.arange(3 * 4, dtype=np.uint16).reshape(3, 2, 2),
                     photometric="minisblack")  # fmt: skip
    assert len(list(file_supply(tmp_path / "s.tif", frames=2).frames)) == 2
    looped = file_supply(tmp_path / "s.tif", frames=7, loop=True)
    assert [int(f[0, 0]) for f in looped.frames] == [0, 4, 8, 0, 4, 8, 0]


# ----------------------------------------------------------------------------- the command


def test_command_rejects_bad_arguments(capsys, tmp_path):
    assert main(["simulate", "--from", str(tmp_path / "nope.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["simulate", "--from", "synth", "--fps", "0"]) == 2
    assert "--fps must be > 0" in capsys.readouterr().err
    assert main(["simulate", "--from", "synth", "--protocol", "dectris1", "--series", "x"]) == 2
    assert "--series must be an integer" in capsys.readouterr().err


def _run_simulate(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "loopline", "simulate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip


@pytest.mark.slow
def test_command_sends_a_folder_and_stops_on_sigterm(ctx, tmp_path):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"f{i}.tif", np.full((8, 8), i, np.uint8))
    # the daemon side binds a random port here, so the simulator connects (--connect)
    with LooplineSource(f"{LOOPBACK}:0", bind=True, context=ctx) as src:
        proc = _run_simulate(["--from", str(tmp_path), "--fps", "200", "--connect",
                              "--endpoint", src.endpoint, "--series", "7"])  # fmt: skip
        try:
            evs = _collect(src)
            assert proc.wait(20) == 0
        finally:
            proc.kill()
        frames = [e for e in evs if isinstance(e, Frame)]
        assert [int(f.image[0, 0]) for f in frames] == [0, 1, 2]
        assert isinstance(evs[0], SeriesStart) and evs[0].series == "7"

        proc = _run_simulate(["--from", str(tmp_path), "--loop", "--fps", "50", "--connect",
                              "--endpoint", src.endpoint, "--series", "8"])  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while src.counters["received"] < 8 and time.monotonic() < deadline:
                src.get(timeout=0.05)
            proc.send_signal(signal.SIGTERM)
            evs = _collect(src)
            out, _ = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, out
        assert isinstance(evs[-1], SeriesEnd) and evs[-1].series == "8" and not evs[-1].aborted
        assert "stopped" in out


@pytest.mark.slow
def test_command_looping_push_stops_on_sigterm_after_its_receiver_left(ctx, tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    proc = _run_simulate(["--from", str(tmp_path / "s.tif"), "--loop", "--fps", "1000",
                          "--hwm", "2", "--endpoint", f"{LOOPBACK}:0"])  # fmt: skip
    try:
        line = ""
        while not line.startswith("simulate:"):
            line = proc.stdout.readline()
            assert line, "the simulator exited before binding"
        _stall_push_receiver(ctx, line.split()[-1])
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        dt = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert dt < 2.0, f"took {dt:.1f} s to stop"  # ~0.7 s; slack for a loaded machine
    assert "stopped" in out
