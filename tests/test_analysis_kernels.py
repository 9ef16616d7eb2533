"""Numba kernels and their Python twins: one suite, run over both implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loopline.analysis._kernels import get_kernels
from loopline.analysis.lines import curvature, mean_closest_distance, trace_line, trace_lines
from loopline.analysis.loops import fit_loop
from loopline.analysis.pileups import group_pileups
from loopline.datasets.raster import line_polygon

IMPLS = ["python", "numba"]


def _centre_mask(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.draw import polygon

    m = np.zeros(shape, bool)
    rr, cc = polygon(poly[:, 1], poly[:, 0], shape)
    m[rr, cc] = True
    return m


def _bar(p0, p1, width=6.0, shape=(96, 128)) -> np.ndarray:
    pts = np.linspace(p0, p1, 60)
    return _centre_mask(line_polygon(pts, width), shape)


@pytest.mark.parametrize("impl", IMPLS)
def test_thin_bar_is_one_pixel_wide_and_connected(impl):
    k = get_kernels(impl)
    img = np.zeros((12, 30), np.uint8)
    img[3:9, 2:28] = 1
    sk = k.thin(img.copy())
    assert sk.sum() > 15
    cols = sk[:, 4:26].sum(axis=0)
    assert (cols == 1).all()  # one pixel wide away from the ends
    import cv2

    assert cv2.connectedComponents(sk, connectivity=8)[0] == 2


@pytest.mark.parametrize("impl", IMPLS)
def test_thin_keeps_a_ring_a_ring(impl):
    k = get_kernels(impl)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(xx - 20, yy - 20)
    img = ((r > 8) & (r < 14)).astype(np.uint8)
    sk = k.thin(img.copy())
    import cv2

    # one foreground component and a hole: topology preserved
    assert cv2.connectedComponents(sk, connectivity=8)[0] == 2
    assert cv2.connectedComponents((1 - sk).astype(np.uint8), connectivity=4)[0] == 3


@pytest.mark.parametrize("impl", IMPLS)
def test_longest_path_prunes_a_spur(impl):
    k = get_kernels(impl)
    sk = np.zeros((12, 30), np.uint8)
    sk[5, 2:27] = 1  # 25 px trunk
    sk[1:5, 10] = 1  # 4 px spur
    path = k.longest_path(sk)
    assert path.shape == (25, 2)
    assert set(path[:, 1]) == {5.0}
    assert k.longest_path(np.zeros((4, 4), np.uint8)).shape == (0, 2)


@pytest.mark.parametrize("impl", IMPLS)
def test_longest_path_walks_a_simple_chain_from_its_first_end(impl):
    k = get_kernels(impl)
    sk = np.zeros((12, 30), np.uint8)
    sk[2, 3:10] = 1  # 7 px along row 2 ...
    sk[3:9, 10] = 1  # ... a diagonal step to column 10, 6 px down
    path = k.longest_path(sk)
    assert path.shape == (13, 2)
    np.testing.assert_array_equal(path[0], [3, 2])  # the raster-first end comes first
    np.testing.assert_array_equal(path[-1], [10, 8])
    assert (np.abs(np.diff(path, axis=0)) <= 1).all()  # consecutive pixels are neighbours
    ring = np.zeros((9, 9), np.uint8)  # no end at all: the sweeps, not the chain walk
    ring[2, 2:7] = ring[6, 2:7] = ring[2:7, 2] = ring[2:7, 6] = 1
    assert 2 <= k.longest_path(ring).shape[0] <= 16


@pytest.mark.parametrize("impl", IMPLS)
def test_largest_piece_counts_pieces_and_keeps_the_raster_first_of_equal_ones(impl):
    k = get_kernels(impl)
    crop = np.zeros((8, 12), np.uint8)
    crop[1, 6:9] = 1  # piece A: 3 px, starts first in raster order
    crop[5, 1:4] = 1  # piece B: 3 px
    crop[3, 0] = 1  # piece C: 1 px
    out = np.empty((10, 14), np.uint8)
    ys, xs = np.empty(96, np.int64), np.empty(96, np.int64)
    pieces, area = k.largest_piece_px(crop, out, ys, xs)
    assert (pieces, area) == (3, 3)
    assert out.sum() == 3 and out[2, 7:10].all()  # A, shifted by the 1 px border of out
    np.testing.assert_array_equal(ys[:3], [2, 2, 2])
    np.testing.assert_array_equal(xs[:3], [7, 8, 9])
    # runs that touch only at a corner are one 8-connected piece; staircase order kept
    stair = np.zeros((4, 9), np.uint8)
    stair[0, 0:3] = stair[1, 3:5] = stair[2, 5:6] = stair[3, 6:9] = 1
    out = np.empty((6, 11), np.uint8)
    pieces, area = k.largest_piece_px(stair, out, ys, xs)
    assert (pieces, area) == (1, 9)
    np.testing.assert_array_equal(ys[:9], [1, 1, 1, 2, 2, 3, 4, 4, 4])


@pytest.mark.parametrize("impl", IMPLS)
def test_trace_lines_is_trace_line_for_each_mask(impl):
    masks = np.stack([_bar((20.2, 30.1), (100.7, 70.4)), np.zeros((96, 128), bool),
                      _bar((10, 80), (110, 85)), _bar((60, 10), (64, 90))])  # fmt: skip
    boxes = np.zeros((4, 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if ys.size:
            boxes[i] = (xs.min(), ys.min(), xs.max(), ys.max())
    boxes[3] = np.nan  # a box that cannot be used: the mask is scanned instead
    batch = trace_lines(masks, boxes, impl=impl)
    assert batch[1] is None  # an empty mask
    for m, b, tr in zip(masks, boxes, batch, strict=True):
        one = trace_line(m, box=b, impl=impl)
        assert (one is None) == (tr is None)
        if tr is not None:
            assert tr.length_px == one.length_px and tr.pieces == one.pieces
            np.testing.assert_array_equal(tr.points, one.points)
            np.testing.assert_array_equal(tr.curvature_per_px, one.curvature_per_px)
    sub = trace_lines(masks, boxes[[3, 0]], index=[3, 0], impl=impl)  # a subset, no copy
    np.testing.assert_array_equal(sub[1].points, batch[0].points)
    np.testing.assert_array_equal(sub[0].points, batch[3].points)
    assert trace_lines(masks[:0], impl=impl) == []
    with pytest.raises(ValueError, match=r"boxes must have shape \(2, 4\)"):
        trace_lines(masks, boxes, index=[0, 1], impl=impl)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 4\)"):
        trace_lines(masks, index=[4], impl=impl)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        trace_lines(masks[0], impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_smooth_resample_length(impl):
    k = get_kernels(impl)
    p = np.stack([np.arange(11.0), np.zeros(11)], axis=1)
    sm = k.smooth(p, 3)
    np.testing.assert_allclose(sm, p)  # a straight, evenly sampled line is unchanged
    assert k.polyline_length(p) == pytest.approx(10.0)
    r = k.resample(p, 6)
    np.testing.assert_allclose(r[:, 0], [0, 2, 4, 6, 8, 10])
    one = k.resample(p[:1], 5)
    assert one.shape == (5, 2) and (one == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_mean_closest_parallel_lines(impl):
    a = np.stack([np.linspace(0, 50, 50), np.zeros(50)], axis=1)
    b = a + np.array([0.0, 12.5])
    assert mean_closest_distance(a, b, impl=impl) == pytest.approx(12.5)
    # distance is to segments, not vertices: sparse b gives the same answer
    assert mean_closest_distance(a, b[::7], symmetric=False, impl=impl) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="shape"):
        mean_closest_distance(np.zeros((0, 2)), b)
    with pytest.raises(ValueError, match="non-finite"):
        mean_closest_distance(a * np.nan, b)


@pytest.mark.parametrize("impl", IMPLS)
def test_bbox(impl):
    k = get_kernels(impl)
    m = np.zeros((10, 12), bool)
    assert tuple(k.bbox(m)) == (0, 0, 0, 0)
    m[2, 3] = m[6, 9] = True
    assert tuple(k.bbox(m)) == (2, 7, 3, 10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("angle", [0.0, 17.0, 30.0, 45.0, 63.0, 90.0])
def test_trace_line_length_within_2_percent(impl, angle):
    a = math.radians(angle)
    p0 = np.array([30.3, 20.6])
    length = 60.0
    p1 = p0 + length * np.array([math.cos(a), math.sin(a)])
    m = _bar(p0, p1, shape=(96, 128))
    tr = trace_line(m, impl=impl)
    assert tr.length_px == pytest.approx(length, rel=0.02)
    assert tr.points.shape == (50, 2)
    assert tr.pieces == 1
    assert tr.width_px == pytest.approx(6.0, rel=0.1)
    ends = sorted([tuple(tr.points[0]), tuple(tr.points[-1])])
    np.testing.assert_allclose(sorted([tuple(p0), tuple(p1)]), ends, atol=2.0)


def test_trace_line_twins_agree():
    m = _bar((20.2, 30.1), (100.7, 70.4))
    a, b = trace_line(m, impl="python"), trace_line(m, impl="numba")
    assert a.length_px == b.length_px
    np.testing.assert_array_equal(a.points, b.points)


@pytest.mark.parametrize("impl", IMPLS)
def test_trace_line_bad_inputs(impl):
    assert trace_line(np.zeros((20, 20), bool), impl=impl) is None  # empty: no line
    one = np.zeros((20, 20), bool)
    one[10, 10] = True
    tr = trace_line(one, impl=impl)  # single pixel: a line one pixel long
    assert tr.length_px == pytest.approx(1.0)
    assert np.isfinite(tr.points).all()
    full = np.ones((16, 40), bool)  # all foreground: spans the frame's long side
    tr = trace_line(full, impl=impl)
    assert tr.length_px == pytest.approx(39.0, abs=1.5)
    broken = _bar((10, 20), (50, 20), shape=(40, 100)) | _bar((60, 20), (70, 20), shape=(40, 100))
    tr = trace_line(broken, impl=impl)
    assert tr.pieces == 2 and tr.length_px == pytest.approx(40.0, rel=0.03)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        trace_line(np.zeros((2, 3, 4), bool), impl=impl)
    with pytest.raises(ValueError, match="impl"):
        trace_line(one, impl="cuda")


def test_trace_line_box_crop_matches_full_scan():
    m = _bar((20.2, 30.1), (100.7, 70.4))
    ys, xs = np.nonzero(m)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    assert trace_line(m, box=box).length_px == trace_line(m).length_px


def test_curvature_of_a_circle():
    th = np.linspace(0, np.pi, 50)
    pts = np.stack([40 * np.cos(th), 40 * np.sin(th)], axis=1)
    for method in ("gaussian", "spline"):
        k = curvature(pts, method=method)
        assert np.median(k) == pytest.approx(1 / 40, rel=0.05)
    assert (curvature(np.stack([np.arange(50.0), np.zeros(50)], 1)) == 0).all()
    with pytest.raises(ValueError, match="method"):
        curvature(pts, method="bogus")


@pytest.mark.parametrize("major", [10.0, 20.0, 40.0])
def test_fit_loop_axis_within_5_percent(major):
    from types import SimpleNamespace

    from loopline.synth.render import ellipse_polygon

    lp = SimpleNamespace(center=(50.3, 48.7), major=major, minor=major / 1.4, angle=33.0)
    m = _centre_mask(ellipse_polygon(lp), (100, 100))
    f = fit_loop(m)
    assert f.major_px == pytest.approx(major, rel=0.05)
    assert f.minor_px == pytest.approx(major / 1.4, rel=0.07)
    np.testing.assert_allclose(f.center, lp.center, atol=0.3)
    assert f.angle_deg == pytest.approx(33.0, abs=4.0)
    assert fit_loop(np.zeros((10, 10), bool)) is None
    tiny = np.zeros((10, 10), bool)
    tiny[4, 4] = True
    assert fit_loop(tiny).major_px == pytest.approx(2 * math.sqrt(1 / math.pi))


@pytest.mark.parametrize("impl", IMPLS)
def test_group_pileups_orders_from_the_tight_end(impl):
    gaps = [10.0, 12.0, 15.0, 19.0]
    u = np.concatenate([[0.0], -np.cumsum(gaps)])  # leader at u = 0, others behind (-x)
    v = np.linspace(-40, 40, 50)
    pts = np.stack([np.stack([100 + ui + 0 * v, 100 + v], axis=1) for ui in u])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(u))
    g = group_pileups(pts[perm], impl=impl)
    assert (g.line_pileup == 0).all()
    np.testing.assert_allclose(g.glide_dir[0], [1.0, 0.0], atol=1e-9)
    assert g.glide_source == ("spacing",)
    np.testing.assert_array_equal(g.line_rank[np.argsort(perm)], np.arange(5))
    np.testing.assert_allclose(g.pair_spacing_px, gaps)
    # a calibration direction overrides the sign
    gc = group_pileups(pts[perm], glide_dir=(-2.0, 0.0), impl=impl)
    np.testing.assert_array_equal(gc.line_rank[np.argsort(perm)], np.arange(5)[::-1])
    # a line far away and crossed is its own pile-up
    other = np.stack([np.linspace(300, 380, 50), np.full(50, 300.0)], axis=1)[None]
    g2 = group_pileups(np.concatenate([pts, other]), impl=impl)
    assert g2.line_pileup.max() == 1 and g2.glide_source[1] == "normal"
    e = group_pileups(np.zeros((0, 50, 2)), impl=impl)
    assert e.line_pileup.shape == (0,) and e.pair_lines.shape == (0, 2)
    with pytest.raises(ValueError, match="glide_dir"):
        group_pileups(pts, glide_dir=(0.0, 0.0))


def test_glide_displacement_ignores_clipping():
    from loopline.analysis.lines import glide_displacement

    v = np.linspace(-40, 40, 50)
    line = np.stack([0.3 * v, v], axis=1)  # inclined to the glide direction x
    moved = line[10:] + np.array([2.5, 0.0])  # moved by 2.5 px and partly out of view
    assert glide_displacement(line, moved, np.array([1.0, 0.0])) == pytest.approx(2.5)
    centroid_shift = (moved.mean(axis=0) - line.mean(axis=0))[0]
    assert abs(centroid_shift - 2.5) > 0.5  # what the centroid would have said
