"""The measure worker's reordering of results from several engine workers.

Engines finish batches in any order: with two workers, frame 1 can come back before frame 0.
The tracker takes a series' frames in increasing index only, so the measure worker puts the
results back in the batcher's order (:class:`~loopline.daemon.stages.measure.Reorder`), within a
bounded window; a frame that comes back after its successors were tracked is measured without
tracking, counted (``late_after_successor``) and recorded (fate ``analysed_untracked``).

The unit tests drive :class:`Reorder` with explicit times. The chain tests run the real
stages in this process, stepped by hand with explicit times: the receiver makes the frame
headers, two engine workers (the threshold stand-in) the detections, the measure worker
reorders and measures, the output worker writes the run folder; real ZeroMQ sockets
(``ipc://`` in a private folder, as the daemon uses) and a real slot pool.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from loopline.daemon.config import load_config
from loopline.daemon.ingest.base import Frame, SeriesEnd, SeriesStart
from loopline.daemon.shm import SlotPool
from loopline.daemon.stages import EngineWorker, MeasureWorker, OutputWorker, Receiver
from loopline.daemon.stages.base import UNTRACKED
from loopline.daemon.stages.measure import Reorder
from loopline.daemon.validate import NOT_RECORDED
from loopline.daemon.wire import Endpoints, recv_json, socket

FAST = "loopline.daemon.standins:ThresholdEngine"
SIDE = 64

# ----------------------------------------------------------------------------- Reorder


def test_reorder_holds_a_result_until_its_predecessors_come():
    r = Reorder(window=8, wait_s=1.0)
    for a in (2, 1):
        assert r.put(a, f"f{a}")
    assert r.ready(now=0.0) == [] and len(r) == 2  # frame 0 first, however long it takes
    assert r.ready(now=0.9) == []
    assert r.put(0, "f0")
    assert r.ready(now=0.95) == [(0, "f0"), (1, "f1"), (2, "f2")]
    assert r.next == 3 and len(r) == 0


def test_reorder_gives_up_a_gap_after_wait_s_and_refuses_the_late_frame():
    r = Reorder(window=8, wait_s=1.0)
    r.put(1, "f1")
    r.put(2, "f2")
    assert r.ready(now=10.0) == []  # the wait starts when the gap is first seen
    assert r.ready(now=10.99) == []
    assert r.ready(now=11.0) == [(0, None), (1, "f1"), (2, "f2")]
    assert not r.put(0, "f0")  # after its successors: late, not held
    assert len(r) == 0 and r.ready(now=11.0) == []


def test_reorder_window_in_frames_bounds_what_waits():
    r = Reorder(window=3, wait_s=60.0)
    for a in (1, 2):
        r.put(a, a)
    assert r.ready(now=0.0) == []
    r.put(4, 4)  # three wait behind the gap at 0: it is given up at once
    assert r.ready(now=0.0) == [(0, None), (1, 1), (2, 2)]  # and 3 is a new gap
    r.put(5, 5)
    r.put(6, 6)
    assert r.ready(now=0.1) == [(3, None), (4, 4), (5, 5), (6, 6)]


def test_reorder_starts_where_told_and_flushes_in_order():
    r = Reorder(start=5, window=8, wait_s=1.0)
    assert not r.put(4, "old")  # handed on by a predecessor (a restarted measure worker)
    for a in (9, 6, 5):
        r.put(a, a)
    assert r.ready(now=0.0) == [(5, 5), (6, 6)]
    assert r.flush() == [(7, None), (8, None), (9, 9)]
    assert r.next == 10


@pytest.mark.parametrize(("window", "wait_s"), [(0, 1.0), (4, -1.0), (4, float("nan"))])
def test_reorder_rejects_a_window_that_is_not_one(window, wait_s):
    with pytest.raises(ValueError, match="must be"):
        Reorder(window=window, wait_s=wait_s)


# ----------------------------------------------------------------------------- the chain


def image(i: int) -> np.ndarray:
    """A bright noisy field with one dark line (one instance for the threshold engine)."""
    rng = np.random.default_rng(i)
    img = (rng.random((SIDE, SIDE)) * 40 + 170).astype(np.uint8)
    x = 8 + i % 30
    cv2.line(img, (x, 6), (x + 10, SIDE - 6), 40, 3)
    return img


def _recv(sock: zmq.Socket, n: int, timeout_s: float = 10.0) -> list[dict]:
    out: list[dict] = []
    t_end = time.monotonic() + timeout_s
    while len(out) < n:
        assert sock.poll(max(1, int((t_end - time.monotonic()) * 1e3))), f"got {len(out)}/{n}"
        msg = recv_json(sock)
        if msg is not None:
            out.append(msg)
    return out


class Chain:
    """Receiver, two engine workers, the measure and the output worker in this process.

    The test plays the batcher (it numbers the frames, ``aseq``, and picks the engine of
    each batch) and the clock of the measure worker, so the order in which results come back
    is the test's."""

    def __init__(self, tmp: Path) -> None:
        self.run_dir = tmp / "run"
        self.cfg = load_config(overrides={
            "engine.factory": FAST, "engine.workers": 2, "publish.enabled": False,
            "output.dir": str(self.run_dir), "output.mp4": False, "calibration.nm_per_px": 2.0,
            "source.endpoint": "tcp://127.0.0.1:9",  # connects to nothing: frames come by hand
            "output.result_timeout_s": 20.0, "pool.slots": 32, "pool.max_height": SIDE,
            "pool.max_width": SIDE, "pool.max_instances": 4,
        })  # fmt: skip
        self.pool = SlotPool.create(32, SIDE, SIDE, 4)
        self.stats = self.pool.stats
        self.eps = Endpoints.make()
        self.ctx = zmq.Context()
        self.stages: list = []
        # the supervisor's and the batcher's ends of the channels
        self.ctl_in = socket(self.ctx, zmq.PULL, bind=self.eps.ctl, linger_ms=0)
        self.batch_in = socket(self.ctx, zmq.PULL, bind=self.eps.batch, linger_ms=0)
        self.ctl = socket(self.ctx, zmq.PUSH, connect=self.eps.ctl, linger_ms=0)
        self.output = self._stage(OutputWorker)
        self.measure = self._stage(MeasureWorker)
        self.engines = [self._stage(EngineWorker), self._stage(EngineWorker)]
        self.receiver = self._stage(Receiver)
        self.headers: list[dict] = []
        self.index = 0
        self.now = 0.0  # the measure worker's clock (s)

    def _stage(self, cls):
        s = cls(self.cfg, self.pool, self.eps, self.ctx, self.ctl, 0, str(self.run_dir))
        self.stages.append(s)
        s.setup()
        return s

    def close(self) -> None:
        for s in reversed(self.stages):
            s.close()
        for s in (self.ctl_in, self.batch_in, self.ctl):
            s.close()
        self.ctx.term()
        self.eps.cleanup()
        self.pool.close()
        self.pool.unlink()

    # -- the receiver: a series of frames, as its loop takes them from the source
    def send(self, n: int, series: str = "s") -> None:
        rx, t0 = self.receiver, 1.7e9
        rx._series(SeriesStart(series, t0, (SIDE, SIDE), "uint8", 2.0), "start")
        for _ in range(n):
            i = self.index
            rx._open_frame()
            rx._frame(Frame(series, i, t0 + 0.1 * i, image(i)))
            self.stats.add("received")  # last, as Receiver.loop counts it
            self.stats["receiver_open"] = 0
            self.index += 1
        rx._series(SeriesEnd(series, t0 + 0.1 * n, frames=n), "end")
        # the batcher's numbering, in arrival order
        got = [m for m in _recv(self.batch_in, n + 2) if m["t"] == "frame"]
        for h in got:
            h["aseq"] = int(self.stats["analysis_seq"])
            self.stats.add("analysis_seq")
        self.headers += got

    # -- an engine worker analyses a batch; the measure worker takes what came back
    def engine(self, k: int, aseqs: list[int]) -> None:
        self.engines[k]._run_batch([self.headers[a] for a in aseqs])
        for msg in _recv(self.measure.pull, len(aseqs)):
            self.measure._take(msg, self.now)

    def advance(self, now: float) -> None:
        self.now = now
        self.measure._advance(now)

    # -- the end: eos through the measure worker, then the output worker closes the run
    def finish(self) -> dict:
        self.measure._take({"t": "eos", "seq_total": int(self.stats["analysis_seq"])}, self.now)
        assert self.measure._drained(self.now)
        self.measure._send_analysis(self.measure.analyzer.finish())
        out = self.output
        n = len(self.headers)
        t_end = time.monotonic() + 10
        while int(self.stats["recorded"]) < n and time.monotonic() < t_end:
            while out.pull.poll(20):
                out._on(recv_json(out.pull))
            out._write_ready()
        out._finish()
        return json.loads((self.run_dir / "summary.json").read_text())

    def frames_csv(self) -> list[dict[str, str]]:
        with open(self.run_dir / "frames.csv", newline="") as f:
            return list(csv.DictReader(f))

    def series_csv(self) -> list[dict[str, str]]:
        with open(self.run_dir / "series.csv", newline="") as f:
            return list(csv.DictReader(f))


@pytest.fixture
def chain(tmp_path):
    c = Chain(tmp_path)
    yield c
    c.close()


def check_counters(c: dict, n: int) -> None:
    """Every frame counted once (test_hostile.check_counters, and late_after_successor)."""
    assert c["received"] == n and c["restarts"] == 0, c
    assert c["recorded"] + sum(c[k] for k in NOT_RECORDED) == c["received"], c
    assert c["analysed"] + c["skipped"] == c["received"], c
    assert 0 <= c["late_after_successor"] <= c["analysed"], c


def test_frame_0_back_last_from_two_engines_is_tracked_in_order(chain):
    """The failure seen 1 run in 10 with two engine workers: frame 0's batch comes back after
    frames 1 and 2 (the other engine's). Before the fix the measure worker began with the
    first result it saw (1), so 0 came late and was lost ('frame indices must increase')."""
    chain.send(3)
    chain.engine(1, [1, 2])  # the other engine is quicker
    chain.advance(0.0)
    chain.advance(0.5)  # within the window: 1 and 2 wait for 0
    assert chain.stats["analysis_done"] == 0
    chain.engine(0, [0])
    chain.advance(0.6)
    s = chain.finish()
    c = s["counters"]
    check_counters(c, 3)
    assert c["analysed"] == 3 and c["late_after_successor"] == 0 and c["analysis_errors"] == 0
    assert [r["fate"] for r in chain.frames_csv()] == ["analysed"] * 3
    assert [int(r["frame"]) for r in chain.series_csv()] == [0, 1, 2]
    assert chain.stats["analysis_done"] == 3


def test_frame_back_after_its_successors_were_tracked_is_measured_untracked(chain):
    """Frame 0 comes back after the window gave it up and frames 1..3 were tracked: it is
    measured without tracking, counted, recorded with its fate; the tracker goes on."""
    chain.send(5)
    chain.engine(1, [1, 2, 3])
    chain.advance(0.0)
    chain.advance(chain.measure.gap_s + 0.01)  # the wait is over: 1..3 measured without 0
    assert chain.stats["analysis_done"] == 4  # 0 given up, counted once
    chain.engine(0, [0])  # now 0 comes back
    chain.engine(0, [4])
    chain.advance(chain.now + 0.1)
    s = chain.finish()
    c = s["counters"]
    check_counters(c, 5)
    assert c["analysed"] == 5 and c["skipped"] == 0 and c["analysis_errors"] == 0, c
    assert c["late_after_successor"] == 1, c
    assert chain.stats["analysis_done"] == 5  # counted once, never backwards
    fates = {int(r["index"]): r["fate"] for r in chain.frames_csv()}
    assert fates == {0: UNTRACKED, 1: "analysed", 2: "analysed", 3: "analysed", 4: "analysed"}
    assert sum(f == UNTRACKED for f in fates.values()) == c["late_after_successor"]
    rows = {int(r["frame"]): r for r in chain.series_csv()}
    assert sorted(rows) == [0, 1, 2, 3, 4]  # 0's row: written when it came, after 1..3
    late = rows[0]
    assert int(late["n_dislocations"]) == 1 and float(late["mean_length_px"]) > 0
    assert late["drift_x_px"] == "" and late["drift_y_px"] == ""  # a tracker's: not measured
    # the series' tracker went on from 3 to 4; frame 0 has no rows in its tables
    with open(chain.run_dir / "tracks.csv", newline="") as f:
        tracks = list(csv.DictReader(f))
    assert sorted(int(r["frame"]) for r in tracks) == [1, 2, 3, 4]
    assert all(int(r["track_id"]) >= 0 for r in tracks)
