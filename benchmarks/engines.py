"""Engines benchmark: frames/s and latency of every engine, in one run on the same frames.

    .venv/bin/python benchmarks/engines.py            # 320/512/640 x batch 1/4/8, all engines
    .venv/bin/python benchmarks/engines.py --quick    # 512 only, batch 1/4, short runs
    .venv/bin/python benchmarks/engines.py --post-only
    .venv/bin/python benchmarks/engines.py --tiles    # 1024x1024 frames: tiles vs letterbox

Every number includes pre-processing (letterbox), the network and post-processing (NMS + mask
decoding at frame resolution), as the daemon would see it. Engines are run round-robin in
short bursts for each (size, batch) so that a change in background load hits all of them
alike; the ratio column is frames/s over ``torch`` batch 1 at the same size, measured in the
same run. A second table compares post-processing alone: ultralytics' NMS +
``process_mask_native`` (what the torch engine runs) against loopline's numpy NMS + crop-first
mask decoding, on raw outputs with a known number of detections. ``--tiles`` times the
shipped model as the daemon runs it (``create_engine("defects", engine=...)``) on 1024x1024
frames, batch 1, round-robin in the same run: letterbox (the frame shrunk to 512), native-scale
tiles of 512 (``tiles-512``: nine, the grid of a runtime with a fixed input size) and the
default tiles (``tiles``: the side up to ``tile_max`` that feeds the fewest pixels, four of 544
where the runtime takes any input size), each merged across seams; the table gives the tiles
per frame and their side.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loopline._offline import configure_offline  # noqa: E402

configure_offline()

ALL_ENGINES = ("torch", "onnx", "onnx-int8", "openvino-f32", "openvino", "openvino-int8", "ridge")


# ------------------------------------------------------------------------ set-up


def prepare_models(pt: Path, work: Path, engines: tuple[str, ...]) -> dict[str, Path]:
    """Export ``pt`` once into ``work`` (reused when already there)."""
    import shutil

    from loopline.engines.export import export_onnx, export_openvino, quantize_onnx

    work.mkdir(parents=True, exist_ok=True)
    local = work / f"{pt.stem}.pt"
    if not local.exists() or local.stat().st_mtime < pt.stat().st_mtime:
        shutil.copyfile(pt, local)
        for old in work.glob(f"{pt.stem}*"):  # stale exports
            if old != local:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    paths = {"torch": local}
    onnx = work / f"{pt.stem}.onnx"
    if not onnx.exists():
        export_onnx(local, imgsz=512)
    paths["onnx"] = onnx
    if "onnx-int8" in engines:
        q = work / f"{pt.stem}.int8.onnx"
        paths["onnx-int8"] = q if q.exists() else quantize_onnx(onnx, imgsz=512, calib_frames=64)
    if "openvino" in engines or "openvino-f32" in engines:
        d = work / f"{pt.stem}_openvino_model"
        paths["openvino"] = paths["openvino-f32"] = (
            d if d.exists() else export_openvino(onnx, imgsz=512)
        )
    if "openvino-int8" in engines:
        d = work / f"{pt.stem}_int8_openvino_model"
        paths["openvino-int8"] = (d if d.exists() else
                                  export_openvino(onnx, imgsz=512, int8=True,
                                                  calib_frames=128))  # fmt: skip
    return paths


def make_engine(name: str, paths: dict[str, Path], imgsz: int, conf: float):
    from loopline.engines import create_engine

    if name == "ridge":
        return create_engine("ridge")
    if name == "openvino-f32":  # "openvino" is OpenVINO's default precision (bf16 on AMX CPUs)
        return create_engine(paths[name], imgsz=imgsz, conf=conf, precision="f32")
    return create_engine(paths[name], imgsz=imgsz, conf=conf)


# ------------------------------------------------------------------------ timing


def pick_torch_threads(engine, batch) -> int:
    """Run torch at its faster thread count, 1 or all cores.

    Torch's OpenMP pool collapses when another process holds a core (measured here beside a
    training run: 3.5 s instead of 0.1 s per 512 px frame with 2 threads on 2 cores), while ONNX
    Runtime and OpenVINO degrade gently; a fair baseline gets torch's best setting.
    """
    import os

    import torch

    best = None
    for n in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(n)
        engine(batch)
        t0 = time.perf_counter()
        engine(batch)
        dt = time.perf_counter() - t0
        if best is None or dt < best[1]:
            best = (n, dt)
    torch.set_num_threads(best[0])
    return best[0]


def run_matrix(engines, paths, frames, sizes, batches, seconds, rounds, conf):
    rows = []
    for imgsz in sizes:
        built = {e: make_engine(e, paths, imgsz, conf) for e in engines}
        for b in batches:
            torch_threads = None
            todo = [e for e in engines if not (e == "ridge" and (b > 1 or imgsz != 512))]
            lat = {e: [] for e in todo}
            stages = {e: [] for e in todo}
            ndet = {e: [] for e in todo}
            for e in todo:  # load + warm-up (also compiles OpenVINO for this batch)
                built[e](frames[:b])
                built[e](frames[b : 2 * b])
            if "torch" in todo:
                torch_threads = pick_torch_threads(built["torch"], frames[:b])
            for _ in range(rounds):
                for e in todo:
                    t_end = time.perf_counter() + seconds / rounds
                    i = 0
                    while time.perf_counter() < t_end or i < 2:
                        batch = [frames[(i * b + k) % len(frames)] for k in range(b)]
                        t0 = time.perf_counter()
                        dets = built[e](batch)
                        lat[e].append((time.perf_counter() - t0) * 1e3)
                        stages[e].append(dets[0].timings_ms)
                        ndet[e].append(np.mean([len(d) for d in dets]))
                        i += 1
            for e in todo:
                arr = np.asarray(lat[e])
                st = {k: float(np.median([s.get(k, 0.0) for s in stages[e]]))
                      for k in ("preprocess", "inference", "postprocess")}  # fmt: skip
                rows.append({
                    "engine": e, "imgsz": imgsz if e != "ridge" else "-", "batch": b,
                    "fps": b * len(arr) / (arr.sum() / 1e3),
                    "p50_ms": float(np.percentile(arr, 50)),
                    "p99_ms": float(np.percentile(arr, 99)), "calls": len(arr),
                    "dets": float(np.mean(ndet[e])), **{f"{k}_ms": v for k, v in st.items()},
                    "threads": torch_threads if e == "torch" else None,
                })  # fmt: skip
                r = rows[-1]
                print(f"  {e:14s} {imgsz:4d} b{b}: {r['fps']:6.1f} fps  "
                      f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                      f"({r['calls']} calls, {r['dets']:.1f} det/frame)",
                      file=sys.stderr, flush=True)  # fmt: skip
    base = {r["imgsz"]: r["fps"] for r in rows if r["engine"] == "torch" and r["batch"] == 1}
    b512 = base.get(512)
    for r in rows:
        ref = base.get(r["imgsz"], b512)
        r["vs_torch_b1"] = r["fps"] / ref if ref else float("nan")
    return rows


def print_matrix(rows) -> None:
    print("| engine | imgsz | batch | frames/s | p50 ms/call | p99 ms/call | pre ms/frame | "
          "net ms/frame | post ms/frame | det/frame | vs torch b1 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    threads = sorted({r["threads"] for r in rows if r.get("threads")})
    if threads:
        print(f"<!-- torch ran with {threads} thread(s), its faster setting here -->")
    for r in rows:
        print(f"| {r['engine']} | {r['imgsz']} | {r['batch']} | {r['fps']:.1f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['preprocess_ms']:.1f} | "
              f"{r['inference_ms']:.1f} | {r['postprocess_ms']:.1f} | {r['dets']:.1f} | "
              f"{r['vs_torch_b1']:.2f}x |")  # fmt: skip


# ------------------------------------------------------------------------ tiles


#: ``--tiles`` modes: engine options of each
TILE_MODES = {
    "letterbox": {"inference": "letterbox"},
    "tiles-512": {"inference": "tiles", "tile_max": 512},  # the fixed-input-size grid
    "tiles": {"inference": "tiles"},  # the default: tiles up to tile_max
}


def _tiles_per_frame(engine, shape) -> tuple[int, int]:
    """(tiles, tile side px) the engine feeds for a frame of ``shape`` (1 and imgsz: whole)."""
    from loopline.engines.tiling import tile_plan

    if engine.inference == "letterbox" or max(shape) <= engine.imgsz:
        return 1, engine.imgsz
    side, wins = tile_plan(shape, engine.imgsz, overlap=engine.tile_overlap,
                           tile_max=engine.tile_limit)  # fmt: skip
    return len(wins), side


def run_tiles(engines, frames, seconds, rounds, conf, imgsz=512):
    """ms per frame of the shipped model on big frames: letterbox, tiles of 512, tiles."""
    from loopline.engines import create_engine

    todo = [(e, m) for e in engines for m in TILE_MODES]
    built = {}
    for e, m in todo:
        name, opts = ("openvino", {"precision": "f32"}) if e == "openvino-f32" else (e, {})
        opts = {**opts, **TILE_MODES[m]}
        if "tile_max" in opts:
            opts["tile_max"] = imgsz
        built[e, m] = create_engine("defects", engine=name, imgsz=imgsz, conf=conf, **opts)
        built[e, m](frames[:1])  # load + compile
        built[e, m](frames[1:2])
    lat = {k: [] for k in todo}
    stages = {k: [] for k in todo}
    ndet = {k: [] for k in todo}
    for _ in range(rounds):
        for k in todo:
            t_end = time.perf_counter() + seconds / rounds
            i = 0
            while time.perf_counter() < t_end or i < 2:
                f = frames[i % len(frames)]
                t0 = time.perf_counter()
                (d,) = built[k]([f])
                lat[k].append((time.perf_counter() - t0) * 1e3)
                stages[k].append(d.timings_ms)
                ndet[k].append(len(d))
                i += 1
    rows = []
    for e, m in todo:
        arr = np.asarray(lat[e, m])
        st = {s: float(np.median([t.get(s, 0.0) for t in stages[e, m]]))
              for s in ("preprocess", "inference", "postprocess")}  # fmt: skip
        tiles, side = _tiles_per_frame(built[e, m], frames[0].shape)
        rows.append({"engine": e, "inference": m, "size": list(frames[0].shape),
                     "tiles": tiles, "side": side,
                     "ms_per_frame": float(arr.mean()), "fps": 1e3 / float(arr.mean()),
                     "p50_ms": float(np.percentile(arr, 50)),
                     "p99_ms": float(np.percentile(arr, 99)), "calls": len(arr),
                     "dets": float(np.mean(ndet[e, m])),
                     **{f"{s}_ms": v for s, v in st.items()}})  # fmt: skip
        r = rows[-1]
        print(f"  {e:14s} {m:9s} ({tiles} x {side} px): {r['ms_per_frame']:7.1f} ms/frame  "
              f"p50 {r['p50_ms']:7.1f}  p99 {r['p99_ms']:7.1f}  ({r['calls']} calls, "
              f"{r['dets']:.1f} det/frame)", file=sys.stderr, flush=True)  # fmt: skip
    for r in rows:
        ref = {x["inference"]: x["ms_per_frame"] for x in rows if x["engine"] == r["engine"]}
        r["vs_letterbox"] = r["ms_per_frame"] / ref["letterbox"]
        r["vs_tiles_512"] = r["ms_per_frame"] / ref["tiles-512"]
    return rows


def print_tiles(rows) -> None:
    print("| engine | inference | tiles/frame | tile px | ms/frame | frames/s | p50 ms | p99 ms | "
          "pre ms | net ms | post ms | det/frame | time vs letterbox | time vs tiles-512 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['inference']} | {r['tiles']} | {r['side']} | "
              f"{r['ms_per_frame']:.1f} | {r['fps']:.1f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['preprocess_ms']:.1f} | "
              f"{r['inference_ms']:.1f} | {r['postprocess_ms']:.1f} | {r['dets']:.1f} | "
              f"{r['vs_letterbox']:.2f}x | {r['vs_tiles_512']:.2f}x |")  # fmt: skip


# ------------------------------------------------------------------------ accuracy


def run_accuracy(engines, paths, frames, conf, imgsz=512):
    """Agreement of every engine with torch FP32 on the same frames (INT8 / bf16 loss)."""
    from loopline.engines.ops import match_instances

    ref = make_engine("torch", paths, imgsz, conf)(frames)
    rows = []
    for e in engines:
        if e in ("torch", "ridge"):
            continue
        got = make_engine(e, paths, imgsz, conf)(frames)
        ious, matched, n_ref, n_got = [], 0, 0, 0
        for r, g in zip(ref, got, strict=True):
            p = match_instances(r.masks, g.masks, min_iou=1e-6)
            ious += list(p[:, 2]) + [0.0] * (max(len(r), len(g)) - len(p))
            matched += int((p[:, 2] >= 0.5).sum())
            n_ref += len(r)
            n_got += len(g)
        rows.append({"engine": e, "mean_mask_iou": float(np.mean(ious)) if ious else 1.0,
                     "f1_at_0.5": 2 * matched / max(n_ref + n_got, 1),
                     "instances": n_got, "torch_instances": n_ref})  # fmt: skip
    return rows


def print_accuracy(rows) -> None:
    print("| engine | mean mask IoU vs torch | detection F1 (IoU >= 0.5) | instances | torch |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['mean_mask_iou']:.3f} | {r['f1_at_0.5']:.3f} | "
              f"{r['instances']} | {r['torch_instances']} |")  # fmt: skip


# ------------------------------------------------------------------------ post-processing


def fake_outputs(n_det: int, *, imgsz: int = 512, nc: int = 2, nm: int = 32, seed: int = 0):
    """Raw head output with exactly ``n_det`` confident, non-overlapping line-like boxes."""
    import cv2

    rng = np.random.default_rng(seed)
    a = (imgsz // 8) ** 2 + (imgsz // 16) ** 2 + (imgsz // 32) ** 2
    pred = np.zeros((1, 4 + nc + nm, a), np.float32)
    pred[0, :2] = rng.uniform(0, imgsz, size=(2, a))
    pred[0, 2:4] = rng.uniform(4, 30, size=(2, a))
    pred[0, 4 : 4 + nc] = rng.uniform(0, 0.2, size=(nc, a))  # below conf
    pred[0, 4 + nc :] = rng.normal(size=(nm, a))
    side = int(np.ceil(np.sqrt(n_det)))
    cell = imgsz / side
    idx = rng.choice(a, n_det, replace=False)
    for k, j in enumerate(idx):  # a grid of boxes: none suppressed by NMS
        cx, cy = (k % side + 0.5) * cell, (k // side + 0.5) * cell
        long_, short = cell * 0.9, max(cell * 0.25, 6)
        w, h = (long_, short) if k % 2 else (short, long_)
        pred[0, :4, j] = (cx, cy, w, h)
        pred[0, 4 + k % nc, j] = 0.9
    noise = rng.normal(size=(nm, imgsz // 4, imgsz // 4)).astype(np.float32)
    protos = np.stack([cv2.GaussianBlur(x, (0, 0), 3.0) * 6 for x in noise])
    return pred, protos[None]


def time_post(n_dets, *, repeats: int, shape=(512, 512), imgsz: int = 512):
    import os

    import torch
    from ultralytics.utils import ops as uops
    from ultralytics.utils.nms import non_max_suppression

    from loopline.engines import ops

    lb = ops.letterbox_params(shape, imgsz)
    rows = []
    for n in n_dets:
        pred, protos = fake_outputs(n, imgsz=imgsz)
        tp, tq = torch.from_numpy(pred), torch.from_numpy(protos)

        def ultralytics_post(tp=tp, tq=tq):
            (d,) = non_max_suppression(tp, 0.25, 0.7, nc=2, max_det=300)
            d[:, :4] = uops.scale_boxes((imgsz, imgsz), d[:, :4], shape)
            m = uops.process_mask_native(tq[0], d[:, 6:], d[:, :4], shape)
            keep = m.amax((-2, -1)) > 0
            return m[keep].numpy().astype(bool)

        def loopline_post(impl="numba", pred=pred, protos=protos):
            ((m, *_),) = ops.postprocess(pred, protos, [lb], conf=0.25, iou=0.7, max_det=300,
                                         impl=impl)  # fmt: skip
            return m

        res = {}
        # ultralytics at its faster torch thread count (see pick_torch_threads)
        best = []
        for th in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(th)
            ultralytics_post()
            ts = []
            for _ in range(max(repeats // 2, 2)):
                t0 = time.perf_counter()
                ultralytics_post()
                ts.append(time.perf_counter() - t0)
            best.append((float(np.median(ts)), th))
        torch.set_num_threads(min(best)[1])
        for name, fn in (("ultralytics", ultralytics_post), ("loopline", loopline_post),
                         ("loopline-python", lambda: loopline_post("python"))):  # fmt: skip
            fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            res[name] = (float(np.median(ts)), out)
        pairs = ops.match_instances(res["loopline"][1], res["ultralytics"][1], min_iou=1e-6)
        iou = pairs[:, 2]  # matched one-to-one (equal scores make the two orders differ)
        rows.append({"detections": n, **{f"{k}_ms": v[0] for k, v in res.items()},
                     "mask_iou_vs_ultralytics": float(iou.mean()) if len(iou) else 1.0,
                     "found": len(res["loopline"][1])})  # fmt: skip
        r = rows[-1]
        print(f"  post N={n}: ultralytics {r['ultralytics_ms']:.1f} ms, loopline "
              f"{r['loopline_ms']:.2f} ms", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def print_post(rows) -> None:
    print("| detections | ultralytics ms | ms/det | loopline (numba) ms | ms/det | speed-up | "
          "loopline python twin ms | mask IoU vs ultralytics |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["detections"]
        print(f"| {n} | {r['ultralytics_ms']:.1f} | {r['ultralytics_ms'] / n:.2f} | "
              f"{r['loopline_ms']:.2f} | {r['loopline_ms'] / n:.3f} | "
              f"{r['ultralytics_ms'] / r['loopline_ms']:.0f}x | {r['loopline-python_ms']:.1f} | "
              f"{r['mask_iou_vs_ultralytics']:.3f} |")  # fmt: skip


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", type=Path, default=None, help="YOLOv8-seg .pt (default: the shipped defects.pt)"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "loopline-bench",
        help="where the exports are kept between runs",
    )
    p.add_argument("--engines", nargs="+", default=list(ALL_ENGINES), choices=ALL_ENGINES)
    p.add_argument("--sizes", nargs="+", type=int, default=[320, 512, 640])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    p.add_argument("--seconds", type=float, default=4.0, help="time per engine and setting")
    p.add_argument("--rounds", type=int, default=2, help="round-robin bursts per setting")
    p.add_argument("--frames", type=int, default=16, help="distinct synthetic 512x512 frames")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--post-dets", nargs="+", type=int, default=[2, 20, 90])
    p.add_argument(
        "--quick", action="store_true", help="512 only, batch 1 and 4, 1.5 s per setting, post N=20"
    )
    p.add_argument("--post-only", action="store_true", help="only the post-processing table")
    p.add_argument("--tiles", action="store_true",
                   help="only the big-frame table: the shipped model on --tile-size frames, "
                        "letterbox vs tiles of 512 vs default tiles (engines onnx, openvino "
                        "unless --engines)")  # fmt: skip
    p.add_argument("--tile-size", type=int, default=1024, help="frame side for --tiles (px)")
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="only the agreement of each engine with torch at 512 (INT8/bf16 loss)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)  # fmt: skip
    if a.quick:
        a.sizes, a.batches, a.seconds, a.rounds, a.post_dets = [512], [1, 4], 1.5, 1, [20]
    import os

    from loopline._offline import use_all_threads

    threads = use_all_threads(a.threads)
    print(f"# engines benchmark: {os.cpu_count()} CPUs, {threads} threads", flush=True)
    out: dict = {}
    if a.tiles:
        from loopline.engines.calibration import calibration_frames

        engines = [e for e in a.engines if e in ("onnx", "openvino", "openvino-f32")]
        if engines == [e for e in ALL_ENGINES if e in engines] and len(engines) == 3:
            engines = ["onnx", "openvino"]  # the default list: the shipped runtimes
        frames = calibration_frames(a.frames, size=a.tile_size, seed=99)
        out["tiles"] = run_tiles(engines, frames, a.seconds, a.rounds, a.conf)
        print(f"\n## Big frames ({a.frames} synthetic {a.tile_size}x{a.tile_size} frames, shipped "
              f"model, imgsz 512, batch 1, conf {a.conf})\n")  # fmt: skip
        print_tiles(out["tiles"])
        if a.json:
            a.json.write_text(json.dumps(out, indent=1))
        return 0
    if not a.accuracy:
        print("\n## Post-processing (one 512x512 frame, imgsz 512)\n")
        out["post"] = time_post(a.post_dets, repeats=5 if a.quick else 15)
        print_post(out["post"])
    if not a.post_only:
        from loopline.engines.calibration import calibration_frames
        from loopline.models import MODEL_DIR

        pt = a.model or MODEL_DIR / "defects.pt"
        if not pt.exists():
            print(f"no model {pt}: pass --model", file=sys.stderr)
            return 2
        paths = prepare_models(pt, a.work, tuple(a.engines))
        frames = calibration_frames(a.frames, size=512, seed=99)
        if a.accuracy:
            out["accuracy"] = run_accuracy(a.engines, paths, frames, a.conf)
            print(f"\n## Agreement with torch FP32 ({a.frames} frames, imgsz 512, conf {a.conf})\n")
            print_accuracy(out["accuracy"])
            if a.json:
                a.json.write_text(json.dumps(out, indent=1))
            return 0
        out["engines"] = run_matrix(a.engines, paths, frames, a.sizes, a.batches, a.seconds,
                                    a.rounds, a.conf)  # fmt: skip
        print(f"\n## Engines ({a.frames} synthetic 512x512 frames, conf {a.conf}; per call = "
              "one batch, including pre- and post-processing)\n")  # fmt: skip
        print_matrix(out["engines"])
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
