"""Importers of real labels into loopline's dataset layout.

Every importer writes the layout of ``loopline synth`` (see ``writers``): ``images/`` (grey
PNG), ``labels/`` (YOLO-seg), ``coco.json`` and ``data.yaml``, plus ``import.json`` (what was
imported, from where, with which options). Importers of mask formats also keep the original
masks as ``masks/<stem>.png``: a 16-bit instance map in which pixel value ``k`` marks the
``k``-th instance of ``labels/<stem>.txt`` (0 = background). ``loopline eval`` measures thin
human strokes (tanaka) on these originals rather than on label polygons. Where the source
labels structures that are *not* defects to find (tanaka's ``st/``: planar faults and slip
traces), they are kept as ``distractors/<stem>.png``: a binary 8-bit mask, 255 on a
distractor pixel, 0 elsewhere, one per frame that has such labels (an all-zero mask means the
frame was labelled and has none). They never become instances; ``loopline eval`` reports the
share of predicted line pixels on them (``slip_trace_confusion``).

Formats (``fmt``):

``tanaka``
    ``SOURCE/original/*.png`` frames and ``SOURCE/ds/*.png`` palette masks of the same stem
    (suffix case ignored); line pixels are ``np.array(Image.open(p)) != 0``; one dislocation
    per 8-connected component. With ``label_width`` the label polygon is the component's
    skeleton redrawn at that width (the synthetic labels' shape); without it, its outline.
    ``SOURCE/st/*.png`` palette masks (planar faults / slip traces), where present, become
    ``distractors/<stem>.png``. A source with ``st/`` and no ``ds/`` (tanaka-twip-086um)
    imports every frame of ``st/`` with no instances and its distractor mask.
``masks``
    ``SOURCE/*.png`` binary masks (0 / non-zero) and ``images=DIR`` with frames of the same
    stem; one instance of class ``cls`` per 8-connected component (e.g. creme ``masks1/``).
``coco``
    ``SOURCE`` is a COCO instances JSON with polygon segmentations; frames are looked up by
    ``file_name`` under ``images`` (default: the JSON's folder). Categories map to classes by
    name ("loop" in the name: loop; "disloc": dislocation) unless ``cls`` names one class.
``labelme``
    ``SOURCE`` is a labelme JSON file or a folder of them. ``polygon`` shapes become instances
    (class from the label name as for COCO, or ``cls``); ``linestrip`` and ``line`` shapes
    become dislocations buffered to ``label_width``; ``circle`` shapes (centre, a point on the
    rim) become loops; ``rectangle`` shapes become box-only instances (class from the label).
    A line or circle whose label names a class takes that class. Frames come from
    ``images``, ``imagePath`` or the embedded ``imageData``.
``cvat``, ``napari``, ``yolo-det``, ``voc``, ``keras-yolo3``
    In ``importers_formats``: CVAT for images 1.1 XML, napari Shapes CSV / Labels ``.npy``,
    and three box-only formats (YOLO detection, Pascal VOC XML, keras-yolo3 lines).

Box-only instances (rectangles, boxes) carry no outline. Their line in ``labels/<stem>.txt``
is a YOLO detection line, ``class cx cy w h`` (5 fields, normalised: ``yolo_box_line``),
after the frame's polygon lines; their COCO annotation has ``"box_only": true`` and an empty
``segmentation``. ``read_labels`` reads both kinds; ``loopline eval`` scores a dataset with
box-only labels by box metrics only.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..io.frames import IMAGE_SUFFIXES
from .layout import (
    BOX_FIELDS,
    CLASSES,
    LABEL_WIDTH_PX,
    CocoBuilder,
    box_polygon,
    dump_json,
    read_labels,
    write_data_yaml,
    write_image,
    yolo_box_line,
    yolo_line,
)
from .raster import line_polygon

logger = logging.getLogger(__name__)

__all__ = [
    "BOX_FIELDS", "FORMATS", "ImportResult", "box_polygon", "default_label_width", "import_dataset",
    "read_labels", "yolo_box_line",
]  # fmt: skip

FORMATS: tuple[str, ...] = (
    "tanaka", "masks", "coco", "labelme", "cvat", "napari", "yolo-det", "voc", "keras-yolo3",
)  # fmt: skip

_EIGHT = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote: dataset folder, frames, labelled instances, skipped shapes."""

    out: Path
    images: int
    instances: int
    skipped: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    distractors: int = 0
    box_only: int = 0


# ---------------------------------------------------------------------------------------------
# helpers


def class_index(cls: str | int | None) -> int | None:
    """``"dislocation"``, ``"loop"``, ``0``, ``1`` (or None) -> class index (or None)."""
    if cls is None:
        return None
    if isinstance(cls, int | np.integer) or (isinstance(cls, str) and cls.isdigit()):
        k = int(cls)
        if 0 <= k < len(CLASSES):
            return k
    elif cls in CLASSES:
        return CLASSES.index(cls)
    raise ValueError(
        f"class must be one of {', '.join(CLASSES)} (or 0..{len(CLASSES) - 1}), got {cls!r}"
    )


def _class_from_name(name: str, where: str) -> int:
    low = name.lower()
    if "loop" in low:
        return 1
    if "disloc" in low:
        return 0
    raise ValueError(
        f"{where}: cannot tell the class of label {name!r} (expected a name containing "
        f"'dislocation' or 'loop'); pass --class to give every instance one class"
    )


def _shape_class(label: Any, where: str, *, cls: int | None, default: int | None = None) -> int:
    """Class of a drawn shape: ``cls`` if given, else the one its label names.

    ``default`` is the class of a shape whose kind tells it (a line: dislocation; a circle or
    ellipse: loop) where the label names none; without it such a label is an error.
    """
    if cls is not None:
        return cls
    name = "" if label is None else str(label)
    if default is not None and "loop" not in name.lower() and "disloc" not in name.lower():
        return default
    return _class_from_name(name, where)


def _find(folder: Path, stem: str) -> Path | None:
    """The image file of ``stem`` in ``folder``, whatever the case of its suffix."""
    for p in sorted(folder.iterdir()):
        if p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            return p
    return None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_grey(path: Path) -> np.ndarray:
    """Read a frame as (H, W) grey uint8 or uint16 (colour frames are converted)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path} (expected PNG, TIFF, JPEG or BMP)")
    return _grey(img, str(path))


def _grey(img: np.ndarray, where: str) -> np.ndarray:
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.shape[2] == 3 else img[:, :, 0]
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{where}: expected an 8- or 16-bit image, got {img.dtype}")
    return img


def read_mask(path: Path) -> np.ndarray:
    """Non-zero pixels of a mask image (palette, grey or RGB) as (H, W) bool."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.array(im)
    return a.any(axis=2) if a.ndim == 3 else a != 0


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components: label image (H, W) int32 (0 = background) and their count."""
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return lab, n - 1


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """Outline polygon (K, 2) px of a one-component mask, K >= 3.

    The outer contour (pixel centres, OpenCV's convention, as ``raster.polygon_mask`` draws
    it); a component too small for a contour of three points gets its bounding box.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)  # fmt: skip
    if contours:
        c = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))[:, 0, :].astype(float)
        if len(c) >= 3:
            return c
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def skeleton_polygon(mask: np.ndarray, width: float) -> np.ndarray:
    """Label polygon of a line mask: its skeleton's longest path buffered to ``width`` px."""
    from ..geometry import skeleton_polyline

    path = skeleton_polyline(mask)
    if len(path) < 2:
        x, y = path[0] if len(path) else np.argwhere(mask)[0][::-1]
        path = np.array([[x - 0.5, y], [x + 0.5, y]], float)
    return line_polygon(path, width)


def ellipse_outline(centre: np.ndarray, u: np.ndarray, v: np.ndarray, n: int = 48) -> np.ndarray:
    """Outline (n, 2) px of the ellipse ``centre + cos(t) u + sin(t) v`` (semi-axis vectors px)."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)[:, None]
    return np.asarray(centre, float) + np.cos(t) * np.asarray(u, float) + np.sin(t) * v


def rotated_ellipse(cx: float, cy: float, rx: float, ry: float, angle: float) -> np.ndarray:
    """Outline of an ellipse of semi-axes ``rx``, ``ry`` px turned by ``angle`` degrees (x to y)."""
    a = np.deg2rad(angle)
    u, v = rx * np.array([np.cos(a), np.sin(a)]), ry * np.array([-np.sin(a), np.cos(a)])
    return ellipse_outline(np.array([cx, cy]), u, v)


def make_box(x0: float, y0: float, x1: float, y1: float, where: str) -> np.ndarray:
    """A box ``x0, y0, x1, y1`` px, checked to be finite with x0 < x1 and y0 < y1."""
    b = np.array([x0, y0, x1, y1], float)
    if not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"{where}: expected a box with x0 < x1 and y0 < y1 (px), got "
                         f"{np.round(b, 2).tolist()}")  # fmt: skip
    return b


def make_line(pts: np.ndarray, width: float, where: str) -> np.ndarray:
    """Label polygon of a drawn polyline (K, 2) px: the line buffered to ``width`` px."""
    pts = np.asarray(pts, float).reshape(-1, 2)
    if len(pts) < 2 or not np.isfinite(pts).all():
        raise ValueError(f"{where}: a line needs at least 2 finite points, got {len(pts)}")
    if not np.hypot(*np.diff(pts, axis=0).T).sum() > 0:
        raise ValueError(f"{where}: a line needs a length > 0; all its points are the same")
    return line_polygon(pts, width)


def _instances_from_mask(
    mask: np.ndarray, cls: int, label_width: float | None
) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """One instance per component: (class, polygon) pairs and the uint16 instance map."""
    lab, _ = components(mask)
    return instances_from_labels(lab, cls, label_width)


def instances_from_labels(
    lab: np.ndarray, cls: int, label_width: float | None
) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """One instance per non-zero id of a label image (H, W) int.

    Returns (class, polygon) pairs and the uint16 instance map, the ids renumbered 1..N in
    increasing order (the order of the pairs).
    """
    ids = np.unique(lab)
    ids = ids[ids != 0]
    n = len(ids)
    if n > 65535:
        raise ValueError(f"too many components ({n}) for a 16-bit instance map")
    out = []
    imap = np.zeros(lab.shape, np.uint16)
    for k, i in enumerate(ids, 1):
        comp = lab == i
        imap[comp] = k
        ys, xs = np.nonzero(comp)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = comp[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1]
        off = np.array([max(x0 - 1, 0), max(y0 - 1, 0)], float)
        if label_width is not None:
            poly = skeleton_polygon(crop, label_width) + off
        else:
            poly = mask_polygon(crop) + off
        out.append((cls, poly))
    return out, imap


class _Writer:
    """Writes frames and labels into the dataset layout and counts what it wrote."""

    def __init__(self, out: Path, *, overwrite: bool) -> None:
        self.out = Path(out)
        if (self.out / "coco.json").exists() and not overwrite:
            raise FileExistsError(
                f"{self.out} already holds a dataset; pass --overwrite to replace it"
            )
        for sub in ("images", "labels", "masks", "distractors"):
            if overwrite and (self.out / sub).exists():
                shutil.rmtree(self.out / sub)
        for sub in ("images", "labels"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self.coco = CocoBuilder()
        self.stems: set[str] = set()
        self.images = 0
        self.instances = 0
        self.skipped = 0
        self.distractors = 0
        self.box_only = 0
        self.per_class = dict.fromkeys(CLASSES, 0)

    def add(
        self,
        stem: str,
        image: np.ndarray,
        instances: list[tuple[int, np.ndarray]],
        instance_map: np.ndarray | None = None,
        distractor: np.ndarray | None = None,
        *,
        boxes: list[tuple[int, np.ndarray]] | None = None,
    ) -> None:
        """Write one frame: polygon ``instances``, box-only ``boxes`` (class, ``x0, y0, x1, y1``
        px); value ``k`` of ``instance_map`` marks the ``k``-th of ``instances``."""
        if stem in self.stems:
            raise ValueError(f"two frames share the name {stem!r}; frame names must be unique")
        self.stems.add(stem)
        h, w = image.shape[:2]
        kept = []
        for c, b in boxes or []:
            x0, x1 = np.clip([b[0], b[2]], 0.0, w)
            y0, y1 = np.clip([b[1], b[3]], 0.0, h)
            if x1 > x0 and y1 > y0:
                kept.append((c, np.array([x0, y0, x1, y1])))
            else:
                logger.warning("%s: a box %s lies outside the %dx%d frame; skipped", stem,
                               np.round(b, 1).tolist(), w, h)  # fmt: skip
                self.skipped += 1
        name = f"images/{stem}.png"
        write_image(self.out / name, image)
        lines = [yolo_line(c, p, w, h) for c, p in instances]
        lines += [yolo_box_line(c, b, w, h) for c, b in kept]
        (self.out / "labels" / f"{stem}.txt").write_text("".join(s + "\n" for s in lines), "utf-8")
        image_id = self.coco.add_image(name, w, h)
        for c, poly in instances:
            self.coco.add(image_id, c, poly, w, h)
            self.per_class[CLASSES[c]] += 1
        for c, b in kept:
            self.coco.add(image_id, c, box_polygon(b), w, h, segmentation=[], box_only=True)
            self.per_class[CLASSES[c]] += 1
        self.box_only += len(kept)
        if instance_map is not None:
            (self.out / "masks").mkdir(exist_ok=True)
            write_image(self.out / "masks" / f"{stem}.png", instance_map.astype(np.uint16))
        if distractor is not None:
            (self.out / "distractors").mkdir(exist_ok=True)
            write_image(self.out / "distractors" / f"{stem}.png",
                        np.where(distractor, 255, 0).astype(np.uint8))  # fmt: skip
            self.distractors += 1
        self.images += 1
        self.instances += len(instances) + len(kept)

    def finish(self, meta: dict[str, Any]) -> ImportResult:
        if self.images == 0:
            raise ValueError(f"no frames imported from {meta['source']}")
        self.coco.write(self.out / "coco.json")
        write_data_yaml(self.out)
        meta = dict(meta, images=self.images, instances=self.instances, skipped=self.skipped,
                    per_class=self.per_class, classes=list(CLASSES),
                    distractors=self.distractors, box_only=self.box_only)  # fmt: skip
        dump_json(meta, self.out / "import.json", indent=1)
        logger.debug("imported %d frames, %d instances into %s", self.images, self.instances,
                     self.out)  # fmt: skip
        return ImportResult(out=self.out, images=self.images, instances=self.instances,
                            skipped=self.skipped, per_class=dict(self.per_class),
                            distractors=self.distractors, box_only=self.box_only)  # fmt: skip


def _check_shape(image: np.ndarray, mask: np.ndarray, ipath: Path, mpath: Path) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(
            f"mask {mpath} has shape {mask.shape[:2]} but its frame {ipath} has shape "
            f"{image.shape[:2]} (H, W); they must match"
        )


# ---------------------------------------------------------------------------------------------
# formats


def _import_tanaka(src: Path, w: _Writer, images: Path | None, cls: int | None,
                   label_width: float | None) -> None:  # fmt: skip
    ds, st = src / "ds", src / "st"
    orig = images if images is not None else src / "original"
    if not orig.is_dir() or not (ds.is_dir() or st.is_dir()):
        missing = orig if not orig.is_dir() else ds
        raise ValueError(
            f"tanaka format expects SOURCE/original/*.png frames and SOURCE/ds/*.png (or, "
            f"for distractors only, SOURCE/st/*.png) palette masks; {missing} is not a folder"
        )
    # Frames are those with line labels; without ds/, those with st/ labels (no instances).
    labelled = ds if ds.is_dir() else st
    masks = _images_in(labelled)
    if not masks:
        raise ValueError(f"no mask images (.png) in {labelled}")
    for mp in masks:
        ip = _find(orig, mp.stem)
        if ip is None:
            raise ValueError(f"mask {mp} has no frame named {mp.stem}.* in {orig}")
        image = read_grey(ip)
        inst, imap = [], None
        if labelled is ds:
            mask = read_mask(mp)
            _check_shape(image, mask, ip, mp)
            inst, imap = _instances_from_mask(mask, 0 if cls is None else cls, label_width)
        sp = _find(st, mp.stem) if st.is_dir() else None
        distractor = None
        if sp is not None:
            distractor = read_mask(sp)
            _check_shape(image, distractor, ip, sp)
        elif st.is_dir():
            logger.debug("%s: no st/ mask for frame %s; no distractors kept", src, mp.stem)
        w.add(mp.stem, image, inst, imap, distractor)


def _import_masks(src: Path, w: _Writer, images: Path | None, cls: int | None,
                  label_width: float | None) -> None:  # fmt: skip
    if not src.is_dir():
        raise ValueError(f"masks format expects a folder of binary mask images, got {src}")
    if images is None or not Path(images).is_dir():
        raise ValueError(
            f"masks format needs --images DIR, the folder of frames named like the masks in "
            f"{src}; got {images}"
        )
    if cls is None:
        raise ValueError("masks format needs --class (dislocation or loop) for its instances")
    masks = _images_in(src)
    if not masks:
        raise ValueError(f"no mask images in {src}")
    for mp in masks:
        ip = _find(Path(images), mp.stem)
        if ip is None:
            raise ValueError(f"mask {mp} has no frame named {mp.stem}.* in {images}")
        image, mask = read_grey(ip), read_mask(mp)
        _check_shape(image, mask, ip, mp)
        lw = label_width if cls == 0 else None
        inst, imap = _instances_from_mask(mask, cls, lw)
        w.add(mp.stem, image, inst, imap)


def _polygon(coords: list[float], where: str) -> np.ndarray:
    p = np.asarray(coords, float)
    if p.ndim != 1 or p.size < 6 or p.size % 2:
        raise ValueError(
            f"{where}: a polygon needs an even number (>= 6) of coordinates, got {p.size}"
        )
    if not np.isfinite(p).all():
        raise ValueError(f"{where}: polygon coordinates must be finite numbers")
    return p.reshape(-1, 2)


def _import_coco(src: Path, w: _Writer, images: Path | None, cls: int | None,
                 label_width: float | None) -> None:  # fmt: skip
    if not src.is_file():
        raise ValueError(f"coco format expects a COCO instances JSON file, got {src}")
    try:
        data = json.loads(src.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{src} is not valid JSON: {e}") from None
    need = ("images", "annotations", "categories")
    if not isinstance(data, dict) or any(k not in data for k in need):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{src}: expected a COCO instances JSON with keys {list(need)}, got {got}")
    folder = Path(images) if images is not None else src.parent
    cat_cls = {}
    for c in data["categories"]:
        cat_cls[c["id"]] = cls if cls is not None else None
        if cls is None:
            cat_cls[c["id"]] = _class_from_name(str(c.get("name", "")), f"{src} category {c['id']}")
    by_image: dict[Any, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in sorted(data["images"], key=lambda im: str(im["file_name"])):
        fname = Path(str(im["file_name"]))
        ip = folder / fname
        if not ip.is_file():
            ip = folder / fname.name
        if not ip.is_file():
            raise ValueError(f"{src}: frame {fname} not found in {folder} (pass --images DIR)")
        image = read_grey(ip)
        h, wd = image.shape
        if (im.get("height", h), im.get("width", wd)) != (h, wd):
            raise ValueError(
                f"{src}: image {fname} is declared {im.get('width')}x{im.get('height')} (W x H) "
                f"but the file is {wd}x{h}"
            )
        inst = []
        for a in by_image.get(im["id"], []):
            where = f"{src} annotation {a.get('id')}"
            if a.get("iscrowd", 0):
                w.skipped += 1
                continue
            seg = a.get("segmentation")
            if isinstance(seg, dict):
                raise ValueError(f"{where}: RLE segmentation is not supported; expected polygons "
                                 "(a list of [x1, y1, x2, y2, ...])")  # fmt: skip
            if not isinstance(seg, list) or not seg:
                raise ValueError(f"{where}: expected a polygon segmentation, got {seg!r:.60}")
            parts = [_polygon(s, where) for s in seg]
            if len(parts) > 1:
                logger.debug("%s: %d polygon parts, keeping the largest", where, len(parts))
            poly = max(parts, key=lambda p: cv2.contourArea(p.astype(np.float32)))
            if a["category_id"] not in cat_cls:
                raise ValueError(f"{where}: category_id {a['category_id']} is not in categories")
            inst.append((cat_cls[a["category_id"]], poly))
        w.add(fname.stem, image, inst)


def _labelme_image(path: Path, doc: dict, images: Path | None) -> tuple[str, np.ndarray]:
    ip = doc.get("imagePath")
    stem = Path(ip).stem if ip else path.stem
    if images is not None:
        found = _find(Path(images), stem) or _find(Path(images), path.stem)
        if found is None:
            raise ValueError(f"{path}: no frame named {stem}.* in {images}")
        return found.stem, read_grey(found)
    if ip and (path.parent / ip).is_file():
        return stem, read_grey(path.parent / ip)
    if doc.get("imageData"):
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(doc["imageData"]))) as im:
            a = np.array(im)
        if a.ndim == 3:
            a = cv2.cvtColor(a[:, :, :3], cv2.COLOR_RGB2GRAY)
        return stem, _grey(a, str(path))
    raise ValueError(f"{path}: frame {ip!r} not found and no imageData (pass --images DIR)")


def _import_labelme(src: Path, w: _Writer, images: Path | None, cls: int | None,
                    label_width: float | None) -> None:  # fmt: skip
    files = sorted(src.glob("*.json")) if src.is_dir() else [src]
    if not files or not files[0].is_file():
        raise ValueError(
            f"labelme format expects a labelme JSON file or a folder of them, got {src}"
        )
    width = label_width if label_width is not None else default_label_width()
    for path in files:
        try:
            doc = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(doc, dict) or "shapes" not in doc:
            raise ValueError(f"{path}: expected a labelme JSON with 'shapes', got no 'shapes' key")
        if not isinstance(doc.get("shapes"), list):
            raise ValueError(f"{path}: 'shapes' must be a list of shapes, got "
                             f"{type(doc['shapes']).__name__}")  # fmt: skip
        stem, image = _labelme_image(path, doc, images)
        inst, boxes = [], []
        for k, s in enumerate(doc["shapes"]):
            where = f"{path} shape {k}"
            if not isinstance(s, dict):
                raise ValueError(f"{where}: expected a shape object, got {type(s).__name__}")
            kind = s.get("shape_type") or "polygon"
            try:
                pts = np.asarray(s.get("points", []), float).reshape(-1, 2)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: 'points' must be a list of [x, y] pairs, got "
                                 f"{s.get('points')!r:.60}") from None  # fmt: skip
            label = s.get("label")
            if kind == "polygon":
                c = _shape_class(label, where, cls=cls)
                inst.append((c, _polygon(pts.ravel().tolist(), where)))
            elif kind in ("linestrip", "line"):
                c = _shape_class(label, where, cls=cls, default=0)
                inst.append((c, make_line(pts, width, where)))
            elif kind == "circle":
                if len(pts) != 2 or not np.isfinite(pts).all():
                    raise ValueError(f"{where}: a circle needs 2 points (centre, a point on the "
                                     f"rim), got {len(pts)}")  # fmt: skip
                r = float(np.hypot(*(pts[1] - pts[0])))
                if r <= 0:
                    raise ValueError(f"{where}: a circle needs a radius > 0, got 0")
                c = _shape_class(label, where, cls=cls, default=1)
                inst.append((c, ellipse_outline(pts[0], (r, 0.0), (0.0, r))))
            elif kind == "rectangle":
                if len(pts) != 2:
                    raise ValueError(f"{where}: a rectangle needs 2 points (opposite corners), "
                                     f"got {len(pts)}")  # fmt: skip
                (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
                boxes.append((_shape_class(label, where, cls=cls),
                              make_box(x0, y0, x1, y1, where)))  # fmt: skip
            else:
                logger.warning("%s: skipping a %r shape (not an instance outline)", where, kind)
                w.skipped += 1
        w.add(stem, image, inst, boxes=boxes)


def default_label_width() -> float:
    return LABEL_WIDTH_PX


_IMPORTERS = {
    "tanaka": _import_tanaka,
    "masks": _import_masks,
    "coco": _import_coco,
    "labelme": _import_labelme,
}


def _importer(fmt: str):
    """The reader of ``fmt``; the formats of ``importers_formats`` are imported on demand."""
    if fmt in _IMPORTERS:
        return _IMPORTERS[fmt]
    from .formats import IMPORTERS

    return IMPORTERS[fmt]


def import_dataset(
    source: Path | str,
    out: Path | str,
    *,
    fmt: str,
    images: Path | str | None = None,
    cls: str | int | None = None,
    label_width: float | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Convert real labels in ``source`` into a loopline dataset in ``out``.

    Parameters
    ----------
    source : Path
        Folder or file of labels; what is expected depends on ``fmt`` (module docstring).
    out : Path
        Dataset folder to write.
    fmt : {"tanaka", "masks", "coco", "labelme", "cvat", "napari", "yolo-det", "voc", \
"keras-yolo3"}
    images : Path, optional
        Folder of frames (required for ``masks``).
    cls : {"dislocation", "loop", 0, 1}, optional
        Class of every instance (required for ``masks`` and napari Labels layers; default
        dislocation for ``tanaka``, by label name for ``coco``, ``labelme``, ``cvat``,
        ``voc`` and the class names of ``yolo-det`` and ``keras-yolo3``).
    label_width : float, optional
        Width (px) at which line labels are redrawn from their skeletons (``tanaka``,
        ``masks`` of dislocations) or buffered (labelme, CVAT and napari lines; default:
        the synthetic generator's ``label_width``).
    overwrite : bool
        Replace a dataset already in ``out``.

    Returns
    -------
    ImportResult

    Raises
    ------
    ValueError
        For input that is not in the expected form; the message names what was expected and
        what arrived.
    FileExistsError
        If ``out`` holds a dataset and ``overwrite`` is false.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"source {source} does not exist")
    if label_width is not None and not 0.5 <= label_width <= 64:
        raise ValueError(f"label_width must lie in [0.5, 64] px, got {label_width}")
    c = class_index(cls)
    if fmt == "tanaka" and c is None:
        c = 0
    w = _Writer(Path(out), overwrite=overwrite)
    _importer(fmt)(source, w, Path(images) if images is not None else None, c, label_width)
    meta = {
        "format": fmt, "source": str(source),
        "images_from": None if images is None else str(images),
        "class": None if c is None else CLASSES[c], "label_width": label_width,
        "masks": (w.out / "masks").is_dir(),
    }  # fmt: skip
    return w.finish(meta)
