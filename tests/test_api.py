"""The Python API (``loopline/api.py``): the README's examples run as a notebook would."""

from __future__ import annotations

import doctest
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import loopline
import loopline.api
from loopline.api import Run
from loopline.synth.generate import generate

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.timeout(180)


def make_video(root: Path, *, size: int = 192, frames: int = 12) -> Path:
    """The README's ``loopline synth --preset mixed --video`` dataset, smaller."""
    out = root / "data" / "pileup-video"
    generate(out, preset="mixed", count=1, seed=7, video=True, frames=frames,
             overrides={"width": size, "height": size, "loops": [2, 4], "pileups": 1,
                        "lead_pinned_prob": 0.0, "stage_drift": 0.0},
             progress=False, jobs=1)  # fmt: skip
    return out


def readme_blocks() -> list[str]:
    """The Python code blocks of the README's *Python API* section, but those that need a
    daemon, napari or HyperSpy (their first line says ``# needs ...``)."""
    text = README.read_text("utf-8")
    start = text.index("\n## Python API")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    return [b for b in blocks if not b.lstrip().startswith("# needs")]


def test_readme_python_api_examples_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_video(tmp_path)
    blocks = readme_blocks()
    assert len(blocks) >= 6
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md Python API block {i}", "exec"), ns)
    run = ns["run"]
    assert isinstance(run, Run) and run.path == Path("runs/pileup-video")
    assert run.summary["frames"] == 12 and run.nm_per_px == 2.0
    assert list(run.series["frame"]) == list(range(12))
    assert ns["frame"].image.shape == (192, 192) and ns["frame"].index == 0
    assert ns["result"].n_dislocations == len(ns["result"].line_length_nm)
    names = [kw["name"] for _, kw, _ in ns["layers"]]
    assert names[:2] == ["frames", "centre lines"] and "line tracks" in names
    assert [a["units"] for a in ns["signal"]["axes"]] == ["s", "nm", "nm"]
    assert len(ns["signal"]["metadata"]["loopline"]["series"]["mean_spacing_nm"]) == 12


def test_api_docstring_examples() -> None:
    res = doctest.testmod(loopline.api, extraglobs={"loopline": loopline}, verbose=False,
                          optionflags=doctest.ELLIPSIS)  # fmt: skip
    assert res.attempted >= 5 and res.failed == 0


def test_import_loopline_stays_light() -> None:
    code = ("import sys, loopline; heavy = [m for m in ('loopline.api', 'pandas', 'cv2', "
            "'zmq', 'torch') if m in sys.modules]; assert not heavy, heavy; "
            "assert callable(loopline.analyze) and 'loopline.api' in sys.modules; "
            "assert 'open_run' in dir(loopline)")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        loopline.nope  # noqa: B018


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("api"), size=128, frames=6)


def test_analyze_out_options_and_calibration(video: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    a = loopline.analyze(video, model="truth", max_frames=3)
    b = loopline.analyze(video, model="truth", max_frames=2, min_score=0.5, nm_per_px=0.5)
    assert a.path == Path("runs/pileup-video") and b.path == Path("runs/pileup-video-2")
    assert len(a.series) == 3 and len(b.series) == 2
    assert b.nm_per_px == 0.5 and b.summary["calibration"]["nm_per_px"] == 0.5
    assert b.series["mean_length_nm"].iloc[0] == pytest.approx(
        b.series["mean_length_px"].iloc[0] * 0.5)  # fmt: skip
    import inspect

    assert inspect.signature(loopline.analyze).parameters["model"].default == "defects"
    with pytest.raises(TypeError, match=r"unknown option.*bogus; expected one of"):
        loopline.analyze(video, tmp_path / "x", model="truth", bogus=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loopline.analyze(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="expected a run folder"):
        loopline.open_run(tmp_path)


def _dense(p: np.ndarray, step: float = 0.05) -> np.ndarray:
    """Points every ``step`` px along the polyline ``p`` (K, 2)."""
    out = [p[:1]]
    for a, b in itertools.pairwise(p):
        n = max(int(np.hypot(*(b - a)) / step), 1)
        out.append(a + (b - a) * np.linspace(0, 1, n + 1)[1:, None])
    return np.concatenate(out)


def test_run_tables_geometry_and_frames(video: Path, tmp_path: Path) -> None:
    run = loopline.analyze(video, tmp_path / "run", model="truth")
    assert run.series_ids == ["pileup-video"]
    assert set(run.tracks["kind"]) == {"line", "loop"}
    assert run.tracks["series"].map(type).eq(str).all() and run.pairs["spacing_nm"].notna().all()
    lines = run.lines(frame=2)
    assert len(lines) == run.series.set_index("frame").loc[2, "n_dislocations"]
    # each line's centre line, as measured (thinned to 0.25 px, 0.1 px rounding)
    from loopline.analysis.sources import open_source, truth_detections
    from loopline.calibration import Calibration

    fr = next(f for f in open_source(video) if f.index == 2)
    res = loopline.measure_frame(truth_detections(fr.labels, fr.image.shape),
                                 calibration=Calibration(nm_per_px=2.0))  # fmt: skip
    assert len(lines) == res.n_lines > 0
    for r in lines.itertuples():
        p = r.points
        assert p.ndim == 2 and p.shape[1] == 2 and 2 <= len(p) <= 50
        np.testing.assert_allclose([r.x0_px, r.y0_px, r.x1_px, r.y1_px], [*p[0], *p[-1]])
        # the measured line whose centre this row has, and its 50 points within 0.4 px of it
        i = int(np.argmin(np.hypot(*(res.line_centroid_px - [r.x_px, r.y_px]).T)))
        full = res.line_points_px[i]
        d = np.hypot(*(full[:, None, :] - _dense(p)[None]).transpose(2, 0, 1)).min(axis=1)
        assert d.max() < 0.4, (r.track_id, d.max())
        np.testing.assert_allclose([p[0], p[-1]], full[[0, -1]], atol=0.051)  # ends kept
    # a run written before points_px: the straight segment of the line's length through its
    # centre, across the glide direction
    old = run.tracks.drop(columns="points_px")
    x0, y0, x1, y1 = loopline.api.line_segments(old[(old.kind == "line") & (old.frame == 2)])
    seg = lines.assign(x0_px=x0, y0_px=y0, x1_px=x1, y1_px=y1)
    np.testing.assert_allclose((seg.x0_px + seg.x1_px) / 2, seg.x_px)
    np.testing.assert_allclose((seg.y0_px + seg.y1_px) / 2, seg.y_px)
    dx, dy = seg.x1_px - seg.x0_px, seg.y1_px - seg.y0_px
    np.testing.assert_allclose(np.hypot(dx, dy), seg.length_px)
    np.testing.assert_allclose(dx * seg.glide_x + dy * seg.glide_y, 0, atol=1e-9)
    loops = run.loops(frame=2)
    assert len(loops) == run.series.set_index("frame").loc[2, "n_loops"] > 0
    frames = list(run.frames())
    assert [f.index for f in frames] == list(range(6)) and frames[0].image.shape == (128, 128)
    assert run.frame_stack().shape == (6, 128, 128)
    assert "Run(" in repr(run)


def test_engine_one_frame_or_a_batch() -> None:
    eng = loopline.Engine("ridge")
    img = np.zeros((48, 64), np.uint8)
    img[20:23, 5:60] = 200
    one = eng(img)
    assert one.masks.shape[1:] == (48, 64)
    batch = eng(np.stack([img, img]))
    assert isinstance(batch, list) and len(batch) == 2
    with pytest.raises(ValueError, match=r"expected grey frames \(H, W\), got shape"):
        eng([np.zeros((4, 5, 3))])
    r = loopline.measure_frame(one, index=3, time_s=0.1, nm_per_px=2.0)
    assert r.index == 3 and r.nm_per_px == 2.0


def _frame_msg(seq: int) -> list[bytes]:
    h = {"schema": "loopline.frame/2", "seq": seq, "series": "s", "index": seq,
         "time_s": seq / 25, "shape": [64, 64], "px_nm": 2.0,
         "tracks": [{"kind": "line", "track_id": 4, "cls": 0, "score": 0.9, "x_px": 30,
                     "y_px": 20, "box_px": [10, 18, 50, 22], "length_px": 40.0,
                     "length_nm": 80.0, "points_px": "10 20;30 20;50 20", "pileup_id": 0,
                     "rank": 0}]}
    return [b"frame", json.dumps(h).encode()]


def test_live_iterates_over_published_frames() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    ep = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    stop = threading.Event()

    def send() -> None:
        seq = 0
        while not stop.is_set():
            pub.send_multipart(_frame_msg(seq))
            seq += 1
            time.sleep(0.05)

    th = threading.Thread(target=send, daemon=True)
    th.start()
    try:
        got = list(loopline.live(ep, timeout=5, max_frames=3))
    finally:
        stop.set()
        th.join(2)
        pub.close(0)
        ctx.term()
    assert len(got) == 3
    idx = [m.view.frame for m in got]
    assert idx == sorted(idx) and len(set(idx)) == 3
    v = got[0].view
    assert v.nm_per_px == 2.0 and len(v.lines) == 1 and v.lines[0].length_nm == 80.0
    assert got[0].header["tracks"][0]["points_px"] == "10 20;30 20;50 20"
    assert v.lines[0].points == [[10, 20], [30, 20], [50, 20]]


def test_live_ends_when_nothing_comes() -> None:
    t0 = time.monotonic()
    assert list(loopline.live("tcp://127.0.0.1:1", timeout=0.3)) == []
    assert time.monotonic() - t0 < 5
