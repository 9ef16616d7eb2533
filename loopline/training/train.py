"""``loopline train``: YOLOv8-seg from scratch on loopline datasets, fully offline.

No pretrained weights can be fetched, so the network is built from the architecture yaml
shipped inside ultralytics (``yolov8n-seg.yaml``, ``yolov8s-seg.yaml``) or here
(``yolov8n-seg-p2``/``yolov8s-seg-p2``: mask prototypes from a stride-4 branch, at 1/2 of the
input; see ``yolov8-seg-p2.yaml``). ``--weights`` of another architecture warm-start every layer
that fits (``transfer_weights``). Every run writes its
folder (``weights/last.pt``, ``weights/best.pt``, ``results.csv``, ``args.yaml``) and a
``loopline_run.json`` with the exact command, seed, data and timings, so a shipped model can
be traced back to how it was made.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._offline import configure_offline, use_all_threads
from .command import _ARCHITECTURES as ARCHITECTURES

logger = logging.getLogger(__name__)

__all__ = ["ARCHITECTURES", "TrainConfig", "architecture_problem", "architecture_yaml", "train",
           "transfer_weights"]


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (see ``loopline train --help``)."""

    data: Path
    out: Path = Path("runs/train")
    name: str = "loopline"
    arch: str | None = None  # None: the architecture of ``weights``, else yolov8n-seg
    weights: Path | None = None  # start from these weights (fine-tuning) instead of scratch
    epochs: int = 100
    hours: float | None = None  # wall-time budget; overrides epochs (schedule adapts)
    imgsz: int = 320
    batch: int = 16
    seed: int = 0
    workers: int = 2
    patience: int = 100
    threads: int | None = None
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.arch is not None and self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if not self.resume and not Path(self.data).exists():
            raise FileNotFoundError(f"dataset {self.data} does not exist")
        if self.imgsz < 32 or self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (>= 32), got {self.imgsz}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.hours is not None and self.hours <= 0:
            raise ValueError(f"hours must be > 0, got {self.hours}")


def _data_yaml(data: Path) -> Path:
    data = Path(data)
    if data.is_dir():
        data = data / "data.yaml"
    if not data.exists():
        raise FileNotFoundError(f"no data.yaml at {data}: make one with 'loopline synth'")
    return data.resolve()


def _epoch_printer():
    """An ultralytics callback that prints one rich line per epoch, and one for the best weights.

    Ultralytics calls ``on_fit_epoch_end`` once more after the last epoch, for its validation of
    ``best.pt`` (with the epoch counter one past the end). The last epoch is the first call that
    finds ``trainer.stop`` set, so any call after it is that final validation. Under a time
    budget (``--hours``) ultralytics re-estimates the epoch total after every epoch and a run
    may go one epoch past its last estimate: the total shown is never below the epoch.
    """
    from rich.console import Console

    console = Console(stderr=True)
    state = {"t": time.perf_counter(), "stopped": False}

    def on_fit_epoch_end(trainer) -> None:
        # A progress line must never stop a training run: any surprise is logged, not raised.
        try:
            m = trainer.metrics or {}
            scores = (
                f"box mAP50 {m.get('metrics/mAP50(B)', float('nan')):.3f}  "
                f"mask mAP50 {m.get('metrics/mAP50(M)', float('nan')):.3f}  "
                f"mask mAP50-95 {m.get('metrics/mAP50-95(M)', float('nan')):.3f}"
            )
            if state["stopped"]:
                console.print(f"[bold]best weights[/] (validation)  {scores}")
                return
            state["stopped"] = bool(trainer.stop)
            now = time.perf_counter()
            dt, state["t"] = now - state["t"], now
            items = trainer.label_loss_items(trainer.tloss, prefix="train")
            loss = sum(float(v) for v in items.values())
            total = max(trainer.epochs, trainer.epoch + 1)
            console.print(
                f"[bold]epoch {trainer.epoch + 1}/{total}[/] "
                f"loss {loss:.3f}  {scores}  [dim]{dt:.0f} s[/]"
            )
        except Exception as e:  # display only
            logger.warning("epoch summary failed: %s", e)

    return on_fit_epoch_end


def train(cfg: TrainConfig, *, callbacks: dict[str, Callable] | None = None) -> Path:
    """Train (or resume) and return the path of the best weights.

    The run folder is ``cfg.out / cfg.name``; ``--resume`` continues from its ``last.pt``.
    ``callbacks``: more ultralytics callbacks, event name -> function of the trainer (e.g.
    ``loopline adapt``'s progress bar), added after the epoch printer.
    """
    cfg.validate()
    configure_offline(cfg.threads)
    from ultralytics import YOLO

    n_threads = use_all_threads(cfg.threads)
    run_dir = (Path(cfg.out) / cfg.name).resolve()
    t0 = time.perf_counter()
    if cfg.resume:
        last = run_dir / "weights" / "last.pt"
        if not last.exists():
            raise FileNotFoundError(f"nothing to resume: {last} does not exist")
        model = YOLO(str(last))
        _add_callbacks(model, callbacks)
        model.train(resume=True, trainer=_trainer())
    else:
        model = _initial_model(cfg, run_dir)
        _add_callbacks(model, callbacks)
        args: dict[str, Any] = {
            "data": str(_data_yaml(cfg.data)),
            "epochs": cfg.epochs,
            "imgsz": cfg.imgsz,
            "batch": cfg.batch,
            "seed": cfg.seed,
            "deterministic": True,
            "workers": cfg.workers,
            "device": "cpu" if not _cuda() else 0,
            "amp": False,  # the AMP check downloads a checkpoint
            "plots": False,  # plotting fetches fonts and costs time per epoch
            "project": str(run_dir.parent),
            "name": run_dir.name,
            "exist_ok": True,
            "patience": cfg.patience,
            "flipud": 0.5,  # TEM frames have no up or down
            "fliplr": 0.5,
            "verbose": False,
        }
        if _arch_of(model.model).startswith("yolov8-seg-p2"):
            args["mask_ratio"] = 2  # supervise the masks at the prototypes' own 1/2 resolution
        if cfg.hours is not None:
            args["time"] = cfg.hours
        args.update(cfg.extra)
        model.train(trainer=_trainer(), **args)
    wall = time.perf_counter() - t0
    best = run_dir / "weights" / "best.pt"
    record = {
        "command": " ".join(["loopline", *sys.argv[1:]]) if sys.argv else "",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "threads": n_threads,
        "wall_s": round(wall, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metrics": _final_metrics(run_dir),
        "host_cpus": os.cpu_count(),
    }
    (run_dir / "loopline_run.json").write_text(json.dumps(record, indent=1), "utf-8")
    logger.info("training finished in %.0f s; best weights %s", wall, best)
    return best


def _add_callbacks(model, callbacks: dict[str, Callable] | None) -> None:
    model.add_callback("on_fit_epoch_end", _epoch_printer())
    for event, fn in (callbacks or {}).items():
        model.add_callback(event, fn)


def architecture_problem(arch: str) -> str | None:
    """Why ``arch`` cannot be built from where loopline is installed (None: it can); see
    :func:`architecture_yaml`."""
    try:
        architecture_yaml(arch)
    except RuntimeError as e:
        return str(e)
    return None


def architecture_yaml(arch: str) -> str:
    """The yaml an architecture name is built from: ultralytics' own or one shipped here.

    The scale letter stays in the name (``yolov8n-seg-p2.yaml``): ultralytics reads it from
    there and then loads the unscaled file (``yolov8-seg-p2.yaml``) next to it.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if not arch.endswith("-p2"):
        return f"{arch}.yaml"
    path = str(Path(__file__).with_name(f"{arch}.yaml"))
    shipped = str(Path(__file__).with_name(_unscaled(f"{arch}.yaml")))
    # ultralytics drops the first "<digits><scale letter>" of the whole path, not of the name
    if _unscaled(path) != shipped:
        raise RuntimeError(
            f"cannot build {arch} from {shipped}: ultralytics would misread "
            "a scale letter in its folder name; install loopline elsewhere"
        )
    return path


def _initial_model(cfg: TrainConfig, run_dir: Path):
    """The model a new run starts from: the architecture from scratch, the weights as they are,
    or, when the weights are of another architecture, the architecture with every layer of the
    weights that fits copied in (``transfer_weights``)."""
    from ultralytics import YOLO

    src = None
    if cfg.weights is not None:
        if not Path(cfg.weights).exists():
            raise FileNotFoundError(f"weights {cfg.weights} do not exist")
        src = YOLO(str(cfg.weights))
        if cfg.arch is None or _arch_of(src.model) == _arch_key(f"{cfg.arch}.yaml"):
            return src  # fine-tuning: the weights' own architecture
    model = YOLO(architecture_yaml(cfg.arch or "yolov8n-seg"))  # from the yaml, no download
    if src is None:
        return model
    copied, total = transfer_weights(model.model, src.model)
    logger.info("warm start from %s (%s): %d of %d tensors of %s copied",
                cfg.weights, _arch_of(src.model), copied, total, cfg.arch)  # fmt: skip
    # Ultralytics' trainer rebuilds the network and loads weights only from a checkpoint file,
    # so the transferred network is written as one in the run folder (and stays there as record).
    import torch

    run_dir.mkdir(parents=True, exist_ok=True)
    start = run_dir / "warm_start.pt"
    ckpt = {"model": model.model, "train_args": {}, "warm_start_from": str(cfg.weights)}
    torch.save(ckpt, start)
    return YOLO(str(start))


# ultralytics' rule: the first "<digits><scale letter>" of a yaml path names the scale
_SCALE = re.compile(r"(\d+)([nslmx])(.+)?$")


def _unscaled(path: str) -> str:
    """The yaml path ultralytics loads for a scaled name (``yolov8n-seg`` -> ``yolov8-seg``)."""
    return _SCALE.sub(r"\1\3", path)


def _arch_key(yaml_name: str) -> str:
    """Architecture and scale of a yaml name: ``yolov8n-seg-p2.yaml`` -> ``yolov8-seg-p2.yaml/n``.
    """
    m = _SCALE.search(yaml_name)
    return f"{_unscaled(yaml_name)}/{m.group(2) if m else ''}"


def _arch_of(net) -> str:
    """``_arch_key`` of the yaml a network was built from."""
    return _arch_key(Path(str(getattr(net, "yaml", {}).get("yaml_file", ""))).name)


def transfer_weights(dst, src) -> tuple[int, int]:
    """Copy into the network ``dst`` every tensor of ``src`` whose layer exists in both with the
    same shape; returns (tensors copied, tensors in ``dst``).

    Layers match by index, except the head (the last layer of each), whose per-level branches
    (``cv2``/``cv3``/``cv4`` of Detect/Segment) are matched from the coarsest level down: a head
    with extra finer levels in front (P2 before P3-P5) gets the source's P3-P5 branches on its own
    P3-P5, and only the new levels and whatever changed shape start from scratch.
    """
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    hs, hd = len(src.model) - 1, len(dst.model) - 1
    shift = int(getattr(dst.model[-1], "nl", 0)) - int(getattr(src.model[-1], "nl", 0))
    new = {}
    for k, v in src_sd.items():
        parts = k.split(".")
        if len(parts) > 2 and parts[0] == "model" and parts[1] == str(hs):
            parts[1] = str(hd)
            if parts[2] in ("cv2", "cv3", "cv4") and parts[3].isdigit():
                parts[3] = str(int(parts[3]) + shift)
        key = ".".join(parts)
        if key in dst_sd and dst_sd[key].shape == v.shape:
            new[key] = v
    dst.load_state_dict(new, strict=False)
    return len(new), len(dst_sd)


def _trainer():
    """Ultralytics' segmentation trainer, validating at the prototypes' resolution (P2 too)."""
    from .validator import ProtoScaleSegmentationTrainer

    return ProtoScaleSegmentationTrainer


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def _final_metrics(run_dir: Path) -> dict[str, float]:
    csv = run_dir / "results.csv"
    if not csv.exists():
        return {}
    lines = [ln for ln in csv.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    head = [h.strip() for h in lines[0].split(",")]
    last = [v.strip() for v in lines[-1].split(",")]
    out = {}
    for h, v in zip(head, last, strict=False):
        try:
            out[h] = float(v)
        except ValueError:
            continue
    return out
