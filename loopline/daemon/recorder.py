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
  (as ``loopline analyze``) and the output worker's own (``behind``, ``disk_low``,
  ``recording_stopped``).
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

Disk full: a write that fails with one of :data:`DISK_ERRNOS` (ENOSPC, EDQUOT, EIO, EROFS,
EFBIG) stops the recording, never the output worker. Every open file is left ending with its
last whole row or frame: the CSV files (``frames.csv`` and the tables) are written in one go
per flush and cut back to their last complete row where that fails, the rows staying pending;
a failed Parquet part leaves no file; the H.264 video is cut back to its last whole fragment
(one per frame, the one before the last frame written: that frame is counted as not recorded
after all, its ``frames.csv`` row taken back), and a raw TIFF to its last whole page. One ERROR
line and the ``recording_stopped`` alarm (raise; ``on_alarm``, the worker publishes it); every
frame offered meanwhile is not recorded (``write_frame`` returns False: ``not_recorded_disk``)
and analysed frames' rows are dropped (``results_not_recorded_disk``). Every
``output.disk_probe_s`` the free space is looked at; from ``output.resume_free_mb`` on, the
pending rows are written and recording resumes: the tables in the same files, the video (and
a raw TIFF) in the next free part (:func:`first_free_part`), the alarm cleared. summary.json
(``recording``: the videos, each stop) is tried :data:`SUMMARY_TRIES` times at the end.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..io.runfolder import (
    RunTables,
    finish_parquet,
    parquet_parts,
    read_points,
    write_all,
    write_summary,
)
from ..io.sanitize import csv_cell, inside, safe_filename
from ..io.video import VideoWriter
from .config import OutputConfig
from .shm import STAGES
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
#: errors of a run folder that takes no more (disk full, quota, I/O error, read-only, file too
#: large): recording stops, analysis and publishing go on, recording resumes when it can
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
#: attempts at writing summary.json at the end, a second apart
SUMMARY_TRIES = 5


def disk_error(e: BaseException) -> bool:
    """True for an error of :data:`DISK_ERRNOS` (or one raised from such an error)."""
    seen = (e, e.__cause__, e.__context__)
    return any(isinstance(x, OSError) and x.errno in DISK_ERRNOS for x in seen)


def _why(e: BaseException) -> str:
    """One line naming a disk error: ``ENOSPC: No space left on device``."""
    for x in (e, e.__cause__, e.__context__):
        if isinstance(x, OSError) and x.errno in DISK_ERRNOS:
            return f"{errno.errorcode.get(x.errno, x.errno)}: {x.strerror or x}"
    return " ".join(str(e).split())[:200]


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
    """The overlay frame (BGR uint8): instance fills and outlines, centre lines, ids, scale
    bar.

    ``result`` is a frame message (:mod:`loopline.analysis.message`: its ``tracks`` rows
    with their outlines); None draws the frame with ``mark`` (e.g. "SKIPPED") instead. A loop
    without a mask (``from_box``, the ellipse of its box) is outlined, not filled; the title
    counts what the row counts.
    """
    g = to_display(image)
    bgr = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    if result is not None:
        fill = bgr.copy()
        insts = result.get("tracks", [])
        for inst in insts:
            c = np.asarray(inst.get("contour_px") or [], np.int32).reshape(-1, 1, 2)
            if len(c) >= 3 and not inst.get("from_box"):
                cv2.fillPoly(fill, [c], _COLORS.get(inst["cls"], (200, 200, 200)))
        cv2.addWeighted(fill, 0.35, bgr, 0.65, 0, dst=bgr)
        for inst in insts:
            col = _COLORS.get(inst["cls"], (200, 200, 200))
            c = np.asarray(inst.get("contour_px") or [], np.int32).reshape(-1, 1, 2)
            if len(c) >= 2:
                cv2.polylines(bgr, [c], True, col, 1, cv2.LINE_AA)
            line = np.asarray(read_points(inst.get("points_px")), np.float64).reshape(-1, 2)
            if len(line) >= 2:  # the centre line
                cv2.polylines(bgr, [np.round(line * 16).astype(np.int32).reshape(-1, 1, 2)],
                              False, (255, 255, 255), 1, cv2.LINE_AA, 4)  # fmt: skip
            org = (int(inst.get("x_px") or 0) + 4, int(inst.get("y_px") or 0) - 4)  # outlined:
            tid = str(inst.get("track_id", ""))  # readable on bright and dark frames
            cv2.putText(bgr, tid, org, _FONT, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(bgr, tid, org, _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
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
    """``frames.csv``: rows appended to a CSV file; columns fixed by the first row.

    Rows are written every ``flush_rows`` rows, in one go; a write that fails (a full disk) is
    cut back to the last complete row and the rows stay pending for the next flush.
    """

    def __init__(self, csv_path: Path, flush_rows: int):
        self.csv_path = csv_path
        self.flush_rows = flush_rows
        self.columns: list[str] | None = None
        self.rows: list[dict[str, Any]] = []
        self._file: Any = None  # unbuffered, appending
        self._good = 0  # the file's end after its last complete row
        self._last_row_at: int | None = None  # where the last row written starts
        self._header = False
        self.count = 0

    def append(self, row: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def drop_last(self) -> None:
        """Take the last row back (its frame was lost from the video after all)."""
        self.count -= 1
        if self.rows:
            self.rows.pop()
        elif self._last_row_at is not None and self._file is not None:
            os.ftruncate(self._file.fileno(), self._last_row_at)
            self._good, self._last_row_at = self._last_row_at, None

    def _open(self) -> None:
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        if not new:  # continued: the file's own columns (an older one may lack some)
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if header and header != self.columns:
                logger.warning("%s has the columns %s; continued with those (without %s)",
                               self.csv_path, ", ".join(header),
                               ", ".join(c for c in self.columns or () if c not in header)
                               or "none")  # fmt: skip
                self.columns = header
        self._file = open(self.csv_path, "ab", buffering=0)
        self._good = self._file.seek(0, os.SEEK_END)
        self._header = new

    def flush(self) -> None:
        if not self.rows or self.columns is None:
            return
        if self._file is None:
            self._open()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, extrasaction="ignore")
        if self._header:
            writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in r.items()} for r in self.rows[:-1])
        last = len(buf.getvalue().encode("utf-8"))
        writer.writerow({k: csv_cell(v) for k, v in self.rows[-1].items()})
        data = buf.getvalue().encode("utf-8")
        write_all(self._file, data, self._good)  # a failure: cut back, rows kept
        self._last_row_at = self._good + last
        self._good += len(data)
        self._header = False
        self.rows = []

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None


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

    def __init__(self, run_dir: str | Path, cfg: OutputConfig, *, part: int = 0,
                 on_alarm: Callable[[dict[str, Any]], None] | None = None,
                 count: Callable[[str, int], None] | None = None) -> None:  # fmt: skip
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
        # a run folder that takes no more (see "Disk full" in the module docstring)
        self._on_alarm = on_alarm
        self._count = count
        self._deltas: dict[str, int] = {}  # counter changes made here, for close()
        self.stopped: dict[str, Any] | None = None  # the stop going on: see _stop
        self.stops: list[dict[str, Any]] = []  # summary.json recording.stops
        self._next_probe = 0.0
        self._file_part = part  # the part that names the video and TIFF being written
        self.videos: list[str] = []  # the video files this recorder wrote, in order
        self._vid_recorded = 0  # frames of the open video counted as recorded
        self._video_good = 0  # its size after the last whole frame
        self._tif_good = 0
        self._last: dict[str, Any] = {"series": "", "frame": 0, "time_s": 0.0}
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
            self._vid_recorded = self._video_good = 0
            self.videos.append(self.mp4_path.name)
            self._video.write(bgr)
            if not self._video.crash_safe:  # mp4v: marked for recovery until closed
                h, w = bgr.shape[:2]
                write_sidecar(self.mp4_path, w, h, fps)
        else:
            self._video.write(bgr)
        if self._video.crash_safe:  # whole fragments up to the frame before this one
            self._video_good = self.mp4_path.stat().st_size

    def _write_raw(self, image: np.ndarray, hdr: dict[str, Any]) -> None:
        if self.cfg.raw == "npy":
            # the series id is the sender's: a plain file name, always inside raw/
            name = f"{safe_filename(str(hdr['series']))}_{int(hdr['index']):06d}.npy"
            dest = inside(self.dir / "raw", self.dir / "raw" / name)
            if self.part and dest.exists():  # an earlier run in this folder used the name
                dest = dest.with_suffix(f".{self.part}.npy")
            try:
                np.save(dest, image)
            except BaseException:
                dest.unlink(missing_ok=True)  # no partial file
                raise
        elif self.cfg.raw == "tiff":
            if self._tif is None:
                import tifffile

                sfx = f".{self._file_part}" if self._file_part else ""
                self._tif = tifffile.TiffWriter(self.dir / "raw" / f"frames{sfx}.tif",
                                                bigtiff=True)  # fmt: skip
            self._tif.write(image, contiguous=False,
                            description=json.dumps({"series": hdr["series"],
                                                    "index": hdr["index"]}))  # fmt: skip
            self._tif_good = self._tif.filehandle.tell()

    def write_frame(self, image: np.ndarray, hdr: dict[str, Any], annotated: np.ndarray | None,
                    fate: str) -> bool:  # fmt: skip
        """Record one frame (every frame comes here exactly once, in arrival order).

        False: not recorded, the run folder's disk is full or failing (see the module
        docstring; the caller counts it ``not_recorded_disk``).
        """
        self._last = {"series": hdr["series"], "frame": hdr["index"],
                      "time_s": hdr.get("time_s", 0.0)}  # fmt: skip
        if self.stopped is not None and not self._resume():
            self._not_recorded()
            return False
        result = hdr.get("result") if fate.startswith("analysed") else None
        model = (result or {}).get("model") or ""
        row = {"series": hdr["series"], "index": hdr["index"], "seq": hdr["seq"],
               "timestamp": hdr["ts"], "fate": fate, "model": model}  # fmt: skip
        in_video = appended = False
        try:
            self._write_raw(image, hdr)  # first: a failure there leaves the video as it was
            if self.mp4_path is not None:
                if annotated is None:
                    mark = {"skipped": "SKIPPED", "late": "ANALYSIS LATE"}.get(fate,
                                                                              "NOT ANALYSED")
                    annotated = annotate(image, None, px_nm=hdr.get("px_nm"), mark=mark,
                                         title=f"{hdr['series']} #{hdr['index']}")  # fmt: skip
                self._video_write(annotated, hdr.get("fps"))
                in_video = True
            appended = True
            self.frames.append(row)  # a failed flush keeps the row pending
        except OSError as e:
            if not disk_error(e):
                raise
            kept = self._stop(e, f"frame {hdr['series']}/{hdr['index']}", current=in_video)
            if not (kept and appended):  # lost with the video's last fragment, or never in
                if appended:
                    self.frames.drop_last()
                self._not_recorded()
                return False
        if self._video is not None:
            self._vid_recorded += 1
        if model:
            self._count_model(model, hdr, result)
        self.written += 1
        return True

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
    def append_result(self, msg: dict[str, Any], *, latency_ms: float | None) -> bool:
        """One analysed frame's table rows (the frame message's ``row``, ``tracks``, ``pairs``,
        ``track_summary``, ``alarms``), as the measure worker made them; the recorder adds only
        the latency it measured. False: not written, recording
        is stopped (counted ``results_not_recorded_disk``; its alarm events are kept)."""
        row = {**msg["row"], "latency_ms": latency_ms}
        # a frame no tracker saw (fate analysed_untracked): its series.csv row only
        tables = {} if msg.get("fate") else msg
        self._last = {"series": msg["series"], "frame": msg["index"],
                      "time_s": msg.get("time_s", 0.0)}  # fmt: skip
        if self.stopped is not None and not self._resume():
            self.tables.append(alarms=tables.get("alarms") or ())  # kept in memory: few
            return False
        try:
            self.tables.append(series=row, tracks=tables.get("tracks", ()),
                               pairs=tables.get("pairs", ()),
                               track_summary=tables.get("track_summary", ()),
                               alarms=tables.get("alarms") or ())  # fmt: skip
        except OSError as e:  # the rows stay pending, written when recording resumes
            if not disk_error(e):
                raise
            self._stop(e, "the tables (series.csv, series.parquet, ...)")
        return True

    # -- a run folder that takes no more
    def _add(self, counter: str, n: int = 1) -> None:
        self._deltas[counter] = self._deltas.get(counter, 0) + n
        if self._count is not None:
            self._count(counter, n)

    def _not_recorded(self) -> None:
        if self.stopped is not None:
            self.stopped["frames"] += 1

    def _event(self, state: str, value: float, message: str, at: dict[str, Any]) -> None:
        ev = {"series": at["series"], "frame": int(at["frame"]), "time_s": float(at["time_s"]),
              "rule": "recording_stopped", "state": state, "value": float(value),
              "threshold": 0.0, "unit": "frames", "message": message,
              "level": "error" if state == "raise" else "info"}  # fmt: skip
        self.tables.append(alarms=[ev])  # kept until recording resumes
        if self._on_alarm is not None:
            self._on_alarm(ev)

    def _abandon_files(self, current: bool) -> int:
        """Close the video and the raw TIFF after a failed write, each cut back to its last
        whole frame; how many frames counted as recorded the video lost with them."""
        lost = 0
        v, self._video = self._video, None
        if v is not None:
            total = self._vid_recorded + bool(current)
            try:
                v.close()
            except Exception as e:
                logger.debug("closing %s after a write error: %s", v.path, e)
            in_file = v.frames
            if v.crash_safe:
                # whole fragments up to the frame before the last one written: what closing
                # added may be cut short (a muxer does not always say so), a failed write was
                os.truncate(v.path, self._video_good)
                in_file = max(v.frames - 1, 0)
            lost = max(total - in_file, 0)
            self._vid_recorded = 0
        t, self._tif = self._tif, None
        if t is not None:
            try:
                t.close()
            except Exception as e:
                logger.debug("closing the raw TIFF after a write error: %s", e)
                os.truncate(t.filehandle.name, self._tif_good)
        return lost

    def _stop(self, e: BaseException, what: str, *, current: bool = False) -> bool:
        """A write failed with a disk error: stop recording (see the module docstring). True
        where the current frame (``current``: its video frame was written) stays in the video."""
        lost = 0
        try:
            lost = self._abandon_files(current)
        except OSError as err:
            logger.error("recording: could not cut %s back after a failed write: %s", what, err)
        current_lost = bool(current and lost)
        for _ in range(lost - current_lost):  # frames counted as recorded, lost after all
            self.frames.drop_last()
            self.written -= 1
            self._add("recorded", -1)
            self._add("not_recorded_disk")
        why = _why(e)
        self.stopped = {"error": why, "where": what, "at": dict(self._last),
                        "t0": time.monotonic(), "since": time.time(),
                        "frames": lost - current_lost}  # fmt: skip
        self._next_probe = time.monotonic() + self.cfg.disk_probe_s
        msg = (f"recording_stopped raised: writing {what} to {self.dir} failed ({why}); "
               f"analysis and publishing go on, recording resumes when "
               f"{self.cfg.resume_free_mb:g} MB are free")  # fmt: skip
        logger.error("%s", msg)
        self._event("raise", 0, msg, self._last)
        return not current_lost

    def _resume(self) -> bool:
        """While stopped, every ``output.disk_probe_s``: resume when the disk has room again
        (pending rows written; the video and a raw TIFF go on in a new part). True if it did."""
        now = time.monotonic()
        if self.stopped is None:
            return True
        if now < self._next_probe:
            return False
        self._next_probe = now + self.cfg.disk_probe_s
        try:
            if shutil.disk_usage(self.dir).free < self.cfg.resume_free_mb * 1e6:
                return False
            self.frames.flush()
            self.tables.flush()
        except OSError as e:
            logger.debug("recording still stopped: %s", _why(e))
            return False
        stop, self.stopped = self.stopped, None
        took = now - stop["t0"]
        self.stops.append({"error": stop["error"], "where": stop["where"], "at": stop["at"],
                           "since": stop["since"], "resumed_after_s": round(took, 3),
                           "frames_not_recorded": stop["frames"]})  # fmt: skip
        if self.mp4_path is not None or self.cfg.raw == "tiff":  # the video goes on in a new part
            self._file_part = first_free_part(self.dir)
            if self.mp4_path is not None:
                self.mp4_path = self.dir / _part_name(self._file_part)
        msg = (f"recording_stopped cleared: recording resumed after {took:.1f} s; "
               f"{stop['frames']} frames were not recorded (not_recorded_disk)"
               + (f"; the video goes on in {self.mp4_path.name}" if self.mp4_path else ""))
        logger.warning("%s", msg)
        self._event("clear", stop["frames"], msg, self._last)
        return True

    def tick(self) -> None:
        """Call often (the output worker's loop): resumes a stopped recording in time even
        while no frame comes."""
        if self.stopped is not None:
            self._resume()

    def alarms(self, rows: list[dict[str, Any]]) -> None:
        """The daemon's own alarm events (``behind``, ``disk_low``) to ``alarms.csv`` (kept
        in memory until the next flush)."""
        self.tables.append(alarms=rows)

    def analysis(self, msg: dict[str, Any]) -> None:
        """A series ended in the measure worker: its summary and its tracks' summary rows."""
        self.analysis_summary[str(msg["series"])] = msg.get("summary") or {}
        self.tables.append(track_summary=msg.get("track_summary") or ())

    def series_event(self, msg: dict[str, Any]) -> None:
        self.series.append({k: v for k, v in msg.items() if k != "t"})

    # -- end
    def _close_files(self) -> list[str]:
        """Close every file; on a full disk each is left ending with its last whole row or
        frame (the Parquet parts for ``loopline recover``). The failures, one line each."""
        if self.stopped is not None:  # one last look: the rows kept go in if they can
            self._next_probe = 0.0
            self._resume()
        failed = []
        if self.stopped is None:
            for name, close in (("the tables", self.tables.close),
                                ("frames.csv", self.frames.close)):  # fmt: skip
                try:
                    close()
                except OSError as e:
                    if not disk_error(e):
                        raise
                    failed.append(f"{name}: {_why(e)}")
        else:  # still stopped: what is written stays as it is, the rows kept are lost
            for f in (self.tables.close, self.frames.close):
                try:
                    f()
                except OSError as e:
                    logger.debug("closing while recording is stopped: %s", e)
        if self._video is not None:
            try:
                self._video.close()
            except Exception as e:
                if not disk_error(e):
                    raise
                self._stop(e, "the end of the video")
                failed.append(f"{self.videos[-1]}: {_why(e)}")
            else:
                sidecar(self.mp4_path).unlink(missing_ok=True)
            self._video = None
        if self._tif is not None:
            try:
                self._tif.close()
            except OSError as e:
                failed.append(f"raw TIFF: {_why(e)}")
            self._tif = None
        return failed

    def _recording_warnings(self, counters: dict[str, int], failed: list[str]) -> list[str]:
        out = []
        stops = self.stops + ([] if self.stopped is None else [self.stopped])
        if counters.get("not_recorded_disk") or stops:
            out.append(f"{counters.get('not_recorded_disk', 0)} frames were NOT recorded: "
                       f"writing the run folder failed ({stops[0]['error'] if stops else '?'}); "
                       f"recording stopped {len(stops)} times while analysis and publishing "
                       "went on (summary.json recording.stops)")  # fmt: skip
        if self.stopped is not None:
            out.append("recording was still stopped at the end (the disk was still full or "
                       "failing): the rows of the last frames are missing")  # fmt: skip
        if counters.get("results_not_recorded_disk"):
            out.append(f"{counters['results_not_recorded_disk']} analysed frames have no rows "
                       "in series.csv, tracks.csv, pairs.csv and series.parquet: recording was "
                       "stopped when their results came")  # fmt: skip
        for f in failed:
            out.append(f"closing the run folder failed: {f}; every file ends with its last "
                       f"whole row or frame (`loopline recover {self.dir}` merges "
                       "series.parquet.parts)")  # fmt: skip
        return out

    def close(self, stats: dict[str, float], *, latency: dict[str, Any],
              ingest_latency: dict[str, Any], metrics: dict[str, Any],
              names: dict[str, Any] | None = None) -> Path | None:  # fmt: skip
        """Flush and close every file, then write summary.json (returns its path; None where
        even that could not be written: one ERROR line).

        ``names``: ``source`` ({protocol, endpoint}) and ``engine`` ("model/runtime").
        """
        from .metrics import COUNTERS

        before = dict(self._deltas)
        failed = self._close_files()
        if self._recovery is not None:
            self._recovery.join(RECOVERY_WAIT_S)
        counters = {k: int(stats.get(k, 0)) for k in COUNTERS}
        for k, n in self._deltas.items():  # changed while closing: not in ``stats`` yet
            if k in counters:
                counters[k] += n - before.get(k, 0)
        warnings = self._recording_warnings(counters, failed)
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
            # where the time went, per stage, over the whole run: frames handled, seconds busy
            # with them, CPU seconds of its processes (all threads; start-up not counted)
            "stages": {st: {"frames": int(stats.get(f"frames_{st}", 0)),
                            "busy_s": round(float(stats.get(f"busy_s_{st}", 0.0)), 3),
                            "cpu_s": round(float(stats.get(f"cpu_s_{st}", 0.0)), 3)}
                       for st in STAGES},
            "series": self.series,
            "models": self.models,
            "tables": {**self.tables.counts, "frames.csv": self.frames.count},
            "files": sorted(p.name for p in self.dir.iterdir() if not p.name.startswith(".")),
            "part": self.part,
            "recovered_videos": dict(self.recovered),
            "recovered_tables": dict(self.recovered_tables),
            "recording": {"videos": list(self.videos), "stops": [
                {k: v for k, v in st.items() if k != "t0"}
                for st in self.stops + ([] if self.stopped is None else [self.stopped])]},
            "warnings": warnings,
        }
        for w in warnings:
            logger.error("%s", w)
        # the part that drains the run writes the summary (with the tables' schema_version);
        # it is small: a full disk that freed a little since is tried again
        for attempt in range(SUMMARY_TRIES):
            try:
                return write_summary(self.dir, summary)
            except OSError as e:
                (self.dir / "summary.json.tmp").unlink(missing_ok=True)
                if attempt == SUMMARY_TRIES - 1:
                    logger.error("summary.json NOT written (%s, %d tries); counters: %s",
                                 _why(e), SUMMARY_TRIES, json.dumps(counters))  # fmt: skip
                    return None
                time.sleep(1.0)
        return None
