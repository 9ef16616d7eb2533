"""Small, fast stand-ins used by the daemon's tests and its in-memory runs.

``ThresholdEngine`` is a real :class:`~loopline.engines.base.Engine`: it finds dark,
connected structures by thresholding (no weights, a few ms per 256² frame), so the daemon's
process, socket and recording machinery can be tested at full frame rate on a busy CPU.
It is not a model of anything; use ``engine.model = "ridge"`` or a trained model for that.

Select it with ``engine.factory = "loopline.daemon.standins:ThresholdEngine"``; the
``delay_ms`` keyword (``"loopline.daemon.standins:slow_engine"``) makes it artificially slow
for backpressure tests; ``"loopline.daemon.standins:flaky_engine"`` raises on frames marked
by :func:`mark_for_failure`, for tests of what an engine exception costs (that frame only);
``"loopline.daemon.standins:SlowLoadingEngine"`` takes seconds to load some model files, for
tests of a model swap beside a running model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from ..engines.base import Detections, Engine

__all__ = ["FAIL_MARK", "SlowLoadingEngine", "ThresholdEngine", "flaky_engine", "mark_for_failure",
           "slow_engine"]  # fmt: skip

#: the top-left 2 x 2 pixels of a frame that :func:`flaky_engine` refuses
FAIL_MARK = 7


class ThresholdEngine(Engine):
    """Dark connected components as instances (elongated → dislocation, compact → loop)."""

    name = "threshold"

    def __init__(self, model=None, *, k: float = 2.0, min_area: int = 20,
                 delay_ms: float = 0.0, fail_marked: bool = False,
                 **kwargs) -> None:  # fmt: skip
        kwargs = {k_: v for k_, v in kwargs.items()
                  if k_ in ("imgsz", "conf", "iou", "max_det", "mask_annotations",
                            "ignore_regions")}  # fmt: skip
        super().__init__(None, **kwargs)
        self.k = k
        self.min_area = min_area
        self.delay_ms = delay_ms
        self.fail_marked = fail_marked

    def load(self) -> None:
        pass

    def _one(self, frame: np.ndarray) -> Detections:
        t0 = time.perf_counter()
        f = frame.astype(np.float32)
        f = cv2.GaussianBlur(f, (0, 0), 1.0)
        mu, sd = float(f.mean()), float(f.std()) or 1.0
        dark = (f < mu - self.k * sd).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
        keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= self.min_area]
        keep = keep[: self.max_det]
        h, w = frame.shape
        masks = np.zeros((len(keep), h, w), bool)
        boxes = np.zeros((len(keep), 4), np.float32)
        classes = np.zeros(len(keep), np.int64)
        for j, i in enumerate(keep):
            masks[j] = labels == i
            x, y, bw, bh = stats[i, :4]
            boxes[j] = (x, y, x + bw, y + bh)
            fill = stats[i, cv2.CC_STAT_AREA] / max(bw * bh, 1)
            classes[j] = 1 if fill > 0.5 and 0.5 < bw / max(bh, 1) < 2.0 else 0
        scores = np.full(len(keep), 0.9, np.float32)
        ms = (time.perf_counter() - t0) * 1e3
        return Detections(masks, boxes, scores, classes, {"inference": ms})

    def forward(self, frames: list[np.ndarray]) -> list[Detections]:
        if self.fail_marked and any((f[:2, :2] == FAIL_MARK).all() for f in frames):
            raise RuntimeError("stand-in engine: a frame marked for failure")
        if self.delay_ms:
            time.sleep(self.delay_ms * len(frames) / 1e3)
        return [self._one(f) for f in frames]


def slow_engine(model=None, **kwargs) -> ThresholdEngine:
    """A ThresholdEngine that sleeps ``LOOPLINE_TEST_DELAY_MS`` (default 100) ms per frame."""
    delay = float(os.environ.get("LOOPLINE_TEST_DELAY_MS", "100"))
    return ThresholdEngine(model, delay_ms=delay, **kwargs)


def mark_for_failure(image: np.ndarray) -> np.ndarray:
    """A copy of ``image`` that :func:`flaky_engine` raises on."""
    out = image.copy()
    out[:2, :2] = FAIL_MARK
    return out


def flaky_engine(model=None, **kwargs) -> ThresholdEngine:
    """A ThresholdEngine that raises on frames marked by :func:`mark_for_failure`."""
    return ThresholdEngine(model, fail_marked=True, **kwargs)


class SlowLoadingEngine(ThresholdEngine):
    """A ThresholdEngine whose model is a file (any bytes: the run folder names it by them)
    and which takes ``LOOPLINE_TEST_LOAD_S`` (default 3) s to load one whose name starts with
    ``slow``: what a large model costs, without one."""

    def __init__(self, model=None, **kwargs) -> None:
        super().__init__(None, **kwargs)
        self.model = Path(model) if model else None

    def load(self) -> None:
        if self.model is not None and self.model.name.startswith("slow"):
            time.sleep(float(os.environ.get("LOOPLINE_TEST_LOAD_S", "3")))
