"""Native-scale tiled inference: big frames as overlapping network-sized tiles, merged back.

Letterboxing a frame larger than the network input shrinks it: a 1344x962 frame goes into a
512 input at 0.38x, and ~17 px loops become ~6 px, below what the model finds (issue 15).
Instead, a frame with a side longer than ``imgsz`` is covered by overlapping square tiles at
its own pixel scale, every tile of every frame of a batch goes through the network, and the
instances are mapped back to the frame and merged across the seams (:func:`merge_tiles`):

* an object seen by two neighbouring tiles (a dislocation line crossing a seam, a loop in the
  overlap) is found by both in their shared zone; two instances of the same class from
  different tiles whose masks overlap there (intersection over the smaller of the two,
  measured inside the shared zone, ``>= min_ios``) are one object: their masks are united,
  the box is that of the united mask and the score the highest;
* *keep centre*: each tile owns the part of the frame nearer its centre than any neighbour's
  (the overlaps split at their middle). An object none of whose instances reaches into its
  own tile's part was seen only near a tile edge, where the neighbouring tile saw the same
  pixels with more context and found nothing: it is dropped.

The tile side is ``imgsz`` for a runtime whose input size is fixed (TensorRT, a static ONNX
or OpenVINO model). YOLOv8 is fully convolutional, so where the runtime takes any input size
(torch; ONNX Runtime and OpenVINO with a model of dynamic height and width) the tiles may be
larger, up to ``tile_max``, at the same pixel scale: :func:`tile_plan` picks the side (a
multiple of 32) whose grid feeds the fewest pixels to the network, so a 1024x1024 frame is
2x2 tiles of 544 instead of 3x3 of 512 (1.18 against 2.36 Mpx). One side per frame, so that
its tiles (and those of same-sized frames) batch together.

Frames that fit the network (both sides <= ``imgsz``) are letterboxed as before, so a
512x512 frame gives exactly what ``inference="letterbox"`` gives, and a smaller one is enlarged
to ``imgsz`` as ultralytics' training enlarges it; ``inference="native"`` pads it at its own
pixel scale instead (lines and loops keep their size in pixels). :func:`detect_frames` runs
the whole path around any ``(list of frames, input side) -> list of Detections`` network
call, and optionally resamples frames to the pixel size the model was trained at first
(``model_nm_per_px``), scaling the results back. The network's ``max_det`` caps each call's
instances (one tile's); a tiled frame keeps up to ``max_det_frame`` merged instances, so a
1024x1024 irradiation frame of 600+ loops is not cut at 300.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from . import ops
from .base import Detections, check_inference

logger = logging.getLogger(__name__)

__all__ = ["MIN_IOS", "STRIDE", "Window", "detect_frames", "merge_tiles", "rescale_detections",
           "tile_cores", "tile_grid", "tile_plan"]  # fmt: skip

#: least intersection over the smaller mask, inside two tiles' shared zone, for two instances
#: to be one object. Both tiles see the whole shared zone, so one object gives ~0.5-1; two
#: neighbouring objects (lines of a pile-up, touching loops) whose masks only graze give ~0-0.1.
MIN_IOS = 0.3

#: network inputs are multiples of the largest stride of YOLOv8 (px)
STRIDE = 32


@dataclass(frozen=True)
class Window:
    """A rectangle of a frame, rows ``y0:y1`` and columns ``x0:x1`` (px, end exclusive)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _axis_starts(n: int, size: int, overlap: int) -> list[int]:
    """Starts of the fewest ``size`` windows covering ``0..n`` with neighbours overlapping by
    at least ``overlap``, spread evenly (the first at 0, the last flush with the end)."""
    if n <= size:
        return [0]
    k = math.ceil((n - overlap) / (size - overlap))
    return [(i * (n - size)) // (k - 1) for i in range(k)]


def tile_grid(shape: tuple[int, int], imgsz: int, overlap: int = 64) -> list[Window]:
    """Overlapping ``imgsz`` x ``imgsz`` windows covering a frame, row by row.

    Parameters
    ----------
    shape : (H, W) int
        Frame size (px).
    imgsz : int
        Tile side (px): the network input.
    overlap : int
        Least overlap of neighbouring tiles (px), ``0 <= overlap < imgsz``; the tiles are
        spread evenly, so the actual overlaps are this or more.

    Returns
    -------
    list of Window
        A side not longer than ``imgsz`` is one tile of the frame's size along it.

    >>> [(w.x0, w.x1) for w in tile_grid((512, 1024), 512, 64)]
    [(0, 512), (256, 768), (512, 1024)]
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"shape must be (H, W) with H, W >= 1, got {tuple(shape)}")
    if not 0 <= overlap < imgsz:
        raise ValueError(f"overlap must lie in [0, {imgsz}) px, got {overlap}")
    ys, xs = _axis_starts(h, imgsz, overlap), _axis_starts(w, imgsz, overlap)
    return [Window(y, x, min(y + imgsz, h), min(x + imgsz, w)) for y in ys for x in xs]


def tile_plan(
    shape: tuple[int, int], imgsz: int, *, overlap: int = 64, tile_max: int | None = None
) -> tuple[int, list[Window]]:
    """The tile side and the tiles of a frame: the grid that feeds the fewest pixels.

    Parameters
    ----------
    shape : (H, W) int
        Frame size (px).
    imgsz : int
        Network input size (px): the smallest tile side.
    overlap : int
        Least overlap of neighbouring tiles (px), ``0 <= overlap < imgsz``.
    tile_max : int, optional
        Largest tile side (px), ``>= imgsz``; None (or ``imgsz``): tiles of ``imgsz``, for a
        runtime whose input size is fixed.

    Returns
    -------
    side : int
        Network input side (px): ``imgsz + 32 k <= tile_max``, the one whose grid
        (:func:`tile_grid`) has the fewest ``tiles x side**2`` pixels, the smallest of equals.
        Each tile is fed at its own scale: one with a side equal to ``side`` is letterboxed
        with gain 1, a smaller one is padded to ``side``.
    windows : list of Window
        The tiles, row by row.

    >>> side, wins = tile_plan((1024, 1024), 512, overlap=64, tile_max=640)
    >>> side, [(w.x0, w.x1) for w in wins[:2]]
    (544, [(0, 544), (480, 1024)])
    >>> tile_plan((1024, 1024), 512, overlap=64)[0], len(tile_plan((1024, 1024), 512)[1])
    (512, 9)
    """
    hi = imgsz if tile_max is None else int(tile_max)
    if hi < imgsz:
        raise ValueError(f"tile_max must be >= imgsz ({imgsz}) px, got {tile_max}")
    h, w = int(shape[0]), int(shape[1])
    best: tuple[int, int] | None = None
    for side in range(imgsz, hi + 1, STRIDE):
        if not 0 <= overlap < side:
            break  # tile_grid raises the error, naming the overlap
        n = len(_axis_starts(h, side, overlap)) * len(_axis_starts(w, side, overlap))
        if best is None or n * side * side < best[0]:
            best = (n * side * side, side)
    side = imgsz if best is None else best[1]
    return side, tile_grid((h, w), side, overlap)


def _axis_cores(spans: list[tuple[int, int]], n: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Each span's own part of ``0..n``: overlaps of neighbouring spans split at their middle."""
    spans = sorted(set(spans))
    cuts = [0] + [(b0 + a1) // 2 for (_, a1), (b0, _) in itertools.pairwise(spans)]
    cuts.append(n)
    return {s: (cuts[i], cuts[i + 1]) for i, s in enumerate(spans)}


def tile_cores(windows: Sequence[Window], shape: tuple[int, int]) -> list[Window]:
    """The part of the frame each tile of a grid owns (nearer its centre than any other's).

    The cores partition the frame; a tile on the frame's border owns up to the border.
    """
    h, w = shape
    rows = _axis_cores([(t.y0, t.y1) for t in windows], h)
    cols = _axis_cores([(t.x0, t.x1) for t in windows], w)
    out = []
    for t in windows:
        (y0, y1), (x0, x1) = rows[(t.y0, t.y1)], cols[(t.x0, t.x1)]
        out.append(Window(y0, x0, y1, x1))
    return out


# --------------------------------------------------------------------------- merging


def _mask_bbox(mask: np.ndarray, box: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight ``r0, r1, c0, c1`` of the pixels of ``mask`` inside its box (None if none)."""
    h, w = mask.shape
    c0, r0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    c1, r1 = min(int(np.ceil(box[2])) + 1, w), min(int(np.ceil(box[3])) + 1, h)
    if c1 <= c0 or r1 <= r0:
        return None
    sub = mask[r0:r1, c0:c1]
    rows = np.flatnonzero(sub.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(sub.any(axis=0))
    return r0 + int(rows[0]), r0 + int(rows[-1]) + 1, c0 + int(cols[0]), c0 + int(cols[-1]) + 1


def _clip(a0: int, a1: int, b0: int, b1: int) -> tuple[int, int]:
    return max(a0, b0), min(a1, b1)


def _count(sub: np.ndarray, bb: np.ndarray, r: tuple[int, int], c: tuple[int, int]) -> int:
    """Pixels of an instance (mask ``sub`` placed at frame rows/cols ``bb``) in rows ``r``
    and columns ``c`` of the frame."""
    if r[1] <= r[0] or c[1] <= c[0]:
        return 0
    return int(np.count_nonzero(sub[r[0] - bb[0] : r[1] - bb[0], c[0] - bb[2] : c[1] - bb[2]]))


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def merge_tiles(
    tiles: Sequence[Detections],
    windows: Sequence[Window],
    shape: tuple[int, int],
    *,
    min_ios: float = MIN_IOS,
    max_det: int | None = None,
) -> Detections:
    """Instances found in the tiles of one frame -> the frame's instances, merged at seams.

    Parameters
    ----------
    tiles : sequence of Detections
        One per window, masks and boxes in that tile's pixels; each instance's mask lies
        inside its box (as every engine decodes them).
    windows : sequence of Window
        Where each tile lies in the frame (:func:`tile_grid`).
    shape : (H, W) int
        Frame size (px).
    min_ios : float
        Least intersection over the smaller mask, inside the two tiles' shared zone, for two
        instances of one class from different tiles to be merged (:data:`MIN_IOS`).
    max_det : int, optional
        Most instances kept, by score.

    Returns
    -------
    Detections
        At frame resolution, by decreasing score, with empty ``timings_ms``. A merged
        instance's box is that of its united mask and its score the highest of its parts;
        an instance of one tile keeps the box the network gave it.
    """
    if len(tiles) != len(windows):
        raise ValueError(f"tiles and windows must have the same length, got {len(tiles)} "
                         f"and {len(windows)}")  # fmt: skip
    if not 0.0 < min_ios <= 1.0:
        raise ValueError(f"min_ios must lie in (0, 1], got {min_ios}")
    h, w = int(shape[0]), int(shape[1])
    cores = tile_cores(windows, (h, w))
    subs: list[np.ndarray] = []
    bbs, tile_of, cls, score, boxes, in_core = [], [], [], [], [], []
    for t, (d, win, core) in enumerate(zip(tiles, windows, cores, strict=True)):
        if d.shape != win.shape:
            raise ValueError(f"tile {t} has detections of shape {d.shape}, its window {win.shape}")
        for i in range(len(d)):
            bb = _mask_bbox(d.masks[i], d.boxes[i])
            if bb is None:
                continue
            r0, r1, c0, c1 = bb
            sub = d.masks[i, r0:r1, c0:c1]
            fb = np.array([r0 + win.y0, r1 + win.y0, c0 + win.x0, c1 + win.x0], np.int64)
            subs.append(sub)
            bbs.append(fb)
            tile_of.append(t)
            cls.append(int(d.classes[i]))
            score.append(float(d.scores[i]))
            boxes.append(d.boxes[i] + np.array([win.x0, win.y0, win.x0, win.y0], np.float32))
            in_core.append(_count(sub, fb, _clip(fb[0], fb[1], core.y0, core.y1),
                                  _clip(fb[2], fb[3], core.x0, core.x1)) > 0)  # fmt: skip
    k = len(subs)
    if k == 0:
        return Detections.empty((h, w))
    bb = np.stack(bbs)
    tile_arr = np.asarray(tile_of)
    cls_arr = np.asarray(cls)
    parent = list(range(k))
    # only instances reaching into another tile's window can meet one from that tile
    win_arr = np.array([[t.y0, t.y1, t.x0, t.x1] for t in windows], np.int64)
    reach = ((bb[:, None, 0] < win_arr[None, :, 1]) & (win_arr[None, :, 0] < bb[:, None, 1])
             & (bb[:, None, 2] < win_arr[None, :, 3]) & (win_arr[None, :, 2] < bb[:, None, 3]))
    reach[np.arange(k), tile_arr] = False
    cand = np.flatnonzero(reach.any(axis=1))
    if cand.size > 1:
        b = bb[cand]
        meet = ((b[:, None, 0] < b[None, :, 1]) & (b[None, :, 0] < b[:, None, 1])
                & (b[:, None, 2] < b[None, :, 3]) & (b[None, :, 2] < b[:, None, 3])
                & (cls_arr[cand][:, None] == cls_arr[cand][None, :])
                & (tile_arr[cand][:, None] != tile_arr[cand][None, :]))  # fmt: skip
        for ia, ib in zip(*np.nonzero(np.triu(meet, 1)), strict=True):
            a, c = int(cand[ia]), int(cand[ib])
            ba, bc = bb[a], bb[c]
            rows = _clip(ba[0], ba[1], bc[0], bc[1])
            cols = _clip(ba[2], ba[3], bc[2], bc[3])
            sa = subs[a][rows[0] - ba[0] : rows[1] - ba[0], cols[0] - ba[2] : cols[1] - ba[2]]
            sc = subs[c][rows[0] - bc[0] : rows[1] - bc[0], cols[0] - bc[2] : cols[1] - bc[2]]
            inter = int(np.count_nonzero(sa & sc))
            if inter == 0:
                continue
            wa, wc = windows[tile_of[a]], windows[tile_of[c]]
            zr = _clip(wa.y0, wa.y1, wc.y0, wc.y1)
            zc = _clip(wa.x0, wa.x1, wc.x0, wc.x1)
            na = _count(subs[a], ba, _clip(ba[0], ba[1], *zr), _clip(ba[2], ba[3], *zc))
            nc = _count(subs[c], bc, _clip(bc[0], bc[1], *zr), _clip(bc[2], bc[3], *zc))
            if inter >= min_ios * max(min(na, nc), 1):
                parent[_find(parent, a)] = _find(parent, c)
    groups: dict[int, list[int]] = {}
    for i in range(k):
        groups.setdefault(_find(parent, i), []).append(i)
    kept = [g for g in groups.values() if any(in_core[i] for i in g)]
    kept.sort(key=lambda g: -max(score[i] for i in g))
    if max_det is not None:
        kept = kept[:max_det]
    n = len(kept)
    masks = np.zeros((n, h, w), bool)
    out_boxes = np.zeros((n, 4), np.float32)
    out_scores = np.zeros(n, np.float32)
    out_cls = np.zeros(n, np.int64)
    for j, g in enumerate(kept):
        for i in g:
            r0, r1, c0, c1 = bb[i]
            masks[j, r0:r1, c0:c1] |= subs[i]
        if len(g) == 1:
            out_boxes[j] = np.clip(boxes[g[0]], 0, [w, h, w, h])
        else:
            r0, c0 = bb[g, 0].min(), bb[g, 2].min()
            r1, c1 = bb[g, 1].max(), bb[g, 3].max()
            out_boxes[j] = (c0, r0, c1, r1)
        out_scores[j] = max(score[i] for i in g)
        out_cls[j] = cls[g[0]]
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("merge_tiles: %d tiles, %d instances -> %d (%d merged groups, %d dropped "
                     "outside their tile's centre)", len(tiles), k, n,
                     sum(len(g) > 1 for g in groups.values()),
                     len(groups) - len(kept))  # fmt: skip
    return Detections(masks, out_boxes, out_scores, out_cls)


# --------------------------------------------------------------------------- pixel scale


def _frame_scales(nm_per_px, model_nm_per_px: float | None, n: int) -> list[float | None]:
    """Per frame, model px per frame px (None: use the frame as it is)."""
    if model_nm_per_px is None or nm_per_px is None:
        return [None] * n
    vals = [nm_per_px] * n if np.isscalar(nm_per_px) else list(nm_per_px)
    if len(vals) != n:
        raise ValueError(f"nm_per_px must be one value or one per frame ({n}), got {len(vals)}")
    out: list[float | None] = []
    for v in vals:
        if v is None or v == 0:
            out.append(None)  # this frame's pixel size is unknown: native pixels
        elif not 0.0 < float(v) < float("inf"):
            raise ValueError(f"nm_per_px must be > 0, got {v}")
        else:
            out.append(float(v) / float(model_nm_per_px))
    return out


def _resample(frame: np.ndarray, scale: float) -> np.ndarray:
    h, w = frame.shape[:2]
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interp)


def rescale_detections(det: Detections, shape: tuple[int, int]) -> Detections:
    """Detections of a resampled frame -> at the original frame size ``shape`` (H, W).

    Boxes are scaled; masks are resampled (area-weighted when shrinking) and cut at one half.
    Instances whose mask vanishes are dropped.
    """
    h, w = int(shape[0]), int(shape[1])
    hs, ws = det.shape
    if (hs, ws) == (h, w):
        return det
    fx, fy = w / ws, h / hs
    interp = cv2.INTER_AREA if fx * fy < 1.0 else cv2.INTER_LINEAR
    masks = np.zeros((len(det), h, w), bool)
    for i, m in enumerate(det.masks):
        masks[i] = cv2.resize(m.view(np.uint8) * np.uint8(255), (w, h), interpolation=interp) >= 128
    boxes = det.boxes * np.array([fx, fy, fx, fy], np.float32)
    keep = masks.any(axis=(1, 2))
    return Detections(masks[keep], boxes[keep].astype(np.float32), det.scores[keep],
                      det.classes[keep], dict(det.timings_ms))  # fmt: skip


def _crop_detections(det: Detections, shape: tuple[int, int]) -> Detections:
    """Detections of a frame padded at its bottom and right -> the frame's ``shape``."""
    h, w = shape
    masks = np.ascontiguousarray(det.masks[:, :h, :w])
    boxes = np.clip(det.boxes, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)
    keep = masks.any(axis=(1, 2))
    return Detections(masks[keep], boxes[keep], det.scores[keep], det.classes[keep],
                      dict(det.timings_ms))  # fmt: skip


# --------------------------------------------------------------------------- driver


def _pad_to(img: np.ndarray, side: int) -> np.ndarray:
    """A piece smaller than ``side`` on both sides, padded at its bottom and right (the
    letterbox would enlarge it)."""
    h, w = img.shape[:2]
    return cv2.copyMakeBorder(ops.to_uint8(img), 0, side - h, 0, side - w,
                              cv2.BORDER_CONSTANT, value=ops.PAD_VALUE)  # fmt: skip


def detect_frames(
    detect: Callable[[list[np.ndarray], int], list[Detections]],
    frames: Sequence[np.ndarray],
    *,
    imgsz: int,
    inference: str = "tiles",
    overlap: int = 64,
    tile_max: int | None = None,
    max_det_frame: int | None = None,
    model_nm_per_px: float | None = None,
    nm_per_px: float | Sequence[float | None] | None = None,
) -> list[Detections]:
    """Run a network on frames of any size: tiles for big frames, letterbox for the rest.

    Parameters
    ----------
    detect : callable
        ``detect(pieces, side) -> list of Detections``, one per piece at the piece's size,
        each piece letterboxed into a ``side`` x ``side`` network input; it is called once
        per input side with every piece of the batch fed at that side (the frames that fit
        and ``imgsz`` tiles at ``imgsz``, larger tiles at theirs), and batches them for the
        runtime itself. With ``inference="tiles"`` no piece is larger than ``side`` and none
        is enlarged by the letterbox.
    frames : sequence of (H, W) arrays
        Grey frames, any size.
    imgsz : int
        Network input size (px).
    inference : {"tiles", "native", "letterbox"}
    overlap : int
        Least overlap of neighbouring tiles (px).
    tile_max : int, optional
        Largest tile side (px, :func:`tile_plan`), for a runtime that takes any input size;
        None: tiles of ``imgsz``.
    max_det_frame : int, optional
        Most instances kept per tiled frame after merging, by score (a piece's own cap is the
        network's ``max_det``).
    model_nm_per_px : float, optional
        Pixel size the model was trained at (nm).
    nm_per_px : float or sequence of (float or None), optional
        The frames' pixel size (nm). With ``model_nm_per_px``, each frame is resampled to the
        model's pixel size first and its results scaled back (with ``"tiles"``, one that is
        then smaller than ``imgsz`` is padded, not enlarged); None (or 0) for a frame uses it
        as it is.

    Returns
    -------
    list of Detections
        One per frame, at the frame's size; ``timings_ms`` sums its tiles' shares, and the
        resampling and merging are counted in ``preprocess`` and ``postprocess``.
    """
    check_inference(inference)
    scales = _frame_scales(nm_per_px, model_nm_per_px, len(frames))
    pieces: list[np.ndarray] = []
    sides: list[int] = []
    plan: list[tuple[int, list[Window] | None, tuple[int, int], float]] = []
    for f, s in zip(frames, scales, strict=True):
        t0 = time.perf_counter()
        g = _resample(f, s) if s is not None and s != 1.0 else f
        hw = (int(g.shape[0]), int(g.shape[1]))
        side, wins = imgsz, None
        if inference != "letterbox" and max(hw) > imgsz:
            side, wins = tile_plan(hw, imgsz, overlap=overlap, tile_max=tile_max)
        elif max(hw) < imgsz and (inference == "native"
                                  or (inference == "tiles" and s is not None)):
            # at the model's scale already, or asked to stay at the frame's own: pad rather
            # than let the letterbox enlarge it
            wins = [Window(0, 0, *hw)]
        i0 = len(pieces)
        if wins is None:
            pieces.append(g)
        else:
            for t in wins:
                piece = np.ascontiguousarray(g[t.slices])
                pieces.append(_pad_to(piece, side) if max(t.shape) < side else piece)
        sides.extend([side] * (len(pieces) - i0))
        plan.append((i0, wins, hw, (time.perf_counter() - t0) * 1e3))
    dets: list[Detections | None] = [None] * len(pieces)
    for side in dict.fromkeys(sides):  # one call per input side, in order of appearance
        idx = [i for i, v in enumerate(sides) if v == side]
        got = detect([pieces[i] for i in idx], side)
        if len(got) != len(idx):
            raise ValueError(f"detect must return one Detections per input ({len(idx)}), "
                             f"got {len(got)}")  # fmt: skip
        for i, d in zip(idx, got, strict=True):
            dets[i] = d
    out = []
    for f, (i0, wins, hw, pre_ms) in zip(frames, plan, strict=True):
        t0 = time.perf_counter()
        own = [d for d in dets[i0 : i0 + (1 if wins is None else len(wins))] if d is not None]
        timings: dict[str, float] = {}
        for d in own:
            for key, v in d.timings_ms.items():
                timings[key] = timings.get(key, 0.0) + v
        if wins is not None:  # padded pieces: back to their tile
            own = [d if d.shape == t.shape else _crop_detections(d, t.shape)
                   for d, t in zip(own, wins, strict=True)]  # fmt: skip
        if wins is None or len(wins) == 1:
            d = own[0]
        else:
            d = merge_tiles(own, wins, hw, max_det=max_det_frame)
        d = rescale_detections(d, f.shape[:2])
        timings["preprocess"] = timings.get("preprocess", 0.0) + pre_ms
        timings["postprocess"] = timings.get("postprocess", 0.0) + (time.perf_counter() - t0) * 1e3
        out.append(Detections(d.masks, d.boxes, d.scores, d.classes, timings))
    return out
