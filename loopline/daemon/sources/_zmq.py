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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import zmq

from ..protocol import MalformedMessage
from .base import Event, ThreadedSource

logger = logging.getLogger(__name__)

__all__ = ["Decoder", "ZmqSource", "apply_curve", "load_curve_key", "term_context"]

SOCKET_TYPES = {"pull": zmq.PULL, "sub": zmq.SUB}
_DRAIN_BATCH = 256  # messages read per wake-up before checking the stop flag again


class Decoder(Protocol):
    """Turns one multipart message into events; raises MalformedMessage if it cannot."""

    def feed(self, parts: Sequence[Any]) -> list[Event]: ...


def load_curve_key(key: str | bytes | None, *, secret: bool) -> bytes | None:
    """A Z85 CURVE key given as itself (40 characters) or as a file holding it.

    Files may be plain (the key alone) or ZeroMQ certificates (``zmq.auth``'s
    ``*.key`` / ``*.key_secret``).
    """
    if key is None or key == "" or key == b"":
        return None
    if isinstance(key, bytes):
        key = key.decode("ascii")
    if len(key) == 40 and not os.path.exists(key):
        return key.encode("ascii")
    path = Path(key)
    if not path.is_file():
        raise ValueError(f"CURVE key: expected a 40-character Z85 key or a key file, got {key!r}")
    text = path.read_text("utf-8")
    if "curve" in text:  # a zmq.auth certificate
        import zmq.auth

        public, secret_key = zmq.auth.load_certificate(path)
        out = secret_key if secret else public
        if out is None:
            raise ValueError(f"CURVE key: {path} holds no {'secret' if secret else 'public'} key")
        return out
    z85 = text.strip()
    if len(z85) != 40:
        raise ValueError(f"CURVE key: expected 40 Z85 characters in {path}, got {len(z85)}")
    return z85.encode("ascii")


def apply_curve(sock: zmq.Socket, *, bind: bool, server_key: bytes | None,
                secret_key: bytes | None) -> bool:  # fmt: skip
    """Set CURVE options; returns whether CURVE is on.

    Connecting (the daemon's usual role): ``server_key`` (the sender's public key) turns
    CURVE on; ``secret_key`` is our own (an ephemeral pair is made without it). Binding:
    ``secret_key`` is the server's secret and turns CURVE on.
    """
    if bind:
        if secret_key is None:
            return False
        sock.curve_secretkey = secret_key
        sock.curve_publickey = zmq.curve_public(secret_key)
        sock.curve_server = True
        return True
    if server_key is None:
        return False
    if secret_key is None:
        public, secret_key = zmq.curve_keypair()
    else:
        public = zmq.curve_public(secret_key)
    sock.curve_serverkey = server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret_key
    return True


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
        CURVE encryption (Z85 keys, or files holding them; see :func:`apply_curve`). When
        connecting, the sender's public key turns it on (our secret is optional); when
        binding, our secret key (``curve_client_secret``) does.
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
        self._curve = (load_curve_key(curve_server_key, secret=False),
                       load_curve_key(curve_client_secret, secret=True))  # fmt: skip
        self._own_ctx = context is None
        self._ctx = context if context is not None else zmq.Context()
        try:
            self._start()
        except zmq.ZMQError as e:
            raise ValueError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {e}") from None

    def _run(self) -> None:
        sock = self._ctx.socket(SOCKET_TYPES[self.socket_type])
        monitor: zmq.Socket | None = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
            if self.max_message_bytes is not None:
                sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            if self.socket_type == "sub":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            curve = apply_curve(sock, bind=self.bind, server_key=self._curve[0],
                                secret_key=self._curve[1])  # fmt: skip
            if self.bind:
                sock.bind(self.endpoint)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                sock.connect(self.endpoint)
            logger.info("%s %s %s%s", "bound" if self.bind else "connected",
                        self.socket_type.upper(), self.endpoint,
                        " (CURVE)" if curve else "")  # fmt: skip
            self._ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if monitor is not None:
                poller.register(monitor, zmq.POLLIN)
            while not self._stop.is_set():
                events = dict(poller.poll(self.POLL_MS))
                if monitor is not None and monitor in events:
                    self._on_disconnect(sock, monitor)
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
            if self._own_ctx:
                self._ctx.term()

    def _on_disconnect(self, sock: zmq.Socket, monitor: zmq.Socket) -> None:
        """Count closed connections and connect again (after a message over
        ``ZMQ_MAXMSGSIZE`` ZeroMQ closes the connection for good)."""
        from zmq.utils.monitor import recv_monitor_message

        n = 0
        while monitor.poll(0):
            if recv_monitor_message(monitor).get("event") == zmq.EVENT_DISCONNECTED:
                n += 1
        if not n:
            return
        self._count("disconnects", n)
        now = time.monotonic()
        level = logging.WARNING if now - self._warned_disconnect > 5 else logging.DEBUG
        if level == logging.WARNING:
            self._warned_disconnect = now
        logger.log(level, "%s: connection to %s closed (a message over %s bytes, or the sender "
                   "went away); connecting again", self.socket_type.upper(), self.endpoint,
                   self.max_message_bytes or "any")  # fmt: skip
        # What arrived before the close is still queued on the connection's pipe, which
        # disconnect() discards: read it first (a series' last frames and its end).
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._handle(parts)
        try:
            sock.disconnect(self.endpoint)
        except zmq.ZMQError:
            pass  # already gone
        sock.connect(self.endpoint)

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
