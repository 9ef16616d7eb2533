"""Offline frame sources for ``loopline analyze`` and ground-truth detections.

:func:`open_source` reads a video file (MP4/AVI/... through OpenCV), a TIFF stack, a DM3/DM4/EMD
file (RosettaSciIO), a folder of images (all through :mod:`loopline.io.frames`, the reader
the daemon replays files with), or a ``loopline synth --video`` dataset (with its
``truth.json``), and yields :class:`Frame` records with grey frames, their times on the file's
own axis where it has one (:meth:`~loopline.io.frames.FrameFile.stamped`, as the daemon's file
replay), and the label file of each frame where there is one.

:func:`truth_detections` turns a frame's YOLO-seg label polygons into
:class:`~loopline.engines.base.Detections` (``--model truth``). Polygons are rasterised by the
pixel-centre rule (a pixel is in when its centre is inside), which puts the mask edge on
average exactly on the polygon; OpenCV's ``fillPoly`` also sets every pixel the outline
touches, which grows each object by about half a pixel per side (+1 px on every length and
axis) and would be measured as such.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.frames import open_frames, read_image

logger = logging.getLogger(__name__)

__all__ = [
    "Frame",
    "FrameSource",
    "detections_from_masks",
    "instance_masks_from_labels",
    "open_source",
    "truth_detections",
]


@dataclass(frozen=True)
class Frame:
    """One frame of a source: grey image (H, W), index, time (s) if known, its label file."""

    index: int
    image: np.ndarray
    time_s: float | None = None
    name: str = ""
    labels: Path | None = None


@dataclass
class FrameSource:
    """An opened source: iterate it for frames; metadata beside."""

    path: Path
    kind: str
    frames: Any  # callable returning an iterator of Frame
    n_frames: int | None = None
    fps: float | None = None
    nm_per_px: float | None = None
    truth: dict[str, Any] | None = None  # truth.json of a synthetic dataset
    sequence: dict[str, Any] | None = None  # the analysed sequence of truth.json
    meta: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()


def open_source(path: str | Path, *, sequence: int = 0) -> FrameSource:
    """Open a video, TIFF stack, DM3/DM4 or EMD file, image, image folder or synthetic dataset.

    Files and plain folders are read by :func:`loopline.io.frames.open_frames`; a folder
    with a ``truth.json`` is read as a ``loopline synth`` dataset (its frame list, times
    and label files).

    Parameters
    ----------
    path : path
        File or folder.
    sequence : int
        Which sequence of a synthetic dataset with several videos (default the first).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or a folder holds no images.
    ValueError
        For an unsupported file type or a sequence number out of range.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    if p.is_dir() and (p / "truth.json").is_file():
        return _synth_source(p, sequence)
    ff = open_frames(p)
    if ff.kind == "folder":  # labels/<stem>.txt beside the images' folder, where there are
        lab_dir = ff.files[0].parent.parent / "labels"
        names = [f.name for f in ff.files]
        labels = [lab if (lab := lab_dir / (f.stem + ".txt")).is_file() else None
                  for f in ff.files]  # fmt: skip
    elif ff.kind == "image":
        names, labels = [p.name], [None]
    else:
        fmt = "{}#{}" if ff.kind == "video" else "{}[{}]"
        names = labels = None

    def frames() -> Iterator[Frame]:  # times on the file's own axis, as the daemon replays it
        for i, (img, t) in enumerate(ff.stamped()):
            if names is not None:
                yield Frame(i, img, t, names[i], labels[i])
            else:
                yield Frame(i, img, t, fmt.format(p.name, i))

    return FrameSource(p, ff.kind, frames, n_frames=ff.count, fps=ff.fps,
                       nm_per_px=ff.pixel_size_nm)  # fmt: skip


def _synth_source(root: Path, sequence: int) -> FrameSource:
    truth = json.loads((root / "truth.json").read_text("utf-8"))
    seqs = truth["sequences"]
    if not 0 <= sequence < len(seqs):
        raise ValueError(f"{root} holds {len(seqs)} sequence(s); --sequence {sequence} is out "
                         "of range")  # fmt: skip
    seq = seqs[sequence]

    def frames() -> Iterator[Frame]:
        for fr in seq["frames"]:
            img = root / fr["image"]
            lab = root / "labels" / (Path(fr["image"]).stem + ".txt")
            yield Frame(int(fr["index"]), read_image(img), float(fr["time_s"]), img.name,
                        lab if lab.is_file() else None)  # fmt: skip

    return FrameSource(root, "synth", frames, n_frames=len(seq["frames"]),
                       fps=float(truth["fps"]), nm_per_px=float(truth["nm_per_px"]),
                       truth=truth, sequence=seq)  # fmt: skip


# ----------------------------------------------------------------------------- detections


def _centre_mask(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.draw import polygon as fill

    m = np.zeros(shape, bool)
    rr, cc = fill(polygon[:, 1], polygon[:, 0], shape)
    m[rr, cc] = True
    return m


def detections_from_masks(
    masks: np.ndarray, classes: np.ndarray, *, scores: np.ndarray | None = None
):
    """Detections from (N, H, W) instance masks; boxes are the masks' pixel bounds."""
    from ..engines.base import Detections

    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[0]
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        ys = np.flatnonzero(masks[i].any(axis=1))
        xs = np.flatnonzero(masks[i].any(axis=0))
        if ys.size:
            boxes[i] = (xs[0], ys[0], xs[-1], ys[-1])
    sc = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32)
    return Detections(masks=masks, boxes=boxes, scores=sc,
                      classes=np.asarray(classes, np.int64).reshape(n))  # fmt: skip


def truth_detections(label_file: Path | None, shape: tuple[int, int]):
    """Detections from a frame's YOLO-seg label file (all scores 1); empty without a file."""
    from ..datasets.layout import read_labels
    from ..engines.base import Detections

    h, w = shape
    if label_file is None:
        return Detections.empty(shape)
    pairs, _ = read_labels(Path(label_file), w, h)
    if not pairs:
        return Detections.empty(shape)
    masks = np.zeros((len(pairs), h, w), bool)
    boxes = np.zeros((len(pairs), 4), np.float32)
    for i, (_c, poly) in enumerate(pairs):
        masks[i] = _centre_mask(poly, shape)
        lo = np.clip(np.floor(poly.min(axis=0)), 0, [w - 1, h - 1])
        hi = np.clip(np.ceil(poly.max(axis=0)), 0, [w - 1, h - 1])
        boxes[i] = (lo[0], lo[1], hi[0], hi[1])
    classes = np.array([c for c, _ in pairs], np.int64)
    return Detections(masks=masks, boxes=boxes, scores=np.ones(len(pairs), np.float32),
                      classes=classes)  # fmt: skip


def instance_masks_from_labels(mask: np.ndarray, *, min_pixels: int = 5) -> np.ndarray:
    """Split a binary line mask into instances: one per 8-connected component.

    For human line annotations (e.g. the ``ds/`` masks of Tanaka et al. 2025) where
    neighbouring lines are drawn apart. Components smaller than ``min_pixels`` are dropped.

    Returns
    -------
    (N, H, W) bool
    """
    import cv2

    m = np.ascontiguousarray(np.asarray(mask) != 0).view(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_pixels]
    out = np.zeros((len(keep), *m.shape), bool)
    for j, i in enumerate(keep):
        out[j] = lab == i
    return out
