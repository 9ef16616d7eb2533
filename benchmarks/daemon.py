"""End-to-end daemon throughput and latency vs a naive per-frame loop, in the same run.

    .venv/bin/python benchmarks/daemon.py [--pt MODEL.pt] [--engine-model MODEL.onnx|DIR]
                                          [--seconds 15] [--size 512]

Daemon: the full ``loopline serve`` chain (simulator → receiver → batcher → engine →
measure/track → publisher + recorder, separate processes, shared-memory frames) with the best
CPU engine (OpenVINO if the model is an IR folder, else ONNX Runtime).

- *throughput*: frames offered at ``--offer-fps`` (default 60, more than a CPU keeps up
  with); sustained fps = frames analysed / seconds, the rest skipped by latest-wins.
- *latency*: frames at ``--camera-fps`` (default 25); camera timestamp → published, p50/p99.

Naive: the same frames through ``ultralytics`` ``YOLO.predict`` one frame at a time, then
``skimage.morphology.skeletonize`` of each dislocation mask, then ``trackpy.link`` over all
centroids at the end (what a script written without the daemon does).

Reports fps, the ratio daemon / naive, and latency; ``--json`` writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def default_pt() -> Path | None:
    here = Path(__file__).resolve().parents[1]
    for p in [here / "loopline/models/defects.pt", *sorted(Path("/work/runs").glob(
            "*/weights/best.pt"))]:  # fmt: skip
        if p.exists():
            return p
    return None


def make_frames(n: int, size: int) -> list[np.ndarray]:
    from loopline.daemon.demo import load_scene
    from loopline.synth.render import BackgroundCache, render_frame

    scene = dict(load_scene())
    scene.update(width=size, height=size)
    cache = BackgroundCache(scene)
    base = [render_frame(scene, t, background=cache).image for t in range(min(n, 50))]
    return [base[i % len(base)] for i in range(n)]


def run_daemon(engine_model: str, frames: list[np.ndarray], fps: float, out: Path,
               batch: int) -> dict:  # fmt: skip
    from loopline.daemon.config import load_config
    from loopline.daemon.simulator import Simulator
    from loopline.daemon.supervisor import Supervisor

    sim = Simulator("tcp://127.0.0.1:0", sndhwm=2000, linger_s=1)
    cfg = load_config(overrides={
        "source.endpoint": sim.endpoint, "output.dir": str(out), "engine.model": engine_model,
        "run.until_series_end": True, "publish.endpoint": "tcp://127.0.0.1:0",
        "calibration.nm_per_px": 2.0, "batch.size": batch, "engine.imgsz": 512,
    })  # fmt: skip
    ready = threading.Event()
    sup = Supervisor(cfg, on_ready=lambda _s: ready.set())
    res: dict[str, int] = {}
    th = threading.Thread(target=lambda: res.setdefault("code", sup.run()), daemon=True)
    th.start()
    if not ready.wait(180):
        raise RuntimeError("daemon did not start")
    t0 = time.monotonic()
    sim.send_series(frames, series="bench", fps=fps, pixel_size_nm=2.0)
    th.join(300)
    wall = time.monotonic() - t0
    sim.close(linger_s=0)
    s = json.loads((out / "summary.json").read_text())
    c = s["counters"]
    return {"offered_fps": fps, "frames": len(frames), "analysed": c["analysed"],
            "skipped": c["skipped"], "recorded": c["recorded"],
            "fps": round(c["analysed"] / wall, 2), "latency_ms": s["latency_ms"]}  # fmt: skip


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pt", type=Path, default=None, help="YOLOv8-seg .pt (naive loop; export)")
    p.add_argument("--engine-model", default=None,
                   help="model for the daemon (.onnx or OpenVINO dir; default: export --pt)")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--size", type=int, default=512, help="frame side (px)")
    p.add_argument("--offer-fps", type=float, default=60.0)
    p.add_argument("--camera-fps", type=float, default=25.0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--naive-frames", type=int, default=100)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    pt = a.pt or default_pt()
    if pt is None:
        print("no .pt model found: pass --pt", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    engine_model = a.engine_model
    if engine_model is None:
        from loopline.engines.export import export_onnx

        engine_model = str(export_onnx(pt, imgsz=512, out=tmp))
    frames = make_frames(int(a.seconds * a.offer_fps), a.size)
    thr = run_daemon(engine_model, frames, a.offer_fps, tmp / "thr", a.batch)
    lat = run_daemon(engine_model, frames[: int(a.seconds * a.camera_fps)], a.camera_fps,
                     tmp / "lat", a.batch)  # fmt: skip
    naive = run_naive(pt, frames[: a.naive_frames], 512)
    out = {"size": a.size, "engine_model": engine_model, "pt": str(pt),
           "daemon_throughput": thr, "daemon_latency": lat, "naive": naive,
           "ratio_fps": round(thr["fps"] / max(naive["fps"], 1e-9), 2)}  # fmt: skip
    print(json.dumps(out, indent=1))
    print(f"\ndaemon {thr['fps']} fps sustained (offered {a.offer_fps:g}); at "
          f"{a.camera_fps:g} fps: latency p50 {lat['latency_ms']['p50']} ms, p99 "
          f"{lat['latency_ms']['p99']} ms; naive loop {naive['fps']} fps; ratio "
          f"{out['ratio_fps']}x")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
