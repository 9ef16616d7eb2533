"""``loopline export``: a model to ONNX / OpenVINO / TensorRT, FP32 or INT8, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CliError

HELP = "export a model to ONNX / OpenVINO / TensorRT (FP32, FP16 or INT8)"

FORMATS = ("onnx", "openvino", "engine")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="defects",
        help="shipped model name (defects, dislocations, loops) or a .pt/.onnx file",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="target runtime")
    p.add_argument(
        "--int8",
        action="store_true",
        help="post-training INT8 with synthetic calibration frames (onnx: ONNX "
        "Runtime static QDQ; openvino: NNCF; engine: TensorRT entropy calibrator)",
    )
    p.add_argument(
        "--half",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="FP16 TensorRT engine (default; --no-half for FP32)",
    )
    p.add_argument("--imgsz", type=int, default=None,
                   help="network input size, px (default: the model's own: 512, or the --imgsz "
                        "a `loopline adapt` model was trained at)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=8, help="largest TensorRT batch")
    p.add_argument(
        "--calib-frames",
        type=int,
        default=None,
        help="synthetic calibration frames for --int8 (default 64 onnx, 128 openvino, 512 engine)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration frames")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: next to the model)")  # fmt: skip


def _source(model: str, fmt: str, int8: bool) -> Path:
    from ..models import SHIPPED, resolve_model

    if str(model) in SHIPPED and not Path(model).exists():
        # the shipped ONNX is enough for every runtime (no torch needed), except a fresh ONNX
        order = (".pt", ".onnx") if fmt == "onnx" and not int8 else (".onnx", ".pt")
        for suffix in order:
            try:
                return resolve_model(model, suffix=suffix)
            except FileNotFoundError:
                continue
    return resolve_model(model)


def run(a: argparse.Namespace) -> int:
    import logging

    from ..models import model_imgsz
    from .export import export_engine, export_onnx, export_openvino, quantize_onnx

    log = logging.getLogger("loopline")
    if a.imgsz is not None and (a.imgsz < 32 or a.imgsz % 32):
        raise CliError(f"--imgsz must be a multiple of 32, got {a.imgsz}")
    try:
        src = _source(a.model, a.format, a.int8)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    if a.imgsz is None:
        a.imgsz = model_imgsz(src) or 512
    if src.suffix not in (".pt", ".onnx"):
        raise CliError(f"--model must be a .pt or .onnx file or a shipped name, got {src}")
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
    n = a.calib_frames
    try:
        if a.format == "onnx":
            onnx = export_onnx(src, imgsz=a.imgsz, out=a.out) if src.suffix == ".pt" else src
            if src.suffix == ".onnx" and not a.int8:
                raise CliError(f"{src} is already ONNX (add --int8 to quantise it)")
            written = quantize_onnx(onnx, imgsz=a.imgsz, out=a.out, calib_frames=n or 64,
                                    seed=a.seed) if a.int8 else onnx  # fmt: skip
        elif a.format == "openvino":
            written = export_openvino(src, imgsz=a.imgsz, out=a.out, int8=a.int8,
                                      calib_frames=n or 128, seed=a.seed)  # fmt: skip
        else:
            written = export_engine(src, imgsz=a.imgsz, out=a.out, int8=a.int8, fp16=a.half,
                                    max_batch=a.max_batch,
                                    calib_frames=n or 512)  # fmt: skip
    except ImportError as e:
        raise CliError(str(e)) from None
    except (ValueError, RuntimeError) as e:
        raise CliError(str(e)) from None
    log.info("exported %s -> %s", src, written)
    print(written)
    return 0
