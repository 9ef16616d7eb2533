"""loopline: real-time analysis of dislocations and dislocation loops in in-situ TEM video.

The Python API (:mod:`loopline.api`, :mod:`loopline.export`) is imported on first use, so that
``import loopline`` stays fast.
"""

from ._version import __version__

_API = {
    "Engine": "loopline.api", "Run": "loopline.api", "analyze": "loopline.api",
    "live": "loopline.api", "measure_frame": "loopline.api", "open_run": "loopline.api",
    "to_hspy": "loopline.export.hyperspy", "to_napari": "loopline.export.napari",
}  # fmt: skip

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'loopline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
