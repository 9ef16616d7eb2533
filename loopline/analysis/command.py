"""``loopline analyze``: measure lines, loops and tracks in a video offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import (
    DEFAULT_MODEL,
    INFERENCE_HELP,
    add_calibration_arguments,
    add_loop_vote_argument,
    add_model_arguments,
)
from ..engines.base import INFERENCE_MODES
from ..errors import CliError

HELP = "measure lines, loops and tracks in a video offline"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input",
        type=Path,
        nargs="+",
        help="video (MP4/AVI...), TIFF stack, DM3/DM4, image folder or synth dataset (several "
        "with --cluster: one run folder each under --out, named by the input's stem)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run folder: series.csv, tracks.csv, pairs.csv, track_summary.csv, summary.json "
        "(the layout of `loopline serve`; see the README's Run folder)",
    )
    add_model_arguments(
        p, defaults={"--model": DEFAULT_MODEL},
        help_suffix={"--model": "'truth' measures the label masks of a labelled dataset "
                                "(labels/<stem>.txt beside images/) instead"},
    )  # fmt: skip
    p.add_argument("--engine", default=None,
                   help="engine runtime (default: by the model's suffix, OpenVINO for .onnx "
                        "where installed, as serve)")  # fmt: skip
    p.add_argument("--inference", choices=INFERENCE_MODES, default="tiles",
                   help=INFERENCE_HELP + " (default: tiles)")  # fmt: skip
    p.add_argument("--tile-overlap", type=int, default=64, metavar="PX",
                   help="least overlap of neighbouring tiles, px (default 64)")  # fmt: skip
    p.add_argument("--line-snap", type=float, default=None, metavar="PX",
                   help="how far a dislocation's centre line may move onto its valley in the "
                        "full-resolution frame, px (0 = off; default: the model's own)")
    p.add_argument("--line-dedupe", type=float, default=None, metavar="PX",
                   help="drop a dislocation retracing a better-scored one within PX (0 = off; "
                        "default: the model's own)")
    add_loop_vote_argument(p)
    p.add_argument("--calibration", type=Path, help="calibration profile (TOML)")
    add_calibration_arguments(p, help_suffix={"--nm-per-px": "given, it wins over both",
                                              "--fps": "given, it wins over both"})
    p.add_argument("--times-from-names", nargs="?", const="", default=None, metavar="REGEX",
                   help="image folders: take each frame's time from a number in its file name "
                        "(irregular sampling). Alone: the last number of the name is the frame "
                        "number, at number / --fps s (img_0012.tif at 12 / FPS s); REGEX: its "
                        "first group is the number, a group named s, ms or us a time in that "
                        "unit, e.g. '_t(?P<ms>[0-9.]+)ms'")  # fmt: skip
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
    # --cluster: the same analysis on dask.distributed (analysis/cluster.py, docs/cluster.md)
    p.add_argument("--cluster", default=None, metavar="ADDRESS|local:N",
                   help="analyse on a Dask cluster you run (Dask pickles tasks: a trusted "
                        "network or tls://, see docs/cluster.md): a scheduler address "
                        "(tcp://host:8786), or "
                        "local:N worker processes on this machine; same run folder as without "
                        "(needs pip install 'loopline[cluster]')")  # fmt: skip
    p.add_argument("--chunk", type=int, default=32, metavar="FRAMES",
                   help="--cluster: frames per chunk a worker analyses (default 32)")
    p.add_argument("--scatter", action="store_true",
                   help="--cluster: read the frames here and send them to the workers (no "
                        "shared storage; default: workers open the inputs by path)")  # fmt: skip


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
            model=a.model, engine=a.engine, imgsz=a.imgsz, conf=a.conf, device=a.device,
            times_from_names=a.times_from_names,
            inference=a.inference, tile_overlap=a.tile_overlap,
            line_snap=a.line_snap, line_dedupe=a.line_dedupe, loop_vote=a.loop_vote,
            sequence=a.sequence, search_range_px=a.search_range,
            memory=a.memory, drift="none" if a.no_drift else "phase", window=a.window,
            max_frames=a.max_frames, measure=MeasureOptions(impl=a.impl),
        )  # fmt: skip
        if a.cluster:  # loopline analyze --cluster (analysis/cluster.py)
            from .cluster import run_command

            return run_command(a, opt, cal)
        if len(a.input) > 1:
            raise CliError(f"{len(a.input)} inputs given; several inputs need --cluster (one "
                           "run folder each under --out)")  # fmt: skip
        summary = analyze(a.input[0], a.out, calibration=cal, options=opt)
    except (CalibrationError, ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        raise CliError(str(e)) from None
    keys = ("length_re", "spacing_re", "velocity_re", "loop_axis_re", "id_switches")
    truth = ", ".join(f"{k} {summary[k]}" for k in keys if k in summary)
    print(f"analysed {summary['frames']} frames -> {a.out}" + (f" ({truth})" if truth else ""))
    counts = next(iter((summary.get("analysis") or {}).values()), {})
    if counts.get("mean_line_count") is not None:  # per frame: series.csv n_dislocations, n_loops
        print(f"per frame: {counts['mean_line_count']:.1f} dislocations, "
              f"{counts['mean_loop_count']:.1f} loops on average (series.csv: n_dislocations, "
              "n_loops)")  # fmt: skip
    return 0
