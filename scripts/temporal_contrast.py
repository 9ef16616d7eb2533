"""Would a temporal channel tell gliding dislocations from static distractors? (issue 15, item 3)

    .venv/bin/python scripts/temporal_contrast.py [--set DIR ...] [--k 1,3,5] [--json out.json]

A video's frames in time order (a folder of a real set: ``original/`` frames with ``ds/``
dislocation and ``st/`` stacking-fault / slip-trace masks of the same names, the layout of
``../shared/data/real/tanaka-*``). For each frame, the temporal channel is the frame minus
the median of its ``k`` neighbours on each side (the frame itself left out). For each labelled
class the script reports its contrast, the mean of a high-pass (frame minus a 6-px Gaussian)
over the class's pixels in units of the background's high-pass standard deviation, in the raw
frame and in the temporal channel, and the share of the raw contrast the channel keeps. The
background is every pixel more than 4 px from any label.

A channel that keeps most of a dislocation's contrast and little of a slip trace's would let
a model (trained with it as a second input channel) drop the slip traces it now confuses with
dislocations; one that keeps little of either would not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from loopline.datasets.importers import read_grey, read_mask
from loopline.io import image_files, natural_key

HERE = Path(__file__).resolve().parents[1]
REAL = HERE.parent / "shared" / "data" / "real"
CLASSES = {"ds": "dislocations", "st": "stacking faults / slip traces"}


def _number(p: Path) -> int:
    """The last number in a file name (its frame index in these sets)."""
    return next((t for t in reversed(natural_key(p)) if isinstance(t, int)), 0)


def load(folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[int]]:
    """Frames (T, H, W) float, masks per class (T, H, W) bool (absent: all False), numbers."""
    frames = sorted(image_files(folder / "original"), key=_number)
    imgs = np.stack([read_grey(p).astype(float) for p in frames])
    masks = {}
    for cls in CLASSES:
        if not (folder / cls).is_dir():
            continue
        by_stem = {p.stem: p for p in image_files(folder / cls)}  # any case of suffix
        masks[cls] = np.stack([
            read_mask(by_stem[p.stem]) if p.stem in by_stem else np.zeros(imgs.shape[1:], bool)
            for p in frames
        ])  # fmt: skip
    return imgs, masks, [_number(p) for p in frames]


def contrasts(imgs: np.ndarray, masks: dict[str, np.ndarray], k: int) -> dict[str, dict]:
    """Per class: mean raw and temporal contrast (background-sd units) over the frames."""
    anything = np.zeros(imgs.shape, bool)
    for m in masks.values():
        anything |= m
    rows: dict[str, list[tuple[float, float]]] = {c: [] for c in masks}
    for i in range(len(imgs)):
        lo, hi = max(0, i - k), min(len(imgs), i + k + 1)
        others = np.delete(imgs[lo:hi], i - lo, axis=0)
        resid = imgs[i] - np.median(others, axis=0)
        bg = ~ndimage.binary_dilation(anything[i], iterations=4)
        hp_raw = imgs[i] - ndimage.gaussian_filter(imgs[i], 6)
        hp_tmp = resid - ndimage.gaussian_filter(resid, 6)
        sd_raw, sd_tmp = hp_raw[bg].std(), hp_tmp[bg].std()
        for c, m in masks.items():
            if m[i].sum() >= 20:
                rows[c].append((hp_raw[m[i]].mean() / sd_raw, hp_tmp[m[i]].mean() / sd_tmp))
    out = {}
    for c, v in rows.items():
        if not v:
            continue
        a = np.array(v)
        raw, tmp = float(a[:, 0].mean()), float(a[:, 1].mean())
        out[c] = {"frames": len(a), "raw": raw, "temporal": tmp,
                  "kept": tmp / raw if raw else float("nan")}  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", dest="sets", type=Path, action="append",
                    help="a real set's folder (default: tanaka-twip-2um and tanaka-twip-086um)")
    ap.add_argument("--k", default="1,3,5", help="neighbours on each side (comma-separated)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    sets = a.sets or [REAL / "tanaka-twip-2um", REAL / "tanaka-twip-086um"]
    ks = [int(x) for x in a.k.split(",")]
    result = {}
    for folder in sets:
        imgs, masks, nums = load(folder)
        gaps = np.diff(nums)
        print(f"\n{folder.name}: {len(imgs)} frames, numbers {nums[0]}-{nums[-1]} (gaps "
              f"{gaps.min()}-{gaps.max()} frames)")  # fmt: skip
        print(f"{'k':>3} {'class':32s} {'frames':>6} {'raw':>7} {'temporal':>9} {'kept':>6}")
        result[folder.name] = {}
        for k in ks:
            res = contrasts(imgs, masks, k)
            result[folder.name][k] = res
            for c, r in res.items():
                print(f"{k:3d} {CLASSES[c]:32s} {r['frames']:6d} {r['raw']:7.2f} "
                      f"{r['temporal']:9.2f} {r['kept']:6.2f}")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
