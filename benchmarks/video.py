"""Cost and size of the annotated video: H.264 (PyAV, fragmented MP4) against mp4v (OpenCV).

    python benchmarks/video.py [--frames 250] [--size 512] [--crf 32]

Frames: the demo scene (`make demo`'s synthetic pile-up video) with the recorder's overlay of a
stand-in result burnt in, encoded at 25 frames/s by :class:`loopline.io.video.VideoWriter`.
Prints encode ms per frame (wall, one thread), KiB per frame and GB per hour at 25 frames/s
for each codec, the ratios against mp4v measured in the same run (the baseline), and the CPU
model. Issue 19's targets: <= 3 ms/frame and <= 0.5 GB/h at 512² and 25 frames/s.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loopline.daemon.recorder import annotate
from loopline.io.video import VideoWriter, default_codec


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("Model name")), "unknown CPU")  # fmt: skip


def frames(n: int, size: int) -> list:
    from loopline.daemon.demo import load_scene
    from loopline.synth.render import BackgroundCache, render_frame

    scene = dict(load_scene())
    scene.update(width=size, height=size)
    cache = BackgroundCache(scene)
    out = []
    for t in range(n):
        img = render_frame(scene, t, background=cache).image
        out.append(annotate(img, None, px_nm=2.0, title=f"demo #{t}"))
    return out


def encode(path: Path, codec: str, crf: int, pics: list) -> tuple[float, float]:
    """(ms per frame, bytes per frame)."""
    w = VideoWriter(path, 25.0, codec=codec, crf=crf)
    t0 = time.perf_counter()
    for p in pics:
        w.write(p)
    w.close()
    ms = (time.perf_counter() - t0) * 1e3 / len(pics)
    return ms, path.stat().st_size / len(pics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--crf", type=int, default=32)
    a = ap.parse_args()
    pics = frames(a.frames, a.size)
    table = Table(title=f"annotated video, {a.size}², 25 frames/s, {a.frames} frames; {_cpu()}")
    for col in ("codec", "ms/frame", "KiB/frame", "GB/h", "time vs mp4v", "size vs mp4v"):
        table.add_column(col, justify="right")
    codecs = ["mp4v"] + (["h264"] if default_codec() == "h264" else [])
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in codecs:
            res[c] = encode(Path(tmp) / f"{c}.mp4", c, a.crf, pics)
    base_ms, base_b = res["mp4v"]
    for c, (ms, b) in res.items():
        table.add_row(c + (f" crf {a.crf}" if c == "h264" else " (baseline)"), f"{ms:.2f}",
                      f"{b / 1024:.1f}", f"{b * 25 * 3600 / 1e9:.2f}", f"{ms / base_ms:.2f}x",
                      f"{b / base_b:.3f}x")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
