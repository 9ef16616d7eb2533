"""Real data: the pile-up spacing series of tanaka-twip-2um from its human line masks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
TANAKA = REAL / "tanaka-twip-2um"

pytestmark = pytest.mark.real


@pytest.mark.skipif(not TANAKA.is_dir(), reason=f"real data not present at {TANAKA}")
def test_tanaka_spacing_series(tmp_path):
    from loopline.analysis.plots import plot_spacing_series, spacing_series_from_masks

    files = sorted((p for p in (TANAKA / "ds").iterdir() if p.suffix.lower() == ".png"),
                   key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))  # fmt: skip
    nums = [int(re.findall(r"\d+", p.stem)[-1]) for p in files]
    assert len(files) == 63
    results = spacing_series_from_masks(files, frame_numbers=nums)
    assert [r.index for r in results] == nums
    biggest = [int(np.bincount(r.line_pileup).max()) for r in results]
    # the video shows a pile-up of about 12 dislocations
    assert np.median(biggest) >= 9
    mean_sp = [np.nanmin(r.pileup_mean_spacing_px) for r in results]
    assert 3.0 < np.nanmedian(mean_sp) < 20.0  # px: closely spaced lines
    png = plot_spacing_series(results, tmp_path / "tanaka-spacing.png")
    assert png.stat().st_size > 10_000
