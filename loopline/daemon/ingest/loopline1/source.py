"""The loopline protocol source: ZeroMQ PULL (default) or SUB, ``[JSON header, pixels]``.

See :mod:`loopline.daemon.ingest.loopline1.protocol` for the message format and the pairing
convention (the sender binds, the daemon connects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

from .._zmq import ZmqSource
from ..base import Event
from . import protocol

__all__ = ["LooplineDecoder", "LooplineSource"]


class LooplineDecoder:
    """Stateless: one message, one event (see
    :func:`loopline.daemon.ingest.loopline1.protocol.decode`)."""

    def feed(self, parts: Sequence[Any]) -> list[Event]:
        return [protocol.decode(parts)]


class LooplineSource(ZmqSource):
    """Frames in the loopline protocol from a ZeroMQ endpoint.

    Examples
    --------
    >>> src = LooplineSource("tcp://127.0.0.1:5555")          # doctest: +SKIP
    >>> for ev in src:                                         # doctest: +SKIP
    ...     if isinstance(ev, Frame): analyse(ev.image)
    """

    def __init__(
        self,
        endpoint: str = protocol.DEFAULT_ENDPOINT,
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
    ):
        super().__init__(endpoint, LooplineDecoder(), socket=socket, bind=bind, rcvhwm=rcvhwm,
                         max_queued_frames=max_queued_frames, context=context,
                         curve_server_key=curve_server_key,
                         curve_client_secret=curve_client_secret,
                         curve_clients=curve_clients,
                         max_message_bytes=max_message_bytes, name="loopline")  # fmt: skip
