"""The ZeroMQ receiver shared by the loopline and DECTRIS sources.

The socket is created, used and closed by the receiver thread alone (sockets are not
thread-safe). The thread only drains the socket and decodes; it never waits for the
consumer: frames go into a bounded queue and are counted as ``dropped`` when it is full.

Size limit: with ``max_message_bytes`` the socket has ``ZMQ_MAXMSGSIZE``: ZeroMQ discards a
larger message part as its length arrives, before reading it into memory, and closes that
connection. A connecting source watches its socket (a monitor) and connects again at once
(ZeroMQ itself would not after such an error); each closed connection is counted in
``counters["disconnects"]``. Messages the sender had already put on the closed connection
behind the large one are lost with it (ZeroMQ's PUSH/PULL); the disconnect is the count.

CURVE (:mod:`loopline.daemon.curve`): a failed handshake (a sender without CURVE or with
another key, e.g. an impostor on the camera's address) makes ZeroMQ give a connecting socket
up for good; the source connects again after a back-off (0.2 s doubling to 5 s), so the real
camera is reached when it comes back. Each failed handshake is counted in
``counters["handshake_failures"]``. A bound source may keep an allow-list of sender keys
(``curve_clients``); a sender not on it is refused at the handshake and counted the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import zmq

from ..curve import (
    HANDSHAKE_FAILED,
    ClientAllowList,
    apply_curve,
    load_allowed_keys,
    load_curve_key,
)
from .base import Event, ThreadedSource
from .loopline1.protocol import MalformedMessage

logger = logging.getLogger(__name__)

__all__ = ["Decoder", "ZmqSource", "apply_curve", "load_curve_key", "term_context"]

SOCKET_TYPES = {"pull": zmq.PULL, "sub": zmq.SUB}
_DRAIN_BATCH = 256  # messages read per wake-up before checking the stop flag again


class Decoder(Protocol):
    """Turns one multipart message into events; raises MalformedMessage if it cannot."""

    def feed(self, parts: Sequence[Any]) -> list[Event]: ...


def term_context(ctx: zmq.Context, timeout_s: float = 5.0) -> bool:
    """Terminate ``ctx`` in a helper thread; False if it did not finish within ``timeout_s``.

    ``Context.term()`` blocks while any socket is still open; a bug that leaks a socket then
    shows as a False here (a failed test) instead of a hang.
    """
    t = threading.Thread(target=ctx.term, name="zmq-term", daemon=True)
    t.start()
    t.join(timeout_s)
    return not t.is_alive()


class ZmqSource(ThreadedSource):
    """Receive multipart messages on a PULL or SUB socket and decode them with ``decoder``.

    Parameters
    ----------
    endpoint : str
        ZeroMQ URL, e.g. ``tcp://127.0.0.1:5555``. With ``bind=True`` a port of ``*`` or
        ``0`` picks a free port; :attr:`endpoint` then holds the one bound.
    decoder : Decoder
        The wire format.
    socket : {"pull", "sub"}
        PULL (default, lossless while we keep up) or SUB (subscribes to everything).
    bind : bool
        Connect (default: the sender binds, as a detector does) or bind.
    rcvhwm : int
        Receive high-water mark, in messages.
    max_queued_frames : int
        Decoded frames held for the consumer; further frames are dropped and counted.
    context : zmq.Context, optional
        Shared context; by default the source makes its own and terminates it on close.
    curve_server_key, curve_client_secret : str, optional
        CURVE encryption (Z85 keys, or files holding them; see :mod:`loopline.daemon.curve`).
        When connecting, the sender's public key turns it on (our secret is optional); when
        binding, our secret key (``curve_client_secret``) does.
    curve_clients : str, optional
        Binding with CURVE: the senders' public keys that may connect (a folder of
        ``zmq.auth`` ``*.key`` certificates or a key file; :func:`load_allowed_keys`); any
        other sender's handshake is refused and counted in ``handshake_failures``.
    max_message_bytes : int, optional
        ``ZMQ_MAXMSGSIZE``: larger message parts are discarded unread (see the module
        docstring). Default: no limit.
    """

    POLL_MS = 50

    def __init__(
        self,
        endpoint: str,
        decoder: Decoder,
        *,
        socket: str = "pull",
        bind: bool = False,
        rcvhwm: int = 100,
        max_queued_frames: int = 64,
        context: zmq.Context | None = None,
        curve_server_key: str | bytes | None = None,
        curve_client_secret: str | bytes | None = None,
        curve_clients: str | None = None,
        max_message_bytes: int | None = None,
        name: str = "zmq",
    ):
        super().__init__(max_queued_frames=max_queued_frames, name=name)
        if socket not in SOCKET_TYPES:
            raise ValueError(f"socket must be one of {sorted(SOCKET_TYPES)}, got {socket!r}")
        if bind and endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        self.endpoint = endpoint
        self.socket_type = socket
        self.bind = bind
        self.rcvhwm = rcvhwm
        self.decoder = decoder
        if max_message_bytes is not None and max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self._warned_disconnect = -float("inf")
        self._warned_handshake = -float("inf")
        self._curve = (load_curve_key(curve_server_key, secret=False),
                       load_curve_key(curve_client_secret, secret=True))  # fmt: skip
        self._allowed = load_allowed_keys(curve_clients)
        if self._allowed is not None and not (bind and self._curve[1] is not None):
            raise ValueError("curve_clients (an allow-list of sender keys) needs a bound CURVE "
                             f"source (bind and curve_client_secret), got bind={bind} and "
                             f"{'a' if self._curve[1] else 'no'} secret key")  # fmt: skip
        self._reconnect_at: float | None = None  # a failed handshake: connect again then
        self._backoff_s = 0.0
        self._own_ctx = context is None
        self._ctx = context if context is not None else zmq.Context()
        try:
            self._start()
        except zmq.ZMQError as e:
            raise ValueError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {e}") from None

    def _run(self) -> None:
        sock = self._ctx.socket(SOCKET_TYPES[self.socket_type])
        monitor: zmq.Socket | None = None
        allow: ClientAllowList | None = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
            if self.max_message_bytes is not None:
                sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            if self.socket_type == "sub":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            curve = apply_curve(sock, server=self.bind, server_key=self._curve[0],
                                secret_key=self._curve[1])  # fmt: skip
            if curve:
                monitor = sock.get_monitor_socket(
                    zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
            elif not self.bind:
                monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            if self.bind:
                if self._allowed is not None:
                    allow = ClientAllowList(self._ctx, self._allowed,
                                            name=f"source {self.endpoint}")  # fmt: skip
                sock.bind(self.endpoint)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(self.endpoint)
            what = ""
            if curve:
                what = f" (CURVE, {len(self._allowed)} senders allowed)" if allow else " (CURVE)"
            logger.info("%s %s %s%s", "bound" if self.bind else "connected",
                        self.socket_type.upper(), self.endpoint, what)  # fmt: skip
            self._ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if monitor is not None:
                poller.register(monitor, zmq.POLLIN)
            while not self._stop.is_set():
                events = dict(poller.poll(self.POLL_MS))
                if monitor is not None and monitor in events:
                    self._on_monitor(sock, monitor)
                if self._reconnect_at is not None and time.monotonic() >= self._reconnect_at:
                    self._reconnect_at = None
                    sock.connect(self.endpoint)
                if sock not in events:
                    continue
                for _ in range(_DRAIN_BATCH):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(parts)
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            if allow is not None:
                allow.stop()
            if self._own_ctx:
                self._ctx.term()

    def _drain(self, sock: zmq.Socket) -> None:
        """Read what is queued (before a disconnect discards the connection's pipe)."""
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._handle(parts)

    def _on_monitor(self, sock: zmq.Socket, monitor: zmq.Socket) -> None:
        """Count closed connections and failed handshakes; a connecting source connects again.

        After a message over ``ZMQ_MAXMSGSIZE`` ZeroMQ closes the connection for good: connect
        again at once. After a failed CURVE handshake (a sender without CURVE, or with another
        key: an impostor on the camera's address) ZeroMQ gives the address up for good too:
        connect again after a back-off (0.2 s, doubling to 5 s; reset by a handshake that
        succeeds), so that the real camera is reached once it is back, without spinning.
        """
        from zmq.utils.monitor import recv_monitor_message

        closed = failed = 0
        reason = ""
        while monitor.poll(0):
            ev = recv_monitor_message(monitor).get("event")
            if ev == zmq.EVENT_DISCONNECTED:
                closed += 1
            elif ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._backoff_s = 0.0
            elif ev is not None and ev & HANDSHAKE_FAILED:
                failed += 1
                reason = zmq.Event(ev).name.lower()
        now = time.monotonic()
        if failed:
            self._count("handshake_failures", failed)
            if self.bind:  # that client's connection is closed; the socket listens on
                self._warn_rate(f"CURVE handshake of a sender to {self.endpoint} failed "
                                f"({reason}: no CURVE, another server key, or a key not in the "
                                "allow-list); refused", "_warned_handshake")  # fmt: skip
                return
            self._backoff_s = min(5.0, max(0.2, self._backoff_s * 2))
            self._warn_rate(f"CURVE handshake with {self.endpoint} failed ({reason}: a sender "
                            "without CURVE or with another key than source.curve_server_key); "
                            f"connecting again in {self._backoff_s:g} s", "_warned_handshake")
            self._drain(sock)
            try:
                sock.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass  # already gone
            self._reconnect_at = now + self._backoff_s
            return
        if not closed or self.bind or self._reconnect_at is not None:
            return  # a reconnect is due anyway (the close that followed a failed handshake)
        self._count("disconnects", closed)
        self._warn_rate(f"{self.socket_type.upper()}: connection to {self.endpoint} closed (a "
                        f"message over {self.max_message_bytes or 'any'} bytes, or the sender "
                        "went away); connecting again", "_warned_disconnect")  # fmt: skip
        # What arrived before the close is still queued on the connection's pipe, which
        # disconnect() discards: read it first (a series' last frames and its end).
        self._drain(sock)
        try:
            sock.disconnect(self.endpoint)
        except zmq.ZMQError:
            pass  # already gone
        sock.connect(self.endpoint)

    def _warn_rate(self, message: str, attr: str) -> None:
        """WARNING at most every 5 s per kind (``attr``), DEBUG in between."""
        now = time.monotonic()
        level = logging.WARNING if now - getattr(self, attr) > 5 else logging.DEBUG
        if level == logging.WARNING:
            setattr(self, attr, now)
        logger.log(level, "%s", message)

    def _handle(self, parts: list) -> None:
        self._count("messages")
        try:
            events = self.decoder.feed(parts)
        except MalformedMessage as e:
            self._malformed(str(e))
            return
        except Exception as e:  # a decoder bug must not kill the receiver: count and go on
            logger.debug("decoder raised", exc_info=True)
            self._malformed(f"decoder error {type(e).__name__}: {e}")
            return
        self._emit(events)
