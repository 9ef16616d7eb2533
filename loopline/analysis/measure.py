"""Per-frame measurement: Detections → :class:`FrameResult` (pure; no state between frames).

Instances without a mask (:class:`BoxOnly`: the daemon keeps masks for ``pool.max_instances``
instances a frame and sends only the boxes, scores and classes of the rest) are still counted
and, where their box suffices, measured: a loop becomes the ellipse inscribed in its box
(``loop_from_box``), a dislocation is counted (``lines_without_mask``) but not traced.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from ..calibration import Calibration
from .container import FrameResult
from .lines import N_POINTS, trace_lines
from .loops import box_loop, fit_loop
from .pileups import group_pileups

logger = logging.getLogger(__name__)

__all__ = ["BoxOnly", "MeasureOptions", "frame_densities", "measure_frame"]

LINE_CLASS = 0
LOOP_CLASS = 1


@dataclass(frozen=True)
class MeasureOptions:
    """Options of :func:`measure_frame`.

    Attributes
    ----------
    n_points : int
        Points per line representation (50).
    min_score : float
        Detections below this confidence are ignored.
    min_line_length_px : float
        Shorter lines (after measuring) are dropped.
    max_spacing_px, max_angle_deg : float
        Pile-up grouping (see :func:`loopline.analysis.pileups.group_pileups`).
    curvature_method : {"gaussian", "spline"}
        See :func:`loopline.analysis.lines.curvature`.
    loop_edge_correction_px : float
        See :func:`loopline.analysis.loops.fit_loop`.
    impl : {"numba", "python"}
        Kernel implementation.
    """

    n_points: int = N_POINTS
    min_score: float = 0.0
    min_line_length_px: float = 3.0
    max_spacing_px: float = 100.0
    max_angle_deg: float = 25.0
    curvature_method: str = "gaussian"
    loop_edge_correction_px: float = 1.0
    impl: str = "numba"

    def __post_init__(self) -> None:
        if self.n_points < 5:
            raise ValueError(f"n_points must be >= 5, got {self.n_points}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must lie in [0, 1], got {self.min_score}")
        if not self.max_spacing_px > 0:
            raise ValueError(f"max_spacing_px must be > 0, got {self.max_spacing_px}")
        if not 0 < self.max_angle_deg <= 90:
            raise ValueError(f"max_angle_deg must lie in (0, 90], got {self.max_angle_deg}")
        if self.impl not in ("numba", "python"):
            raise ValueError(f"impl must be 'numba' or 'python', got {self.impl!r}")


@dataclass(frozen=True)
class BoxOnly:
    """Instances known by their box only (their mask was not kept).

    Attributes
    ----------
    boxes : (K, 4) float32
        Boxes ``x0, y0, x1, y1`` in frame pixels.
    scores : (K,) float32
        Confidence in [0, 1].
    classes : (K,) int64
        Class index (0 dislocation, 1 loop).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        b = np.asarray(self.boxes, np.float32)
        s = np.asarray(self.scores, np.float32)
        c = np.asarray(self.classes)
        k = s.shape[0] if s.ndim == 1 else -1
        if s.ndim != 1:
            raise ValueError(f"scores must have shape (K,), got {s.shape}")
        if b.shape != (k, 4):
            raise ValueError(f"boxes must have shape ({k}, 4), got {b.shape}")
        if c.shape != (k,) or (k and not np.issubdtype(c.dtype, np.integer)):
            raise ValueError(f"classes must be ({k},) integers, got {c.shape} {c.dtype}")
        object.__setattr__(self, "boxes", b)
        object.__setattr__(self, "scores", s)
        object.__setattr__(self, "classes", c.astype(np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def frame_densities(
    shape: tuple[int, int], line_length_px: np.ndarray, n_loops: int, calibration: Calibration,
    *, lines_without_mask: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Counts and densities of one frame, units in the keys.

    ``line_length_density_per_um`` is projected line length per field area (µm/µm²);
    ``line_density_per_m2`` divides by the foil volume (the usual dislocation density, needs
    the foil thickness). Loop densities are multiplied by the visibility factor (Shen et al.
    2021: 7/4 for loops invisible under their imaging condition). ``lines_without_mask``
    dislocations are counted in ``line_count``; their length is unknown, so the line length
    densities are NaN (not measured) when there are any.
    """
    nm = calibration.scale
    area_um2 = shape[0] * shape[1] * nm * nm * 1e-6
    thick = calibration.foil_thickness_nm
    total_um = float(np.sum(line_length_px)) * nm * 1e-3
    if lines_without_mask:
        total_um = math.nan  # a sum over some of the lines is no line density
    vis = calibration.visibility_factor
    vol_m3 = area_um2 * 1e-12 * thick * 1e-9 if thick else math.nan
    return {
        "line_count": float(len(line_length_px) + lines_without_mask),
        "loop_count": float(n_loops),
        "field_area_um2": area_um2,
        "line_length_density_per_um": total_um / area_um2,
        "line_density_per_m2": total_um * 1e-6 / vol_m3,
        "loop_areal_density_per_um2": vis * n_loops / area_um2,
        "loop_density_per_m3": vis * n_loops / vol_m3,
    }


def measure_frame(
    detections,
    *,
    index: int,
    time_s: float,
    calibration: Calibration,
    options: MeasureOptions | None = None,
    box_only: BoxOnly | None = None,
) -> FrameResult:
    """Measure every line and loop of one frame.

    Parameters
    ----------
    detections : loopline.engines.base.Detections
        Instance masks (N, H, W) bool with boxes, scores and classes (0 line, 1 loop).
    index : int
        Frame number (>= 0).
    time_s : float
        Frame time, s (finite).
    calibration : Calibration
        Pixel size, glide direction, foil thickness, visibility factor, dose.
    options : MeasureOptions, optional
    box_only : BoxOnly, optional
        Further instances of the frame whose masks were not kept: each loop is the ellipse
        inscribed in its box (:func:`~loopline.analysis.loops.box_loop`, marked in
        ``loop_from_box``, after the loops measured from masks); each dislocation is counted
        in ``lines_without_mask``, not traced. ``min_score`` applies to them too.

    Returns
    -------
    FrameResult
        Untracked (track ids -1, drift 0); timings of the engine's stages plus ``lines``,
        ``loops``, ``pileups`` and ``measure`` (their sum with overhead), ms.

    Raises
    ------
    ValueError
        For a NaN/inf time, a negative index or an unknown class. An empty frame, an empty
        mask or an all-foreground mask give well-defined results (no object, or one object
        spanning the frame), never an error; so does a box-only loop whose box has no area
        (no object, as an empty mask).
    """
    opt = options or MeasureOptions()
    t_start = time.perf_counter()
    if not math.isfinite(float(time_s)):
        raise ValueError(f"time_s must be finite, got {time_s!r}")
    masks, boxes = detections.masks, detections.boxes
    shape = detections.shape
    classes = np.asarray(detections.classes)
    extra = box_only if box_only is not None else BoxOnly(np.zeros((0, 4)), np.zeros(0),
                                                         np.zeros(0, np.int64))  # fmt: skip
    unknown = set(np.unique(np.concatenate([classes, extra.classes])).tolist()) - {
        LINE_CLASS, LOOP_CLASS}
    if unknown:
        raise ValueError(f"unknown detection classes {sorted(unknown)} (0 line, 1 loop)")
    keep = np.asarray(detections.scores) >= opt.min_score

    t0 = time.perf_counter()
    traces, l_scores = [], []
    line_idx = np.flatnonzero(keep & (classes == LINE_CLASS))
    measured = trace_lines(masks, np.asarray(boxes)[line_idx], index=line_idx,
                           n_points=opt.n_points, curvature_method=opt.curvature_method,
                           impl=opt.impl)  # fmt: skip
    for i, tr in zip(line_idx, measured, strict=True):
        if tr is None or tr.length_px < opt.min_line_length_px:
            continue
        traces.append(tr)
        l_scores.append(float(detections.scores[i]))
    t1 = time.perf_counter()
    fits, o_scores = [], []
    for i in np.flatnonzero(keep & (classes == LOOP_CLASS)):
        f = fit_loop(masks[i], box=boxes[i], edge_correction_px=opt.loop_edge_correction_px)
        if f is None:
            continue
        fits.append(f)
        o_scores.append(float(detections.scores[i]))
    n_masked = len(fits)
    keep_b = extra.scores >= opt.min_score
    for i in np.flatnonzero(keep_b & (extra.classes == LOOP_CLASS)):
        f = box_loop(extra.boxes[i])
        if f is None:
            continue
        fits.append(f)
        o_scores.append(float(extra.scores[i]))
    from_box = np.arange(len(fits)) >= n_masked
    untraced = int(np.count_nonzero(keep_b & (extra.classes == LINE_CLASS)))
    t2 = time.perf_counter()
    n = len(traces)
    pts = (np.stack([tr.points for tr in traces]) if n
           else np.zeros((0, opt.n_points, 2)))  # fmt: skip
    groups = group_pileups(pts, glide_dir=calibration.glide_dir,
                           max_spacing_px=opt.max_spacing_px,
                           max_angle_deg=opt.max_angle_deg, impl=opt.impl)  # fmt: skip
    t3 = time.perf_counter()
    lengths = np.array([tr.length_px for tr in traces], np.float64)
    timings = dict(detections.timings_ms)
    timings.update(
        lines=(t1 - t0) * 1e3,
        loops=(t2 - t1) * 1e3,
        pileups=(t3 - t2) * 1e3,
        measure=(t3 - t_start) * 1e3,
    )
    result = FrameResult(
        index=index, time_s=float(time_s), shape=shape, nm_per_px=calibration.scale,
        line_track_id=np.full(n, -1, np.int64), line_score=np.array(l_scores, np.float32),
        line_points_px=pts, line_length_px=lengths,
        line_width_px=np.array([tr.width_px for tr in traces], np.float64),
        line_pieces=np.array([tr.pieces for tr in traces], np.int64),
        line_curvature_per_px=(np.stack([tr.curvature_per_px for tr in traces]) if n
                               else np.zeros((0, opt.n_points))),
        line_pileup=groups.line_pileup, line_rank=groups.line_rank,
        pileup_id=np.arange(len(groups.glide_source), dtype=np.int64),
        pileup_glide_dir=groups.glide_dir, pileup_glide_source=groups.glide_source,
        pair_lines=groups.pair_lines, pair_pileup=groups.pair_pileup,
        pair_rank=groups.pair_rank, pair_spacing_px=groups.pair_spacing_px,
        loop_track_id=np.full(len(fits), -1, np.int64),
        loop_score=np.array(o_scores, np.float32),
        loop_center_px=(np.stack([f.center for f in fits]) if fits else np.zeros((0, 2))),
        loop_major_px=np.array([f.major_px for f in fits], np.float64),
        loop_minor_px=np.array([f.minor_px for f in fits], np.float64),
        loop_angle_deg=np.array([f.angle_deg for f in fits], np.float64),
        loop_area_px2=np.array([f.area_px2 for f in fits], np.float64),
        densities=frame_densities(shape, lengths, len(fits), calibration,
                                  lines_without_mask=untraced),
        dose_dpa=calibration.dose_at(index, float(time_s)),
        timings_ms=timings, loop_from_box=from_box, lines_without_mask=untraced,
        loop_major_se_px=np.array([f.major_se_px for f in fits], np.float64),
    )  # fmt: skip
    logger.debug("frame %d: %d lines, %d loops, %d pile-ups in %.2f ms", index, n, len(fits),
                 result.n_pileups, timings["measure"])  # fmt: skip
    return result
