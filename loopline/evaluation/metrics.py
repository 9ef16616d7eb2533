"""Metrics of instance segmentation for dislocation lines and loops.

Pure functions over numpy arrays. Masks are boolean stacks ``(N, H, W)`` (one instance per
slice); boxes are ``(N, 4)`` ``x0, y0, x1, y1`` in pixels; lengths and distances are in pixels.

- ``lar``: the Length-Aware Recall of Ruzaeva et al. (2023), Algorithm 1, exactly.
- ``lar_tol`` and ``line_f1_tol``: the same idea for thin human line labels (1-3 px strokes,
  where mask IoU means little): lines are compared as skeletons within a distance tolerance.
- ``loop_f1``: F1 at a box-IoU cut-off with the greedy global assignment of Shen et al. (2021).
- ``relative_error``, ``ellipse_diameters``, ``foreground_fraction``: the relative errors
  N_re, D_re and F_re of Salvador et al. (2026).
- ``recall_by_size`` and ``equivalent_diameters``: recall of loops binned by their size.
- ``pileup_spacing``: mean nearest-neighbour spacing of the lines of a pile-up.
- ``distractor_hits``: predicted line pixels on labelled non-defects (slip-trace confusion).
- ``match_detections`` and ``average_precision``: COCO-style AP for box and mask mAP.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from ..analysis._kernels import get_kernels
from ..engines import ops
from ..geometry import _skeleton_crop, skeleton, skeleton_polyline

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "LOOP_SIZE_EDGES",
    "DistractorHits",
    "F1Counts",
    "LARResult",
    "LineF1",
    "average_precision",
    "box_iou",
    "distractor_hits",
    "ellipse_diameters",
    "equivalent_diameters",
    "foreground_fraction",
    "greedy_match",
    "lar",
    "lar_tol",
    "line_distances",
    "line_f1_tol",
    "longest_skeleton_length",
    "loop_f1",
    "mask_boxes",
    "mask_iou",
    "match_detections",
    "pileup_spacing",
    "recall_by_size",
    "relative_error",
    "resample_polyline",
    "size_bin_names",
    "skeleton",
    "skeleton_length",
    "skeleton_polyline",
]

#: IoU thresholds of COCO's mAP50-95: 0.50, 0.55, ..., 0.95.
COCO_IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)

#: Bin edges (equivalent diameter, px) of per-size loop recall: < 8, 8-14, 14-24, 24-40, >= 40.
LOOP_SIZE_EDGES: tuple[float, ...] = (8.0, 14.0, 24.0, 40.0)

_EIGHT = np.ones((3, 3), bool)


# ---------------------------------------------------------------------------------------------
# input checks


def _stack(masks: np.ndarray, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Validate a mask stack; a single (H, W) mask becomes a stack of one."""
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got {m.shape}")
    if shape is not None and m.shape[1:] != tuple(shape):
        raise ValueError(f"{name} must have frames of shape {tuple(shape)}, got {m.shape[1:]}")
    return m.astype(bool, copy=False)


def _boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1 and b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {b.shape}")
    return b


def _threshold(t: float, name: str) -> float:
    if not 0.0 < t <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {t}")
    return float(t)


# ---------------------------------------------------------------------------------------------
# overlaps


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of masks.

    Parameters
    ----------
    a : (N, H, W) bool
    b : (M, H, W) bool

    Returns
    -------
    (N, M) float64
        IoU; 0 where both masks are empty.

    Examples
    --------
    >>> a = np.zeros((1, 4, 4), bool); a[0, :2] = True
    >>> mask_iou(a, np.ones((1, 4, 4), bool))
    array([[0.5]])
    """
    a = _stack(a, "a")
    return ops.mask_iou(a, _stack(b, "b", a.shape[1:]))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Parameters
    ----------
    a : (N, 4) float
        Boxes ``x0, y0, x1, y1`` (px).
    b : (M, 4) float

    Returns
    -------
    (N, M) float64

    Examples
    --------
    >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2]]))
    array([[0.33333333]])
    """
    return ops.box_iou(_boxes(a, "a"), _boxes(b, "b"), dtype=np.float64)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of masks, ``x0, y0, x1, y1`` with exclusive ends (px), (N, 4) float64.

    An empty mask gets the box ``0, 0, 0, 0``.
    """
    m = _stack(masks, "masks")
    out = np.zeros((len(m), 4))
    for i, mi in enumerate(m):
        ys = np.flatnonzero(mi.any(axis=1))
        xs = np.flatnonzero(mi.any(axis=0))
        if ys.size:
            out[i] = xs[0], ys[0], xs[-1] + 1, ys[-1] + 1
    return out


# ---------------------------------------------------------------------------------------------
# skeletons


def skeleton_length(mask: np.ndarray) -> int:
    """Length of a mask's Lee skeleton as its pixel count (Ruzaeva et al., section II-B), px."""
    return int(np.count_nonzero(_skeleton_crop(mask)[0]))


def longest_skeleton_length(mask: np.ndarray) -> int:
    """Pixel count of the longest 8-connected piece of a mask's Lee skeleton, px.

    A fractured mask has several skeleton pieces; Ruzaeva et al. (case 2 of section II-C) take
    the longest one.
    """
    return _longest_piece(_skeleton_crop(mask)[0])


def _longest_piece(skel: np.ndarray) -> int:
    lab, n = ndi.label(skel, structure=_EIGHT)
    if n == 0:
        return 0
    return int(np.bincount(lab.ravel())[1:].max())


def resample_polyline(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced in arc length along a polyline (both ends kept).

    Parameters
    ----------
    points : (K, 2) float
        Polyline ``x, y`` (px), K >= 1.
    n : int
        Number of output points.

    Returns
    -------
    (n, 2) float64
    """
    p = np.asarray(points, float)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise ValueError(f"points must have shape (K, 2) with K >= 1, got {p.shape}")
    return get_kernels("numba").resample(np.ascontiguousarray(p), int(n))  # the one resampler


# ---------------------------------------------------------------------------------------------
# Length-Aware Recall


@dataclass(frozen=True)
class LARResult:
    """Outcome of ``lar`` or ``lar_tol`` on one frame.

    Attributes
    ----------
    value : float
        Mean of ``scores`` (NaN without ground truth).
    scores : (N,) float64
        ``LAR_i`` of every ground-truth instance, in input order (0 where unmatched).
    matches : (N,) int64
        Index of the prediction matched to each ground-truth instance, -1 where none.
    """

    value: float
    scores: np.ndarray
    matches: np.ndarray


def lar(
    gt_masks: np.ndarray,
    pred_masks: np.ndarray,
    iou_threshold: float = 0.5,
    *,
    remove_unmatched: bool = True,
) -> LARResult:
    """Length-Aware Recall (LAR), Algorithm 1 of Ruzaeva et al. (2023), exactly.

    For each ground-truth mask in turn: find the remaining prediction with the highest mask
    IoU (the first in input order on a tie); if that IoU is at least ``iou_threshold``,
    ``LAR_i = 1 - |len(S(gt_i)) - len(S(pred_j))| / len(S(gt_i))`` where ``S`` is Lee
    skeletonisation, ``len`` counts skeleton pixels, and a fractured prediction is measured by
    its longest skeleton piece; otherwise ``LAR_i = 0``. Then that prediction is deleted from
    the list. ``LAR`` is the mean of ``LAR_i``.

    Parameters
    ----------
    gt_masks : (N, H, W) bool
        Ground-truth instances, none empty.
    pred_masks : (M, H, W) bool
        Predicted instances.
    iou_threshold : float
        ``t`` of the paper (0.5).
    remove_unmatched : bool
        Algorithm 1 deletes the best prediction after every ground-truth instance, matched or
        not (the "Delete" step sits after the ``if``); False deletes only matched predictions.

    Returns
    -------
    LARResult
        ``value`` in (-inf, 1] (negative only if a matched prediction is more than twice as
        long as its ground truth), per-instance ``scores`` and ``matches``.

    Examples
    --------
    >>> gt = np.zeros((1, 9, 20), bool); gt[0, 3:6, 2:18] = True      # skeleton 16 px
    >>> pred = np.zeros((1, 9, 20), bool); pred[0, 3:6, 2:14] = True  # skeleton 12 px, IoU 0.75
    >>> lar(gt, pred).value
    0.75
    """
    gt = _stack(gt_masks, "gt_masks")
    pred = _stack(pred_masks, "pred_masks", gt.shape[1:])
    t = _threshold(iou_threshold, "iou_threshold")
    _no_empty(gt, "gt_masks")
    iou = mask_iou(gt, pred)

    def length_pair(i: int, j: int) -> tuple[int, int]:
        return skeleton_length(gt[i]), longest_skeleton_length(pred[j])

    return _lar_loop(iou, t, length_pair, remove_unmatched)


def _no_empty(gt: np.ndarray, name: str) -> None:
    empty = np.flatnonzero(~gt.any(axis=(1, 2)))
    if empty.size:
        raise ValueError(f"{name} must not hold empty masks, got empty ones at {empty.tolist()}")


def _lar_loop(score: np.ndarray, t: float, length_pair, remove_unmatched: bool) -> LARResult:
    n, m = score.shape
    scores = np.zeros(n)
    matches = np.full(n, -1, np.int64)
    left = np.ones(m, bool)
    for i in range(n):
        if not left.any():
            break  # nothing left to match: LAR_i = 0 for the rest
        j = int(np.argmax(np.where(left, score[i], -np.inf)))
        if score[i, j] >= t:
            l_gt, l_pred = length_pair(i, j)
            scores[i] = 1.0 - abs(l_gt - l_pred) / l_gt
            matches[i] = j
            left[j] = False
        elif remove_unmatched:
            left[j] = False
    value = float(scores.mean()) if n else float("nan")
    return LARResult(value=value, scores=scores, matches=matches)


# ---------------------------------------------------------------------------------------------
# tolerance metrics for thin line labels


def _skeleton_points(masks: np.ndarray) -> list[np.ndarray]:
    """Per instance: (K, 2) ``row, col`` coordinates of its Lee skeleton."""
    out = []
    for m in masks:
        sk, y0, x0 = _skeleton_crop(m)
        out.append(np.argwhere(sk) + np.array([y0, x0]))
    return out


def _within(points: np.ndarray, tree: cKDTree | None, tol: float) -> np.ndarray:
    """Which of ``points`` lie within ``tol`` of any point of ``tree``, (K,) bool."""
    if tree is None or len(points) == 0:
        return np.zeros(len(points), bool)
    d, _ = tree.query(points, k=1, distance_upper_bound=tol + 1e-9)
    return d <= tol + 1e-9


def _tolerant_f1(a: np.ndarray, b: np.ndarray, ta: cKDTree, tb: cKDTree, tol: float) -> float:
    """F1 of two skeletons within ``tol``: 1 when each lies within ``tol`` of the other."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    r = _within(a, tb, tol).mean()
    p = _within(b, ta, tol).mean()
    return 0.0 if p + r == 0 else float(2 * p * r / (p + r))


def lar_tol(
    gt_masks: np.ndarray,
    pred_masks: np.ndarray,
    *,
    tol: float = 3.0,
    threshold: float = 0.5,
    remove_unmatched: bool = True,
) -> LARResult:
    """Length-Aware Recall with a distance tolerance, for thin human line labels.

    Algorithm 1 of Ruzaeva et al. with mask IoU, which is meaningless for 1-3 px strokes,
    replaced by a tolerant overlap of skeletons: for a ground-truth line ``i`` and a prediction
    ``j`` with Lee skeletons ``S_i`` and ``S_j``, ``r`` is the fraction of ``S_i`` within
    ``tol`` px of ``S_j`` (``S_j`` dilated by a disk of radius ``tol``), ``p`` the fraction of
    ``S_j`` within ``tol`` of ``S_i``, and the overlap is their harmonic mean ``2pr / (p + r)``.
    A ground-truth line matches the remaining prediction of highest overlap if it is at least
    ``threshold``; lengths, the longest piece of a fractured prediction, the score ``1 - e``
    and the removal of predictions are as in ``lar``.

    Parameters
    ----------
    gt_masks : (N, H, W) bool
        Ground-truth lines (strokes of any width), none empty.
    pred_masks : (M, H, W) bool
    tol : float
        Distance tolerance (px).
    threshold : float
        Least tolerant overlap for a match, in (0, 1].
    remove_unmatched : bool
        As in ``lar``.

    Returns
    -------
    LARResult
    """
    gt = _stack(gt_masks, "gt_masks")
    pred = _stack(pred_masks, "pred_masks", gt.shape[1:])
    t = _threshold(threshold, "threshold")
    if tol < 0:
        raise ValueError(f"tol must be >= 0 px, got {tol}")
    _no_empty(gt, "gt_masks")
    sg, sp = _skeleton_points(gt), _skeleton_points(pred)
    tg = [cKDTree(p) if len(p) else None for p in sg]
    tp = [cKDTree(p) if len(p) else None for p in sp]
    bg, bp = _point_boxes(sg), _point_boxes(sp)
    score = np.zeros((len(gt), len(pred)))
    for i in range(len(gt)):
        for j in range(len(pred)):
            if _boxes_near(bg[i], bp[j], tol):
                score[i, j] = _tolerant_f1(sg[i], sp[j], tg[i], tp[j], tol)

    def length_pair(i: int, j: int) -> tuple[int, int]:
        return len(sg[i]), _longest_piece(_points_image(sp[j], gt.shape[1:]))

    return _lar_loop(score, t, length_pair, remove_unmatched)


def _point_boxes(points: list[np.ndarray]) -> np.ndarray:
    out = np.full((len(points), 4), np.nan)
    for k, p in enumerate(points):
        if len(p):
            out[k] = *p.min(axis=0), *p.max(axis=0)
    return out


def _boxes_near(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    if np.isnan(a[0]) or np.isnan(b[0]):
        return False
    return bool(
        a[0] <= b[2] + tol and b[0] <= a[2] + tol and a[1] <= b[3] + tol and b[1] <= a[3] + tol
    )


def _points_image(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = np.zeros(shape, bool)
    img[points[:, 0], points[:, 1]] = True
    return img


@dataclass(frozen=True)
class LineF1:
    """Skeleton-pixel precision, recall and F1 within a tolerance (``line_f1_tol``).

    ``tp_pred`` of ``n_pred`` predicted skeleton pixels lie within the tolerance of the
    ground-truth skeleton; ``tp_gt`` of ``n_gt`` ground-truth skeleton pixels lie within it of
    the prediction. The counts add up over frames: use ``LineF1.pool``.
    """

    tp_pred: int
    n_pred: int
    tp_gt: int
    n_gt: int

    @property
    def precision(self) -> float:
        if self.n_pred == 0:
            return float("nan") if self.n_gt == 0 else 0.0
        return self.tp_pred / self.n_pred

    @property
    def recall(self) -> float:
        if self.n_gt == 0:
            return float("nan") if self.n_pred == 0 else 0.0
        return self.tp_gt / self.n_gt

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if np.isnan(p) or np.isnan(r):
            return float("nan")
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    @staticmethod
    def pool(items: Sequence[LineF1]) -> LineF1:
        """Sum the pixel counts of several frames."""
        return LineF1(
            sum(x.tp_pred for x in items), sum(x.n_pred for x in items),
            sum(x.tp_gt for x in items), sum(x.n_gt for x in items),
        )  # fmt: skip


def line_f1_tol(gt_masks: np.ndarray, pred_masks: np.ndarray, *, tol: float = 3.0) -> LineF1:
    """Precision, recall and F1 of skeleton pixels within a distance tolerance.

    Every instance is reduced to its Lee skeleton; a predicted skeleton pixel is correct if a
    ground-truth skeleton pixel lies within ``tol`` px (the ground-truth skeleton dilated by a
    disk of radius ``tol``), and a ground-truth skeleton pixel is found if a predicted one lies
    within ``tol`` px.

    Parameters
    ----------
    gt_masks : (N, H, W) bool or (H, W) bool
        Ground-truth lines; a single (H, W) mask is taken as one instance.
    pred_masks : (M, H, W) bool or (H, W) bool
    tol : float
        Distance tolerance (px).

    Returns
    -------
    LineF1

    Examples
    --------
    >>> gt = np.zeros((20, 20), bool); gt[5, 2:18] = True
    >>> pred = np.zeros((20, 20), bool); pred[7, 2:8] = True       # 2 px off, 6 px long
    >>> r = line_f1_tol(gt, pred); (r.precision, r.recall)
    (1.0, 0.5)
    """
    gt = _stack(gt_masks, "gt_masks")
    pred = _stack(pred_masks, "pred_masks", gt.shape[1:])
    if tol < 0:
        raise ValueError(f"tol must be >= 0 px, got {tol}")
    # Union of per-instance skeletons: touching instances keep their own centre lines.
    sg = _union_points(_skeleton_points(gt))
    sp = _union_points(_skeleton_points(pred))
    tg = cKDTree(sg) if len(sg) else None
    tp = cKDTree(sp) if len(sp) else None
    return LineF1(
        tp_pred=int(_within(sp, tg, tol).sum()), n_pred=len(sp),
        tp_gt=int(_within(sg, tp, tol).sum()), n_gt=len(sg),
    )  # fmt: skip


def _union_points(points: list[np.ndarray]) -> np.ndarray:
    if not points or all(len(p) == 0 for p in points):
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate([p for p in points if len(p)]), axis=0)


# ---------------------------------------------------------------------------------------------
# loops


@dataclass(frozen=True)
class F1Counts:
    """True positives, false positives and false negatives; add them up over frames."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        d = self.tp + self.fp
        return self.tp / d if d else float("nan")

    @property
    def recall(self) -> float:
        d = self.tp + self.fn
        return self.tp / d if d else float("nan")

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else float("nan")

    def __add__(self, other: F1Counts) -> F1Counts:
        return F1Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Greedy global assignment: repeatedly pair the highest remaining IoU at or above cut-off.

    Shen et al. (2021): "assignments ... using the highest IoU in the whole matrix. When an
    assignment is made all the matrix entries associated with those predicted and ground truth
    bounding boxes are removed from the matrix and the process is repeated."

    Parameters
    ----------
    iou : (N, M) float
        IoU of ground truth (rows) against predictions (columns).
    threshold : float
        Cut-off IoU; pairs below it are never assigned.

    Returns
    -------
    list of (int, int)
        ``(gt index, prediction index)`` pairs in order of assignment.
    """
    iou = np.asarray(iou, float)
    if iou.ndim != 2:
        raise ValueError(f"iou must have shape (N, M), got {iou.shape}")
    if iou.size == 0:
        return []
    # Sorting all candidate pairs once is the same as re-taking the matrix maximum each time.
    gi, pj = np.nonzero(iou >= threshold)
    order = np.lexsort((pj, gi, -iou[gi, pj]))
    used_g, used_p, out = set(), set(), []
    for k in order:
        g, p = int(gi[k]), int(pj[k])
        if g not in used_g and p not in used_p:
            used_g.add(g)
            used_p.add(p)
            out.append((g, p))
    return out


def loop_f1(gt_boxes: np.ndarray, pred_boxes: np.ndarray, iou_threshold: float = 0.15) -> F1Counts:
    """Detection counts of loops at a box-IoU cut-off (Shen et al. 2021: 0.15).

    Parameters
    ----------
    gt_boxes : (N, 4) float
        Ground-truth boxes ``x0, y0, x1, y1`` (px).
    pred_boxes : (M, 4) float
    iou_threshold : float
        Cut-off IoU, in (0, 1].

    Returns
    -------
    F1Counts
        ``.f1``, ``.precision``, ``.recall``; add counts over frames before taking F1.

    Examples
    --------
    >>> gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    >>> loop_f1(gt, np.array([[2, 2, 12, 12]])).f1    # one hit (IoU 0.47), one miss
    0.6666666666666666
    """
    t = _threshold(iou_threshold, "iou_threshold")
    g, p = _boxes(gt_boxes, "gt_boxes"), _boxes(pred_boxes, "pred_boxes")
    tp = len(greedy_match(box_iou(g, p), t))
    return F1Counts(tp=tp, fp=len(p) - tp, fn=len(g) - tp)


def relative_error(pred: float, gt: float) -> float:
    """Signed relative error ``(pred - gt) / gt`` (Salvador et al. eq. 1, as a fraction).

    NaN where ``gt`` is 0 or either value is NaN.

    >>> relative_error(90.0, 100.0)
    -0.1
    """
    if gt == 0 or np.isnan(gt) or np.isnan(pred):
        return float("nan")
    return float((pred - gt) / gt)


def ellipse_diameters(masks: np.ndarray) -> np.ndarray:
    """Mean diameter of the ellipse fitted to each loop mask, px.

    The ellipse is OpenCV's least-squares fit to the outer contour of the mask's largest
    component; its diameter is the mean of its two axes ``(D_major + D_minor) / 2``, each
    widened by 1 px because the contour runs through the centres of the boundary pixels, half
    a pixel inside the object's edge. A mask whose contour has fewer than five points gets the
    diameter of the circle of equal area.

    Parameters
    ----------
    masks : (N, H, W) bool

    Returns
    -------
    (N,) float64
        NaN for an empty mask.
    """
    import cv2

    m = _stack(masks, "masks")
    out = equivalent_diameters(m)  # NaN for empty masks; kept where no ellipse fits
    for k, mk in enumerate(m):
        if not mk.any():
            continue
        contours, _ = cv2.findContours(mk.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)  # fmt: skip
        c = max(contours, key=cv2.contourArea)
        if len(c) >= 5:
            (_, _), (d1, d2), _ = cv2.fitEllipse(c)
            out[k] = (d1 + d2) / 2.0 + 1.0
    return out


def foreground_fraction(masks: np.ndarray, shape: tuple[int, int] | None = None) -> float:
    """Fraction of the frame covered by the union of masks (Salvador et al.'s F).

    Parameters
    ----------
    masks : (N, H, W) bool
    shape : (H, W), optional
        Frame shape when ``masks`` is empty with no frame dimensions.
    """
    m = _stack(masks, "masks")
    h, w = m.shape[1:] if shape is None else shape
    if h * w == 0:
        return float("nan")
    return float(np.count_nonzero(m.any(axis=0))) / (h * w) if len(m) else 0.0


def equivalent_diameters(masks: np.ndarray) -> np.ndarray:
    """Diameter of the circle of each mask's area, ``2 sqrt(area / pi)``, px.

    Parameters
    ----------
    masks : (N, H, W) bool

    Returns
    -------
    (N,) float64
        NaN for an empty mask.

    Examples
    --------
    >>> m = np.zeros((1, 20, 20), bool); m[0, 5:15, 5:15] = True    # 100 px
    >>> equivalent_diameters(m).round(2)
    array([11.28])
    """
    m = _stack(masks, "masks")
    area = m.sum(axis=(1, 2)).astype(float)
    return np.where(area > 0, 2.0 * np.sqrt(area / np.pi), np.nan)


def size_bin_names(edges: Sequence[float] = LOOP_SIZE_EDGES) -> list[str]:
    """Names of the bins of ``recall_by_size``: ``["<8", "8-14", ..., ">=40"]``."""
    e = [f"{x:g}" for x in edges]
    if not e:
        return ["all"]
    return [f"<{e[0]}", *(f"{a}-{b}" for a, b in itertools.pairwise(e)), f">={e[-1]}"]


def recall_by_size(
    diameters: np.ndarray, found: np.ndarray, edges: Sequence[float] = LOOP_SIZE_EDGES
) -> tuple[np.ndarray, np.ndarray]:
    """Found and total ground-truth loops per size bin; sum over frames, then divide.

    Parameters
    ----------
    diameters : (N,) float
        Size of each ground-truth loop (px), e.g. ``equivalent_diameters``; NaN ones are left
        out.
    found : (N,) bool
        Whether each loop was matched by a prediction.
    edges : sequence of float
        Increasing bin edges (px); bin ``i`` holds ``edges[i-1] <= d < edges[i]``.

    Returns
    -------
    found, total : (len(edges) + 1,) int64

    Examples
    --------
    >>> recall_by_size(np.array([5.0, 9.0, 13.9, 14.0, 50.0]),
    ...                np.array([False, True, False, True, True]))
    (array([0, 1, 1, 0, 1]), array([1, 2, 1, 0, 1]))
    """
    d = np.asarray(diameters, float).ravel()
    f = np.asarray(found, bool).ravel()
    if d.shape != f.shape:
        raise ValueError(f"found must have shape {d.shape} like diameters, got {f.shape}")
    e = np.asarray(edges, float)
    if e.ndim != 1 or np.any(np.diff(e) <= 0):
        raise ValueError(f"edges must be a strictly increasing 1-D sequence, got {list(edges)}")
    ok = ~np.isnan(d)
    k = np.digitize(d[ok], e)
    nb = len(e) + 1
    total = np.bincount(k, minlength=nb).astype(np.int64)
    hit = np.bincount(k[f[ok]], minlength=nb).astype(np.int64)
    return hit, total


# ---------------------------------------------------------------------------------------------
# pile-up spacing


_DENSE_STEP = 0.5  # px: lines are sampled this finely for closest-distance queries


class _Lines:
    """Polylines prepared for mean closest-distance queries.

    ``samples[i]``: ``n_points`` points equally spaced along line ``i``; ``trees[i]``: a k-d tree
    of line ``i`` sampled every 0.5 px, which finds the segment closest to a point; the distance
    to that segment is then exact.
    """

    def __init__(self, lines: Sequence[np.ndarray], n_points: int) -> None:
        self.lines = [np.asarray(x, float).reshape(-1, 2) for x in lines]
        for k, ln in enumerate(self.lines):
            if len(ln) == 0:
                raise ValueError(f"line {k} has no points")
        self.samples = [resample_polyline(ln, n_points) for ln in self.lines]
        self.dense = [_dense(ln) for ln in self.lines]
        self.trees = [cKDTree(d) for d in self.dense]

    def __len__(self) -> int:
        return len(self.lines)

    def distances(self, samples: Sequence[np.ndarray]) -> np.ndarray:
        """Mean closest distance of each point set in ``samples`` (A of (n, 2)) to each line,
        (A, len(self)) px."""
        out = np.zeros((len(samples), len(self)))
        if len(samples) == 0:
            return out
        pts = np.concatenate(samples)
        ends = np.cumsum([len(s) for s in samples])[:-1]
        for j, tree in enumerate(self.trees):
            d = _refine(pts, self.dense[j], tree.query(pts, k=1)[1])
            out[:, j] = [x.mean() for x in np.split(d, ends)]
        return out


def _refine(pts: np.ndarray, dense: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Exact distance of each point to the two segments around its nearest dense sample."""
    if len(dense) == 1:
        return np.hypot(*(pts - dense[0]).T)
    best = np.full(len(pts), np.inf)
    for lo in (k - 1, k):
        lo = np.clip(lo, 0, len(dense) - 2)
        a, b = dense[lo], dense[lo + 1]
        ab = b - a
        u = np.clip(((pts - a) * ab).sum(axis=1) / np.maximum((ab**2).sum(axis=1), 1e-12), 0, 1)
        best = np.minimum(best, np.hypot(*(pts - a - u[:, None] * ab).T))
    return best


def _dense(line: np.ndarray) -> np.ndarray:
    if len(line) == 1:
        return line
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(line, axis=0).T))])
    n = max(int(np.ceil(s[-1] / _DENSE_STEP)), 1) + 1
    return resample_polyline(line, n)


def line_distances(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, n_points: int = 50
) -> np.ndarray:
    """Mean closest distance from each line of ``a`` to each line of ``b``.

    Parameters
    ----------
    a, b : sequences of (K, 2) float
        Polylines ``x, y`` (px).
    n_points : int
        Points equally spaced along each line of ``a`` whose closest distances are averaged.

    Returns
    -------
    (len(a), len(b)) float64
        Distances (px).
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return _Lines(b, n_points).distances([resample_polyline(x, n_points) for x in a])


def pileup_spacing(lines: Sequence[np.ndarray], *, n_points: int = 50) -> float:
    """Mean nearest-neighbour spacing of the lines of a pile-up, px.

    Each line is resampled to ``n_points`` points equally spaced in arc length; the distance of
    line ``i`` to line ``j`` is the mean over those points of the closest distance to line
    ``j``; a line's spacing is its distance to its nearest neighbour; the pile-up's spacing is
    the mean over its lines.

    Parameters
    ----------
    lines : sequence of (K, 2) float
        Polylines ``x, y`` (px), K >= 1.
    n_points : int
        Points per line (50).

    Returns
    -------
    float
        NaN for fewer than two lines.

    Examples
    --------
    >>> lines = [np.array([[0.0, y], [100.0, y]]) for y in (0, 10, 30)]
    >>> pileup_spacing(lines)    # nearest neighbours 10, 10, 20
    13.333333333333334
    """
    if len(lines) < 2:
        return float("nan")
    ls = _Lines(lines, n_points)
    d = ls.distances(ls.samples)
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean())


# ---------------------------------------------------------------------------------------------
# COCO-style average precision


def match_detections(
    iou: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
) -> np.ndarray:
    """Mark each detection of one frame and class as true or false positive (COCO rules).

    Detections are taken in order of decreasing score; each is matched to the not yet matched
    ground-truth instance of highest IoU at or above the threshold.

    Parameters
    ----------
    iou : (N, M) float
        IoU of ground truth (rows) against detections (columns).
    scores : (M,) float
    thresholds : (T,) float

    Returns
    -------
    (M, T) bool
        True positive at each IoU threshold, rows in the input order of detections.
    """
    iou = np.asarray(iou, float)
    scores = np.asarray(scores, float)
    n, m = iou.shape
    if scores.shape != (m,):
        raise ValueError(f"scores must have shape ({m},), got {scores.shape}")
    th = np.asarray(thresholds, float)
    tp = np.zeros((m, th.size), bool)
    if n == 0 or m == 0:
        return tp
    order = np.argsort(-scores, kind="stable")
    for k, t in enumerate(th):
        taken = np.zeros(n, bool)
        for d in order:
            col = np.where(taken, -1.0, iou[:, d])
            g = int(np.argmax(col))
            if col[g] >= t:
                taken[g] = True
                tp[d, k] = True
    return tp


def average_precision(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> np.ndarray:
    """COCO 101-point interpolated average precision at each IoU threshold.

    Parameters
    ----------
    tp : (M, T) bool
        True-positive flags of all detections of one class over the dataset
        (``match_detections`` of every frame, concatenated).
    scores : (M,) float
    n_gt : int
        Ground-truth instances of that class over the dataset.

    Returns
    -------
    (T,) float64
        AP per threshold; NaN when ``n_gt`` is 0.

    Examples
    --------
    >>> average_precision(np.array([[True], [False]]), np.array([0.9, 0.8]), 1)
    array([1.])
    """
    tp = np.asarray(tp, bool)
    if tp.ndim == 1:
        tp = tp[:, None]
    scores = np.asarray(scores, float)
    if n_gt == 0:
        return np.full(tp.shape[1], np.nan)
    if len(scores) == 0:
        return np.zeros(tp.shape[1])
    order = np.argsort(-scores, kind="mergesort")
    tps = np.cumsum(tp[order], axis=0)
    fps = np.cumsum(~tp[order], axis=0)
    recall = tps / n_gt
    precision = tps / np.maximum(tps + fps, 1)
    rec_points = np.linspace(0.0, 1.0, 101)
    out = np.zeros(tp.shape[1])
    for k in range(tp.shape[1]):
        # Precision envelope: the best precision at any recall at least this high.
        env = np.maximum.accumulate(precision[::-1, k])[::-1]
        idx = np.searchsorted(recall[:, k], rec_points, side="left")
        ok = idx < len(env)
        out[k] = np.where(ok, env[np.minimum(idx, len(env) - 1)], 0.0).mean()
    return out


# ---------------------------------------------------------------------------------------------
# distractors (slip traces, planar faults)


@dataclass(frozen=True)
class DistractorHits:
    """Predicted line skeleton pixels on distractors (``on``) of all of them (``total``).

    Add them up over frames before taking ``share``.
    """

    on: int
    total: int

    @property
    def share(self) -> float:
        """``on / total``; NaN without predicted line pixels."""
        return self.on / self.total if self.total else float("nan")

    def __add__(self, other: DistractorHits) -> DistractorHits:
        return DistractorHits(self.on + other.on, self.total + other.total)


def distractor_hits(
    line_masks: np.ndarray, distractors: np.ndarray, *, tol: float = 2.0
) -> DistractorHits:
    """Line skeleton pixels within ``tol`` px of a distractor pixel (slip-trace confusion).

    Every line instance is reduced to its Lee skeleton, as in ``line_f1_tol``, so a wide
    mask counts by its length, not its area; skeleton pixels shared by overlapping instances
    count once. A skeleton pixel is on a distractor if the Euclidean distance from its
    centre to the centre of the nearest distractor pixel is at most ``tol``.

    Parameters
    ----------
    line_masks : (N, H, W) bool or (H, W) bool
        Predicted dislocation lines.
    distractors : (H, W) bool
        Labelled pixels that are not dislocations (slip traces, planar faults).
    tol : float
        Distance (px); 2 px forgives a line drawn beside a trace by a labeller's stroke.

    Returns
    -------
    DistractorHits

    Examples
    --------
    >>> trace = np.zeros((20, 20), bool); trace[10, :] = True
    >>> line = np.zeros((20, 20), bool); line[11, 2:12] = True; line[:7, 15] = True
    >>> distractor_hits(line, trace)     # 10 px 1 px off the trace, 7 px 4-10 px from it
    DistractorHits(on=10, total=17)
    """
    d = np.asarray(distractors)
    if d.ndim != 2:
        raise ValueError(f"distractors must have shape (H, W), got {d.shape}")
    pred = _stack(line_masks, "line_masks", d.shape)
    if tol < 0:
        raise ValueError(f"tol must be >= 0 px, got {tol}")
    pts = _union_points(_skeleton_points(pred))
    if len(pts) == 0:
        return DistractorHits(0, 0)
    d = d.astype(bool, copy=False)
    if not d.any():
        return DistractorHits(0, len(pts))
    dist = ndi.distance_transform_edt(~d)
    return DistractorHits(int((dist[pts[:, 0], pts[:, 1]] <= tol + 1e-9).sum()), len(pts))
