"""Scenes: the complete, JSON-serialisable description of one synthetic image or video.

``sample_scene`` draws every random choice (parameters, slip systems, dislocation shapes,
loops, kinematics, noise seeds) from a seed and records it; ``lines_at`` and ``loops_at`` turn
a scene into exact geometry at a frame. Rendering (``render.py``) reads only the scene, so a
scene written to ``params/*.json`` regenerates its image exactly.

Geometry of a pile-up (Govind et al. 2023, section 2.3): two parallel slip traces at angle
``slip_angle`` and distance ``slip_width``. In local coordinates u (along the traces, +u is
the glide direction) and v (across, from -slip_width/2 to +slip_width/2), dislocation k is the
cubic spline u = u_k(t) + s_k(v) through its support points; u_0 is the leading dislocation and
the others follow at cumulative spacings S_k behind it. Over a video the leader moves at
``lead_velocity`` px/frame and every spacing is scaled by (1 + spacing_rate * t / (F - 1)), so
each dislocation glides at a constant, known velocity; a scripted avalanche (``avalanche_frame``
>= 0) adds ``avalanche_speed`` px/frame to every line of the first pile-up over the frames
``avalanche_frame`` .. ``avalanche_frame + avalanche_frames - 1`` (the velocity of a frame is
its displacement since the previous frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline

from .distractors import sample_distractors, sample_overlays
from .params import Preset

__all__ = ["Line", "Loop", "lines_at", "loops_at", "sample_scene"]

SCENE_VERSION = 1
_BG_KEYS = (
    "lambda1", "lambda2", "w_perlin", "w_white", "s1", "r_noise", "s2",
    "gradient", "bg_low", "bg_high", "bg_contrast",
)  # fmt: skip


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def sample_scene(
    preset: Preset,
    seed: int,
    index: int,
    *,
    frames: int = 1,
    backgrounds: list[str] | None = None,
) -> dict[str, Any]:
    """Draw one scene (a still when ``frames == 1``, else a video) from ``preset``.

    The random stream is ``SeedSequence([seed, index])``, so sample ``index`` of a run is the
    same whatever else is generated, in whatever order.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    w, h = preset.fixed("width"), preset.fixed("height")
    scene: dict[str, Any] = {
        "version": SCENE_VERSION,
        "preset": preset.name,
        "seed": seed,
        "index": index,
        "width": w,
        "height": h,
        "bit_depth": preset.fixed("bit_depth"),
        "nm_per_px": preset.fixed("nm_per_px"),
        "fps": preset.fixed("fps"),
        "frames": frames,
        "label_width": preset.fixed("label_width"),
        "min_line_length": preset.fixed("min_line_length"),
    }
    # Stage drift of the whole field of view, px/frame.
    drift_speed = preset.sample("stage_drift", rng) if frames > 1 else 0.0
    drift_dir = rng.uniform(0, 2 * np.pi)
    scene["stage_drift"] = [
        _r(drift_speed * np.cos(drift_dir)),
        _r(drift_speed * np.sin(drift_dir)),
    ]

    bg: dict[str, Any] = {k: _r(preset.sample(k, rng)) for k in _BG_KEYS}
    bg["gradient_angle"] = _r(rng.uniform(0, 360))
    bg["noise_seed"] = int(rng.integers(0, 2**31 - 1))
    if backgrounds and rng.uniform() < preset.sample("real_background_prob", rng):
        picks = rng.choice(len(backgrounds), size=2, replace=len(backgrounds) < 2)
        bg["kind"] = "real"
        bg["opacity"] = _r(preset.sample("real_background_opacity", rng))
        bg["patches"] = [
            {"file": backgrounds[int(i)], "rot90": int(rng.integers(0, 4)),
             "flip": bool(rng.integers(0, 2))}
            for i in picks
        ]  # fmt: skip
    else:
        bg["kind"] = "perlin"
    scene["background"] = bg
    scene["camera_noise"] = _r(preset.sample("camera_noise", rng))
    scene["noise_seed"] = int(rng.integers(0, 2**31 - 1))

    next_id = 0
    pileups = []
    n_pileups = preset.sample("pileups", rng)
    for p in range(n_pileups):
        pu, next_id = _sample_pileup(preset, rng, p, next_id, w, h, frames)
        pileups.append(pu)
    _avalanche(pileups, preset, frames)
    scene["pileups"] = pileups
    # Domain randomisation (issue 15) draws from a stream of its own, so the presets without it
    # keep their scenes, and their bytes, exactly; its keys are written only when it is on.
    rng2 = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))
    scene["loops"] = _sample_loops(preset, rng, next_id, w, h, frames, rng2)
    _randomise(scene, preset, rng2)
    # Kinked lines, shaded slip bands and vignetting: a third stream, so that scenes drawn
    # before these keys existed keep every byte.
    _texture(scene, preset, np.random.default_rng(np.random.SeedSequence([seed, index, 2])))
    return scene


def _texture(scene: dict[str, Any], preset: Preset, rng: np.random.Generator) -> None:
    """Waviness of each line, shading of each slip band and vignetting (keys only when on)."""
    wiggle_hi = preset.sample("line_wiggle", rng)
    p_band = preset.sample("band_prob", rng)
    for pu in scene["pileups"]:
        offs = sorted(d["offset"] for d in pu["dislocations"])
        gap = min(np.diff(offs)) if len(offs) > 1 else np.inf
        if wiggle_hi > 0:
            # Lines of a pile-up do not cross: the waviness stays below a fifth of the spacing.
            cap = min(wiggle_hi, 0.2 * gap)
            for d in pu["dislocations"]:
                amp = rng.uniform(0.0, cap)
                d["wiggle"] = [
                    [_r(amp * rng.uniform(0.3, 1.0)), _r(preset.sample("wiggle_wavelength", rng)),
                     _r(rng.uniform(0, 2 * np.pi))]
                    for _ in range(3)
                ]  # fmt: skip
        if p_band > 0 and pu["traces_visible"] and rng.uniform() < p_band:
            sign = 1.0 if rng.uniform() < 0.5 else -1.0
            pu["band_contrast"] = _r(sign * preset.sample("band_contrast", rng))
    vignette = preset.sample("vignette", rng)
    if vignette > 0:
        scene["vignette"] = [
            _r(vignette), _r(rng.uniform(0.3, 0.7) * scene["width"]),
            _r(rng.uniform(0.3, 0.7) * scene["height"]),
        ]  # fmt: skip


def _randomise(scene: dict[str, Any], preset: Preset, rng: np.random.Generator) -> None:
    """Bright lines, label widths of dense pile-ups, distractors, overlays, blur and gamma."""
    w, h = scene["width"], scene["height"]
    p_bright = preset.sample("line_bright_prob", rng)
    for pu in scene["pileups"]:
        if p_bright > 0:
            pu["bright"] = bool(rng.uniform() < p_bright)
    frac = preset.sample("label_spacing_frac", rng)
    if frac > 0:
        scene["label_spacing_frac"] = _r(frac)
    distractors = sample_distractors(preset, rng, w, h)
    if distractors:
        scene["distractors"] = distractors
    overlays = sample_overlays(preset, rng, w, h)
    if overlays:
        scene["overlays"] = overlays
    blur = preset.sample("image_blur", rng)
    if blur > 0:
        scene["image_blur"] = _r(blur)
    gamma = preset.sample("gamma", rng)
    if gamma != 1.0:
        scene["gamma"] = _r(gamma)


def _sample_pileup(
    preset: Preset, rng: np.random.Generator, pid: int, next_id: int, w: int, h: int, frames: int
) -> tuple[dict[str, Any], int]:
    alpha = preset.sample("slip_angle", rng)
    width = preset.sample("slip_width", rng)
    n = preset.sample("dislocations", rng)
    spacing0 = preset.sample("spacing", rng)
    growth = preset.sample("spacing_growth", rng)
    gaps = [spacing0 * (1.0 + growth * j) for j in range(max(n - 1, 0))]
    cum = np.concatenate([[0.0], np.cumsum(gaps)]) if n else np.zeros(0)
    pinned = rng.uniform() < preset.sample("lead_pinned_prob", rng)
    v_lead = 0.0 if pinned or frames == 1 else preset.sample("lead_velocity", rng)
    rate = preset.sample("spacing_rate", rng) if frames > 1 else 0.0
    # Centre of the pile-up in the image, inset so most of it is visible; the leader starts
    # ahead of the centre by half the pile-up length, less half its travel over the video.
    margin = 0.15
    cx = rng.uniform(margin * w, (1 - margin) * w)
    cy = rng.uniform(margin * h, (1 - margin) * h)
    travel = v_lead * (frames - 1)
    u_lead0 = (cum[-1] if n else 0.0) / 2.0 - travel / 2.0
    k_support = preset.sample("support_points", rng)
    beta = np.deg2rad(preset.sample("line_angle", rng))
    bow = preset.sample("bow", rng)
    v_sup = np.linspace(-width / 2, width / 2, k_support)
    base = bow * width * (1.0 - (2.0 * v_sup / width) ** 2) + np.tan(beta) * v_sup
    dislocations = []
    # Dislocations of one pile-up glide on one plane and do not cross: optionally keep the
    # shape noise well below the spacing (0 = the presets' rule, noise as a share of the width).
    cap = preset.fixed("jitter_spacing_frac") * spacing0
    for k in range(n):
        jitter = preset.sample("shape_jitter", rng) * width
        if cap > 0:
            jitter = min(jitter, cap)
        s = base + rng.normal(0.0, 1.0, size=k_support) * jitter
        dislocations.append(
            {
                "id": next_id,
                "offset": _r(float(cum[k])),
                "support_u": [_r(x) for x in s],
                "contrast": _r(preset.sample("line_contrast", rng)),
                "width": _r(preset.sample("line_width", rng)),
            }
        )
        next_id += 1
    trace_sign = 1.0 if rng.uniform() < 0.5 else -1.0
    pileup = {
        "id": pid,
        "slip_angle": _r(alpha),
        "slip_width": _r(width),
        "center": [_r(cx), _r(cy)],
        "support_v": [_r(x) for x in v_sup],
        "u_lead0": _r(u_lead0),
        "lead_velocity": _r(v_lead),
        "spacing_rate": _r(rate),
        "blur": _r(preset.sample("line_blur", rng)),
        "traces_visible": bool(rng.uniform() < preset.sample("slip_trace_prob", rng)),
        "trace_contrast": _r(trace_sign * preset.sample("slip_trace_contrast", rng)),
        "trace_width": _r(preset.sample("slip_trace_width", rng)),
        "dislocations": dislocations,
    }
    return pileup, next_id


def _avalanche(pileups: list[dict[str, Any]], preset: Preset, frames: int) -> None:
    """Script a burst of the first pile-up (``avalanche_frame`` >= 0; no random draw, so the
    rest of the scene is the same with or without it)."""
    f0 = int(preset.fixed("avalanche_frame"))
    if f0 < 0 or frames < 2 or not pileups or f0 >= frames:
        return
    d = int(preset.fixed("avalanche_frames"))
    speed = float(preset.fixed("avalanche_speed"))
    pu = pileups[0]
    pu["avalanche"] = {"frame": f0, "frames": d, "speed_px_per_frame": _r(speed)}
    # keep the pile-up in view: start it back by half the burst's travel
    pu["u_lead0"] = _r(pu["u_lead0"] - speed * min(d, frames - f0) / 2.0)


def _chains(rng: np.random.Generator, w: int, h: int) -> list[np.ndarray]:
    """One or two smooth curves across the frame along which decorated lines carry loops."""
    out = []
    for _ in range(int(rng.integers(1, 3))):
        a = rng.uniform(0, np.pi)
        c = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        t = np.linspace(-0.8, 0.8, 4) * max(w, h)
        off = rng.normal(0.0, 0.08 * max(w, h), size=4)
        sup = c + np.outer(t, [np.cos(a), np.sin(a)]) + np.outer(off, [-np.sin(a), np.cos(a)])
        spline = CubicSpline(np.linspace(0, 1, 4), sup, bc_type="natural")
        out.append(spline(np.linspace(0, 1, 600)))
    return out


def _sample_loops(
    preset: Preset, rng: np.random.Generator, next_id: int, w: int, h: int, frames: int,
    rng2: np.random.Generator | None = None,
) -> list[dict[str, Any]]:
    n = preset.sample("loops", rng)
    gap = preset.fixed("loop_min_gap")
    p_chain = preset.sample("loop_chain_prob", rng2) if rng2 is not None else 0.0
    chains = _chains(rng2, w, h) if p_chain > 0 and n > 0 else []
    loops: list[dict[str, Any]] = []
    placed: list[tuple[float, float, float]] = []  # x, y, largest half-axis over the video
    attempts = 0
    while len(loops) < n and attempts < 50 * max(n, 1):
        attempts += 1
        major = preset.sample_log("loop_diameter", rng)
        aspect = preset.sample("loop_aspect", rng)
        growth = preset.sample("loop_growth", rng) if frames > 1 else 0.0
        drift = preset.sample("loop_drift", rng) if frames > 1 else 0.0
        ddir = rng.uniform(0, 2 * np.pi)
        born_late = frames > 1 and rng.uniform() < preset.sample("loop_birth_prob", rng)
        birth = int(rng.integers(1, frames)) if born_late else 0
        x = rng.uniform(0.0, w)
        y = rng.uniform(0.0, h)
        if chains and rng2.uniform() < p_chain:
            curve = chains[int(rng2.integers(0, len(chains)))]
            x, y = curve[int(rng2.integers(0, len(curve)))] + rng2.normal(0.0, 0.15 * major, 2)
            if not (0 <= x < w and 0 <= y < h):
                continue
        r_max = 0.5 * max(major, major + growth * (frames - 1 - birth))
        travel = drift * (frames - 1 - birth)
        if any(math.hypot(x - px, y - py) < r_max + pr + gap + travel for px, py, pr in placed):
            continue
        placed.append((x, y, r_max + travel))
        loops.append(
            {
                "id": next_id,
                "center": [_r(x), _r(y)],
                "major": _r(major),
                "aspect": _r(aspect),
                "angle": _r(rng.uniform(0.0, 180.0)),
                "ring": bool(rng.uniform() < preset.sample("loop_ring_prob", rng)),
                "contrast": _r(preset.sample("loop_contrast", rng)),
                "rim": _r(preset.sample("loop_rim", rng)),
                "blur": _r(preset.sample("loop_blur", rng)),
                "growth": _r(growth),
                "drift": [_r(drift * np.cos(ddir)), _r(drift * np.sin(ddir))],
                "birth": birth,
            }
        )
        next_id += 1
    return loops


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Line:
    """One visible dislocation at one frame.

    ``points`` is the dense (N, 2) polyline in image (x, y) px, sampled every <= 0.5 px;
    ``length`` its arc length in px; ``velocity`` the glide velocity in px/frame along
    ``glide_dir`` (unit vector).
    """

    id: int
    pileup: int
    points: np.ndarray
    length: float
    velocity: float
    glide_dir: tuple[float, float]
    contrast: float
    width: float


@dataclass(frozen=True)
class Loop:
    """One visible loop at one frame: centre (x, y) px, full axes px, angle deg."""

    id: int
    center: tuple[float, float]
    major: float
    minor: float
    angle: float
    ring: bool
    contrast: float
    rim: float
    blur: float


def _frac(t: int, frames: int) -> float:
    return t / (frames - 1) if frames > 1 else 0.0


def drift_at(scene: dict[str, Any], t: int) -> tuple[float, float]:
    dx, dy = scene["stage_drift"]
    return dx * t, dy * t


def _visible_piece(pts: np.ndarray, w: int, h: int) -> np.ndarray | None:
    """The part of a dense polyline inside the image; None if it is split in two or more."""
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    if not inside.any():
        return None
    idx = np.flatnonzero(inside)
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    if len(runs) > 1:
        return None
    return pts[runs[0]]


def _arc_length(pts: np.ndarray) -> float:
    return float(np.hypot(*np.diff(pts, axis=0).T).sum()) if len(pts) > 1 else 0.0


def pileup_frame(pu: dict[str, Any], t: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions u_k(t) (px) and velocities (px/frame) of a pile-up's dislocations."""
    offs = np.array([d["offset"] for d in pu["dislocations"]], dtype=float)
    scale = 1.0 + pu["spacing_rate"] * _frac(t, frames)
    u = pu["u_lead0"] + pu["lead_velocity"] * t - offs * scale
    vel = pu["lead_velocity"] - offs * pu["spacing_rate"] / max(frames - 1, 1)
    av = pu.get("avalanche")
    if av:  # every line jumps by speed px from frame f0 - 1 to f0, ..., to f0 + frames - 1
        speed, f0, d = av["speed_px_per_frame"], av["frame"], av["frames"]
        u = u + speed * min(max(t - f0 + 1, 0), d)
        if f0 <= t < f0 + d:
            vel = vel + speed
    return u, vel


def lines_at(scene: dict[str, Any], t: int = 0) -> list[Line]:
    """Every visible dislocation line of ``scene`` at frame ``t`` (drift included)."""
    w, h, frames = scene["width"], scene["height"], scene["frames"]
    ddx, ddy = drift_at(scene, t)
    out: list[Line] = []
    for pu in scene["pileups"]:
        a = np.deg2rad(pu["slip_angle"])
        tdir = np.array([np.cos(a), np.sin(a)])
        ndir = np.array([-np.sin(a), np.cos(a)])
        c = np.array(pu["center"]) + np.array([ddx, ddy])
        v_sup = np.array(pu["support_v"])
        n_dense = max(int(np.ceil(pu["slip_width"] * 3)), 8)
        v = np.linspace(v_sup[0], v_sup[-1], n_dense)
        u_pos, vel = pileup_frame(pu, t, frames)
        for d, uk, vk in zip(pu["dislocations"], u_pos, vel, strict=True):
            s = CubicSpline(v_sup, np.array(d["support_u"]), bc_type="natural")(v)
            for amp, lam, phase in d.get("wiggle", ()):
                s = s + amp * np.sin(2 * np.pi * v / lam + phase)
            pts = c + np.outer(uk + s, tdir) + np.outer(v, ndir)
            piece = _visible_piece(pts, w, h)
            if piece is None:
                continue
            length = _arc_length(piece)
            if length < scene["min_line_length"]:
                continue
            out.append(
                Line(
                    id=d["id"], pileup=pu["id"], points=piece, length=length, velocity=float(vk),
                    glide_dir=(float(tdir[0]), float(tdir[1])), contrast=d["contrast"],
                    width=d["width"],
                )
            )  # fmt: skip
    return out


def loops_at(scene: dict[str, Any], t: int = 0) -> list[Loop]:
    """Every loop of ``scene`` present at frame ``t`` with its centre inside the image."""
    w, h = scene["width"], scene["height"]
    ddx, ddy = drift_at(scene, t)
    out = []
    for lp in scene["loops"]:
        if t < lp["birth"]:
            continue
        age = t - lp["birth"]
        major = lp["major"] + lp["growth"] * age
        if major < 2.0:
            continue
        x = lp["center"][0] + lp["drift"][0] * age + ddx
        y = lp["center"][1] + lp["drift"][1] * age + ddy
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            continue
        out.append(
            Loop(
                id=lp["id"], center=(x, y), major=major, minor=major / lp["aspect"],
                angle=lp["angle"], ring=lp["ring"], contrast=lp["contrast"], rim=lp["rim"],
                blur=lp["blur"],
            )
        )  # fmt: skip
    return out


def band_polygons(scene: dict[str, Any], t: int = 0) -> list[tuple[np.ndarray, float]]:
    """Shaded slip bands at frame ``t``: (4x2 corners, signed grey change)."""
    ddx, ddy = drift_at(scene, t)
    span = 2.0 * (scene["width"] + scene["height"])
    out = []
    for pu in scene["pileups"]:
        if not pu.get("band_contrast"):
            continue
        a = np.deg2rad(pu["slip_angle"])
        tdir = np.array([np.cos(a), np.sin(a)])
        ndir = np.array([-np.sin(a), np.cos(a)])
        c = np.array(pu["center"]) + np.array([ddx, ddy])
        half = 0.5 * pu["slip_width"] * ndir
        quad = np.stack([c - half - span * tdir, c - half + span * tdir,
                         c + half + span * tdir, c + half - span * tdir])  # fmt: skip
        out.append((quad, pu["band_contrast"]))
    return out


def trace_segments(scene: dict[str, Any], t: int = 0) -> list[tuple[np.ndarray, float, float]]:
    """Visible slip traces at frame ``t``: (2x2 end points, signed contrast, width)."""
    ddx, ddy = drift_at(scene, t)
    span = 2.0 * (scene["width"] + scene["height"])
    out = []
    for pu in scene["pileups"]:
        if not pu["traces_visible"]:
            continue
        a = np.deg2rad(pu["slip_angle"])
        tdir = np.array([np.cos(a), np.sin(a)])
        ndir = np.array([-np.sin(a), np.cos(a)])
        c = np.array(pu["center"]) + np.array([ddx, ddy])
        for side in (-0.5, 0.5):
            mid = c + side * pu["slip_width"] * ndir
            seg = np.stack([mid - span * tdir, mid + span * tdir])
            out.append((seg, pu["trace_contrast"], pu["trace_width"]))
    return out


def list_backgrounds(folder: Path | None) -> list[str]:
    """Image files usable as real background patches, sorted (part of the seed contract)."""
    if folder is None:
        return []
    from ..io.frames import IMAGE_SUFFIXES

    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no background images (png/tif/jpg) in {folder}")
    return files
