"""The run folder's tables: one schema and one writer for ``loopline analyze`` and ``serve``.

Both commands write the same four tables, with the same columns, units and meanings
(:data:`TABLES`, documented in the README's *Run folder* section) and a ``schema_version``
(:data:`SCHEMA_VERSION`) in ``summary.json``; ``loopline report`` reads them as they are.
The rows come from :class:`loopline.analysis.series.SeriesAccumulator`: in ``analyze``
directly, in the daemon through the measure worker's result message (JSON) to the recorder.

=====================  ====================================================================
file                   one row per
=====================  ====================================================================
``series.csv``         analysed frame (also ``series.parquet``, where pyarrow is installed)
``tracks.csv``         object (dislocation line or loop) and analysed frame
``pairs.csv``          pair of neighbouring dislocations of a pile-up and analysed frame
``track_summary.csv``  track, once it has ended (unseen for ``forget_after`` frames, or at
                       the end of its series)
``alarms.csv``         alarm raised or cleared (:data:`EVENT_TABLES`)
=====================  ====================================================================

Every table starts with ``series`` (the series id: a file's stem, or the camera's id) and,
but ``track_summary``, ``frame`` and ``time_s``. Units are in the column names; an empty cell
is a value that was not measured (NaN, no pixel size, a new track without a velocity yet).
CSV files are appended row by row as frames arrive (a crash loses at most the rows not yet
flushed); floats are written with :func:`repr` (they read back exactly). ``series.parquet`` is
written in closed parts while the run goes (:data:`PARTS_SUFFIX`), so a crash loses no more of
it than of the CSV files, and nothing has to be repaired: :func:`finish_parquet` merges them.

This module imports no analysis code, so the daemon's output worker stays light.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._procs import process_alive, writer_record
from .sanitize import csv_cell

logger = logging.getLogger(__name__)

__all__ = [
    "ALARM_COLUMNS",
    "ALARM_RULES",
    "EVENT_TABLES",
    "PAIR_COLUMNS",
    "PARTS_SUFFIX",
    "SCHEMA_VERSION",
    "SERIES_COLUMNS",
    "STAGES",
    "TABLES",
    "TRACK_COLUMNS",
    "TRACK_SUMMARY_COLUMNS",
    "RunTables",
    "finish_parquet",
    "json_safe",
    "model_id",
    "parquet_parts",
    "points_cell",
    "read_points",
    "recover_parquet",
    "write_summary",
]

#: Version of the run-folder layout (tables and ``summary.json``); bumped on any change that
#: is not the addition of a column at the end of a table.
SCHEMA_VERSION = 1

#: Stages whose time (ms) is a ``t_<stage>_ms`` column of ``series.csv`` (empty where a
#: command does not run the stage).
STAGES = ("preprocess", "inference", "postprocess", "engine_total", "lines", "loops",
          "pileups", "measure", "drift", "track", "measure_track")  # fmt: skip

# (column, type, meaning with unit); types: int, float, str
_SERIES: tuple[tuple[str, str, str], ...] = (
    ("series", "str", "series id: the input file's stem, or the camera's series id"),
    ("frame", "int", "frame index in the series (the file's frame number), from 0"),
    ("time_s", "float", "frame time, s: the calibration's `frame_times_s`/`fps`, else the "
                        "file's own time axis, else the camera clock since the series' first "
                        "frame"),
    ("n_dislocations", "int", "dislocation lines found: those traced and those without a "
                              "mask (`instances_without_mask`)"),
    ("n_loops", "int", "loops measured"),
    ("n_pileups", "int", "pile-ups (groups of neighbouring parallel lines; a lone line is one)"),
    ("mean_length_px", "float", "mean line length, px"),
    ("mean_length_nm", "float", "mean line length, nm"),
    ("mean_spacing_px", "float", "mean spacing of neighbouring lines over all pairs, px"),
    ("mean_spacing_nm", "float", "the same, nm"),
    ("mean_loop_major_nm", "float", "mean loop major axis, nm"),
    ("field_area_um2", "float", "field of view, µm²"),
    ("line_length_density_per_um", "float", "projected line length per field area, µm/µm² "
                                            "(empty where a line had no mask)"),
    ("line_density_per_m2", "float", "line length per foil volume, m⁻² (needs the foil "
                                     "thickness; empty where a line had no mask)"),
    ("loop_areal_density_per_um2", "float", "loops per field area × visibility factor, µm⁻²"),
    ("loop_density_per_m3", "float", "loops per foil volume × visibility factor, m⁻³"),
    ("drift_x_px", "float", "cumulative stage drift since the first frame, x, px"),
    ("drift_y_px", "float", "the same, y, px"),
    ("dose_dpa", "float", "accumulated dose, dpa (needs a dose rate in the calibration)"),
    ("nm_per_px", "float", "pixel size, nm/px"),
    ("latency_ms", "float", "`serve` only: camera timestamp to publication, ms"),
    *((f"t_{s}_ms", "float", f"time of stage `{s}` for this frame, ms") for s in STAGES),
    ("instances_without_mask", "int", "instances found whose mask was not kept (`serve`: beyond "
                                      "`pool.max_instances`; 0 in `analyze`): loops measured "
                                      "from their box (`tracks.csv` `from_box`), dislocations "
                                      "counted in `n_dislocations`, not traced"),
    ("spacing_sd_nm", "float", "standard deviation of the neighbour spacings over the frame's "
                               "pairs (their spread), nm"),
    ("mean_spacing_nm_se", "float", "standard error of `mean_spacing_nm` over the pairs "
                                    "(`spacing_sd_nm` / √pairs), nm"),
    ("n_loops_lo", "float", "Garwood 68 % interval of the loop count (Poisson), low end"),
    ("n_loops_hi", "float", "the same, high end"),
    ("loop_areal_density_per_um2_lo", "float", "`loop_areal_density_per_um2` at `n_loops_lo`, "
                                               "µm⁻²"),
    ("loop_areal_density_per_um2_hi", "float", "the same at `n_loops_hi`, µm⁻²"),
    ("loop_density_per_m3_lo", "float", "`loop_density_per_m3` at `n_loops_lo`, m⁻³"),
    ("loop_density_per_m3_hi", "float", "the same at `n_loops_hi`, m⁻³"),
)  # fmt: skip

_TRACKS: tuple[tuple[str, str, str], ...] = (
    ("series", "str", "series id"),
    ("frame", "int", "frame index"),
    ("time_s", "float", "frame time, s"),
    ("kind", "str", "`line` (dislocation) or `loop`"),
    ("track_id", "int", "track id, stable across frames of a series (-1: not linked)"),
    ("score", "float", "detection confidence"),
    ("x_px", "float", "line: mean of its centre-line points; loop: ellipse centre; x, frame px"),
    ("y_px", "float", "the same, y, frame px"),
    ("length_px", "float", "line: centre-line arc length, px"),
    ("length_nm", "float", "line: the same, nm"),
    ("width_px", "float", "line: mean mask width (area / length), px"),
    ("pieces", "int", "line: pieces of a fractured mask (the largest was measured)"),
    ("mean_abs_curvature_per_nm", "float", "line: mean |curvature| along it, 1/nm"),
    ("pileup_id", "int", "line: pile-up id, stable across frames"),
    ("rank", "int", "line: place in the pile-up from its leader (0)"),
    ("glide_x", "float", "line: unit glide direction of its pile-up, x (tail to leader)"),
    ("glide_y", "float", "line: the same, y"),
    ("glide_source", "str", "line: how the glide direction was found (see `pileups.py`)"),
    ("position_nm", "float", "line: drift-corrected position along the glide direction, nm"),
    ("velocity_nm_per_s", "float", "line: glide velocity, nm/s: least-squares slope of "
                                   "`position_nm` over the track's last `window` (7) frames"),
    ("velocity_px_per_frame", "float", "line: the same, px/frame"),
    ("major_px", "float", "loop: full major axis of the fitted ellipse, px"),
    ("major_nm", "float", "loop: the same, nm"),
    ("minor_px", "float", "loop: full minor axis, px"),
    ("minor_nm", "float", "loop: the same, nm"),
    ("angle_deg", "float", "loop: major-axis angle to x, degrees in [0, 180)"),
    ("area_nm2", "float", "loop: ellipse area, nm²"),
    ("growth_nm_per_s", "float", "loop: growth rate of the major axis, nm/s (slope over the "
                                 "track's last `window` frames)"),
    ("from_box", "int", "loop: 1 = it had no mask (`serve`, beyond `pool.max_instances`): the "
                        "ellipse inscribed in its detection box, axes along x and y; 0 = "
                        "fitted to its mask"),
    ("velocity_nm_per_s_se", "float", "line: standard error of `velocity_nm_per_s` (of its "
                                      "fit, corrected for autocorrelated residuals), nm/s"),
    ("velocity_window", "int", "line: samples in that fit (up to `window`, 7)"),
    ("length_nm_se", "float", "line: standard error of `length_nm` from the skeleton's "
                              "discretisation, nm"),
    ("position_px", "float", "line: `position_nm` in px"),
    ("major_nm_se", "float", "loop: standard error of `major_nm` from the ellipse fit's "
                             "residuals, nm (empty for `from_box`)"),
    ("growth_nm_per_s_se", "float", "loop: standard error of `growth_nm_per_s`, nm/s"),
    ("points_px", "str", "line: its centre line, ordered from one end to the other: `x y` "
                         "pairs (frame px, 0.1 px) separated by `;`, the measured 50 points "
                         "thinned to those that keep it within 0.25 px (Douglas-Peucker); "
                         "`loopline.io.runfolder.read_points` reads one"),
    ("max_abs_curvature_per_nm", "float", "line: the largest |curvature| along it, 1/nm"),
)  # fmt: skip

_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("series", "str", "series id"),
    ("frame", "int", "frame index"),
    ("time_s", "float", "frame time, s"),
    ("pileup_id", "int", "pile-up id (as in tracks.csv)"),
    ("rank", "int", "place of the pair from the leader (0: the pair that includes the leader)"),
    ("track_id", "int", "track id of the line on the leader's side"),
    ("partner_id", "int", "track id of the other line"),
    ("spacing_px", "float", "mean closest distance between the two lines, px"),
    ("spacing_nm", "float", "the same, nm"),
    ("spacing_nm_se", "float", "standard error of `spacing_nm`: the pair's scatter about a "
                               "straight line through its last `window` (7) spacings, nm"),
)  # fmt: skip

_TRACK_SUMMARY: tuple[tuple[str, str, str], ...] = (
    ("series", "str", "series id"),
    ("kind", "str", "`line` or `loop`"),
    ("track_id", "int", "track id"),
    ("first_frame", "int", "first frame seen"),
    ("last_frame", "int", "last frame seen"),
    ("frames", "int", "frames seen"),
    ("first_time_s", "float", "time of the first frame, s"),
    ("last_time_s", "float", "time of the last frame, s"),
    ("pileup_id", "int", "line: its pile-up in its last frame"),
    ("rank", "int", "line: its rank in its last frame"),
    ("mean_length_nm", "float", "line: mean length, nm"),
    ("velocity_nm_per_s", "float", "line: glide velocity fitted over the whole track, nm/s"),
    ("velocity_x_nm_per_s", "float", "drift-corrected centroid velocity, x, nm/s"),
    ("velocity_y_nm_per_s", "float", "the same, y, nm/s"),
    ("velocity_px_per_frame", "float", "line: glide velocity over the whole track, px/frame"),
    ("d_eff_nm2_per_s", "float", "effective diffusion coefficient <|Δr|²> / (4 τ) at a lag of "
                                 "one sample (τ: mean interval between samples), nm²/s"),
    ("mean_major_nm", "float", "loop: mean major axis, nm"),
    ("first_major_nm", "float", "loop: major axis in its first frame, nm"),
    ("last_major_nm", "float", "loop: major axis in its last frame, nm"),
    ("growth_nm_per_s", "float", "loop: growth rate of the major axis over the whole track, "
                                 "nm/s"),
    ("velocity_nm_per_s_se", "float", "line: standard error of `velocity_nm_per_s` "
                                      "(independent residuals), nm/s"),
    ("growth_nm_per_s_se", "float", "loop: standard error of `growth_nm_per_s` (independent "
                                    "residuals), nm/s"),
)  # fmt: skip

#: The alarm rules (``alarms.csv`` ``rule``; :mod:`loopline.analysis.alarms`): four on the
#: measured numbers (``analyze`` and ``serve``), two on the daemon itself (``serve`` only).
ALARM_RULES = ("spacing_low", "lead_velocity_high", "avalanche", "loop_growth_stalled",
               "behind", "disk_low", "recording_stopped")  # fmt: skip

_ALARMS: tuple[tuple[str, str, str], ...] = (
    ("series", "str", "series id"),
    ("frame", "int", "frame index at which the alarm was raised or cleared"),
    ("time_s", "float", "frame time, s"),
    ("rule", "str", "the rule: `spacing_low`, `lead_velocity_high`, `avalanche`, "
                    "`loop_growth_stalled`, `behind`, `disk_low` or "
                    "`recording_stopped`"),
    ("state", "str", "`raise` or `clear`"),
    ("value", "float", "the rule's value at that frame, in `unit`"),
    ("threshold", "float", "the threshold it crossed (raise, or the lower clear one), in `unit`"),
    ("unit", "str", "unit of `value` and `threshold` (`nm`, `nm/s`, `z`, `of peak`, `ms`, `GB`, "
                    "`frames`)"),
    ("message", "str", "one line saying what happened"),
)  # fmt: skip

#: file name -> ((column, type, meaning), ...): the whole schema, in column order.
TABLES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "series.csv": _SERIES, "tracks.csv": _TRACKS, "pairs.csv": _PAIRS,
    "track_summary.csv": _TRACK_SUMMARY,
}  # fmt: skip

#: Event tables (not one row per frame; not compared between ``analyze`` and ``serve``, whose
#: daemon adds rules of its own): file name -> spec.
EVENT_TABLES: dict[str, tuple[tuple[str, str, str], ...]] = {"alarms.csv": _ALARMS}

ALARM_COLUMNS = tuple(c for c, _, _ in _ALARMS)
SERIES_COLUMNS = tuple(c for c, _, _ in _SERIES)
TRACK_COLUMNS = tuple(c for c, _, _ in _TRACKS)
PAIR_COLUMNS = tuple(c for c, _, _ in _PAIRS)
TRACK_SUMMARY_COLUMNS = tuple(c for c, _, _ in _TRACK_SUMMARY)


def model_id(model: str | Path | None, *, name: str | None = None) -> str:
    """How the run folder names a model: its file name and the first 8 hex digits of the
    SHA-256 of its bytes (``defects.onnx@9c3e3b90``); a folder (an OpenVINO IR) hashes its
    files in name order. A model with no file (``ridge``, a stand-in engine) is ``name``.

    The hash tells apart two files of one name (a retrained ``defects.onnx``), so that a table
    says which weights analysed each frame.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    import hashlib

    if model is None:
        return name or "none"
    p = Path(model)
    if not p.exists():
        return name or str(model)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return f"{p.name}@{h.hexdigest()[:8]}"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if hasattr(v, "item"):  # a numpy scalar
        return _cell(v.item())
    return csv_cell(str(v))  # a sender's series id may read as a spreadsheet formula


def points_cell(points: Any) -> str:
    """A ``points_px`` cell: (K, 2) points (x, y) px as ``"x y;x y;..."``, 0.1 px."""
    return ";".join(f"{x:.1f} {y:.1f}" for x, y in points)


def read_points(cell: Any) -> list[tuple[float, float]]:
    """The (x, y) px points of a ``points_px`` cell; [] for an empty cell (a loop, a run
    written before the column existed). A cell that starts with ``-`` was written with the
    spreadsheet guard ``'`` in front (:func:`~loopline.io.sanitize.csv_cell`); it is dropped.

    >>> read_points("'-1.0 2.5;3 4")
    [(-1.0, 2.5), (3.0, 4.0)]
    """
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    text = str(cell).strip().lstrip("'")
    out = []
    for pair in text.split(";") if text else ():
        x, y = pair.split()
        out.append((float(x), float(y)))
    return out


def json_safe(v: Any) -> Any:
    """NaN/inf → None and numpy scalars → Python, recursively (rows for a JSON message)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, str):
        return json_safe(v.item())
    return v


class _Csv:
    """One CSV table: header once, rows appended; continues a file with the same header.

    Rows are kept until :meth:`flush`, which writes them in one go; a write that fails (a full
    disk: ``OSError``) is cut off again, so the file ends with its last complete row, and the
    rows stay pending for the next flush.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], *, append: bool) -> None:
        self.path = path
        self.columns = columns
        fresh = not (append and path.is_file() and path.stat().st_size > 0)
        if not fresh:
            with path.open(newline="", encoding="utf-8") as f:
                header = tuple(next(csv.reader(f), []))
            if header != columns:
                raise ValueError(f"{path} has the columns of another layout; expected "
                                 f"{len(columns)} columns starting {', '.join(columns[:3])}, "
                                 f"got {len(header)} starting {', '.join(header[:3])}")  # fmt: skip
        if fresh:
            path.write_bytes(b"")
        self._file = path.open("ab", buffering=0)  # appending: always after the last row
        self._good = self._file.seek(0, os.SEEK_END)  # the end of the last complete row
        self._pending: list[list[str]] = [list(columns)] if fresh else []

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._pending.extend([_cell(r.get(c)) for c in self.columns] for r in rows)

    def flush(self) -> None:
        if not self._pending:
            return
        buf = io.StringIO()
        csv.writer(buf).writerows(self._pending)
        data = buf.getvalue().encode("utf-8")
        write_all(self._file, data, self._good)
        self._good += len(data)
        self._pending = []

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._file.close()


def write_all(f: Any, data: bytes, good: int) -> None:
    """Write ``data`` to the unbuffered file ``f`` (opened for appending); where a write fails
    (``OSError``: a full disk, a quota, an I/O error) the file is cut back to ``good`` bytes,
    what it held before, and the error raised."""
    view = memoryview(data)
    try:
        while view:
            n = f.write(view)
            view = view[n:]
    except OSError:
        try:
            os.ftruncate(f.fileno(), good)
            f.seek(good)  # (a file not opened for appending would go on past a hole)
        except OSError as e:
            logger.error("%s: could not cut a partial write back: %s", f.name, e)
        raise


#: While a writer runs, the rows of ``series.parquet`` are closed Parquet files in the folder
#: ``series.parquet.parts/`` beside it (one per flush, every 64 merged into one); closing the
#: writer merges them into ``series.parquet`` and removes the folder. A killed writer's folder
#: is readable as it is (``pyarrow.parquet.read_table(folder)``) and :func:`finish_parquet`
#: (``loopline recover``, or the daemon's next output worker) merges it.
PARTS_SUFFIX = ".parts"
_COMPACT = 64  # parts merged into one file, so that a long run leaves few files
_WRITER = "_writer.json"  # "_": pyarrow's dataset discovery skips it


def parquet_parts(path: str | Path) -> Path:
    """The parts folder of the Parquet file ``path`` (see :data:`PARTS_SUFFIX`)."""
    return Path(f"{path}{PARTS_SUFFIX}")


def _arrow_schema(spec: tuple[tuple[str, str, str], ...]):
    import pyarrow as pa

    types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    return pa.schema([pa.field(c, types[t]) for c, t, _ in spec])


def _part_files(folder: Path) -> list[Path]:
    """A parts folder's files in row order; parts that a merged file already holds (left by a
    merge that was cut short) are left out."""
    merged, single = [], []
    for p in folder.iterdir():
        if m := re.fullmatch(r"c(\d{8})-(\d{8})\.parquet", p.name):
            merged.append((int(m[1]), int(m[2]), p))
        elif m := re.fullmatch(r"p(\d{8})\.parquet", p.name):
            single.append((int(m[1]), int(m[1]), p))
    keep = merged + [x for x in single if not any(a <= x[0] <= b for a, b, _ in merged)]
    return [p for *_, p in sorted(keep)]


def _merge(files: list[Path], out: Path, schema) -> int:
    """Write the rows of ``files`` to ``out`` (atomically); the number of rows."""
    import pyarrow.parquet as pq

    tmp = out.with_name(f"_{out.name}.tmp")
    n = 0
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            for f in files:
                t = pq.read_table(f, schema=schema)
                w.write_table(t)
                n += t.num_rows
        os.replace(tmp, out)
    except BaseException:  # a full disk: the parts stay as they were, no partial file
        tmp.unlink(missing_ok=True)
        raise
    return n


def finish_parquet(path: str | Path, *, spec: tuple[tuple[str, str, str], ...] | None = None
                   ) -> int | None:  # fmt: skip
    """Merge the parts folder of ``path`` into ``path`` and remove it; the rows, or None when
    there is no parts folder.

    A parts folder beside a complete ``path`` is what a writer killed after its final merge
    left: it is removed. Raises ``ValueError`` while the folder's writer still runs.
    """
    import shutil

    path = Path(path)
    folder = parquet_parts(path)
    if not folder.is_dir():
        return None
    try:
        writer = json.loads((folder / _WRITER).read_text())
    except (OSError, ValueError):
        writer = {}
    if process_alive(writer.get("pid"), writer.get("start")):
        raise ValueError(f"{folder} is still being written (process {writer['pid']} is "
                         "running): it is merged when that process closes it")  # fmt: skip
    files = _part_files(folder)
    if path.exists():  # the merge had finished; only the folder's removal had not
        import pyarrow.parquet as pq

        n = pq.ParquetFile(path).metadata.num_rows
    else:
        if files:
            import pyarrow.parquet as pq

            schema = pq.read_schema(files[0])
        else:
            schema = _arrow_schema(spec or _SERIES)
        n = _merge(files, path, schema)
    shutil.rmtree(folder)
    return n


def recover_parquet(run_dir: str | Path) -> dict[str, int | str]:
    """Merge every Parquet parts folder of a killed writer in ``run_dir``: {file name: rows,
    or "failed: why"} (a folder still being written is named with why)."""
    out: dict[str, int | str] = {}
    for folder in sorted(Path(run_dir).glob(f"*.parquet{PARTS_SUFFIX}")):
        final = folder.with_name(folder.name.removesuffix(PARTS_SUFFIX))
        try:
            n = finish_parquet(final)
        except (OSError, ValueError) as e:
            logger.error("could not merge %s: %s", folder, e)
            out[final.name] = f"failed: {e}"
        else:
            if n is not None:
                logger.warning("merged %s: %d rows (its writer had not closed it)", final, n)
                out[final.name] = n
    return out


class _Parquet:
    """``series.parquet``: a fixed schema from TABLES, written crash-safe in parts (see
    :data:`PARTS_SUFFIX`): every flush is a closed file of ``flush_rows`` rows."""

    def __init__(self, path: Path, spec: tuple[tuple[str, str, str], ...]) -> None:
        import shutil

        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self._pq = pa, pq
        self.path = path
        self.spec = spec
        self.schema = _arrow_schema(spec)
        self.folder = parquet_parts(path)
        if self.folder.exists():  # an earlier writer of this name (the file is replaced)
            logger.warning("%s: left by an earlier writer; replaced", self.folder)
            shutil.rmtree(self.folder)
        path.unlink(missing_ok=True)  # replaced, as a new file of the same name always was
        self.folder.mkdir()
        (self.folder / _WRITER).write_text(json.dumps(writer_record()) + "\n")
        self.seq = 0

    def write(self, rows: list[Mapping[str, Any]]) -> None:
        pa = self._pa
        data = {}
        for c, t, _ in self.spec:
            vals = [json_safe(r.get(c)) for r in rows]
            if t == "str":
                vals = [None if v is None else str(v) for v in vals]
            else:
                vals = [None if v is None or isinstance(v, str) else (int(v) if t == "int"
                        else float(v)) for v in vals]  # fmt: skip
            data[c] = pa.array(vals, type=self.schema.field(c).type)
        part = self.folder / f"p{self.seq:08d}.parquet"
        tmp = self.folder / f"_{part.name}.tmp"
        try:
            self._pq.write_table(pa.Table.from_pydict(data, schema=self.schema), tmp)
            os.replace(tmp, part)  # a part is whole or absent, whenever the writer is killed
        except BaseException:  # a full disk: no partial part is left (the rows stay pending)
            tmp.unlink(missing_ok=True)
            raise
        self.seq += 1
        if self.seq % _COMPACT == 0:
            first = self.seq - _COMPACT
            parts = [self.folder / f"p{k:08d}.parquet" for k in range(first, self.seq)]
            try:
                _merge(parts, self.folder / f"c{first:08d}-{self.seq - 1:08d}.parquet",
                       self.schema)  # fmt: skip
            except OSError as e:  # the parts stay; close() merges them all
                logger.warning("%s: parts not merged: %s", self.folder, e)
            else:
                for p in parts:
                    p.unlink()

    def close(self) -> None:
        import shutil

        _merge(_part_files(self.folder), self.path, self.schema)
        shutil.rmtree(self.folder)


class RunTables:
    """Appends rows to the run folder's tables (see the module docstring).

    Parameters
    ----------
    folder : path
        Run folder (created).
    parquet : str or None
        File name of the Parquet copy of ``series.csv`` (``"series.parquet"``; a later part of
        a daemon run ``"series.1.parquet"``), or None for none.
    append : bool
        Continue CSV files already in the folder (their header must be this layout's) instead
        of replacing them.
    flush_rows : int
        Series rows per Parquet row group and per flush of the CSV files to disk.
    csv : bool
        Write the CSV files (the daemon's ``output.csv``; False leaves only the Parquet copy).
    """

    def __init__(self, folder: str | Path, *, parquet: str | None = None, append: bool = False,
                 flush_rows: int = 64, csv: bool = True) -> None:  # fmt: skip
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_rows = int(flush_rows)
        self._tables: dict[str, _Csv] = {}
        try:
            for name, spec in {**TABLES, **EVENT_TABLES}.items() if csv else ():
                self._tables[name] = _Csv(self.folder / name, tuple(c for c, _, _ in spec),
                                          append=append)  # fmt: skip
        except BaseException:
            for t in self._tables.values():
                t.close()
            raise
        if parquet and importlib.util.find_spec("pyarrow") is None:  # an optional extra
            logger.warning("%s not written: it needs pyarrow (pip install 'loopline[parquet]'); "
                           "series.csv has the same rows", parquet)  # fmt: skip
            parquet = None
        self._parquet = _Parquet(self.folder / parquet, _SERIES) if parquet else None
        self._pending: list[Mapping[str, Any]] = []  # series rows not yet in the Parquet file
        self._counts = dict.fromkeys({**TABLES, **EVENT_TABLES}, 0)
        self.closed = False

    @property
    def counts(self) -> dict[str, int]:
        """Rows appended per table (this writer only)."""
        return dict(self._counts)

    def append(self, *, series: Mapping[str, Any] | None = None,
               tracks: Iterable[Mapping[str, Any]] = (), pairs: Iterable[Mapping[str, Any]] = (),
               track_summary: Iterable[Mapping[str, Any]] = (),
               alarms: Iterable[Mapping[str, Any]] = ()) -> None:  # fmt: skip
        """Append one frame's rows (any table may be left out)."""
        for name, rows in (("series.csv", [] if series is None else [series]),
                           ("tracks.csv", tracks), ("pairs.csv", pairs),
                           ("track_summary.csv", track_summary),
                           ("alarms.csv", alarms)):  # fmt: skip
            rows = list(rows)
            self._counts[name] += len(rows)
            if name in self._tables:
                self._tables[name].write(rows)
        if series is not None and self._parquet is not None:
            self._pending.append(series)
        if series is not None and self._counts["series.csv"] % self.flush_rows == 0:
            self.flush()

    def flush(self) -> None:
        """Everything appended so far to disk (a Parquet row group of the pending rows)."""
        for t in self._tables.values():
            t.flush()
        if self._parquet is not None and self._pending:
            self._parquet.write(self._pending)  # a failed write keeps them pending
            self._pending = []

    def close(self) -> None:
        """Flush and close every file; where that fails (a full disk: the first ``OSError`` is
        raised) every file is still closed, each ending with its last complete row, and the
        Parquet parts stay for :func:`finish_parquet`."""
        if self.closed:
            return
        self.closed = True
        errors: list[OSError] = []
        for close in [*(t.close for t in self._tables.values()), self._close_parquet]:
            try:
                close()
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def _close_parquet(self) -> None:
        if self._parquet is not None:
            try:
                if self._pending:
                    self._parquet.write(self._pending)
                    self._pending = []
            finally:
                self._parquet.close()


def write_summary(folder: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` atomically with ``schema_version`` (NaN → null); its path."""
    path = Path(folder) / "summary.json"
    body = {"schema_version": SCHEMA_VERSION, **json_safe(dict(summary))}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", "utf-8")
    os.replace(tmp, path)
    return path
