"""The daemon's control socket: ``loopline model use|show`` asks, the supervisor answers.

Transport
---------
The supervisor binds a ROUTER socket on ``control.endpoint``. By default (``""``) that is
``ipc://<private folder>/control`` in the daemon's run-time folder (mode 0700: only the user
that runs the daemon can connect), named in the run folder's ``.loopline-daemon.json``
(:data:`~loopline.daemon.hygiene.STATE_FILE`), where ``loopline model ... --run RUN_DIR`` finds
it. A ZeroMQ URL (``tcp://127.0.0.1:5557``) serves other users or machines, with CURVE
(``control.curve_secret_key``, ``control.curve_clients``) as the publisher has it;
``"none"`` binds nothing. Whoever may send ``use_model`` chooses what the engine workers load,
so a swap never loads a pickle: a ``.pt`` checkpoint is refused (export it to ONNX first).

A client sends one JSON object (a REQ socket: ``[b"", request]``; a DEALER may leave out the
empty frame) and gets one JSON object back:

- ``{"t": "use_model", "path": "/abs/new.onnx"}``: every engine worker loads and checks the
  model beside the one it runs (:mod:`.stages.engine`, ``EngineWorker``), then the batcher switches
  all of them between two batches; the reply comes when that is decided:
  ``{"ok": true, "model": "new.onnx@1a2b3c4d", "previous": "defects.onnx@9c3e3b90",
  "message": ...}`` or ``{"ok": false, "error": "one line"}`` (the old model keeps running).
- ``{"t": "status"}``: ``{"ok": true, "pid": ..., "workers": {label: pid}, "model": the model
  that analyses new frames, "models": {"engine0": {"model": ..., "runtime": ..., "path":
  ...}} (what each engine worker runs: the old model until its first batch after a swap),
  "counters": {...}, "swap": the path being swapped to, or null}``.

A request that is not a JSON object of a known ``t`` is answered ``ok: false`` and counted
(``control_errors``); it costs nothing else.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import zmq

from .config import ControlConfig
from .curve import ClientAllowList, apply_curve, load_allowed_keys, load_curve_key
from .wire import socket

logger = logging.getLogger(__name__)

__all__ = ["MAX_REQUEST_BYTES", "ControlError", "ControlServer", "find_control", "request"]

#: the largest request accepted (a path and a few keys)
MAX_REQUEST_BYTES = 65536
#: longest model path accepted in a request
_MAX_PATH = 4096


class ControlError(RuntimeError):
    """The daemon could not be reached, or did not answer in time."""


def control_endpoint(cfg: ControlConfig, ipc_folder: str) -> str | None:
    """The URL to bind for ``cfg`` (None: no control socket)."""
    if cfg.endpoint == "none":
        return None
    return cfg.endpoint or f"ipc://{os.path.join(ipc_folder, 'control')}"


class ControlServer:
    """The ROUTER socket (owned by the supervisor's one thread)."""

    def __init__(self, ctx: zmq.Context, cfg: ControlConfig, endpoint: str) -> None:
        secret = load_curve_key(cfg.curve_secret_key, secret=True)
        allowed = load_allowed_keys(cfg.curve_clients)
        if allowed is not None and secret is None:
            raise ValueError("control.curve_clients (an allow-list of client keys) needs "
                             "control.curve_secret_key, got none")  # fmt: skip
        self.sock = socket(ctx, zmq.ROUTER, linger_ms=0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a client gone: its reply is dropped
        apply_curve(self.sock, server=True, secret_key=secret)
        self.allow = ClientAllowList(ctx, allowed, name="control") if allowed else None
        if endpoint.startswith("tcp://") and secret is None:
            logger.warning("control.endpoint %s without CURVE: anyone who can reach it may "
                           "swap the model (set control.curve_secret_key)", endpoint)  # fmt: skip
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise OSError(f"cannot bind control.endpoint {endpoint}: {e.strerror}") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self) -> list[tuple[list[bytes], dict[str, Any] | str]]:
        """Waiting requests: (envelope, request) or (envelope, why it is not one)."""
        out: list[tuple[list[bytes], dict[str, Any] | str]] = []
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if len(parts) < 2:
                continue
            envelope, data = parts[:-1], parts[-1]
            out.append((envelope, parse_request(data)))

    def reply(self, envelope: list[bytes], body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        if len(envelope) == 1:  # a DEALER without the REQ delimiter
            parts = [*envelope, data]
        else:
            parts = [envelope[0], b"", data]
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.ZMQError as e:  # the client went away
            logger.debug("control: reply not sent: %s", e)

    def close(self) -> None:
        """Close the socket and stop the allow-list's ZAP thread (before the context ends)."""
        self.sock.close(linger=0)
        if self.allow is not None:
            self.allow.stop()
            self.allow = None


def parse_request(data: bytes) -> dict[str, Any] | str:
    """A request, checked; or a one-line reason why it is not one."""
    try:
        req = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "expected a JSON object, got bytes that are not JSON"
    if not isinstance(req, dict):
        return f"expected a JSON object, got {type(req).__name__}"
    t = req.get("t")
    if t == "status":
        return {"t": "status"}
    if t == "use_model":
        path = req.get("path")
        if not isinstance(path, str) or not path or len(path) > _MAX_PATH or "\0" in path:
            return (f"use_model: expected 'path', a model file path of 1 to {_MAX_PATH} "
                    "characters")  # fmt: skip
        return {"t": "use_model", "path": path}
    return f"expected t = 'use_model' or 'status', got {str(t)[:40]!r}"


def find_control(run_dir: str | Path) -> str:
    """The control endpoint of the daemon that writes ``run_dir`` (from its state file).

    Raises
    ------
    ControlError
        No daemon runs there, or it has no control socket.
    """
    from .._procs import process_alive
    from .hygiene import STATE_FILE

    path = Path(run_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise ControlError(f"no loopline serve runs in {run_dir} (no {STATE_FILE}); give the "
                           "daemon's --out folder, or --endpoint") from None  # fmt: skip
    except (OSError, ValueError) as e:
        raise ControlError(f"{path}: unreadable ({e})") from None
    if not isinstance(state, dict):
        raise ControlError(f"{path}: unreadable (not a JSON object)")
    # (a daemon in this very process, as in tests, is alive too)
    if state.get("pid") != os.getpid() and not process_alive(state.get("pid"), state.get("start")):
        raise ControlError(f"the daemon that wrote {path} is not running")
    ep = state.get("control")
    if not isinstance(ep, str) or not ep:
        raise ControlError(f"the daemon writing {run_dir} has no control socket "
                           "(control.endpoint = \"none\")")  # fmt: skip
    return ep


def request(endpoint: str, body: dict[str, Any], *, timeout_s: float = 300.0,
            server_key: str | None = None, secret_key: str | None = None,
            ctx: zmq.Context | None = None) -> dict[str, Any]:  # fmt: skip
    """Send one request to a daemon's control socket; its reply.

    Parameters
    ----------
    endpoint : str
        The control endpoint (:func:`find_control`, or ``control.endpoint``).
    timeout_s : float
        How long to wait for the reply (a model swap answers once every engine worker has
        loaded and checked the model).
    server_key, secret_key : str, optional
        CURVE: the daemon's public key and this client's secret key (keys or key files).

    Raises
    ------
    ControlError
        No reply in time, or a reply that is not a JSON object.
    """
    own = ctx is None
    ctx = ctx or zmq.Context()
    s = socket(ctx, zmq.REQ, linger_ms=0)
    try:
        apply_curve(s, server=False, server_key=load_curve_key(server_key, secret=False),
                    secret_key=load_curve_key(secret_key, secret=True))  # fmt: skip
        s.connect(endpoint)
        s.send(json.dumps(body).encode())
        if not s.poll(int(timeout_s * 1000)):
            raise ControlError(f"no reply from {endpoint} within {timeout_s:g} s (is loopline "
                               "serve running there?)")  # fmt: skip
        data = s.recv()
    finally:
        s.close(linger=0)
        if own:
            ctx.term()
    try:
        reply = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(f"{endpoint}: expected a JSON object in reply, got {data[:60]!r}")
    return reply
