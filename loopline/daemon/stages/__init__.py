"""The daemon's stages: receiver → batcher → engine(s) → measure/track → output.

One module per stage, one process per stage (the supervisor starts ``engine.workers`` engine
processes). Each stage is a class with ``setup()`` (open sockets, load the model) and
``loop()``; one process runs one stage through :func:`worker_main`, which reports ``ready`` to
the supervisor, and on any exception sends the stage name, the exception and its traceback on
the ``ctl`` channel before exiting non-zero (the supervisor logs it with the stage and
re-raises it, or restarts the stage). Frames move through shared memory slots
(:mod:`loopline.daemon.shm`); only JSON headers travel on the sockets
(:mod:`loopline.daemon.wire`). The messages the stages send each other are listed, with who
sends each to whom, in :mod:`loopline.daemon.messages`. In pipeline order:

:mod:`.receiver` (:class:`~.receiver.Receiver`) takes frames and series start/end events from
the configured source (:mod:`loopline.daemon.ingest`: a camera's socket, or a file replayed)
and checks them (:mod:`loopline.daemon.validate`). It writes each frame into a slot and gives
its header (``frame``) to the batcher and to the output worker, the ``series`` events to both,
a ``skip`` to the output worker for a frame it will not have analysed (a duplicate index, the
batcher's queue full), and ``eos`` to both when the source ends or a stop is asked for.

:mod:`.batcher` (:class:`~.batcher.Batcher`) takes the frame headers from the receiver and a
``ready`` from each idle engine worker, and gives an idle engine a ``batch`` of up to
``batch.size`` frames (or what came within ``batch.deadline_ms``), numbered in analysis order
(``aseq``). It keeps the backpressure policy below (``skip`` to the output worker), tells the
output worker the frames lost with a dead engine (``lost``), runs model swaps (``use_model``
from the supervisor: ``prepare``/``abort`` to the engines, ``model_result`` back) and, drained,
gives ``eos`` to the measure worker.

:mod:`.engine` (:class:`~.engine.EngineWorker`) takes batches from the batcher and runs the
model on their frames, read from the slots. It writes the masks into the same slots (the mask
budget below) and gives one ``det`` message per frame (every instance's box, score and class,
the model that made it), or ``lost``, to the measure worker. It loads, checks and warms up
the model before it says ready (:func:`~.engine.make_engine`, :func:`~.engine.check_engine`,
:func:`~.engine.warm_up`), and loads a swapped-in model beside the running one
(:func:`~.engine.load_model`; ``prepared`` to the batcher).

:mod:`.measure` (:class:`~.measure.MeasureWorker`) takes ``det``/``lost`` messages from the
engines, in any order, and ``eos`` from the batcher. It puts them back in analysis order
(:class:`~.measure.Reorder`), measures and tracks each frame
(:class:`~loopline.daemon.analyzer.Analyzer`) and gives the output worker a ``result`` per
frame (or ``lost``), an ``analysis`` summary per ended series and, drained, ``eos_analysis``.

:mod:`.output` (:class:`~.output.OutputWorker`) takes the frame headers, series events and
``eos`` from the receiver, ``skip``/``lost`` from the others, the results from the measure
worker and ``chain_reset`` from the supervisor. It records every frame to the run folder in
arrival order (:mod:`loopline.daemon.recorder`), publishes results, metrics and alarms to
viewers (:mod:`loopline.daemon.publisher`) and, once everything came back, closes the run
folder and tells the supervisor ``done``.

:mod:`.base` holds what they share: the :class:`~.base.Stage` base class (sockets, heartbeat,
the ``ctl`` channel) and small helpers. The stage modules import from it, never from each
other.

Backpressure policy (stated once, here): the receiver never waits for analysis. The batcher
keeps at most ``batch.max_pending`` frames waiting for an engine; when a newer frame arrives
and the queue is full, the *oldest* waiting frame is skipped (latest wins): its analysis claim
is released, the recorder is told, and ``skipped``/``skipped_backpressure`` count it. The
recording path has no such policy: every frame the receiver could place in a slot is recorded;
if the pool is exhausted (the recorder itself is too slow) the frame is dropped, counted in
``dropped_no_slot`` and logged at ERROR.

A file replayed unpaced (``serve --from FILE``, ``source.pace = false``: the default) is not a
camera: it can wait. Then the receiver reads the next frame only when fewer than
``max_pending + max_inflight`` frames wait for their analysis, waits for a free slot instead
of dropping, and the batcher never skips, so every frame is analysed, as ``loopline analyze``
does (:attr:`~loopline.daemon.config.DaemonConfig.replay_waits`). Paced like a camera
(``source.pace = true``) the policy above applies. Either way a file's frame times come from
the file (:meth:`loopline.io.frames.FrameFile.stamped`), never from the replay clock.

Mask budget (stated once, here): a slot holds the masks of at most ``pool.max_instances``
instances a frame, but every instance is counted and measured. The engine worker gives the
masks to dislocations first (a line cannot be traced without its mask; a loop can be
measured from its box), each class by score, highest first (:func:`~.engine.mask_priority`),
and sends every instance's box, score and class in the ``det`` message, masked ones first.
The measure worker measures the rest from their boxes (a loop: the ellipse inscribed in its
box, marked ``from_box``; a dislocation: counted in ``n_dislocations``, not traced) and counts
them in ``instances_without_mask`` (series.csv, the series' summary, the daemon's counters).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import time
import traceback
from typing import Any

import zmq

from ...io.sanitize import install_log_escaping
from ..config import DaemonConfig
from ..hygiene import watch_parent
from ..shm import PoolSpec, SlotPool
from ..wire import Endpoints, send_json, socket
from .base import Stage
from .batcher import Batcher
from .engine import EngineWorker
from .measure import MeasureWorker
from .output import OutputWorker
from .receiver import Receiver

logger = logging.getLogger(__name__)

__all__ = ["STAGE_CLASSES", "Batcher", "EngineWorker", "Inherit", "MeasureWorker", "OutputWorker",
           "Receiver", "Stage", "worker_main"]

STAGE_CLASSES: dict[str, type[Stage]] = {
    "receiver": Receiver, "batcher": Batcher, "engine": EngineWorker,
    "measure": MeasureWorker, "output": OutputWorker,
}  # fmt: skip


class Inherit:
    """What a worker takes from the supervisor as it is when the worker starts: the
    environment and stdout/stderr. A worker started by a fork server would otherwise have the
    server's, as they were when the server started (the supervisor's may have changed since:
    a test's captured output, an environment variable set later)."""

    def __init__(self, env: dict[str, str] | None = None, fds: tuple[Any, ...] = ()) -> None:
        self.env = dict(os.environ) if env is None else env
        self.fds = fds

    def __reduce__(self) -> tuple[Any, ...]:  # pickled as the worker starts: hand over 1, 2
        from multiprocessing import reduction

        if not hasattr(reduction, "DupFd"):  # Windows: spawn's children have the parent's
            return Inherit, (self.env,)
        return Inherit, (self.env, (reduction.DupFd(1), reduction.DupFd(2)))

    def apply(self) -> None:
        os.environ.clear()
        os.environ.update(self.env)
        for target, handed in zip((1, 2), self.fds, strict=False):
            fd = handed.detach()
            if fd != target:
                os.dup2(fd, target)
                os.close(fd)


def worker_main(stage: str, cfg: DaemonConfig, spec: PoolSpec, eps: Endpoints, part: int,
                run_dir: str, log_level: int, inherit: Inherit | None = None) -> None:  # fmt: skip
    """Process entry point of one stage (``multiprocessing`` target)."""
    if inherit is not None:
        inherit.apply()
    logging.basicConfig(level=log_level, format=f"%(asctime)s {stage}[%(process)d] %(message)s")
    install_log_escaping()  # sender data (series ids) cannot forge a log line
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a worker is stuck
    ctx = zmq.Context()
    pool = SlotPool.attach(spec)
    ctl = socket(ctx, zmq.PUSH, connect=eps.ctl, linger_ms=2000)
    runner = STAGE_CLASSES[stage](cfg, pool, eps, ctx, ctl, part, run_dir)

    def on_term(_sig: int, _frame: Any) -> None:
        runner.terminate = True

    signal.signal(signal.SIGTERM, on_term)
    watch_parent(name=stage)  # the supervisor killed: leave as on its SIGTERM (hygiene.py)
    phase = "setup"
    code = 0
    try:
        runner.setup()
        runner._cpu = time.process_time()  # start-up (model compile, kernel warm-up) not counted
        phase = "run"
        runner.ctl_send("ready")
        runner.loop()
    except BaseException as e:
        code = 1
        send_json(ctl, {
            "t": "error", "stage": stage, "pid": os.getpid(), "phase": phase,
            "type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc(),
        }, block=True)  # fmt: skip
    finally:
        try:
            runner.close()
        except Exception:
            logger.exception("%s: close failed", stage)
            code = code or 1
        ctl.close()
        ctx.term()
        pool.close()
    os._exit(code)  # skip interpreter teardown: the supervisor owns the shared memory
