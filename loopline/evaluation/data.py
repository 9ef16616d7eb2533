"""Ground truth of a dataset folder (``loopline synth`` output or an imported real set).

A frame's instances come from ``labels/<stem>.txt`` (YOLO-seg polygons, rasterised as the
generator draws them). Where the folder also has ``masks/<stem>.png`` (an importer's 16-bit
instance map, value ``k`` = ``k``-th label line), those original masks are the frame's
``strokes``: the thin human line labels on which the tolerance metrics are measured. Where it
has ``truth.json`` (the generator's exact ground truth), each line's polyline and pile-up come
from there. Where it has ``distractors/<stem>.png`` (an importer's binary mask of structures
that are not defects, e.g. tanaka's planar faults / slip traces), that mask is the frame's
``distractors``: ``loopline eval`` measures how many predicted line pixels fall on them.

A label line ``class cx cy w h`` (an importer's box-only instance: a rectangle or a box of a
box-only format) is an instance known by its box alone; its mask is the filled box, and the
frame's ``box_only`` marks it. ``Dataset.box_only`` counts them: ``loopline eval`` scores a
dataset that has any by box metrics only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..datasets.importers import BOX_FIELDS, read_labels
from ..datasets.raster import polygon_mask
from ..io.frames import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

__all__ = ["Dataset", "Frame", "read_frame"]


@dataclass(frozen=True)
class Frame:
    """One labelled frame.

    Attributes
    ----------
    stem : str
        File name without suffix.
    image : (H, W) uint8 or uint16
    masks : (N, H, W) bool
        Instances rasterised from the label polygons (empty ones dropped).
    classes : (N,) int64
        0 dislocation, 1 loop.
    boxes : (N, 4) float64
        Polygon extents ``x0, y0, x1, y1`` (px), clipped to the frame.
    strokes : (N, H, W) bool or None
        The original masks of the same instances, where the dataset kept them.
    lines : list of (K, 2) float64 or None
        Exact polyline (px) of each instance (None for loops), from ``truth.json``.
    pileups : (N,) int64
        Pile-up id of each line from ``truth.json``; -1 where unknown or for loops.
    distractors : (H, W) bool or None
        Pixels of labelled non-defects (slip traces, planar faults), where the dataset has
        them for this frame; None where it does not (an all-False mask: labelled, none there).
    box_only : (N,) bool or None
        Which instances are labelled by a box alone (their ``masks`` are the filled boxes);
        None where the frame has none.
    """

    stem: str
    image: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    strokes: np.ndarray | None = None
    lines: list[np.ndarray | None] | None = None
    pileups: np.ndarray | None = None
    distractors: np.ndarray | None = None
    box_only: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


def read_image(path: Path) -> np.ndarray:
    """A frame as (H, W) grey uint8 or uint16."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY)
    return img


class Dataset:
    """The frames of a dataset folder, read one at a time (sorted by file name).

    Attributes
    ----------
    box_only : int
        How many label lines are box-only (``class cx cy w h``); 0 for polygon labels.

    Raises
    ------
    ValueError
        If ``root`` lacks ``images/`` or ``labels/`` or holds no frames.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        img_dir, lab_dir = self.root / "images", self.root / "labels"
        if not img_dir.is_dir() or not lab_dir.is_dir():
            raise ValueError(
                f"expected a dataset folder with images/ and labels/ (made by loopline synth or "
                f"loopline import), got {self.root}"
            )
        self.paths = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"no images in {img_dir}")
        self.truth = _truth_index(self.root / "truth.json")
        self.has_strokes = (self.root / "masks").is_dir()
        self.box_only = sum(_box_lines(lab_dir / f"{p.stem}.txt") for p in self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self.frame(i)

    def frame(self, i: int) -> Frame:
        p = self.paths[i]
        return read_frame(self.root, p, self.truth.get(f"images/{p.name}"))


def _box_lines(path: Path) -> int:
    """How many lines of a label file are box-only (0 where there is no file)."""
    if not path.is_file():
        return 0
    return sum(len(r.split()) == BOX_FIELDS for r in path.read_text("utf-8").splitlines())


def _truth_index(path: Path) -> dict[str, dict[str, Any]]:
    """image name -> that frame's truth record (lines with points and pile-up)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text("utf-8"))
    out = {}
    for seq in data.get("sequences", []):
        for fr in seq.get("frames", []):
            if "image" in fr:
                out[fr["image"]] = fr
    return out


def _read_map(path: Path, shape: tuple[int, int], what: str) -> np.ndarray | None:
    """A single-channel PNG beside the labels (None if there is none), checked to be ``shape``."""
    if not path.is_file():
        return None
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.shape != shape:
        got = None if img is None else img.shape
        raise ValueError(f"{path}: expected a {shape} {what}, got {got}")
    return img


def read_frame(root: Path, image_path: Path, truth: dict[str, Any] | None = None) -> Frame:
    """Read one frame's image and ground truth (see the module docstring)."""
    image = read_image(image_path)
    h, w = image.shape
    stem = image_path.stem
    lab = root / "labels" / f"{stem}.txt"
    if not lab.is_file():
        raise ValueError(f"frame {image_path} has no label file {lab}")
    pairs, box_only = read_labels(lab, w, h)
    masks = np.zeros((len(pairs), h, w), bool)
    for k, (_, poly) in enumerate(pairs):
        masks[k] = polygon_mask(poly, (h, w))
    classes = np.array([c for c, _ in pairs], np.int64)
    boxes = np.zeros((len(pairs), 4))
    for k, (_, poly) in enumerate(pairs):
        p = np.clip(poly, 0.0, (w, h))
        lo, hi = p.min(axis=0), p.max(axis=0)
        # A one-pixel-wide stroke has a flat outline; give its box the pixel's width.
        pad = np.clip(1.0 - (hi - lo), 0.0, None) / 2
        boxes[k] = *(lo - pad), *(hi + pad)

    strokes = None
    imap = _read_map(root / "masks" / f"{stem}.png", (h, w), "instance map")
    if imap is not None:
        strokes = imap[None] == np.arange(1, len(pairs) + 1)[:, None, None]
    dmap = _read_map(root / "distractors" / f"{stem}.png", (h, w), "distractor mask")
    distractors = None if dmap is None else dmap != 0

    lines, pileups = _truth_lines(truth, classes, stem)
    keep = masks.any(axis=(1, 2))
    if not keep.all():
        logger.debug("%s: %d label polygons rasterise to nothing; dropped", stem, (~keep).sum())
    return Frame(
        stem=stem, image=image, masks=masks[keep], classes=classes[keep], boxes=boxes[keep],
        strokes=None if strokes is None else strokes[keep],
        lines=None if lines is None else [ln for ln, k in zip(lines, keep, strict=True) if k],
        pileups=pileups[keep], distractors=distractors,
        box_only=box_only[keep] if box_only.any() else None,
    )  # fmt: skip


def _truth_lines(
    truth: dict[str, Any] | None, classes: np.ndarray, stem: str
) -> tuple[list[np.ndarray | None] | None, np.ndarray]:
    pileups = np.full(len(classes), -1, np.int64)
    if truth is None:
        return None, pileups
    recs = truth.get("lines", [])
    idx = np.flatnonzero(classes == 0)
    if len(recs) != len(idx):  # labels and truth disagree: trust the labels, skip the truth
        logger.warning("%s: %d dislocation labels but %d truth lines; truth ignored",
                       stem, len(idx), len(recs))  # fmt: skip
        return None, pileups
    lines: list[np.ndarray | None] = [None] * len(classes)
    for k, rec in zip(idx, recs, strict=True):
        lines[k] = np.asarray(rec["points"], float).reshape(-1, 2)
        pileups[k] = int(rec.get("pileup", -1))
    return lines, pileups
