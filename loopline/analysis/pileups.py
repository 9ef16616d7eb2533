"""Pile-ups: group lines, find the glide direction, order from the leader, measure spacings.

Each line is joined to its nearest neighbour on either side that runs beside it: nearly
parallel (within ``max_angle_deg``), mostly beside rather than behind it, and close (a cheap
proxy of the mean closest distance below ``max_spacing_px``); pile-ups are the connected
groups of these chains.

The glide direction of a pile-up is, in order of preference: the calibration's, the principal
axis of its lines' centroids (the lines of a pile-up are displaced along the glide direction),
or the normal of a lone line. Its sign is what the images cannot show directly: a pile-up is
tightest at its head, against the obstacle, so the end where the spacings are smallest is the
leader, and the glide direction points towards it (``source="spacing"``). With two lines or no
trend it falls back to a fixed convention (``"convention"``: x component positive); the online
tracker then keeps the sign consistent from frame to frame.

Spacing between neighbours is the symmetric mean closest distance between their 50-point
representations (Govind et al. 2023, section 5.4).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ._kernels import get_kernels

__all__ = ["PileupGroups", "group_pileups"]

_PROBE = np.array([0.1, 0.3, 0.5, 0.7, 0.9])


@dataclass(frozen=True)
class PileupGroups:
    """Pile-up assignment of N lines.

    Attributes
    ----------
    line_pileup : (N,) int64
        Pile-up index of each line (every line is in one; a lone line is a pile-up of one).
    line_rank : (N,) int64
        0 for the leading line, increasing backwards.
    glide_dir : (P, 2) float64
        Unit glide direction (x, y) of each pile-up, pointing from its tail to its leader.
    glide_source : tuple of str
        Per pile-up: ``"calibration"``, ``"spacing"``, ``"convention"`` or ``"normal"``.
    pair_lines : (Q, 2) int64
        Neighbouring lines (leader side first).
    pair_pileup, pair_rank : (Q,) int64
        Pile-up of each pair and its place from the leader (0 = leader and second line).
    pair_spacing_px : (Q,) float64
        Mean closest distance of each pair, px.
    """

    line_pileup: np.ndarray
    line_rank: np.ndarray
    glide_dir: np.ndarray
    glide_source: tuple[str, ...]
    pair_lines: np.ndarray
    pair_pileup: np.ndarray
    pair_rank: np.ndarray
    pair_spacing_px: np.ndarray


@functools.lru_cache(maxsize=16)
def _probe_idx(kpts: int) -> np.ndarray:
    idx = np.clip(np.round(_PROBE * (kpts - 1)).astype(int), 0, kpts - 1)
    idx.flags.writeable = False
    return idx


def _convention(g: np.ndarray) -> np.ndarray:
    return -g if (g[0] < 0 or (g[0] == 0 and g[1] < 0)) else g


def group_pileups(
    points: np.ndarray,
    *,
    glide_dir: tuple[float, float] | np.ndarray | None = None,
    max_spacing_px: float = 100.0,
    max_angle_deg: float = 25.0,
    impl: str = "numba",
) -> PileupGroups:
    """Group lines into pile-ups, order them and measure neighbour spacings.

    Parameters
    ----------
    points : (N, K, 2) float
        Each line's K equally spaced points (x, y) px.
    glide_dir : (2,) float, optional
        Glide direction from a calibration profile (image x, y; normalised here). It fixes
        both the axis and the sign (the leader is the line farthest along it).
    max_spacing_px : float
        Largest distance px between neighbouring lines of one pile-up.
    max_angle_deg : float
        Largest angle between the chords of neighbouring lines.
    impl : {"numba", "python"}
        Kernel implementation.

    Returns
    -------
    PileupGroups
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[2] != 2:
        raise ValueError(f"points must have shape (N, K, 2), got {pts.shape}")
    n, kpts = pts.shape[0], pts.shape[1]
    if n and kpts < 2:
        raise ValueError(f"each line needs at least 2 points, got {kpts}")
    g_cal = None
    if glide_dir is not None:
        g_cal = np.asarray(glide_dir, dtype=np.float64).reshape(2)
        norm = float(np.hypot(*g_cal))
        if not math.isfinite(norm) or norm == 0:
            raise ValueError(f"glide_dir must be a non-zero finite vector, got {glide_dir}")
        g_cal = g_cal / norm
    k = get_kernels(impl)
    if n == 0:
        z = np.zeros(0, np.int64)
        return PileupGroups(z, z.copy(), np.zeros((0, 2)), (), np.zeros((0, 2), np.int64),
                            z.copy(), z.copy(), np.zeros(0))  # fmt: skip

    lines = np.ascontiguousarray(pts)
    probe_idx = _probe_idx(kpts)
    cent, t, length, probes = k.line_geometry(lines, probe_idx)
    sin_max = math.sin(math.radians(max_angle_deg))
    adj = k.neighbours(lines, probes, cent, t, length, float(max_spacing_px), sin_max)
    # pile-ups: connected groups, numbered in the order of their lowest line index
    line_pileup = k.components(adj)
    line_rank = np.zeros(n, np.int64)
    p_count = int(line_pileup.max()) + 1
    glide = np.zeros((p_count, 2))
    sources: list[str] = []
    pair_lines, pair_pileup, pair_rank, pair_sp = [], [], [], []
    lookup = np.argsort(line_pileup, kind="stable")
    bounds = np.searchsorted(line_pileup[lookup], np.arange(p_count + 1))
    for p in range(p_count):
        members = lookup[bounds[p]:bounds[p + 1]]  # ascending, as flatnonzero
        m = members.size
        if g_cal is not None:
            g, src = g_cal, "calibration"
        elif m >= 2:
            # principal axis of the centroids: the major axis of their 2x2 scatter matrix
            c = cent[members] - cent[members].mean(axis=0)
            sxx, sxy, syy = c[:, 0] @ c[:, 0], c[:, 0] @ c[:, 1], c[:, 1] @ c[:, 1]
            th = 0.5 * math.atan2(2.0 * float(sxy), float(sxx - syy))
            g, src = _convention(np.array([math.cos(th), math.sin(th)])), "convention"
        else:
            tt = t[members[0]]
            g, src = _convention(np.array([-tt[1], tt[0]])), "normal"
        s = cent[members] @ g
        order = members[np.argsort(s, kind="stable")]  # ascending along g
        gaps = k.chain_spacing(lines, order.astype(np.int64))
        if src == "convention" and m >= 3:
            r = np.arange(gaps.size) - 0.5 * (gaps.size - 1)
            slope = float(r @ gaps)
            if slope > 0:  # tightest at the low end: that is the head; glide points there
                g = -g
                order, gaps = order[::-1], gaps[::-1]
                src = "spacing"
            elif slope < 0:
                src = "spacing"
        # leader = farthest along g = last in ascending order
        lead_first = order[::-1]
        gaps_lead = gaps[::-1]
        line_rank[lead_first] = np.arange(m)
        glide[p] = g
        sources.append(src)
        if m >= 2:
            pair_lines.append(np.stack([lead_first[:-1], lead_first[1:]], axis=1))
            pair_pileup.append(np.full(m - 1, p, np.int64))
            pair_rank.append(np.arange(m - 1, dtype=np.int64))
            pair_sp.append(gaps_lead)

    def cat(parts: list, dtype, shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(shape, dtype)

    return PileupGroups(
        line_pileup=line_pileup, line_rank=line_rank, glide_dir=glide,
        glide_source=tuple(sources),
        pair_lines=cat(pair_lines, np.int64, (0, 2)),
        pair_pileup=cat(pair_pileup, np.int64, (0,)), pair_rank=cat(pair_rank, np.int64, (0,)),
        pair_spacing_px=cat(pair_sp, np.float64, (0,)),
    )  # fmt: skip
