"""End-to-end daemon throughput, latency and recording vs a naive per-frame loop, in one run.

    .venv/bin/python benchmarks/daemon.py [--engine-model MODEL] [--seconds 20] [--size 512]
                                          [--offer 25,60] [--json out.json]

Daemon: the full ``loopline serve`` chain (simulator → receiver → batcher → engine →
measure/track → publisher + recorder, separate processes, shared-memory frames) with the
**shipped default engine** (``engine.model = "defects"``: OpenVINO where installed) and every
other setting at its default (batch size, tiles, line snap, H.264 recording), unless
``--engine-model`` / ``--set KEY=VALUE`` say otherwise. One series per offered rate
(``--offer``, default 25 and 60 frames/s), ``--seconds`` long each, 512² demo-scene frames.

For each rate it reports what issue 19 asks for:

- *analysed fps*: frames analysed / the series' duration (frames / offered fps), and the
  share skipped by latest-wins;
- *recorded*: frames in the run folder (``recorded``), how many of them before their analysis
  came back (``recorded_late``), and how many NOT recorded (``received - recorded``);
- latency camera timestamp → published, p50 / p99 / max, and the first frame's (cold start);
- *CPU per stage*: the cores each stage's processes used (CPU seconds / wall seconds, all
  threads), from summary.json ``stages``;
- the annotated video's size as GB/h at that rate.

Naive: the same frames through ``ultralytics`` ``YOLO.predict`` (the shipped ``defects.pt``)
one frame at a time, ``skimage.morphology.skeletonize`` of each dislocation mask, then
``trackpy.link`` over all centroids (a script written without the daemon). Its fps is
measured in the same run; ratios are daemon analysed fps / naive fps.

Prints the CPU model: a figure means something only beside it, and only from quiet cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """``lscpu``'s model name (else /proc/cpuinfo's, else platform's)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_frames(n: int, size: int) -> list[np.ndarray]:
    from loopline.daemon.demo import load_scene
    from loopline.synth.render import BackgroundCache, render_frame

    scene = dict(load_scene())
    scene.update(width=size, height=size)
    cache = BackgroundCache(scene)
    base = [render_frame(scene, t, background=cache).image for t in range(min(n, 50))]
    return [base[i % len(base)] for i in range(n)]


def _first_latency(run: Path) -> float | None:
    """latency_ms of the series' first frame in series.csv (None: not analysed)."""
    path = run / "series.csv"
    if not path.exists():
        return None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("frame") == "0" and row.get("latency_ms"):
                return round(float(row["latency_ms"]), 1)
    return None


def run_daemon(engine_model: str, frames: list[np.ndarray], fps: float, out: Path,
               sets: dict[str, object]) -> dict:  # fmt: skip
    from loopline.daemon.config import load_config
    from loopline.daemon.ingest.simulator import Simulator
    from loopline.daemon.supervisor import Supervisor

    sim = Simulator("tcp://127.0.0.1:0", sndhwm=4000, linger_s=1)
    cfg = load_config(overrides={
        "source.endpoint": sim.endpoint, "output.dir": str(out), "engine.model": engine_model,
        "run.until_series_end": True, "publish.endpoint": "tcp://127.0.0.1:0",
        "calibration.nm_per_px": 2.0, **sets,
    })  # fmt: skip
    ready = threading.Event()
    t_start = time.monotonic()
    sup = Supervisor(cfg, on_ready=lambda _s: ready.set())
    res: dict[str, int] = {}
    th = threading.Thread(target=lambda: res.setdefault("code", sup.run()), daemon=True)
    th.start()
    if not ready.wait(300):
        raise RuntimeError("daemon did not start")
    start_s = time.monotonic() - t_start
    t0 = time.monotonic()
    sim.send_series(frames, series="bench", fps=fps, pixel_size_nm=2.0)
    sent_s = time.monotonic() - t0
    th.join(600)
    wall = time.monotonic() - t0
    sim.close(linger_s=0)
    s = json.loads((out / "summary.json").read_text())
    c = s["counters"]
    duration = len(frames) / fps  # the series' own duration
    video = out / "annotated.mp4"
    stages = s.get("stages", {})
    return {
        "offered_fps": fps, "frames": len(frames), "received": c["received"],
        "analysed": c["analysed"], "analysed_fps": round(c["analysed"] / duration, 2),
        "skipped_pct": round(100.0 * c["skipped"] / max(c["received"], 1), 2),
        "recorded": c["recorded"], "recorded_late": c.get("recorded_late", 0),
        "not_recorded": c["received"] - c["recorded"],
        "latency_ms": {k: s["latency_ms"].get(k) for k in ("p50", "p99", "max")},
        "first_frame_latency_ms": _first_latency(out),
        "cores_per_stage": {st: round(v["cpu_s"] / wall, 3) for st, v in stages.items()},
        "cpu_ms_per_analysed_frame": {st: round(1e3 * v["cpu_s"] / max(c["analysed"], 1), 2)
                                      for st, v in stages.items()},
        "video_gb_per_h": (round(video.stat().st_size / 1e9 * 3600 / duration, 3)
                           if video.exists() else None),
        "start_s": round(start_s, 2), "send_s": round(sent_s, 2), "wall_s": round(wall, 2),
        "engine": s.get("engine"), "exit": res.get("code"),
    }


def run_naive(pt: Path, frames: list[np.ndarray], imgsz: int) -> dict:
    import pandas as pd
    import trackpy
    from skimage.morphology import skeletonize
    from ultralytics import YOLO

    from loopline._offline import configure_offline

    configure_offline()
    trackpy.quiet()
    model = YOLO(str(pt))
    model.predict(np.stack([frames[0]] * 3, -1), imgsz=imgsz, verbose=False, device="cpu")
    rows = []
    t0 = time.perf_counter()
    lat = []
    for i, f in enumerate(frames):
        t1 = time.perf_counter()
        r = model.predict(np.stack([f] * 3, -1), imgsz=imgsz, verbose=False, device="cpu")[0]
        if r.masks is not None:
            masks = r.masks.data.cpu().numpy() > 0.5
            for m, c in zip(masks, r.boxes.cls.cpu().numpy(), strict=True):
                ys, xs = np.nonzero(m)
                if not len(xs):
                    continue
                length = int(skeletonize(m).sum()) if c == 0 else 0
                rows.append({"frame": i, "x": xs.mean(), "y": ys.mean(), "length": length})
        lat.append((time.perf_counter() - t1) * 1e3)
    if rows:
        trackpy.link(pd.DataFrame(rows), search_range=8, memory=3)
    wall = time.perf_counter() - t0
    return {"frames": len(frames), "fps": round(len(frames) / wall, 2),
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1),
                           "p99": round(float(np.percentile(lat, 99)), 1)}}  # fmt: skip


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine-model", default="defects",
                   help="engine.model of the daemon (default: the shipped model, as serve)")
    p.add_argument("--pt", type=Path, default=HERE / "loopline/models/defects.pt",
                   help="YOLOv8-seg .pt of the naive loop (default: the shipped one)")
    p.add_argument("--seconds", type=float, default=20.0, help="series duration per rate (s)")
    p.add_argument("--size", type=int, default=512, help="frame side (px)")
    p.add_argument("--offer", default="25,60", help="offered frame rates, comma-separated")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a daemon setting for every run (e.g. engine.threads=1); repeatable")
    p.add_argument("--naive-frames", type=int, default=100)
    p.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    sets = {k: _value(v) for k, _, v in (s.partition("=") for s in a.set)}
    tmp = Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    rates = [float(r) for r in a.offer.split(",") if r.strip()]
    frames = make_frames(int(a.seconds * max(rates)), a.size)
    out: dict[str, object] = {"cpu": cpu_model(), "size": a.size, "engine_model": a.engine_model,
                              "settings": sets, "runs": {}}  # fmt: skip
    print(f"CPU: {out['cpu']}", flush=True)
    for r in rates:
        res = run_daemon(a.engine_model, frames[: int(a.seconds * r)], r, tmp / f"offer{r:g}",
                         sets)  # fmt: skip
        out["runs"][f"{r:g}"] = res  # type: ignore[index]
        print(json.dumps({f"offered {r:g}": res}), flush=True)
    if not a.no_naive:
        naive = run_naive(a.pt, frames[: a.naive_frames], 512)
        out["naive"] = naive
        out["ratio_to_naive"] = {k: round(v["analysed_fps"] / max(naive["fps"], 1e-9), 2)
                                 for k, v in out["runs"].items()}  # type: ignore[union-attr]
    print(json.dumps(out, indent=1))
    print(f"\nCPU {out['cpu']}")
    for k, v in out["runs"].items():  # type: ignore[union-attr]
        print(f"offered {k} fps: analysed {v['analysed_fps']} fps ({v['skipped_pct']} % "
              f"skipped), recorded {v['recorded']}/{v['received']} ({v['recorded_late']} late), "
              f"latency p50 {v['latency_ms']['p50']} / p99 {v['latency_ms']['p99']} ms, first "
              f"frame {v['first_frame_latency_ms']} ms, cores {v['cores_per_stage']}, video "
              f"{v['video_gb_per_h']} GB/h")  # fmt: skip
    if "naive" in out:
        print(f"naive loop {out['naive']['fps']} fps; ratio {out['ratio_to_naive']}")  # type: ignore[index]
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
