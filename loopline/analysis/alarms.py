"""Alarms: rules over the measured numbers, each with hysteresis, as raise/clear events.

The rules (names in :data:`~loopline.io.runfolder.ALARM_RULES`; thresholds in
:class:`AlarmConfig`, the daemon's ``[alarms]`` section):

``spacing_low``
    The smallest mean neighbour spacing of a pile-up in the frame (nm) falls below
    ``spacing_below_nm``; clears above ``spacing_clear_nm``.
``lead_velocity_high``
    The largest |glide velocity| of a pile-up's leading line (nm/s, the causal fit of
    ``tracks.csv``) exceeds ``lead_velocity_above_nm_per_s``; clears below
    ``lead_velocity_clear_nm_per_s``.
``avalanche``
    Sudden collective motion of a pile-up, from the distribution of its lines' frame-to-frame
    glide steps (px/frame, drift-corrected, ``tracks.csv`` ``position_px``): the median step
    ``m`` of the pile-up's lines, as a robust z-score ``(|m| - B) / S`` against the median
    ``B`` and the scaled MAD ``S = 1.4826 MAD`` (at least ``avalanche_floor_px_per_frame``) of
    ``|m|`` over its previous ``avalanche_baseline_frames`` frames, counted only when at least
    ``avalanche_min_lines`` lines step the same way as ``m`` by more than ``B + S``. Raises at
    ``avalanche_k``, clears below ``avalanche_clear_k``.
``loop_growth_stalled``
    The loop count's growth rate (least-squares slope over the last
    ``loop_stall_window_frames`` frames) falls below ``loop_stall_fraction`` of the largest
    significant (> 2 se) rate seen in the series; clears above ``loop_stall_clear_fraction``.
``behind`` (daemon)
    The analysis falls behind: a frame's receive-to-output latency exceeds
    ``behind_latency_ms``; clears below ``behind_clear_ms``.
``disk_low`` (daemon)
    Free space of the run folder's disk below ``disk_free_below_gb``; clears above
    ``disk_clear_gb``. The message (and the event's ``hours_left``) says how long the space
    lasts at the rate the disk has been filling.
``recording_stopped`` (daemon, an error)
    Writing the run folder failed (disk full, quota, I/O error, read-only): recording stopped
    while analysis and publishing go on; cleared when it resumes (value: frames not recorded,
    unit ``frames``). Raised by :class:`loopline.daemon.recorder.Recorder`, not by a threshold.

Hysteresis (:class:`Hysteresis`): a rule raises at its threshold, stays raised for at least
``hold_frames`` evaluations, and clears only once the value is past its clear threshold (on
the safe side of the raise threshold), so a value that wanders about one threshold raises
once. A NaN value (not measured in this frame) changes nothing. A threshold of 0 turns its
rule off.

:class:`AlarmEvaluator` is fed one frame's rows at a time (``loopline analyze`` and the
daemon's measure worker, both through :class:`~loopline.analysis.series.SeriesAccumulator`);
:class:`DaemonAlarms` the daemon's own numbers (latency, free disk). Both return events, one
``alarms.csv`` row each (:data:`~loopline.io.runfolder.ALARM_COLUMNS`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.runfolder import ALARM_RULES
from .uncertainty import slope_se

logger = logging.getLogger(__name__)

__all__ = [
    "ALARM_RULES",
    "AlarmConfig",
    "AlarmEvaluator",
    "DaemonAlarms",
    "Hysteresis",
    "avalanche_score",
    "hysteresis_step",
]

_MAD = 1.4826  # MAD -> sd of a normal distribution


@dataclass(frozen=True)
class AlarmConfig:
    """Thresholds of the alarm rules (see the module docstring; 0 turns a rule off)."""

    enabled: bool = True
    hold_frames: int = 3
    spacing_below_nm: float = 0.0
    spacing_clear_nm: float = 0.0  # 0: 1.1 x spacing_below_nm
    lead_velocity_above_nm_per_s: float = 0.0
    lead_velocity_clear_nm_per_s: float = 0.0  # 0: 0.8 x lead_velocity_above_nm_per_s
    avalanche_k: float = 8.0
    avalanche_clear_k: float = 3.0
    avalanche_min_lines: int = 3
    avalanche_baseline_frames: int = 30
    avalanche_min_baseline: int = 5
    avalanche_floor_px_per_frame: float = 0.25
    loop_stall_window_frames: int = 50
    loop_stall_fraction: float = 0.1
    loop_stall_clear_fraction: float = 0.3
    behind_latency_ms: float = 5000.0
    behind_clear_ms: float = 2000.0
    disk_free_below_gb: float = 1.0
    disk_clear_gb: float = 2.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                continue
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"alarms.{f.name} must be a number >= 0, got {v!r}")
        pairs = (("spacing_clear_nm", "spacing_below_nm", False),
                 ("lead_velocity_clear_nm_per_s", "lead_velocity_above_nm_per_s", True),
                 ("avalanche_clear_k", "avalanche_k", True),
                 ("loop_stall_clear_fraction", "loop_stall_fraction", False),
                 ("behind_clear_ms", "behind_latency_ms", True),
                 ("disk_clear_gb", "disk_free_below_gb", False))  # fmt: skip
        for clear, at, above in pairs:
            c, a = getattr(self, clear), getattr(self, at)
            if a and c and (c > a if above else c < a):
                side = "below" if above else "above"
                raise ValueError(f"alarms.{clear} must lie {side} alarms.{at} ({a}), got {c}")
        if self.avalanche_min_lines < 1 or self.avalanche_min_baseline < 2:
            raise ValueError(f"alarms.avalanche_min_lines must be >= 1 and avalanche_min_baseline "
                             f">= 2, got {self.avalanche_min_lines} and "
                             f"{self.avalanche_min_baseline}")  # fmt: skip

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AlarmConfig:
        """From a dict of its fields (the daemon's ``[alarms]`` section); unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown alarm settings {unknown}; expected some of "
                             f"{sorted(names)}")  # fmt: skip
        return cls(**dict(values))


# ----------------------------------------------------------------------------- hysteresis


@dataclass
class _HState:
    active: bool = False
    since: int = 0  # evaluations since the last raise


def hysteresis_step(state: _HState, value: float, raise_at: float, clear_at: float,
                    hold: int, above: bool) -> str | None:  # fmt: skip
    """Advance one rule by one evaluation: ``"raise"``, ``"clear"`` or None (no change).

    ``above``: the rule raises when ``value >= raise_at`` and clears when ``value < clear_at``
    (``clear_at <= raise_at``); otherwise it raises when ``value <= raise_at`` and clears when
    ``value > clear_at``. A raised rule is held for ``hold`` evaluations before it may clear.
    NaN changes nothing (but counts towards the hold).
    """
    if state.active:
        state.since += 1
    if not math.isfinite(value):
        return None
    if not state.active:
        if value >= raise_at if above else value <= raise_at:
            state.active, state.since = True, 0
            return "raise"
        return None
    if state.since >= hold and (value < clear_at if above else value > clear_at):
        state.active = False
        return "clear"
    return None


class Hysteresis:
    """One rule's state: :func:`hysteresis_step` with fixed thresholds."""

    def __init__(self, raise_at: float, clear_at: float, *, hold: int, above: bool) -> None:
        if (above and clear_at > raise_at) or (not above and clear_at < raise_at):
            raise ValueError(f"clear_at must lie on the safe side of raise_at {raise_at}, got "
                             f"{clear_at}")  # fmt: skip
        self.raise_at, self.clear_at = float(raise_at), float(clear_at)
        self.hold, self.above = int(hold), bool(above)
        self.state = _HState()

    @property
    def active(self) -> bool:
        return self.state.active

    def step(self, value: float) -> str | None:
        return hysteresis_step(self.state, float(value), self.raise_at, self.clear_at,
                               self.hold, self.above)  # fmt: skip


# ----------------------------------------------------------------------------- signals


def _finite(rows: Iterable[Mapping[str, Any]], key: str) -> list[tuple[Mapping[str, Any], float]]:
    out = []
    for r in rows:
        v = r.get(key)
        if v is not None and math.isfinite(float(v)):
            out.append((r, float(v)))
    return out


def min_pileup_spacing(pairs: Iterable[Mapping[str, Any]]) -> tuple[float, int]:
    """(smallest mean spacing of a pile-up in nm, that pile-up's id); NaN, -1 without pairs."""
    by: dict[int, list[float]] = {}
    for r, v in _finite(pairs, "spacing_nm"):
        by.setdefault(int(r["pileup_id"]), []).append(v)
    if not by:
        return math.nan, -1
    pid = min(by, key=lambda k: float(np.mean(by[k])))
    return float(np.mean(by[pid])), pid


def max_lead_speed(tracks: Iterable[Mapping[str, Any]]) -> tuple[float, int]:
    """(largest |velocity| of a leading line in nm/s, its pile-up id); NaN, -1 without one."""
    best, pid = math.nan, -1
    for r, v in _finite(tracks, "velocity_nm_per_s"):
        if r.get("kind") == "line" and r.get("rank") == 0 and not abs(v) <= best:
            best, pid = abs(v), int(r["pileup_id"])
    return best, pid


def avalanche_score(steps: np.ndarray, history: np.ndarray, *, floor: float,
                    min_lines: int) -> tuple[float, float, int]:  # fmt: skip
    """Robust z-score of a pile-up's collective step against its own recent steps.

    Parameters
    ----------
    steps : (n,) float
        This frame's glide steps of the pile-up's lines, px/frame (signed).
    history : (h,) float
        |median step| of the pile-up in its previous frames.
    floor : float
        Least scale of the baseline, px/frame (the traces' jitter).
    min_lines : int
        Lines that must step the same way, clearly (beyond ``B + S``).

    Returns
    -------
    z, median_step, moving : float, float, int
        ``(|m| - B) / S``, or 0 where fewer than ``min_lines`` lines move together (NaN for
        fewer than ``min_lines`` steps); ``m``; the lines moving with it.
    """
    s = np.asarray(steps, np.float64)
    if s.size < min_lines or s.size == 0:
        return math.nan, math.nan, 0
    m = float(np.median(s))
    h = np.asarray(history, np.float64)
    base = float(np.median(h))
    scale = max(_MAD * float(np.median(np.abs(h - base))), floor)
    moving = int(np.count_nonzero((np.sign(s) == np.sign(m)) & (np.abs(s) > base + scale)))
    z = (abs(m) - base) / scale
    return (z if moving >= min_lines else min(z, 0.0)), m, moving


# ----------------------------------------------------------------------------- evaluators


def _event(series: str, frame: int, time_s: float, rule: str, state: str, value: float,
           threshold: float, unit: str, message: str) -> dict[str, Any]:  # fmt: skip
    return {"series": series, "frame": int(frame), "time_s": float(time_s), "rule": rule,
            "state": state, "value": float(value), "threshold": float(threshold), "unit": unit,
            "message": message}  # fmt: skip


class _Rules:
    """Hysteresis per rule, events out."""

    def __init__(self, cfg: AlarmConfig, series: str) -> None:
        self.cfg = cfg
        self.series = series
        self.rules: dict[str, Hysteresis] = {}

    def add(self, rule: str, raise_at: float, clear_at: float, *, above: bool) -> None:
        if raise_at > 0:
            self.rules[rule] = Hysteresis(raise_at, clear_at, hold=self.cfg.hold_frames,
                                          above=above)  # fmt: skip

    def step(self, out: list[dict[str, Any]], frame: int, time_s: float, rule: str,
             value: float, unit: str, what: str, note: str = "") -> None:  # fmt: skip
        h = self.rules.get(rule)
        if h is None:
            return
        ev = h.step(value)
        if ev is None:
            return
        thr = h.raise_at if ev == "raise" else h.clear_at
        verb = "raised" if ev == "raise" else "cleared"
        msg = f"{rule} {verb}: {what} {value:.4g} {unit} (threshold {thr:.4g} {unit}){note}"
        logger.log(logging.WARNING if ev == "raise" else logging.INFO, "%s frame %d: %s",
                   self.series, frame, msg)  # fmt: skip
        out.append(_event(self.series, frame, time_s, rule, ev, value, thr, unit, msg))

    @property
    def active(self) -> list[str]:
        return [r for r, h in self.rules.items() if h.active]


class AlarmEvaluator:
    """The frame rules of one series, fed with each frame's table rows in order.

    Parameters
    ----------
    cfg : AlarmConfig
    series : str
        Series id written into the events.
    """

    def __init__(self, cfg: AlarmConfig, *, series: str = "series") -> None:
        self.cfg = cfg
        c = cfg
        self._rules = _Rules(cfg, series)
        if c.enabled:
            self._rules.add("spacing_low", c.spacing_below_nm,
                            c.spacing_clear_nm or 1.1 * c.spacing_below_nm,
                            above=False)  # fmt: skip
            self._rules.add("lead_velocity_high", c.lead_velocity_above_nm_per_s,
                            c.lead_velocity_clear_nm_per_s or 0.8 * c.lead_velocity_above_nm_per_s,
                            above=True)  # fmt: skip
            self._rules.add("avalanche", c.avalanche_k, c.avalanche_clear_k, above=True)
            if c.loop_stall_window_frames >= 3:
                self._rules.add("loop_growth_stalled", c.loop_stall_fraction,
                                c.loop_stall_clear_fraction, above=False)  # fmt: skip
        self._last: dict[int, tuple[int, float]] = {}  # line track -> (frame, position px)
        self._steps: dict[int, deque] = {}  # pile-up -> |median step| of recent frames
        self._loops: deque = deque(maxlen=max(c.loop_stall_window_frames, 3))
        self._peak = 0.0

    @property
    def active(self) -> list[str]:
        """Rules raised now."""
        return self._rules.active

    def update(self, series: Mapping[str, Any], tracks: Iterable[Mapping[str, Any]],
               pairs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
        """One frame's ``series.csv`` row and its ``tracks.csv``/``pairs.csv`` rows; the
        raise/clear events of this frame (``alarms.csv`` rows)."""
        tracks, pairs = list(tracks), list(pairs)
        frame, t = int(series["frame"]), float(series["time_s"])
        out: list[dict[str, Any]] = []
        rules = self._rules
        sp, sp_pid = min_pileup_spacing(pairs)
        rules.step(out, frame, t, "spacing_low", sp, "nm", f"pile-up {sp_pid} mean spacing")
        v, v_pid = max_lead_speed(tracks)
        rules.step(out, frame, t, "lead_velocity_high", v, "nm/s",
                   f"pile-up {v_pid} leading line |velocity|")  # fmt: skip
        z, what = self._avalanche(frame, tracks)
        rules.step(out, frame, t, "avalanche", z, "z", what)
        g, what = self._loop_growth(t, series.get("n_loops"))
        rules.step(out, frame, t, "loop_growth_stalled", g, "of peak", what)
        return out

    def _avalanche(self, frame: int, tracks: list[Mapping[str, Any]]) -> tuple[float, str]:
        c = self.cfg
        steps: dict[int, list[float]] = {}
        seen: dict[int, tuple[int, float]] = {}
        for r, pos in _finite(tracks, "position_px"):
            tid = int(r.get("track_id", -1))
            if r.get("kind") != "line" or tid < 0:
                continue
            seen[tid] = (frame, pos)
            last = self._last.get(tid)
            if last is not None and frame > last[0]:
                step = (pos - last[1]) / (frame - last[0])
                steps.setdefault(int(r["pileup_id"]), []).append(step)
        self._last.update(seen)
        for tid in [k for k, (f, _) in self._last.items() if frame - f > 10]:
            del self._last[tid]
        best, what = math.nan, ""
        for pid, st in steps.items():
            hist = self._steps.setdefault(pid, deque(maxlen=max(c.avalanche_baseline_frames, 2)))
            if len(hist) >= c.avalanche_min_baseline:
                z, m, moving = avalanche_score(np.array(st), np.array(hist),
                                               floor=c.avalanche_floor_px_per_frame,
                                               min_lines=c.avalanche_min_lines)  # fmt: skip
                if math.isfinite(z) and not z <= best:
                    best = z
                    what = (f"pile-up {pid}: {moving} of {len(st)} lines stepped together, "
                            f"median {m:+.3g} px/frame; robust z")  # fmt: skip
            if len(st) >= c.avalanche_min_lines:
                hist.append(abs(float(np.median(st))))
        return best, what or "collective step z"

    def _loop_growth(self, t: float, n_loops: Any) -> tuple[float, str]:
        if n_loops is None or not math.isfinite(float(n_loops)):
            return math.nan, ""
        self._loops.append((t, float(n_loops)))
        if len(self._loops) < self._loops.maxlen:
            return math.nan, ""
        a = np.array(self._loops)
        b, se = slope_se(a[:, 0], a[:, 1])
        if math.isfinite(b) and math.isfinite(se) and b > 2 * se:
            self._peak = max(self._peak, b)
        if not self._peak > 0:
            return math.nan, ""
        return b / self._peak, (f"loop count growing {b:.3g}/s, peak {self._peak:.3g}/s: "
                                "fraction")  # fmt: skip


class DaemonAlarms:
    """The daemon's own rules (``behind``, ``disk_low``), fed by its output worker."""

    def __init__(self, cfg: AlarmConfig) -> None:
        self._rules = _Rules(cfg, "")
        if cfg.enabled:
            self._rules.add("behind", cfg.behind_latency_ms, cfg.behind_clear_ms, above=True)
            self._rules.add("disk_low", cfg.disk_free_below_gb, cfg.disk_clear_gb, above=False)

    @property
    def active(self) -> list[str]:
        return self._rules.active

    def update(self, *, series: str, frame: int, time_s: float, latency_ms: float = math.nan,
               disk_free_gb: float = math.nan,
               disk_gb_per_h: float = math.nan) -> list[dict[str, Any]]:  # fmt: skip
        """Evaluate with this frame's latency (ms) and/or the free disk (GB; NaN: not
        measured now) and the rate it has been filling at (GB/h); the events."""
        self._rules.series = series
        out: list[dict[str, Any]] = []
        self._rules.step(out, frame, time_s, "behind", latency_ms, "ms",
                         "receive-to-output latency")  # fmt: skip
        hours = disk_free_gb / disk_gb_per_h if disk_gb_per_h > 0 else math.inf
        note = (f"; about {hours:.3g} h left at {disk_gb_per_h:.3g} GB/h"
                if math.isfinite(hours) else "")  # fmt: skip
        n = len(out)
        self._rules.step(out, frame, time_s, "disk_low", disk_free_gb, "GB",
                         "free disk of the run folder", note)  # fmt: skip
        for ev in out[n:]:
            ev["hours_left"] = hours if math.isfinite(hours) else None
        return out
