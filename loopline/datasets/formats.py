"""Importers of what other annotation tools write: CVAT, napari and box-only formats.

``importers.import_dataset`` picks these readers by format name (``IMPORTERS``); each takes
``(source, writer, images, cls, label_width)`` as the readers in ``importers`` do and hands
the writer every frame's polygon instances and box-only instances (class, ``x0, y0, x1, y1``
px). Coordinates are pixels with the origin at the frame's top-left corner.

``cvat``
    ``SOURCE`` is a CVAT for images 1.1 XML (``annotations.xml``) or the folder of an
    unzipped export that holds one (beside ``images/``). Per ``<image name= width= height=>``:
    ``<polyline points="x1,y1;x2,y2;...">`` becomes a dislocation buffered to
    ``label_width``; ``<polygon>`` an instance of the class its label names; ``<ellipse cx cy
    rx ry rotation>`` a loop; ``<box xtl ytl xbr ybr rotation>`` a box-only instance of the
    class its label names (a turned box: the extent of its corners). A polyline or ellipse
    whose label names a class ("loop", "disloc") takes it; ``cls`` gives every shape one.
    ``<points>``, ``<mask>``, ``<cuboid>`` and ``<skeleton>`` are skipped (counted); CVAT for
    video (``<track>``) is refused. Frames: ``images``, else ``images/`` beside the XML, else
    the XML's folder.
``napari``
    ``SOURCE`` is a folder of frames with, beside a frame, ``<stem>.csv`` (a Shapes layer as
    napari's builtin writer saves it: columns ``index, shape-type, vertex-index, axis-0,
    axis-1``, axis-0 the row (y), axis-1 the column (x)) and/or ``<stem>.npy`` (a Labels
    layer: an (H, W) integer image, one id per instance, 0 background). napari keeps no class
    per shape, so the shape type gives it: ``path`` and ``line`` are dislocations (buffered
    to ``label_width``), ``polygon`` and ``ellipse`` loops, ``rectangle`` a box-only loop;
    ``cls`` gives every shape one class and is needed for a Labels layer. Frames without
    either file are not imported (unlabelled is not "labelled empty").
``yolo-det``
    ``SOURCE`` is a folder of YOLO detection labels ``<stem>.txt``: a line ``class cx cy w h``
    normalised to [0, 1] (exactly 5 fields; a YOLO-seg polygon line has more and is refused).
    Class ids are named by ``classes.txt`` (one name a line) or ``data.yaml`` (``names``) in
    ``SOURCE`` or the two folders above it, unless ``cls`` is given. Frames: ``images``, else
    ``SOURCE`` itself, else ``SOURCE`` with its ``labels`` folder read as ``images``.
``voc``
    ``SOURCE`` is a Pascal VOC XML file or a folder of them: ``<filename>``, ``<size>`` and
    per ``<object>`` a ``<name>`` and a ``<bndbox>`` (``xmin ymin xmax ymax`` px, taken as
    they stand). Frames: ``images``, else ``JPEGImages/`` beside an ``Annotations/`` folder,
    else the XML's folder.
``keras-yolo3``
    ``SOURCE`` is a keras-yolo3 annotation file, a line per frame: ``path x0,y0,x1,y1,c
    x0,y0,x1,y1,c ...`` (px, class id ``c``; a path alone: a frame without objects). Class
    ids are named by ``classes.txt`` (or one ``*_classes.txt``) beside the file, unless
    ``cls`` is given. A frame path is taken as it stands, else relative to the file's folder,
    else by name in ``images``.

XML is read with the standard library's parser, which expands no external entities.
"""

from __future__ import annotations

import csv
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .importers import (
    _find,
    _images_in,
    _polygon,
    _shape_class,
    _Writer,
    box_polygon,
    default_label_width,
    ellipse_outline,
    instances_from_labels,
    make_box,
    make_line,
    read_grey,
    rotated_ellipse,
)
from .layout import CLASSES

logger = logging.getLogger(__name__)

__all__ = ["IMPORTERS"]

Instances = list[tuple[int, np.ndarray]]


# ---------------------------------------------------------------------------------------------
# helpers


def _frame(name: str, folders: list[Path], where: str) -> Path:
    """The frame file ``name`` (a path as the labels give it) in the first folder holding it.

    Looked up as given, by file name, then by stem (a frame converted to another suffix).
    """
    rel = Path(name.replace("\\", "/"))
    for d in folders:
        for cand in (d / rel, d / rel.name):
            if cand.is_file():
                return cand
        found = _find(d, rel.stem) if d.is_dir() else None
        if found is not None:
            return found
    looked = ", ".join(str(d) for d in folders)
    raise ValueError(f"{where}: frame {name!r} not found in {looked} (pass --images DIR)")


def _check_size(image: np.ndarray, w: float | None, h: float | None, name: str, where: str) -> None:
    """A frame's declared size (0 or None: not declared) must be the file's."""
    ih, iw = image.shape[:2]
    if w and h and (int(w), int(h)) != (iw, ih):
        raise ValueError(
            f"{where}: frame {name} is declared {int(w)}x{int(h)} (W x H) but the file is {iw}x{ih}"
        )


def _number(text: str | None, what: str, where: str) -> float:
    try:
        v = float(text if text is not None else "")
    except ValueError:
        raise ValueError(f"{where}: {what} must be a number, got {text!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{where}: {what} must be finite, got {text!r}")
    return v


def _xml_root(path: Path, tag: str, what: str) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path} is not valid XML ({e}); expected {what}") from None
    if root.tag != tag:
        raise ValueError(f"{path}: expected {what} with root <{tag}>, got <{root.tag}>")
    return root


def _id_table(names: list[str], where: str) -> dict[int, int]:
    """Class id of another tool -> loopline class index, by the names it gives the ids."""
    return {k: _shape_class(n, f"{where} class {k}", cls=None) for k, n in enumerate(names)}


def _names_file(folders: list[Path], patterns: tuple[str, ...]) -> tuple[list[str], Path] | None:
    """Class names (and their file) from the first ``classes.txt`` or ``data.yaml`` found."""
    for d in folders:
        for pat in patterns:
            found = sorted(d.glob(pat)) if d.is_dir() else []
            if len(found) > 1:
                several = ", ".join(p.name for p in found)
                raise ValueError(
                    f"{d}: several class-name files ({several}); keep one or pass --class"
                )
            if found:
                return _read_names(found[0]), found[0]
    return None


def _read_names(path: Path) -> list[str]:
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(path.read_text("utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
        names = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(names, dict) and all(isinstance(k, int) for k in names):
            names = [names.get(k, "") for k in range(max(names) + 1)] if names else []
        if not isinstance(names, list):
            raise ValueError(
                f"{path}: expected 'names:' as a list or an id -> name mapping, got "
                f"{type(names).__name__}"
            )
        return [str(n) for n in names]
    return [ln.strip() for ln in path.read_text("utf-8").splitlines() if ln.strip()]


def _class_ids(
    cls: int | None, folders: list[Path], patterns: tuple[str, ...], fmt: str
) -> tuple[dict[int, int] | None, str]:
    """Table of class ids (None: ``cls`` for all) and where the names came from."""
    if cls is not None:
        return None, f"--class {CLASSES[cls]}"
    got = _names_file(folders, patterns)
    if got is None:
        raise ValueError(
            f"{fmt} labels give class ids, not names: pass --class, or put a classes.txt (one "
            f"name a line) in {folders[0]}"
        )
    names, path = got
    return _id_table(names, str(path)), str(path)


def _class_of(
    k: int, table: dict[int, int] | None, cls: int | None, origin: str, where: str
) -> int:
    if table is None:
        return int(cls)  # type: ignore[arg-type]
    if k not in table:
        raise ValueError(
            f"{where}: class id {k} is not named in {origin} (ids 0..{len(table) - 1})"
        )
    return table[k]


# ---------------------------------------------------------------------------------------------
# CVAT for images 1.1


def _cvat_points(el: ET.Element, where: str) -> np.ndarray:
    text = el.get("points", "")
    try:
        pts = [[float(v) for v in p.split(",")] for p in text.strip().split(";") if p.strip()]
        arr = np.array(pts, float)
    except ValueError:
        arr = np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise ValueError(f"{where}: points must be 'x1,y1;x2,y2;...', got {text!r:.60}")
    return arr


def _attrs(el: ET.Element, names: tuple[str, ...], where: str) -> list[float]:
    """Numeric attributes of an element; a missing ``rotation`` is 0."""
    return [_number(el.get(a, "0" if a == "rotation" else None), a, where) for a in names]


def _cvat_shapes(
    im: ET.Element, w: _Writer, name: str, cls: int | None, width: float, where0: str
) -> tuple[Instances, Instances]:
    inst: Instances = []
    boxes: Instances = []
    for k, el in enumerate(im):
        where = f"{where0} image {name!r} <{el.tag}> {k}"
        label = el.get("label")
        if el.tag == "polyline":
            line = make_line(_cvat_points(el, where), width, where)
            inst.append((_shape_class(label, where, cls=cls, default=0), line))
        elif el.tag == "polygon":
            pts = _cvat_points(el, where)
            inst.append((_shape_class(label, where, cls=cls), _polygon(pts.ravel(), where)))
        elif el.tag == "ellipse":
            cx, cy, rx, ry, rot = _attrs(el, ("cx", "cy", "rx", "ry", "rotation"), where)
            if rx <= 0 or ry <= 0:
                raise ValueError(f"{where}: an ellipse needs rx, ry > 0, got {rx}, {ry}")
            poly = rotated_ellipse(cx, cy, rx, ry, rot)
            inst.append((_shape_class(label, where, cls=cls, default=1), poly))
        elif el.tag == "box":
            *xyxy, rot = _attrs(el, ("xtl", "ytl", "xbr", "ybr", "rotation"), where)
            b = make_box(*xyxy, where)
            if rot:  # CVAT turns a box about its centre, degrees clockwise on screen (x to y)
                c, corners = (b[:2] + b[2:]) / 2, box_polygon(b)
                a = np.deg2rad(rot)
                m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
                p = (corners - c) @ m.T + c
                b = np.concatenate([p.min(axis=0), p.max(axis=0)])
            boxes.append((_shape_class(label, where, cls=cls), b))
        elif el.tag in ("points", "mask", "cuboid", "skeleton"):
            logger.warning("%s: skipping a CVAT %s (not an instance outline)", where, el.tag)
            w.skipped += 1
        elif el.tag != "tag":
            logger.warning("%s: skipping an unknown CVAT element <%s>", where, el.tag)
            w.skipped += 1
    return inst, boxes


def _import_cvat(
    src: Path, w: _Writer, images: Path | None, cls: int | None, label_width: float | None
) -> None:
    xml = src / "annotations.xml" if src.is_dir() else src
    what = "a CVAT for images 1.1 XML (annotations.xml)"
    if not xml.is_file():
        raise ValueError(f"cvat format expects {what} or a folder holding one, got {src}")
    root = _xml_root(xml, "annotations", what)
    frames = root.findall("image")
    if not frames:
        video = root.find("track") is not None
        got = "CVAT for video (<track> elements)" if video else "no <image> elements"
        raise ValueError(
            f"{xml}: expected {what} with <image> elements, got {got}; export the "
            "task as 'CVAT for images 1.1'"
        )
    folders = [images] if images is not None else [xml.parent / "images", xml.parent]
    width = label_width if label_width is not None else default_label_width()
    for im in frames:
        name = im.get("name")
        if not name:
            raise ValueError(f"{xml}: an <image> without a name attribute (id {im.get('id')})")
        ip = _frame(name, folders, str(xml))
        image = read_grey(ip)
        where = f"{xml} image {name!r}"
        dw, dh = (_number(im.get(a), a, where) if im.get(a) else None for a in ("width", "height"))
        _check_size(image, dw, dh, name, str(xml))
        inst, boxes = _cvat_shapes(im, w, name, cls, width, str(xml))
        w.add(ip.stem, image, inst, boxes=boxes)


# ---------------------------------------------------------------------------------------------
# napari

_NAPARI_COLUMNS = ("index", "shape-type", "vertex-index", "axis-0", "axis-1")


def _napari_csv(path: Path, cls: int | None, width: float) -> tuple[Instances, Instances]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    head = [c.strip() for c in rows[0]] if rows else []
    if any(c not in head for c in _NAPARI_COLUMNS):
        raise ValueError(
            f"{path}: expected a napari Shapes CSV with columns "
            f"{','.join(_NAPARI_COLUMNS)}, got {','.join(head) or 'nothing'}"
        )
    axes = [c for c in head if c.startswith("axis-")]
    if len(axes) != 2:
        raise ValueError(
            f"{path}: expected a 2-D Shapes layer (axis-0, axis-1), got {len(axes)} axes"
        )
    col = {c: head.index(c) for c in _NAPARI_COLUMNS}
    shapes: dict[str, tuple[str, list[tuple[float, float, float]]]] = {}
    for no, row in enumerate(rows[1:], 2):
        if not row:
            continue
        where = f"{path}:{no}"
        if len(row) != len(head):
            raise ValueError(f"{where}: expected {len(head)} fields, got {len(row)}")
        idx, kind = row[col["index"]].strip(), row[col["shape-type"]].strip()
        v = [_number(row[col[c]], c, where) for c in ("vertex-index", "axis-0", "axis-1")]
        if idx in shapes and shapes[idx][0] != kind:
            raise ValueError(f"{where}: shape {idx} is a {shapes[idx][0]} and a {kind}")
        shapes.setdefault(idx, (kind, []))[1].append((v[0], v[2], v[1]))  # (vertex, x, y)
    inst: Instances = []
    boxes: Instances = []
    for idx, (kind, verts) in shapes.items():
        where = f"{path} shape {idx}"
        pts = np.array(sorted(verts))[:, 1:]  # by vertex index; (x, y) px
        if kind in ("path", "line"):
            inst.append((0 if cls is None else cls, make_line(pts, width, where)))
        elif kind == "polygon":
            inst.append((1 if cls is None else cls, _polygon(pts.ravel(), where)))
        elif kind in ("ellipse", "rectangle"):
            if len(pts) != 4:
                raise ValueError(f"{where}: a napari {kind} has 4 corners, got {len(pts)}")
            if kind == "rectangle":
                (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
                boxes.append((1 if cls is None else cls, make_box(x0, y0, x1, y1, where)))
                continue
            u, v = (pts[1] - pts[0]) / 2, (pts[2] - pts[1]) / 2  # semi-axes of its box
            if np.hypot(*u) == 0 or np.hypot(*v) == 0:
                raise ValueError(f"{where}: an ellipse needs a box of non-zero sides")
            inst.append((1 if cls is None else cls, ellipse_outline(pts.mean(axis=0), u, v)))
        else:
            raise ValueError(
                f"{where}: expected a shape type path, line, polygon, ellipse or "
                f"rectangle, got {kind!r}"
            )
    return inst, boxes


def _napari_labels(
    path: Path, shape: tuple[int, int], cls: int | None, label_width: float | None
) -> tuple[Instances, np.ndarray]:
    if cls is None:
        raise ValueError(
            f"{path}: a napari Labels layer carries no classes; pass --class (dislocation or loop)"
        )
    try:
        lab = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(
            f"{path}: expected a .npy integer label image, got an unreadable file ({e})"
        ) from None
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if lab.ndim != 2 or lab.dtype.kind not in "iu" or lab.shape != shape:
        raise ValueError(
            f"{path}: expected an integer label image of the frame's shape {shape} "
            f"(H, W), got {lab.dtype} {lab.shape}"
        )
    if lab.size and lab.min() < 0:
        raise ValueError(f"{path}: label ids must be >= 0 (0 = background), got {lab.min()}")
    return instances_from_labels(lab, cls, label_width if cls == 0 else None)


def _import_napari(
    src: Path, w: _Writer, images: Path | None, cls: int | None, label_width: float | None
) -> None:
    if not src.is_dir():
        raise ValueError(
            f"napari format expects a folder of frames with <stem>.csv (Shapes) "
            f"and/or <stem>.npy (Labels) beside them, got {src}"
        )
    frames = _images_in(images if images is not None else src)
    width = label_width if label_width is not None else default_label_width()
    done = unlabelled = 0
    for ip in frames:
        shapes_csv, labels_npy = src / f"{ip.stem}.csv", src / f"{ip.stem}.npy"
        if not shapes_csv.is_file() and not labels_npy.is_file():
            unlabelled += 1
            continue
        image = read_grey(ip)
        inst: Instances = []
        boxes: Instances = []
        imap = None
        if labels_npy.is_file():
            inst, imap = _napari_labels(labels_npy, image.shape[:2], cls, label_width)
        if shapes_csv.is_file():
            more, boxes = _napari_csv(shapes_csv, cls, width)
            if more and imap is not None:
                # The instance map covers the Labels layer only; without strokes for the
                # shapes it would tell the evaluation they have none. Keep no map.
                logger.warning("%s: Labels and Shapes for one frame; no instance map kept", ip)
                imap = None
            inst += more
        w.add(ip.stem, image, inst, imap, boxes=boxes)
        done += 1
    if unlabelled:
        logger.warning(
            "%s: %d frames without <stem>.csv or <stem>.npy not imported", src, unlabelled
        )
    if not done:
        raise ValueError(
            f"no frame in {images or src} has a <stem>.csv or <stem>.npy beside it in {src}"
        )


# ---------------------------------------------------------------------------------------------
# box-only formats


def _import_yolo_det(
    src: Path, w: _Writer, images: Path | None, cls: int | None, label_width: float | None
) -> None:
    if not src.is_dir():
        raise ValueError(
            f"yolo-det format expects a folder of YOLO detection labels "
            f"(<stem>.txt: 'class cx cy w h'), got {src}"
        )
    files = sorted(p for p in src.glob("*.txt") if not p.name.endswith("classes.txt"))
    if not files:
        raise ValueError(f"no label files (<stem>.txt) in {src}")
    up = [src, src.parent, src.parent.parent]
    table, origin = _class_ids(cls, up, ("classes.txt", "data.yaml"), "yolo-det")
    if images is not None:
        folders = [images]
    else:
        parts = list(src.parts)
        folders = [src]
        if "labels" in parts:
            k = len(parts) - 1 - parts[::-1].index("labels")
            folders.append(Path(*parts[:k], "images", *parts[k + 1 :]))
    for lp in files:
        ip = next((p for d in folders if d.is_dir() and (p := _find(d, lp.stem))), None)
        if ip is None:
            raise ValueError(
                f"labels {lp} have no frame named {lp.stem}.* in "
                f"{', '.join(map(str, folders))} (pass --images DIR)"
            )
        image = read_grey(ip)
        h, wd = image.shape[:2]
        boxes: Instances = []
        for no, raw in enumerate(lp.read_text("utf-8").splitlines(), 1):
            parts = raw.split()
            if not parts:
                continue
            where = f"{lp}:{no}"
            if len(parts) != 5:
                raise ValueError(
                    f"{where}: expected 5 fields 'class cx cy w h' (YOLO detection), "
                    f"got {len(parts)}; YOLO-seg polygons are not boxes"
                )
            if not parts[0].isdigit():
                raise ValueError(f"{where}: expected a class id (0, 1, ...), got {parts[0]!r}")
            cx, cy, bw, bh = (_number(v, "a coordinate", where) for v in parts[1:])
            if not (0 <= min(cx, cy, bw, bh) and max(cx, cy, bw, bh) <= 1):
                raise ValueError(f"{where}: coordinates must be normalised to [0, 1], got {raw!r}")
            c = _class_of(int(parts[0]), table, cls, origin, where)
            x0, y0, x1, y1 = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            boxes.append((c, make_box(x0 * wd, y0 * h, x1 * wd, y1 * h, where)))
        w.add(ip.stem, image, [], boxes=boxes)


def _import_voc(
    src: Path, w: _Writer, images: Path | None, cls: int | None, label_width: float | None
) -> None:
    files = sorted(src.glob("*.xml")) if src.is_dir() else [src]
    if not files or not files[0].is_file():
        raise ValueError(f"voc format expects a Pascal VOC XML file or a folder of them, got {src}")
    what = "a Pascal VOC annotation"
    for xml in files:
        root = _xml_root(xml, "annotation", what)
        name = (root.findtext("filename") or "").strip() or f"{xml.stem}.jpg"
        if images is not None:
            folders = [images]
        else:
            folders = [xml.parent.parent / "JPEGImages", xml.parent]
        ip = _frame(name, folders, str(xml))
        image = read_grey(ip)
        size = root.find("size")
        if size is not None:
            dw, dh = (
                _number(size.findtext(a), a, str(xml)) if size.findtext(a) else None
                for a in ("width", "height")
            )
            _check_size(image, dw, dh, name, str(xml))
        boxes: Instances = []
        for k, obj in enumerate(root.findall("object")):
            where = f"{xml} <object> {k}"
            bb = obj.find("bndbox")
            if bb is None:
                raise ValueError(f"{where}: expected a <bndbox> with xmin, ymin, xmax, ymax")
            x0, y0, x1, y1 = (
                _number(bb.findtext(a), a, where) for a in ("xmin", "ymin", "xmax", "ymax")
            )
            c = _shape_class(obj.findtext("name"), where, cls=cls)
            boxes.append((c, make_box(x0, y0, x1, y1, where)))
        w.add(ip.stem, image, [], boxes=boxes)


def _import_keras_yolo3(
    src: Path, w: _Writer, images: Path | None, cls: int | None, label_width: float | None
) -> None:
    if not src.is_file():
        raise ValueError(
            f"keras-yolo3 format expects an annotation file (a line 'path "
            f"x0,y0,x1,y1,c ...' per frame), got {src}"
        )
    table, origin = _class_ids(cls, [src.parent], ("classes.txt", "*_classes.txt"), "keras-yolo3")
    n = 0
    for no, raw in enumerate(src.read_text("utf-8").splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        where = f"{src}:{no}"
        p = Path(parts[0])
        folders = [src.parent] + ([images] if images is not None else [])
        ip = p if p.is_absolute() and p.is_file() else _frame(parts[0], folders, where)
        image = read_grey(ip)
        boxes: Instances = []
        for box in parts[1:]:
            f = box.split(",")
            if len(f) != 5 or not f[4].strip().isdigit():
                raise ValueError(f"{where}: expected boxes 'x0,y0,x1,y1,class_id', got {box!r}")
            x0, y0, x1, y1 = (_number(v, "a coordinate", where) for v in f[:4])
            c = _class_of(int(f[4]), table, cls, origin, where)
            boxes.append((c, make_box(x0, y0, x1, y1, where)))
        w.add(ip.stem, image, [], boxes=boxes)
        n += 1
    if not n:
        raise ValueError(f"{src}: expected a line 'path x0,y0,x1,y1,c ...' per frame, got none")


IMPORTERS: dict[str, Callable[..., None]] = {
    "cvat": _import_cvat,
    "napari": _import_napari,
    "yolo-det": _import_yolo_det,
    "voc": _import_voc,
    "keras-yolo3": _import_keras_yolo3,
}
