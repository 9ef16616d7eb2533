"""OpenVINO engine (CPU), FP32 or INT8 (``loopline export --format openvino --int8``)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from .._offline import configure_offline
from .yolo import YoloEngine, split_outputs

logger = logging.getLogger(__name__)

__all__ = ["OpenVinoEngine", "find_xml"]


def find_xml(path: Path) -> Path:
    """The ``.xml`` of an OpenVINO model given the file or its folder."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise FileNotFoundError(f"expected one .xml model in {path}, found {len(xmls)}")
        return xmls[0]
    return path


class OpenVinoEngine(YoloEngine):
    """YOLOv8-seg as OpenVINO IR (``.xml`` + ``.bin``, or their folder).

    The network is compiled once per batch size and input side with static shapes (faster on
    CPU than a dynamic compile) and the LATENCY hint (THROUGHPUT is ~2x slower for synchronous
    calls); compiled networks are kept, so a stream of frames of one size compiles once per
    batch size. A model of dynamic height and width (the shipped ONNX, and IR exported from
    it) takes tiles up to ``tile_max`` (``dynamic_size``); tiles of one frame share one side.

    Parameters
    ----------
    hint : {"LATENCY", "THROUGHPUT"}
    threads : int or None
        Inference threads (default: every core).
    precision : {"f32", "bf16", "f16"} or None
        Floating-point precision of the non-INT8 layers. None lets OpenVINO choose: on CPUs with
        AMX or AVX512-BF16 (Sapphire Rapids and later) that is bf16, about 1.5-2x faster than
        f32 with a small loss; ``"f32"`` gives results equal to torch FP32.
    """

    name = "openvino"
    compiles_per_shape = True  # one compiled network per (batch, side): see _request

    def __init__(self, model=None, *, hint: str = "LATENCY", threads: int | None = None,
                 precision: str | None = None, **kwargs) -> None:  # fmt: skip
        super().__init__(model, **kwargs)
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise ValueError(f"hint must be 'LATENCY' or 'THROUGHPUT', got {hint!r}")
        if precision not in (None, "f32", "bf16", "f16"):
            raise ValueError(f"precision must be None, 'f32', 'bf16' or 'f16', got {precision!r}")
        self.precision = precision
        self.hint = hint
        self.threads = threads
        # (batch, side) -> compiled network and its request
        self._compiled: dict[tuple[int, int], object] = {}
        self._requests: dict[tuple[int, int], object] = {}
        self._model = None

    def load(self) -> None:
        if self._model is not None:
            return
        configure_offline()
        try:
            import openvino as ov
        except ImportError as e:
            raise ImportError(
                "the openvino engine needs OpenVINO: pip install 'loopline[openvino]'"
            ) from e
        self._ov = ov
        self.core = ov.Core()
        self._model = self.core.read_model(str(find_xml(self.model)))
        shape = self._model.inputs[0].get_partial_shape()
        if shape[0].is_static:
            self.static_batch = shape[0].get_length()
        if shape[2].is_static and shape[2].get_length() != self.imgsz:
            logger.warning("%s has a fixed input size %d: using it", self.model, shape[2])
            self.imgsz = shape[2].get_length()
        self.dynamic_size = shape[2].is_dynamic and shape[3].is_dynamic
        self.loaded = True

    def _request(self, b: int, side: int):
        req = self._requests.get((b, side))
        if req is None:
            t0 = time.perf_counter()
            m = self._model.clone()
            m.reshape({m.inputs[0]: [b, 3, side, side]})
            cfg = {"PERFORMANCE_HINT": self.hint,
                   "INFERENCE_NUM_THREADS": self.threads or os.cpu_count() or 1}  # fmt: skip
            if self.precision:
                cfg["INFERENCE_PRECISION_HINT"] = self.precision
            self._compiled[b, side] = self.core.compile_model(m, "CPU", cfg)
            req = self._requests[b, side] = self._compiled[b, side].create_infer_request()
            logger.info("openvino: compiled %s for batch %d at %d px in %.2f s", self.model, b,
                        side, time.perf_counter() - t0)  # fmt: skip
        return req

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        req = self._request(len(batch), int(batch.shape[2]))
        req.infer({0: batch})
        outs = [req.get_output_tensor(i).data for i in range(len(req.model_outputs))]
        return split_outputs(outs)
