"""Classical engine: multi-scale ridge filter + hysteresis + skeleton split; no weights.

The fallback when no model is present and the accuracy baseline for the learned engines.

Dislocation lines (class 0)
    A multi-scale ridge filter for dark ridges (Sato, or Meijering for fainter thin lines) on
    the background-flattened frame; hysteresis thresholds set in units of the response's
    robust spread (median + k * MAD), so they hold across exposures. The mask is skeletonised,
    branch points are removed so that crossing lines come apart, skeleton pieces shorter than
    ``min_length`` px are dropped, and each mask pixel joins the nearest remaining piece.
Loops (class 1)
    Dark compact blobs: the flattened darkness smoothed at ``blob_sigma`` px, hysteresis
    thresholded; components that are compact (minor/major axis >= ``min_roundness``) and at
    least ``min_blob_area`` px are loops, and their pixels are taken out of the line mask.

Everything per object is vectorised with ``scipy.ndimage`` label statistics (no per-object
Python loop).
"""

from __future__ import annotations

import inspect
import logging
import time

import cv2
import numpy as np
from scipy import ndimage as ndi

from . import ops
from .base import Detections, Engine

logger = logging.getLogger(__name__)

__all__ = ["RidgeEngine", "ridge_instances"]

_EIGHT = np.ones((3, 3), bool)


def _robust_thresholds(x: np.ndarray, k_low: float, k_high: float) -> tuple[float, float]:
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med))) * 1.4826 + 1e-9
    return med + k_low * mad, med + k_high * mad


def _hysteresis(x: np.ndarray, low: float, high: float) -> np.ndarray:
    lab, n = ndi.label(x > low, structure=_EIGHT)
    if n == 0:
        return np.zeros(x.shape, bool)
    strong = np.zeros(n + 1, bool)
    strong[np.unique(lab[x > high])] = True
    strong[0] = False
    return strong[lab]


def _label_stats(labels: np.ndarray, n: int):
    """Area, box and axis lengths (px) of labels 1..n, vectorised."""
    idx = np.arange(1, n + 1)
    yy, xx = np.indices(labels.shape, dtype=np.float64)
    ones = np.ones(labels.shape)
    area = ndi.sum(ones, labels, idx)
    mx, my = ndi.mean(xx, labels, idx), ndi.mean(yy, labels, idx)
    sxx = ndi.mean(xx * xx, labels, idx) - mx**2
    syy = ndi.mean(yy * yy, labels, idx) - my**2
    sxy = ndi.mean(xx * yy, labels, idx) - mx * my
    tr, det = sxx + syy, sxx * syy - sxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    major = 4 * np.sqrt(np.maximum(tr / 2 + disc, 0))
    minor = 4 * np.sqrt(np.maximum(tr / 2 - disc, 0))
    x0 = ndi.minimum(xx, labels, idx)
    x1 = ndi.maximum(xx, labels, idx) + 1
    y0 = ndi.minimum(yy, labels, idx)
    y1 = ndi.maximum(yy, labels, idx) + 1
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32).reshape(-1, 4)
    return np.asarray(area), boxes, np.asarray(major), np.asarray(minor)


def _split_skeleton(mask: np.ndarray, min_length: int) -> tuple[np.ndarray, int]:
    """Instance labels of a line mask: skeleton pieces between branch points."""
    from skimage.morphology import skeletonize

    skel = skeletonize(mask)
    nb = cv2.filter2D(skel.astype(np.uint8), -1, np.ones((3, 3), np.float32),
                      borderType=cv2.BORDER_CONSTANT) - skel  # fmt: skip
    branch = skel & (nb > 2)
    pieces = skel & ~ndi.binary_dilation(branch, structure=_EIGHT)
    lab, n = ndi.label(pieces, structure=_EIGHT)
    if n == 0:
        return np.zeros(mask.shape, np.int32), 0
    length = ndi.sum(np.ones(mask.shape), lab, np.arange(1, n + 1))
    keep = np.zeros(n + 1, bool)
    keep[1:] = length >= min_length
    lab[~keep[lab]] = 0
    # renumber 1..m
    ids = np.flatnonzero(keep)
    remap = np.zeros(n + 1, np.int32)
    remap[ids] = np.arange(1, len(ids) + 1)
    lab = remap[lab]
    m = len(ids)
    if m == 0:
        return lab, 0
    # every mask pixel joins its nearest skeleton piece
    _, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
    out = np.where(mask, lab[iy, ix], 0).astype(np.int32)
    return out, m


def ridge_instances(
    frame: np.ndarray,
    *,
    sigmas: tuple[float, ...] = (1.0, 2.0, 3.0),
    method: str = "sato",
    k_low: float = 3.0,
    k_high: float = 6.0,
    min_length: int = 15,
    background_sigma: float = 20.0,
    loops: bool = True,
    blob_sigma: float = 3.0,
    blob_k_low: float = 2.0,
    blob_k_high: float = 3.0,
    min_blob_area: int = 40,
    min_roundness: float = 0.45,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lines and loops of one grey frame.

    Parameters
    ----------
    frame : (H, W) uint8 or uint16
    sigmas : tuple of float
        Ridge filter scales (px), about half the line widths to find.
    method : {"sato", "meijering"}
    k_low, k_high : float
        Hysteresis thresholds in robust standard deviations of the ridge response.
    min_length : int
        Shortest skeleton piece kept as a line (px).

    Returns
    -------
    masks : (N, H, W) bool
    boxes : (N, 4) float32
    scores : (N,) float32
    classes : (N,) int64
    """
    from skimage.filters import meijering, sato

    img = ops.to_uint8(frame).astype(np.float32) / 255.0
    bg = cv2.GaussianBlur(img, (0, 0), background_sigma)
    dark = bg - img  # > 0 where darker than its surroundings
    loop_lab = np.zeros(img.shape, np.int32)
    n_loops = 0
    if loops:
        d = cv2.GaussianBlur(dark, (0, 0), blob_sigma)
        lo, hi = _robust_thresholds(d, blob_k_low, blob_k_high)
        blobs = _hysteresis(d, lo, hi)
        lab, n = ndi.label(blobs, structure=_EIGHT)
        if n:
            area, _, major, minor = _label_stats(lab, n)
            ok = np.zeros(n + 1, bool)
            ok[1:] = (area >= min_blob_area) & (minor >= min_roundness * major)
            ids = np.flatnonzero(ok)
            remap = np.zeros(n + 1, np.int32)
            remap[ids] = np.arange(1, len(ids) + 1)
            loop_lab, n_loops = remap[lab], len(ids)
            blob_score = ndi.mean(d, loop_lab, np.arange(1, n_loops + 1)) / max(hi, 1e-9)
    if method == "sato":
        r = sato(dark, sigmas=sigmas, black_ridges=False, mode="reflect")
    elif method == "meijering":
        r = meijering(dark, sigmas=sigmas, black_ridges=False, mode="reflect")
    else:
        raise ValueError(f"method must be 'sato' or 'meijering', got {method!r}")
    r = r.astype(np.float32)
    lo, hi = _robust_thresholds(r, k_low, k_high)
    line_mask = _hysteresis(r, lo, hi) & (loop_lab == 0)
    line_lab, n_lines = _split_skeleton(line_mask, min_length)

    labels = np.where(loop_lab > 0, loop_lab + n_lines, line_lab)
    n = n_lines + n_loops
    h, w = img.shape
    if n == 0:
        return (np.zeros((0, h, w), bool), np.zeros((0, 4), np.float32),
                np.zeros(0, np.float32), np.zeros(0, np.int64))  # fmt: skip
    idx = np.arange(1, n + 1)
    _, boxes, _, _ = _label_stats(labels, n)
    line_score = ndi.mean(r, labels, idx[:n_lines]) / max(hi, 1e-9)
    raw = np.concatenate([line_score, blob_score if n_loops else np.zeros(0)])
    scores = (1.0 - np.exp(-raw)).astype(np.float32)  # monotone squash into (0, 1)
    classes = np.concatenate([np.zeros(n_lines, np.int64), np.ones(n_loops, np.int64)])
    masks = labels[None] == idx[:, None, None]
    return masks, boxes, scores, classes


class RidgeEngine(Engine):
    """The classical engine (``ridge``): no model file, same output as the learned engines.

    Keyword options are passed to :func:`ridge_instances`; ``conf`` filters its scores.
    """

    name = "ridge"

    def __init__(self, model=None, *, conf: float = 0.0, **kwargs) -> None:
        base = {k: kwargs.pop(k) for k in ("imgsz", "iou", "max_det", "device", "inference",
                                           "tile_overlap", "tile_max", "max_det_frame",
                                           "model_nm_per_px", "line_dedupe", "line_snap",
                                           "mask_annotations", "ignore_regions", "loop_vote")
                if k in kwargs}
        super().__init__(None, conf=conf, **base)
        allowed = set(inspect.signature(ridge_instances).parameters) - {"frame"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise TypeError(f"unknown ridge options {unknown}; known: {sorted(allowed)}")
        self.options = kwargs

    def load(self) -> None:
        self.loaded = True

    def forward(self, frames: list[np.ndarray], *, nm_per_px=None) -> list[Detections]:
        # weight-free: whole frames at any size and pixel scale (no tiles, no resampling)
        out = []
        for f in frames:
            t0 = time.perf_counter()
            m, b, s, c = ridge_instances(f, **self.options)
            keep = np.flatnonzero(s >= self.conf)
            keep = keep[np.argsort(-s[keep], kind="stable")][: self.max_det]
            t = {"preprocess": 0.0, "inference": (time.perf_counter() - t0) * 1e3,
                 "postprocess": 0.0}  # fmt: skip
            out.append(Detections(m[keep], b[keep], s[keep], c[keep], t))
        return out
