"""``python -m loopline.daemon.demo`` (``make demo``): the whole live chain on a synthetic pile-up.

1. Renders the bundled scene (``loopline/data/demo_scene.json``: one pile-up of six
   dislocations gliding and closing up, 512², 25 fps, rendered deterministically by
   ``loopline.synth``, with its exact ground truth).
2. Starts the camera simulator (``loopline.daemon.ingest.simulator``, binding a loopback port) and
   the daemon (``loopline.daemon.supervisor``, its worker processes) with the shipped model
   (``defects``; ``ridge`` if no trained model is installed).
3. Streams ``--seconds`` of video at the scene's frame rate, lets the daemon drain, and prints
   the summary: frame counters, rates, latency, drops, and the spacing and velocity errors of
   the live measurements against the ground truth.

The run folder (``--out``, default ``runs/demo``) stays: annotated.mp4, series.csv/.parquet,
tracks.csv, pairs.csv, track_summary.csv, frames.csv, summary.json, plus demo.json with the
accuracy figures.
While it runs, ``loopline view --endpoint tcp://127.0.0.1:5556`` shows it live.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("loopline.demo")

__all__ = ["accuracy", "load_scene", "main"]


def load_scene() -> dict[str, Any]:
    return json.loads(resources.files("loopline").joinpath("data/demo_scene.json").read_text())


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_model(requested: str) -> tuple[str, str]:
    """The model to run (requested one if it loads, else ``ridge``) and why."""
    if requested == "ridge":
        return "ridge", "requested"
    from ..engines import create_engine

    try:
        create_engine(requested, imgsz=512).load()
        return requested, "shipped model"
    except Exception as e:  # no trained weights in this checkout, or no runtime
        return "ridge", f"{requested!r} unavailable ({type(e).__name__}: {e}); classical engine"


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def accuracy(run_dir: Path, scene: dict[str, Any], *, max_match_px: float = 12.0) -> dict:
    """Spacing and velocity of the live results against the scene's ground truth.

    Tracks are matched to true dislocations by nearest centroid (within ``max_match_px``)
    frame by frame, each track taking its most frequent match. Velocity: the slope of a
    track's centroid along the glide direction (least squares over its frames). Spacing:
    each published pair of neighbours against the mean closest distance of the two true
    lines in the same frame.
    """
    from ..analysis import mean_closest_distance
    from ..synth.scene import lines_at

    fps, nm = float(scene["fps"]), float(scene["nm_per_px"])
    tracks = [r for r in _read_csv(run_dir / "tracks.csv") if r["kind"] == "line"]
    pairs = _read_csv(run_dir / "pairs.csv")
    frames = sorted({int(r["frame"]) for r in tracks})
    truth: dict[int, dict[int, Any]] = {t: {ln.id: ln for ln in lines_at(scene, t)} for t in frames}
    votes: dict[int, Counter] = defaultdict(Counter)
    pos: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for r in tracks:
        t, tid = int(r["frame"]), int(r["track_id"])
        x, y = float(r["x_px"]), float(r["y_px"])
        pos[tid].append((t, x, y))
        best, bd = None, max_match_px
        for lid, ln in truth[t].items():
            d = float(np.hypot(*(ln.points.mean(axis=0) - (x, y))))
            if d < bd:
                best, bd = lid, d
        if best is not None:
            votes[tid][best] += 1
    match = {tid: v.most_common(1)[0][0] for tid, v in votes.items()}
    vel_err, vel_true = [], []
    for tid, pts in pos.items():
        if tid not in match or len(pts) < 25:
            continue
        lid = match[tid]
        ln = next((truth[t][lid] for t, _, _ in pts if lid in truth[t]), None)
        if ln is None:
            continue
        a = np.asarray(pts)
        g = np.asarray(ln.glide_dir)
        s = a[:, 1:] @ g
        v = float(np.polyfit(a[:, 0], s, 1)[0])  # px/frame along the glide direction
        vel_err.append(abs(v - ln.velocity))
        vel_true.append(abs(ln.velocity))
    sp_err, sp_true = [], []
    for r in pairs:
        t = int(r["frame"])
        ta, tb = match.get(int(r["track_id"])), match.get(int(r["partner_id"]))
        if ta is None or tb is None or ta == tb or t not in truth or not r["spacing_px"]:
            continue
        if ta not in truth[t] or tb not in truth[t]:
            continue
        d_true = mean_closest_distance(truth[t][ta].points, truth[t][tb].points)
        sp_err.append(abs(float(r["spacing_px"]) - d_true))
        sp_true.append(d_true)
    n_true = len({lid for t in frames for lid in truth[t]})

    def stat(errs: list[float]) -> float | None:
        return round(float(np.median(errs)), 4) if errs else None

    return {
        "dislocations_true": n_true,
        "tracks_matched": len(set(match.values())),
        "velocity": {
            "tracks": len(vel_err),
            "median_abs_error_px_per_frame": stat(vel_err),
            "median_abs_error_nm_per_s": stat([e * nm * fps for e in vel_err]),
            "median_true_nm_per_s": stat([v * nm * fps for v in vel_true]),
        },
        "spacing": {
            "pairs": len(sp_err),
            "median_abs_error_px": stat(sp_err),
            "median_abs_error_nm": stat([e * nm for e in sp_err]),
            "median_relative_error": stat([e / t for e, t in zip(sp_err, sp_true, strict=True)
                                           if t > 0]),
            "median_true_nm": stat([t * nm for t in sp_true]),
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(prog="python -m loopline.daemon.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="video length streamed (s)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    p.add_argument("--model", default="defects", help="model (default: the shipped one)")
    p.add_argument("--fps", type=float, default=None, help="camera rate (default: scene's)")
    p.add_argument("--publish", default=None, help="PUB endpoint (default :5556 if free)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")  # fmt: skip
    con = Console()
    from ..synth.render import BackgroundCache, render_frame
    from .config import load_config
    from .ingest.simulator import Simulator
    from .supervisor import Supervisor, install_signal_handlers

    scene = load_scene()
    fps = a.fps or float(scene["fps"])
    n = max(2, min(int(a.seconds * fps), int(scene["frames"])))
    model, why = pick_model(a.model)
    con.print(f"[bold]loopline demo[/]: {n} frames of {scene['width']}x{scene['height']} at "
              f"{fps:g} fps; model [cyan]{model}[/] ({why})")  # fmt: skip
    t0 = time.monotonic()
    cache = BackgroundCache(scene)
    with con.status("rendering the synthetic pile-up video ..."):
        images = [render_frame(scene, t, background=cache).image for t in range(n)]
    con.print(f"rendered {n} frames in {time.monotonic() - t0:.1f} s")
    if a.out.exists():
        shutil.rmtree(a.out)
    publish = a.publish or ("tcp://127.0.0.1:5556" if _port_free(5556)
                            else f"tcp://127.0.0.1:{_free_port()}")  # fmt: skip
    sim = Simulator("tcp://127.0.0.1:0", sndhwm=1000, linger_s=2)
    cfg = load_config(overrides={
        "source.endpoint": sim.endpoint, "output.dir": str(a.out), "engine.model": model,
        "calibration.nm_per_px": float(scene["nm_per_px"]), "run.until_series_end": True,
        "publish.endpoint": publish,
    })  # fmt: skip
    ready = threading.Event()
    sup = Supervisor(cfg, on_ready=lambda _s: ready.set(),
                     log_level=logging.INFO if a.verbose else logging.WARNING)  # fmt: skip
    restore = install_signal_handlers(sup)
    result: dict[str, int] = {}
    th = threading.Thread(target=lambda: result.setdefault("code", sup.run()), daemon=True)
    th.start()
    try:
        with con.status("starting the daemon (worker processes, model) ..."):
            while not ready.wait(0.2):
                if not th.is_alive():
                    con.print("[red]the daemon failed to start[/] (run with -v for its log)")
                    return 1
        con.print(f"daemon ready; viewers: [cyan]{publish}[/]  (loopline view --endpoint "
                  f"{publish})")  # fmt: skip
        with con.status(f"streaming {n / fps:.0f} s of video at {fps:g} fps ..."):
            stats = sim.send_series(images, series="demo", fps=fps,
                                    pixel_size_nm=float(scene["nm_per_px"]))  # fmt: skip
            th.join(120)
    finally:
        sim.close(linger_s=0)
        if th.is_alive():
            sup.request_stop("demo ending")
            th.join(60)
        restore()
    code = result.get("code", 1)
    summ_path = a.out / "summary.json"
    if not summ_path.exists():
        con.print("[red]no summary.json: the daemon did not finish cleanly[/]")
        return 1
    s = json.loads(summ_path.read_text())
    c = s["counters"]
    acc = accuracy(a.out, scene)
    (a.out / "demo.json").write_text(json.dumps({"model": model, "frames": n, "fps": fps,
                                                 "sim_late": stats.late, "accuracy": acc,
                                                 "summary": s}, indent=1))  # fmt: skip
    t = Table(title="loopline demo: live run", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("camera", f"{stats.sent} frames sent at {stats.fps:.1f} fps ({stats.late} late)")
    t.add_row("counters", ", ".join(f"{k} {c[k]}" for k in
                                    ("received", "analysed", "skipped", "malformed", "recorded")))
    t.add_row("drops", f"backpressure {c['skipped_backpressure']}, lost {c['skipped_lost']}, "
                       f"not recorded {c['dropped_no_slot'] + c['dropped_source']}")
    # over the series' own duration (the camera's), not the run's (that includes start-up)
    dur = max(stats.sent / fps, 1e-9)
    t.add_row("analysed fps", f"{c['analysed'] / dur:.1f} of {fps:g} offered "
                              f"({100 * c['skipped'] / max(c['received'], 1):.1f} % skipped) "
                              f"over the series' {dur:.0f} s")
    lat = s["latency_ms"]
    t.add_row("latency", f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
                         "(camera timestamp -> published)")
    v, sp = acc["velocity"], acc["spacing"]
    t.add_row("tracks", f"{acc['tracks_matched']} of {acc['dislocations_true']} dislocations "
                        "matched")
    t.add_row("velocity error", f"median {v['median_abs_error_nm_per_s']} nm/s "
                                f"(true median {v['median_true_nm_per_s']} nm/s; "
                                f"{v['tracks']} tracks)")
    t.add_row("spacing error", f"median {sp['median_abs_error_nm']} nm, "
                               f"{_pct(sp['median_relative_error'])} "
                               f"(true median {sp['median_true_nm']} nm; {sp['pairs']} pairs)")
    t.add_row("run folder", str(a.out))
    con.print(t)  # fmt: skip
    for w in s.get("warnings", []):
        con.print(f"[red]warning:[/] {w}")
    return code


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


if __name__ == "__main__":
    sys.exit(main())
