"""Parameter ranges of the synthetic generator: loading, validation and sampling.

All defaults live in ``defaults.toml`` beside this file. A preset is the ``[base]`` table
overridden by ``[presets.NAME]`` (by the preset it names in ``extends`` first, if any);
command-line ``--set name=value`` overrides go on top.
Every value is checked against hard bounds here, once, so that a bad value is rejected with
a message naming the parameter instead of failing deep inside the renderer.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

__all__ = [
    "INT_PARAMS",
    "PRESETS",
    "ParameterError",
    "Preset",
    "load_preset",
    "parse_override",
]


class ParameterError(ValueError):
    """A generator parameter is unknown or outside its allowed range."""


# name -> (lowest allowed, highest allowed). Every key of [base] must be listed here.
_BOUNDS: dict[str, tuple[float, float]] = {
    "width": (32, 8192),
    "height": (32, 8192),
    "bit_depth": (8, 16),
    "nm_per_px": (1e-4, 1e4),
    "fps": (0.01, 10000.0),
    "lambda1": (2.0, 4096.0),
    "lambda2": (2.0, 4096.0),
    "w_perlin": (0.0, 10.0),
    "w_white": (0.0, 10.0),
    "s1": (0.0, 50.0),
    "r_noise": (0.0, 10.0),
    "s2": (0.0, 50.0),
    "gradient": (0.0, 1.0),
    "bg_low": (0.0, 1.0),
    "bg_high": (0.0, 1.0),
    "bg_contrast": (0.0, 1.0),
    "camera_noise": (0.0, 1.0),
    "real_background_prob": (0.0, 1.0),
    "real_background_opacity": (0.0, 1.0),
    "pileups": (0, 50),
    "dislocations": (0, 100),
    "slip_angle": (-360.0, 360.0),
    "slip_width": (4.0, 8192.0),
    "line_angle": (-80.0, 80.0),
    "spacing": (1.0, 4096.0),
    "spacing_growth": (-0.5, 5.0),
    "bow": (-2.0, 2.0),
    "support_points": (2, 32),
    "shape_jitter": (0.0, 1.0),
    "slip_trace_prob": (0.0, 1.0),
    "slip_trace_contrast": (0.0, 1.0),
    "slip_trace_width": (0.5, 50.0),
    "line_contrast": (0.0, 1.0),
    "line_width": (0.5, 50.0),
    "line_blur": (0.0, 20.0),
    "min_line_length": (0.0, 4096.0),
    "loops": (0, 5000),
    "loop_diameter": (2.0, 4096.0),
    "loop_aspect": (1.0, 20.0),
    "loop_ring_prob": (0.0, 1.0),
    "loop_contrast": (0.0, 1.0),
    "loop_rim": (0.5, 100.0),
    "loop_blur": (0.0, 50.0),
    "loop_min_gap": (0.0, 1000.0),
    "label_width": (1.0, 64.0),
    "label_spacing_frac": (0.0, 2.0),
    "jitter_spacing_frac": (0.0, 10.0),
    "line_bright_prob": (0.0, 1.0),
    "loop_chain_prob": (0.0, 1.0),
    "stacking_faults": (0, 50),
    "fault_width": (1.0, 1000.0),
    "fault_contrast": (0.0, 1.0),
    "fault_fringe": (1.0, 200.0),
    "straight_traces": (0, 50),
    "bend_contours": (0, 50),
    "bend_width": (1.0, 1000.0),
    "bend_contrast": (0.0, 1.0),
    "boundaries": (0, 50),
    "boundary_step": (0.0, 1.0),
    "fringe_period": (1.0, 500.0),
    "texts": (0, 50),
    "text_scale": (0.1, 10.0),
    "scale_bar_prob": (0.0, 1.0),
    "info_strip_prob": (0.0, 1.0),
    "info_strip_height": (2.0, 1000.0),
    "line_wiggle": (0.0, 50.0),
    "wiggle_wavelength": (2.0, 1000.0),
    "band_prob": (0.0, 1.0),
    "band_contrast": (0.0, 1.0),
    "vignette": (0.0, 1.0),
    "image_blur": (0.0, 50.0),
    "gamma": (0.1, 10.0),
    "frames": (1, 100000),
    "lead_velocity": (-100.0, 100.0),
    "lead_pinned_prob": (0.0, 1.0),
    "spacing_rate": (-0.95, 10.0),
    "loop_growth": (-50.0, 50.0),
    "loop_drift": (0.0, 100.0),
    "loop_birth_prob": (0.0, 1.0),
    "stage_drift": (0.0, 100.0),
    "avalanche_frame": (-1, 100000),
    "avalanche_frames": (1, 100000),
    "avalanche_speed": (-100.0, 100.0),
}

INT_PARAMS = frozenset(
    {
        "width", "height", "bit_depth", "pileups", "dislocations", "support_points", "loops",
        "frames", "stacking_faults", "straight_traces", "bend_contours", "boundaries", "texts",
        "avalanche_frame", "avalanche_frames",
    }
)
# Parameters that must be a single value, never a range.
_SCALAR_ONLY = frozenset(
    {"width", "height", "bit_depth", "frames", "fps", "nm_per_px", "jitter_spacing_frac",
     "avalanche_frame", "avalanche_frames", "avalanche_speed"}
)


def _read_defaults() -> dict[str, Any]:
    text = resources.files("loopline.synth").joinpath("defaults.toml").read_text("utf-8")
    return tomllib.loads(text)


_DEFAULTS = _read_defaults()
PRESETS: tuple[str, ...] = tuple(_DEFAULTS["presets"])


def _check(name: str, value: Any) -> float | int | tuple[float, float]:
    """Validate one parameter value (a number or a [low, high] range)."""
    if name not in _BOUNDS:
        raise ParameterError(
            f"unknown synth parameter {name!r}; known parameters: {', '.join(sorted(_BOUNDS))}"
        )
    lo, hi = _BOUNDS[name]
    is_int = name in INT_PARAMS
    if isinstance(value, (list, tuple)):
        if name in _SCALAR_ONLY:
            raise ParameterError(f"synth parameter {name!r} must be a single number, got {value!r}")
        if len(value) != 2:
            raise ParameterError(
                f"synth parameter {name!r} must be a number or a [low, high] pair, got {value!r}"
            )
        pair = tuple(_check_number(name, v, lo, hi, is_int) for v in value)
        if pair[0] > pair[1]:
            raise ParameterError(
                f"synth parameter {name!r}: low {pair[0]} is greater than high {pair[1]}"
            )
        return pair  # type: ignore[return-value]
    return _check_number(name, value, lo, hi, is_int)


def _check_number(name: str, value: Any, lo: float, hi: float, is_int: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"synth parameter {name!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ParameterError(f"synth parameter {name!r} must be finite, got {value!r}")
    if is_int and float(value) != int(value):
        raise ParameterError(f"synth parameter {name!r} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ParameterError(f"synth parameter {name!r} must lie in [{lo}, {hi}], got {value!r}")
    if name == "bit_depth" and value not in (8, 16):
        raise ParameterError(f"synth parameter 'bit_depth' must be 8 or 16, got {value!r}")
    return int(value) if is_int else float(value)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``name=value`` or ``name=low,high`` from the command line."""
    if "=" not in text:
        raise ParameterError(f"expected NAME=VALUE or NAME=LOW,HIGH, got {text!r}")
    name, _, raw = text.partition("=")
    name = name.strip()
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ParameterError(f"synth parameter {name!r}: {raw!r} is not a number") from None
    if len(numbers) == 1:
        return name, numbers[0]
    return name, numbers


@dataclass(frozen=True)
class Preset:
    """A validated set of parameter values and ranges.

    ``values`` maps every parameter name to a number or a ``(low, high)`` range.
    """

    name: str
    values: dict[str, Any]

    def fixed(self, name: str) -> float | int:
        """A parameter that must be one number (image size, bit depth, fps)."""
        return self.values[name]

    def sample(self, name: str, rng: np.random.Generator) -> float | int:
        """Draw one value of ``name``: a fixed number, or uniform in its range."""
        v = self.values[name]
        if not isinstance(v, tuple):
            return v
        lo, hi = v
        if name in INT_PARAMS:
            return int(rng.integers(lo, hi + 1))
        return float(rng.uniform(lo, hi))

    def sample_log(self, name: str, rng: np.random.Generator) -> float:
        """Draw ``name`` log-uniformly in its range (sizes)."""
        v = self.values[name]
        if not isinstance(v, tuple):
            return float(v)
        lo, hi = v
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def as_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self.values.items())}


def _preset_table(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """``[presets.NAME]`` over the preset it ``extends`` (if any), without the key itself."""
    if name not in _DEFAULTS["presets"]:
        raise ParameterError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    if name in chain:
        raise ParameterError(f"presets extend each other in a loop: {' -> '.join((*chain, name))}")
    own = dict(_DEFAULTS["presets"][name])
    parent = own.pop("extends", None)
    table = _preset_table(parent, (*chain, name)) if parent is not None else {}
    table.update(own)
    return table


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """Return the validated preset ``name`` with ``overrides`` applied.

    Raises
    ------
    ParameterError
        If the preset or a parameter is unknown, or a value is out of range.
    """
    raw: dict[str, Any] = dict(_DEFAULTS["base"])
    raw.update(_preset_table(name))
    raw.update(overrides or {})
    missing = set(_BOUNDS) - set(raw)
    if missing:  # a defaults file edited without updating the bounds table
        raise ParameterError(f"defaults lack parameters: {', '.join(sorted(missing))}")
    values = {k: _check(k, v) for k, v in raw.items()}
    for lo_name, hi_name in (("bg_low", "bg_high"),):
        lo_v, hi_v = values[lo_name], values[hi_name]
        lo_max = lo_v[1] if isinstance(lo_v, tuple) else lo_v
        hi_min = hi_v[0] if isinstance(hi_v, tuple) else hi_v
        if lo_max >= hi_min:
            raise ParameterError(
                f"synth parameters {lo_name!r} ({lo_v}) and {hi_name!r} ({hi_v}) overlap: "
                f"{lo_name} must stay below {hi_name}"
            )
    return Preset(name=name, values=values)
