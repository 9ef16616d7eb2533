"""``loopline report`` on a run folder made by ``loopline analyze`` of a synthetic video."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from loopline.cli import main

pytestmark = pytest.mark.timeout(120)

FIGURES = ("spacing_vs_time", "dislocation_kinematics", "loop_size_vs_time", "density_vs_time",
           "contact_sheet")  # fmt: skip
SHOT = Path(os.environ.get("LOOPLINE_REPORT_FIGURE", "/tmp/loopline-report.png"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loopline.pipelines.analyze import AnalyzeOptions, analyze
    from loopline.synth.generate import generate

    base = tmp_path_factory.mktemp("report")
    video = base / "video"
    generate(video, preset="mixed", count=1, seed=7, video=True, frames=12, jobs=1,
             progress=False, overrides={"width": 256, "height": 256, "pileups": 1,
                                        "dislocations": (4, 5), "loops": (4, 8)})  # fmt: skip
    run = base / "run"
    analyze(video, run, options=AnalyzeOptions(model="truth", drift="none"))
    return run


def test_report_writes_every_figure_and_the_summary(run_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["report", str(run_dir), "--out", str(out), "--frames", "4"]) == 0
    printed = capsys.readouterr().out
    assert "5 figures" in printed and "skipped" not in printed
    for name in FIGURES:
        for ext in ("png", "pdf"):
            p = out / f"{name}.{ext}"
            assert p.exists() and p.stat().st_size > 5_000, p
    table = pd.read_csv(out / "summary.csv")
    assert "frames" in set(table["quantity"]) and "spacing_re (vs ground truth)" in set(
        table["quantity"])  # fmt: skip
    try:
        shutil.copyfile(out / "spacing_vs_time.png", SHOT)
    except OSError:
        pass


def test_every_axis_has_a_unit(run_dir: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loopline.reports import figures as F

    run = F.load_run(run_dir)
    rep = F.Report(tmp_path)
    seen = []
    real_save = F._save

    def check(fig, rep_, name):
        for ax in fig.axes:
            if not ax.axison:
                continue
            for label in (ax.get_ylabel(), ax.get_xlabel()):
                if label:
                    seen.append(label)
                    assert ("(" in label and ")" in label) or label == "frame", (name, label)
            assert ax.get_ylabel(), (name, "an axis without a y label")
        real_save(fig, rep_, name)

    monkeypatch.setattr(F, "_save", check)
    try:
        for name, fn in F.FIGURES.items():
            if name != "contact_sheet":  # images: no axes, a scale bar instead
                fn(run, rep)
    finally:
        plt.close("all")
    assert "time (s)" in seen and "spacing (nm)" in seen and "velocity (nm/s)" in seen


def test_report_errors_and_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    # a run with frames only (no pile-ups, no loops): those figures are skipped, with reasons
    (tmp_path / "series.csv").write_text("frame,time_s,kind,count\n0,0,frame,0\n1,0.04,frame,0\n")
    (tmp_path / "summary.json").write_text(json.dumps({"frames": 2}))
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped spacing_vs_time: no pile-up spacings" in out
    assert "skipped loop_size_vs_time: no loops" in out


def test_report_on_a_daemon_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``loopline serve`` writes per-frame, per-pair and per-instance tables: same figures."""
    n = 10
    (tmp_path / "series.csv").write_text("series,index,time_s,n_dislocations,n_loops,nm_per_px,"
                                         "line_density_per_m2\n" + "".join(
        f"s1,{i},{i * 0.1},2,1,2.0,{1e13 + i * 1e11}\n" for i in range(n)))  # fmt: skip
    (tmp_path / "pairs.csv").write_text("series,index,time_s,a,b,pileup,rank,spacing_px,"
                                        "spacing_nm\n" + "".join(
        f"s1,{i},{i * 0.1},1,2,0,0,{20 - i},{2 * (20 - i)}\n" for i in range(n)))  # fmt: skip
    rows = "".join(f"s1,{i},{i * 0.1},{k},{c},{x},50.0,{ln},{2 * ln},{p},{k - 1}\n"
                   for i in range(n) for k, c, x, ln, p in
                   ((1, 0, 100 + 3 * i, 40, 0), (2, 0, 80 + 2 * i, 40, 0),
                    (3, 1, 30, 10 + i, "")))  # fmt: skip
    (tmp_path / "tracks.csv").write_text("series,index,time_s,id,cls,x_px,y_px,length_px,"
                                         "length_nm,pileup,rank\n" + rows)  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps({"counters": {"received": n}}))
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    skipped = [ln for ln in out.splitlines() if ln.startswith("skipped")]
    assert skipped == ["skipped contact_sheet: no frames found (no annotated.mp4, input not "
                       "readable)"]  # fmt: skip
    for name in FIGURES[:4]:
        assert (tmp_path / "report" / f"{name}.png").exists(), name
