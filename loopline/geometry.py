"""Mask and polyline geometry shared by every stage: Lee skeletons and their longest path.

Kept below all stages (it needs only numpy, scipy and scikit-image) so that the generator's
importers, the engines and the evaluation use one definition of a line mask's centre line.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

__all__ = ["skeleton", "skeleton_polyline"]


def _skeleton_crop(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Lee skeleton of the mask's bounding box (plus a 1 px margin) and the box's origin."""
    from skimage.morphology import skeletonize

    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {m.shape}")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 0), bool), 0, 0
    # The skeleton is local to the object: cropping makes it independent of the frame size.
    y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, m.shape[0])
    x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, m.shape[1])
    return skeletonize(m[y0:y1, x0:x1], method="lee") > 0, int(y0), int(x0)


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Lee skeleton of one (H, W) mask (``skimage.morphology.skeletonize(method="lee")``)."""
    sk, y0, x0 = _skeleton_crop(mask)
    out = np.zeros(np.shape(mask), bool)
    out[y0 : y0 + sk.shape[0], x0 : x0 + sk.shape[1]] = sk
    return out


def skeleton_polyline(mask: np.ndarray) -> np.ndarray:
    """The longest path through a mask's Lee skeleton, as an ordered polyline.

    Parameters
    ----------
    mask : (H, W) bool

    Returns
    -------
    (K, 2) float64
        Points ``x, y`` (px) from one end to the other along the skeleton's longest geodesic
        path (spurs and shorter pieces are dropped); ``(0, 2)`` for an empty mask.
    """
    sk, oy, ox = _skeleton_crop(mask)
    ys, xs = np.nonzero(sk)
    if ys.size == 0:
        return np.zeros((0, 2))
    if ys.size == 1:
        return np.array([[xs[0] + ox, ys[0] + oy]], float)
    index = -np.ones(sk.shape, np.int64)
    index[ys, xs] = np.arange(ys.size)
    rows, cols, w = [], [], []
    h, wd = sk.shape
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each undirected neighbour pair once
        y2, x2 = ys + dy, xs + dx
        ok = (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < wd)
        j = np.full(ys.size, -1)
        j[ok] = index[y2[ok], x2[ok]]
        hit = j >= 0
        rows.append(np.flatnonzero(hit))
        cols.append(j[hit])
        w.append(np.full(hit.sum(), np.hypot(dy, dx)))
    r, c, wt = np.concatenate(rows), np.concatenate(cols), np.concatenate(w)
    g = sparse.csr_matrix((wt, (r, c)), shape=(ys.size, ys.size))
    # The longest geodesic path of a tree: farthest node from any node, then farthest from it.
    _, comp = csgraph.connected_components(g, directed=False)
    big = np.argmax(np.bincount(comp))
    start = int(np.flatnonzero(comp == big)[0])
    d = csgraph.dijkstra(g, directed=False, indices=start)
    a = int(np.nanargmax(np.where(np.isfinite(d), d, -1)))
    d, pred = csgraph.dijkstra(g, directed=False, indices=a, return_predecessors=True)
    b = int(np.nanargmax(np.where(np.isfinite(d), d, -1)))
    path = [b]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    path = path[::-1]
    return np.stack([xs[path] + ox, ys[path] + oy], axis=1).astype(float)
