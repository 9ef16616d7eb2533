"""Models shipped with loopline, loaded from the package with no network.

One two-class YOLOv8-seg model (class 0 dislocation, class 1 loop) trained on loopline's own
synthetic data is shipped as ``defects.pt`` (PyTorch, for training and export) and
``defects.onnx`` (for the CPU runtimes). The names ``dislocations`` and ``loops`` select the
same weights; the measuring stages use the class of each instance. See README.md here for the
model card: the exact command, seed, data and metrics of every shipped model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["MODEL_DIR", "SETTINGS", "SHIPPED", "mask_thresholds", "model_imgsz", "resolve_model",
           "score_thresholds", "shipped_settings"]

MODEL_DIR = Path(__file__).resolve().parent

#: shipped name -> file stem in MODEL_DIR
SHIPPED: dict[str, str] = {"defects": "defects", "dislocations": "defects", "loops": "defects"}

#: file stem -> engine options of its operating point, chosen on the validation sets (never the
#: test sets) and recorded in the model card; an option given explicitly wins
#: (``conf``: the score threshold, one value per class, dislocation then loop;
#: ``mask_threshold``: one value per class, dislocation then loop; ``model_nm_per_px``: the
#: pixel size, nm, of the frames it was trained on, to which frames of a known pixel size are
#: resampled; None: its synthetic training frames have no one scale, frames are used as they are;
#: ``line_snap``, ``line_dedupe``: px, see ``loopline.engines.snap`` and ``.duplicates``;
#: ``loop_vote``: see ``loopline.engines.votes``)
_OPERATING_KEYS = ("conf", "mask_threshold", "model_nm_per_px", "line_snap", "line_dedupe",
                   "loop_vote")

SETTINGS: dict[str, dict[str, Any]] = {
    "defects": {"conf": (0.15, 0.25), "mask_threshold": (0.4, 0.4), "model_nm_per_px": None,
                "line_snap": 4.0, "line_dedupe": 1.5, "loop_vote": True},
}


def score_thresholds(value: Any) -> np.ndarray:
    """The one rule for a score threshold (``conf``): one value for every class, or one per
    class (dislocation, loop), each in [0, 1]; as a 1-D float64 array. Every command, config
    key and engine checks its threshold here.

    >>> score_thresholds("0.15,0.25").tolist()
    [0.15, 0.25]
    >>> score_thresholds(0.3).tolist()
    [0.3]
    >>> score_thresholds(1.5)
    Traceback (most recent call last):
    ...
    ValueError: conf must lie in [0, 1], one value or one per class (dislocation, loop), got 1.5
    """
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        thr = np.atleast_1d(np.asarray(value, np.float64))
    except (TypeError, ValueError):
        thr = np.zeros(0)
    ok = thr.ndim == 1 and thr.size > 0 and bool(np.all((thr >= 0.0) & (thr <= 1.0)))
    if not ok or isinstance(value, bool) or len(thr) not in (1, 2):
        raise ValueError(f"conf must lie in [0, 1], one value or one per class (dislocation, "
                         f"loop), got {value}")  # fmt: skip
    return thr


def mask_thresholds(value: Any, n: int | None = None, *, per: str = "class") -> np.ndarray:
    """The one rule for a mask probability cut: one value for every class, or one per class
    (dislocation, loop; or ``n`` per ``per``), each in (0, 1); as a 1-D float64 array.
    Every command, config key and engine checks its cut here.

    >>> mask_thresholds([0.4, 0.5]).tolist()
    [0.4, 0.5]
    >>> mask_thresholds(1.0)
    Traceback (most recent call last):
    ...
    ValueError: mask_threshold must lie in (0, 1), one value or one per class, got 1.0
    """
    try:
        thr = np.atleast_1d(np.asarray(value, np.float64))
    except (TypeError, ValueError):
        thr = np.zeros(0)
    ok = thr.ndim == 1 and thr.size > 0 and bool(np.all((thr > 0.0) & (thr < 1.0)))
    if not ok or (n is not None and len(thr) not in (1, n)):
        count = f" ({n})" if n is not None else ""
        raise ValueError(f"mask_threshold must lie in (0, 1), one value or one per {per}{count}, "
                         f"got {value}")  # fmt: skip
    return thr


def shipped_settings(model: str | Path) -> dict[str, Any]:
    """Operating-point options of a shipped model, by name or by its file in MODEL_DIR, or of
    a model made by ``loopline adapt`` (its ``adapt.json`` beside it records the operating
    point it inherited); {} for any other model."""
    stem = SHIPPED.get(str(model))
    if stem is None:
        p = _model_file(model)
        if p.parent != MODEL_DIR:
            return _adapted_settings(p.parent / "adapt.json")
        stem = Path(p.name.removesuffix("_openvino_model")).stem
    return dict(SETTINGS.get(stem, {}))


def model_imgsz(model: str | Path) -> int | None:
    """The network input size (px) a model made by ``loopline adapt`` was trained at (its
    ``adapt.json`` records it), which every engine should run it at; None for any other model
    (the engines' default, 512, is the shipped model's)."""
    if str(model) in SHIPPED:
        return None
    record = _model_file(model).parent / "adapt.json"
    size = _adapt_record(record).get("imgsz") if record.is_file() else None
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
        if size is not None:
            logger.warning("%s: ignoring imgsz %r (expected a multiple of 32)", record, size)
        return None
    return size


def _model_file(model: str | Path) -> Path:
    """A model file's path, resolved; an exported OpenVINO IR folder for an .xml inside one
    (the folder lies beside the model's other files)."""
    p = Path(model).resolve()
    return p.parent if p.parent.name.endswith("_openvino_model") else p


def _adapt_record(record: Path) -> dict[str, Any]:
    try:
        doc = json.loads(record.read_text("utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("%s: cannot read the adapted model's record (%s)", record, e)
        return {}
    return doc if isinstance(doc, dict) else {}


def _adapted_settings(record: Path) -> dict[str, Any]:
    if not record.is_file():
        return {}
    op = _adapt_record(record).get("operating_point") or {}
    if not isinstance(op, dict):
        logger.warning("%s: cannot read the adapted model's operating point", record)
        return {}
    for key in ("conf", "mask_threshold"):  # JSON keeps a pair as a list
        if key in op and isinstance(op[key], list):
            op[key] = tuple(op[key])
    return {k: v for k, v in op.items() if k in _OPERATING_KEYS}


def resolve_model(name_or_path: str | Path, *, suffix: str = ".onnx") -> Path:
    """Path of a shipped model by name (``dislocations``, ``loops``, ``defects``) or a file.

    ``suffix`` picks the format of a shipped model (``.onnx`` for the CPU runtimes, ``.pt``
    for torch). A path is returned as is if it exists.

    Raises
    ------
    FileNotFoundError
        Naming what was asked for and what is shipped.
    """
    p = Path(name_or_path)
    if p.exists():
        return p
    stem = SHIPPED.get(str(name_or_path))
    if stem is not None:
        f = MODEL_DIR / f"{stem}{suffix}"
        if f.exists():
            return f
        raise FileNotFoundError(f"shipped model {name_or_path!r} has no {suffix} file at {f}")
    names = ", ".join(sorted(SHIPPED))
    raise FileNotFoundError(f"no model file {p} and no shipped model of that name ({names})")
