"""Calibration profiles: TOML, validation, frame times, metadata and truth.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loopline.calibration import (
    Calibration,
    CalibrationError,
    calibration_from_truth,
    check_frame_times,
    load_calibration,
    pixel_size_from_file,
)


def _toml(tmp_path, text):
    p = tmp_path / "cal.toml"
    p.write_text(text)
    return p


def test_load_full_profile(tmp_path):
    p = _toml(
        tmp_path,
        """
nm_per_px = 0.5
fps = 15.0
dose_rate_dpa_per_s = 8.3e-4
foil_thickness_nm = 75.0
visibility_factor = 1.75
glide_dir = [0.0, -2.0]
""",
    )
    c = load_calibration(p)
    assert c.nm_per_px == 0.5 and c.fps == 15.0 and c.visibility_factor == 1.75
    assert c.glide_dir == (0.0, -1.0)
    assert c.time_of(30) == pytest.approx(2.0)
    assert c.dose_at(30, 2.0) == pytest.approx(1.66e-3)
    assert c.source == str(p)
    json.dumps(c.to_dict())


def test_magnification_table(tmp_path):
    c = load_calibration(
        _toml(
            tmp_path,
            """
magnification = "100k"
[nm_per_px_by_magnification]
"50k" = 0.4
"100k" = 0.2
""",
        )
    )
    assert c.nm_per_px == 0.2
    with pytest.raises(CalibrationError, match="not in nm_per_px_by_magnification"):
        load_calibration(_toml(tmp_path, 'magnification = "7k"\n[nm_per_px_by_magnification]\n'
                               '"50k" = 0.4\n'))  # fmt: skip


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nm_per_pix = 1.0", r"unknown key\(s\) nm_per_pix"),
        ("nm_per_px = -1.0", "nm_per_px must be finite and > 0"),
        ("nm_per_px = nan", "nm_per_px must be finite"),
        ('fps = "fast"', "fps must be a number"),
        ("visibility_factor = 0", "visibility_factor must be finite and > 0"),
        ("glide_dir = [0.0, 0.0]", "glide_dir must be a non-zero"),
        ("dose_rate_dpa_per_s = 1e-3\ndpa_per_frame = 1e-4", "not both"),
        ("frame_times_s = [0.0, nan, 0.2]", "entry 1 is nan"),
        ("frame_times_s = [0.0, 0.2, 0.1]", "must increase strictly: entry 2"),
        ("nm_per_px = [1", "not valid TOML"),
    ],
)
def test_bad_profiles_raise(tmp_path, text, match):
    with pytest.raises(CalibrationError, match=match):
        load_calibration(_toml(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_calibration(tmp_path / "nope.toml")


def test_frame_times():
    np.testing.assert_array_equal(check_frame_times([0, 1, 2.5]), [0, 1, 2.5])
    with pytest.raises(CalibrationError, match="finite"):
        check_frame_times([0.0, math.inf])
    with pytest.raises(CalibrationError, match="increase"):
        check_frame_times([0.0, 0.0])
    c = Calibration(frame_times_s=(0.0, 0.5, 2.0))
    assert c.time_of(2) == 2.0
    with pytest.raises(CalibrationError, match="has no time"):
        c.time_of(3)
    assert Calibration().time_of(3) is None
    assert math.isnan(Calibration().scale)


def test_pixel_size_from_tiff(tmp_path):
    import tifffile

    p = tmp_path / "stack.tif"
    data = np.zeros((3, 16, 16), np.uint8)
    # ImageJ: 4 pixels per nm -> 0.25 nm/px
    tifffile.imwrite(p, data, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "nm"})
    assert pixel_size_from_file(p) == pytest.approx(0.25)
    q = tmp_path / "cm.tif"  # 1e7 px per cm -> 1 nm/px
    tifffile.imwrite(q, data[0], resolution=(1e7, 1e7), resolutionunit="CENTIMETER")
    assert pixel_size_from_file(q) == pytest.approx(1.0)
    r = tmp_path / "plain.tif"
    tifffile.imwrite(r, data[0])
    assert pixel_size_from_file(r) is None
    assert pixel_size_from_file(tmp_path / "x.png") is None


def test_calibration_from_truth(tmp_path):
    (tmp_path / "truth.json").write_text(json.dumps({"nm_per_px": 0.39, "fps": 25.0}))
    c = calibration_from_truth(tmp_path)
    assert c.nm_per_px == 0.39 and c.fps == 25.0
