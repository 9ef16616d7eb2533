"""The Python API, for notebooks and scripts: analyse, open a run, detect and measure frames.

Everything here is also reachable as ``loopline.<name>`` (imported on first use, so that
``import loopline`` stays fast):

=======================  ====================================================================
:func:`analyze`          a video, stack, DM file, image folder or synthetic dataset → a
                         :class:`Run` (the run folder of ``loopline analyze``)
:func:`open_run`         an existing run folder (``loopline analyze`` or ``loopline serve``)
:class:`Run`             its tables as pandas DataFrames, ``summary.json``, the analysed
                         frames, lines and loops per frame
:class:`Engine`          a detection model for one frame or a batch → ``Detections``
:func:`measure_frame`    one frame's ``Detections`` → a ``FrameResult`` (lines, loops, pile-ups)
:func:`live`             the results a running ``loopline serve`` publishes, frame by frame
:func:`loopline.to_napari`  napari layer data of a run (from :mod:`loopline.export.napari`)
:func:`loopline.to_hspy`    a HyperSpy signal file of a run (from :mod:`loopline.export.hyperspy`)
=======================  ====================================================================

Examples
--------
>>> import loopline
>>> run = loopline.analyze("data/pileup-video", model="truth")      # doctest: +SKIP
>>> run.series[["frame", "time_s", "n_dislocations", "mean_spacing_nm"]]  # doctest: +SKIP
>>> run.lines(frame=0)[["track_id", "x0_px", "y0_px", "x1_px", "y1_px"]]  # doctest: +SKIP

The README's *Python API* section runs these on a synthetic video (``tests/test_api.py``
executes its code blocks).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from .analysis.container import FrameResult
    from .analysis.sources import Frame
    from .calibration import Calibration
    from .engines.base import Detections
    from .viewers.stream import Message

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RUNS",
    "Engine",
    "Run",
    "analyze",
    "ellipse_polygon",
    "live",
    "measure_frame",
    "open_run",
]

#: Where :func:`analyze` writes a run when no ``out`` is given: ``runs/<input stem>`` below
#: the current folder (``-2``, ``-3``, ... appended when that folder already holds files).
DEFAULT_RUNS = Path("runs")


# --------------------------------------------------------------------------------- Run
class Run:
    """A run folder: the tables of ``loopline analyze`` / ``loopline serve`` and their input.

    The tables (README: *Run folder*) are read on first use and kept: ``series`` (one row per
    analysed frame), ``tracks`` (one row per line or loop and frame), ``pairs`` (neighbouring
    lines of a pile-up and frame) and ``track_summary`` (one row per ended track), as pandas
    DataFrames with the columns and units of the CSV files (an empty cell is NaN).

    Parameters
    ----------
    path : str or Path
        The run folder (it holds ``summary.json`` and ``series.csv``).

    Attributes
    ----------
    path : Path
        The run folder.

    Examples
    --------
    >>> run = loopline.open_run("runs/pileup-video")                     # doctest: +SKIP
    >>> run.summary["frames"], run.nm_per_px                             # doctest: +SKIP
    (300, 2.0)
    >>> run.tracks.query("kind == 'loop'").groupby("track_id").major_nm.mean()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if not (p / "summary.json").is_file() or not (p / "series.csv").is_file():
            raise FileNotFoundError(f"expected a run folder holding summary.json and series.csv, "
                                    f"got {p}")  # fmt: skip
        self.path = p

    def __repr__(self) -> str:
        s = self.summary
        return (f"Run({str(self.path)!r}, frames={s.get('frames')}, model={s.get('model')!r}, "
                f"nm_per_px={self.nm_per_px})")  # fmt: skip

    # -- what the folder holds ---------------------------------------------------------
    @cached_property
    def summary(self) -> dict[str, Any]:
        """``summary.json`` as a dict (counts, calibration, model, input; see the README)."""
        return json.loads((self.path / "summary.json").read_text("utf-8"))

    def _table(self, name: str) -> pd.DataFrame:
        import pandas as pd

        from .io.runfolder import TABLES

        spec = TABLES[f"{name}.csv"]
        f = self.path / f"{name}.csv"
        if not f.is_file() or f.stat().st_size == 0:
            return pd.DataFrame({c: pd.Series(dtype=_DTYPES[t]) for c, t, _ in spec})
        # a series id such as "NA" stays a string: only empty cells are missing values
        strings = {c: str for c, t, _ in spec if t == "str"}
        return pd.read_csv(f, dtype=strings, keep_default_na=False, na_values=[""])

    @cached_property
    def series(self) -> pd.DataFrame:
        """``series.csv``: one row per analysed frame (counts, mean lengths, spacings, ...)."""
        return self._table("series")

    @cached_property
    def tracks(self) -> pd.DataFrame:
        """``tracks.csv``: one row per dislocation line or loop and analysed frame."""
        return self._table("tracks")

    @cached_property
    def pairs(self) -> pd.DataFrame:
        """``pairs.csv``: one row per pair of neighbouring lines of a pile-up and frame."""
        return self._table("pairs")

    @cached_property
    def track_summary(self) -> pd.DataFrame:
        """``track_summary.csv``: one row per track (velocity, growth, diffusion)."""
        return self._table("track_summary")

    @property
    def nm_per_px(self) -> float | None:
        """Pixel size, nm/px: the run's calibration, else the tables'; None when unknown."""
        v = (self.summary.get("calibration") or {}).get("nm_per_px")
        if v is None and "nm_per_px" in self.series:
            col = self.series["nm_per_px"].dropna()
            v = float(col.iloc[0]) if len(col) else None
        return None if v is None or not math.isfinite(float(v)) else float(v)

    @property
    def series_ids(self) -> list[str]:
        """The series (acquisitions) in the run, in order of appearance."""
        return [str(s) for s in dict.fromkeys(self.series["series"].tolist())]

    @property
    def input(self) -> Path | None:
        """The analysed file or folder as ``summary.json`` records it (``analyze``, or
        ``serve --from FILE``); None for a camera run."""
        s = self.summary
        if s.get("input"):
            return Path(s["input"])
        src = s.get("source") or {}
        if isinstance(src, dict) and src.get("protocol") == "file" and src.get("endpoint"):
            return Path(src["endpoint"])
        return None

    # -- frames and geometry -------------------------------------------------------------
    def frames(self) -> Iterator[Frame]:
        """The analysed frames, read again from the recorded input, in ``series`` order.

        Yields :class:`loopline.analysis.sources.Frame` records (``index``, grey ``image``
        (H, W), ``time_s`` on the file's own axis, ``name``); only frames with a row in
        ``series`` (``max_frames`` and frames a live run skipped are left out).

        Raises
        ------
        FileNotFoundError
            The summary records no input (a camera run keeps no frames but ``raw/``), or
            the input is gone.
        """
        from .analysis.sources import open_source

        src = self.input
        if src is None:
            raise FileNotFoundError(f"{self.path}/summary.json records no input file (a camera "
                                    "run); expected 'input' or a file source")  # fmt: skip
        if not src.exists():
            raise FileNotFoundError(f"the run's input {src} does not exist any more")
        wanted = set(self.series["frame"].astype(int).tolist())
        if not wanted:
            return
        last = max(wanted)
        for fr in open_source(src, sequence=int(self.summary.get("sequence") or 0)):
            if fr.index in wanted:
                yield fr
            if fr.index >= last:
                break

    def frame_stack(self) -> np.ndarray:
        """The analysed frames as one (T, H, W) array (see :meth:`frames`)."""
        imgs = [fr.image for fr in self.frames()]
        if not imgs:
            raise ValueError(f"{self.path}: expected analysed frames, got none")
        return np.stack(imgs)

    def _rows(self, kind: str, frame: int | None, series: str | None) -> pd.DataFrame:
        t = self.tracks
        sel = t["kind"] == kind
        if frame is not None:
            sel &= t["frame"] == int(frame)
        if series is not None:
            sel &= t["series"] == str(series)
        return t.loc[sel].reset_index(drop=True)

    def lines(self, frame: int | None = None, *, series: str | None = None) -> pd.DataFrame:
        """Dislocation lines (``tracks`` rows of kind ``line``) with their centre lines.

        ``points`` holds each line's centre line, a (K, 2) array of (x, y) px ordered from one
        end to the other (``tracks.csv``'s ``points_px``: the measured points thinned to
        0.25 px); ``x0_px, y0_px, x1_px, y1_px`` are its ends. A run written before
        ``points_px`` existed keeps only each line's centre, arc length and glide direction:
        its ``points`` are then the straight segment of that length through the centre,
        across the glide direction (:func:`line_segments`; it overshoots a bowed line's ends).

        Parameters
        ----------
        frame : int, optional
            One frame index; all frames when None.
        series : str, optional
            One series of a multi-series run.
        """
        import pandas as pd

        from .io.runfolder import read_points

        d = self._rows("line", frame, series)
        x0, y0, x1, y1 = line_segments(d)
        cells = d["points_px"] if "points_px" in d.columns else [None] * len(d)
        points = []
        for i, cell in enumerate(cells):
            p = np.array(read_points(cell), float).reshape(-1, 2)
            if len(p) < 2:
                p = np.array([[x0[i], y0[i]], [x1[i], y1[i]]])
            points.append(p)
        ends = np.array([[*p[0], *p[-1]] for p in points]).reshape(-1, 4)
        return d.assign(points=pd.Series(points, index=d.index, dtype=object),
                        x0_px=ends[:, 0], y0_px=ends[:, 1], x1_px=ends[:, 2],
                        y1_px=ends[:, 3])  # fmt: skip

    def loops(self, frame: int | None = None, *, series: str | None = None) -> pd.DataFrame:
        """Loops (``tracks`` rows of kind ``loop``): ellipse centre ``x_px, y_px``, full axes
        ``major_px, minor_px``, major-axis angle to x ``angle_deg`` (image coordinates, y
        down), as fitted to the mask; :func:`ellipse_polygon` draws one."""
        return self._rows("loop", frame, series)


_DTYPES = {"int": "Int64", "float": "float64", "str": "object"}


def line_segments(lines: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Ends ``(x0, y0, x1, y1)`` (px) of each line's straight segment of its length through its
    centre, across its glide direction: what a ``tracks`` row says of a line without its
    ``points_px`` (see :meth:`Run.lines`).

    A line without a glide direction (no pile-up) is drawn horizontally; one without a
    length is a point.
    """
    n = len(lines)
    if n == 0:
        z = np.zeros(0)
        return z, z, z, z
    cx = lines["x_px"].to_numpy(float)
    cy = lines["y_px"].to_numpy(float)
    half = np.nan_to_num(lines["length_px"].to_numpy(float)) / 2.0
    gx = lines["glide_x"].to_numpy(float)
    gy = lines["glide_y"].to_numpy(float)
    none = ~(np.isfinite(gx) & np.isfinite(gy)) | (np.hypot(gx, gy) == 0)
    gx, gy = np.where(none, 0.0, gx), np.where(none, 1.0, gy)
    norm = np.hypot(gx, gy)
    dx, dy = -gy / norm, gx / norm  # across the glide direction
    return cx - half * dx, cy - half * dy, cx + half * dx, cy + half * dy


def ellipse_polygon(x: float, y: float, major: float, minor: float, angle_deg: float,
                    n: int = 48) -> np.ndarray:  # fmt: skip
    """``n`` points (x, y) px on an ellipse of full axes ``major``, ``minor`` whose major axis
    makes ``angle_deg`` with x (image coordinates, as ``tracks.csv`` gives loops).

    Examples
    --------
    >>> p = ellipse_polygon(10.0, 20.0, 8.0, 4.0, 90.0, n=4)
    >>> np.round(p, 6).tolist()
    [[10.0, 24.0], [8.0, 20.0], [10.0, 16.0], [12.0, 20.0]]
    """
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    a, b = major / 2.0, minor / 2.0
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    ex, ey = a * np.cos(t), b * np.sin(t)
    return np.stack([x + c * ex - s * ey, y + s * ex + c * ey], axis=1)


def open_run(path: str | Path) -> Run:
    """Open a run folder written by ``loopline analyze``, ``loopline serve`` or :func:`analyze`.

    Examples
    --------
    >>> run = loopline.open_run("runs/pileup-video")                     # doctest: +SKIP
    >>> run.series.plot(x="time_s", y="mean_spacing_nm")                 # doctest: +SKIP

    Raises
    ------
    FileNotFoundError
        ``path`` holds no ``summary.json`` and ``series.csv``.
    """
    return Run(path)


# ----------------------------------------------------------------------------- analyze
def _default_out(source: Path) -> Path:
    stem = source.stem if source.is_file() else source.name
    out = DEFAULT_RUNS / (stem or "run")
    k = 2
    while out.exists() and any(out.iterdir()):
        out = DEFAULT_RUNS / f"{stem}-{k}"
        k += 1
    return out


def _options(model: str, options: dict[str, Any]):
    from .analysis.analyze import AnalyzeOptions
    from .analysis.measure import MeasureOptions

    own = {f.name for f in dataclasses.fields(AnalyzeOptions)} - {"model", "measure"}
    meas = {f.name for f in dataclasses.fields(MeasureOptions)}
    unknown = sorted(set(options) - own - meas)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; expected one of "
                        f"{', '.join(sorted(own | meas))}")  # fmt: skip
    m = {k: v for k, v in options.items() if k in meas}
    kw = {k: v for k, v in options.items() if k in own}
    return AnalyzeOptions(model=str(model), measure=MeasureOptions(**m), **kw)


def _calibration(calibration: Calibration | str | Path | None, nm_per_px: float | None,
                 fps: float | None) -> Calibration | None:  # fmt: skip
    from .calibration import Calibration, load_calibration

    cal = calibration
    if isinstance(cal, str | Path):
        cal = load_calibration(cal)
    elif cal is not None and not isinstance(cal, Calibration):
        raise TypeError(f"calibration must be a Calibration or a profile path, got "
                        f"{type(cal).__name__}")  # fmt: skip
    changes = {k: v for k, v in (("nm_per_px", nm_per_px), ("fps", fps)) if v is not None}
    if not changes:
        return cal
    if "fps" in changes and cal is not None and cal.frame_times_s is not None:
        raise ValueError("give fps or a calibration with frame_times_s, not both")
    return (cal or Calibration(source="api")).replace(**changes)


def analyze(
    source: str | Path,
    out: str | Path | None = None,
    model: str = "defects",
    *,
    nm_per_px: float | None = None,
    fps: float | None = None,
    calibration: Calibration | str | Path | None = None,
    **options: Any,
) -> Run:
    """Analyse a video, TIFF stack, DM3/DM4 or EMD file, image folder or synthetic dataset.

    The same analysis as ``loopline analyze SOURCE --out OUT --model MODEL`` (detection,
    measurement, pile-ups, tracking), into a run folder with the same tables.

    Parameters
    ----------
    source : str or Path
        The input (see ``loopline analyze --help``).
    out : str or Path, optional
        The run folder. None: ``runs/<stem of source>`` below the current folder, with
        ``-2``, ``-3``, ... appended when that folder already holds files (see
        :data:`DEFAULT_RUNS`); a run is kept, never written to a temporary folder.
    model : str
        ``"defects"`` (the shipped model, default), another shipped name, a model file,
        ``"ridge"`` (classical, no weights) or ``"truth"`` (a labelled dataset's own labels).
    nm_per_px, fps : float, optional
        Pixel size (nm/px) and frame rate (frames/s); they override the calibration's and
        the file's own (a DM/TIFF pixel size, a video's rate).
    calibration : Calibration or path, optional
        A calibration profile (TOML/JSON, as ``--calibration``) or a
        :class:`loopline.calibration.Calibration`.
    **options
        Fields of :class:`loopline.analysis.analyze.AnalyzeOptions` (``imgsz``, ``conf``,
        ``device``, ``engine``, ``inference``, ``batch``, ``max_frames``, ...) and of
        :class:`loopline.analysis.measure.MeasureOptions` (``min_score``,
        ``max_spacing_px``, ...).

    Returns
    -------
    Run
        The run folder, opened.

    Raises
    ------
    TypeError
        An option that neither options class has.
    FileNotFoundError
        No such input; ``model="truth"`` on frames without labels.

    Examples
    --------
    >>> run = loopline.analyze("movie.dm4", model="defects")             # doctest: +SKIP
    >>> run = loopline.analyze("frames/", "runs/a", nm_per_px=0.8, fps=25.0,
    ...                        model="ridge", max_frames=10)             # doctest: +SKIP
    """
    from .analysis.analyze import analyze as run_analysis

    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    opt = _options(model, options)
    cal = _calibration(calibration, nm_per_px, fps)
    dest = Path(out) if out is not None else _default_out(src)
    run_analysis(src, dest, calibration=cal, options=opt)
    return Run(dest)


# ------------------------------------------------------------------ one frame at a time
class Engine:
    """A detection model for frames in memory: one grey frame (H, W) or a batch.

    A thin wrapper over :func:`loopline.engines.create_engine` (the same arguments);
    the model is loaded on the first call.

    Parameters
    ----------
    model : str or Path
        ``"defects"`` (default, shipped), another shipped name, a model file, or ``"ridge"``.
    **opts
        ``engine`` (runtime), ``inference``, ``imgsz``, ``conf``, ``iou``, ``device``, ...
        (see :func:`~loopline.engines.create_engine`).

    Examples
    --------
    >>> eng = loopline.Engine("ridge")
    >>> det = eng(np.zeros((64, 64), np.uint8))
    >>> det.masks.shape[1:], len(det)
    ((64, 64), 0)
    """

    def __init__(self, model: str | Path = "defects", **opts: Any) -> None:
        from .engines import create_engine

        self.model = model
        self.engine = create_engine(model, **opts)

    def __repr__(self) -> str:
        return f"loopline.Engine({self.engine!r})"

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray], *,
                 nm_per_px: float | None = None) -> Detections | list[Detections]:  # fmt: skip
        """Detections of one frame (a 2-D array), or a list of them for a batch (a list of
        frames or a (T, H, W) array). ``nm_per_px``: the frames' pixel size, used where the
        model was trained at a known one (they are resampled to it)."""
        single = isinstance(frames, np.ndarray) and frames.ndim == 2
        batch = [frames] if single else [np.asarray(f) for f in frames]
        for f in batch:
            if f.ndim != 2:
                raise ValueError(f"expected grey frames (H, W), got shape {f.shape}")
        px = nm_per_px if getattr(self.engine, "model_nm_per_px", None) else None
        dets = self.engine(batch, nm_per_px=px)
        return dets[0] if single else dets


def measure_frame(
    detections: Detections,
    *,
    index: int = 0,
    time_s: float = 0.0,
    nm_per_px: float | None = None,
    calibration: Calibration | None = None,
    **options: Any,
) -> FrameResult:
    """Measure one frame's detections: lines (length, curvature), loops (ellipses), pile-ups
    (glide direction, spacings). Untracked: track ids are -1.

    Wraps :func:`loopline.analysis.measure.measure_frame` with defaults for one frame.

    Parameters
    ----------
    detections : Detections
        From :class:`Engine` (or :class:`loopline.engines.base.Detections` made by hand).
    index, time_s : int, float
        Frame number and time (s).
    nm_per_px : float, optional
        Pixel size; overrides the calibration's. Without one, nm values are NaN.
    calibration : Calibration, optional
    **options
        Fields of :class:`loopline.analysis.measure.MeasureOptions`.

    Examples
    --------
    >>> from loopline.engines.base import Detections
    >>> m = np.zeros((1, 64, 64), bool); m[0, 30:33, 8:56] = True   # one straight line
    >>> det = Detections(m, np.array([[8, 30, 56, 33]], np.float32),
    ...                  np.ones(1, np.float32), np.zeros(1, np.int64))
    >>> r = loopline.measure_frame(det, nm_per_px=2.0)
    >>> len(r.line_length_px), bool(44 < r.line_length_px[0] < 50)
    (1, True)
    """
    from .analysis.measure import MeasureOptions
    from .analysis.measure import measure_frame as measure
    from .calibration import Calibration

    cal = calibration or Calibration(source="api")
    if nm_per_px is not None:
        cal = cal.replace(nm_per_px=nm_per_px)
    return measure(detections, index=index, time_s=time_s, calibration=cal,
                   options=MeasureOptions(**options))  # fmt: skip


# ------------------------------------------------------------------------------- live
def live(endpoint: str = "tcp://127.0.0.1:5556", timeout: float = 10.0, *,
         max_frames: int | None = None, **subscriber: Any) -> Iterator[Message]:  # fmt: skip
    """Iterate over the frame results a running ``loopline serve`` publishes.

    Uses the viewers' subscriber (:class:`loopline.viewers.stream.ResultSubscriber`) and
    their decoder (:func:`loopline.viewers.schema.to_view`): each item is a
    :class:`~loopline.viewers.stream.Message` with ``header`` (the published frame message,
    :mod:`loopline.analysis.message`: the frame's ``series.csv`` row, its ``tracks.csv`` rows
    with outlines ``contour_px`` and centre lines ``points_px``, its ``pairs.csv`` rows),
    ``view`` (the decoded
    :class:`~loopline.viewers.schema.FrameView`: ``lines``, ``loops``, ``pileups``, nm
    values) and ``jpeg`` (the bare frame, or None; the overlay is drawn by
    :func:`loopline.viewers.overlay.draw_overlay`). Latest wins, as in the viewers: a
    loop body slower than the daemon sees the newest frame, not every frame (gaps in
    ``header["seq"]``); the run folder has every frame.

    Parameters
    ----------
    endpoint : str
        The daemon's ``publish.endpoint``.
    timeout : float
        Seconds to wait for the next frame; the iteration ends when none comes.
    max_frames : int, optional
        End after this many frames.
    **subscriber
        ``curve_server_key``, ``curve_secret_key``, ``stale_s``, ``hwm`` (see
        :class:`~loopline.viewers.stream.ResultSubscriber`).

    Examples
    --------
    >>> for msg in loopline.live("tcp://127.0.0.1:5556", timeout=5):   # doctest: +SKIP
    ...     v = msg.view
    ...     print(v.frame, v.n_dislocations, [p.spacings_nm for p in v.pileups])
    """
    from .viewers.stream import ResultSubscriber

    n = 0
    with ResultSubscriber(endpoint, topic=b"", **subscriber) as sub:
        seq = 0
        while max_frames is None or n < max_frames:
            msg = sub.wait(seq, timeout)
            sub.maybe_raise()
            if msg is None:
                logger.info("no frame from %s for %.1f s: stopping", endpoint, timeout)
                return
            seq = msg.seq
            n += 1
            yield msg
