"""Hot loops of the per-frame measurement, written once in Numba-compatible Python.

Every kernel here is plain Python over NumPy arrays; ``KERNELS["numba"]`` holds the same
source compiled by ``numba.njit`` and ``KERNELS["python"]`` the interpreted twin (the pattern
of ``trackpy.try_numba``), so one test suite checks both and they cannot drift apart.
Kernels do not call each other (a compiled kernel cannot call an interpreted one); the public
stages in ``lines.py`` chain them.

Coordinates are (x, y) in pixels with pixel centres on integers, as in the synthetic
ground truth and OpenCV drawing.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

__all__ = ["KERNELS", "get_kernels"]

# 8-neighbourhood in order x1..x8 around the pixel: E, NE, N, NW, W, SW, S, SE (dy, dx).
_DY = np.array([0, -1, -1, -1, 0, 1, 1, 1], np.int64)
_DX = np.array([1, 1, 0, -1, -1, -1, 0, 1], np.int64)


def thin(img):
    """Thin a binary image in place to an 8-connected, one-pixel-wide skeleton.

    ``img`` is a (H, W) uint8 array of 0/1 with a zero border at least one pixel wide.
    Directional simple-point thinning, the 2-D case of Lee, Kashyap & Chu (1994) as in
    scikit-image's ``method="lee"``: in each of four sub-iterations (N, S, E, W), border
    pixels of that direction that are simple (Yokoi 8-connectivity number 1) and not end
    points (more than one neighbour) are collected, then re-checked one by one against the
    current image and removed; repeated until nothing changes. Only foreground pixels are
    visited, so the cost scales with the object, not the crop.
    """
    dy = np.array([0, -1, -1, -1, 0, 1, 1, 1])
    dx = np.array([1, 1, 0, -1, -1, -1, 0, 1])
    h, w = img.shape
    n = 0
    for y in range(h):
        for x in range(w):
            if img[y, x]:
                n += 1
    ys = np.empty(n, np.int64)
    xs = np.empty(n, np.int64)
    k = 0
    for y in range(h):
        for x in range(w):
            if img[y, x]:
                ys[k] = y
                xs[k] = x
                k += 1
    alive = np.ones(n, np.uint8)
    cand = np.empty(n, np.int64)
    nb = np.zeros(8, np.int64)
    directions = np.array([2, 6, 0, 4])  # N, S, E, W as indices into dy/dx
    changed = True
    while changed:
        changed = False
        for di in range(4):
            d = directions[di]
            nc = 0
            for i in range(n):
                if not alive[i]:
                    continue
                y = ys[i]
                x = xs[i]
                if img[y + dy[d], x + dx[d]]:
                    continue  # not a border pixel in this direction
                s = 0
                for j in range(8):
                    nb[j] = 1 if img[y + dy[j], x + dx[j]] else 0
                    s += nb[j]
                if s <= 1:
                    continue  # end point or isolated pixel: keep
                yokoi = 0
                for j in range(0, 8, 2):
                    a = 1 - nb[j]
                    b = 1 - nb[(j + 1) % 8]
                    c = 1 - nb[(j + 2) % 8]
                    yokoi += a - a * b * c
                if yokoi == 1:
                    cand[nc] = i
                    nc += 1
            for ci in range(nc):
                i = cand[ci]
                y = ys[i]
                x = xs[i]
                # re-check against the image as it is now: removing a candidate may have made
                # its neighbour non-simple (topology is preserved only one pixel at a time)
                s = 0
                for j in range(8):
                    nb[j] = 1 if img[y + dy[j], x + dx[j]] else 0
                    s += nb[j]
                if s <= 1:
                    continue
                yokoi = 0
                for j in range(0, 8, 2):
                    a = 1 - nb[j]
                    b = 1 - nb[(j + 1) % 8]
                    c = 1 - nb[(j + 2) % 8]
                    yokoi += a - a * b * c
                if yokoi == 1:
                    img[y, x] = 0
                    alive[i] = 0
                    changed = True
    return img


def longest_path(skel):
    """Longest shortest path through the 8-connected pixel graph of a skeleton.

    ``skel`` is (H, W) uint8 with a zero border. Two sweeps of label-correcting shortest
    paths (edge weights 1 and sqrt 2): from an end pixel (or any pixel) to the farthest
    pixel a, then from a to the farthest pixel b. On a tree this is its diameter, so side
    branches and spurs are pruned. Returns the path from a to b as (K, 2) float64 (x, y);
    (0, 2) for an empty skeleton.
    """
    dy = np.array([0, -1, -1, -1, 0, 1, 1, 1])
    dx = np.array([1, 1, 0, -1, -1, -1, 0, 1])
    h, w = skel.shape
    idx = np.full((h, w), -1, np.int64)
    n = 0
    for y in range(h):
        for x in range(w):
            if skel[y, x]:
                idx[y, x] = n
                n += 1
    if n == 0:
        return np.zeros((0, 2), np.float64)
    ys = np.empty(n, np.int64)
    xs = np.empty(n, np.int64)
    adj = np.full((n, 8), -1, np.int64)
    deg = np.zeros(n, np.int64)
    for y in range(h):
        for x in range(w):
            i = idx[y, x]
            if i < 0:
                continue
            ys[i] = y
            xs[i] = x
            for j in range(8):
                q = idx[y + dy[j], x + dx[j]]
                if q >= 0:
                    adj[i, j] = q
                    deg[i] += 1
    start = 0
    for i in range(n):
        if deg[i] == 1:
            start = i
            break
    dist = np.empty(n, np.float64)
    pred = np.empty(n, np.int64)
    inq = np.zeros(n, np.uint8)
    queue = np.empty(n + 1, np.int64)
    root = start
    far = start
    for sweep in range(2):
        for i in range(n):
            dist[i] = np.inf
            pred[i] = -1
            inq[i] = 0
        dist[root] = 0.0
        head = 0
        tail = 0
        queue[tail] = root
        tail = (tail + 1) % (n + 1)
        inq[root] = 1
        while head != tail:
            u = queue[head]
            head = (head + 1) % (n + 1)
            inq[u] = 0
            for j in range(8):
                v = adj[u, j]
                if v < 0:
                    continue
                wgt = 1.4142135623730951 if j % 2 == 1 else 1.0
                nd = dist[u] + wgt
                if nd < dist[v] - 1e-12:
                    dist[v] = nd
                    pred[v] = u
                    if not inq[v]:
                        queue[tail] = v
                        tail = (tail + 1) % (n + 1)
                        inq[v] = 1
        far = root
        for i in range(n):
            if dist[i] > dist[far]:
                far = i
        if sweep == 0:
            root = far
    # walk back from the far end b to a
    k = 0
    v = far
    while v >= 0:
        k += 1
        v = pred[v]
    out = np.empty((k, 2), np.float64)
    v = far
    i = 0
    while v >= 0:
        out[i, 0] = xs[v]
        out[i, 1] = ys[v]
        i += 1
        v = pred[v]
    return out


def smooth(pts, half):
    """Moving average along an ordered (K, 2) polyline with a window that shrinks at the ends.

    Point i is the mean of points i-k..i+k with k = min(half, i, K-1-i): the end points stay
    where they are and no sample is lost. This removes the staircase of an 8-connected pixel
    chain (which makes a chain up to 8 % longer than the line it digitises).
    """
    n = pts.shape[0]
    out = np.empty_like(pts)
    cx = np.zeros(n + 1)
    cy = np.zeros(n + 1)
    for i in range(n):
        cx[i + 1] = cx[i] + pts[i, 0]
        cy[i + 1] = cy[i] + pts[i, 1]
    for i in range(n):
        k = min(half, i, n - 1 - i)
        m = 2 * k + 1
        out[i, 0] = (cx[i + k + 1] - cx[i - k]) / m
        out[i, 1] = (cy[i + k + 1] - cy[i - k]) / m
    return out


def polyline_length(pts):
    """Arc length of an ordered (K, 2) polyline, px."""
    s = 0.0
    for i in range(pts.shape[0] - 1):
        s += math.hypot(pts[i + 1, 0] - pts[i, 0], pts[i + 1, 1] - pts[i, 1])
    return s


def resample(pts, n):
    """``n`` points equally spaced in arc length along an ordered (K, 2) polyline (K >= 1)."""
    k = pts.shape[0]
    out = np.empty((n, 2), np.float64)
    cum = np.zeros(k)
    for i in range(k - 1):
        cum[i + 1] = cum[i] + math.hypot(pts[i + 1, 0] - pts[i, 0], pts[i + 1, 1] - pts[i, 1])
    total = cum[k - 1]
    seg = 0
    for j in range(n):
        s = total * j / (n - 1) if n > 1 else 0.0
        while seg < k - 2 and cum[seg + 1] < s:
            seg += 1
        if k == 1 or cum[seg + 1] - cum[seg] <= 0.0:
            out[j, 0] = pts[seg, 0]
            out[j, 1] = pts[seg, 1]
        else:
            f = (s - cum[seg]) / (cum[seg + 1] - cum[seg])
            f = min(max(f, 0.0), 1.0)
            out[j, 0] = pts[seg, 0] + f * (pts[seg + 1, 0] - pts[seg, 0])
            out[j, 1] = pts[seg, 1] + f * (pts[seg + 1, 1] - pts[seg, 1])
    return out


def mean_closest(a, b):
    """Mean over the points of ``a`` (K, 2) of the distance to the polyline ``b`` (M, 2), px.

    The distance is to the nearest point of any segment of ``b`` (not only to its vertices),
    so it does not depend on how densely ``b`` is sampled.
    """
    ka = a.shape[0]
    kb = b.shape[0]
    total = 0.0
    for i in range(ka):
        px = a[i, 0]
        py = a[i, 1]
        best = np.inf
        if kb == 1:
            best = math.hypot(px - b[0, 0], py - b[0, 1])
        for j in range(kb - 1):
            x0 = b[j, 0]
            y0 = b[j, 1]
            ex = b[j + 1, 0] - x0
            ey = b[j + 1, 1] - y0
            ll = ex * ex + ey * ey
            t = 0.0
            if ll > 0.0:
                t = ((px - x0) * ex + (py - y0) * ey) / ll
                t = min(max(t, 0.0), 1.0)
            d = math.hypot(px - x0 - t * ex, py - y0 - t * ey)
            if d < best:
                best = d
        total += best
    return total / ka if ka > 0 else np.nan


def ray_exit(mask, x, y, ux, uy, step):
    """Distance from (x, y) along the unit vector (ux, uy) to the edge of ``mask``, px.

    Marches in steps of ``step`` px; a sample is inside when the pixel nearest to it is set.
    Returns ``(distance, left_array)``: the edge lies half a step before the first outside
    sample (pixel edges sit half a pixel beyond pixel centres); ``left_array`` is 1 when the
    march left the array rather than the mask, and the distance is then that of the last
    sample inside.
    """
    h, w = mask.shape
    t = 0.0
    limit = 2.0 * (h + w)
    while t < limit:
        t += step
        xi = int(math.floor(x + t * ux + 0.5))
        yi = int(math.floor(y + t * uy + 0.5))
        if xi < 0 or yi < 0 or xi >= w or yi >= h:
            return t - step, 1
        if not mask[yi, xi]:
            return t - 0.5 * step, 0
    return t, 1


def bbox(mask):
    """Bounding box ``(y0, y1, x0, x1)`` (end exclusive) of a (H, W) bool mask; zeros if empty."""
    h, w = mask.shape
    y0 = -1
    y1 = -1
    x0 = w
    x1 = -1
    for y in range(h):
        row_any = False
        for x in range(w):
            if mask[y, x]:
                row_any = True
                if x < x0:
                    x0 = x
                break
        if not row_any:
            continue
        if y0 < 0:
            y0 = y
        y1 = y
        for x in range(w - 1, -1, -1):
            if mask[y, x]:
                if x > x1:
                    x1 = x
                break
    if y0 < 0:
        return 0, 0, 0, 0
    return y0, y1 + 1, x0, x1 + 1


_NAMES = ("thin", "longest_path", "smooth", "polyline_length", "resample", "mean_closest",
          "ray_exit", "bbox")  # fmt: skip

_PY = SimpleNamespace(**{name: globals()[name] for name in _NAMES}, name="python")
_NB: SimpleNamespace | None = None


def _compile() -> SimpleNamespace:
    import numba

    jit = numba.njit(cache=True, nogil=True)
    return SimpleNamespace(**{name: jit(globals()[name]) for name in _NAMES}, name="numba")


def get_kernels(impl: str = "numba") -> SimpleNamespace:
    """The kernel set ``"numba"`` (compiled on first use, cached on disk) or ``"python"``."""
    global _NB
    if impl == "python":
        return _PY
    if impl != "numba":
        raise ValueError(f"impl must be 'numba' or 'python', got {impl!r}")
    if _NB is None:
        _NB = _compile()
    return _NB


KERNELS = ("numba", "python")
