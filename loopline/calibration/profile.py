"""Calibration profiles: what turns pixels and frame numbers into nanometres, seconds and dpa.

A profile is a TOML file of top-level keys (every one optional)::

    nm_per_px = 0.372              # pixel size, nm/px
    # or per magnification: pick one of the table's entries
    magnification = "50k"
    [nm_per_px_by_magnification]
    "50k" = 0.372
    "100k" = 0.186

    fps = 25.0                     # frames per second, or explicit frame times (s):
    # frame_times_s = [0.0, 0.04, 0.08]
    dose_rate_dpa_per_s = 8.3e-4   # irradiation dose rate (or dpa_per_frame)
    foil_thickness_nm = 75.0       # for volume densities
    visibility_factor = 1.75       # loop counts are multiplied by it (7/4, Shen et al. 2021)
    glide_dir = [1.0, 0.0]         # glide direction of pile-ups in image (x, y)

Unknown keys and out-of-range values are errors naming the key. Pixel size can also come from
file metadata (:func:`pixel_size_from_file`, from :mod:`loopline.io.frames`: TIFF resolution
tags and ImageJ metadata, DM3/DM4 via RosettaSciIO) and from a synthetic dataset's
``truth.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.frames import pixel_size_from_file

logger = logging.getLogger(__name__)

__all__ = [
    "Calibration",
    "CalibrationError",
    "calibration_from_truth",
    "check_frame_times",
    "frame_time_s",
    "frame_times_from_names",
    "load_calibration",
    "pixel_size_from_file",
]


class CalibrationError(ValueError):
    """A calibration profile or frame-time sequence that cannot be used."""


def _positive(name: str, v: float | None, *, allow_zero: bool = False) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CalibrationError(f"{name} must be a number, got {v!r}")
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise CalibrationError(f"{name} must be finite and {bound}, got {v!r}")


def check_frame_times(times: Any, *, name: str = "frame times") -> np.ndarray:
    """Validate a sequence of frame times (s): finite and strictly increasing.

    Returns
    -------
    (F,) float64

    Raises
    ------
    CalibrationError
        Naming the first bad entry: NaN/inf, or not later than the one before.
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise CalibrationError(f"{name}: entry {bad[0]} is {t[bad[0]]} (times must be finite)")
    back = np.flatnonzero(np.diff(t) <= 0)
    if back.size:
        i = back[0] + 1
        raise CalibrationError(
            f"{name} must increase strictly: entry {i} ({t[i]} s) is not later than "
            f"entry {i - 1} ({t[i - 1]} s)"
        )
    return t


@dataclass(frozen=True)
class Calibration:
    """Physical scales of one acquisition.

    Attributes
    ----------
    nm_per_px : float or None
        Pixel size, nm/px; None when unknown (nm outputs are then NaN).
    fps : float or None
        Frame rate, frames/s (used when ``frame_times_s`` is absent).
    frame_times_s : tuple of float or None
        Time of each frame, s (strictly increasing).
    dose_rate_dpa_per_s : float or None
        Irradiation dose rate, dpa/s.
    dpa_per_frame : float or None
        Dose per frame, dpa (alternative to the dose rate).
    foil_thickness_nm : float or None
        Foil thickness, nm (volume densities need it).
    visibility_factor : float
        Multiplier of loop counts for invisible loops (1 = none; 7/4 in Shen et al. 2021).
    glide_dir : (float, float) or None
        Unit glide direction of pile-ups in image (x, y), normalised on construction.
    source : str
        Where the profile came from (file path, "truth.json", "metadata", "default").
    """

    nm_per_px: float | None = None
    fps: float | None = None
    frame_times_s: tuple[float, ...] | None = None
    dose_rate_dpa_per_s: float | None = None
    dpa_per_frame: float | None = None
    foil_thickness_nm: float | None = None
    visibility_factor: float = 1.0
    glide_dir: tuple[float, float] | None = None
    source: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        _positive("nm_per_px", self.nm_per_px)
        _positive("fps", self.fps)
        _positive("dose_rate_dpa_per_s", self.dose_rate_dpa_per_s, allow_zero=True)
        _positive("dpa_per_frame", self.dpa_per_frame, allow_zero=True)
        _positive("foil_thickness_nm", self.foil_thickness_nm)
        _positive("visibility_factor", self.visibility_factor)
        if self.dose_rate_dpa_per_s is not None and self.dpa_per_frame is not None:
            raise CalibrationError("give dose_rate_dpa_per_s or dpa_per_frame, not both")
        if self.frame_times_s is not None:
            t = check_frame_times(self.frame_times_s, name="frame_times_s")
            object.__setattr__(self, "frame_times_s", tuple(float(v) for v in t))
        if self.glide_dir is not None:
            g = np.asarray(self.glide_dir, dtype=np.float64).reshape(-1)
            if g.shape != (2,) or not np.isfinite(g).all() or not np.hypot(*g) > 0:
                raise CalibrationError(
                    f"glide_dir must be a non-zero [x, y] pair, got {self.glide_dir!r}"
                )
            g = g / np.hypot(*g)
            object.__setattr__(self, "glide_dir", (float(g[0]), float(g[1])))

    # ------------------------------------------------------------------ conversions
    @property
    def scale(self) -> float:
        """nm/px, or NaN when unknown (so that nm values come out NaN, never wrong)."""
        return float(self.nm_per_px) if self.nm_per_px is not None else math.nan

    def time_of(self, index: int) -> float | None:
        """Time (s) of frame ``index`` from the frame times or the frame rate; None if unknown."""
        if self.frame_times_s is not None:
            if not 0 <= index < len(self.frame_times_s):
                raise CalibrationError(
                    f"frame {index} has no time: frame_times_s holds {len(self.frame_times_s)}"
                )
            return self.frame_times_s[index]
        if self.fps is not None:
            return index / self.fps
        return None

    def dose_at(self, index: int, time_s: float) -> float:
        """Accumulated dose (dpa) at a frame; NaN without a dose rate or dose per frame."""
        if self.dpa_per_frame is not None:
            return self.dpa_per_frame * index
        if self.dose_rate_dpa_per_s is not None:
            return self.dose_rate_dpa_per_s * time_s
        return math.nan

    def replace(self, **changes: Any) -> Calibration:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (``frame_times_s`` summarised by its count)."""
        d = dataclasses.asdict(self)
        if self.frame_times_s is not None:
            d["frame_times_s"] = f"{len(self.frame_times_s)} values"
        if self.glide_dir is not None:
            d["glide_dir"] = list(self.glide_dir)
        return d


def frame_time_s(calibration: Calibration | None, index: int,
                 source_time_s: float | None) -> float | None:  # fmt: skip
    """The time (s) of frame ``index``: one rule for ``loopline analyze`` and ``serve``.

    A calibration's own time axis (``frame_times_s``, else ``fps``) wins; without one, the
    source's time of the frame (a file's own axis, see
    :meth:`loopline.io.frames.FrameFile.stamped`, or the camera clock); None when neither
    gives one (the caller counts frames, 1 frame = 1 s, and says so).

    Raises
    ------
    CalibrationError
        When ``frame_times_s`` holds no time for ``index``.
    """
    if calibration is not None and (calibration.frame_times_s is not None
                                    or calibration.fps is not None):  # fmt: skip
        return calibration.time_of(index)
    return None if source_time_s is None else float(source_time_s)


#: The pattern of ``--times-from-names`` given alone: the last number of a file's stem.
NAME_NUMBER = r"(\d+)\D*$"
_NAME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def frame_times_from_names(names: Any, pattern: str = "", *,
                           fps: float | None = None) -> tuple[float, ...]:  # fmt: skip
    """Frame times (s) from a number in each file name, for irregularly sampled frames.

    ``pattern`` is a regular expression searched in each name's stem ("" or None:
    :data:`NAME_NUMBER`, its last number). Its group named ``s``, ``ms`` or ``us`` is a time in
    that unit; else its first group (or the whole match) is a frame number, at number / ``fps``
    s. ``img_0012.tif`` at 25 frames/s is at 0.48 s; with ``r"_t(?P<ms>[0-9.]+)ms"``,
    ``scan_t1250.5ms.tif`` is at 1.2505 s.

    >>> frame_times_from_names(["a_0000.tif", "a_0002.tif", "a_0007.tif"], fps=10.0)
    (0.0, 0.2, 0.7)

    Raises
    ------
    CalibrationError
        A name without the number (naming it and the pattern), a frame number without ``fps``,
        or times that do not increase with the names' order (naming both files).
    """
    import re

    pat = pattern or NAME_NUMBER
    try:
        rx = re.compile(pat)
    except re.error as e:
        raise CalibrationError(f"--times-from-names: {pat!r} is not a regular expression: "
                               f"{e}") from None  # fmt: skip
    unit = next((u for u in _NAME_UNITS if u in rx.groupindex), None)
    if unit is None and not fps:
        raise CalibrationError("--times-from-names: the names hold frame numbers; give --fps "
                               "(or fps in the calibration profile) to make them times, or a "
                               "pattern with a group named s, ms or us")  # fmt: skip
    out: list[float] = []
    names = [Path(str(n)).name for n in names]
    for name in names:
        m = rx.search(Path(name).stem)
        text = (m.group(unit) if unit else (m.group(1) if rx.groups else m.group(0))) if m else None
        try:
            v = float(text) if text is not None else math.nan
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise CalibrationError(f"--times-from-names: no number in {name!r} for the pattern "
                                   f"{pat!r} (expected e.g. img_0012.tif)")  # fmt: skip
        out.append(v * _NAME_UNITS[unit] if unit else v / float(fps))  # type: ignore[arg-type]
    for i in range(1, len(out)):
        if not out[i] > out[i - 1]:
            raise CalibrationError(f"--times-from-names: {names[i]} ({out[i]:g} s) is not later "
                                   f"than {names[i - 1]} ({out[i - 1]:g} s); frames are read "
                                   "in name order")  # fmt: skip
    return tuple(out)


_KEYS = {f.name for f in dataclasses.fields(Calibration)} - {"source"}
_EXTRA_KEYS = {"magnification", "nm_per_px_by_magnification"}


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration profile from a TOML file (format in the module docstring).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CalibrationError
        For invalid TOML, an unknown key (listing the known ones) or a bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise CalibrationError(f"{path}: not valid TOML: {e}") from None
    return calibration_from_dict(raw, source=str(path))


def calibration_from_dict(raw: dict[str, Any], *, source: str = "dict") -> Calibration:
    """Build a :class:`Calibration` from a mapping of profile keys (as in the TOML file)."""
    unknown = sorted(set(raw) - _KEYS - _EXTRA_KEYS)
    if unknown:
        known = ", ".join(sorted(_KEYS | _EXTRA_KEYS))
        raise CalibrationError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {known})")
    d = {k: v for k, v in raw.items() if k in _KEYS}
    table = raw.get("nm_per_px_by_magnification")
    mag = raw.get("magnification")
    if table is not None and not isinstance(table, dict):
        raise CalibrationError(f"{source}: nm_per_px_by_magnification must be a table")
    if mag is not None:
        if "nm_per_px" in d:
            raise CalibrationError(f"{source}: give nm_per_px or magnification, not both")
        if not table or str(mag) not in table:
            have = ", ".join(map(str, table or {})) or "none"
            raise CalibrationError(
                f"{source}: magnification {mag!r} is not in nm_per_px_by_magnification "
                f"(have: {have})"
            )
        d["nm_per_px"] = table[str(mag)]
    for key in ("frame_times_s", "glide_dir"):
        if key in d:
            if not isinstance(d[key], list):
                raise CalibrationError(f"{source}: {key} must be a list, got {d[key]!r}")
            d[key] = tuple(d[key])
    try:
        return Calibration(**d, source=source)
    except CalibrationError as e:
        raise CalibrationError(f"{source}: {e}") from None


def calibration_from_truth(path: str | Path) -> Calibration:
    """Pixel size and frame rate from a synthetic dataset's ``truth.json`` (file or folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "truth.json"
    truth = json.loads(p.read_text("utf-8"))
    return Calibration(nm_per_px=float(truth["nm_per_px"]), fps=float(truth["fps"]),
                       source=str(p))  # fmt: skip
