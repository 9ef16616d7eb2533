"""Importers of real labels: tanaka line masks, binary masks, COCO and labelme JSON."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from loopline.cli import main
from loopline.datasets.importers import import_dataset
from loopline.datasets.layout import read_yolo_labels
from loopline.datasets.raster import polygon_mask
from loopline.evaluation.data import Dataset

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def _labels(root: Path, stem: str, shape: tuple[int, int]) -> list[tuple[int, np.ndarray]]:
    h, w = shape
    return read_yolo_labels(root / "labels" / f"{stem}.txt", w, h)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture
def tanaka(tmp_path: Path) -> Path:
    """A tanaka-style folder: an RGB frame and a palette mask with two separate strokes."""
    src = tmp_path / "tanaka"
    (src / "original").mkdir(parents=True)
    (src / "ds").mkdir()
    frame = np.full((60, 80, 3), 150, np.uint8)
    Image.fromarray(frame).save(src / "original" / "f_0001.png")
    idx = np.zeros((60, 80), np.uint8)
    cv2.line(idx, (10, 10), (70, 14), 3, 2)  # palette index 3: a 2 px stroke
    cv2.line(idx, (10, 40), (60, 50), 7, 1)  # index 7: a 1 px stroke
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    pal.save(src / "ds" / "f_0001.PNG")  # upper-case suffix as in the real set
    return src


def test_tanaka_one_dislocation_per_component(tanaka: Path, tmp_path: Path):
    res = import_dataset(tanaka, tmp_path / "out", fmt="tanaka")
    assert (res.images, res.instances) == (1, 2)
    out = res.out
    for sub in ("images/f_0001.png", "labels/f_0001.txt", "masks/f_0001.png", "coco.json",
                "data.yaml", "import.json"):  # fmt: skip
        assert (out / sub).is_file(), sub
    img = cv2.imread(str(out / "images/f_0001.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (60, 80) and img.dtype == np.uint8  # colour -> grey
    imap = cv2.imread(str(out / "masks/f_0001.png"), cv2.IMREAD_UNCHANGED)
    assert imap.dtype == np.uint16 and set(np.unique(imap)) == {0, 1, 2}
    labels = _labels(out, "f_0001", (60, 80))
    assert [c for c, _ in labels] == [0, 0]
    for k, (_, poly) in enumerate(labels, 1):  # outline polygons reproduce the strokes
        assert _iou(polygon_mask(poly, (60, 80)), imap == k) > 0.95
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == 2 and coco["images"][0]["file_name"] == "images/f_0001.png"


def test_tanaka_label_width_redraws_skeletons(tanaka: Path, tmp_path: Path):
    res = import_dataset(tanaka, tmp_path / "out", fmt="tanaka", label_width=6)
    imap = cv2.imread(str(res.out / "masks/f_0001.png"), cv2.IMREAD_UNCHANGED)
    for k, (_, poly) in enumerate(_labels(res.out, "f_0001", (60, 80)), 1):
        m = polygon_mask(poly, (60, 80))
        stroke = imap == k
        assert (m & stroke).sum() / stroke.sum() > 0.9  # the wide label covers the stroke
        length = np.ptp(np.argwhere(stroke)[:, 1])  # both strokes run left to right
        # About 6 px wide: a polygon's raster includes its edge pixels, so 7 px of pixels.
        assert m.sum() == pytest.approx(7 * length, rel=0.15)


def test_tanaka_errors_name_what_was_expected(tmp_path: Path, tanaka: Path):
    with pytest.raises(ValueError, match=r"expects SOURCE/original/\*\.png .* is not a folder"):
        import_dataset(tmp_path, tmp_path / "out", fmt="tanaka")
    (tanaka / "ds" / "g_0002.png").write_bytes((tanaka / "ds" / "f_0001.PNG").read_bytes())
    with pytest.raises(ValueError, match=r"g_0002.png has no frame named g_0002\.\*"):
        import_dataset(tanaka, tmp_path / "out2", fmt="tanaka")


def _palette(idx: np.ndarray, path: Path) -> None:
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([0, 0, 0] + [0, 255, 0] * 255)
    pal.save(path)


def test_tanaka_st_masks_become_distractors(tanaka: Path, tmp_path: Path):
    (tanaka / "st").mkdir()
    st = np.zeros((60, 80), np.uint8)
    cv2.line(st, (0, 30), (79, 25), 5, 3)  # a slip trace across the frame, palette index 5
    _palette(st, tanaka / "st" / "f_0001.PNG")
    res = import_dataset(tanaka, tmp_path / "out", fmt="tanaka")
    assert (res.images, res.instances, res.distractors) == (1, 2, 1)  # lines as before
    d = cv2.imread(str(res.out / "distractors" / "f_0001.png"), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint8 and set(np.unique(d)) == {0, 255}
    np.testing.assert_array_equal(d != 0, st != 0)
    assert json.loads((res.out / "import.json").read_text())["distractors"] == 1
    fr = Dataset(res.out).frame(0)
    np.testing.assert_array_equal(fr.distractors, st != 0)
    assert len(fr.masks) == 2 and fr.strokes is not None
    # Re-importing with --overwrite keeps them; a source without st/ then leaves none behind.
    shutil.rmtree(tanaka / "st")
    res = import_dataset(tanaka, tmp_path / "out", fmt="tanaka", overwrite=True)
    assert res.distractors == 0 and not (res.out / "distractors").exists()
    assert Dataset(res.out).frame(0).distractors is None


def test_tanaka_st_only_frames_have_no_instances(tmp_path: Path):
    """tanaka-twip-086um's layout: original/ and st/, no ds/ (no dislocation labels)."""
    src = tmp_path / "086"
    (src / "original").mkdir(parents=True)
    (src / "st").mkdir()
    st = np.zeros((50, 40), np.uint8)
    st[:, 18:22] = 3  # a vertical planar fault
    for k, mask in ((1, st), (2, np.zeros_like(st))):  # the second frame has none
        Image.fromarray(np.full((50, 40, 3), 100 + k, np.uint8)).save(
            src / "original" / f"cut_{k:03d}.png")  # fmt: skip
        _palette(mask, src / "st" / f"cut_{k:03d}.PNG")
    res = import_dataset(src, tmp_path / "out", fmt="tanaka")
    assert (res.images, res.instances, res.distractors) == (2, 0, 2)
    assert (res.out / "labels" / "cut_001.txt").read_text() == ""
    assert not (res.out / "masks").exists()
    frames = list(Dataset(res.out))
    assert [len(f.masks) for f in frames] == [0, 0]
    assert frames[0].distractors.sum() == 50 * 4 and not frames[1].distractors.any()


def test_tanaka_needs_ds_or_st(tmp_path: Path):
    (tmp_path / "src" / "original").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"SOURCE/ds/\*\.png \(or, for distractors only, "
                                         r"SOURCE/st/\*\.png\) .*ds is not a folder"):  # fmt: skip
        import_dataset(tmp_path / "src", tmp_path / "out", fmt="tanaka")


def test_existing_dataset_needs_overwrite(tanaka: Path, tmp_path: Path):
    import_dataset(tanaka, tmp_path / "out", fmt="tanaka")
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_dataset(tanaka, tmp_path / "out", fmt="tanaka")
    assert import_dataset(tanaka, tmp_path / "out", fmt="tanaka", overwrite=True).images == 1


@pytest.fixture
def blobs(tmp_path: Path) -> tuple[Path, Path]:
    masks, imgs = tmp_path / "masks1", tmp_path / "imgs"
    masks.mkdir()
    imgs.mkdir()
    m = np.zeros((64, 64), np.uint8)
    cv2.ellipse(m, (15, 15), (8, 5), 20, 0, 360, 255, -1)
    cv2.circle(m, (45, 40), 6, 255, -1)
    cv2.circle(m, (15, 50), 3, 255, -1)
    cv2.imwrite(str(masks / "1.png"), m)
    cv2.imwrite(str(imgs / "1.png"), np.full((64, 64), 120, np.uint8))
    return masks, imgs


def test_masks_one_instance_per_component(blobs, tmp_path: Path):
    masks, imgs = blobs
    res = import_dataset(masks, tmp_path / "out", fmt="masks", images=imgs, cls="loop")
    assert (res.images, res.instances, res.per_class["loop"]) == (1, 3, 3)
    src = cv2.imread(str(masks / "1.png"), cv2.IMREAD_GRAYSCALE) > 0
    union = np.zeros_like(src)
    for c, poly in _labels(res.out, "1", (64, 64)):
        assert c == 1
        union |= polygon_mask(poly, (64, 64))
    assert _iou(union, src) > 0.97


def test_masks_need_images_and_class(blobs, tmp_path: Path):
    masks, imgs = blobs
    with pytest.raises(ValueError, match="needs --images DIR"):
        import_dataset(masks, tmp_path / "o1", fmt="masks", cls="loop")
    with pytest.raises(ValueError, match=r"needs --class \(dislocation or loop\)"):
        import_dataset(masks, tmp_path / "o2", fmt="masks", images=imgs)
    with pytest.raises(ValueError, match="class must be one of dislocation, loop"):
        import_dataset(masks, tmp_path / "o3", fmt="masks", images=imgs, cls="blob")
    cv2.imwrite(str(imgs / "1.png"), np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(64, 64\) but its frame .* \(32, 32\)"):
        import_dataset(masks, tmp_path / "o4", fmt="masks", images=imgs, cls="loop")


def _coco(tmp_path: Path, seg) -> Path:
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 50), 90, np.uint8))
    doc = {
        "images": [{"id": 7, "file_name": "a.png", "width": 50, "height": 40}],
        "categories": [{"id": 1, "name": "hcloop"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": seg},
            {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentation": [[30, 20, 40, 20, 40, 30, 30, 30]]},
        ],
    }  # fmt: skip
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc))
    return p


def test_coco_polygons_by_category_name(tmp_path: Path):
    p = _coco(tmp_path, [[5, 5, 15, 5, 15, 15, 5, 15]])
    res = import_dataset(p, tmp_path / "out", fmt="coco")
    assert (res.images, res.instances, res.per_class["loop"]) == (1, 2, 2)
    labels = _labels(res.out, "a", (40, 50))
    np.testing.assert_allclose(labels[0][1], [[5, 5], [15, 5], [15, 15], [5, 15]], atol=1e-4)
    assert import_dataset(p, tmp_path / "o2", fmt="coco", cls="dislocation").per_class == {
        "dislocation": 2, "loop": 0}  # fmt: skip


def test_coco_rejects_rle_and_wrong_json(tmp_path: Path):
    p = _coco(tmp_path, {"size": [40, 50], "counts": "abc"})
    with pytest.raises(ValueError, match="RLE segmentation is not supported; expected polygons"):
        import_dataset(p, tmp_path / "out", fmt="coco")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"shapes": []}))
    with pytest.raises(ValueError, match=r"expected a COCO instances JSON .* got \['shapes'\]"):
        import_dataset(bad, tmp_path / "o2", fmt="coco")


def test_labelme_polygons_lines_and_circles(tmp_path: Path):
    _, buf = cv2.imencode(".png", np.full((40, 60), 100, np.uint8))
    doc = {
        "imagePath": "missing.png", "imageData": base64.b64encode(buf.tobytes()).decode(),
        "imageHeight": 40, "imageWidth": 60,
        "shapes": [
            {"label": "loop", "shape_type": "polygon", "points": [[5, 5], [15, 5], [10, 12]]},
            {"label": "d", "shape_type": "linestrip", "points": [[5, 30], [30, 32], [55, 30]]},
            {"label": "loop", "shape_type": "circle", "points": [[45, 10], [50, 10]]},
            {"label": "x", "shape_type": "point", "points": [[2, 2]]},
        ],
    }  # fmt: skip
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "frame.json").write_text(json.dumps(doc))
    res = import_dataset(tmp_path / "lm", tmp_path / "out", fmt="labelme", label_width=4)
    assert (res.images, res.instances, res.skipped) == (1, 3, 1)
    labels = _labels(res.out, "missing", (40, 60))
    assert [c for c, _ in labels] == [1, 0, 1]
    line = polygon_mask(labels[1][1], (40, 60))
    assert line.sum() == pytest.approx(50 * 5, rel=0.15)  # 50 px long, 4 px (+ edge) wide
    disk = polygon_mask(labels[2][1], (40, 60))
    assert disk.sum() == pytest.approx(np.pi * 5.5**2, rel=0.15)  # radius 5 (+ edge)


def test_labelme_unknown_label_names_the_shape(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "i.png"), np.zeros((10, 10), np.uint8))
    doc = {"imagePath": "i.png", "shapes": [{"label": "blob", "points": [[1, 1], [5, 1], [3, 4]]}]}
    (tmp_path / "i.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"i\.json shape 0: cannot tell the class of label 'blob'"):
        import_dataset(tmp_path / "i.json", tmp_path / "out", fmt="labelme")


def test_cli_import(tanaka: Path, tmp_path: Path, capsys):
    assert main(["import", str(tanaka), "--format", "tanaka", "--out", str(tmp_path / "o")]) == 0
    assert "1 frames, 2 instances (2 dislocation)" in capsys.readouterr().out
    rc = main(["import", str(tmp_path / "nowhere"), "--format", "coco", "--out", str(tmp_path)])
    assert rc == 2
    assert "source" in capsys.readouterr().err


@pytest.mark.real
@pytest.mark.slow
def test_real_tanaka_and_creme(tmp_path: Path):
    tan, creme = REAL / "tanaka-twip-2um", REAL / "creme-loops-512"
    if not tan.is_dir() or not creme.is_dir():
        pytest.skip(f"real data not present at {REAL.resolve()}")
    res = import_dataset(tan, tmp_path / "tanaka", fmt="tanaka")
    assert (res.images, res.instances, res.distractors) == (63, 943, 63)
    res = import_dataset(creme / "masks1", tmp_path / "creme", fmt="masks",
                         images=creme / "imgs", cls="loop")  # fmt: skip
    assert (res.images, res.instances) == (16, 188)  # SOURCE.txt: 188 components
    res = import_dataset(creme / "clean.json", tmp_path / "coco", fmt="coco",
                         images=creme / "imgs")  # fmt: skip
    assert (res.images, res.instances) == (16, 186)  # SOURCE.txt: 186 polygons


@pytest.mark.real
def test_real_tanaka_086um_is_distractors_only(tmp_path: Path):
    src = REAL / "tanaka-twip-086um"
    if not src.is_dir():
        pytest.skip(f"real data not present at {(REAL / 'tanaka-twip-086um').resolve()}")
    few = tmp_path / "src"  # a few frames keep it fast: with and without st pixels
    names = ["cut_ufg2_img_001", "cut_ufg2_img_166", "cut_ufg2_img_286"]
    for sub, suffix in (("original", ".png"), ("st", ".PNG")):
        (few / sub).mkdir(parents=True)
        for n in names:
            shutil.copy(src / sub / f"{n}{suffix}", few / sub / f"{n}{suffix}")
    res = import_dataset(few, tmp_path / "out", fmt="tanaka")
    assert (res.images, res.instances, res.distractors) == (3, 0, 3)
    on = []
    for n in names:
        d = cv2.imread(str(res.out / "distractors" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        with Image.open(src / "st" / f"{n}.PNG") as im:
            np.testing.assert_array_equal(d != 0, np.array(im) != 0)
        on.append(bool(d.any()))
    assert on == [False, True, True]  # frame 001 has no planar fault labelled yet


def test_one_default_label_width_for_the_generator_and_the_importers() -> None:
    from loopline.datasets.importers import default_label_width
    from loopline.synth.params import load_preset

    assert default_label_width() == float(load_preset("M2").fixed("label_width"))
