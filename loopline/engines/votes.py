"""Loop score voting (engine option ``loop_vote``): one loop per cluster of overlapping
candidate boxes, scored by the cluster's summed evidence.

The network's non-maximum suppression (IoU 0.7, ultralytics' default) leaves a compact loop
with several candidates whose boxes overlap by an IoU of 0.5-0.7: duplicates that are counted
as loops of their own, while a faint loop whose candidates each score under the threshold is
missed although the network fired on it several times. Voting groups a frame's loops greedily
by score: each loop takes every remaining loop whose box overlaps its own by an IoU above
:data:`VOTE_IOU`; the group becomes one loop with the best member's mask and box and the sum of
its members' scores, capped at 1 (members under :data:`VOTE_FLOOR` add nothing, so the sum does
not depend on how low an engine's score floor is). Dislocations are left as they are: lines of
a dense pile-up have overlapping boxes without being duplicates.

The engine runs the network at a score floor of :data:`VOTE_FLOOR` while voting is on and
applies its own threshold to the voted scores. The YOLO runtimes vote on each network call's
candidate boxes before their masks are decoded (``ops.postprocess``), so that the lower floor
costs no mask decoding: per tile of a tiled frame, whose seams are merged afterwards; other
engines vote on their decoded instances (:func:`vote_loops`).

Measured with the shipped model (ONNX Runtime, conf 0.25, AMD EPYC; the model card's "Loop
score voting"): validation sets, loop F1 without -> with: creme-loops-512 frames 1-8
0.618 -> 0.729, synthetic loops 0.890 -> 0.899, wild_loops 0.581 -> 0.609, 1024² frames of
600 small loops 0.873 -> 0.914.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .base import Detections

__all__ = ["VOTE_FLOOR", "VOTE_IOU", "vote_boxes", "vote_loops"]

#: Box IoU above which two loop candidates of one frame are one loop.
VOTE_IOU = 0.5

#: Candidates scoring less add nothing to a vote; the network's score floor while voting.
VOTE_FLOOR = 0.05


def vote_boxes(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
               conf: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The vote on candidates' boxes alone (module doc): indices of the instances kept, by
    decreasing score, and their scores (loops voted, other classes as they were); instances
    under ``conf`` dropped. Runs before masks are decoded (``loopline.engines.ops``).

    Parameters
    ----------
    boxes : (N, 4) float
        ``x0, y0, x1, y1``, any one scale.
    scores : (N,) float
    classes : (N,) int

    Examples
    --------
    >>> boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 5], [5, 5, 8, 8]], np.float32)
    >>> keep, s = vote_boxes(boxes, np.array([0.2, 0.15, 0.1]), np.array([1, 1, 1]), 0.25)
    >>> keep.tolist(), [round(float(x), 2) for x in s]
    ([0], [0.35])
    """
    scores = np.asarray(scores, np.float64)
    classes = np.asarray(classes).reshape(-1)
    loops = np.flatnonzero(classes == 1)
    voted = scores.copy()
    kept = classes != 1
    if len(loops):
        s_loops = scores[loops]
        b = np.asarray(boxes, np.float32)[loops]
        iou = ops.box_iou(b, b)
        free = np.ones(len(loops), bool)
        for i in np.argsort(-s_loops, kind="stable"):
            if not free[i]:
                continue
            group = np.flatnonzero(free & (iou[i] > VOTE_IOU))  # i itself among them
            free[group] = False
            s = s_loops[group]
            kept[loops[i]] = True
            if s_loops[i] >= VOTE_FLOOR:
                voted[loops[i]] = min(float(s[s >= VOTE_FLOOR].sum()), 1.0)
    idx = np.flatnonzero(kept & (voted >= conf))
    idx = idx[np.argsort(-voted[idx], kind="stable")]  # by decreasing score, as before
    return idx, voted[idx]


def vote_loops(det: Detections, conf: float) -> Detections:
    """One frame's instances with its loops voted (:func:`vote_boxes`), for engines whose
    masks come decoded (torch, plug-ins); the YOLO runtimes vote before decoding."""
    idx, s = vote_boxes(det.boxes, det.scores, det.classes, conf)
    return Detections(det.masks[idx], det.boxes[idx], s.astype(np.float32), det.classes[idx],
                      dict(det.timings_ms))  # fmt: skip
