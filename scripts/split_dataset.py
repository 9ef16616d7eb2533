#!/usr/bin/env python3
"""Split a loopline dataset folder (synth or import output) in two by frame order.

Frames are in natural file-name order (``loopline.io.image_files``: a video's frame index,
``img_0050`` before ``img_0100``, ``9.png`` before ``10.png``), so a split at ``--first N``
is a split in time: the first N frames go to OUT_A (for fine-tuning), the rest to OUT_B (for
evaluation). Images,
labels, instance masks and distractor masks are copied; nothing else (``coco.json`` would
describe the whole set).

Usage: scripts/split_dataset.py DATASET --first N OUT_A OUT_B
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from loopline.io import image_files

_MASKS = ("masks", "distractors")  # per-frame masks of an imported set, by the image's stem


def split(root: Path, first: int, out_a: Path, out_b: Path) -> tuple[int, int]:
    images = image_files(root / "images")
    if not 0 < first < len(images):
        raise SystemExit(f"--first must be between 1 and {len(images) - 1} for {root}, got {first}")
    for out, part in ((out_a, images[:first]), (out_b, images[first:])):
        if out.exists():
            raise SystemExit(f"{out} exists; remove it first")
        for sub in ("images", "labels", *_MASKS):
            if (root / sub).is_dir():
                (out / sub).mkdir(parents=True)
        for img in part:
            shutil.copy2(img, out / "images" / img.name)
            label = root / "labels" / f"{img.stem}.txt"
            if label.exists():
                shutil.copy2(label, out / "labels" / label.name)
            for sub in _MASKS:
                for m in (root / sub).glob(f"{img.stem}.*"):
                    shutil.copy2(m, out / sub / m.name)
        shutil.copy2(root / "data.yaml", out / "data.yaml")
    return first, len(images) - first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--first", type=int, required=True, help="frames in the first part")
    p.add_argument("out_a", type=Path)
    p.add_argument("out_b", type=Path)
    a = p.parse_args(argv)
    na, nb = split(a.dataset, a.first, a.out_a, a.out_b)
    print(f"{a.out_a}: {na} frames, {a.out_b}: {nb} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
