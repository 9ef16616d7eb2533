"""Offline analysis of a whole input: frames → detections → measurement → tracking → files.

The same per-frame and across-frame stages as the live daemon, driven by a file source, into
the same run folder (:mod:`loopline.io.runfolder`): ``loopline analyze X`` and
``loopline serve --from X`` write the same tables.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..calibration import Calibration, calibration_from_truth, check_frame_times, frame_time_s
from ..io.frames import series_id
from .alarms import AlarmConfig
from .evaluate import evaluate_against_truth
from .measure import MeasureOptions, measure_frame
from .series import SeriesWriter
from .sources import Frame, FrameSource, open_source, truth_detections
from .tracking import OnlineTracker

logger = logging.getLogger(__name__)

__all__ = ["AnalyzeOptions", "analyze", "resolve_calibration"]


@dataclass(frozen=True)
class AnalyzeOptions:
    """Options of :func:`analyze` (see ``loopline analyze --help``).

    ``model``: the shipped ``defects`` by default, ``ridge``, a model file, or ``truth`` (the
    label masks of a labelled dataset). ``imgsz``, ``conf``, ``device``: the engine's network
    input size (px), score threshold (one, or one per class: dislocation, loop) and device;
    None: the model's own (512 px; 0.15 for lines and 0.25 for loops, shipped; cpu).
    ``times_from_names``: an image folder's frame times from its file names (see
    :func:`loopline.calibration.frame_times_from_names`; "" = the last number of each name as
    the frame number, with the calibration's ``fps``); None: off. ``alarms``: the alarm
    rules whose events go to ``alarms.csv`` (:mod:`loopline.analysis.alarms`; None: none).
    """

    model: str = "defects"
    engine: str | None = None
    imgsz: int | None = None
    conf: float | tuple[float, ...] | None = None
    device: str | None = None
    times_from_names: str | None = None
    inference: str = "tiles"
    tile_overlap: int = 64
    line_snap: float | None = None
    line_dedupe: float | None = None
    loop_vote: bool | None = None
    sequence: int = 0
    search_range_px: float = 8.0
    memory: int = 3
    drift: str = "phase"
    window: int = 7
    batch: int = 1
    max_frames: int | None = None
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    alarms: AlarmConfig | None = field(default_factory=AlarmConfig)


def resolve_calibration(source: FrameSource, calibration: Calibration | None) -> Calibration:
    """Fill what the profile leaves open from the source (truth.json, file metadata)."""
    if source.truth is not None and calibration is None:
        return calibration_from_truth(source.path)
    cal = calibration or Calibration(source="default")
    changes: dict[str, Any] = {}
    if cal.nm_per_px is None and source.nm_per_px is not None:
        changes["nm_per_px"] = source.nm_per_px
    if cal.fps is None and cal.frame_times_s is None and source.fps is not None:
        changes["fps"] = source.fps
    return cal.replace(**changes) if changes else cal


def _frame_time(fr: Frame, cal: Calibration | None, warned: list[bool]) -> float:
    t = frame_time_s(cal, fr.index, fr.time_s)
    if t is None:
        if not warned[0]:
            logger.warning("no frame rate or frame times: time_s counts frames (1 frame = 1 s); "
                           "give --fps or a calibration file")  # fmt: skip
            warned[0] = True
        t = float(fr.index)
    return float(t)


def _make_detector(opt: AnalyzeOptions, nm_per_px: float | None = None, *,
                   threads: int | None = None):
    """A callable list[Frame] -> list[Detections] (frames of ``nm_per_px`` nm, if known);
    ``threads``: the engine's threads where its runtime takes a number (default every core)."""
    if opt.model == "truth":

        def detect(frames: list[Frame]):
            out = []
            for fr in frames:
                if fr.labels is None:
                    raise FileNotFoundError(
                        f"--model truth needs a label file for every frame; {fr.name} has "
                        "none (expected labels/<stem>.txt beside images/); without --model the "
                        "shipped model (defects) measures unlabelled frames"
                    )
                t0 = time.perf_counter()
                det = truth_detections(fr.labels, fr.image.shape[:2])
                det.timings_ms["inference"] = (time.perf_counter() - t0) * 1e3
                out.append(det)
            return out

        return detect
    from ..engines import create_engine, live_runtime

    point = {k: v for k, v in (("line_snap", opt.line_snap), ("line_dedupe", opt.line_dedupe),
                               ("imgsz", opt.imgsz), ("conf", opt.conf), ("device", opt.device),
                               ("loop_vote", opt.loop_vote))
             if v is not None}  # None: the model's own operating point
    engine = create_engine(opt.model, engine=opt.engine or live_runtime(opt.model),
                           inference=opt.inference,
                           tile_overlap=opt.tile_overlap, **point)  # fmt: skip
    if threads is not None and hasattr(engine, "threads"):  # read when it loads, lazily
        engine.threads = int(threads)
    # resampled to the model's pixel size only where the model card gives one
    px = nm_per_px if getattr(engine, "model_nm_per_px", None) else None

    def detect(frames: list[Frame]):
        t0 = time.perf_counter()
        dets = engine([fr.image for fr in frames], nm_per_px=px)
        per_frame = (time.perf_counter() - t0) * 1e3 / max(len(frames), 1)
        for d in dets:  # as the daemon's engine worker times it
            d.timings_ms["engine_total"] = per_frame
        return dets

    return detect


def _times_from_names(source: FrameSource, opt: AnalyzeOptions,
                      cal: Calibration) -> tuple[float, ...]:  # fmt: skip
    """An image folder's frame times from its file names (``--times-from-names``)."""
    from ..calibration import frame_times_from_names
    from ..io.frames import open_frames

    if source.kind != "folder":
        raise ValueError(f"--times-from-names needs a folder of image files, got {source.kind} "
                         f"input {source.path.name}")  # fmt: skip
    files = open_frames(source.path).files
    times = frame_times_from_names(files, opt.times_from_names or "", fps=cal.fps)
    logger.info("frame times from %d file names: %s = %.4g s ... %s = %.4g s", len(files),
                files[0].name, times[0], files[-1].name, times[-1])  # fmt: skip
    return times


@contextlib.contextmanager
def _nothing_left_on_failure(out: Path) -> Iterator[dict[str, Callable[[], int]]]:
    """On an error before a frame was written, remove the files the run made (and its folder,
    if it made it): no empty tables are left behind looking like a run."""
    before = {p.name for p in out.iterdir()} if out.is_dir() else None
    guard: dict[str, Callable[[], int]] = {"frames": lambda: 0}
    try:
        yield guard
    except BaseException:
        if guard["frames"]() == 0 and out.is_dir():
            for p in out.iterdir():
                if (before is None or p.name not in before) and p.is_file():
                    p.unlink(missing_ok=True)
            if before is None and not any(out.iterdir()):
                out.rmdir()
        raise


def analyze(
    input: str | Path,
    out: str | Path,
    *,
    calibration: Calibration | None = None,
    options: AnalyzeOptions | None = None,
) -> dict[str, Any]:
    """Analyse a video, stack, folder or synthetic dataset into a run folder.

    Writes the run folder's tables (``series.csv``, ``tracks.csv``, ``pairs.csv``,
    ``track_summary.csv``, and ``series.parquet`` where pyarrow is installed; see
    :mod:`loopline.io.runfolder`) and ``summary.json``; with ground truth (a synthetic
    dataset) the summary also holds ``length_re``, ``spacing_re``, ``velocity_re``,
    ``loop_axis_re`` and ``id_switches`` (see ``evaluate.py``). Frame times: the
    calibration's axis where it gives one (a profile, ``--fps``, a synthetic dataset's
    ``truth.json``), else the file's own (:func:`loopline.calibration.frame_time_s`).

    Returns
    -------
    dict
        The summary.
    """
    opt = options or AnalyzeOptions()
    source = open_source(input, sequence=opt.sequence)
    cal = resolve_calibration(source, calibration)
    if cal.frame_times_s is not None:
        check_frame_times(cal.frame_times_s)
    # the time axis: a calibration given here (or a synthetic dataset's), else the file's own
    timing = calibration if calibration is not None else (cal if source.truth else None)
    if opt.times_from_names is not None:  # irregular sampling: times from the file names
        cal = timing = cal.replace(frame_times_s=_times_from_names(source, opt, cal))
    detect = _make_detector(opt, cal.nm_per_px)
    tracker = OnlineTracker(cal, search_range_px=opt.search_range_px, memory=opt.memory,
                            drift=opt.drift)  # fmt: skip
    tracked = []
    warned = [False]
    t_start = time.perf_counter()
    parquet = importlib.util.find_spec("pyarrow") is not None
    with _nothing_left_on_failure(Path(out)) as guard, SeriesWriter(
            out, cal, series=series_id(source.path), window=opt.window, flush_every=0,
            parquet=parquet, alarms=opt.alarms) as writer:  # fmt: skip
        guard["frames"] = lambda: writer.acc.frames
        batch: list[Frame] = []

        def run_batch() -> None:
            for fr, det in zip(batch, detect(batch), strict=True):
                t = _frame_time(fr, timing, warned)
                t0 = time.perf_counter()
                res = measure_frame(det, index=fr.index, time_s=t, calibration=cal,
                                    options=opt.measure)  # fmt: skip
                res = tracker.update(res, fr.image)
                ms = (time.perf_counter() - t0) * 1e3
                writer.append(res, timings_ms={"measure_track": ms})
                if source.truth is not None:
                    tracked.append(res)
            batch.clear()

        for k, fr in enumerate(source):
            if opt.max_frames is not None and k >= opt.max_frames:
                break
            batch.append(fr)
            if len(batch) >= opt.batch:
                run_batch()
        if batch:
            run_batch()
        extra: dict[str, Any] = {
            "command": "analyze", "input": str(source.path), "source_kind": source.kind,
            "model": opt.model, "wall_s": time.perf_counter() - t_start,
        }  # fmt: skip
        if source.truth is not None and source.sequence is not None:
            metrics = evaluate_against_truth(tracked, source.sequence)
            extra.update(metrics)
            logger.info("truth: length_re %.4f spacing_re %.4f velocity_re %.4f loop_axis_re "
                        "%.4f id_switches %d", metrics["length_re"], metrics["spacing_re"],
                        metrics["velocity_re"], metrics["loop_axis_re"],
                        metrics["id_switches"])  # fmt: skip
        summary = writer.close(extra)
    if summary["frames"] == 0:
        logger.warning("%s yielded no frames", input)
    logger.info("analysed %d frames of %s in %.1f s -> %s", summary["frames"], input,
                extra["wall_s"], out)  # fmt: skip
    return summary
