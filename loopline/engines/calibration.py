"""Calibration frames for INT8 (OpenVINO NNCF, ONNX Runtime, TensorRT), drawn from loopline's
own synthetic generator: a mix of line-only (M2), loop-only and mixed scenes at the frame size
the daemon sees. Deterministic for a seed; nothing is read from disk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import ops

__all__ = ["PRESETS", "calibration_batches", "calibration_frames"]

PRESETS: tuple[str, ...] = ("M2", "loops", "mixed")


def calibration_frames(
    count: int, *, size: int = 512, seed: int = 0, presets: tuple[str, ...] = PRESETS
) -> list[np.ndarray]:
    """``count`` synthetic (size, size) grey frames, cycling through ``presets``."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    from ..synth.params import load_preset
    from ..synth.render import render_frame
    from ..synth.scene import sample_scene

    cfgs = [load_preset(p, {"width": size, "height": size}) for p in presets]
    frames = []
    for i in range(count):
        scene = sample_scene(cfgs[i % len(cfgs)], seed, i)
        frames.append(ops.to_uint8(render_frame(scene).image))
    return frames


def calibration_batches(
    count: int, *, batch: int = 1, imgsz: int = 512, size: int = 512, seed: int = 0,
    presets: tuple[str, ...] = PRESETS,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Network inputs (batch, 3, imgsz, imgsz) float32 of ``count`` synthetic frames.

    The last batch is dropped if incomplete (TensorRT's calibrator wants full batches).
    """
    frames = calibration_frames(count, size=size, seed=seed, presets=presets)
    for i in range(0, count - batch + 1, batch):
        yield ops.preprocess(frames[i : i + batch], imgsz)[0]
