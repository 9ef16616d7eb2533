"""The part of every YOLOv8-seg runtime that is not the runtime: tiling, batching, timings.

A subclass implements ``load`` and ``_infer(batch) -> (pred, protos)``; pre- and
post-processing come from ``loopline.engines.ops`` so that every runtime gives the same result,
and frames larger than the network input are tiled at native scale by
``loopline.engines.tiling`` (``inference="tiles"``, the default).
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Sequence

import numpy as np

from ..models import mask_thresholds
from . import ops, tiling
from .base import Detections, Engine

logger = logging.getLogger(__name__)

__all__ = ["YoloEngine"]


class YoloEngine(Engine):
    """Engine for an exported YOLOv8-seg network (raw head output + mask prototypes).

    Parameters
    ----------
    max_batch : int or None
        Frames per network call; a longer list is split. None: the model's own limit (a static
        batch dimension) or no limit.
    impl : {"numba", "python"} or None
        Post-processing kernels (``ops``).
    mask_threshold : float or sequence of float
        Mask probability above which a pixel belongs to an instance, in (0, 1), for every class
        or one per class. 0.5 is ultralytics' rule; thin lines decoded from 1/4-resolution
        prototypes keep more of their length at a lower one (the shipped model's values are in
        ``loopline.models.SETTINGS``).
    """

    name = "yolo"
    votes_itself = True  # ops.postprocess votes on loop candidates before decoding masks

    def __init__(self, model=None, *, max_batch: int | None = None, impl: str | None = None,
                 mask_threshold: float | Sequence[float] = 0.5, **kwargs) -> None:  # fmt: skip
        super().__init__(model, **kwargs)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        thr = mask_thresholds(mask_threshold)
        self.mask_threshold: float | tuple[float, ...] = (
            float(thr[0]) if thr.size == 1 else tuple(float(t) for t in thr))
        self.max_batch = max_batch
        self.impl = impl
        self.static_batch: int | None = None  # set by load() when the model fixes it

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) float32 -> pred (B, 4 + nc + nm, A), protos (B, nm, S/4, S/4).

        ``S`` is ``imgsz``, or any multiple of 32 up to ``tile_limit`` when ``load`` found
        that the model takes any input size (``dynamic_size``).
        """

    def _chunk(self) -> int | None:
        sizes = [s for s in (self.max_batch, self.static_batch) if s]
        return min(sizes) if sizes else None

    def forward(
        self, frames: list[np.ndarray], *, nm_per_px: float | Sequence[float | None] | None = None
    ) -> list[Detections]:
        if not frames:
            return []
        # tiles go through the network in batches no larger than the caller's (or the model's)
        chunk = self._chunk() or len(frames)
        return tiling.detect_frames(
            lambda pieces, side: self._forward_letterbox(pieces, chunk, side), frames,
            imgsz=self.imgsz, inference=self.inference, overlap=self.tile_overlap,
            tile_max=self.tile_limit, max_det_frame=self.max_det_frame,
            model_nm_per_px=self.model_nm_per_px, nm_per_px=nm_per_px,
        )  # fmt: skip

    def _forward_letterbox(self, frames: list[np.ndarray], chunk: int,
                           side: int | None = None) -> list[Detections]:  # fmt: skip
        """Frames (or tiles) letterboxed into ``side`` (default ``imgsz``) through the
        network, ``chunk`` at a time."""
        side = side or self.imgsz
        if side != self.imgsz and not self.dynamic_size:
            raise ValueError(f"{self.model} takes inputs of {self.imgsz} px only, got {side}")
        out: list[Detections] = []
        for i in range(0, len(frames), chunk):
            out.extend(self._forward_batch(frames[i : i + chunk], side))
        return out

    def _forward_batch(self, frames: list[np.ndarray], side: int) -> list[Detections]:
        t0 = time.perf_counter()
        batch, lbs = ops.preprocess(frames, side)
        n = len(frames)
        if self.static_batch and n < self.static_batch:  # pad a fixed-batch model
            batch = np.concatenate([batch, np.zeros((self.static_batch - n, *batch.shape[1:]),
                                                    batch.dtype)])  # fmt: skip
        t1 = time.perf_counter()
        pred, protos = self._infer(batch)
        t2 = time.perf_counter()
        res = ops.postprocess(pred[:n], protos[:n], lbs, conf=self.conf, iou=self.iou,
                              max_det=self.max_det, impl=self.impl,
                              mask_threshold=self.mask_threshold,
                              loop_vote=self.loop_vote)  # fmt: skip
        t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3 / n, "inference": (t2 - t1) * 1e3 / n,
                   "postprocess": (t3 - t2) * 1e3 / n}  # fmt: skip
        logger.debug("%s batch %d at %d px: %s", self.name, n, side, timings)
        return [Detections(m, b, s, c, dict(timings)) for m, b, s, c in res]


def split_outputs(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pred, protos) from a runtime's outputs, told apart by rank (3 vs 4)."""
    pred = next((o for o in outputs if o.ndim == 3), None)
    protos = next((o for o in outputs if o.ndim == 4), None)
    if pred is None or protos is None:
        shapes = [o.shape for o in outputs]
        raise ValueError(f"expected a YOLOv8-seg model (outputs of rank 3 and 4), got {shapes}")
    return pred, protos
