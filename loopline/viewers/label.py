"""``loopline label``: label frames in the browser, with the model's instances as proposals.

One :class:`LabelServer` serves ``label_page.html`` and a small JSON API on the viewer's
HTTP server (:mod:`loopline.viewers.web`: the same ``Host`` check against DNS rebinding):

- ``GET /api/frames``: the frames to label, which are labelled, the default line width;
- ``GET /api/frame/STEM.png``: the frame as an 8-bit PNG;
- ``GET /api/proposals/STEM``: the model's instances on that frame (run once per frame,
  on first view, server-side; the next frame's are made in the background meanwhile):
  dislocations as centre-line polylines (:func:`loopline.analysis.lines.trace_line`),
  loops as ellipses (:func:`loopline.analysis.loops.fit_loop`);
- ``GET /api/labels/STEM``: the frame's saved labels (an empty set if none);
- ``POST /api/labels/STEM``: the frame's labels after an edit (JSON, see
  :func:`~loopline.viewers.label_store.parse_labels`), saved at once in the dataset folder
  (:class:`~loopline.viewers.label_store.LabelStore`);
- ``POST /api/grab``: where frames come in while the session runs (``loopline view --web
  --label-out DIR``: the frame on the viewer's screen, ``{"seq": N}``), one more frame to
  label; answers its name.

``loopline label`` serves the page at ``/`` on a server of its own; ``loopline view --web
--label-out`` mounts it at ``/label/`` on the viewer's server (the page's requests are
relative, so they reach the server that served it).

A request that makes no sense gets 400 with a one-line message; a frame name that is not a
plain file name is refused before anything is looked up, and only frames of this session
can be written. A POST must be ``application/json`` and, if it carries an ``Origin``, come
from this server's own page (no other site can make a browser write labels).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from .config import ViewConfig
from .label_store import (
    MAX_BODY_BYTES,
    FrameConflict,
    LabelError,
    LabelFrame,
    LabelStore,
    display_png,
)
from .label_store import parse_labels as _parse
from .web import BaseHandler, _Server, host_allowed

logger = logging.getLogger(__name__)

__all__ = ["LabelServer", "handler_type", "proposals_from", "run_label"]

_STEM = re.compile(r"[A-Za-z0-9._-]{1,80}")


class UnknownFrame(LookupError):
    """A frame name that is well formed but not one of this session's frames."""


def _simplify(points: np.ndarray, eps: float = 0.6) -> np.ndarray:
    """Fewer vertices for a traced centre line (within ``eps`` px), ends kept."""
    import cv2

    p = np.asarray(points, np.float32).reshape(-1, 1, 2)
    s = cv2.approxPolyDP(p, eps, False).reshape(-1, 2)
    return s if len(s) >= 2 else np.asarray(points)[[0, -1]]


def proposals_from(det: Any, *, label_width: float) -> list[dict[str, Any]]:
    """The page's proposals from one frame's :class:`~loopline.engines.base.Detections`.

    Dislocations (class 0) become their traced centre lines at ``label_width``, loops
    (class 1) their fitted ellipses; an instance that cannot be traced is left out. Ids are
    ``p<k>``, ``k`` the instance's index, so they are stable for the same model and frame.
    """
    from ..analysis.lines import trace_line
    from ..analysis.loops import fit_loop

    h, w = det.shape
    out: list[dict[str, Any]] = []
    for k in range(len(det)):
        cls, score = int(det.classes[k]), round(float(det.scores[k]), 3)
        if cls == 0:
            tr = trace_line(det.masks[k], box=det.boxes[k])
            if tr is None or not tr.length_px > 0:
                continue
            pts = _simplify(tr.points)
            pts = np.clip(pts, 0.0, (w, h))
            out.append({"id": f"p{k}", "kind": "line", "class": 0, "score": score,
                        "points": np.round(pts, 2).tolist(), "width": label_width})  # fmt: skip
        elif cls == 1:
            f = fit_loop(det.masks[k], box=det.boxes[k])
            if f is None:
                continue
            cx, cy = (float(np.clip(f.center[0], 0, w)), float(np.clip(f.center[1], 0, h)))
            axes = [round(min(max(f.major_px, 0.5), 2 * max(w, h)), 2),
                    round(min(max(f.minor_px, 0.5), 2 * max(w, h)), 2)]  # fmt: skip
            out.append({"id": f"p{k}", "kind": "ellipse", "class": 1, "score": score,
                        "center": [round(cx, 2), round(cy, 2)], "axes": axes,
                        "angle_deg": round(f.angle_deg, 2)})  # fmt: skip
    return out


class LabelServer:
    """The labelling page and its API (module docstring) over ``frames``, saving to ``out``.

    Parameters
    ----------
    frames
        The frames to label (:func:`~loopline.viewers.label_store.collect_frames`).
    out
        Dataset folder the labels are written to.
    engine
        An :class:`~loopline.engines.base.Engine` for the proposals, or None for none.
    model
        The model's name as the user gave it (recorded with each frame's labels).
    live
        Frames come while the session runs (``frames`` may be empty): each from :attr:`grab`
        on ``POST /api/grab``, which the server that mounts this page sets (the viewer).
    label_width
        Default width (px) of a dislocation's label.
    host, port
        Where to serve (``port=0``: any free port; :attr:`url` says which).
    """

    def __init__(self, frames: list[LabelFrame], out: str | Path, *, engine: Any = None,
                 model: str | None = None, label_width: float = 6.0, host: str = "127.0.0.1",
                 port: int = 0, allowed_hosts: str = "",
                 meta: dict[str, Any] | None = None, live: bool = False) -> None:  # fmt: skip
        if not frames and not live:
            raise ValueError("no frames to label")
        self.frames = list(frames)
        self.by_stem = {f.stem: i for i, f in enumerate(self.frames)}
        #: where ``POST /api/grab`` takes a new frame from (a request's JSON → a frame; None: a
        #: fixed set of frames), set by the viewer that mounts a ``live`` session
        self.grab: Callable[[dict[str, Any]], LabelFrame] | None = None
        self.live = live
        self._frames_lock = threading.Lock()
        self.cfg = ViewConfig(host=host, port=port, allowed_hosts=allowed_hosts)
        self.engine = engine
        self.model = model if engine is not None else None
        self.label_width = float(label_width)
        self.store = LabelStore(out, meta={**(meta or {}), "model": self.model,
                                           "label_width": self.label_width})  # fmt: skip
        self._page = resources.files(__package__).joinpath("label_page.html").read_bytes()
        self._engine_lock = threading.Lock()
        self._proposals: dict[str, list[dict[str, Any]]] = {}
        self._images: dict[str, np.ndarray] = {}
        self._image_lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._http: _Server | None = None
        self._http_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._http is not None, "start() first"
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self, *, serve: bool = True) -> LabelServer:
        """Start the HTTP server (``serve``; False: another server mounts :func:`handler_type`
        and only the proposal worker starts)."""
        if serve:
            self._http = _Server((self.cfg.host, self.cfg.port), handler_type(self))
            self._http_thread = threading.Thread(target=self._http.serve_forever,
                                                 kwargs={"poll_interval": 0.2},
                                                 name="loopline-label-http",
                                                 daemon=True)  # fmt: skip
            self._http_thread.start()
        if self.engine is not None:
            self._worker = threading.Thread(target=self._prefetch, name="loopline-label-model",
                                            daemon=True)  # fmt: skip
            self._worker.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._worker is not None:
            self._worker.join(5.0)

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames and proposals ---------------------------------------------------------------
    def add(self, frame: LabelFrame) -> LabelFrame:
        """One more frame to label (the same name again: the frame already there)."""
        with self._frames_lock:
            if frame.stem in self.by_stem:
                return self.frames[self.by_stem[frame.stem]]
            self.by_stem[frame.stem] = len(self.frames)
            self.frames.append(frame)
        if self.engine is not None:
            self._queue.put(frame.stem)  # its proposals, before the page asks
        return frame

    def grab_frame(self, body: bytes) -> dict[str, Any]:
        """``POST /api/grab``: a frame from :attr:`grab`, added; its name and place."""
        if self.grab is None:
            raise LabelError("this session labels a fixed set of frames; nothing to grab")
        try:
            req = json.loads(body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LabelError(f"expected a JSON object like {{\"seq\": 12}}, got {e}") from None
        if not isinstance(req, dict):
            raise LabelError(f"expected a JSON object like {{\"seq\": 12}}, got "
                             f"{type(req).__name__}")  # fmt: skip
        fr = self.add(self.grab(req))
        return {"stem": fr.stem, "origin": fr.origin, "index": self.by_stem[fr.stem]}

    def frame(self, stem: str) -> LabelFrame:
        """The frame of a URL's name; LabelError / UnknownFrame for a bad / unknown one."""
        if not _STEM.fullmatch(stem) or stem.startswith("."):
            raise LabelError(f"frame name must be a plain file name ([A-Za-z0-9._-]), got "
                             f"{stem[:60]!r}")  # fmt: skip
        if stem not in self.by_stem:
            raise UnknownFrame(stem)
        return self.frames[self.by_stem[stem]]

    def image(self, frame: LabelFrame) -> np.ndarray:
        with self._image_lock:
            img = self._images.get(frame.stem)
        if img is None:
            img = frame.load()
            with self._image_lock:
                self._images[frame.stem] = img
                while len(self._images) > 16:  # a few frames around the one on screen
                    self._images.pop(next(iter(self._images)))
        return img

    def proposals(self, frame: LabelFrame, *, prefetch: bool = True) -> list[dict[str, Any]]:
        """The model's proposals on ``frame`` (the model runs once per frame); with
        ``prefetch`` the next frame's are made in the background meanwhile."""
        if self.engine is None:
            return []
        with self._engine_lock:
            got = self._proposals.get(frame.stem)
            if got is None:
                t0 = time.perf_counter()
                det = self.engine([self.image(frame)])[0]
                got = proposals_from(det, label_width=self.label_width)
                self._proposals[frame.stem] = got
                logger.debug("%s: %d proposals in %.0f ms", frame.stem, len(got),
                             (time.perf_counter() - t0) * 1e3)  # fmt: skip
        nxt = self.by_stem[frame.stem] + 1
        if (prefetch and nxt < len(self.frames) and self.frames[nxt].stem not in self._proposals
                and not self.live):  # fmt: skip
            self._queue.put(self.frames[nxt].stem)
        return got

    def _prefetch(self) -> None:
        while not self._stop.is_set():
            stem = self._queue.get()
            if stem is None:
                return
            if stem in self._proposals:
                continue
            try:
                self.proposals(self.frames[self.by_stem[stem]], prefetch=False)
            except Exception as e:  # the page asks again and then shows the error
                logger.warning("model on %s failed: %s", stem, e)

    def frame_list(self) -> dict[str, Any]:
        rows = []
        for i, f in enumerate(list(self.frames)):
            d = self.store.get(f.stem)
            rows.append({"index": i, "stem": f.stem, "origin": f.origin,
                         "labelled": d is not None,
                         "instances": len(d["instances"]) if d else 0,
                         "slip_traces": len(d["slip_traces"]) if d else 0})  # fmt: skip
        return {"frames": rows, "label_width": self.label_width, "model": self.model,
                "out": str(self.store.root), "live": self.live}  # fmt: skip

    def labels(self, frame: LabelFrame) -> dict[str, Any]:
        d = self.store.get(frame.stem)
        if d is None:
            return {"stem": frame.stem, "saved": False, "instances": [], "slip_traces": [],
                    "proposals": {"model": self.model, "done": []}}  # fmt: skip
        return dict(d, saved=True)

    def save(self, frame: LabelFrame, body: bytes) -> dict[str, Any]:
        img = self.image(frame)
        h, w = img.shape[:2]
        labels = _parse(body, w, h)
        doc = self.store.save(frame, img, labels, model=self.model)
        return {"ok": True, "stem": frame.stem, "instances": len(doc["instances"]),
                "slip_traces": len(doc["slip_traces"]), "saved_at": doc["saved_at"],
                "files": [f"labels/{frame.stem}.txt", f"polylines/{frame.stem}.json"]}  # fmt: skip


class _Handler(BaseHandler):
    app: LabelServer
    server_version = "loopline-label"

    def _json(self, obj: Any, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _failed(self, e: Exception) -> None:
        """Answer a request that raised: 409, 400 or 404 for what a client got wrong, 500 (and
        the traceback in the log) for anything else."""
        if isinstance(e, FrameConflict):
            self._error(HTTPStatus.CONFLICT, str(e))
        elif isinstance(e, LabelError):
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        elif isinstance(e, UnknownFrame):
            self._error(HTTPStatus.NOT_FOUND, f"no frame named {e.args[0]!r} in this session")
        else:
            logger.error("%s %s failed", self.command, self.path[:200], exc_info=e)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    def _error(self, code: int, msg: str) -> None:
        self._json({"error": msg.splitlines()[0] if msg else HTTPStatus(code).phrase}, code)

    def _host_ok(self) -> bool:
        host = self.headers.get("Host")
        if host_allowed(host, self.app.cfg):
            return True
        logger.warning("refused a request for Host %r (expected localhost or a loopback "
                       "address)", host)  # fmt: skip
        self._error(HTTPStatus.FORBIDDEN, "Host not allowed: this server answers to localhost "
                    "names only")  # fmt: skip
        return False

    def _route(self) -> tuple[str, str]:
        path = urlparse(self.path).path
        for prefix in ("/api/frame/", "/api/proposals/", "/api/labels/"):
            if path.startswith(prefix):
                return prefix, unquote(path[len(prefix) :])
        return path, ""

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        route, arg = self._route()
        try:
            if route in ("/", "/index.html"):
                self._send(200, self.app._page, "text/html; charset=utf-8")
            elif route == "/api/frames":
                self._json(self.app.frame_list())
            elif route == "/api/frame/":
                if not arg.endswith(".png"):
                    raise LabelError("expected /api/frame/STEM.png")
                fr = self.app.frame(arg[:-4])
                self._send(200, display_png(self.app.image(fr)), "image/png")
            elif route == "/api/proposals/":
                fr = self.app.frame(arg)
                self._json({"stem": fr.stem, "model": self.app.model,
                            "proposals": self.app.proposals(fr)})  # fmt: skip
            elif route == "/api/labels/":
                self._json(self.app.labels(self.app.frame(arg)))
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such page {route[:80]!r}")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:
            self._failed(e)

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        route, arg = self._route()
        try:
            length = int(self.headers.get("Content-Length") or -1)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length")
            return
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"labels of one frame must be under {MAX_BODY_BYTES} bytes")  # fmt: skip
            return
        body = self.rfile.read(length)
        origin = self.headers.get("Origin")
        if origin and not host_allowed(urlparse(origin).netloc, self.app.cfg):
            self._error(HTTPStatus.FORBIDDEN, f"POST from another site ({origin[:80]}) refused")
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if route not in ("/api/labels/", "/api/grab"):
                self._error(HTTPStatus.NOT_FOUND, f"cannot POST to {route[:80]!r}")
                return
            if ctype != "application/json":
                self._error(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    f"labels must be sent as application/json, got {ctype or 'none'!r}",
                )
                return
            if route == "/api/grab":
                self._json(self.app.grab_frame(body))
            else:
                self._json(self.app.save(self.app.frame(arg), body))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:
            self._failed(e)


def handler_type(app: LabelServer, base: type | None = None) -> type:
    """The request handler class of ``app``'s page and API; with ``base`` (the viewer's
    handler), one class that answers both, the label routes under ``/label/``."""
    if base is None:
        return type("Handler", (_Handler,), {"app": app})
    return type("Handler", (base, _Handler), {"app": app, "_label_get": _Handler.do_GET,
                                             "_label_post": _Handler.do_POST})


def run_label(server: LabelServer, *, duration_s: float = 0.0, open_browser: bool = False,
              source: str = "") -> int:  # fmt: skip
    """Serve until Ctrl-C (or ``duration_s`` when > 0). Prints the URL first."""
    import math

    t_end = time.monotonic() + duration_s if duration_s > 0 else math.inf
    with server as srv:
        print(f"loopline label: serving {srv.url} ({len(srv.frames)} frames of {source}; "
              f"labels -> {srv.store.root}); Ctrl-C stops", flush=True)  # fmt: skip
        if open_browser:
            import webbrowser

            webbrowser.open(srv.url)
        while time.monotonic() < t_end:
            if srv._http_thread is not None and not srv._http_thread.is_alive():
                raise RuntimeError("the label server stopped")
            time.sleep(min(0.25, max(t_end - time.monotonic(), 0.0)))
    return 0
