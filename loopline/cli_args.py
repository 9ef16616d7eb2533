"""Command-line words shared by every command that runs a model: one definition, one meaning.

``loopline analyze``, ``eval`` and ``serve`` take the same ``--model --imgsz --conf --device``
(ultralytics' vocabulary) and, where frames have a size and a time, ``--nm-per-px --fps``.
Each word is defined here once (:data:`MODEL_ARGS`, :data:`CALIBRATION_ARGS`), with its type
check (a wrong value is a one-line error naming what was expected and what came), and added to
a command's parser by :func:`add_model_arguments` / :func:`add_calibration_arguments`. A value
left out is None: the model's own (or the command's configured) value is used.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["CALIBRATION_ARGS", "DEFAULT_MODEL", "MODEL_ARGS", "add_calibration_arguments",
           "add_loop_vote_argument", "add_model_arguments", "argument_kwargs"]  # fmt: skip

#: The model a command runs when none is named: the one shipped with loopline.
DEFAULT_MODEL = "defects"


def _imgsz(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of px, got {text!r}") from None
    if v < 32 or v % 32:
        raise argparse.ArgumentTypeError(f"expected a multiple of 32 px (>= 32), got {v}")
    return v


def _confs(text: str) -> tuple[float, ...]:
    """``--conf 0.25`` or ``0.15,0.25`` (per class: dislocation, loop), each in [0, 1] (the
    rule of ``loopline.models.score_thresholds``, which this base layer cannot import)."""
    try:
        v = tuple(float(t) for t in text.split(","))
    except ValueError:
        v = ()
    if len(v) not in (1, 2) or not all(0.0 <= c <= 1.0 for c in v):
        raise argparse.ArgumentTypeError(f"expected one number in [0, 1] or one per class "
                                         f"(dislocation,loop), got {text!r}")  # fmt: skip
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


#: flag -> argparse keyword arguments (no default: None means "the model's own")
MODEL_ARGS: dict[str, dict[str, Any]] = {
    "--model": {"metavar": "NAME|PATH",
                "help": f"model: a shipped name ({DEFAULT_MODEL}; dislocations and loops name "
                        "the same weights), 'ridge' (classical, no weights) or a model file "
                        f"(.pt, .onnx, .xml or an OpenVINO folder, .engine) "
                        f"(default: {DEFAULT_MODEL})"},
    "--imgsz": {"type": _imgsz, "metavar": "PX",
                "help": "network input size, px, a multiple of 32 (default: the model's "
                        "own: 512, or the --imgsz a `loopline adapt` model was trained at); "
                        "larger frames are tiled or shrunk (inference)"},
    "--conf": {"type": _confs, "metavar": "P[,P]",
               "help": "score threshold in [0, 1], one for every class or one per class "
                       "(dislocation,loop): detections scoring less are dropped (default: the "
                       "model's own: 0.15,0.25 for the shipped model, else 0.25)"},
    "--device": {"metavar": "DEV",
                 "help": "where the engine runs: cpu, cuda:0 (torch, ONNX Runtime with CUDA, "
                         "TensorRT) or an OpenVINO device such as GPU (default: cpu)"},
}  # fmt: skip

#: flag -> argparse keyword arguments of the physical scales of the frames
CALIBRATION_ARGS: dict[str, dict[str, Any]] = {
    "--nm-per-px": {"type": _positive, "metavar": "NM",
                    "help": "pixel size, nm/px (default: the calibration profile's, else the "
                            "file's or camera's; without one, lengths are in px only)"},
    "--fps": {"type": _positive, "metavar": "FPS",
              "help": "frame rate, frames/s: frame i is at i / FPS s (default: the "
                      "calibration profile's, else the file's own time axis or the camera "
                      "clock)"},
}  # fmt: skip


def argument_kwargs(flag: str, **changes: Any) -> dict[str, Any]:
    """The argparse keyword arguments of a shared ``flag``, with ``changes`` applied
    (``help_suffix`` is appended to the help text)."""
    kw = dict({**MODEL_ARGS, **CALIBRATION_ARGS}[flag])
    suffix = changes.pop("help_suffix", "")
    kw.update(changes)
    if suffix:
        kw["help"] = f"{kw['help']}; {suffix}"
    return kw


def add_model_arguments(p: argparse.ArgumentParser, *, defaults: dict[str, Any] | None = None,
                        help_suffix: dict[str, str] | None = None,
                        dests: dict[str, str] | None = None) -> None:  # fmt: skip
    """Add ``--model --imgsz --conf --device`` to ``p``.

    ``defaults``: a default per flag (e.g. ``{"--model": "defects"}``; else None);
    ``help_suffix``: a command's own note per flag; ``dests``: attribute names per flag.
    """
    _add(p, MODEL_ARGS, defaults, help_suffix, dests)


def add_calibration_arguments(p: argparse.ArgumentParser, *,
                              help_suffix: dict[str, str] | None = None,
                              dests: dict[str, str] | None = None) -> None:  # fmt: skip
    """Add ``--nm-per-px --fps`` to ``p`` (default None: the profile's or the file's)."""
    _add(p, CALIBRATION_ARGS, None, help_suffix, dests)


#: help of every command's ``--inference`` (its choices: ``loopline.engines.INFERENCE_MODES``)
INFERENCE_HELP = ("tiles: a frame larger than the network input as native-scale overlapping "
                  "tiles merged across seams, a smaller one enlarged to it (as in training); "
                  "native: the same tiles, a smaller frame padded at its own pixel scale; "
                  "letterbox: every frame shrunk or enlarged to the input")


def add_loop_vote_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--loop-vote / --no-loop-vote`` (engine option ``loop_vote``; default None: the
    model's own operating point)."""
    p.add_argument("--loop-vote", action=argparse.BooleanOptionalAction, default=None,
                   help="one loop per cluster of overlapping candidate boxes, scored by their "
                        "summed scores (default: the model's own: on for the shipped model, "
                        "off for others)")  # fmt: skip


def _add(p: argparse.ArgumentParser, table: dict[str, dict[str, Any]],
         defaults: dict[str, Any] | None, help_suffix: dict[str, str] | None,
         dests: dict[str, str] | None) -> None:  # fmt: skip
    for flag in table:
        kw = argument_kwargs(flag, help_suffix=(help_suffix or {}).get(flag, ""))
        kw["default"] = (defaults or {}).get(flag)
        if dests and flag in dests:
            kw["dest"] = dests[flag]
        p.add_argument(flag, **kw)
