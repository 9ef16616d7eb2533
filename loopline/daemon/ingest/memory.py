"""The in-memory twin of the sources: the same events and counters, no sockets, no files.

Feed it decoded events, or raw multipart messages of any protocol (which then go through the
very decoder the ZeroMQ source uses, so malformed input is counted the same way). Events can
be given up front (an iterable, consumed lazily) and/or pushed while a consumer runs.

>>> import numpy as np
>>> from loopline.daemon.ingest import Frame, MemorySource, SeriesEnd, SeriesStart
>>> src = MemorySource([SeriesStart("s", 0.0), Frame("s", 0, 0.0, np.zeros((2, 2), np.uint8)),
...                     SeriesEnd("s", 0.1)])
>>> [type(ev).__name__ for ev in src]
['SeriesStart', 'Frame', 'SeriesEnd']
>>> src.counters["received"]
1
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .base import Event, Frame, SeriesTracker, Source, _RateLimitedWarning
from .loopline1.protocol import MalformedMessage

logger = logging.getLogger(__name__)

__all__ = ["MemorySource", "decoder_for"]


def decoder_for(protocol: str):
    """The decoder object of a protocol name (``loopline``, ``dectris1``, ``dectris2``,
    ``dectris``)."""
    from .dectris.source import Dectris1Decoder, Dectris2Decoder, DectrisAutoDecoder
    from .loopline1.source import LooplineDecoder

    table = {"loopline": LooplineDecoder, "dectris1": Dectris1Decoder,
             "dectris2": Dectris2Decoder, "dectris": DectrisAutoDecoder}  # fmt: skip
    if protocol not in table:
        raise ValueError(f"protocol must be one of {sorted(table)}, got {protocol!r}")
    return table[protocol]()


class MemorySource(Source):
    """A source over events (``protocol=None``) or raw messages (``protocol="loopline"``...).

    Parameters
    ----------
    items : iterable
        Events, or multipart messages (sequences of bytes) when ``protocol`` is given.
    protocol : str, optional
        Decode ``items`` (and :meth:`push_message` input) with this protocol's decoder.
    live : bool
        If true the source waits for :meth:`push` / :meth:`push_message` after ``items`` run
        out, until :meth:`finish` or :meth:`close`; if false it is exhausted then.
    max_queued_frames : int, optional
        Bound on pushed frames not yet consumed; beyond it frames are dropped and counted,
        as the receiver of a live source does. Default: unbounded.
    """

    def __init__(
        self,
        items: Iterable[Any] = (),
        *,
        protocol: str | None = None,
        live: bool = False,
        max_queued_frames: int | None = None,
    ):
        super().__init__()
        self.protocol = protocol
        self._decoder = decoder_for(protocol) if protocol is not None else None
        self._items: Iterator[Any] = iter(items)
        self._ready: deque[Event] = deque()
        self._pushed: deque[Any] = deque()
        self._live = live
        self._finished = not live
        self._max_frames = max_queued_frames
        self._cond = threading.Condition()
        self._tracker = SeriesTracker(self._counters)
        self._warn = _RateLimitedWarning("memory source: malformed message")

    # -- feeding ---------------------------------------------------------------------------

    def push(self, event: Event) -> None:
        """Add a decoded event (live sources)."""
        with self._cond:
            self._pushed.append(("event", event))
            self._cond.notify()

    def push_message(self, parts: Sequence[Any]) -> None:
        """Add a raw multipart message, decoded with ``protocol``'s decoder."""
        if self._decoder is None:
            raise ValueError("push_message needs a MemorySource made with protocol=...")
        with self._cond:
            self._pushed.append(("message", parts))
            self._cond.notify()

    def finish(self) -> None:
        """No more pushes: the source ends once everything queued is consumed."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    # -- consuming -------------------------------------------------------------------------

    def _ingest(self, kind: str, item: Any) -> None:
        if kind == "message":
            assert self._decoder is not None
            self._counters["messages"] += 1
            try:
                decoded = self._decoder.feed(item)
            except MalformedMessage as e:
                self._counters["malformed"] += 1
                self._warn(str(e))
                return
        else:
            decoded = [item]
        for ev in decoded:
            for out in self._tracker.feed(ev):
                if isinstance(out, Frame):
                    queued = sum(isinstance(e, Frame) for e in self._ready)
                    if self._max_frames is not None and queued >= self._max_frames:
                        self._counters["dropped"] += 1
                        continue
                    self._counters["received"] += 1
                self._ready.append(out)

    def _pull_one(self) -> bool:
        """Move one input item into the ready queue; False if none is available now."""
        for item in self._items:
            self._ingest("message" if self._decoder is not None else "event", item)
            return True
        with self._cond:
            if not self._pushed:
                return False
            kind, item = self._pushed.popleft()
        self._ingest(kind, item)
        return True

    def get(self, timeout: float | None = None) -> Event | None:
        if self._closed and not self._ready:
            raise StopIteration
        while not self._ready:
            if self._pull_one():
                continue
            with self._cond:
                if self._pushed:
                    continue
                if self._finished or self._closed:
                    raise StopIteration
                self._cond.wait(timeout)
                if not self._pushed:
                    if self._finished or self._closed:
                        raise StopIteration
                    return None
        return self._ready.popleft()

    def close(self) -> None:
        super().close()
        with self._cond:
            self._cond.notify_all()
