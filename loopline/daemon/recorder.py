"""The run folder: every frame recorded, results appended as the run goes.

Layout of ``RUN_DIR`` (``output.dir``):

- ``annotated.mp4`` — one video frame per received frame, in arrival order: analysed frames
  with their overlay (masks, skeletons, track ids, scale bar), frames that were not analysed
  marked ``SKIPPED`` (latest-wins backpressure) or ``NOT ANALYSED`` (lost with a crashed
  worker or too late), in grey. H.264 in fragmented MP4 by default, playable after a kill
  (:mod:`loopline.io.video`, ``output.video_codec``); mp4v videos of a killed writer are
  recovered (below).
- ``frames.csv`` — one row per recorded frame: series, index, seq, timestamp, fate
  (analysed | skipped | lost), model (the model that analysed it, ``name@sha256[:8]`` as
  :func:`loopline.io.runfolder.model_id` writes it; empty for a frame not analysed); it and
  the MP4 have the same number of frames. The model changes where ``loopline model use``
  swapped models (:mod:`.control`).
- ``series.csv`` and ``series.parquet``, ``tracks.csv``, ``pairs.csv``,
  ``track_summary.csv`` — the tables ``loopline analyze`` writes too, with the same columns
  and meanings, written by the same :class:`loopline.io.runfolder.RunTables` from the rows the
  measure worker made (see the README's *Run folder*): one row per analysed frame, per object
  and frame, per neighbour pair and frame, per ended track. Flushed every
  ``output.flush_rows`` frames, so a crash loses at most that many.
- ``alarms.csv`` — one row per alarm raised or cleared: the measure worker's frame rules
  (as ``loopline analyze``) and the output worker's own (``behind``, ``disk_low``).
- ``raw/`` — optional raw frames (``output.raw``): ``frames.tif`` (BigTIFF, appended) or
  ``{series}_{index:06d}.npy`` (``.N.npy`` in part N where an earlier run took the name).
- ``summary.json`` — ``schema_version`` of the tables, ``analysis`` (per series: frames,
  times, calibration, tracks, spacings, stage timings, as ``loopline analyze`` writes it),
  ``source`` (protocol, endpoint) and ``engine`` ("model/runtime") names, ``models`` (each
  stretch of frames one model analysed: its ``model`` id, ``path``, ``runtime``, ``frames``,
  ``first`` and ``last`` frame as {series, index, seq}), counters
  (``received``, ``analysed``, ``skipped``, ``malformed``, ``recorded`` and the detailed
  ones), latency percentiles, mean rates, warnings.

When the output worker is restarted after a crash it starts a new *part*: ``annotated.1.mp4``,
``series.1.parquet`` and so on (CSV files are appended to). A daemon started in a folder that
already holds a recording (systemd restarting it after a crash, or the same ``--out`` twice)
continues it at the next free part, and keeps the earlier ``summary.json`` as
``summary.N.json`` (N: the first part of the new run). The dead part's video was never
finalised (``annotated.mp4.open`` marks it); the new part rewrites it as a playable MP4 in the
background (:mod:`.video_recovery`) and merges the dead part's ``series.parquet`` from the
closed parts it was written in (``series.parquet.parts/``, :mod:`loopline.io.runfolder`), and
``loopline recover RUN_DIR`` does the same after the whole daemon was killed.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..io.runfolder import RunTables, finish_parquet, parquet_parts, write_summary
from ..io.sanitize import csv_cell, inside, safe_filename
from ..io.video import VideoWriter
from .config import OutputConfig
from .validate import NOT_RECORDED, REJECT_COUNTERS
from .video_recovery import recover_videos, sidecar, write_sidecar

logger = logging.getLogger(__name__)

__all__ = ["Recorder", "annotate", "nice_scale_bar", "to_display"]

_COLORS = {0: (60, 200, 255), 1: (255, 120, 60)}  # BGR: dislocation amber, loop blue
_SKIP_COLOR = (0, 140, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
#: frame rate of the annotated video when neither ``output.video_fps`` nor the input gives one
DEFAULT_VIDEO_FPS = 25.0
#: how long closing the run waits for an earlier part's video recovery (s); what is left is
#: named in summary.json's warnings (``loopline recover`` finishes it)
RECOVERY_WAIT_S = 45.0  # under systemd's TimeoutStopSec (90 s)


def to_display(image: np.ndarray) -> np.ndarray:
    """(H, W) grey of any dtype → uint8 (robust 0.5–99.5 % stretch unless already uint8)."""
    if image.dtype == np.uint8:
        return image
    sub = image[::4, ::4].astype(np.float32)
    lo, hi = np.percentile(sub, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    out = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).astype(np.uint8)


def nice_scale_bar(width_px: int, px_nm: float) -> tuple[float, str]:
    """A round bar length (px) near a fifth of the width and its label."""
    target_nm = width_px * px_nm / 5.0
    k = 10 ** math.floor(math.log10(target_nm))
    nm = max((m * k for m in (1, 2, 5) if m * k <= target_nm), default=k)
    label = f"{nm / 1000:g} µm" if nm >= 1000 else f"{nm:g} nm"
    return nm / px_nm, label


def _scale_bar(img: np.ndarray, px_nm: float | None) -> None:
    h, w = img.shape[:2]
    if not px_nm:
        return
    length, label = nice_scale_bar(w, px_nm)
    x1, y = w - 12, h - 14
    x0 = round(x1 - length)
    cv2.rectangle(img, (x0 - 4, y - 20), (x1 + 4, y + 8), (0, 0, 0), -1)
    cv2.line(img, (x0, y), (x1, y), (255, 255, 255), 3)
    cv2.putText(img, label.replace("µ", "u"), (x0, y - 6), _FONT, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)  # fmt: skip


def _boxed_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float,
                color: tuple[int, int, int], thick: int) -> None:  # fmt: skip
    """Text on a dark translucent box: readable on bright and dark frames alike."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    x, y = org
    y0, y1 = max(y - th - 3, 0), min(y + base + 2, img.shape[0])
    x0, x1 = max(x - 3, 0), min(x + tw + 3, img.shape[1])
    if y1 > y0 and x1 > x0:
        img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * 0.3).astype(img.dtype)
    cv2.putText(img, text, org, _FONT, scale, color, thick, cv2.LINE_AA)


def annotate(image: np.ndarray, result: dict[str, Any] | None, *, px_nm: float | None = None,
             mark: str | None = None, title: str = "") -> np.ndarray:  # fmt: skip
    """The overlay frame (BGR uint8): instance fills and outlines, skeletons, ids, scale bar.

    ``result`` is a result message (instances as described in :mod:`.publisher`); None
    draws the frame with ``mark`` (e.g. "SKIPPED") instead. A loop without a mask (``from_box``,
    the ellipse of its box) is outlined, not filled; the title counts what the row counts.
    """
    g = to_display(image)
    bgr = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    h, w = g.shape
    if result is not None:
        fill = bgr.copy()
        insts = result.get("instances", [])
        for inst in insts:
            c = np.asarray(inst.get("contour") or [], np.int32).reshape(-1, 1, 2)
            if len(c) >= 3 and not inst.get("from_box"):
                cv2.fillPoly(fill, [c], _COLORS.get(inst["cls"], (200, 200, 200)))
        cv2.addWeighted(fill, 0.35, bgr, 0.65, 0, dst=bgr)
        for inst in insts:
            col = _COLORS.get(inst["cls"], (200, 200, 200))
            c = np.asarray(inst.get("contour") or [], np.int32).reshape(-1, 1, 2)
            if len(c) >= 2:
                cv2.polylines(bgr, [c], True, col, 1, cv2.LINE_AA)
            sk = np.asarray(inst.get("skeleton") or [], np.float64).reshape(-1, 2)
            if "rank" in inst and len(sk) >= 2:  # an ordered centre line
                cv2.polylines(bgr, [np.round(sk * 16).astype(np.int32).reshape(-1, 1, 2)], False,
                              (255, 255, 255), 1, cv2.LINE_AA, 4)  # fmt: skip
            elif len(sk):  # skeleton pixels
                sk = sk.astype(np.int32)
                xs = np.clip(sk[:, 0], 0, w - 1)
                ys = np.clip(sk[:, 1], 0, h - 1)
                bgr[ys, xs] = (255, 255, 255)
            x, y = inst["centroid"]
            org = (int(x) + 4, int(y) - 4)  # outlined: readable on bright and dark frames
            cv2.putText(bgr, str(inst.get("id", "")), org, _FONT, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(bgr, str(inst.get("id", "")), org, _FONT, 0.4, (255, 255, 255), 1,
                        cv2.LINE_AA)  # fmt: skip
        row = result.get("row") or {}
        n_l = row.get("n_dislocations", sum(1 for i in insts if i["cls"] == 0))
        n_o = row.get("n_loops", sum(1 for i in insts if i["cls"] == 1))
        title = f"{title}  {n_l} disl. {n_o} loops".strip()
        if row.get("instances_without_mask"):
            title += f" ({row['instances_without_mask']} without mask)"
    if title:
        _boxed_text(bgr, title, (6, 14), 0.4, (0, 255, 0), 1)
    if mark:
        _boxed_text(bgr, mark, (6, 34), 0.55, _SKIP_COLOR, 2)
    _scale_bar(bgr, px_nm)
    return bgr


class _Table:
    """``frames.csv``: rows appended to a CSV file; columns fixed by the first row."""

    def __init__(self, csv_path: Path, flush_rows: int):
        self.csv_path = csv_path
        self.flush_rows = flush_rows
        self.columns: list[str] | None = None
        self.rows: list[dict[str, Any]] = []
        self._csv = None
        self._writer: Any = None
        self.count = 0

    def append(self, row: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows or self.columns is None:
            return
        rows, self.rows = self.rows, []
        if self._csv is None:
            new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
            if not new:  # continued: the file's own columns (an older one may lack some)
                with open(self.csv_path, newline="") as f:
                    header = next(csv.reader(f), [])
                if header and header != self.columns:
                    logger.warning("%s has the columns %s; continued with those (without %s)",
                                   self.csv_path, ", ".join(header),
                                   ", ".join(c for c in self.columns if c not in header)
                                   or "none")  # fmt: skip
                    self.columns = header
            self._csv = open(self.csv_path, "a", newline="")
            self._writer = csv.DictWriter(self._csv, self.columns, extrasaction="ignore")
            if new:
                self._writer.writeheader()
        self._writer.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)
        self._csv.flush()

    def close(self) -> None:
        self.flush()
        if self._csv is not None:
            self._csv.close()
            self._csv = None


def _part_name(part: int) -> str:
    return f"annotated.{part}.mp4" if part else "annotated.mp4"


def first_free_part(run_dir: str | Path) -> int:
    """The part a new run in ``run_dir`` starts at: 0 for an empty folder, else one past the
    highest part of the recording already there (so that nothing in it is overwritten)."""
    d = Path(run_dir)
    if not d.is_dir():
        return 0
    parts = [-1]
    raw = d / "raw"
    for p in [*d.iterdir(), *(raw.iterdir() if raw.is_dir() else ())]:
        if m := re.fullmatch(r"(?:annotated|series|frames)(?:\.(\d+))?\.(?:mp4|parquet|tif)"
                             r"(?:\.parts)?",
                             p.name):  # fmt: skip
            parts.append(int(m.group(1) or 0))
        elif p.name in ("frames.csv", "summary.json"):
            parts.append(0)
    return max(parts) + 1


class Recorder:
    """Writes the run folder (see the module docstring). Owned by the output worker."""

    def __init__(self, run_dir: str | Path, cfg: OutputConfig, *, part: int = 0) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.part = part
        sfx = f".{part}" if part else ""
        self.mp4_path = self.dir / _part_name(part) if cfg.mp4 else None
        self._video: VideoWriter | None = None
        # the tables of loopline analyze, appended to across parts (pyarrow is imported now,
        # not in the middle of a run: a stall of a second or more)
        self.tables = RunTables(self.dir, parquet=f"series{sfx}.parquet" if cfg.parquet else None,
                                append=True, flush_rows=cfg.flush_rows, csv=cfg.csv)  # fmt: skip
        self.analysis_summary: dict[str, Any] = {}  # series id -> summary, as series end
        self.frames = _Table(self.dir / "frames.csv", cfg.flush_rows)
        self._tif = None
        if cfg.raw != "none":
            (self.dir / "raw").mkdir(exist_ok=True)
        self.series: list[dict[str, Any]] = []
        #: the models that analysed this part's frames, in order (summary.json ``models``)
        self.models: list[dict[str, Any]] = []
        self.written = 0
        self.t_open = time.time()
        # earlier parts' videos, left unfinalised by a killed output worker: recovered beside
        # the live run, at low cost (decode and re-encode), never touching this part's video
        self.recovered: dict[str, int | str] = {}
        self._recovery: threading.Thread | None = None
        earlier = [self.dir / _part_name(k) for k in range(part)]
        broken = [v for v in earlier if sidecar(v).exists()]
        # and their series.N.parquet, left in parts (io.runfolder.PARTS_SUFFIX): merged too
        self.recovered_tables: dict[str, int | str] = {}
        tables = [self.dir / f"series{f'.{k}' if k else ''}.parquet" for k in range(part)]
        self._parts = [t for t in tables if parquet_parts(t).is_dir()]
        if broken or self._parts:
            self._recovery = threading.Thread(target=self._recover, args=(broken,),
                                              name="video-recovery", daemon=True)  # fmt: skip
            self._recovery.start()

    def _recover(self, videos: list[Path]) -> None:
        for t in self._parts:
            try:
                n = finish_parquet(t)
            except (OSError, ValueError) as e:
                logger.error("could not merge %s: %s", parquet_parts(t), e)
                self.recovered_tables[t.name] = f"failed: {e}"
            else:
                if n is not None:
                    self.recovered_tables[t.name] = n
        self.recovered.update(recover_videos(videos))

    # -- overlays
    def annotate(self, image: np.ndarray, result: dict[str, Any]) -> np.ndarray:
        return annotate(image, result, px_nm=result.get("px_nm"),
                        title=f"{result['series']} #{result['index']}")  # fmt: skip

    # -- frames
    def _video_write(self, bgr: np.ndarray, input_fps: float | None = None) -> None:
        if self.mp4_path is None:
            return
        if self._video is None:
            # the configured rate, else the input's own (a replayed file keeps its rate)
            fps = self.cfg.video_fps or input_fps or DEFAULT_VIDEO_FPS
            self._video = VideoWriter(self.mp4_path, fps, codec=self.cfg.video_codec,
                                      crf=self.cfg.video_crf)  # fmt: skip
            self._video.write(bgr)
            if not self._video.crash_safe:  # mp4v: marked for recovery until closed
                h, w = bgr.shape[:2]
                write_sidecar(self.mp4_path, w, h, fps)
            return
        self._video.write(bgr)

    def write_frame(self, image: np.ndarray, hdr: dict[str, Any], annotated: np.ndarray | None,
                    fate: str) -> None:  # fmt: skip
        """Record one frame (every frame comes here exactly once, in arrival order)."""
        if self.mp4_path is not None:
            if annotated is None:
                mark = "SKIPPED" if fate == "skipped" else "NOT ANALYSED"
                annotated = annotate(image, None, px_nm=hdr.get("px_nm"), mark=mark,
                                     title=f"{hdr['series']} #{hdr['index']}")  # fmt: skip
            self._video_write(annotated, hdr.get("fps"))
        if self.cfg.raw == "npy":
            # the series id is the sender's: a plain file name, always inside raw/
            name = f"{safe_filename(str(hdr['series']))}_{int(hdr['index']):06d}.npy"
            dest = inside(self.dir / "raw", self.dir / "raw" / name)
            if self.part and dest.exists():  # an earlier run in this folder used the name
                dest = dest.with_suffix(f".{self.part}.npy")
            np.save(dest, image)
        elif self.cfg.raw == "tiff":
            if self._tif is None:
                import tifffile

                sfx = f".{self.part}" if self.part else ""
                self._tif = tifffile.TiffWriter(self.dir / "raw" / f"frames{sfx}.tif",
                                                bigtiff=True)  # fmt: skip
            self._tif.write(image, contiguous=False,
                            description=json.dumps({"series": hdr["series"],
                                                    "index": hdr["index"]}))  # fmt: skip
        result = hdr.get("result") if fate.startswith("analysed") else None
        model = (result or {}).get("model") or ""
        self.frames.append({"series": hdr["series"], "index": hdr["index"], "seq": hdr["seq"],
                            "timestamp": hdr["ts"], "fate": fate, "model": model})  # fmt: skip
        if model:
            self._count_model(model, hdr, result)
        self.written += 1

    def _count_model(self, model: str, hdr: dict[str, Any], result: dict[str, Any]) -> None:
        """summary.json's ``models``: one entry per stretch of frames one model analysed."""
        last = self.models[-1] if self.models else None
        if last is None or last["model"] != model:
            last = {
                "model": model,
                "path": result.get("model_path"),
                "runtime": result.get("engine"),
                "frames": 0,
                "first": {"series": hdr["series"], "index": hdr["index"], "seq": hdr["seq"]},
            }
            self.models.append(last)
        last["frames"] += 1
        last["last"] = {"series": hdr["series"], "index": hdr["index"], "seq": hdr["seq"]}

    # -- results
    def append_result(self, msg: dict[str, Any], *, latency_ms: float | None) -> None:
        """One analysed frame's table rows (``row``, ``tables``), as the measure worker made
        them; the recorder adds only the latency it measured."""
        row = {**msg["row"], "latency_ms": latency_ms}
        tables = msg.get("tables") or {}
        self.tables.append(series=row, tracks=tables.get("tracks", ()),
                           pairs=tables.get("pairs", ()),
                           track_summary=tables.get("track_summary", ()),
                           alarms=tables.get("alarms") or ())  # fmt: skip

    def alarms(self, rows: list[dict[str, Any]]) -> None:
        """The daemon's own alarm events (``behind``, ``disk_low``) to ``alarms.csv``."""
        self.tables.append(alarms=rows)

    def analysis(self, msg: dict[str, Any]) -> None:
        """A series ended in the measure worker: its summary and its tracks' summary rows."""
        self.analysis_summary[str(msg["series"])] = msg.get("summary") or {}
        self.tables.append(track_summary=msg.get("track_summary") or ())

    def series_event(self, msg: dict[str, Any]) -> None:
        self.series.append({k: v for k, v in msg.items() if k != "t"})

    # -- end
    def close(self, stats: dict[str, float], *, latency: dict[str, Any],
              ingest_latency: dict[str, Any], metrics: dict[str, Any],
              names: dict[str, Any] | None = None) -> Path:  # fmt: skip
        """Flush and close every file, then write summary.json (returns its path).

        ``names``: ``source`` ({protocol, endpoint}) and ``engine`` ("model/runtime").
        """
        from .metrics import COUNTERS

        self.tables.close()
        self.frames.close()
        if self._video is not None:
            self._video.close()
            self._video = None
            sidecar(self.mp4_path).unlink(missing_ok=True)
        if self._tif is not None:
            self._tif.close()
            self._tif = None
        if self._recovery is not None:
            self._recovery.join(RECOVERY_WAIT_S)
        counters = {k: int(stats.get(k, 0)) for k in COUNTERS}
        warnings = []
        if counters["dropped_no_slot"]:
            warnings.append(f"{counters['dropped_no_slot']} frames were NOT recorded: the slot "
                            "pool was exhausted (recorder too slow; raise pool.slots)")  # fmt: skip
        if counters["dropped_source"]:
            warnings.append(f"{counters['dropped_source']} frames were dropped by the source's "
                            "queue before they reached the daemon")  # fmt: skip
        if counters["rejected_oversize"]:
            warnings.append(f"{counters['rejected_oversize']} frames were larger than the "
                            "frame pool can hold within pool.max_memory_mb and were "
                            "rejected")  # fmt: skip
        if self._recovery is not None and self._recovery.is_alive():
            warnings.append("the video of a killed output worker is still being recovered: "
                            f"run `loopline recover {self.dir}`")  # fmt: skip
        rejected = sum(counters[k] for k in REJECT_COUNTERS)
        if rejected:
            warnings.append(f"{rejected} frames made no sense and were rejected (counters "
                            "rejected_*; see loopline.daemon.validate)")  # fmt: skip
        if counters["recorded"] + sum(counters[k] for k in NOT_RECORDED) != counters["received"]:
            warnings.append("recorded + dropped + rejected != received (a worker crash lost "
                            "frames between the receiver and the recorder)")  # fmt: skip
        elapsed = time.time() - self.t_open
        summary = {
            "command": "serve",
            "source": (names or {}).get("source"),
            "engine": (names or {}).get("engine"),
            "frames": counters["analysed"],
            "analysis": dict(self.analysis_summary),
            "counters": counters,
            "latency_ms": latency,
            "ingest_latency_ms": ingest_latency,
            "elapsed_s": round(elapsed, 3),
            "fps_mean": metrics.get("fps_mean", {}),
            "series": self.series,
            "models": self.models,
            "tables": {**self.tables.counts, "frames.csv": self.frames.count},
            "files": sorted(p.name for p in self.dir.iterdir() if not p.name.startswith(".")),
            "part": self.part,
            "recovered_videos": dict(self.recovered),
            "recovered_tables": dict(self.recovered_tables),
            "warnings": warnings,
        }
        for w in warnings:
            logger.error("%s", w)
        # the part that drains the run writes the summary (with the tables' schema_version)
        return write_summary(self.dir, summary)
