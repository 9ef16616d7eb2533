"""Disk full (issue 18, item 3): a run folder that takes no more stops the recording, not the
daemon. Analysis and publishing go on; recording stops with the ``recording_stopped`` alarm
(published, in alarms.csv, in summary.json), every frame not recorded is counted
(``not_recorded_disk``), the files already written stay readable (CSV cut back to the last
whole row, no partial Parquet part, the MP4 up to its last whole fragment), and recording
resumes (the video in a new part) when space returns.

Three ways in: ENOSPC injected into the recorder's writes (runs anywhere), a real tmpfs of a
few MB filled up under the recorder, and a real daemon over ZeroMQ recording onto a tmpfs that
fills up (both skip where mounting a tmpfs is not permitted).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_daemon import mp4_frames

from loopline.daemon.config import load_config
from loopline.daemon.recorder import Recorder, disk_error
from loopline.daemon.validate import NOT_RECORDED
from loopline.io import runfolder

pytest.importorskip("av")
pq = pytest.importorskip("pyarrow.parquet")

SIDE = 64


def picture(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (SIDE, SIDE), np.uint8)  # noise: a few kB a frame


def output_cfg(**kw):
    out = load_config().output
    kw = {"flush_rows": 4, "resume_free_mb": 0.0, "disk_probe_s": 0.01, "video_codec": "h264",
          "parquet": True, "csv": True, **kw}  # fmt: skip
    return dataclasses.replace(out, **kw)


class Counts(dict):
    def add(self, k: str, n: int = 1) -> None:
        self[k] = self.get(k, 0) + n


class Feed:
    """Drives a Recorder as the output worker does: a result, then its frame."""

    def __init__(self, rec: Recorder, counts: Counts) -> None:
        self.rec, self.c, self.i = rec, counts, 0

    def frame(self) -> bool:
        i = self.i
        self.i += 1
        self.c.add("received")
        self.c.add("analysed")
        msg = {"series": "s", "index": i, "time_s": 0.1 * i,
               "row": {"series": "s", "frame": i, "time_s": 0.1 * i, "n_loops": i % 3},
               "tracks": [{"series": "s", "frame": i, "track_id": 1}]}  # fmt: skip
        if not self.rec.append_result(msg, latency_ms=5.0):
            self.c.add("results_not_recorded_disk")
        hdr = {"series": "s", "index": i, "seq": i, "ts": 1e9 + i, "time_s": 0.1 * i,
               "result": msg}  # fmt: skip
        img = picture(i)
        ok = self.rec.write_frame(img, hdr, np.dstack([img] * 3), "analysed")
        self.c.add("recorded" if ok else "not_recorded_disk")
        return ok

    def close(self) -> dict:
        s = self.rec.close(dict(self.c), latency={}, ingest_latency={}, metrics={})
        assert s is not None
        return json.loads(s.read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_folder(run: Path, summary: dict) -> None:
    """Every file readable, and as long as the counters say."""
    c = summary["counters"]
    assert c["recorded"] + sum(c[k] for k in NOT_RECORDED) == c["received"], c
    videos = summary["recording"]["videos"]
    assert sum(mp4_frames(run / v) for v in videos) == c["recorded"], videos
    frames = read_csv(run / "frames.csv")
    assert len(frames) == c["recorded"]
    assert len({r["seq"] for r in frames}) == len(frames)  # no row twice
    series = read_csv(run / "series.csv")
    bad = [r for r in series if not (r["series"] == "s" and r["frame"].isdigit())]
    assert not bad, bad[:3]  # whole rows only
    assert len(series) == c["analysed"] - c["results_not_recorded_disk"]
    assert pq.read_table(run / "series.parquet").num_rows == len(series)
    assert not list(run.glob("*.parts")) and not list(run.glob("*.tmp"))
    for t in ("tracks.csv", "alarms.csv"):
        read_csv(run / t)


# ----------------------------------------------------------------------------- injected


class _Full:
    """A file whose writes fail half-way, as on a disk that fills up mid-write."""

    def __init__(self, f) -> None:
        self.f, self.name = f, f.name

    def write(self, b) -> int:
        self.f.write(bytes(b)[: max(len(b) // 2, 1)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)

    def fileno(self) -> int:
        return self.f.fileno()

    def seek(self, pos: int) -> int:
        return self.f.seek(pos)


@pytest.fixture
def full_disk(monkeypatch):
    """``full["on"] = True``: every write of the run folder fails with ENOSPC after writing
    part of its data (CSV rows, Parquet parts, video fragments)."""
    from loopline.daemon import recorder as rec_mod
    from loopline.io.video import VideoWriter

    full = {"on": False}
    real_write_all = runfolder.write_all

    def write_all(f, data, good):
        return real_write_all(_Full(f) if full["on"] else f, data, good)

    real_table = pq.write_table

    def write_table(table, where, *a, **kw):
        if full["on"]:
            Path(where).write_bytes(b"PAR1" + b"\0" * 100)  # a partial file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real_table(table, where, *a, **kw)

    real_video = VideoWriter.write
    real_close = VideoWriter.close

    def video_write(self, bgr):
        if full["on"] and self.size is not None:
            with open(self.path, "ab") as f:  # a fragment cut short
                f.write(b"\0\0\1\0moof" + b"\x55" * 300)
            import av

            raise av.error.OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        return real_video(self, bgr)

    monkeypatch.setattr(runfolder, "write_all", write_all)
    monkeypatch.setattr(rec_mod, "write_all", write_all)
    monkeypatch.setattr(pq, "write_table", write_table)
    def video_close(self):
        if full["on"]:  # what the muxer still held does not go in
            with contextlib.suppress(Exception):
                real_close(self)
            import av

            raise av.error.OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        return real_close(self)

    monkeypatch.setattr(VideoWriter, "write", video_write)
    monkeypatch.setattr(VideoWriter, "close", video_close)
    return full


def test_disk_errors_are_the_ones_that_stop_recording():
    assert disk_error(OSError(errno.ENOSPC, "full"))
    assert disk_error(OSError(errno.EDQUOT, "quota"))
    assert disk_error(OSError(errno.EROFS, "read-only"))
    try:
        try:
            raise OSError(errno.EIO, "i/o")
        except OSError as e:
            raise OSError("cannot open x.mp4") from e
    except OSError as wrapped:
        assert disk_error(wrapped)
    assert not disk_error(OSError(errno.ENOENT, "gone"))
    assert not disk_error(ValueError("x"))


def test_injected_enospc_stops_and_resumes_the_recording(tmp_path, full_disk, caplog):
    """ENOSPC in the middle of every kind of write: no exception out of the recorder, the
    frames after it counted, an alarm raised once and cleared once, every file readable
    (partial rows cut, no partial Parquet part, the MP4 up to its last whole fragment), and
    recording resumed in annotated.1.mp4."""
    events: list[dict] = []
    counts = Counts()
    rec = Recorder(tmp_path, output_cfg(), on_alarm=events.append, count=counts.add)
    feed = Feed(rec, counts)
    for _ in range(10):
        assert feed.frame()
    full_disk["on"] = True
    with caplog.at_level("ERROR", logger="loopline.daemon.recorder"):
        for _ in range(12):
            assert not feed.frame()
    assert rec.stopped is not None
    stops_logged = [r for r in caplog.records if "recording_stopped raised" in r.getMessage()]
    assert len(stops_logged) == 1  # one line, not one a frame
    full_disk["on"] = False
    time.sleep(0.02)
    for _ in range(9):
        assert feed.frame()
    assert rec.stopped is None
    s = feed.close()
    c = s["counters"]
    # the frame written last before the stop was still in the muxer: not recorded after all
    assert c["recorded"] == 10 - 1 + 9 and c["not_recorded_disk"] == 12 + 1, c
    assert c["results_not_recorded_disk"] == 12 - 1, c  # the first result's rows were kept
    assert [(e["rule"], e["state"]) for e in events] == [("recording_stopped", "raise"),
                                                          ("recording_stopped", "clear")]
    assert events[0]["level"] == "error" and "ENOSPC" in events[0]["message"]
    assert events[1]["value"] == 13
    assert s["recording"]["videos"] == ["annotated.mp4", "annotated.1.mp4"]
    assert [st["frames_not_recorded"] for st in s["recording"]["stops"]] == [13]
    assert any("13 frames were NOT recorded" in w for w in s["warnings"]), s["warnings"]
    check_folder(tmp_path, s)
    alarms = read_csv(tmp_path / "alarms.csv")
    assert [(a["rule"], a["state"]) for a in alarms] == [("recording_stopped", "raise"),
                                                          ("recording_stopped", "clear")]
    frames = [int(r["index"]) for r in read_csv(tmp_path / "frames.csv")]
    assert frames == [*range(9), *range(22, 31)]


def test_a_disk_full_to_the_end_still_writes_summary_or_one_error(tmp_path, full_disk, caplog):
    """Still full at the end: files closed as they are (the Parquet parts stay for `loopline
    recover`); summary.json is small and tried again; where even that fails, one ERROR line
    with the counters."""
    counts = Counts()
    rec = Recorder(tmp_path, output_cfg(), count=counts.add)
    feed = Feed(rec, counts)
    for _ in range(6):
        feed.frame()
    full_disk["on"] = True
    for _ in range(3):
        feed.frame()
    real = runfolder.write_summary
    tries = []

    def write_summary(folder, summary):
        tries.append(1)
        if len(tries) < 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, summary)

    import loopline.daemon.recorder as rec_mod

    rec_mod.SUMMARY_TRIES, saved = 3, rec_mod.SUMMARY_TRIES
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rec_mod, "write_summary", write_summary)
            s = feed.close()
        assert len(tries) == 2
        assert any("still stopped at the end" in w for w in s["warnings"])
        assert s["counters"]["recorded"] == 5  # the last one lost with the muxer
        assert len(read_csv(tmp_path / "frames.csv")) == 4  # a flush of 4: the fifth pending
        assert mp4_frames(tmp_path / "annotated.mp4") == 5
        parts = runfolder.parquet_parts(tmp_path / "series.parquet")  # merged, or for recover
        assert pq.read_table(parts if parts.exists() else tmp_path / "series.parquet").num_rows == 4
        # and a summary that cannot be written at all: one line
        rec2 = Recorder(tmp_path / "b", output_cfg())
        with pytest.MonkeyPatch.context() as mp, caplog.at_level("ERROR"):
            mp.setattr(rec_mod, "write_summary",
                       lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
            mp.setattr(rec_mod.time, "sleep", lambda _s: None)
            assert rec2.close({"received": 0}, latency={}, ingest_latency={}, metrics={}) is None
        lines = [r.getMessage() for r in caplog.records if "summary.json NOT written" in
                 r.getMessage()]  # fmt: skip
        assert len(lines) == 1 and "ENOSPC" in lines[0] and "\n" not in lines[0]
    finally:
        rec_mod.SUMMARY_TRIES = saved


# ----------------------------------------------------------------------------- real tmpfs


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> None:
    """Fill the disk of ``path`` to the last byte."""
    with open(path, "ab", buffering=0) as f:
        for block in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * block):
                    pass


def test_a_real_full_tmpfs_stops_and_resumes_the_recording(tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        run = disk / "run"
        events: list[dict] = []
        counts = Counts()
        rec = Recorder(run, output_cfg(resume_free_mb=1.0), on_alarm=events.append,
                       count=counts.add)  # fmt: skip
        feed = Feed(rec, counts)
        for _ in range(12):
            assert feed.frame()
        fill(disk / "filler")
        for _ in range(20):  # the first write that hits the full disk stops the recording
            feed.frame()
        assert rec.stopped is not None, counts
        assert [e["state"] for e in events] == ["raise"]
        (disk / "filler").unlink()
        time.sleep(0.02)
        for _ in range(10):
            feed.frame()
        assert rec.stopped is None and [e["state"] for e in events] == ["raise", "clear"]
        s = feed.close()
        check_folder(run, s)
        assert s["counters"]["not_recorded_disk"] >= 1
        assert len(s["recording"]["videos"]) == 2


@pytest.mark.slow
def test_daemon_on_a_full_disk_goes_on_analysing_and_publishing(tmp_path, sim, daemons):
    """A real daemon over ZeroMQ recording onto an 8 MB tmpfs that fills up: no worker
    restarts, the daemon stays up, frames go on being analysed and published, the alarm is
    published (raise, then clear when space returns), counters add up, files readable."""
    from conftest import subscribed
    from test_daemon import _free_port
    from test_hostile import Daemon, check_counters, image, send_frame

    from loopline.daemon.ingest.loopline1 import protocol

    with tmpfs(tmp_path / "disk", "8m") as disk:
        d = Daemon(disk, sim.endpoint, **{
            "publish.endpoint": f"tcp://127.0.0.1:{_free_port()}", "output.flush_rows": 4,
            "output.resume_free_mb": 2.0, "output.disk_probe_s": 0.2,
            "alarms.disk_check_s": 0.2, "alarms.disk_free_below_gb": 0.004,
            "alarms.disk_clear_gb": 0.005})  # fmt: skip
        daemons.append(d)
        d.start()
        sent = 0
        with subscribed(d.cfg.publish.endpoint, (b"alarm", b"frame")) as got:
            time.sleep(0.5)
            assert sim.send(protocol.encode_series_start("s"))

            def burst(n: int) -> None:
                nonlocal sent
                for _ in range(n):
                    send_frame(sim, "s", sent, image(sent))
                    sent += 1
                    time.sleep(0.01)

            burst(30)
            d.wait_for(lambda: d.stat("recorded") >= 30)
            fill(disk / "filler")
            burst(40)
            d.wait_for(lambda: d.stat("not_recorded_disk") > 0 and d.stat("analysed") >= 70)
            assert d.stat("alarm_active_recording_stopped") == 1
            published = d.stat("published")
            (disk / "filler").unlink()
            time.sleep(0.5)
            burst(30)
            d.wait_for(lambda: d.stat("alarm_active_recording_stopped") == 0
                       and d.stat("analysed") >= 100)  # fmt: skip
            assert d.stat("published") > published  # publishing went on throughout
            assert sim.send(protocol.encode_series_end("s", frames=sent))
            s = d.finish(sent)
        c = check_counters(s, sent)
        assert c["analysed"] == sent and c["not_recorded_disk"] > 0
        check_folder(d.run_dir, s)
        msgs = [json.loads(m[1]) for m in got if m[0] == b"alarm"]
        rs = [(m["state"], m.get("level")) for m in msgs if m["rule"] == "recording_stopped"]
        assert rs == [("raise", "error"), ("clear", "info")], msgs
        assert any(m["rule"] == "disk_low" and m["state"] == "raise" for m in msgs), msgs
        kinds = [(m[0], json.loads(m[1]).get("rule")) for m in got]
        up = kinds.index((b"alarm", "recording_stopped"))
        down = len(kinds) - 1 - kinds[::-1].index((b"alarm", "recording_stopped"))
        assert any(k == b"frame" for k, _ in kinds[up:down])  # published while stopped too
        alarms = read_csv(d.run_dir / "alarms.csv")
        assert [a["state"] for a in alarms if a["rule"] == "recording_stopped"] == ["raise",
                                                                                 "clear"]
