"""`loopline train` runs fully offline: a 1-epoch training with every outbound connection failing.

The training runs in a child process whose socket layer refuses (and records) every connection
and DNS lookup that is not to the loopback interface, so a fetch that ultralytics would try
(fonts, update checks, hub weights, analytics) shows up as a recorded attempt, and any that
slipped through would fail fast instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loopline.synth.generate import generate

pytest.importorskip("ultralytics")

GUARD = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []
    _connect = socket.socket.connect
    _getaddrinfo = socket.getaddrinfo

    def _local(host):
        return host in ("localhost", "::1") or str(host).startswith("127.")

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(address, tuple) and not _local(host):
            attempts.append(f"connect {address}")
            raise OSError(101, "network cut by the test")
        return _connect(self, address)

    def getaddrinfo(host, *a, **k):
        if host is not None and not _local(host):
            attempts.append(f"dns {host}")
            raise socket.gaierror(-2, "network cut by the test")
        return _getaddrinfo(host, *a, **k)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo
    from loopline.cli import main
    try:
        rc = main(sys.argv[2:])
    finally:
        with open(sys.argv[1], "w") as f:
            json.dump(attempts, f)
    sys.exit(rc)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_one_epoch_training_offline(tmp_path):
    data = generate(tmp_path / "data", preset="mixed", count=6, seed=5, progress=False,
                    overrides={"width": 128, "height": 128, "loops": [1, 3]}).out  # fmt: skip
    guard = tmp_path / "guard.py"
    guard.write_text(GUARD)
    attempts = tmp_path / "attempts.json"
    env = dict(os.environ, HOME=str(tmp_path / "home"), LOOPLINE_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("YOLO_CONFIG_DIR", None)
    cmd = [sys.executable, str(guard), str(attempts), "train", "--data", str(data),
           "--out", str(tmp_path / "runs"), "--name", "t", "--epochs", "1", "--imgsz", "128",
           "--batch", "4", "--workers", "0", "--seed", "3"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    assert (run / "weights" / "last.pt").exists()
    record = json.loads((run / "loopline_run.json").read_text())
    assert record["config"]["seed"] == 3 and record["wall_s"] > 0
    assert "metrics/mAP50(M)" in record["metrics"]
    assert json.loads(attempts.read_text()) == [], "training tried to reach the network"
    # Nothing was written to the user's ultralytics settings outside loopline's cache dir.
    assert not (tmp_path / "home" / ".config" / "Ultralytics").exists()
    assert (tmp_path / "cache" / "ultralytics" / "Ultralytics" / "Arial.ttf").exists()


def test_train_rejects_bad_options(tmp_path):
    from loopline.training.train import TrainConfig

    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainConfig(data=tmp_path / "nope").validate()
    with pytest.raises(ValueError, match="imgsz must be a multiple of 32"):
        TrainConfig(data=tmp_path, imgsz=100).validate()
    with pytest.raises(ValueError, match="arch must be one of"):
        TrainConfig(data=tmp_path, arch="yolov99").validate()
    with pytest.raises(ValueError, match="hours must be > 0"):
        TrainConfig(data=tmp_path, hours=0).validate()


def test_train_command_errors_are_one_line(tmp_path, capsys):
    from loopline.cli import main

    assert main(["train"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loopline train: error:") and "does not exist" in err
    assert Path(tmp_path).exists()
