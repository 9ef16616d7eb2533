"""measure_frame, the FrameResult container and the series files, on small literal inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loopline.analysis import FrameResult, MeasureOptions, OnlineTracker, measure_frame
from loopline.analysis.message import frame_tables, read_objects
from loopline.analysis.series import SERIES_COLUMNS, SeriesAccumulator, SeriesWriter
from loopline.analysis.sources import detections_from_masks
from loopline.calibration import Calibration
from loopline.engines.base import Detections

CAL = Calibration(nm_per_px=2.0, fps=10.0, foil_thickness_nm=100.0, visibility_factor=1.75)


def _frame(shift: float = 0.0) -> Detections:
    h, w = 96, 128
    masks = []
    for x in (30.0, 45.0, 62.0):  # three vertical lines, gaps 15 and 17 px
        m = np.zeros((h, w), bool)
        x0 = round(x + shift)
        m[20:80, x0 - 3 : x0 + 3] = True
        masks.append(m)
    yy, xx = np.mgrid[:h, :w]
    masks.append(((xx - 100) / 8.0) ** 2 + ((yy - 50) / 5.0) ** 2 <= 1)
    return detections_from_masks(np.array(masks), np.array([0, 0, 0, 1]))


@pytest.mark.parametrize("impl", ["python", "numba"])
def test_measure_frame_lines_pileup_loop(impl):
    r = measure_frame(_frame(), index=0, time_s=0.0, calibration=CAL,
                      options=MeasureOptions(impl=impl))  # fmt: skip
    assert r.n_lines == 3 and r.n_loops == 1 and r.n_pileups == 1
    np.testing.assert_allclose(r.line_length_px, 60.0, rtol=0.02)
    np.testing.assert_allclose(r.line_length_nm, 120.0, rtol=0.02)
    np.testing.assert_allclose(sorted(r.pair_spacing_px), [15.0, 17.0], atol=0.05)
    assert r.line_points_px.shape == (3, 50, 2)
    assert r.loop_major_px[0] == pytest.approx(17.0, rel=0.05)
    d = r.densities
    assert d["loop_count"] == 1 and d["line_count"] == 3
    area_um2 = 96 * 128 * 4e-6
    assert d["loop_areal_density_per_um2"] == pytest.approx(1.75 / area_um2)
    assert d["loop_density_per_m3"] == pytest.approx(1.75 / (area_um2 * 1e-12 * 100e-9))
    assert set(r.timings_ms) >= {"lines", "loops", "pileups", "measure"}
    # its frame message, written and read by the one module (analysis/message.py)
    det = _frame()
    tracked = OnlineTracker(CAL).update(r, np.zeros((96, 128), np.uint8))
    rows = SeriesAccumulator(CAL).add(tracked).to_json()
    body = frame_tables(tracked, rows["tracks"], det.masks, det.classes)
    header = json.loads(json.dumps({"index": 0, "tracks": body, "pairs": rows["pairs"]},
                                   allow_nan=False))  # fmt: skip
    lines, loops, pileups = read_objects(header)
    assert len(lines) == 3 and len(loops) == 1 and len(pileups) == 1
    for ln, i in zip(lines, range(3), strict=True):
        assert ln.length_nm == pytest.approx(tracked.line_length_nm[i])
        assert len(ln.points) >= 2 and len(ln.contour) >= 4  # centre line, mask outline
        assert ln.fields["width_px"] == pytest.approx(tracked.line_width_px[i])
    assert sorted(pileups[0].spacings_nm) == pytest.approx(sorted(tracked.pair_spacing_nm))
    assert loops[0].axes[0] == pytest.approx(tracked.loop_major_px[0] / 2, abs=0.01)
    with pytest.raises(ValueError, match=r"expected 4 tracks rows"):
        frame_tables(tracked, rows["tracks"][:2], det.masks, det.classes)


def test_empty_detections_give_an_empty_result():
    r = measure_frame(Detections.empty((64, 64)), index=0, time_s=1.0, calibration=CAL)
    assert r.n_lines == r.n_loops == r.n_pileups == 0
    assert r.line_points_px.shape == (0, 50, 2)
    assert r.densities["line_count"] == 0
    tracked = OnlineTracker(CAL).update(r, np.zeros((64, 64), np.uint8))
    assert tracked.line_track_id.shape == (0,)


def test_empty_and_full_masks_are_well_defined():
    h, w = 32, 48
    masks = np.zeros((3, h, w), bool)
    masks[1] = True  # all foreground: one line across the frame
    masks[2, 10, 10] = True  # a single pixel
    det = detections_from_masks(masks, np.zeros(3, np.int64))
    r = measure_frame(det, index=0, time_s=0.0, calibration=CAL,
                      options=MeasureOptions(min_line_length_px=0.5))  # fmt: skip
    assert r.n_lines == 2  # the empty mask is skipped
    assert r.line_length_px.max() == pytest.approx(w - 1, abs=1.5)
    assert r.line_length_px.min() == pytest.approx(1.0)
    full_loop = detections_from_masks(np.ones((1, h, w), bool), np.ones(1, np.int64))
    lp = measure_frame(full_loop, index=0, time_s=0.0, calibration=CAL)
    assert lp.n_loops == 1 and np.isfinite(lp.loop_major_px).all()


def test_bad_inputs_raise_clear_errors():
    det = _frame()
    with pytest.raises(ValueError, match="time_s must be finite"):
        measure_frame(det, index=0, time_s=math.nan, calibration=CAL)
    bad = Detections(det.masks, det.boxes, det.scores, np.array([0, 0, 0, 7]))
    with pytest.raises(ValueError, match="unknown detection classes"):
        measure_frame(bad, index=0, time_s=0.0, calibration=CAL)
    with pytest.raises(ValueError, match="min_score"):
        MeasureOptions(min_score=2.0)


def test_frame_result_validation():
    r = FrameResult.empty(index=0, time_s=0.0, shape=(10, 10), nm_per_px=1.0)
    with pytest.raises(ValueError, match=r"line_length_px must have shape \(0,\), got \(2,\)"):
        r.replace(line_length_px=np.zeros(2))
    with pytest.raises(ValueError, match="index must be >= 0"):
        FrameResult.empty(index=-1, time_s=0.0, shape=(10, 10))
    with pytest.raises(ValueError, match="time_s must be finite"):
        FrameResult.empty(index=0, time_s=math.inf, shape=(10, 10))
    with pytest.raises(ValueError, match="nm_per_px"):
        FrameResult.empty(index=0, time_s=0.0, shape=(10, 10), nm_per_px=-1.0)
    full = measure_frame(_frame(), index=0, time_s=0.0, calibration=CAL)
    with pytest.raises(ValueError, match="line_pileup must index"):
        full.replace(line_pileup=np.array([0, 0, 5]))
    with pytest.raises(ValueError, match="read-only"):
        full.line_length_px[0] = 1.0
    assert math.isnan(FrameResult.empty(index=0, time_s=0.0, shape=(4, 4)).nm_per_px)


def test_series_writer_appends_and_computes_velocity(tmp_path):
    tracker = OnlineTracker(CAL, drift="none")
    with SeriesWriter(tmp_path, CAL, window=5, flush_every=3) as w:
        for i in range(8):
            r = measure_frame(_frame(shift=i), index=i, time_s=i / 10.0, calibration=CAL)
            rows = w.append(tracker.update(r))
        assert (tmp_path / "tracks.csv").exists()  # flushed while running
        with pytest.raises(ValueError, match="order"):
            w.append(r)
    lines = [r for r in rows.tracks if r["kind"] == "line"]
    # 1 px/frame at 10 frames/s and 2 nm/px: 20 nm/s along +x, whatever the glide sign
    assert all(abs(abs(r["velocity_nm_per_s"]) - 20.0) < 1e-6 for r in lines)
    assert all(abs(abs(r["velocity_px_per_frame"]) - 1.0) < 1e-9 for r in lines)
    import pandas as pd

    s = pd.read_csv(tmp_path / "series.csv")
    assert tuple(s.columns) == SERIES_COLUMNS
    assert s["frame"].nunique() == 8
    # the one layout: per-track rows in track_summary.csv, per object and frame in tracks.csv
    t = pd.read_csv(tmp_path / "track_summary.csv")
    assert (t.loc[t.kind == "line", "frames"] == 8).all()
    assert len(pd.read_csv(tmp_path / "tracks.csv")) == 8 * 4
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 8 and summary["analysis"]["series"]["line_tracks"] == 3
    assert summary["schema_version"] == 1
    # append: a second writer continues the same series.csv
    with SeriesWriter(tmp_path, CAL, append=True) as w2:
        r = measure_frame(_frame(), index=20, time_s=5.0, calibration=CAL)
        w2.append(OnlineTracker(CAL).update(r))
    assert pd.read_csv(tmp_path / "series.csv")["frame"].nunique() == 9


def test_series_is_bounded_and_track_summaries_come_when_tracks_end():
    """One mode for analyze and the daemon: running sums per track, no history kept."""
    from loopline.analysis.series import SeriesAccumulator

    lean = SeriesAccumulator(CAL, window=5, forget_after=4)
    tracker = OnlineTracker(CAL, drift="none")
    for i in range(30):
        r = measure_frame(_frame(shift=0.5 * i), index=i, time_s=i / 10.0, calibration=CAL)
        rows = lean.add(tracker.update(r))
        vb = [x["velocity_nm_per_s"] for x in rows.tracks if x["kind"] == "line"]
        assert not rows.track_summary
    assert all(abs(abs(v) - 10.0) < 1e-6 for v in vb)  # 0.5 px/frame, 10 frames/s, 2 nm/px
    assert all(len(tr.recent) <= 5 for tr in lean.lines.values())
    empty = Detections.empty((96, 128))
    ended = []
    for i in range(30, 36):  # the lines are gone: after forget_after frames, so are the tracks
        r = measure_frame(empty, index=i, time_s=i / 10.0, calibration=CAL)
        ended += lean.add(tracker.update(r)).track_summary
    assert not lean.lines and not lean.loops and len(ended) == 4
    lines = [e for e in ended if e["kind"] == "line"]
    # fitted over the whole track (30 frames of masks moved by round(0.5 i) px)
    assert all(e["frames"] == 30 and abs(abs(e["velocity_nm_per_s"]) - 10.0) < 0.01
               for e in lines)  # fmt: skip
    assert lean.summary()["line_tracks"] == 3 and lean.finish() == []
    with pytest.raises(ValueError, match="forget_after"):
        SeriesAccumulator(CAL, forget_after=0)


def test_daemon_analyzer_publishes_glide_velocity():
    from loopline.daemon.analyzer import Analyzer

    an = Analyzer(nm_per_px=2.0)
    an.new_series("s1")
    for i in range(6):
        inst = an.process(_frame(shift=i), index=i, time_s=i / 10.0)["tracks"]
        lines = [d for d in inst if d["cls"] == 0]
        assert len(lines) == 3 and all(d["kind"] == "line" for d in lines)
        if i == 0:  # one sample: no velocity yet, but a position
            assert all(d["velocity_nm_per_s"] is None and d["position_nm"] is not None
                       for d in lines)  # fmt: skip
    # 1 px/frame at 10 frames/s (no fps in the calibration: the frame times) and 2 nm/px
    assert all(abs(abs(d["velocity_nm_per_s"]) - 20.0) < 1e-3 for d in lines)
    assert all(abs(abs(d["velocity_px_per_frame"]) - 1.0) < 1e-3 for d in lines)
    loops = [d for d in inst if d["cls"] == 1]
    assert loops and "velocity_nm_per_s" not in loops[0]


def test_instances_without_a_mask_are_counted_and_measured_from_their_box():
    """The daemon's mask budget: loops beyond it are the ellipse of their box (marked), lines
    beyond it are counted, not traced; nothing pretends a mask was measured."""
    from loopline.analysis.loops import box_loop
    from loopline.analysis.measure import BoxOnly
    from loopline.analysis.series import SeriesAccumulator
    from loopline.daemon.analyzer import Analyzer

    extra = BoxOnly(np.array([[10, 10, 24, 18], [50, 60, 56, 70], [0, 0, 40, 4],
                              [5, 5, 5, 9]], np.float32),  # the last: no area, no loop
                    np.array([0.5, 0.4, 0.3, 0.2]), np.array([1, 1, 0, 1]))  # fmt: skip
    r = measure_frame(_frame(), index=0, time_s=0.0, calibration=CAL, box_only=extra)
    assert (r.n_lines, r.n_loops, r.lines_without_mask, r.n_dislocations) == (3, 3, 1, 4)
    assert r.loop_from_box.tolist() == [False, True, True]
    assert r.instances_without_mask == 3
    np.testing.assert_allclose(r.loop_center_px[1:], [[17, 14], [53, 65]])
    np.testing.assert_allclose(r.loop_major_px[1:], [14, 10])
    np.testing.assert_allclose(r.loop_minor_px[1:], [8, 6])
    np.testing.assert_allclose(r.loop_angle_deg[1:], [0, 90])
    assert box_loop(np.array([0, 0, np.nan, 3])) is None
    d = r.densities
    assert (d["line_count"], d["loop_count"]) == (4, 3)
    assert math.isnan(d["line_length_density_per_um"])  # a sum over 3 of 4 lines: not measured
    area_um2 = 96 * 128 * 4e-6
    assert d["loop_areal_density_per_um2"] == pytest.approx(3 * 1.75 / area_um2)
    # the rows: every loop, flagged; the line counted
    acc = SeriesAccumulator(CAL, series="s")
    rows = acc.add(OnlineTracker(CAL).update(r))
    assert rows.series["n_dislocations"] == 4 and rows.series["n_loops"] == 3
    assert rows.series["instances_without_mask"] == 3
    assert [t["from_box"] for t in rows.tracks if t["kind"] == "loop"] == [0, 1, 1]
    assert sum(t["kind"] == "line" for t in rows.tracks) == 3
    assert acc.summary()["instances_without_mask"] == 3
    # without extras nothing changes, and the flag says so
    plain = measure_frame(_frame(), index=0, time_s=0.0, calibration=CAL)
    assert plain.instances_without_mask == 0 and not plain.loop_from_box.any()
    # the daemon's Analyzer: the published loops say which had no mask
    an = Analyzer(nm_per_px=2.0)
    an.new_series("s")
    body = an.process(_frame(), index=0, time_s=0.0, box_only=extra)
    assert [i["from_box"] for i in body["tracks"] if i["cls"] == 1] == [0, 1, 1]
    assert body["row"]["instances_without_mask"] == 3
    with pytest.raises(ValueError, match=r"boxes must have shape \(2, 4\), got \(2, 3\)"):
        BoxOnly(np.zeros((2, 3)), np.zeros(2), np.zeros(2, np.int64))


def test_mask_priority_and_det_message():
    """Dislocations get the mask places first, then loops, each by score; a det message
    with every box and the first n masks splits into masked and box-only instances."""
    from loopline.daemon.stages.engine import mask_priority
    from loopline.daemon.stages.measure import detections_of

    order = mask_priority(np.array([1, 0, 1, 0, 1]), np.array([0.9, 0.3, 0.95, 0.8, 0.9]))
    assert order.tolist() == [3, 1, 2, 0, 4]
    masks = np.zeros((1, 8, 8), bool)
    msg = {"n": 1, "boxes": [[0, 0, 2, 2], [3, 3, 5, 6]], "scores": [0.9, 0.8],
           "classes": [0, 1], "timings_ms": {}}  # fmt: skip
    det, extra = detections_of(msg, masks)
    assert len(det) == 1 and extra is not None and extra.classes.tolist() == [1]
    assert detections_of({**msg, "n": 1, "boxes": msg["boxes"][:1], "scores": [0.9],
                          "classes": [0]}, masks)[1] is None  # fmt: skip
    with pytest.raises(ValueError, match=r"expected boxes \(2, 4\), classes \(2,\)"):
        detections_of({**msg, "classes": [0]}, masks)
