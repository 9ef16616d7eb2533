"""`loopline adapt`: a real (tiny) fine-tuning of the shipped model, Ctrl-C, and the errors.

The dataset is four 128x128 M2 frames; the runs train for seconds at imgsz 128 with each frame
listed a few times per epoch, so that a whole adaptation (export, evaluation before and after,
training, export) stays within about a quarter of a minute of CPU.
"""

from __future__ import annotations

import json
import logging

import pytest

from loopline.cli import main
from loopline.synth.generate import generate
from loopline.training.adapt import AdaptConfig, adapt, model_card, split_frames

pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt") / "frames"
    return generate(out, preset="M2", count=4, seed=7, progress=False,
                    overrides={"width": 128, "height": 128}).out  # fmt: skip


def _tiny(data, out, **kw) -> AdaptConfig:
    opts = {"minutes": 0.05, "imgsz": 128, "batch": 4, "repeat": 4, "out": out, "name": "mine"}
    return AdaptConfig(data=data, **{**opts, **kw})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_adapt_writes_a_model_folder_that_the_engines_run(data, tmp_path, capsys, monkeypatch):
    res = adapt(_tiny(data, tmp_path))
    folder = tmp_path / "mine"
    assert res.folder == folder
    for f in ("model.pt", "model.onnx", "README.md", "adapt.json"):
        assert (folder / f).is_file(), f
    assert not (folder / "run" / "weights").exists()  # model.pt is the one copy kept
    assert not list(folder.glob(".adapt-*"))  # the scratch data is gone
    # the last frame by name is held out, the others trained on
    assert res.held_out == ("M2-7-00003.png",)
    assert res.trained_on == ("M2-7-00000.png", "M2-7-00001.png", "M2-7-00002.png")
    assert not res.stopped_early and res.epochs >= 1

    card = (folder / "README.md").read_text()
    assert "M2-7-00003.png" in card and "Stopped early" not in card
    assert "| metric | held-out: before | held-out: after |" in card
    row = next(ln for ln in card.splitlines() if ln.startswith("| line F1@3px |"))
    assert len(row.split("|")) == 5  # label, before, after
    assert "sha256" in card and "defects.pt" in card
    rec = json.loads((folder / "adapt.json").read_text())
    assert rec["held_out"] == ["M2-7-00003.png"] and rec["seed"] == 0
    assert (rec["imgsz"], rec["imgsz_from"]) == (128, "given")
    for when in ("before", "after"):
        assert rec[when]["held-out"]["images"] == 1
        assert rec[when]["held-out"]["line_f1_tol"] is not None
    assert rec["train_args"]["freeze"] == 10 and rec["train_args"]["mask_ratio"] == 2
    # the engines take the source's operating point from adapt.json beside the model, but for
    # its score threshold (fine-tuning moves the scores: the engines' 0.25)
    from loopline.models import shipped_settings

    op = shipped_settings("defects")
    assert op.pop("conf") == (0.15, 0.25)
    assert shipped_settings(folder / "model.onnx") == op
    assert shipped_settings(tmp_path / "elsewhere.onnx") == {}

    # the adapted model runs in `loopline eval` as any model file, at the input size it was
    # trained at (adapt.json's imgsz, 128 here) without being told
    from loopline.engines import create_engine

    adapted = create_engine(folder / "model.onnx")
    assert (adapted.imgsz, adapted.conf, adapted.class_conf) == (128, 0.25, None)
    capsys.readouterr()
    js = tmp_path / "eval.json"
    assert main(["eval", "--model", str(folder / "model.onnx"), "--data", str(data),
                 "--json", str(js), "--figure", str(tmp_path / "e.png")]) == 0  # fmt: skip
    assert json.loads(js.read_text())["images"] == 4

    # and `loopline export` exports it at that size without being told
    import loopline.engines.export as export_module

    asked = []
    monkeypatch.setattr(export_module, "export_onnx",
                        lambda src, *, imgsz, out: asked.append(imgsz) or out)  # fmt: skip
    assert main(["export", "--model", str(folder / "model.pt"), "--format", "onnx",
                 "--out", str(tmp_path / "exp")]) == 0  # fmt: skip
    assert asked == [128]

    # a second run of the same name would overwrite the model: refused
    with pytest.raises(FileExistsError, match="already holds a model"):
        adapt(_tiny(data, tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_after_the_first_epoch_keeps_the_model_and_says_so(data, tmp_path):
    def interrupt(trainer) -> None:
        raise KeyboardInterrupt  # as Ctrl-C would, once the first epoch's weights are saved

    res = adapt(_tiny(data, tmp_path, minutes=5.0, holdout=0, repeat=2),
                callbacks={"on_fit_epoch_end": interrupt})  # fmt: skip
    assert res.stopped_early and res.epochs == 1
    assert res.model_pt.is_file() and res.model_onnx.is_file()
    card = res.card.read_text()
    assert "**Stopped early** (Ctrl-C) after 1 epoch " in card
    assert "Not measured: no frame was held out" in card
    assert json.loads((res.folder / "adapt.json").read_text())["stopped_early"] is True


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_in_the_first_epoch_writes_nothing(data, tmp_path):
    def interrupt(trainer) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        adapt(_tiny(data, tmp_path, holdout=0, repeat=1),
              callbacks={"on_train_start": interrupt})  # fmt: skip
    assert not (tmp_path / "mine").exists()


def _frames_only(tmp_path, data, *, labels: bool):
    import shutil

    d = tmp_path / "unlabelled"
    shutil.copytree(data / "images", d / "images")
    (d / "labels").mkdir()
    if labels:
        for p in (data / "labels").iterdir():
            (d / "labels" / p.name).write_text("")
    return d


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "dataset {tmp}/nope does not exist"),
        ("not_a_dataset", "expected a dataset folder with images/ and labels/"),
        ("no_labels", "no labelled frames in"),
        ("empty_labels", "no labelled defect in the training frames"),
        ("minutes_zero", "--minutes must be > 0, got 0.0"),
        ("minutes_negative", "--minutes must be > 0, got -1.0"),
        ("holdout_all", "--holdout 4 leaves no frame to train on (4 labelled frames)"),
        ("bad_name", "--name must be letters, digits"),
        ("bad_source", "no model file"),
        ("thin_lines", "the dislocation labels are 1.0 px wide (median); expected lines at "
                       "least 2.5 px wide"),
    ],
)
def test_errors_are_one_line(case, message, data, tmp_path, capsys):
    args = ["adapt", "--data", str(data), "--out", str(tmp_path / "models")]
    if case == "missing":
        args[2] = str(tmp_path / "nope")
    elif case == "not_a_dataset":
        args[2] = str(tmp_path)
    elif case == "no_labels":
        args[2] = str(_frames_only(tmp_path, data, labels=False))
    elif case == "empty_labels":
        args[2] = str(_frames_only(tmp_path, data, labels=True))
    elif case == "minutes_zero":
        args += ["--minutes", "0"]
    elif case == "minutes_negative":
        args += ["--minutes", "-1"]
    elif case == "holdout_all":
        args += ["--holdout", "4"]
    elif case == "bad_name":
        args += ["--name", "../x"]
    elif case == "bad_source":
        args += ["--from", "no-such-model"]
    elif case == "thin_lines":  # 1-px strokes (an import without --label-width)
        d = _frames_only(tmp_path, data, labels=False)
        for img in (d / "images").iterdir():  # a 100 x 1 px ribbon in a 128 x 128 frame
            (d / "labels" / f"{img.stem}.txt").write_text(
                "0 0.1 0.5 0.88125 0.5 0.88125 0.5078125 0.1 0.5078125\n")
        args[2] = str(d)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loopline adapt: error: ")
    assert message.format(tmp=tmp_path) in err
    assert "\n" not in err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_split_holds_out_the_last_frames_by_name(data, tmp_path, caplog):
    train, held = split_frames(data, None)
    assert [p.name for p in held] == ["M2-7-00003.png"] and len(train) == 3
    train, held = split_frames(data, 2)
    assert [p.name for p in held] == ["M2-7-00002.png", "M2-7-00003.png"]
    # two labelled frames: none held out by default, with a warning
    few = tmp_path / "few"
    for sub in ("images", "labels"):
        (few / sub).mkdir(parents=True)
    for p in sorted((data / "images").iterdir())[:2]:
        (few / "images" / p.name).write_bytes(p.read_bytes())
        lab = data / "labels" / f"{p.stem}.txt"
        (few / "labels" / lab.name).write_text(lab.read_text())
    with caplog.at_level(logging.WARNING, logger="loopline.training.adapt"):
        train, held = split_frames(few, None)
    assert len(train) == 2 and held == []
    assert "none held out" in caplog.text


def test_card_shows_missing_metrics_as_dashes():
    rec = {
        "source": "defects", "source_file": "/m/defects.pt", "source_sha256": "ab",
        "data": "/d", "test": None, "trained_on": ["a.png"], "held_out": ["b.png"],
        "repeat": 64, "minutes": 1.0, "seed": 3, "imgsz": 640, "imgsz_from": "labels",
        "batch": 8, "train_args": {"freeze": 10}, "operating_point": {"mask_threshold": [0.4, 0.4]},
        "stopped_early": False, "epochs": 2, "best_epoch": 2, "weights": "best.pt",
        "train_s": 60.0, "wall_s": 80.0, "model_pt_sha256": "cd", "model_onnx_sha256": "ef",
        "before": {"held-out": {"line_f1_tol": 0.5, "loop_f1": None, "images": 1}},
        "after": {"held-out": {"line_f1_tol": 0.75, "loop_f1": None, "images": 1}},
        "finished": "now",
    }  # fmt: skip
    card = model_card(rec, name="x", folder="models/x")
    assert "| line F1@3px | 0.500 | 0.750 |" in card
    assert "| loop F1 | - | - |" in card
    assert "--mask-threshold" not in card and "adapt.json" in card
    assert "1 frame," in card and "seed 3" in card
    assert "imgsz 640 (chosen from how close the labelled lines lie" in card


@pytest.mark.parametrize(("spacing", "imgsz"), [((5.0, 6.0), 640), ((30.0, 40.0), 512)])
def test_the_input_size_follows_how_close_the_labelled_lines_lie(tmp_path, caplog, spacing,
                                                                   imgsz):  # fmt: skip
    # 512 px frames of one pile-up of 8 lines: 5-6 px apart, 512 would merge their masks (the
    # larger size is taken and said); 30-40 px apart, 512 keeps them apart.
    from loopline.training.adapt import choose_imgsz, line_label_spacing

    over = {"width": 512, "height": 512, "pileups": 1, "dislocations": 8, "loops": 0,
            "spacing": list(spacing), "spacing_growth": 0.0, "line_width": 3.0}  # fmt: skip
    out = generate(tmp_path / "d", preset="M2", count=2, seed=5, progress=False,
                   overrides=over).out  # fmt: skip
    frames = sorted((out / "images").iterdir())
    near = line_label_spacing(out, frames) * 512  # px: the lines' distance, at most the spacing
    assert 0.6 * spacing[0] <= near <= spacing[1]  # along the glide direction (lines lie oblique)
    with caplog.at_level(logging.INFO, logger="loopline.training.adapt"):
        assert choose_imgsz(out, frames) == imgsz
    assert ("training at --imgsz 640" in caplog.text) == (imgsz == 640)


def test_without_two_labelled_lines_the_input_size_is_512(tmp_path):
    from loopline.training.adapt import choose_imgsz

    loops = generate(tmp_path / "l", preset="loops", count=2, seed=1, progress=False,
                     overrides={"width": 128, "height": 128}).out  # fmt: skip
    assert choose_imgsz(loops, sorted((loops / "images").iterdir())) == 512


def test_a_test_set_lets_every_labelled_frame_train(data, caplog):
    frames = sorted((data / "images").iterdir())
    assert split_frames(data, None) == (frames[:3], frames[3:])
    with caplog.at_level(logging.WARNING, logger="loopline.training.adapt"):
        assert split_frames(data, None, tested=True) == (frames, [])
        assert split_frames(data, 2, tested=True) == (frames[:2], frames[2:])
    assert caplog.text == ""  # no warning that nothing is held out: the test set measures


def test_frames_larger_than_imgsz_are_flagged(data, caplog):
    from loopline.training.adapt import _check_scale

    frames = sorted((data / "images").iterdir())
    with caplog.at_level(logging.WARNING, logger="loopline.training.adapt"):
        _check_scale(frames, 128)
        assert caplog.text == ""
        _check_scale(frames, 64)
    assert "frames of up to 128 px are shrunk to --imgsz 64" in caplog.text
    assert "pass --imgsz 128" in caplog.text
