"""Frames of the same look as a few labelled ones, made from them, for ``loopline adapt``.

Four labelled frames hold a few dozen loops, and few small ones: the misses of a model adapted
on them. :func:`same_look_frames` makes more frames out of the labelled ones themselves:

1. each labelled loop is cut out as a *contrast*: the frame minus a smooth estimate of the
   background under it (the frame with every loop inpainted, then smoothed), over the loop and
   a halo around it (the strain contrast a bright-field loop carries), lightly smoothed so
   that it brings no second layer of camera noise;
2. each frame's loops are removed: inpainted, and the camera noise put back (the frame's own
   high-pass residual, taken from elsewhere in the frame);
3. a new frame is one of those backgrounds, turned and flipped, with loops pasted at new
   places, each turned, flipped, rescaled (down to :data:`MIN_LOOP_PX`, so that small loops
   are well represented) and its contrast changed by up to +-15 %, never touching another.

The labels are the pasted outlines, exactly. Only loops (class 1) are pasted, and only frames
whose every label is a loop serve as backgrounds: a dislocation runs across the frame and
cannot be cut out or painted over. A frame is (H, W) grey, 8 or 16 bits; the new frames keep
the type and size of the frame they were made from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["MIN_LOOP_PX", "LoopSprite", "Source", "compose", "read_source", "same_look_frames"]

#: the smallest loop (px, the outline's larger extent) a rescaled paste may have
MIN_LOOP_PX = 5.0
#: rescaling of a pasted loop: log-uniform between these (clipped at MIN_LOOP_PX)
SCALE_RANGE = (0.45, 1.3)
#: change of a pasted loop's contrast: uniform factor within 1 +- this
CONTRAST_JITTER = 0.15
#: the halo cut out with a loop, as a fraction of its size (at least 3 px)
HALO = 0.4
#: loops per new frame: the labelled frames' mean times a uniform factor in this range
COUNT_RANGE = (0.75, 1.75)
#: least gap between pasted loops (px)
GAP_PX = 2.0


@dataclass(frozen=True)
class LoopSprite:
    """One labelled loop as a contrast patch: ``delta`` (h, w) float32, the frame minus its
    background; ``alpha`` (h, w) float32 in [0, 1], where it applies; ``outline`` (K, 2) px
    in the patch's coordinates."""

    delta: np.ndarray
    alpha: np.ndarray
    outline: np.ndarray


@dataclass(frozen=True)
class Source:
    """A labelled frame taken apart: its ``background`` (float32, loops removed, noise kept)
    and its ``sprites``; ``dtype`` and ``top`` (the largest grey value) of the frame."""

    background: np.ndarray
    sprites: tuple[LoopSprite, ...]
    dtype: np.dtype
    top: float


def _loop_mask(
    shape: tuple[int, int], polys: Sequence[np.ndarray], grow: Sequence[int]
) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for poly, g in zip(polys, grow, strict=True):
        one = np.zeros(shape, np.uint8)
        cv2.fillPoly(one, [np.round(poly).astype(np.int32)], 1)
        if g > 0:
            one = cv2.dilate(one, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1,) * 2))
        m |= one
    return m


def _halo(poly: np.ndarray) -> int:
    ext = float(np.max(poly.max(axis=0) - poly.min(axis=0)))
    return max(3, round(HALO * ext))


def read_source(image: np.ndarray, loops: Sequence[np.ndarray], rng: np.random.Generator) -> Source:
    """Take one labelled frame apart (module docstring, steps 1-2).

    Parameters
    ----------
    image : (H, W) uint8 or uint16
    loops : outlines (K, 2) px of every loop labelled in it (the frame has no other label)
    """
    img = np.asarray(image)
    top = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0
    f = img.astype(np.float32)
    h, w = f.shape
    halos = [_halo(p) for p in loops]
    hole = _loop_mask((h, w), loops, halos)
    # inpainting works on 8 bits: scale there and back
    u8 = np.clip(f * (255.0 / top), 0, 255).astype(np.uint8)
    filled = cv2.inpaint(u8, hole, 7, cv2.INPAINT_TELEA).astype(np.float32) * (top / 255.0)
    smooth = cv2.GaussianBlur(np.where(hole > 0, filled, f), (0, 0), 3.0)
    # camera noise: the frame's high-pass residual, moved so that no loop comes along
    resid = f - cv2.GaussianBlur(f, (0, 0), 2.0)
    best, best_overlap = resid, None
    for _ in range(16):
        dy, dx = int(rng.integers(h)), int(rng.integers(w))
        overlap = int(np.count_nonzero(np.roll(hole, (dy, dx), (0, 1)) & hole))
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = np.roll(resid, (dy, dx), (0, 1)), overlap
        if overlap == 0:
            break
    background = np.where(hole > 0, cv2.GaussianBlur(filled, (0, 0), 2.0) + best, f)
    delta_all = cv2.GaussianBlur(f - smooth, (0, 0), 1.0)
    sprites = []
    for poly, g in zip(loops, halos, strict=True):
        x0, y0 = np.floor(poly.min(axis=0)).astype(int) - g
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + g + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        local = poly - (x0, y0)
        core = _loop_mask((y1 - y0, x1 - x0), [local], [max(1, g // 2)]).astype(np.float32)
        alpha = np.clip(cv2.GaussianBlur(core, (0, 0), max(1.0, g / 3.0)) * 1.5, 0.0, 1.0)
        sprites.append(LoopSprite(delta_all[y0:y1, x0:x1].copy(), alpha, local))
    return Source(background.astype(np.float32), tuple(sprites), img.dtype, top)


def _orient(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k)
    return np.ascontiguousarray(a[:, ::-1] if flip else a)


def _place(
    sprite: LoopSprite, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sprite turned by a random angle, flipped, rescaled: (delta, alpha, outline)."""
    ext = float(np.max(sprite.outline.max(axis=0) - sprite.outline.min(axis=0)))
    lo = max(SCALE_RANGE[0], MIN_LOOP_PX / max(ext, 1e-6))
    hi = max(SCALE_RANGE[1], lo)
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    ang = float(rng.uniform(0.0, 360.0))
    h, w = sprite.delta.shape
    c = ((w - 1) / 2.0, (h - 1) / 2.0)
    m = cv2.getRotationMatrix2D(c, ang, s)
    side = int(np.ceil(max(h, w) * s * 1.42)) + 2
    m[:, 2] += (side - 1) / 2.0 - np.array(c)
    warp = {"dsize": (side, side), "flags": cv2.INTER_LINEAR, "borderValue": 0.0}
    delta = cv2.warpAffine(sprite.delta, m, **warp)
    alpha = cv2.warpAffine(sprite.alpha, m, **warp)
    outline = sprite.outline @ m[:, :2].T + m[:, 2]
    if rng.uniform() < 0.5:
        delta, alpha = delta[:, ::-1], alpha[:, ::-1]
        outline = np.stack([side - outline[:, 0], outline[:, 1]], axis=1)
    gain = float(rng.uniform(1.0 - CONTRAST_JITTER, 1.0 + CONTRAST_JITTER))
    return delta * gain, alpha, outline


def compose(
    source: Source, sprites: Sequence[LoopSprite], count: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A new frame: ``source``'s background (turned, flipped) with ``count`` of ``sprites``
    (drawn with replacement) pasted where they touch nothing. Returns the frame (the source's
    type) and the outlines (px) of the loops it holds; fewer than ``count`` where the frame
    has no room left."""
    k, flip = int(rng.integers(4)), bool(rng.uniform() < 0.5)
    out = _orient(source.background, k, flip).copy()
    h, w = out.shape
    taken = np.zeros((h, w), np.uint8)
    outlines: list[np.ndarray] = []
    for _ in range(count):
        delta, alpha, outline = _place(sprites[int(rng.integers(len(sprites)))], rng)
        sh, sw = delta.shape
        if sh >= h or sw >= w:
            continue
        own = _loop_mask((sh, sw), [outline], [int(np.ceil(GAP_PX))])
        for _try in range(20):
            y, x = int(rng.integers(0, h - sh)), int(rng.integers(0, w - sw))
            if not np.any(taken[y : y + sh, x : x + sw] & own):
                break
        else:
            continue
        out[y : y + sh, x : x + sw] += alpha * delta
        taken[y : y + sh, x : x + sw] |= own
        outlines.append(outline + np.array([x, y]))
    frame = np.clip(np.round(out), 0, source.top).astype(source.dtype)
    return frame, outlines


def same_look_frames(frames: Sequence[Path], n: int, out: Path, *, seed: int = 0) -> list[Path]:
    """Write ``n`` frames of the same look as the labelled ``frames`` (module docstring) into
    ``out/images`` and ``out/labels`` (the dataset layout); returns the image paths.

    Frames with a label other than a loop, or no loop, are not used; without a usable frame
    nothing is written and the list is empty (logged).
    """
    from ..datasets.layout import read_labels, write_image, write_yolo_labels
    from ..evaluation.data import read_image

    rng = np.random.default_rng(seed)
    sources: list[Source] = []
    counts: list[int] = []
    for img_path in frames:
        img = read_image(img_path)
        h, w = img.shape[:2]
        pairs = read_labels(img_path.parent.parent / "labels" / f"{img_path.stem}.txt", w, h)[0]
        loops = [p for c, p in pairs if c == 1 and len(p) >= 3]
        if not loops or len(loops) != len(pairs):
            continue
        src = read_source(img, loops, rng)
        if src.sprites:
            sources.append(src)
            counts.append(len(loops))
    if not sources or n <= 0:
        if n > 0:
            logger.warning("no frame labelled with loops only: no same-look frames made")
        return []
    sprites = [s for src in sources for s in src.sprites]
    mean = float(np.mean(counts))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        src = sources[i % len(sources)]
        count = max(1, round(mean * rng.uniform(*COUNT_RANGE)))
        frame, outlines = compose(src, sprites, count, rng)
        p = out / "images" / f"same-look-{i:04d}.png"
        write_image(p, frame)
        h, w = frame.shape
        write_yolo_labels(out / "labels" / f"{p.stem}.txt", [(1, o) for o in outlines], w, h)
        written.append(p)
    logger.info("%d same-look frames from %d labelled frames (%d loops to paste)", n,
                len(sources), len(sprites))  # fmt: skip
    return written
