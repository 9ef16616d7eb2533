"""What real TEM frames show besides the defects we label: distractors and burnt-in overlays.

A model trained only on dislocations over noise learns "dark curve = dislocation" and then marks
every slip trace, planar fault, bend contour and grain boundary of a real frame, and reads the
"1.0-1.5 dpa" burnt into an irradiation movie as loops. These features are drawn here and are
never labelled, so a model learns to ignore them (domain randomisation, issue 15):

- ``fault``: a planar fault / stacking fault: a straight band 6-40 px wide, finite or crossing
  the frame, with fringes parallel to its edges;
- ``trace``: a long straight slip trace crossing the frame, with no pile-up on it;
- ``bend``: a bend contour: a broad, smooth, curved dark band;
- ``boundary``: a grain or twin boundary: a grey step across a straight line, often with
  decaying thickness fringes on one side and a thin dark line on the boundary itself;
- overlays drawn last, on top of the camera noise: burnt-in text, a scale bar with its label,
  an instrument information strip along one edge (which hides what lies under it).

``sample_distractors`` and ``sample_overlays`` draw every random choice into JSON-ready dicts
(part of the scene, so ``params/*.json`` regenerates the frame); ``draw_distractors`` and
``draw_overlays`` render them. Distractors move with the stage drift; overlays do not.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from scipy.interpolate import CubicSpline
from scipy.special import expit

from .params import Preset

__all__ = [
    "draw_distractors",
    "draw_overlays",
    "sample_distractors",
    "sample_overlays",
    "strip_rect",
]

_SHIFT = 4
_SCALE = 1 << _SHIFT
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_TRIPLEX,
)  # fmt: skip


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def _edge_line(rng: np.random.Generator, w: int, h: int) -> tuple[list[float], float]:
    """A random straight line through the frame: a point inside it and an angle (deg)."""
    return [_r(rng.uniform(0, w)), _r(rng.uniform(0, h))], _r(rng.uniform(0.0, 180.0))


def sample_distractors(preset: Preset, rng: np.random.Generator, w: int, h: int) -> list[dict]:
    """Every unlabelled feature of one scene, as JSON-ready dicts (empty when all are off)."""
    out: list[dict[str, Any]] = []
    for _ in range(preset.sample("boundaries", rng)):
        p, a = _edge_line(rng, w, h)
        out.append({
            "kind": "boundary", "point": p, "angle": a,
            "step": _r(preset.sample("boundary_step", rng) * (1 if rng.uniform() < 0.5 else -1)),
            "fringe_period": _r(preset.sample("fringe_period", rng)),
            "fringe_amp": _r(rng.uniform(0.0, 0.25) if rng.uniform() < 0.6 else 0.0),
            "fringe_decay": _r(rng.uniform(10.0, 80.0)),
            "line": _r(rng.uniform(0.05, 0.35) if rng.uniform() < 0.5 else 0.0),
        })  # fmt: skip
    for _ in range(preset.sample("bend_contours", rng)):
        k = int(rng.integers(3, 5))
        # Support points spread across the frame along a random direction, so the contour is
        # a broad sweeping curve rather than a blob.
        a = rng.uniform(0, np.pi)
        c = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        span = 1.5 * max(w, h)
        t = np.linspace(-span / 2, span / 2, k)
        off = rng.normal(0.0, 0.1 * max(w, h), size=k)
        pts = c + np.outer(t, [np.cos(a), np.sin(a)]) + np.outer(off, [-np.sin(a), np.cos(a)])
        out.append({
            "kind": "bend", "points": [[_r(x), _r(y)] for x, y in pts],
            "width": _r(preset.sample("bend_width", rng)),
            "contrast": _r(preset.sample("bend_contrast", rng)),
        })  # fmt: skip
    for _ in range(preset.sample("stacking_faults", rng)):
        p, a = _edge_line(rng, w, h)
        whole = rng.uniform() < 0.5
        out.append({
            "kind": "fault", "point": p, "angle": a,
            "width": _r(preset.sample("fault_width", rng)),
            "length": _r(4.0 * max(w, h) if whole else rng.uniform(0.3, 1.0) * max(w, h)),
            "contrast": _r(preset.sample("fault_contrast", rng)
                           * (1 if rng.uniform() < 0.4 else -1)),
            "fringe": _r(preset.sample("fault_fringe", rng)),
            "edge_blur": _r(rng.uniform(0.5, 2.0)),
        })  # fmt: skip
    for _ in range(preset.sample("straight_traces", rng)):
        p, a = _edge_line(rng, w, h)
        out.append({
            "kind": "trace", "point": p, "angle": a,
            "width": _r(preset.sample("slip_trace_width", rng)),
            "contrast": _r(preset.sample("slip_trace_contrast", rng)
                           * (1 if rng.uniform() < 0.5 else -1)),
        })  # fmt: skip
    return out


def _annotation(rng: np.random.Generator) -> str:
    """A plausible burnt-in annotation of an in-situ TEM movie."""
    k = int(rng.integers(0, 9))
    a = float(rng.uniform(0.0, 5.0))
    if k == 0:
        return f"{a:.1f}-{a + rng.uniform(0.2, 2.0):.1f} dpa"
    if k == 1:
        return f"{int(rng.choice([5, 10, 20, 50, 100, 200, 500]))} nm"
    if k == 2:
        return f"t = {rng.uniform(0, 900):.1f} s"
    if k == 3:
        return f"{int(rng.integers(290, 1100))} K"
    if k == 4:
        return f"x{int(rng.choice([10, 20, 40, 50, 80, 100, 150]))}k"
    if k == 5:
        return f"{int(rng.choice([120, 200, 300]))} kV"
    if k == 6:
        return f"g = [{int(rng.integers(0, 3))}{int(rng.integers(0, 3))}{int(rng.integers(0, 3))}]"
    if k == 7:
        hh, mm = int(rng.integers(0, 24)), int(rng.integers(0, 60))
        return f"{hh:02d}:{mm:02d}:{rng.uniform(0, 60):05.2f}"
    return f"{rng.uniform(0, 1e4):.0f} ({int(rng.integers(1, 99))})"


def _text(rng: np.random.Generator, scale: float, w: int, h: int, *, grey: float) -> dict:
    s = _annotation(rng)
    font = int(rng.integers(0, len(_FONTS)))
    thick = int(rng.integers(1, 3))
    (tw, th), _ = cv2.getTextSize(s, _FONTS[font], scale, thick)
    x = rng.uniform(0, max(w - tw, 1))
    y = rng.uniform(th + 1, max(h - 2, th + 2))
    return {"text": s, "font": font, "scale": _r(scale), "thickness": thick,
            "org": [_r(x, 1), _r(y, 1)], "grey": _r(grey)}  # fmt: skip


def sample_overlays(preset: Preset, rng: np.random.Generator, w: int, h: int) -> list[dict]:
    """Burnt-in text, a scale bar and an information strip (empty when all are off)."""
    out: list[dict[str, Any]] = []
    for _ in range(preset.sample("texts", rng)):
        grey = 1.0 if rng.uniform() < 0.7 else 0.0
        scale = preset.sample("text_scale", rng)
        out.append({"kind": "text", **_text(rng, scale, w, h, grey=grey)})
    if rng.uniform() < preset.sample("scale_bar_prob", rng):
        grey = 1.0 if rng.uniform() < 0.7 else 0.0
        bw, bh = rng.uniform(0.1, 0.35) * w, rng.uniform(2.0, 8.0)
        x0 = rng.uniform(4, max(w - bw - 4, 5))
        y0 = rng.uniform(h * 0.5, max(h - bh - 4, h * 0.5 + 1))
        out.append({"kind": "scale_bar", "rect": [_r(x0), _r(y0), _r(x0 + bw), _r(y0 + bh)],
                    "grey": _r(grey)})  # fmt: skip
        label = _text(rng, preset.sample("text_scale", rng), w, h, grey=grey)
        label["org"] = [_r(x0, 1), _r(max(y0 - 3, 10), 1)]
        out.append({"kind": "text", **label})
    if rng.uniform() < preset.sample("info_strip_prob", rng):
        sh = preset.sample("info_strip_height", rng)
        edge = "bottom" if rng.uniform() < 0.7 else "top"
        level = float(rng.uniform(0.0, 0.25) if rng.uniform() < 0.8 else rng.uniform(0.7, 1.0))
        out.append({"kind": "strip", "edge": edge, "height": _r(sh), "grey": _r(level)})
        y_base = h - sh if edge == "bottom" else 0.0
        x = 4.0
        for _ in range(int(rng.integers(1, 4))):
            t = _text(rng, min(preset.sample("text_scale", rng), sh / 30.0), w, h,
                      grey=1.0 - round(level))
            (tw, th), _b = cv2.getTextSize(t["text"], _FONTS[t["font"]], t["scale"], t["thickness"])
            t["org"] = [_r(x, 1), _r(y_base + (sh + th) / 2, 1)]
            x += tw + rng.uniform(10, 40)
            out.append({"kind": "text", **t})
    return out


def strip_rect(overlays: list[dict], w: int, h: int) -> tuple[float, float] | None:
    """Rows (y0, y1) hidden by an information strip, or None."""
    for o in overlays:
        if o["kind"] == "strip":
            return (h - o["height"], float(h)) if o["edge"] == "bottom" else (0.0, o["height"])
    return None


def _coords(shape: tuple[int, int], point, angle_deg: float, drift):
    """Signed distance across (d) and along (s) a straight line, for every pixel."""
    h, w = shape
    a = math.radians(angle_deg)
    tx, ty = math.cos(a), math.sin(a)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx -= point[0] + drift[0]
    yy -= point[1] + drift[1]
    return xx * -ty + yy * tx, xx * tx + yy * ty


def _fixed(pts: np.ndarray) -> np.ndarray:
    return np.round(pts * _SCALE).astype(np.int32).reshape(-1, 1, 2)


def draw_distractors(img: np.ndarray, items: list[dict], drift=(0.0, 0.0)) -> None:
    """Draw the scene's unlabelled features into ``img`` ((H, W) float32 in [0, 1]) in place."""
    shape = img.shape
    for it in items:
        kind = it["kind"]
        if kind == "boundary":
            d, _ = _coords(shape, it["point"], it["angle"], drift)
            side = expit(d / 0.8)  # a sharp but anti-aliased step
            img *= 1.0 + it["step"] * side
            if it["fringe_amp"] > 0:
                dd = np.maximum(d, 0.0)
                fr = np.cos(2 * np.pi * dd / it["fringe_period"]) * np.exp(-dd / it["fringe_decay"])
                img *= 1.0 - it["fringe_amp"] * side * (0.5 + 0.5 * fr)
            if it["line"] > 0:
                img *= 1.0 - it["line"] * np.exp(-0.5 * (d / 1.0) ** 2)
        elif kind == "bend":
            pts = np.asarray(it["points"], float) + np.asarray(drift)
            t = np.linspace(0, 1, len(pts))
            dense = CubicSpline(t, pts, bc_type="natural")(np.linspace(0, 1, 400))
            tmp = np.zeros(shape, np.uint8)
            cv2.polylines(tmp, [_fixed(dense)], False, 255, max(round(it["width"] * 0.6), 1),
                          cv2.LINE_AA, _SHIFT)  # fmt: skip
            layer = cv2.GaussianBlur(tmp.astype(np.float32) / 255.0, (0, 0), it["width"] / 4.0)
            layer /= max(float(layer.max()), 1e-6)
            img *= 1.0 - it["contrast"] * layer
        elif kind == "fault":
            d, s = _coords(shape, it["point"], it["angle"], drift)
            half = it["width"] / 2.0
            eb = it["edge_blur"]
            inside = expit((half - np.abs(d)) / eb)
            inside *= expit((it["length"] / 2.0 - np.abs(s)) / (2 * eb))
            fringes = 0.55 + 0.45 * np.cos(2 * np.pi * d / it["fringe"])
            img += it["contrast"] * inside * fringes
        elif kind == "trace":
            d, _ = _coords(shape, it["point"], it["angle"], drift)
            sigma = max(it["width"] / 2.355, 0.4)
            img += it["contrast"] * np.exp(-0.5 * (d / sigma) ** 2)
        else:  # pragma: no cover - scenes are produced by sample_distractors
            raise ValueError(f"unknown distractor kind {kind!r}")


def draw_overlays(img: np.ndarray, items: list[dict]) -> None:
    """Burn text, scale bars and strips into ``img`` ((H, W) float32 in [0, 1]) in place."""
    h, w = img.shape
    for it in items:
        if it["kind"] == "strip":
            y0, y1 = strip_rect([it], w, h)
            img[round(y0):round(y1)] = it["grey"]
    for it in items:
        if it["kind"] == "scale_bar":
            x0, y0, x1, y1 = (round(v) for v in it["rect"])
            img[max(y0, 0):max(y1, y0 + 1), max(x0, 0):max(x1, x0 + 1)] = it["grey"]
        elif it["kind"] == "text":
            tmp = np.zeros((h, w), np.uint8)
            org = (round(it["org"][0]), round(it["org"][1]))
            cv2.putText(tmp, it["text"], org, _FONTS[it["font"]], it["scale"], 255,
                        it["thickness"], cv2.LINE_AA)  # fmt: skip
            alpha = tmp.astype(np.float32) / 255.0
            img *= 1.0 - alpha
            img += alpha * it["grey"]
