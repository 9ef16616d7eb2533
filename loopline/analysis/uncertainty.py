"""Uncertainties of the published numbers: pure functions over arrays (issue 22).

Each function returns a standard error (``*_se``, one standard deviation of the estimate) or
a 68.27 % interval (``*_lo``/``*_hi``) in the unit of the value it belongs to. What each one
models, and where it is calibrated against exact synthetic truth (``tests/test_uncertainty.py``):

- :func:`slope_se` — the causal glide velocity and growth rates: least-squares slope over the
  track's last ``window`` samples and its standard error, ``s / sqrt(Sxx)`` with ``s²`` the
  residual variance (n - 2 degrees of freedom) inflated for positive lag-1 autocorrelation of
  the residuals, times Student's factor; :func:`combine_se` adds the scatter of the track's
  earlier windows about its whole fit (a line moving on the pixel grid has errors that are
  smooth over a window and leave no residual in it). Calibrated for velocities.
- :func:`residual_sd` — the scatter of one measurement about a straight line through the
  recent ones (or through the pair's whole history, where larger): the standard error of a
  single spacing of a tracked pair. Calibrated.
- :func:`line_length_se_px` — the skeleton's discretisation: each end of a traced line is
  placed to within a pixel (uniform, sd 1/sqrt(12) px per end) and the smoothed 8-connected
  chain keeps a residual staircase error proportional to its length (0.5 %, set so that
  ±se covers 72 % of synthetic truth; checked, not asserted by a test).
- :func:`ellipse_axis_se_px` — a loop's major axis from the radial residuals of its contour
  about the fitted ellipse. Not calibrated.
- :func:`poisson_interval` — Garwood's exact central interval of a Poisson count (loop
  counts and densities).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import numpy as np

__all__ = [
    "CL68",
    "combine_se",
    "ellipse_axis_se_px",
    "line_length_se_px",
    "mean_se",
    "poisson_interval",
    "residual_sd",
    "slope_se",
    "t68",
]

#: Coverage of ±1 standard error of a normal estimate (the ``*_lo``/``*_hi`` intervals).
CL68 = math.erf(1 / math.sqrt(2))

#: sd of the position of one traced end (uniform over one pixel), px
_END_SD_PX = 1.0 / math.sqrt(12.0)
#: residual relative error of a smoothed 8-connected chain's arc length (lines.py smooths the
#: staircase that makes an unsmoothed diagonal chain up to (sqrt(2) - 1) / 2 ~ 8 % too long)
_CHAIN_REL = 0.005
#: contour points per independent residual (neighbouring boundary pixels share quantisation)
_CONTOUR_CORR = 2.0
#: largest lag-1 autocorrelation of the residuals that :func:`slope_se` takes into account
_RHO_MAX = 0.8


@functools.lru_cache(maxsize=256)
def t68(dof: int) -> float:
    """Student's t quantile that makes ±se a 68.27 % interval with ``dof`` degrees of freedom
    (1.11 for 5, → 1 for many); NaN for dof < 1."""
    from scipy.stats import t

    return float(t.ppf(0.5 + CL68 / 2, dof)) if dof >= 1 else math.nan


def combine_se(window_se: float, between_sd: float) -> float:
    """Standard error of a windowed estimate from its own scatter and from the scatter of the
    track's earlier windowed estimates about the whole track's (``between_sd``; NaN: too
    few windows yet): ``hypot`` of the two. Errors that are smooth within a window (a line
    moving 0.9 px a frame steps across the pixel grid with a beat several frames long) leave
    no residual in it and show only between windows."""
    if not math.isfinite(between_sd):
        return window_se
    return math.hypot(window_se, between_sd)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(slope, Sxx, residuals) of the least-squares line; slope NaN for fewer than 2 x."""
    xm = x - x.mean()
    sxx = float(xm @ xm)
    if x.size < 2 or not sxx > 0:
        return math.nan, 0.0, np.zeros(0)
    b = float(xm @ (y - y.mean())) / sxx
    return b, sxx, (y - y.mean()) - b * xm


def _slope_se(x: np.ndarray, y: np.ndarray, min_n: int) -> tuple[float, float]:
    b, sxx, r = _fit(x, y)
    n = x.size
    if not math.isfinite(b) or n < max(min_n, 3):
        return b, math.nan
    rss = float(r @ r)
    s2 = rss / (n - 2)
    rho = float(r[1:] @ r[:-1]) / rss if rss > 0 else 0.0
    rho = min(max(rho, 0.0), _RHO_MAX)
    return b, t68(n - 2) * math.sqrt(s2 / sxx * (1.0 + rho) / (1.0 - rho))


def slope_se(x: np.ndarray, y: np.ndarray, *, min_n: int = 4) -> tuple[float, float]:
    """Least-squares slope dy/dx and its standard error.

    Parameters
    ----------
    x, y : (n,) float
        Samples (time or frame, and the value).
    min_n : int
        Fewest samples for a standard error (>= 3: a line through two points has no scatter).

    Returns
    -------
    slope, se : float
        NaN slope for fewer than 2 distinct x; NaN se for fewer than ``min_n`` samples. The
        se is ``t68(n - 2) · sqrt(s² / Sxx · (1 + ρ) / (1 - ρ))``: ``s²`` the residual
        variance (n - 2 degrees of freedom), ``ρ`` the lag-1 autocorrelation of the residuals
        clipped to [0, 0.8] (the variance of a mean of AR(1) errors; 0 for independent ones),
        and Student's factor :func:`t68` so that ±se is a 68 % interval with so few samples.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one length, got {x.size} and {y.size}")
    return _slope_se(x, y, int(min_n))


def residual_sd(x: np.ndarray, y: np.ndarray, *, min_n: int = 4) -> float:
    """Standard deviation of ``y`` about its least-squares line on ``x`` (n - 2 degrees of
    freedom, times :func:`t68`): the standard error of one measurement of a slowly changing
    value. NaN for fewer than ``min_n`` samples."""
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one length, got {x.size} and {y.size}")
    b, _, r = _fit(x, y)
    if not math.isfinite(b) or x.size < max(int(min_n), 3):
        return math.nan
    return t68(x.size - 2) * math.sqrt(float(r @ r) / (x.size - 2))


def line_length_se_px(length_px: np.ndarray) -> np.ndarray:
    """Standard error (px) of traced line lengths from the skeleton's discretisation:
    ``sqrt(2 / 12 + (0.005 L)²)`` (two ends placed to a pixel, 0.5 % residual staircase)."""
    n = np.asarray(length_px, np.float64)
    return np.sqrt(2 * _END_SD_PX**2 + (_CHAIN_REL * n) ** 2)


def ellipse_axis_se_px(contour: np.ndarray, center: np.ndarray, major_px: float,
                       minor_px: float, angle_deg: float) -> float:  # fmt: skip
    """Standard error (px) of an ellipse's full major axis from its contour's residuals.

    The radial residual of each contour point about the ellipse (its distance from the centre
    less the ellipse's radius in that direction) has sd ``s``; a full axis is fitted from
    about half the points (those near its ends carry it), ``N / 2`` of them, with
    neighbouring points counted as one (:data:`_CONTOUR_CORR`): se = ``2 s / sqrt(N_eff / 2)``
    with ``N_eff = N / 2``. NaN for fewer than 5 points or a degenerate ellipse.
    """
    p = np.asarray(contour, np.float64).reshape(-1, 2)
    a, b = 0.5 * float(major_px), 0.5 * float(minor_px)
    if p.shape[0] < 5 or not (a > 0 and b > 0):
        return math.nan
    th = math.radians(float(angle_deg))
    d = p - np.asarray(center, np.float64).reshape(2)
    u = d[:, 0] * math.cos(th) + d[:, 1] * math.sin(th)
    v = -d[:, 0] * math.sin(th) + d[:, 1] * math.cos(th)
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    r_ell = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    res = rho - r_ell
    s = float(np.sqrt(np.mean((res - res.mean()) ** 2) + res.mean() ** 2))
    n_eff = max(p.shape[0] / _CONTOUR_CORR, 2.0)
    return 2.0 * s / math.sqrt(n_eff / 2.0)


def poisson_interval(k: np.ndarray | float, *, cl: float = CL68) -> tuple[np.ndarray, np.ndarray]:
    """Garwood's exact central ``cl`` interval (lo, hi) of the mean of a Poisson count ``k``.

    ``lo = χ²(α/2; 2k) / 2`` (0 for k = 0), ``hi = χ²(1 - α/2; 2k + 2) / 2``, α = 1 - cl.

    >>> lo, hi = poisson_interval(0)
    >>> float(lo), round(float(hi), 3)
    (0.0, 1.841)
    """
    from scipy.stats import chi2

    if not 0 < cl < 1:
        raise ValueError(f"cl must lie in (0, 1), got {cl}")
    kk = np.asarray(k, np.float64)
    if np.any(kk < 0):
        raise ValueError(f"k must be >= 0, got {kk.min()}")
    alpha = 1.0 - cl
    with np.errstate(invalid="ignore"):
        lo = np.where(kk > 0, chi2.ppf(alpha / 2, 2 * np.maximum(kk, 1e-300)) / 2, 0.0)
        hi = chi2.ppf(1 - alpha / 2, 2 * kk + 2) / 2
    return lo, hi


def mean_se(ses: Iterable[float | None]) -> float | None:
    """Standard error of a mean of ``n`` values with independent standard errors ``ses``:
    ``sqrt(sum se²) / n``. Values without one yet (a pair tracked for fewer than four frames)
    count with the mean variance of the others; None when fewer than half have one.

    >>> mean_se([3.0, 4.0])
    2.5
    >>> mean_se([3.0, 4.0, None]) == mean_se([3.0, 4.0, 12.5 ** 0.5])
    True
    >>> mean_se([1.0, None, None]) is None
    True
    """
    vals = [None if v is None or not math.isfinite(v) else float(v) for v in ses]
    known = [v for v in vals if v is not None]
    if not known or 2 * len(known) < len(vals):
        return None
    return math.sqrt(sum(v * v for v in known) / len(known) / len(vals))
