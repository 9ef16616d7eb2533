"""Export a YOLOv8-seg model to the runtimes' formats, offline.

=========================  =====================================  ==========================
call                       writes (next to the model, or ``out``)  needs
=========================  =====================================  ==========================
``export_onnx``            ``<stem>.onnx`` (opset 17, dynamic)     ``loopline[train]``
``quantize_onnx``          ``<stem>.int8.onnx`` (QDQ, static)      core (onnxruntime)
``export_openvino``        ``<stem>_openvino_model/``              ``loopline[openvino]``
``export_openvino(int8)``  ``<stem>_int8_openvino_model/`` (NNCF)  ``loopline[int8]``
``export_engine``          ``<stem>.engine`` (FP16 / INT8)         ``loopline[gpu]`` + GPU
=========================  =====================================  ==========================

INT8 calibration uses synthetic frames (``loopline.engines.calibration``); the detection
head's last layers (score Sigmoid, box DFL, output convolutions) stay in float, as
ultralytics does, because quantising them costs confidence accuracy for little speed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._offline import configure_offline

logger = logging.getLogger(__name__)

__all__ = ["export_engine", "export_onnx", "export_openvino", "head_scope", "quantize_onnx"]

OPSET = 17


def _dest(model: Path, name: str, out: Path | None) -> Path:
    if out is None:
        return model.with_name(name)
    out = Path(out)
    return out / name if out.is_dir() or not out.suffix else out


def export_onnx(
    model: Path, *, imgsz: int = 512, out: Path | None = None, dynamic: bool = True,
    opset: int = OPSET, simplify: bool = True,
) -> Path:  # fmt: skip
    """``.pt`` -> ``.onnx`` with a dynamic batch (and size) via ultralytics, offline."""
    model = Path(model)
    if model.suffix != ".pt":
        raise ValueError(f"ONNX export starts from a .pt model, got {model}")
    configure_offline()
    try:
        from ultralytics import YOLO
    except ImportError as e:
        raise ImportError("ONNX export needs ultralytics: pip install 'loopline[train]'") from e
    from .._offline import use_all_threads

    use_all_threads()
    dest = _dest(model, f"{model.stem}.onnx", out)
    # ultralytics writes next to the .pt it loads: export from a copy in a scratch folder so
    # that an ONNX already beside the model (a shipped one) is never overwritten or moved.
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / model.name
        shutil.copyfile(model, src)
        f = YOLO(str(src), task="segment").export(
            format="onnx", imgsz=imgsz, dynamic=dynamic, opset=opset, simplify=simplify,
            device="cpu", verbose=False,
        )  # fmt: skip
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(f), dest)
    logger.info("wrote %s", dest)
    return dest


def head_scope(names: list[str]) -> str | None:
    """The ONNX name prefix of the detection head (``/model.<last>/``), or None."""
    import re

    idx = [int(m.group(1)) for n in names if (m := re.search(r"/model\.(\d+)/", n))]
    return f"/model.{max(idx)}/" if idx else None


def _head_float_nodes(names: list[str], types: list[str]) -> list[str]:
    """Head nodes kept out of INT8: everything in the head except the prototype branch."""
    head = head_scope(names)
    keep = []
    for n, t in zip(names, types, strict=True):
        if t == "Sigmoid" and "/m." not in n and head and n.startswith(head):
            keep.append(n)
        elif head and n.startswith(head) and not n.startswith(f"{head}proto"):
            keep.append(n)
    return keep


def _calibration(count: int, imgsz: int, seed: int,
                 presets: tuple[str, ...] | None = None) -> list[np.ndarray]:  # fmt: skip
    from .calibration import PRESETS, calibration_batches

    return list(calibration_batches(count, batch=1, imgsz=imgsz, seed=seed,
                                    presets=presets or PRESETS))  # fmt: skip


def export_openvino(
    model: Path, *, imgsz: int = 512, out: Path | None = None, int8: bool = False,
    calib_frames: int = 128, seed: int = 0, calib_presets: tuple[str, ...] | None = None,
) -> Path:  # fmt: skip
    """``.onnx`` (or ``.pt``, exported to ONNX first) -> OpenVINO IR folder, FP32 or INT8.

    INT8 is NNCF post-training quantisation (``preset=MIXED``, min/max activation ranges) on
    ``calib_frames`` synthetic frames of ``calib_presets`` (default
    :data:`~loopline.engines.calibration.PRESETS`); the head outside the prototype branch is
    left in float.
    """
    model = Path(model)
    if model.suffix == ".pt":
        model = export_onnx(model, imgsz=imgsz, out=out)
    if model.suffix != ".onnx":
        raise ValueError(f"OpenVINO export starts from .onnx or .pt, got {model}")
    configure_offline()
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("OpenVINO export needs: pip install 'loopline[openvino]'") from e
    if int8:  # before the conversion: a missing extra is said at once
        try:
            import nncf
        except ImportError as e:
            raise ImportError("INT8 OpenVINO export (--int8) needs nncf, which is not installed: "
                              "pip install 'loopline[int8]'") from e
    ov_model = ov.convert_model(str(model))
    tag = "_int8" if int8 else ""
    folder = _dest(model, f"{model.stem}{tag}_openvino_model", out if out else None)
    if out is not None and Path(out).suffix:  # a file name was given: use its folder
        folder = Path(out).with_suffix("")
    if int8:
        nncf.set_log_level(logging.WARNING)
        ops_ = ov_model.get_ordered_ops()
        names = [o.get_friendly_name() for o in ops_]
        types = [o.get_type_name() for o in ops_]
        ignored = _head_float_nodes(names, types)
        data = _calibration(calib_frames, imgsz, seed, calib_presets)
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        # Global min/max activation ranges: NNCF's default (mean of per-sample extremes) clips
        # the sparse, strong responses of thin lines and halved the mask IoU (0.49 vs 0.87).
        adv = AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        )
        ov_model = nncf.quantize(
            ov_model, nncf.Dataset(data), preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(data), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
            advanced_parameters=adv,
        )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{model.stem}.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    logger.info("wrote %s", xml)
    return folder


def quantize_onnx(
    model: Path, *, imgsz: int = 512, out: Path | None = None, calib_frames: int = 64,
    seed: int = 0,
) -> Path:  # fmt: skip
    """``.onnx`` -> ``<stem>.int8.onnx``: ONNX Runtime static INT8 (QDQ, per-channel weights).

    Activations are calibrated (MinMax) on ``calib_frames`` synthetic frames; the head outside
    the prototype branch stays in float.
    """
    model = Path(model)
    if model.suffix != ".onnx":
        raise ValueError(f"ONNX quantisation starts from an .onnx model, got {model}")
    configure_offline()
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX quantisation needs onnx: pip install 'loopline[train]'") from e
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dest = _dest(model, f"{model.stem}.int8.onnx", out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    pre = dest.with_name(f"{dest.stem}.pre.onnx")
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    g = onnx.load(str(pre)).graph
    input_name = g.input[0].name
    ignored = _head_float_nodes([n.name for n in g.node], [n.op_type for n in g.node])
    data = _calibration(calib_frames, imgsz, seed)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(data)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {input_name: b}

    try:
        quantize_static(
            str(pre), str(dest), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=ignored,
        )  # fmt: skip
    finally:
        pre.unlink(missing_ok=True)
    logger.info("wrote %s", dest)
    return dest


def export_engine(
    model: Path, *, imgsz: int = 512, out: Path | None = None, int8: bool = False,
    fp16: bool = True, max_batch: int = 8, calib_frames: int = 512,
) -> Path:  # fmt: skip
    """``.onnx`` (or ``.pt``) -> TensorRT ``.engine``; see ``tensorrt_engine`` for settings."""
    from .tensorrt_engine import TensorRTSettings, build_engine, import_tensorrt

    import_tensorrt()  # fail early, before any ONNX export
    settings = TensorRTSettings(imgsz=imgsz, fp16=fp16, int8=int8, max_batch=max_batch,
                                opt_batch=min(4, max_batch),
                                calib_batch=min(8, max_batch),
                                calib_frames=calib_frames)  # fmt: skip
    model = Path(model)
    if model.suffix == ".pt":
        model = export_onnx(model, imgsz=imgsz, out=out)
    tag = ".int8" if int8 else ""
    dest = _dest(model, f"{model.stem}{tag}.engine", out)
    return build_engine(model, dest, settings)
