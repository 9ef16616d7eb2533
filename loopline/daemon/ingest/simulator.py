"""A camera simulator: publish frames at a chosen rate in any ingest protocol.

Pairing: the simulator **binds** (as a detector's data port does) and the daemon connects to
the same URL; ``bind=False`` reverses it. PUSH by default: with no receiver connected, or a
receiver that has fallen a high-water mark behind, the simulator waits (frames sent late are
counted in ``SimStats.late``); PUB never waits and loses what no subscriber takes.

Frames come from a file or folder (:func:`loopline.io.frames.open_frames`) or from
the synthetic video generator (:func:`synth_supply`), which can save its ground truth
(``truth.json``, the same file as ``loopline synth``) alongside.

The sending loop checks a stop flag between frames and while a send waits; on stop (SIGTERM
in ``loopline simulate``) it still sends the series-end, so the receiver sees a clean end,
but waits at most :attr:`Simulator.STOP_GRACE_S` for it (and as long again on close) when
no receiver takes it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..curve import apply_curve, load_curve_key
from .dectris.source import (
    encode_v1_end,
    encode_v1_frame,
    encode_v1_header,
    encode_v2_end,
    encode_v2_frame,
    encode_v2_start,
)
from .loopline1 import protocol as lp

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODERS",
    "FrameSupply",
    "SimStats",
    "Simulator",
    "SimulatorThread",
    "file_supply",
    "synth_supply",
]

SOCKET_TYPES = {"push": zmq.PUSH, "pub": zmq.PUB}
#: Synthetic frames rendered before sending starts (then kept this far ahead), in bytes.
PRERENDER_BYTES = 512 * 1024 * 1024


# ---------------------------------------------------------------------------- encoders


class LooplineEncoder:
    name = "loopline"

    def start(self, series: str, *, shape, dtype, count, pixel_size_nm, fps, meta) -> list:
        meta = dict(meta or {})
        if fps and np.isfinite(fps):
            meta["fps"] = fps
        return lp.encode_series_start(series, shape=shape, dtype=dtype, frames=count,
                                      pixel_size_nm=pixel_size_nm, meta=meta)  # fmt: skip

    def frame(self, series: str, index: int, image: np.ndarray, *, pixel_size_nm, meta) -> list:
        return lp.encode_frame(series, index, image, pixel_size_nm=pixel_size_nm, meta=meta)

    def end(self, series: str, *, frames: int) -> list:
        return lp.encode_series_end(series, frames=frames)


def _int_series(series: str) -> int:
    try:
        return int(series)
    except ValueError:
        raise ValueError(f"DECTRIS series ids are integers, got {series!r}") from None


class Dectris1Encoder:
    name = "dectris1"

    def __init__(self, encoding: str = "bslz4"):
        self.encoding = encoding
        self._frame_ns = 40_000_000

    def start(self, series: str, *, shape, dtype, count, pixel_size_nm, fps, meta) -> list:
        self._frame_ns = round(1e9 / fps) if fps and np.isfinite(fps) else 0
        return encode_v1_header(_int_series(series), shape=shape, dtype=dtype,
                                nimages=count or 0, frame_time=self._frame_ns / 1e9)  # fmt: skip

    def frame(self, series: str, index: int, image: np.ndarray, *, pixel_size_nm, meta) -> list:
        return encode_v1_frame(_int_series(series), index, image, encoding=self.encoding,
                               frame_time_ns=self._frame_ns)  # fmt: skip

    def end(self, series: str, *, frames: int) -> list:
        return encode_v1_end(_int_series(series))


class Dectris2Encoder:
    name = "dectris2"

    def __init__(self, compression: str = "bslz4"):
        self.compression = compression
        self._frame_s = 0.04

    def start(self, series: str, *, shape, dtype, count, pixel_size_nm, fps, meta) -> list:
        self._frame_s = 1.0 / fps if fps and np.isfinite(fps) else 0.0
        return encode_v2_start(_int_series(series), shape=shape, nimages=count or 0,
                               frame_time=self._frame_s)  # fmt: skip

    def frame(self, series: str, index: int, image: np.ndarray, *, pixel_size_nm, meta) -> list:
        return encode_v2_frame(_int_series(series), index, image, compression=self.compression,
                               frame_time=self._frame_s)  # fmt: skip

    def end(self, series: str, *, frames: int) -> list:
        return encode_v2_end(_int_series(series))


#: Protocol name -> encoder class.
ENCODERS: dict[str, Callable[[], Any]] = {
    "loopline": LooplineEncoder,
    "dectris1": Dectris1Encoder,
    "dectris2": Dectris2Encoder,
}


# ---------------------------------------------------------------------------- frame supply


@dataclass
class FrameSupply:
    """Frames to publish and what is known of them."""

    frames: Iterator[np.ndarray]
    fps: float | None = None
    pixel_size_nm: float | None = None
    count: int | None = None
    truth: Path | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)  # goes into the series-start
    frame_meta: Callable[[int], Mapping[str, Any]] | None = None


def file_supply(path: str | Path, *, frames: int | None = None, loop: bool = False) -> FrameSupply:
    """Frames of a video, TIFF, image folder or DM3/DM4 file (optionally looped / cut)."""
    from ...io.frames import open_frames

    ff = open_frames(path)

    def gen() -> Iterator[np.ndarray]:
        n = 0
        while True:
            got = False
            for img in ff:
                if frames is not None and n >= frames:
                    return
                got = True
                n += 1
                yield img
            if not (loop and got):
                return

    count = ff.count if frames is None else (frames if ff.count is None or loop
                                             else min(frames, ff.count))  # fmt: skip
    if loop and frames is None:
        count = None
    return FrameSupply(gen(), ff.fps, ff.pixel_size_nm, count, ff.truth,
                       meta={"source": str(path)})  # fmt: skip


def synth_supply(
    *,
    frames: int = 300,
    preset: str = "M1",
    seed: int = 0,
    truth_out: str | Path | None = None,
) -> FrameSupply:
    """Frames of one synthetic video (``loopline.synth``).

    With ``truth_out`` the video is generated into that folder (images, ``truth.json``,
    labels: the layout of ``loopline synth``) and replayed from it; otherwise frames are
    rendered in memory as they are sent.
    """
    if frames < 2:
        raise ValueError(f"a synthetic video needs at least 2 frames, got {frames}")
    meta = {"synth": {"preset": preset, "seed": seed, "frames": frames}}
    if truth_out is not None:
        from loopline.synth.generate import generate

        out = Path(truth_out)
        generate(out, preset=preset, count=1, seed=seed, video=True, frames=frames,
                 progress=False, overwrite=True, jobs=1)  # fmt: skip
        sup = file_supply(out)
        sup.meta = dict(meta, truth=str(out / "truth.json"))
        sup.frame_meta = lambda t: {"synth_frame": t}
        return sup
    from loopline.synth.params import load_preset
    from loopline.synth.render import BackgroundCache, render_frame
    from loopline.synth.scene import sample_scene

    scene = sample_scene(load_preset(preset), seed, 0, frames=frames)
    cache = BackgroundCache(scene)

    def render(t: int) -> np.ndarray:
        return render_frame(scene, t, background=cache).image

    frame_bytes = scene["width"] * scene["height"] * (2 if scene["bit_depth"] == 16 else 1)
    ahead = max(1, min(frames, PRERENDER_BYTES // frame_bytes))
    return FrameSupply(_prefetch(render, frames, ahead), float(scene["fps"]),
                       float(scene["nm_per_px"]), frames, None, meta=meta,
                       frame_meta=lambda t: {"synth_frame": t})  # fmt: skip


def _prefetch(render: Callable[[int], np.ndarray], n: int, ahead: int
              ) -> Iterator[np.ndarray]:  # fmt: skip
    """Yield ``render(0..n-1)``, rendered by a helper thread up to ``ahead`` frames early.

    The first frame is yielded only once ``ahead`` frames (or all) are ready, so that the
    rendering cost does not make the paced sending loop late.
    """
    q: queue.Queue = queue.Queue(maxsize=ahead)
    done = threading.Event()

    def work() -> None:
        try:
            for t in range(n):
                img = render(t)
                while not done.is_set():
                    try:
                        q.put(img, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
        except BaseException as e:  # handed to the consumer
            q.put(e)

    threading.Thread(target=work, name="synth-render", daemon=True).start()
    try:
        t0 = time.monotonic()
        while q.qsize() < min(ahead, n) and not done.is_set():
            time.sleep(0.01)
        logger.info("rendered %d frames ahead in %.1f s", q.qsize(), time.monotonic() - t0)
        for _ in range(n):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()


# ---------------------------------------------------------------------------- simulator


@dataclass
class SimStats:
    series: str
    sent: int = 0
    late: int = 0  # frames sent more than one frame interval after their due time
    seconds: float = 0.0
    stopped: bool = False  # the stop flag ended the series early

    @property
    def fps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class Simulator:
    """A bound (default) PUSH or PUB socket that publishes series of frames.

    Create, use and close it in one thread (the socket's owner); :class:`SimulatorThread`
    runs one in a background thread.

    Parameters
    ----------
    endpoint : str
        URL to bind (``tcp://127.0.0.1:*`` or ``:0`` picks a free port: see
        :attr:`endpoint`) or, with ``bind=False``, to connect to.
    protocol : {"loopline", "dectris1", "dectris2"}
    socket : {"push", "pub"}
    sndhwm : int
        Send high-water mark in messages.
    linger_s : float
        How long ``close()`` waits to deliver what is still queued.
    stop : threading.Event, optional
        Set it to end the current series early (the series-end is still sent).
    curve_secret, curve_server_key : str, optional
        CURVE encryption (Z85 keys or key files): binding, our secret key makes us the CURVE
        server (the camera); connecting, the receiver's public key (and optionally our
        secret).
    """

    POLL_MS = 50
    #: After a stop, how long the series-end and ``close()`` may still wait for a receiver (s).
    STOP_GRACE_S = 0.3

    def __init__(
        self,
        endpoint: str = lp.DEFAULT_ENDPOINT,
        *,
        protocol: str = "loopline",
        socket: str = "push",
        bind: bool = True,
        sndhwm: int = 100,
        linger_s: float = 5.0,
        stop: threading.Event | None = None,
        context: zmq.Context | None = None,
        encoder: Any | None = None,
        curve_secret: str | bytes | None = None,
        curve_server_key: str | bytes | None = None,
    ):
        if protocol not in ENCODERS:
            raise ValueError(f"protocol must be one of {sorted(ENCODERS)}, got {protocol!r}")
        if socket not in SOCKET_TYPES:
            raise ValueError(f"socket must be one of {sorted(SOCKET_TYPES)}, got {socket!r}")
        self.protocol = protocol
        self.encoder = encoder if encoder is not None else ENCODERS[protocol]()
        self.socket_type = socket
        self.stop = stop if stop is not None else threading.Event()
        self.linger_s = linger_s
        self._own_ctx = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._sock = self._ctx.socket(SOCKET_TYPES[socket])
        try:
            self._sock.setsockopt(zmq.SNDHWM, sndhwm)
            self._sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
            self.curve = apply_curve(self._sock, server=bind,
                                     server_key=load_curve_key(curve_server_key, secret=False),
                                     secret_key=load_curve_key(curve_secret, secret=True))
            if bind:
                if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
                    endpoint = endpoint[:-2] + ":*"
                self._sock.bind(endpoint)
                endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                self._sock.connect(endpoint)
        except zmq.ZMQError as e:
            self.close(linger_s=0)
            raise ValueError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {e}") from None
        self.endpoint = endpoint
        self.bind = bind
        logger.info("simulator %s %s %s (%s%s)", "bound" if bind else "connected",
                    socket.upper(), endpoint, protocol,
                    ", CURVE" if self.curve else "")  # fmt: skip

    def send(self, parts: list, *, stoppable: bool = True) -> bool:
        """Send one multipart message, waiting while the peer is absent or full.

        Returns False if the stop flag was set first (``stoppable``). A message that is not
        ``stoppable`` (the series-end) still gets up to :attr:`STOP_GRACE_S` after the stop
        flag is set, then is given up as well (False): a receiver that is gone must not keep
        a stopped simulator alive.
        """
        give_up: float | None = None
        while True:
            try:
                self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                pass
            if self.stop.is_set():
                if stoppable:
                    return False
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self.STOP_GRACE_S
                elif now >= give_up:
                    logger.warning("simulator: stopped; message not delivered (no receiver)")
                    return False
            self._sock.poll(self.POLL_MS, zmq.POLLOUT)

    def send_series(
        self,
        images: Iterable[np.ndarray],
        *,
        series: str,
        fps: float,
        count: int | None = None,
        pixel_size_nm: float | None = None,
        meta: Mapping[str, Any] | None = None,
        frame_meta: Callable[[int], Mapping[str, Any]] | None = None,
        end: bool = True,
        first_image: np.ndarray | None = None,
    ) -> SimStats:
        """Send series-start, every image at ``fps`` (``inf``: as fast as possible), series-end.

        ``end=False`` leaves the series open (to simulate an aborted acquisition).
        """
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        interval = 0.0 if np.isinf(fps) else 1.0 / fps
        if count is None and hasattr(images, "__len__"):
            count = len(images)  # type: ignore[arg-type]
        it = iter(images)
        first = first_image if first_image is not None else next(it, None)
        stats = SimStats(series=series)
        if first is None:
            logger.warning("simulator: nothing to send")
            return stats
        start = self.encoder.start(series, shape=first.shape, dtype=first.dtype.name,
                                   count=count, pixel_size_nm=pixel_size_nm, fps=fps,
                                   meta=meta)  # fmt: skip
        if not self.send(start):
            stats.stopped = True
            return stats
        t0 = time.monotonic()
        img: np.ndarray | None = first
        index = 0
        while img is not None:
            if self.stop.is_set():
                stats.stopped = True
                break
            due = t0 + index * interval
            wait = due - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                stats.stopped = True
                break
            fm = frame_meta(index) if frame_meta is not None else None
            msg = self.encoder.frame(series, index, img, pixel_size_nm=pixel_size_nm, meta=fm)
            if not self.send(msg):
                stats.stopped = True
                break
            if interval and time.monotonic() - due > interval:
                stats.late += 1
            stats.sent += 1
            index += 1
            img = next(it, None)
        if end:
            self.send(self.encoder.end(series, frames=stats.sent), stoppable=False)
        stats.seconds = time.monotonic() - t0
        logger.info("series %s: sent %d frames in %.2f s (%.1f fps, %d late)%s", series,
                    stats.sent, stats.seconds, stats.fps, stats.late,
                    " (stopped)" if stats.stopped else "")  # fmt: skip
        return stats

    def send_supply(self, supply: FrameSupply, *, series: str, fps: float | None = None,
                    end: bool = True) -> SimStats:  # fmt: skip
        """:meth:`send_series` over a :class:`FrameSupply` (its own rate unless ``fps``)."""
        from .files import DEFAULT_FPS

        rate = fps if fps is not None else (supply.fps or DEFAULT_FPS)
        return self.send_series(supply.frames, series=series, fps=rate, count=supply.count,
                                pixel_size_nm=supply.pixel_size_nm, meta=supply.meta,
                                frame_meta=supply.frame_meta, end=end)  # fmt: skip

    def close(self, linger_s: float | None = None) -> None:
        """Close the socket (delivering queued messages for up to ``linger_s``)."""
        if self._sock is not None and not self._sock.closed:
            lin = self.linger_s if linger_s is None else linger_s
            if self.stop.is_set():  # stopping: do not wait long for a receiver that is gone
                lin = min(lin, self.STOP_GRACE_S)
            self._sock.close(linger=int(lin * 1000))
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimulatorThread(threading.Thread):
    """Run ``job(simulator)`` in a thread that owns the simulator (for tests and demos).

    The simulator binds in the thread; :meth:`start` returns once it is bound, with the
    endpoint in :attr:`endpoint`. The job's exception is stored and re-raised by
    :meth:`join_and_raise`.

    >>> t = SimulatorThread(lambda sim: sim.send_series(images, series="1", fps=25),
    ...                     "tcp://127.0.0.1:*")                              # doctest: +SKIP
    >>> t.start(); src = LooplineSource(t.endpoint)                          # doctest: +SKIP
    """

    def __init__(self, job: Callable[[Simulator], Any], endpoint: str = "tcp://127.0.0.1:*",
                 **simulator_options: Any):  # fmt: skip
        super().__init__(name="loopline-simulator", daemon=True)
        self.job = job
        self._endpoint = endpoint
        self.options = simulator_options
        self.stop_event = simulator_options.pop("stop", None) or threading.Event()
        self.endpoint: str | None = None
        self.result: Any = None
        self.exc: BaseException | None = None
        self._bound = threading.Event()

    def start(self, timeout_s: float = 10.0) -> None:  # type: ignore[override]
        super().start()
        if not self._bound.wait(timeout_s):
            raise TimeoutError(f"simulator did not bind within {timeout_s} s")
        if self.exc is not None:
            raise self.exc

    def run(self) -> None:
        try:
            sim = Simulator(self._endpoint, stop=self.stop_event, **self.options)
        except BaseException as e:
            self.exc = e
            self._bound.set()
            return
        try:
            self.endpoint = sim.endpoint
            self._bound.set()
            self.result = self.job(sim)
        except BaseException as e:
            self.exc = e
        finally:
            sim.close()

    def join_and_raise(self, timeout_s: float = 30.0) -> Any:
        self.join(timeout_s)
        if self.is_alive():
            self.stop_event.set()
            raise TimeoutError(f"simulator thread still running after {timeout_s} s")
        if self.exc is not None:
            raise self.exc
        return self.result
