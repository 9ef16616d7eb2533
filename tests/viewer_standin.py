"""A stand-in for the daemon's result stream, for the viewer tests.

Replays a ``loopline synth --video`` folder on a PUB socket as the daemon publishes results:
multipart ``[JSON header, overlay JPEG]``, header with ``series``, ``index``, ``time_s``,
``px_nm``, ``shape``, ``row``, ``instances`` (class, track id, contour, centroid), ``result``
(the pipelines' ``FrameResult.to_dict()`` built from the ground truth) and ``metrics``.

Run as a script: ``python tests/viewer_standin.py DIR --fps 20`` binds to a free loopback port
and prints ``ENDPOINT tcp://127.0.0.1:PORT``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import zmq


def _resample(points: np.ndarray, k: int = 50) -> np.ndarray:
    seg = np.hypot(*np.diff(points, axis=0).T)
    s = np.concatenate([[0], np.cumsum(seg)])
    u = np.linspace(0, s[-1], k)
    return np.stack([np.interp(u, s, points[:, 0]), np.interp(u, s, points[:, 1])], axis=1)


def _spacing(a: np.ndarray, b: np.ndarray) -> float:
    d = np.hypot(*(a[:, None, :] - b[None, :, :]).transpose(2, 0, 1))
    return float(d.min(axis=1).mean())


def _polygons(label: Path, w: int, h: int) -> list[np.ndarray]:
    out = []
    for line in label.read_text().splitlines():
        v = np.array(line.split()[1:], float).reshape(-1, 2) * (w, h)
        out.append(v)
    return out


def build_messages(folder: Path) -> list[tuple[dict, bytes]]:
    """One (header, JPEG) per frame of the first sequence of a synth video folder."""
    from loopline.pipelines.container import FrameResult

    truth = json.loads((folder / "truth.json").read_text())
    seq = truth["sequences"][0]
    nm, fps = float(truth["nm_per_px"]), float(truth["fps"])
    out = []
    for fr in seq["frames"]:
        img = cv2.imread(str(folder / fr["image"]), cv2.IMREAD_GRAYSCALE)
        h, w = img.shape
        polys = _polygons(folder / "labels" / (Path(fr["image"]).stem + ".txt"), w, h)
        lines = [ln for ln in fr["lines"] if len(ln["points"]) >= 2]
        pu_ids = sorted({ln["pileup"] for ln in lines})
        pts = np.array([_resample(np.array(ln["points"])) for ln in lines]).reshape(-1, 50, 2)
        rank = np.zeros(len(lines), np.int64)
        pairs, pair_pu, pair_rank, pair_sp = [], [], [], []
        for pi, pid in enumerate(pu_ids):
            order = [seq["pileups"][pid]["dislocation_ids"].index(ln["id"]) if ln["id"] in
                     seq["pileups"][pid]["dislocation_ids"] else 99
                     for ln in lines if ln["pileup"] == pid]  # fmt: skip
            idx = [i for i, ln in enumerate(lines) if ln["pileup"] == pid]
            idx = [i for _, i in sorted(zip(order, idx, strict=True))]
            for r, i in enumerate(idx):
                rank[i] = r
            for r in range(len(idx) - 1):
                pairs.append((idx[r], idx[r + 1]))
                pair_pu.append(pi)
                pair_rank.append(r)
                pair_sp.append(_spacing(pts[idx[r]], pts[idx[r + 1]]))
        loops = fr["loops"]
        n, m, q = len(lines), len(loops), len(pairs)
        res = FrameResult(
            index=fr["index"], time_s=fr["index"] / fps, shape=(h, w), nm_per_px=nm,
            line_track_id=np.array([ln["id"] for ln in lines], np.int64),
            line_score=np.ones(n, np.float32), line_points_px=pts,
            line_length_px=np.array([ln["length_px"] for ln in lines]),
            line_width_px=np.full(n, 3.0), line_pieces=np.ones(n, np.int64),
            line_curvature_per_px=np.zeros((n, 50)),
            line_pileup=np.array([pu_ids.index(ln["pileup"]) for ln in lines], np.int64),
            line_rank=rank, pileup_id=np.array(pu_ids, np.int64),
            pileup_glide_dir=np.array([seq["pileups"][p]["glide_dir"] for p in pu_ids]
                                      ).reshape(-1, 2),
            pileup_glide_source=tuple("truth" for _ in pu_ids),
            pair_lines=np.array(pairs, np.int64).reshape(q, 2),
            pair_pileup=np.array(pair_pu, np.int64), pair_rank=np.array(pair_rank, np.int64),
            pair_spacing_px=np.array(pair_sp, float),
            loop_track_id=np.array([lp["id"] for lp in loops], np.int64),
            loop_score=np.ones(m, np.float32),
            loop_center_px=np.array([lp["center"] for lp in loops], float).reshape(m, 2),
            loop_major_px=np.array([lp["major_px"] for lp in loops], float),
            loop_minor_px=np.array([lp["minor_px"] for lp in loops], float),
            loop_angle_deg=np.array([lp["angle_deg"] % 180 for lp in loops], float),
            loop_area_px2=np.array([np.pi / 4 * lp["major_px"] * lp["minor_px"] for lp in loops]),
            timings_ms={"measure": 1.2},
        )  # fmt: skip
        ids = [ln["id"] for ln in fr["lines"]] + [lp["id"] for lp in loops]
        instances = []
        for k, (poly, tid) in enumerate(zip(polys, ids, strict=False)):
            instances.append({"id": tid, "cls": 0 if k < len(fr["lines"]) else 1,
                              "contour": np.round(poly, 1).tolist(),
                              "centroid": np.round(poly.mean(axis=0), 2).tolist()})  # fmt: skip
        bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        _ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
        header = {
            "schema": "loopline.frame/1", "series": seq["name"], "index": fr["index"],
            "time_s": fr["index"] / fps, "px_nm": nm, "shape": [h, w],
            "jpeg": {"width": w, "height": h, "scale": 1.0},
            "row": {"n_dislocations": n, "n_loops": m},
            "instances": instances, "result": res.to_dict(),
            "timings_ms": {"engine": 20.0, "measure": 1.2},
        }  # fmt: skip
        out.append((header, jpeg.tobytes()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("--fps", type=float, default=20.0)
    p.add_argument("--endpoint", default="tcp://127.0.0.1:*")
    p.add_argument("--no-result", action="store_true", help="instances only, no 'result'")
    a = p.parse_args(argv)
    msgs = build_messages(a.folder)
    if a.no_result:
        msgs = [({k: v for k, v in h.items() if k != "result"}, j) for h, j in msgs]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.bind(a.endpoint)
    print("ENDPOINT", sock.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    n = len(msgs)
    i = 0
    t0 = time.monotonic()
    h0 = msgs[0][0]
    series = {"schema": "loopline.series/1", "event": "start", "series": h0["series"],
              "shape": h0["shape"], "dtype": "uint8", "pixel_size_nm": h0["px_nm"]}
    try:
        while not stop:
            header, jpeg = msgs[i % n]
            counters = {"received": i + 1, "analysed": i + 1, "skipped": 0, "malformed": 0,
                        "recorded": i + 1}  # fmt: skip
            if i % 10 == 0:  # as the daemon: series and metrics are messages of their own
                metrics = {"schema": "loopline.metrics/1", "counters": counters,
                           "fps": {"receiver": a.fps, "engine": 48.0, "measure": 310.0,
                                   "output": a.fps},
                           "latency_ms": {"p50": 41.0, "p99": 88.0, "max": 95.0}}  # fmt: skip
                for topic, body in ((b"series", series), (b"metrics", metrics)):
                    try:
                        sock.send_multipart([topic, json.dumps(body).encode()], zmq.NOBLOCK)
                    except zmq.Again:
                        pass
            # keep the frame number running: the replay loops over the sequence
            hdr = dict(header, seq=i, index=i, time_s=i / a.fps, counters=counters,
                       latency_ms=40.0)  # fmt: skip
            if "result" in hdr:
                hdr["result"] = dict(hdr["result"], index=i, time_s=i / a.fps)
            try:
                sock.send_multipart([b"frame", json.dumps(hdr).encode(), jpeg], zmq.NOBLOCK)
            except zmq.Again:
                pass
            i += 1
            time.sleep(max(0.0, t0 + i / a.fps - time.monotonic()))
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
