"""Dataset layout shared by the generator, the importers of real labels and the labelling page.

A dataset folder holds ``images/``, ``labels/`` (YOLO-seg: one ``.txt`` per image, a line
``class x1 y1 x2 y2 ...`` with coordinates normalised to [0, 1]), ``coco.json`` (COCO
instances with polygon segmentations) and ``data.yaml`` (the ultralytics dataset file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "BOX_FIELDS",
    "CLASSES",
    "LABEL_WIDTH_PX",
    "CocoBuilder",
    "box_polygon",
    "dump_json",
    "read_labels",
    "read_yolo_labels",
    "write_data_yaml",
    "write_yolo_labels",
    "yolo_box_line",
]



#: class names, by YOLO class id
CLASSES: tuple[str, ...] = ("dislocation", "loop")

#: width (px) of a dislocation's label polygon where a dataset says none: the generator's
#: (``loopline synth``'s ``label_width``) and the importers' default
LABEL_WIDTH_PX = 6.0


def dump_json(obj: Any, path: Path, *, indent: int | None = None) -> None:
    """Write JSON deterministically (sorted keys, fixed separators): same input, same bytes."""
    sep = (",", ":") if indent is None else (",", ": ")
    path.write_text(json.dumps(obj, sort_keys=True, indent=indent, separators=sep) + "\n", "utf-8")


def _clip(poly: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.stack([np.clip(poly[:, 0], 0.0, w), np.clip(poly[:, 1], 0.0, h)], axis=1)


def yolo_line(cls: int, polygon: np.ndarray, w: int, h: int) -> str:
    """One YOLO-seg label line for a polygon given in pixels."""
    p = _clip(np.asarray(polygon, float), w, h) / (w, h)
    return f"{cls} " + " ".join(f"{v:.6f}" for v in p.ravel())


def write_yolo_labels(
    path: Path, instances: list[tuple[int, np.ndarray]], w: int, h: int
) -> None:
    """Write (class, polygon px) pairs as a YOLO-seg label file (empty file for no objects)."""
    lines = [yolo_line(c, poly, w, h) for c, poly in instances]
    path.write_text("".join(s + "\n" for s in lines), "utf-8")


def read_yolo_labels(path: Path, w: int, h: int) -> list[tuple[int, np.ndarray]]:
    """Read a YOLO-seg label file into (class, polygon (N, 2) px) pairs.

    Raises
    ------
    ValueError
        Naming the file and line when a line is not ``class x y x y ...`` with at least three
        points and coordinates in [0, 1].
    """
    return [(cls, poly) for cls, poly, _ in _parse_labels(path, w, h, boxes=False)]


def _parse_labels(path: Path, w: int, h: int, *, boxes: bool):
    """(class, polygon px, box-only) of each line of a label file; ``boxes`` allows box lines
    (``class cx cy w h``, their polygon the box's corners)."""
    out = []
    for no, raw in enumerate(path.read_text("utf-8").splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        try:
            cls = int(parts[0])
            vals = np.array([float(v) for v in parts[1:]])
        except ValueError:
            alt = " or 'class cx cy w h'" if boxes else ""
            raise ValueError(f"{path}:{no}: expected 'class x1 y1 x2 y2 ...'{alt}, "
                             f"got {raw!r}") from None  # fmt: skip
        is_box = boxes and vals.size == BOX_FIELDS - 1
        if not is_box and (vals.size < 6 or vals.size % 2):
            alt = ", a box 4 (cx cy w h)" if boxes else ""
            raise ValueError(f"{path}:{no}: a polygon needs an even number (>= 6) of "
                             f"coordinates{alt}, got {vals.size}")  # fmt: skip
        if not (np.isfinite(vals).all() and vals.min() >= -1e-6 and vals.max() <= 1 + 1e-6):
            raise ValueError(f"{path}:{no}: coordinates must be normalised to [0, 1]")
        if is_box:
            cx, cy, bw, bh = vals
            if bw <= 0 or bh <= 0:
                raise ValueError(f"{path}:{no}: a box needs width and height > 0, got {bw}, {bh}")
            box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]) * (w, h, w, h)
            out.append((cls, box_polygon(box), True))
        else:
            out.append((cls, vals.reshape(-1, 2) * (w, h), False))
    return out


def write_data_yaml(root: Path, *, train: str = "images", val: str = "images") -> Path:
    """Write the ultralytics dataset file for ``root``.

    No ``path`` key: ultralytics then resolves ``train``/``val`` against the yaml's own folder,
    so a dataset folder can be moved or copied as a whole.
    """
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    text = f"train: {train}\nval: {val}\nnames:\n{names}"
    p = root / "data.yaml"
    p.write_text(text, "utf-8")
    return p


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


class CocoBuilder:
    """Collects images and polygon annotations into a COCO instances dictionary."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add_image(self, file_name: str, w: int, h: int) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        return image_id

    def add(self, image_id: int, cls: int, polygon: np.ndarray, w: int, h: int, **extra) -> None:
        p = _clip(np.asarray(polygon, float), w, h)
        x0, y0 = p.min(axis=0)
        x1, y1 = p.max(axis=0)
        ann = {
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": cls + 1,
            "segmentation": [np.round(p.ravel(), 2).tolist()],
            "bbox": [round(float(x0), 2), round(float(y0), 2),
                     round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "area": round(polygon_area(p), 2),
            "iscrowd": 0,
        }  # fmt: skip
        ann.update(extra)
        self.annotations.append(ann)

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": {"description": "loopline dataset"},
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
            "images": self.images,
            "annotations": self.annotations,
        }

    def write(self, path: Path) -> None:
        dump_json(self.to_dict(), path)


def write_image(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write image {path}")


#: Fields of a box-only label line: ``class cx cy w h`` (normalised).
BOX_FIELDS = 5


def box_polygon(box: np.ndarray) -> np.ndarray:
    """Corners (4, 2) px of a box ``x0, y0, x1, y1`` px."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def yolo_box_line(cls: int, box: np.ndarray, w: int, h: int) -> str:
    """One box-only label line, ``class cx cy w h`` normalised, of a box ``x0, y0, x1, y1`` px."""
    x0, x1 = np.clip([box[0], box[2]], 0.0, w) / w
    y0, y1 = np.clip([box[1], box[3]], 0.0, h) / h
    return f"{cls} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}"


def read_labels(path: Path, w: int, h: int) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """Read a label file of polygon lines (YOLO-seg) and box-only lines (``yolo_box_line``).

    Parameters
    ----------
    path : Path
        ``labels/<stem>.txt`` of a dataset.
    w, h : int
        Frame width and height (px).

    Returns
    -------
    pairs : list of (int, (K, 2) float64)
        Class and polygon (px) of each line; a box-only line's polygon is its box's corners.
    box_only : (N,) bool
        Which lines are box-only.

    Raises
    ------
    ValueError
        Naming the file and line when a line is neither ``class x1 y1 x2 y2 x3 y3 ...`` nor
        ``class cx cy w h``, or its coordinates are not normalised to [0, 1].
    """
    rows = _parse_labels(path, w, h, boxes=True)
    return [(c, p) for c, p, _ in rows], np.array([b for _, _, b in rows], bool)
