"""``loopline simulate``: publish frames like a camera, for ``loopline serve`` to connect to."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import threading
import time
from pathlib import Path

from loopline.errors import CliError

from .ingest import CAMERA_PROTOCOLS

logger = logging.getLogger(__name__)

HELP = "publish frames like a camera (loopline protocol or DECTRIS Stream v1/v2)"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"  # = protocol.DEFAULT_ENDPOINT (kept light for --help)

_EPILOG = """\
pairing: the simulator binds the endpoint (as a detector's data port does) and
`loopline serve --endpoint URL` connects to the same URL; --connect reverses it.

examples:
  loopline simulate --from synth --frames 300 --fps 25 --truth-out runs/sim-truth
  loopline simulate --from movie.mp4 --protocol dectris1 --endpoint tcp://127.0.0.1:9999
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _EPILOG
    p.add_argument("--from", dest="source", required=True, metavar="FILE|DIR|synth",
                   help="a video (MP4/AVI), TIFF stack, image folder, DM3/DM4 file, or "
                        "'synth' for a synthetic video")  # fmt: skip
    p.add_argument("--fps", type=float, default=None,
                   help="frames per second (default: the source's own rate, else 25; "
                        "'inf' = as fast as possible)")  # fmt: skip
    p.add_argument("--protocol", choices=CAMERA_PROTOCOLS,
                   default="loopline", help="wire format (default: %(default)s)")  # fmt: skip
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help="ZeroMQ URL (default: %(default)s)")  # fmt: skip
    p.add_argument("--frames", type=int, default=None, metavar="N",
                   help="frames to send (default: all of the file; 300 for synth)")  # fmt: skip
    role = p.add_mutually_exclusive_group()
    role.add_argument("--bind", dest="bind", action="store_true", default=True,
                      help="bind the endpoint (default)")  # fmt: skip
    role.add_argument("--connect", dest="bind", action="store_false",
                      help="connect to the endpoint instead (the daemon binds)")  # fmt: skip
    p.add_argument("--socket", choices=("push", "pub"), default="push",
                   help="PUSH (default, waits for the receiver) or PUB (never waits)")
    p.add_argument("--series", default=None,
                   help="series id (default: the start time in s; DECTRIS needs an integer)")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="send K series one after another (default: 1)")  # fmt: skip
    p.add_argument("--loop", action="store_true", help="replay a file from the start at its end")
    p.add_argument("--preset", default="M1", help="synth preset (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="synth seed (default: %(default)s)")
    p.add_argument("--truth-out", type=Path, default=None, metavar="DIR",
                   help="synth: write the video and its truth.json here, then send it")
    p.add_argument("--hwm", type=int, default=100,
                   help="send high-water mark in messages (default: %(default)s)")  # fmt: skip
    p.add_argument("--curve-secret", default=None, metavar="KEY",
                   help="encrypt with CURVE: this simulator's Z85 secret key, or a file with "
                        "it (binding: it is the server; serve needs its public key)")
    p.add_argument("--settle", type=float, default=None, metavar="S",
                   help="seconds to wait after binding before sending (default: 0.5 for "
                        "pub, 0 for push)")  # fmt: skip


def _supply(a: argparse.Namespace):
    from .ingest.simulator import file_supply, synth_supply

    if a.source == "synth":
        try:
            return synth_supply(frames=a.frames if a.frames is not None else 300,
                                preset=a.preset, seed=a.seed, truth_out=a.truth_out)  # fmt: skip
        except (ValueError, FileExistsError) as e:
            raise CliError(str(e)) from None
    if a.truth_out is not None:
        raise CliError("--truth-out is for --from synth")
    try:
        return file_supply(a.source, frames=a.frames, loop=a.loop)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise CliError(str(e)) from None


def run(a: argparse.Namespace) -> int:
    from .ingest.simulator import Simulator

    if a.fps is not None and not (a.fps > 0):
        raise CliError(f"--fps must be > 0, got {a.fps}")
    if a.frames is not None and a.frames < 1:
        raise CliError(f"--frames must be >= 1, got {a.frames}")
    if a.repeat < 1:
        raise CliError(f"--repeat must be >= 1, got {a.repeat}")
    series0 = a.series if a.series is not None else str(int(time.time()))
    if a.protocol != "loopline" and not series0.isdigit():
        raise CliError(f"--series must be an integer for {a.protocol}, got {series0!r}")

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal %d: ending the series", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            sim = Simulator(a.endpoint, protocol=a.protocol, socket=a.socket, bind=a.bind,
                            sndhwm=a.hwm, stop=stop, curve_secret=a.curve_secret)  # fmt: skip
        except ValueError as e:
            raise CliError(str(e)) from None
        with sim:
            settle = a.settle if a.settle is not None else (0.5 if a.socket == "pub" else 0.0)
            if settle > 0:
                stop.wait(settle)
            role = "bound to" if a.bind else "connected to"
            print(f"simulate: {a.protocol} over {a.socket.upper()} {role} {sim.endpoint}",
                  flush=True)  # fmt: skip
            total = 0
            for k in range(a.repeat):
                if stop.is_set():
                    break
                supply = _supply(a)
                if a.protocol != "loopline":
                    _check_dectris_dtype(supply)
                series = series0 if a.repeat == 1 else (
                    str(int(series0) + k) if series0.isdigit() else f"{series0}-{k}")  # fmt: skip
                if supply.truth is not None:
                    print(f"simulate: ground truth in {supply.truth}", flush=True)
                try:
                    st = sim.send_supply(supply, series=series, fps=a.fps)
                except ValueError as e:
                    raise CliError(str(e)) from None
                total += st.sent
                rate = "max" if a.fps is not None and math.isinf(a.fps) else f"{st.fps:.1f}"
                print(f"simulate: series {series}: {st.sent} frames in {st.seconds:.2f} s "
                      f"({rate} fps, {st.late} late){' - stopped' if st.stopped else ''}",
                      flush=True)  # fmt: skip
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def _check_dectris_dtype(supply) -> None:
    """DECTRIS streams carry unsigned integers: convert float frames, say so once."""
    import numpy as np

    frames = supply.frames

    def conv():
        warned = False
        for img in frames:
            if img.dtype == np.float32:
                if not warned:
                    logger.warning("float32 frames sent as uint16 (clipped to 0..65535)")
                    warned = True
                img = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
            yield img

    supply.frames = conv()
