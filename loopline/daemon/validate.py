"""Meaning, not form: what the daemon does with a frame that decodes but makes no sense.

:func:`loopline.daemon.ingest.loopline1.protocol.decode` (and the DECTRIS decoders) check a
message's *form*.
A well-formed frame can still be hostile or odd: an index going backwards, the same index
twice, a timestamp of 1e308, a pixel size of 1e308 nm, a 1 x 1 image. The receiver puts every
decoded frame through one :class:`FrameValidator` before it takes a slot, and each case has
one defined outcome, counted under one named counter (``summary.json`` ``counters``, the
``metrics`` message, Prometheus ``loopline_frames_total{counter=...}``):

=====================================  =========================  ===========================
a frame whose ...                      outcome                    counter
=====================================  =========================  ===========================
side is below :data:`MIN_SIDE` px      rejected (not recorded)    ``rejected_undersize``
timestamp lies outside                 rejected                   ``rejected_timestamp``
:data:`TIMESTAMP_RANGE_S`
pixel size lies outside                rejected                   ``rejected_pixel_size``
:data:`PIXEL_SIZE_RANGE_NM`
index exceeds :data:`MAX_INDEX`        rejected                   ``rejected_index``
float32 pixels are not all finite      rejected                   ``rejected_pixels``
index equals the previous one          recorded, not analysed     ``skipped_duplicate``
                                       (the tracker cannot take
                                       two frames at one index)
index goes backwards, or time does     recorded and analysed as   ``segments_restarted``
not increase (a restarted series)      a new *segment*: tracking
                                       starts afresh
=====================================  =========================  ===========================

A series-start whose pixel size lies outside the range is kept without it
(``ignored_pixel_size``). Every rejected frame is also counted in ``skipped`` (it was not
analysed), and is not recorded; so ``received = recorded + sum(NOT_RECORDED counters)`` and
``received = analysed + skipped``.

Two series that interleave their frames are resolved before the receiver, by the source's
:class:`~loopline.daemon.ingest.base.SeriesTracker` (``rejected_interleaved``); frames that a
source rejects that way, like malformed messages, never count as ``received``.

Segments: the measure worker tracks objects through one segment at a time; a segment is a run
of frames of one series whose indices and times increase. A new series always starts a new
segment. The receiver numbers segments (``segment`` in the frame header) from a counter in
shared memory, so numbers stay unique when the receiver is restarted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_INDEX",
    "MIN_SIDE",
    "NOT_RECORDED",
    "PIXEL_SIZE_RANGE_NM",
    "REJECT_COUNTERS",
    "TIMESTAMP_RANGE_S",
    "FrameValidator",
    "Verdict",
    "max_message_bytes",
    "plausible_pixel_size",
]

#: Smallest frame side accepted (px): below it nothing can be measured (and no MP4 opens).
MIN_SIDE = 16
#: Camera timestamps accepted, s since the UNIX epoch: 1970 to 2286. A camera whose clock
#: is merely wrong (by days or years) is accepted; latency then uses the receive time.
TIMESTAMP_RANGE_S = (0.0, 1e10)
#: Specimen pixel sizes accepted, nm (0.1 pm to 1 mm; calibration.nm_per_px allows the same).
PIXEL_SIZE_RANGE_NM = (1e-4, 1e6)
#: Largest frame index accepted: the largest integer a float64 (or a JavaScript viewer)
#: holds exactly; the run folder's tables store indices as int64.
MAX_INDEX = 2**53 - 1

#: Counters of frames the receiver rejects (each also counted in ``skipped``).
REJECT_COUNTERS: tuple[str, ...] = (
    "rejected_undersize", "rejected_timestamp", "rejected_pixel_size", "rejected_index",
    "rejected_pixels",
)  # fmt: skip
#: Counters of received frames that are not recorded: with ``recorded`` they add up to
#: ``received``.
NOT_RECORDED: tuple[str, ...] = (
    "dropped_no_slot", "rejected_oversize", *REJECT_COUNTERS, "receiver_errors",
    "record_errors", "not_recorded_disk",
)  # fmt: skip


def plausible_pixel_size(px_nm: float | None) -> bool:
    """True for None (unknown) or a finite size within :data:`PIXEL_SIZE_RANGE_NM`."""
    if px_nm is None:
        return True
    lo, hi = PIXEL_SIZE_RANGE_NM
    return isinstance(px_nm, int | float) and math.isfinite(px_nm) and lo <= px_nm <= hi


def max_message_bytes(max_height: int, max_width: int, *, header_bytes: int = 64 * 1024) -> int:
    """The largest message part (bytes) a source accepts for frames up to the pool's size.

    Room for 4-byte pixels (the widest dtype a slot holds), compression that expands
    incompressible data a little (LZ4: 1/255), and a header. ZeroMQ discards a larger part
    as it arrives (``ZMQ_MAXMSGSIZE``), before it is read into memory.
    """
    raw = max_height * max_width * 4
    return raw + raw // 128 + header_bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one frame.

    Attributes
    ----------
    counter : str or None
        The named counter of a rejected frame (one of :data:`REJECT_COUNTERS`), else None.
    reason : str
        One line naming what was expected and what came (rejected frames only).
    duplicate : bool
        Record the frame but do not analyse it (its index equals the previous one).
    new_segment : bool
        The frame starts a new analysis segment (first of its series, or a restart).
    restarted : bool
        The new segment restarts a series (index backwards or time not increasing).
    """

    counter: str | None = None
    reason: str = ""
    duplicate: bool = False
    new_segment: bool = False
    restarted: bool = False

    @property
    def rejected(self) -> bool:
        return self.counter is not None


class FrameValidator:
    """The receiver's semantic checks; one instance sees every frame in arrival order.

    For each frame call :meth:`values` (None, or the verdict rejecting it), then, once the
    frame's time is known, :meth:`sequence`; call :meth:`series_start` for each series-start
    event. See the module docstring for the outcomes. Pure Python: no sockets, no shared
    state.

    >>> import numpy as np
    >>> v = FrameValidator()
    >>> v.values(5, 1e308, None, np.zeros((32, 32), np.uint8)).reason
    'timestamp: expected s since the epoch in [0, 1e+10], got 1e+308'
    >>> [v.sequence("s", i, 0.04 * i).new_segment for i in (0, 1, 2)]
    [True, False, False]
    >>> v.sequence("s", 2, 0.12).duplicate
    True
    >>> v.sequence("s", 0, 0.16).restarted
    True
    """

    def __init__(self, *, min_side: int = MIN_SIDE) -> None:
        self.min_side = min_side
        self._series: str | None = None
        self._last: tuple[int, float] | None = None  # (index, time_s) of the segment's last

    def series_start(self, series: str) -> None:
        """A series (re)starts: its next frame opens a new segment."""
        self._series = series
        self._last = None

    def values(self, index: int, timestamp_s: float, px_nm: float | None,
               image: np.ndarray) -> Verdict | None:  # fmt: skip
        """The verdict rejecting a frame whose values make no sense; None if they do."""
        h, w = image.shape[:2]
        if min(h, w) < self.min_side:
            return Verdict("rejected_undersize", f"shape: expected sides of at least "
                           f"{self.min_side} px, got {h} x {w}")  # fmt: skip
        lo, hi = TIMESTAMP_RANGE_S
        if not (math.isfinite(timestamp_s) and lo <= timestamp_s <= hi):
            return Verdict("rejected_timestamp", f"timestamp: expected s since the epoch in "
                           f"[{lo:g}, {hi:g}], got {timestamp_s:g}")  # fmt: skip
        if not plausible_pixel_size(px_nm):
            lo, hi = PIXEL_SIZE_RANGE_NM
            return Verdict("rejected_pixel_size", f"pixel_size_nm: expected a size in "
                           f"[{lo:g}, {hi:g}] nm, got {px_nm!r:.40}")  # fmt: skip
        if index > MAX_INDEX:
            return Verdict("rejected_index", f"index: expected at most {MAX_INDEX}, "
                           f"got {index}")  # fmt: skip
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            bad = int(image.size - np.count_nonzero(np.isfinite(image)))
            return Verdict("rejected_pixels", f"pixels: expected finite values, got {bad} "
                           f"NaN or infinite")  # fmt: skip
        return None

    def sequence(self, series: str, index: int, time_s: float) -> Verdict:
        """Where an accepted frame stands in its series: next, duplicate, or a restart.

        ``time_s``: the frame's time as the measure worker will take it (s).
        """
        if series != self._series:  # the source always starts a series first; be safe anyway
            self.series_start(series)
        last = self._last
        if last is None:
            self._last = (index, time_s)
            return Verdict(new_segment=True)
        if index == last[0]:
            return Verdict(duplicate=True)
        self._last = (index, time_s)
        if index < last[0] or not time_s > last[1]:
            return Verdict(new_segment=True, restarted=True)
        return Verdict()
