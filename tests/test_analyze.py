"""``loopline analyze``: inputs (synth video, image folder, TIFF stack, AVI) and user errors."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from loopline.analysis.sources import open_source
from loopline.cli import main
from loopline.synth.generate import generate


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, preset="mixed", count=1, seed=7, video=True, frames=12,
             overrides={"width": 256, "height": 256, "loops": [2, 4], "pileups": 1,
                        "lead_pinned_prob": 0.0, "stage_drift": 0.0},
             progress=False, jobs=1)  # fmt: skip
    return out


def test_analyze_synth_video_writes_run_folder(video, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", str(video), "--out", str(run), "--model", "truth"]) == 0
    assert "length_re" in capsys.readouterr().out
    for name in ("series.csv", "tracks.csv", "summary.json"):
        assert (run / name).is_file()
    s = json.loads((run / "summary.json").read_text())
    for k in ("length_re", "spacing_re", "velocity_re", "loop_axis_re", "id_switches"):
        assert k in s
    assert s["length_re"] < 0.02 and s["id_switches"] == 0
    assert s["calibration"]["nm_per_px"] == 2.0
    # the one run-folder layout: frames in series.csv, objects in tracks.csv
    assert s["schema_version"] == 1 and (run / "pairs.csv").is_file()
    header = (run / "series.csv").read_text().splitlines()[0].split(",")
    assert "mean_length_nm" in header and "t_lines_ms" in header
    header = (run / "tracks.csv").read_text().splitlines()[0].split(",")
    assert "length_nm" in header and "velocity_nm_per_s" in header


def test_analyze_image_folder_with_labels_and_calibration(video, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(video / "images", ds / "images")
    shutil.copytree(video / "labels", ds / "labels")
    cal = tmp_path / "cal.toml"
    cal.write_text("nm_per_px = 0.5\nfps = 10.0\nvisibility_factor = 1.75\n")
    run = tmp_path / "run"
    assert main(["analyze", str(ds), "--out", str(run), "--calibration", str(cal),
                 "--model", "truth"]) == 0  # fmt: skip
    s = json.loads((run / "summary.json").read_text())
    assert s["frames"] == 12 and s["calibration"]["nm_per_px"] == 0.5
    assert "length_re" not in s  # no truth.json: no errors to report
    import pandas as pd

    t = pd.read_csv(run / "series.csv")
    assert t["time_s"].max() == pytest.approx(1.1)


def test_sources_tiff_and_avi(tmp_path):
    import tifffile

    frames = (np.random.default_rng(0).random((5, 32, 48)) * 255).astype(np.uint8)
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, frames, imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "nm", "finterval": 0.1})  # fmt: skip
    src = open_source(tif)
    got = [f.image for f in src]
    assert len(got) == 5 and src.nm_per_px == pytest.approx(0.5) and src.fps == pytest.approx(10)
    np.testing.assert_array_equal(got[2], frames[2])
    avi = tmp_path / "movie.avi"
    vw = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (48, 32), True)
    if not vw.isOpened():
        pytest.skip("OpenCV has no MJPG writer here")
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    vw.release()
    src = open_source(avi)
    got = [f.image for f in src]
    assert len(got) == 5 and got[0].shape == (32, 48) and src.fps == pytest.approx(12.0)


def test_analyze_user_errors(tmp_path, video, capsys):
    assert main(["analyze", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    stack = tmp_path / "s.tif"
    import tifffile

    tifffile.imwrite(stack, np.zeros((2, 16, 16), np.uint8))
    assert main(["analyze", str(stack), "--out", str(tmp_path / "r2"), "--model", "truth"]) == 2
    assert "needs a label file" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()  # a failed run leaves no empty tables behind
    bad = tmp_path / "bad.toml"
    bad.write_text("pixel = 3\n")
    args = ["analyze", str(video), "--out", str(tmp_path / "r3"), "--calibration", str(bad)]
    assert main(args) == 2
    assert "unknown key" in capsys.readouterr().err
    (tmp_path / "x.xyz").write_text("")
    assert main(["analyze", str(tmp_path / "x.xyz"), "--out", str(tmp_path / "r4")]) == 2
    assert "unsupported input" in capsys.readouterr().err


# ------------------------------------------------- issue 20: a scientist's first hour


@pytest.fixture(scope="module")
def unlabelled(video, tmp_path_factory):
    """The synthetic video's frames alone: no labels, no truth.json, no pixel size."""
    d = tmp_path_factory.mktemp("frames")
    for i, f in enumerate(sorted((video / "images").iterdir())[:4]):
        shutil.copyfile(f, d / f"img_{3 * i + i * i:04d}.png")  # irregular: 0, 4, 10, 18
    return d


def test_analyze_defaults_to_the_shipped_model(unlabelled, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", str(unlabelled), "--out", str(run), "--conf", "0.3",
                 "--imgsz", "256", "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "loops on average" in out  # the per-frame counts, said at the end
    s = json.loads((run / "summary.json").read_text())
    assert s["model"] == "defects" and s["frames"] == 4
    import pandas as pd

    t = pd.read_csv(run / "series.csv")
    assert {"n_dislocations", "n_loops"} <= set(t.columns) and len(t) == 4
    # a word outside its range: one line naming what was expected and what came
    with pytest.raises(SystemExit):
        main(["analyze", str(unlabelled), "--out", str(tmp_path / "x"), "--imgsz", "100"])
    assert "expected a multiple of 32 px (>= 32), got 100" in capsys.readouterr().err


def test_analyze_passes_imgsz_conf_device_to_the_engine(monkeypatch):
    import loopline.engines as engines
    from loopline.analysis.analyze import AnalyzeOptions, _make_detector

    seen = {}
    real = engines.create_engine

    def fake(model, **kw):
        seen.update(kw, model=model)
        return real("ridge")

    monkeypatch.setattr(engines, "create_engine", fake)
    _make_detector(AnalyzeOptions(imgsz=640, conf=0.4, device="cuda:0"))
    assert seen["model"] == "defects"
    assert (seen["imgsz"], seen["conf"], seen["device"]) == (640, 0.4, "cuda:0")
    seen.clear()
    _make_detector(AnalyzeOptions())
    assert not {"imgsz", "conf", "device"} & set(seen)  # None: the model's own


def test_analyze_times_from_names(unlabelled, tmp_path, capsys):
    import pandas as pd

    run = tmp_path / "run"
    assert main(["analyze", str(unlabelled), "--out", str(run), "--model", "ridge",
                 "--times-from-names", "--fps", "2"]) == 0  # fmt: skip
    t = pd.read_csv(run / "series.csv")
    assert t["time_s"].tolist() == pytest.approx([0.0, 2.0, 5.0, 9.0])  # 0, 4, 10, 18 / 2
    # a time in ms in the name, by a pattern with a group named ms
    ms = tmp_path / "ms"
    ms.mkdir()
    for k, f in enumerate(sorted(unlabelled.iterdir())[:3]):
        shutil.copyfile(f, ms / f"scan_t{[0, 150, 400][k]}ms.png")
    run2 = tmp_path / "run2"
    assert main(["analyze", str(ms), "--out", str(run2), "--model", "ridge",
                 "--times-from-names", r"_t(?P<ms>\d+)ms"]) == 0  # fmt: skip
    assert pd.read_csv(run2 / "series.csv")["time_s"].tolist() == pytest.approx([0, 0.15, 0.4])
    capsys.readouterr()
    # frame numbers without a frame rate: one line saying what is missing, no run folder
    assert main(["analyze", str(unlabelled), "--out", str(tmp_path / "r3"), "--model", "ridge",
                 "--times-from-names"]) == 2  # fmt: skip
    assert "give --fps" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()


def test_analyze_leaks_no_runtime_warning(tmp_path):
    """Float frames with NaN pixels (dead pixels of a DM/float TIFF) through the shipped model:
    numpy warned "invalid value encountered in cast" on every frame."""
    import tifffile

    from loopline.analysis.analyze import AnalyzeOptions, analyze

    a = np.random.default_rng(0).random((3, 96, 96)).astype(np.float32)
    a[:, :4, :4] = np.nan
    tif = tmp_path / "nan.tif"
    tifffile.imwrite(tif, a, photometric="minisblack")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = analyze(tif, tmp_path / "run", options=AnalyzeOptions(imgsz=128))
    assert s["frames"] == 3
