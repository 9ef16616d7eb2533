"""Native-scale tiled inference (issue 15): the grid, the merge across seams, the driver, the
configuration, and the shipped model through ONNX Runtime on a big synthetic frame."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from loopline.daemon.standins import ThresholdEngine
from loopline.engines import create_engine
from loopline.engines.base import Detections
from loopline.engines.ops import PAD_VALUE, match_instances, to_uint8
from loopline.engines.tiling import (
    Window,
    detect_frames,
    merge_tiles,
    rescale_detections,
    tile_cores,
    tile_grid,
    tile_plan,
)
from loopline.models import MODEL_DIR

ONNX = MODEL_DIR / "defects.onnx"
needs_onnx = pytest.mark.skipif(not ONNX.exists(), reason="no shipped defects.onnx")


# ------------------------------------------------------------------------ the grid


@pytest.mark.parametrize("shape", [(962, 1344), (1024, 1024), (300, 600), (513, 2000),
                                   (512, 512), (100, 700)])  # fmt: skip
@pytest.mark.parametrize("overlap", [0, 64, 128])
def test_grid_covers_the_frame_with_the_overlap(shape, overlap):
    imgsz = 512
    wins = tile_grid(shape, imgsz, overlap)
    seen = np.zeros(shape, np.int32)
    for t in wins:
        assert 0 <= t.y0 < t.y1 <= shape[0] and 0 <= t.x0 < t.x1 <= shape[1]
        # native scale: a tile is the network input along every side longer than it
        assert t.shape == (min(shape[0], imgsz), min(shape[1], imgsz))
        seen[t.slices] += 1
    assert seen.min() >= 1
    for axis, (lo, hi) in enumerate((("y0", "y1"), ("x0", "x1"))):
        spans = sorted({(getattr(t, lo), getattr(t, hi)) for t in wins})
        assert spans[0][0] == 0 and spans[-1][1] == shape[axis]  # the last flush with the edge
        for (_, a1), (b0, _) in itertools.pairwise(spans):
            assert a1 - b0 >= overlap, (axis, spans)
        # the fewest tiles that give that overlap
        n = len(spans)
        assert n == 1 or imgsz + (n - 2) * (imgsz - overlap) < shape[axis]


def test_grid_examples_and_bad_overlap():
    assert tile_grid((512, 512), 512) == [Window(0, 0, 512, 512)]
    assert [(t.x0, t.x1) for t in tile_grid((512, 960), 512, 64)] == [(0, 512), (448, 960)]
    assert len(tile_grid((962, 1344), 512, 64)) == 9
    with pytest.raises(ValueError, match=r"overlap must lie in \[0, 512\) px, got 512"):
        tile_grid((1024, 1024), 512, 512)


@pytest.mark.parametrize("shape", [(1024, 1024), (962, 1344), (600, 600), (512, 1024),
                                   (530, 1024), (2048, 2048), (300, 2000)])  # fmt: skip
@pytest.mark.parametrize("overlap", [0, 64, 128])
def test_larger_tiles_cover_with_the_overlap_and_fewer_pixels(shape, overlap):
    imgsz, tile_max = 512, 640
    side, wins = tile_plan(shape, imgsz, overlap=overlap, tile_max=tile_max)
    assert side % 32 == 0 and imgsz <= side <= tile_max
    seen = np.zeros(shape, np.int32)
    for t in wins:  # native scale: a tile is `side` along every frame side longer than it
        assert t.shape == (min(shape[0], side), min(shape[1], side))
        seen[t.slices] += 1
    assert seen.min() >= 1
    for lo, hi in (("y0", "y1"), ("x0", "x1")):
        spans = sorted({(getattr(t, lo), getattr(t, hi)) for t in wins})
        for (_, a1), (b0, _) in itertools.pairwise(spans):
            assert a1 - b0 >= overlap
    # never more network pixels than the imgsz grid, and the cheapest side of all
    fixed_side, fixed = tile_plan(shape, imgsz, overlap=overlap)
    assert fixed_side == imgsz and fixed == tile_grid(shape, imgsz, overlap)
    assert len(wins) * side**2 <= len(fixed) * imgsz**2
    for s in range(imgsz, tile_max + 1, 32):
        assert len(wins) * side**2 <= len(tile_grid(shape, s, overlap)) * s**2


def test_a_1024_frame_is_four_tiles_where_the_runtime_allows_it():
    side, wins = tile_plan((1024, 1024), 512, overlap=64, tile_max=640)
    assert side == 544 and len(wins) == 4
    assert sorted({(t.x0, t.x1) for t in wins}) == [(0, 544), (480, 1024)]  # 64 px overlap
    assert tile_plan((1024, 1024), 512, overlap=64, tile_max=512) == (512, tile_grid(
        (1024, 1024), 512, 64))  # fmt: skip
    assert len(tile_plan((1024, 1024), 512, overlap=64)[1]) == 9  # fixed input size
    # a frame a little larger than imgsz: one padded tile instead of four
    assert tile_plan((600, 600), 512, overlap=64, tile_max=640) == (608, [Window(0, 0, 600, 600)])
    with pytest.raises(ValueError, match=r"tile_max must be >= imgsz \(512\) px, got 480"):
        tile_plan((1024, 1024), 512, tile_max=480)


def test_cores_partition_the_frame():
    shape = (962, 1344)
    wins = tile_grid(shape, 512, 64)
    owner = np.zeros(shape, np.int32)
    for t, c in zip(wins, tile_cores(wins, shape), strict=True):
        assert t.y0 <= c.y0 < c.y1 <= t.y1 and t.x0 <= c.x0 < c.x1 <= t.x1
        owner[c.slices] += 1
    assert (owner == 1).all()


# ------------------------------------------------------------------------ merging (arrays)

ROW = [Window(0, 0, 512, 512), Window(0, 256, 512, 768), Window(0, 512, 512, 1024)]
SHAPE = (512, 1024)


def _disc(cx: float, cy: float, r: float, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (round(cx), round(cy)), round(r), 1, -1)
    return m.astype(bool)


def _line(p0, p1, width: int = 5, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.line(m, p0, p1, 1, width)
    return m.astype(bool)


def _seen(objects: list[tuple[np.ndarray, int, float]], wins=ROW) -> list[Detections]:
    """What a perfect detector returns per tile: each object's part inside the tile."""
    out = []
    for t in wins:
        ms, bs, ss, cs = [], [], [], []
        for mask, cls, score in objects:
            m = mask[t.slices]
            ys, xs = np.nonzero(m)
            if ys.size == 0:
                continue
            ms.append(m)
            bs.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            ss.append(score)
            cs.append(cls)
        if ms:
            out.append(Detections(np.stack(ms), np.asarray(bs, np.float32),
                                  np.asarray(ss, np.float32), np.asarray(cs, np.int64)))
        else:
            out.append(Detections.empty(t.shape))
    return out


def test_a_line_across_every_seam_is_one_instance():
    line = _line((100, 200), (900, 260))
    tiles = _seen([(line, 0, 0.6)])
    tiles[1] = Detections(tiles[1].masks, tiles[1].boxes, np.array([0.8], np.float32),
                          tiles[1].classes)  # fmt: skip
    assert [len(d) for d in tiles] == [1, 1, 1]
    d = merge_tiles(tiles, ROW, SHAPE)
    assert len(d) == 1 and d.classes.tolist() == [0]
    assert (d.masks[0] == line).all()
    ys, xs = np.nonzero(line)
    assert d.boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert d.scores[0] == pytest.approx(0.8)  # the best of its parts


def test_a_loop_in_the_overlap_is_reported_once():
    in_zone = _disc(300, 100, 9)  # inside tiles 0 and 1
    on_edge = _disc(509, 300, 10)  # cut by tile 0's right edge, whole in tiles 1 and 2
    far = _disc(900, 400, 9)  # tile 2 only
    d = merge_tiles(_seen([(in_zone, 1, 0.9), (on_edge, 1, 0.7), (far, 1, 0.5)]), ROW, SHAPE)
    assert len(d) == 3 and (d.classes == 1).all()
    pairs = match_instances(d.masks, np.stack([in_zone, on_edge, far]), min_iou=0.99)
    assert len(pairs) == 3  # each loop once, whole (the cut part united with the whole)


def test_touching_neighbours_stay_apart():
    a, b = _disc(380, 200, 8), _disc(397, 200, 8)  # 1 px apart, both in tiles 0 and 1
    l1, l2 = _line((200, 50), (700, 50)), _line((200, 58), (700, 58))  # a pile-up, 8 px apart
    d = merge_tiles(_seen([(a, 1, 0.9), (b, 1, 0.8), (l1, 0, 0.7), (l2, 0, 0.6)]), ROW, SHAPE)
    assert sorted(d.classes.tolist()) == [0, 0, 1, 1]
    assert len(match_instances(d.masks, np.stack([a, b, l1, l2]), min_iou=0.99)) == 4


def test_an_instance_only_in_a_tile_margin_is_dropped_keep_centre():
    # tile 0 owns columns < 384, tile 1 columns 384..639: a blob at x ~ 450 reported by tile 0
    # alone (tile 1 sees those pixels nearer its centre and found nothing) is an edge artefact
    ghost = _disc(450, 300, 6)
    real = _disc(450, 100, 6)
    tiles = _seen([(real, 1, 0.9)])
    t0 = _seen([(ghost, 1, 0.4)])[0]
    tiles[0] = Detections(np.concatenate([tiles[0].masks, t0.masks]),
                          np.concatenate([tiles[0].boxes, t0.boxes]),
                          np.concatenate([tiles[0].scores, t0.scores]),
                          np.concatenate([tiles[0].classes, t0.classes]))  # fmt: skip
    d = merge_tiles(tiles, ROW, SHAPE)
    assert len(d) == 1 and (d.masks[0] == real).all()
    # a tile on the frame's border owns up to the border: nothing is lost there
    edge = _disc(1020, 500, 6)
    assert len(merge_tiles(_seen([(edge, 1, 0.9)]), ROW, SHAPE)) == 1


def test_merge_checks_its_input():
    with pytest.raises(ValueError, match="same length"):
        merge_tiles(_seen([]), ROW[:2], SHAPE)
    with pytest.raises(ValueError, match=r"tile 0 has detections of shape \(10, 10\)"):
        merge_tiles([Detections.empty((10, 10))], ROW[:1], SHAPE)


# ------------------------------------------------------------------------ the driver


def _scene(shape=(1024, 1024)) -> tuple[np.ndarray, int, int]:
    """A noiseless frame with one long diagonal line and loops, some in tile overlaps."""
    f = np.full(shape, 170, np.uint8)
    cv2.line(f, (40, 60), (990, 930), 40, 5)
    centres = [(300, 120), (380, 480), (512, 700), (700, 300), (900, 130), (130, 900), (760, 512)]
    for cx, cy in centres:
        cv2.circle(f, (cx, cy), 8, 40, -1)
    return f, 1, len(centres)


def test_tiles_find_what_a_whole_frame_detector_finds():
    """ThresholdEngine works at any frame size, so its answer on the whole frame is what the
    tiles must add up to: the diagonal line crosses eight seams and comes out as one."""
    frame, n_lines, n_loops = _scene()
    det = ThresholdEngine()
    whole = det.forward([frame])[0]
    assert np.bincount(whole.classes).tolist() == [n_lines, n_loops]
    seen: list[tuple[int, int]] = []

    def detect(pieces, side):
        seen.extend(p.shape for p in pieces)
        return det.forward(pieces)

    (tiled,) = detect_frames(detect, [frame], imgsz=512, overlap=64)
    assert seen == [(512, 512)] * 9
    assert np.bincount(tiled.classes).tolist() == [n_lines, n_loops]
    pairs = match_instances(tiled.masks, whole.masks, min_iou=0.5)
    # its threshold follows each input's grey-level statistics, so edges move by ~1 px
    assert len(pairs) == len(whole) and pairs[:, 2].min() >= 0.8
    line = int(np.flatnonzero(tiled.classes == 0)[0])
    assert pairs[pairs[:, 0] == line, 2][0] >= 0.9
    assert set(tiled.timings_ms) >= {"inference", "preprocess", "postprocess"}
    # letterbox: the whole frame, shrunk to the network input
    seen.clear()
    (shrunk,) = detect_frames(detect, [frame], imgsz=512, inference="letterbox")
    assert seen == [(1024, 1024)] and shrunk.shape == (1024, 1024)


def test_larger_tiles_find_what_the_imgsz_tiles_find():
    frame, n_lines, n_loops = _scene()
    det = ThresholdEngine()
    calls: list[tuple[int, list[tuple[int, int]]]] = []

    def detect(pieces, side):
        calls.append((side, [p.shape for p in pieces]))
        return det.forward(pieces)

    (big,) = detect_frames(detect, [frame], imgsz=512, overlap=64, tile_max=640)
    assert calls == [(544, [(544, 544)] * 4)]  # one call, one side: the tiles batch together
    (small,) = detect_frames(detect, [frame], imgsz=512, overlap=64)
    assert calls[1] == (512, [(512, 512)] * 9)
    assert np.bincount(big.classes).tolist() == [n_lines, n_loops]
    pairs = match_instances(big.masks, small.masks, min_iou=0.5)
    assert len(pairs) == len(small) and pairs[:, 2].min() >= 0.8
    # frames of two sizes in one batch: one call per input side; one that fits is letterboxed
    calls.clear()
    out = detect_frames(detect, [frame, frame[:512, :512], frame[:600, :600]], imgsz=512,
                        overlap=64, tile_max=640)  # fmt: skip
    assert calls == [(544, [(544, 544)] * 4), (512, [(512, 512)]), (608, [(608, 608)])]
    assert [d.shape for d in out] == [(1024, 1024), (512, 512), (600, 600)]


def _dense_loops(n_side: int = 26, shape=(1024, 1024), seed: int = 0) -> tuple[np.ndarray, int]:
    """A frame of ``n_side**2`` small dark discs (r 5 px) on a jittered grid, many on seams."""
    rng = np.random.default_rng(seed)
    f = np.full(shape, 170, np.uint8)
    step = shape[0] / n_side
    for i in range(n_side):
        for j in range(n_side):
            cx, cy = (np.array([j, i]) + 0.5) * step + rng.uniform(-6, 6, 2)
            cv2.circle(f, (round(cx), round(cy)), 5, 40, -1)
    return f, n_side**2


def test_the_instance_cap_of_a_tiled_frame_is_per_frame_not_per_tile():
    """max_det caps what one network call returns (one tile); a tiled frame keeps up to
    max_det_frame merged instances, so a 1024x1024 frame of 676 loops gives 676, not 300."""
    frame, n = _dense_loops()
    det = ThresholdEngine(max_det=300)

    def detect(pieces, side):
        return det.forward(pieces)

    for tile_max in (None, 640):
        (d,) = detect_frames(detect, [frame], imgsz=512, tile_max=tile_max, max_det_frame=3000)
        assert len(d) == n and (d.classes == 1).all()
    (d,) = detect_frames(detect, [frame], imgsz=512, tile_max=640, max_det_frame=300)
    assert len(d) == 300
    e = create_engine("ridge")
    assert (e.max_det, e.max_det_frame, e.tile_max) == (300, 3000, 640)
    with pytest.raises(ValueError, match="max_det_frame must be an int >= 1, got 0"):
        create_engine("ridge", max_det_frame=0)
    with pytest.raises(ValueError, match=r"tile_max must be a multiple of 32 >= imgsz \(512\) "
                                          r"px or None, got 600"):  # fmt: skip
        create_engine("ridge", tile_max=600)


def test_physical_scale_resamples_to_the_model_and_back():
    frame, n_lines, n_loops = _scene()
    det = ThresholdEngine()
    seen: list[tuple[int, int]] = []

    def detect(pieces, side):
        seen.extend(p.shape for p in pieces)
        return det.forward(pieces)

    # frame at 0.5 nm/px, model trained at 1 nm/px: the frame is halved, one 512 input
    (d,) = detect_frames(detect, [frame], imgsz=512, model_nm_per_px=1.0, nm_per_px=0.5)
    assert seen == [(512, 512)] and d.shape == (1024, 1024)
    assert np.bincount(d.classes).tolist() == [n_lines, n_loops]
    whole = det.forward([frame])[0]
    assert len(match_instances(d.masks, whole.masks, min_iou=0.6)) == len(whole)
    # 0.4 nm/px: 410 px at the model's scale, padded to the network input, not enlarged
    seen.clear()
    (d,) = detect_frames(detect, [frame], imgsz=512, model_nm_per_px=1.0, nm_per_px=0.4)
    assert seen == [(512, 512)] and d.shape == (1024, 1024)
    line = d.masks[d.classes == 0]
    assert len(line) == 1 and match_instances(line, whole.masks[whole.classes == 0],
                                              min_iou=0.5).shape == (1, 3)  # fmt: skip
    # unknown frame pixel size, or no model scale: native pixels
    seen.clear()
    detect_frames(detect, [frame, frame], imgsz=512, model_nm_per_px=1.0, nm_per_px=[None, 0])
    detect_frames(detect, [frame], imgsz=512, nm_per_px=0.5)
    assert seen == [(512, 512)] * 27
    with pytest.raises(ValueError, match=r"nm_per_px must be one value or one per frame \(2\)"):
        detect_frames(detect, [frame, frame], imgsz=512, model_nm_per_px=1.0, nm_per_px=[1.0])


def test_native_pads_a_frame_that_fits_tiles_enlarge_it():
    frame, n_lines, n_loops = _scene()
    small = np.ascontiguousarray(frame[:300, :400])
    det = ThresholdEngine()
    seen: list[np.ndarray] = []

    def detect(pieces, side):
        seen.extend(pieces)
        return det.forward(pieces)

    # tiles (the default) and letterbox hand the frame over as it is; the runtime enlarges it
    for mode in ("tiles", "letterbox"):
        seen.clear()
        (d,) = detect_frames(detect, [small], imgsz=512, inference=mode)
        assert [p.shape for p in seen] == [(300, 400)] and d.shape == (300, 400)
    # native: padded at the bottom and right to the network input, never enlarged
    seen.clear()
    (d,) = detect_frames(detect, [small], imgsz=512, inference="native")
    assert [p.shape for p in seen] == [(512, 512)] and d.shape == (300, 400)
    np.testing.assert_array_equal(seen[0][:300, :400], small)
    assert (seen[0][300:] == PAD_VALUE).all() and (seen[0][:, 400:] == PAD_VALUE).all()
    whole = det.forward([small])[0]
    assert len(d) == len(whole)
    assert len(match_instances(d.masks, whole.masks, min_iou=0.6)) == len(d)
    # a frame larger than the input is tiled as with tiles
    seen.clear()
    (d,) = detect_frames(detect, [frame], imgsz=512, inference="native")
    assert d.shape == (1024, 1024) and np.bincount(d.classes).tolist() == [n_lines, n_loops]
    assert len(seen) == 9


def test_rescale_detections_keeps_a_same_size_result():
    d = Detections(_disc(50, 50, 10, (100, 100))[None], np.array([[40, 40, 61, 61]], np.float32),
                   np.array([0.5], np.float32), np.array([1]))  # fmt: skip
    assert rescale_detections(d, (100, 100)) is d
    up = rescale_detections(d, (200, 200))
    assert up.boxes[0].tolist() == [80, 80, 122, 122]
    assert abs(int(up.masks.sum()) - 4 * int(d.masks.sum())) < 0.1 * 4 * int(d.masks.sum())


# ------------------------------------------------------------------------ configuration


def test_a_bad_inference_value_is_one_clear_error():
    msg = r"inference must be one of tiles, native, letterbox, got 'tile'"
    with pytest.raises(ValueError, match=msg):
        create_engine("ridge", inference="tile")
    with pytest.raises(ValueError, match=msg):
        detect_frames(lambda p, _: ThresholdEngine().forward(p), [np.zeros((8, 8), np.uint8)],
                      imgsz=32, inference="tile")  # fmt: skip
    with pytest.raises(ValueError, match=r"tile_overlap must be an int in \[0, 256\] px"):
        create_engine("ridge", tile_overlap=300)
    from loopline.daemon.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"engine\.inference must be one of tiles, native, "
                                          r"letterbox; got 'tile'"):  # fmt: skip
        load_config(overrides={"engine.inference": "tile"})
    with pytest.raises(ConfigError, match=r"engine.tile_overlap must lie in \[0, 2048\]"):
        load_config(overrides={"engine.tile_overlap": -1})
    assert load_config().engine.inference == "tiles"


@needs_onnx
def test_daemon_engine_section_reaches_the_engine():
    from loopline.daemon.config import load_config
    from loopline.daemon.stages.engine import make_engine

    base = {"engine.model": "defects", "engine.engine": "onnx", "engine.threads": 1}
    e = make_engine(load_config(overrides=base))
    assert (e.inference, e.tile_overlap) == ("tiles", 64)
    e = make_engine(load_config(overrides={**base, "engine.inference": "letterbox",
                                           "engine.tile_overlap": 32}))  # fmt: skip
    assert (e.inference, e.tile_overlap) == ("letterbox", 32)
    ridge = make_engine(load_config(overrides={"engine.model": "ridge"}))  # ignores it
    assert ridge.inference == "tiles"


def test_cli_inference_flag_reaches_the_engine(monkeypatch, tmp_path):
    import argparse

    from loopline.errors import CliError
    from loopline.evaluation import command as eval_command

    made = {}

    def fake(model, **opts):
        made.update(opts)
        return object()

    monkeypatch.setattr("loopline.engines.create_engine", fake)
    p = argparse.ArgumentParser()
    eval_command.add_arguments(p)
    a = p.parse_args(["--model", "m.onnx", "--data", str(tmp_path), "--inference", "letterbox",
                      "--tile-overlap", "32"])  # fmt: skip
    eval_command._engine(a)
    assert made["inference"] == "letterbox" and made["tile_overlap"] == 32
    assert "tile_max" not in made  # the engine's default
    eval_command._engine(p.parse_args(["--model", "m.onnx", "--data", str(tmp_path),
                                       "--tile-max", "512"]))  # fmt: skip
    assert made["tile_max"] == 512
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "m", "--data", str(tmp_path), "--inference", "tile"])
    a = p.parse_args(["--model", "m", "--data", str(tmp_path), "--tile-overlap", "-3"])
    with pytest.raises(CliError, match="--tile-overlap must be >= 0, got -3"):
        eval_command._engine(a)


# ------------------------------------------------------------------------ the shipped model


@needs_onnx
@pytest.mark.parametrize("shape", [(512, 512), (320, 480)])
def test_a_frame_that_fits_gives_what_letterbox_gives(shape):
    from loopline.engines.calibration import calibration_frames

    frame = calibration_frames(2, size=512, seed=7)[1][: shape[0], : shape[1]]
    (a,) = create_engine("defects", engine="onnx", threads=1, inference="tiles")([frame])
    (b,) = create_engine("defects", engine="onnx", threads=1, inference="letterbox")([frame])
    assert len(a) > 0
    for x, y in ((a.masks, b.masks), (a.boxes, b.boxes), (a.scores, b.scores),
                 (a.classes, b.classes)):  # fmt: skip
        np.testing.assert_array_equal(x, y)


def _true_loops_found(d: Detections, loops: list[dict]) -> int:
    """Truth loops matched one-to-one by a predicted loop whose box centre lies within the
    loop's semi-major axis of its centre."""
    centres = ((d.boxes[:, :2] + d.boxes[:, 2:]) / 2)[d.classes == 1]
    used = np.zeros(len(centres), bool)
    hits = 0
    for lp in loops:
        if not len(centres):
            break
        dist = np.hypot(*(centres - np.asarray(lp["center"])).T)
        dist[used] = np.inf
        j = int(np.argmin(dist))
        if dist[j] <= max(lp["major_px"] / 2, 4.0):
            used[j] = True
            hits += 1
    return hits


@needs_onnx
@pytest.mark.slow
def test_tiles_find_small_loops_letterbox_loses_onnx():
    """1024x1024 frames of 40 loops of 10-16 px (FeCrAl-like): letterboxed to 512 they are
    5-8 px and mostly lost; tiles at native scale find them (measured: 29 and 15 true loops
    against 13 and 0)."""
    from loopline.synth.params import load_preset
    from loopline.synth.render import render_frame
    from loopline.synth.scene import sample_scene

    p = load_preset("loops", {"width": 1024, "height": 1024, "loops": (40, 40),
                              "loop_diameter": (10.0, 16.0)})  # fmt: skip
    rendered = [render_frame(sample_scene(p, seed, 0)) for seed in (1, 2)]
    frames = [to_uint8(r.image) for r in rendered]
    truth = sum(len(r.truth["loops"]) for r in rendered)
    found = {}
    for mode in ("tiles", "letterbox"):
        dets = create_engine("defects", engine="onnx", inference=mode)(frames)
        assert all(d.shape == (1024, 1024) for d in dets)
        found[mode] = sum(_true_loops_found(d, r.truth["loops"])
                          for d, r in zip(dets, rendered, strict=True))  # fmt: skip
    assert found["tiles"] >= 1.5 * max(found["letterbox"], 1), found
    assert found["tiles"] >= 0.3 * truth, (found, truth)


# ------------------------------------------------------------------------ tile size per runtime


def _record_inputs(engine) -> list[tuple[int, ...]]:
    """Shapes of the network inputs the engine feeds from now on."""
    shapes: list[tuple[int, ...]] = []
    infer = engine._infer

    def spy(batch):
        shapes.append(batch.shape)
        return infer(batch)

    engine._infer = spy
    return shapes


@needs_onnx
def test_a_dynamic_model_takes_larger_tiles_a_static_one_keeps_imgsz(tmp_path):
    onnx = pytest.importorskip("onnx")
    from loopline.engines.calibration import calibration_frames

    frame = calibration_frames(1, size=1024, seed=3)[0]
    e = create_engine("defects", engine="onnx", threads=1)
    e.load()
    assert e.dynamic_size and e.tile_limit == 640
    shapes = _record_inputs(e)
    (d,) = e([frame])
    assert shapes == [(1, 3, 544, 544)] * 4 and d.shape == (1024, 1024)
    e2 = create_engine("defects", engine="onnx", threads=1, tile_max=512)
    e2.load()
    shapes = _record_inputs(e2)
    e2([frame])
    assert e2.tile_limit == 512 and shapes == [(1, 3, 512, 512)] * 9
    # the same network with a fixed 512x512 input: tiles of 512 whatever tile_max says
    m = onnx.load(str(ONNX))
    for dim, v in zip(m.graph.input[0].type.tensor_type.shape.dim, (1, 3, 512, 512),
                      strict=True):  # fmt: skip
        dim.dim_value = v
    static = tmp_path / "static.onnx"
    onnx.save(m, str(static))
    e3 = create_engine(static, threads=1, tile_max=640)
    e3.load()
    assert not e3.dynamic_size and e3.static_batch == 1 and e3.tile_limit == 512
    shapes = _record_inputs(e3)
    e3([frame])
    assert shapes == [(1, 3, 512, 512)] * 9


@needs_onnx
def test_openvino_compiles_once_per_batch_and_tile_side():
    pytest.importorskip("openvino")
    from loopline.engines.calibration import calibration_frames

    frames = calibration_frames(3, size=1024, seed=5)
    e = create_engine("defects", engine="openvino", threads=1, precision="f32")
    e.load()
    assert e.dynamic_size

    class CountingCore:
        def __init__(self, core):
            self.core, self.shapes = core, []

        def compile_model(self, model, *args):
            self.shapes.append(tuple(model.inputs[0].get_shape()))
            return self.core.compile_model(model, *args)

    e.core = CountingCore(e.core)
    for f in frames:
        e([f])
    e(frames[:2])
    e([frames[0][:512, :512]])  # a frame that fits: letterboxed at imgsz
    assert e.core.shapes == [(1, 3, 544, 544), (2, 3, 544, 544), (1, 3, 512, 512)]


@needs_onnx
@pytest.mark.slow
def test_larger_tiles_match_the_imgsz_tiles_on_synthetic_frames_onnx():
    """The shipped model through 2x2 tiles of 544 and 3x3 of 512 on 1024x1024 synthetic
    frames: about the same instances (measured with run 7: 40 vs 38 loops, 20 vs 19 instances;
    with run 8: 19 vs 16 instances on the mixed frame)."""
    from loopline.synth.params import load_preset
    from loopline.synth.render import render_frame
    from loopline.synth.scene import sample_scene

    frames = [
        to_uint8(render_frame(sample_scene(load_preset(name, {"width": 1024, "height": 1024,
                                                              **extra}), 1, 0)).image)
        for name, extra in (("loops", {"loops": (40, 40), "loop_diameter": (10.0, 16.0)}),
                            ("mixed", {}))
    ]  # fmt: skip
    # the tiles compared, not the line geometry drawn after them nor the lines' own threshold
    plain = {"line_snap": 0.0, "line_dedupe": 0.0, "conf": 0.25}
    new = create_engine("defects", engine="onnx", **plain)(frames)
    old = create_engine("defects", engine="onnx", tile_max=512, **plain)(frames)
    for a, b in zip(new, old, strict=True):
        a, b = a.select(a.scores >= 0.25), b.select(b.scores >= 0.25)
        assert abs(len(a) - len(b)) <= max(3, 0.2 * len(b)), (len(a), len(b))
        pairs = match_instances(a.masks, b.masks, min_iou=0.5)
        assert len(pairs) >= 0.9 * len(b) and pairs[:, 2].mean() >= 0.9


@needs_onnx
@pytest.mark.slow
def test_a_frame_of_600_loops_is_counted_by_default_onnx():
    """Issue 15: a 1024x1024 frame of 600 small loops made by loopline synth (clear ones, so
    that the count measures the cap, not the model's recall) is counted within 10 % by
    default; a per-frame cap of 300 (the old one) stops at 300 (measured: 614 and 300)."""
    from loopline.synth.params import load_preset
    from loopline.synth.render import render_frame
    from loopline.synth.scene import sample_scene

    p = load_preset("loops", {"width": 1024, "height": 1024, "loops": (600, 600),
                              "loop_diameter": (10.0, 18.0), "loop_contrast": (0.4, 0.6),
                              "loop_blur": (0.8, 1.5), "camera_noise": (0.02, 0.04)})  # fmt: skip
    r = render_frame(sample_scene(p, 1, 0))
    truth = len(r.truth["loops"])
    frame = to_uint8(r.image)
    (d,) = create_engine("defects", engine="onnx")([frame])
    n = int(((d.classes == 1) & (d.scores >= 0.25)).sum())
    assert truth >= 590 and abs(n - truth) <= 0.1 * truth, (n, truth)
    assert _true_loops_found(d, r.truth["loops"]) >= 0.85 * truth
    (d,) = create_engine("defects", engine="onnx", max_det_frame=300)([frame])
    assert len(d) == 300
