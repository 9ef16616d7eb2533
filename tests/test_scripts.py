"""The analysis scripts under scripts/ (run as files, not installed)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_loop_cnr_follows_contrast_area_and_noise():
    cnr = _load("loop_visibility").loop_cnr
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 4.0, (96, 96)).astype(np.float32)
    masks = np.stack([_disc((96, 96), 24, 24, 8), _disc((96, 96), 24, 70, 8),
                      _disc((96, 96), 70, 24, 4)])  # fmt: skip
    img = 128.0 + noise
    img[masks[0]] -= 20.0
    img[masks[1]] -= 5.0
    img[masks[2]] -= 20.0
    c = cnr(img, masks)
    assert c[0] > 3 * c[1] > 0  # four times the darkening, same area and noise
    assert c[0] > c[2] > 0  # same darkening, smaller loop
    darkening = img - 128.0 - noise
    noisier = cnr(128.0 + 2 * noise + darkening, masks)  # twice the noise: half the CNR
    assert noisier[0] == pytest.approx(c[0] / 2, rel=0.15)


def test_loop_cnr_is_nan_without_a_background_ring():
    cnr = _load("loop_visibility").loop_cnr
    img = np.full((20, 20), 100.0, np.float32)
    inner = _disc((20, 20), 10, 10, 3)
    around = ~inner  # a loop label that covers the whole rest of the frame
    c = cnr(img, np.stack([inner, around]))
    assert np.isnan(c).all()
