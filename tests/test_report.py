"""``loopline report`` on a run folder made by ``loopline analyze`` of a synthetic video."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopline.cli import main

pytestmark = pytest.mark.timeout(120)

FIGURES = ("spacing_vs_time", "dislocation_kinematics", "loop_size_vs_time", "density_vs_time",
           "contact_sheet")  # fmt: skip
SHOT = Path(os.environ.get("LOOPLINE_REPORT_FIGURE", "/tmp/loopline-report.png"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loopline.analysis.analyze import AnalyzeOptions, analyze
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
    from loopline.analysis import FrameResult
    from loopline.analysis.series import SeriesWriter
    from loopline.calibration import Calibration

    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    # a run with empty frames only (no pile-ups, no loops), written by the one writer: those
    # figures are skipped, with reasons
    run = tmp_path / "run"
    with SeriesWriter(run, Calibration(nm_per_px=2.0)) as w:
        for i in range(2):
            w.append(FrameResult.empty(index=i, time_s=0.04 * i, shape=(64, 64), nm_per_px=2.0))
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "skipped spacing_vs_time: no pile-up spacings" in out
    assert "skipped loop_size_vs_time: no loops" in out
    # a folder of another layout is refused, naming what was expected
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "series.csv").write_text("frame,time_s,kind,count\n0,0,frame,0\n")
    assert main(["report", str(tmp_path / "old")]) == 2
    assert "expected columns series, frame, time_s" in capsys.readouterr().err


def _lines_and_loop(i: int):
    """Three vertical lines gliding 3, 2 and 2 px/frame and a growing loop (96 x 160 px)."""
    import numpy as np

    from loopline.analysis.sources import detections_from_masks

    h, w = 96, 160
    masks = []
    for x, v in ((30, 3), (45, 2), (62, 2)):
        m = np.zeros((h, w), bool)
        m[20:80, x + v * i - 3 : x + v * i + 3] = True
        masks.append(m)
    yy, xx = np.mgrid[:h, :w]
    masks.append(((xx - 135) / (6.0 + 0.5 * i)) ** 2 + ((yy - 50) / 4.0) ** 2 <= 1)
    return detections_from_masks(np.array(masks), np.array([0, 0, 0, 1]))


def test_report_on_a_daemon_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``loopline serve`` writes the layout of ``analyze``: the report reads it as it is.

    The folder is made by the daemon's own producer, in memory: the measure worker's
    Analyzer and the output worker's Recorder, with the messages that pass between them.
    """
    from loopline.daemon.analyzer import Analyzer
    from loopline.daemon.config import load_config
    from loopline.daemon.recorder import Recorder

    n = 10
    an = Analyzer(nm_per_px=2.0)
    rec = Recorder(tmp_path, load_config().output)
    an.new_series("s1")
    for i in range(n):
        t = an.time_of(i, 0.1 * i)
        body = an.process(_lines_and_loop(i), index=i, time_s=t)
        rec.append_result({**body, "series": "s1", "index": i}, latency_ms=12.0)
    rec.analysis(an.finish())
    rec.close({"received": n, "analysed": n, "recorded": n}, latency={}, ingest_latency={},
              metrics={})  # fmt: skip
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["schema_version"] == 1 and s["analysis"]["s1"]["line_tracks"] == 3
    loops = pd.read_csv(tmp_path / "tracks.csv").query("kind == 'loop'")
    assert (loops["minor_nm"] < loops["major_nm"]).all()  # measured, not minor = major
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    skipped = [ln for ln in out.splitlines() if ln.startswith("skipped")]
    assert skipped == ["skipped contact_sheet: no frames found (no annotated.mp4, input not "
                       "readable)"]  # fmt: skip
    for name in FIGURES[:4]:
        assert (tmp_path / "report" / f"{name}.png").exists(), name
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert "line velocity range (nm/s)" in set(table["quantity"])  # the daemon's velocities


def test_report_without_pixel_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A daemon run with no pixel size: spacings and loop axes in px (from pairs.csv and
    tracks.csv), not "no pile-up spacings"; the summary says the pixel size is unknown."""
    from loopline.daemon.analyzer import Analyzer
    from loopline.daemon.config import load_config
    from loopline.daemon.recorder import Recorder

    an = Analyzer(nm_per_px=0.0)
    rec = Recorder(tmp_path, load_config().output)
    an.new_series("s1")
    for i in range(6):
        body = an.process(_lines_and_loop(i), index=i, time_s=an.time_of(i, 0.1 * i))
        rec.append_result({**body, "series": "s1", "index": i}, latency_ms=12.0)
    rec.analysis(an.finish())
    rec.close({"received": 6}, latency={}, ingest_latency={}, metrics={})
    assert pd.read_csv(tmp_path / "pairs.csv")["spacing_nm"].isna().all()
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no pile-up spacings" not in out and "spacings in px" in out
    assert (tmp_path / "report" / "spacing_vs_time.png").exists()
    assert (tmp_path / "report" / "loop_size_vs_time.png").exists()
    table = dict(pd.read_csv(tmp_path / "report" / "summary.csv").values.tolist())
    assert table["pixel size (nm/px)"] == "unknown: lengths in px"
    assert float(table["mean spacing, pile-up 0 (px)"]) == pytest.approx(13.75, abs=3)


def test_summary_md_escapes_pipes_and_sorts_pileups_by_number(tmp_path: Path) -> None:
    from loopline.reports import figures as F

    run = F.RunData(tmp_path, pd.DataFrame({"series": ["a|b"], "frame": [0], "time_s": [0.0],
                                            "nm_per_px": [None]}),
                    pd.DataFrame(), pd.DataFrame(columns=["spacing_px"]),
                    pd.DataFrame(columns=["kind"]),
                    {"analysis": {"a|b": {"frames": 1, "mean_spacing_nm_by_pileup": {
                        "10": 5.0, "2": 4.0, "1": None}}}},
                    "a|b", ["x|y"])  # fmt: skip
    rep = F.Report(tmp_path)
    F.summary_table(run, rep)
    names = [k for k, _ in rep.table if k.startswith("mean spacing")]
    assert names == ["mean spacing, pile-up 2 (nm)", "mean spacing, pile-up 10 (nm)"]
    md = (tmp_path / "summary.md").read_text().splitlines()
    row = next(ln for ln in md if ln.startswith("| series reported"))
    assert row == r"| series reported | a\|b (of 2; the longest) |"
    assert all(ln.count("|") - ln.count(r"\|") == 3 for ln in md)


def test_figures_fit_their_data_have_legends_and_draw_centre_lines(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Issue 20: y limits fitted to the data (no empty band, never below 0 for spacings and
    counts), a legend on every multi-curve panel, and the contact sheet draws each line as
    recorded (its centre line, ``points_px``) and each loop's ellipse, not dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    from loopline.reports import figures as F

    run = F.load_run(run_dir)
    rep = F.Report(tmp_path)
    figs: dict[str, object] = {}
    monkeypatch.setattr(F, "_save", lambda fig, rep_, name: figs.__setitem__(name, fig))
    try:
        for fn in F.FIGURES.values():
            fn(run, rep)
        for ax in figs["spacing_vs_time"].axes:
            lo, hi = ax.get_ylim()
            data = np.concatenate([ln.get_ydata() for ln in ax.get_lines()]).astype(float)
            data = data[np.isfinite(data)]
            assert lo >= 0 and ax.get_legend() is not None
            assert data.max() >= hi - 0.15 * (hi - lo), "empty space above the curves"
            assert data.min() <= lo + 0.15 * (hi - lo) or lo == 0
        assert figs["dislocation_kinematics"].axes[0].get_legend() is not None
        for ax in figs["density_vs_time"].axes:
            assert ax.get_ylim()[0] >= 0
        sheet = figs["contact_sheet"].axes[0]
        drawn = [np.column_stack([ln.get_xdata(), ln.get_ydata()]) for ln in sheet.get_lines()
                 if len(ln.get_xdata()) >= 2]  # fmt: skip
        assert len(drawn) >= 3, "lines drawn as dots"
        from loopline.io.runfolder import read_points

        frame0 = run.tracks[(run.tracks.kind == "line") & (run.tracks.frame == 0)]
        want = [np.array(read_points(c)) for c in frame0["points_px"]]
        assert len(want) >= 3 and all(len(w) >= 2 for w in want)
        for w in want:  # every centre line drawn as recorded
            assert any(d.shape == w.shape and np.allclose(d, w) for d in drawn)
        assert any(isinstance(p, Ellipse) for p in sheet.patches)
    finally:
        plt.close("all")


def test_report_draws_error_bands_and_lists_alarms(tmp_path_factory: pytest.TempPathFactory,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Issue 22: ± 1 se bands from the `*_se` columns (spacings, velocities), the loop count's
    Poisson interval, and the alarms of alarms.csv (raised by analyze's own rules) in
    summary.md and the printed table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from loopline.analysis.alarms import AlarmConfig
    from loopline.analysis.analyze import AnalyzeOptions, analyze
    from loopline.reports import figures as F
    from loopline.synth.generate import generate

    base = tmp_path_factory.mktemp("report-se")
    video = base / "video"
    generate(video, preset="mixed", count=1, seed=7, video=True, frames=12, jobs=1,
             progress=False, overrides={"width": 256, "height": 256, "pileups": 1,
                                        "dislocations": (4, 5), "loops": (4, 8)})  # fmt: skip
    run = base / "run"
    analyze(video, run, options=AnalyzeOptions(model="truth", drift="none",
                                               alarms=AlarmConfig(spacing_below_nm=1000.0)))
    alarms = pd.read_csv(run / "alarms.csv")
    assert (alarms["rule"] == "spacing_low").any()
    data = F.load_run(run)
    assert len(data.alarms) == len(alarms)
    figs: dict[str, object] = {}
    rep = F.Report(tmp_path_factory.mktemp("out"))
    real_save = F._save

    def keep(fig, rep_, name):
        figs[name] = fig

    try:
        F._save = keep
        for name, fn in F.FIGURES.items():
            if name != "contact_sheet":
                fn(data, rep)
        F.summary_table(data, rep)

        def bands(ax) -> list:
            return [c for c in ax.collections if isinstance(c, PolyCollection)]

        def inside(ax, band) -> bool:  # a band's vertices lie about the curves they go with
            v = np.concatenate([p.vertices for p in band.get_paths()])
            lo, hi = ax.get_ylim()
            return bool(np.isfinite(v).all() and (v[:, 1] >= lo - 1e-6).mean() > 0.9
                        and (v[:, 1] <= hi + 1e-6).mean() > 0.9)  # fmt: skip

        sp = figs["spacing_vs_time"].axes[0]
        assert bands(sp) and all(inside(sp, b) for b in bands(sp))
        assert "± 1 standard error" in [t.get_text() for t in sp.get_legend().get_texts()]
        # the mean's band: half-width = sqrt(Σ se²)/n over the frame's pairs, from pairs.csv
        pairs = data.pairs.dropna(subset=["spacing_nm_se"])
        f = pairs["frame"].value_counts().idxmax()
        q = data.pairs[data.pairs["frame"] == f]
        want = F._pileup_mean_se(q["spacing_nm_se"])
        assert want > 0 and np.isfinite(want)
        (mean_band,) = [b for b in bands(sp) if tuple(b.get_facecolor()[0][:3]) == (0, 0, 0)]
        v = np.concatenate([p.vertices for p in mean_band.get_paths()])
        at = v[np.isclose(v[:, 0], float(q["time_s"].iloc[0]))][:, 1]
        assert (at.max() - at.min()) / 2 == pytest.approx(want, rel=1e-6)
        v_ax = figs["dislocation_kinematics"].axes[1]
        assert v_ax.get_ylabel() == "velocity (nm/s)" and bands(v_ax)
        se = data.kind("line")["velocity_nm_per_s_se"].dropna()
        assert len(se) and (se > 0).all()
        dens = {ax.get_ylabel(): ax for ax in figs["density_vs_time"].axes}
        assert bands(dens["loops (count)"])
    finally:
        F._save = real_save
        plt.close("all")
    md = (rep.out / "summary.md").read_text()
    assert "## Alarms" in md and "| frame | time (s) | rule | state |" in md
    first = alarms.iloc[0]
    row = next(ln for ln in md.splitlines() if first["message"].replace("|", "\\|") in ln)
    assert f"| {int(first['frame'])} |" in row and "| spacing_low | raise |" in row
    assert ("alarms raised: spacing_low", str(int((alarms["state"] == "raise").sum()))) in rep.table
    # the command prints it too
    assert main(["report", str(run), "--out", str(base / "rep")]) == 0
    out = capsys.readouterr().out
    assert "alarms raised" in out and "spacing_low" in out
