"""Hot loops of the per-frame measurement, written once in Numba-compatible Python.

Every kernel here is plain Python over NumPy arrays; ``get_kernels("numba")`` holds the same
source compiled by ``numba.njit`` and ``get_kernels("python")`` the interpreted twin (the
pattern of ``trackpy.try_numba``), so one test suite checks both and they cannot drift apart.
``trace`` fuses the whole per-line stage (largest piece, thinning, graph walk, smoothing, end
extension, resampling, curvature) into one call; compiled kernels call compiled kernels because
each is compiled with a namespace of compiled kernels as its globals (``_compile``).

Coordinates are (x, y) in pixels with pixel centres on integers, as in the synthetic
ground truth and OpenCV drawing.
"""

from __future__ import annotations

import math
from types import FunctionType, SimpleNamespace

import numpy as np

__all__ = ["get_kernels"]


def _deletable_table() -> np.ndarray:
    """256-entry table: 1 where a pixel with that 8-neighbourhood code may be thinned away.

    Bit j of the code is neighbour x_(j+1) in the order E, NE, N, NW, W, SW, S, SE. A pixel
    may go when it has more than one neighbour (not an end point) and is simple: its Yokoi
    8-connectivity number sum_{k=1,3,5,7} (~x_k - ~x_k ~x_(k+1) ~x_(k+2)) is 1.
    """
    table = np.zeros(256, np.uint8)
    for code in range(256):
        nb = [(code >> j) & 1 for j in range(8)]
        if sum(nb) <= 1:
            continue
        yokoi = 0
        for j in range(0, 8, 2):
            a, b, c = 1 - nb[j], 1 - nb[(j + 1) % 8], 1 - nb[(j + 2) % 8]
            yokoi += a - a * b * c
        table[code] = yokoi == 1
    return table


_DELETABLE = _deletable_table()


def thin(img):
    """Thin a binary image in place to an 8-connected, one-pixel-wide skeleton.

    ``img`` is a (H, W) uint8 array of 0/1 with a zero border at least one pixel wide.
    Directional simple-point thinning, the 2-D case of Lee, Kashyap & Chu (1994) as in
    scikit-image's ``method="lee"``: in each of four sub-iterations (N, S, E, W), border
    pixels of that direction that are simple (Yokoi 8-connectivity number 1) and not end
    points (more than one neighbour) are collected, then re-checked one by one against the
    current image and removed; repeated until nothing changes. Only the remaining foreground
    pixels are visited (the list is compacted after each round), and the test is one lookup
    in a 256-entry table, so the cost scales with the object, not the crop.
    """
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
    thin_px(img, ys, xs, n)
    return img


def thin_px(img, ys, xs, n):
    """``thin`` given the foreground pixels ``ys[:n]``, ``xs[:n]`` of ``img`` in raster order.

    Thins the C-contiguous ``img`` in place; on return ``ys[:m]``, ``xs[:m]`` are the
    skeleton's pixels, still in raster order, and ``m`` is returned. Pixels are addressed by
    their flat index (a neighbour is one addition away), and thinning stops as soon as four
    sub-iterations in a row removed nothing: the image is then unchanged by every direction.
    """
    table = _DELETABLE
    w = img.shape[1]
    f = img.reshape(-1)
    pos = np.empty(n, np.int64)
    for i in range(n):
        pos[i] = ys[i] * w + xs[i]
    cand = np.empty(n, np.int64)
    m = n
    quiet = 0  # sub-iterations in a row without a removal
    d = 0  # N, S, E, W
    while quiet < 4:
        if d == 0:
            off = -w
        elif d == 1:
            off = w
        elif d == 2:
            off = 1
        else:
            off = -1
        nc = 0
        for i in range(m):
            p = pos[i]
            if f[p] == 0 or f[p + off] != 0:  # removed already, or not a border pixel
                continue
            code = (f[p + 1] | (f[p - w + 1] << 1) | (f[p - w] << 2) | (f[p - w - 1] << 3)
                    | (f[p - 1] << 4) | (f[p + w - 1] << 5) | (f[p + w] << 6)
                    | (f[p + w + 1] << 7))  # fmt: skip
            if table[code]:
                cand[nc] = p
                nc += 1
        removed = False
        for c in range(nc):
            p = cand[c]
            # re-check against the image as it is now: removing a candidate may have made
            # its neighbour non-simple (topology is preserved only one pixel at a time)
            code = (f[p + 1] | (f[p - w + 1] << 1) | (f[p - w] << 2) | (f[p - w - 1] << 3)
                    | (f[p - 1] << 4) | (f[p + w - 1] << 5) | (f[p + w] << 6)
                    | (f[p + w + 1] << 7))  # fmt: skip
            if table[code]:
                f[p] = 0
                removed = True
        quiet = 0 if removed else quiet + 1
        d = (d + 1) % 4
        if d == 0:
            k = 0
            for i in range(m):
                if f[pos[i]]:
                    pos[k] = pos[i]
                    k += 1
            m = k
    k = 0
    for i in range(m):
        p = pos[i]
        if f[p]:
            y = p // w
            ys[k] = y
            xs[k] = p - y * w
            k += 1
    return k


def longest_path(skel):
    """Longest shortest path through the 8-connected pixel graph of a skeleton.

    ``skel`` is (H, W) uint8 with a zero border. Two sweeps of label-correcting shortest
    paths (edge weights 1 and sqrt 2): from an end pixel (or any pixel) to the farthest
    pixel a, then from a to the farthest pixel b. On a tree this is its diameter, so side
    branches and spurs are pruned. Returns the path from a to b as (K, 2) float64 (x, y);
    (0, 2) for an empty skeleton.
    """
    h, w = skel.shape
    n = 0
    for y in range(h):
        for x in range(w):
            if skel[y, x]:
                n += 1
    ys = np.empty(n, np.int64)
    xs = np.empty(n, np.int64)
    k = 0
    for y in range(h):
        for x in range(w):
            if skel[y, x]:
                ys[k] = y
                xs[k] = x
                k += 1
    return path_px(skel, ys, xs, n)


def path_px(skel, ys, xs, n):
    """``longest_path`` given the skeleton's pixels ``ys[:n]``, ``xs[:n]`` in raster order."""
    dy = np.array([0, -1, -1, -1, 0, 1, 1, 1])
    dx = np.array([1, 1, 0, -1, -1, -1, 0, 1])
    if n == 0:
        return np.zeros((0, 2), np.float64)
    h, w = skel.shape
    idx = np.full((h, w), -1, np.int64)
    for i in range(n):
        idx[ys[i], xs[i]] = i
    adj = np.full((n, 8), -1, np.int64)
    deg = np.zeros(n, np.int64)
    for i in range(n):
        y = ys[i]
        x = xs[i]
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
    # a simple chain (two ends, every other pixel with two neighbours): the longest path is
    # the chain itself, walked from ``start`` as the sweeps below would return it
    ends = 0
    simple = True
    for i in range(n):
        if deg[i] == 1:
            ends += 1
        elif deg[i] != 2:
            simple = False
            break
    if simple and ends == 2:
        out = np.empty((n, 2), np.float64)
        prev = -1
        u = start
        k = 0
        while u >= 0 and k < n:
            out[k, 0] = xs[u]
            out[k, 1] = ys[u]
            k += 1
            nxt = -1
            for j in range(8):
                v = adj[u, j]
                if v >= 0 and v != prev:
                    nxt = v
                    break
            prev = u
            u = nxt
        if k == n and u < 0:  # one piece: every pixel visited once
            return out
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


def nearest_vertex_dist(px, py, b, bj, bd):
    """Distance from (px, py) to the two segments of the polyline ``b`` at its vertex ``bj``.

    ``bd`` is the squared distance to that vertex (the nearest one); see ``mean_closest``.
    """
    kb = b.shape[0]
    best = math.sqrt(bd)
    for j in range(bj - 1, bj + 1):
        if j < 0 or j >= kb - 1:
            continue
        x0 = b[j, 0]
        y0 = b[j, 1]
        ex = b[j + 1, 0] - x0
        ey = b[j + 1, 1] - y0
        ll = ex * ex + ey * ey
        if ll <= 0.0:
            continue
        t = ((px - x0) * ex + (py - y0) * ey) / ll
        t = min(max(t, 0.0), 1.0)
        d = math.hypot(px - x0 - t * ex, py - y0 - t * ey)
        if d < best:
            best = d
    return best


def mean_closest(a, b):
    """Mean over the points of ``a`` (K, 2) of the distance to the polyline ``b`` (M, 2), px.

    The distance is to the nearest point of the two segments of ``b`` at its vertex nearest
    to the point, so it does not depend on how densely ``b`` is sampled (for lines sampled
    finer than their spacing and curvature, that is the nearest point of the polyline).
    """
    ka = a.shape[0]
    kb = b.shape[0]
    total = 0.0
    for i in range(ka):
        px = a[i, 0]
        py = a[i, 1]
        bj = 0
        bd = np.inf
        for j in range(kb):
            ddx = px - b[j, 0]
            ddy = py - b[j, 1]
            d2 = ddx * ddx + ddy * ddy
            if d2 < bd:
                bd = d2
                bj = j
        total += nearest_vertex_dist(px, py, b, bj, bd)
    return total / ka if ka > 0 else np.nan


def mean_closest_pair(a, b):
    """``0.5 * (mean_closest(a, b) + mean_closest(b, a))``, the same numbers in one pass.

    The squared vertex distances of the two directions are the same (K, M) table, so it is
    computed once: each row's and each column's first minimum give the nearest vertices of
    both directions (as ``mean_closest`` finds them), then the segment distances are summed
    in the same order.
    """
    ka = a.shape[0]
    kb = b.shape[0]
    if ka == 0 or kb == 0:
        return np.nan
    ax = np.empty(ka)
    ay = np.empty(ka)
    for i in range(ka):
        ax[i] = a[i, 0]
        ay[i] = a[i, 1]
    bx = np.empty(kb)
    by = np.empty(kb)
    for j in range(kb):
        bx[j] = b[j, 0]
        by[j] = b[j, 1]
    row_j = np.zeros(ka, np.int64)
    row_d = np.empty(ka)
    col_i = np.zeros(kb, np.int64)
    col_d = np.full(kb, np.inf)
    row = np.empty(kb)
    for i in range(ka):
        px = ax[i]
        py = ay[i]
        for j in range(kb):  # no loop-carried dependency: vectorisable
            ddx = px - bx[j]
            ddy = py - by[j]
            d2 = ddx * ddx + ddy * ddy
            row[j] = d2
            if d2 < col_d[j]:
                col_d[j] = d2
                col_i[j] = i
        # first minimum of the row, with two interleaved running minima (ties: lower index)
        b0 = 0
        d0 = np.inf
        b1 = 0
        d1 = np.inf
        for j in range(0, kb - 1, 2):
            if row[j] < d0:
                d0 = row[j]
                b0 = j
            if row[j + 1] < d1:
                d1 = row[j + 1]
                b1 = j + 1
        if kb % 2 == 1 and row[kb - 1] < d0:
            d0 = row[kb - 1]
            b0 = kb - 1
        if d1 < d0 or (d1 == d0 and d1 < np.inf and b1 < b0):
            d0 = d1
            b0 = b1
        row_j[i] = b0
        row_d[i] = d0
    s_ab = 0.0
    for i in range(ka):
        s_ab += nearest_vertex_dist(ax[i], ay[i], b, row_j[i], row_d[i])
    s_ba = 0.0
    for j in range(kb):
        s_ba += nearest_vertex_dist(bx[j], by[j], a, col_i[j], col_d[j])
    return 0.5 * (s_ab / ka + s_ba / kb)


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
        xi = int(math.floor(x + t * ux + 0.5))  # noqa: RUF046 (numba)
        yi = int(math.floor(y + t * uy + 0.5))  # noqa: RUF046
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


def _root(parent, r):
    """Root of run ``r`` in the union-find forest ``parent`` (path halving)."""
    while parent[r] != r:
        parent[r] = parent[parent[r]]
        r = parent[r]
    return r


def largest_piece_px(crop, out, ys, xs):
    """Copy the largest 8-connected piece of ``crop`` (H, W) into ``out`` (H+2, W+2) at (1, 1)
    and list its pixels (``out`` coordinates, raster order).

    Returns ``(pieces, area)``: the number of 8-connected pieces and the kept piece's pixels.

    ``ys``, ``xs`` hold at least H*W entries; the first ``area`` are filled. Pieces are found
    on horizontal runs, not pixels: each row's runs are joined (union-find, the lower run
    index is the root) to the runs of the row above that touch them, diagonals included. A
    piece's root is then its raster-first run, so among pieces of equal area the one that
    starts first in raster order is kept, as a pixel flood fill in raster order would.
    """
    h, w = crop.shape
    cap = h * ((w + 1) // 2) + 1
    run_y = np.empty(cap, np.int64)
    run_a = np.empty(cap, np.int64)
    run_b = np.empty(cap, np.int64)  # exclusive end
    parent = np.empty(cap, np.int64)
    nr = 0
    prev0 = 0
    prev1 = 0
    for y in range(h):
        cur0 = nr
        x = 0
        while x < w:
            if crop[y, x] == 0:
                x += 1
                continue
            a = x
            while x < w and crop[y, x] != 0:
                x += 1
            run_y[nr] = y
            run_a[nr] = a
            run_b[nr] = x
            parent[nr] = nr
            for r in range(prev0, prev1):  # 8-connected: columns [a-1, x] touch
                if run_b[r] >= a and run_a[r] <= x:
                    ra = _root(parent, r)
                    rb = _root(parent, nr)
                    if ra < rb:
                        parent[rb] = ra
                    elif rb < ra:
                        parent[ra] = rb
            nr += 1
        prev0 = cur0
        prev1 = nr
    size = np.zeros(max(nr, 1), np.int64)
    pieces = 0
    for r in range(nr):
        q = _root(parent, r)
        parent[r] = q
        if q == r:
            pieces += 1
        size[q] += run_b[r] - run_a[r]
    best = -1
    best_area = 0
    for r in range(nr):
        if parent[r] == r and size[r] > best_area:
            best_area = size[r]
            best = r
    out[:, :] = 0
    c = 0
    for r in range(nr):
        if parent[r] != best:
            continue
        y = run_y[r] + 1
        for x in range(run_a[r] + 1, run_b[r] + 1):
            out[y, x] = 1
            ys[c] = y
            xs[c] = x
            c += 1
    return pieces, best_area


def trim_ends(sm, trim):
    """Drop ``trim`` px of arc at each end of a polyline, keeping at least its middle third."""
    n = sm.shape[0]
    if trim <= 0 or n < 4:
        return sm
    cum = np.zeros(n)
    for i in range(n - 1):
        cum[i + 1] = cum[i] + math.hypot(sm[i + 1, 0] - sm[i, 0], sm[i + 1, 1] - sm[i, 1])
    total = cum[n - 1]
    t = min(trim, total / 3.0)
    a = 0
    while a < n and cum[a] < t:
        a += 1
    b = n
    while b > 0 and cum[b - 1] > total - t:
        b -= 1
    if b - a < 2:
        return sm
    return sm[a:b]


def extend_ends(core, piece, step):
    """Prepend/append where each end's tangent ray leaves ``piece`` (see ``lines.py``)."""
    n = core.shape[0]
    if n == 0 or step <= 0:
        return core.copy()
    if n == 1:
        # a blob that thins to one pixel: measure along the piece's principal axis
        h, w = piece.shape
        sx = 0.0
        sy = 0.0
        cnt = 0
        for y in range(h):
            for x in range(w):
                if piece[y, x]:
                    sx += x
                    sy += y
                    cnt += 1
        mx = sx / cnt
        my = sy / cnt
        cxx = 0.0
        cyy = 0.0
        cxy = 0.0
        for y in range(h):
            for x in range(w):
                if piece[y, x]:
                    cxx += (x - mx) * (x - mx)
                    cyy += (y - my) * (y - my)
                    cxy += (x - mx) * (y - my)
        ang = 0.5 * math.atan2(2.0 * cxy, cxx - cyy)
        ux = math.cos(ang)
        uy = math.sin(ang)
        x = core[0, 0]
        y = core[0, 1]
        out = np.empty((2, 2))
        t1, _ = ray_exit(piece, x, y, -ux, -uy, step)
        t2, _ = ray_exit(piece, x, y, ux, uy, step)
        out[0, 0] = x - t1 * ux
        out[0, 1] = y - t1 * uy
        out[1, 0] = x + t2 * ux
        out[1, 1] = y + t2 * uy
        return out
    q = min(3, n - 1)
    out = np.empty((n + 2, 2))
    out[1 : n + 1] = core
    first = 1
    last = n + 1
    for side in range(2):
        if side == 0:
            ex, ey = core[0, 0], core[0, 1]
            ox, oy = core[q, 0], core[q, 1]
        else:
            ex, ey = core[n - 1, 0], core[n - 1, 1]
            ox, oy = core[n - 1 - q, 0], core[n - 1 - q, 1]
        norm = math.hypot(ex - ox, ey - oy)
        if norm <= 0:
            continue
        ux = (ex - ox) / norm
        uy = (ey - oy) / norm
        t, _ = ray_exit(piece, ex, ey, ux, uy, step)
        if t <= 0:
            continue
        if side == 0:
            first = 0
            out[0, 0] = ex + t * ux
            out[0, 1] = ey + t * uy
        else:
            last = n + 2
            out[n + 1, 0] = ex + t * ux
            out[n + 1, 1] = ey + t * uy
    return out[first:last].copy()


def curvature_gauss(pts, sigma):
    """Signed curvature (1/px) of an equally spaced polyline from Gaussian-smoothed coordinates.

    Coordinates are smoothed with a Gaussian of ``sigma`` samples (edges repeated), then
    differentiated with second-order central differences (one-sided at the ends).
    """
    n = pts.shape[0]
    out = np.zeros(n)
    if n < 5:
        return out
    ds = 0.0
    for i in range(n - 1):
        ds += math.hypot(pts[i + 1, 0] - pts[i, 0], pts[i + 1, 1] - pts[i, 1])
    ds /= n - 1
    if ds <= 0:
        return out
    r = int(math.ceil(4.0 * sigma)) if sigma > 0 else 0  # noqa: RUF046 (numba)
    wts = np.empty(2 * r + 1)
    tot = 0.0
    for j in range(-r, r + 1):
        wts[j + r] = math.exp(-0.5 * (j / sigma) ** 2) if sigma > 0 else 1.0
        tot += wts[j + r]
    sm = np.empty((n, 2))
    for i in range(n):
        ax = 0.0
        ay = 0.0
        for j in range(-r, r + 1):
            k = min(max(i + j, 0), n - 1)
            ax += wts[j + r] * pts[k, 0]
            ay += wts[j + r] * pts[k, 1]
        sm[i, 0] = ax / tot
        sm[i, 1] = ay / tot
    d1 = np.empty((n, 2))
    d2 = np.empty((n, 2))
    for c in range(2):
        for i in range(1, n - 1):
            d1[i, c] = (sm[i + 1, c] - sm[i - 1, c]) / (2 * ds)
            d2[i, c] = (sm[i + 1, c] - 2 * sm[i, c] + sm[i - 1, c]) / (ds * ds)
        d1[0, c] = (sm[1, c] - sm[0, c]) / ds
        d1[n - 1, c] = (sm[n - 1, c] - sm[n - 2, c]) / ds
        d2[0, c] = d2[1, c]
        d2[n - 1, c] = d2[n - 2, c]
    for i in range(n):
        den = (d1[i, 0] ** 2 + d1[i, 1] ** 2) ** 1.5
        if den > 1e-12:
            out[i] = (d1[i, 0] * d2[i, 1] - d1[i, 1] * d2[i, 0]) / den
    return out


def trace(crop, x0, y0, width, height, half, trim, step, n_points, sigma):
    """The whole per-line stage on one crop (see ``lines.trace_line``).

    ``crop`` is the (h, w) uint8 mask crop whose pixel (0, 0) is frame pixel (x0, y0);
    ``width``/``height`` the frame size. Returns ``(points (n_points, 2), length px,
    pieces, area px, curvature (n_points,))``; pieces is 0 for an empty crop.
    """
    h, w = crop.shape
    piece = np.empty((h + 2, w + 2), np.uint8)
    ys = np.empty(h * w, np.int64)
    xs = np.empty(h * w, np.int64)
    pieces, area = largest_piece_px(crop, piece, ys, xs)
    if pieces == 0:
        return np.zeros((n_points, 2)), 0.0, 0, 0, np.zeros(n_points)
    # the pixel lists carry over (raster order), so no stage rescans the crop
    skel = piece.copy()
    m = thin_px(skel, ys, xs, area)
    path = path_px(skel, ys, xs, m)
    if path.shape[0] >= 2:
        core = trim_ends(smooth(path, half), trim)
    else:
        core = path
    full = extend_ends(core, piece, step)
    for i in range(full.shape[0]):
        full[i, 0] = min(max(full[i, 0] + x0 - 1, 0.0), width - 1.0)
        full[i, 1] = min(max(full[i, 1] + y0 - 1, 0.0), height - 1.0)
    length = polyline_length(full) if full.shape[0] >= 2 else 0.0
    pts = resample(full, n_points)
    return pts, length, pieces, area, curvature_gauss(pts, sigma)


def trace_many(masks, idx, bounds, half, trim, step, n_points, sigma):
    """``trace`` for the instances ``idx`` of a (N, H, W) uint8 mask stack, in one call.

    ``bounds`` is (len(idx), 4) int64 ``y0, y1, x0, x1`` crop bounds in the frame. Returns
    ``(points (n, n_points, 2), length (n,), pieces (n,), area (n,), curvature
    (n, n_points))``; pieces 0 where a crop is empty.
    """
    n = idx.shape[0]
    height = masks.shape[1]
    width = masks.shape[2]
    pts = np.zeros((n, n_points, 2))
    length = np.zeros(n)
    pieces = np.zeros(n, np.int64)
    area = np.zeros(n, np.int64)
    kappa = np.zeros((n, n_points))
    for i in range(n):
        y0 = bounds[i, 0]
        y1 = bounds[i, 1]
        x0 = bounds[i, 2]
        x1 = bounds[i, 3]
        if y1 <= y0 or x1 <= x0:
            continue
        p, ln, pc, ar, kp = trace(masks[idx[i], y0:y1, x0:x1], x0, y0, width, height, half,
                                  trim, step, n_points, sigma)  # fmt: skip
        pts[i] = p
        length[i] = ln
        pieces[i] = pc
        area[i] = ar
        kappa[i] = kp
    return pts, length, pieces, area, kappa


def line_geometry(lines, probe_idx):
    """Centroid, unit chord, arc length and probe points of (N, K, 2) lines (pileups.py).

    Returns ``cent (N, 2)``, ``tang (N, 2)`` (the chord from first to last point, normalised;
    (1, 0) for a closed or empty line), ``length (N,)`` px and ``probes (N, P, 2)`` (the
    points at ``probe_idx``).
    """
    n = lines.shape[0]
    kp = lines.shape[1]
    npb = probe_idx.shape[0]
    cent = np.zeros((n, 2))
    tang = np.zeros((n, 2))
    length = np.zeros(n)
    probes = np.empty((n, npb, 2))
    for i in range(n):
        sx = 0.0
        sy = 0.0
        ln = 0.0
        for j in range(kp):
            sx += lines[i, j, 0]
            sy += lines[i, j, 1]
            if j > 0:
                ln += math.hypot(lines[i, j, 0] - lines[i, j - 1, 0],
                                 lines[i, j, 1] - lines[i, j - 1, 1])  # fmt: skip
        cent[i, 0] = sx / kp
        cent[i, 1] = sy / kp
        length[i] = ln
        cx = lines[i, kp - 1, 0] - lines[i, 0, 0]
        cy = lines[i, kp - 1, 1] - lines[i, 0, 1]
        cl = math.hypot(cx, cy)
        if cl > 0:
            tang[i, 0] = cx / cl
            tang[i, 1] = cy / cl
        else:
            tang[i, 0] = 1.0
        for q in range(npb):
            probes[i, q, 0] = lines[i, probe_idx[q], 0]
            probes[i, q, 1] = lines[i, probe_idx[q], 1]
    return cent, tang, length, probes


def neighbours(lines, probes, cent, tang, length, max_spacing, sin_max):
    """(N, N) uint8: 1 where two lines are nearest neighbours side by side (pileups.py).

    Each line is joined to its nearest candidate on either side (by the distance of the
    centroids across the line): a candidate is nearly parallel (sine of the angle at most
    ``sin_max``), beside rather than behind (along-line offset at most half the longer line)
    and within ``max_spacing`` by the mean distance of five probe points. Chains of nearest
    neighbours make the pile-ups; only two distances are computed per line.
    """
    n = lines.shape[0]
    adj = np.zeros((n, n), np.uint8)
    for i in range(n):
        best_p = -1
        best_n = -1
        dp = np.inf
        dn = np.inf
        for j in range(n):
            if j == i:
                continue
            dcx = cent[j, 0] - cent[i, 0]
            dcy = cent[j, 1] - cent[i, 1]
            if math.hypot(dcx, dcy) > 0.5 * (length[i] + length[j]) + max_spacing:
                continue
            if abs(tang[i, 0] * tang[j, 1] - tang[i, 1] * tang[j, 0]) > sin_max:
                continue
            along = max(abs(dcx * tang[i, 0] + dcy * tang[i, 1]),
                        abs(dcx * tang[j, 0] + dcy * tang[j, 1]))  # fmt: skip
            if along > 0.5 * max(length[i], length[j]):
                continue
            perp = tang[i, 0] * dcy - tang[i, 1] * dcx
            if perp >= 0 and perp < dp:
                dp = perp
                best_p = j
            elif perp < 0 and -perp < dn:
                dn = -perp
                best_n = j
        for j in (best_p, best_n):
            if j < 0 or adj[i, j]:
                continue
            d = 0.5 * (mean_closest(probes[i], lines[j]) + mean_closest(probes[j], lines[i]))
            if d <= max_spacing:
                adj[i, j] = 1
                adj[j, i] = 1
    return adj


def components(adj):
    """Connected components of an (N, N) adjacency: (N,) labels 0, 1, ... numbered in the
    order of each component's lowest line index."""
    n = adj.shape[0]
    lab = np.full(n, -1, np.int64)
    stack = np.empty(n, np.int64)
    nl = 0
    for s in range(n):
        if lab[s] >= 0:
            continue
        lab[s] = nl
        stack[0] = s
        top = 1
        while top > 0:
            top -= 1
            u = stack[top]
            for v in range(n):
                if adj[u, v] and lab[v] < 0:
                    lab[v] = nl
                    stack[top] = v
                    top += 1
        nl += 1
    return lab


def chain_spacing(lines, order):
    """Symmetric mean closest distance of consecutive lines ``order[k]``, ``order[k+1]``, px."""
    m = order.shape[0]
    out = np.empty(max(m - 1, 0))
    for k in range(m - 1):
        a = lines[order[k]]
        b = lines[order[k + 1]]
        out[k] = mean_closest_pair(a, b)
    return out


_NAMES = ("thin", "thin_px", "longest_path", "path_px", "smooth", "polyline_length", "resample",
          "nearest_vertex_dist", "mean_closest", "mean_closest_pair",
          "ray_exit", "bbox", "_root", "largest_piece_px", "trim_ends",
          "extend_ends",
          "curvature_gauss",
          "trace", "trace_many", "line_geometry", "neighbours", "components",
          "chain_spacing")  # fmt: skip

_PY = SimpleNamespace(**{name: globals()[name] for name in _NAMES}, name="python")
_NB: SimpleNamespace | None = None


def _compile() -> SimpleNamespace:
    """Compile every kernel into a namespace of its own, so compiled kernels call compiled ones.

    Each function is rebuilt from its code object with that namespace as its globals; when
    Numba compiles ``trace`` it then finds the jitted ``thin``, ``longest_path`` ... there.
    """
    import numba

    ns: dict = {"np": np, "math": math, "_DELETABLE": _DELETABLE}
    for name in _NAMES:
        f = globals()[name]
        g = FunctionType(f.__code__, ns, name, f.__defaults__)
        g.__qualname__ = f.__qualname__
        g.__module__ = f.__module__
        ns[name] = numba.njit(cache=True, nogil=True)(g)
    return SimpleNamespace(**{name: ns[name] for name in _NAMES}, name="numba")


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
