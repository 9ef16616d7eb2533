#!/usr/bin/env python3
"""Which loops does a model miss: recall of loops against how visible they are.

For every ground-truth loop of a dataset, a contrast-to-noise figure

    CNR = (mean grey of a ring 2-6 px outside the loop - mean grey inside) / noise
          * sqrt(min(area px, 400)) / 10

where ``noise`` is the standard deviation of the frame minus its Gaussian blur (sigma 2 px) and
the ring leaves out every labelled loop. A loop is found when the model's boxes match it at
box IoU >= 0.15 (the greedy assignment of ``loopline eval``'s loop F1). Prints the CNR
quantiles of found and missed loops and the recall above a few CNR cuts.

Usage: scripts/loop_visibility.py MODEL DATASET [--conf 0.25]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from scipy import ndimage as ndi

from loopline.engines import create_engine
from loopline.evaluation.data import Dataset
from loopline.evaluation.metrics import box_iou, greedy_match

LOOP = 1


def loop_cnr(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """CNR of each loop mask of one frame (NaN where the ring holds under 10 px)."""
    im = image.astype(np.float32)
    noise = float(np.std(im - cv2.GaussianBlur(im, (0, 0), 2.0))) or 1.0
    labelled = masks.any(0)
    out = np.full(len(masks), np.nan)
    for k, m in enumerate(masks):
        ring = ndi.binary_dilation(m, iterations=6) & ~ndi.binary_dilation(m, iterations=2)
        ring &= ~labelled
        if ring.sum() >= 10 and m.any():
            contrast = im[ring].mean() - im[m].mean()
            out[k] = contrast / noise * np.sqrt(min(int(m.sum()), 400)) / 10.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--conf", type=float, default=0.25)
    a = ap.parse_args()
    engine = create_engine(a.model, conf=a.conf)
    ds = Dataset(a.data)
    found, missed = [], []
    for i in range(len(ds)):
        fr = ds.frame(i)
        det = engine([fr.image])[0]
        g = fr.classes == LOOP
        iou = box_iou(fr.boxes[g], det.boxes[det.classes == LOOP])
        hit = {k for k, _ in greedy_match(iou, 0.15)}
        for k, c in enumerate(loop_cnr(fr.image, fr.masks[g])):
            if np.isfinite(c):
                (found if k in hit else missed).append(c)
    f, m = np.array(found), np.array(missed)
    q = (10, 25, 50, 75, 90)
    for name, v in (("found", f), ("missed", m)):
        pct = np.round(np.percentile(v, q), 2) if len(v) else "-"
        print(f"{name} {len(v)}, CNR percentiles {q}: {pct}")
    for cut in (0.5, 1.0, 1.5, 2.0):
        n = int((f >= cut).sum() + (m >= cut).sum())
        rec = (f >= cut).sum() / n if n else float("nan")
        print(f"CNR >= {cut}: {n} loops, recall {rec:.3f}; misses below: {int((m < cut).sum())}")


if __name__ == "__main__":
    main()
