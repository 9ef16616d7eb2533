"""One instance per dislocation: suppress line instances that retrace a better-scored line.

YOLOv8-seg decodes masks from prototypes at 1/4 of its input, so in a dense pile-up (lines
6-12 px apart) two boxes on one dislocation, or a box spanning two neighbours, both survive box
NMS (their boxes differ) and come out as overlapping line masks; the measured pile-up spacing
then collapses to a few pixels. Box or mask IoU cannot tell such a duplicate from a true
neighbour (both overlap little in area); the centre lines can: a duplicate's centre line runs
*on* the kept line, a neighbour's runs beside it. So, per frame, dislocation instances are taken
in order of score, and one whose centre line lies for at least ``cover`` of its length within
``tol`` px of the centre line of a kept instance is dropped. ``tol`` must stay below half of
the closest spacing the model should resolve (default 2 px: neighbours 5 px apart are kept).
Loops are left to NMS.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.morphology import skeletonize

__all__ = ["suppress_duplicate_lines"]


def _centre_line(mask: np.ndarray) -> np.ndarray:
    return skeletonize(mask) if mask.any() else mask


def suppress_duplicate_lines(det, *, tol: float = 2.0, cover: float = 0.5, cls: int = 0,
                             merge: bool = False, keep_rest: float = 40.0):  # fmt: skip
    """``det`` (``loopline.engines.base.Detections``) without the class-``cls`` instances that
    retrace a better-scored one.

    Parameters
    ----------
    tol : float
        Distance (px) from a kept centre line within which a centre-line pixel counts as on it.
    cover : float
        Share of an instance's centre line (in (0, 1]) that must lie on kept centre lines for
        it to be dropped.
    merge : bool
        Add a dropped instance's mask (and box) to the kept instance it retraces most, so the
        part of the line that only the duplicate covered is not lost.
    keep_rest : float
        An instance that retraces kept lines over ``cover`` of its centre line but runs
        ``keep_rest`` px or more beyond them (the network merged two lines into one mask) is
        not dropped: it keeps the part of its mask away from the kept lines (0 = drop it whole).
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0 px, got {tol}")
    if not 0.0 < cover <= 1.0:
        raise ValueError(f"cover must lie in (0, 1], got {cover}")
    idx = np.flatnonzero(det.classes == cls)
    if idx.size < 2:
        return det
    order = idx[np.argsort(-det.scores[idx], kind="stable")]
    h, w = det.shape
    r = int(np.ceil(tol))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    near = np.zeros((h, w), np.int32)  # 1 + index of the kept instance whose widened line is here
    drop = np.zeros(len(det), bool)
    masks, boxes = det.masks, det.boxes
    copied = merge
    if merge:
        masks, boxes = masks.copy(), boxes.copy()
    for i in order:
        # The mask decides, not the box: bound the work by the mask's own extent.
        xa, ya, bw, bh = cv2.boundingRect(np.ascontiguousarray(det.masks[i]).view(np.uint8))
        if bw == 0:
            continue
        yb, xb = ya + bh, xa + bw
        sk = _centre_line(det.masks[i, ya:yb, xa:xb])
        n = int(sk.sum())
        if n == 0:
            continue
        owners = near[ya:yb, xa:xb][sk]
        owners = owners[owners > 0]
        rest = None
        if owners.size >= cover * n and keep_rest > 0 and n - owners.size >= keep_rest:
            grown_near = cv2.dilate((near[ya:yb, xa:xb] > 0).astype(np.uint8), disk).astype(bool)
            rest = det.masks[i, ya:yb, xa:xb] & ~grown_near
            if not rest.any():
                rest = None
        if rest is not None:
            # A mask that runs on a kept line for part of its length and on its own line for
            # the rest (two lines merged by the network): keep the rest, drop the retrace.
            if not copied:
                masks, boxes, copied = masks.copy(), boxes.copy(), True
            masks[i] = False
            masks[i, ya:yb, xa:xb] = rest
            ry, rx = np.nonzero(rest)
            boxes[i] = (xa + rx.min(), ya + ry.min(), xa + rx.max() + 1, ya + ry.max() + 1)
            sk = sk & ~grown_near
        elif owners.size >= cover * n:
            drop[i] = True
            if merge:
                k = int(np.bincount(owners).argmax()) - 1
                masks[k] |= det.masks[i]
                boxes[k, :2] = np.minimum(boxes[k, :2], det.boxes[i, :2])
                boxes[k, 2:] = np.maximum(boxes[k, 2:], det.boxes[i, 2:])
            continue
        pad = np.zeros((yb - ya + 2 * r, xb - xa + 2 * r), np.uint8)
        pad[r:r + yb - ya, r:r + xb - xa] = sk
        grown = cv2.dilate(pad, disk).astype(np.int32) * (i + 1)
        # Paste the widened centre line back, clipped to the frame.
        gy0, gx0 = ya - r, xa - r
        sy0, sx0 = max(gy0, 0), max(gx0, 0)
        sy1, sx1 = min(gy0 + grown.shape[0], h), min(gx0 + grown.shape[1], w)
        np.maximum(near[sy0:sy1, sx0:sx1], grown[sy0 - gy0:sy1 - gy0, sx0 - gx0:sx1 - gx0],
                   out=near[sy0:sy1, sx0:sx1])  # fmt: skip
    if not drop.any() and not copied:
        return det
    keep = ~drop
    return type(det)(masks=masks[keep], boxes=boxes[keep], scores=det.scores[keep],
                      classes=det.classes[keep], timings_ms=dict(det.timings_ms))  # fmt: skip
