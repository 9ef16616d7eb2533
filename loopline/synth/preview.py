"""Contact sheets of a dataset: each sample shown raw and with its labels outlined."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..datasets.layout import read_labels

__all__ = ["contact_sheet"]

_COLOURS = ((60, 220, 255), (255, 120, 60))  # BGR: dislocation yellow-ish, loop blue-ish


def _to_u8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    return img


def contact_sheet(
    root: Path,
    out: Path,
    *,
    max_samples: int = 8,
    tile: int = 256,
    per_row: int = 4,
    title: str | None = None,
) -> Path:
    """Write a PNG of up to ``max_samples`` images of dataset ``root`` with their labels.

    Each sample takes two tiles: the image as written, and the image with every label polygon
    outlined (dislocations yellow, loops blue). Slip traces carry no outline by design.
    """
    images = sorted((root / "images").iterdir())[:max_samples]
    if not images:
        raise FileNotFoundError(f"no images in {root / 'images'}")
    tiles = []
    for p in images:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise OSError(f"cannot read {p}")
        grey = _to_u8(img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        h, w = grey.shape
        raw = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        over = raw.copy()
        lab = root / "labels" / f"{p.stem}.txt"
        if lab.exists():
            for cls, poly in read_labels(lab, w, h)[0]:
                pts = np.round(poly).astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(over, [pts], True, _COLOURS[cls % 2], 1, cv2.LINE_AA)
        for t in (raw, over):
            tiles.append(cv2.resize(t, (tile, tile), interpolation=cv2.INTER_AREA))
    cols = 2 * per_row
    rows = (len(tiles) + cols - 1) // cols
    head = 28 if title else 0
    sheet = np.full((rows * tile + head, cols * tile, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[head + r * tile : head + (r + 1) * tile, c * tile : (c + 1) * tile] = t
    if title:
        cv2.putText(sheet, title, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet):
        raise OSError(f"could not write {out}")
    return out
