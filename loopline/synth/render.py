"""Drawing a scene: grey frame, instance polygons and ground truth (section 2.4 of Govind et al.).

Lines and loops are drawn with OpenCV's anti-aliased primitives at sub-pixel precision into a
darkening layer, blurred, and multiplied onto the background; slip traces are added as weak
signed lines and are never labelled. Instance labels are polygons in image pixels: a line's
label is its polyline buffered to ``label_width`` (one width for every line, whatever width it
was drawn with, so a model learns one mask shape); a loop's label is its filled ellipse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ..datasets.layout import CLASSES
from ..datasets.raster import SCALE, SHIFT, fixed, line_polygon, resample_polyline
from .background import render_background
from .distractors import draw_distractors, draw_overlays, strip_rect
from .scene import Line, Loop, band_polygons, drift_at, lines_at, loops_at, trace_segments

__all__ = ["CLASSES", "Instance", "Rendered", "render_frame", "resample_polyline"]

#: Class table shared by every label format: YOLO class index -> name (COCO id = index + 1).


@dataclass(frozen=True)
class Instance:
    """One labelled object: class index, polygon (N, 2) in px, and its truth record."""

    cls: int
    polygon: np.ndarray
    truth: dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # (H, W) uint8 or uint16
    instances: list[Instance]
    truth: dict[str, Any]  # this frame's ground truth (lines, loops, drift)


def ellipse_polygon(loop: Loop, n: int = 48) -> np.ndarray:
    """Filled-ellipse outline of a loop, (n, 2) px."""
    th = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    a, b = loop.major / 2.0, loop.minor / 2.0
    ang = np.deg2rad(loop.angle)
    x, y = a * np.cos(th), b * np.sin(th)
    cx, cy = loop.center
    return np.stack(
        [cx + x * np.cos(ang) - y * np.sin(ang), cy + x * np.sin(ang) + y * np.cos(ang)], axis=1
    )



def _draw_lines(
    shape: tuple[int, int],
    lines: list[Line],
    blur: dict[int, float],
    bright: set[int] | frozenset[int] = frozenset(),
) -> tuple[np.ndarray, np.ndarray]:
    """Darkening and brightening layers (0 = none, 1 = black / white) of all dislocation lines.

    Pile-ups whose id is in ``bright`` (dark-field or weak-beam contrast) go to the second.
    """
    dark = np.zeros(shape, np.float32)
    light = np.zeros(shape, np.float32)
    by_pileup: dict[int, list[Line]] = {}
    for ln in lines:
        by_pileup.setdefault(ln.pileup, []).append(ln)
    tmp = np.zeros(shape, np.uint8)
    for pid, group in by_pileup.items():
        layer = np.zeros(shape, np.float32)
        for ln in group:
            tmp[:] = 0
            thick = max(round(ln.width), 1)
            cv2.polylines(tmp, [fixed(ln.points)], False, 255, thick, cv2.LINE_AA, SHIFT)
            np.maximum(layer, tmp.astype(np.float32) * (ln.contrast / 255.0), out=layer)
        sigma = blur[pid]
        if sigma > 0:
            layer = cv2.GaussianBlur(layer, (0, 0), sigma)
        target = light if pid in bright else dark
        np.maximum(target, layer, out=target)
    return dark, light


def _draw_loops(shape: tuple[int, int], loops: list[Loop], dark: np.ndarray) -> None:
    h, w = shape
    for lp in loops:
        pad = int(np.ceil(lp.major / 2 + 3 * lp.blur + lp.rim + 2))
        cx, cy = lp.center
        x0, y0 = max(int(cx) - pad, 0), max(int(cy) - pad, 0)
        x1, y1 = min(int(cx) + pad + 1, w), min(int(cy) + pad + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = np.zeros((y1 - y0, x1 - x0), np.float32)
        center = (round((cx - x0) * SCALE), round((cy - y0) * SCALE))
        axes = (round(lp.major / 2 * SCALE), round(lp.minor / 2 * SCALE))
        if lp.ring:
            thick = max(round(lp.rim), 1)
            cv2.ellipse(roi, center, axes, lp.angle, 0, 360, 1.0, thick, cv2.LINE_AA, SHIFT)
            # Faint interior: bright-field loops enclose slightly darker, strained material.
            cv2.ellipse(roi, center, axes, lp.angle, 0, 360, 0.35, -1, cv2.LINE_AA, SHIFT)
            cv2.ellipse(roi, center, axes, lp.angle, 0, 360, 1.0, thick, cv2.LINE_AA, SHIFT)
        else:
            cv2.ellipse(roi, center, axes, lp.angle, 0, 360, 1.0, -1, cv2.LINE_AA, SHIFT)
        if lp.blur > 0:
            roi = cv2.GaussianBlur(roi, (0, 0), lp.blur)
        np.maximum(dark[y0:y1, x0:x1], roi * lp.contrast, out=dark[y0:y1, x0:x1])


def _draw_traces(shape: tuple[int, int], scene: dict[str, Any], t: int) -> np.ndarray:
    signed = np.zeros(shape, np.float32)
    tmp = np.zeros(shape, np.uint8)
    for seg, contrast, width in trace_segments(scene, t):
        tmp[:] = 0
        thick = max(round(width), 1)
        cv2.polylines(tmp, [fixed(seg)], False, 255, thick, cv2.LINE_AA, SHIFT)
        signed += cv2.GaussianBlur(tmp.astype(np.float32) * (contrast / 255.0), (0, 0), 0.8)
    for quad, contrast in band_polygons(scene, t):
        tmp[:] = 0
        cv2.fillPoly(tmp, [fixed(quad)], 255, cv2.LINE_AA, SHIFT)
        signed += cv2.GaussianBlur(tmp.astype(np.float32) * (contrast / 255.0), (0, 0), 1.0)
    return signed


def _vignette(img: np.ndarray, vignette: list[float]) -> None:
    """Darken towards the corners: 1 - strength * (r / r_max)^2 around an off-centre point."""
    strength, cx, cy = vignette
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = (xx - cx) ** 2 + (yy - cy) ** 2
    img *= 1.0 - strength * r2 / r2.max()


class BackgroundCache:
    """A scene's background, rendered once with a margin for stage drift, cropped per frame."""

    def __init__(self, scene: dict[str, Any], backgrounds: Path | None = None):
        self.scene = scene
        dx, dy = scene["stage_drift"]
        f = scene["frames"]
        self.margin = int(np.ceil(max(abs(dx), abs(dy)) * max(f - 1, 0))) + 2 if f > 1 else 0
        m = self.margin
        shape = (scene["height"] + 2 * m, scene["width"] + 2 * m)
        self.full = render_background(shape, scene["background"], backgrounds=backgrounds)

    def at(self, t: int) -> np.ndarray:
        h, w = self.scene["height"], self.scene["width"]
        if self.margin == 0:
            return self.full.copy()
        ddx, ddy = drift_at(self.scene, t)
        m = self.margin
        mat = np.float32([[1, 0, ddx - m], [0, 1, ddy - m]])
        return cv2.warpAffine(
            self.full, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )


def render_frame(
    scene: dict[str, Any],
    t: int = 0,
    *,
    background: BackgroundCache | None = None,
    backgrounds: Path | None = None,
) -> Rendered:
    """Render frame ``t`` of ``scene``: image, labelled instances and the frame's truth."""
    h, w = scene["height"], scene["width"]
    shape = (h, w)
    bg = background if background is not None else BackgroundCache(scene, backgrounds)
    img = bg.at(t)
    if scene.get("distractors"):
        draw_distractors(img, scene["distractors"], drift_at(scene, t))
    img += _draw_traces(shape, scene, t)
    lines = lines_at(scene, t)
    loops = loops_at(scene, t)
    blur = {pu["id"]: pu["blur"] for pu in scene["pileups"]}
    bright = {pu["id"] for pu in scene["pileups"] if pu.get("bright")}
    dark, light = _draw_lines(shape, lines, blur, bright)
    _draw_loops(shape, loops, dark)
    img *= 1.0 - dark
    if bright:
        np.clip(img, 0.0, 1.0, out=img)
        img += light * (1.0 - img)
    if scene.get("vignette"):
        _vignette(img, scene["vignette"])
    if scene.get("image_blur", 0.0) > 0:
        img = cv2.GaussianBlur(img, (0, 0), scene["image_blur"])
    rng = np.random.default_rng(np.random.SeedSequence([scene["noise_seed"], t]))
    if scene["camera_noise"] > 0:
        img += rng.normal(0.0, scene["camera_noise"], size=shape).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    if scene.get("gamma", 1.0) != 1.0:
        np.power(img, scene["gamma"], out=img)
    hidden = None
    if scene.get("overlays"):
        draw_overlays(img, scene["overlays"])
        hidden = strip_rect(scene["overlays"], w, h)
    if hidden is not None:
        lines, loops = _unhidden(lines, loops, hidden, scene["min_line_length"])
    if scene["bit_depth"] == 16:
        out = np.round(img * 65535.0).astype(np.uint16)
    else:
        out = np.round(img * 255.0).astype(np.uint8)

    instances: list[Instance] = []
    label_w = _label_widths(lines, scene["label_width"], scene.get("label_spacing_frac", 0.0))
    line_truth = []
    for ln in lines:
        lw = label_w.get(ln.pileup, scene["label_width"])
        pts = resample_polyline(ln.points, 2.0)
        rec = {
            "id": ln.id,
            "pileup": ln.pileup,
            "points": np.round(pts, 3).tolist(),
            "length_px": round(ln.length, 4),
            "velocity_px_per_frame": round(ln.velocity, 6),
            "glide_dir": [round(ln.glide_dir[0], 6), round(ln.glide_dir[1], 6)],
        }
        line_truth.append(rec)
        instances.append(Instance(0, line_polygon(ln.points, lw), rec))
    loop_truth = []
    for lp in loops:
        rec = {
            "id": lp.id,
            "center": [round(lp.center[0], 4), round(lp.center[1], 4)],
            "major_px": round(lp.major, 4),
            "minor_px": round(lp.minor, 4),
            "angle_deg": round(lp.angle, 4),
        }
        loop_truth.append(rec)
        instances.append(Instance(1, ellipse_polygon(lp), rec))
    ddx, ddy = drift_at(scene, t)
    truth = {
        "index": t,
        "time_s": round(t / scene["fps"], 9),
        "drift_px": [round(ddx, 4), round(ddy, 4)],
        "lines": line_truth,
        "loops": loop_truth,
    }
    return Rendered(image=out, instances=instances, truth=truth)


def _label_widths(lines: list[Line], width: float, frac: float) -> dict[int, float]:
    """Label width of each pile-up: ``width``, or at most ``frac`` of the smallest distance
    between two of its neighbouring lines at this frame (so labels in dense pile-ups do not
    touch), never below 2 px. ``frac`` 0 keeps one width for every line."""
    out: dict[int, float] = {}
    if frac <= 0:
        return out
    by_pileup: dict[int, list[Line]] = {}
    for ln in lines:
        by_pileup.setdefault(ln.pileup, []).append(ln)
    for pid, group in by_pileup.items():
        group = sorted(group, key=lambda ln: ln.id)  # leader first: neighbours are consecutive
        gaps = [cKDTree(b.points).query(a.points)[0].min() for a, b in pairwise(group)]
        if gaps:
            out[pid] = float(min(width, max(2.0, frac * min(gaps))))
    return out


def _unhidden(
    lines: list[Line], loops: list[Loop], rows: tuple[float, float], min_length: float
) -> tuple[list[Line], list[Loop]]:
    """What an information strip covering ``rows`` (y0, y1) leaves visible and so labelled."""
    y0, y1 = rows
    kept_lines = []
    for ln in lines:
        out = (ln.points[:, 1] < y0 - 1) | (ln.points[:, 1] > y1 + 1)
        if out.all():
            kept_lines.append(ln)
            continue
        idx = np.flatnonzero(out)
        if idx.size < 2:
            continue
        runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
        piece = ln.points[max(runs, key=len)]
        length = float(np.hypot(*np.diff(piece, axis=0).T).sum())
        if length >= min_length:
            kept_lines.append(replace(ln, points=piece, length=length))
    kept_loops = [lp for lp in loops
                  if lp.center[1] + lp.minor / 2 < y0 or lp.center[1] - lp.minor / 2 > y1]
    return kept_lines, kept_loops
