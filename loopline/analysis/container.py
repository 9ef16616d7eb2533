"""The one result container that travels from measurement through tracking to every sink.

:class:`FrameResult` is frozen and validated once, on construction, with errors of the form
"line_points_px must have shape (3, 50, 2), got (3, 40, 2)". Its arrays are made read-only.
Lengths are stored in pixels with the frame's pixel size beside them; the ``*_nm`` properties
convert (NaN when the pixel size is unknown). Its table rows are made by ``series.py`` and its
published form, the frame message, by ``message.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FrameResult"]

# name -> (dtype, trailing shape, size key); size keys: N lines, P pile-ups, Q pairs, M loops,
# K points per line (fixed by the first array that has it).
_ARRAYS: dict[str, tuple[type, tuple, str]] = {
    "line_track_id": (np.int64, (), "N"),
    "line_score": (np.float32, (), "N"),
    "line_points_px": (np.float64, ("K", 2), "N"),
    "line_length_px": (np.float64, (), "N"),
    "line_width_px": (np.float64, (), "N"),
    "line_pieces": (np.int64, (), "N"),
    "line_curvature_per_px": (np.float64, ("K",), "N"),
    "line_pileup": (np.int64, (), "N"),
    "line_rank": (np.int64, (), "N"),
    "pileup_id": (np.int64, (), "P"),
    "pileup_glide_dir": (np.float64, (2,), "P"),
    "pair_lines": (np.int64, (2,), "Q"),
    "pair_pileup": (np.int64, (), "Q"),
    "pair_rank": (np.int64, (), "Q"),
    "pair_spacing_px": (np.float64, (), "Q"),
    "loop_track_id": (np.int64, (), "M"),
    "loop_score": (np.float32, (), "M"),
    "loop_center_px": (np.float64, (2,), "M"),
    "loop_major_px": (np.float64, (), "M"),
    "loop_minor_px": (np.float64, (), "M"),
    "loop_angle_deg": (np.float64, (), "M"),
    "loop_area_px2": (np.float64, (), "M"),
    "loop_from_box": (np.bool_, (), "M"),
    "loop_major_se_px": (np.float64, (), "M"),
}


@dataclass(frozen=True, eq=False)
class FrameResult:
    """Everything measured in one frame.

    Attributes
    ----------
    index : int
        Frame number in the sequence (>= 0).
    time_s : float
        Acquisition time, s (finite).
    shape : (int, int)
        Frame (H, W), px.
    nm_per_px : float
        Pixel size, nm/px; NaN when unknown.
    line_track_id : (N,) int64
        Track id of each line; -1 until the tracker has linked it.
    line_score : (N,) float32
        Detection confidence.
    line_points_px : (N, K, 2) float64
        K (50) points (x, y) px equally spaced along each line.
    line_length_px : (N,) float64
        Arc length px.
    line_width_px : (N,) float64
        Mean mask width px (area / length).
    line_pieces : (N,) int64
        Pieces of a fractured mask (the largest was measured).
    line_curvature_per_px : (N, K) float64
        Signed local curvature at each point, 1/px.
    line_pileup : (N,) int64
        Index into the ``pileup_*`` arrays.
    line_rank : (N,) int64
        Place in the pile-up from its leader (0).
    pileup_id : (P,) int64
        Pile-up ids: frame-local indices from :func:`measure_frame`, persistent ids after
        tracking.
    pileup_glide_dir : (P, 2) float64
        Unit glide direction (x, y), pointing from tail to leader.
    pileup_glide_source : tuple of str
        How each glide direction was found (see ``pileups.py``).
    pair_lines : (Q, 2) int64
        Neighbouring lines (indices into the ``line_*`` arrays; leader side first).
    pair_pileup, pair_rank : (Q,) int64
        Pile-up index and place from the leader of each pair.
    pair_spacing_px : (Q,) float64
        Mean closest distance of each pair, px.
    loop_track_id : (M,) int64
        Track id of each loop; -1 until tracked.
    loop_score : (M,) float32
        Detection confidence.
    loop_center_px : (M, 2) float64
        Ellipse centre (x, y) px.
    loop_major_px, loop_minor_px : (M,) float64
        Full axes of the fitted ellipse, px.
    loop_angle_deg : (M,) float64
        Major-axis angle to x, degrees in [0, 180).
    loop_area_px2 : (M,) float64
        Ellipse area, px².
    loop_from_box : (M,) bool
        True where the loop had no mask and is the ellipse inscribed in its detection box
        (:func:`~loopline.analysis.loops.box_loop`; the daemon keeps ``pool.max_instances``
        masks a frame). None: all False.
    loop_major_se_px : (M,) float64
        Standard error of ``loop_major_px`` from the ellipse fit's residuals (NaN: not
        known, a loop from its box). None: all NaN.
    lines_without_mask : int
        Dislocations found without a mask: counted (:attr:`n_dislocations`), not traced, so
        in none of the ``line_*`` arrays.
    densities : mapping of str to float
        Counts and densities with their units in the key (``loop_density_per_m3`` ...).
    drift_px : (2,) float64
        Cumulative stage drift (x, y) px since the first frame (0 before drift correction).
    dose_dpa : float
        Accumulated dose, dpa (NaN when not calibrated).
    timings_ms : mapping of str to float
        Milliseconds per stage for this frame.
    """

    index: int
    time_s: float
    shape: tuple[int, int]
    nm_per_px: float
    line_track_id: np.ndarray
    line_score: np.ndarray
    line_points_px: np.ndarray
    line_length_px: np.ndarray
    line_width_px: np.ndarray
    line_pieces: np.ndarray
    line_curvature_per_px: np.ndarray
    line_pileup: np.ndarray
    line_rank: np.ndarray
    pileup_id: np.ndarray
    pileup_glide_dir: np.ndarray
    pileup_glide_source: tuple[str, ...]
    pair_lines: np.ndarray
    pair_pileup: np.ndarray
    pair_rank: np.ndarray
    pair_spacing_px: np.ndarray
    loop_track_id: np.ndarray
    loop_score: np.ndarray
    loop_center_px: np.ndarray
    loop_major_px: np.ndarray
    loop_minor_px: np.ndarray
    loop_angle_deg: np.ndarray
    loop_area_px2: np.ndarray
    densities: Mapping[str, float] = field(default_factory=dict)
    drift_px: np.ndarray = field(default_factory=lambda: np.zeros(2))
    dose_dpa: float = math.nan
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    loop_from_box: np.ndarray | None = None
    lines_without_mask: int = 0
    loop_major_se_px: np.ndarray | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        if self.loop_from_box is None:
            put(self, "loop_from_box", np.zeros(np.shape(self.loop_major_px)[:1], bool))
        if self.loop_major_se_px is None:
            put(self, "loop_major_se_px", np.full(np.shape(self.loop_major_px)[:1], np.nan))
        u = self.lines_without_mask
        if isinstance(u, bool) or not isinstance(u, int | np.integer) or u < 0:
            raise ValueError(f"lines_without_mask must be an int >= 0, got {u!r}")
        put(self, "lines_without_mask", int(u))
        if isinstance(self.index, bool) or not isinstance(self.index, int | np.integer):
            raise ValueError(f"index must be an int, got {self.index!r}")
        if self.index < 0:
            raise ValueError(f"index must be >= 0, got {self.index}")
        put(self, "index", int(self.index))
        t = float(self.time_s)
        if not math.isfinite(t):
            raise ValueError(f"time_s must be finite, got {self.time_s!r}")
        put(self, "time_s", t)
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (H, W) with H, W >= 1, got {self.shape}")
        put(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        s = float(self.nm_per_px)
        if not (math.isnan(s) or (math.isfinite(s) and s > 0)):
            raise ValueError(f"nm_per_px must be > 0 or NaN, got {self.nm_per_px!r}")
        put(self, "nm_per_px", s)
        sizes: dict[str, int] = {}
        for name, (dtype, trail, key) in _ARRAYS.items():
            a = np.asarray(getattr(self, name))
            if a.ndim != 1 + len(trail) and a.size == 0:  # [] stands for an empty array
                a = a.reshape((0, *(sizes.get(d, 50) if isinstance(d, str) else d
                                    for d in trail)))  # fmt: skip
            if a.ndim == 1 + len(trail):
                sizes.setdefault(key, a.shape[0])
                for i, d in enumerate(trail):
                    if isinstance(d, str):
                        sizes.setdefault(d, a.shape[1 + i])
            exp = (sizes.get(key, -1), *(sizes.get(d, -1) if isinstance(d, str) else d
                                         for d in trail))  # fmt: skip
            if a.shape != exp:
                raise ValueError(f"{name} must have shape {exp}, got {a.shape}")
            if (
                not np.issubdtype(dtype, np.floating)
                and a.size
                and not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool)
            ):
                raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
            a = np.array(a, dtype=dtype)  # own copy: nobody can change it under us
            a.flags.writeable = False
            put(self, name, a)
        n_p = sizes["P"]
        if len(self.pileup_glide_source) != n_p:
            raise ValueError(
                f"pileup_glide_source must have {n_p} entries, got {len(self.pileup_glide_source)}"
            )
        put(self, "pileup_glide_source", tuple(str(x) for x in self.pileup_glide_source))
        n_l = sizes["N"]
        for name, hi in (("line_pileup", n_p), ("pair_lines", n_l), ("pair_pileup", n_p)):
            a = getattr(self, name)
            if a.size and (a.min() < 0 or a.max() >= hi):
                raise ValueError(f"{name} must index [0, {hi}), got values {a.min()}..{a.max()}")
        d = np.asarray(self.drift_px, dtype=np.float64).reshape(-1)
        if d.shape != (2,) or not np.isfinite(d).all():
            raise ValueError(f"drift_px must be 2 finite numbers, got {self.drift_px!r}")
        d.flags.writeable = False
        put(self, "drift_px", d)
        put(self, "dose_dpa", float(self.dose_dpa))
        put(self, "densities", {str(k): float(v) for k, v in dict(self.densities).items()})
        put(self, "timings_ms", {str(k): float(v) for k, v in dict(self.timings_ms).items()})

    # ------------------------------------------------------------------ sizes and views
    @property
    def n_lines(self) -> int:
        return int(self.line_length_px.shape[0])

    @property
    def n_loops(self) -> int:
        return int(self.loop_major_px.shape[0])

    @property
    def n_dislocations(self) -> int:
        """Dislocations found: the traced lines and those without a mask."""
        return self.n_lines + self.lines_without_mask

    @property
    def instances_without_mask(self) -> int:
        """Instances measured without a mask: loops from their box, untraced dislocations."""
        return self.lines_without_mask + int(self.loop_from_box.sum())

    @property
    def n_pileups(self) -> int:
        return int(self.pileup_id.shape[0])

    @property
    def line_length_nm(self) -> np.ndarray:
        """(N,) line lengths, nm."""
        return self.line_length_px * self.nm_per_px

    @property
    def line_centroid_px(self) -> np.ndarray:
        """(N, 2) mean of each line's points (x, y), px."""
        if self.n_lines == 0:
            return np.zeros((0, 2))
        return self.line_points_px.mean(axis=1)

    @property
    def pair_spacing_nm(self) -> np.ndarray:
        """(Q,) neighbour spacings, nm."""
        return self.pair_spacing_px * self.nm_per_px

    @property
    def pileup_mean_spacing_px(self) -> np.ndarray:
        """(P,) mean neighbour spacing of each pile-up, px (NaN for a lone line)."""
        out = np.full(self.n_pileups, np.nan)
        for p in range(self.n_pileups):
            sel = self.pair_pileup == p
            if sel.any():
                out[p] = float(self.pair_spacing_px[sel].mean())
        return out

    @property
    def loop_major_nm(self) -> np.ndarray:
        return self.loop_major_px * self.nm_per_px

    @property
    def loop_minor_nm(self) -> np.ndarray:
        return self.loop_minor_px * self.nm_per_px

    @property
    def loop_area_nm2(self) -> np.ndarray:
        return self.loop_area_px2 * self.nm_per_px**2

    def replace(self, **changes: Any) -> FrameResult:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def empty(
        cls, *, index: int, time_s: float, shape: tuple[int, int], nm_per_px: float = math.nan,
        n_points: int = 50, **extra: Any,
    ) -> FrameResult:  # fmt: skip
        """A frame with no line and no loop."""
        arrays = {}
        for name, (dtype, trail, _key) in _ARRAYS.items():
            dims = [n_points if d == "K" else d for d in trail]
            arrays[name] = np.zeros((0, *dims), dtype)
        return cls(index=index, time_s=time_s, shape=shape, nm_per_px=nm_per_px,
                   pileup_glide_source=(), **arrays, **extra)  # fmt: skip
