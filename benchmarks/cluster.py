"""``loopline analyze --cluster`` against single-machine ``analyze``, in one run (issue 21).

Measures, on one synthetic video (``loopline synth``, frames of ``--size`` px):

- frames/s of single-machine :func:`loopline.analysis.analyze.analyze`;
- frames/s of :func:`loopline.analysis.cluster.analyze_cluster` on a ``LocalCluster`` of 1 and
  of 2 worker processes (one thread each), after a warm-up run that loads the model on every
  worker (each timed run is a second run on the same workers);
- the overhead per chunk: the round trip of an empty chunk (``analyze_chunk`` on no frames:
  scheduling, opening the input, sending the result back), one at a time and many in flight;
- the client's serial part: tracking and writing one measured frame (the ceiling of any
  cluster: every frame passes through one tracker);

and closes with an extrapolation to N nodes from these numbers. Prints the CPU model. Run::

    .venv/bin/python benchmarks/cluster.py [--frames 96] [--size 512] [--chunk 16] [--model ridge]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown (no lscpu)"
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def make_video(root: Path, frames: int, size: int) -> Path:
    from loopline.synth.generate import generate

    out = root / "clip"
    generate(out, preset="mixed", count=1, seed=5, video=True, frames=frames,
             overrides={"width": size, "height": size, "stage_drift": [0.2, 0.3],
                        "loops": [4, 8], "pileups": 2},
             progress=False, jobs=1)  # fmt: skip
    return out


def empty_chunks(client, video: Path, opt, n: int) -> tuple[float, float]:
    """Seconds per empty chunk: one at a time (latency), and ``n`` in flight (throughput)."""
    from loopline.analysis.analyze import resolve_calibration
    from loopline.analysis.cluster import Chunk, analyze_chunk
    from loopline.analysis.sources import open_source

    cal = resolve_calibration(open_source(video), None)
    c = Chunk(str(video), 0, 0)
    client.submit(analyze_chunk, c, opt, cal, cal, pure=False).result()  # warm
    t0 = time.perf_counter()
    for _ in range(20):
        client.submit(analyze_chunk, c, opt, cal, cal, pure=False).result()
    latency = (time.perf_counter() - t0) / 20
    t0 = time.perf_counter()
    futs = [client.submit(analyze_chunk, c, opt, cal, cal, pure=False) for _ in range(n)]
    client.gather(futs)
    return latency, (time.perf_counter() - t0) / n


def client_feed(video: Path, opt, root: Path) -> float:
    """Seconds per frame to track and write measured frames (the client's serial part)."""
    from loopline.analysis.analyze import resolve_calibration
    from loopline.analysis.cluster import Chunk, analyze_chunk
    from loopline.analysis.series import SeriesWriter
    from loopline.analysis.sources import open_source
    from loopline.analysis.tracking import OnlineTracker

    cal = resolve_calibration(open_source(video), None)
    cr = analyze_chunk(Chunk(str(video), 0, None), opt, cal, cal)
    tracker = OnlineTracker(cal, search_range_px=opt.search_range_px, memory=opt.memory)
    t0 = time.perf_counter()
    with SeriesWriter(root / "feed", cal, flush_every=0) as w:
        for r, s in zip(cr.results, cr.shifts, strict=True):
            w.append(tracker.update(r, shift=s))
    return (time.perf_counter() - t0) / max(len(cr.results), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--model", default="ridge", help="ridge (default), truth, or a model")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--empty", type=int, default=200, help="empty chunks in flight")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import distributed

    logging.getLogger("distributed").setLevel(logging.WARNING)

    from loopline.analysis.analyze import AnalyzeOptions, analyze
    from loopline.analysis.cluster import analyze_cluster

    print(f"CPU: {cpu_model()}")
    opt = AnalyzeOptions(model=a.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loopline-bench-") as tmp:
        root = Path(tmp)
        video = make_video(root, a.frames, a.size)
        print(f"input: {a.frames} frames of {a.size}x{a.size} px, model {a.model}, "
              f"chunks of {a.chunk} frames")  # fmt: skip
        analyze(video, root / "warm", options=opt)  # imports, numba compilation
        t0 = time.perf_counter()
        analyze(video, root / "single", options=opt)
        single = a.frames / (time.perf_counter() - t0)
        rows.append(("single machine", single))
        over = {}
        for n in a.workers:
            with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                          dashboard_address=":0", silence_logs=logging.ERROR
                                          ) as lc, distributed.Client(lc) as client:  # fmt: skip
                analyze_cluster(video, root / f"warm{n}", cluster=client, options=opt,
                                chunk=a.chunk)  # fmt: skip
                t0 = time.perf_counter()
                analyze_cluster(video, root / f"run{n}", cluster=client, options=opt,
                                chunk=a.chunk)  # fmt: skip
                rows.append((f"cluster, {n} worker(s)", a.frames / (time.perf_counter() - t0)))
                over[n] = empty_chunks(client, video, opt, a.empty)
        feed = client_feed(video, opt, root)
    print(f"\n{'run':<24}{'frames/s':>10}{'vs single':>11}")
    for name, fps in rows:
        print(f"{name:<24}{fps:>10.2f}{fps / single:>10.2f}x")
    print(f"\n{'workers':<10}{'empty chunk, alone':>20}{'in flight':>12}")
    for n, (lat, thr) in over.items():
        print(f"{n:<10}{lat * 1e3:>17.1f} ms{thr * 1e3:>9.1f} ms")
    print(f"client: track + write {feed * 1e3:.2f} ms/frame (ceiling {1 / feed:.0f} frames/s)")
    # extrapolation: per frame c s of work on one worker, o s per chunk of k frames
    n1 = min(over)
    c = n1 / dict(rows)[f"cluster, {n1} worker(s)"]  # s of one worker per frame
    o = over[max(over)][1]
    print(f"\nExtrapolation (per frame {c * 1e3:.1f} ms on one worker, {o * 1e3:.1f} ms "
          f"scheduler cost per chunk of {a.chunk}): N nodes of W workers analyse about "
          f"min(N*W*k/(k*c + o), k/o, client ceiling) frames/s:")  # fmt: skip
    for nodes in (1, 4, 16, 64):
        w = 16
        est = min(nodes * w * a.chunk / (a.chunk * c + o), a.chunk / o, 1 / feed)
        print(f"  {nodes:>3} nodes x {w} workers: ~{est:.0f} frames/s")
    print("  (the client's one tracker bounds it; larger chunks cut the scheduler's share)")


if __name__ == "__main__":
    main()
