"""The supervisor: starts, watches and restarts the worker processes; drains on SIGTERM.

One :class:`Supervisor` owns the shared-memory pool, the private ``ipc://`` folder, the ``ctl``
socket every worker reports to, the Prometheus endpoint and the systemd notifications.

- A worker's exception arrives on ``ctl`` with its stage, type, message and traceback; it is
  logged with the stage. An exception while a worker is starting (``setup``: a missing model,
  a port in use) is re-raised at once as :class:`WorkerError` (logged as one line; its
  traceback at DEBUG); one while running restarts the stage, up to ``run.restarts`` times
  within ``run.restart_window_s`` (:class:`RestartBudget`: a worker that ran that long without
  a crash has its restarts back), after which it is re-raised. No frame a sender sends can
  crash a worker (each stage catches what one frame provokes, counts it and goes on), so odd
  data never spends this budget.
- A worker that dies without a word (SIGKILL, the OOM killer, a segfault in a runtime) is
  restarted the same way. When an analysis stage dies, the recorder is told which frames
  will not come back, so that recording never waits on them.
- SIGTERM / SIGINT (or ``run.duration_s``, or the end of a series with
  ``run.until_series_end``) drain: the receiver stops taking frames, every queued frame is
  analysed or skipped, every frame is recorded, files are flushed and closed, then the
  workers exit and :meth:`Supervisor.run` returns 0. An unrecoverable error returns 1 after
  the same clean-up, so that systemd (``Restart=on-failure``) starts the daemon again.
- Model swaps: the supervisor answers the control socket (:mod:`.control`). A ``use_model``
  request goes to the batcher, which has every engine worker load and check the model beside
  the running one and then switches them all between two batches (:mod:`.stages`); the
  caller gets the new model's id, or the one-line reason it was refused (the old model runs
  on). A worker restarted later loads the model in use. ``engine.watch`` names a folder where
  a new model file makes the same request.
- Workers start from a fork server (where the platform has one; else ``spawn``) that has
  imported what every stage needs once (:data:`PRELOAD`): a worker, and a restarted one,
  starts in a fraction of a second instead of importing trackpy, pandas and PyAV again. It
  gets the supervisor's environment as it is when it starts, as with ``spawn``.
- Nothing outlives a killed supervisor (:mod:`.hygiene`): workers stop when their parent
  dies, and the run folder's ``.loopline-daemon.json`` names the shared memory and ipc
  folder, which the next daemon for the same folder (or ``loopline recover``) removes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..io.sanitize import MultiLine
from .config import DaemonConfig
from .control import ControlServer, control_endpoint
from .hygiene import RunDirBusy, RunState, clean_stale, shm_name
from .recorder import first_free_part
from .shm import SlotPool
from .wire import Endpoints, recv_json, send_json, socket

logger = logging.getLogger(__name__)

__all__ = ["RestartBudget", "Supervisor", "WorkerError"]

_ANALYSIS_STAGES = ("batcher", "engine", "measure")
#: how long a model swap may take before its caller is told it failed (s): the batcher's own
#: limit (stages.batcher._SWAP_TIMEOUT_S) and a margin
_SWAP_TIMEOUT_S = 330.0
#: model files that are pickles (torch checkpoints): a swap, asked for over the control socket
#: or by a file in ``engine.watch``, never loads one (loading a pickle runs its code)
PICKLED = frozenset({".pt", ".pth"})

#: what the fork server imports once for every worker it starts: the stages and the libraries
#: their ``setup()`` imports. No inference runtime (torch, OpenVINO, ONNX Runtime) is in it:
#: only an engine worker needs one, and what the server holds must be safe to fork (numpy's
#: OpenBLAS threads are: OpenBLAS stops and restarts its pool around a fork).
PRELOAD = (
    "numpy", "zmq", "cv2", "av", "pandas", "scipy.ndimage", "trackpy",
    "loopline.daemon.stages.receiver", "loopline.daemon.stages.batcher",
    "loopline.daemon.stages.engine", "loopline.daemon.stages.measure",
    "loopline.daemon.stages.output", "loopline.daemon.analyzer", "loopline.daemon.recorder",
    "loopline.daemon.publisher", "loopline.engines.ops",
)  # fmt: skip


def worker_context() -> Any:
    """The ``multiprocessing`` context the workers start in: a fork server preloaded with
    :data:`PRELOAD` where the platform has one (Linux, macOS), else ``spawn``."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


#: how often ``engine.watch`` is looked at (s); a file is taken once it is unchanged that long
_WATCH_EVERY_S = 1.0


class WorkerError(RuntimeError):
    """A worker failed and could not (or may not) be restarted."""

    def __init__(self, stage: str, message: str, tb: str = "", *, startup: bool = False) -> None:
        what = "could not start" if startup else "failed"
        who = "the daemon" if stage == "supervisor" else f"{stage} worker"
        super().__init__(f"{who} {what}: {message}")
        self.stage = stage
        self.traceback = tb
        self.startup = startup  # while starting (setup): a configuration or host problem


class RestartBudget:
    """At most ``limit`` restarts within any ``window_s`` seconds.

    >>> t = [0.0]
    >>> b = RestartBudget(2, 600.0, clock=lambda: t[0])
    >>> b.spend(), b.spend(), b.spend()
    (True, True, False)
    >>> t[0] = 601.0  # a healthy period: the budget is back
    >>> b.spend(), b.used
    (True, 1)
    """

    def __init__(self, limit: int, window_s: float, *, clock=time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._times: list[float] = []

    @property
    def used(self) -> int:
        """Restarts within the last ``window_s``."""
        now = self._clock()
        self._times = [t for t in self._times if now - t < self.window_s]
        return len(self._times)

    def spend(self) -> bool:
        """Count one restart; False when it is over the budget (give up)."""
        ok = self.used < self.limit
        self._times.append(self._clock())
        return ok


@dataclass
class _Worker:
    stage: str
    slot: int  # engine workers are numbered
    proc: Any = None
    restarts: int = 0
    budget: RestartBudget | None = None
    part: int = 0
    error: dict[str, Any] | None = None
    ready: bool = False
    model: dict[str, Any] | None = None  # an engine's model: {"model", "runtime", "path"}
    started: float = field(default_factory=time.time)

    @property
    def label(self) -> str:
        return f"{self.stage}{self.slot}" if self.stage == "engine" else self.stage


class Supervisor:
    """Run the daemon with ``cfg`` until it drains; see the module docstring.

    Parameters
    ----------
    cfg : DaemonConfig
        The validated configuration; ``cfg.output.dir`` is the run folder.
    log_level : int
        Logging level for the workers.
    on_ready : callable, optional
        Called once every worker reported ready (tests use it to start sending).
    """

    def __init__(self, cfg: DaemonConfig, *, log_level: int = logging.INFO,
                 on_ready=None) -> None:  # fmt: skip
        self.cfg = cfg
        self.log_level = log_level
        self.on_ready = on_ready
        self.run_dir = Path(cfg.output.dir)
        self._stop = threading.Event()
        self._stop_reason = ""
        self.workers: list[_Worker] = []
        self.pool: SlotPool | None = None
        self.eps: Endpoints | None = None
        self.notifier = _Notifier()
        self.started_at = 0.0
        self.all_ready = False
        self.control: ControlServer | None = None
        self._swap: dict[str, Any] | None = None  # the model swap in progress
        self._swaps = 0
        self._committed: dict[str, Any] | None = None  # the model since the last swap
        self._watch_seen: dict[Path, tuple[int, int]] = {}
        self._watch_last: dict[Path, tuple[int, int]] = {}
        self._watch_t = 0.0

    # -- control from outside (signal handlers, tests)
    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def pids(self) -> dict[str, int]:
        return {w.label: w.proc.pid for w in self.workers if w.proc is not None}

    @property
    def stats(self):
        assert self.pool is not None
        return self.pool.stats

    # -- processes
    def _spawn(self, w: _Worker) -> None:
        from .stages import Inherit, worker_main

        assert self.pool is not None and self.eps is not None
        w.proc = worker_context().Process(
            target=worker_main, name=f"loopline-{w.label}", daemon=False,
            args=(w.stage, self.cfg, self.pool.spec, self.eps, w.part, str(self.run_dir),
                  self.log_level, Inherit()),
        )  # fmt: skip
        w.ready = False
        w.error = None
        w.started = time.time()
        w.proc.start()
        if self.state is not None:  # what a later daemon or `loopline recover` checks
            self.state.worker(w.label, w.proc.pid)
        logger.debug("started %s (pid %d)", w.label, w.proc.pid)

    def _restart(self, w: _Worker, why: str) -> None:
        died_at = time.time()
        w.restarts += 1
        self.stats.add("restarts")
        run = self.cfg.run
        if w.budget is None:
            w.budget = RestartBudget(run.restarts, run.restart_window_s)
        if not w.budget.spend():
            raise WorkerError(w.label, f"{why}; restarted {run.restarts} times within "
                              f"{run.restart_window_s:g} s, giving up",
                              (w.error or {}).get("traceback", ""))  # fmt: skip
        logger.warning("%s worker %s; restarting (%d/%d within %g s)", w.label, why,
                       w.budget.used, run.restarts, run.restart_window_s)  # fmt: skip
        if w.stage == "engine":  # the batcher knows exactly which frames that engine held
            send_json(self._to_batch, {"t": "engine_dead", "pid": w.proc.pid}, block=True)
        elif w.stage in _ANALYSIS_STAGES:
            # frames held by the dead worker will never come back: do not let the recorder
            # wait result_timeout_s for each of them
            send_json(self._to_out, {"t": "chain_reset", "before": died_at,
                                     "stage": w.stage}, block=True)  # fmt: skip
        if w.stage == "output":
            # a new annotated.N.mp4: the old one could not be finalised (and past the parts a
            # recording resumed after a full disk went on in)
            w.part = max(w.part + 1, first_free_part(self.run_dir))
        self._spawn(w)
        if w.stage == "batcher":
            if self._swap is not None:
                self._end_swap({"ok": False, "error": "the batcher was restarted during the "
                                "swap", "path": self._swap["path"]})  # fmt: skip
            if self._committed is not None:  # batches go on naming the model in use
                send_json(self._to_batch, {"t": "model_committed", "model": self._committed},
                          block=True)  # fmt: skip

    def _handle_ctl(self, msg: dict[str, Any]) -> str | None:
        kind = msg.get("t")
        pid = msg.get("pid")
        w = next((x for x in self.workers if x.proc is not None and x.proc.pid == pid), None)
        if kind == "ready" and w is not None:
            w.ready = True
            logger.debug("%s ready", w.label)
        elif kind == "error":
            stage = msg.get("stage", "?")
            tb = MultiLine(msg.get("traceback", ""))
            if w is not None:
                w.error = msg
            if msg.get("phase") == "setup":  # one line, and the traceback at DEBUG: run()
                raise WorkerError(stage, f"{msg.get('type')}: {msg.get('message')}",
                                  msg.get("traceback", ""), startup=True)  # fmt: skip
            logger.error("%s worker raised %s: %s\n%s", stage, msg.get("type"), msg.get("message"),
                         tb)  # fmt: skip
        elif kind == "model" and w is not None:  # an engine worker's model, at start or swap
            w.model = {k: msg.get(k) for k in ("model", "runtime", "path")}
        elif kind == "model_result":
            if self._swap is not None and msg.get("req") == self._swap["req"]:
                self._end_swap(msg)
        elif kind == "draining":
            logger.info("draining: %s", msg.get("reason"))
            if not self._stop.is_set():
                self.request_stop(str(msg.get("reason")))
        elif kind == "done":
            return "done"
        return None

    # -- model swaps (control.py)
    def running_models(self) -> dict[str, dict[str, Any] | None]:
        """Each engine worker's model: {"engine0": {"model", "runtime", "path"}, ...}."""
        return {w.label: w.model for w in self.workers if w.stage == "engine"}

    def _current_model(self) -> str:
        """The model that analyses new frames: the last swap's, else what the engines run."""
        if self._committed is not None:
            return str(self._committed["model"])
        ids = sorted({str((m or {}).get("model")) for m in self.running_models().values()})
        return ", ".join(ids) or "none"

    def _on_control(self, envelope: list[bytes], req: dict[str, Any] | str) -> None:
        assert self.control is not None
        if isinstance(req, str):
            self.stats.add("control_errors")
            logger.warning("control: request refused: %s", req)
            self.control.reply(envelope, {"ok": False, "error": req})
            return
        if req["t"] == "status":
            s = self.stats
            self.control.reply(envelope, {
                "ok": True, "pid": os.getpid(), "workers": self.pids(),
                "run_dir": str(self.run_dir), "models": self.running_models(),
                "model": self._current_model(),
                "swap": None if self._swap is None else self._swap["path"],
                "counters": {k: int(s[k]) for k in ("received", "analysed", "skipped",
                                                   "recorded", "model_swaps",
                                                   "models_refused")},
            })  # fmt: skip
            return
        self._start_swap(req["path"], envelope)

    def _start_swap(self, path: str, envelope: list[bytes] | None) -> None:
        """Ask the batcher to swap to ``path`` (envelope: the caller's, None for the watch)."""
        from ..models import SHIPPED

        error = ""
        if self._stop.is_set():
            error = "the daemon is stopping"
        elif self._swap is not None:
            error = f"a model swap to {self._swap['path']} is in progress; try again after it"
        elif Path(path).suffix.lower() in PICKLED:
            error = (f"refused {path}: a {Path(path).suffix} file is a pickle and a swap never "
                     "unpickles; export it first (loopline export --model X.pt --format onnx)")
        elif path != "ridge" and path not in SHIPPED and not Path(path).exists():
            error = f"FileNotFoundError: no model file {path} (on the daemon's machine)"
        self._swaps += 1
        sw = {"req": self._swaps, "path": path, "envelope": envelope, "t0": time.monotonic()}
        if error:
            self._answer(sw, {"ok": False, "error": error})
            return
        self._swap = sw
        logger.info("model swap requested%s: %s (running %s)",
                    "" if envelope is not None else " (engine.watch)", path,
                    self._current_model())  # fmt: skip
        send_json(self._to_batch, {"t": "use_model", "req": self._swaps, "path": path},
                  block=True)  # fmt: skip

    def _end_swap(self, result: dict[str, Any]) -> None:
        """The batcher's answer to the swap in progress (or its failure here)."""
        sw = self._swap
        assert sw is not None
        self._swap = None
        self._answer(sw, result)

    def _answer(self, sw: dict[str, Any], result: dict[str, Any]) -> None:
        """A swap's outcome: log it, count it, tell its caller."""
        previous = self._current_model()
        if result.get("ok"):
            model = str(result.get("model"))
            self._committed = {"model": model, "path": sw["path"], "engine": result.get("engine")}
            # a worker restarted from now on loads the new model, in the same runtime
            keys = {"model": sw["path"]}
            if not self.cfg.engine.factory and result.get("engine"):
                keys["engine"] = str(result["engine"])
            self.cfg = self.cfg.replace(engine=keys)
            self.stats.add("model_swaps")
            text = (f"now running {model} (was {previous}): it analyses every frame from "
                    f"analysis number {result.get('first_aseq')} on; loaded and checked in "
                    f"{float(result.get('load_s') or 0):.2f} s")  # fmt: skip
            logger.info("model swap: %s", text)
            body = {"ok": True, "model": model, "previous": previous,
                    "runtime": result.get("runtime"), "path": sw["path"],
                    "message": text}  # fmt: skip
        else:
            self.stats.add("models_refused")
            error = str(result.get("error") or "refused")
            logger.error("model %s refused: %s; %s keeps running", sw["path"], error, previous)
            body = {"ok": False, "error": error, "path": sw["path"], "model": previous}
        if sw["envelope"] is not None and self.control is not None:
            self.control.reply(sw["envelope"], body)

    def _poll_watch(self) -> None:
        """``engine.watch``: a model file that appeared (or changed) and has stopped growing."""
        folder = self.cfg.engine.watch
        now = time.monotonic()
        if not folder or now - self._watch_t < _WATCH_EVERY_S:
            return
        first = self._watch_t == 0.0
        self._watch_t = now
        from ..engines import SUFFIXES

        try:
            files = {}
            for p in Path(folder).iterdir():
                if p.suffix.lower() in SUFFIXES and p.suffix.lower() not in PICKLED and (
                        p.is_file()):
                    st = p.stat()
                    files[p] = (st.st_size, st.st_mtime_ns)
        except OSError as e:
            logger.debug("engine.watch %s: %s", folder, e)
            return
        if first:  # what is there at start-up is not new
            self._watch_seen = dict(files)
            return
        for p, sig in sorted(files.items(), key=lambda kv: kv[1][1]):
            if self._watch_seen.get(p) == sig:
                continue
            if self._watch_last.get(p) != sig:  # new or still being written: look again
                self._watch_last[p] = sig
                continue
            if self._swap is not None:
                return
            self._watch_seen[p] = sig
            self._start_swap(str(p), None)
            return

    def _check_workers(self, *, allow_restart: bool) -> None:
        for w in self.workers:
            p = w.proc
            if p is None or p.is_alive():
                continue
            code = p.exitcode
            p.join(0)
            if w.error:
                why = f"raised {w.error.get('type')}: {w.error.get('message')}"
            elif code is not None and code < 0:
                why = f"was killed by signal {-code}"
            else:
                why = f"exited with status {code}"
            if not allow_restart:
                raise WorkerError(w.label, why, (w.error or {}).get("traceback", ""))
            self._restart(w, why)

    # -- main
    def run(self) -> int:
        """Start everything, supervise until drained; 0 on a clean stop, 1 on failure."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:  # a killed daemon's shared memory and ipc folder go; a live one's folder is refused
            self.cleaned = clean_stale(self.run_dir)
        except RunDirBusy as e:
            self.error = WorkerError("supervisor", str(e), startup=True)
            if not self.quiet_startup_errors:
                logger.error("%s", self.error)
            return 1
        self.pool = SlotPool.create(cfg.pool.slots, cfg.pool.max_height, cfg.pool.max_width,
                                    cfg.pool.max_instances, name=shm_name())  # fmt: skip
        self.eps = Endpoints.make()
        self.state = RunState(self.run_dir, shm=self.pool.spec.name, ipc=self.eps.folder)
        zctx = zmq.Context()
        ctl = socket(zctx, zmq.PULL, bind=self.eps.ctl, rcvhwm=0)
        self._to_out = socket(zctx, zmq.PUSH, connect=self.eps.out, sndhwm=0)
        self._to_batch = socket(zctx, zmq.PUSH, connect=self.eps.batch, sndhwm=0)
        prom = None
        code = 1
        try:
            if cfg.metrics.prometheus_port:
                from .metrics import start_prometheus

                try:
                    prom = start_prometheus(self.pool.stats, port=cfg.metrics.prometheus_port,
                                            host=cfg.metrics.prometheus_host)  # fmt: skip
                except OSError as e:  # port in use, address not local
                    raise WorkerError("metrics", f"cannot serve Prometheus metrics on "
                                      f"{cfg.metrics.prometheus_host}:"
                                      f"{cfg.metrics.prometheus_port} "
                                      f"(metrics.prometheus_port): {e.strerror or e}",
                                      startup=True) from None  # fmt: skip
            ep = control_endpoint(cfg.control, self.eps.folder)
            if ep is not None:
                try:
                    self.control = ControlServer(zctx, cfg.control, ep)
                except (OSError, ValueError) as e:  # port in use, a bad key file
                    raise WorkerError("control", str(e), startup=True) from None
                self.state.note(control=self.control.endpoint)
            if cfg.engine.watch and not Path(cfg.engine.watch).is_dir():
                raise WorkerError("supervisor", f"engine.watch: no folder {cfg.engine.watch}",
                                  startup=True)  # fmt: skip
            stages = ["output", "measure", *["engine"] * cfg.engine.workers, "batcher",
                      "receiver"]  # fmt: skip
            part = first_free_part(self.run_dir)
            if part:
                old = self.run_dir / "summary.json"
                if old.exists():
                    old.rename(self.run_dir / f"summary.{part}.json")
                logger.warning("%s already holds a recording: this run continues it as part %d "
                               "(nothing there is overwritten)", self.run_dir, part)  # fmt: skip
            for i, st in enumerate(stages):
                self.workers.append(_Worker(st, i - 2 if st == "engine" else 0,
                                            part=part if st == "output" else 0))  # fmt: skip
            for w in self.workers:
                self._spawn(w)
            self.started_at = time.monotonic()
            code = self._supervise(ctl)
        except WorkerError as e:
            if not (e.startup and self.quiet_startup_errors):
                logger.error("%s", e)
            if e.traceback:
                logger.debug("%s", MultiLine(e.traceback))
            self.error = e
            code = 1
        finally:
            self._shutdown()
            if prom is not None:
                try:
                    prom[0].shutdown()
                except Exception:  # older prometheus-client returns no server
                    pass
            if self._swap is not None:
                self._end_swap({"ok": False, "error": "the daemon stopped before the swap "
                                "finished"})  # fmt: skip
            if self.control is not None:
                self.control.close()
            ctl.close(linger=0)
            self._to_out.close(linger=0)
            self._to_batch.close(linger=0)
            zctx.term()
            self.final_stats = self.pool.stats.snapshot()
            self.pool.close()
            self.pool.unlink()
            self.eps.cleanup()
            if self.state is not None:
                self.state.remove()
            self.notifier.notify("STOPPING=1")
        return code

    error: WorkerError | None = None
    #: the run folder's state file (:mod:`.hygiene`) while running
    state: RunState | None = None
    #: what a killed daemon of this run folder had left and this one removed
    cleaned: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance
    #: a caller that reports :attr:`error` itself (``loopline serve``: one line) sets this
    quiet_startup_errors = False
    final_stats: dict[str, float] = {}  # noqa: RUF012 - replaced per instance

    def _supervise(self, ctl: zmq.Socket) -> int:
        cfg = self.cfg
        drain_deadline: float | None = None
        last_status = 0.0
        poller = zmq.Poller()
        poller.register(ctl, zmq.POLLIN)
        if self.control is not None:
            poller.register(self.control.sock, zmq.POLLIN)
        while True:
            events = dict(poller.poll(100))
            if ctl in events:
                while True:
                    try:
                        msg = recv_json(ctl)
                    except zmq.Again:
                        break
                    if msg is not None and self._handle_ctl(msg) == "done":
                        logger.info("run folder complete: %s", self.run_dir)
                        return 0
            if self.control is not None and self.control.sock in events:
                for envelope, req in self.control.recv():
                    self._on_control(envelope, req)
            if self._swap is not None and time.monotonic() - self._swap["t0"] > _SWAP_TIMEOUT_S:
                self._end_swap({"ok": False, "error": f"no answer from the engine workers "
                                f"within {_SWAP_TIMEOUT_S:g} s"})  # fmt: skip
            if self.all_ready:
                self._poll_watch()
            self._check_workers(allow_restart=True)
            if not self.all_ready and all(w.ready for w in self.workers):
                self.all_ready = True
                if self.control is None:
                    swap = "control.endpoint = none: no swaps"
                elif cfg.control.endpoint:
                    swap = f"swap: loopline model use PATH --endpoint {self.control.endpoint}"
                else:
                    swap = f"swap: loopline model use PATH --run {self.run_dir}"
                logger.info("loopline serve: all %d workers ready; listening on %s; model %s "
                            "(%s)", len(self.workers), cfg.source.endpoint,
                            self._current_model(), swap)  # fmt: skip
                self.notifier.notify("READY=1")
                if self.on_ready is not None:
                    self.on_ready(self)
            if (cfg.run.duration_s and self.all_ready
                    and time.monotonic() - self.started_at > cfg.run.duration_s):  # fmt: skip
                self.request_stop(f"ran {cfg.run.duration_s:g} s")
            if self._stop.is_set() and drain_deadline is None:
                logger.info("stopping (%s): draining the pipeline", self._stop_reason)
                self.stats["stopping"] = 1
                self.notifier.notify("STOPPING=1")
                drain_deadline = time.monotonic() + cfg.output.result_timeout_s * 2 + 10
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                logger.error("drain did not finish in time; stopping the workers")
                return 1
            now = time.monotonic()
            if now - last_status > 5:
                last_status = now
                s = self.stats
                self.notifier.notify(
                    f"STATUS=received {int(s['received'])} analysed {int(s['analysed'])} "
                    f"skipped {int(s['skipped'])} recorded {int(s['recorded'])}"
                )

    def _shutdown(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.is_alive()]
        for p in procs:
            p.terminate()  # SIGTERM: each worker leaves its loop and closes its files
        deadline = time.monotonic() + 15
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                logger.error("%s did not stop; killing it", p.name)
                p.kill()
                p.join(5)


class _Notifier:
    """systemd notifications (Type=notify) when run under systemd; a no-op otherwise."""

    def __init__(self) -> None:
        self._n = None
        import os

        if os.environ.get("NOTIFY_SOCKET"):
            try:
                import sdnotify

                self._n = sdnotify.SystemdNotifier()
            except ImportError:
                logger.warning("NOTIFY_SOCKET is set but sdnotify is not installed")

    def notify(self, state: str) -> None:
        if self._n is not None:
            self._n.notify(state)


def install_signal_handlers(sup: Supervisor) -> Callable[[], None]:
    """SIGTERM and SIGINT drain the pipeline (a second SIGINT is not special: drain is
    bounded). Returns the function that puts the handlers before back: call it when the run
    ends, so that a process that goes on (a test, a notebook, the demo's report) and the
    processes it forks later do not keep a handler of a finished daemon (a forked pool worker
    that ignores SIGTERM cannot be terminated)."""

    def handler(signum: int, _frame: Any) -> None:
        sup.request_stop(f"received {signal.Signals(signum).name}")

    before = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for s, h in before.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    return restore
