"""Subscribe to the daemon's result stream without ever slowing it down.

The daemon's PUB socket drops messages for a subscriber whose queue is full (``publish.hwm``),
so a slow viewer costs the daemon nothing. On this side a :class:`ResultSubscriber` thread
owns a SUB socket with a small receive high-water mark, drains everything that has arrived,
keeps only the newest ``frame`` message (latest wins) and counts every one it superseded
before a viewer looked at it (``viewer_dropped``). Frame messages that never arrived (dropped
by the PUB socket) show as gaps in the daemon's message counter ``seq`` and are counted as
``gaps``; frames the daemon itself skipped are in its ``skipped`` counter. ``metrics`` and
``series`` messages are kept as they come and merged into the next frame's view. ``alarm``
messages (the daemon's alarms raised and cleared) are never superseded: each is kept, in
order, as an :class:`~loopline.viewers.schema.AlarmEvent` numbered by arrival
(:meth:`ResultSubscriber.alarms_after`), and every frame :class:`Message` says how many had
arrived before it (``alarms_before``), so a consumer applies them in the order they were sent.
With a topic filter, ``alarm`` is subscribed to as well.

ZeroMQ reconnects a connecting SUB socket by itself when the daemon restarts; on top of that,
after ``stale_s`` without a message the socket is closed and made again, so a daemon that came
back on the same address is picked up even after a half-open TCP connection (or a CURVE
handshake that failed, after which ZeroMQ would not try again).

The ``multipart(CONFLATE)`` option is not used: ZeroMQ's conflation does not support
multipart messages, and a published frame is a JSON header plus a JPEG.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .schema import AlarmEvent, FrameView, parse_message, to_alarm, to_view

logger = logging.getLogger(__name__)

__all__ = ["Message", "ResultSubscriber", "StreamStats"]


@dataclass(frozen=True)
class Message:
    """One received frame message: its arrival number, header, JPEG, normalised view, and
    the number of alarm messages received before it."""

    seq: int
    received_at: float
    header: dict[str, Any]
    jpeg: bytes | None
    view: FrameView
    alarms_before: int = 0


@dataclass(frozen=True)
class StreamStats:
    received: int
    viewer_dropped: int
    gaps: int
    malformed: int
    reconnects: int
    connected: bool
    last_message_age_s: float | None
    alarms: int = 0  # alarm messages received


class ResultSubscriber:
    """A background SUB socket that always holds the newest message.

    Parameters
    ----------
    endpoint
        The daemon's PUB address, e.g. ``tcp://127.0.0.1:5556``.
    stale_s
        Seconds without a message after which the socket is made again.
    hwm
        Receive high-water mark (messages). Small: old frames are worthless to a viewer.
    topic
        Subscription prefix (``b""``: everything); ``alarm`` is subscribed to in any case.
    alarm_keep
        Alarm events held for :meth:`alarms_after`.
    curve_server_key, curve_secret_key
        CURVE (a daemon with ``publish.curve_secret_key``): the daemon's public key and this
        viewer's own secret key (needed where the daemon keeps an allow-list,
        ``publish.curve_clients``; else an ephemeral pair is made), each as 40 Z85 characters
        or a key file (:func:`loopline.daemon.curve.load_curve_key`).

    Use as a context manager, or call :meth:`start` and :meth:`close`. :meth:`wait` blocks a
    consumer until a message newer than the one it has is there.
    """

    def __init__(self, endpoint: str, *, stale_s: float = 3.0, hwm: int = 4,
                 topic: bytes = b"", curve_server_key: str | bytes | None = None,
                 curve_secret_key: str | bytes | None = None,
                 alarm_keep: int = 256) -> None:  # fmt: skip
        self.endpoint = endpoint
        self._curve: tuple[bytes, bytes | None] | None = None
        if curve_server_key or curve_secret_key:
            from ..daemon.curve import load_curve_key

            server = load_curve_key(curve_server_key, secret=False)
            if server is None:
                raise ValueError("CURVE: a viewer's own key needs the daemon's public key "
                                 "(curve_server_key), got none")  # fmt: skip
            self._curve = (server, load_curve_key(curve_secret_key, secret=True))
        self.stale_s = stale_s
        self.hwm = hwm
        self.topic = topic
        self._cond = threading.Condition()
        self._latest: Message | None = None
        self._taken = 0  # seq of the newest message a consumer has taken
        self._seq = 0
        self._received = self._dropped = self._gaps = self._malformed = self._reconnects = 0
        self._last_frame: int | None = None
        self._last_seq: int | None = None
        self._last_series: str | None = None
        self.metrics: dict[str, Any] = {}
        self.series_info: dict[str, Any] = {}
        self._alarms: deque[AlarmEvent] = deque(maxlen=alarm_keep)
        self._n_alarms = 0
        self._last_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ResultSubscriber:
        self._thread = threading.Thread(target=self._run, name="loopline-view-sub", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ResultSubscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def maybe_raise(self) -> None:
        """Re-raise, in the caller's thread, an exception that ended the receiving thread."""
        if self._error is not None:
            raise RuntimeError(f"result subscriber failed: {self._error!r}") from self._error

    # -- consumer side -----------------------------------------------------------------------
    def latest(self) -> Message | None:
        """The newest message (marking it taken), or None before the first."""
        with self._cond:
            if self._latest is not None:
                self._taken = self._latest.seq
            return self._latest

    def wait(self, after_seq: int, timeout: float) -> Message | None:
        """Block until a message with ``seq > after_seq`` arrives; None on timeout or close."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                m = self._latest
                if m is not None and m.seq > after_seq:
                    self._taken = max(self._taken, m.seq)
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    def alarms_after(self, received: int) -> list[AlarmEvent]:
        """The alarm events that arrived after the ``received``-th (oldest first; only the
        newest ``alarm_keep`` are held)."""
        with self._cond:
            return [e for e in self._alarms if e.received > received]

    def stats(self) -> StreamStats:
        with self._cond:
            age = None if self._last_at is None else time.monotonic() - self._last_at
            return StreamStats(
                received=self._received, viewer_dropped=self._dropped, gaps=self._gaps,
                malformed=self._malformed, reconnects=self._reconnects,
                connected=age is not None and age < self.stale_s, last_message_age_s=age,
                alarms=self._n_alarms,
            )  # fmt: skip

    # -- receiving thread --------------------------------------------------------------------
    def _socket(self, ctx: Any) -> Any:
        import zmq

        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, self.hwm)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        s.setsockopt(zmq.SUBSCRIBE, self.topic)
        if self.topic and not b"alarm".startswith(self.topic):
            s.setsockopt(zmq.SUBSCRIBE, b"alarm")  # alarms are never filtered out
        if self._curve is not None:
            from ..daemon.curve import apply_curve

            apply_curve(s, server=False, server_key=self._curve[0], secret_key=self._curve[1])
        s.connect(self.endpoint)
        return s

    def _run(self) -> None:
        import zmq

        ctx = zmq.Context()
        sock = self._socket(ctx)
        quiet_since = time.monotonic()
        try:
            while not self._stop.is_set():
                if not sock.poll(100, zmq.POLLIN):
                    if time.monotonic() - quiet_since > self.stale_s:
                        logger.debug("no message for %.1f s: reconnecting", self.stale_s)
                        sock.close(0)
                        sock = self._socket(ctx)
                        self._reconnects += 1
                        quiet_since = time.monotonic()
                    continue
                newest = None
                while True:  # drain: only the newest message is worth drawing
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    quiet_since = time.monotonic()
                    try:
                        topic, header, jpeg = parse_message(parts)
                        if topic == "metrics":
                            self.metrics = header
                            continue
                        if topic == "series":
                            if header.get("event") == "start":
                                self.series_info = header
                            continue
                        if topic == "alarm":
                            self._note_alarm(header)
                            continue
                        if topic != "frame":
                            continue
                        view = to_view(header, jpeg=jpeg, metrics=self.metrics,
                                       series_info=self.series_info)  # fmt: skip
                    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                        self._malformed += 1
                        logger.debug("malformed message: %s", e)
                        continue
                    self._note_frame(view, header.get("seq"))
                    if newest is not None:
                        self._dropped += 1
                    newest = (header, jpeg, view, self._n_alarms)
                if newest is not None:
                    self._publish(*newest)
        except BaseException as e:  # stored; the consumer re-raises it (maybe_raise)
            self._error = e
            logger.error("result subscriber stopped: %r", e)
        finally:
            sock.close(0)
            ctx.term()

    def _note_frame(self, view: FrameView, seq: Any) -> None:
        self._received += 1
        if isinstance(seq, int) and not isinstance(seq, bool):
            # the daemon numbers its frame messages: a jump is what the PUB socket dropped; a
            # step back is a restarted daemon (or output worker), not a loss
            if self._last_seq is not None and seq > self._last_seq + 1:
                self._gaps += seq - self._last_seq - 1
            self._last_seq = seq
        else:
            new_series = self._last_series is not None and view.series != self._last_series
            if (self._last_frame is not None and not new_series
                    and view.frame > self._last_frame + 1):  # fmt: skip
                self._gaps += view.frame - self._last_frame - 1
        self._last_frame = view.frame
        self._last_series = view.series

    def _note_alarm(self, header: dict[str, Any]) -> None:
        ev = to_alarm(header, received=self._n_alarms + 1)  # ValueError: malformed
        with self._cond:
            self._n_alarms += 1
            self._alarms.append(ev)
            self._last_at = time.monotonic()
            self._cond.notify_all()
        logger.info("alarm %s: %s", ev.state, ev.message)

    def _publish(self, header: dict[str, Any], jpeg: bytes | None, view: FrameView,
                 alarms_before: int) -> None:  # fmt: skip
        with self._cond:
            if self._latest is not None and self._taken < self._latest.seq:
                self._dropped += 1  # the previous one was never looked at
            self._seq += 1
            self._last_at = time.monotonic()
            self._latest = Message(self._seq, time.time(), header, jpeg, view, alarms_before)
            self._cond.notify_all()
