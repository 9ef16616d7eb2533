"""An annotated video left unfinalised by a killed recorder is made playable again."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from loopline.cli import main
from loopline.daemon.config import load_config
from loopline.daemon.recorder import Recorder, first_free_part
from loopline.daemon.video_recovery import SIDECAR, recover_run, recover_video

N = 60
SIZE = 192


def picture(i: int) -> np.ndarray:
    """Frame i: noise (each encodes to ~20 KB) with a bright bar at x = 3 i."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 160, (SIZE, SIZE, 3), dtype=np.uint8)
    img[:, 3 * i:3 * i + 3] = 255
    return img


def bar_at(frame: np.ndarray) -> int:
    return int(np.argmax(frame.mean(axis=(0, 2)).reshape(-1, 3).mean(axis=1)))


def read_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def record(run: Path, n: int, *, part: int = 0, kill: bool, codec: str = "mp4v") -> None:
    """Record n frames in a child process, which SIGKILLs itself (kill) or closes the run.
    ``codec``: the video's (mp4v: the one that needs recovering after a kill)."""
    code = f"""
        import dataclasses, os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_video_recovery import picture
        from loopline.daemon.config import load_config
        from loopline.daemon.recorder import Recorder
        out = dataclasses.replace(load_config().output, video_codec={codec!r})
        rec = Recorder({str(run)!r}, out, part={part})
        for i in range({n}):
            hdr = {{"series": "s", "index": i, "seq": i, "ts": float(i)}}
            rec.write_frame(picture(i)[..., 0], hdr, picture(i), "analysed")
        if {kill}:
            os.kill(os.getpid(), signal.SIGKILL)
        rec.close({{}}, latency={{}}, ingest_latency={{}}, metrics={{}})
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True)
    assert r.returncode == (-9 if kill else 0), r.stderr.decode()


def test_killed_recorder_leaves_a_marked_unreadable_video_that_is_recovered(tmp_path):
    record(tmp_path, N, kill=True)
    video = tmp_path / "annotated.mp4"
    assert Path(f"{video}{SIDECAR}").exists()
    assert read_all(video) == []  # what a player sees: no index, no frames
    n = recover_video(video)
    got = read_all(video)
    assert n == len(got)
    # only the writer's last unflushed buffer (256 KiB) is lost: ~13 frames of ~20 KB
    assert N - 15 <= n < N
    assert [bar_at(f) for f in got] == [bar_at(picture(i)) for i in range(n)]
    record(tmp_path / "clean", N, kill=False)  # the same frames, recorded and closed
    clean = read_all(tmp_path / "clean" / "annotated.mp4")
    err = [np.abs(got[i].astype(int) - clean[i]).mean() for i in (0, 5, n - 1)]
    assert max(err) < 0.3 * np.abs(clean[5].astype(int) - clean[6]).mean(), err
    assert not Path(f"{video}{SIDECAR}").exists()
    assert not list(tmp_path.glob("*recovering*"))  # no scratch files left
    assert recover_video(video) is None  # finalised now: nothing to do


def test_killed_h264_recorder_leaves_a_playable_video_with_nothing_to_recover(tmp_path):
    """H.264 in fragmented MP4 (the default where PyAV is installed): every fragment is whole
    on disk when the next one starts, so a killed writer's video plays as it is."""
    pytest.importorskip("av")
    record(tmp_path, N, kill=True, codec="h264")
    video = tmp_path / "annotated.mp4"
    assert not Path(f"{video}{SIDECAR}").exists()
    got = read_all(video)
    # one fragment per frame, flushed as it is written: at most the last frame is lost
    assert N - 2 <= len(got) <= N, len(got)
    assert [bar_at(f) for f in got] == [bar_at(picture(i)) for i in range(len(got))]
    assert recover_run(tmp_path) == {}


def test_h264_video_is_smaller_than_mp4v_and_keeps_the_pictures(tmp_path):
    pytest.importorskip("av")
    record(tmp_path / "h264", N, kill=False, codec="h264")
    record(tmp_path / "mp4v", N, kill=False, codec="mp4v")
    h264, mp4v = (tmp_path / c / "annotated.mp4" for c in ("h264", "mp4v"))
    got = read_all(h264)
    assert len(got) == N
    assert [bar_at(f) for f in got] == [bar_at(picture(i)) for i in range(N)]
    # uniform noise is the worst case for either codec; on TEM frames H.264 is ~10x smaller
    # (benchmarks/video.py)
    assert h264.stat().st_size < mp4v.stat().st_size


def test_closed_recorder_leaves_no_sidecar_and_nothing_to_recover(tmp_path):
    record(tmp_path, 10, kill=False)
    assert len(read_all(tmp_path / "annotated.mp4")) == 10
    assert not list(tmp_path.glob(f"*{SIDECAR}"))
    assert recover_run(tmp_path) == {}


def test_unindexed_video_without_sidecar_is_refused_untouched(tmp_path):
    record(tmp_path, 10, kill=True)
    video = tmp_path / "annotated.mp4"
    Path(f"{video}{SIDECAR}").unlink()
    before = video.read_bytes()
    with pytest.raises(ValueError, match=r"no MP4 index .* frame size and rate"):
        recover_video(video)
    assert video.read_bytes() == before
    assert recover_run(tmp_path) == {}  # nothing marked


def test_next_part_recovers_the_killed_parts_video(tmp_path):
    """A restarted output worker (part 1) recovers part 0 and reports it in summary.json."""
    record(tmp_path, N, kill=True)
    rec = Recorder(tmp_path, load_config().output, part=1)
    for i in range(5):
        rec.write_frame(picture(i)[..., 0], {"series": "s", "index": N + i, "seq": N + i,
                                             "ts": 0.0}, picture(i), "analysed")  # fmt: skip
    summary = rec.close({}, latency={}, ingest_latency={}, metrics={})
    import json

    s = json.loads(summary.read_text())
    n = s["recovered_videos"]["annotated.mp4"]
    assert N - 15 <= n < N and len(read_all(tmp_path / "annotated.mp4")) == n
    assert len(read_all(tmp_path / "annotated.1.mp4")) == 5
    assert not list(tmp_path.glob(f"*{SIDECAR}"))
    assert not any("recovered" in w for w in s["warnings"])


def test_recover_command(tmp_path, capsys):
    record(tmp_path, 20, kill=True)
    assert main(["recover", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "annotated.mp4: recovered," in out and "frames" in out
    assert len(read_all(tmp_path / "annotated.mp4")) >= 5
    assert main(["recover", str(tmp_path)]) == 0
    assert "nothing to recover" in capsys.readouterr().out
    assert main(["recover", str(tmp_path / "nope")]) != 0
    assert "expected a run folder" in capsys.readouterr().err


def test_first_free_part_never_reuses_a_recorded_part(tmp_path):
    assert first_free_part(tmp_path / "none") == 0
    assert first_free_part(tmp_path) == 0
    (tmp_path / "frames.csv").write_text("series\n")
    assert first_free_part(tmp_path) == 1
    (tmp_path / "annotated.2.mp4").write_bytes(b"")
    assert first_free_part(tmp_path) == 3
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "frames.4.tif").write_bytes(b"")
    (tmp_path / "annotated.2.mp4.open").write_text("{}")  # a sidecar is not a part
    (tmp_path / "notes.mp4").write_bytes(b"")
    assert first_free_part(tmp_path) == 5


def test_raw_frames_of_a_later_part_never_overwrite(tmp_path):
    from dataclasses import replace

    cfg = replace(load_config().output, raw="npy", mp4=False)
    hdr = {"series": "s", "index": 0, "seq": 0, "ts": 0.0}
    for part, value in ((0, 1), (1, 2)):  # two runs in one folder, same series name
        rec = Recorder(tmp_path, cfg, part=part)
        rec.write_frame(np.full((4, 4), value, np.uint8), hdr, None, "analysed")
        rec.close({}, latency={}, ingest_latency={}, metrics={})
    assert np.load(tmp_path / "raw" / "s_000000.npy")[0, 0] == 1
    assert np.load(tmp_path / "raw" / "s_000000.1.npy")[0, 0] == 2


def test_a_video_still_being_written_is_left_alone(tmp_path):
    """`loopline recover` on the folder of a running daemon must not replace its live video
    (mp4v: the codec whose videos are recovered)."""
    rec = Recorder(tmp_path, dataclasses.replace(load_config().output, video_codec="mp4v"))
    for i in range(N):
        rec.write_frame(picture(i)[..., 0], {"series": "s", "index": i, "seq": i, "ts": 0.0},
                        picture(i), "analysed")  # fmt: skip
    code = ("from loopline.daemon.video_recovery import recover_run; import sys; "
            f"r = recover_run({str(tmp_path)!r}); print(r); sys.exit(0 if "
            "'still being written' in r['annotated.mp4'] else 1)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    rec.close({}, latency={}, ingest_latency={}, metrics={})
    assert len(read_all(tmp_path / "annotated.mp4")) == N  # finalised by its writer, whole
