"""Inference engines: one interface, one file per runtime, one table to pick them.

>>> from loopline.engines import create_engine
>>> engine = create_engine("ridge")               # classical, needs no weights
>>> engine = create_engine("defects")  # doctest: +SKIP
>>> engine = create_engine("defects", engine="openvino")  # doctest: +SKIP
>>> dets = engine([frame])                        # doctest: +SKIP

=============  ===================================  ===============================
engine         model                                 needs
=============  ===================================  ===============================
``torch``      ``.pt`` (ultralytics YOLOv8-seg)      ``loopline[train]``
``onnx``       ``.onnx`` (FP32, or INT8 QDQ)         core (onnxruntime)
``openvino``   ``.xml`` or its ``*_openvino_model``  ``loopline[openvino]``
               folder (FP32 or INT8)
``tensorrt``   ``.engine``                           ``loopline[gpu]`` + a CUDA GPU
``ridge``      none                                  core
=============  ===================================  ===============================
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from .base import CLASS_NAMES, INFERENCE_MODES, Detections, Engine, check_inference

__all__ = ["CLASS_NAMES", "ENGINES", "INFERENCE_MODES", "SUFFIXES", "Detections", "Engine",
           "create_engine", "engine_for", "live_runtime"]  # fmt: skip

#: engine name -> "module:class"; modules are imported only when their engine is used
ENGINES: dict[str, str] = {
    "torch": "loopline.engines.torch_engine:TorchEngine",
    "onnx": "loopline.engines.onnx_engine:OnnxEngine",
    "openvino": "loopline.engines.openvino_engine:OpenVinoEngine",
    "tensorrt": "loopline.engines.tensorrt_engine:TensorRTEngine",
    "ridge": "loopline.engines.ridge_engine:RidgeEngine",
}

#: model file suffix -> engine name
SUFFIXES: dict[str, str] = {
    ".pt": "torch",
    ".onnx": "onnx",
    ".xml": "openvino",
    ".engine": "tensorrt",
}

#: engine -> the suffix of a shipped model it runs
_SHIPPED_SUFFIX = {"torch": ".pt", "onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}


def _supported() -> str:
    return (f"suffixes {', '.join(SUFFIXES)}, an OpenVINO '*_openvino_model' folder, or the "
            f"name 'ridge' (engines: {', '.join(ENGINES)})")  # fmt: skip


def engine_for(model: str | Path) -> str:
    """The engine name for a model path (by suffix) or ``ridge``.

    Raises
    ------
    ValueError
        For an unknown suffix, listing the supported ones.
    """
    if str(model) == "ridge":
        return "ridge"
    p = Path(model)
    if p.is_dir() and any(p.glob("*.xml")):
        return "openvino"
    name = SUFFIXES.get(p.suffix.lower())
    if name is None:
        raise ValueError(f"no engine for model {str(model)!r}: supported are {_supported()}")
    return name


def default_runtime() -> str:
    """The runtime for a shipped model: OpenVINO where installed (fastest on CPUs here: 34 fps
    at 512 px against 8-10 for ONNX Runtime, see README.md in this folder), else ONNX Runtime."""
    return "openvino" if importlib.util.find_spec("openvino") is not None else "onnx"


def live_runtime(model: str | Path | None) -> str | None:
    """The runtime ``serve`` and ``analyze`` run ``model`` in when none is named.

    For an ONNX file that is :func:`default_runtime`: OpenVINO where installed (it reads ONNX
    itself, at 1.4-1.6x ONNX Runtime's frames per second on these CPUs, ``README.md`` in this
    folder), as for a shipped name; a model adapted at 640 px keeps up with a 25 fps camera in
    OpenVINO and not in ONNX Runtime. Anything else: None (:func:`create_engine` picks by
    suffix). ``loopline eval`` keeps the suffix's runtime (ONNX Runtime for ``.onnx``), in which
    the model card's figures were measured.

    Examples
    --------
    >>> live_runtime("ridge") is None and live_runtime("net.pt") is None
    True
    """
    p = Path(str(model))
    return default_runtime() if p.suffix.lower() == ".onnx" and p.is_file() else None


def engine_class(name: str) -> type[Engine]:
    """The Engine subclass of an engine name (imports its module)."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}") from None
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def _operating_point(model: str | Path, runtime: str) -> dict[str, Any]:
    """A shipped model's operating-point options that ``runtime`` understands."""
    from ..models import shipped_settings
    from .yolo import YoloEngine

    settings = shipped_settings(model)
    if not settings or not issubclass(engine_class(runtime), YoloEngine):
        return {}  # the torch engine keeps ultralytics' own post-processing
    return settings


def create_engine(model: str | Path | None = "ridge", *, engine: str | None = None,
                  inference: str = "tiles", **opts) -> Engine:  # fmt: skip
    """An engine for a model file, a shipped model name, or ``ridge``.

    Parameters
    ----------
    model : str or Path or None
        A model file (``.pt``, ``.onnx``, ``.xml`` or an OpenVINO folder, ``.engine``), a
        shipped name (``defects``, ``dislocations``, ``loops``), or ``"ridge"``/None for the
        classical engine.
    engine : str, optional
        Runtime name; by default picked from the file suffix, and for a shipped name
        ``openvino`` where installed, else ``onnx`` (:func:`default_runtime`).
    inference : {"tiles", "native", "letterbox"}
        How a frame larger than the network input (``imgsz``) is fed to a learned engine:
        ``"tiles"`` (default) covers it with overlapping tiles at native pixel scale and merges
        the instances across seams (``loopline.engines.tiling``; ``tile_overlap`` px, default
        64; tiles of ``imgsz``, or up to ``tile_max`` px, default 1.25 ``imgsz``, where the
        runtime and model take any input size); ``"letterbox"`` shrinks the whole frame to
        ``imgsz``. A smaller frame is enlarged to ``imgsz`` by both (as training enlarged
        small frames); ``"native"`` tiles as ``"tiles"`` and pads a smaller frame at its own
        pixel scale instead. ``ridge`` ignores it.
    **opts
        Engine options (``imgsz``, ``conf``, ``iou``, ``max_det`` per network call,
        ``max_det_frame`` per tiled frame, ``device``, ``tile_overlap``, ``tile_max``, and the
        runtime's own, e.g. ``mask_threshold``; see :class:`~.base.Engine`). A shipped model
        brings its operating point (``loopline.models.SETTINGS``) to the runtimes that take
        it, a model made by ``loopline adapt`` its own and its input size
        (``loopline.models.model_imgsz``); what is given here wins.

    Raises
    ------
    ValueError
        Unknown suffix, engine name or inference mode (listing the supported ones).
    FileNotFoundError
        No such file and no shipped model of that name.
    ImportError
        The runtime is not installed; the message names the pip extra.
    """
    from ..models import SHIPPED, resolve_model

    opts["inference"] = check_inference(inference)
    if model is None or str(model) == "ridge" or engine == "ridge":
        return engine_class("ridge")(None, **opts)
    if str(model) in SHIPPED and not Path(model).exists():
        name = engine or default_runtime()
        if name == "openvino":
            # An exported IR folder if there is one; else OpenVINO reads the shipped ONNX itself.
            path = resolve_model(model, suffix=".onnx")
            ov_dir = path.with_name(f"{path.stem}_openvino_model")
            path = ov_dir if ov_dir.exists() else path
        else:
            path = resolve_model(model, suffix=_SHIPPED_SUFFIX.get(name, ".onnx"))
    else:
        path = Path(model)
        if not path.exists() and not path.suffix:
            resolve_model(model)  # raises, naming the shipped models
        name = engine or engine_for(path)
        if not path.exists():
            raise FileNotFoundError(f"no model file {path}")
    opts = {**_operating_point(path, name), **opts}
    if "imgsz" not in opts:
        from ..models import model_imgsz

        size = model_imgsz(path)
        if size is not None:  # an adapted model runs at the input size it was trained at
            opts["imgsz"] = size
    return engine_class(name)(path, **opts)
