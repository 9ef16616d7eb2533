"""Online tracking: link lines, loops and pile-ups from frame to frame; correct stage drift.

:class:`OnlineTracker` holds three ``trackpy.linking.Linker`` objects (lines by the centroid
of their 50 points, loops by their centre, pile-ups by the centroid of their lines), each fed
one frame at a time through ``init_level``/``next_level`` as in ``trackpy.link_iter``; there
is no ``link_df`` over a movie. Coordinates are drift-corrected before linking: the stage
drift is measured by phase correlation (:func:`phase_drift`) and subtracted, or given by the
caller.

Drift is measured against keyframes, not frame to frame: every :data:`KEYFRAME_EVERY`-th
frame fed to the tracker (positions 0, K, 2K, ...) is a keyframe, and frame n is registered
to the keyframe at :func:`keyframe_position` (n) (a keyframe to the one before it); its
drift is the keyframe's plus that shift. Any sub-pixel estimate has an error of a few
hundredths of a pixel that does not average out from one pair to the next (the moving
objects left out, the interpolation of the frames, the peak estimate); summed frame to frame
it grows with the number of frames (0.5-1 px over 40 frames of a synthetic video, 20-35 %
of a 0.1 px/frame glide velocity), against keyframes it grows only with the number of
keyframes. Keyframes sit at fixed positions so that a worker measuring a chunk of frames
(:mod:`loopline.analysis.cluster`) registers each frame to the same keyframe as the tracker
on one machine would. A frame's shift from its keyframe must stay under half the field of
view (phase correlation is cyclic): at 512² and a keyframe every 16 frames, drift up to
15 px/frame is measured to 0.1 px; for faster drift lower ``keyframe_every``.

It also keeps the sign of each pile-up's glide direction consistent over time: the first
estimate that rests on evidence (calibration, or the spacing trend of three or more lines)
fixes it, and later frames are turned to agree with it (ranks and pairs reversed).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..calibration import Calibration, CalibrationError
from .container import FrameResult

logger = logging.getLogger(__name__)

__all__ = [
    "KEYFRAME_EVERY",
    "OnlineTracker",
    "frame_shift",
    "keyframe_position",
    "object_mask",
    "phase_drift",
]

_STRENGTH = {"calibration": 2, "spacing": 1, "convention": 0, "normal": 0}

#: Frames fed to :class:`OnlineTracker` per keyframe (see :func:`keyframe_position`).
KEYFRAME_EVERY = 16

# phase_drift: frames are halved (cv2.pyrDown) while the halves stay >= this many px
_WORK_PX = 256
# phase_drift, in working px: sd of the Gaussian the correlation peak is given (by weighting
# the normalised cross-power spectrum), and of the soft edge of the left-out objects
_PEAK_SD = 1.0
_MASK_SD = 3.0
_cache: dict[tuple[str, int, int], np.ndarray] = {}


def keyframe_position(n: int, every: int = KEYFRAME_EVERY) -> int | None:
    """Position of the keyframe that the ``n``-th frame (from 0) fed to a tracker is
    registered to: the last multiple of ``every`` before ``n``; None for the first frame."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return None if n <= 0 else every * ((n - 1) // every)


def object_mask(result: FrameResult, *, margin_px: float = 4.0) -> np.ndarray:
    """(H, W) bool mask of a frame's lines and loops, widened by ``margin_px`` on each side.

    Moving defects are the sharpest features of a frame; left in, they pull the phase
    correlation towards their own motion instead of the stage's.
    """
    import cv2

    h, w = result.shape
    m = np.zeros((h, w), np.uint8)
    for i in range(result.n_lines):
        width = result.line_width_px[i]
        thick = int(np.ceil((width if np.isfinite(width) else 4.0) + 2 * margin_px))
        pts = np.round(result.line_points_px[i] * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(m, [pts], False, 1, thick, cv2.LINE_8, 4)
    for j in range(result.n_loops):
        c = np.round(result.loop_center_px[j] * 16).astype(int)
        ax = (round((result.loop_major_px[j] / 2 + margin_px) * 16),
              round((result.loop_minor_px[j] / 2 + margin_px) * 16))  # fmt: skip
        cv2.ellipse(m, (int(c[0]), int(c[1])), ax, float(result.loop_angle_deg[j]), 0, 360, 1,
                    -1, cv2.LINE_8, 4)  # fmt: skip
    return m.astype(bool)


def _cached(kind: str, h: int, w: int) -> np.ndarray:
    key = (kind, h, w)
    arr = _cache.get(key)
    if arr is None:
        import cv2

        if kind == "hann":
            arr = cv2.createHanningWindow((w, h), cv2.CV_32F)
        else:  # the peak's Gaussian, as a weight on cv2's (re, im) spectrum
            k2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
            g = np.exp(-2.0 * (np.pi * _PEAK_SD) ** 2 * k2).astype(np.float32)
            g[0, 0] = 0.0  # no DC: each frame's weighted mean is taken out
            arr = np.ascontiguousarray(np.dstack([g, g]))
        _cache[key] = arr
    return arr


def _peak_offset(cm: float, c0: float, cp: float) -> float:
    """Sub-pixel offset of a peak from three samples: the vertex of a Gaussian through them
    (exact for the Gaussian peak :func:`phase_drift` shapes), else of a parabola."""
    if cm > 0.0 and c0 > 0.0 and cp > 0.0:
        lm, l0, lp = math.log(cm), math.log(c0), math.log(cp)
        den = lm - 2.0 * l0 + lp
        if den < 0.0:
            return float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5))
    den = cm - 2.0 * c0 + cp
    return float(np.clip(0.5 * (cm - cp) / den, -0.5, 0.5)) if den < 0.0 else 0.0


def phase_drift(
    previous: np.ndarray, current: np.ndarray, *, exclude: np.ndarray | None = None
) -> tuple[float, float, float]:
    """Shift (dx, dy) px of ``current`` relative to ``previous`` and the peak response.

    Phase correlation made unbiased to a few hundredths of a pixel: both frames are halved
    (``cv2.pyrDown``) while they stay at least 256 px, weighted by a Hann window and, where
    ``exclude`` is given, by a soft-edged hole over the excluded pixels (a hard-edged fill
    is a feature that does not move, and pulls the estimate towards zero), and the
    normalised cross-power spectrum is weighted by a Gaussian (sd 1 working px), so that the
    correlation peak is that Gaussian: its vertex through the 3 samples around the maximum
    is exact, where ``cv2.phaseCorrelate``'s centroid of a sharp peak is pulled towards whole
    pixels, and the high frequencies, where interpolation and noise bend the phase, weigh
    little. About 2 ms at 512² (one core).

    Parameters
    ----------
    previous, current : (H, W) array
        Grey frames of the same shape.
    exclude : (H, W) bool, optional
        Pixels to leave out of both frames, e.g. the moving defects from
        :func:`object_mask`.

    Returns
    -------
    dx, dy : float
        Content of ``current`` sits at ``previous`` + (dx, dy), px.
    response : float
        Height of the correlation peak relative to that of two identical frames (1); near
        0: unreliable.
    """
    import cv2

    a = np.asarray(previous, dtype=np.float32)
    b = np.asarray(current, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"frames must be (H, W) of one shape, got {a.shape} and {b.shape}")
    hole = None
    if exclude is not None and exclude.any() and not exclude.all():
        hole = np.asarray(exclude, np.float32)
    scale = 1
    while min(a.shape) // 2 >= _WORK_PX:
        a, b = cv2.pyrDown(a), cv2.pyrDown(b)
        hole = cv2.pyrDown(hole) if hole is not None else None
        scale *= 2
    h, w = a.shape
    weight = _cached("hann", h, w)
    if hole is not None:
        hole = (hole > 0.01).astype(np.float32)  # what pyrDown smeared is out too
        weight = weight * (1.0 - cv2.GaussianBlur(hole, (0, 0), _MASK_SD))
    total = float(weight.sum())
    if not total > 0:
        return 0.0, 0.0, 0.0
    spectra = []
    for x in (a, b):
        x = (x - float((x * weight).sum()) / total) * weight
        spectra.append(cv2.dft(x, flags=cv2.DFT_COMPLEX_OUTPUT))
    cross = cv2.mulSpectrums(spectra[1], spectra[0], 0, conjB=True)
    mag = cv2.magnitude(cross[..., 0], cross[..., 1])
    cross /= np.maximum(mag, 1e-30)[..., None]
    gauss = _cached("gauss", h, w)
    cross *= gauss
    corr = cv2.idft(cross, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    _, peak, _, (ix, iy) = cv2.minMaxLoc(corr)
    dx = ix + _peak_offset(corr[iy, (ix - 1) % w], peak, corr[iy, (ix + 1) % w])
    dy = iy + _peak_offset(corr[(iy - 1) % h, ix], peak, corr[(iy + 1) % h, ix])
    dx = dx - w if dx > w / 2 else dx
    dy = dy - h if dy > h / 2 else dy
    ideal = float(gauss[..., 0].sum()) / (h * w)
    return float(dx * scale), float(dy * scale), float(peak / ideal)


def frame_shift(
    previous: np.ndarray, previous_result: FrameResult, current: np.ndarray, result: FrameResult
) -> tuple[float, float, float] | None:
    """The shift (dx, dy, response) of ``current`` relative to ``previous`` as
    :meth:`OnlineTracker.update` measures it (the objects of both frames left out); None
    where the frames differ in shape. Lets the images stay where they were measured (a Dask
    worker, :mod:`loopline.analysis.cluster`): with ``previous`` the frame's keyframe (at
    :func:`keyframe_position`), pass the result as ``update(shift=...)``.
    """
    a = np.asarray(previous, np.float32)
    b = np.asarray(current, np.float32)
    if a.shape != b.shape:
        return None
    return phase_drift(a, b, exclude=object_mask(result) | object_mask(previous_result))


class _Linker:
    """A trackpy Linker that starts on the first non-empty frame, with ids of its own.

    trackpy numbers tracks with class-level counters that every ``init_level`` resets, so two
    Linkers in one process hand out the same ids; ids here come from the track objects.
    """

    def __init__(self, search_range: float, memory: int) -> None:
        from trackpy.linking import Linker

        self.linker = Linker(search_range, memory=memory)
        self.started = False
        self._ids: dict[int, tuple[object, int]] = {}  # id(track) -> (track, our id)
        self._next = 0

    def _id(self, track: object) -> int:
        hit = self._ids.get(id(track))
        if hit is None or hit[0] is not track:
            hit = (track, self._next)
            self._ids[id(track)] = hit
            self._next += 1
        return hit[1]

    def link(self, coords: np.ndarray, t: int) -> np.ndarray:
        coords = np.asarray(coords, np.float64).reshape(-1, 2)
        if not self.started:
            if coords.shape[0] == 0:
                return np.zeros(0, np.int64)
            self.linker.init_level(coords, t)
            self.started = True
        else:
            self.linker.next_level(coords, t)
        ids = [self._id(p.track) for p in self.linker.hash.points]
        return np.asarray(ids, np.int64).reshape(-1)


class OnlineTracker:
    """Link frame results one at a time and correct stage drift.

    Parameters
    ----------
    calibration : Calibration
        Its glide direction (if any) is trusted over the images.
    search_range_px : float
        Largest displacement px of a line's centroid between frames (after drift correction).
    memory : int
        Frames an object may vanish and still keep its id.
    loop_search_range_px, pileup_search_range_px : float, optional
        Search ranges for loops (default ``search_range_px``) and pile-ups (default 3x).
    drift : {"phase", "none"}
        Measure drift from the frames passed to :meth:`update`, or assume none.
    min_response : float
        Phase-correlation peaks below this are ignored (drift kept from the last frame).
    keyframe_every : int
        Frames per keyframe (see :func:`keyframe_position`); a frame's shift, measured here
        or passed as ``shift``, is relative to its keyframe. 1: frame to frame.
    """

    def __init__(
        self,
        calibration: Calibration,
        *,
        search_range_px: float = 8.0,
        memory: int = 3,
        loop_search_range_px: float | None = None,
        pileup_search_range_px: float | None = None,
        drift: str = "phase",
        min_response: float = 0.05,
        keyframe_every: int = KEYFRAME_EVERY,
    ) -> None:
        if not search_range_px > 0:
            raise ValueError(f"search_range_px must be > 0, got {search_range_px}")
        if memory < 0:
            raise ValueError(f"memory must be >= 0, got {memory}")
        if drift not in ("phase", "none"):
            raise ValueError(f"drift must be 'phase' or 'none', got {drift!r}")
        if isinstance(keyframe_every, bool) or not int(keyframe_every) == keyframe_every \
                or keyframe_every < 1:  # fmt: skip
            raise ValueError(f"keyframe_every must be an int >= 1, got {keyframe_every!r}")
        self.calibration = calibration
        self.search_range_px = float(search_range_px)
        self.memory = int(memory)
        self.drift = drift
        self.min_response = float(min_response)
        self.keyframe_every = int(keyframe_every)
        self._lines = _Linker(search_range_px, memory)
        self._loops = _Linker(loop_search_range_px or search_range_px, memory)
        self._pileups = _Linker(pileup_search_range_px or 3.0 * search_range_px, memory)
        self._key_frame: np.ndarray | None = None  # the keyframe's image and its objects
        self._key_excl: np.ndarray | None = None
        self._key_pos: int | None = None  # its position (frames fed before it)
        self._key_drift = np.zeros(2)
        self._drift = np.zeros(2)
        self._last: tuple[int, float] | None = None
        self._level = 0
        self._glide_ref: dict[int, tuple[np.ndarray, int]] = {}

    @property
    def drift_px(self) -> np.ndarray:
        """Cumulative drift (x, y) px since the first frame."""
        return self._drift.copy()

    def _check_order(self, result: FrameResult) -> None:
        if self._last is not None:
            li, lt = self._last
            if result.index <= li:
                raise CalibrationError(
                    f"frame indices must increase: frame {result.index} after frame {li}"
                )
            if not result.time_s > lt:
                raise CalibrationError(
                    f"frame times must increase: frame {result.index} at {result.time_s} s "
                    f"is not later than frame {li} at {lt} s"
                )
        self._last = (result.index, result.time_s)

    def update(
        self,
        result: FrameResult,
        frame: np.ndarray | None = None,
        *,
        drift_px: tuple[float, float] | np.ndarray | None = None,
        shift: tuple[float, float, float] | None = None,
    ) -> FrameResult:
        """Link one frame's result.

        Parameters
        ----------
        result : FrameResult
            From :func:`measure_frame`; frames must come in order of index and time.
        frame : (H, W) array, optional
            The grey frame itself, for drift by phase correlation.
        drift_px : (2,) float, optional
            Cumulative drift (x, y) px known from elsewhere (overrides the measurement).
        shift : (dx, dy, response), optional
            This frame's shift relative to its keyframe (the frame fed at position
            :func:`keyframe_position` (n) where this is the n-th, from 0), measured elsewhere
            by :func:`frame_shift` (instead of ``frame``); accepted or passed over, and added
            to the keyframe's drift, as a measured one. None with no ``frame``: no drift
            step.

        Returns
        -------
        FrameResult
            With track ids, persistent pile-up ids, consistent glide directions, ``drift_px``
            and the ``drift`` and ``track`` timings (ms).

        Raises
        ------
        CalibrationError
            When the index or the time does not increase.
        """
        self._check_order(result)
        t0 = time.perf_counter()
        pos = self._level
        f = excl = None
        if drift_px is not None:
            d = np.asarray(drift_px, np.float64).reshape(2)
            if not np.isfinite(d).all():
                raise ValueError(f"drift_px must be finite, got {drift_px!r}")
            self._drift = d.copy()
        elif self.drift == "phase" and (frame is not None or shift is not None):
            size = min(result.shape)
            if shift is None:
                f = np.asarray(frame, np.float32)
                size = min(f.shape)
                excl = object_mask(result)
                if self._key_frame is not None and self._key_frame.shape == f.shape:
                    shift = phase_drift(self._key_frame, f, exclude=excl | self._key_excl)
            if shift is not None:
                d = np.array([float(shift[0]), float(shift[1])])
                resp = float(shift[2])
                # a step of under a quarter of the field from the last frame's drift
                step = float(np.hypot(*(self._key_drift + d - self._drift)))
                if resp >= self.min_response and step < 0.25 * size:
                    self._drift = self._key_drift + d
                else:
                    logger.debug("frame %d: drift peak %.3f too weak or step %.1f px too large, "
                                 "kept", result.index, resp, step)  # fmt: skip
        # a new keyframe at each multiple of keyframe_every (with no image, where the shifts
        # come from elsewhere); from images, at the first frame with one since that position
        k = self.keyframe_every
        image = self.drift == "phase" and frame is not None
        due = self._key_pos is None or pos // k > self._key_pos // k
        no_image = self._key_frame is None
        if (due and (image or no_image)) or (image and no_image):
            if image and f is None:
                f, excl = np.asarray(frame, np.float32), object_mask(result)
            self._key_frame, self._key_excl = f, excl
            self._key_pos, self._key_drift = pos, self._drift.copy()
        t1 = time.perf_counter()

        lvl = self._level
        self._level += 1
        line_ids = self._lines.link(result.line_centroid_px - self._drift, lvl)
        loop_ids = self._loops.link(result.loop_center_px - self._drift, lvl)
        p = result.n_pileups
        if p:
            cent = np.array([result.line_centroid_px[result.line_pileup == i].mean(axis=0)
                             for i in range(p)])  # fmt: skip
        else:
            cent = np.zeros((0, 2))
        pile_ids = self._pileups.link(cent - self._drift, lvl)
        glide, source = result.pileup_glide_dir.copy(), list(result.pileup_glide_source)
        rank = result.line_rank.copy()
        pairs, pair_rank = result.pair_lines.copy(), result.pair_rank.copy()
        for i, pid in enumerate(pile_ids):
            g = glide[i]
            strength = _STRENGTH.get(source[i], 0)
            ref = self._glide_ref.get(int(pid))
            if ref is not None and float(g @ ref[0]) < 0 and strength <= ref[1]:
                glide[i] = -g
                members = result.line_pileup == i
                rank[members] = members.sum() - 1 - rank[members]
                sel = result.pair_pileup == i
                pairs[sel] = pairs[sel][:, ::-1]
                pair_rank[sel] = sel.sum() - 1 - pair_rank[sel]
                source[i] = source[i] + "+track"
            strength = max(strength, ref[1] if ref is not None else 0)
            self._glide_ref[int(pid)] = (glide[i].copy(), strength)
        t2 = time.perf_counter()
        timings = dict(result.timings_ms)
        timings.update(drift=(t1 - t0) * 1e3, track=(t2 - t1) * 1e3)
        return result.replace(
            line_track_id=line_ids, loop_track_id=loop_ids, pileup_id=pile_ids,
            pileup_glide_dir=glide, pileup_glide_source=tuple(source), line_rank=rank,
            pair_lines=pairs, pair_rank=pair_rank, drift_px=self._drift.copy(),
            timings_ms=timings,
        )  # fmt: skip
