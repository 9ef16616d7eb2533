"""Frames between processes: a fixed pool of shared-memory slots with explicit release.

Pixels never travel on a queue. The receiver copies each frame into a free slot of one
:class:`SlotPool` (a single ``multiprocessing.shared_memory`` block created by the supervisor)
and sends only a small JSON header ``{"slot": i, "gen": g, ...}`` downstream. Each slot has
two *holders*: the recorder (``RECORD``) and the analysis chain (``ANALYSIS``); the slot is
free again once both have called :meth:`SlotPool.release`. The engine writes the frame's
instance masks (bit-packed) into the same slot, so they reach the measure worker without a
copy on a queue either.

Crash safety without locks: every control word has one writer at a time (the receiver sets a
slot's holders when it acquires it; each holder clears only its own flag), so no lock can be
left held by a killed process. Each acquisition bumps the slot's *generation*; a header
carries the generation it was sent with, and reads, writes and releases with a stale
generation are refused, so a slot reclaimed after a crash (:meth:`SlotPool.reclaim`) and
reused can never be confused with the frame it held before.

The same block holds :class:`Stats`, float64 counters and gauges with one writer each, so
counts survive a worker's restart and every process can read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

__all__ = ["ANALYSIS", "RECORD", "STAT_NAMES", "PoolSpec", "SlotPool", "Stats"]

RECORD = 0
ANALYSIS = 1
_HOLDERS = 2

# control columns per slot (int64)
_GEN, _ACQ_NS, _H0, _H1 = 0, 1, 2, 3
_CTL_COLS = 4

STAGES = ("receiver", "batcher", "engine", "measure", "output")

#: Every statistic the workers share. Counters only grow; gauges are overwritten.
STAT_NAMES: tuple[str, ...] = (
    # frame counters (summary.json "counters")
    "received", "malformed", "analysed", "skipped", "skipped_backpressure", "skipped_lost",
    "recorded", "dropped_no_slot", "dropped_source", "rejected_oversize", "published",
    "published_jpeg",
    "slots_reclaimed", "series_started", "series_ended", "series_aborted", "restarts",
    "batches", "late_results", "analysis_seq", "analysis_done", "late_after_successor",
    # frames that made no sense (loopline.daemon.validate) and errors that cost one frame
    "rejected_undersize", "rejected_timestamp", "rejected_pixel_size", "rejected_index",
    "rejected_pixels", "rejected_interleaved", "skipped_duplicate", "segments_restarted",
    "ignored_pixel_size", "analysis_errors", "record_errors", "output_errors",
    "receiver_errors", "source_disconnects", "segment_seq", "source_handshake_failures",
    # instances beyond a frame's mask budget (pool.max_instances), measured from their boxes
    "instances_without_mask",
    # model swaps (loopline model use) done and refused; control requests that made no sense
    "model_swaps", "models_refused", "control_errors",
    # gauges
    "queue_batcher", "queue_engine", "queue_output", "slots_in_use",
    "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "latency_count",
    "ingest_latency_p50_ms", "ingest_latency_p99_ms",
    "engine_ms_per_frame", "measure_ms_per_frame", "record_ms_per_frame",
    "source_fps", "stopping", "series_done",
    # the frame in the receiver's hands, and what the recorder has seen, so that a restarted
    # receiver settles the one its predecessor was killed on (workers.Receiver._reconcile)
    "receiver_open", "receiver_open_received", "receiver_open_seq", "receiver_open_slot",
    "receiver_open_gen", "receiver_next_seq", "receiver_lost_seq", "output_next_seq",
    *(f"frames_{s}" for s in STAGES),
    *(f"busy_s_{s}" for s in STAGES),
    *(f"heartbeat_{s}" for s in STAGES),
)  # fmt: skip
_STAT_INDEX = {n: i for i, n in enumerate(STAT_NAMES)}

_DTYPES = ("uint8", "uint16", "float32", "int16", "uint32", "int32")


@dataclass(frozen=True)
class PoolSpec:
    """What a process needs to attach to a pool (picklable, passed to each worker)."""

    name: str
    slots: int
    max_height: int
    max_width: int
    max_instances: int

    @property
    def image_bytes(self) -> int:
        return self.max_height * self.max_width * 4  # room for 32-bit pixels, the widest accepted

    @property
    def mask_bytes(self) -> int:
        return -(-self.max_height * self.max_width // 8)

    @property
    def slot_bytes(self) -> int:
        return self.image_bytes + self.max_instances * self.mask_bytes

    @property
    def ctl_bytes(self) -> int:
        return self.slots * _CTL_COLS * 8

    @property
    def stats_bytes(self) -> int:
        return len(STAT_NAMES) * 8

    @property
    def total_bytes(self) -> int:
        return self.ctl_bytes + self.stats_bytes + self.slots * self.slot_bytes


class Stats:
    """Named float64 cells in shared memory: ``stats.add("received")``, ``stats["x"] = v``."""

    def __init__(self, arr: np.ndarray) -> None:
        self._a = arr

    def add(self, name: str, n: float = 1.0) -> None:
        self._a[_STAT_INDEX[name]] += n

    def __getitem__(self, name: str) -> float:
        return float(self._a[_STAT_INDEX[name]])

    def __setitem__(self, name: str, value: float) -> None:
        self._a[_STAT_INDEX[name]] = value

    def snapshot(self) -> dict[str, float]:
        return dict(zip(STAT_NAMES, self._a.tolist(), strict=True))


class SlotPool:
    """A fixed pool of frame slots in one shared-memory block (see the module docstring).

    Create it once in the supervisor with :meth:`create`, attach in workers with
    :meth:`attach`, and ``close()`` in every process (``unlink()`` once, in the creator).
    """

    def __init__(self, spec: PoolSpec, shm: shared_memory.SharedMemory, *, owner: bool) -> None:
        self.spec = spec
        self._shm = shm
        self._owner = owner
        buf = shm.buf
        n = spec.slots
        self._ctl = np.ndarray((n, _CTL_COLS), np.int64, buf, 0)
        self.stats = Stats(np.ndarray((len(STAT_NAMES),), np.float64, buf, spec.ctl_bytes))
        self._base = spec.ctl_bytes + spec.stats_bytes
        self._cursor = 0

    # -- life cycle
    @classmethod
    def create(
        cls, slots: int, max_height: int, max_width: int, max_instances: int, *, name=None
    ) -> SlotPool:
        spec0 = PoolSpec("", slots, max_height, max_width, max_instances)
        shm = shared_memory.SharedMemory(create=True, size=spec0.total_bytes, name=name)
        spec = PoolSpec(shm.name, slots, max_height, max_width, max_instances)
        pool = cls(spec, shm, owner=True)
        pool._ctl[:] = 0
        pool.stats._a[:] = 0
        return pool

    @classmethod
    def attach(cls, spec: PoolSpec) -> SlotPool:
        # Spawned workers share the supervisor's resource tracker, which records the name
        # once; only the creator unlinks (``unlink``), so attaching registers nothing new.
        shm = shared_memory.SharedMemory(name=spec.name)
        return cls(spec, shm, owner=False)

    def close(self) -> None:
        # Views into the buffer must go before the mapping can close.
        self._ctl = None  # type: ignore[assignment]
        self.stats._a = None  # type: ignore[assignment]
        try:
            self._shm.close()
        except BufferError:  # a caller still holds a view; the OS unmaps at exit
            pass

    def unlink(self) -> None:
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass

    # -- slots
    def _slot_offset(self, slot: int) -> int:
        return self._base + slot * self.spec.slot_bytes

    def fits(self, shape: tuple[int, ...], dtype: np.dtype) -> bool:
        s = self.spec
        return (
            len(shape) == 2 and shape[0] <= s.max_height and shape[1] <= s.max_width
            and np.dtype(dtype).name in _DTYPES
        )  # fmt: skip

    def acquire(self) -> tuple[int, int] | None:
        """A free slot ``(slot, gen)`` held by both holders, or None when all are in use.

        Only the receiver calls this (single writer of the holder flags' 0 → 1 transition).
        """
        n = self.spec.slots
        ctl = self._ctl
        for k in range(n):
            i = (self._cursor + k) % n
            if ctl[i, _H0] == 0 and ctl[i, _H1] == 0:
                ctl[i, _GEN] += 1
                ctl[i, _ACQ_NS] = time.monotonic_ns()
                ctl[i, _H0] = 1
                ctl[i, _H1] = 1
                self._cursor = (i + 1) % n
                return i, int(ctl[i, _GEN])
        return None

    def gen(self, slot: int) -> int:
        return int(self._ctl[slot, _GEN])

    def valid(self, slot: int, gen: int) -> bool:
        return 0 <= slot < self.spec.slots and int(self._ctl[slot, _GEN]) == gen

    def release(self, slot: int, gen: int, holder: int) -> bool:
        """Give up ``holder``'s claim on ``slot``; False (and nothing done) if it is stale."""
        if not self.valid(slot, gen):
            return False
        self._ctl[slot, _H0 + holder] = 0
        return True

    def in_use(self) -> int:
        return int(((self._ctl[:, _H0] != 0) | (self._ctl[:, _H1] != 0)).sum())

    def reclaim(self, *, older_than_s: float, holder: int | None = None) -> int:
        """Clear claims held longer than ``older_than_s`` (crashed holders); returns the count."""
        limit = time.monotonic_ns() - int(older_than_s * 1e9)
        cols = [_H0 + holder] if holder is not None else [_H0, _H1]
        n = 0
        for c in cols:
            stale = (self._ctl[:, c] != 0) & (self._ctl[:, _ACQ_NS] < limit)
            n += int(stale.sum())
            self._ctl[stale, c] = 0
        return n

    # -- pixels
    def image_view(self, slot: int, shape: tuple[int, int], dtype: str | np.dtype) -> np.ndarray:
        """Zero-copy (H, W) view of the slot's image area."""
        dt = np.dtype(dtype)
        return np.ndarray(shape, dt, self._shm.buf, self._slot_offset(slot))

    def write_image(self, slot: int, image: np.ndarray) -> None:
        self.image_view(slot, image.shape, image.dtype)[...] = image

    def read_image(
        self, slot: int, gen: int, shape: tuple[int, int], dtype: str | np.dtype
    ) -> np.ndarray | None:
        """A copy of the slot's image, or None if the slot was reused meanwhile (seqlock)."""
        if not self.valid(slot, gen):
            return None
        out = self.image_view(slot, shape, dtype).copy()
        return out if self.valid(slot, gen) else None

    # -- masks
    def write_masks(self, slot: int, gen: int, masks: np.ndarray) -> int:
        """Store up to ``max_instances`` (N, H, W) bool masks bit-packed; returns how many."""
        if not self.valid(slot, gen):
            return 0
        n = min(int(masks.shape[0]), self.spec.max_instances)
        if n == 0:
            return 0
        h, w = masks.shape[1:]
        packed = np.packbits(masks[:n].reshape(n, h * w), axis=1)
        per = packed.shape[1]
        off = self._slot_offset(slot) + self.spec.image_bytes
        dst = np.ndarray((n, self.spec.mask_bytes), np.uint8, self._shm.buf, off)
        dst[:, :per] = packed
        return n

    def read_masks(
        self, slot: int, gen: int, n: int, shape: tuple[int, int]
    ) -> np.ndarray | None:
        """The ``n`` masks written by :meth:`write_masks`, (n, H, W) bool; None if stale."""
        if not self.valid(slot, gen):
            return None
        h, w = shape
        if n == 0:
            return np.zeros((0, h, w), bool)
        off = self._slot_offset(slot) + self.spec.image_bytes
        per = -(-h * w // 8)
        src = np.ndarray((n, self.spec.mask_bytes), np.uint8, self._shm.buf, off)
        masks = np.unpackbits(src[:, :per], axis=1, count=h * w).reshape(n, h, w).astype(bool)
        return masks if self.valid(slot, gen) else None
