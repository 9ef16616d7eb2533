"""Keep ultralytics, ONNX Runtime and OpenVINO off the network.

Each of these libraries tries to fetch something at run time (fonts, update checks,
analytics, telemetry, packages). loopline runs beside a microscope, usually with no route to
the internet, so every such fetch is switched off *before* the libraries are imported:

========================  ==========================================================
fetch                     what stops it
========================  ==========================================================
Arial.ttf from GitHub     a local TTF (matplotlib's DejaVuSans) seeded as Arial.ttf in
                          the ultralytics config dir
PyPI update check,        ``YOLO_OFFLINE=1``
analytics
run-time ``pip install``  ``YOLO_AUTOINSTALL=False`` (and every runtime preinstalled)
hub checkpoints           never passed: models are built from yaml or loaded from paths
ONNX Runtime telemetry    ``ORT_DISABLE_TELEMETRY=1``
OpenVINO telemetry        ``OPENVINO_TELEMETRY=0`` plus the opt-out file it reads
========================  ==========================================================
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["config_dir", "configure_offline"]

_DONE = False


def config_dir() -> Path:
    """Where loopline keeps the ultralytics settings (not ~/.config/Ultralytics)."""
    base = os.environ.get("LOOPLINE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "loopline"
    )
    return Path(base) / "ultralytics"


def configure_offline(threads: int | None = None) -> None:
    """Set the environment so that nothing below fetches anything. Idempotent.

    Must run before ``ultralytics`` is imported: its settings are read at import time. A
    ``YOLO_CONFIG_DIR`` chosen by the caller is respected.
    """
    global _DONE
    if _DONE:
        return
    cfg = config_dir()
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "False")
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    os.environ["OPENVINO_TELEMETRY"] = "0"
    ucfg = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    ucfg.mkdir(parents=True, exist_ok=True)
    font = ucfg / "Arial.ttf"
    if not font.exists():
        try:
            import matplotlib

            src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            shutil.copyfile(src, font)
        except (ImportError, OSError):  # no matplotlib: plots are off anyway
            pass
    # OpenVINO reads its consent from ~/intel/openvino_telemetry ("0" = opted out).
    try:
        intel = Path(os.path.expanduser("~/intel"))
        consent = intel / "openvino_telemetry"
        if not consent.exists():
            intel.mkdir(parents=True, exist_ok=True)
            consent.write_text("0")
    except OSError:
        pass
    n = threads or os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    _DONE = True


def use_all_threads(threads: int | None = None) -> int:
    """Undo ultralytics' ``cpu_count - 1`` threads (one thread on a 2-core machine)."""
    n = threads or os.cpu_count() or 1
    import torch
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = n
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n
