"""Hostile and odd input (issue 18): a real daemon over loopback receives what an attacker on
the camera network (or a confused camera) can send; nothing crashes a worker, every frame that
is not analysed or not recorded is counted under a named counter, and the counters add up.

Rows of the issue's table covered here: backwards and restarted indices, duplicate indices,
interleaved series, timestamps of +-1.7e308, an index of 2**63, a pixel size of 1e308 nm, a
1 x 1 first frame, repeated restarts (the restart budget), series ids that are paths, hold
NUL bytes, newlines or spreadsheet formulas, a protocol-valid frame larger than the slot pool
(ZMQ_MAXMSGSIZE; DECTRIS bounded the same way), start-up errors, the web viewer's Host header.
Each daemon: real ZeroMQ sockets on loopback (port 0), 64 x 64 frames, the fast threshold
stand-in engine.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import logging
import os
import signal
import socket as pysocket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
import zmq
from test_daemon import Daemon as DaemonBase
from test_daemon import mp4_frames

from loopline.daemon.config import ConfigError, load_config
from loopline.daemon.ingest.base import Frame, SeriesEnd, SeriesStart, SeriesTracker, new_counters
from loopline.daemon.ingest.loopline1 import protocol
from loopline.daemon.ingest.simulator import Simulator
from loopline.daemon.metrics import COUNTERS
from loopline.daemon.standins import mark_for_failure
from loopline.daemon.supervisor import RestartBudget, Supervisor
from loopline.daemon.validate import (
    MAX_INDEX,
    NOT_RECORDED,
    REJECT_COUNTERS,
    FrameValidator,
    max_message_bytes,
)
from loopline.io.sanitize import (
    EscapingFilter,
    MultiLine,
    csv_cell,
    inside,
    safe_filename,
)

FAST = "loopline.daemon.standins:ThresholdEngine"
FLAKY = "loopline.daemon.standins:flaky_engine"
SIDE = 64
POOL = 256  # pool.max_height = pool.max_width: the size limit of a frame message

# ----------------------------------------------------------------------------- helpers


def image(i: int = 0, size: int = SIDE) -> np.ndarray:
    """A bright noisy field with one dark line (one instance for the threshold engine)."""
    rng = np.random.default_rng(i)
    img = (rng.random((size, size)) * 40 + 170).astype(np.uint8)
    x = 8 + i % 30
    cv2.line(img, (x, 6), (x + 10, size - 6), 40, 3)
    return img


class Daemon(DaemonBase):
    """The daemon tests' Daemon with exact-count settings and counter helpers."""

    DEFAULTS: ClassVar[dict] = {
        "engine.factory": FAST, "publish.endpoint": "tcp://127.0.0.1:0",
        "calibration.nm_per_px": 2.0, "output.result_timeout_s": 20.0,
        "metrics.interval_s": 0.2, "pool.slots": 256, "pool.max_height": POOL,
        "pool.max_width": POOL, "pool.max_instances": 4,
        "pool.max_memory_mb": 64.0,  # below the pool itself: it never grows, POOL is the limit
        "batch.size": 2, "batch.max_pending": 1000,  # no latest-wins skips: exact counts
    }  # fmt: skip

    def stat(self, name: str) -> int:
        return int(self.sup.stats[name])

    def wait_for(self, what, timeout: float = 60.0) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if what():
                return
            assert self.thread.is_alive(), "the daemon exited"
            time.sleep(0.1)
        snap = {k: int(v) for k, v in self.sup.stats.snapshot().items() if k in COUNTERS}
        raise AssertionError(f"timed out waiting; counters {snap}")

    def finish(self, frames_sent: int) -> dict:
        """Wait until every frame sent is accounted for by the receiver, then drain."""
        self.wait_for(lambda: self.stat("received") + self.stat("rejected_interleaved")
                      + self.stat("malformed") >= frames_sent)  # fmt: skip
        self.sup.request_stop("test: all sent")
        self.thread.join(90)
        assert not self.thread.is_alive(), "daemon did not finish"
        assert self.code == 0, self.sup.error
        return json.loads((self.run_dir / "summary.json").read_text())


def send_frame(sim: Simulator, series: str, index: int, img: np.ndarray, **kw) -> None:
    assert sim.send(protocol.encode_frame(series, index, img, **kw))


def send_series(sim: Simulator, series: str, indices, *, start: bool = True, end: bool = True,
                gap_s: float = 0.0, **kw) -> int:  # fmt: skip
    if start:
        assert sim.send(protocol.encode_series_start(series))
    n = 0
    for i in indices:
        send_frame(sim, series, i, image(i), **kw)
        n += 1
        if gap_s:
            time.sleep(gap_s)
    if end:
        assert sim.send(protocol.encode_series_end(series, frames=n))
    return n


def send_oversize(send, parts: list, probe: list, arrived, *, timeout: float = 30.0) -> int:
    """Send a message the receiver discards unread (ZMQ_MAXMSGSIZE), then ``probe`` messages
    until ``arrived()``; returns how many probes were sent.

    ZeroMQ closes the connection the big message came on; what the sender sends before its
    own end of it is torn down (asynchronously) is lost with it, before any receiver could
    count it. So the test sends probes until one arrives, and counts those that did.
    """
    send(parts)
    t_end = time.monotonic() + timeout
    n = 0
    while not arrived():
        assert time.monotonic() < t_end, "nothing arrives after the oversize message"
        send(probe)
        n += 1
        t_probe = time.monotonic() + 1.0
        while not arrived() and time.monotonic() < t_probe:
            time.sleep(0.05)
    return n


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_counters(s: dict, frames_sent: int | None, *, restarts: int = 0) -> dict:
    """Every frame is accounted for, once, under a named counter (``frames_sent`` None: the
    count that reached the daemon is not known)."""
    c = s["counters"]
    assert c["restarts"] == restarts, "a worker crashed" if restarts == 0 else c["restarts"]
    if frames_sent is not None:
        assert c["received"] + c["rejected_interleaved"] + c["malformed"] \
            + c["dropped_source"] == frames_sent, c
    assert c["recorded"] + sum(c[k] for k in NOT_RECORDED) == c["received"], c
    assert c["analysed"] + c["skipped"] == c["received"], c
    # frames back from an engine after their successors: analysed (measured), not tracked
    assert 0 <= c["late_after_successor"] <= c["analysed"], c
    not_analysed = ("skipped_backpressure", "skipped_lost", "skipped_duplicate",
                    "rejected_oversize", "dropped_no_slot", "receiver_errors", *REJECT_COUNTERS)
    assert c["skipped"] == sum(c[k] for k in not_analysed), c  # fmt: skip
    assert not any("!= received" in w for w in s["warnings"]), s["warnings"]
    return c


def check_files(d: Daemon, c: dict) -> None:
    """Every table readable and as long as the counters say."""
    import pyarrow.parquet as pq

    run = d.run_dir
    assert mp4_frames(run / "annotated.mp4") == c["recorded"]
    assert len(read_csv(run / "frames.csv")) == c["recorded"]
    assert len(read_csv(run / "series.csv")) == c["analysed"]
    assert pq.read_table(run / "series.parquet").num_rows == c["analysed"]


# ----------------------------------------------------------------------------- units


def test_frame_validator_outcomes():
    v = FrameValidator()
    ok = image(0)
    assert v.values(3, time.time(), 2.0, ok) is None
    cases = [
        ((0, time.time(), None, np.zeros((1, 1), np.uint8)), "rejected_undersize"),
        ((0, 1.7e308, None, ok), "rejected_timestamp"),
        ((0, -1.7e308, None, ok), "rejected_timestamp"),
        ((0, time.time(), 1e308, ok), "rejected_pixel_size"),
        ((0, time.time(), -2.0, ok), "rejected_pixel_size"),
        ((2**63, time.time(), None, ok), "rejected_index"),
        ((0, time.time(), None, np.full((32, 32), np.nan, np.float32)), "rejected_pixels"),
    ]
    for args, counter in cases:
        bad = v.values(*args)
        assert bad is not None and bad.counter == counter and "expected" in bad.reason
    assert v.values(MAX_INDEX, time.time(), None, ok) is None
    seq = [v.sequence("s", i, t) for i, t in [(0, 0.0), (1, 0.1), (1, 0.2), (2, 0.3), (0, 0.4),
                                              (1, 0.5), (2, 0.5)]]  # fmt: skip
    assert [(x.new_segment, x.duplicate, x.restarted) for x in seq] == [
        (True, False, False), (False, False, False), (False, True, False),
        (False, False, False), (True, False, True), (False, False, False),
        (True, False, True),  # time did not increase
    ]  # fmt: skip
    v.series_start("s")
    assert v.sequence("s", 7, 9.0).new_segment  # a restarted series: a new segment


def test_series_tracker_interleaved_series_keep_the_first():
    clock = [0.0]
    c = new_counters()
    tr = SeriesTracker(c, clock=lambda: clock[0])
    img = image(0)
    out = []
    for i in range(6):
        for s in ("a", "b"):
            clock[0] += 0.04
            out += tr.feed(Frame(s, i, 100.0 + clock[0], img))
    kinds = [(type(e).__name__, e.series) for e in out]
    # a0 opens a; b0 takes over (a camera restart?); a1 shows they interleave: a resumes, b
    # is the intruder and b1..b5 are rejected
    assert kinds[:7] == [("SeriesStart", "a"), ("Frame", "a"), ("SeriesEnd", "a"),
                         ("SeriesStart", "b"), ("Frame", "b"), ("SeriesEnd", "b"),
                         ("SeriesStart", "a")]  # fmt: skip
    assert [e.index for e in out if isinstance(e, Frame) and e.series == "a"] == list(range(6))
    assert c["interleaved"] == 5 and c["aborted"] == 2
    # an announced series always starts; frames of the one it closed are then rejected
    out = tr.feed(SeriesStart("c", 0.0))
    assert [type(e).__name__ for e in out] == ["SeriesEnd", "SeriesStart"]
    assert tr.feed(Frame("a", 6, 101.0, img)) == [] and c["interleaved"] == 6
    assert [type(e).__name__ for e in tr.feed(Frame("c", 0, 101.0, img))] == ["Frame"]
    assert tr.feed(SeriesEnd("c", 0.0))[0].frames == 1
    # once nothing is open, any series may start; after the window a closed one may too
    clock[0] += 10
    assert [type(e).__name__ for e in tr.feed(Frame("b", 9, 102.0, img))] == [
        "SeriesStart", "Frame"]  # fmt: skip


def test_restart_budget_is_per_window_and_comes_back():
    t = [0.0]
    b = RestartBudget(5, 600.0, clock=lambda: t[0])
    for _ in range(5):
        t[0] += 2.0
        assert b.spend()
    assert not b.spend()  # a sixth within 10 min: give up
    t[0] += 600.0  # a healthy period
    assert b.used == 0 and b.spend()
    assert load_config(overrides={"run.restart_window_s": 60}).run.restart_window_s == 60.0
    with pytest.raises(ConfigError, match=r"run.restart_window_s must lie in \[1.0, "):
        load_config(overrides={"run.restart_window_s": 0})


def test_sanitizers():
    names = ["../../x", "/abs/path", "a\x00b", "x" * 300, "", ".", "..", "a/b", "a_b", "ok-1.2"]
    safe = [safe_filename(n) for n in names]
    assert safe[-1] == "ok-1.2" and len(set(safe)) == len(safe)  # never two names on one file
    for s in safe:
        assert s and len(s) <= 64 and "/" not in s and "\x00" not in s and not s.startswith(".")
    assert inside("/tmp/run", "/tmp/run/raw/a.npy") == Path("/tmp/run/raw/a.npy").resolve()
    with pytest.raises(ValueError, match="expected a file inside"):
        inside("/tmp/run", "/tmp/run/raw/../../x.npy")
    assert [csv_cell(v) for v in ("=1+1", "+1", "-1+2", "@SUM(A1)", "\tx", "-3.5", "1e5",
                                  "run-7", 3, None)] == [
        "'=1+1", "+1", "'-1+2", "'@SUM(A1)", "'\tx", "-3.5", "1e5", "run-7", 3, None]  # fmt: skip


def test_log_messages_escape_control_characters():
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter("REC %(message)s"))
    h.addFilter(EscapingFilter())
    log = logging.getLogger("loopline.test_hostile")
    log.addHandler(h)
    log.propagate = False
    try:
        log.warning("series %s aborted", "evil\nREC forged\x1b[2J")
        log.warning("traceback:\n%s", MultiLine("line 1\nREC line 2"))
        try:
            raise ValueError("bad\nREC forged by an exception")
        except ValueError:
            log.exception("failed on %s", "x\ry")
    finally:
        log.removeHandler(h)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "REC series evil\\nREC forged\\x1b[2J aborted"
    assert lines[1] == "REC traceback:" and lines[2] == "line 1"
    assert all(ln.startswith(("REC ", " ", "line 1")) for ln in lines), lines
    assert sum(ln.startswith("REC") for ln in lines) == 3, lines  # three records, three lines
    assert "x\\ry" in buf.getvalue() and "\x1b" not in buf.getvalue()


def test_dectris_frames_bounded_before_decompression():
    pytest.importorskip("cbor2")
    from loopline.daemon.ingest.dectris import source as dx
    from loopline.daemon.ingest.loopline1.protocol import MalformedMessage

    big = np.zeros((2048, 2048), np.uint16)  # bslz4: a few kB that decompress to 8 MB
    v1 = dx.encode_v1_frame(1, 0, big)
    v2 = dx.encode_v2_frame(1, 0, big)
    assert len(v2[0]) < 100_000
    with pytest.raises(MalformedMessage, match=r"expected at most 256 x 256 px \(H x W\), got "
                                               r"2048 x 2048"):
        dx.Dectris1Decoder(max_shape=(256, 256)).feed(v1)
    with pytest.raises(MalformedMessage, match="expected at most 256 x 256 px"):
        dx.Dectris2Decoder(max_shape=(256, 256)).feed(v2)
    (ev,) = dx.Dectris2Decoder(max_shape=(256, 256)).feed(
        dx.encode_v2_frame(1, 0, np.ones((256, 200), np.uint16)))
    assert ev.image.shape == (256, 200)
    assert max_message_bytes(256, 256) < 2 * 256 * 256 * 4


# ----------------------------------------------------------------------------- the daemon


def test_sequence_rows_are_analysed_and_recorded_without_a_crash(tmp_path, sim, daemons):
    """Backwards, restarted and duplicate indices, 6 pairs of restarts, interleaved series, an
    engine exception: no worker restarts, every frame recorded, each case counted."""
    # (burnt-in annotation masking off: it would take the failure mark, a dark 2x2 corner,
    # for an annotation and paint it over before the engine sees it)
    d = Daemon(tmp_path, sim.endpoint, **{"engine.factory": FLAKY,
                                         "engine.mask_annotations": False})  # fmt: skip
    daemons.append(d)
    d.start()
    sent = 0
    # an index going backwards (0..9, then 5..14): a new segment, analysed
    sent += send_series(sim, "back", [*range(10), *range(5, 15)])
    # the same series id restarting at 0, announced and not
    sent += send_series(sim, "again", range(8), end=False)
    sent += send_series(sim, "again", range(8), end=False)
    sent += send_series(sim, "again", range(8), start=False)
    # duplicate indices 0,1,1,2,2,2,3,3,3,3,...: 30 frames, 8 distinct indices
    dup = [i for i in range(8) for _ in range(i + 1)][:30]
    sent += send_series(sim, "dup", dup)
    # 6 pairs of backwards indices (the row that exhausted the restart budget)
    sent += send_series(sim, "pairs", [0, 1] * 6, gap_s=0.05)
    # two series interleaving their frames (no series-start): "il-a" keeps the stream
    for i in range(12):
        for s in ("il-a", "il-b"):
            send_frame(sim, s, i, image(i))
            sent += 1
    # an engine exception on two frames: those two frames lost, counted; the engine goes on
    assert sim.send(protocol.encode_series_start("flaky"))
    for i in range(10):
        send_frame(sim, "flaky", i, mark_for_failure(image(i)) if i in (3, 7) else image(i))
        sent += 1
    assert sim.send(protocol.encode_series_end("flaky", frames=10))
    s = d.finish(sent)
    c = check_counters(s, sent)
    check_files(d, c)
    assert c["segments_restarted"] == 1 + 1 + 5  # back; again (the unannounced one); pairs
    assert c["skipped_duplicate"] == 30 - 8
    assert c["rejected_interleaved"] == 11  # il-b's frames after the first
    assert c["analysis_errors"] == 2 and c["skipped_lost"] == 2
    assert c["received"] == sent - 11 and c["recorded"] == c["received"]
    assert c["analysed"] == c["received"] - 22 - 2
    frames = read_csv(d.run_dir / "frames.csv")
    dups = [r for r in frames if r["series"] == "dup"]
    assert [int(r["index"]) for r in dups] == dup  # every duplicate recorded, in order
    assert sum(r["fate"] == "analysed" for r in dups) == 8
    assert {r["series"] for r in frames} == {"back", "again", "dup", "pairs", "il-a", "il-b",
                                             "flaky"}  # fmt: skip
    assert sum(r["series"] == "il-b" for r in frames) == 1


def test_hostile_values_are_rejected_and_counted(tmp_path, sim, daemons):
    """+-1.7e308 timestamps, index 2**63, pixel size 1e308, a 1 x 1 first frame, NaN pixels,
    a frame message larger than the slot pool: rejected and counted, the rest analysed."""
    d = Daemon(tmp_path, sim.endpoint)
    daemons.append(d)
    d.start()
    sent = 0
    assert sim.send(protocol.encode_series_start("odd", pixel_size_nm=1e308))  # ignored
    send_frame(sim, "odd", 0, np.zeros((1, 1), np.uint8))  # the first frame of the run
    sent += 1
    bad = [({"timestamp": 1.7e308}, 1), ({"timestamp": -1.7e308}, 2), ({}, 2**63),
           ({"pixel_size_nm": 1e308}, 3), ({"timestamp": float(2**40)}, 4)]  # fmt: skip
    good = 0
    for i in range(20):
        send_frame(sim, "odd", 10 + i, image(i), pixel_size_nm=2.0)
        sent += 1
        good += 1
        if i < len(bad):
            kw, index = bad[i]
            send_frame(sim, "odd", index, image(i), **kw)
            sent += 1
    nan = np.full((SIDE, SIDE), 100.0, np.float32)
    nan[3, 3] = np.nan
    send_frame(sim, "odd", 40, nan)
    sent += 1
    assert sim.send(protocol.encode_series_end("odd"))
    # a protocol-valid frame over the pool's size: ZeroMQ discards it unread (ZMQ_MAXMSGSIZE)
    # and the connection is opened again; then a series arrives as if nothing happened
    big = np.zeros((POOL * 8, POOL * 8), np.uint8)  # 4 MiB > max_message_bytes(256, 256)
    send_oversize(sim.send, protocol.encode_frame("big", 0, big), [b"probe"],
                  lambda: d.stat("malformed") >= 1)  # fmt: skip
    assert d.stat("source_disconnects") >= 1
    sent += send_series(sim, "after", range(10))
    s = d.finish(sent + 1)  # the big frame never reached the daemon: counted as a disconnect
    c = check_counters(s, sent + s["counters"]["malformed"])  # the probes that arrived
    check_files(d, c)
    assert (c["rejected_undersize"], c["rejected_timestamp"], c["rejected_index"],
            c["rejected_pixel_size"], c["rejected_pixels"]) == (1, 3, 1, 1, 1)  # fmt: skip
    assert c["ignored_pixel_size"] == 1 and c["source_disconnects"] >= 1
    assert c["recorded"] == good + 10 and c["analysed"] == good + 10
    assert sum(c[k] for k in REJECT_COUNTERS) == 7
    assert any("rejected" in w for w in s["warnings"])
    frames = read_csv(d.run_dir / "frames.csv")
    assert max(int(r["index"]) for r in frames) < 2**53
    cap = cv2.VideoCapture(str(d.run_dir / "annotated.mp4"))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (SIDE, SIDE)
    cap.release()
    series = [e for e in s["series"] if e["series"] == "odd" and e["event"] == "start"]
    assert series[0]["pixel_size_nm"] is None


def test_sender_names_stay_inside_the_run_folder(tmp_path, sim, daemons, capfd):
    """Series ids that are paths, hold NUL bytes, newlines or formulas, with raw frames on:
    nothing is written outside the run folder, CSV cells are escaped, log lines not forged."""
    outside = tmp_path / "outside"
    forged = "2031-01-01 00:00:00,000 receiver[1] FORGED"
    names = ["../../x", str(outside / "abs"), "a\x00b", "=HYPERLINK(\"http://evil\",\"x\")",
             f"nl\n{forged}", "y" * 256, "run-7"]  # fmt: skip
    d = Daemon(tmp_path, sim.endpoint, **{"output.raw": "npy"})
    daemons.append(d)
    d.start()
    sent = 0
    for name in names:
        sent += send_series(sim, name, range(3), end=not name.startswith("nl"))  # aborted
    s = d.finish(sent)
    c = check_counters(s, sent)
    check_files(d, c)
    assert c["recorded"] == c["analysed"] == sent
    # nothing outside the run folder
    assert not outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    raw = sorted((d.run_dir / "raw").iterdir())
    assert len(raw) == sent and all(p.suffix == ".npy" for p in raw)
    assert len({p.name for p in raw}) == sent  # no two series share a file
    assert (d.run_dir / "raw" / "run-7_000002.npy").exists()  # a plain id keeps its name
    # the formula is text in every CSV table
    for table in ("frames.csv", "series.csv"):
        ids = {r["series"] for r in read_csv(d.run_dir / table)}
        assert "'" + names[3] in ids and names[3] not in ids
    # the newline cannot start a log line of its own (workers log to stderr)
    err = capfd.readouterr().err
    assert "FORGED" in err  # the aborted series was logged, escaped
    assert not any(line.startswith(forged) for line in err.splitlines())


# ----------------------------------------------------------------------------- start-up


def _serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "loopline", "serve", "--set", f"engine.factory={FAST}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _busy_port():
    s = pysocket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_startup_errors_are_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = _serve("--out", str(blocker / "run"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the run folder" in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout

    busy, port = _busy_port()
    try:
        r = _serve("--out", str(tmp_path / "run2"), "--prometheus-port", str(port),
                   "--endpoint", "tcp://127.0.0.1:1", "--publish", "tcp://127.0.0.1:0")
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "metrics.prometheus_port" in lines[0], r.stderr
        assert "Address already in use" in lines[0]
        # the workers start (their INFO lines are fine), the output worker cannot bind
        r = _serve("--out", str(tmp_path / "run"), "--publish", f"tcp://127.0.0.1:{port}",
                   "--endpoint", "tcp://127.0.0.1:1")  # fmt: skip
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        lines = r.stderr.strip().splitlines()
        error = [ln for ln in lines if "cannot bind publish.endpoint" in ln]
        assert error == [lines[-1]], r.stderr  # said once, last, in one line
        assert lines[-1].startswith("loopline serve: error: output worker could not start")
        assert f"tcp://127.0.0.1:{port}: Address already in use" in lines[-1]
    finally:
        busy.close()


# ----------------------------------------------------------------------------- web viewer


def test_web_viewer_answers_only_to_local_host_names():
    from loopline.viewers.config import load_view_config
    from loopline.viewers.web import ViewerServer

    cfg = load_view_config(overrides={"port": 0, "endpoint": "tcp://127.0.0.1:1",
                                      "allowed_hosts": "lab-pc"})  # fmt: skip
    with ViewerServer(cfg) as srv:
        port = srv._http.server_address[1]

        def get(host: str | None) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.putrequest("GET", "/", skip_host=True)
            if host is not None:
                conn.putheader("Host", host)
            conn.endheaders()
            status = conn.getresponse().status
            conn.close()
            return status

        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "lab-pc"):
            assert get(host) == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", None):
            assert get(host) == 403, host


def test_zmq_source_connects_again_after_an_oversize_message(ctx):
    from loopline.daemon.ingest import LooplineSource

    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    try:
        with LooplineSource(f"tcp://127.0.0.1:{port}", context=ctx,
                            max_message_bytes=10_000) as src:  # fmt: skip
            probes = send_oversize(
                push.send_multipart, protocol.encode_frame("s", 0, np.zeros((200, 200), np.uint8)),
                protocol.encode_frame("s", 1, np.zeros((32, 32), np.uint8)),
                lambda: src.counters["received"] >= 1,
            )
            c = src.counters
            assert c["disconnects"] == 1 and c["malformed"] == 0 and 1 <= c["received"] <= probes
            evs = [src.get(timeout=1.0) for _ in range(2)]  # the synthesised start, a probe
            assert isinstance(evs[1], Frame) and evs[1].index == 1
    finally:
        push.close()


# ----------------------------------------------------------------------------- kills (item 6)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _group_members(pgid: int) -> list[int]:
    """Running (not zombie) processes of a process group."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        f = text[text.rfind(")") + 2:].split()
        if int(f[2]) == pgid and f[0] not in ("Z", "X"):
            out.append(int(d.name))
    return out


class ServeProcess:
    """``loopline serve`` in a session of its own (so that the test can kill all of it)."""

    def __init__(self, tmp: Path, endpoint: str, run: Path, *sets: str):
        self.log = tmp / f"serve-{run.name}.log"
        cmd = [sys.executable, "-m", "loopline", "serve", "--endpoint", endpoint, "--out",
               str(run), "--publish", "tcp://127.0.0.1:0", "--set", f"engine.factory={FAST}",
               "--set", "output.flush_rows=4", "--set", "calibration.nm_per_px=2.0",
               *(x for s in sets for x in ("--set", s))]  # fmt: skip
        self.run = run
        self.f = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.f, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> dict:
        t_end = time.monotonic() + timeout
        while "workers ready" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < t_end, "loopline serve did not become ready"
            time.sleep(0.2)
        return self.state()

    def state(self) -> dict:
        from loopline.daemon.hygiene import STATE_FILE

        return json.loads((self.run / STATE_FILE).read_text())

    def close(self) -> None:
        if self.proc.poll() is None or _group_members(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        self.f.close()


def _frames_recorded(run: Path) -> int:
    p = run / "frames.csv"
    return len(read_csv(p)) if p.exists() else 0


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@needs_proc
def test_sigkill_of_the_supervisor_leaves_no_worker_behind(tmp_path, sim):
    """The workers follow their killed supervisor (parent-death signal, watchdog): none keeps
    running (or recording); the output worker still closes the run folder on its way out."""
    from loopline._procs import process_alive
    from loopline.daemon.hygiene import clean_stale

    d = ServeProcess(tmp_path, sim.endpoint, tmp_path / "run")
    try:
        state = d.wait_ready()
        workers = state["workers"]
        assert len(workers) == 5
        send_series(sim, "s", range(12), end=False)
        t_end = time.monotonic() + 30
        while _frames_recorded(d.run) < 8 and time.monotonic() < t_end:
            time.sleep(0.1)
        os.kill(d.proc.pid, signal.SIGKILL)  # the supervisor alone
        d.proc.wait(10)
        t_end = time.monotonic() + 30
        while any(process_alive(w["pid"], w["start"]) for w in workers.values()):
            assert time.monotonic() < t_end, f"orphaned workers still run: {workers}"
            time.sleep(0.2)
        # nor anything else the daemon started (multiprocessing's resource tracker leaves
        # once its last client has: give it the same time, and name what stays)
        while _group_members(d.proc.pid) and time.monotonic() < t_end:
            time.sleep(0.2)
        left = {p: _cmdline(p) for p in _group_members(d.proc.pid)}
        assert left == {}, f"still running after the supervisor died: {left}"
        log = d.log.read_text()
        assert "the supervisor is gone; stopping" in log
        # the orphaned output worker closed the run folder: summary, finalised video
        s = json.loads((d.run / "summary.json").read_text())
        assert s["counters"]["recorded"] == _frames_recorded(d.run) >= 8
        assert not list(d.run.glob("*.open"))
        # the segment went with its last user; the ipc folder is the next start's (or
        # recover's) to remove
        assert not (Path("/dev/shm") / state["shm"]).exists()
        assert clean_stale(d.run)["ipc"] == state["ipc"] and not Path(state["ipc"]).exists()
    finally:
        d.close()


@needs_proc
def test_a_killed_daemons_shared_memory_and_ipc_folder_go_with_the_next_start(tmp_path, sim,
                                                                             daemons):  # fmt: skip
    """SIGKILL of the whole daemon leaves its /dev/shm segment, ipc folder, an unfinalised
    video and Parquet parts; the next daemon for the same folder removes the first two and
    recovers the others (its output worker), and records on as part 1."""
    import pyarrow.parquet as pq

    from loopline.daemon.hygiene import STATE_FILE

    run = tmp_path / "run"
    first = ServeProcess(tmp_path, sim.endpoint, run)
    try:
        state = first.wait_ready()
        send_series(sim, "s", range(20), end=False)
        t_end = time.monotonic() + 30
        while (_frames_recorded(run) < 12 or not list(run.glob("series.parquet.parts/p*"))
               ) and time.monotonic() < t_end:  # fmt: skip
            time.sleep(0.1)
        os.killpg(first.proc.pid, signal.SIGKILL)  # everything: supervisor, workers, tracker
        first.proc.wait(10)
    finally:
        first.close()
    shm = Path("/dev/shm") / state["shm"]
    assert shm.exists() and Path(state["ipc"]).is_dir() and (run / STATE_FILE).exists()
    assert (run / "series.parquet.parts").is_dir() and not (run / "series.parquet").exists()
    recorded_before = _frames_recorded(run)

    d = Daemon(tmp_path, sim.endpoint)  # the same run folder
    daemons.append(d)
    d.start()
    assert not shm.exists() and not Path(state["ipc"]).exists()
    assert d.sup.cleaned["shm"] == state["shm"] and d.sup.cleaned["ipc"] == state["ipc"]
    sent = send_series(sim, "after", range(10))
    s = d.finish(sent)
    assert s["part"] == 1 and s["counters"]["recorded"] == 10
    # the killed part's video is H.264 in fragmented MP4 (the default codec): it plays as it
    # is, nothing to recover (test_daemon.py recovers a killed mp4v video)
    assert "annotated.mp4" not in s["recovered_videos"]
    assert mp4_frames(run / "annotated.mp4") >= recorded_before - 2
    n = s["recovered_tables"]["series.parquet"]
    assert n == pq.read_table(run / "series.parquet").num_rows > 0
    assert pq.read_table(run / "series.1.parquet").num_rows == s["counters"]["analysed"]
    assert len(read_csv(run / "frames.csv")) == recorded_before + 10
    assert not (run / STATE_FILE).exists() and not list(run.glob("*.parts"))


def test_recover_frees_a_killed_daemons_memory_and_merges_its_tables(tmp_path, capsys):
    """``loopline recover`` on a folder whose daemon was killed: the segment and ipc folder its
    state file names are removed, the Parquet parts merged; a live daemon's folder is left
    alone, and a second daemon is refused."""
    from multiprocessing import shared_memory

    import pyarrow.parquet as pq

    from loopline._procs import process_start
    from loopline.cli import main
    from loopline.daemon.hygiene import STATE_FILE, shm_name
    from loopline.io.runfolder import RunTables

    run = tmp_path / "run"
    t = RunTables(run, parquet="series.parquet", flush_rows=2, csv=False)
    for i in range(5):
        t.append(series={"series": "s", "frame": i, "time_s": float(i)})
    # ... killed: a segment and an ipc folder of a dead process, named by the state file
    dead = subprocess.Popen(["true"])
    dead.wait()
    seg = shared_memory.SharedMemory(create=True, size=1 << 20, name=shm_name())
    seg.close()
    ipc = Path(tempfile.mkdtemp(prefix="loopline-"))
    (ipc / "ctl").touch()
    state = {"pid": dead.pid, "start": None, "shm": seg.name, "ipc": str(ipc), "workers": {}}
    (run / STATE_FILE).write_text(json.dumps(state))
    try:
        assert main(["recover", str(run)]) == 0
        out = capsys.readouterr().out
        assert f"removed shared memory /dev/shm/{seg.name} (1 MiB)" in out
        assert "series.parquet: recovered, 4 rows" in out  # the fifth was never flushed
        assert not ipc.exists() and not (run / STATE_FILE).exists()
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name=seg.name)
        assert pq.read_table(run / "series.parquet").num_rows == 4
    finally:
        try:
            shared_memory.SharedMemory(name=seg.name).unlink()
        except FileNotFoundError:
            pass
    # a folder whose daemon runs: recover leaves its resources alone; serve is refused
    live = subprocess.Popen(["sleep", "30"])
    try:
        state.update(pid=live.pid, start=process_start(live.pid))
        (run / STATE_FILE).write_text(json.dumps(state))
        assert main(["recover", str(run)]) == 0
        assert "is written by a running loopline serve" in capsys.readouterr().out
        cfg = load_config(overrides={"output.dir": str(run), "engine.factory": FAST})
        sup = Supervisor(cfg)
        assert sup.run() == 1
        assert "is written by a running loopline serve" in str(sup.error) and sup.error.startup
        assert (run / STATE_FILE).exists()
    finally:
        live.kill()
        live.wait()


def test_sigkill_of_the_receiver_keeps_the_counters_adding_up(tmp_path, sim, daemons):
    """A receiver killed mid-stream: restarted; the frame it held is settled (recorded, or
    counted in receiver_errors), received = recorded + not recorded, = analysed + skipped;
    the series' time axis goes on from its first frame (it does not restart at 0)."""
    d = Daemon(tmp_path, sim.endpoint, **{"output.result_timeout_s": 3.0})
    daemons.append(d)
    d.start()
    t0 = time.time()
    n = 200
    killed = threading.Event()

    def killer():
        d.wait_for(lambda: d.stat("received") >= 40)
        os.kill(d.sup.pids()["receiver"], signal.SIGKILL)
        killed.set()

    k = threading.Thread(target=killer, daemon=True)
    k.start()
    assert sim.send(protocol.encode_series_start("kill", pixel_size_nm=2.0))
    sim.stop.set()  # from now on send() never waits: no receiver for a while, by design
    for i in range(n):
        sim.send(protocol.encode_frame("kill", i, image(i), timestamp=t0 + 0.04 * i))
        time.sleep(0.02)
        assert d.thread.is_alive(), d.sup.error
    k.join(60)
    assert killed.is_set()
    d.wait_for(lambda: d.stat("restarts") == 1 and d.stat("received") > 60)
    last = -1
    while d.stat("received") != last:  # until nothing more arrives
        last = d.stat("received")
        time.sleep(1.0)
    d.sup.request_stop("test: all sent")
    d.thread.join(90)
    assert d.code == 0, d.sup.error
    s = json.loads((d.run_dir / "summary.json").read_text())
    c = check_counters(s, None, restarts=1)
    check_files(d, c)
    rows = read_csv(d.run_dir / "series.csv")
    assert len(rows) == c["analysed"] > 60
    for r in rows:  # one clock for the whole series, across the receiver's restart
        assert float(r["time_s"]) == pytest.approx(0.04 * int(r["frame"]), abs=1e-6)


def test_a_restarted_receiver_settles_the_frame_it_was_killed_on(monkeypatch):
    """The frame in the killed receiver's hands: counted received once; recorded if the
    recorder got its header, else counted in receiver_errors and its slot freed."""
    from types import SimpleNamespace

    from loopline.daemon.shm import SlotPool
    from loopline.daemon.stages import receiver

    monkeypatch.setattr(receiver, "_RECONCILE_WAIT_S", 0.05)
    pool = SlotPool.create(4, 32, 32, 1)
    try:
        st = pool.stats
        rx = SimpleNamespace(stats=st, pool=pool)

        def killed_mid_frame(*, seq: int, header_arrived: bool) -> None:
            slot, gen = pool.acquire()
            st["receiver_open_received"] = st["received"]
            st["receiver_open_slot"], st["receiver_open_gen"] = slot, gen
            st["receiver_open_seq"] = seq
            st["receiver_open"] = 1
            if header_arrived:
                st["output_next_seq"] = seq + 1
            receiver.Receiver._reconcile(rx)

        killed_mid_frame(seq=0, header_arrived=True)
        assert (st["received"], st["receiver_errors"], st["skipped"]) == (1, 0, 0)
        assert pool.in_use() == 1  # held by the recorder (and the analysis): theirs to free
        killed_mid_frame(seq=1, header_arrived=False)
        assert (st["received"], st["receiver_errors"], st["skipped"]) == (2, 1, 1)
        assert st["receiver_lost_seq"] == 2 and pool.in_use() == 1  # its slot is free again
        assert not st["receiver_open"]
        # killed after counting it: nothing more to do
        st["receiver_open"], st["receiver_open_received"] = 1, st["received"] - 1
        receiver.Receiver._reconcile(rx)
        assert (st["received"], st["receiver_errors"]) == (2, 1) and not st["receiver_open"]
    finally:
        pool.close()
        pool.unlink()
