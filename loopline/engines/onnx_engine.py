"""ONNX Runtime engine: CPU, or CUDA where onnxruntime-gpu and a GPU are present."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .._offline import configure_offline
from .yolo import YoloEngine, split_outputs

logger = logging.getLogger(__name__)

__all__ = ["OnnxEngine"]


class OnnxEngine(YoloEngine):
    """YOLOv8-seg exported to ONNX (``.onnx``; FP32 or INT8 QDQ), run by ONNX Runtime.

    Parameters
    ----------
    threads : int or None
        Intra-op threads (default: every core).
    """

    name = "onnx"

    def __init__(self, model=None, *, threads: int | None = None, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.threads = threads
        self.session = None

    def load(self) -> None:
        if self.session is not None:
            return
        configure_offline()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads or os.cpu_count() or 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ImportError(
                    "ONNX Runtime has no CUDA provider here: install onnxruntime-gpu, or use the "
                    "tensorrt engine (pip install 'loopline[gpu]')"
                )
            providers.insert(0, "CUDAExecutionProvider")
        path = Path(str(self.model))
        if not path.is_file():
            what = "a folder" if path.is_dir() else "nothing"
            raise FileNotFoundError(f"{path}: expected an ONNX model file, found {what}")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:  # ONNX Runtime raises its own classes (InvalidProtobuf, Fail...)
            if "protobuf" not in str(e).lower():
                raise
            raise ValueError(f"{path} is not an ONNX model (ONNX Runtime could not parse it: "
                             f"{str(e).splitlines()[0]})") from None  # fmt: skip
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        b, _, h, w = inp.shape
        if isinstance(b, int):
            self.static_batch = b
        if isinstance(h, int) and isinstance(w, int) and (h, w) != (self.imgsz, self.imgsz):
            logger.warning("%s has a fixed input %dx%d: using imgsz %d", self.model, h, w, h)
            self.imgsz = h
        # symbolic height and width ("height", "width"): tiles up to tile_max
        self.dynamic_size = not isinstance(h, int) and not isinstance(w, int)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.loaded = True

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: batch})
        return split_outputs(outs)
