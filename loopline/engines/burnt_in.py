"""Burnt-in annotations: text, scale bars and instrument strips, found so they are never detected.

Microscope software burns its own marks into many frames: a scale bar with its label, the dose
or the time as text, an information strip along one edge. They are not defects, and a model
or the ridge engine would read a white "1.0 dpa" as loops and a scale bar as a dislocation.
:func:`annotation_mask` finds them in one grey frame, cheaply (about 1 ms at 512x512):

- **strips**: rows (columns) at a frame edge that are flat but for their text: most of their
  pixels within a grey level or so of the row's median, which camera noise never is;
- **text and bars**: plateaus of the frame's extreme grey values (pure white or pure black:
  what software draws, at the bit depth's or the frame's limit) that are thin (strokes of a
  few px, or a filled straight bar), grouped into words and boxed with a margin that takes in
  their anti-aliased edges. A dark defect whose core is clipped to black is a round blob, not
  a stroke; it is kept.

``regions`` adds boxes ``(x0, y0, x1, y1)`` in frame px to ignore always (``ignore_regions``
in the configuration: a strip the detector missed, a logo). :func:`fill_annotations` sets the
masked pixels to the frame's median before an engine sees the frame, and
:func:`drop_annotated` removes the detections whose mask lies mostly inside the annotations;
:class:`~loopline.engines.base.Engine` does both for every engine (``annotations=False``
switches it off).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from .base import Detections

logger = logging.getLogger(__name__)

__all__ = ["annotation_mask", "check_regions", "drop_annotated", "fill_annotations"]

#: fraction of a strip row's pixels at the strip's grey (the rest: its text)
_FLAT_FRAC = 0.3
#: fraction of pixels at the strip's grey in one of its outer ``_STRIP_MIN`` rows
_EDGE_FRAC = 0.9
#: a strip's grey is exact (integer frames) or within this fraction of the grey range
_FLAT_TOL = 1e-4
#: rows of a strip's text line that may fall short of ``_FLAT_FRAC``
_STRIP_GAP = 24
#: a drawn stroke differs from the frame 2 px away by this fraction of the grey range
_CONTRAST = 0.25
_K3 = np.ones((3, 3), np.uint8)
_K5 = np.ones((5, 5), np.uint8)
_K7 = np.ones((7, 7), np.uint8)
#: a strip is at least this many px and at most this fraction of the frame
_STRIP_MIN, _STRIP_MAX = 3, 0.34
#: plateau pixels a glyph or bar has at least, and a frame's annotations together
_MIN_PX, _MIN_HITS = 4, 24
#: more candidate glyphs than this: clipped noise, not text
_MAX_GLYPHS = 1500
#: a stroke's anti-aliased core is within this fraction of the grey range of the extreme
_NEAR = 0.08
#: and reaches this close to it somewhere
_SEED = 0.02
#: glyphs of one word are at most this far apart along their line (px)
_GAP_X = 8
#: a text line is at most this high (px, and a fraction of the frame height)
_TEXT_MAX_H, _TEXT_MAX_FRAC = 48, 0.2
#: margin (px) around a boxed word or bar: its anti-aliased edge
_MARGIN = 3

Region = tuple[float, float, float, float]


def check_regions(regions: object) -> tuple[Region, ...]:
    """``regions`` as a tuple of ``(x0, y0, x1, y1)`` boxes (px), or a one-line ValueError.

    A string is read as boxes separated by ``;``, numbers by ``,``:
    ``"0,460,512,512; 10,10,120,30"``.
    """
    if regions is None:
        return ()
    if isinstance(regions, str):
        regions = [b.split(",") for b in regions.split(";") if b.strip()]
    out = []
    try:
        for r in regions:  # type: ignore[attr-defined]
            x0, y0, x1, y1 = (float(v) for v in r)
            if not (x1 > x0 and y1 > y0):
                raise ValueError
            out.append((x0, y0, x1, y1))
    except (TypeError, ValueError):
        raise ValueError(f"ignore_regions must be a list of [x0, y0, x1, y1] boxes in px with "
                         f"x1 > x0 and y1 > y0, got {regions!r}") from None  # fmt: skip
    return tuple(out)


def _strip_rows(view: np.ndarray, tol: float) -> int:
    """How many rows of ``view`` (ordered from the frame edge inwards) form a strip: rows
    where at least ``_FLAT_FRAC`` of the pixels sit at the edge row's grey (within ``tol``),
    with gaps of at most ``_STRIP_GAP`` rows (a line of text across the strip)."""
    v = np.median(view[0])
    frac = np.count_nonzero(np.abs(view - v) <= tol, axis=1) / view.shape[1]
    ok = frac >= _FLAT_FRAC
    if not (ok[:_STRIP_MIN].all() and frac[:_STRIP_MIN].max() >= _EDGE_FRAC):
        return 0  # a strip's outermost rows are flat but for its text
    bad = np.flatnonzero(~ok)
    if bad.size == 0:
        return int(ok.size)
    # the strip ends at the last good row before a gap longer than _STRIP_GAP
    runs = np.split(bad, np.flatnonzero(np.diff(bad) > 1) + 1)
    for r in runs:
        if r.size > _STRIP_GAP or r[-1] == ok.size - 1:
            return int(r[0])
    return int(ok.size)


def _strips(g: np.ndarray, tol: float, mask: np.ndarray) -> None:
    h, w = g.shape
    for n, view, m in ((h, g, mask), (w, g.T, mask.T)):
        cap = max(int(n * _STRIP_MAX), _STRIP_MIN + 1)
        top = _strip_rows(view[:cap], tol)
        bottom = _strip_rows(view[::-1][:cap], tol)
        if top >= _STRIP_MIN:
            m[:top] = True
        if bottom >= _STRIP_MIN:
            m[n - bottom:] = True


def _groups(adj: np.ndarray) -> np.ndarray:
    """Connected groups of a symmetric boolean adjacency matrix: a group number per node."""
    lab = np.arange(adj.shape[0])
    while True:
        new = np.where(adj, lab[None, :], lab.size).min(axis=1)
        new = np.minimum(new, lab)
        if (new == lab).all():
            return lab
        lab = new[new]


def _plateaus(g: np.ndarray, lo: float, hi: float, mask: np.ndarray) -> None:
    """Box the thin, sharp components of pixels at ``lo`` or ``hi`` (text strokes, bars)."""
    h = g.shape[0]
    tight = _SEED * (hi - lo)
    seed = (g >= hi - tight) | (g <= lo + tight)
    if int(np.count_nonzero(seed)) < _MIN_HITS:
        return
    # a stroke: pixels near the extreme grey (its anti-aliased core) that reach it somewhere
    near = _NEAR * (hi - lo)
    at_hi = g >= hi - near
    hit = (at_hi | (g <= lo + near)).view(np.uint8)
    n, lab, st, _ = cv2.connectedComponentsWithStats(hit, connectivity=4)
    x, y, bw, bh, area = st[:, 0], st[:, 1], st[:, 2], st[:, 3], st[:, 4]
    max_h = min(_TEXT_MAX_H, max(int(h * _TEXT_MAX_FRAC), 8))
    cand = (area >= _MIN_PX) & (bh <= max_h) & (np.bincount(lab[seed], minlength=n) > 0)
    cand[0] = False
    if not cand.any() or np.count_nonzero(cand) > _MAX_GLYPHS:
        return  # nothing, or clipped noise everywhere: no text
    # strokes and bars, not blobs: a component with a solid 7x7 interior is a blob unless it
    # is long and straight
    y0, y1 = int(y[cand].min()), int((y + bh)[cand].max())
    x0, x1 = int(x[cand].min()), int((x + bw)[cand].max())
    ys, xs = slice(max(y0 - 3, 0), y1 + 3), slice(max(x0 - 3, 0), x1 + 3)
    lab_c, hit_c, g_c = lab[ys, xs], hit[ys, xs], g[ys, xs]
    body = cv2.morphologyEx(hit_c, cv2.MORPH_OPEN, _K7).astype(bool)
    body_px = np.bincount(lab_c[body], minlength=n)
    long_side, short_side = np.maximum(bw, bh), np.minimum(bw, bh)
    bar = (area >= 0.9 * bw * bh) & (long_side >= 4 * short_side) & (long_side >= 12)
    cand &= (body_px <= 0.5 * area) | (long_side >= 3 * short_side)
    if not cand.any():
        return
    # drawn, not clipped: 2 px away from a stroke the frame is far from the stroke's grey
    # (clipped noise or a clipped defect core fades into its surroundings)
    labf = np.where(cand[lab_c], lab_c, 0).astype(np.float32)
    d5 = cv2.dilate(labf, _K5)
    ring = (d5 > 0) & (cv2.dilate(labf, _K3) == 0)
    ring_lab = d5[ring].astype(np.int64)
    ring_n = np.bincount(ring_lab, minlength=n)
    ring_mean = np.bincount(ring_lab, weights=g_c[ring].astype(np.float64), minlength=n) / (
        np.maximum(ring_n, 1))
    value = np.where(np.bincount(lab_c[at_hi[ys, xs]], minlength=n) > 0, hi, lo)
    keep = cand & (ring_n > 0) & (np.abs(value - ring_mean) >= _CONTRAST * (hi - lo))
    k = np.flatnonzero(keep)
    if k.size == 0:
        return
    # words: glyph boxes within a few px along their line; a lone short stroke is no text
    bx0, by0, bx1, by1 = x[k] - _GAP_X, y[k] - 1, x[k] + bw[k] + _GAP_X, y[k] + bh[k] + 1
    adj = ((bx0[:, None] < bx1[None, :]) & (bx0[None, :] < bx1[:, None])
           & (by0[:, None] < by1[None, :]) & (by0[None, :] < by1[:, None]))  # fmt: skip
    word = _groups(adj)
    # the other stroke candidates beside a word are its fainter glyphs
    rest = np.flatnonzero(cand & ~keep)
    rx0, ry0 = x[rest] - _GAP_X, y[rest] - 1
    rx1, ry1 = x[rest] + bw[rest] + _GAP_X, y[rest] + bh[rest] + 1
    for wd in np.unique(word):
        mem = k[word == wd]
        if mem.size < 2 and not bar[mem].any():
            continue
        wx0, wy0 = int(x[mem].min()), int(y[mem].min())
        wx1, wy1 = int((x + bw)[mem].max()), int((y + bh)[mem].max())
        if wy1 - wy0 > max_h + 4 and not bar[mem].any():
            continue
        near_w = (rx0 < wx1 + _GAP_X) & (rx1 > wx0 - _GAP_X) & (ry0 < wy1) & (ry1 > wy0)
        if near_w.any():
            r = rest[near_w]
            wx0, wy0 = min(wx0, int(x[r].min())), min(wy0, int(y[r].min()))
            wx1, wy1 = max(wx1, int((x + bw)[r].max())), max(wy1, int((y + bh)[r].max()))
        mask[max(wy0 - _MARGIN, 0):wy1 + _MARGIN, max(wx0 - _MARGIN, 0):wx1 + _MARGIN] = True


def annotation_mask(frame: np.ndarray, *, regions: Sequence[Region] = (),
                    detect: bool = True) -> np.ndarray:  # fmt: skip
    """Pixels of burnt-in annotations in one (H, W) grey frame (see the module docstring).

    Parameters
    ----------
    frame : (H, W) array
        Grey frame of any dtype (an (H, W, C) frame is read from its first channel).
    regions : sequence of (x0, y0, x1, y1)
        Boxes (frame px) always masked.
    detect : bool
        Find strips, text and bars (False: the regions only).

    Returns
    -------
    (H, W) bool
    """
    g = np.asarray(frame)
    if g.ndim == 3:
        g = g[..., 0]
    h, w = g.shape
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in regions:
        ys = slice(max(int(y0), 0), max(int(np.ceil(y1)), 0))
        mask[ys, max(int(x0), 0):max(int(np.ceil(x1)), 0)] = True
    if not detect or g.size == 0:
        return mask
    lo, hi = float(g.min()), float(g.max())
    if hi <= lo:
        return mask
    if g.dtype.kind == "f":
        g = g.astype(np.float32, copy=False)
    tol = _FLAT_TOL * (hi - lo) if g.dtype.kind == "f" else 0.0
    _strips(g, tol, mask)
    _plateaus(g, lo, hi, mask)
    return mask


def fill_annotations(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of ``frame`` with the masked pixels set to the median of the others (the frame
    itself where nothing is masked)."""
    if not mask.any():
        return frame
    out = np.array(frame, copy=True)
    rest = out[~mask] if out.ndim == 2 else out[~mask].reshape(-1)
    out[mask] = np.median(rest[::7]) if rest.size else 0
    return out


def drop_annotated(det: Detections, mask: np.ndarray, *, inside: float = 0.5
                   ) -> tuple[Detections, int]:  # fmt: skip
    """Remove the detections with more than ``inside`` of their mask pixels in ``mask``.

    Returns the kept detections and how many were dropped.
    """
    n = len(det)
    if n == 0 or not mask.any():
        return det, 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    b = det.boxes
    near = np.flatnonzero((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))
    drop = np.zeros(n, bool)
    if near.size:
        m = det.masks[near]
        area = m.reshape(near.size, -1).sum(axis=1)
        over = (m[:, y0:y1, x0:x1] & mask[None, y0:y1, x0:x1]).reshape(near.size, -1).sum(axis=1)
        drop[near] = over > inside * np.maximum(area, 1)
    k = int(drop.sum())
    return (det.select(~drop), k) if k else (det, 0)
