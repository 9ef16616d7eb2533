"""Burnt-in annotations (issue 20, item 7): text, scale bars and strips are never detected."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from loopline.engines.base import Detections, Engine
from loopline.engines.burnt_in import (
    annotation_mask,
    check_regions,
    drop_annotated,
    fill_annotations,
)
from loopline.synth.params import load_preset
from loopline.synth.render import render_frame
from loopline.synth.scene import sample_scene

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
OVERLAYS = {"texts": (3, 3), "scale_bar_prob": 1.0, "info_strip_prob": 1.0, "width": 512,
            "height": 512}  # fmt: skip
NOTHING_ELSE = {"pileups": 0, "loops": 0, "stacking_faults": 0, "straight_traces": 0,
                "bend_contours": 0, "boundaries": 0}  # fmt: skip


def _pair(preset: str, seed: int, **over) -> tuple[np.ndarray, np.ndarray]:
    """A frame with the synthetic generator's overlays and the same frame without them."""
    scene = sample_scene(load_preset(preset, {**OVERLAYS, **over}), seed, 0)
    return render_frame(scene).image, render_frame({**scene, "overlays": []}).image


@pytest.mark.parametrize("preset", ["wild", "mixed", "bowing"])
def test_mask_covers_text_bars_and_strips_and_little_else(preset):
    for seed in range(4):
        img, plain = _pair(preset, seed)
        drawn = np.abs(img.astype(int) - plain.astype(int)) > 10
        m = annotation_mask(img)
        assert (m & drawn).sum() >= 0.85 * drawn.sum(), (preset, seed)
        assert annotation_mask(plain).mean() < 0.02, (preset, seed)


def test_same_mask_at_any_bit_depth():
    img, _ = _pair("wild", 2)
    m8 = annotation_mask(img)
    assert m8.any()
    assert (annotation_mask(img.astype(np.uint16) * 257) == m8).all()
    assert (annotation_mask(img.astype(np.float32) / 255.0) == m8).all()


def test_regions_and_switch_off():
    img, _ = _pair("wild", 2)
    assert not annotation_mask(img, detect=False).any()
    m = annotation_mask(img, regions=[(10, 20, 30, 25.5)], detect=False)
    assert m.sum() == 20 * 6 and m[20:26, 10:30].all()
    assert check_regions([[0, 0, 5, 5]]) == ((0.0, 0.0, 5.0, 5.0),)
    for bad in ([[0, 0, 5]], [[5, 0, 1, 5]], "x"):
        with pytest.raises(ValueError, match="ignore_regions must be"):
            check_regions(bad)


def test_fill_and_drop():
    img, _ = _pair("wild", 2)
    m = annotation_mask(img)
    f = fill_annotations(img, m)
    assert f is not img and len(np.unique(f[m])) == 1 and (f[~m] == img[~m]).all()
    masks = np.zeros((2, *img.shape), bool)
    ys, xs = np.nonzero(m)
    masks[0, ys[:50], xs[:50]] = True  # on the annotations
    masks[1, ~m] = True  # everywhere else
    det = Detections(masks, np.array([[0, 0, 512, 512]] * 2, np.float32),
                     np.ones(2, np.float32), np.array([1, 0]))  # fmt: skip
    kept, n = drop_annotated(det, m)
    assert n == 1 and len(kept) == 1 and kept.classes[0] == 0


class _Seeing(Engine):
    """Finds a 'loop' on every patch of 8+ px at the frame's white: text, bars and all."""

    name = "seeing"

    def load(self) -> None:
        self.seen: list[np.ndarray] = []

    def forward(self, frames):
        out = []
        for f in frames:
            self.seen.append(f)
            white = (f == f.max()).astype(np.uint8)
            n, lab = cv2.connectedComponents(white)
            big = [k for k in range(1, n) if (lab == k).sum() >= 8]
            masks = np.stack([lab == k for k in big]) if big else np.zeros((0, *f.shape), bool)
            k = len(masks)
            out.append(Detections(masks, np.tile([0, 0, f.shape[1], f.shape[0]], (k, 1)).astype(
                np.float32), np.ones(k, np.float32), np.ones(k, np.int64)))  # fmt: skip
        return out


def test_every_engine_drops_what_lies_on_annotations():
    img, _ = _pair("wild", 2, **NOTHING_ELSE)
    off = _Seeing(mask_annotations=False)
    assert len(off([img])[0]) > 3  # the white glyphs
    on = _Seeing(mask_annotations=True)
    dets = on([img])[0]
    assert len(dets) == 0 and on.annotation_drops == 0  # filled before the engine saw them
    assert (on.seen[0] != img).any() and "preprocess" in dets.timings_ms
    # an ignore region alone, detection off
    reg = _Seeing(mask_annotations=False, ignore_regions=[(0, 0, 512, 512)])
    assert len(reg([img])[0]) == 0


def test_ridge_finds_fewer_objects_on_annotations():
    from loopline.engines import create_engine

    on, off = create_engine("ridge", mask_annotations=True), create_engine("ridge")
    n_on = n_off = 0
    for seed in range(3):
        img, _ = _pair("wild", seed, **NOTHING_ELSE)
        m = annotation_mask(img)
        d_on, d_off = on([img])[0], off([img])[0]
        n_off += len(d_off)
        n_on += len(d_on)
        # nothing the ridge engine keeps lies mostly on an annotation
        if len(d_on):
            inside = (d_on.masks & m).reshape(len(d_on), -1).sum(1)
            assert (inside <= 0.5 * d_on.masks.reshape(len(d_on), -1).sum(1)).all()
    assert n_on < 0.6 * n_off


@pytest.mark.slow
def test_shipped_model_reports_nothing_on_annotations():
    pytest.importorskip("onnxruntime")
    from loopline.engines import create_engine

    try:
        eng = create_engine("defects", engine="onnx")
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"shipped model not available: {e}")
    for seed in range(3):
        img, _ = _pair("wild", seed, **NOTHING_ELSE)
        m = annotation_mask(img)
        d = eng([img])[0]
        if len(d):
            inside = (d.masks & m).reshape(len(d), -1).sum(1)
            assert (inside <= 0.3 * d.masks.reshape(len(d), -1).sum(1)).all(), seed


def test_real_frames_without_annotations_are_left_alone():
    files = sorted(REAL.glob("creme-loops-512/imgs/*.png"))
    files += sorted(REAL.glob("tanaka-twip-*/original/*.png"))[::4]
    files += sorted(REAL.glob("ruzaeva-pileups/*.jpg"))
    if not files:
        pytest.skip(f"no real frames under {REAL}")
    for f in files:
        g = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        assert annotation_mask(g).mean() < 0.01, f


def test_detection_is_off_by_default_and_leaves_frames_alone():
    """Off by default: on a plain frame with a short straight dark line (no annotation) the
    detector can mark part of the line as a bar; an engine must not hide it unless asked."""
    import cv2

    rng = np.random.default_rng(1)
    img = (rng.random((64, 64)) * 40 + 170).astype(np.uint8)
    cv2.line(img, (9, 6), (19, 58), 40, 3)
    plain = _Seeing()
    assert plain.mask_annotations is False
    plain([img])
    assert (plain.seen[0] == img).all()
