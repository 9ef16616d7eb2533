"""``loopline model``: swap the model of a running ``loopline serve``, or show it.

``loopline model use NEW.onnx --run RUN_DIR`` asks the daemon that writes ``RUN_DIR`` (found
through its state file) to load ``NEW.onnx``; ``--endpoint URL`` reaches a daemon whose
``control.endpoint`` is a ZeroMQ URL instead. Every engine worker loads the model beside the
running one and checks it on a synthetic frame; then all switch between two batches, without a
restart and without losing a frame (:mod:`loopline.daemon.control`). The command prints the new
model's id and exits 0, or prints why the model was refused and exits 1 (the old model keeps
running). ``loopline model show`` prints what each engine worker runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import CliError

HELP = "swap the model of a running daemon (loopline serve) without a restart, or show it"

_DEFAULT_RUN = "runs/live"  # output.dir of defaults.toml


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    use = sub.add_parser("use", help="load a model in the running daemon",
                         description="load a model in the running daemon (exit 1: refused, "
                                     "the old model runs on)")  # fmt: skip
    use.add_argument("path", metavar="PATH",
                     help="model file (.onnx, .xml, .engine; a .pt pickle is refused: export "
                          "it), a shipped name, or ridge")  # fmt: skip
    show = sub.add_parser("show", help="print the models the daemon runs")
    for q in (use, show):
        q.add_argument("--run", metavar="RUN_DIR", default=None,
                       help=f"the daemon's run folder (--out; default {_DEFAULT_RUN})")  # fmt: skip
        q.add_argument("--endpoint", metavar="URL", default=None,
                       help="the daemon's control.endpoint, when it is a ZeroMQ URL")  # fmt: skip
        q.add_argument("--timeout", type=float, default=330.0, metavar="S",
                       help="seconds to wait for the answer (default: %(default)s)")  # fmt: skip
        q.add_argument("--curve-server-key", metavar="KEY", default=None,
                       help="CURVE: the daemon's public key (or its NAME.key file)")  # fmt: skip
        q.add_argument("--curve-secret-key", metavar="KEY", default=None,
                       help="CURVE: this client's secret key (or NAME.key_secret)")  # fmt: skip


def use_model(path: str, *, run_dir: str | None = None, endpoint: str | None = None,
              timeout_s: float = 330.0, server_key: str | None = None,
              secret_key: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Ask a running daemon to swap to the model ``path``; the daemon's answer.

    ``path`` is made absolute here when it names a file (the daemon runs in another folder).
    The answer is ``{"ok": True, "model": "new.onnx@1a2b3c4d", "previous": ..., "message":
    ...}`` or ``{"ok": False, "error": "one line"}``.

    Raises
    ------
    loopline.daemon.control.ControlError
        No daemon found or no answer in time.
    """
    from pathlib import Path

    p = Path(path).expanduser()
    if p.exists():
        path = str(p.resolve())
    return _request({"t": "use_model", "path": path}, run_dir, endpoint, timeout_s, server_key,
                    secret_key)  # fmt: skip


def show(*, run_dir: str | None = None, endpoint: str | None = None, timeout_s: float = 30.0,
         server_key: str | None = None,
         secret_key: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The daemon's ``status`` answer (its engine workers' models, a swap in progress)."""
    return _request({"t": "status"}, run_dir, endpoint, timeout_s, server_key, secret_key)


def _request(body: dict[str, Any], run_dir: str | None, endpoint: str | None, timeout_s: float,
             server_key: str | None, secret_key: str | None) -> dict[str, Any]:  # fmt: skip
    from .control import find_control, request

    ep = endpoint or find_control(run_dir or _DEFAULT_RUN)
    return request(ep, body, timeout_s=timeout_s, server_key=server_key, secret_key=secret_key)


def run(a: argparse.Namespace) -> int:
    from ..io.sanitize import escape_control
    from .control import ControlError

    if a.run and a.endpoint:
        raise CliError("give --run or --endpoint, not both")
    kw = {"run_dir": a.run, "endpoint": a.endpoint, "timeout_s": a.timeout,
          "server_key": a.curve_server_key, "secret_key": a.curve_secret_key}  # fmt: skip
    try:
        reply = use_model(a.path, **kw) if a.action == "use" else show(**kw)
    except (ControlError, ValueError) as e:  # ValueError: a CURVE key that is not one
        raise CliError(str(e)) from None
    if not reply.get("ok"):
        print(f"loopline model: refused: {escape_control(str(reply.get('error')))}",
              file=sys.stderr)  # fmt: skip
        return 1
    if a.action == "use":
        print(f"loopline model: {escape_control(str(reply.get('message')))}")
        return 0
    model = reply.get("model")
    print(f"model: {model}")
    for label, m in sorted((reply.get("models") or {}).items()):
        m = m or {}
        note = "" if m.get("model") == model else f"; switches to {model} at its next batch"
        print(f"{label}: {m.get('model')}  ({m.get('runtime')}; {m.get('path') or '-'}{note})")
    if reply.get("swap"):
        print(f"swapping to {reply['swap']}")
    return 0
