"""Ultralytics' segmentation trainer, validating at the prototypes' own resolution.

Ultralytics' ``SegmentationValidator`` assumes the mask prototypes are at 1/4 of the input: it
takes the input size to be 4 x the prototype size when it crops the masks, and it shrinks the
ground truth to 1/4 before the mask IoU. For the P2 architecture (``yolov8-seg-p2.yaml``, prototypes
at 1/2) both are wrong: the IoU fails on mismatched shapes, or would crop at the wrong scale. This
validator reads the input size from the batch and the mask size from the prototypes, which gives
ultralytics' numbers unchanged for the standard architectures and right ones for P2.
"""

from __future__ import annotations

from copy import copy
from typing import Any

import torch
import torch.nn.functional as F
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.segment import SegmentationTrainer, SegmentationValidator
from ultralytics.utils import ops

__all__ = ["ProtoScaleSegmentationTrainer", "ProtoScaleSegmentationValidator"]


class ProtoScaleSegmentationValidator(SegmentationValidator):
    """``SegmentationValidator`` for prototypes at any stride (see the module docstring)."""

    def preprocess(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch = super().preprocess(batch)
        self._input_hw = tuple(int(s) for s in batch["img"].shape[2:])
        return batch

    def postprocess(self, preds) -> list[dict[str, torch.Tensor]]:
        proto = preds[0][1] if isinstance(preds[0], tuple) else preds[1]
        self._mask_hw = tuple(int(s) for s in proto.shape[2:])
        dets = DetectionValidator.postprocess(self, preds[0])
        for i, pred in enumerate(dets):
            coefficient = pred.pop("extra")
            boxes = pred["bboxes"]
            pred["masks"] = self.process(proto[i], coefficient, boxes, shape=self._input_hw)
        return dets

    def _prepare_batch(self, si: int, batch: dict[str, Any]) -> dict[str, Any]:
        prepared = DetectionValidator._prepare_batch(self, si, batch)
        nl = prepared["cls"].shape[0]
        if self.args.overlap_mask:
            masks = batch["masks"][si]
            index = torch.arange(1, nl + 1, device=masks.device).view(nl, 1, 1)
            masks = (masks == index).float()
        else:
            masks = batch["masks"][batch["batch_idx"] == si]
        if nl:
            native = self.process is ops.process_mask_native
            size = list(prepared["imgsz"]) if native else list(self._mask_hw)
            if list(masks.shape[1:]) != size:
                masks = F.interpolate(masks[None], size, mode="bilinear", align_corners=False)[0]
                masks = masks.gt_(0.5)
        prepared["masks"] = masks
        return prepared


class ProtoScaleSegmentationTrainer(SegmentationTrainer):
    """``SegmentationTrainer`` whose validation uses ``ProtoScaleSegmentationValidator``."""

    def get_validator(self):
        args = copy(self.args)
        return ProtoScaleSegmentationValidator(
            self.test_loader, save_dir=self.save_dir, args=args, _callbacks=self.callbacks
        )
