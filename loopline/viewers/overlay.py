"""The overlay of one published frame, drawn into an image (the terminal preview, MJPEG).

The daemon publishes the bare frame as JPEG and the objects as numbers; the web page draws
them on its canvas (each layer switchable). :func:`draw_overlay` draws the same layers into a
copy of the decoded JPEG for players that show images only: mask outlines, centre lines, loop
ellipses, track ids (outlined, readable on bright frames) and one scale bar.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .schema import FrameView

__all__ = ["draw_overlay", "nice_bar"]

_LINE = (60, 200, 255)  # BGR amber, as annotated.mp4
_LOOP = (255, 120, 60)  # BGR blue
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def nice_bar(width_px: float, nm_per_px: float | None) -> tuple[float, str]:
    """A 1-2-5 bar length (px) near a fifth of ``width_px`` and its label (nm, µm or px)."""
    unit = nm_per_px or 1.0
    target = width_px * unit / 5.0
    k = 10 ** math.floor(math.log10(max(target, 1e-12)))
    length = max((m * k for m in (1, 2, 5) if m * k <= target), default=k)
    if not nm_per_px:
        return length, f"{length:g} px"
    label = f"{length / 1000:g} um" if length >= 1000 else f"{length:g} nm"
    return length / unit, label


def _pts(points: list[list[float]], s: float) -> np.ndarray:
    return np.round(np.asarray(points, np.float64).reshape(-1, 2) * s).astype(np.int32)


def draw_overlay(jpeg_bgr: np.ndarray, view: FrameView) -> np.ndarray:
    """A copy of the decoded JPEG (BGR, or grey) with the frame's objects and a scale bar."""
    img = jpeg_bgr if jpeg_bgr.ndim == 3 else cv2.cvtColor(jpeg_bgr, cv2.COLOR_GRAY2BGR)
    img = img.copy()
    h, w = img.shape[:2]
    s = view.jpeg_scale or 1.0
    for ln in view.lines:
        if len(ln.contour) > 2:
            cv2.polylines(img, [_pts(ln.contour, s)], True, _LINE, 1, cv2.LINE_AA)
        if len(ln.points) >= 2:
            cv2.polylines(img, [_pts(ln.points, s)], False, (255, 255, 255), 1, cv2.LINE_AA)
    for lp in view.loops:
        if len(lp.contour) > 2:
            cv2.polylines(img, [_pts(lp.contour, s)], True, _LOOP, 1, cv2.LINE_AA)
        elif lp.axes[0] > 0:
            cv2.ellipse(img, (round(lp.center[0] * s), round(lp.center[1] * s)),
                        (max(round(lp.axes[0] * s), 1), max(round(lp.axes[1] * s), 1)),
                        lp.angle_deg, 0, 360, _LOOP, 1, cv2.LINE_AA)  # fmt: skip
    labels = [(ln.id, ln.centroid or (ln.points[len(ln.points) // 2] if ln.points else None))
              for ln in view.lines] + [(lp.id, lp.center) for lp in view.loops]  # fmt: skip
    for tid, p in labels:
        if tid is None or p is None:
            continue
        org = (round(p[0] * s) + 4, round(p[1] * s) - 4)
        cv2.putText(img, str(tid), org, _FONT, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, str(tid), org, _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    nm = view.nm_per_px / s if view.nm_per_px else None
    length, label = nice_bar(w, nm)
    x1, y = w - 12, h - 14
    x0 = round(x1 - length)
    cv2.rectangle(img, (x0 - 4, y - 20), (x1 + 4, y + 8), (0, 0, 0), -1)
    cv2.line(img, (x0, y), (x1, y), (255, 255, 255), 3)
    cv2.putText(img, label, (x0, y - 6), _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return img
