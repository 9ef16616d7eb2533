"""``loopline recover``: make a killed run's folder whole again and free what it held."""

from __future__ import annotations

import argparse
from pathlib import Path

from loopline.errors import CliError

HELP = ("rewrite a killed run's unfinalised videos as playable MP4s, merge its Parquet parts "
        "and free its shared memory")

_EPILOG = """\
A run folder's annotated.mp4 is finalised when the daemon shuts down. After a SIGKILL,
an out-of-memory kill or a power cut it is not (no player opens it); an
annotated.mp4.open beside it marks it. This command recovers every such video in
place and prints how many frames each kept (the last 256 KiB written, a few frames,
are lost; frames.csv still lists every frame). It merges series.parquet from the
closed parts it is written in while the run goes (series.parquet.parts/: nothing
in them needs repair), and removes the killed daemon's shared memory (/dev/shm) and
private ipc folder, which its .loopline-daemon.json names. What a running daemon
still writes or holds is left alone.

example:
  loopline recover runs/live
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _EPILOG
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder")


def run(a: argparse.Namespace) -> int:
    from ..io.runfolder import recover_parquet
    from .hygiene import RunDirBusy, clean_stale
    from .video_recovery import recover_run

    if not a.run_dir.is_dir():
        raise CliError(f"{a.run_dir}: expected a run folder (output.dir of loopline serve), "
                       "found no such folder")  # fmt: skip
    try:
        freed = clean_stale(a.run_dir, wait_s=2.0)
    except RunDirBusy as e:
        freed = {}
        print(f"{e}: its shared memory and ipc folder are left alone")
    if "shm" in freed:
        print(f"removed shared memory /dev/shm/{freed['shm']} "
              f"({freed['shm_bytes'] / 2**20:.0f} MiB) of the killed daemon "
              f"(pid {freed['pid']})")  # fmt: skip
    if "ipc" in freed:
        print(f"removed the ipc folder {freed['ipc']} of the killed daemon")
    done = {**recover_parquet(a.run_dir), **recover_run(a.run_dir)}
    if not done and not freed:
        print(f"{a.run_dir}: nothing to recover")
    for name, n in done.items():
        unit = "rows" if name.endswith(".parquet") else "frames"
        what = f"recovered, {n} {unit}" if isinstance(n, int) else n
        print(f"{a.run_dir / name}: {what}")
    return 1 if any(str(n).startswith("failed") for n in done.values()) else 0
