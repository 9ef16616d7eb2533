"""``loopline analyze``: measure lines, loops and tracks in a video offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CliError

HELP = "measure lines, loops and tracks in a video offline"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input",
        type=Path,
        help="video (MP4/AVI...), TIFF stack, DM3/DM4, image folder or synth dataset",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run folder: series.csv, tracks.csv, pairs.csv, track_summary.csv, summary.json "
        "(the layout of `loopline serve`; see the README's Run folder)",
    )
    p.add_argument(
        "--model",
        default="truth",
        help="model name or file, 'ridge', or 'truth' (measure the label masks; default)",
    )
    p.add_argument("--engine", default=None, help="engine runtime (default: from the model)")
    p.add_argument("--inference", choices=("tiles", "letterbox"), default="tiles",
                   help="frames larger than the network input: native-scale overlapping tiles "
                        "merged across seams (default), or the whole frame shrunk")  # fmt: skip
    p.add_argument("--tile-overlap", type=int, default=64, metavar="PX",
                   help="least overlap of neighbouring tiles, px (default 64)")  # fmt: skip
    p.add_argument("--line-snap", type=float, default=None, metavar="PX",
                   help="how far a dislocation's centre line may move onto its valley in the "
                        "full-resolution frame, px (0 = off; default: the model's own)")
    p.add_argument("--line-dedupe", type=float, default=None, metavar="PX",
                   help="drop a dislocation retracing a better-scored one within PX (0 = off; "
                        "default: the model's own)")
    p.add_argument("--calibration", type=Path, help="calibration profile (TOML)")
    p.add_argument("--nm-per-px", type=float, help="pixel size, nm/px (overrides the profile)")
    p.add_argument("--fps", type=float, help="frame rate, frames/s (overrides the profile)")
    p.add_argument(
        "--sequence",
        type=int,
        default=0,
        help="sequence of a synth dataset with several videos (default 0)",
    )
    p.add_argument(
        "--search-range",
        type=float,
        default=8.0,
        help="largest move of an object between frames, px (default 8)",
    )
    p.add_argument(
        "--memory",
        type=int,
        default=3,
        help="frames an object may vanish and keep its id (default 3)",
    )
    p.add_argument("--no-drift", action="store_true", help="do not correct stage drift")
    p.add_argument(
        "--window", type=int, default=7, help="frames in the causal velocity fit (default 7)"
    )
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--impl", choices=("numba", "python"), default="numba",
                   help="kernel implementation (default numba)")  # fmt: skip


def run(a: argparse.Namespace) -> int:
    from ..calibration import Calibration, CalibrationError, load_calibration
    from .analyze import AnalyzeOptions, analyze
    from .measure import MeasureOptions

    try:
        cal = load_calibration(a.calibration) if a.calibration else None
        changes = {}
        if a.nm_per_px is not None:
            changes["nm_per_px"] = a.nm_per_px
        if a.fps is not None:
            changes["fps"] = a.fps
            changes["frame_times_s"] = None
        if changes:
            cal = (cal or Calibration(source="command line")).replace(**changes)
        opt = AnalyzeOptions(
            model=a.model, engine=a.engine, inference=a.inference, tile_overlap=a.tile_overlap,
            line_snap=a.line_snap, line_dedupe=a.line_dedupe,
            sequence=a.sequence, search_range_px=a.search_range,
            memory=a.memory, drift="none" if a.no_drift else "phase", window=a.window,
            max_frames=a.max_frames, measure=MeasureOptions(impl=a.impl),
        )  # fmt: skip
        summary = analyze(a.input, a.out, calibration=cal, options=opt)
    except (CalibrationError, ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        raise CliError(str(e)) from None
    keys = ("length_re", "spacing_re", "velocity_re", "loop_axis_re", "id_switches")
    truth = ", ".join(f"{k} {summary[k]}" for k in keys if k in summary)
    print(f"analysed {summary['frames']} frames -> {a.out}" + (f" ({truth})" if truth else ""))
    return 0
