"""TensorRT engine (NVIDIA GPU): build from the ONNX export, FP16 or INT8, dynamic batch.

TensorRT cannot be installed on machines without NVIDIA's libraries, so it is imported only
inside the functions that need it and a missing install raises an ImportError naming the
extra (``pip install 'loopline[gpu]'``, plus torch with CUDA for the device buffers).

Recommended build settings for a GPU user
-----------------------------------------
(``TensorRTSettings()`` defaults; ``loopline export --format engine`` uses them)

* **Build on the machine that runs it.** An ``.engine`` is tied to the GPU model and the
  TensorRT version; rebuild after a driver/TensorRT upgrade.
* **Precision: FP16** (``--half``, the default). On any GPU since Turing it is ~2x faster
  than FP32 with masks indistinguishable from FP32. Use **INT8** (``--int8``) only on a
  GPU that is short of time with FP16; it is calibrated with ``IInt8EntropyCalibrator2`` on
  >= 512 synthetic frames at the daemon's frame size (FP16 stays enabled as the fallback for
  layers INT8 does not suit), and the head's last layers (box/score Sigmoid, DFL) are kept in
  FP16 because their calibration costs confidence accuracy. Check it with ``pytest -m gpu``.
* **Input: fixed 512 x 512** (the frame size of the model's deployment) and a **dynamic
  batch** profile ``min 1 / opt 4 / max 8``: the daemon runs batch 1 when live and batches
  when catching up; ``opt`` is where TensorRT tunes its kernels.
* **Workspace: 2 GiB** (``set_memory_pool_limit(WORKSPACE)``), enough for every tactic of a
  YOLOv8n-seg at these sizes.
* Builder optimisation level 3 (TensorRT's default); a higher level buys little for
  YOLOv8n and doubles build time.
* ONNX: opset 17+, exported with a dynamic batch (``loopline export --format onnx``), no NMS
  in the graph (loopline's NMS and crop-first mask decoding run on the CPU after a
  device-to-host copy of two small tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .yolo import YoloEngine, split_outputs

logger = logging.getLogger(__name__)

__all__ = ["TensorRTEngine", "TensorRTSettings", "build_engine", "import_tensorrt"]

_EXTRA = "pip install 'loopline[gpu]'"


def import_tensorrt():
    """``tensorrt``, or an ImportError naming the extra to install."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(
            f"the tensorrt engine needs NVIDIA TensorRT and a CUDA GPU: {_EXTRA}"
        ) from e
    return trt


def _torch_cuda():
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "the tensorrt engine uses torch (CUDA build) for device buffers: "
            "pip install 'loopline[train]'"
        ) from e
    if not torch.cuda.is_available():
        raise RuntimeError("the tensorrt engine needs a CUDA GPU; none is visible")
    return torch


@dataclass(frozen=True)
class TensorRTSettings:
    """How to build an engine (the recommended settings are the defaults).

    Attributes
    ----------
    imgsz : int
        Fixed square input (px).
    min_batch, opt_batch, max_batch : int
        Dynamic-batch optimisation profile.
    fp16, int8 : bool
        Precision flags (INT8 keeps FP16 as the fallback).
    workspace_gib : float
        Builder workspace memory pool.
    calib_frames : int
        Synthetic frames for the INT8 entropy calibrator.
    calib_batch : int
        Calibration batch size (must lie within the profile).
    opt_level : int
        Builder optimisation level (0-5).
    """

    imgsz: int = 512
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8
    fp16: bool = True
    int8: bool = False
    workspace_gib: float = 2.0
    calib_frames: int = 512
    calib_batch: int = 8
    opt_level: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                "batch profile must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if self.imgsz < 32 or self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32, got {self.imgsz}")
        if self.int8 and not self.min_batch <= self.calib_batch <= self.max_batch:
            raise ValueError(
                f"calib_batch {self.calib_batch} must lie in the profile "
                f"[{self.min_batch}, {self.max_batch}]"
            )
        if not 0 <= self.opt_level <= 5:
            raise ValueError(f"opt_level must lie in [0, 5], got {self.opt_level}")

    def profile_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        """``min``/``opt``/``max`` input shapes (B, 3, S, S) of the optimisation profile."""
        s = self.imgsz
        return {"min": (self.min_batch, 3, s, s), "opt": (self.opt_batch, 3, s, s),
                "max": (self.max_batch, 3, s, s)}  # fmt: skip

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))

    def as_dict(self) -> dict:
        return asdict(self)


def _make_calibrator(trt, batches: Iterable[np.ndarray], cache: Path):
    """An ``IInt8EntropyCalibrator2`` fed with (B, 3, S, S) float32 batches."""
    torch = _torch_cuda()

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._it: Iterator[np.ndarray] = iter(batches)
            self._first = next(self._it)
            self._dev = torch.empty(self._first.shape, dtype=torch.float32, device="cuda")
            self._pending: np.ndarray | None = self._first

        def get_batch_size(self) -> int:
            return int(self._first.shape[0])

        def get_batch(self, names, p_str=None):
            b = self._pending if self._pending is not None else next(self._it, None)
            self._pending = None
            if b is None:
                return None  # calibration done
            self._dev.copy_(torch.from_numpy(np.ascontiguousarray(b)))
            return [int(self._dev.data_ptr())]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))

    return _Calibrator()


def build_engine(
    onnx_path: Path,
    out: Path,
    settings: TensorRTSettings | None = None,
    *,
    calib_batches: Iterable[np.ndarray] | None = None,
) -> Path:
    """Build a serialized TensorRT engine from a YOLOv8-seg ONNX file.

    Parameters
    ----------
    onnx_path : Path
        ONNX export with a dynamic (or matching) batch dimension.
    out : Path
        ``.engine`` file to write; an INT8 build also writes ``<out>.calib`` (calibration cache).
    settings : TensorRTSettings
    calib_batches : iterable of (calib_batch, 3, S, S) float32, optional
        INT8 calibration data (default: ``calibration_batches`` of synthetic frames).
    """
    settings = settings or TensorRTSettings()
    trt = import_tensorrt()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = settings.opt_level
    inp = network.get_input(0)
    shapes = settings.profile_shapes()
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if settings.fp16 or settings.int8:
        if not builder.platform_has_fast_fp16:
            logger.warning("this GPU has no fast FP16: the engine may be slow")
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.int8:
        from .calibration import calibration_batches

        config.set_flag(trt.BuilderFlag.INT8)
        batches = calib_batches or calibration_batches(
            settings.calib_frames, batch=settings.calib_batch, imgsz=settings.imgsz
        )
        calib_profile = builder.create_optimization_profile()
        b = settings.calib_batch
        calib_profile.set_shape(inp.name, *([(b, 3, settings.imgsz, settings.imgsz)] * 3))
        config.set_calibration_profile(calib_profile)
        config.int8_calibrator = _make_calibrator(trt, batches, Path(f"{out}.calib"))
        _keep_head_fp16(trt, network, config)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    out = Path(out)
    out.write_bytes(bytes(blob))
    logger.info("wrote %s (%s)", out, settings.as_dict())
    return out


def _keep_head_fp16(trt, network, config) -> None:
    """Keep the detection head's Sigmoid and DFL out of INT8 (confidence calibration)."""
    import re

    names = [network.get_layer(i).name for i in range(network.num_layers)]
    idx = [int(m.group(1)) for n in names if (m := re.search(r"/model\.(\d+)/", n))]
    head = f"/model.{max(idx)}/" if idx else None
    if head is None:
        return
    if hasattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS"):
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if head in layer.name and ("dfl" in layer.name or "Sigmoid" in layer.name):
            layer.precision = trt.float16


class TensorRTEngine(YoloEngine):
    """A serialized TensorRT engine (``.engine``) on a CUDA GPU.

    Input and output buffers are torch CUDA tensors; outputs are copied to the host for
    loopline's NMS and mask decoding.
    """

    name = "tensorrt"
    compiles_per_shape = True  # an optimisation profile's shapes are set per (batch, side)

    def __init__(self, model=None, *, device: str = "cuda", **kwargs) -> None:
        super().__init__(model, device=device, **kwargs)
        self.engine = None

    def load(self) -> None:
        if self.engine is not None:
            return
        trt = import_tensorrt()
        self.torch = _torch_cuda()
        log = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(log)
        self.engine = self.runtime.deserialize_cuda_engine(Path(self.model).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize {self.model} (other GPU/TensorRT?)")
        self.context = self.engine.create_execution_context()
        self.v3 = hasattr(self.engine, "num_io_tensors")  # TensorRT >= 8.5 named tensors
        if self.v3:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            is_in = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
            shape_of = self.engine.get_tensor_shape
        else:  # TensorRT 8.x bindings
            names = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)]
            is_in = [self.engine.binding_is_input(i) for i in range(len(names))]
            shape_of = self.engine.get_binding_shape
        self.names = names
        self.input_name = next(n for n, i in zip(names, is_in, strict=True) if i)
        self.output_names = [n for n, i in zip(names, is_in, strict=True) if not i]
        s = shape_of(self.input_name)
        if s[2] > 0 and s[2] != self.imgsz:
            logger.warning("%s was built for imgsz %d: using it", self.model, s[2])
            self.imgsz = int(s[2])
        if s[0] > 0:
            self.static_batch = int(s[0])
        else:  # dynamic: the profile's max batch bounds a call
            mx = self.engine.get_tensor_profile_shape(self.input_name, 0)[2] if self.v3 else (
                self.engine.get_profile_shape(0, self.input_name)[2])  # fmt: skip
            self.max_batch = min(self.max_batch or mx[0], mx[0])
        self.stream = self.torch.cuda.Stream()
        self.loaded = True

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(batch).to("cuda", non_blocking=True)
        outs = {}
        if self.v3:
            self.context.set_input_shape(self.input_name, tuple(batch.shape))
            self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
            for n in self.output_names:
                shape = tuple(self.context.get_tensor_shape(n))
                outs[n] = torch.empty(shape, dtype=torch.float32, device="cuda")
                self.context.set_tensor_address(n, int(outs[n].data_ptr()))
            self.context.execute_async_v3(self.stream.cuda_stream)
        else:
            idx = self.names.index(self.input_name)
            self.context.set_binding_shape(idx, tuple(batch.shape))
            bindings = [0] * len(self.names)
            bindings[idx] = int(x.data_ptr())
            for n in self.output_names:
                i = self.names.index(n)
                shape = tuple(self.context.get_binding_shape(i))
                outs[n] = torch.empty(shape, dtype=torch.float32, device="cuda")
                bindings[i] = int(outs[n].data_ptr())
            self.context.execute_async_v2(bindings, self.stream.cuda_stream)
        self.stream.synchronize()
        return split_outputs([o.cpu().numpy() for o in outs.values()])
