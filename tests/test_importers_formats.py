"""Imports of what other tools write (labelme shapes, CVAT, napari, YOLO detection, Pascal VOC,
keras-yolo3), and ``loopline eval`` on the box-only datasets they make."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console

from loopline.cli import main
from loopline.datasets.importers import import_dataset, read_labels
from loopline.datasets.raster import polygon_mask
from loopline.engines.base import Detections
from loopline.evaluation.command import _table, write_json
from loopline.evaluation.data import Dataset, Frame
from loopline.evaluation.evaluate import BOX_ONLY_NOTE, evaluate

H, W = 48, 64


def _frame(path: Path, h: int = H, w: int = W) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w), 120, np.uint8))
    return path


def _labels(root: Path, stem: str, shape: tuple[int, int] = (H, W)):
    pairs, box_only = read_labels(root / "labels" / f"{stem}.txt", shape[1], shape[0])
    return [c for c, _ in pairs], [p for _, p in pairs], box_only


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _ellipse_mask(centre, axes, angle, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, centre, axes, angle, 0, 360, 1, -1)
    return m.astype(bool)


def _box_of(poly: np.ndarray) -> list[float]:
    return [*poly.min(axis=0), *poly.max(axis=0)]


def _coco(root: Path) -> dict:
    return json.loads((root / "coco.json").read_text())


# ---------------------------------------------------------------------------------------------
# labelme


def test_labelme_lines_circles_loop_polygons_and_rectangles(tmp_path: Path):
    _frame(tmp_path / "lm" / "f.png")
    doc = {
        "imagePath": "f.png",
        "shapes": [
            {"label": "dislocation", "shape_type": "line", "points": [[5, 40], [45, 40]]},
            {"label": "loop", "shape_type": "circle", "points": [[30, 15], [36, 15]]},
            {"label": "hcp loop", "shape_type": "polygon",
             "points": [[50, 5], [60, 5], [60, 15], [50, 15]]},
            {"label": "loop", "shape_type": "rectangle", "points": [[20, 30], [4, 22]]},
        ],
    }  # fmt: skip
    (tmp_path / "lm" / "f.json").write_text(json.dumps(doc))
    res = import_dataset(tmp_path / "lm" / "f.json", tmp_path / "out", fmt="labelme",
                         label_width=4)  # fmt: skip
    assert (res.images, res.instances, res.box_only, res.per_class) == (
        1, 4, 1, {"dislocation": 1, "loop": 3})  # fmt: skip
    classes, polys, box_only = _labels(res.out, "f")
    assert classes == [0, 1, 1, 1] and box_only.tolist() == [False, False, False, True]
    line = polygon_mask(polys[0], (H, W))
    assert line.sum() == pytest.approx(40 * 5, rel=0.15)  # 40 px long, 4 px (+ edge) wide
    assert _iou(polygon_mask(polys[1], (H, W)), _ellipse_mask((30, 15), (6, 6), 0)) > 0.85
    np.testing.assert_allclose(_box_of(polys[3]), [4, 22, 20, 30], atol=1e-3)
    ann = _coco(res.out)["annotations"]
    assert [a.get("box_only", False) for a in ann] == [False, False, False, True]
    assert ann[3]["segmentation"] == [] and ann[3]["bbox"] == [4, 22, 16, 8]
    assert json.loads((res.out / "import.json").read_text())["box_only"] == 1


def test_labelme_rectangle_needs_a_class_and_a_bad_circle_is_named(tmp_path: Path):
    _frame(tmp_path / "f.png")
    doc = {
        "imagePath": "f.png",
        "shapes": [{"label": "box", "shape_type": "rectangle", "points": [[1, 1], [5, 5]]}],
    }
    (tmp_path / "f.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"f\.json shape 0: cannot tell the class of label 'box'"):
        import_dataset(tmp_path / "f.json", tmp_path / "o1", fmt="labelme")
    res = import_dataset(tmp_path / "f.json", tmp_path / "o2", fmt="labelme", cls="loop")
    assert res.box_only == 1
    doc["shapes"] = [{"label": "loop", "shape_type": "circle", "points": [[1, 1]]}]
    (tmp_path / "f.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"f\.json shape 0: a circle needs 2 points .* got 1"):
        import_dataset(tmp_path / "f.json", tmp_path / "o3", fmt="labelme")


# ---------------------------------------------------------------------------------------------
# CVAT for images 1.1

_CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>tem</name><mode>annotation</mode></task></meta>
  <image id="0" name="{name}" width="64" height="48">
    <polyline label="dislocation" points="5.0,10.0;30.0,12.0;55.0,10.0" occluded="0" z_order="0">
    </polyline>
    <polygon label="Frank loop" points="40,30;50,30;50,40;40,40" occluded="0"></polygon>
    <ellipse label="loop" cx="20" cy="32" rx="8" ry="4" rotation="30" occluded="0"></ellipse>
    <box label="loop" xtl="2.5" ytl="40" xbr="12.5" ybr="46" occluded="0"></box>
    <points label="loop" points="3,3"></points>
    <tag label="good_frame" source="manual"></tag>
  </image>
</annotations>
"""


def test_cvat_polyline_polygon_ellipse_box(tmp_path: Path):
    src = tmp_path / "task"
    _frame(src / "images" / "frame_000.png")
    (src / "annotations.xml").write_text(_CVAT.format(name="frame_000.png"))
    res = import_dataset(src, tmp_path / "out", fmt="cvat", label_width=4)
    assert (res.images, res.instances, res.box_only, res.skipped) == (1, 4, 1, 1)
    classes, polys, box_only = _labels(res.out, "frame_000")
    assert classes == [0, 1, 1, 1] and box_only.tolist() == [False, False, False, True]
    line = polygon_mask(polys[0], (H, W))
    assert line.sum() == pytest.approx(50 * 5, rel=0.15)
    assert line[11, 30] and not line[20, 30]  # follows the polyline's points (x, y)
    np.testing.assert_allclose(_box_of(polys[1]), [40, 30, 50, 40], atol=1e-3)
    # CVAT's rotation turns x towards y (clockwise on screen), as cv2.ellipse's angle does.
    assert _iou(polygon_mask(polys[2], (H, W)), _ellipse_mask((20, 32), (8, 4), 30)) > 0.8
    np.testing.assert_allclose(_box_of(polys[3]), [2.5, 40, 12.5, 46], atol=1e-3)


def test_cvat_errors_name_the_file_and_what_was_expected(tmp_path: Path):
    _frame(tmp_path / "images" / "a.png")
    xml = tmp_path / "annotations.xml"
    xml.write_text("<annotations><image name='a.png'>")
    with pytest.raises(ValueError, match=r"annotations\.xml is not valid XML .* expected a CVAT"):
        import_dataset(xml, tmp_path / "o1", fmt="cvat")
    xml.write_text(_CVAT.format(name="a.png").replace("5.0,10.0;", "5.0 10.0;"))
    with pytest.raises(ValueError, match=r"annotations\.xml image 'a\.png' <polyline> 0: points "
                                         r"must be 'x1,y1;x2,y2;\.\.\.'"):  # fmt: skip
        import_dataset(xml, tmp_path / "o2", fmt="cvat")
    xml.write_text("<annotations><track id='0' label='loop'></track></annotations>")
    with pytest.raises(ValueError, match=r"got CVAT for video \(<track> elements\)"):
        import_dataset(tmp_path, tmp_path / "o3", fmt="cvat")
    xml.write_text(_CVAT.format(name="a.png").replace('width="64"', 'width="65"'))
    with pytest.raises(ValueError, match=r"frame a\.png is declared 65x48 \(W x H\) but the file"):
        import_dataset(xml, tmp_path / "o4", fmt="cvat")


# ---------------------------------------------------------------------------------------------
# napari


def _napari_csv(path: Path, shapes: list[tuple[str, list[tuple[float, float]]]]) -> None:
    """A Shapes layer as napari's builtin writer saves it: vertices as (row, col) = (y, x)."""
    rows = ["index,shape-type,vertex-index,axis-0,axis-1"]
    for i, (kind, pts) in enumerate(shapes):
        rows += [f"{i},{kind},{k},{y},{x}" for k, (x, y) in enumerate(pts)]
    path.write_text("\n".join(rows) + "\n")


def test_napari_shapes_csv_and_labels_npy(tmp_path: Path):
    src = tmp_path / "nap"
    _frame(src / "a.png")
    _frame(src / "b.png")
    _frame(src / "unlabelled.png")
    ex0, ey0, ex1, ey1 = 30, 20, 50, 30  # the ellipse's bounding box (x, y)
    _napari_csv(src / "a.csv", [
        ("path", [(5, 40), (25, 42), (45, 40)]),
        ("line", [(5, 5), (5, 35)]),
        ("polygon", [(52, 2), (62, 2), (62, 12)]),
        ("ellipse", [(ex0, ey0), (ex1, ey0), (ex1, ey1), (ex0, ey1)]),
        ("rectangle", [(10, 10), (20, 10), (20, 16), (10, 16)]),
    ])  # fmt: skip
    lab = np.zeros((H, W), np.int32)
    lab[5:15, 5:15] = 7  # ids need not be consecutive
    lab[30:40, 40:52] = 3
    np.save(src / "b.npy", lab)
    with pytest.raises(ValueError, match=r"b\.npy: a napari Labels layer carries no classes; "
                                         r"pass --class"):  # fmt: skip
        import_dataset(src, tmp_path / "o1", fmt="napari")
    (src / "b.npy").unlink()
    res = import_dataset(src, tmp_path / "out", fmt="napari", label_width=4)
    assert (res.images, res.instances, res.box_only) == (1, 5, 1)  # unlabelled: not imported
    classes, polys, box_only = _labels(res.out, "a")
    assert classes == [0, 0, 1, 1, 1] and box_only.tolist() == [False] * 4 + [True]
    path = polygon_mask(polys[0], (H, W))
    assert path[41, 25] and not path[25, 41]  # axis-0 is y: not transposed
    vertical = polygon_mask(polys[1], (H, W))
    assert vertical.sum() == pytest.approx(30 * 5, rel=0.15) and vertical[20, 5]
    ell = _ellipse_mask((40, 25), (10, 5), 0)
    assert _iou(polygon_mask(polys[3], (H, W)), ell) > 0.85
    np.testing.assert_allclose(_box_of(polys[4]), [10, 10, 20, 16], atol=1e-3)

    np.save(src / "b.npy", lab)
    (src / "a.csv").unlink()
    res = import_dataset(src, tmp_path / "out2", fmt="napari", cls="loop")
    assert (res.images, res.instances, res.box_only) == (1, 2, 0)
    classes, polys, _ = _labels(res.out, "b")
    imap = cv2.imread(str(res.out / "masks" / "b.png"), cv2.IMREAD_UNCHANGED)
    for k, old in enumerate((3, 7), 1):  # ids renumbered in increasing order
        assert _iou(polygon_mask(polys[k - 1], (H, W)), lab == old) > 0.95
        np.testing.assert_array_equal(imap == k, lab == old)


def test_napari_errors_name_the_file_and_what_was_expected(tmp_path: Path):
    _frame(tmp_path / "a.png")
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    with pytest.raises(
        ValueError,
        match=r"a\.csv: expected a napari Shapes CSV with columns "
        r"index,shape-type,vertex-index,axis-0,axis-1, got x,y",
    ):
        import_dataset(tmp_path, tmp_path / "o1", fmt="napari")
    _napari_csv(tmp_path / "a.csv", [("path", [(1, 1), (5, 5)])])
    (tmp_path / "a.csv").write_text((tmp_path / "a.csv").read_text().replace("5,5", "5,five"))
    with pytest.raises(ValueError, match=r"a\.csv:3: axis-1 must be a number, got 'five'"):
        import_dataset(tmp_path, tmp_path / "o2", fmt="napari")
    (tmp_path / "a.csv").unlink()
    np.save(tmp_path / "a.npy", np.zeros((10, 10), np.uint8))
    with pytest.raises(
        ValueError,
        match=r"a\.npy: expected an integer label image of the frame's "
        r"shape \(48, 64\) \(H, W\), got uint8 \(10, 10\)",
    ):
        import_dataset(tmp_path, tmp_path / "o3", fmt="napari", cls="loop")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# box-only formats


@pytest.fixture
def yolo_det(tmp_path: Path) -> Path:
    """An ultralytics-style detection set: images/ and labels/ side by side, names in data.yaml."""
    root = tmp_path / "det"
    _frame(root / "images" / "a.png")
    _frame(root / "images" / "b.png")
    (root / "labels").mkdir()
    # a: a loop box x 16..32, y 12..24; a dislocation box x 0..64, y 38..42. b: no objects.
    (root / "labels" / "a.txt").write_text("1 0.375 0.375 0.25 0.25\n0 0.5 0.8333333 1 0.0833333\n")
    (root / "labels" / "b.txt").write_text("")
    (root / "data.yaml").write_text("names:\n  0: dislocation\n  1: small loop\n")
    return root


def test_yolo_detection_boxes(yolo_det: Path, tmp_path: Path):
    res = import_dataset(yolo_det / "labels", tmp_path / "out", fmt="yolo-det")
    assert (res.images, res.instances, res.box_only, res.per_class) == (
        2, 2, 2, {"dislocation": 1, "loop": 1})  # fmt: skip
    classes, polys, box_only = _labels(res.out, "a")
    assert classes == [1, 0] and box_only.all()
    np.testing.assert_allclose(_box_of(polys[0]), [16, 12, 32, 24], atol=1e-3)
    np.testing.assert_allclose(_box_of(polys[1]), [0, 38, 64, 42], atol=1e-3)
    assert (res.out / "labels" / "b.txt").read_text() == ""  # labelled, nothing there
    assert all(a["box_only"] and a["segmentation"] == [] for a in _coco(res.out)["annotations"])


def test_yolo_detection_errors(yolo_det: Path, tmp_path: Path):
    lab = yolo_det / "labels" / "a.txt"
    lab.write_text("1 0.1 0.1 0.2 0.1 0.2 0.2\n")  # a YOLO-seg polygon line
    with pytest.raises(ValueError, match=r"a\.txt:1: expected 5 fields 'class cx cy w h' \(YOLO "
                                         r"detection\), got 7"):  # fmt: skip
        import_dataset(yolo_det / "labels", tmp_path / "o1", fmt="yolo-det")
    lab.write_text("2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"a\.txt:1: class id 2 is not named in .*data\.yaml"):
        import_dataset(yolo_det / "labels", tmp_path / "o2", fmt="yolo-det")
    (yolo_det / "data.yaml").unlink()
    with pytest.raises(ValueError, match="yolo-det labels give class ids, not names: pass --class"):
        import_dataset(yolo_det / "labels", tmp_path / "o3", fmt="yolo-det")


_VOC = """<annotation>
  <folder>VOC</folder><filename>{name}</filename>
  <size><width>64</width><height>48</height><depth>1</depth></size>
  <object><name>loop</name><difficult>0</difficult>
    <bndbox><xmin>10</xmin><ymin>8</ymin><xmax>22</xmax><ymax>20</ymax></bndbox></object>
  <object><name>dislocation</name>
    <bndbox><xmin>30.5</xmin><ymin>2</ymin><xmax>60</xmax><ymax>44</ymax></bndbox></object>
</annotation>
"""


def test_pascal_voc_boxes(tmp_path: Path):
    root = tmp_path / "VOC"
    _frame(root / "JPEGImages" / "f1.png")  # the XML names f1.jpg: found by stem
    (root / "Annotations").mkdir()
    (root / "Annotations" / "f1.xml").write_text(_VOC.format(name="f1.jpg"))
    res = import_dataset(root / "Annotations", tmp_path / "out", fmt="voc")
    assert (res.images, res.instances, res.box_only) == (1, 2, 2)
    classes, polys, box_only = _labels(res.out, "f1")
    assert classes == [1, 0] and box_only.all()
    np.testing.assert_allclose(_box_of(polys[0]), [10, 8, 22, 20], atol=1e-3)
    np.testing.assert_allclose(_box_of(polys[1]), [30.5, 2, 60, 44], atol=1e-3)


def test_pascal_voc_errors(tmp_path: Path):
    _frame(tmp_path / "f1.png")
    xml = tmp_path / "f1.xml"
    xml.write_text(_VOC.format(name="f1.png").replace("<xmax>22</xmax>", ""))
    with pytest.raises(ValueError, match=r"f1\.xml <object> 0: xmax must be a number, got None"):
        import_dataset(xml, tmp_path / "o1", fmt="voc")
    xml.write_text("<annotations/>")
    with pytest.raises(ValueError, match=r"f1\.xml: expected a Pascal VOC annotation with root "
                                         r"<annotation>, got <annotations>"):  # fmt: skip
        import_dataset(xml, tmp_path / "o2", fmt="voc")


def test_keras_yolo3_lines(tmp_path: Path):
    _frame(tmp_path / "img" / "k1.png")
    _frame(tmp_path / "img" / "k2.png")
    (tmp_path / "voc_classes.txt").write_text("dislocation\nloop\n")
    ann = tmp_path / "train.txt"
    ann.write_text(f"img/k1.png 4,6,20,18,1 30,2,60,10,0\n{tmp_path / 'img' / 'k2.png'}\n")
    res = import_dataset(ann, tmp_path / "out", fmt="keras-yolo3")
    assert (res.images, res.instances, res.box_only) == (2, 2, 2)
    classes, polys, _ = _labels(res.out, "k1")
    assert classes == [1, 0]
    np.testing.assert_allclose(_box_of(polys[0]), [4, 6, 20, 18], atol=1e-3)
    ann.write_text("img/k1.png 4,6,20,1\n")
    with pytest.raises(ValueError, match=r"train\.txt:1: expected boxes 'x0,y0,x1,y1,class_id', "
                                         r"got '4,6,20,1'"):  # fmt: skip
        import_dataset(ann, tmp_path / "o2", fmt="keras-yolo3")
    ann.write_text("img/k1.png 20,6,4,18,1\n")
    with pytest.raises(ValueError, match=r"train\.txt:1: expected a box with x0 < x1 and y0 < y1"):
        import_dataset(ann, tmp_path / "o3", fmt="keras-yolo3")


def test_cli_import_cvat(tmp_path: Path, capsys):
    _frame(tmp_path / "images" / "a.png")
    (tmp_path / "annotations.xml").write_text(_CVAT.format(name="a.png"))
    argv = ["import", str(tmp_path), "--format", "cvat", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "1 frames, 4 instances (1 dislocation, 3 loop, 1 box-only), 1 shapes skipped" in out


# ---------------------------------------------------------------------------------------------
# eval on box-only labels


def _box_detections(fr: Frame, drop_loops: int = 0) -> Detections:
    """The frame's labelled boxes as detections, less its first ``drop_loops`` loops."""
    keep = np.ones(len(fr.classes), bool)
    keep[np.flatnonzero(fr.classes == 1)[:drop_loops]] = False
    n = int(keep.sum())
    return Detections(
        masks=fr.masks[keep].copy(),
        boxes=fr.boxes[keep].astype(np.float32),
        scores=np.full(n, 0.9, np.float32),
        classes=fr.classes[keep].copy(),
    )


def test_eval_box_only_dataset_scores_boxes_only(yolo_det: Path, tmp_path: Path):
    for k in range(3):  # more loops, so that one missed changes box F1 visibly
        (yolo_det / "labels" / f"c{k}.txt").write_text("1 0.5 0.5 0.25 0.25\n1 0.2 0.2 0.1 0.1\n")
        _frame(yolo_det / "images" / f"c{k}.png")
    out = import_dataset(yolo_det / "labels", tmp_path / "ds", fmt="yolo-det").out
    ds = Dataset(out)
    assert ds.box_only == 8
    fr = ds.frame(0)
    assert fr.box_only is not None and fr.box_only.all()

    res = evaluate(lambda frames: [_box_detections(ds.frame(i)) for i in range(len(frames))], ds,
                   batch=len(ds))  # fmt: skip
    m = res.metrics
    assert m["box_map50"] == pytest.approx(1.0)
    assert m["box_f1_loop"] == pytest.approx(1.0) and m["box_f1_dislocation"] == pytest.approx(1.0)
    assert m["loop_f1"] == pytest.approx(1.0) and m["box_only_labels"] == 8
    for k in ("mask_map50", "mask_map50_95", "lar", "lar_tol", "line_f1_tol", "d_re", "f_re",
              "loop_recall_by_size"):  # fmt: skip
        assert m[k] is None, k

    res = evaluate(lambda fs: [_box_detections(ds.frame(i), drop_loops=1) for i in range(len(fs))],
                   ds, batch=len(ds))  # fmt: skip
    # 7 labelled loops; the first of each frame that has loops is missed (4 of them)
    assert res.metrics["box_f1_loop"] == pytest.approx(2 * 3 / (2 * 3 + 4))
    assert res.metrics["box_f1_dislocation"] == pytest.approx(1.0)

    write_json(res.metrics, tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["note"] == BOX_ONLY_NOTE and data["lar"] is None and data["box_only_labels"] == 8
    con = Console(width=200, record=True)
    con.print(_table(res.metrics, res.details, "t"))
    text = con.export_text()
    assert BOX_ONLY_NOTE in text
    row = next(ln for ln in text.splitlines() if "│ LAR " in ln)
    assert "not computed: box-only labels" in row


def test_eval_polygon_dataset_has_box_f1_and_no_note(tmp_path: Path):
    _frame(tmp_path / "lm" / "f.png")
    doc = {"imagePath": "f.png", "shapes": [
        {"label": "loop", "shape_type": "circle", "points": [[30, 15], [36, 15]]}]}  # fmt: skip
    (tmp_path / "lm" / "f.json").write_text(json.dumps(doc))
    ds = Dataset(import_dataset(tmp_path / "lm", tmp_path / "ds", fmt="labelme").out)
    assert ds.box_only == 0 and ds.frame(0).box_only is None
    res = evaluate(lambda fs: [_box_detections(ds.frame(0))], ds)
    assert res.metrics["box_f1_loop"] == pytest.approx(1.0)
    assert res.metrics["mask_map50"] == pytest.approx(1.0) and res.metrics["box_only_labels"] == 0
    assert res.details["box_only_note"] is None
    write_json(res.metrics, tmp_path / "m.json")
    assert "note" not in json.loads((tmp_path / "m.json").read_text())


def test_command_line_lists_every_format():
    from loopline.datasets import import_command, importers

    assert import_command._FORMATS == importers.FORMATS


def test_read_labels_mixes_polygons_and_boxes(tmp_path: Path):
    p = tmp_path / "a.txt"
    p.write_text("1 0.1 0.1 0.3 0.1 0.3 0.3\n0 0.5 0.5 0.2 0.1\n")
    pairs, box_only = read_labels(p, 100, 50)
    assert [c for c, _ in pairs] == [1, 0] and box_only.tolist() == [False, True]
    np.testing.assert_allclose(_box_of(pairs[1][1]), [40, 22.5, 60, 27.5])
    p.write_text("0 0.5 0.5 0.2 0.1\n1\n")
    with pytest.raises(ValueError, match=r"a\.txt:2: a polygon needs an even number \(>= 6\) of "
                                         r"coordinates, a box 4 \(cx cy w h\), got 0"):  # fmt: skip
        read_labels(p, 100, 50)
    p.write_text("0 0.5 0.5 0.2 1.5\n")
    with pytest.raises(ValueError, match=r"a\.txt:1: coordinates must be normalised to \[0, 1\]"):
        read_labels(p, 100, 50)
