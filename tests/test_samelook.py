"""Same-look frames for `loopline adapt`: loops cut from labelled frames, pasted elsewhere."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from loopline.datasets.layout import read_labels, write_image, write_yolo_labels
from loopline.evaluation.data import read_image
from loopline.training.samelook import MIN_LOOP_PX, read_source, same_look_frames

NOISE = 6.0  # grey levels, the camera noise of the test frames
DARK = 60.0  # how much darker a loop is than the background


def _ellipse(cx: float, cy: float, a: float, b: float, ang: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    c, s = np.cos(np.deg2rad(ang)), np.sin(np.deg2rad(ang))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _frame(rng, loops, size=160, dtype=np.uint8):
    """A noisy grey field with a slow gradient and dark blurred loops (the outlines given)."""
    xx = np.mgrid[0:size, 0:size][1]
    f = 150.0 + 20.0 * xx / size
    dark = np.zeros((size, size), np.float32)
    for p in loops:
        cv2.fillPoly(dark, [np.round(p).astype(np.int32)], 1.0)
    f = f - DARK * cv2.GaussianBlur(dark, (0, 0), 1.0) + rng.normal(0, NOISE, f.shape)
    scale = 257.0 if dtype == np.uint16 else 1.0
    return np.clip(f * scale, 0, np.iinfo(dtype).max).astype(dtype)


def _write(root, name, img, instances):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    write_image(root / "images" / f"{name}.png", img)
    h, w = img.shape
    write_yolo_labels(root / "labels" / f"{name}.txt", instances, w, h)
    return root / "images" / f"{name}.png"


LOOPS = [_ellipse(40, 40, 10, 6, 20), _ellipse(110, 50, 6, 4, 70), _ellipse(60, 120, 14, 9, 0),
         _ellipse(120, 115, 8, 8, 0)]  # fmt: skip


def test_a_frame_taken_apart_keeps_its_noise_and_loses_its_loops():
    rng = np.random.default_rng(0)
    img = _frame(rng, LOOPS)
    src = read_source(img, LOOPS, np.random.default_rng(1))
    assert src.background.shape == img.shape and src.dtype == np.uint8
    assert len(src.sprites) == len(LOOPS)
    field = np.ones(img.shape, bool)
    for p in LOOPS:
        inside = np.zeros(img.shape, np.uint8)
        cv2.fillPoly(inside, [np.round(p).astype(np.int32)], 1)
        inside = inside.astype(bool)
        field &= ~cv2.dilate(inside.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
        near = cv2.dilate(inside.astype(np.uint8), np.ones((21, 21), np.uint8)).astype(bool)
        ring = near & ~cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        # the loop is gone: its place is as bright as the field around it, within the noise
        assert abs(src.background[inside].mean() - img[ring].mean()) < 8.0
        assert img[inside].mean() < img[ring].mean() - DARK / 2  # it was there
        # and its place is as noisy as the frame (not a smooth inpainted hole)
        hp = src.background - cv2.GaussianBlur(src.background, (0, 0), 2.0)
        assert 0.6 * NOISE < hp[inside].std() < 1.6 * NOISE
    # the rest of the frame (beyond the loops' halos) is untouched
    assert np.array_equal(src.background[field], img[field].astype(np.float32))
    # each sprite carries the loop's darkness where its outline is
    for sp in src.sprites:
        m = np.zeros(sp.delta.shape, np.uint8)
        cv2.fillPoly(m, [np.round(sp.outline).astype(np.int32)], 1)
        assert sp.delta[m > 0].mean() < -DARK / 2
        assert sp.alpha[m > 0].min() > 0.9 and sp.alpha.max() <= 1.0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_same_look_frames_hold_dark_loops_where_their_labels_are(tmp_path, dtype):
    rng = np.random.default_rng(3)
    root = tmp_path / "data"
    frames = [_write(root, f"{i}", _frame(rng, LOOPS, dtype=dtype), [(1, p) for p in LOOPS])
              for i in range(2)]  # fmt: skip
    # a frame with a dislocation cannot be taken apart: not used
    line = np.array([[10, 10], [150, 14], [150, 18], [10, 14]], float)
    frames.append(_write(root, "lines", _frame(rng, LOOPS, dtype=dtype),
                         [(1, p) for p in LOOPS] + [(0, line)]))  # fmt: skip
    made = same_look_frames(frames, 6, tmp_path / "out", seed=5)
    assert [p.name for p in made] == [f"same-look-{i:04d}.png" for i in range(6)]
    n_loops = []
    for p in made:
        img = read_image(p)
        assert img.dtype == dtype and img.shape == (160, 160)
        f = img.astype(np.float32) / (257.0 if dtype == np.uint16 else 1.0)
        pairs = read_labels(tmp_path / "out" / "labels" / f"{p.stem}.txt", 160, 160)[0]
        assert pairs and all(c == 1 for c, _ in pairs)
        n_loops.append(len(pairs))
        taken = np.zeros((160, 160), np.uint8)
        for _, poly in pairs:
            ext = np.max(poly.max(axis=0) - poly.min(axis=0))
            assert ext >= MIN_LOOP_PX - 0.5
            m = np.zeros((160, 160), np.uint8)
            cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1)
            assert not np.any(m & taken), "two pasted loops overlap"
            taken |= m
            ring = (cv2.dilate(m, np.ones((15, 15), np.uint8)) > 0) & (
                cv2.dilate(m, np.ones((7, 7), np.uint8)) == 0)
            if ring.any() and m.sum() >= 12:  # a labelled place is darker than around it
                assert f[m > 0].mean() < f[ring].mean() - DARK / 4, p.name
    assert np.mean(n_loops) >= 0.75 * len(LOOPS)  # about as many as the labelled frames
    # the same seed makes the same frames
    again = same_look_frames(frames, 2, tmp_path / "again", seed=5)
    assert np.array_equal(read_image(again[1]), read_image(made[1]))


def test_no_frame_of_loops_only_makes_nothing(tmp_path, caplog):
    rng = np.random.default_rng(4)
    line = np.array([[10, 10], [150, 14], [150, 18], [10, 14]], float)
    f = _write(tmp_path / "d", "a", _frame(rng, []), [(0, line)])
    assert same_look_frames([f], 3, tmp_path / "out") == []
    assert "no same-look frames" in caplog.text
