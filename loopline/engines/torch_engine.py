"""PyTorch engine: ultralytics' own predictor (CPU or CUDA), the reference for parity.

Frames go through ultralytics' pre- and post-processing unchanged (``retina_masks=True``, so
masks come at frame resolution), which makes this engine the yardstick the exported runtimes
are checked against and the baseline of ``benchmarks/engines.py``. Frames larger than the
network input are tiled at native scale (``inference="tiles"``) exactly as for the other
runtimes (``loopline.engines.tiling``), ultralytics' predictor running on the tiles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .._offline import configure_offline, use_all_threads
from . import ops, tiling
from .base import Detections, Engine

logger = logging.getLogger(__name__)

__all__ = ["TorchEngine"]


def _import_yolo():
    configure_offline()
    try:
        from ultralytics import YOLO
    except ImportError as e:
        raise ImportError(
            "the torch engine needs ultralytics and torch: pip install 'loopline[train]'"
        ) from e
    return YOLO


class TorchEngine(Engine):
    """YOLOv8-seg ``.pt`` weights run by ultralytics.

    Parameters
    ----------
    threads : int or None
        Torch threads (default: every core; ultralytics alone would use one fewer).
    mask_threshold : float
        Only 0.5: ultralytics' predictor thresholds mask logits at 0 itself.
    """

    name = "torch"

    def __init__(self, model=None, *, threads: int | None = None, mask_threshold: float = 0.5,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(model, **kwargs)
        if mask_threshold != 0.5:
            raise ValueError(
                f"the torch engine keeps ultralytics' mask threshold 0.5, got {mask_threshold}; "
                "use the onnx, openvino or tensorrt engine for another one"
            )
        self.threads = threads
        self.yolo = None
        self.dynamic_size = True  # ultralytics letterboxes to any multiple of 32

    def load(self) -> None:
        if self.yolo is not None:
            return
        YOLO = _import_yolo()
        use_all_threads(self.threads)
        self.yolo = YOLO(str(self.model), task="segment")
        self.loaded = True

    def forward(
        self, frames: list[np.ndarray], *, nm_per_px: float | Sequence[float | None] | None = None
    ) -> list[Detections]:
        if not frames:
            return []
        return tiling.detect_frames(
            self._predict, frames, imgsz=self.imgsz, inference=self.inference,
            overlap=self.tile_overlap, tile_max=self.tile_limit, max_det_frame=self.max_det_frame,
            model_nm_per_px=self.model_nm_per_px, nm_per_px=nm_per_px,
        )  # fmt: skip

    def _predict(self, frames: list[np.ndarray], side: int | None = None) -> list[Detections]:
        imgs = [np.repeat(ops.to_uint8(f)[:, :, None], 3, axis=2) for f in frames]
        results = self.yolo.predict(
            imgs, imgsz=side or self.imgsz, conf=self.conf, iou=self.iou, max_det=self.max_det,
            retina_masks=True, device=self.device, verbose=False, batch=len(imgs),
        )  # fmt: skip
        out = []
        for r, f in zip(results, frames, strict=True):
            t = {k: float(v or 0.0) for k, v in r.speed.items()}
            if r.masks is None or len(r.boxes) == 0:
                out.append(Detections.empty(f.shape[:2], t))
                continue
            out.append(Detections(
                masks=r.masks.data.cpu().numpy().astype(bool),
                boxes=r.boxes.xyxy.cpu().numpy().astype(np.float32),
                scores=r.boxes.conf.cpu().numpy().astype(np.float32),
                classes=r.boxes.cls.cpu().numpy().astype(np.int64),
                timings_ms=t,
            ))  # fmt: skip
        return out
