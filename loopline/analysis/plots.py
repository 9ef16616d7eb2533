"""Spacing time series of a pile-up from per-frame instance masks, and its plot.

Used for human line annotations (e.g. the ``ds/`` masks of Tanaka et al. 2025, where each
connected component is one dislocation) to check the measuring stages apart from any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..calibration import Calibration
from .container import FrameResult
from .measure import MeasureOptions, measure_frame
from .sources import detections_from_masks, instance_masks_from_labels
from .tracking import OnlineTracker

__all__ = ["plot_spacing_series", "spacing_series_from_masks"]


def spacing_series_from_masks(
    mask_files: Sequence[Path],
    *,
    calibration: Calibration | None = None,
    frame_numbers: Sequence[int] | None = None,
    search_range_px: float = 10.0,
    options: MeasureOptions | None = None,
) -> list[FrameResult]:
    """Measure and track the lines of binary line masks (one file per frame).

    Parameters
    ----------
    mask_files : sequence of path
        Images whose non-zero pixels are line pixels; instances are 8-connected components.
    calibration : Calibration, optional
        Default: unknown pixel size, 1 frame per second (time counts frames).
    frame_numbers : sequence of int, optional
        Frame number of each file (default 0, 1, ...); times are frame_number / fps.

    Returns
    -------
    list of FrameResult
        Tracked, in order.
    """
    from PIL import Image

    cal = calibration or Calibration(fps=1.0, source="frame numbers")
    nums = list(frame_numbers) if frame_numbers is not None else list(range(len(mask_files)))
    tracker = OnlineTracker(cal, search_range_px=search_range_px, drift="none")
    out = []
    for num, f in zip(nums, mask_files, strict=True):
        m = np.array(Image.open(f)) != 0
        if m.ndim == 3:
            m = m.any(axis=2)
        inst = instance_masks_from_labels(m)
        det = detections_from_masks(inst, np.zeros(len(inst), np.int64))
        t = cal.time_of(num)
        r = measure_frame(det, index=num, time_s=float(num if t is None else t),
                          calibration=cal, options=options)  # fmt: skip
        out.append(tracker.update(r))
    return out


def plot_spacing_series(results: Sequence[FrameResult], png: Path, *, title: str = "") -> Path:
    """Plot each neighbour pair's spacing (by rank from the leader) and the mean over frames.

    The largest pile-up of each frame is plotted; spacings in nm when the pixel size is known,
    else px. Needs matplotlib (``pip install 'loopline[report]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = "nm" if results and np.isfinite(results[0].nm_per_px) else "px"
    series: dict[int, list[tuple[int, float]]] = {}
    mean: list[tuple[int, float]] = []
    for r in results:
        if not r.n_pileups:
            continue
        counts = np.bincount(r.line_pileup, minlength=r.n_pileups)
        p = int(np.argmax(counts))
        sel = r.pair_pileup == p
        sp = r.pair_spacing_nm[sel] if unit == "nm" else r.pair_spacing_px[sel]
        for rank, s in zip(r.pair_rank[sel], sp, strict=True):
            series.setdefault(int(rank), []).append((r.index, float(s)))
        if sp.size:
            mean.append((r.index, float(sp.mean())))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    cmap = plt.get_cmap("viridis")
    for rank in sorted(series):
        a = np.array(series[rank])
        ax.plot(a[:, 0], a[:, 1], ".-", lw=0.8, ms=3, color=cmap(rank / max(len(series), 1)),
                label=f"pair {rank}-{rank + 1}")  # fmt: skip
    if mean:
        a = np.array(mean)
        ax.plot(a[:, 0], a[:, 1], "k-", lw=2.0, label="mean")
    ax.set_xlabel("frame")
    ax.set_ylabel(f"spacing (mean closest distance), {unit}")
    ax.set_title(title or "pile-up spacing")
    ax.legend(fontsize=6, ncol=4, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
