"""Measurement and tracking on synthetic videos with known kinematics (issue 4, done-when)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loopline.analysis import OnlineTracker, measure_frame
from loopline.analysis.analyze import AnalyzeOptions, analyze
from loopline.analysis.evaluate import evaluate_against_truth
from loopline.analysis.sources import open_source, truth_detections
from loopline.calibration import Calibration, CalibrationError
from loopline.synth.generate import generate

BASE = {"width": 320, "height": 320, "lead_pinned_prob": 0.0}


def _make(tmp_path_factory, name, preset, frames, seed, **over):
    out = tmp_path_factory.mktemp(name)
    generate(out, preset=preset, count=1, seed=seed, video=True, frames=frames,
             overrides={**BASE, **over}, progress=False, jobs=1)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def pileup12(tmp_path_factory):
    """One 12-dislocation pile-up gliding at up to 1.2 px/frame (30 nm/s at 25 fps, 1 nm/px)."""
    return _make(tmp_path_factory, "p12", "M1", 30, 11, pileups=1, dislocations=12,
                 stage_drift=0.0, loops=0, spacing=[10.0, 14.0], spacing_growth=[0.05, 0.1],
                 lead_velocity=[0.9, 1.2], slip_width=[90.0, 120.0])  # fmt: skip


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Pile-ups with loops and stage drift."""
    return _make(tmp_path_factory, "mixed", "mixed", 24, 3, stage_drift=[0.2, 0.3],
                 loops=[4, 8], pileups=1, dislocations=[5, 7])  # fmt: skip


def _run(folder: Path, drift: str = "phase"):
    src = open_source(folder)
    cal = Calibration(nm_per_px=src.nm_per_px, fps=src.fps)
    tracker = OnlineTracker(cal, drift=drift)
    out = []
    for fr in src:
        det = truth_detections(fr.labels, fr.image.shape)
        r = measure_frame(det, index=fr.index, time_s=fr.time_s, calibration=cal)
        out.append(tracker.update(r, fr.image))
    return src, out


def test_twelve_dislocation_pileup_meets_the_targets(pileup12):
    src, results = _run(pileup12)
    m = evaluate_against_truth(results, src.sequence)
    assert m["n_lengths"] > 100 and m["n_spacings"] > 100 and m["n_velocities"] >= 6
    assert m["length_re"] < 0.02
    assert m["spacing_re"] < 0.03
    assert m["velocity_re"] < 0.05
    assert m["id_switches"] == 0
    # one pile-up, led by the true leader's track
    assert max(r.n_pileups for r in results) == 1
    truth_lead = src.sequence["pileups"][0]["glide_dir"]
    g = results[-1].pileup_glide_dir[0]
    assert float(np.dot(g, truth_lead)) > 0.95


def test_drift_loops_and_analyze_summary(mixed, tmp_path):
    src, results = _run(mixed)
    true_drift = np.array(src.sequence["frames"][-1]["drift_px"])
    np.testing.assert_allclose(results[-1].drift_px, true_drift, atol=1.0)
    summary = analyze(mixed, tmp_path / "run", options=AnalyzeOptions(model="truth"))
    for key in ("length_re", "spacing_re", "velocity_re", "loop_axis_re", "id_switches"):
        assert key in summary
    assert summary["length_re"] < 0.02
    assert summary["loop_axis_re"] < 0.05
    assert summary["spacing_re"] < 0.03
    assert summary["velocity_re"] < 0.05
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["id_switches"] == summary["id_switches"]
    import pandas as pd

    # the one run-folder layout: a row per frame, per object and frame, per pair, per track
    s = pd.read_csv(tmp_path / "run" / "series.csv")
    assert len(s) == 24 and s["frame"].nunique() == 24
    o = pd.read_csv(tmp_path / "run" / "tracks.csv")
    assert set(o["kind"]) == {"line", "loop"}
    assert o.loc[o.kind == "loop", "major_nm"].notna().all()
    assert len(pd.read_csv(tmp_path / "run" / "pairs.csv")) > 0
    t = pd.read_csv(tmp_path / "run" / "track_summary.csv")
    assert {"velocity_nm_per_s", "d_eff_nm2_per_s", "growth_nm_per_s"} <= set(t.columns)


def test_tracker_rejects_time_going_backwards(mixed):
    src = open_source(mixed)
    cal = Calibration(nm_per_px=1.0, fps=25.0)
    fr = next(iter(src))
    det = truth_detections(fr.labels, fr.image.shape)
    tracker = OnlineTracker(cal)
    tracker.update(measure_frame(det, index=3, time_s=0.2, calibration=cal))
    with pytest.raises(CalibrationError, match="times must increase"):
        tracker.update(measure_frame(det, index=4, time_s=0.1, calibration=cal))
    with pytest.raises(CalibrationError, match="indices must increase"):
        tracker.update(measure_frame(det, index=2, time_s=0.3, calibration=cal))
    with pytest.raises(ValueError, match="finite"):
        measure_frame(det, index=5, time_s=float("nan"), calibration=cal)
