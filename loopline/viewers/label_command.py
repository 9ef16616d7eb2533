"""``loopline label``: label frames in the browser; the labels become a training dataset.

loopline label frames/ --out labelled/                  # a folder of images
loopline label movie.mp4 --every 25 --out labelled/     # every 25th frame of a video
loopline label runs/today --out labelled/ --model none  # a run folder, no proposals
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CliError

HELP = "label frames in the browser (YOLO-seg + COCO + polylines), the model's instances proposed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames", type=Path, metavar="FRAMES",
                   help="a folder of images (.png .tif .jpg), a video or TIFF stack, or a run "
                   "folder of loopline serve / analyze")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="dataset folder the labels are saved in after every edit (images/, "
                   "labels/, polylines/, coco.json, data.yaml); an earlier session's labels "
                   "there are shown again")  # fmt: skip
    p.add_argument("--model", default="defects", metavar="defects|PATH|ridge|none",
                   help="model whose instances are proposed (default: the shipped 'defects'; "
                   "'none': no proposals)")  # fmt: skip
    p.add_argument(
        "--conf",
        type=float,
        default=None,
        help="least score of a proposal (default: the engine's, 0.25)",
    )
    p.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="label every N-th frame of a video or folder (default 1)",
    )
    p.add_argument("--label-width", type=float, default=None, metavar="PX",
                   help="default width of a dislocation's label, px (default: the shipped "
                   "model's training labels, the synthetic generator's label_width)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this Host name (repeatable; default: "
                   "localhost names only)")  # fmt: skip
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (0: until Ctrl-C)")  # fmt: skip


def proposal_engine(model: str, conf: float | None, *, flag: str):
    """The engine whose instances the labelling page proposes; None for ``none``."""
    if model.lower() == "none":
        return None
    import logging

    from ..engines import create_engine

    try:
        engine = create_engine(model, **({} if conf is None else {"conf": conf}))
    except (OSError, ValueError, ImportError) as e:
        raise CliError(f"{flag} {model}: {e}") from None
    logging.getLogger(__name__).debug("proposals from %s (%s)", model, type(engine).__name__)
    return engine


def run(a: argparse.Namespace) -> int:
    from .label import LabelServer, run_label
    from .label_store import WIDTH_RANGE, collect_frames

    if a.every < 1:
        raise CliError(f"--every must be >= 1, got {a.every}")
    if a.duration < 0:
        raise CliError(f"--duration must be >= 0, got {a.duration}")
    if not 0 <= a.port <= 65535:
        raise CliError(f"--port must lie in [0, 65535], got {a.port}")
    if a.label_width is None:
        from ..datasets.importers import default_label_width

        a.label_width = default_label_width()
    lo, hi = WIDTH_RANGE
    if not lo <= a.label_width <= hi:
        raise CliError(f"--label-width must lie in [{lo:g}, {hi:g}] px, got {a.label_width}")
    if a.conf is not None and not 0.0 <= a.conf <= 1.0:
        raise CliError(f"--conf must lie in [0, 1], got {a.conf}")
    try:
        frames = collect_frames(a.frames, every=a.every)
    except (OSError, ValueError, ImportError) as e:
        raise CliError(str(e)) from None
    engine = proposal_engine(a.model, a.conf, flag="--model")
    try:
        server = LabelServer(frames, a.out, engine=engine, model=a.model if engine else None,
                             label_width=a.label_width, host=a.host, port=a.port,
                             allowed_hosts=",".join(a.allow_host),
                             meta={"source": str(a.frames), "every": a.every})  # fmt: skip
    except FileExistsError as e:
        raise CliError(str(e)) from None
    try:
        return run_label(server, duration_s=a.duration, open_browser=a.open,
                         source=str(a.frames))  # fmt: skip
    except OSError as e:  # port in use, address not local
        raise CliError(f"cannot serve on {a.host}:{a.port}: {e.strerror or e}") from None
