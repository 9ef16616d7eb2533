"""Hot swap in a running daemon (issue 16, item 4): ``loopline model use`` loads a new model
without a restart and without losing a frame.

The end-to-end test runs a real daemon (ONNX Runtime with the shipped model at 256 px, one
thread) fed by the camera simulator over loopback. The issue's target is 25 frames/s; on the
shared 2-core test machine (a training run beside it) the series is sent at 10 frames/s by
default, a rate this machine keeps up with however busy it gets; ``LOOPLINE_HOTSWAP_FPS=25``
runs it at the target rate (12 s of frames either way).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import threading
import time
from itertools import groupby
from pathlib import Path

import numpy as np
import pytest
import zmq
from test_daemon import Daemon, frames

from loopline.cli import main
from loopline.daemon.config import ConfigError, load_config
from loopline.daemon.control import ControlError, ControlServer, parse_request, request
from loopline.daemon.stages.engine import check_engine
from loopline.daemon.standins import ThresholdEngine
from loopline.engines.base import Detections
from loopline.io.runfolder import model_id
from loopline.models import MODEL_DIR

pytestmark = pytest.mark.timeout(300)

FPS = float(os.environ.get("LOOPLINE_HOTSWAP_FPS", "10"))
N = round(12 * FPS)


def _wait_for(cond, timeout: float, what: str) -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t_end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _frames_csv(run: Path) -> list[dict[str, str]]:
    with open(run / "frames.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_swap_mid_series_every_frame_recorded(tmp_path, sim, daemons, capsys, caplog):
    models, watch = tmp_path / "models", tmp_path / "watch"
    models.mkdir()
    watch.mkdir()
    a, b = models / "a.onnx", models / "b.onnx"
    shutil.copy(MODEL_DIR / "defects.onnx", a)
    shutil.copy(MODEL_DIR / "defects.onnx", b)  # same weights, another file: another id
    bad = models / "x.onnx"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    ids = {p.name: model_id(p) for p in (a, b)}
    assert ids["a.onnx"].startswith("a.onnx@") and len(ids["a.onnx"]) == len("a.onnx@") + 8
    d = Daemon(tmp_path, sim.endpoint, **{
        "engine.factory": "", "engine.model": str(a), "engine.imgsz": 256,
        "engine.engine": "onnx",  # OpenVINO would compile each batch size for seconds
        "engine.threads": 1, "engine.workers": 2, "engine.watch": str(watch),
        "batch.max_pending": 64,
        "output.result_timeout_s": 15.0, "output.mp4": False,
    })  # fmt: skip
    daemons.append(d)
    d.start(120)
    run = str(d.run_dir)
    pid = d.sup.pids()["engine0"]
    sender = threading.Thread(target=lambda: sim.send_series(frames(N), series="swap", fps=FPS))
    sender.start()
    try:
        analysed = lambda: int(d.sup.stats["analysed"])  # noqa: E731
        _wait_for(lambda: analysed() >= 25, 60, "25 frames analysed")
        capsys.readouterr()
        assert main(["model", "use", str(b), "--run", run]) == 0
        out = capsys.readouterr().out
        assert f"now running {ids['b.onnx']} (was {ids['a.onnx']})" in out, out
        assert main(["model", "show", "--run", run]) == 0
        assert f"model: {ids['b.onnx']}\n" in capsys.readouterr().out
        # a corrupt file: refused with one line, exit 1, logged; b runs on
        with caplog.at_level(logging.ERROR, logger="loopline.daemon.supervisor"):
            assert main(["model", "use", str(bad), "--run", run]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("loopline model: refused: ValueError: ") and "x.onnx" in err
        assert "not an ONNX model" in err and "\n" not in err, err
        assert any("x.onnx refused" in r.getMessage() for r in caplog.records)
        assert main(["model", "use", str(models / "none.onnx"), "--run", run]) == 1
        assert "no model file" in capsys.readouterr().err
        # a torch checkpoint is a pickle: never loaded by a swap, whatever it holds
        (models / "net.pt").write_bytes(b"not looked at")
        assert main(["model", "use", str(models / "net.pt"), "--run", run]) == 1
        assert "is a pickle" in capsys.readouterr().err
        refused_at = analysed()
        # a model file moved into engine.watch is loaded as by `loopline model use`
        _wait_for(lambda: analysed() >= refused_at + 10, 60, "10 more frames analysed")
        shutil.copy(a, models / "c.onnx")
        (models / "c.onnx").rename(watch / "c.onnx")
        _wait_for(lambda: d.sup.stats["model_swaps"] == 2, 60, "the watched folder's swap")
        assert d.sup.pids()["engine0"] == pid  # the same worker process all along
    finally:
        sender.join(120)
    assert d.wait(120) == 0
    s = d.summary()
    c = s["counters"]
    assert (c["received"], c["analysed"], c["recorded"], c["skipped"]) == (N, N, N, 0), c
    assert (c["restarts"], c["model_swaps"], c["models_refused"]) == (0, 2, 3), c
    rows = _frames_csv(d.run_dir)
    assert len(rows) == N and [int(r["seq"]) for r in rows] == list(range(N))
    assert [int(r["index"]) for r in rows] == list(range(N))
    # each model analysed one unbroken stretch of frames: each swap is one frame boundary
    c_id = ids["a.onnx"].replace("a.onnx", "c.onnx")
    runs = [(m, len(list(g))) for m, g in groupby(r["model"] for r in rows)]
    assert [m for m, _ in runs] == [ids["a.onnx"], ids["b.onnx"], c_id], runs
    assert all(k >= 10 for _, k in runs), runs
    assert [(m["model"], m["frames"]) for m in s["models"]] == runs
    assert s["models"][1]["first"]["seq"] == runs[0][1]
    assert s["models"][1]["path"] == str(b.resolve()) and s["models"][0]["runtime"] == "a/onnx"


def test_a_slow_model_loads_beside_the_running_one(tmp_path, sim, daemons, capsys,
                                                   monkeypatch):  # fmt: skip
    """A model that takes 3 s to load: the running one analyses every frame meanwhile (the
    default backpressure, 4 frames waiting at most, skips none), then the switch."""
    monkeypatch.setenv("LOOPLINE_TEST_LOAD_S", "3")
    fast, slow = tmp_path / "fast.bin", tmp_path / "slow.bin"
    fast.write_bytes(b"fast")
    slow.write_bytes(b"slow")
    n = 70
    d = Daemon(tmp_path, sim.endpoint, **{
        "engine.factory": "loopline.daemon.standins:SlowLoadingEngine",
        "engine.model": str(fast),
    })  # fmt: skip
    daemons.append(d)
    d.start(120)
    sender = threading.Thread(target=lambda: sim.send_series(frames(n), series="s", fps=10))
    sender.start()
    try:
        _wait_for(lambda: d.sup.stats["analysed"] >= 15, 60, "15 frames analysed")
        before = int(d.sup.stats["analysed"])
        assert main(["model", "use", str(slow), "--run", str(d.run_dir)]) == 0
        during = int(d.sup.stats["analysed"]) - before
    finally:
        sender.join(120)
    assert d.wait(120) == 0
    assert during >= 15, f"only {during} frames analysed while the model loaded (3 s, 10 fps)"
    c = d.summary()["counters"]
    assert (c["received"], c["analysed"], c["skipped"], c["restarts"]) == (n, n, 0, 0), c
    runs = [(m, len(list(g))) for m, g in groupby(r["model"] for r in _frames_csv(d.run_dir))]
    assert [m for m, _ in runs] == [model_id(fast), model_id(slow)], runs
    assert runs[0][1] >= before + during


def test_a_model_of_other_classes_is_refused():
    """The check before a switch: the classes the measuring stages take, masks of the frame."""

    class Other(ThresholdEngine):
        def forward(self, frames):
            return [Detections(d.masks, d.boxes, d.scores, d.classes + 5, d.timings_ms)
                    for d in super().forward(frames)]  # fmt: skip

    check_engine(ThresholdEngine(), (96, 128))
    with pytest.raises(ValueError, match="expected classes 0 dislocation, 1 loop; got class 5"):
        check_engine(Other(), (96, 128))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"t": "reboot"}', "expected t = 'use_model' or 'status'"),
        (b'{"t": "use_model"}', "expected 'path'"),
        (b'{"t": "use_model", "path": "a\\u0000b"}', "expected 'path'"),
        (b'{"t": "use_model", "path": "' + b"x" * 5000 + b'"}', "expected 'path'"),
    ],
)
def test_control_requests_that_are_not_one(data, why):
    assert why in parse_request(data)


def test_control_config_is_checked():
    assert load_config().control.endpoint == ""  # this user's socket in the private folder
    with pytest.raises(ConfigError, match=r"control\.endpoint must be"):
        load_config(overrides={"control.endpoint": "localhost:5557"})
    with pytest.raises(ConfigError, match=r"need a tcp:// control\.endpoint"):
        load_config(overrides={"control.curve_secret_key": "k.key_secret"})


def test_control_socket_with_curve_lets_in_only_listed_clients(tmp_path, ctx):
    server_pub, server_sec = (k.decode() for k in zmq.curve_keypair())
    client_pub, client_sec = (k.decode() for k in zmq.curve_keypair())
    _, stranger_sec = (k.decode() for k in zmq.curve_keypair())
    (tmp_path / "clients.txt").write_text(client_pub + "\n")
    cfg = load_config(overrides={"control.endpoint": "tcp://127.0.0.1:0",
                                 "control.curve_secret_key": server_sec,
                                 "control.curve_clients": str(tmp_path / "clients.txt")}
                      ).control  # fmt: skip
    server = ControlServer(ctx, cfg, cfg.endpoint)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if server.sock.poll(50):
                for env, req in server.recv():
                    server.reply(env, {"ok": True, "echo": req})

    th = threading.Thread(target=serve)
    th.start()
    try:
        ep = server.endpoint
        got = request(ep, {"t": "status"}, timeout_s=10, server_key=server_pub,
                      secret_key=client_sec)  # fmt: skip
        assert got == {"ok": True, "echo": {"t": "status"}}
        for key in (stranger_sec, None):  # not on the list; no CURVE at all
            with pytest.raises(ControlError, match="no reply"):
                request(ep, {"t": "status"}, timeout_s=1.0, server_key=server_pub if key else None,
                        secret_key=key)  # fmt: skip
    finally:
        stop.set()
        th.join()
        server.close()


def test_frames_csv_of_an_older_layout_is_continued_with_its_own_columns(tmp_path, caplog):
    """A run folder recorded before frames.csv had ``model`` is appended to as it is."""
    from loopline.daemon.recorder import _Table

    p = tmp_path / "frames.csv"
    p.write_text("series,index,seq,timestamp,fate\ns,0,0,1.0,analysed\n")
    t = _Table(p, flush_rows=1)
    with caplog.at_level(logging.WARNING, logger="loopline.daemon.recorder"):
        t.append({"series": "s", "index": 1, "seq": 1, "timestamp": 2.0, "fate": "analysed",
                  "model": "a.onnx@00000000"})  # fmt: skip
    t.close()
    assert p.read_text().splitlines()[1:] == ["s,0,0,1.0,analysed", "s,1,1,2.0,analysed"]
    assert any("without model" in r.getMessage() for r in caplog.records)


def test_model_command_without_a_daemon_and_a_missing_watch_folder(tmp_path, capsys):
    from loopline.daemon.supervisor import Supervisor

    assert main(["model", "show", "--run", str(tmp_path)]) == 2
    assert "no loopline serve runs in" in capsys.readouterr().err
    cfg = load_config(overrides={"engine.watch": str(tmp_path / "nope"),
                                 "output.dir": str(tmp_path / "run")})  # fmt: skip
    sup = Supervisor(cfg)
    assert sup.run() == 1
    assert sup.error is not None and "engine.watch: no folder" in str(sup.error)


def test_a_swapped_model_keeps_the_running_runtime_where_it_can(tmp_path):
    """OpenVINO (the shipped model's runtime where installed) reads a new .onnx itself: the
    swap does not move it to the slower ONNX Runtime; a format it cannot read goes by suffix;
    a configured runtime always wins."""
    from loopline.daemon.stages.base import one_line
    from loopline.daemon.stages.engine import swap_runtime

    auto, pinned = load_config(), load_config(overrides={"engine.engine": "onnx"})
    assert swap_runtime(auto, "openvino", str(tmp_path / "new.onnx")) == "openvino"
    assert swap_runtime(auto, "openvino", "defects") == "openvino"
    assert swap_runtime(auto, "onnx", str(tmp_path / "new.onnx")) == "onnx"
    assert swap_runtime(auto, "onnx", str(tmp_path / "new.pt")) == ""
    assert swap_runtime(pinned, "openvino", str(tmp_path / "new.onnx")) == "onnx"
    # the line a refused model's caller is told: not the runtime's source location
    e = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\n"
                     "Unable to read the model: x.onnx\n")  # fmt: skip
    assert one_line(e) == "RuntimeError: Unable to read the model: x.onnx"
