"""Full-resolution line geometry: move each dislocation's centre line onto the valley it rides.

YOLOv8-seg decodes masks from prototypes at 1/4 (``mask_ratio=2``: 1/2) of its input, so in a
dense pile-up (lines 6-12 px apart) a mask lies across its line and its neighbours' and its
centre line can run between two dislocations; a second instance on the same dislocation then
does not retrace the first, and duplicate suppression cannot tell it from a neighbour. The
frame itself still resolves every line. So, per dislocation instance:

1. its centre line: the longest path through the mask's skeleton, resampled every ``step`` px;
2. grey profiles across it, ``search`` px either side, on the frame smoothed by ``blur`` px
   and averaged over ``along`` neighbouring profiles (noise falls, the line stays);
3. the offset of each profile's darkest point (brightest for a bright line: one whose mask is
   brighter than a ring around it and whose mean profile rises above its median further than
   it dips below), chosen for the whole line at once by dynamic
   programming with a cost ``smooth`` per px of offset change between neighbours and ``prior``
   per px away from the network's line, so the path follows one valley and does not jump;
4. the new mask: the moved line drawn at the instance's own mean width (mask area / length,
   2-8 px).

Duplicates now lie on the same valley and one duplicate-line suppression
(``loopline.engines.duplicates``, ``line_dedupe`` px) removes them; true neighbours stay on
their own valleys. Loops and instances below ``min_score`` are left as they are.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

from . import ops

__all__ = ["centre_path", "snap_lines"]

SMOOTH_HALF = 8  # skeleton pixels either side in the moving average of the centre line

_STEPS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def centre_path(mask: np.ndarray) -> np.ndarray:
    """The longest path through the skeleton of a line mask: (N, 2) float ``x, y`` px in
    order along the line (empty when the mask holds no pixel).

    Two breadth-first searches over the largest 8-connected piece of the skeleton: the pixel
    farthest from any start is one end, the pixel farthest from it the other; the path between
    them is kept (side branches, spurs and smaller pieces are dropped).
    """
    return _centre_path(mask)[0]


def _centre_path(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`centre_path` and the number of skeleton pixels it was chosen from."""
    from skimage.morphology import skeletonize

    x0, y0, bw, bh = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))
    if bw == 0:
        return np.zeros((0, 2)), 0
    sk = skeletonize(mask[y0 : y0 + bh, x0 : x0 + bw])
    ys, xs = np.nonzero(sk)
    ys, xs = ys + y0, xs + x0
    n = ys.size
    if n < 2:
        return np.stack([xs, ys], 1).astype(np.float64), n
    index = np.full((ys.max() + 1, xs.max() + 1), -1, np.int64)
    index[ys, xs] = np.arange(n)
    pad = np.pad(index, 1, constant_values=-1)
    rows, cols = [], []
    for dy, dx in _STEPS:
        nb = pad[ys + 1 + dy, xs + 1 + dx]
        ok = nb >= 0
        rows.append(np.flatnonzero(ok))
        cols.append(nb[ok])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(r.size), (r, c)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    path = _longest(graph, int(np.flatnonzero(comp == np.bincount(comp).argmax())[0]))
    return np.stack([xs[path], ys[path]], 1).astype(np.float64), n


def _longest(graph, start: int) -> np.ndarray:
    """Nodes of the longest shortest path in ``start``'s connected piece of ``graph``."""
    order, _ = breadth_first_order(graph, start, directed=False)
    order, pred = breadth_first_order(graph, order[-1], directed=False)
    node, path = order[-1], []
    while node >= 0:
        path.append(node)
        node = pred[node]
    return np.asarray(path)


def _smooth_extend(path: np.ndarray, mask: np.ndarray, half: int, trim: float) -> np.ndarray:
    """Moving average over ``2 * half + 1`` skeleton pixels, ``trim`` px cut from each end
    (where a skeleton bends into the corners of its mask), then each end carried along its
    tangent to the edge of the mask (a skeleton stops about half a width short of its line's
    end)."""
    if len(path) > 2 * half + 1:
        k = np.ones(2 * half + 1) / (2 * half + 1)
        path = np.stack([np.convolve(path[:, i], k, mode="valid") for i in (0, 1)], 1)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    if s[-1] > 4 * trim:
        path = path[(s >= trim) & (s <= s[-1] - trim)]
    if len(path) < 2:
        return path
    h, w = mask.shape
    ends = []
    for a, b in ((path[0], path[min(half + 1, len(path) - 1)]),
                 (path[-1], path[max(len(path) - half - 2, 0)])):  # fmt: skip
        d = a - b
        n = float(np.hypot(*d))
        e = a
        if n > 0:
            d = d / n
            for k in range(1, 80):  # 0.5 px steps, at most 40 px
                q = a + d * (0.5 * k)
                x, y = round(float(q[0])), round(float(q[1]))
                if not (0 <= x < w and 0 <= y < h) or not mask[y, x]:
                    break
                e = q
        ends.append(e)
    return np.vstack([ends[0], path, ends[1]])


def _resample(p: np.ndarray, step: float) -> np.ndarray:
    seg = np.hypot(*np.diff(p, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return p[:1]
    t = np.linspace(0.0, s[-1], max(int(np.ceil(s[-1] / step)) + 1, 2))
    return np.stack([np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])], 1)


def _dark(grey: np.ndarray, mask: np.ndarray, ring: np.ndarray) -> bool:
    """Whether a line mask is darker than the ring ``ring`` px around it (a mask lying between
    two lines of a pile-up still holds their dark pixels, so its centre alone cannot say)."""
    ys, xs = np.nonzero(mask)
    r = ring.shape[0] // 2
    y0, y1 = max(ys.min() - r, 0), min(ys.max() + r + 1, mask.shape[0])
    x0, x1 = max(xs.min() - r, 0), min(xs.max() + r + 1, mask.shape[1])
    m = mask[y0:y1, x0:x1]
    around = cv2.dilate(m.astype(np.uint8), ring).astype(bool) & ~m
    g = grey[y0:y1, x0:x1]
    return not around.any() or float(g[m].mean()) <= float(g[around].mean())


def _best_offsets(cost: np.ndarray, smooth: float) -> np.ndarray:
    """Index of the offset at each profile minimising sum(cost) + smooth * sum(|jumps|)."""
    n, k = cost.shape
    j = np.arange(k)
    trans = smooth * np.abs(j[:, None] - j[None, :])
    acc = cost[0].copy()
    back = np.zeros((n, k), np.int64)
    for i in range(1, n):
        tot = acc[:, None] + trans
        back[i] = tot.argmin(0)
        acc = tot[back[i], j] + cost[i]
    path = np.empty(n, np.int64)
    path[-1] = int(acc.argmin())
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path


def snap_lines(
    frame: np.ndarray,
    det,
    *,
    search: float = 4.0,
    step: float = 2.0,
    offset_step: float = 0.5,
    blur: float = 1.0,
    along: int = 5,
    smooth: float = 1.0,
    prior: float = 0.02,
    min_score: float = 0.25,
    min_path_share: float = 0.85,
    cls: int = 0,
):
    """``det`` (``loopline.engines.base.Detections`` of ``frame``) with the masks of its
    class-``cls`` instances scoring ``min_score`` or more redrawn on the valleys of the frame.

    Parameters
    ----------
    frame : (H, W) uint8 or uint16
        The frame the detections were made on.
    search : float
        How far (px) either side of the network's centre line the line may move.
    step, offset_step : float
        Spacing (px) of the profiles along the line and of the samples across it.
    blur : float
        Gaussian smoothing (px) of the frame before sampling.
    along : int
        Profiles averaged along the line (odd; 1 = none).
    smooth : float
        Cost per sample of offset change between neighbouring profiles (profiles are
        normalised to [0, 1]).
    prior : float
        Cost per px of distance from the network's centre line.
    min_path_share : float
        An instance is moved only if its centre line holds this share of its skeleton pixels:
        a mask whose skeleton branches or breaks (two lines crossing, a line in pieces) is one
        line only in part, and is left as it is.
    """
    if not search > 0:
        raise ValueError(f"search must be > 0 px, got {search}")
    if along < 1:
        raise ValueError(f"along must be >= 1, got {along}")
    idx = np.flatnonzero((det.classes == cls) & (det.scores >= min_score))
    if idx.size == 0:
        return det
    h, w = det.shape
    grey = cv2.GaussianBlur(ops.to_uint8(frame).astype(np.float32), (0, 0), blur)
    offs = np.arange(-search, search + 1e-9, offset_step)
    masks = boxes = None  # copied at the first instance moved: most frames move few or none
    ring = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))
    pad = int(np.ceil(search)) + 12  # room for the move, the redrawn width and the ring
    for i in idx:
        # Work in the instance's box (plus a margin): full-frame arrays cost more than the rest.
        bx0, by0, bx1, by1 = det.boxes[i]
        x0, y0 = max(int(np.floor(bx0)) - pad, 0), max(int(np.floor(by0)) - pad, 0)
        x1, y1 = min(int(np.ceil(bx1)) + pad, w), min(int(np.ceil(by1)) + pad, h)
        sub = det.masks[i, y0:y1, x0:x1]
        path, n_skel = _centre_path(sub)
        if len(path) < 3 or len(path) < min_path_share * n_skel:
            continue  # branched or broken: two lines crossing, or pieces; left as it is
        skel_len = float(np.hypot(*np.diff(path, axis=0).T).sum())
        width_px = sub.sum() / max(skel_len, 1.0)
        p = _resample(_smooth_extend(path, sub, SMOOTH_HALF, 3.0), step) + np.array([x0, y0])
        if len(p) < 3:
            continue
        t = np.gradient(p, axis=0)
        t /= np.linalg.norm(t, axis=1, keepdims=True) + 1e-9
        normal = np.stack([-t[:, 1], t[:, 0]], 1)
        q = p[:, None, :] + offs[None, :, None] * normal[:, None, :]
        prof = ndi.map_coordinates(grey, [q[..., 1].ravel(), q[..., 0].ravel()], order=1,
                                   mode="nearest").reshape(q.shape[:2])  # fmt: skip
        prof = ndi.uniform_filter1d(prof, along, axis=0, mode="nearest")
        mean = prof.mean(0)
        med = float(np.median(mean))
        bright = mean.max() - med > med - mean.min() and not _dark(grey[y0:y1, x0:x1], sub, ring)
        cost = -prof if bright else prof  # a dark line sits at the minimum
        lo = cost.min(1, keepdims=True)
        cost = (cost - lo) / (cost.max(1, keepdims=True) - lo + 1e-6)
        cost += prior * np.abs(offs)[None, :]
        moved = p + offs[_best_offsets(cost, smooth)][:, None] * normal
        width = int(np.clip(round(width_px), 2, 8))
        canvas = np.zeros(sub.shape, np.uint8)
        pts = np.round((moved - (x0, y0)) * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], False, 1, width, cv2.LINE_8, 4)
        ys, xs = np.nonzero(canvas)
        if ys.size == 0:
            continue
        if masks is None:
            masks, boxes = det.masks.copy(), det.boxes.copy()
        masks[i] = False
        masks[i, y0:y1, x0:x1] = canvas.astype(bool)
        boxes[i] = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
    if masks is None:
        return det
    return type(det)(masks=masks, boxes=boxes, scores=det.scores, classes=det.classes,
                     timings_ms=dict(det.timings_ms))  # fmt: skip
