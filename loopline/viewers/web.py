"""``loopline view --web``: a small overlay viewer page served on 127.0.0.1.

One :class:`ViewerServer` (stdlib ``http.server``, a thread per request) holds the newest
few messages of the result stream and a :class:`~loopline.viewers.state.ViewState`. The page
pulls frames one at a time, so the latest frame always wins and a slow browser only costs
itself:

- ``GET /api/next?after=REV`` waits (up to ``timeout`` s) for a snapshot newer than ``REV``
  (``rev`` counts the snapshots: a new frame, or an alarm of the daemon) and returns the
  newest frame's normalised view (its message number is ``seq``), the stream counters, the
  recent spacing/velocity history with standard errors, the daemon's alarms
  (``daemon_alarms``: ``active`` rules and the newest ``events``) and the viewer's own
  (``alarms``, ``[view.alarms]``);
- ``GET /frame/SEQ.jpg`` is the JPEG of that message (the newest if it has gone already);
- ``GET /stream.mjpg`` is the same frames as an MJPEG stream (latest wins) for other players,
  with the overlay drawn in (:func:`loopline.viewers.overlay.draw_overlay`).

The daemon publishes the bare frame; the page draws the JPEG and, over it on the same canvas,
the masks (contours), skeleton lines, loop ellipses, track ids and one scale bar from the
message's numbers, so every layer can be switched off in the browser (a JPEG with a burnt-in
overlay, ``jpeg.overlay`` true, gets no second scale bar). The curves are on the frames' own
time axis (``time_s``, as in series.csv), with 1-2-5 ticks, units and a legend; each curve
has a translucent band of ± 1 standard error where the stream gives one: a pile-up's mean
spacing ± the standard error of that mean from its pairs' own errors (``spacing_nm_se``,
:func:`~loopline.analysis.uncertainty.mean_se`), the leading line's velocity ± its fit's
``velocity_nm_s_se``, the loop count's 68 % Poisson interval (``n_loops_lo``/``_hi``). The
alarms panel lists the daemon's alarms raised now, highlighted, and its recent raise/clear
events (time, rule, message); a banner over the page shows while one is raised. Nothing on
the page is fetched from anywhere but this server.

Every request's ``Host`` header must name this machine's loopback (``localhost``, ``127.x``,
``::1``), the address served on (``view.host``), or a name in ``view.allowed_hosts``; any
other gets 403. So a web page elsewhere cannot read frames through DNS rebinding (its name
made to resolve to 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..io.sanitize import safe_filename
from .config import ViewConfig, allowed_host_names
from .state import ViewState
from .stream import Message, ResultSubscriber

logger = logging.getLogger(__name__)

__all__ = ["ViewerServer", "run_web"]

_KEEP = 8  # messages held for /frame/SEQ.jpg: the page asks for the JPEG right after the JSON
_ALARM_EVENTS = 20  # the daemon's newest alarm events on the page


_WILDCARDS = ("", "0.0.0.0", "::")


def _host_of(header: str) -> str:
    """The host of a ``Host`` header (``name:port``, ``[v6]:port``), lower case."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    name, sep, port = h.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        h = name
    return h.rstrip(".")


def host_allowed(header: str | None, cfg: ViewConfig) -> bool:
    """Whether a request's ``Host`` header names this server (see the module docstring)."""
    if not header:
        return False
    host = _host_of(header)
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        if host == "localhost":
            return True
    extra = allowed_host_names(cfg.allowed_hosts)
    if cfg.host.lower() not in _WILDCARDS:
        extra.append(cfg.host.lower().strip("[]"))
    return host in extra


def _nan_to_none(values: Any) -> list[float | None]:
    return [None if v is None or v != v else round(float(v), 4) for v in values]


class ViewerServer:
    """The web viewer: a subscriber, a feeder thread and an HTTP server.

    Parameters
    ----------
    cfg
        Viewer configuration (endpoint, host, port, history, alarms).

    ``url`` is valid after :meth:`start` (``cfg.port = 0`` picks a free port).
    """

    def __init__(self, cfg: ViewConfig, *, label: Any = None) -> None:
        self.cfg = cfg
        #: the labelling page, mounted at /label/ (a :class:`~loopline.viewers.label.LabelServer`
        #: whose ``grab`` is :meth:`grab`; None: no labelling mode)
        self.label = label
        if label is not None:
            label.grab = self.grab
        self.sub = ResultSubscriber(cfg.endpoint, stale_s=cfg.stale_s,
                                    curve_server_key=cfg.curve_server_key or None,
                                    curve_secret_key=cfg.curve_secret_key or None)  # fmt: skip
        self.state = ViewState(history=cfg.history, alarms=cfg.alarms,
                               track_timeout_frames=cfg.track_timeout_frames)  # fmt: skip
        self._cond = threading.Condition()
        self._msgs: OrderedDict[int, Message] = OrderedDict()
        self._snapshot: dict[str, Any] | None = None
        self._rev = 0  # snapshots made
        self._stop = threading.Event()
        self._feeder: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._page = resources.files(__package__).joinpath("page.html").read_bytes()

    @property
    def url(self) -> str:
        assert self._http is not None, "start() first"
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ViewerServer:
        self.sub.start()
        self._feeder = threading.Thread(target=self._feed, name="loopline-web-feed", daemon=True)
        self._feeder.start()
        handler: type = type("Handler", (_Handler,), {"viewer": self})
        if self.label is not None:
            from .label import handler_type

            self.label.start(serve=False)
            handler = handler_type(self.label, handler)
        self._http = _Server((self.cfg.host, self.cfg.port), handler)
        self._http_thread = threading.Thread(target=self._http.serve_forever,
                                             kwargs={"poll_interval": 0.2},
                                             name="loopline-web-http", daemon=True)  # fmt: skip
        self._http_thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.sub.close()
        if self._feeder is not None:
            self._feeder.join(2.0)
        if self.label is not None:
            self.label.close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def maybe_raise(self) -> None:
        self.sub.maybe_raise()

    # -- feeder: every message the subscriber hands over goes into the state ----------------
    def _feed(self) -> None:
        seq = n_alarms = 0
        last: Message | None = None
        while not self._stop.is_set():
            m = self.sub.wait(seq, timeout=0.5)
            # alarms first: the daemon sends a frame's alarms before the frame
            new = self.sub.alarms_after(n_alarms)
            if m is None and not new:
                continue
            with self._cond:
                for ev in new:
                    self.state.on_alarm(ev)
                    n_alarms = ev.received
                if m is not None:
                    seq = m.seq
                    last = m
                    self.state.update(m.view, alarms_before=m.alarms_before)
                    self._msgs[m.seq] = m
                    while len(self._msgs) > _KEEP:
                        self._msgs.popitem(last=False)
                if last is None:
                    continue  # alarms before any frame: shown with the first one
                self._rev += 1
                self._snapshot = self._make_snapshot(last)
                self._cond.notify_all()

    def _make_snapshot(self, m: Message) -> dict[str, Any]:
        st = self.state
        plots = {
            str(pid): {
                "t": _nan_to_none(h.time_s),
                "mean_spacing_nm": _nan_to_none(h.mean_spacing),
                "mean_spacing_nm_se": _nan_to_none(h.mean_spacing_se),
                "min_spacing_nm": _nan_to_none(h.min_spacing),
                "lead_velocity_nm_s": _nan_to_none(h.lead_velocity),
                "lead_velocity_nm_s_se": _nan_to_none(h.lead_velocity_se),
            }
            for pid, h in sorted(st.pileups.items())
        }
        tracks = [
            {"id": r.id, "kind": r.kind, "length_nm": r.length_nm,
             "velocity_nm_s": r.velocity_nm_s, "age_frames": r.age_frames,
             "velocity_nm_s_se": r.velocity_nm_s_se, "length_nm_se": r.length_nm_se,
             "fields": r.fields}
            for r in st.track_rows(self.cfg.track_rows)
        ]  # fmt: skip
        counts = {"t": _nan_to_none(st.count_time_s),
                  "n_dislocations": _nan_to_none(st.n_dislocations),
                  "n_loops": _nan_to_none(st.n_loops),
                  "n_loops_lo": _nan_to_none(st.n_loops_lo),
                  "n_loops_hi": _nan_to_none(st.n_loops_hi)}  # fmt: skip
        daemon = {"active": [e.to_json() for e in st.active_alarms()],
                  "events": [e.to_json() for e in st.alarm_log(_ALARM_EVENTS)],
                  "received": st.alarm_events}  # fmt: skip
        return {"rev": self._rev, "seq": m.seq, "view": m.view.to_json(), "plots": plots,
                "counts": counts, "t_now": st.time_of(m.view), "tracks": tracks,
                "alarms": st.alarms(), "daemon_alarms": daemon,
                "has_jpeg": m.jpeg is not None}  # fmt: skip

    # -- used by the handler -----------------------------------------------------------------
    def next_snapshot(self, after: int, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                snap = self._snapshot
                if snap is not None and snap["rev"] > after:
                    return snap
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    def stream_stats(self) -> dict[str, Any]:
        s = self.sub.stats()
        return {"received": s.received, "viewer_dropped": s.viewer_dropped, "gaps": s.gaps,
                "malformed": s.malformed, "reconnects": s.reconnects, "connected": s.connected,
                "last_message_age_s": s.last_message_age_s,
                "endpoint": self.cfg.endpoint}  # fmt: skip

    def jpeg(self, seq: int | None) -> bytes | None:
        with self._cond:
            m = self._msgs.get(seq) if seq is not None else None
            if m is None and self._msgs:
                m = next(reversed(self._msgs.values()))
            return None if m is None else m.jpeg

    def grab(self, req: dict[str, Any]) -> Any:
        """The frame of message ``req["seq"]`` (the newest without one) as a frame to label:
        the published JPEG, decoded to grey (what the viewer shows: display-stretched 8-bit,
        downscaled where the daemon's ``publish.jpeg_max_side`` is smaller than the frame)."""
        import cv2
        import numpy as np

        from .label_store import LabelError, LabelFrame, packed_loader

        seq = req.get("seq")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise LabelError(f"seq must be a message number, got {seq!r}")
        with self._cond:
            m = self._msgs.get(seq) if seq is not None else next(reversed(self._msgs.values()),
                                                                None)  # fmt: skip
        if m is None:
            raise LabelError(f"no frame {seq} here (the viewer keeps its last {_KEEP})"
                             if seq is not None else "no frame has come yet")  # fmt: skip
        if m.jpeg is None:
            raise LabelError("this frame came without its image (the daemon's publish.jpeg is "
                             "off)")  # fmt: skip
        img = cv2.imdecode(np.frombuffer(m.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise LabelError("the frame's JPEG does not decode")
        v = m.view
        stem = safe_filename(f"{v.series or 'live'}-{v.frame:06d}")
        scale = "" if (v.jpeg_scale or 1.0) >= 1.0 else f", downscaled x{v.jpeg_scale:g}"
        origin = (f"live {self.cfg.endpoint}: series {v.series} frame {v.frame} (the published "
                  f"JPEG{scale})")  # fmt: skip
        return LabelFrame(stem, origin, packed_loader(img))

    def wait_jpeg(self, after: int, timeout: float) -> Message | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                if self._msgs:
                    seq = next(reversed(self._msgs))
                    if seq > after:
                        return self._msgs[seq]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a browser tab closed mid-request: not worth a traceback
        super().handle_error(request, client_address)


class BaseHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, requests logged at DEBUG, every answer uncached (the viewer's and the
    labelling page's handlers)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http %s " + format, self.address_string(), *args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class _Handler(BaseHandler):
    viewer: ViewerServer
    server_version = "loopline-view"

    def do_GET(self) -> None:
        host = self.headers.get("Host")
        if not host_allowed(host, self.viewer.cfg):
            logger.warning("refused a request for Host %r (expected localhost, a loopback "
                           "address, %s or view.allowed_hosts)", host,
                           self.viewer.cfg.host)  # fmt: skip
            self._send(HTTPStatus.FORBIDDEN, b"Host not allowed: this viewer answers to "
                       b"localhost names (see view.allowed_hosts)\n", "text/plain")  # fmt: skip
            return
        u = urlparse(self.path)
        q = parse_qs(u.query)
        if u.path == "/label" and self.viewer.label is not None:
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", "/label/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.viewer.label is not None and u.path.startswith("/label/"):
            self.path = self.path[len("/label") :]
            self._label_get()  # the labelling page and its API (loopline.viewers.label)
            return
        try:
            if u.path in ("/", "/index.html"):
                self._send(200, self.viewer._page, "text/html; charset=utf-8")
            elif u.path == "/api/next":
                after = int(q.get("after", ["0"])[0])
                timeout = min(float(q.get("timeout", ["2"])[0]), 10.0)
                snap = self.viewer.next_snapshot(after, timeout)
                body = dict(snap or {"rev": after, "timeout": True},
                            stream=self.viewer.stream_stats(),
                            label=self.viewer.label is not None)  # fmt: skip
                self._send(200, json.dumps(body).encode(), "application/json")
            elif u.path.startswith("/frame/") and u.path.endswith(".jpg"):
                stem = u.path[len("/frame/"):-len(".jpg")]
                jpeg = self.viewer.jpeg(int(stem) if stem.isdigit() else None)
                if jpeg is None:
                    self._send(404, b"no frame yet\n", "text/plain")
                else:
                    self._send(200, jpeg, "image/jpeg")
            elif u.path == "/stream.mjpg":
                self._mjpeg()
            else:
                self._send(404, b"not found\n", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except ValueError as e:
            self._send(HTTPStatus.BAD_REQUEST, f"{e}\n".encode(), "text/plain")

    def do_POST(self) -> None:
        if self.viewer.label is not None and self.path.startswith("/label/"):
            self.path = self.path[len("/label") :]
            self._label_post()  # its own Host, Origin, type and size checks
            return
        self.close_connection = True
        self._send(HTTPStatus.NOT_FOUND, b"not found (labelling is on with --label-out)\n",
                   "text/plain")  # fmt: skip

    def _mjpeg(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        seq = 0
        while not self.viewer._stop.is_set():
            got = self.viewer.wait_jpeg(seq, timeout=1.0)
            if got is None:
                continue
            seq, jpeg = got.seq, _with_overlay(got)
            if jpeg is None:
                continue
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                             + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
            self.wfile.flush()


def _with_overlay(m: Message) -> bytes | None:
    """The message's JPEG with its overlay drawn in (for MJPEG players, which cannot draw it),
    unless the daemon burnt one in already."""
    if m.jpeg is None or m.view.jpeg_overlay:
        return m.jpeg
    import cv2
    import numpy as np

    from .overlay import draw_overlay

    img = cv2.imdecode(np.frombuffer(m.jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return m.jpeg
    ok, buf = cv2.imencode(".jpg", draw_overlay(img, m.view), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else m.jpeg


def run_web(cfg: ViewConfig, *, duration_s: float = 0.0, open_browser: bool = False,
            label: Any = None) -> int:  # fmt: skip
    """Serve the page until Ctrl-C (or ``duration_s`` when > 0). Prints the URL first.
    ``label``: a live :class:`~loopline.viewers.label.LabelServer` mounted at ``/label/``."""
    import math

    t_end = time.monotonic() + duration_s if duration_s > 0 else math.inf
    with ViewerServer(cfg, label=label) as srv:
        print(f"loopline view: serving {srv.url} (stream {cfg.endpoint}); Ctrl-C stops",
              flush=True)  # fmt: skip
        if label is not None:
            print(f"loopline view: labelling page {srv.url}label/ (labels -> "
                  f"{label.store.root})", flush=True)  # fmt: skip
        if open_browser:
            import webbrowser

            webbrowser.open(srv.url)
        while time.monotonic() < t_end:
            srv.maybe_raise()
            time.sleep(min(0.25, max(t_end - time.monotonic(), 0.0)))
    return 0
