"""Sources without sockets: the series bookkeeping, the in-memory twin, file replay."""

from __future__ import annotations

import json
import math
import time

import cv2
import numpy as np
import pytest
import tifffile
from dm_writer import write_dm

from loopline.daemon.ingest import (
    COUNTER_NAMES,
    FileSource,
    Frame,
    MemorySource,
    SeriesEnd,
    SeriesStart,
    open_source,
)
from loopline.daemon.ingest.base import SeriesTracker, new_counters
from loopline.daemon.ingest.files import as_gray, open_frames
from loopline.daemon.ingest.loopline1 import protocol as lp

pytestmark = pytest.mark.timeout(30)


def _img(v: int, shape=(4, 6), dtype=np.uint16) -> np.ndarray:
    return np.full(shape, v, dtype)


def _kinds(events) -> list[str]:
    out = []
    for ev in events:
        if isinstance(ev, SeriesStart):
            out.append(f"start {ev.series}{' (synth)' if ev.synthesized else ''}")
        elif isinstance(ev, Frame):
            out.append(f"frame {ev.series}/{ev.index}")
        else:
            out.append(f"end {ev.series}{' (aborted)' if ev.aborted else ''} n={ev.frames}")
    return out


# ------------------------------------------------------------------------ series bookkeeping


def test_aborted_series_followed_by_a_new_one_resynchronises():
    evs = [SeriesStart("a", 0.0), Frame("a", 0, 0.0, _img(0)), Frame("a", 1, 0.0, _img(1)),
           SeriesStart("b", 1.0), Frame("b", 0, 1.0, _img(7)), SeriesEnd("b", 2.0)]  # fmt: skip
    src = MemorySource(evs)
    assert _kinds(src) == ["start a", "frame a/0", "frame a/1", "end a (aborted) n=2",
                           "start b", "frame b/0", "end b n=1"]  # fmt: skip
    c = src.counters
    assert (c["series"], c["aborted"], c["received"], c["resynced"]) == (2, 1, 3, 0)


def test_frames_without_a_start_get_one_and_stale_ends_are_ignored():
    counters = new_counters()
    tr = SeriesTracker(counters)
    out = []
    for ev in [SeriesEnd("old", 0.0), Frame("x", 5, 0.0, _img(0)), Frame("y", 0, 0.0, _img(0)),
               SeriesEnd("x", 0.0), SeriesEnd("y", 0.0)]:  # fmt: skip
        out += tr.feed(ev)
    assert _kinds(out) == ["start x (synth)", "frame x/5", "end x (aborted) n=1",
                           "start y (synth)", "frame y/0", "end y n=1"]  # fmt: skip
    assert counters["resynced"] == 2 and counters["stale"] == 2 and counters["aborted"] == 1
    assert set(counters) == set(COUNTER_NAMES)


# ------------------------------------------------------------------------ memory twin


def test_memory_twin_decodes_messages_like_the_socket_source():
    msgs = [lp.encode_series_start("s", shape=(4, 6), dtype="uint16"),
            [b"garbage"],
            lp.encode_frame("s", 0, _img(3)),
            [b'{"protocol": "loopline/1"}', b"x"],
            lp.encode_frame("s", 1, _img(4)),
            lp.encode_series_end("s", frames=2)]  # fmt: skip
    src = MemorySource(msgs, protocol="loopline")
    evs = list(src)
    assert _kinds(evs) == ["start s", "frame s/0", "frame s/1", "end s n=2"]
    assert [int(e.image[0, 0]) for e in evs if isinstance(e, Frame)] == [3, 4]
    assert evs[-1].frames_sent == 2
    c = src.counters
    assert (c["messages"], c["malformed"], c["received"]) == (6, 2, 2)


def test_memory_twin_live_push_get_timeout_and_drops():
    src = MemorySource(live=True, max_queued_frames=2)
    assert src.get(timeout=0.01) is None
    src.push(SeriesStart("s", 0.0))
    for i in range(5):
        src.push(Frame("s", i, 0.0, _img(i)))
    src.finish()
    # frames are drawn into the queue as the consumer asks, so nothing is dropped here
    assert len(list(src)) == 6
    with pytest.raises(StopIteration):
        src.get(timeout=0.01)


def test_memory_twin_push_message_needs_a_protocol():
    with pytest.raises(ValueError, match="protocol="):
        MemorySource(live=True).push_message([b"x"])
    with pytest.raises(ValueError, match="protocol must be one of"):
        MemorySource(protocol="nope")


# ------------------------------------------------------------------------ files


def _stack(n=5, shape=(24, 32), dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((n, *shape)) * 4000).astype(dtype)


def test_tiff_stack_replays_exact_pixels_with_its_rate_and_pixel_size(tmp_path):
    stack = _stack()
    path = tmp_path / "stack.tif"
    # 0.5 nm/px as ImageJ writes it: 2 px per nm, unit nm; 20 fps
    tifffile.imwrite(path, stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "nm", "finterval": 0.05, "axes": "TYX"})  # fmt: skip
    src = FileSource(path, fps=math.inf)
    evs = list(src)
    assert isinstance(evs[0], SeriesStart) and evs[0].frames == 5
    assert evs[0].pixel_size_nm == pytest.approx(0.5) and evs[0].shape == (24, 32)
    frames = [e for e in evs if isinstance(e, Frame)]
    assert [f.index for f in frames] == list(range(5))
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), stack)
    assert isinstance(evs[-1], SeriesEnd) and evs[-1].frames == 5
    assert open_frames(path).fps == pytest.approx(20.0)


def test_single_page_rgb_tiff_becomes_grey(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 200
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    (frame,) = [e for e in FileSource(tmp_path / "rgb.tif", fps=math.inf)
                if isinstance(e, Frame)]  # fmt: skip
    assert frame.image.shape == (8, 8) and frame.image.dtype == np.uint8
    assert int(frame.image[0, 0]) == round(0.587 * 200)


@pytest.mark.parametrize(("suffix", "fourcc"), [(".avi", "MJPG"), (".mp4", "mp4v")])
def test_video_replays_every_frame(tmp_path, suffix, fourcc):
    path = tmp_path / f"v{suffix}"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 12.0, (64, 48))
    if not w.isOpened():
        pytest.skip(f"OpenCV cannot write {fourcc}")
    for i in range(6):
        w.write(np.full((48, 64, 3), 30 * i, np.uint8))
    w.release()
    ff = open_frames(path)
    assert ff.fps == pytest.approx(12.0)
    frames = [e for e in FileSource(path, fps=math.inf) if isinstance(e, Frame)]
    assert len(frames) == 6
    assert all(f.image.shape == (48, 64) and f.image.dtype == np.uint8 for f in frames)
    means = [float(f.image.mean()) for f in frames]  # lossy codecs: close, not exact
    assert means == pytest.approx([30.0 * i for i in range(6)], abs=4)


def test_image_folder_in_natural_order_with_truth(tmp_path):
    imgs = tmp_path / "images"
    imgs.mkdir()
    for i in (10, 2, 1):
        cv2.imwrite(str(imgs / f"f{i}.png"), np.full((5, 5), i, np.uint8))
    (tmp_path / "truth.json").write_text(json.dumps({"fps": 25.0, "nm_per_px": 2.0}))
    src = FileSource(tmp_path, fps=math.inf)
    frames = [e for e in src if isinstance(e, Frame)]
    assert [int(f.image[0, 0]) for f in frames] == [1, 2, 10]
    assert frames[0].pixel_size_nm == 2.0
    assert src.truth == tmp_path / "truth.json"


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize(
    ("data", "scales", "units", "fps", "pixel_nm"),
    [
        (_stack(3, (6, 8), np.float32), (0.1, 0.02, 0.02), ("s", "µm", "µm"), 10.0, 20.0),
        (_stack(1, (5, 7))[0], (0.5, 0.5), ("nm", "nm"), None, 0.5),
        (_stack(2, (6, 8), np.uint8), (40.0, 1.0, 1.0), ("ms", "Å", "Å"), 25.0, 0.1),
    ],
    ids=["float32-stack", "uint16-image", "uint8-ms-angstrom"],
)
def test_dm_file_through_rosettasciio(tmp_path, version, data, scales, units, fps, pixel_nm):
    from rsciio.digitalmicrograph import file_reader

    path = write_dm(tmp_path / f"movie.dm{version}", data, scales=scales, units=units,
                    version=version)  # fmt: skip
    # RosettaSciIO reads the file back (else the writer is at fault, not loopline)
    (sig,) = file_reader(str(path))  # the thumbnail is skipped
    np.testing.assert_array_equal(sig["data"], data)
    assert sig["data"].dtype == data.dtype
    axes = sig["axes"]
    assert [a["size"] for a in axes] == list(data.shape)
    assert [a["units"] for a in axes] == list(units)
    assert [a["scale"] for a in axes] == pytest.approx(scales, rel=1e-6)  # stored as float32
    assert [a["navigate"] for a in axes] == [True] * (data.ndim - 2) + [False, False]

    ff = open_frames(path)
    count = data.shape[0] if data.ndim == 3 else 1
    # fps exactly: DM's float32 time scales are rounded (0.1 s reads back as 0.10000000149)
    assert (ff.count, ff.fps, ff.pixel_size_nm) == (
        count, fps, pytest.approx(pixel_nm))  # fmt: skip
    frames = [e for e in FileSource(path, fps=math.inf) if isinstance(e, Frame)]
    assert all(f.image.dtype == data.dtype for f in frames)  # float32 stays float32, uint16 too
    expected = data.reshape(count, *data.shape[-2:])
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), expected)
    assert all(f.pixel_size_nm == pytest.approx(pixel_nm) for f in frames)


def test_replay_at_a_chosen_rate_and_loop(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", _stack(3), photometric="minisblack")
    src = FileSource(tmp_path / "s.tif", fps=50, loop=True, max_frames=7)
    t0 = time.monotonic()
    frames = [e for e in src if isinstance(e, Frame)]
    dt = time.monotonic() - t0
    assert [f.index for f in frames] == list(range(7))
    assert [f.meta["file_index"] for f in frames] == [0, 1, 2, 0, 1, 2, 0]
    assert 6 / 50 * 0.9 <= dt < 2.0


def test_paced_get_returns_none_on_timeout(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", _stack(2), photometric="minisblack")
    src = FileSource(tmp_path / "s.tif", fps=2)
    assert isinstance(src.get(), SeriesStart)
    assert isinstance(src.get(), Frame)
    assert src.get(timeout=0.01) is None  # next frame is due in 0.5 s
    assert isinstance(src.get(), Frame)
    src.close()
    with pytest.raises(StopIteration):
        src.get()


def test_as_gray_converts_other_dtypes_to_float32():
    assert as_gray(np.ones((2, 2), np.int32)).dtype == np.float32
    assert as_gray(np.ones((2, 2), bool)).dtype == np.uint8
    with pytest.raises(ValueError, match="got shape"):
        as_gray(np.ones((2, 2, 2, 2)))


def test_open_source_picks_the_class(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", _stack(1))
    assert isinstance(open_source(str(tmp_path / "s.tif"), "file"), FileSource)
    assert isinstance(open_source(f"file://{tmp_path / 's.tif'}"), FileSource)
    with pytest.raises(ValueError, match="protocol must be one of"):
        open_source("tcp://127.0.0.1:1", "mqtt")
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "missing.mp4"), "file")
    with pytest.raises(ValueError, match="unknown file type"):
        (tmp_path / "x.xyz").write_bytes(b"")
        open_source(str(tmp_path / "x.xyz"), "file")
