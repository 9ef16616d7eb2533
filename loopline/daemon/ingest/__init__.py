"""Ingest: everything that brings frames into the daemon, in one place, a folder per detector.

Every source is an iterator of events with ``close()``:

=======================  ====================================  ==================================
class                    input                                 module
=======================  ====================================  ==================================
:class:`LooplineSource`  loopline/1 protocol, ZeroMQ PULL/SUB  :mod:`.loopline1.source`
:class:`DectrisSource`   DECTRIS Stream v1 (JSON) / v2 (CBOR)  :mod:`.dectris.source`
:class:`FileSource`      video, TIFF, image folder, DM3/DM4    :mod:`.files`
:class:`MemorySource`    events or raw messages in memory      :mod:`.memory` (the tests' twin)
=======================  ====================================  ==================================

- ``loopline1/``: our protocol (:mod:`.loopline1.protocol`: the message format, its encoder
  and decoder) and its source;
- ``dectris/``: the DECTRIS Stream decoders and source, and their bitshuffle/LZ4 decompression
  (:mod:`.dectris.compression`);
- :mod:`.simulator`: the camera simulator (``loopline simulate``), which sends either protocol
  at a chosen rate;
- :mod:`.base` (events, the series tracker, the threaded source) and :mod:`._zmq` (the ZeroMQ
  socket every network source shares, with CURVE).

Events: :class:`SeriesStart`, :class:`Frame`, :class:`SeriesEnd` (:mod:`.base`). Build the
one a configuration names with :func:`open_source`. Submodules are imported on first use,
so that importing this package does not pull in ZeroMQ, OpenCV or cbor2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import COUNTER_NAMES, Event, Frame, SeriesEnd, SeriesStart, Source

if TYPE_CHECKING:
    from .dectris.source import DectrisSource
    from .files import FileSource
    from .loopline1.source import LooplineSource
    from .memory import MemorySource

__all__ = [
    "CAMERA_PROTOCOLS",
    "COUNTER_NAMES",
    "PROTOCOLS",
    "SERVE_PROTOCOLS",
    "DectrisSource",
    "Event",
    "FileSource",
    "Frame",
    "LooplineSource",
    "MemorySource",
    "SeriesEnd",
    "SeriesStart",
    "Source",
    "open_source",
]

_LAZY = {
    "LooplineSource": ".loopline1.source",
    "DectrisSource": ".dectris.source",
    "FileSource": ".files",
    "MemorySource": ".memory",
}

#: The protocols a camera sends (``loopline simulate --protocol`` speaks them).
CAMERA_PROTOCOLS: tuple[str, ...] = ("loopline", "dectris1", "dectris2")
#: What ``serve`` takes (``source.protocol``, ``--protocol``): a camera's, or a file replayed.
SERVE_PROTOCOLS: tuple[str, ...] = (*CAMERA_PROTOCOLS, "file")
#: Protocol names understood by :func:`open_source`: those, and ``dectris`` (v1 or v2,
#: detected per message).
PROTOCOLS: tuple[str, ...] = (*CAMERA_PROTOCOLS, "dectris", "file")
_ZMQ_SCHEMES = ("tcp://", "ipc://", "inproc://", "pgm://", "epgm://", "udp://")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_source(endpoint: str, protocol: str = "loopline", **options: Any) -> Source:
    """The source for an endpoint URL (or a file path) and a protocol name.

    Parameters
    ----------
    endpoint : str
        A ZeroMQ URL (``tcp://127.0.0.1:5555``) for ``loopline`` / ``dectris1`` /
        ``dectris2`` / ``dectris`` (v1 or v2, detected per message); a path, or
        ``file://PATH``, for ``file`` (a path with any protocol also means a file).
    protocol : str
        One of :data:`PROTOCOLS`.
    **options
        Passed to the source: ``socket`` ("pull"/"sub"), ``bind``, ``rcvhwm``,
        ``max_queued_frames``, ``context`` for ZeroMQ sources (``channel`` for DECTRIS);
        ``fps``, ``loop``, ``max_frames``, ``series``, ``pixel_size_nm`` for files.

    Examples
    --------
    >>> src = open_source("tcp://127.0.0.1:5555", "loopline")      # doctest: +SKIP
    >>> src = open_source("tcp://dcu:9999", "dectris1")            # doctest: +SKIP
    >>> src = open_source("runs/pileup.mp4", "file", fps=float("inf"))  # doctest: +SKIP
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    is_url = endpoint.startswith(_ZMQ_SCHEMES)
    if protocol == "file" or not is_url:
        from .files import FileSource

        path = endpoint.removeprefix("file://")
        return FileSource(path, **options)
    if protocol == "loopline":
        from .loopline1.source import LooplineSource

        return LooplineSource(endpoint, **options)
    from .dectris.source import DectrisSource

    version: int | str = {"dectris1": 1, "dectris2": 2, "dectris": "auto"}[protocol]
    return DectrisSource(endpoint, version=version, **options)

