"""Per-frame post-processing: loopline's kernels against a plain scikit-image/scipy version.

Both turn N line masks of one frame into lengths, 50-point representations and the spacings
of neighbouring lines:

- loopline: :func:`loopline.analysis.lines.trace_lines` (one kernel call for all masks, each
  on its bounding-box crop: run-based largest piece, Numba thinning, graph walk, smoothing,
  resampling) and
  :func:`loopline.analysis.pileups.group_pileups` (grouping, ordering, mean closest distance);
- baseline: ``skimage.morphology.skeletonize(method="lee")`` on the full mask, the pixel graph
  with ``scipy.spatial.cKDTree`` and ``scipy.sparse.csgraph.dijkstra`` (two sweeps for the
  longest path), a 7-point moving average, ``np.interp`` to 50 points, and
  ``scipy.spatial.distance.cdist`` for the mean closest distance of neighbours.

asv-style (``time_*`` functions parametrised over frame size and line count); run as a script
to print both, in milliseconds per frame, and their ratio, measured in the same run::

    .venv/bin/python benchmarks/analysis.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

PARAMS = ([256, 512], [5, 20])
PARAM_NAMES = ("size", "lines")


def make_frame(size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N gently curved, 6 px wide line masks in one (size, size) frame, and their boxes."""
    from skimage.draw import polygon

    from loopline.synth.render import line_polygon

    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    boxes = np.zeros((n, 4), np.float32)
    gap = (size * 0.8) / max(n, 1)
    for i in range(n):
        v = np.linspace(-0.18 * size, 0.18 * size, 80)
        u = 0.1 * size + i * gap + 0.0004 * v**2 + rng.normal(0, 0.3)
        pts = np.stack([u, size / 2 + v], axis=1)
        poly = line_polygon(pts, 6.0)
        rr, cc = polygon(poly[:, 1], poly[:, 0], (size, size))
        masks[i, rr, cc] = True
        boxes[i] = (cc.min(), rr.min(), cc.max(), rr.max())
    return masks, boxes


def loopline_frame(masks: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from loopline.analysis.lines import trace_lines
    from loopline.analysis.pileups import group_pileups

    traces = trace_lines(masks, boxes)
    pts = np.stack([t.points for t in traces])
    g = group_pileups(pts)
    return np.array([t.length_px for t in traces]), g.pair_spacing_px


def baseline_frame(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree
    from scipy.spatial.distance import cdist
    from skimage.morphology import skeletonize

    lengths, reps = [], []
    for m in masks:
        sk = skeletonize(m, method="lee").astype(bool)
        yx = np.argwhere(sk).astype(float)
        tree = cKDTree(yx)
        pairs = tree.query_pairs(1.5, output_type="ndarray")
        w = np.hypot(*(yx[pairs[:, 0]] - yx[pairs[:, 1]]).T)
        n = len(yx)
        graph = coo_matrix((w, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
        d0 = dijkstra(graph, directed=False, indices=0)
        a = int(np.argmax(np.where(np.isfinite(d0), d0, -1)))
        da, pred = dijkstra(graph, directed=False, indices=a, return_predecessors=True)
        b = int(np.argmax(np.where(np.isfinite(da), da, -1)))
        path = [b]
        while path[-1] != a:
            path.append(pred[path[-1]])
        p = yx[path][:, ::-1]
        k = np.ones(7) / 7
        sm = np.stack([np.convolve(p[:, i], k, mode="valid") for i in (0, 1)], axis=1)
        sm = np.vstack([p[:1], sm, p[-1:]])
        seg = np.hypot(*np.diff(sm, axis=0).T)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        lengths.append(s[-1])
        t = np.linspace(0, s[-1], 50)
        reps.append(np.stack([np.interp(t, s, sm[:, 0]), np.interp(t, s, sm[:, 1])], axis=1))
    order = np.argsort([r[:, 0].mean() for r in reps])
    sp = []
    for i, j in itertools.pairwise(order):
        d = cdist(reps[i], reps[j])
        sp.append(0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean()))
    return np.array(lengths), np.array(sp)


_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def setup(size: int, lines: int) -> None:
    if (size, lines) not in _CACHE:
        _CACHE[(size, lines)] = make_frame(size, lines)
    loopline_frame(*_CACHE[(size, lines)])  # compile the kernels outside the timing


def time_loopline(size: int, lines: int) -> None:
    loopline_frame(*_CACHE[(size, lines)])


def time_baseline(size: int, lines: int) -> None:
    baseline_frame(_CACHE[(size, lines)][0])


def _best_ms(fn, repeat: int, clock=time.perf_counter) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20, help="repetitions (best is reported)")
    a = ap.parse_args()
    print("wall: best of --repeat runs; cpu: best process CPU time (robust on a busy machine)")
    print(f"{'size':>5} {'lines':>5} {'loopline ms':>12} {'baseline ms':>12} {'ratio':>7}"
          f" {'cpu: loopline':>13} {'baseline':>9} {'ratio':>7}"
          f"  {'max |dL| px':>11} {'max |ds| px':>11}")  # fmt: skip
    for size in PARAMS[0]:
        for n in PARAMS[1]:
            setup(size, n)
            masks, boxes = _CACHE[(size, n)]
            ours = _best_ms(lambda: time_loopline(size, n), a.repeat)  # noqa: B023
            base = _best_ms(lambda: time_baseline(size, n), max(a.repeat // 5, 2))  # noqa: B023
            ours_c = _best_ms(lambda: time_loopline(size, n), a.repeat, time.process_time)  # noqa: B023
            base_c = _best_ms(lambda: time_baseline(size, n), max(a.repeat // 5, 2),  # noqa: B023
                              time.process_time)  # fmt: skip
            l1, s1 = loopline_frame(masks, boxes)
            l2, s2 = baseline_frame(masks)
            print(f"{size:>5} {n:>5} {ours:>12.3f} {base:>12.2f} {base / ours:>6.1f}x"
                  f" {ours_c:>13.3f} {base_c:>9.2f} {base_c / ours_c:>6.1f}x"
                  f"  {np.abs(l1 - l2).max():>11.2f} {np.abs(s1 - s2).max():>11.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
