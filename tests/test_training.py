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
from loopline.training.train import architecture_problem

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
    # one progress line per epoch, then one for ultralytics' validation of best.pt (which it
    # reports as an extra epoch)
    assert "epoch 1/1" in proc.stderr and "best weights (validation)" in proc.stderr
    assert "epoch 2/1" not in proc.stderr
    run = tmp_path / "runs" / "t"
    assert (run / "weights" / "last.pt").exists()
    record = json.loads((run / "loopline_run.json").read_text())
    assert record["config"]["seed"] == 3 and record["wall_s"] > 0
    assert "metrics/mAP50(M)" in record["metrics"]
    assert json.loads(attempts.read_text()) == [], "training tried to reach the network"
    # Nothing was written to the user's ultralytics settings outside loopline's cache dir.
    assert not (tmp_path / "home" / ".config" / "Ultralytics").exists()
    assert (tmp_path / "cache" / "ultralytics" / "Ultralytics" / "Arial.ttf").exists()

    problem = architecture_problem("yolov8n-seg-p2")
    if problem is not None:  # a checkout path such as /tmp/tmp.a1l...: the part above passed
        pytest.skip(problem)
    # Warm start of the P2 architecture from that run, offline too. With a zero learning rate
    # the weights cannot move, so the layers it shares with the source come out of the trainer
    # as they went in: proof that ultralytics trained the transferred network, not a fresh one.
    cmd = [sys.executable, str(guard), str(attempts), "train", "--data", str(data),
           "--out", str(tmp_path / "runs"), "--name", "p2", "--epochs", "1", "--imgsz", "128",
           "--batch", "4", "--workers", "0", "--seed", "3", "--arch", "yolov8n-seg-p2",
           "--weights", str(run / "weights" / "last.pt"), "--set", "optimizer=SGD",
           "--set", "lr0=0", "--set", "warmup_bias_lr=0"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(attempts.read_text()) == [], "training tried to reach the network"
    import torch

    def weights(path):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        return (ckpt.get("ema") or ckpt["model"]).float().state_dict()

    src = weights(run / "weights" / "last.pt")
    p2 = weights(tmp_path / "runs" / "p2" / "weights" / "last.pt")
    assert p2["model.25.proto.cv3.conv.weight"].shape[0] == 32  # the P2 head, at index 25
    for k_src, k_p2 in [("model.0.conv.weight", "model.0.conv.weight"),
                        ("model.21.cv2.conv.weight", "model.21.cv2.conv.weight"),
                        ("model.22.cv2.0.0.conv.weight", "model.25.cv2.1.0.conv.weight"),
                        ("model.22.cv4.2.2.weight", "model.25.cv4.3.2.weight")]:  # fmt: skip
        # (the EMA of a network that does not move is that network, up to float rounding)
        assert torch.allclose(src[k_src], p2[k_p2], rtol=1e-3, atol=1e-4), k_p2


@pytest.mark.skipif(architecture_problem("yolov8n-seg-p2") is not None,
                    reason=architecture_problem("yolov8n-seg-p2") or "")
def test_transfer_weights_into_the_p2_architecture():
    """Every layer that kept its shape carries over; the head's levels are matched coarsest
    first, so the source's P3-P5 branches land on the P2 head's P3-P5 (levels 1-3)."""
    import torch
    from ultralytics.nn.tasks import SegmentationModel, yaml_model_load

    from loopline.training.train import architecture_yaml, transfer_weights

    torch.manual_seed(0)
    src = SegmentationModel(yaml_model_load(architecture_yaml("yolov8n-seg")), nc=2, verbose=False)
    p2_yaml = yaml_model_load(architecture_yaml("yolov8n-seg-p2"))
    assert p2_yaml["scale"] == "n"
    dst = SegmentationModel(p2_yaml, nc=2, verbose=False)
    assert dst.stride.tolist() == [4.0, 8.0, 16.0, 32.0]
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    copied, total = transfer_weights(dst, src)
    s, d = src.state_dict(), dst.state_dict()
    assert 0 < copied < total == len(d)
    assert torch.equal(d["model.4.m.0.cv1.conv.weight"], s["model.4.m.0.cv1.conv.weight"])
    assert torch.equal(d["model.21.cv2.bn.running_var"], s["model.21.cv2.bn.running_var"])
    for level in range(3):
        for k in ("cv2.{}.0.conv.weight", "cv4.{}.2.bias"):
            src_k, dst_k = "model.22." + k.format(level), "model.25." + k.format(level + 1)
            assert torch.equal(d[dst_k], s[src_k])
    # the new P2 branch and the new head level keep their own initialisation
    assert torch.equal(d["model.24.cv1.conv.weight"], before["model.24.cv1.conv.weight"])
    assert torch.equal(d["model.25.cv2.0.0.conv.weight"], before["model.25.cv2.0.0.conv.weight"])
    # masks come out at 1/2 of the input
    dst.eval()
    with torch.no_grad():
        _, out = dst(torch.zeros(1, 3, 64, 64))
    assert out["proto"].shape[-2:] == (32, 32)


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


def test_validator_crops_masks_at_the_prototypes_scale():
    """Prototypes at 1/2 of a 64 px input (the P2 head): a box over the left half of the input
    crops the left half of the prototype grid, and the ground truth is compared at that size.
    (Ultralytics' own validator takes the input to be 4 x the prototypes, 128 px, and would crop
    only the left quarter.)"""
    import torch
    from ultralytics.utils import ops

    from loopline.training.validator import ProtoScaleSegmentationValidator

    v = ProtoScaleSegmentationValidator(args={"conf": 0.25, "iou": 0.7, "max_det": 10})
    v.process, v.nc, v.end2end = ops.process_mask, 1, False
    v._input_hw = (64, 64)  # as preprocess() records it from the batch
    # one candidate box at (16, 32) of size 32 x 64 (xywh), score 0.9, mask coefficients (1, 0...)
    det = torch.zeros(1, 4 + 1 + 32, 1)
    det[0, :5, 0] = torch.tensor([16.0, 32.0, 32.0, 64.0, 0.9])
    det[0, 5, 0] = 1.0
    proto = torch.ones(1, 32, 32, 32)
    (pred,) = v.postprocess(((det, proto),))
    assert pred["masks"].shape == (1, 32, 32)
    cols = pred["masks"][0].any(0).nonzero().flatten()
    assert cols.min() == 0 and cols.max() == 15  # the left half of the 32 prototype columns
    batch = {"cls": torch.zeros(1, 1), "bboxes": torch.tensor([[0.25, 0.5, 0.5, 1.0]]),
             "batch_idx": torch.zeros(1), "ori_shape": [(64, 64)], "im_file": ["a.png"],
             "ratio_pad": [((1.0, 1.0), (0, 0))], "img": torch.zeros(1, 3, 64, 64),
             "masks": torch.ones(1, 64, 64)}  # fmt: skip
    v.args.overlap_mask = False
    assert v._prepare_batch(0, batch)["masks"].shape == (1, 32, 32)


def test_progress_lines_of_a_time_boxed_run(capsys):
    """Epoch totals re-estimated under --hours never print as 12/11; early stops keep N/total;
    ultralytics' extra call for best.pt prints as the best weights."""
    from types import SimpleNamespace

    from loopline.training.train import _epoch_printer

    def trainer(epoch, epochs, stop):
        return SimpleNamespace(
            metrics={"metrics/mAP50(M)": 0.5}, epoch=epoch, epochs=epochs, stop=stop, tloss=None,
            label_loss_items=lambda tloss, prefix: {"train/box_loss": 1.0, "train/seg_loss": 2.0},
        )  # fmt: skip

    show = _epoch_printer()
    for t in (trainer(9, 12, False), trainer(10, 11, False), trainer(11, 11, True),
              trainer(12, 11, True)):  # fmt: skip
        show(t)
    err = capsys.readouterr().err
    assert [x.split(" loss")[0] for x in err.splitlines() if x.startswith("epoch")] == [
        "epoch 10/12", "epoch 11/11", "epoch 12/12"]
    assert "loss 3.000" in err and "mask mAP50 0.500" in err
    assert err.count("best weights (validation)") == 1
    show = _epoch_printer()
    show(trainer(29, 60, True))  # early stop (patience)
    assert "epoch 30/60" in capsys.readouterr().err
