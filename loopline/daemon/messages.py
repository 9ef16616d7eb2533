"""The messages the daemon's stages send each other, as typed dictionaries.

Every message is one JSON object (:mod:`loopline.daemon.wire`) whose ``"t"`` names its kind;
frames themselves stay in the shared-memory slots (:mod:`loopline.daemon.shm`). These
definitions document the messages (who sends which to whom, with which keys) for readers and
type checkers; nothing checks them at run time, and the stages build and read the messages as
plain dictionaries. The channels (:class:`loopline.daemon.wire.Endpoints`), one ``ipc://``
socket each, and what travels on them:

- ``batch`` (receiver, supervisor → batcher): :class:`Frame`, :class:`Series`,
  :class:`ReceiverEos`; from the supervisor :class:`UseModel`, :class:`ModelCommitted`,
  :class:`EngineDead`.
- ``work`` (batcher ↔ engine workers, ROUTER/DEALER): :class:`Batch`, :class:`Prepare`,
  :class:`Abort` to an engine; :class:`EngineReady`, :class:`Prepared` back.
- ``det`` (engine workers, batcher → measure worker): :class:`Det`, :class:`EngineLost`;
  from the batcher :class:`BatcherEos`.
- ``out`` (everyone → output worker): :class:`Frame`, :class:`Series`, :class:`Skip`,
  :class:`ReceiverEos` from the receiver; :class:`Skip`, :class:`Lost` from the batcher;
  :class:`Result`, :class:`Lost`, :class:`Analysis`, :class:`EosAnalysis` from the measure
  worker; :class:`ChainReset` from the supervisor.
- ``ctl`` (every stage → supervisor): :class:`StageReady`, :class:`StageError`,
  :class:`Draining`, :class:`EngineModel`, :class:`ModelResult`, :class:`Done`; each names
  the sending stage and its pid (:class:`CtlMessage`).

What clients send the control socket (``status``, ``use_model``) is documented in
:mod:`loopline.daemon.control`; what the publisher sends viewers in
:mod:`loopline.daemon.publisher`. The stages themselves: :mod:`loopline.daemon.stages`.
"""

# no ``from __future__ import annotations``: TypedDict reads NotRequired from evaluated
# annotations only (``__required_keys__``, ``__optional_keys__``)
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "Abort", "Analysis", "Batch", "BatchedFrame", "BatcherEos", "ChainReset", "CtlMessage",
    "Det", "Done", "Draining", "EngineDead", "EngineLost", "EngineModel", "EngineReady",
    "EosAnalysis", "Frame", "FrameFields", "Lost", "ModelChoice", "ModelCommitted",
    "ModelResult", "Prepare", "Prepared", "ReceiverEos", "Result", "Series", "Skip",
    "StageError", "StageReady", "UseModel",
]  # fmt: skip


# ----------------------------------------------------------------------------- frames


class FrameFields(TypedDict):
    """The keys of a frame's header that travel with it through every stage (no ``t``)."""

    slot: int  # its shared-memory slot ...
    gen: int  # ... and the slot's generation (a reused slot reads as gone)
    series: str
    index: int  # the frame's index in its series, as the source numbered it
    ts: float  # the source's timestamp (s since the epoch)
    time_s: float  # the frame's time in its series (s): the camera's clock, or the file's
    recv: float  # when the receiver took it (time.time())
    shape: list[int]  # (height, width)
    dtype: str  # numpy dtype name of the pixels
    px_nm: float | None  # the pixel size the source gave (nm), if any
    seq: int  # the receiver's number for it, unique in the run (the recorder's key)
    fps: float | None  # a file's own frame rate, if it states one
    segment: int  # tracking segment: a restarted series starts a new one (validate.py)


class Frame(FrameFields):
    """A frame's header: receiver → batcher (to analyse) and → output worker (to record)."""

    t: Literal["frame"]


class BatchedFrame(Frame):
    """A frame's header in a :class:`Batch`: batcher → engine worker, numbered in analysis
    order."""

    aseq: int  # the batcher's analysis order (the measure worker reorders by it)


class Series(TypedDict):
    """A series started or ended: receiver → batcher (flush at its end) and → output worker."""

    t: Literal["series"]
    event: Literal["start", "end"]
    series: str
    ts: float
    frames: int | None  # the frames the source announced (start) or sent (end), if known
    # start only
    shape: NotRequired[list[int] | None]
    dtype: NotRequired[str | None]
    pixel_size_nm: NotRequired[float | None]
    synthesized: NotRequired[bool]  # made up by the source (its start message was missed)
    fps: NotRequired[float | None]
    # end only
    aborted: NotRequired[bool]


class Skip(TypedDict):
    """A frame recorded but never analysed (duplicate index, backpressure): receiver or
    batcher → output worker."""

    t: Literal["skip"]
    series: str
    index: int
    seq: int


class Lost(TypedDict):
    """A frame whose analysis will not come (engine died, engine or measure error, slot
    reused): batcher or measure worker → output worker."""

    t: Literal["lost"]
    series: str
    index: int
    seq: int
    why: str


class ReceiverEos(TypedDict):
    """The source ended or a stop was asked for: receiver → batcher and → output worker."""

    t: Literal["eos"]
    reason: str
    frames: int  # frames the receiver numbered (its next seq)


# ----------------------------------------------------------------------------- analysis


class ModelChoice(TypedDict):
    """The model every batch names since a swap (``batch.model``, ``model_committed``)."""

    model: str  # name@sha256[:8] (loopline.io.runfolder.model_id)
    path: str
    engine: str | None  # the runtime that loaded it


class Batch(TypedDict):
    """Up to ``batch.size`` frames to analyse: batcher → one idle engine worker."""

    t: Literal["batch"]
    frames: list[BatchedFrame]
    model: NotRequired[ModelChoice]  # since a model swap: the model to run them on


class EngineReady(TypedDict):
    """Idle, send a batch: engine worker → batcher (after each batch, and every 2 s idle)."""

    t: Literal["ready"]
    pid: int
    model: str


class Det(FrameFields):
    """A frame's detections (masks in its slot, ``n`` of them): engine worker → measure
    worker."""

    t: Literal["det"]
    aseq: int
    n: int  # masks written to the slot: those of the first n instances
    boxes: list[list[float]]  # every instance, masked ones first: (x0, y0, x1, y1) px
    scores: list[float]
    classes: list[int]
    timings_ms: dict[str, float]
    engine: str  # model name and runtime, e.g. "defects/openvino"
    model: str  # name@sha256[:8]
    model_path: str | None


class EngineLost(FrameFields):
    """A frame the engine could not analyse (engine error, slot reused): engine worker →
    measure worker, which frees its slot and passes it on as :class:`Lost`."""

    t: Literal["lost"]
    aseq: int
    why: str


class BatcherEos(TypedDict):
    """Drained, every batch handed out: batcher → measure worker."""

    t: Literal["eos"]
    seq_total: int  # analysis numbers handed out (aseq 0 .. seq_total - 1)


class Result(TypedDict):
    """A frame measured and tracked (or measured only: ``fate``): measure worker → output
    worker. The frame message of :mod:`loopline.analysis.message`, with the recorder's
    bookkeeping (``seq``, ``ts``, ``recv``, ``model_path``)."""

    t: Literal["result"]
    series: str
    index: int
    seq: int
    ts: float
    recv: float
    shape: list[int]
    time_s: float
    px_nm: float | None
    row: dict[str, Any]  # its series.csv row
    tracks: list[dict[str, Any]]  # its tracks.csv rows, with outlines (contour_px, box_px)
    pairs: list[dict[str, Any]]  # its pairs.csv rows
    track_summary: list[dict[str, Any]]  # summary rows of the tracks that ended with it
    alarms: list[dict[str, Any]]  # alarms.csv rows: the frame rules raised or cleared
    timings_ms: dict[str, float]
    engine: str | None
    model: str | None
    model_path: str | None
    fate: NotRequired[Literal["analysed_untracked"]]  # came back after its successors


class Analysis(TypedDict):
    """A series' analysis ended (a new series, or the end of the run): measure worker →
    output worker."""

    t: Literal["analysis"]
    series: str
    summary: dict[str, Any]
    track_summary: list[dict[str, Any]]  # the summary rows of its open tracks


class EosAnalysis(TypedDict):
    """Drained, every result sent: measure worker → output worker."""

    t: Literal["eos_analysis"]


# ----------------------------------------------------------------------------- model swaps


class UseModel(TypedDict):
    """Swap to this model: supervisor → batcher (a control-socket or ``engine.watch``
    request)."""

    t: Literal["use_model"]
    req: int  # the supervisor's number for the swap
    path: str


class Prepare(TypedDict):
    """Load this model beside the running one: batcher → every engine worker."""

    t: Literal["prepare"]
    req: int
    path: str


class Prepared(TypedDict):
    """The model of a ``prepare`` loaded and checked, or why not: engine worker → batcher."""

    t: Literal["prepared"]
    pid: int
    req: int
    ok: bool
    error: NotRequired[str]  # not ok: one line
    model: NotRequired[str]  # ok: name@sha256[:8]
    runtime: NotRequired[str]
    engine: NotRequired[str]
    load_s: NotRequired[float]


class Abort(TypedDict):
    """Drop the model loaded for this swap (refused elsewhere): batcher → engine worker."""

    t: Literal["abort"]
    req: int


class ModelCommitted(TypedDict):
    """The model in use since the last swap: supervisor → a restarted batcher."""

    t: Literal["model_committed"]
    model: ModelChoice


class EngineDead(TypedDict):
    """That engine worker died (its batch is lost): supervisor → batcher."""

    t: Literal["engine_dead"]
    pid: int


class ChainReset(TypedDict):
    """An analysis worker died (batcher, engine or measure): supervisor → output worker,
    which stops waiting for frames received before ``before``."""

    t: Literal["chain_reset"]
    before: float  # time.time() of the death
    stage: str


# ----------------------------------------------------------------------------- ctl


class CtlMessage(TypedDict):
    """What every message on the ``ctl`` channel carries: stage → supervisor."""

    stage: str
    pid: int


class StageReady(CtlMessage):
    """Set up, running: every stage → supervisor (:func:`~loopline.daemon.stages.worker_main`)."""

    t: Literal["ready"]


class StageError(CtlMessage):
    """The stage raised and exits non-zero: every stage → supervisor (``worker_main``)."""

    t: Literal["error"]
    phase: Literal["setup", "run"]  # setup: the daemon stops; run: the stage is restarted
    type: str
    message: str
    traceback: str


class Draining(CtlMessage):
    """The source ended (or a stop was asked for), the pipeline drains: receiver →
    supervisor."""

    t: Literal["draining"]
    reason: str


class EngineModel(CtlMessage):
    """The model an engine worker runs, at start and after a switch: engine → supervisor."""

    t: Literal["model"]
    model: str
    runtime: str
    path: str | None


class ModelResult(CtlMessage):
    """A swap's outcome: batcher → supervisor, which answers the request."""

    t: Literal["model_result"]
    req: int
    ok: bool
    path: NotRequired[str]
    error: NotRequired[str]  # not ok
    model: NotRequired[str]  # ok: the new model, name@sha256[:8]
    runtime: NotRequired[str]
    engine: NotRequired[str]
    first_aseq: NotRequired[int]  # ok: the first frame (analysis order) it analyses
    load_s: NotRequired[float]


class Done(CtlMessage):
    """Everything recorded, the run folder closed: output worker → supervisor."""

    t: Literal["done"]
