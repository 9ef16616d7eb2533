"""The one small interface every inference engine implements.

An engine turns a batch of grey frames into per-frame instances: masks at frame resolution,
boxes, scores and classes (0 = dislocation, 1 = loop). Runtimes differ only in ``load`` and
``forward``; pre- and post-processing are shared (``loopline.engines.ops``) so that every
engine gives the same result for the same frames.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CLASS_NAMES", "INFERENCE_MODES", "Detections", "Engine", "above_threshold",
           "check_inference", "class_threshold"]

CLASS_NAMES: tuple[str, ...] = ("dislocation", "loop")

#: how a frame is fed to the network: ``tiles``: one larger than the network input as
#: native-scale overlapping tiles merged across seams (``loopline.engines.tiling``), one that
#: fits letterboxed (enlarged to ``imgsz``, as training enlarges a small frame); ``native``:
#: the same tiles, and a frame that fits padded at its own pixel scale, never enlarged;
#: ``letterbox``: every frame shrunk or enlarged to ``imgsz``
INFERENCE_MODES: tuple[str, ...] = ("tiles", "native", "letterbox")


def default_tile_max(imgsz: int) -> int:
    """Largest tile side (px) by default: 1.25 ``imgsz`` rounded to a multiple of 32."""
    return max(int(imgsz), 32 * round(1.25 * imgsz / 32))


def check_inference(value: object) -> str:
    """``value`` if it names an inference mode, else a ValueError naming the modes."""
    if value not in INFERENCE_MODES:
        raise ValueError(f"inference must be one of {', '.join(INFERENCE_MODES)}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Detections:
    """Instances found in one frame.

    Attributes
    ----------
    masks : (N, H, W) bool
        Instance masks at frame resolution.
    boxes : (N, 4) float32
        Boxes ``x0, y0, x1, y1`` in frame pixels.
    scores : (N,) float32
        Confidence in [0, 1].
    classes : (N,) int64
        Class index into ``CLASS_NAMES``.
    timings_ms : dict
        Milliseconds per stage (``preprocess``, ``inference``, ``postprocess``) for this frame
        (a batch's time shared equally between its frames).
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m, b, s, c = self.masks, self.boxes, self.scores, self.classes
        if m.ndim != 3 or m.dtype != bool:
            raise ValueError(f"masks must be a (N, H, W) bool array, got {m.shape} {m.dtype}")
        n = m.shape[0]
        if b.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got {b.shape}")
        if s.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {s.shape}")
        if c.shape != (n,):
            raise ValueError(f"classes must have shape ({n},), got {c.shape}")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape (H, W)."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def empty(cls, shape: tuple[int, int], timings_ms: dict[str, float] | None = None):
        h, w = shape
        return cls(
            masks=np.zeros((0, h, w), bool), boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32), classes=np.zeros(0, np.int64),
            timings_ms=dict(timings_ms or {}),
        )  # fmt: skip

    def select(self, keep: np.ndarray) -> Detections:
        """A subset by boolean mask or index array."""
        return Detections(
            masks=self.masks[keep], boxes=self.boxes[keep], scores=self.scores[keep],
            classes=self.classes[keep], timings_ms=dict(self.timings_ms),
        )  # fmt: skip


def above_threshold(det: Detections, class_conf: Sequence[float]) -> np.ndarray:
    """Which instances score at least their class's threshold (``class_conf[class]``; one
    value for every class, or a class past the end, takes the last one), as a bool array."""
    thr = np.asarray(class_conf, np.float64)
    return det.scores >= thr[np.minimum(det.classes.astype(np.int64), len(thr) - 1)]


def class_threshold(det: Detections, class_conf: Sequence[float]) -> Detections:
    """The instances scoring at least their class's threshold (:func:`above_threshold`).

    >>> d = Detections(np.zeros((3, 2, 2), bool), np.zeros((3, 4), np.float32),
    ...                np.array([0.2, 0.2, 0.3], np.float32), np.array([0, 1, 1]))
    >>> class_threshold(d, (0.15, 0.25)).scores.tolist()
    [0.20000000298023224, 0.30000001192092896]
    """
    keep = above_threshold(det, class_conf)
    return det if keep.all() else det.select(keep)


class Engine(ABC):
    """Load once, then ``forward`` batches of frames.

    Parameters
    ----------
    model : Path or None
        Model file (``.pt``, ``.onnx``, ``.xml``, ``.engine``) or None for weight-free engines.
    imgsz : int
        Network input size (square, px).
    conf : float or (float, float)
        Score threshold: one for every class, or one per class (dislocation, loop). The runtime
        keeps candidates down to the lower one; each class's own applies after it.
    iou : float
        NMS IoU threshold.
    max_det : int
        Most instances kept per network call: per frame that fits (letterboxed), per tile of
        a tiled frame.
    inference : {"tiles", "native", "letterbox"}
        How a frame with a side longer than ``imgsz`` is fed to the network: ``"tiles"``
        covers it with overlapping tiles (``imgsz``, or up to ``tile_max``) at its own pixel
        scale and merges the instances across seams (``loopline.engines.tiling``);
        ``"letterbox"`` shrinks the whole frame to ``imgsz``. Frames that fit are letterboxed
        (enlarged to ``imgsz``, as ultralytics' training enlarges them) with both;
        ``"native"`` tiles as ``"tiles"`` and pads a frame that fits at its own pixel scale.
        Weight-free engines (``ridge``) see whole frames and ignore it.
    tile_overlap : int
        Least overlap of neighbouring tiles (px), in [0, imgsz / 2].
    tile_max : int or None
        Largest tile side (px, a multiple of 32, >= ``imgsz``) where the runtime takes any
        input size (``dynamic_size``: torch, and ONNX Runtime or OpenVINO with a model of
        dynamic height and width): the tiler then picks, per frame, the side in
        ``[imgsz, tile_max]`` whose grid feeds the fewest pixels (a 1024x1024 frame: 2x2
        tiles of 544 instead of 3x3 of 512, ``loopline.engines.tiling.tile_plan``). None:
        1.25 ``imgsz`` rounded to 32 (640 for 512); ``imgsz``: tiles of ``imgsz`` always. A
        runtime with a fixed input size (TensorRT, a static model) tiles at ``imgsz``.
    max_det_frame : int
        Most instances kept per tiled frame after merging across seams, by score (a dense
        1024x1024 irradiation frame holds 600+ loops). Each is a (H, W) bool mask: 1 MiB at
        1024x1024.
    model_nm_per_px : float or None
        Pixel size the model was trained at (nm); with a frame's pixel size
        (``engine(frames, nm_per_px=...)``) the frame is resampled to it first. None: frames
        are used at their own pixel scale.
    mask_annotations : bool
        Find burnt-in annotations (text, scale bars, information strips) in every frame, set
        their pixels to the frame's median before the runtime sees it, and drop the instances
        that lie mostly inside them (``loopline.engines.burnt_in``; about 3 ms a 512x512
        frame). Counted in ``annotation_drops``. Off by default: on a plain frame it can take
        part of a short, straight, dark line for a bar and erase it (a 3 px line of grey 40 on
        a field of 170-210 was split in two); for a fixed overlay use ``ignore_regions``.
    ignore_regions : sequence of (x0, y0, x1, y1)
        Boxes (frame px) treated as annotations always, also with ``mask_annotations`` off.
    loop_vote : bool
        One loop per cluster of overlapping candidate boxes (IoU > 0.5), scored by the
        cluster's summed scores (``loopline.engines.votes``); the network then runs at a score
        floor of 0.05 and ``conf`` applies to the voted scores. Dislocations are untouched.
    """

    name: str = "base"
    #: the runtime votes on loop candidates itself, before decoding masks (``loop_vote``:
    #: the YOLO runtimes' ``ops.postprocess``); else ``__call__`` votes on its instances
    votes_itself: bool = False
    #: the runtime builds a network per input shape (batch size, side) on first use, so the
    #: daemon runs every shape it will send once before it says ready (OpenVINO, TensorRT)
    compiles_per_shape: bool = False

    def __init__(
        self,
        model: Path | None = None,
        *,
        imgsz: int = 512,
        conf: float | Sequence[float] = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        device: str = "cpu",
        inference: str = "tiles",
        tile_overlap: int = 64,
        tile_max: int | None = None,
        max_det_frame: int = 3000,
        model_nm_per_px: float | None = None,
        line_dedupe: float = 0.0,
        line_snap: float = 0.0,
        mask_annotations: bool = False,
        ignore_regions: Sequence[Sequence[float]] | None = (),
        loop_vote: bool = False,
    ) -> None:
        from ..models import score_thresholds

        class_conf = score_thresholds(conf)
        if not 0.0 < iou <= 1.0:
            raise ValueError(f"iou must lie in (0, 1], got {iou}")
        if imgsz < 32 or imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (>= 32), got {imgsz}")
        check_inference(inference)
        if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or not (
                0 <= tile_overlap <= imgsz // 2):
            raise ValueError(f"tile_overlap must be an int in [0, {imgsz // 2}] px (imgsz / 2), "
                             f"got {tile_overlap!r}")  # fmt: skip
        if tile_max is None:
            tile_max = default_tile_max(imgsz)
        if isinstance(tile_max, bool) or not isinstance(tile_max, int) or tile_max < imgsz or (
                tile_max % 32):
            raise ValueError(f"tile_max must be a multiple of 32 >= imgsz ({imgsz}) px or None, "
                             f"got {tile_max!r}")  # fmt: skip
        for key, v in (("max_det", max_det), ("max_det_frame", max_det_frame)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key} must be an int >= 1, got {v!r}")
        if isinstance(line_dedupe, bool) or not isinstance(line_dedupe, (int, float)) or not (
                0.0 <= line_dedupe <= 20.0):
            raise ValueError(f"line_dedupe must be a distance in [0, 20] px (0 = off), "
                             f"got {line_dedupe!r}")  # fmt: skip
        if isinstance(line_snap, bool) or not isinstance(line_snap, (int, float)) or not (
                0.0 <= line_snap <= 20.0):
            raise ValueError(f"line_snap must be a distance in [0, 20] px (0 = off), "
                             f"got {line_snap!r}")  # fmt: skip
        if not isinstance(loop_vote, (bool, np.bool_)):
            raise ValueError(f"loop_vote must be true or false, got {loop_vote!r}")
        if model_nm_per_px is not None and not 0.0 < model_nm_per_px < float("inf"):
            raise ValueError(f"model_nm_per_px must be > 0 or None, got {model_nm_per_px}")
        self.model = Path(model) if model is not None else None
        self.imgsz = imgsz
        #: the runtime's score floor: the lowest class threshold
        self.conf = float(class_conf.min())
        #: (dislocation, loop) score thresholds, applied after the runtime; None: ``conf`` for all
        self.class_conf = tuple(float(c) for c in class_conf) if len(set(class_conf)) > 1 else None
        self.iou = iou
        self.max_det = max_det
        self.device = device
        self.inference = inference
        self.tile_overlap = tile_overlap
        self.tile_max = tile_max
        self.max_det_frame = max_det_frame
        #: whether the runtime takes any input size (set by ``load`` from the model's inputs)
        self.dynamic_size = False
        self.model_nm_per_px = model_nm_per_px
        #: px: drop a dislocation whose centre line retraces a better-scored one within this
        #: distance (``loopline.engines.duplicates``); 0 = off
        self.line_dedupe = float(line_dedupe)
        #: px: move each dislocation's centre line up to this far onto the valley it rides in
        #: the full-resolution frame (``loopline.engines.snap``), before ``line_dedupe``; 0 = off
        self.line_snap = float(line_snap)
        #: one loop per cluster of overlapping candidates, scored by their sum
        #: (``loopline.engines.votes``)
        self.loop_vote = bool(loop_vote)
        from .burnt_in import check_regions

        self.mask_annotations = bool(mask_annotations)
        self.ignore_regions = check_regions(ignore_regions)
        #: instances dropped because they lay mostly on burnt-in annotations (all frames)
        self.annotation_drops = 0
        self.loaded = False

    @property
    def tile_limit(self) -> int:
        """Largest tile side (px) this engine feeds: ``tile_max`` where the runtime takes any
        input size, else ``imgsz``."""
        return max(self.tile_max, self.imgsz) if self.dynamic_size else self.imgsz

    @abstractmethod
    def load(self) -> None:
        """Read the model and prepare the runtime (idempotent)."""

    @abstractmethod
    def forward(self, frames: list[np.ndarray]) -> list[Detections]:
        """Detect instances in a batch of (H, W) grey frames (uint8 or uint16).

        Engines that resample frames to their model's pixel size (the YOLO runtimes, torch)
        also take ``nm_per_px``: the frames' pixel size (nm), one value or one per frame.
        """

    def __call__(
        self, frames: list[np.ndarray], *, nm_per_px: float | Sequence[float | None] | None = None
    ) -> list[Detections]:
        if not self.loaded:
            self.load()
            self.loaded = True
        masks = None
        if getattr(self, "mask_annotations", False) or getattr(self, "ignore_regions", ()):
            frames, masks, ann_ms = self._mask_annotations(frames)
        if getattr(self, "loop_vote", False) and not self.votes_itself:
            dets = self._forward_voted(frames, nm_per_px)
        else:
            dets = self._forward(frames, nm_per_px)
        if self.class_conf is not None:
            dets = [class_threshold(d, self.class_conf) for d in dets]
        if self.line_snap > 0:
            # imported here, as below: scikit-image costs ~0.2 s at start-up
            from .snap import snap_lines

            dets = [snap_lines(f, d, search=self.line_snap)
                    for f, d in zip(frames, dets, strict=True)]  # fmt: skip
        if self.line_dedupe > 0:
            # imported here: scikit-image costs ~0.2 s at start-up, and the option is off by default
            from .duplicates import suppress_duplicate_lines

            dets = [suppress_duplicate_lines(d, tol=self.line_dedupe) for d in dets]
        if masks is not None:
            dets = self._drop_annotated(dets, masks, ann_ms)
        return dets

    def _forward(self, frames: list[np.ndarray], nm_per_px) -> list[Detections]:
        if nm_per_px is None:  # engines that know no pixel size take frames only
            return self.forward(frames)
        return self.forward(frames, nm_per_px=nm_per_px)  # type: ignore[call-arg]

    def _forward_voted(self, frames: list[np.ndarray], nm_per_px) -> list[Detections]:
        """The network at the votes' score floor, then its loops voted and ``conf`` applied."""
        from .votes import VOTE_FLOOR, vote_loops

        conf, self.conf = self.conf, min(self.conf, VOTE_FLOOR)
        try:
            dets = self._forward(frames, nm_per_px)
        finally:
            self.conf = conf
        return [vote_loops(d, conf) for d in dets]

    def _mask_annotations(self, frames: list[np.ndarray]
                          ) -> tuple[list[np.ndarray], list[np.ndarray], float]:  # fmt: skip
        """Frames with their burnt-in annotations set to the median, the masks, ms a frame."""
        from .burnt_in import annotation_mask, fill_annotations

        t0 = time.perf_counter()
        masks = [annotation_mask(f, regions=self.ignore_regions, detect=self.mask_annotations)
                 for f in frames]  # fmt: skip
        frames = [fill_annotations(f, m) for f, m in zip(frames, masks, strict=True)]
        return frames, masks, (time.perf_counter() - t0) * 1e3 / max(len(frames), 1)

    def _drop_annotated(self, dets: list[Detections], masks: list[np.ndarray],
                        ann_ms: float) -> list[Detections]:  # fmt: skip
        from .burnt_in import drop_annotated

        out = []
        for d, m in zip(dets, masks, strict=True):
            d, k = drop_annotated(d, m)
            if k:
                self.annotation_drops += k
                logger.debug("%d instance(s) on burnt-in annotations dropped", k)
            # finding the annotations is pre-processing
            d.timings_ms["preprocess"] = d.timings_ms.get("preprocess", 0.0) + ann_ms
            out.append(d)
        return out

    def __repr__(self) -> str:
        conf = self.class_conf or self.conf
        return (f"{type(self).__name__}(model={self.model}, imgsz={self.imgsz}, conf={conf}, "
                f"inference={self.inference})")  # fmt: skip
