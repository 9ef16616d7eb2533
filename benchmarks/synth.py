"""Generation speed of `loopline synth`: 512x512 stills per preset, and a video.

    python benchmarks/synth.py [--count 1000] [--jobs 2]

Prints seconds per 1000 images for each preset, and the ratio of multi-process to
single-process throughput measured in the same run (the baseline).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loopline.synth.generate import generate


def _time(out: Path, **kw) -> float:
    t0 = time.perf_counter()
    generate(out, progress=False, overwrite=True, **kw)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args()
    size = {"width": a.size, "height": a.size}
    table = Table(title=f"loopline synth, {a.size}x{a.size}, {a.jobs} processes")
    for col in ("what", "images", "seconds", "s / 1000 images", "ms / image"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base_n = max(a.count // 10, 20)
        t1 = _time(root / "base", preset="M2", count=base_n, seed=1, overrides=size, jobs=1)
        table.add_row("M2, 1 process (baseline)", str(base_n), f"{t1:.1f}",
                      f"{t1 / base_n * 1000:.0f}", f"{t1 / base_n * 1000:.1f}")  # fmt: skip
        for preset in ("M1", "M2", "loops", "mixed"):
            t = _time(root / preset, preset=preset, count=a.count, seed=1, overrides=size,
                      jobs=a.jobs)  # fmt: skip
            table.add_row(preset, str(a.count), f"{t:.1f}", f"{t / a.count * 1000:.0f}",
                          f"{t / a.count * 1000:.1f}")  # fmt: skip
            if preset == "M2":
                speedup = (t1 / base_n) / (t / a.count)
        frames = 300
        t = _time(root / "video", preset="M1", count=1, seed=1, overrides=size, video=True,
                  frames=frames, jobs=1)  # fmt: skip
        table.add_row(f"M1 video, {frames} frames", str(frames), f"{t:.1f}",
                      f"{t / frames * 1000:.0f}", f"{t / frames * 1000:.1f}")  # fmt: skip
    con = Console()
    con.print(table)
    con.print(f"M2 throughput with {a.jobs} processes vs 1: {speedup:.2f}x")


if __name__ == "__main__":
    main()
