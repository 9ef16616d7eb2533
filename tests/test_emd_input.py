"""EMD input (Velox and Berkeley/NCEM, read through RosettaSciIO) keeps its calibration.

The files are written here with h5py in the layouts ``rsciio.emd.file_reader`` reads: Berkeley
EMD 0.2 (root ``version_major``/``version_minor``; a group ``data/<name>`` with
``emd_group_type`` 1 holding ``data`` and one ``dim<k>`` axis per dimension, ``dim1`` the
first, with ``name`` and ``units``), and a minimal Velox file (``Version`` JSON; an image under
``Data/Image/<id>`` stored (y, x, frame) with its JSON ``Metadata``: pixel size in m, frame
time in s).
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pandas as pd
import pytest

h5py = pytest.importorskip("h5py")
pytest.importorskip("rsciio.emd")

from loopline.cli import main  # noqa: E402
from loopline.io import frames  # noqa: E402
from loopline.io.frames import open_frames, pixel_size_from_file  # noqa: E402

pytestmark = pytest.mark.timeout(120)

FRAMES, HEIGHT, WIDTH = 5, 48, 64  # not square: a transposed frame would show


def _movie(dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = (rng.random((FRAMES, HEIGHT, WIDTH)) * 900 + 100).astype(dtype)
    for i in range(FRAMES):  # a bright line moving down, one row a frame
        data[i, 12 + i : 15 + i, 8:56] = 4000
    return data


def write_ncem(path, groups: dict, *, version=(0, 2)):
    """A Berkeley EMD file: ``groups`` maps a name to (data, [(name, units, values), ...])
    with one axis per dimension of ``data``, in the order of the file (``dim1`` first)."""
    with h5py.File(path, "w") as f:
        f.attrs["version_major"], f.attrs["version_minor"] = version
        for name, (data, dims) in groups.items():
            g = f.create_group(f"data/{name}")
            g.attrs["emd_group_type"] = 1
            g.create_dataset("data", data=data)
            for k, (dname, units, values) in enumerate(dims, 1):
                d = g.create_dataset(f"dim{k}", data=np.asarray(values, np.float64))
                d.attrs["name"], d.attrs["units"] = dname, units
    return path


def _tyx(t_units="s", t_step=0.1, t0=0.0, xy_units="nm", xy_step=0.5):
    return [("time", t_units, t0 + np.arange(FRAMES) * t_step),
            ("y", xy_units, np.arange(HEIGHT) * xy_step),
            ("x", xy_units, np.arange(WIDTH) * xy_step)]  # fmt: skip


def write_velox(path, data: np.ndarray, *, pixel_m: float, frame_time_s: float):
    """A minimal Velox EMD file holding one image series (``data``: frames, y, x)."""
    md = {"BinaryResult": {"PixelSize": {"width": str(pixel_m), "height": str(pixel_m)},
                           "PixelUnitX": "m", "PixelUnitY": "m",
                           "Offset": {"x": "0", "y": "0"}, "DetectorIndex": "0"},
          "Scan": {"FrameTime": str(frame_time_s)},
          "Detectors": {"Detector-0": {"DetectorName": "BM-Ceta",
                                       "ExposureTime": str(frame_time_s)}},
          "Acquisition": {}, "CustomProperties": {}}  # fmt: skip
    raw = np.frombuffer(json.dumps(md).encode(), np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("Version", data=np.array([b'{"format": "Velox", "version": "11"}']))
        g = f.create_group("Data/Image/6c5bd3f0a1b14a3c9b1e0d2f7a8c4e51")
        stored = np.ascontiguousarray(np.moveaxis(data, 0, -1))  # (y, x, frame)
        g.create_dataset("Data", data=stored, chunks=(*stored.shape[:2], 1))
        g.create_dataset("Metadata", data=raw[:, None])
    return path


def _stamped(path):
    ff = open_frames(path)
    got = list(ff.stamped())
    return ff, np.stack([img for img, _ in got]), [t for _, t in got]


def test_berkeley_emd_stack_keeps_pixel_size_and_times(tmp_path, caplog):
    data = _movie()
    path = write_ncem(tmp_path / "movie.emd", {
        "movie": (data, _tyx()),
        "spectrum": (np.arange(100.0), [("energy", "keV", np.arange(100) * 0.01)]),
    })  # fmt: skip
    from rsciio.emd import file_reader

    # RosettaSciIO reads it (dim1 = time comes back last), else the writer is at fault
    sigs = {s["metadata"]["General"]["title"]: s for s in file_reader(str(path))}
    assert sorted(sigs) == ["movie", "spectrum"]
    assert [(a["name"], a["units"]) for a in sigs["movie"]["axes"]] == [
        ("x", "nm"), ("y", "nm"), ("time", "s")]  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="loopline.io.frames"):
        ff, imgs, times = _stamped(path)
    assert "holds 2 signals; reading #0, 'movie'" in caplog.text
    assert "skipped: 'spectrum' of shape (100,) (keV)" in caplog.text
    assert (ff.kind, ff.count, ff.fps, ff.pixel_size_nm) == ("emd", 5, 10.0, 0.5)
    assert imgs.dtype == np.uint16
    np.testing.assert_array_equal(imgs, data)  # frames × y × x, as written
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert pixel_size_from_file(path) == 0.5


@pytest.mark.parametrize(
    ("t_units", "t_step", "t0", "xy_units", "xy_step", "fps", "times"),
    [
        ("ms", 40.0, 0.0, "µm", 0.0005, 25.0, [0.0, 0.04, 0.08, 0.12, 0.16]),
        ("s", 0.5, 2.0, "A", 5.0, 2.0, [2.0, 2.5, 3.0, 3.5, 4.0]),
        ("s", 0.1, 0.0, "pm", 500.0, 10.0, [0.0, 0.1, 0.2, 0.3, 0.4]),
        ("s", 0.1, 0.0, "um", 0.0005, 10.0, [0.0, 0.1, 0.2, 0.3, 0.4]),
    ],
    ids=["ms-micrometre", "offset-angstrom", "picometre", "um"],
)
def test_emd_units_become_nm_per_px_and_seconds(tmp_path, t_units, t_step, t0, xy_units,
                                                xy_step, fps, times):  # fmt: skip
    data = _movie(np.float32)
    path = write_ncem(tmp_path / "m.emd", {"m": (data, _tyx(t_units, t_step, t0, xy_units,
                                                            xy_step))})  # fmt: skip
    ff, imgs, got = _stamped(path)
    assert ff.fps == pytest.approx(fps) and ff.pixel_size_nm == pytest.approx(0.5)
    np.testing.assert_array_equal(imgs, data)
    assert got == pytest.approx(times)


def test_emd_written_by_rosettasciio_reads_the_same(tmp_path):
    """HyperSpy / RosettaSciIO write the axes the other way round (``dim1`` = x)."""
    from rsciio.emd import file_writer

    data = _movie()
    axes = [{"name": "time", "units": "s", "scale": 0.1, "offset": 0.0, "size": FRAMES,
             "navigate": True},
            {"name": "y", "units": "nm", "scale": 0.5, "offset": 0.0, "size": HEIGHT,
             "navigate": False},
            {"name": "x", "units": "nm", "scale": 0.5, "offset": 0.0, "size": WIDTH,
             "navigate": False}]  # fmt: skip
    sig = {"data": data, "axes": axes, "original_metadata": {},
           "metadata": {"General": {"title": "stack"}, "Signal": {"signal_type": ""}}}
    file_writer(str(tmp_path / "hs.emd"), sig)
    ff, imgs, times = _stamped(tmp_path / "hs.emd")
    assert (ff.count, ff.fps, ff.pixel_size_nm) == (5, 10.0, 0.5)
    np.testing.assert_array_equal(imgs, data)
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_emd_single_image_and_stack_without_time(tmp_path):
    img = _movie()[0]
    path = write_ncem(tmp_path / "one.emd", {"image": (img, [("y", "nm", np.arange(HEIGHT)),
                                                             ("x", "nm", np.arange(WIDTH))])})
    ff, imgs, times = _stamped(path)
    assert (ff.count, ff.fps, ff.pixel_size_nm, times) == (1, None, 1.0, [None])
    np.testing.assert_array_equal(imgs[0], img)
    # a stack whose frame axis has no unit: frames, pixel size, no times
    dims = [("frame", "", np.arange(FRAMES)), *_tyx()[1:]]
    ff, imgs, times = _stamped(write_ncem(tmp_path / "n.emd", {"n": (_movie(), dims)}))
    assert (ff.count, ff.fps, ff.pixel_size_nm, times) == (5, None, 0.5, [None] * 5)


def test_emd_without_an_image_series_says_what_it_found(tmp_path):
    path = write_ncem(tmp_path / "spec.emd", {
        "spectrum": (np.arange(100.0), [("energy", "keV", np.arange(100) * 0.01)]),
        "si": (np.zeros((4, 6, 100)), [("y", "nm", np.arange(4)), ("x", "nm", np.arange(6)),
                                       ("energy", "eV", np.arange(100))]),
    })  # fmt: skip
    with pytest.raises(ValueError) as info:
        open_frames(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"no image series in {path}: expected a 2-D image")
    assert "found 'si' of shape (100, 6, 4) (eV, nm, nm); 'spectrum' of shape (100,) (keV)" in msg
    assert pixel_size_from_file(path) is None  # logged, not raised
    (tmp_path / "not.emd").write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError, match=r"^cannot read not\.emd as an EMD file \(Velox or "):
        open_frames(tmp_path / "not.emd")


def test_emd_without_rosettasciio_names_the_extra_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "rsciio.emd", None)
    with pytest.raises(ImportError) as info:
        frames._emd_signal(tmp_path / "x.emd")
    assert "\n" not in str(info.value) and "loopline[hyperspy]" in str(info.value)


def test_velox_emd_stack(tmp_path):
    data = _movie()
    path = write_velox(tmp_path / "velox.emd", data, pixel_m=0.5e-9, frame_time_s=0.1)
    from rsciio.emd import file_reader

    (sig,) = file_reader(str(path))  # RosettaSciIO reads it, as Velox: frames × y × x
    assert [(a["name"], a["units"], a["navigate"]) for a in sig["axes"]] == [
        ("Time", "ms", True), ("y", "nm", False), ("x", "nm", False)]  # fmt: skip
    ff, imgs, times = _stamped(path)
    assert ff.fps == pytest.approx(10.0) and ff.pixel_size_nm == pytest.approx(0.5)
    np.testing.assert_array_equal(imgs, data)
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_analyze_emd_uses_the_files_time_axis_and_pixel_size(tmp_path):
    path = write_ncem(tmp_path / "movie.emd", {"movie": (_movie(), _tyx(t0=1.0))})
    out = tmp_path / "run"
    assert main(["analyze", str(path), "--model", "ridge", "--out", str(out)]) == 0
    series = pd.read_csv(out / "series.csv")
    assert series["series"].tolist() == ["movie"] * FRAMES
    assert series["time_s"].tolist() == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4])
    assert series["nm_per_px"].tolist() == [0.5] * FRAMES
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"]["nm_per_px"] == 0.5
