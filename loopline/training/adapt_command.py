"""``loopline adapt``: fine-tune a model on a few labelled frames of your sample, on the CPU.

Label a handful of frames (``loopline label frames/ --out mine/``), then ``loopline adapt
--data mine/ --name mine`` writes ``models/mine/`` (``model.pt``, ``model.onnx``, ``README.md``)
for ``loopline eval --model models/mine/model.onnx --data DIR --mask-threshold 0.4``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CliError

HELP = "fine-tune a model on a few labelled frames of your sample"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="labelled frames: a dataset folder from loopline label, import or "
                   "synth (images/, labels/)")  # fmt: skip
    p.add_argument("--from", dest="source", default="defects", metavar="NAME|PT",
                   help="model to start from: a shipped name or an ultralytics .pt "
                   "(default: defects)")  # fmt: skip
    p.add_argument("--minutes", type=float, default=15.0,
                   help="training budget, wall-clock minutes (default 15; evaluation and "
                   "export add about a minute)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("models"),
                   help="folder of model folders (default: models)")  # fmt: skip
    p.add_argument("--name", default=None,
                   help="model folder under --out (default: <DIR name>-adapted)")  # fmt: skip
    p.add_argument("--holdout", type=int, default=None, metavar="K",
                   help="hold back the last K labelled frames (by name) to measure before and "
                   "after (default: 0 with --test, else 1 with at least 3 frames)")  # fmt: skip
    p.add_argument("--test", type=Path, default=None, metavar="DIR",
                   help="another labelled dataset to measure before and after on")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--imgsz", type=int, default=None,
                   help="network input size, px, a multiple of 32 (default: an adapted "
                        "source's own; else 512, or 640 where the labelled lines lie under 10 px "
                        "from their neighbours at 512, which 512 merges, at 1.4-1.6x the engine "
                        "time); the adapted model runs at it everywhere")  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="frames per batch (default 8)")
    p.add_argument("--freeze", type=int, default=10,
                   help="layers kept frozen (default 10: the backbone)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=None, metavar="R",
                   help="times each training frame is listed per epoch (default: up to 64 "
                   "frames an epoch)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="ultralytics train argument (repeatable), e.g. lr0=0.0005")  # fmt: skip


def _summary(res) -> None:
    from rich.console import Console
    from rich.table import Table

    from .adapt import CARD_ROWS, format_value

    con = Console()
    for s in res.before:
        t = Table(title=f"{s} frames: before -> after")
        t.add_column("metric")
        t.add_column("before", justify="right")
        t.add_column("after", justify="right")
        for label, key, pct in CARD_ROWS:
            before, after = res.before[s].get(key), res.after[s].get(key)
            t.add_row(label, format_value(before, pct), format_value(after, pct))
        con.print(t)
    state = "[bold yellow]stopped early[/]" if res.stopped_early else "done"
    con.print(f"adapt {state}: {res.epochs} epochs in {res.train_s:.0f} s; "
              f"model {res.model_onnx}, card {res.card}")  # fmt: skip


def run(a: argparse.Namespace) -> int:

    from .adapt import AdaptConfig, adapt
    from .command import parse_sets

    extra = parse_sets(a.extra)
    cfg = AdaptConfig(
        data=a.data, source=a.source, minutes=a.minutes, out=a.out, name=a.name,
        holdout=a.holdout, test=a.test, seed=a.seed, imgsz=a.imgsz, batch=a.batch,
        freeze=a.freeze, repeat=a.repeat, threads=a.threads, extra=extra,
    )  # fmt: skip
    try:
        res = adapt(cfg, progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise CliError(str(e)) from None
    _summary(res)
    return 130 if res.stopped_early else 0
