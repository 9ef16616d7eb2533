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

Larger frames (a detector larger than ``pool.max_height`` x ``pool.max_width``, e.g. an
EIGER2 16M at 4148 x 4362): the receiver adds a *segment* sized from the series start's
shape (:meth:`SlotPool.grow`), a second shared-memory block named ``<pool>_s1`` (``_s2``...)
whose slots continue the numbering; its slot count is cut so that the pool stays within
``pool.max_memory_mb``, and a shape that does not fit 4 slots there is refused in one line
(:class:`PoolTooSmall`). The other processes attach a segment when a header first names one
of its slots, so headers and call sites are unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from multiprocessing import shared_memory

import numpy as np

from ..io.runfolder import ALARM_RULES

logger = logging.getLogger(__name__)

__all__ = ["ANALYSIS", "MIN_GROWN_SLOTS", "RECORD", "STAT_NAMES", "PoolSpec", "PoolTooSmall",
           "SlotPool", "Stats", "largest_frame_px", "segment_name"]  # fmt: skip

#: a segment grown for larger frames has at least this many slots, or it is not made
MIN_GROWN_SLOTS = 4
_MAX_SEGMENTS = 8
_SEG_HDR = 4 * 8  # int64 slots, height, width, instances at the start of a grown segment


class PoolTooSmall(ValueError):
    """A frame shape whose slots do not fit the memory cap (``pool.max_memory_mb``)."""


def segment_name(pool: str, k: int) -> str:
    """The shared-memory name of segment ``k`` (1, 2...) of pool ``pool``."""
    return f"{pool}_s{k}"


def largest_frame_px(cap_bytes: int, primary_bytes: int, max_instances: int) -> int:
    """The largest frame (pixel count) whose :data:`MIN_GROWN_SLOTS` slots fit in what the
    cap leaves beside the primary pool (4-byte pixels and ``max_instances`` bit masks)."""
    per_px = 4 + max_instances / 8
    return max(0, int((cap_bytes - primary_bytes) / MIN_GROWN_SLOTS / per_px))

RECORD = 0
ANALYSIS = 1

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
    # series whose start message was missed (a sender that started first): started from
    # their first frame's header
    "series_resynced",
    # the run folder's disk full or failing: frames and result rows not recorded
    "not_recorded_disk", "results_not_recorded_disk",
    # frames recorded before their analysis came back (output.record_wait_s; fate late)
    "recorded_late",
    # alarms raised, per rule (loopline.analysis.alarms; the output worker counts them)
    *(f"alarms_raised_{r}" for r in ALARM_RULES),
    # gauges
    *(f"alarm_active_{r}" for r in ALARM_RULES),
    "queue_batcher", "queue_engine", "queue_output", "slots_in_use",
    "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "latency_count",
    "ingest_latency_p50_ms", "ingest_latency_p99_ms",
    "engine_ms_per_frame", "measure_ms_per_frame", "record_ms_per_frame",
    "source_fps", "stopping", "series_done",
    # the frame in the receiver's hands, and what the recorder has seen, so that a restarted
    # receiver settles the one its predecessor was killed on (stages.receiver.Receiver._reconcile)
    "receiver_open", "receiver_open_received", "receiver_open_seq", "receiver_open_slot",
    "receiver_open_gen", "receiver_next_seq", "receiver_lost_seq", "output_next_seq",
    *(f"frames_{s}" for s in STAGES),
    *(f"busy_s_{s}" for s in STAGES),
    # CPU seconds of each stage's processes (all their threads: the engine runtime's too)
    *(f"cpu_s_{s}" for s in STAGES),
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
        # grown segments: (first global slot, spec, shm, ctl, base offset, cursor)
        self._segs: list[list] = []

    # -- segments (frames larger than the primary pool's)
    @property
    def total_slots(self) -> int:
        return self.spec.slots + sum(g[1].slots for g in self._segs)

    @property
    def total_bytes(self) -> int:
        return self.spec.total_bytes + sum(g[2].size for g in self._segs)

    def _add(self, shm: shared_memory.SharedMemory) -> list:
        hdr = np.ndarray((4,), np.int64, shm.buf, 0)
        slots, h, w, inst = (int(v) for v in hdr)
        spec = PoolSpec(shm.name, slots, h, w, inst)
        ctl = np.ndarray((slots, _CTL_COLS), np.int64, shm.buf, _SEG_HDR)
        seg = [self.total_slots, spec, shm, ctl, _SEG_HDR + spec.ctl_bytes, 0]
        self._segs.append(seg)
        return seg

    def _discover(self) -> None:
        """Attach the segments another process grew since we last looked."""
        while len(self._segs) < _MAX_SEGMENTS:
            try:
                shm = shared_memory.SharedMemory(name=segment_name(self.spec.name,
                                                                   len(self._segs) + 1))
            except FileNotFoundError:
                return
            self._add(shm)

    def _where(self, slot: int):
        """(ctl, base offset, spec, local slot, shm) of a global slot number."""
        if 0 <= slot < self.spec.slots:
            return self._ctl, self._base, self.spec, slot, self._shm
        if slot >= self.total_slots:
            self._discover()
        for first, spec, shm, ctl, base, _ in self._segs:
            if first <= slot < first + spec.slots:
                return ctl, base, spec, slot - first, shm
        raise IndexError(f"slot {slot}: expected 0 to {self.total_slots - 1}")

    def grow(self, shape: tuple[int, int], *, slots: int, cap_bytes: int) -> bool:
        """Room for frames of ``shape`` (H, W): a segment sized from it, with up to ``slots``
        slots within ``cap_bytes`` for the whole pool. False if one fits already; raises
        :class:`PoolTooSmall` (one line: the shape and the cap) if not even
        :data:`MIN_GROWN_SLOTS` fit. Only the receiver calls this."""
        self._discover()
        if self._fits_shape(shape):
            return False
        h, w = (int(v) for v in shape)
        spec0 = PoolSpec("", 1, h, w, self.spec.max_instances)
        left = cap_bytes - self.total_bytes
        n = min(slots, max(0, (left - _SEG_HDR) // (spec0.slot_bytes + _CTL_COLS * 8)))
        if n < MIN_GROWN_SLOTS or len(self._segs) >= _MAX_SEGMENTS:
            need = (MIN_GROWN_SLOTS * spec0.slot_bytes + self.total_bytes) / 2**20
            raise PoolTooSmall(
                f"frames of {h} x {w} px need {need:.0f} MB of frame slots "
                f"({MIN_GROWN_SLOTS} slots of {spec0.slot_bytes / 2**20:.0f} MB beside the "
                f"{self.total_bytes / 2**20:.0f} MB in use); pool.max_memory_mb is "
                f"{cap_bytes / 2**20:.0f}")  # fmt: skip
        spec = replace(spec0, slots=n)
        size = _SEG_HDR + spec.ctl_bytes + n * spec.slot_bytes
        shm = shared_memory.SharedMemory(create=True, size=size,
                                         name=segment_name(self.spec.name, len(self._segs) + 1))
        np.ndarray((4,), np.int64, shm.buf, 0)[:] = (n, h, w, spec.max_instances)
        np.ndarray((n, _CTL_COLS), np.int64, shm.buf, _SEG_HDR)[:] = 0
        self._add(shm)
        logger.info("frame pool: %d slots of %d x %d px added (%.0f MB; %.0f MB in all, "
                    "pool.max_memory_mb %.0f)", n, h, w, size / 2**20, self.total_bytes / 2**20,
                    cap_bytes / 2**20)  # fmt: skip
        return True

    def _fits_shape(self, shape: tuple[int, ...]) -> bool:
        return any(len(shape) == 2 and shape[0] <= sp.max_height and shape[1] <= sp.max_width
                   for sp in [self.spec, *(g[1] for g in self._segs)])  # fmt: skip

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
        segs, self._segs = self._segs, []
        for g in segs:
            g[3] = None
        for shm in [self._shm, *(g[2] for g in segs)]:
            try:
                shm.close()
            except BufferError:  # a caller still holds a view; the OS unmaps at exit
                pass

    def unlink(self) -> None:
        """Remove the pool's block and every segment grown on it (the creator, once)."""
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
            for k in range(1, _MAX_SEGMENTS + 1):
                try:
                    seg = shared_memory.SharedMemory(name=segment_name(self.spec.name, k))
                except FileNotFoundError:
                    break
                seg.close()
                seg.unlink()

    # -- slots
    def fits(self, shape: tuple[int, ...], dtype: np.dtype) -> bool:
        return self._fits_shape(shape) and np.dtype(dtype).name in _DTYPES

    def acquire(self, shape: tuple[int, ...] | None = None) -> tuple[int, int] | None:
        """A free slot ``(slot, gen)`` held by both holders, or None when all are in use.

        ``shape``: a slot of the smallest part of the pool that holds it (the primary pool
        unless the frame is larger). Only the receiver calls this (single writer of the
        holder flags' 0 → 1 transition).
        """
        seg = None
        if shape is not None and not (shape[0] <= self.spec.max_height
                                      and shape[1] <= self.spec.max_width):  # fmt: skip
            fit = [g for g in self._segs
                   if shape[0] <= g[1].max_height and shape[1] <= g[1].max_width]  # fmt: skip
            if not fit:
                return None
            seg = min(fit, key=lambda g: g[1].slot_bytes)
        first, n, ctl, cursor = ((0, self.spec.slots, self._ctl, self._cursor) if seg is None
                                 else (seg[0], seg[1].slots, seg[3], seg[5]))  # fmt: skip
        for k in range(n):
            i = (cursor + k) % n
            if ctl[i, _H0] == 0 and ctl[i, _H1] == 0:
                ctl[i, _GEN] += 1
                ctl[i, _ACQ_NS] = time.monotonic_ns()
                ctl[i, _H0] = 1
                ctl[i, _H1] = 1
                if seg is None:
                    self._cursor = (i + 1) % n
                else:
                    seg[5] = (i + 1) % n
                return first + i, int(ctl[i, _GEN])
        return None

    def gen(self, slot: int) -> int:
        ctl, _, _, i, _ = self._where(slot)
        return int(ctl[i, _GEN])

    def valid(self, slot: int, gen: int) -> bool:
        try:
            ctl, _, _, i, _ = self._where(slot)
        except IndexError:
            return False
        return int(ctl[i, _GEN]) == gen

    def release(self, slot: int, gen: int, holder: int) -> bool:
        """Give up ``holder``'s claim on ``slot``; False (and nothing done) if it is stale."""
        if not self.valid(slot, gen):
            return False
        ctl, _, _, i, _ = self._where(slot)
        ctl[i, _H0 + holder] = 0
        return True

    def _ctls(self) -> list[np.ndarray]:
        self._discover()
        return [self._ctl, *(g[3] for g in self._segs)]

    def in_use(self) -> int:
        return sum(int(((c[:, _H0] != 0) | (c[:, _H1] != 0)).sum()) for c in self._ctls())

    def reclaim(self, *, older_than_s: float, holder: int | None = None) -> int:
        """Clear claims held longer than ``older_than_s`` (crashed holders); returns the count."""
        limit = time.monotonic_ns() - int(older_than_s * 1e9)
        cols = [_H0 + holder] if holder is not None else [_H0, _H1]
        n = 0
        for ctl in self._ctls():
            for c in cols:
                stale = (ctl[:, c] != 0) & (ctl[:, _ACQ_NS] < limit)
                n += int(stale.sum())
                ctl[stale, c] = 0
        return n

    # -- pixels
    def image_view(self, slot: int, shape: tuple[int, int], dtype: str | np.dtype) -> np.ndarray:
        """Zero-copy (H, W) view of the slot's image area."""
        dt = np.dtype(dtype)
        _, base, spec, i, shm = self._where(slot)
        return np.ndarray(shape, dt, shm.buf, base + i * spec.slot_bytes)

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
        _, base, spec, i, shm = self._where(slot)
        n = min(int(masks.shape[0]), spec.max_instances)
        if n == 0:
            return 0
        h, w = masks.shape[1:]
        packed = np.packbits(masks[:n].reshape(n, h * w), axis=1)
        per = packed.shape[1]
        off = base + i * spec.slot_bytes + spec.image_bytes
        dst = np.ndarray((n, spec.mask_bytes), np.uint8, shm.buf, off)
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
        _, base, spec, i, shm = self._where(slot)
        off = base + i * spec.slot_bytes + spec.image_bytes
        per = -(-h * w // 8)
        src = np.ndarray((n, spec.mask_bytes), np.uint8, shm.buf, off)
        masks = np.unpackbits(src[:, :per], axis=1, count=h * w).reshape(n, h, w).astype(bool)
        return masks if self.valid(slot, gen) else None
