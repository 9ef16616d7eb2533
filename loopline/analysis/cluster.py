"""``loopline analyze --cluster``: the offline analysis spread over a Dask cluster.

The frames of each input are cut into chunks (frame ranges, :data:`DEFAULT_CHUNK` frames by
default). A chunk is the expensive part of :func:`~loopline.analysis.analyze.analyze`, run on
a ``dask.distributed`` worker (:func:`analyze_chunk`): detection (the model is loaded once per
worker process and kept, its runtime threads set from the worker's ``nthreads``),
:func:`~loopline.analysis.measure.measure_frame`, and the stage shift the tracker corrects
drift with (:func:`~loopline.analysis.tracking.frame_shift`), of each frame relative to its
keyframe (the frame at :func:`~loopline.analysis.tracking.keyframe_position`, a fixed
position, so the same as on one machine). For that shift a chunk also reads and measures the
keyframe before its first frame (an overlap of one frame), so no image has to leave the
worker. The client takes the measured frames back (no masks: a
:class:`~loopline.analysis.container.FrameResult` holds lines, loops and pairs only) and
feeds them in frame order to one :class:`~loopline.analysis.tracking.OnlineTracker` and one
:class:`~loopline.analysis.series.SeriesWriter` per input, so that tracks link across chunk
seams and the run folder holds the same rows as a single-machine ``loopline analyze``.

Data: workers open the input by its path (shared storage: the same path on every worker), or,
with ``scatter=True`` (``--scatter``), the client reads the frames and scatters each chunk's
frames to the cluster (no shared storage; ``--model truth`` still reads its label files by
path). Failure: each chunk is retried (``retries=2``; a chunk whose worker died is rerun by
the scheduler); a chunk that still fails is named (input and frame range), the input's tables
are closed where they got to and its ``summary.json`` is *not* written (an old one is
removed), and :class:`ChunkError` is raised (``loopline analyze`` exits with status 2).
Ctrl-C cancels the chunks in flight, likewise leaves no ``summary.json`` for unfinished
inputs, and closes the client (and a ``local:N`` cluster). See ``docs/cluster.md``.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..calibration import Calibration, check_frame_times, frame_time_s
from ..io.frames import open_frames, read_image, series_id
from .analyze import AnalyzeOptions, _make_detector, resolve_calibration
from .container import FrameResult
from .evaluate import evaluate_against_truth
from .measure import measure_frame
from .series import SeriesWriter
from .sources import Frame, FrameSource, open_source
from .tracking import OnlineTracker, frame_shift, keyframe_position

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHUNK",
    "RETRIES",
    "Chunk",
    "ChunkError",
    "ChunkResult",
    "analyze_chunk",
    "analyze_cluster",
    "chunk_ranges",
    "connect",
    "read_frames",
]

DEFAULT_CHUNK = 32  #: frames per chunk
RETRIES = 2  #: tries of a failing chunk after the first

_DETECTORS: dict[tuple, Callable] = {}  # per worker process: models loaded once


def _distributed():
    try:
        import distributed
    except ImportError as e:
        raise RuntimeError(f"--cluster needs dask.distributed, which is not installed ({e}): "
                           "pip install 'loopline[cluster]'") from None  # fmt: skip
    return distributed


class ChunkError(RuntimeError):
    """Chunks failed for good (after their retries); the message names them."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        names = "; ".join(f"{name}: {err}" for name, err in failures)
        super().__init__(f"{len(failures)} chunk(s) failed after their retries, their inputs "
                         f"have no summary.json: {names}")  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    """Frames ``start`` to ``stop`` (exclusive; None: to the end) of one input, by position."""

    input: str
    start: int
    stop: int | None
    sequence: int = 0

    @property
    def name(self) -> str:
        """``clip.avi frames 32-63`` (how errors and the progress bar name it)."""
        end = "end" if self.stop is None else str(self.stop - 1)
        return f"{Path(self.input).name} frames {self.start}-{end}"


@dataclass
class ChunkResult:
    """What a worker sends back: the chunk's frames measured (untracked), in frame order."""

    chunk: Chunk
    results: list[FrameResult]
    shifts: list[tuple[float, float, float] | None]  # vs its keyframe; None: none
    measure_ms: list[float]
    counted_times: bool = False  # some frame had no time: its index was used (1 frame = 1 s)
    worker: str = ""
    wall_s: float = 0.0


@dataclass(frozen=True)
class _Frames:
    """Frames scattered as one datum (a list would be scattered element by element)."""

    frames: tuple[Frame, ...]


def chunk_ranges(n_frames: int, chunk: int, *, open_end: bool = True
                 ) -> list[tuple[int, int | None]]:  # fmt: skip
    """``(start, stop)`` of each chunk of ``n_frames``; the last one open (stop None) where
    ``open_end`` (a video's frame count is the container's estimate). At least one chunk."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1 frames, got {chunk!r}")
    starts = list(range(0, max(n_frames, 1), chunk))
    out: list[tuple[int, int | None]] = [(s, min(s + chunk, n_frames)) for s in starts]
    if open_end:
        out[-1] = (out[-1][0], None)
    return out


def read_frames(source: FrameSource, start: int, stop: int | None) -> list[Frame]:
    """Frames ``start:stop`` (positions) of ``source``, as iterating it would give them.

    Synthetic datasets and image folders read only those files; other sources (videos,
    stacks, DM files) are decoded from their first frame (for long videos prefer
    ``scatter``, which reads the file once).
    """
    if source.kind == "synth" and source.sequence is not None:  # as sources._synth_source
        out = []
        for fr in source.sequence["frames"][start:stop]:
            img = source.path / fr["image"]
            lab = source.path / "labels" / (Path(fr["image"]).stem + ".txt")
            out.append(Frame(int(fr["index"]), read_image(img), float(fr["time_s"]), img.name,
                             lab if lab.is_file() else None))  # fmt: skip
        return out
    if source.kind == "folder":  # as sources.open_source
        ff = open_frames(source.path)
        lab_dir = ff.files[0].parent.parent / "labels"
        out = []
        for i, f in enumerate(ff.files[start:stop], start):
            lab = lab_dir / (f.stem + ".txt")
            out.append(Frame(i, read_image(f), ff.time_of(i), f.name,
                             lab if lab.is_file() else None))  # fmt: skip
        return out
    return list(itertools.islice(source, start, stop))


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return None
    n = getattr(w, "nthreads", None) or getattr(getattr(w, "state", None), "nthreads", None)
    return int(n) if n else None


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _detector(opt: AnalyzeOptions, nm_per_px: float | None) -> Callable:
    """The detector of ``opt``, made once per worker process (engine threads: the worker's)."""
    threads = _worker_threads()
    key = (repr(opt), nm_per_px, threads)
    det = _DETECTORS.get(key)
    if det is None:
        if len(_DETECTORS) >= 4:  # another run's models: let them go
            _DETECTORS.clear()
        det = _DETECTORS[key] = _make_detector(opt, nm_per_px, threads=threads)
        logger.debug("worker %s: model %s ready (%s threads)", _worker_name(), opt.model,
                    threads or "all")  # fmt: skip
    return det


def analyze_chunk(
    chunk: Chunk,
    options: AnalyzeOptions,
    calibration: Calibration,
    timing: Calibration | None,
    frames: _Frames | Sequence[Frame] | None = None,
) -> ChunkResult:
    """Detect and measure one chunk's frames, and their shifts for drift (on a worker).

    Parameters
    ----------
    chunk : Chunk
    options : AnalyzeOptions
    calibration : Calibration
        The input's calibration (:func:`~loopline.analysis.analyze.resolve_calibration`).
    timing : Calibration or None
        Where frame times come from, as in ``analyze`` (None: the file's own).
    frames : optional
        The chunk's frames, after the keyframe of its first one
        (:func:`~loopline.analysis.tracking.keyframe_position`) where it has one
        (``scatter``); None: read from ``chunk.input`` (a path every worker can open).
    """
    t_start = time.perf_counter()
    opt = options
    key = keyframe_position(chunk.start) if opt.drift == "phase" else None
    if frames is None:
        frames = _read_with_key(open_source(chunk.input, sequence=chunk.sequence), key,
                                chunk.start, chunk.stop)  # fmt: skip
    elif isinstance(frames, _Frames):
        frames = list(frames.frames)
    frames = list(frames)
    detect = _detector(opt, calibration.nm_per_px)
    results: list[FrameResult] = []
    ms: list[float] = []
    counted = False
    step = max(int(opt.batch), 1)
    for b in range(0, len(frames), step):
        batch = frames[b : b + step]
        for fr, det in zip(batch, detect(batch), strict=True):
            t = frame_time_s(timing, fr.index, fr.time_s)  # as analyze._frame_time
            if t is None:
                counted = True
                t = float(fr.index)
            t0 = time.perf_counter()
            results.append(measure_frame(det, index=fr.index, time_s=float(t),
                                         calibration=calibration, options=opt.measure))  # fmt: skip
            ms.append((time.perf_counter() - t0) * 1e3)
    own = min(int(key is not None), len(frames))  # the keyframe is not the chunk's own
    shifts: list[tuple[float, float, float] | None] = []
    for j in range(own, len(frames)):
        ref = keyframe_position(chunk.start + j - own)
        if ref is None or opt.drift != "phase":
            shifts.append(None)
            continue
        r = 0 if ref < chunk.start else ref - chunk.start + own  # its place in frames
        shifts.append(frame_shift(frames[r].image, results[r], frames[j].image, results[j]))
    return ChunkResult(chunk, results[own:], shifts, ms[own:], counted, _worker_name(),
                       time.perf_counter() - t_start)  # fmt: skip


def _read_with_key(source: FrameSource, key: int | None, start: int,
                   stop: int | None) -> list[Frame]:  # fmt: skip
    """The frame at position ``key`` (if not None) and frames ``start:stop`` of ``source``."""
    if key is None:
        return read_frames(source, start, stop)
    if source.kind == "folder" or (source.kind == "synth" and source.sequence is not None):
        return read_frames(source, key, key + 1) + read_frames(source, start, stop)
    frames = read_frames(source, key, stop)  # decoded from the first frame anyway
    return frames[:1] + frames[start - key :]


def connect(cluster: Any) -> tuple[Any, Any]:
    """A ``distributed.Client`` for ``cluster`` and the cluster started here (or None).

    A client or cluster made here is for the caller to close.

    ``cluster``: ``"local:N"`` starts a ``LocalCluster`` of N worker processes of one thread
    each (``"local"``: one per core); a scheduler address (``tcp://host:8786``) connects to
    it; a ``Client`` is used as it is.
    """
    dist = _distributed()
    if isinstance(cluster, dist.Client):
        return cluster, None
    spec = str(cluster).strip()
    if spec == "local" or spec.startswith("local:"):
        n_text = spec.partition(":")[2] or str(os.cpu_count() or 1)
        try:
            n = int(n_text)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--cluster local:N needs N >= 1 worker processes, got {spec!r}")
        # scheduler, workers and dashboard on loopback only: Dask's own protocol pickles tasks
        # and results, so nothing from another machine may reach them
        lc = dist.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                               silence_logs=logging.ERROR)  # fmt: skip
        try:
            return dist.Client(lc), lc
        except BaseException:
            lc.close()
            raise
    if not spec:
        raise ValueError("--cluster needs a scheduler address (tcp://host:8786) or local:N")
    try:
        return dist.Client(spec, timeout="30s"), None
    except (OSError, TimeoutError, ValueError) as e:
        raise RuntimeError(f"cannot reach the Dask scheduler at {spec!r}: {e}") from None


@dataclass
class _Run:
    """One input: its chunks, and the tracker and writer the client feeds in order."""

    source: FrameSource
    out: Path
    cal: Calibration
    timing: Calibration | None
    chunks: list[Chunk]
    tracker: OnlineTracker
    writer: SeriesWriter | None = None
    next: int = 0  # the next chunk to feed
    done: dict[int, ChunkResult] = field(default_factory=dict)
    tracked: list[FrameResult] = field(default_factory=list)
    fail_at: int | None = None  # its first chunk that failed for good
    finished: bool = False
    counted_warned: bool = False
    t_start: float = 0.0


def _plan(inputs: Sequence[Path], out: Path, calibration: Calibration | None,
          opt: AnalyzeOptions, chunk: int) -> list[_Run]:  # fmt: skip
    runs: list[_Run] = []
    seen: dict[str, Path] = {}
    for p in inputs:
        source = open_source(p, sequence=opt.sequence)
        cal = resolve_calibration(source, calibration)
        if cal.frame_times_s is not None:
            check_frame_times(cal.frame_times_s)
        timing = calibration if calibration is not None else (cal if source.truth else None)
        if getattr(opt, "times_from_names", None) is not None:  # as analyze() does
            from . import analyze as single

            cal = timing = cal.replace(frame_times_s=single._times_from_names(source, opt, cal))
        if len(inputs) == 1:
            folder = out
        else:
            stem = series_id(source.path)
            if stem in seen:
                raise ValueError(f"inputs {seen[stem]} and {p} share the name {stem!r}; one run "
                                 "folder per input under --out needs distinct names")  # fmt: skip
            seen[stem] = p
            folder = out / stem
        n = source.n_frames
        if n is None:
            logger.info("%s states no frame count: counting its frames", p)
            n = sum(1 for _ in source)
        if opt.max_frames is not None:
            n = min(n, opt.max_frames)
        ranges = chunk_ranges(n, chunk, open_end=opt.max_frames is None)
        chunks = [Chunk(str(source.path), a, b, opt.sequence) for a, b in ranges]
        tracker = OnlineTracker(cal, search_range_px=opt.search_range_px, memory=opt.memory,
                                drift=opt.drift)  # fmt: skip
        runs.append(_Run(source, folder, cal, timing, chunks, tracker))
    return runs


def _scattered(run: _Run, opt: AnalyzeOptions) -> Iterator[list[Frame]]:
    """The frames of each of ``run``'s chunks, after the keyframe of its first frame
    (:func:`analyze_chunk`'s overlap), reading the input once."""
    it = iter(run.source)
    key: Frame | None = None  # the last frame read at a keyframe position
    pos = 0
    for c in run.chunks:
        before = key if keyframe_position(c.start) is not None else None
        own: list[Frame] = []
        while c.stop is None or pos < c.stop:
            fr = next(it, None)
            if fr is None:
                break
            if keyframe_position(pos + 1) == pos:
                key = fr
            own.append(fr)
            pos += 1
        yield ([before] if before is not None and opt.drift == "phase" else []) + own


def _close_incomplete(run: _Run) -> None:
    """Close an input's tables where they got to; no summary.json (not complete)."""
    if run.writer is not None and not run.writer.closed:
        run.writer.tables.close()
        run.writer.closed = True
    if run.writer is not None or run.fail_at is not None:  # an untouched folder stays so
        (run.out / "summary.json").unlink(missing_ok=True)


def analyze_cluster(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    cluster: Any = "local:2",
    calibration: Calibration | None = None,
    options: AnalyzeOptions | None = None,
    chunk: int = DEFAULT_CHUNK,
    scatter: bool = False,
    progress: bool = False,
    chunk_fn: Callable[..., ChunkResult] | None = None,
) -> dict[str, dict[str, Any]]:
    """Analyse inputs on a Dask cluster into run folders equal to single-machine ``analyze``.

    Parameters
    ----------
    inputs : path or list of paths
        Videos, stacks, folders or synthetic datasets (as ``analyze``).
    out : path
        The run folder for one input; for several, the folder holding one run folder per
        input, named by its stem.
    cluster : str or distributed.Client
        ``"local:N"``, a scheduler address, or a client (see :func:`connect`).
    calibration, options
        As :func:`~loopline.analysis.analyze.analyze`.
    chunk : int
        Frames per chunk.
    scatter : bool
        The client reads the frames and scatters them (no shared storage).
    progress : bool
        A rich progress bar over the chunks.
    chunk_fn : callable, optional
        What runs on the workers (default :func:`analyze_chunk`; tests wrap it).

    Returns
    -------
    dict
        Each input's summary, by its run folder.

    Raises
    ------
    ChunkError
        Chunks failed after their retries (named); those inputs get no ``summary.json``.
    """
    opt = options or AnalyzeOptions()
    paths = [Path(inputs)] if isinstance(inputs, str | Path) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input to analyse")
    runs = _plan(paths, Path(out), calibration, opt, chunk)
    fn = chunk_fn or analyze_chunk
    client, own_cluster = connect(cluster)
    own_client = client is not cluster  # a client given is left open
    dist = _distributed()
    token = uuid.uuid4().hex[:8]
    futures: dict[Any, tuple[_Run, int, list[Frame] | None, int]] = {}
    seq = itertools.count()  # submission order
    bar = task = None
    try:
        threads = sum(client.nthreads().values()) or 1
        logger.info("Dask cluster %s: %d worker(s), %d thread(s); dashboard %s",
                    client.scheduler.address, len(client.nthreads()), threads,
                    client.dashboard_link)  # fmt: skip
        window = max(4 * threads, 8)  # chunks in flight: keeps workers busy, bounds memory
        order = [(run, i) for run in runs for i in range(len(run.chunks))]
        readers = {id(run): _scattered(run, opt) for run in runs} if scatter else {}
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            bar = Progress(*Progress.get_default_columns()[:1], BarColumn(bar_width=None),
                           MofNCompleteColumn(), TimeRemainingColumn(), transient=True)  # fmt: skip
            bar.start()
            task = bar.add_task("chunks", total=len(order))
        pending = iter(order)
        ac = dist.as_completed()
        parquet = importlib.util.find_spec("pyarrow") is not None

        def submit(run: _Run, i: int, frames: list[Frame] | None, tries: int) -> None:
            c = run.chunks[i]
            data = client.scatter(_Frames(tuple(frames)), hash=False) if frames is not None \
                else None  # fmt: skip
            n = next(seq)  # unique in the key; earlier chunks first
            fut = client.submit(fn, c, opt, run.cal, run.timing, data, key=f"loopline-{token}-"
                                f"{n}-{c.name}", retries=RETRIES, pure=False,
                                priority=-n)  # fmt: skip
            futures[fut] = (run, i, frames, tries)
            ac.add(fut)

        def top_up() -> None:
            while len(futures) < window:
                nxt = next(pending, None)
                if nxt is None:
                    return
                run, i = nxt
                if run.fail_at is not None and i > run.fail_at:
                    continue
                if not run.t_start:
                    run.t_start = time.perf_counter()
                frames = next(readers[id(run)]) if scatter else None
                submit(run, i, frames, 0)

        def feed(run: _Run) -> None:
            while run.next in run.done:
                cr = run.done.pop(run.next)
                if run.writer is None:
                    (run.out / "summary.json").unlink(missing_ok=True)
                    run.writer = SeriesWriter(run.out, run.cal, window=opt.window,
                                              series=series_id(run.source.path),
                                              flush_every=0, parquet=parquet,
                                              alarms=opt.alarms)  # fmt: skip
                if cr.counted_times and not run.counted_warned:
                    logger.warning("%s: no frame rate or frame times: time_s counts frames (1 "
                                   "frame = 1 s); give --fps or a calibration file",
                                   run.source.path)  # fmt: skip
                    run.counted_warned = True
                for r, s, ms in zip(cr.results, cr.shifts, cr.measure_ms, strict=True):
                    t0 = time.perf_counter()
                    res = run.tracker.update(r, shift=s)
                    ms_track = ms + (time.perf_counter() - t0) * 1e3
                    run.writer.append(res, timings_ms={"measure_track": ms_track})
                    if run.source.truth is not None:
                        run.tracked.append(res)
                run.next += 1
            if run.fail_at is not None:
                if run.next == run.fail_at:  # all before the failed chunk written
                    _close_incomplete(run)
            elif run.next == len(run.chunks):
                _finish(run)

        def _finish(run: _Run) -> None:
            extra: dict[str, Any] = {
                "command": "analyze", "input": str(run.source.path),
                "source_kind": run.source.kind, "model": opt.model,
                "wall_s": time.perf_counter() - run.t_start,
                "cluster": {"scheduler": client.scheduler.address, "threads": threads,
                            "chunk_frames": chunk, "chunks": len(run.chunks),
                            "scatter": bool(scatter)},
            }  # fmt: skip
            if run.source.truth is not None and run.source.sequence is not None:
                extra.update(evaluate_against_truth(run.tracked, run.source.sequence))
            assert run.writer is not None
            summary = run.writer.close(extra)
            run.finished = True
            run.tracked.clear()
            logger.info("analysed %d frames of %s in %.1f s -> %s", summary["frames"],
                        run.source.path, extra["wall_s"], run.out)  # fmt: skip

        failures: list[tuple[str, str]] = []
        top_up()
        for fut in ac:
            run, i, frames, tries = futures.pop(fut)
            if run.fail_at is not None and i > run.fail_at:  # cancelled: after a failed chunk
                top_up()
                continue
            if fut.status == "finished":
                run.done[i] = fut.result()
                fut.release()
                feed(run)
            else:
                err = _error_text(fut)
                if frames is not None and tries < 1:  # scattered frames lost with a worker?
                    logger.warning("chunk %s failed (%s); scattering it again", run.chunks[i].name,
                                   err)  # fmt: skip
                    submit(run, i, frames, tries + 1)
                    continue
                failures.append((run.chunks[i].name, err))
                logger.error("chunk %s failed: %s", run.chunks[i].name, err)
                # the chunks before it are still written (in order); those after it are not
                run.fail_at = i if run.fail_at is None else min(run.fail_at, i)
                for f, (r2, j, *_rest) in list(futures.items()):
                    if r2 is run and j > run.fail_at:
                        f.cancel()
                run.done = {j: cr for j, cr in run.done.items() if j < run.fail_at}
                feed(run)
            if bar is not None:
                bar.advance(task)
            top_up()
        if failures:
            for run in runs:
                if run.fail_at is not None:
                    _close_incomplete(run)
            raise ChunkError(failures)
        return {str(run.out): run.writer.summary() for run in runs if run.writer is not None}
    except BaseException:
        if futures:
            client.cancel(list(futures))
        for run in runs:
            if not run.finished:
                _close_incomplete(run)
        raise
    finally:
        if bar is not None:
            bar.stop()
        if own_client:
            client.close()
        if own_cluster is not None:
            own_cluster.close()


def _error_text(fut: Any) -> str:
    try:
        e = fut.exception(timeout=5)
    except Exception as x:  # cancelled, lost
        return f"{type(x).__name__}: {x}" if str(x) else type(x).__name__
    if e is None:
        return f"status {fut.status}"
    return f"{type(e).__name__}: {e}"


def run_command(a: Any, options: AnalyzeOptions, calibration: Calibration | None) -> int:
    """The ``--cluster`` branch of ``loopline analyze`` (arguments parsed in command.py)."""
    from ..errors import CliError

    try:
        _distributed()  # it configures its loggers on import: quieten them after
        # dask's own INFO lines (scheduler, nannies) only with -vv; loopline's say what matters
        verbose = getattr(a, "verbose", 0) or 0
        level = logging.INFO if verbose >= 2 else logging.WARNING
        logging.getLogger("distributed").setLevel(level)
        summaries = analyze_cluster(a.input, a.out, cluster=a.cluster, calibration=calibration,
                                    options=options, chunk=a.chunk, scatter=a.scatter,
                                    progress=True)  # fmt: skip
    except ChunkError as e:
        raise CliError(str(e)) from None
    keys = ("length_re", "spacing_re", "velocity_re", "loop_axis_re", "id_switches")
    for folder, s in summaries.items():
        truth = ", ".join(f"{k} {s[k]}" for k in keys if k in s)
        print(f"analysed {s['frames']} frames -> {folder}" + (f" ({truth})" if truth else ""))
    return 0
