"""``loopline analyze``: inputs (synth video, image folder, TIFF stack, AVI) and user errors."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from loopline.cli import main
from loopline.pipelines.sources import open_source
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
    assert main(["analyze", str(ds), "--out", str(run), "--calibration", str(cal)]) == 0
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
    assert main(["analyze", str(stack), "--out", str(tmp_path / "r2")]) == 2
    assert "needs a label file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("pixel = 3\n")
    args = ["analyze", str(video), "--out", str(tmp_path / "r3"), "--calibration", str(bad)]
    assert main(args) == 2
    assert "unknown key" in capsys.readouterr().err
    (tmp_path / "x.xyz").write_text("")
    assert main(["analyze", str(tmp_path / "x.xyz"), "--out", str(tmp_path / "r4")]) == 2
    assert "unsupported input" in capsys.readouterr().err
