"""``loopline serve``: the live analysis daemon beside the microscope.

Every option of ``defaults.toml`` can be set in a TOML file (``--config``) and overridden on
the command line with ``--set SECTION.KEY=VALUE``; the most used ones have their own flags.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..cli_args import argument_kwargs
from ..errors import CliError
from .ingest import SERVE_PROTOCOLS

HELP = "run the live analysis daemon (ZeroMQ in, results, recording and metrics out)"

DESCRIPTION = f"""{HELP}.

loopline receives the frames a detector or camera sends (DECTRIS SIMPLON stream, a loopline
sender, or a file replayed with --from), analyses each and writes the run folder. It does not
arm, configure or trigger the detector: arm it from the detector's own control software (for a
DECTRIS detector, SIMPLON's `arm`/`trigger` or the vendor's GUI); loopline only receives the
stream (start it before arming, so that it sees the series start).

Every key of the configuration (`--print-config` lists them) can be set in a TOML file
(--config) or with --set SECTION.KEY=VALUE; the flags below set the most used ones."""

EPILOG = """examples:
  # a DECTRIS detector's stream (arm it from its own software), results to runs/today
  loopline serve --protocol dectris2 --endpoint tcp://dcu:9999 --nm-per-px 0.37 --out runs/today

  # replay a recorded folder of frames, as live, with a model on the GPU
  loopline serve --from frames/ --model defects --device cuda:0 --conf 0.3 --out runs/replay

  # a loopline sender (loopline simulate) and the browser viewer beside it
  loopline serve --endpoint tcp://127.0.0.1:5555 --publish tcp://127.0.0.1:5556 --out runs/live
"""


def _shared(flag: str, suffix: str) -> dict[str, Any]:
    """A word shared with analyze and eval (loopline/cli_args.py), with serve's note."""
    return argument_kwargs(flag, help_suffix=suffix)

logger = logging.getLogger(__name__)

# flag -> (config key, argparse kwargs)
_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--endpoint": ("source.endpoint", {"metavar": "URL", "help": "camera / simulator URL"}),
    "--protocol": ("source.protocol", {"choices": SERVE_PROTOCOLS,
                                       "help": "frame protocol"}),
    "--socket": ("source.socket", {"choices": ("pull", "sub"), "help": "PULL or SUB"}),
    "--from": ("source.path", {"metavar": "FILE",
                               "help": "replay a file (protocol file): every frame analysed, "
                                       "on the file's own time axis, as `loopline analyze`; "
                                       "--set source.pace=true paces it like a camera"}),
    "--out": ("output.dir", {"metavar": "RUN_DIR", "help": "run folder"}),
    "--model": ("engine.model", _shared("--model", "engine.model")),
    "--imgsz": ("engine.imgsz", _shared("--imgsz", "engine.imgsz")),
    "--conf": ("engine.conf", _shared("--conf", "engine.conf")),
    "--device": ("engine.device", _shared("--device", "engine.device")),
    "--engine": ("engine.engine", {"metavar": "RUNTIME",
                                   "help": "runtime (torch, onnx, openvino, tensorrt; default: "
                                           "by the model file's suffix, OpenVINO for .onnx "
                                           "where installed)"}),
    "--batch": ("batch.size", {"type": int, "metavar": "N", "help": "frames per engine call"}),
    "--deadline-ms": ("batch.deadline_ms", {"type": float, "metavar": "MS",
                                            "help": "batch latency deadline, ms"}),
    "--workers": ("engine.workers", {"type": int, "metavar": "N",
                                     "help": "engine worker processes"}),
    "--nm-per-px": ("calibration.nm_per_px", _shared(
        "--nm-per-px", "given, it wins over the profile and the frame headers, as in analyze "
                       "(calibration.nm_per_px with calibration.override)")),
    "--fps": ("calibration.fps", _shared(
        "--fps", "given, it wins over the profile, the file's axis and the camera clock, as "
                 "in analyze (calibration.fps with calibration.override)")),
    "--times-from-names": ("source.times_from_names", {
        "nargs": "?", "const": "number", "metavar": "REGEX",
        "help": "with --from FOLDER: each frame's time from a number in its file name "
                "(irregular sampling), as in analyze. Alone: the last number of the name is "
                "the frame number, at number / --fps s; REGEX: its first group is the number, "
                "a group named s, ms or us a time in that unit (source.times_from_names)"}),
    "--calibration": ("calibration.profile", {"metavar": "FILE", "help": "calibration profile"}),
    "--publish": ("publish.endpoint", {"metavar": "URL", "help": "PUB endpoint for viewers"}),
    "--prometheus-port": ("metrics.prometheus_port", {"type": int, "metavar": "PORT",
                                                      "help": "serve /metrics (0 = off)"}),
    "--raw": ("output.raw", {"choices": ("none", "npy", "tiff"), "help": "also raw frames"}),
    "--duration": ("run.duration_s", {"type": float, "metavar": "S", "help": "stop after S s"}),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", metavar="FILE", help="TOML file overriding defaults.toml")
    for flag, (key, kw) in _FLAGS.items():
        dest = "opt_" + key.replace(".", "__")
        p.add_argument(flag, dest=dest, default=None, **kw)
    p.add_argument("--until-series-end", action="store_true", default=None,
                   help="stop cleanly after the first complete series")  # fmt: skip
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override any config key (repeatable), e.g. --set batch.size=8",
    )  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the merged config, exit")


def build_config(a: argparse.Namespace):
    """The validated config from defaults, ``--config``, ``--set`` and the named flags."""
    from .config import ConfigError, load_config, parse_set

    try:
        overrides: dict[str, Any] = dict(parse_set(s) for s in a.sets)
        for key, _kw in _FLAGS.values():
            v = getattr(a, "opt_" + key.replace(".", "__"), None)
            if v is not None:
                overrides[key] = v
        if getattr(a, "until_series_end", None):
            overrides["run.until_series_end"] = True
        if a.opt_calibration__nm_per_px is not None or a.opt_calibration__fps is not None:
            overrides.setdefault("calibration.override", True)  # as analyze: the flag wins
        if overrides.get("source.path") and "source.protocol" not in overrides:
            overrides["source.protocol"] = "file"
        return load_config(a.config, overrides=overrides)
    except ConfigError as e:
        raise CliError(str(e)) from None


def run(a: argparse.Namespace) -> int:
    import tomllib  # noqa: F401  (fail early on a too-old Python)

    from .supervisor import Supervisor, install_signal_handlers

    cfg = build_config(a)
    if a.print_config:
        _print_toml(cfg.to_dict())
        return 0
    _check_run_dir(cfg.output.dir)
    sup = Supervisor(cfg, log_level=logging.getLogger("loopline").getEffectiveLevel())
    sup.quiet_startup_errors = True  # said here in one line; the traceback only with -v
    restore = install_signal_handlers(sup)
    try:
        code = sup.run()
    finally:
        restore()
    if sup.error is not None and sup.error.startup:
        from ..io.sanitize import escape_control

        print(f"loopline serve: error: {escape_control(str(sup.error))}", file=sys.stderr)
        return code
    s = sup.final_stats
    if s:
        print(
            f"loopline serve: received {int(s['received'])}, analysed {int(s['analysed'])}, "
            f"skipped {int(s['skipped'])}, malformed {int(s['malformed'])}, "
            f"recorded {int(s['recorded'])} -> {cfg.output.dir}"
        )
    return code


def _check_run_dir(path: str) -> None:
    """The run folder can be made and written, else one line naming it (no traceback)."""
    import tempfile
    from pathlib import Path

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise CliError(f"cannot write the run folder {path} (--out, output.dir): "
                       f"{e.strerror or e}") from None  # fmt: skip


def _print_toml(tree: dict[str, dict[str, Any]]) -> None:
    import json

    for sec, kv in tree.items():
        print(f"[{sec}]")
        for k, v in kv.items():
            val = ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)
            print(f"{k} = {val}")
        print()
