"""Duplicate-line suppression: a line retraced by a worse-scored instance is one dislocation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from loopline.engines import create_engine
from loopline.engines.base import Detections, Engine
from loopline.engines.duplicates import suppress_duplicate_lines

SHAPE = (96, 128)


def _line(y: float, x0: int = 10, x1: int = 118, width: int = 5) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    cv2.line(m, (x0, round(y)), (x1, round(y)), 1, width)
    return m.astype(bool)


def _loop(cx: int, cy: int, r: int = 6) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    cv2.circle(m, (cx, cy), r, 1, -1)
    return m.astype(bool)


def _det(masks, scores, classes) -> Detections:
    masks = np.stack(masks)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return Detections(masks=masks, boxes=np.array(boxes, np.float32),
                      scores=np.array(scores, np.float32), classes=np.array(classes, np.int64))


def test_a_retraced_line_is_dropped_and_the_better_one_kept():
    det = _det([_line(40), _line(41, x0=20, x1=100), _line(48)], [0.6, 0.9, 0.5], [0, 0, 0])
    out = suppress_duplicate_lines(det, tol=2.0)
    # 0.9 (y 41) is kept; 0.6 (y 40, 1 px away) retraces it; 0.5 at y 48 is a neighbour 7 px away
    assert sorted(out.scores.tolist()) == pytest.approx([0.5, 0.9])


def test_neighbours_of_a_dense_pileup_are_all_kept():
    det = _det([_line(20 + 6 * k, width=3) for k in range(8)], [0.9 - 0.05 * k for k in range(8)],
               [0] * 8)  # fmt: skip
    assert len(suppress_duplicate_lines(det, tol=2.0)) == 8


def test_a_short_piece_on_a_long_line_goes_a_long_piece_beside_it_stays():
    long = _line(40)
    piece = _line(40, x0=50, x1=70)
    crossing = np.zeros(SHAPE, np.uint8)
    cv2.line(crossing, (60, 5), (60, 90), 1, 3)
    det = _det([long, piece, crossing.astype(bool)], [0.9, 0.8, 0.7], [0, 0, 0])
    out = suppress_duplicate_lines(det, tol=2.0)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])  # a crossing line shares one spot


def test_merge_keeps_what_only_the_duplicate_covered():
    det = _det([_line(40, x0=10, x1=90), _line(41, x0=30, x1=118)], [0.9, 0.8], [0, 0])
    out = suppress_duplicate_lines(det, tol=2.0, cover=0.5, merge=True)
    assert len(out) == 1
    assert out.masks[0, 41, 110] and out.boxes[0, 2] >= 118


def test_loops_are_left_alone():
    det = _det([_loop(30, 30), _loop(31, 30)], [0.9, 0.8], [1, 1])
    assert len(suppress_duplicate_lines(det)) == 2


@pytest.mark.parametrize("kw, msg", [({"tol": 0}, "tol must be > 0"),
                                     ({"cover": 1.5}, "cover must lie in")])  # fmt: skip
def test_bad_options(kw, msg):
    det = _det([_line(40), _line(60)], [0.9, 0.8], [0, 0])
    with pytest.raises(ValueError, match=msg):
        suppress_duplicate_lines(det, **kw)


class _Fixed(Engine):
    """An engine whose network always sees a line and its retrace."""

    def load(self) -> None:
        pass

    def forward(self, frames):
        return [_det([_line(40), _line(41)], [0.8, 0.9], [0, 0]) for _ in frames]


def test_engines_apply_it_when_asked():
    with pytest.raises(ValueError, match="line_dedupe must be a distance"):
        create_engine("ridge", line_dedupe=-1.0)
    frame = np.zeros(SHAPE, np.uint8)
    assert len(_Fixed()([frame])[0]) == 2
    out = _Fixed(line_dedupe=2.0)([frame, frame])
    assert [d.scores.tolist() for d in out] == [pytest.approx([0.9])] * 2


def test_a_mask_merging_two_lines_keeps_the_part_on_its_own_line():
    # B runs on A's line for 70 px, then on a line of its own for 60 px: the network merged
    # two dislocations into one mask. Dropping it would lose the second line.
    a = _line(40)
    b = np.zeros(SHAPE, np.uint8)
    cv2.polylines(b, [np.array([[10, 40], [80, 40], [110, 92]], np.int32)], False, 1, 5)
    det = _det([a, b.astype(bool)], [0.9, 0.5], [0, 0])
    assert len(suppress_duplicate_lines(det, tol=2.0, keep_rest=0)) == 1
    out = suppress_duplicate_lines(det, tol=2.0)  # keep_rest 40 px by default
    assert len(out) == 2
    rest = out.masks[1]
    ys, _ = np.nonzero(rest)
    assert ys.min() > 42 and rest.sum() > 150  # only the part off A's line
    assert out.boxes[1][1] >= 42 and (out.masks[0] == a).all()
