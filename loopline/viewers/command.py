"""``loopline view``: watch the daemon's live results in the terminal or in a browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CliError

HELP = "live terminal dashboard (or --web: browser overlay viewer) of the daemon's results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", help="the daemon's PUB socket (default tcp://127.0.0.1:5556, "
                   "or publish.endpoint of --config)")  # fmt: skip
    p.add_argument("--config", type=Path, help="TOML file; its [view] and [view.alarms] tables "
                   "are read (the daemon's config file may carry them)")  # fmt: skip
    p.add_argument("--web", action="store_true", help="serve the overlay viewer page instead")
    p.add_argument("--host", help="--web: address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="--web: port (default 8765; 0 = any free port)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="--web: also answer requests for this Host name (repeatable; "
                   "default: localhost names only)")  # fmt: skip
    p.add_argument("--curve-server-key", metavar="KEY",
                   help="the daemon's CURVE public key (40 Z85 characters, or a file: zmq.auth's "
                   "NAME.key), for a daemon with publish.curve_secret_key")  # fmt: skip
    p.add_argument("--curve-secret-key", metavar="KEY",
                   help="this viewer's own CURVE secret key (a file: zmq.auth's "
                   "NAME.key_secret), for a daemon that lists its viewers "
                   "(publish.curve_clients); default: a fresh key pair")  # fmt: skip
    p.add_argument("--open", action="store_true", help="--web: open the page in a browser")
    p.add_argument("--preview", choices=("auto", "kitty", "sixel", "off"), default="auto",
                   help="terminal frame preview (default auto: only where the terminal "
                   "announces image support)")  # fmt: skip
    p.add_argument("--no-screen", action="store_true",
                   help="draw in the normal screen, not the alternate one")  # fmt: skip
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (0: until Ctrl-C)")  # fmt: skip
    p.add_argument("--label-out", type=Path, metavar="DIR",
                   help="--web: a labelling mode: 'label this frame' adds the frame on screen to "
                   "a labelling page at /label/ (the model's instances as proposals), saved in "
                   "this dataset folder after every edit, ready for loopline adapt")  # fmt: skip
    p.add_argument("--label-model", default="defects", metavar="defects|PATH|ridge|none",
                   help="--label-out: model whose instances are proposed (default the "
                   "shipped 'defects'; 'none': no proposals)")  # fmt: skip
    p.add_argument("--min-spacing-nm", type=float, help="alarm: a spacing below this (nm)")
    p.add_argument("--max-velocity-nm-s", type=float,
                   help="alarm: a leading dislocation faster than this (nm/s)")  # fmt: skip
    p.add_argument("--velocity-jump-nm-s", type=float,
                   help="alarm: leading velocity changing by more than this between frames")


def run(a: argparse.Namespace) -> int:
    from .config import ViewConfigError, load_view_config

    if a.host not in (None, "127.0.0.1", "localhost", "::1") and not a.web:
        raise CliError("--host only applies to --web")
    try:
        cfg = load_view_config(a.config, overrides={
            "endpoint": a.endpoint, "host": a.host, "port": a.port,
            "allowed_hosts": ",".join(a.allow_host) or None,
            "curve_server_key": a.curve_server_key, "curve_secret_key": a.curve_secret_key,
            "alarms.min_spacing_nm": a.min_spacing_nm,
            "alarms.max_velocity_nm_s": a.max_velocity_nm_s,
            "alarms.velocity_jump_nm_s": a.velocity_jump_nm_s,
        })  # fmt: skip
    except ViewConfigError as e:
        raise CliError(str(e)) from None
    if a.duration < 0:
        raise CliError(f"--duration must be >= 0, got {a.duration}")
    if a.label_out is not None and not a.web:
        raise CliError("--label-out needs --web (the labelling page is a browser page)")
    if a.web:
        from .web import run_web

        label = _label_session(a, cfg) if a.label_out is not None else None
        try:
            return run_web(cfg, duration_s=a.duration, open_browser=a.open, label=label)
        except OSError as e:  # port in use, address not local
            raise CliError(f"cannot serve on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
    from .terminal import run_dashboard

    return run_dashboard(cfg, preview=a.preview, duration_s=a.duration, screen=not a.no_screen)


def _label_session(a: argparse.Namespace, cfg):
    """The labelling page of ``view --web --label-out``: frames come from the viewer."""
    from ..datasets.importers import default_label_width
    from .label import LabelServer
    from .label_command import proposal_engine

    engine = proposal_engine(a.label_model, None, flag="--label-model")
    try:
        return LabelServer([], a.label_out, engine=engine,
                           model=a.label_model if engine else None,
                           label_width=default_label_width(), host=cfg.host, port=cfg.port,
                           allowed_hosts=cfg.allowed_hosts,
                           meta={"source": f"live {cfg.endpoint}"}, live=True)  # fmt: skip
    except FileExistsError as e:
        raise CliError(str(e)) from None
