"""The label geometry rules: a dislocation's label polygon and how a polygon becomes a mask.

One rule for every dataset: the generator (:mod:`loopline.synth.render`), the importers of
real labels, the labelling page and the evaluation's ground truth all draw a dislocation's
label as its centre line buffered by half the label width (:func:`line_polygon`) and rasterise
label polygons with :func:`polygon_mask`. (``--model truth`` measures masks from the pixel-centre
rule instead, :func:`loopline.analysis.sources.truth_detections`, whose docstring says why.)
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["SCALE", "SHIFT", "fixed", "line_polygon", "polygon_mask", "resample_polyline"]

SHIFT = 4  # sub-pixel bits for cv2 drawing
SCALE = 1 << SHIFT  # px -> OpenCV fixed point


def fixed(pts: np.ndarray) -> np.ndarray:
    """(N, 2) px as OpenCV's fixed-point (N, 1, 2) int32 with :data:`SHIFT` fraction bits."""
    return np.round(pts * SCALE).astype(np.int32).reshape(-1, 1, 2)


def resample_polyline(pts: np.ndarray, step: float) -> np.ndarray:
    """Resample an (N, 2) polyline at equal arc-length ``step`` (px), keeping both ends."""
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1] / step)), 1) + 1
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], axis=1)


def line_polygon(pts: np.ndarray, width: float) -> np.ndarray:
    """Outline of a polyline buffered by ``width / 2`` on each side (flat ends), (M, 2) px."""
    p = resample_polyline(pts, 1.5)
    d = np.gradient(p, axis=0)
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1) * (width / 2.0)
    return np.concatenate([p + nrm, (p - nrm)[::-1]])


def polygon_mask(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a polygon (N, 2) px into a boolean (H, W) mask."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [fixed(polygon)], 1, cv2.LINE_8, SHIFT)
    return mask.astype(bool)
