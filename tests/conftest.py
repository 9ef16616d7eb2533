"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def ctx():
    """A ZeroMQ context that must terminate within 5 s: a leaked socket fails instead of hanging."""
    import zmq

    from loopline.daemon.sources._zmq import term_context

    c = zmq.Context()
    yield c
    assert term_context(c, 5.0), "zmq context did not terminate: a socket was left open"
