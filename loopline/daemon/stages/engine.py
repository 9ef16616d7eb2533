"""The engine worker: batches → detections, masks into the frames' slots; and loading,
checking and warming up a model, at start-up and for a swap (:mod:`loopline.daemon.stages`)."""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..config import DaemonConfig
from ..wire import recv_json, send_json
from .base import _POLL_MS, Stage, _dumps, _log_frame_error, one_line

logger = logging.getLogger(__name__)

__all__ = ["EngineWorker", "check_engine", "engine_label", "load_model", "make_engine",
           "mask_priority", "swap_runtime", "warm_up"]


def make_engine(cfg: DaemonConfig):
    """The configured :class:`~loopline.engines.base.Engine`, loaded."""
    e = cfg.engine
    kw: dict[str, Any] = {"iou": e.iou, "mask_annotations": e.mask_annotations,
                          "ignore_regions": e.ignore_regions}  # fmt: skip
    if e.conf:  # []: the model's own (its operating point, else the engine's 0.25)
        kw["conf"] = e.conf if len(e.conf) > 1 else e.conf[0]
    if e.imgsz:  # 0: the model's own (loopline.models.model_imgsz; the engine's default)
        kw["imgsz"] = e.imgsz
    if e.factory:
        mod, _, fn = e.factory.partition(":")
        engine = getattr(importlib.import_module(mod), fn)(e.model or None, **kw)
    else:
        from ...engines import create_engine, live_runtime  # type: ignore[attr-defined]

        if e.device != "cpu":
            kw["device"] = e.device
        if e.threads:
            kw["threads"] = e.threads
        if e.mask_threshold:
            kw["mask_threshold"] = e.mask_threshold
        for key in ("line_snap", "line_dedupe"):  # -1: the model's own operating point
            if getattr(e, key) >= 0:
                kw[key] = getattr(e, key)
        if e.loop_vote >= 0:  # -1: the model's own operating point
            kw["loop_vote"] = bool(e.loop_vote)
        engine = create_engine(e.model, engine=e.engine or live_runtime(e.model),
                               inference=e.inference,
                               tile_overlap=e.tile_overlap, **kw)  # fmt: skip
    engine.load()
    engine.loaded = True
    return engine


def engine_label(engine: Any) -> str:
    """Model name and runtime of an engine, e.g. ``"defects/openvino"`` (``"ridge"``)."""
    runtime = getattr(engine, "name", None) or type(engine).__name__
    model = getattr(engine, "model", None)
    if model is None:
        return runtime
    return f"{Path(str(model)).stem.removesuffix('_openvino_model')}/{runtime}"


def mask_priority(classes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Order in which a frame's instances get one of its ``pool.max_instances`` mask places.

    Dislocations (class 0) first: a line without its mask cannot be traced, while a loop is
    still measured from its box. Within a class, highest score first; ties keep their order.

    Parameters
    ----------
    classes : (N,) int
    scores : (N,) float

    Returns
    -------
    (N,) int64
        Indices into the instances.

    Examples
    --------
    >>> mask_priority(np.array([1, 0, 1, 0]), np.array([0.9, 0.3, 0.95, 0.8])).tolist()
    [3, 1, 2, 0]
    """
    c, s = np.asarray(classes).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
    if c.shape != s.shape:
        raise ValueError(f"classes and scores must have one length, got {c.shape} and {s.shape}")
    return np.lexsort((-s, c != 0)).astype(np.int64)


def probe_frame(shape: tuple[int, int]) -> np.ndarray:
    """A synthetic frame (uint8): a bright noisy field crossed by one dark line."""
    h, w = shape
    img = (np.random.default_rng(0).random((h, w)) * 40 + 170).astype(np.uint8)
    import cv2

    cv2.line(img, (w // 4, h // 8), (w // 2, h - h // 8), 40, max(2, min(h, w) // 64))
    return img


def _class_count(engine: Any, frame: np.ndarray) -> int | None:
    """The number of classes the model predicts, where the runtime tells (else None)."""
    names = getattr(getattr(engine, "yolo", None), "names", None)  # torch: ultralytics' model
    if names is not None:
        return len(names)
    infer = getattr(engine, "_infer", None)  # an exported YOLOv8-seg network
    if infer is None:
        return None
    from ...engines import ops

    batch, _ = ops.preprocess([frame], engine.imgsz)
    static = getattr(engine, "static_batch", None)
    if static and static > 1:
        batch = np.concatenate([batch, np.zeros((static - 1, *batch.shape[1:]), batch.dtype)])
    pred, protos = infer(batch)  # pred rows: 4 box coordinates, the classes, mask coefficients
    return int(pred.shape[1] - 4 - protos.shape[1])


def check_engine(engine: Any, shape: tuple[int, int]) -> None:
    """Run a loaded engine on one synthetic frame of ``shape``; ValueError if its output is not
    what the measuring stages take (one result, masks of the frame's shape, the classes of
    :data:`~loopline.engines.base.CLASS_NAMES`)."""
    from ...engines.base import CLASS_NAMES, Detections

    frame = probe_frame(shape)
    dets = engine([frame])
    if len(dets) != 1 or not isinstance(dets[0], Detections):
        raise ValueError(f"expected 1 Detections for 1 frame, got {len(dets)} "
                         f"{type(dets[0]).__name__ if dets else ''}".rstrip())  # fmt: skip
    d = dets[0]
    if d.shape != tuple(shape):
        raise ValueError(f"expected masks of the frame's shape {tuple(shape)}, got {d.shape}")
    names = ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES))
    bad = sorted({int(c) for c in d.classes if not 0 <= c < len(CLASS_NAMES)})
    if bad:
        raise ValueError(f"expected classes {names}; got class {bad[0]}")
    nc = _class_count(engine, frame)
    if nc is not None and nc != len(CLASS_NAMES):
        raise ValueError(f"expected a model of {len(CLASS_NAMES)} classes ({names}), got {nc}")


def warm_shapes(cfg: DaemonConfig, shape: tuple[int, int],
                imgsz: int | None = None) -> list[tuple[int, int]]:  # fmt: skip
    """The frame shapes to warm an engine up on: ``shape`` (the network's input), and with
    ``engine.inference = "tiles"`` the pool's frame size where it is larger than the network's
    input ``imgsz`` (default: the configured one, else 512): its tiles and tile batches are
    other input shapes."""
    big = (cfg.pool.max_height, cfg.pool.max_width)
    side = imgsz or cfg.engine.imgsz or 512
    tiles = cfg.engine.inference == "tiles" and max(big) > side
    return [shape, big] if tiles and big != tuple(shape) else [shape]


def warm_up(engine: Any, shape: tuple[int, int], batch: int, *,
            more: tuple[tuple[int, int], ...] = ()) -> None:  # fmt: skip
    """A runtime that compiles per input shape (``engine.compiles_per_shape``: OpenVINO,
    TensorRT) runs once at every batch size from 2 to ``batch`` on synthetic frames of
    ``shape`` (:func:`check_engine` ran 1), and from 1 to ``batch`` on frames of each shape
    of ``more``: it compiles now, before the daemon says ready, not on the first frames of a
    series. Every engine then compiles the kernels and imports the modules that only frames
    with detections reach."""
    from ...engines import ops
    from ...engines.base import Detections
    from ...engines.duplicates import suppress_duplicate_lines
    from ...engines.snap import snap_lines

    t0 = time.perf_counter()
    frame = probe_frame(shape)
    if not getattr(engine, "compiles_per_shape", False):
        more, batch_sizes = (), range(0)  # nothing to compile: no network runs twice
    else:
        batch_sizes = range(2, batch + 1)
    for b in batch_sizes:
        engine([frame] * b)
    for other in more:  # e.g. the pool's frame size, tiled
        big = probe_frame(other)
        for b in range(1, batch + 1):
            engine([big] * b)
    # and what runs only on frames with detections (the probe may have none): the Numba
    # kernels compiled, the line geometry's modules imported
    ops.warmup()
    h, w = shape
    masks = np.zeros((2, h, w), bool)
    masks[:, h // 2 - 2 : h // 2 + 2, w // 8 : w - w // 8] = True
    boxes = np.array([[w // 8, h // 2 - 2, w - w // 8, h // 2 + 2]] * 2, np.float32)
    det = Detections(masks, boxes, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64))
    suppress_duplicate_lines(snap_lines(frame, det), tol=1.5)
    sizes = ", ".join(f"{h}x{w}" for h, w in (shape, *more))
    logger.info("engine: warmed up (%s) in %.2f s", f"batches 1-{batch} of {sizes}"
                if len(batch_sizes) or more else "kernels", time.perf_counter() - t0)  # fmt: skip


#: runtime -> the model files it reads, by suffix ("": a folder, an OpenVINO IR)
_READS = {"openvino": (".onnx", ".xml", ""), "onnx": (".onnx",), "torch": (".pt",),
          "tensorrt": (".engine",)}  # fmt: skip


def swap_runtime(cfg: DaemonConfig, running: str, path: str) -> str:
    """The runtime (``engine.engine``) for a model swapped in: the configured one; with none
    configured, the running one where it reads the new file (OpenVINO reads ONNX: a new
    ``.onnx`` is not moved to the slower ONNX Runtime), else "" (by the file's suffix)."""
    from ...models import SHIPPED

    if cfg.engine.engine or cfg.engine.factory:
        return cfg.engine.engine
    if path in SHIPPED and not Path(path).exists():  # a name: every runtime of _READS runs it
        return running if running in _READS else ""
    p = Path(path)
    return running if ("" if p.is_dir() else p.suffix.lower()) in _READS.get(running, ()) else ""


def load_model(cfg: DaemonConfig, path: str, *, shape: tuple[int, int],
               runtime: str | None = None) -> Any:  # fmt: skip
    """An engine for the model ``path`` in ``runtime`` (default: the configured one) with the
    configured options, loaded and checked on one synthetic frame (:func:`check_engine`). What
    the engine worker does before it switches models; raises what went wrong."""
    from ...models import SHIPPED

    if path != "ridge" and path not in SHIPPED and not Path(path).exists():
        raise FileNotFoundError(f"no model file {path}")
    engine = make_engine(cfg.replace(engine={
        "model": path, "engine": cfg.engine.engine if runtime is None else runtime}))  # fmt: skip
    check_engine(engine, shape)
    warm_up(engine, shape, cfg.batch.size)  # the running stream's frame shape: that is all
    return engine


def engine_model_id(engine: Any) -> str:
    """The run folder's name of an engine's model (:func:`loopline.io.runfolder.model_id`)."""
    from ...io.runfolder import model_id

    name = getattr(engine, "name", None) or type(engine).__name__
    return model_id(getattr(engine, "model", None), name=name)


class EngineWorker(Stage):
    """Batches → detections; masks go into the frames' slots, headers to the measure worker.

    Model swaps (:mod:`loopline.daemon.control`): a ``prepare`` message from the batcher
    starts loading the new model in a thread beside the running one (:func:`load_model`: it
    loads in the configured runtime and runs one synthetic frame); the worker goes on
    analysing and tells the batcher ``prepared`` (or why not). Once every engine worker is
    prepared, the batcher names the new model in every batch it sends from then on; the
    worker switches to it when the first such batch arrives, between two batches, in the same
    process. Every ``det`` message names the model that made it (``model``:
    ``name@sha256[:8]``).
    """

    name = "engine"

    def setup(self) -> None:
        # the synthetic frame a model is checked on (then: the last frame's shape)
        c = self.cfg
        engine = make_engine(self.cfg)
        side = getattr(engine, "imgsz", None) or c.engine.imgsz or 512  # the network's input
        self._shape = (min(side, c.pool.max_height), min(side, c.pool.max_width))
        # the configured model passes the check a swapped-in one does (a model of other
        # classes stops the daemon at start-up, named), and the runtime's first call, slow in
        # most, is not the first frame's
        check_engine(engine, self._shape)
        warm_up(engine, self._shape, c.batch.size,
                more=tuple(warm_shapes(c, self._shape, side)[1:]))  # fmt: skip
        self._adopt(engine)
        logger.info("engine: %r (%s)", self.engine, self.model)
        self.dealer = self.sock(zmq.DEALER, connect=self.eps.work)
        self.to_det = self.sock(zmq.PUSH, connect=self.eps.det, sndhwm=100_000)
        self._loading: threading.Thread | None = None
        # models loaded beside the running one, by swap request: each waits for the first
        # batch that names it (or for an abort)
        self._candidates: dict[int, dict[str, Any]] = {}
        self._refused: set[str] = set()  # models a batch named that would not load here

    def _adopt(self, engine: Any) -> None:
        """Run ``engine`` from the next batch on."""
        self.engine = engine
        self.label = engine_label(engine)
        self.runtime = str(getattr(engine, "name", "") or "")
        self.model = engine_model_id(engine)
        path = getattr(engine, "model", None)
        self.model_path = None if path is None else str(path)
        # a model card that gives its training pixel size: frames are resampled to it, using
        # the calibration's pixel size, else the camera's (header px_nm), else none
        self.nm_per_px: float | None = None
        self.scaled = bool(getattr(engine, "model_nm_per_px", None))
        if self.scaled:
            from ...calibration import load_calibration

            c = self.cfg.calibration
            self.nm_per_px = (load_calibration(c.profile).nm_per_px if c.profile else None) or None
            if c.override and c.nm_per_px:  # given by the user: it wins
                self.nm_per_px = c.nm_per_px
        self._ready = _dumps({"t": "ready", "pid": os.getpid(), "model": self.model})
        self.ctl_send("model", model=self.model, runtime=self.label, path=self.model_path)

    # -- model swaps
    def _prepare(self, msg: dict[str, Any]) -> None:
        """Start loading the model of a ``prepare`` message in a thread (no socket there)."""
        req, path = msg.get("req"), str(msg.get("path"))
        if self._loading is not None:
            self._prepared(req, error="this engine worker is still loading another model")
            return
        cand: dict[str, Any] = {"req": req, "path": path}
        shape = self._shape
        runtime = swap_runtime(self.cfg, self.runtime, path)

        def work() -> None:
            t0 = time.perf_counter()
            try:
                cand["engine"] = load_model(self.cfg, path, shape=shape, runtime=runtime)
                cand["model"] = engine_model_id(cand["engine"])
            except Exception as e:  # any failure refuses this model; the old one runs on
                cand["error"] = one_line(e)
                logger.debug("engine: %s did not load", path, exc_info=True)
            cand["load_s"] = time.perf_counter() - t0

        logger.info("engine: loading %s beside %s", path, self.model)
        self._candidates[req] = cand
        self._loading = threading.Thread(target=work, name="model-loader", daemon=True)
        self._loading.start()

    def _prepared(self, req: Any, *, error: str = "", **info: Any) -> None:
        body = {"t": "prepared", "pid": os.getpid(), "req": req, "ok": not error, **info}
        if error:
            body["error"] = error
        self.dealer.send(_dumps(body))

    def _poll_loading(self) -> None:
        """A finished load: tell the batcher (from this thread, which owns the socket)."""
        if self._loading is None or self._loading.is_alive():
            return
        self._loading = None
        req, cand = next((k, c) for k, c in self._candidates.items() if "load_s" in c
                         and not c.get("told"))  # fmt: skip
        cand["told"] = True
        if cand.get("aborted") or cand.get("error"):
            del self._candidates[req]
        if cand.get("aborted"):
            return
        if cand.get("error"):
            logger.warning("engine: %s refused: %s", cand["path"], cand["error"])
            self._prepared(req, error=cand["error"])
            return
        logger.info("engine: %s loaded and checked in %.2f s; waiting for the switch",
                    cand["model"], cand["load_s"])  # fmt: skip
        engine = cand["engine"]
        self._prepared(req, model=cand["model"], runtime=engine_label(engine),
                       engine=getattr(engine, "name", ""),
                       load_s=round(cand["load_s"], 3))  # fmt: skip

    def _abort(self, msg: dict[str, Any]) -> None:
        cand = self._candidates.get(msg.get("req"))
        if cand is None:
            return
        if "load_s" in cand and cand.get("told"):
            del self._candidates[msg.get("req")]
        else:  # still loading: dropped when it is done
            cand["aborted"] = True

    def _use(self, want: dict[str, Any] | None, first: dict[str, Any]) -> None:
        """Before a batch: switch to the model it names, if that is not the running one."""
        if not want:
            return
        if want.get("model") == self.model:
            if self._candidates:  # a swap to the running model: its second copy goes
                for k in [k for k, c in self._candidates.items()
                          if c.get("told") and c.get("model") == self.model]:  # fmt: skip
                    del self._candidates[k]
            return
        model, path = str(want.get("model")), str(want.get("path"))
        old = self.model
        # the newest loaded candidate of that model (a swap committed, its first batch here)
        found = [(k, c) for k, c in self._candidates.items()
                 if c.get("told") and c.get("model") == model]  # fmt: skip
        if found:
            req, cand = found[-1]
            self._adopt(cand["engine"])
            # candidates of earlier swaps were superseded by this one: never used
            for k in [k for k in self._candidates if k <= req and self._candidates[k].get("told")]:
                del self._candidates[k]
            logger.info("engine: switched from %s to %s at frame %s/%s", old, self.model,
                        first.get("series"), first.get("index"))  # fmt: skip
            return
        if model in self._refused:
            return
        # not prepared here (this worker was restarted during the swap): load it now, once
        logger.warning("engine: a batch asks for %s, not loaded here; loading it now", model)
        try:
            engine = load_model(self.cfg, path, shape=self._shape, runtime=want.get("engine"))
            got = engine_model_id(engine)
            if got != model:
                raise ValueError(f"{path} now reads as {got}, expected {model}")
        except Exception as e:  # the frames are analysed by the running model, and say so
            self._refused.add(model)
            logger.error("engine: %s: %s; %s keeps running here", model, one_line(e), old)
            return
        self._adopt(engine)

    def _infer(self, imgs: list[np.ndarray], live: list[dict[str, Any]]) -> list[Any]:
        if self.scaled:
            px = [self.nm_per_px or h.get("px_nm") or self.cfg.calibration.nm_per_px or None
                  for h in live]  # fmt: skip
            dets = self.engine(imgs, nm_per_px=px)
        else:  # factory engines (tests, plug-ins) take frames only
            dets = self.engine(imgs)
        if len(dets) != len(imgs):
            raise RuntimeError(f"engine: expected {len(imgs)} detections, got {len(dets)}")
        return dets

    def _failed(self, h: dict[str, Any], e: Exception) -> None:
        """The engine raised on this frame: it is lost (counted), the worker goes on."""
        self.stats.add("analysis_errors")
        _log_frame_error("engine: lost", h, e)
        send_json(self.to_det, {**h, "t": "lost", "why": f"engine error: {type(e).__name__}"},
                  block=True)  # fmt: skip

    def _run_batch(self, frames: list[dict[str, Any]]) -> None:
        from ...engines.base import Detections

        t0 = time.perf_counter()
        imgs, live = [], []
        for h in frames:
            img = self.pool.read_image(h["slot"], h["gen"], tuple(h["shape"]), h["dtype"])
            if img is None:
                send_json(self.to_det, {**h, "t": "lost", "why": "slot reused"}, block=True)
            else:
                imgs.append(img)
                live.append(h)
        if not imgs:
            return
        self._shape = imgs[0].shape[:2]
        try:
            dets: list[Detections] = self._infer(imgs, live)
        except Exception:  # one bad frame must not cost its batch: each alone, then
            dets, ok = [], []
            for img, h in zip(imgs, live, strict=True):
                try:
                    dets += self._infer([img], [h])
                    ok.append(h)
                except Exception as e:
                    self._failed(h, e)
            live = ok
        dt = time.perf_counter() - t0
        k = self.cfg.pool.max_instances
        for h, d in zip(live, dets, strict=True):
            try:
                # the mask budget (package docstring): every instance's box, score and class
                # travel in the message, the masks of the first k (in this order) in the slot
                boxes, scores, classes, masks = d.boxes, d.scores, d.classes, d.masks
                if len(d) > k:
                    order = mask_priority(classes, scores)
                    boxes, scores, classes = boxes[order], scores[order], classes[order]
                    masks = masks[order[:k]]  # copies of k masks, not of all
                n = self.pool.write_masks(h["slot"], h["gen"], masks)
                timings = dict(d.timings_ms)
                timings["engine_total"] = dt * 1e3 / len(imgs)
                msg = {
                    **h, "t": "det", "n": n, "boxes": boxes.tolist(), "scores": scores.tolist(),
                    "classes": classes.tolist(), "timings_ms": timings, "engine": self.label,
                    "model": self.model, "model_path": self.model_path,
                }  # fmt: skip
                send_json(self.to_det, msg, block=True)
            except Exception as e:
                self._failed(h, e)
        self.stats["engine_ms_per_frame"] = dt * 1e3 / len(imgs)
        self.beat(len(imgs), time.perf_counter() - t0)

    def loop(self) -> None:
        self.dealer.send(self._ready)
        last = time.monotonic()
        while not self.terminate:
            self._poll_loading()
            if not self.dealer.poll(_POLL_MS):
                self.beat()
                if time.monotonic() - last > 2.0:  # a restarted batcher forgot us: ask again
                    self.dealer.send(self._ready)
                    last = time.monotonic()
                continue
            msg = recv_json(self.dealer) or {}
            t = msg.get("t")
            if t == "prepare":  # not a batch: no ready (the batcher may have sent us one)
                self._prepare(msg)
                continue
            if t == "abort":
                self._abort(msg)
                continue
            if t == "batch" and msg.get("frames"):
                self._use(msg.get("model"), msg["frames"][0])
                self._run_batch(msg["frames"])
            self.dealer.send(self._ready)
            last = time.monotonic()

    def close(self) -> None:
        loading = getattr(self, "_loading", None)
        if loading is not None:  # a load in progress: let it end before the process does
            loading.join(30)
        super().close()
