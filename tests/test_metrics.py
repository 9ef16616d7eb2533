"""Metrics on hand-made masks whose answers are worked out on paper in the comments."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from loopline.evaluation import metrics as M

SHAPE = (16, 48)


def bar(r0: int, r1: int, c0: int, c1: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A filled rectangle rows r0:r1, cols c0:c1; its Lee skeleton runs its full length."""
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def stack(*masks: np.ndarray) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, *SHAPE), bool)


# --- overlaps and skeletons -------------------------------------------------------------------


def test_mask_and_box_iou():
    a = stack(bar(0, 2, 0, 4))  # 8 px
    b = stack(bar(0, 2, 2, 6), bar(10, 12, 0, 4))  # 4 px overlap with a; disjoint
    np.testing.assert_allclose(M.mask_iou(a, b), [[4 / 12, 0.0]])
    boxes = np.array([[0, 0, 4, 2]])
    np.testing.assert_allclose(M.box_iou(boxes, np.array([[2, 0, 6, 2], [0, 0, 4, 2]])),
                               [[4 / 12, 1.0]])  # fmt: skip
    assert M.mask_iou(a, stack()).shape == (1, 0)


def test_mask_iou_rejects_mismatched_frames():
    with pytest.raises(ValueError, match=r"frames of shape \(16, 48\), got \(8, 8\)"):
        M.mask_iou(stack(bar(0, 2, 0, 4)), np.zeros((1, 8, 8), bool))


def test_skeleton_lengths_of_bars():
    assert M.skeleton_length(bar(3, 6, 2, 22)) == 20  # a 3 x 20 bar: 20 px
    fractured = bar(3, 6, 2, 12) | bar(3, 6, 14, 22)  # pieces of 10 and 8 px
    assert M.skeleton_length(fractured) == 18
    assert M.longest_skeleton_length(fractured) == 10


def test_skeleton_polyline_orders_an_l_shaped_line():
    m = np.zeros((20, 20), bool)
    m[2, 2:15] = True
    m[2:18, 14] = True
    p = M.skeleton_polyline(m)
    ends = {tuple(p[0]), tuple(p[-1])}
    assert ends == {(2.0, 2.0), (14.0, 17.0)}
    assert np.all(np.hypot(*np.diff(p, axis=0).T) <= np.sqrt(2) + 1e-9)  # a connected chain


# --- LAR (Ruzaeva et al. Algorithm 1) -----------------------------------------------------------


def test_lar_perfect_prediction_is_one():
    gt = stack(bar(1, 4, 2, 30), bar(8, 11, 5, 40))
    r = M.lar(gt, gt.copy())
    assert r.value == 1.0
    assert r.matches.tolist() == [0, 1]


def test_lar_short_prediction_and_missed_line():
    # gt A: 3 x 16 (skeleton 16); gt B: 3 x 20 (skeleton 20), not predicted.
    # pred A': 3 x 12 inside A: IoU 36/48 = 0.75 >= 0.5; LAR_A = 1 - |16 - 12| / 16 = 0.75.
    # LAR = mean(0.75, 0) = 0.375.
    gt = stack(bar(1, 4, 2, 18), bar(9, 12, 2, 22))
    pred = stack(bar(1, 4, 2, 14))
    r = M.lar(gt, pred)
    np.testing.assert_allclose(r.scores, [0.75, 0.0])
    assert r.value == pytest.approx(0.375)
    assert r.matches.tolist() == [0, -1]


def test_lar_fractured_prediction_uses_longest_piece():
    # gt: 3 x 20 (skeleton 20). pred: the same bar with a 2-column gap -> pieces 10 and 8 px.
    # IoU = 54 / 60 = 0.9; longest piece 10 -> LAR = 1 - |20 - 10| / 20 = 0.5.
    gt = stack(bar(3, 6, 2, 22))
    pred = stack(bar(3, 6, 2, 12) | bar(3, 6, 14, 22))
    assert M.lar(gt, pred).value == pytest.approx(0.5)


@pytest.mark.parametrize(("c1", "expected"), [(9, 0.0), (10, 0.5)])
def test_lar_iou_threshold_is_inclusive(c1, expected):
    # gt 3 x 16; pred 3 x (c1 - 2): IoU 7/16 = 0.4375 -> unmatched; 8/16 = 0.5 -> matched,
    # LAR = 1 - |16 - 8| / 16 = 0.5.
    gt = stack(bar(3, 6, 2, 18))
    assert M.lar(gt, stack(bar(3, 6, 2, c1))).value == pytest.approx(expected)


def test_lar_deletes_best_prediction_even_when_unmatched():
    # gt1 = cols 0:10 (30 px), gt2 = cols 6:26 (60 px, skeleton 20), pred = cols 6:18 (36 px,
    # skeleton 12). IoU(pred, gt1) = 12 / 54 = 0.22: gt1's best, below t -> LAR_1 = 0, and
    # Algorithm 1 deletes the prediction anyway (the "Delete" step follows the if), so gt2 finds
    # nothing: LAR = 0. Deleting only matched predictions lets gt2 match (IoU 36/60 = 0.6):
    # LAR_2 = 1 - |20 - 12| / 20 = 0.6, LAR = 0.3.
    gt = stack(bar(3, 6, 0, 10), bar(3, 6, 6, 26))
    pred = stack(bar(3, 6, 6, 18))
    assert M.lar(gt, pred).value == 0.0
    assert M.lar(gt, pred, remove_unmatched=False).value == pytest.approx(0.3)


def test_lar_greedy_in_ground_truth_order():
    # One prediction equal to gt0 overlapping gt1 too: gt0 takes it first, gt1 gets 0.
    g0, g1 = bar(3, 6, 2, 22), bar(3, 6, 2, 20)
    r = M.lar(stack(g0, g1), stack(g0))
    np.testing.assert_allclose(r.scores, [1.0, 0.0])


def test_lar_empty_inputs_and_validation():
    assert M.lar(stack(bar(1, 4, 2, 18)), stack()).value == 0.0
    assert np.isnan(M.lar(stack(), stack(bar(1, 4, 2, 18))).value)
    with pytest.raises(ValueError, match=r"must not hold empty masks, got empty ones at \[1\]"):
        M.lar(stack(bar(1, 4, 2, 18), np.zeros(SHAPE, bool)), stack())
    with pytest.raises(ValueError, match="iou_threshold must lie in"):
        M.lar(stack(bar(1, 4, 2, 18)), stack(), iou_threshold=0.0)


# --- tolerance metrics ------------------------------------------------------------------------


def test_lar_tol_matches_a_thin_stroke_that_mask_iou_misses():
    # gt: 1 px stroke row 10, cols 5:45 (40 px). pred: 3 px band rows 11:14, centred on row 12
    # (2 px off), same columns; no pixel overlap, so LAR = 0, but the skeletons lie within 3 px
    # and are equally long: LAR@3 = 1.
    shape = (24, 50)
    gt = stack(bar(10, 11, 5, 45, shape))
    pred = stack(bar(11, 14, 5, 45, shape))
    assert M.lar(gt, pred).value == 0.0
    assert M.lar_tol(gt, pred, tol=3).value == 1.0
    # 5 px off is beyond a 3 px tolerance: no match.
    assert M.lar_tol(gt, stack(bar(14, 17, 5, 45, shape)), tol=3).value == 0.0


def test_lar_tol_half_length_prediction():
    # pred skeleton: row 12, cols 5:25 (20 px), 2 px from the 40 px gt stroke. Overlap: every
    # pred pixel is within 3 px (p = 1); gt pixels within 3 px: cols 5..26 (sqrt(4 + 4) < 3 <
    # sqrt(4 + 9)), 22 of 40 (r = 0.55); F1 = 1.1 / 1.55 = 0.71 >= 0.5 -> matched.
    # LAR@3 = 1 - |40 - 20| / 40 = 0.5.
    shape = (24, 50)
    gt = stack(bar(10, 11, 5, 45, shape))
    pred = stack(bar(11, 14, 5, 25, shape))
    assert M.lar_tol(gt, pred, tol=3).value == pytest.approx(0.5)


def test_line_f1_tol_counts_skeleton_pixels():
    gt = np.zeros((20, 20), bool)
    gt[5, 2:18] = True  # 16 px
    pred = np.zeros((20, 20), bool)
    pred[7, 2:8] = True  # 6 px, 2 px off: all within 3 px; covers gt cols 2..9 (8 px)
    pred[15, 2:6] = True  # 4 px, 10 px off: false positives
    r = M.line_f1_tol(gt, pred, tol=3)
    assert (r.tp_pred, r.n_pred, r.tp_gt, r.n_gt) == (6, 10, 8, 16)
    assert r.precision == pytest.approx(0.6)
    assert r.recall == pytest.approx(0.5)
    assert r.f1 == pytest.approx(2 * 0.6 * 0.5 / 1.1)
    pooled = M.LineF1.pool([r, M.line_f1_tol(gt, gt)])
    assert (pooled.tp_gt, pooled.n_gt) == (24, 32)


def test_line_f1_tol_empty_cases():
    gt = np.zeros((10, 10), bool)
    gt[5, 1:9] = True
    none = np.zeros((10, 10), bool)
    assert M.line_f1_tol(gt, none).f1 == 0.0
    assert M.line_f1_tol(none, gt).f1 == 0.0
    assert np.isnan(M.line_f1_tol(none, none).f1)


# --- loops ----------------------------------------------------------------------------------


def test_greedy_match_takes_highest_iou_in_whole_matrix():
    # gt0's best is pred0 (0.3) but pred0's best overall is gt1 (0.6): assigned first, then
    # gt0 takes pred1 (0.2). Per-row greedy would have given gt0 pred0 and left gt1 unmatched.
    iou = np.array([[0.3, 0.2], [0.6, 0.0]])
    assert M.greedy_match(iou, 0.15) == [(1, 0), (0, 1)]
    assert M.greedy_match(iou, 0.25) == [(1, 0)]


def test_loop_f1_at_cut_off():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    pred = np.array([
        [2, 2, 12, 12],  # IoU 64 / 136 = 0.47 with gt0
        [20, 20, 30, 30],  # exact gt1
        [100, 100, 110, 110],  # false positive
    ])  # fmt: skip
    c = M.loop_f1(gt, pred)
    assert (c.tp, c.fp, c.fn) == (2, 1, 1)
    assert c.f1 == pytest.approx(4 / 6)
    # IoU exactly at the cut-off counts: boxes of area 100 sharing 26 px^2 -> 26 / 174 < 0.15;
    # sharing 30 -> 30 / 170 = 0.176 >= 0.15.
    assert M.loop_f1(np.array([[0, 0, 10, 10]]), np.array([[7, 0, 17, 10]])).tp == 1
    assert M.loop_f1(np.array([[0, 0, 10, 10]]), np.array([[8, 0, 18, 10]])).tp == 0


def test_relative_error_and_foreground():
    assert M.relative_error(110, 100) == pytest.approx(0.1)
    assert np.isnan(M.relative_error(3, 0))
    m = stack(bar(0, 4, 0, 12), bar(2, 6, 0, 12))  # union 6 x 12 = 72 of 16 x 48 = 768
    assert M.foreground_fraction(m) == pytest.approx(72 / 768)


def test_ellipse_diameters_of_drawn_ellipses():
    img = np.zeros((100, 100), np.uint8)
    # Semi-axes 20 and 10 about a pixel centre: 41 and 21 px across, mean 31.
    cv2.ellipse(img, (50, 50), (20, 10), 30, 0, 360, 1, -1)
    disk = np.zeros((100, 100), np.uint8)
    cv2.circle(disk, (30, 30), 8, 1, -1)  # 197 px: the disk of equal area is 15.8 px across
    d = M.ellipse_diameters(np.stack([img, disk]).astype(bool))
    assert d[0] == pytest.approx(31.0, abs=0.7)
    assert d[1] == pytest.approx(15.84, abs=0.5)


# --- spacing --------------------------------------------------------------------------------


def test_pileup_spacing_of_straight_lines():
    lines = [np.array([[0.0, y], [100.0, y]]) for y in (0, 10, 30)]
    assert M.pileup_spacing(lines) == pytest.approx(40 / 3)  # nearest: 10, 10, 20
    # Direction and sampling of a line do not matter.
    lines[1] = np.array([[100.0, 10.0], [50.0, 10.0], [0.0, 10.0]])
    assert M.pileup_spacing(lines) == pytest.approx(40 / 3)
    assert np.isnan(M.pileup_spacing(lines[:1]))


def test_pileup_spacing_of_tilted_lines_is_the_normal_distance():
    d = np.array([np.cos(0.5), np.sin(0.5)])
    n = np.array([-d[1], d[0]])
    lines = [np.stack([k * 12 * n, k * 12 * n + 80 * d]) for k in range(4)]
    # Mean closest distance from the 50 points: the normal distance 12 except where a point
    # lies beyond the neighbour's end; these lines are aligned, so exactly 12.
    assert M.pileup_spacing(lines) == pytest.approx(12.0, abs=1e-6)
    assert M.line_distances(lines[:1], lines[1:]).round(6).tolist() == [[12.0, 24.0, 36.0]]


# --- average precision ------------------------------------------------------------------------


def test_match_detections_and_average_precision():
    # Two gt boxes; detections by score: hit (0.9), duplicate of the same gt (0.8), hit (0.7).
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    det = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 31]])
    scores = np.array([0.9, 0.8, 0.7])
    tp = M.match_detections(M.box_iou(gt, det), scores)
    assert tp[:, 0].tolist() == [True, False, True]  # at IoU 0.5
    # gt1 vs det2: IoU 100 / 110 = 0.909: a hit at 0.5 .. 0.9, a miss at 0.95.
    assert tp[2].tolist() == [True] * 9 + [False]
    ap = M.average_precision(tp, scores, n_gt=2)
    # Precision 1 up to recall 0.5 (51 of the 101 recall points), 2/3 above (50 points).
    assert ap[0] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert ap[-1] == pytest.approx(51 / 101)
    assert np.isnan(M.average_precision(tp, scores, n_gt=0)).all()
    assert M.average_precision(np.zeros((0, 10), bool), np.zeros(0), n_gt=3).tolist() == [0] * 10


def test_perfect_detections_give_ap_one():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    tp = M.match_detections(M.box_iou(gt, gt), np.array([0.5, 0.6]))
    assert M.average_precision(tp, np.array([0.5, 0.6]), 2).tolist() == [1.0] * 10


# --- distractors and loop sizes ----------------------------------------------------------------


def test_distractor_hits_off_and_on_a_trace():
    shape = (40, 60)
    trace = bar(18, 21, 0, 60, shape)  # a 3 px slip trace across the frame, rows 18-20
    on = stack(bar(17, 22, 5, 55, shape))  # a 5 px wide predicted line lying on it
    off = stack(bar(4, 8, 5, 55, shape), bar(30, 34, 10, 40, shape))  # 10+ px away
    assert M.distractor_hits(off, trace).on == 0
    assert M.distractor_hits(off, trace).share == 0.0
    assert M.distractor_hits(on, trace).share == 1.0
    both = M.distractor_hits(np.concatenate([on, off]), trace)
    n_on = M.skeleton_length(on[0])
    assert (both.on, both.total) == (n_on, n_on + sum(M.skeleton_length(m) for m in off))


def test_distractor_hits_tolerance_counts_and_pooling():
    shape = (20, 30)
    trace = bar(10, 11, 0, 30, shape)  # row 10
    line = stack(bar(12, 13, 0, 30, shape))  # row 12: 2 px from the trace
    assert M.distractor_hits(line, trace, tol=2.0).share == 1.0
    assert M.distractor_hits(line, trace, tol=1.9).share == 0.0
    # An overlapping duplicate instance adds no pixels: skeleton pixels count once.
    assert M.distractor_hits(np.concatenate([line, line]), trace) == M.distractor_hits(line, trace)
    assert M.distractor_hits(stack(), np.zeros(SHAPE, bool)) == M.DistractorHits(0, 0)
    assert np.isnan(M.DistractorHits(0, 0).share)
    assert M.DistractorHits(1, 4) + M.DistractorHits(2, 6) == M.DistractorHits(3, 10)
    with pytest.raises(ValueError, match=r"must have shape \(H, W\), got \(1, 20, 30\)"):
        M.distractor_hits(line, trace[None])


def test_recall_by_size_bins():
    assert M.size_bin_names() == ["<8", "8-14", "14-24", "24-40", ">=40"]
    d = np.array([3.0, 7.99, 8.0, 13.0, 14.0, 23.9, 24.0, 39.0, 40.0, 90.0, np.nan])
    found = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1], bool)
    hit, total = M.recall_by_size(d, found)
    np.testing.assert_array_equal(total, [2, 2, 2, 2, 2])  # lower edges belong to the upper bin
    np.testing.assert_array_equal(hit, [1, 2, 0, 2, 1])  # the NaN one is left out
    hit, total = M.recall_by_size(np.zeros(0), np.zeros(0, bool))
    assert total.tolist() == [0] * 5
    with pytest.raises(ValueError, match=r"found must have shape \(2,\) like .* got \(3,\)"):
        M.recall_by_size(np.ones(2), np.ones(3, bool))
    with pytest.raises(ValueError, match="edges must be a strictly increasing"):
        M.recall_by_size(np.ones(2), np.ones(2, bool), edges=(10, 5))


def test_equivalent_diameters_of_discs():
    masks = np.zeros((3, 64, 64), np.uint8)
    for k, r in enumerate((3, 10, 20)):
        cv2.circle(masks[k], (32, 32), r, 1, -1)
    d = M.equivalent_diameters(masks.astype(bool))
    np.testing.assert_allclose(d, [6.0, 20.0, 40.0], rtol=0.02)  # area about pi r^2
    assert np.isnan(M.equivalent_diameters(np.zeros((1, 8, 8), bool))[0])
