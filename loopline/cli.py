"""The ``loopline`` command: one entry point, one subcommand per job.

Subcommands are looked up in ``COMMANDS``; heavy imports happen inside each command's ``run``
so that ``loopline --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ._version import __version__
from .errors import CliError

logger = logging.getLogger("loopline")

# Every subcommand lives in a module of the feature it drives; the module defines ``HELP``,
# ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy imports inside ``run``.
COMMANDS: dict[str, str] = {
    "synth": "loopline.synth.command",
    "import": "loopline.datasets.import_command",
    "train": "loopline.training.command",
    "eval": "loopline.evaluation.command",
    "analyze": "loopline.analysis.command",
    "export": "loopline.engines.command",
    "serve": "loopline.daemon.serve_command",
    "simulate": "loopline.daemon.simulate_command",
    "recover": "loopline.daemon.recover_command",
    "view": "loopline.viewers.command",
    "report": "loopline.reports.command",
    "label": "loopline.viewers.label_command",
    "adapt": "loopline.training.adapt_command",
    "model": "loopline.daemon.model_command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopline",
        description="Real-time analysis of dislocations and loops in in-situ TEM video.",
    )
    parser.add_argument("--version", action="version", version=f"loopline {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, path in COMMANDS.items():
        mod = importlib.import_module(path)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def _setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )  # fmt: skip
    logging.getLogger("loopline").setLevel(max(logging.INFO - 10 * verbose, logging.DEBUG))
    from .io.sanitize import install_log_escaping

    install_log_escaping()  # data from a camera or a file cannot forge log lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command is None:
        parser.print_help()
        return 2
    _setup_logging(a.verbose)
    try:
        return int(a.func(a) or 0)
    except CliError as e:
        print(f"loopline {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
