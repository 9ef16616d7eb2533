"""What every frame source yields, and the machinery the sources share.

A source is an iterator of events (:class:`SeriesStart`, :class:`Frame`, :class:`SeriesEnd`)
with ``get(timeout)``, ``close()``, a ``counters`` dict and ``maybe_raise()``. Whatever the
wire format, a source always yields a well-formed sequence: every frame lies between a
``SeriesStart`` and a ``SeriesEnd`` of its own series. :class:`SeriesTracker` enforces that:
a series that is never ended is closed with ``SeriesEnd(aborted=True)`` when the next one
starts, and frames of a series whose start was missed (a receiver that joined late) get a
synthesised ``SeriesStart``. Two series that interleave their frames are not let through
turn by turn (each turn would abort a series): one of them keeps the stream and the other's
frames are rejected, counted in ``counters["interleaved"]`` (see :class:`SeriesTracker`).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "COUNTER_NAMES",
    "IMAGE_DTYPES",
    "Event",
    "Frame",
    "SeriesEnd",
    "SeriesStart",
    "SeriesTracker",
    "Source",
    "ThreadedSource",
]

#: dtypes a :class:`Frame` image may have; decoders convert anything else to float32.
IMAGE_DTYPES: tuple[str, ...] = ("uint8", "uint16", "float32")

#: Every source's ``counters`` holds these keys.
COUNTER_NAMES: tuple[str, ...] = (
    "messages",  # messages read from the wire (or fed to a memory twin), well-formed or not
    "received",  # frames decoded and handed on
    "malformed",  # messages rejected by the decoder (each logged at DEBUG, rate-limited WARNING)
    "dropped",  # frames dropped because the consumer fell behind (queue full), never silent
    "series",  # series started (including synthesised starts)
    "aborted",  # series closed without their series-end (a new series started first)
    "resynced",  # frames that arrived without a series-start: a start was synthesised
    "stale",  # series-end messages for a series that is not open (ignored)
    "interleaved",  # frames of a series interleaved with the open one (rejected)
    "disconnects",  # connections to the sender closed (a message over the size limit, or the
    # sender went away); the source connects again
    "handshake_failures",  # CURVE handshakes that failed (no CURVE, another key, not allowed)
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One camera frame.

    Attributes
    ----------
    series : str
        Series (acquisition) id; DECTRIS integer ids are turned into strings.
    index : int
        Frame index within the series, as the sender numbered it (0-based).
    timestamp_s : float
        Acquisition time in s since the UNIX epoch (``time.time()`` clock). DECTRIS
        detectors stamp frames relative to the series, so their sources use the receive time
        and keep the detector's stamps in ``meta``.
    image : ndarray, shape (H, W), uint8 | uint16 | float32
        The pixels, C-contiguous. May be read-only (a view on the received buffer).
    pixel_size_nm : float or None
        Specimen pixel size in nm, if the sender knows it.
    meta : Mapping
        Free metadata from the sender (JSON-like).
    """

    series: str
    index: int
    timestamp_s: float
    image: np.ndarray
    pixel_size_nm: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"Frame(series={self.series!r}, index={self.index}, "
                f"timestamp_s={self.timestamp_s:.6f}, image=<{self.image.shape} "
                f"{self.image.dtype}>, pixel_size_nm={self.pixel_size_nm}, meta={self.meta!r})")


@dataclass(frozen=True, slots=True)
class SeriesStart:
    """A series (acquisition) begins. ``frames`` is the announced count, if any."""

    series: str
    timestamp_s: float
    shape: tuple[int, int] | None = None
    dtype: str | None = None
    pixel_size_nm: float | None = None
    frames: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    synthesized: bool = False  # true when the source made it up (start message missed)


@dataclass(frozen=True, slots=True)
class SeriesEnd:
    """A series ends.

    ``frames`` counts the frames of the series that arrived intact (decoded; any the consumer
    was too slow for are also counted in ``counters["dropped"]``); ``frames_sent`` is the
    sender's own count when its protocol states it.
    """

    series: str
    timestamp_s: float
    frames: int = 0
    aborted: bool = False  # true when no series-end came: the next series started first
    frames_sent: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


Event = SeriesStart | Frame | SeriesEnd


#: A series interrupted by another that sends again within this many seconds (of its own
#: last frame) interleaves with it.
INTERLEAVE_WINDOW_S = 5.0


class SeriesTracker:
    """Turns decoded events into a well-formed sequence and counts what it had to repair.

    Feed each decoded event to :meth:`feed`; it returns the events to hand on (zero, one or
    several). ``counters`` is updated in place (keys ``series``, ``aborted``, ``resynced``,
    ``stale``, ``interleaved``).

    One series is open at a time. A frame of another series closes the open one (aborted)
    and opens its own, as when a camera restarts without a series-end. If the series so
    closed sends again within ``interleave_window_s`` of its last frame, the two interleave,
    and the one that interrupted the other is the intruder: it is closed, the interrupted
    series is opened again, and the intruder's frames are rejected (``interleaved``) while
    another series is open and the intruder keeps sending. A series closed by an announced
    ``SeriesStart`` of another is the intruder instead. A ``SeriesStart`` of a series is
    always accepted.
    """

    def __init__(self, counters: dict[str, int], *,
                 interleave_window_s: float = INTERLEAVE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.counters = counters
        self.current: str | None = None
        self.frames = 0
        self.window = interleave_window_s
        self._clock = clock
        self._last_seen = 0.0  # clock time of the open series' start or last frame
        # the series the open one closed: (id, its last time seen, closed by a SeriesStart)
        self._closed: tuple[str, float, bool] | None = None
        self._intruders: dict[str, float] = {}  # series id -> its last frame's clock time
        self._warn: Callable[[str], None] | None = None

    def _end_current(self, now: float, *, aborted: bool, sent: SeriesEnd | None = None
                     ) -> SeriesEnd:  # fmt: skip
        assert self.current is not None
        frames_sent = sent.frames_sent if sent is not None else None
        meta = sent.meta if sent is not None else _EMPTY
        end = SeriesEnd(self.current, now, frames=self.frames, aborted=aborted,
                        frames_sent=frames_sent, meta=meta)  # fmt: skip
        if frames_sent is not None and frames_sent != self.frames:
            logger.warning("series %s: sender sent %d frames, %d arrived intact",
                           self.current, frames_sent, self.frames)  # fmt: skip
        if aborted:
            self.counters["aborted"] += 1
            logger.warning("series %s aborted after %d frames (no series-end)",
                           self.current, self.frames)  # fmt: skip
        self.current = None
        self.frames = 0
        return end

    def _switch(self, series: str, now: float) -> str:
        """What a frame of ``series`` (not the open one) does: switch, resume or reject."""
        if self.current is None:
            return "switch"
        t = self._intruders.get(series)
        if t is not None and now - t < self.window:
            self._intruders[series] = now
            return "reject"
        closed = self._closed
        if closed is not None and closed[0] == series and now - closed[1] < self.window:
            if closed[2]:  # closed by an announced series: its late frames intrude
                self._intruders[series] = now
                return "reject"
            self._intruders[self.current] = now  # the open series interrupted this one
            return "resume"
        return "switch"

    def _intruder_frame(self, ev: Frame) -> None:
        self.counters["interleaved"] += 1
        if self._warn is None:
            self._warn = _RateLimitedWarning("series tracker: interleaved frame rejected")
        self._warn(f"frame {ev.index} of series {ev.series} while series {self.current} is "
                   f"open")  # fmt: skip
        if len(self._intruders) > 64:  # forget intruders that stopped
            now = self._clock()
            self._intruders = {k: t for k, t in self._intruders.items() if now - t < self.window}

    def feed(self, ev: Event) -> list[Event]:
        out: list[Event] = []
        if isinstance(ev, SeriesStart):
            now = self._clock()
            self._closed = None
            if self.current is not None:
                if self.current != ev.series:
                    self._closed = (self.current, self._last_seen, True)
                out.append(self._end_current(ev.timestamp_s, aborted=True))
            self._intruders.pop(ev.series, None)
            self.current = ev.series
            self._last_seen = now
            self.frames = 0
            self.counters["series"] += 1
            out.append(ev)
        elif isinstance(ev, Frame):
            now = self._clock()
            if ev.series != self.current:
                how = self._switch(ev.series, now)
                if how == "reject":
                    self._intruder_frame(ev)
                    return out
                self._closed = None
                if self.current is not None:
                    if how == "switch":
                        self._closed = (self.current, self._last_seen, False)
                    else:
                        logger.warning("series %s interleaves with series %s: series %s "
                                       "resumes, frames of %s are rejected", self.current,
                                       ev.series, ev.series, self.current)  # fmt: skip
                    out.append(self._end_current(ev.timestamp_s, aborted=True))
                self.current = ev.series
                self.frames = 0
                self.counters["series"] += 1
                self.counters["resynced"] += 1
                logger.warning("frame %d of series %s came without a series-start; resynced",
                               ev.index, ev.series)  # fmt: skip
                out.append(SeriesStart(ev.series, ev.timestamp_s, shape=ev.image.shape,
                                       dtype=str(ev.image.dtype),
                                       pixel_size_nm=ev.pixel_size_nm,
                                       synthesized=True))  # fmt: skip
            self._last_seen = now
            self.frames += 1
            out.append(ev)
        elif isinstance(ev, SeriesEnd):
            if ev.series == self.current:
                self._closed = None
                out.append(self._end_current(ev.timestamp_s, aborted=False, sent=ev))
            else:
                self.counters["stale"] += 1
                logger.debug("series-end for %s, which is not open (open: %s)",
                             ev.series, self.current)  # fmt: skip
        else:  # pragma: no cover - decoders only make the three event types
            raise TypeError(f"not an event: {type(ev).__name__}")
        return out


def new_counters() -> dict[str, int]:
    return dict.fromkeys(COUNTER_NAMES, 0)


class Source(ABC):
    """An iterator of events with ``get(timeout)``, ``close()`` and ``counters``.

    Iteration blocks until the next event and stops when the source is exhausted (files,
    memory) or closed. Live sources never end by themselves: a daemon that should stop at the
    end of a series watches for :class:`SeriesEnd`.
    """

    def __init__(self) -> None:
        self._counters = new_counters()
        self._closed = False

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the counters (see :data:`COUNTER_NAMES`)."""
        return dict(self._counters)

    @property
    def closed(self) -> bool:
        return self._closed

    @abstractmethod
    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or ``None`` if none came within ``timeout`` s.

        Raises ``StopIteration`` when the source is exhausted or closed, and re-raises an
        exception stored by a worker thread.
        """

    def maybe_raise(self) -> None:  # noqa: B027 - sources without a worker have nothing to raise
        """Re-raise the exception of a worker thread, if any."""

    def close(self) -> None:
        self._closed = True

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while True:
            ev = self.get(timeout=0.1)
            if ev is not None:
                return ev

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _EventQueue:
    """Events from a receiver thread to the consumer.

    Frames are bounded (``max_frames``): when full, ``put_frame`` returns False and the
    caller counts a drop, so the receiver never waits for the consumer. Control events
    (series start/end) are never dropped.
    """

    def __init__(self, max_frames: int):
        self.max_frames = max_frames
        self._items: deque[Event] = deque()
        self._frames = 0
        self._cond = threading.Condition()

    def put(self, ev: Event) -> bool:
        with self._cond:
            if isinstance(ev, Frame):
                if self._frames >= self.max_frames:
                    return False
                self._frames += 1
            self._items.append(ev)
            self._cond.notify()
            return True

    def get(self, timeout: float | None) -> Event | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            ev = self._items.popleft()
            if isinstance(ev, Frame):
                self._frames -= 1
            return ev

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class _RateLimitedWarning:
    """Log the first malformed message at WARNING, then at most one summary per interval."""

    def __init__(self, what: str, interval_s: float = 5.0):
        self.what = what
        self.interval_s = interval_s
        self._last = -float("inf")
        self._since = 0

    def __call__(self, message: str) -> None:
        logger.debug("%s: %s", self.what, message)
        now = time.monotonic()
        self._since += 1
        if now - self._last >= self.interval_s:
            logger.warning("%s: %s (%d rejected since the last report)",
                           self.what, message, self._since)  # fmt: skip
            self._last = now
            self._since = 0


class ThreadedSource(Source):
    """A source whose events come from a receiver thread through a bounded queue.

    Subclasses implement :meth:`_run` (the thread body: open, loop until ``self._stop`` is
    set, close) and push events with :meth:`_emit`. The thread's exception is stored and
    re-raised by :meth:`get` (``maybe_raise``), as LiberTEM-live does.
    """

    #: Seconds ``close()`` waits for the receiver thread to finish.
    JOIN_TIMEOUT_S = 5.0

    def __init__(self, *, max_queued_frames: int = 64, name: str = "source"):
        super().__init__()
        if max_queued_frames < 1:
            raise ValueError(f"max_queued_frames must be >= 1, got {max_queued_frames}")
        self._queue = _EventQueue(max_queued_frames)
        self._tracker = SeriesTracker(self._counters)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._exc: BaseException | None = None
        self._lock = threading.Lock()  # counters are written by the thread, read by anyone
        self._warn = _RateLimitedWarning(f"{name}: malformed message")
        self._thread = threading.Thread(target=self._main, name=f"loopline-{name}", daemon=True)

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def _start(self, ready_timeout_s: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(ready_timeout_s):
            self.close()
            raise TimeoutError(f"receiver thread did not start within {ready_timeout_s} s")
        if self._exc is not None:
            exc, self._exc = self._exc, None
            self.close()
            raise exc

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as e:  # stored, re-raised in the consumer's thread
            logger.debug("receiver thread failed", exc_info=True)
            self._exc = e
        finally:
            self._ready.set()
            self._queue.wake()

    @abstractmethod
    def _run(self) -> None:
        """Thread body: set ``self._ready`` once listening, loop until ``self._stop``."""

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def _malformed(self, message: str) -> None:
        self._count("malformed")
        self._warn(message)

    def _emit(self, events: list[Event]) -> None:
        for decoded in events:
            with self._lock:
                ready = self._tracker.feed(decoded)
            for ev in ready:
                if self._queue.put(ev):
                    if isinstance(ev, Frame):
                        self._count("received")
                else:
                    self._count("dropped")
                    logger.debug("queue full: dropped frame %d of series %s",
                                 ev.index, ev.series)  # type: ignore[union-attr]  # fmt: skip

    def maybe_raise(self) -> None:
        if self._exc is not None:
            exc, self._exc = self._exc, None
            raise exc

    def get(self, timeout: float | None = None) -> Event | None:
        self.maybe_raise()
        ev = self._queue.get(0 if self._closed else timeout)
        if ev is None:
            self.maybe_raise()
            if self._closed or not self._thread.is_alive():
                raise StopIteration
        return ev

    def close(self) -> None:
        """Stop the receiver thread (it closes its socket) and wait for it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                logger.error("receiver thread did not stop within %.1f s", self.JOIN_TIMEOUT_S)
        self._queue.wake()
