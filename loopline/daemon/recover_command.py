"""``loopline recover``: make the videos of a killed run playable again."""

from __future__ import annotations

import argparse
from pathlib import Path

from loopline.errors import CliError

HELP = "rewrite the unfinalised annotated videos of a killed run as playable MP4s"

_EPILOG = """\
A run folder's annotated.mp4 is finalised when the daemon shuts down. After a SIGKILL,
an out-of-memory kill or a power cut it is not (no player opens it); an
annotated.mp4.open beside it marks it. This command recovers every such video in
place and prints how many frames each kept (the last 256 KiB written, a few frames,
are lost; frames.csv still lists every frame). A video whose writer is still running
(a live daemon's) is left alone.

example:
  loopline recover runs/live
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _EPILOG
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder")


def run(a: argparse.Namespace) -> int:
    from rich.console import Console

    from .video_recovery import recover_run

    if not a.run_dir.is_dir():
        raise CliError(f"{a.run_dir}: expected a run folder (output.dir of loopline serve), "
                       "found no such folder")  # fmt: skip
    done = recover_run(a.run_dir)
    con = Console()
    if not done:
        con.print(f"{a.run_dir}: no unfinalised video; nothing to recover")
    for name, n in done.items():
        what = f"recovered, {n} frames" if isinstance(n, int) else n
        con.print(f"{a.run_dir / name}: {what}")
    return 1 if any(str(n).startswith("failed") for n in done.values()) else 0
