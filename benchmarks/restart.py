"""How long a killed worker takes to come back: fork server (the daemon's) vs spawn, one run.

    .venv/bin/python benchmarks/restart.py [--repeat 3] [--json out.json]

For each start method and each stage (measure, engine0, output): a daemon (the fast
``ThresholdEngine`` stand-in, 256² demo-scene frames at 25 fps from the camera simulator on
loopback, as ``benchmarks/daemon.py`` makes them)
runs a 150-frame series; one second in, the stage's worker is SIGKILLed. The figure is the
time from the kill to the restarted worker's ``ready`` (the supervisor's log), median of
``--repeat`` runs. Also the time from ``Supervisor.run`` to all workers ready: the first
daemon of the process (the fork server starts and imports ``PRELOAD``) and a second one.

Prints the CPU model: a figure means something only beside it, and only from quiet cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import cpu_model, make_frames

STAGES = ("measure", "engine0", "output")


class _Ready(logging.Handler):
    """Times of the supervisor's 'restarting' and '<label> ready' lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "restarting" in msg:
            self.times.setdefault("restarting", record.created)
        elif msg.endswith(" ready") and "restarting" in self.times:
            self.times.setdefault(msg.split()[0], record.created)
        elif "workers ready" in msg:
            self.times.setdefault("all_ready", record.created)


def one(stage: str | None, imgs: list[np.ndarray]) -> dict[str, float]:
    """One daemon, one series; kill ``stage`` (None: none) one second in."""
    from loopline.daemon.config import load_config
    from loopline.daemon.ingest.simulator import Simulator
    from loopline.daemon.supervisor import Supervisor

    log = logging.getLogger("loopline.daemon.supervisor")
    h = _Ready()
    log.addHandler(h)
    log.setLevel(logging.DEBUG)
    sim = Simulator("tcp://127.0.0.1:0", sndhwm=1000, linger_s=2)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(overrides={
                "source.endpoint": sim.endpoint, "output.dir": str(Path(tmp) / "run"),
                "engine.factory": "loopline.daemon.standins:ThresholdEngine",
                "publish.endpoint": "tcp://127.0.0.1:0", "calibration.nm_per_px": 2.0,
                "run.until_series_end": True,
            })  # fmt: skip
            ready = threading.Event()
            sup = Supervisor(cfg, on_ready=lambda s: ready.set())
            t0 = time.time()
            th = threading.Thread(target=sup.run, daemon=True)
            th.start()
            ready.wait(120)
            kill_at = 0.0
            if stage is not None:

                def killer() -> None:
                    nonlocal kill_at
                    time.sleep(1.0)
                    kill_at = time.time()
                    os.kill(sup.pids()[stage], signal.SIGKILL)

                k = threading.Thread(target=killer)
                k.start()
            sim.send_series(imgs, series="restart", fps=25, pixel_size_nm=2.0)
            if stage is not None:
                k.join()
            th.join(120)
    finally:
        sim.close(linger_s=0)
        log.removeHandler(h)
    out = {"start_s": h.times["all_ready"] - t0}
    if stage is not None:
        out["restart_s"] = h.times[stage] - kill_at
    return out


def measure(method: str, repeat: int, imgs: list[np.ndarray]) -> dict[str, float]:
    from loopline.daemon import supervisor

    if method == "spawn":
        supervisor.worker_context = lambda: mp.get_context("spawn")
    res = {"first_start_s": one(None, imgs)["start_s"]}
    res["second_start_s"] = one(None, imgs)["start_s"]
    for stage in STAGES:
        res[f"{stage}_restart_s"] = statistics.median(
            one(stage, imgs)["restart_s"] for _ in range(repeat)
        )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--method", choices=("forkserver", "spawn"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.method:  # one method per process: a process's first daemon pays for its imports
        print(json.dumps(measure(a.method, a.repeat, make_frames(150, 256))))
        return 0
    import subprocess

    cpu = cpu_model()
    print(f"CPU: {cpu}")
    rows = {}
    for method in ("forkserver", "spawn"):
        r = subprocess.run([sys.executable, __file__, "--method", method, "--repeat",
                            str(a.repeat)], capture_output=True, text=True, check=True)  # fmt: skip
        rows[method] = json.loads(r.stdout.strip().splitlines()[-1])
    keys = list(rows["forkserver"])
    print(f"{'':22s} {'forkserver':>11s} {'spawn':>8s} {'ratio':>6s}")
    for k in keys:
        f, s = rows["forkserver"][k], rows["spawn"][k]
        print(f"{k:22s} {f:10.2f}s {s:7.2f}s {s / f:6.2f}")
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu, **rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
