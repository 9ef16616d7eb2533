"""``loopline eval`` with a fake engine that returns the ground truth, exactly or perturbed."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from loopline.cli import main
from loopline.engines.base import Detections, Engine
from loopline.evaluation import metrics as M
from loopline.evaluation.data import Dataset, Frame
from loopline.evaluation.evaluate import METRIC_KEYS, evaluate, save_figure
from loopline.synth.generate import generate

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def truth_detections(fr: Frame) -> Detections:
    """The frame's ground truth as detections (thin strokes where the dataset kept them)."""
    masks = fr.masks if fr.strokes is None else fr.strokes
    n = len(masks)
    return Detections(masks=masks.copy(), boxes=fr.boxes.astype(np.float32),
                      scores=np.linspace(0.9, 0.5, n).astype(np.float32) if n else
                      np.zeros(0, np.float32), classes=fr.classes.copy())  # fmt: skip


class TruthEngine(Engine):
    """Answers each frame with ``transform(ground truth)``, looked up by the frame's bytes."""

    name = "truth"

    def __init__(self, root: Path, transform: Callable[[Frame], Detections] = truth_detections,
                 **kw) -> None:  # fmt: skip
        super().__init__(None, **kw)
        self.table = {_key(fr.image): transform(fr) for fr in Dataset(root)}

    def load(self) -> None:
        pass

    def forward(self, frames: list[np.ndarray]) -> list[Detections]:
        return [self.table[_key(f)] for f in frames]


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """Two small mixed frames: pile-ups of lines and loops, with truth.json."""
    out = tmp_path_factory.mktemp("synth") / "mixed"
    generate(out, preset="mixed", count=2, seed=11, jobs=1, progress=False,
             overrides={"width": 192, "height": 192, "pileups": 2, "dislocations": (3, 5),
                        "loops": (4, 6)})  # fmt: skip
    return out


def test_perfect_predictions_score_perfectly(synth: Path):
    res = evaluate(TruthEngine(synth), synth)
    m = res.metrics
    assert list(m) == list(METRIC_KEYS)
    for k in ("box_map50", "mask_map50", "mask_map50_95", "lar", "lar_tol", "line_f1_tol",
              "loop_f1"):  # fmt: skip
        assert m[k] == pytest.approx(1.0), k
    for k in ("n_re", "d_re", "f_re"):
        assert m[k] == pytest.approx(0.0), k
    # Truth spacing from truth.json's exact polylines, predicted from mask skeletons.
    assert abs(m["spacing_re"]) < 0.02
    assert m["images"] == 2


def test_missing_loops_and_false_positives(synth: Path):
    ds = Dataset(synth)
    loops = [int((fr.classes == 1).sum()) for fr in ds]

    def drop_first_loop(fr: Frame) -> Detections:
        det = truth_detections(fr)
        first = int(np.flatnonzero(det.classes == 1)[0])
        return det.select(np.arange(len(det)) != first)

    m = evaluate(TruthEngine(synth, drop_first_loop), synth).metrics
    n = sum(loops)
    # One loop of each frame missed: TP = n - 2, FN = 2 -> F1 = 2 (n-2) / (2 (n-2) + 2).
    assert m["loop_f1"] == pytest.approx(2 * (n - 2) / (2 * (n - 2) + 2))
    assert m["n_re"] == pytest.approx(-2 / n)
    assert m["lar"] == pytest.approx(1.0)  # lines untouched

    def add_false_loop(score: float) -> Callable[[Frame], Detections]:
        def f(fr: Frame) -> Detections:
            det = truth_detections(fr)
            h, w = fr.shape
            fp = np.zeros((1, h, w), bool)
            fp[0, :6, :6] = True
            return Detections(
                masks=np.concatenate([det.masks, fp]),
                boxes=np.concatenate([det.boxes, [[0, 0, 6, 6]]]).astype(np.float32),
                scores=np.append(det.scores, score).astype(np.float32),
                classes=np.append(det.classes, 1),
            )  # fmt: skip

        return f

    # Below --conf: counts, F1 unchanged; ranked last: AP unchanged.
    m = evaluate(TruthEngine(synth, add_false_loop(0.1)), synth, conf=0.25).metrics
    assert (m["loop_f1"], m["n_re"], m["box_map50"]) == (1.0, 0.0, 1.0)
    # Above it and ranked first: one false positive per frame.
    m = evaluate(TruthEngine(synth, add_false_loop(0.99)), synth, conf=0.25).metrics
    assert m["loop_f1"] == pytest.approx(2 * n / (2 * n + 2))
    assert m["n_re"] == pytest.approx(2 / n)
    assert m["box_map50"] < 1.0
    # One threshold per class (dislocation, loop): a loop at 0.3 is dropped by a loop cut of 0.5
    # and kept by 0.25, whatever the lines' own cut; a bad pair is refused in one line.
    m = evaluate(TruthEngine(synth, add_false_loop(0.3)), synth, conf=(0.1, 0.5)).metrics
    assert (m["loop_f1"], m["n_re"]) == (1.0, 0.0)
    m = evaluate(TruthEngine(synth, add_false_loop(0.3)), synth, conf=(0.6, 0.25)).metrics
    assert m["n_re"] == pytest.approx(2 / n)
    with pytest.raises(ValueError, match=r"one value or one per class \(dislocation, loop\)"):
        evaluate(TruthEngine(synth), synth, conf=(0.1, 0.2, 0.3))


def test_no_line_predictions(synth: Path):
    def loops_only(fr: Frame) -> Detections:
        det = truth_detections(fr)
        return det.select(det.classes == 1)

    res = evaluate(TruthEngine(synth, loops_only), synth)
    m = res.metrics
    assert (m["lar"], m["lar_tol"], m["line_f1_tol"]) == (0.0, 0.0, 0.0)
    assert m["spacing_re"] is None  # no predicted pile-up to measure
    assert m["loop_f1"] == 1.0
    # mAP averages the two classes: loops 1, dislocations 0.
    assert m["box_map50"] == pytest.approx(0.5)


def test_figure_and_frame_scores(synth: Path, tmp_path: Path):
    res = evaluate(TruthEngine(synth), synth)
    assert [s for _, s in res.frame_scores] == [1.0, 1.0]
    png = save_figure(res, tmp_path / "fig.png", title="t")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_engine_with_wrong_frame_shape_is_an_error(synth: Path):
    class Small(TruthEngine):
        def forward(self, frames):
            return [Detections.empty((8, 8)) for _ in frames]

    with pytest.raises(ValueError, match=r"masks of shape \(8, 8\), expected .* \(192, 192\)"):
        evaluate(Small(synth), synth)


def test_cli_eval_writes_json_and_figure(synth: Path, tmp_path: Path, monkeypatch, capsys):
    import loopline.engines

    made = {}

    def create_engine(model, **opts):
        made.update(opts, model=model)
        return TruthEngine(synth)

    monkeypatch.setattr(loopline.engines, "create_engine", create_engine, raising=False)
    out = tmp_path / "r" / "eval.json"
    rc = main(["eval", "--model", "fake", "--data", str(synth), "--json", str(out),
               "--imgsz", "256", "--conf", "0.3"])  # fmt: skip
    assert rc == 0
    assert made == {"model": "fake", "imgsz": 256, "conf": 0.001}
    data = json.loads(out.read_text())
    assert list(data) == list(METRIC_KEYS)
    assert data["mask_map50"] == 1.0 and data["images"] == 2
    assert out.with_suffix(".png").is_file()
    text = capsys.readouterr().out
    assert "mask mAP50" in text and "LAR@tol" in text
    assert "lines per frame" in text and "loop recall d 8-14 px" in text
    assert "no distractor (st/) masks in this dataset" in text


def test_cli_eval_mask_threshold(synth: Path, tmp_path: Path, monkeypatch, capsys):
    import loopline.engines

    made = {}

    def create_engine(model, **opts):
        made.update(opts)
        return TruthEngine(synth)

    monkeypatch.setattr(loopline.engines, "create_engine", create_engine, raising=False)
    args = ["eval", "--model", "fake", "--data", str(synth), "--figure", str(tmp_path / "f.png")]
    assert main([*args, "--mask-threshold", "0.3"]) == 0
    assert made["mask_threshold"] == (0.3,)
    assert main([*args, "--mask-threshold", "0.3,0.45"]) == 0  # dislocation, loop
    assert made["mask_threshold"] == (0.3, 0.45)
    with pytest.raises(SystemExit):
        main([*args, "--mask-threshold", "1.5"])
    assert "--mask-threshold must lie in (0, 1), one value or one per class (2), got 1.5" in \
        capsys.readouterr().err  # fmt: skip


def test_cli_eval_bad_data(tmp_path: Path, capsys):
    rc = main(["eval", "--model", "ridge", "--data", str(tmp_path)])
    assert rc == 2
    assert "expected a dataset folder with images/ and labels/" in capsys.readouterr().err


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> Path:
    """An imported tanaka-style frame: two dislocation strokes and a slip trace apart from them."""
    from PIL import Image

    from loopline.datasets.importers import import_dataset

    src = tmp_path_factory.mktemp("traced") / "src"
    for sub in ("original", "ds", "st"):
        (src / sub).mkdir(parents=True)
    img = np.full((80, 100), 160, np.uint8)
    ds = np.zeros((80, 100), np.uint8)
    cv2.line(ds, (10, 10), (90, 16), 1, 2)
    cv2.line(ds, (10, 62), (85, 70), 1, 2)
    st = np.zeros((80, 100), np.uint8)
    st[38:41, :] = 1  # a 3 px slip trace across the frame, 20+ px from both lines
    img[ds > 0] = 60
    img[st > 0] = 120
    Image.fromarray(img).save(src / "original" / "f_01.png")
    for sub, a in (("ds", ds), ("st", st)):
        pal = Image.fromarray(a, mode="P")
        pal.putpalette([0, 0, 0] + [255, 255, 255] * 255)
        pal.save(src / sub / "f_01.PNG")
    return import_dataset(src, tmp_path_factory.mktemp("traced") / "ds", fmt="tanaka").out


def test_slip_trace_confusion_off_and_on_the_traces(traced: Path):
    from loopline.evaluation.command import _table

    res = evaluate(TruthEngine(traced), traced)  # the labelled lines: none on the trace
    assert res.metrics["slip_trace_confusion"] == 0.0
    assert res.details["slip_trace_confusion_labels"] == 0.0
    assert res.details["slip_trace_frames"] == 1 and res.details["slip_trace_pixels"] > 100
    assert res.metrics["lines_per_frame"] == res.metrics["lines_per_frame_gt"] == 2.0
    assert res.metrics["loop_recall_by_size"] is None  # no labelled loops

    def on_trace(fr: Frame) -> Detections:
        # One wide line along the slip trace, as a model that mistakes it for a dislocation.
        band = cv2.dilate(fr.distractors.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        return Detections(masks=band[None], boxes=M.mask_boxes(band[None]).astype(np.float32),
                          scores=np.array([0.9], np.float32), classes=np.array([0]))  # fmt: skip

    res = evaluate(TruthEngine(traced, on_trace), traced)
    assert res.metrics["slip_trace_confusion"] == pytest.approx(1.0)
    assert res.metrics["line_f1_tol"] == 0.0 and res.metrics["lines_per_frame"] == 1.0

    def both(fr: Frame) -> Detections:
        a, b = truth_detections(fr), on_trace(fr)
        return Detections(masks=np.concatenate([a.masks, b.masks]),
                          boxes=np.concatenate([a.boxes, b.boxes]),
                          scores=np.concatenate([a.scores, b.scores]),
                          classes=np.concatenate([a.classes, b.classes]))  # fmt: skip

    res = evaluate(TruthEngine(traced, both), traced)
    # About 100 px of trace against about 80 + 76 px of the two lines.
    assert 0.3 < res.metrics["slip_trace_confusion"] < 0.5
    from rich.console import Console

    con = Console(width=200, record=True)
    con.print(_table(res.metrics, res.details, "t"))
    row = next(ln for ln in con.export_text().splitlines() if "slip-trace confusion" in ln)
    assert f"{100 * res.metrics['slip_trace_confusion']:.1f} %" in row


def test_loop_recall_by_size(tmp_path: Path):
    from loopline.datasets.importers import import_dataset
    from loopline.evaluation.command import write_json

    masks, imgs = tmp_path / "masks", tmp_path / "imgs"
    masks.mkdir()
    imgs.mkdir()
    m = np.zeros((110, 170), np.uint8)
    # Equivalent diameters about 2r: 6, 10, 18, 30 and 48 px, one loop per size bin.
    for (x, y), r in (((20, 20), 3), ((50, 20), 5), ((90, 25), 9), ((40, 80), 15),
                      ((130, 70), 24)):  # fmt: skip
        cv2.circle(m, (x, y), r, 255, -1)
    cv2.imwrite(str(masks / "a.png"), m)
    cv2.imwrite(str(imgs / "a.png"), np.where(m > 0, 60, 150).astype(np.uint8))
    ds = import_dataset(masks, tmp_path / "ds", fmt="masks", images=imgs, cls="loop").out

    def miss_8_to_14(fr: Frame) -> Detections:
        det = truth_detections(fr)
        d = M.equivalent_diameters(fr.masks)
        return det.select(~((d >= 8) & (d < 14)))

    res = evaluate(TruthEngine(ds, miss_8_to_14), ds)
    m = res.metrics
    assert m["loops_by_size"] == {"<8": 1, "8-14": 1, "14-24": 1, "24-40": 1, ">=40": 1}
    assert m["loop_recall_by_size"] == {"<8": 1.0, "8-14": 0.0, "14-24": 1.0, "24-40": 1.0,
                                        ">=40": 1.0}  # fmt: skip
    assert m["loop_f1"] == pytest.approx(8 / 9)  # 4 of 5 found, no false positive
    assert m["slip_trace_confusion"] is None and res.details["slip_trace_frames"] == 0
    write_json(m, tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["loop_recall_by_size"]["8-14"] == 0.0 and data["loops_by_size"][">=40"] == 1


@pytest.mark.real
def test_real_tanaka_strokes_and_creme_loops(tmp_path: Path):
    from loopline.datasets.importers import import_dataset

    tan, creme = REAL / "tanaka-twip-2um", REAL / "creme-loops-512"
    if not tan.is_dir() or not creme.is_dir():
        pytest.skip(f"real data not present at {REAL.resolve()}")
    # A few frames keep the test fast.
    src = tmp_path / "tan"
    for sub in ("original", "ds", "st"):
        (src / sub).mkdir(parents=True)
        for p in sorted((tan / sub).iterdir())[20:23]:
            shutil.copy(p, src / sub / p.name)
    ds = import_dataset(src, tmp_path / "tanaka", fmt="tanaka", label_width=6).out
    res = evaluate(TruthEngine(ds), ds)
    m = res.metrics
    assert m["lar_tol"] == 1.0 and m["line_f1_tol"] == 1.0 and m["spacing_re"] == 0.0
    assert m["loop_f1"] is None and m["loop_recall_by_size"] is None
    # Perfect lines score the labels' own share: lines that cross a trace touch it.
    assert m["slip_trace_confusion"] == res.details["slip_trace_confusion_labels"] < 0.1

    ds = import_dataset(creme / "masks1", tmp_path / "creme", fmt="masks",
                        images=creme / "imgs", cls="loop").out  # fmt: skip
    m = evaluate(TruthEngine(ds), ds).metrics
    assert m["loop_f1"] == 1.0 and m["n_re"] == 0.0 and abs(m["d_re"]) < 1e-3
    assert m["lar"] is None and m["spacing_re"] is None
