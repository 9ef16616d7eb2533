"""One run folder for ``analyze`` and ``serve``; replaying a file is live (issue 17, items 2-3).

The golden end-to-end test runs the same small synthetic video through ``loopline analyze``
and ``loopline serve --from`` (real daemon processes, the ridge engine) and compares the
tables value for value.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from loopline.cli import main
from loopline.daemon.config import load_config
from loopline.daemon.supervisor import Supervisor
from loopline.io.runfolder import SCHEMA_VERSION, STAGES, TABLES

pytestmark = pytest.mark.timeout(300)

FPS = 10.0  # the synthetic video's own rate (not the daemon's default 25)
README = Path(__file__).resolve().parents[1] / "README.md"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(src: Path, out: Path, **overrides) -> dict:
    """``loopline serve --from SRC --out OUT`` (defaults otherwise); its summary.json."""
    o = {"source.protocol": "file", "source.path": str(src), "output.dir": str(out),
         "publish.endpoint": f"tcp://127.0.0.1:{_free_port()}", "metrics.interval_s": 0.2,
         **overrides}  # fmt: skip
    sup = Supervisor(load_config(overrides=o))
    result: dict[str, int] = {}
    th = threading.Thread(target=lambda: result.setdefault("code", sup.run()), daemon=True)
    th.start()
    th.join(240)
    if th.is_alive():
        sup.request_stop("test timeout")
        th.join(60)
    assert result.get("code") == 0, result
    return json.loads((out / "summary.json").read_text())


def video_info(path: Path) -> tuple[float, int]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return fps, n


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loopline.synth.generate import generate

    out = tmp_path_factory.mktemp("golden") / "clip"
    generate(out, preset="mixed", count=1, seed=7, video=True, frames=8, jobs=1, progress=False,
             overrides={"width": 160, "height": 160, "fps": FPS, "pileups": 1,
                        "loops": (2, 3)})  # fmt: skip
    return out


def test_readme_documents_every_table_and_column() -> None:
    text = README.read_text("utf-8")
    section = text[text.index("\n## Run folder") :]
    for name, spec in TABLES.items():
        assert f"`{name}`" in section, name
        for col, _, _ in spec:
            if col.startswith("t_") and col[2:-3] in STAGES:
                assert f"`{col[2:-3]}`" in section, col
            else:
                assert f"`{col}`" in section, (name, col)


def test_analyze_and_serve_from_write_the_same_run_folder(clip: Path, tmp_path: Path) -> None:
    a, s = tmp_path / "analyze", tmp_path / "serve"
    assert main(["analyze", str(clip), "--out", str(a), "--model", "ridge"]) == 0
    summary = serve(clip, s, **{"engine.model": "ridge"})
    assert summary["counters"]["analysed"] == summary["frames"] == 8
    for name, spec in TABLES.items():
        ta, ts = pd.read_csv(a / name), pd.read_csv(s / name)
        cols = [c for c, _, _ in spec]
        assert list(ta.columns) == list(ts.columns) == cols, name
        assert len(ta) == len(ts) > 0, name
        same = [c for c in cols if not (c.startswith("t_") or c == "latency_ms")]
        pd.testing.assert_frame_equal(ta[same], ts[same], check_exact=False, rtol=1e-9,
                                      atol=1e-9, obj=name)  # fmt: skip
    series = pd.read_csv(s / "series.csv")
    # the file's time axis (10 frames/s), not the replay clock
    np.testing.assert_allclose(series["time_s"], series["frame"] / FPS, atol=1e-9)
    assert series["latency_ms"].notna().all()
    assert pd.read_csv(a / "series.csv")["latency_ms"].isna().all()  # analyze has no latency
    # the annotated video at the input's rate, every frame
    assert video_info(s / "annotated.mp4") == (FPS, 8)
    sa, ss = (json.loads((d / "summary.json").read_text()) for d in (a, s))
    assert sa["schema_version"] == ss["schema_version"] == SCHEMA_VERSION
    xa, xs = sa["analysis"]["clip"], ss["analysis"]["clip"]
    for k in ("frames", "first_time_s", "last_time_s", "line_tracks", "loop_tracks",
              "mean_line_count", "mean_loop_count", "mean_abs_line_velocity_nm_per_s"):
        assert xa[k] == pytest.approx(xs[k], rel=1e-9), k
    assert xs["mean_spacing_nm_by_pileup"] == pytest.approx(xa["mean_spacing_nm_by_pileup"])
    # the report reads the daemon's folder as it is
    assert main(["report", str(s), "--out", str(tmp_path / "rep"), "--frames", "2"]) == 0
    assert (tmp_path / "rep" / "dislocation_kinematics.png").exists()


def _glide_video(path: Path, n: int, fps: float) -> None:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (96, 96))
    assert vw.isOpened()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((96, 96)) * 40 + 170).astype(np.uint8)
        cv2.line(img, (10 + i, 10), (30 + i, 86), 40, 3)
        vw.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    vw.release()


def test_serve_from_a_63_frame_file_analyses_all_63(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Default settings, an engine slower than the file's rate: every frame is analysed (the
    receiver waits; latest-wins would skip), on the container's time axis, at its rate."""
    path = tmp_path / "glide.mp4"
    _glide_video(path, 63, 20.0)
    monkeypatch.setenv("LOOPLINE_TEST_DELAY_MS", "60")  # 60 ms a frame; the file has 50
    s = serve(path, tmp_path / "run",
              **{"engine.factory": "loopline.daemon.standins:slow_engine"})  # fmt: skip
    c = s["counters"]
    assert (c["received"], c["analysed"], c["recorded"], c["skipped"]) == (63, 63, 63, 0)
    series = pd.read_csv(tmp_path / "run" / "series.csv")
    assert series["frame"].tolist() == list(range(63))
    np.testing.assert_allclose(series["time_s"], series["frame"] / 20.0, atol=1e-6)
    assert video_info(tmp_path / "run" / "annotated.mp4") == (20.0, 63)


def test_one_time_axis_rule_for_both_commands(tmp_path: Path) -> None:
    """A profile's frame_times_s wins, else the source's time (a file's own axis)."""
    import math

    import tifffile

    from loopline.calibration import Calibration, frame_time_s
    from loopline.daemon.analyzer import Analyzer
    from loopline.daemon.ingest import FileSource, Frame

    prof = tmp_path / "cal.toml"
    prof.write_text("nm_per_px = 2.0\nframe_times_s = [0.0, 0.5, 2.0]\n")
    an = Analyzer(calibration_profile=str(prof))
    an.new_series("s")
    assert [an.time_of(i, 10.0 + i) for i in range(3)] == [0.0, 0.5, 2.0]
    an = Analyzer()
    an.new_series("s")
    assert an.time_of(4, 0.4) == 0.4 and an.time_of(4, None) == 4.0
    assert frame_time_s(Calibration(fps=4.0), 2, 9.9) == 0.5
    assert frame_time_s(Calibration(nm_per_px=1.0), 2, 9.9) == 9.9
    # a TIFF stack's own axis (ImageJ finterval) comes with the replayed frames
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, np.zeros((3, 16, 16), np.uint8), imagej=True,
                     metadata={"finterval": 0.25})  # fmt: skip
    src = FileSource(tif, fps=math.inf)
    frames = [e for e in src if isinstance(e, Frame)]
    assert [f.meta["time_s"] for f in frames] == [0.0, 0.25, 0.5]


def test_series_parquet_is_written_in_closed_parts_a_kill_loses_nothing_flushed(
        tmp_path: Path) -> None:  # fmt: skip
    """While the writer runs, series.parquet is closed Parquet files in series.parquet.parts/
    (read as they are); a killed writer's parts are merged by recovery, a closed writer's by
    close(). Nothing needs repairing (issue 18, item 6)."""
    import shutil

    import pyarrow.parquet as pq

    from loopline.io.runfolder import RunTables, finish_parquet, parquet_parts, recover_parquet

    def rows(t: RunTables, frames: range) -> None:
        for i in frames:
            t.append(series={"series": "s", "frame": i, "time_s": i / 10, "n_loops": i % 3})

    killed = tmp_path / "killed"
    t = RunTables(killed, parquet="series.parquet", flush_rows=1, csv=False)
    rows(t, range(150))  # 150 parts: two merged by 64, 22 single
    parts = parquet_parts(killed / "series.parquet")
    assert not (killed / "series.parquet").exists() and parts.is_dir()
    assert pq.read_table(parts).num_rows == 150  # readable while the run goes
    # a merge cut short by the kill: a single part that a merged file already holds
    shutil.copy(parts / "c00000000-00000063.parquet", parts / "p00000005.parquet")
    # ... the writer is killed here (never closed): recovery merges what it left
    assert recover_parquet(killed) == {"series.parquet": 150}
    table = pq.read_table(killed / "series.parquet")
    assert table.column("frame").to_pylist() == list(range(150))
    assert table.schema.field("n_loops").type == "int64" and not parts.exists()
    assert finish_parquet(killed / "series.parquet") is None  # nothing left to do

    closed = tmp_path / "closed"
    t = RunTables(closed, parquet="series.parquet", flush_rows=4, csv=False)
    rows(t, range(10))
    t.close()
    assert pq.read_table(closed / "series.parquet").num_rows == 10
    assert [p.name for p in closed.iterdir()] == ["series.parquet"]
    empty = RunTables(tmp_path / "empty", parquet="series.parquet", csv=False)
    empty.close()
    assert pq.read_table(tmp_path / "empty" / "series.parquet").num_rows == 0


def _numbered_folder(folder: Path, numbers: list[int]) -> Path:
    """Frames of a line moving 1 px a frame, named by an irregular frame number."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, num in enumerate(numbers):
        img = (rng.random((96, 96)) * 40 + 170).astype(np.uint8)
        cv2.line(img, (20 + k, 10), (40 + k, 86), 40, 3)
        cv2.imwrite(str(folder / f"scan_{num:04d}.png"), img)
    return folder


def test_serve_from_a_folder_takes_times_from_the_file_names(tmp_path: Path) -> None:
    """serve --from FOLDER --times-from-names --fps 10 (irregular sampling), as analyze: the
    same time axis in both run folders; and serve's --nm-per-px wins over a profile's, as
    analyze's does (calibration.override)."""
    numbers = [0, 2, 3, 7, 8, 12]
    src = _numbered_folder(tmp_path / "scan", numbers)
    prof = tmp_path / "cal.toml"
    prof.write_text("nm_per_px = 0.5\n")
    a, s = tmp_path / "analyze", tmp_path / "serve"
    common = ["--model", "ridge", "--fps", "10", "--times-from-names", "--calibration",
              str(prof), "--nm-per-px", "2"]  # fmt: skip
    assert main(["analyze", str(src), "--out", str(a), *common]) == 0
    import signal

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(["serve", "--from", str(src), "--out", str(s), *common, "--publish",
                 f"tcp://127.0.0.1:{_free_port()}", "--until-series-end"]) == 0  # fmt: skip
    # the daemon's drain handlers go with it: a process that goes on keeps its own
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    want = [n / 10.0 for n in numbers]
    for run in (a, s):
        series = pd.read_csv(run / "series.csv")
        np.testing.assert_allclose(series["time_s"], want, atol=1e-9, err_msg=str(run))
        assert (series["nm_per_px"] == 2.0).all(), run


def test_serve_times_from_names_needs_a_folder(tmp_path: Path, capsys) -> None:
    clip = tmp_path / "glide.mp4"
    _glide_video(clip, 4, 10.0)
    code = main(["serve", "--from", str(clip), "--out", str(tmp_path / "run"),
                 "--times-from-names", "--fps", "10", "--model", "ridge", "--publish",
                 f"tcp://127.0.0.1:{_free_port()}"])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "folder of image files" in err, err
