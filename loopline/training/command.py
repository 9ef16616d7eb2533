"""``loopline train``: train YOLOv8-seg on a loopline dataset, offline and resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CliError

HELP = "train YOLOv8-seg on a loopline dataset, offline"

_ARCHITECTURES = ("yolov8n-seg", "yolov8s-seg", "yolov8n-seg-p2", "yolov8s-seg-p2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="dataset folder (with data.yaml) or a data yaml")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="runs folder")
    p.add_argument("--name", default="loopline", help="run name (folder under --out)")
    p.add_argument("--arch", choices=_ARCHITECTURES,
                   help="architecture (default: that of --weights, else yolov8n-seg); with "
                   "--weights of another one, every layer that fits is carried over")  # fmt: skip
    p.add_argument("--weights", type=Path, help="start from these weights (fine-tuning)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--hours", type=float, help="wall-time budget in hours (overrides --epochs)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--patience", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out/--name")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra ultralytics train argument (repeatable)")  # fmt: skip


def run(a: argparse.Namespace) -> int:

    from .train import TrainConfig, train

    if a.data is None and not a.resume:
        raise CliError("--data is required (unless --resume)")
    extra = parse_sets(a.extra)
    cfg = TrainConfig(
        data=a.data or Path("."), out=a.out, name=a.name, arch=a.arch, weights=a.weights,
        epochs=a.epochs, hours=a.hours, imgsz=a.imgsz, batch=a.batch, seed=a.seed,
        workers=a.workers, patience=a.patience, threads=a.threads, resume=a.resume, extra=extra,
    )  # fmt: skip
    try:
        best = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    print(f"best weights: {best}")
    return 0


def parse_sets(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` options as a dict, each value read as YAML (numbers, booleans)."""
    import yaml

    extra = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep:
            raise CliError(f"--set expects KEY=VALUE, got {kv!r}")
        extra[k] = yaml.safe_load(v)
    return extra
