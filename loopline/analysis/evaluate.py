"""Errors of a tracked run against a synthetic sequence's ground truth (``truth.json``).

Per frame, measured lines are matched one-to-one to true lines (Hungarian assignment on the
symmetric mean closest distance between the measured 50 points and the true polyline, at
most ``max_match_px``) and loops to true loops (on centre distance). Then:

- ``length_re``: mean |L - L_true| / L_true over matched lines;
- ``spacing_re``: over measured neighbour pairs whose two lines match true lines that are
  neighbours in their pile-up (among the visible ones), mean relative error of the spacing.
  The true spacing uses the same definition (mean closest distance, Govind et al. 5.4) on the
  exact lines resampled to 50 points;
- ``velocity_re``: per line track with at least ``min_track_frames`` matched frames and a
  true speed above ``min_speed_px_per_frame``: the slope of its drift-corrected position along
  the true glide direction (accumulated frame-to-frame displacements between the lines, as in
  ``series.py``) against frame number, compared with the true velocity;
- ``loop_axis_re``: mean relative error of the major axis of matched loops;
- ``id_switches``: over every true object, the number of times its matched track id changes
  from one frame where it is matched to the next (plus tracks that hold two true objects).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from .container import FrameResult
from .lines import glide_displacement, mean_closest_distance

__all__ = ["evaluate_against_truth"]


def _resample(pts: np.ndarray, n: int) -> np.ndarray:
    from ._kernels import get_kernels

    return get_kernels("numba").resample(np.ascontiguousarray(pts, np.float64), n)


def _assign(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
    from scipy.optimize import linear_sum_assignment

    if cost.size == 0:
        return []
    c = np.where(np.isfinite(cost), cost, 1e9)
    rows, cols = linear_sum_assignment(c)
    return [(int(r), int(k)) for r, k in zip(rows, cols, strict=True) if c[r, k] <= limit]


def _re(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def evaluate_against_truth(
    results: list[FrameResult],
    sequence: dict[str, Any],
    *,
    max_match_px: float = 6.0,
    min_track_frames: int = 5,
    min_speed_px_per_frame: float = 0.05,
) -> dict[str, Any]:
    """Relative errors and identity switches of tracked results against ground truth.

    Parameters
    ----------
    results : list of FrameResult
        Tracked results of one sequence, in order; ``index`` selects the truth frame.
    sequence : dict
        One entry of ``truth.json["sequences"]``.

    Returns
    -------
    dict
        ``length_re``, ``spacing_re``, ``velocity_re``, ``loop_axis_re`` (mean absolute
        relative errors, NaN where nothing was comparable), ``id_switches`` (int) and the
        numbers of comparisons behind each (``n_lengths`` ...).
    """
    frames = {int(f["index"]): f for f in sequence["frames"]}
    pile_order = {p["id"]: p["dislocation_ids"] for p in sequence.get("pileups", [])}
    pile_dir = {p["id"]: np.array(p["glide_dir"], float) for p in sequence.get("pileups", [])}
    len_err: list[float] = []
    sp_err: list[float] = []
    axis_err: list[float] = []
    line_hist: dict[int, list[tuple[int, int]]] = defaultdict(list)  # truth id -> (frame, track)
    loop_hist: dict[int, list[tuple[int, int]]] = defaultdict(list)
    track_truth: dict[int, Counter] = defaultdict(Counter)
    track_samples: dict[int, list[tuple[int, np.ndarray, int]]] = defaultdict(list)
    truth_vel: dict[int, tuple[float, int]] = {}

    for r in results:
        fr = frames.get(r.index)
        if fr is None:
            continue
        tl = fr["lines"]
        tpts = [_resample(np.array(t["points"], float), r.line_points_px.shape[1] or 50)
                for t in tl]  # fmt: skip
        cost = np.full((r.n_lines, len(tl)), np.inf)
        cent = r.line_centroid_px
        for i in range(r.n_lines):
            for j, tp in enumerate(tpts):
                if np.hypot(*(cent[i] - tp.mean(axis=0))) > 0.5 * tl[j]["length_px"] + 20:
                    continue
                cost[i, j] = mean_closest_distance(r.line_points_px[i], tp)
        match = dict(_assign(cost, max_match_px))
        for i, j in match.items():
            t = tl[j]
            len_err.append(abs(r.line_length_px[i] - t["length_px"]) / t["length_px"])
            tid = int(r.line_track_id[i])
            line_hist[t["id"]].append((r.index, tid))
            truth_vel[t["id"]] = (float(t["velocity_px_per_frame"]), int(t["pileup"]))
            if tid >= 0:
                track_truth[tid][t["id"]] += 1
                track_samples[tid].append((r.index, r.line_points_px[i] - r.drift_px, t["id"]))
        # spacing: measured pairs whose lines are true neighbours among the visible lines
        visible = {t["id"]: j for j, t in enumerate(tl)}
        for q in range(r.pair_lines.shape[0]):
            a, b = (int(v) for v in r.pair_lines[q])
            if a not in match or b not in match:
                continue
            ta, tb = tl[match[a]], tl[match[b]]
            if ta["pileup"] != tb["pileup"]:
                continue
            order = [d for d in pile_order.get(ta["pileup"], []) if d in visible]
            ia, ib = order.index(ta["id"]), order.index(tb["id"])
            if abs(ia - ib) != 1:
                continue
            true_sp = mean_closest_distance(tpts[match[a]], tpts[match[b]])
            sp_err.append(abs(r.pair_spacing_px[q] - true_sp) / true_sp)
        # loops
        tlo = fr["loops"]
        lcost = np.full((r.n_loops, len(tlo)), np.inf)
        for i in range(r.n_loops):
            for j, t in enumerate(tlo):
                lcost[i, j] = float(np.hypot(*(r.loop_center_px[i] - np.array(t["center"]))))
        for i, j in _assign(lcost, max_match_px):
            t = tlo[j]
            axis_err.append(abs(r.loop_major_px[i] - t["major_px"]) / t["major_px"])
            loop_hist[t["id"]].append((r.index, int(r.loop_track_id[i])))

    vel_err: list[float] = []
    for tid, samples in track_samples.items():
        owner, count = track_truth[tid].most_common(1)[0]
        own = [s for s in samples if s[2] == owner]
        if count < min_track_frames or owner not in truth_vel:
            continue
        v_true, pile = truth_vel[owner]
        if abs(v_true) < min_speed_px_per_frame:
            continue
        g = pile_dir.get(pile, np.array([1.0, 0.0]))
        pos = np.cumsum([0.0] + [glide_displacement(a[1], b[1], g)
                                 for a, b in itertools.pairwise(own)])  # fmt: skip
        f = np.array([s[0] for s in own], np.float64)
        f -= f.mean()
        v = float(f @ (pos - pos.mean())) / float(f @ f)
        vel_err.append(abs(v - v_true) / abs(v_true))

    switches = 0
    for hist in (*line_hist.values(), *loop_hist.values()):
        ids = [tid for _f, tid in sorted(hist)]
        switches += sum(1 for a, b in itertools.pairwise(ids) if a != b)
    merged = sum(len(c) - 1 for c in track_truth.values() if len(c) > 1)
    return {
        "length_re": _re(len_err),
        "spacing_re": _re(sp_err),
        "velocity_re": _re(vel_err),
        "loop_axis_re": _re(axis_err),
        "id_switches": int(switches + merged),
        "n_lengths": len(len_err),
        "n_spacings": len(sp_err),
        "n_velocities": len(vel_err),
        "n_loop_axes": len(axis_err),
    }
