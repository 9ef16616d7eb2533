"""``loopline report RUN_DIR``: figures (PNG + PDF) and a summary table of a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CliError

HELP = "figures (PNG + PDF) and a summary table of a run folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run folder (series.csv ...)")
    p.add_argument("--out", type=Path, help="output folder (default RUN_DIR/report)")
    p.add_argument("--frames", type=int, default=8, help="frames on the contact sheet (1-32)")


def run(a: argparse.Namespace) -> int:
    if not 1 <= a.frames <= 32:
        raise CliError(f"--frames must lie in [1, 32], got {a.frames}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError("loopline report needs matplotlib: pip install 'loopline[report]'") from None
    from rich.console import Console
    from rich.table import Table

    from .figures import make_report

    try:
        rep = make_report(a.run_dir, a.out, frames=a.frames)
    except (FileNotFoundError, ValueError) as e:  # no run folder, or another layout
        raise CliError(str(e)) from None
    con = Console()
    t = Table(title=f"loopline report {a.run_dir}", title_justify="left")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for k, v in rep.table:
        t.add_row(k, v)
    con.print(t)
    pngs = [p for p in rep.written if p.suffix == ".png"]
    con.print(f"[bold green]report[/]: {len(pngs)} figures (PNG + PDF) and summary.csv/.md "
              f"-> {rep.out}")  # fmt: skip
    for note in rep.notes:
        con.print(f"[dim]note[/] {note}")
    for name, why in rep.skipped.items():
        con.print(f"[yellow]skipped[/] {name}: {why}")
    return 0
