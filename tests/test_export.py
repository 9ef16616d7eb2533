"""Exports of a run: napari layer data (and the reader plugin), HyperSpy signal files."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dm_writer import write_dm

import loopline
from loopline.calibration import Calibration
from loopline.export.hyperspy import signal_dict, to_hspy
from loopline.export.napari import napari_get_reader, read_run, to_napari
from loopline.synth.generate import generate

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> loopline.Run:
    root = tmp_path_factory.mktemp("export")
    video = root / "video"
    generate(video, preset="mixed", count=1, seed=7, video=True, frames=6,
             overrides={"width": 128, "height": 96, "loops": [2, 4], "pileups": 1,
                        "lead_pinned_prob": 0.0, "stage_drift": 0.0},
             progress=False, jobs=1)  # fmt: skip
    return loopline.analyze(video, root / "run", model="truth")


def _layers(layers):
    return {kw["name"]: (data, kw, kind) for data, kw, kind in layers}


def test_to_napari_layer_data_matches_the_tables(run, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="loopline.export.napari"):
        layers = _layers(to_napari(run))
    assert "no masks layer" in caplog.text  # a run folder keeps no masks: said, not faked
    assert list(layers) == ["frames", "centre lines", "loops", "line tracks", "loop tracks"]
    assert [k for _, _, k in layers.values()] == ["image", "shapes", "shapes", "tracks",
                                                  "tracks"]  # fmt: skip
    for _, kw, _ in layers.values():
        assert kw["scale"] == (1.0, 2.0, 2.0) and kw["metadata"]["units"] == ("frame", "nm", "nm")

    img, _, _ = layers["frames"]
    assert img.shape == (6, 96, 128)
    np.testing.assert_array_equal(img, run.frame_stack())

    paths, kw, _ = layers["centre lines"]
    lines = run.lines()
    assert kw["shape_type"] == "path" and len(paths) == len(lines)
    for p, r in zip(paths, lines.itertuples(), strict=True):
        assert p.shape == (len(r.points), 3) and (p[:, 0] == r.frame).all()  # t, y, x
        np.testing.assert_allclose(p[:, 1:], r.points[:, ::-1])  # the centre line
        arc = np.hypot(*np.diff(r.points, axis=0).T).sum()
        assert arc == pytest.approx(r.length_px, rel=0.05, abs=1.0)
    np.testing.assert_array_equal(kw["features"]["track_id"], lines["track_id"])

    polys, kw, _ = layers["loops"]
    loops = run.loops()
    assert kw["shape_type"] == "polygon" and len(polys) == len(loops) > 0
    for p, r in zip(polys, loops.itertuples(), strict=True):
        assert p.shape == (48, 3) and (p[:, 0] == r.frame).all()
        np.testing.assert_allclose(p.mean(axis=0)[1:], [r.y_px, r.x_px], atol=1e-9)
        extent = np.hypot(*(p[:, 1:] - [r.y_px, r.x_px]).T)
        assert extent.max() == pytest.approx(r.major_px / 2, rel=1e-3)
        assert extent.min() == pytest.approx(r.minor_px / 2, rel=1e-2)

    for name, kind in (("line tracks", "line"), ("loop tracks", "loop")):
        data, _, _ = layers[name]
        t = run.tracks[(run.tracks.kind == kind) & (run.tracks.track_id >= 0)]
        assert data.shape == (len(t), 4)
        assert (np.lexsort((data[:, 1], data[:, 0])) == np.arange(len(data))).all()
        want = t.sort_values(["track_id", "frame"])[["track_id", "frame", "y_px", "x_px"]]
        np.testing.assert_allclose(data, want.to_numpy(float))


def test_to_napari_without_the_input_skips_the_frames(run, tmp_path, caplog) -> None:
    moved = tmp_path / "run"
    shutil.copytree(run.path, moved)
    summary = (moved / "summary.json").read_text().replace(str(run.input), str(tmp_path / "gone"))
    (moved / "summary.json").write_text(summary)
    with caplog.at_level(logging.WARNING):
        names = [kw["name"] for _, kw, _ in to_napari(moved)]
    assert names[0] == "centre lines" and "no frames layer" in caplog.text
    # a run of two series: which one is asked for
    for name in ("series.csv", "tracks.csv"):
        t = pd.read_csv(moved / name)
        t.loc[t.frame >= 3, "series"] = "second"
        t.to_csv(moved / name, index=False)
    with pytest.raises(ValueError, match="holds 2 series; expected series= one of"):
        to_napari(moved, frames=False)
    with pytest.raises(ValueError, match=r"series must be one of .*got 'x'"):
        to_napari(moved, series="x", frames=False)
    layers = _layers(to_napari(moved, series="second", frames=False))
    assert set(layers["line tracks"][0][:, 1]) == {0.0, 1.0, 2.0}  # t = place in the series


def test_napari_reader_plugin(run, tmp_path) -> None:
    assert napari_get_reader(str(run.path)) is read_run
    assert napari_get_reader(run.path / "summary.json") is read_run
    assert napari_get_reader([str(run.path)]) is read_run
    assert napari_get_reader(tmp_path) is None
    assert napari_get_reader([str(run.path), str(run.path)]) is None
    assert next(kw["name"] for _, kw, _ in read_run([str(run.path)])) == "frames"
    # the npe2 manifest, shipped as package data and registered as an entry point
    man = yaml.safe_load((ROOT / "loopline" / "napari.yaml").read_text())
    assert man["name"] == "loopline"
    (cmd,) = man["contributions"]["commands"]
    (reader,) = man["contributions"]["readers"]
    assert reader["command"] == cmd["id"] and reader["accepts_directories"] is True
    mod, func = cmd["python_name"].split(":")
    assert getattr(importlib.import_module(mod), func) is napari_get_reader
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert py["project"]["entry-points"]["napari.manifest"] == {"loopline": "loopline:napari.yaml"}
    assert "napari.yaml" in py["tool"]["setuptools"]["package-data"]["loopline"]


def test_napari_builds_the_layers_headless(run) -> None:
    napari = pytest.importorskip("napari")
    for data, kw, kind in to_napari(run):
        layer = napari.layers.Layer.create(data, kw, kind)
        assert layer.name == kw["name"] and tuple(layer.scale) == kw["scale"]


def test_to_hspy_round_trip(run, tmp_path) -> None:
    from rsciio.hspy import file_reader

    out = loopline.to_hspy(run, tmp_path / "run.hspy")
    (sig,) = file_reader(str(out))
    np.testing.assert_array_equal(sig["data"], run.frame_stack())
    axes = sig["axes"]
    assert [(a["name"], a["units"], bool(a["navigate"])) for a in axes] == [
        ("time", "s", True), ("y", "nm", False), ("x", "nm", False)]  # fmt: skip
    assert axes[0]["scale"] == pytest.approx(0.04) and axes[0]["offset"] == 0.0
    assert axes[1]["scale"] == axes[2]["scale"] == 2.0
    md = sig["metadata"]["loopline"]
    np.testing.assert_array_equal(md["series"]["n_dislocations"], run.series["n_dislocations"])
    np.testing.assert_allclose(md["series"]["mean_spacing_nm"], run.series["mean_spacing_nm"])
    np.testing.assert_allclose(md["tracks"]["velocity_nm_per_s"],
                               run.tracks["velocity_nm_per_s"], equal_nan=True)  # fmt: skip
    assert list(md["tracks"]["kind"]) == list(run.tracks["kind"])
    np.testing.assert_allclose(md["pairs"]["spacing_nm"], run.pairs["spacing_nm"])
    assert md["summary"]["frames"] == 6 and md["summary"]["calibration"]["nm_per_px"] == 2.0
    assert sig["metadata"]["General"]["title"] == "loopline video"


def test_to_hspy_markers_match_the_tables(run, tmp_path) -> None:
    from rsciio.hspy import file_reader

    stack = run.frame_stack()
    (sig,) = file_reader(str(to_hspy(run, tmp_path / "m.hspy", frames=stack)))
    markers = sig["metadata"]["Markers"]
    assert sorted(markers) == ["dislocation_lines", "loops"]  # every loop has its axes
    lines, loops = markers["dislocation_lines"], markers["loops"]
    # HyperSpy >= 2.0's stored layout (Markers._to_dictionary), loaded by hs.load
    keys = ("class", "name", "plot_on_signal", "offset_transform", "transform")
    assert [lines[k] for k in keys] == ["Lines", "dislocation_lines", True, "display", "data"]
    assert (loops["class"], loops["offset_transform"], loops["transform"]) == (
        "Ellipses", "data", "display")  # fmt: skip
    segs, kw = lines["kwargs"]["segments"], loops["kwargs"]
    assert kw["units"] == "xy"
    for ragged in (segs, kw["offsets"], kw["widths"], kw["heights"], kw["angles"]):
        assert ragged.dtype == object and ragged.shape == (6,)  # one entry per frame
    nm, t = 2.0, run.tracks  # positions in nm, as the signal's y/x axes
    lines_all = run.lines()
    assert sum(len(s) for s in segs) == sum(len(p) - 1 for p in lines_all["points"]) > 0
    assert sum(len(o) for o in kw["offsets"]) == (t.kind == "loop").sum() > 0
    for j, frame in enumerate(run.series["frame"]):
        ln = lines_all[lines_all.frame == frame]
        want = [np.stack([p[:-1], p[1:]], axis=1) for p in ln["points"]]  # [[x0, y0], [x1, y1]]
        np.testing.assert_allclose(segs[j], np.concatenate(want) * nm)  # each line's pieces
        lp = t[(t.kind == "loop") & (t.frame == frame)]
        np.testing.assert_allclose(kw["offsets"][j], lp[["x_px", "y_px"]].to_numpy(float) * nm)
        np.testing.assert_allclose(kw["widths"][j], lp["major_px"].to_numpy(float) * nm)
        np.testing.assert_allclose(kw["heights"][j], lp["minor_px"].to_numpy(float) * nm)
        np.testing.assert_allclose(kw["angles"][j], lp["angle_deg"].to_numpy(float))
    # a loop without fitted axes is a point at its centre
    moved = tmp_path / "run"
    shutil.copytree(run.path, moved)
    tracks = pd.read_csv(moved / "tracks.csv")
    first = tracks.index[tracks.kind == "loop"][0]
    tracks.loc[first, ["major_px", "minor_px"]] = np.nan
    tracks.to_csv(moved / "tracks.csv", index=False)
    (sig,) = file_reader(str(to_hspy(moved, tmp_path / "p.hspy", frames=stack)))
    md = sig["metadata"]["Markers"]
    pts = md["loop_centres"]
    assert (pts["class"], pts["offset_transform"]) == ("Points", "data")
    j = run.series["frame"].tolist().index(tracks.loc[first, "frame"])
    np.testing.assert_allclose(pts["kwargs"]["offsets"][j],
                               [tracks.loc[first, ["x_px", "y_px"]].to_numpy(float) * nm])
    assert sum(len(o) for o in md["loops"]["kwargs"]["offsets"]) == (t.kind == "loop").sum() - 1


def test_to_hspy_markers_load_in_hyperspy(run, tmp_path) -> None:
    hs = pytest.importorskip("hyperspy.api")
    s = hs.load(to_hspy(run, tmp_path / "m.hspy", frames=run.frame_stack()))
    m = s.metadata.Markers.dislocation_lines
    assert type(m).__name__ == "Lines"
    lines = run.lines(frame=int(run.series["frame"].iloc[-1]))
    s.axes_manager.indices = (len(run.series) - 1,)
    want = np.concatenate([np.stack([p[:-1], p[1:]], axis=1) for p in lines["points"]]) * 2.0
    np.testing.assert_allclose(m.get_current_kwargs()["segments"], want)
    assert type(s.metadata.Markers.loops).__name__ == "Ellipses"


def test_to_hspy_uneven_times_and_suffixes(run, tmp_path) -> None:
    from rsciio.hspy import file_reader

    times = (0.0, 0.1, 0.25, 0.3, 0.7, 0.71)
    uneven = loopline.analyze(run.input, tmp_path / "uneven", model="truth",
                              calibration=Calibration(nm_per_px=2.0, frame_times_s=times))
    (sig,) = file_reader(str(to_hspy(uneven, tmp_path / "uneven.hspy")))
    np.testing.assert_allclose(sig["axes"][0]["axis"], times)
    with pytest.raises(ValueError, match=r"expected a \.hspy or \.zspy file name, got 'a\.h5'"):
        to_hspy(run, tmp_path / "a.h5")
    with pytest.raises(ValueError, match=r"expected frames of shape \(6, H, W\)"):
        signal_dict(run, frames=np.zeros((2, 4, 4)))
    if importlib.util.find_spec("zarr") is None:
        with pytest.raises(ImportError, match="needs the zarr package"):
            to_hspy(run, tmp_path / "run.zspy")
    else:
        from rsciio.zspy import file_reader as zread

        (z,) = zread(str(to_hspy(run, tmp_path / "run.zspy")))
        np.testing.assert_array_equal(np.asarray(z["data"]), run.frame_stack())


def test_dm_input_keeps_its_calibration(tmp_path) -> None:
    from rsciio.hspy import file_reader

    rng = np.random.default_rng(0)
    data = (rng.random((4, 64, 80)) * 120).astype(np.uint8)
    data[:, 30:33, 10:70] = 255
    dm = write_dm(tmp_path / "movie.dm4", data, scales=(0.05, 0.5, 0.5),
                  units=("s", "nm", "nm"), version=4)  # fmt: skip
    run = loopline.analyze(dm, tmp_path / "run", model="ridge")
    assert run.nm_per_px == 0.5
    (sig,) = file_reader(str(loopline.to_hspy(run, tmp_path / "dm.hspy")))
    np.testing.assert_array_equal(sig["data"], data)
    assert [a["scale"] for a in sig["axes"]] == pytest.approx([0.05, 0.5, 0.5])
    assert [a["units"] for a in sig["axes"]] == ["s", "nm", "nm"]
    assert sig["metadata"]["General"]["original_filename"] == "movie.dm4"
