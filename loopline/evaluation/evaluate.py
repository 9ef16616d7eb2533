"""Run an engine over a labelled dataset and pool every metric of ``loopline eval``.

Two operating points: box and mask mAP use every detection the engine returns, ranked by
score (make the engine's ``conf`` low, as ultralytics' validator does with 0.001); the other
metrics (LAR, tolerance metrics, loop F1 and relative errors, spacing) use the detections
with a score of at least ``conf``, the threshold the daemon runs at.

Pooling over frames: mAP from the detections of all frames (COCO), LAR as the mean over all
ground-truth lines, F1 from summed counts, relative errors from summed or averaged quantities.

Two measures of what a model should not do or misses, where the data allows:

- ``slip_trace_confusion`` (datasets with ``distractors/`` masks, e.g. tanaka's ``st/`` planar
  faults and slip traces): of the skeleton pixels of the predicted dislocation lines, the
  share within 2 px of a distractor pixel, pooled over the frames that have a distractor mask.
  Skeletons, not masks, so that a line counts by its length whatever its predicted width.
  ``details["slip_trace_confusion_labels"]`` is the same share for the labelled lines: lines
  that cross a trace touch it, so a perfect model scores this floor, not 0.
- ``loop_recall_by_size``: recall of ground-truth loops (matched as for loop F1: box IoU >=
  0.15, greedy) per bin of equivalent diameter ``2 sqrt(area / pi)`` px: < 8, 8-14, 14-24,
  24-40, >= 40 (``metrics.LOOP_SIZE_EDGES``); ``loops_by_size`` holds how many loops each bin
  has (a bin without loops has recall None).

Box F1 (``box_f1_dislocation``, ``box_f1_loop``): detections at ``conf`` matched to the
labelled boxes of their class at box IoU >= 0.5 (greedy, as loop F1), counts summed over
frames.

A dataset with box-only labels (``Dataset.box_only`` > 0: rectangles and boxes from the
importers of box formats) has no outlines to measure masks, skeletons or diameters on. It is
scored by box metrics only (box mAP, box F1, loop F1, N_re, lines per frame); the mask
metrics, LAR, the tolerance metrics, D_re, F_re, spacing, slip-trace confusion and the loop
recall by size are None, ``box_only_labels`` says how many labels are boxes, and the table
and JSON carry ``BOX_ONLY_NOTE``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.layout import CLASSES
from ..engines.base import Detections, above_threshold
from ..models import mask_thresholds, score_thresholds
from . import metrics as M
from .data import Dataset, Frame

logger = logging.getLogger(__name__)

__all__ = [
    "BOX_ONLY_NOTE",
    "METRIC_KEYS",
    "SIZE_KEYS",
    "EvalResult",
    "FramePanel",
    "evaluate",
    "make_engine",
    "operating_conf",
]

#: Keys of the JSON report, in order; a value is None where the metric does not apply.
METRIC_KEYS: tuple[str, ...] = (
    "box_map50", "box_f1_dislocation", "box_f1_loop", "mask_map50", "mask_map50_95", "lar",
    "lar_tol", "line_f1_tol", "loop_f1", "n_re", "d_re", "f_re", "spacing_re", "spacing_px",
    "spacing_gt_px", "lines_per_frame", "lines_per_frame_gt", "slip_trace_confusion",
    "loop_recall_by_size", "loops_by_size", "box_only_labels", "images",
)  # fmt: skip

#: Said by the table and the JSON of a dataset with box-only labels.
BOX_ONLY_NOTE = "box-only labels: mask metrics, LAR and line F1 not computed"

#: Box IoU at which a detection matches a label for box F1.
BOX_F1_IOU = 0.5

#: Keys of METRIC_KEYS whose value is a dict over ``metrics.size_bin_names()``.
SIZE_KEYS: tuple[str, ...] = ("loop_recall_by_size", "loops_by_size")

N_CLASSES = 2


@dataclass
class FramePanel:
    """What the figure shows of one frame: the image and class maps of truth and prediction."""

    stem: str
    score: float
    image: np.ndarray
    gt: np.ndarray  # (H, W) int8: -1 background, else class
    pred: np.ndarray  # (H, W) int8


@dataclass
class EvalResult:
    """Pooled metrics (``metrics``: the JSON keys), details for the table, figure panels."""

    metrics: dict[str, float | int | None]
    details: dict[str, Any]
    frame_scores: list[tuple[str, float]]
    best: FramePanel | None = None
    worst: FramePanel | None = None


@dataclass
class _Pool:
    """Running sums over frames."""

    ap_scores: list[list[np.ndarray]] = field(default_factory=lambda: [[] for _ in range(2)])
    ap_box: list[list[np.ndarray]] = field(default_factory=lambda: [[] for _ in range(2)])
    ap_mask: list[list[np.ndarray]] = field(default_factory=lambda: [[] for _ in range(2)])
    n_gt: list[int] = field(default_factory=lambda: [0, 0])
    box_f1: list[M.F1Counts] = field(default_factory=lambda: [M.F1Counts(0, 0, 0)] * 2)
    lar: list[np.ndarray] = field(default_factory=list)
    lar_tol: list[np.ndarray] = field(default_factory=list)
    line_f1: list[M.LineF1] = field(default_factory=list)
    loop: M.F1Counts = field(default_factory=lambda: M.F1Counts(0, 0, 0))
    loop_n_gt: int = 0
    loop_n_pred: int = 0
    d_gt: list[np.ndarray] = field(default_factory=list)
    d_pred: list[np.ndarray] = field(default_factory=list)
    fg_gt: int = 0
    fg_pred: int = 0
    spacing: list[tuple[float, float]] = field(default_factory=list)
    spacing_groups: int = 0
    lines_pred: int = 0
    loop_found: np.ndarray = field(default_factory=lambda: _size_zeros())
    loop_total: np.ndarray = field(default_factory=lambda: _size_zeros())
    st_pred: M.DistractorHits = field(default_factory=lambda: M.DistractorHits(0, 0))
    st_gt: M.DistractorHits = field(default_factory=lambda: M.DistractorHits(0, 0))
    st_frames: int = 0
    infer_s: float = 0.0


def _size_zeros() -> np.ndarray:
    return np.zeros(len(M.LOOP_SIZE_EDGES) + 1, np.int64)


def _class_map(masks: np.ndarray, classes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.full(shape, -1, np.int8)
    for c in (1, 0):  # lines drawn over loops
        sel = classes == c
        if sel.any():
            out[masks[sel].any(axis=0)] = c
    return out


def _check(det: Detections, fr: Frame) -> Detections:
    if not isinstance(det, Detections):
        raise TypeError(f"the engine must return Detections, got {type(det).__name__}")
    if det.shape != fr.shape:
        raise ValueError(
            f"{fr.stem}: the engine returned masks of shape {det.shape}, expected the frame's "
            f"shape {fr.shape} (H, W)"
        )
    return det


def _ap_update(pool: _Pool, fr: Frame, det: Detections, *, masks: bool = True) -> None:
    biou = M.box_iou(fr.boxes, det.boxes)
    miou = M.mask_iou(fr.masks, det.masks) if masks else None
    for c in range(N_CLASSES):
        g = fr.classes == c
        d = det.classes == c
        pool.n_gt[c] += int(g.sum())
        if not d.any():
            continue
        s = det.scores[d].astype(float)
        pool.ap_scores[c].append(s)
        pool.ap_box[c].append(M.match_detections(biou[np.ix_(g, d)], s))
        if miou is not None:
            pool.ap_mask[c].append(M.match_detections(miou[np.ix_(g, d)], s))


def _box_f1_update(pool: _Pool, fr: Frame, det: Detections, keep: np.ndarray) -> list[float]:
    """Add box F1 counts per class; return the frame's F1 of each class it has or predicts."""
    out = []
    for c in range(N_CLASSES):
        g, d = fr.classes == c, keep & (det.classes == c)
        counts = M.loop_f1(fr.boxes[g], det.boxes[d], BOX_F1_IOU)
        pool.box_f1[c] = pool.box_f1[c] + counts
        if g.any() or d.any():
            out.append(counts.f1)
    return out


def gt_polylines(fr: Frame, idx: np.ndarray) -> list[np.ndarray]:
    """The centre lines of the true instances ``idx`` of ``fr``: the stored lines, else the
    skeletons of their strokes (or masks)."""
    out = []
    for k in idx:
        ln = fr.lines[k] if fr.lines is not None else None
        if ln is None:
            src = fr.strokes[k] if fr.strokes is not None else fr.masks[k]
            ln = M.skeleton_polyline(src)
        out.append(ln)
    return out


def _spacing_update(pool: _Pool, fr: Frame, idx: np.ndarray, pred0: np.ndarray) -> None:
    """Pile-up spacing of truth and prediction, per pile-up with at least two lines."""
    if len(idx) < 2:
        return
    gt_lines = gt_polylines(fr, idx)
    groups = fr.pileups[idx] if fr.pileups is not None else np.full(len(idx), -1)
    pred_lines = [M.skeleton_polyline(m) for m in pred0]
    pred_lines = [p for p in pred_lines if len(p) >= 2]
    s_gt = {}
    for g in np.unique(groups):
        members = [gt_lines[k] for k in np.flatnonzero(groups == g)]
        if len(members) >= 2:
            s_gt[int(g)] = M.pileup_spacing(members)
    if not s_gt:
        return
    assigned: dict[int, list[np.ndarray]] = {g: [] for g in s_gt}
    dist = M.line_distances(pred_lines, gt_lines)
    for p, d in zip(pred_lines, dist, strict=True):
        k = int(np.argmin(d))
        g = int(groups[k])
        # A predicted line belongs to the pile-up of its nearest true line if it lies closer
        # to it than the pile-up's own spacing (extra lines inside the pile-up count).
        if g in s_gt and d[k] < s_gt[g]:
            assigned[g].append(p)
    for g, s in s_gt.items():
        pool.spacing_groups += 1
        sp = M.pileup_spacing(assigned[g])
        if not math.isnan(sp) and not math.isnan(s):
            pool.spacing.append((s, sp))


def _frame_update(
    pool: _Pool,
    fr: Frame,
    det: Detections,
    *,
    conf: np.ndarray,
    tol: float,
    lar_iou: float,
    loop_iou: float,
    distractor_tol: float,
    box_only: bool = False,
) -> float:
    """Add one frame to the pool; return its score for the best/worst figure (NaN if none).

    ``box_only``: the dataset has box-only labels; only box metrics are measured and the
    frame's score is the mean of its box F1 per class.
    """
    _ap_update(pool, fr, det, masks=not box_only)
    keep = above_threshold(det, conf)
    box_parts = _box_f1_update(pool, fr, det, keep)
    if box_only:
        _box_only_update(pool, fr, det, keep, loop_iou)
        parts = [p for p in box_parts if not math.isnan(p)]
        return float(np.mean(parts)) if parts else float("nan")
    parts = []

    idx0 = np.flatnonzero(fr.classes == 0)
    pred0 = det.masks[keep & (det.classes == 0)]
    gt0 = fr.masks[idx0]
    strokes0 = fr.strokes[idx0] if fr.strokes is not None else gt0
    if len(idx0):
        r = M.lar(gt0, pred0, lar_iou)
        pool.lar.append(r.scores)
        rt = M.lar_tol(strokes0, pred0, tol=tol)
        pool.lar_tol.append(rt.scores)
        parts.append(rt.value if fr.strokes is not None else r.value)
        _spacing_update(pool, fr, idx0, pred0)
    pool.line_f1.append(M.line_f1_tol(strokes0, pred0, tol=tol))
    pool.lines_pred += len(pred0)
    if fr.distractors is not None:
        pool.st_frames += 1
        pool.st_pred = pool.st_pred + M.distractor_hits(pred0, fr.distractors,
                                                        tol=distractor_tol)  # fmt: skip
        pool.st_gt = pool.st_gt + M.distractor_hits(strokes0, fr.distractors,
                                                    tol=distractor_tol)  # fmt: skip

    sel1 = fr.classes == 1
    p1 = keep & (det.classes == 1)
    counts = M.loop_f1(fr.boxes[sel1], det.boxes[p1], loop_iou)
    found = np.zeros(int(sel1.sum()), bool)
    pairs = M.greedy_match(M.box_iou(fr.boxes[sel1], det.boxes[p1]), loop_iou)
    found[[g for g, _ in pairs]] = True
    hit, total = M.recall_by_size(M.equivalent_diameters(fr.masks[sel1]), found)
    pool.loop_found += hit
    pool.loop_total += total
    pool.loop = pool.loop + counts
    pool.loop_n_gt += int(sel1.sum())
    pool.loop_n_pred += int(p1.sum())
    if sel1.any():
        pool.d_gt.append(M.ellipse_diameters(fr.masks[sel1]))
        pool.fg_gt += int(np.count_nonzero(fr.masks[sel1].any(axis=0)))
    if p1.any():
        pool.d_pred.append(M.ellipse_diameters(det.masks[p1]))
        pool.fg_pred += int(np.count_nonzero(det.masks[p1].any(axis=0)))
    if sel1.any() or p1.any():
        parts.append(counts.f1)
    parts = [p for p in parts if not math.isnan(p)]
    return float(np.mean(parts)) if parts else float("nan")


def _box_only_update(
    pool: _Pool, fr: Frame, det: Detections, keep: np.ndarray, loop_iou: float
) -> None:
    """What a frame of box-only labels adds besides mAP and box F1: counts and loop F1."""
    pool.lines_pred += int((keep & (det.classes == 0)).sum())
    sel1, p1 = fr.classes == 1, keep & (det.classes == 1)
    pool.loop = pool.loop + M.loop_f1(fr.boxes[sel1], det.boxes[p1], loop_iou)
    pool.loop_n_gt += int(sel1.sum())
    pool.loop_n_pred += int(p1.sum())


def _nan_none(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return float(x)


def _mean(arrays: list[np.ndarray]) -> float:
    a = np.concatenate(arrays) if arrays else np.zeros(0)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def _summarise(
    pool: _Pool, images: int, box_only: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    shapes = not box_only  # outlines to measure masks, skeletons and diameters on
    ap_box, ap_mask = [], []
    per_class = {}
    for c in range(N_CLASSES):
        if pool.n_gt[c] == 0:
            continue
        s = np.concatenate(pool.ap_scores[c]) if pool.ap_scores[c] else np.zeros(0)
        nt = len(M.COCO_IOU_THRESHOLDS)
        tb = np.concatenate(pool.ap_box[c]) if pool.ap_box[c] else np.zeros((0, nt), bool)
        tm = np.concatenate(pool.ap_mask[c]) if pool.ap_mask[c] else np.zeros((0, nt), bool)
        b = M.average_precision(tb, s, pool.n_gt[c])
        ap_box.append(b)
        per_class[c] = {"box_ap50": b[0], "box_ap50_95": b.mean(), "mask_ap50": None,
                        "mask_ap50_95": None, "instances": pool.n_gt[c]}  # fmt: skip
        if shapes:
            m = M.average_precision(tm, s, pool.n_gt[c])
            ap_mask.append(m)
            per_class[c].update(mask_ap50=m[0], mask_ap50_95=m.mean())
    has_lines = pool.n_gt[0] > 0
    has_loops = pool.loop_n_gt > 0
    lf = M.LineF1.pool(pool.line_f1)
    d_gt, d_pred = _mean(pool.d_gt), _mean(pool.d_pred)
    s_gt = sum(s for s, _ in pool.spacing)
    s_pred = sum(s for _, s in pool.spacing)
    n_sp = len(pool.spacing)
    bins = M.size_bin_names()
    size_recall = {b: (int(f) / int(t) if t else None)
                   for b, f, t in zip(bins, pool.loop_found, pool.loop_total, strict=True)}
    size_total = {b: int(t) for b, t in zip(bins, pool.loop_total, strict=True)}
    has_st = pool.st_frames > 0
    metrics = {
        "box_map50": float(np.mean([b[0] for b in ap_box])) if ap_box else None,
        "box_f1_dislocation": pool.box_f1[0].f1 if has_lines else None,
        "box_f1_loop": pool.box_f1[1].f1 if has_loops else None,
        "mask_map50": float(np.mean([m[0] for m in ap_mask])) if ap_mask else None,
        "mask_map50_95": float(np.mean([m.mean() for m in ap_mask])) if ap_mask else None,
        "lar": _mean(pool.lar) if has_lines and shapes else None,
        "lar_tol": _mean(pool.lar_tol) if has_lines and shapes else None,
        "line_f1_tol": lf.f1 if has_lines and shapes else None,
        "loop_f1": pool.loop.f1 if has_loops else None,
        "n_re": M.relative_error(pool.loop_n_pred, pool.loop_n_gt) if has_loops else None,
        "d_re": M.relative_error(d_pred, d_gt) if has_loops and shapes else None,
        "f_re": M.relative_error(pool.fg_pred, pool.fg_gt) if has_loops and shapes else None,
        "spacing_re": M.relative_error(s_pred, s_gt) if pool.spacing else None,
        "spacing_px": s_pred / n_sp if n_sp else None,
        "spacing_gt_px": s_gt / n_sp if n_sp else None,
        "lines_per_frame": pool.lines_pred / images if images else None,
        "lines_per_frame_gt": pool.n_gt[0] / images if images else None,
        "slip_trace_confusion": pool.st_pred.share if has_st else None,
        "loop_recall_by_size": size_recall if has_loops and shapes else None,
        "loops_by_size": size_total if has_loops and shapes else None,
        "box_only_labels": box_only,
        "images": images,
    }
    metrics = {k: (v if k in ("images", "box_only_labels") or k in SIZE_KEYS else _nan_none(v))
               for k, v in metrics.items()}  # fmt: skip
    details = {
        "box_map50_95": float(np.mean([b.mean() for b in ap_box])) if ap_box else None,
        "per_class": per_class,
        "line_precision_tol": _nan_none(lf.precision) if has_lines else None,
        "line_recall_tol": _nan_none(lf.recall) if has_lines else None,
        "lines": pool.n_gt[0],
        "loop_precision": _nan_none(pool.loop.precision) if has_loops else None,
        "loop_recall": _nan_none(pool.loop.recall) if has_loops else None,
        "loops_gt": pool.loop_n_gt,
        "loops_pred": pool.loop_n_pred,
        "loop_diameter_gt_px": _nan_none(d_gt),
        "loop_diameter_pred_px": _nan_none(d_pred),
        "spacing_pileups": f"{len(pool.spacing)} of {pool.spacing_groups}",
        "spacing_abs_re": _nan_none(
            float(np.mean([abs(p - g) / g for g, p in pool.spacing])) if pool.spacing else None
        ),
        "inference_ms_per_frame": 1000.0 * pool.infer_s / max(images, 1),
        "lines_pred": pool.lines_pred,
        "loops_found_by_size": (
            {b: int(f) for b, f in zip(bins, pool.loop_found, strict=True)}
            if has_loops and shapes
            else None
        ),
        "box_f1": {
            CLASSES[c]: {
                "precision": _nan_none(f.precision),
                "recall": _nan_none(f.recall),
                "labelled": f.tp + f.fn,
            }
            for c, f in enumerate(pool.box_f1)
        },
        "box_only_note": BOX_ONLY_NOTE if box_only else None,
        "slip_trace_frames": pool.st_frames,
        "slip_trace_pixels": pool.st_pred.total,
        "slip_trace_confusion_labels": _nan_none(pool.st_gt.share) if has_st else None,
    }
    return metrics, details


def operating_conf(model: str | Path, conf: float | Sequence[float] | None = None
                   ) -> tuple[float, ...]:  # fmt: skip
    """The score threshold(s) ``loopline eval`` scores ``model`` at: ``conf`` where given, else
    the model's own operating point (the shipped model: 0.15 for dislocations, 0.25 for
    loops), else 0.25 (other models, and models made by ``loopline adapt``, which do not
    inherit their source's).

    >>> operating_conf("defects"), operating_conf("ridge"), operating_conf("defects", 0.3)
    ((0.15, 0.25), (0.25,), (0.3,))
    """
    from ..models import shipped_settings

    if conf is None:
        try:
            conf = shipped_settings(model).get("conf", 0.25)
        except (OSError, ValueError):  # not a model file: no operating point of its own
            conf = 0.25
    return tuple(float(c) for c in score_thresholds(conf))


def make_engine(
    model: str | Path,
    *,
    conf: float | Sequence[float] | None = None,
    map_conf: float = 0.001,
    imgsz: int | None = None,
    device: str | None = None,
    mask_threshold: float | Sequence[float] | None = None,
    inference: str | None = None,
    tile_overlap: int | None = None,
    line_dedupe: float | None = None,
    tile_max: int | None = None,
    line_snap: float | None = None,
    loop_vote: bool | None = None,
):
    """The engine ``loopline eval`` runs for ``model`` (a file, a shipped name or ``ridge``).

    The engine's own score floor is the lower of ``conf`` and ``map_conf``: mAP ranks every
    detection down to ``map_conf``, the other metrics keep those at ``conf`` or more (one for
    every class or one per class; None: the model's own, :func:`operating_conf`).
    ``mask_threshold``: one cut for every class or one per class (dislocation, loop); None
    keeps a shipped model's operating point (0.5 for other models).
    ``inference`` (``"tiles"``, ``"native"`` or ``"letterbox"``) and ``tile_overlap`` (px): how
    frames are fed to the network; None: the engine's default (tiles, 64 px).
    ``line_dedupe`` (px): duplicate-line suppression (``loopline.engines.duplicates``); None:
    the shipped model's operating point, off for other models.
    ``line_snap`` (px): how far a dislocation's centre line may move onto its valley in the
    full-resolution frame (``loopline.engines.snap``); None: as ``line_dedupe``.
    ``loop_vote``: loop score voting (``loopline.engines.votes``); None: the shipped model's
    operating point, off for other models.
    ``tile_max`` (px): the largest tile side where the runtime takes any input size; None:
    the engine's default (1.25 ``imgsz``).

    Raises
    ------
    ValueError
        ``mask_threshold`` not in (0, 1) or not one per class, or what
        ``loopline.engines.create_engine`` raises (with FileNotFoundError, ImportError,
        KeyError, TypeError).
    """
    from ..engines import create_engine

    opts: dict[str, Any] = {"conf": min(map_conf, *operating_conf(model, conf))}
    if imgsz is not None:
        opts["imgsz"] = imgsz
    if device is not None:
        opts["device"] = device
    if mask_threshold is not None:
        opts["mask_threshold"] = tuple(mask_thresholds(mask_threshold, 2))
    if inference is not None:
        opts["inference"] = inference
    if line_dedupe is not None:
        opts["line_dedupe"] = line_dedupe
    if line_snap is not None:
        opts["line_snap"] = line_snap
    if loop_vote is not None:
        opts["loop_vote"] = loop_vote
    if tile_overlap is not None:
        if tile_overlap < 0:
            raise ValueError(f"--tile-overlap must be >= 0, got {tile_overlap}")
        opts["tile_overlap"] = tile_overlap
    if tile_max is not None:
        opts["tile_max"] = tile_max
    return create_engine(model, **opts)


def evaluate(
    engine: Callable[[list[np.ndarray]], Sequence[Detections]],
    data: Path | str | Dataset,
    *,
    conf: float | Sequence[float] = 0.25,
    tol: float = 3.0,
    lar_iou: float = 0.5,
    loop_iou: float = 0.15,
    distractor_tol: float = 2.0,
    batch: int = 8,
    progress: bool = False,
) -> EvalResult:
    """Run ``engine`` over every frame of ``data`` and pool the metrics.

    Parameters
    ----------
    engine : callable
        ``engine(frames) -> list[Detections]`` for a list of (H, W) grey frames, e.g. a
        ``loopline.engines.base.Engine``.
    data : Path or Dataset
        Dataset folder (``images/``, ``labels/``, optionally ``masks/``, ``truth.json``).
    conf : float or (float, float)
        Score threshold of the operating point (all metrics but mAP): one for every class or
        one per class (dislocation, loop); :func:`operating_conf` gives a model's own.
    tol : float
        Tolerance (px) of ``lar_tol`` and ``line_f1_tol``.
    lar_iou, loop_iou : float
        IoU threshold of LAR (0.5) and box-IoU cut-off of loop F1 (0.15).
    distractor_tol : float
        Distance (px) within which a predicted line pixel counts as on a distractor
        (``slip_trace_confusion``).
    batch : int
        Frames per engine call.
    progress : bool
        Show a progress bar.

    Returns
    -------
    EvalResult
    """
    ds = data if isinstance(data, Dataset) else Dataset(data)
    conf = score_thresholds(conf)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if distractor_tol < 0:
        raise ValueError(f"distractor_tol must be >= 0 px, got {distractor_tol}")
    if ds.box_only:
        logger.debug("%s: %d box-only labels; %s", ds.root, ds.box_only, BOX_ONLY_NOTE)
    pool = _Pool()
    scores: list[tuple[str, float]] = []
    best: FramePanel | None = None
    worst: FramePanel | None = None
    bar, task = _progress(progress, len(ds))
    try:
        for start in range(0, len(ds), batch):
            frames = [ds.frame(i) for i in range(start, min(start + batch, len(ds)))]
            t0 = time.perf_counter()
            dets = list(engine([f.image for f in frames]))
            pool.infer_s += time.perf_counter() - t0
            if len(dets) != len(frames):
                raise ValueError(
                    f"the engine returned {len(dets)} results for {len(frames)} frames"
                )
            for fr, det in zip(frames, dets, strict=True):
                det = _check(det, fr)
                s = _frame_update(pool, fr, det, conf=conf, tol=tol, lar_iou=lar_iou,
                                  loop_iou=loop_iou, distractor_tol=distractor_tol,
                                  box_only=ds.box_only > 0)  # fmt: skip
                scores.append((fr.stem, s))
                logger.debug("%s: frame score %.3f, %d detections", fr.stem, s, len(det))
                if _better(s, best, 1.0):
                    best = _panel(fr, det, s, conf)
                if _better(s, worst, -1.0):
                    worst = _panel(fr, det, s, conf)
            if bar is not None:
                bar.advance(task, len(frames))
    finally:
        if bar is not None:
            bar.stop()
    metrics, details = _summarise(pool, len(ds), ds.box_only)
    return EvalResult(metrics=metrics, details=details, frame_scores=scores, best=best,
                      worst=worst)  # fmt: skip


def _better(score: float, panel: FramePanel | None, sign: float) -> bool:
    """Whether a frame of ``score`` replaces ``panel`` (sign 1: higher wins; -1: lower)."""
    if panel is None:
        return True
    if math.isnan(score):
        return False
    return math.isnan(panel.score) or sign * score > sign * panel.score


def _panel(fr: Frame, det: Detections, score: float, conf: np.ndarray) -> FramePanel:
    keep = above_threshold(det, conf)
    gt_masks = fr.masks if fr.strokes is None else np.where(
        (fr.classes == 0)[:, None, None], fr.strokes, fr.masks)  # fmt: skip
    return FramePanel(
        stem=fr.stem, score=score, image=fr.image,
        gt=_class_map(gt_masks, fr.classes, fr.shape),
        pred=_class_map(det.masks[keep], det.classes[keep], fr.shape),
    )  # fmt: skip


def _progress(show: bool, total: int):
    if not show:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    cols = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), TimeRemainingColumn())
    bar = Progress(*cols, BarColumn(bar_width=None), transient=True)
    bar.start()
    return bar, bar.add_task("eval", total=total)


# ---------------------------------------------------------------------------------------------
# figure

_COLOURS = {0: (1.0, 0.75, 0.0), 1: (0.0, 0.8, 1.0)}  # dislocation amber, loop cyan


def _overlay(image: np.ndarray, cmap: np.ndarray) -> np.ndarray:
    g = image.astype(np.float32)
    lo, hi = np.percentile(g, (0.5, 99.5))
    g = np.clip((g - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = np.repeat(g[..., None], 3, axis=2)
    for c, col in _COLOURS.items():
        sel = cmap == c
        rgb[sel] = 0.35 * rgb[sel] + 0.65 * np.array(col)
    return rgb


def save_figure(result: EvalResult, path: Path | str, *, title: str = "") -> Path | None:
    """PNG of truth beside prediction for the worst and best frames; None without frames."""
    panels = [(n, p) for n, p in (("worst", result.worst), ("best", result.best)) if p is not None]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(panels) == 2 and panels[0][1].stem == panels[1][1].stem:
        panels = panels[1:]
    fig, axes = plt.subplots(len(panels), 2, figsize=(9, 4.6 * len(panels)), squeeze=False)
    for row, (name, p) in zip(axes, panels, strict=True):
        score = "n/a" if math.isnan(p.score) else f"{p.score:.3f}"
        row[0].imshow(_overlay(p.image, p.gt))
        row[0].set_title(f"{name}: {p.stem} - truth", fontsize=9)
        row[1].imshow(_overlay(p.image, p.pred))
        row[1].set_title(f"prediction (frame score {score})", fontsize=9)
        for ax in row:
            ax.set_axis_off()
    if title:
        fig.suptitle(title + "   (amber: dislocations, cyan: loops)", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
