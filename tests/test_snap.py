"""Full-resolution line geometry: centre lines move onto the valleys of the frame, so that
duplicates in a dense pile-up coincide and one suppression removes them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.morphology import skeletonize

from loopline.engines import create_engine
from loopline.engines.duplicates import suppress_duplicate_lines
from loopline.engines.snap import centre_path, snap_lines
from tests.test_duplicates import SHAPE, _det, _line, _loop


def _frame(rows: list[float], *, bright: bool = False, seed: int = 0) -> np.ndarray:
    """Grey 128 with 2 px lines along the given rows (dark, or bright) and camera noise."""
    img = np.full(SHAPE, 128.0, np.float32)
    for y in rows:
        cv2.line(img, (4, round(y)), (124, round(y)), 200.0 if bright else 60.0, 2)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    img += np.random.default_rng(seed).normal(0.0, 6.0, SHAPE).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _rows(det, i: int) -> np.ndarray:
    """Rows of the skeleton of instance ``i`` away from its ends."""
    ys, xs = np.nonzero(skeletonize(det.masks[i]))
    return ys[(xs > 30) & (xs < 100)]


@pytest.mark.parametrize("bright", [False, True])
def test_masks_between_and_beside_lines_move_onto_them(bright):
    # Two lines 9 px apart; the network put one mask between them (its centre 4 px off both),
    # one 2 px beside the first line and one on the second.
    frame = _frame([40, 49], bright=bright)
    det = _det([_line(43, width=9), _line(38), _line(49)], [0.9, 0.8, 0.7], [0, 0, 0])
    out = snap_lines(frame, det, search=5.0)
    for i in range(3):
        rows = _rows(out, i)
        assert rows.size > 40
        assert min(np.abs(rows - 40).max(), np.abs(rows - 49).max()) <= 1, (i, set(rows))
    assert np.abs(_rows(out, 1) - 40).max() <= 1 and np.abs(_rows(out, 2) - 49).max() <= 1
    # Now the duplicate retraces its line, and one suppression leaves one instance per line.
    kept = suppress_duplicate_lines(out, tol=1.5)
    assert len(kept) == 2
    found = sorted(round(float(np.median(_rows(kept, i)))) for i in range(2))
    assert abs(found[0] - 40) <= 1 and abs(found[1] - 49) <= 1
    # Without snapping the between-lines mask is a third "dislocation".
    assert len(suppress_duplicate_lines(det, tol=1.5)) == 3


def test_loops_and_low_scores_are_left_alone():
    frame = _frame([40])
    det = _det([_line(44), _loop(60, 70), _line(44, x0=20)], [0.9, 0.9, 0.1], [0, 1, 0])
    out = snap_lines(frame, det, search=5.0, min_score=0.25)
    assert np.abs(_rows(out, 0) - 40).max() <= 1
    assert (out.masks[1] == det.masks[1]).all() and (out.masks[2] == det.masks[2]).all()
    assert out.scores.tolist() == det.scores.tolist()
    assert (out.boxes[0] != det.boxes[0]).any()  # the moved line's box follows it


def test_branched_masks_are_left_as_they_are():
    # Two lines crossing in one mask: its centre line is one of them only in part.
    frame = _frame([40])
    m = _line(44)
    cv2.line(m.view(np.uint8), (64, 10), (64, 90), 1, 5)
    det = _det([m], [0.9], [0])
    out = snap_lines(frame, det, search=5.0)
    assert (out.masks[0] == det.masks[0]).all()


def test_a_line_moves_no_further_than_search():
    frame = _frame([30])
    det = _det([_line(42)], [0.9], [0])
    out = snap_lines(frame, det, search=4.0)
    assert np.abs(_rows(out, 0) - 42).max() <= 4.5


def test_centre_path_is_the_ordered_longest_path():
    m = np.zeros((60, 80), np.uint8)
    cv2.line(m, (5, 30), (75, 30), 1, 5)
    cv2.line(m, (40, 30), (40, 50), 1, 3)  # a side branch
    cv2.circle(m, (10, 8), 3, 1, -1)  # a smaller piece
    p = centre_path(m.astype(bool))
    step = np.hypot(*np.diff(p, axis=0).T)
    assert step.max() <= np.sqrt(2) + 1e-9  # neighbours in order, no jumps
    assert np.abs(p[:, 1] - 30).max() <= 1 and np.ptp(p[:, 0]) >= 60
    assert centre_path(np.zeros((5, 5), bool)).shape == (0, 2)


def test_engine_option_is_checked_and_applied():
    with pytest.raises(ValueError, match="line_snap must be a distance"):
        create_engine("ridge", line_snap=-1.0)
    eng = create_engine("ridge", line_snap=4.0, line_dedupe=1.5)
    assert eng.line_snap == 4.0
    frame = _frame([40, 49])
    dets = eng([frame])
    assert all(d.shape == SHAPE for d in dets)
