"""Live results for viewers: one ZeroMQ PUB socket, latest wins.

Transport
---------
``loopline serve`` binds a PUB socket on ``publish.endpoint`` (default
``tcp://127.0.0.1:5556``; loopback only unless configured otherwise). A viewer connects a SUB
socket and subscribes to the topics it wants (``b""`` for all). Every message is multipart::

    [topic: bytes, header: JSON (UTF-8), *payload]

No pickle, ever. The send high-water mark is ``publish.hwm`` messages per viewer (default 4):
a viewer that cannot keep up silently loses messages (ZeroMQ PUB semantics) and always sees
recent ones — *latest wins*. The daemon never waits for viewers. Viewers should also set a
small ``RCVHWM`` and may drain their socket and keep only the newest ``frame`` message.
Drops are visible to a viewer as gaps in ``seq`` (it should count them: ``seq`` increases by
one per ``frame`` message sent, for the daemon's whole life, restarts of the output worker
aside).

With ``publish.curve_secret_key`` set (a ``zmq.auth`` ``NAME.key_secret`` file or the bare
key), the socket is a CURVE server: viewers set ``CURVE_SERVERKEY`` to the daemon's public key
(``loopline view --curve-server-key NAME.key``) and use a key pair of their own. With
``publish.curve_clients`` too, only the viewers whose public keys it lists are let in (ZAP, see
:mod:`loopline.daemon.curve`; ``loopline view --curve-secret-key``); others are refused at the
handshake.

Topics
------
``b"frame"`` — one analysed frame: ``[b"frame", header, jpeg]``, or ``[b"frame", header]`` when
JPEGs are off. The header is the frame message, ``schema = "loopline.frame/2"``, whose layout
:mod:`loopline.analysis.message` defines for the daemon and the viewers alike: the frame's
identity and times, its ``series.csv`` row, its ``tracks.csv`` rows (each with its outline
``contour_px`` and ``box_px``; a line's centre line is its ``points_px``), its ``pairs.csv``
rows, stage timings, the model, the daemon's counters and the alarm rules raised now. Its
numbers carry their standard errors beside them (``*_se``; ``n_loops_lo``/``_hi``: a band).

The JPEG (third part) is the frame itself, display-stretched as in ``annotated.mp4`` and
downscaled so its longer side is at most ``publish.jpeg_max_side``, with no overlay burnt in:
the viewers draw masks, centre lines, loops, track ids and the scale bar from the header
(each layer switchable; ``loopline.viewers.overlay.draw_overlay`` draws them into a copy), so
nothing is drawn twice. ``annotated.mp4`` keeps its burnt-in overlay.

``b"metrics"`` — once per ``metrics.interval_s``: ``[b"metrics", header]`` with
``schema = "loopline.metrics/1"``: ``counters`` (received, analysed, skipped, malformed,
recorded, skipped_backpressure, skipped_lost, dropped_no_slot, ... — see
:data:`loopline.daemon.metrics.COUNTERS`), ``fps`` per stage (receiver, batcher, engine,
measure, output), ``busy`` fraction and ``cpu`` (cores used: CPU s / s of the stage's
processes, all threads) per stage, ``queues`` (queue_batcher, queue_engine,
queue_output, slots_in_use), ``latency_ms`` {p50, p99, max}, ``ingest_latency_ms``,
``stage_ms_per_frame``, ``uptime_s``, ``source`` {``protocol``, ``endpoint``} (a path for file
replay) and ``engine`` (model and runtime, e.g. ``"defects/openvino"``; null until the first
frame is analysed). summary.json carries the same ``source`` and ``engine``.

``b"alarm"`` — an alarm raised or cleared (:mod:`loopline.analysis.alarms`):
``[b"alarm", header]`` with ``schema = "loopline.alarm/1"``, ``seq`` (alarm messages sent),
``timestamp`` (when it was sent, s since the epoch) and the ``alarms.csv`` row: ``series``,
``frame``, ``time_s``, ``rule`` (``spacing_low``, ``lead_velocity_high``, ``avalanche``,
``loop_growth_stalled``, ``behind``, ``disk_low``, ``recording_stopped``: then also ``level``
"error" on raise), ``state`` ("raise" | "clear"), ``value``,
``threshold``, ``unit`` and ``message`` (one line to show). A viewer that joins late finds the
rules raised now in every frame message's ``alarms_active`` (a list of rule names).

``b"series"`` — a series starts or ends: ``[b"series", header]`` with
``schema = "loopline.series/1"``, ``event`` ("start" | "end"), ``series``, ``timestamp``,
and for "start" ``shape``, ``dtype``, ``pixel_size_nm``, ``frames`` (announced, or null);
for "end" ``frames`` and ``aborted`` (true when the series never sent its end).

Floats that are NaN or infinite are sent as ``null``. Unknown keys must be ignored by
viewers (the schema grows by adding keys; a breaking change bumps the ``/1``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import cv2
import numpy as np
import zmq

from ..analysis.message import frame_header
from .config import PublishConfig
from .curve import ClientAllowList, apply_curve, load_allowed_keys, load_curve_key
from .wire import clean_json, socket

logger = logging.getLogger(__name__)

__all__ = ["ALARM_SCHEMA", "METRICS_SCHEMA", "SERIES_SCHEMA", "Publisher"]

ALARM_SCHEMA = "loopline.alarm/1"
METRICS_SCHEMA = "loopline.metrics/1"
SERIES_SCHEMA = "loopline.series/1"


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(clean_json(obj), separators=(",", ":"), allow_nan=False).encode()


class Publisher:
    """The PUB socket (owned by the output worker's one thread)."""

    def __init__(self, ctx: zmq.Context, cfg: PublishConfig) -> None:
        self.cfg = cfg
        secret = load_curve_key(cfg.curve_secret_key, secret=True)
        allowed = load_allowed_keys(cfg.curve_clients)
        if allowed is not None and secret is None:
            raise ValueError("publish.curve_clients (an allow-list of viewer keys) needs "
                             "publish.curve_secret_key, got none")  # fmt: skip
        self.sock = socket(ctx, zmq.PUB, sndhwm=cfg.hwm, linger_ms=0)
        apply_curve(self.sock, server=True, secret_key=secret)
        #: ZAP: only the listed viewers pass the handshake (None: any with the server key)
        self.allow = ClientAllowList(ctx, allowed, name="publisher") if allowed else None
        if secret is not None and allowed is None:
            logger.warning("publish.curve_secret_key without publish.curve_clients: any viewer "
                           "that knows the server's public key may subscribe")  # fmt: skip
        try:
            self.sock.bind(cfg.endpoint)
        except zmq.ZMQError as e:  # port in use, address not local: one clear line
            self.close()
            raise OSError(f"cannot bind publish.endpoint {cfg.endpoint}: {e.strerror}") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self.sent_jpeg = 0
        self.sent_alarms = 0

    def close(self) -> None:
        """Close the socket and stop the allow-list's ZAP thread (before the context ends)."""
        self.sock.close(linger=0)
        if self.allow is not None:
            self.allow.stop()
            self.allow = None

    def _send(self, parts: list[bytes]) -> None:
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:  # PUB does not block; kept for safety
            pass

    def frame(self, msg: dict[str, Any], image: np.ndarray | None, *,
              latency_ms: float | None, counters: dict[str, int]) -> None:  # fmt: skip
        """Publish one analysed frame; ``image`` is the frame itself (grey of any dtype,
        stretched as the recorder shows it), sent as the JPEG without any overlay."""
        jpeg = None
        info = None
        if self.cfg.jpeg and image is not None:
            from .recorder import to_display

            shown = to_display(image) if image.ndim == 2 else image
            h, w = shown.shape[:2]
            scale = min(1.0, self.cfg.jpeg_max_side / max(h, w))
            img = shown
            if scale < 1.0:
                img = cv2.resize(shown, (round(w * scale), round(h * scale)),
                                 interpolation=cv2.INTER_AREA)  # fmt: skip
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
            if ok:
                jpeg = buf.tobytes()
                info = {"width": img.shape[1], "height": img.shape[0], "scale": round(scale, 6),
                        "overlay": False}  # fmt: skip
        header = frame_header(msg, seq=self.sent, published=time.time(), latency_ms=latency_ms,
                              counters=counters, jpeg=info)  # fmt: skip
        parts = [b"frame", _dumps(header)]
        if jpeg is not None:
            parts.append(jpeg)
            self.sent_jpeg += 1
        self._send(parts)
        self.sent += 1

    def metrics(self, snap: dict[str, Any]) -> None:
        self._send([b"metrics", _dumps({**snap, "schema": METRICS_SCHEMA})])

    def alarm(self, event: dict[str, Any]) -> None:
        """One alarm raised or cleared (an ``alarms.csv`` row): ``[b"alarm", header]``."""
        body = {**event, "schema": ALARM_SCHEMA, "seq": self.sent_alarms,
                "timestamp": time.time()}  # fmt: skip
        self._send([b"alarm", _dumps(body)])
        self.sent_alarms += 1

    def series(self, msg: dict[str, Any]) -> None:
        body = {k: v for k, v in msg.items() if k not in ("t", "ts")}
        body.update(schema=SERIES_SCHEMA, timestamp=msg.get("ts"))
        self._send([b"series", _dumps(body)])
