"""Fixtures shared by the test modules."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def subscribed(endpoint: str, topics: tuple[bytes, ...]) -> Iterator[list[list[bytes]]]:
    """Every multipart message a real SUB socket on ``endpoint`` receives for ``topics``
    while inside (appended by a listener thread; read the list after the block)."""
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(endpoint)
    got: list[list[bytes]] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            if sub.poll(100):
                got.append(sub.recv_multipart())

    th = threading.Thread(target=listen, daemon=True)
    th.start()
    try:
        yield got
    finally:
        stop.set()
        th.join(5)
        sub.close()
        ctx.term()


@pytest.fixture
def ctx():
    """A ZeroMQ context that must terminate within 5 s: a leaked socket fails instead of hanging."""
    import zmq

    from loopline.daemon.ingest._zmq import term_context

    c = zmq.Context()
    yield c
    assert term_context(c, 5.0), "zmq context did not terminate: a socket was left open"


@pytest.fixture
def sim():
    """A loopline/1 camera simulator bound on loopback (port 0), for daemon tests."""
    from loopline.daemon.ingest.simulator import Simulator

    s = Simulator("tcp://127.0.0.1:0", sndhwm=1000, linger_s=2)
    yield s
    s.close(linger_s=0)


@pytest.fixture
def daemons():
    """Daemons a test started (anything with ``stop()``), stopped at teardown."""
    made: list = []
    yield made
    for d in made:
        d.stop()
