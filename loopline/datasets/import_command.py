"""``loopline import``: convert real labels (masks, COCO, labelme, CVAT, napari, box formats)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CliError

HELP = (
    "convert real labels (tanaka, binary masks, COCO, labelme, CVAT, napari, YOLO detection, "
    "Pascal VOC, keras-yolo3) into a loopline dataset"
)

# importers.FORMATS, without importing it (the command line starts fast)
_FORMATS = (
    "tanaka", "masks", "coco", "labelme", "cvat", "napari", "yolo-det", "voc", "keras-yolo3",
)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="labels: folder or file, as the format expects")
    p.add_argument("--format", dest="fmt", required=True, choices=_FORMATS,
                   help="tanaka: SOURCE/original + SOURCE/ds line masks (+ SOURCE/st "
                        "distractor masks); masks: folder of "
                        "binary masks (with --images, --class); coco: COCO JSON with "
                        "polygons; labelme: labelme JSON file or folder; cvat: CVAT for "
                        "images 1.1 annotations.xml (or its folder); napari: folder of frames "
                        "with <stem>.csv Shapes and/or <stem>.npy Labels; box-only: yolo-det "
                        "(folder of 'class cx cy w h' .txt), voc (Pascal VOC XML file or "
                        "folder), keras-yolo3 (annotation file)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--images", type=Path, help="folder of frames named like the labels")
    p.add_argument("--class", dest="cls", choices=("dislocation", "loop"),
                   help="class of every instance (needed for --format masks and napari "
                        "Labels layers; else from label names)")  # fmt: skip
    p.add_argument("--label-width", type=float, default=None, metavar="PX",
                   help="width (px) of line labels: redrawn from mask skeletons (tanaka, "
                        "masks) or drawn lines buffered to it (labelme, cvat, napari; "
                        "default: the model card's label width)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")


def run(a: argparse.Namespace) -> int:
    from rich.console import Console

    from .importers import import_dataset

    try:
        res = import_dataset(
            a.source, a.out, fmt=a.fmt, images=a.images, cls=a.cls,
            label_width=a.label_width, overwrite=a.overwrite,
        )  # fmt: skip
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    counts = ", ".join(f"{n} {k}" for k, n in res.per_class.items() if n)
    skipped = f", {res.skipped} shapes skipped" if res.skipped else ""
    distractors = f", {res.distractors} distractor masks" if res.distractors else ""
    box_only = f", {res.box_only} box-only" if res.box_only else ""
    Console().print(
        f"[bold green]import[/] {a.fmt}: {res.images} frames, {res.instances} instances "
        f"({counts or 'none'}{box_only}){skipped}{distractors} -> {res.out}"
    )
    return 0
