"""Backgrounds of synthetic TEM frames (Govind et al. 2023, section 2.1 and 2.2).

The purely synthetic background follows eqs. (1)-(6) of the paper: two Perlin fields of
wavelengths lambda1 and lambda2 are superimposed, normalised to [0, 1], white noise is added
and smoothed twice, and the result is clipped. A linear brightness gradient and a grey-level
mapping are applied on top, since real frames are rarely evenly lit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["perlin", "render_background"]


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin(
    shape: tuple[int, int], wavelength: float, rng: np.random.Generator
) -> np.ndarray:
    """Two-dimensional gradient (Perlin) noise with one dominant wavelength.

    Parameters
    ----------
    shape : (H, W)
        Output shape in pixels.
    wavelength : float
        Distance between the lattice points of random gradients, px.
    rng : numpy.random.Generator
        Source of the gradient directions.

    Returns
    -------
    (H, W) float32 array, roughly in [-0.7, 0.7], zero at lattice points.
    """
    h, w = shape
    gh = int(np.ceil(h / wavelength)) + 2
    gw = int(np.ceil(w / wavelength)) + 2
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(gh, gw))
    gx, gy = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    # A random sub-cell phase so that lattice points do not sit on the same pixels every time.
    oy, ox = rng.uniform(0.0, 1.0, size=2)
    y = (np.arange(h, dtype=np.float32) / wavelength + oy)[:, None]
    x = (np.arange(w, dtype=np.float32) / wavelength + ox)[None, :]
    y0 = np.floor(y).astype(np.intp)
    x0 = np.floor(x).astype(np.intp)
    fy, fx = y - y0, x - x0

    def corner(dy: int, dx: int) -> np.ndarray:
        iy, ix = y0 + dy, x0 + dx
        return gx[iy, ix] * (fx - dx) + gy[iy, ix] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return (top + v * (bottom - top)).astype(np.float32)


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _perlin_texture(shape: tuple[int, int], bg: dict[str, Any], rng: np.random.Generator):
    """Eqs. (1)-(6) of Govind et al.: the texture P in [0, 1]."""
    p1 = perlin(shape, bg["lambda1"], rng)
    p2 = perlin(shape, bg["lambda2"], rng)
    p3 = p1 + bg["w_perlin"] * p2  # (1)
    p3 = (p3 - p3.min()) / max(float(p3.max() - p3.min()), 1e-12)  # (2)
    p4 = p3 + bg["w_white"] * rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)  # (3)
    p5 = _gauss(p4, bg["s1"])  # (4)
    w2 = bg["r_noise"] * float(p4.std())
    p6 = p5 + w2 * rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)  # (5)
    p7 = _gauss(p6, bg["s2"])  # (6)
    # The paper clips to [0, 1]; white noise pushes the range out, so rescale the central part
    # first (robust percentiles), then clip: this keeps the texture's contrast independent of
    # the noise weights while keeping the clipped high-frequency spikes the paper describes.
    lo, hi = np.percentile(p7, (1.0, 99.0))
    return np.clip((p7 - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0)


def _real_texture(
    shape: tuple[int, int], bg: dict[str, Any], folder: Path | None
) -> np.ndarray:
    """Two real background patches superimposed with an opacity (section 2.2)."""
    if folder is None:
        raise ValueError("this sample uses real background patches: pass --backgrounds DIR")
    out = []
    for patch in bg["patches"]:
        path = folder / patch["file"]
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FileNotFoundError(f"background patch {path} could not be read")
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        img = img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
        img = np.rot90(img, patch["rot90"])
        if patch["flip"]:
            img = img[:, ::-1]
        out.append(cv2.resize(np.ascontiguousarray(img), shape[::-1], interpolation=cv2.INTER_AREA))
    a = bg["opacity"]
    tex = (1.0 - a) * out[0] + a * out[1]
    lo, hi = np.percentile(tex, (1.0, 99.0))
    return np.clip((tex - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0).astype(np.float32)


def render_background(
    shape: tuple[int, int], bg: dict[str, Any], *, backgrounds: Path | None = None
) -> np.ndarray:
    """Render the background described by ``bg`` (a scene's ``background`` entry).

    Returns
    -------
    (H, W) float32 grey image in [0, 1].
    """
    rng = np.random.default_rng(bg["noise_seed"])
    if bg["kind"] == "perlin":
        tex = _perlin_texture(shape, bg, rng)
    elif bg["kind"] == "real":
        tex = _real_texture(shape, bg, backgrounds)
    else:  # pragma: no cover - scenes are produced by sample_scene
        raise ValueError(f"unknown background kind {bg['kind']!r}")
    h, w = shape
    span = bg["bg_high"] - bg["bg_low"]
    mid = 0.5 * (bg["bg_high"] + bg["bg_low"])
    grey = mid + (tex - 0.5) * span * bg["bg_contrast"]
    # Linear brightness gradient across the field (illumination, thickness change).
    ang = np.deg2rad(bg["gradient_angle"])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)) / max(h, w)
    grey = grey + bg["gradient"] * span * ramp
    return np.clip(grey, 0.0, 1.0).astype(np.float32)
