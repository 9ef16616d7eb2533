"""``loopline synth``: generate synthetic TEM images or videos with exact ground truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CliError

HELP = "generate synthetic TEM images or videos with ground truth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .params import PRESETS

    p.add_argument("--preset", default="M2", choices=PRESETS, help="parameter preset (default M2)")
    p.add_argument("--count", type=int, default=16, help="number of images (or videos)")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed -> identical files")
    p.add_argument("--out", type=Path, required=True, help="output dataset folder")
    p.add_argument("--video", action="store_true", help="write videos with per-frame truth")
    p.add_argument("--frames", type=int, default=None, help="frames per video (with --video)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
        help="override a parameter: NAME=VALUE or NAME=LOW,HIGH (repeatable)",
    )  # fmt: skip
    p.add_argument("--backgrounds", type=Path, help="folder of real background patches")
    p.add_argument("--format", dest="fmt", choices=("png", "tif"), default="png")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--preview", action="store_true", help="also write DIR/preview.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")


def run(a: argparse.Namespace) -> int:
    from rich.console import Console

    from .generate import generate
    from .params import ParameterError, parse_override
    from .preview import contact_sheet

    try:
        overrides = dict(parse_override(o) for o in a.overrides)
        res = generate(
            a.out, preset=a.preset, count=a.count, seed=a.seed, video=a.video, frames=a.frames,
            overrides=overrides, backgrounds=a.backgrounds, fmt=a.fmt, jobs=a.jobs,
            overwrite=a.overwrite, progress=sys.stderr.isatty(),
        )  # fmt: skip
    except (ParameterError, ValueError, FileExistsError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    con = Console()
    kind = "videos" if a.video else "images"
    con.print(
        f"[bold green]synth[/] {a.preset}: {res.sequences} {kind}, {res.images} frames, "
        f"{res.instances} labelled instances in {res.seconds:.1f} s "
        f"({res.seconds / max(res.images, 1) * 1000:.0f} ms/frame) -> {res.out}"
    )
    if a.preview:
        sheet = contact_sheet(res.out, res.out / "preview.png", title=f"loopline synth {a.preset}")
        con.print(f"preview: {sheet}")
    return 0
