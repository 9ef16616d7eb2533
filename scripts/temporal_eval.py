#!/usr/bin/env python3
"""Evaluate a model trained on scripts/temporal_dataset.py frames on video datasets (issue 15).

    scripts/temporal_eval.py --model RUN/weights/best.pt --channels temporal|raw DATA [DATA ...]
        [--k 4] [--conf 0.25] [--json OUT]

Each DATA is a dataset folder of video frames (``loopline synth --video`` output, or an
imported real video such as tanaka-twip-2um). Frames are taken in time order; each one is
given to the model as its three channels (frame, temporal channel, frame), the temporal
channel made from the frame's ``k`` previous frames of the same video exactly as
``temporal_dataset.py`` makes the training frames (the first frame of a video has none and
gets the neutral channel), or (frame, frame, frame) with ``--channels raw``. Predictions come
from ultralytics at the frame's own scale (input side: the frame's longer side rounded up to a
multiple of 32; masks at frame resolution, mask cut 0.5) and are scored by ``loopline eval``'s
code (``loopline.evaluation.evaluate``): line F1@3px, LAR@3px, lines per frame, spacing and
slip-trace confusion as in the model card.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np

from loopline.engines.base import Detections
from loopline.engines.ops import to_uint8
from loopline.evaluation.data import Dataset
from loopline.evaluation.evaluate import evaluate

#: The figures printed (``loopline eval``'s metric keys).
KEYS = ("line_f1_tol", "lar_tol", "lines_per_frame", "lines_per_frame_gt", "spacing_re",
        "slip_trace_confusion", "loop_f1", "mask_map50")  # fmt: skip


def _dataset_module():
    path = Path(__file__).with_name("temporal_dataset.py")
    spec = importlib.util.spec_from_file_location("temporal_dataset", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["temporal_dataset"] = mod
    spec.loader.exec_module(mod)
    return mod


td = _dataset_module()


class VideoEngine:
    """``evaluate``'s engine: frames arrive in the dataset's order; each gets its history.

    ``predict(image) -> Detections`` runs the model on one (H, W, 3) uint8 image.
    """

    def __init__(self, ds: Dataset, predict, *, k: int = 4, channels: str = "temporal") -> None:
        self.seq = [td.sequence_of(p) for p in ds.paths]
        self.predict, self.k, self.channels = predict, k, channels
        self.i = 0
        self.history: list[np.ndarray] = []

    def __call__(self, frames: list[np.ndarray]) -> list[Detections]:
        out = []
        for f in frames:
            g = to_uint8(f)
            if self.i > 0 and self.seq[self.i] != self.seq[self.i - 1]:
                self.history = []  # a new video
            if self.channels == "temporal":
                ch = td.temporal_channel(g, self.history[-self.k :])
            else:
                ch = g
            out.append(self.predict(np.dstack([g, ch, g])))
            self.history.append(g)
            self.i += 1
        return out


def ultralytics_predictor(weights: Path, *, conf: float = 0.001):
    """One-image predictor of an ultralytics checkpoint at the image's own scale."""
    from ultralytics import YOLO

    model = YOLO(str(weights))

    def predict(img: np.ndarray) -> Detections:
        h, w = img.shape[:2]
        side = 32 * math.ceil(max(h, w) / 32)
        r = model.predict(img, imgsz=side, conf=conf, max_det=300, retina_masks=True,
                          verbose=False, device="cpu")[0]  # fmt: skip
        if r.masks is None or len(r.boxes) == 0:
            return Detections(np.zeros((0, h, w), bool), np.zeros((0, 4), np.float32),
                              np.zeros(0, np.float32), np.zeros(0, np.int64))  # fmt: skip
        return Detections(
            r.masks.data.cpu().numpy() > 0.5,
            r.boxes.xyxy.cpu().numpy().astype(np.float32),
            r.boxes.conf.cpu().numpy().astype(np.float32),
            r.boxes.cls.cpu().numpy().astype(np.int64),
        )

    return predict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, nargs="+")
    ap.add_argument("--model", type=Path, required=True, help="ultralytics .pt")
    ap.add_argument("--channels", choices=("temporal", "raw"), required=True)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    predict = ultralytics_predictor(a.model)
    result = {}
    for d in a.data:
        ds = Dataset(d)
        res = evaluate(VideoEngine(ds, predict, k=a.k, channels=a.channels), ds, conf=a.conf)
        m = {k: res.metrics.get(k) for k in KEYS}
        result[str(d)] = m
        shown = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        print(f"{d.name} ({len(ds)} frames, {a.channels}): {shown}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
