"""What ``loopline label`` reads and writes: the frames to label and the labelled dataset.

Frames (:func:`collect_frames`) come from a folder of images (or its ``images/``), a video,
TIFF stack or DM file (read with :func:`loopline.io.frames.open_frames`; every ``every``-th
frame kept), or a run folder of ``loopline serve`` / ``analyze`` (its raw frames, else the
input it names, else its ``annotated.mp4``, whose frames carry the overlay).

A frame's labels (:func:`parse_labels`) are a JSON document of the page::

    {"instances": [{"kind": "line", "points": [[x, y], ...], "width": 6},
                   {"kind": "ellipse", "center": [x, y], "axes": [major, minor],
                    "angle_deg": 30},
                   {"kind": "polygon", "points": [[x, y], ...]}],
     "slip_traces": [{"points": [[x, y], ...], "width": 6}],
     "proposals_done": ["p0", "p3"]}

in frame pixels (x right, y down, the frame spanning [0, W] x [0, H]); lines are
dislocations (class 0), ellipses (full axes, the major axis at ``angle_deg`` to x) and
polygons are loops (class 1). Slip traces are straight traces that are *not* dislocations:
they never become instances. :class:`LabelStore` writes, after every edit, the dataset
layout of ``loopline synth`` and ``loopline import`` (:mod:`loopline.datasets.layout`) in
``DIR``:

- ``images/<stem>.png`` (the frame as read: grey uint8 or uint16),
- ``labels/<stem>.txt`` (YOLO-seg; a line is its polyline buffered to its width with
  :func:`loopline.datasets.raster.line_polygon`, as the importers and the generator do),
- ``polylines/<stem>.json`` (the document above, with the frame's size and origin: the
  labeller's own record, from which everything else can be rebuilt),
- ``distractors/<stem>.png`` (frames with slip traces: 255 on them, the importers' mask of
  labelled non-defects, which ``loopline eval`` reads for ``slip_trace_confusion``),
- ``coco.json``, ``data.yaml`` and ``label.json`` (what made the folder).

Every file is written to ``DIR/.tmp`` first and renamed into place, so a crash never leaves
half a file; nothing is written outside ``DIR``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.sanitize import inside, safe_filename

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA",
    "FrameConflict",
    "LabelError",
    "LabelFrame",
    "LabelStore",
    "collect_frames",
    "packed_loader",
    "parse_labels",
]

#: ``schema`` of ``polylines/<stem>.json``
SCHEMA = "loopline-label/1"

MAX_BODY_BYTES = 4 << 20  # a POSTed frame: thousands of instances fit
MAX_ITEMS = 5000  # instances or slip traces per frame
MAX_POINTS = 5000  # points per line or polygon
WIDTH_RANGE = (1.0, 64.0)  # px, as the generator's label_width
MAX_SEQUENCE_FRAMES = 5000  # frames of a video kept in memory (PNG-compressed)

_RUN_MARKERS = ("summary.json", "frames.csv", "series.csv")


class LabelError(ValueError):
    """A request's labels make no sense; the message is one line, naming the field."""


class FrameConflict(LabelError):
    """The dataset folder already holds a different frame of the same name."""


# ---------------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class LabelFrame:
    """One frame to label: its dataset name, where it came from and how to read it."""

    stem: str
    origin: str
    load: Callable[[], np.ndarray]


def _unique(stem: str, taken: set[str]) -> str:
    s = safe_filename(stem)
    k = 1
    while s in taken:
        k += 1
        s = safe_filename(f"{stem}-{k}")
    taken.add(s)
    return s


def _image_frames(files: list[Path], every: int) -> list[LabelFrame]:
    from ..io.frames import read_image

    taken: set[str] = set()
    return [LabelFrame(_unique(p.stem, taken), str(p), lambda p=p: read_image(p))
            for p in files[::every]]  # fmt: skip


def packed_loader(image: np.ndarray) -> Callable[[], np.ndarray]:
    """A loader of a frame kept in memory: PNG bytes (lossless) for integer frames."""
    import cv2

    if image.dtype in (np.uint8, np.uint16):
        ok, buf = cv2.imencode(".png", image)
        if ok:
            data = buf.tobytes()
            return lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    kept = image.copy()
    return lambda: kept


def _sequence_frames(path: Path, every: int, max_frames: int) -> list[LabelFrame]:
    """Every ``every``-th frame of a video / TIFF stack / DM file, read now and kept packed."""
    from ..io.frames import open_frames

    ff = open_frames(path)
    if ff.kind == "image":
        return _image_frames([path], 1)
    out: list[LabelFrame] = []
    base = safe_filename(path.stem, max_chars=48)
    t0 = time.monotonic()
    for i, img in enumerate(ff):
        if i % every:
            continue
        if len(out) >= max_frames:
            raise ValueError(f"{path} has more than {max_frames} frames to label at --every "
                             f"{every}; pass a larger --every")  # fmt: skip
        out.append(LabelFrame(f"{base}_{i:06d}", f"{path} frame {i}", packed_loader(img)))
    logger.info("read %d frames of %s (every %d) in %.1f s", len(out), path, every,
                time.monotonic() - t0)  # fmt: skip
    return out


def _run_folder_frames(folder: Path, every: int, max_frames: int) -> list[LabelFrame]:
    """The frames of a run folder: raw frames, else the input it names, else annotated.mp4."""
    from ..io.frames import natural_key

    raw = folder / "raw"
    if raw.is_dir():
        npys = sorted(raw.glob("*.npy"), key=natural_key)
        if npys:
            taken: set[str] = set()
            return [LabelFrame(_unique(p.stem, taken), str(p),
                               lambda p=p: np.load(p, allow_pickle=False))
                    for p in npys[::every]]  # fmt: skip
        tifs = sorted(raw.glob("frames*.tif"), key=natural_key)
        if tifs:
            out: list[LabelFrame] = []
            for t in tifs:
                out.extend(_sequence_frames(t, every, max_frames - len(out)))
            return out
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            src = json.loads(summary.read_text("utf-8")).get("input")
        except (OSError, ValueError, AttributeError):
            src = None
        if isinstance(src, str) and src and Path(src).exists():
            logger.info("%s: labelling the frames it analysed, %s", folder, src)
            return collect_frames(src, every=every, max_frames=max_frames)
    videos = sorted(folder.glob("annotated*.mp4"), key=natural_key)
    if videos:
        logger.warning("%s has no raw frames (output.raw) and names no input: labelling "
                       "%s, whose frames carry the daemon's overlay", folder,
                       videos[0].name)  # fmt: skip
        return _sequence_frames(videos[0], every, max_frames)
    raise FileNotFoundError(f"run folder {folder} holds no frames: no raw/ frames, no input "
                            "named in summary.json and no annotated.mp4")  # fmt: skip


def collect_frames(path: str | Path, *, every: int = 1,
                   max_frames: int = MAX_SEQUENCE_FRAMES) -> list[LabelFrame]:  # fmt: skip
    """The frames to label in ``path`` (see the module docstring), every ``every``-th one.

    Raises
    ------
    FileNotFoundError
        No such path, or it holds no frames.
    ValueError
        ``every`` < 1, an unreadable or unsupported file, or more than ``max_frames`` frames.
    """
    from ..io.frames import image_files

    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        files = image_files(p)
        if not files and any((p / m).is_file() for m in _RUN_MARKERS):
            return _run_folder_frames(p, every, max_frames)
        if not files and (p / "images").is_dir():
            files = image_files(p / "images")
        if not files:
            raise FileNotFoundError(f"no images (.png .tif .jpg ...) in {p}")
        if len(files[::every]) > max_frames:
            raise ValueError(f"{p} has more than {max_frames} frames to label at --every "
                             f"{every}; pass a larger --every")  # fmt: skip
        return _image_frames(files, every)
    return _sequence_frames(p, every, max_frames)


def dataset_image(image: np.ndarray) -> np.ndarray:
    """The frame as the dataset stores it: grey uint8 / uint16 as read; float frames (DM)
    stretched from their min..max to uint16 (PNG holds no floats)."""
    a = np.asarray(image)
    if a.ndim == 3:
        from ..io.frames import as_gray

        a = as_gray(a)
    if a.dtype in (np.uint8, np.uint16):
        return a
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = float(a.min()), float(a.max())
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.round((a - lo) * scale).astype(np.uint16)


def display_png(image: np.ndarray) -> bytes:
    """An 8-bit PNG of the frame for the page (deeper frames stretched to 0.5-99.5 %)."""
    import cv2

    a = dataset_image(image)
    if a.dtype != np.uint8:
        lo, hi = np.percentile(a, (0.5, 99.5))
        hi = hi if hi > lo else lo + 1
        a = np.clip((a.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise OSError("could not encode the frame as PNG")
    return buf.tobytes()


# ---------------------------------------------------------------------------------- labels


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise LabelError(f"{where} must be a finite number, got {json.dumps(v)[:40]}")
    return float(v)


def _points(v: Any, where: str, w: int, h: int, least: int) -> list[list[float]]:
    if not isinstance(v, list):
        raise LabelError(f"{where} must be a list of [x, y] points")
    if len(v) < least:
        raise LabelError(f"{where} needs at least {least} points, got {len(v)}")
    if len(v) > MAX_POINTS:
        raise LabelError(f"{where} has {len(v)} points; at most {MAX_POINTS}")
    out = []
    for k, p in enumerate(v):
        if not isinstance(p, list) or len(p) != 2:
            raise LabelError(f"{where}[{k}] must be [x, y]")
        x, y = _number(p[0], f"{where}[{k}][0]"), _number(p[1], f"{where}[{k}][1]")
        if not (0.0 <= x <= w and 0.0 <= y <= h):
            raise LabelError(f"{where}[{k}] = ({x:g}, {y:g}) lies outside the {w}x{h} frame")
        out.append([round(x, 3), round(y, 3)])
    return out


def _width(v: Any, where: str) -> float:
    wd = _number(v, where)
    lo, hi = WIDTH_RANGE
    if not lo <= wd <= hi:
        raise LabelError(f"{where} must lie in [{lo:g}, {hi:g}] px, got {wd:g}")
    return round(wd, 3)


def _keys(item: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise LabelError(f"{where} must be an object")
    extra = sorted(set(item) - allowed)
    if extra:
        raise LabelError(
            f"{where}: unknown key {extra[0]!r} (expected {', '.join(sorted(allowed))})"
        )
    return item


def _origin(item: dict[str, Any], where: str) -> str:
    v = item.get("from", "drawn")
    if v not in ("drawn", "proposal"):
        raise LabelError(f"{where}.from must be 'drawn' or 'proposal', got {json.dumps(v)[:40]}")
    return v


def _line(item: Any, where: str, w: int, h: int) -> dict[str, Any]:
    item = _keys(item, where, {"kind", "class", "points", "width", "from"})
    pts = _points(item.get("points"), f"{where}.points", w, h, 2)
    if float(np.hypot(*np.diff(np.asarray(pts), axis=0).T).sum()) <= 0:
        raise LabelError(f"{where}.points: the line has zero length")
    return {"kind": "line", "class": 0, "points": pts,
            "width": _width(item.get("width"), f"{where}.width"),
            "from": _origin(item, where)}  # fmt: skip


def _instance(item: Any, where: str, w: int, h: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise LabelError(f"{where} must be an object")
    kind = item.get("kind")
    want = {"line": 0, "ellipse": 1, "polygon": 1}
    if kind not in want:
        raise LabelError(f"{where}.kind must be 'line', 'ellipse' or 'polygon', got "
                         f"{json.dumps(kind)[:40]}")  # fmt: skip
    if "class" in item and item["class"] != want[kind]:
        raise LabelError(f"{where}: a {kind} is class {want[kind]} "
                         f"({'dislocation' if want[kind] == 0 else 'loop'}), got "
                         f"{json.dumps(item['class'])[:20]}")  # fmt: skip
    if kind == "line":
        return _line(item, where, w, h)
    if kind == "polygon":
        item = _keys(item, where, {"kind", "class", "points", "from"})
        pts = _points(item.get("points"), f"{where}.points", w, h, 3)
        from ..datasets.layout import polygon_area

        if polygon_area(np.asarray(pts)) <= 0:
            raise LabelError(f"{where}.points: the polygon has zero area")
        return {"kind": "polygon", "class": 1, "points": pts, "from": _origin(item, where)}
    item = _keys(item, where, {"kind", "class", "center", "axes", "angle_deg", "from"})
    c = _points([item.get("center")], f"{where}.center", w, h, 1)[0]
    axes = item.get("axes")
    if not isinstance(axes, list) or len(axes) != 2:
        raise LabelError(f"{where}.axes must be [major, minor] (full axes, px)")
    a = [_number(axes[0], f"{where}.axes[0]"), _number(axes[1], f"{where}.axes[1]")]
    big = 2.0 * max(w, h)
    if not all(0.5 <= v <= big for v in a):
        raise LabelError(f"{where}.axes must lie in [0.5, {big:g}] px, got {a}")
    ang = _number(item.get("angle_deg", 0.0), f"{where}.angle_deg")
    if a[1] > a[0]:
        a, ang = [a[1], a[0]], ang + 90.0
    return {"kind": "ellipse", "class": 1, "center": c, "axes": [round(v, 3) for v in a],
            "angle_deg": round(ang % 180.0, 3), "from": _origin(item, where)}  # fmt: skip


def parse_labels(body: bytes | str | dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """Validate one frame's labels from the page (module docstring) and normalise them.

    Returns ``{"instances": [...], "slip_traces": [...], "proposals_done": [...]}`` with
    every instance's ``class`` filled in.

    Raises
    ------
    LabelError
        A one-line message naming the first field that is wrong, e.g.
        ``instances[2].points[1] = (300, 4) lies outside the 128x128 frame``.
    """
    doc = body
    if isinstance(body, bytes | str):
        if len(body) > MAX_BODY_BYTES:
            raise LabelError(f"labels of one frame must be under {MAX_BODY_BYTES} bytes")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise LabelError(f"the body is not JSON: {e}") from None
    doc = _keys(doc, "the body", {"instances", "slip_traces", "proposals_done"})
    out: dict[str, Any] = {}
    for key in ("instances", "slip_traces"):
        items = doc.get(key, [])
        if not isinstance(items, list):
            raise LabelError(f"{key} must be a list")
        if len(items) > MAX_ITEMS:
            raise LabelError(f"{key}: at most {MAX_ITEMS} per frame, got {len(items)}")
        if key == "instances":
            out[key] = [_instance(it, f"{key}[{k}]", width, height) for k, it in enumerate(items)]
        else:
            out[key] = [_line(dict(it, kind="line") if isinstance(it, dict) else it,
                              f"{key}[{k}]", width, height)
                        for k, it in enumerate(items)]  # fmt: skip
            for s in out[key]:
                del s["class"], s["kind"]  # a slip trace is no class: never an instance
    done = doc.get("proposals_done", [])
    if (
        not isinstance(done, list)
        or len(done) > MAX_ITEMS
        or not all(isinstance(d, str) and len(d) <= 32 for d in done)
    ):
        raise LabelError("proposals_done must be a list of proposal ids (strings)")
    out["proposals_done"] = sorted(set(done))
    return out


def ellipse_outline(center: list[float], axes: list[float], angle_deg: float,
                    n: int = 48) -> np.ndarray:  # fmt: skip
    """(n, 2) px outline of an ellipse with full ``axes`` (as the generator draws loops)."""
    th = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    a, b = axes[0] / 2.0, axes[1] / 2.0
    ang = np.deg2rad(angle_deg)
    x, y = a * np.cos(th), b * np.sin(th)
    return np.stack([center[0] + x * np.cos(ang) - y * np.sin(ang),
                     center[1] + x * np.sin(ang) + y * np.cos(ang)], axis=1)  # fmt: skip


def instance_polygons(doc: dict[str, Any]) -> list[tuple[int, np.ndarray]]:
    """(class, polygon px) of every instance of a frame's labels, in order."""
    from ..datasets.raster import line_polygon

    out = []
    for it in doc["instances"]:
        if it["kind"] == "line":
            out.append((0, line_polygon(np.asarray(it["points"], float), it["width"])))
        elif it["kind"] == "ellipse":
            out.append((1, ellipse_outline(it["center"], it["axes"], it["angle_deg"])))
        else:
            out.append((1, np.asarray(it["points"], float)))
    return out


# ---------------------------------------------------------------------------------- store


class LabelStore:
    """The labelled dataset in ``root``: every frame's labels in memory, saved on each edit.

    Parameters
    ----------
    root
        Dataset folder (made if missing). A folder that already holds a dataset not made by
        ``loopline label`` (``coco.json`` or ``labels/`` without ``label.json``) is refused,
        so that no imported or synthetic labels are overwritten.
    meta
        Written into ``label.json`` (source, model, label width).

    Raises
    ------
    FileExistsError
        ``root`` holds another kind of dataset.
    """

    def __init__(self, root: str | Path, *, meta: dict[str, Any] | None = None) -> None:
        self.root = Path(root).resolve()
        if self.root.exists() and not self.root.is_dir():
            raise FileExistsError(f"{self.root} is a file, not a dataset folder")
        if ((self.root / "coco.json").exists() or (self.root / "labels").is_dir()) and not (
            self.root / "label.json"
        ).is_file():
            raise FileExistsError(f"{self.root} already holds a dataset not made by loopline "
                                  "label; choose a new folder")  # fmt: skip
        self.meta = dict(meta or {})
        self._lock = threading.Lock()
        self.docs: dict[str, dict[str, Any]] = {}
        self._polygons: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._same_image: set[str] = set()  # stems whose images/ file is this session's frame
        pdir = self.root / "polylines"
        if pdir.is_dir():
            for p in sorted(pdir.glob("*.json")):
                try:
                    d = json.loads(p.read_text("utf-8"))
                    if d.get("schema") != SCHEMA or d.get("stem") != p.stem:
                        raise ValueError(f"not a {SCHEMA} document of {p.stem}")
                    # checked as a POST is: the file may have been edited by hand
                    done = (d.get("proposals") or {}).get("done", [])
                    got = parse_labels({"instances": d["instances"], "slip_traces":
                                        d["slip_traces"], "proposals_done": done},
                                       int(d["width"]), int(d["height"]))  # fmt: skip
                    d.update(instances=got["instances"], slip_traces=got["slip_traces"])
                    self.docs[p.stem] = d
                except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
                    logger.warning("ignoring %s (%s); its labels/%s.txt is left as it is",
                                   p, e, p.stem)  # fmt: skip
        if self.docs:
            logger.info("%s: %d labelled frames already", self.root, len(self.docs))

    # -- paths and atomic writes ------------------------------------------------------------
    def _path(self, *parts: str) -> Path:
        return inside(self.root, self.root.joinpath(*parts))

    def _tmp(self, name: str) -> Path:
        d = self.root / ".tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{os.getpid()}-{threading.get_ident()}-{name}"

    def _replace(self, tmp: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    def _write_text(self, dest: Path, text: str) -> None:
        tmp = self._tmp(dest.name)
        tmp.write_text(text, "utf-8")
        self._replace(tmp, dest)

    def _write_png(self, dest: Path, image: np.ndarray) -> None:
        from ..datasets.layout import write_image

        tmp = self._tmp(dest.name)  # ends in .png: cv2 picks the format from it
        write_image(tmp, image)
        self._replace(tmp, dest)

    # -- reading ----------------------------------------------------------------------------
    def get(self, stem: str) -> dict[str, Any] | None:
        with self._lock:
            d = self.docs.get(stem)
            return None if d is None else json.loads(json.dumps(d))

    # -- writing ----------------------------------------------------------------------------
    def save(self, frame: LabelFrame, image: np.ndarray, labels: dict[str, Any], *,
             model: str | None) -> dict[str, Any]:  # fmt: skip
        """Write one frame's validated labels (:func:`parse_labels`) and the dataset files.

        Returns the frame's document as written to ``polylines/<stem>.json``.
        """
        from ..datasets.layout import write_yolo_labels

        img = dataset_image(image)
        h, w = img.shape
        stem = frame.stem
        doc = {"schema": SCHEMA, "stem": stem, "image": f"images/{stem}.png", "width": w,
               "height": h, "origin": frame.origin, "instances": labels["instances"],
               "slip_traces": labels["slip_traces"],
               "proposals": {"model": model, "done": labels["proposals_done"]},
               "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            image_path = self._path("images", f"{stem}.png")
            if stem not in self._same_image:
                if image_path.exists():
                    self._check_image(image_path, img, frame)
                else:
                    self._write_png(image_path, img)
                self._same_image.add(stem)
            polys = instance_polygons(doc)
            tmp = self._tmp(f"{stem}.txt")
            write_yolo_labels(tmp, polys, w, h)
            self._replace(tmp, self._path("labels", f"{stem}.txt"))
            self._write_distractors(stem, doc)
            self._write_text(self._path("polylines", f"{stem}.json"),
                             json.dumps(doc, indent=1, sort_keys=True) + "\n")  # fmt: skip
            self.docs[stem] = doc
            self._polygons[stem] = polys
            self._write_shared()
            try:
                (self.root / ".tmp").rmdir()  # empty unless another writer is mid-file
            except OSError:
                pass
        logger.debug("saved %s: %d instances, %d slip traces", stem, len(doc["instances"]),
                     len(doc["slip_traces"]))  # fmt: skip
        return doc

    def _check_image(self, path: Path, img: np.ndarray, frame: LabelFrame) -> None:
        """FrameConflict if ``path`` holds another image than ``img`` (two sources' frames of
        one name: labels of one must not be saved over the image of the other)."""
        import cv2

        old = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if old is None or old.shape != img.shape or not np.array_equal(old, img):
            where = (self.docs.get(frame.stem) or {}).get("origin", "an earlier session")
            raise FrameConflict(f"{path.parent.parent} already holds a different frame named "
                                f"{frame.stem} (from {where}); label {frame.origin} into "
                                "another folder")  # fmt: skip

    def _write_distractors(self, stem: str, doc: dict[str, Any]) -> None:
        from ..datasets.raster import line_polygon, polygon_mask

        dest = self._path("distractors", f"{stem}.png")
        if not doc["slip_traces"]:
            dest.unlink(missing_ok=True)
            return
        h, w = doc["height"], doc["width"]
        m = np.zeros((h, w), bool)
        for s in doc["slip_traces"]:
            m |= polygon_mask(line_polygon(np.asarray(s["points"], float), s["width"]), (h, w))
        self._write_png(dest, np.where(m, 255, 0).astype(np.uint8))

    def _write_shared(self) -> None:
        """coco.json, data.yaml and label.json from every labelled frame (lock held)."""
        from ..datasets.layout import CLASSES, CocoBuilder, write_data_yaml

        coco = CocoBuilder()
        for stem in sorted(self.docs):
            d = self.docs[stem]
            w, h = d["width"], d["height"]
            image_id = coco.add_image(d["image"], w, h)
            if stem not in self._polygons:
                self._polygons[stem] = instance_polygons(d)
            for cls, poly in self._polygons[stem]:
                coco.add(image_id, cls, poly, w, h)
        self._write_text(self._path("coco.json"),
                         json.dumps(coco.to_dict(), sort_keys=True, separators=(",", ":"))
                         + "\n")  # fmt: skip
        tmp_dir = self._tmp("yaml")
        tmp_dir.mkdir(exist_ok=True)
        self._replace(write_data_yaml(tmp_dir), self._path("data.yaml"))
        tmp_dir.rmdir()
        per_class = dict.fromkeys(CLASSES, 0)
        slips = 0
        for d in self.docs.values():
            for it in d["instances"]:
                per_class[CLASSES[it["class"]]] += 1
            slips += len(d["slip_traces"])
        meta = dict(self.meta, command="label", images=len(self.docs), classes=list(CLASSES),
                    per_class=per_class, slip_traces=slips)  # fmt: skip
        self._write_text(self._path("label.json"), json.dumps(meta, indent=1, sort_keys=True)
                         + "\n")  # fmt: skip
