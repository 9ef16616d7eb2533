"""The viewers' memory: recent history of spacings, velocities and tracks, and the alarms.

:class:`ViewState` is fed one :class:`~loopline.viewers.schema.FrameView` per drawn frame and
holds nothing that a redraw could not recompute; it owns no socket and no thread, so it is
tested on literal views.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .config import AlarmConfig
from .schema import FrameView

__all__ = ["PileupHistory", "TrackRow", "ViewState", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float] | deque[float], width: int = 24) -> str:
    """The last ``width`` finite values as a row of block characters (min to max).

    >>> sparkline([0, 1, 2, 3, 4, 5, 6, 7])
    '▁▂▃▄▅▆▇█'
    """
    vals = [v for v in list(values)[-width:] if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        return _BARS[3] * len(vals)
    return "".join(_BARS[min(int((v - lo) / (hi - lo) * len(_BARS)), len(_BARS) - 1)] for v in vals)


def _fit_velocity(c: deque[tuple[float, float, float]], glide: list[float] | None) -> float:
    """Least-squares slope (px per time unit) of centroid samples (t, x, y)."""
    t = [p[0] for p in c]
    tm = sum(t) / len(t)
    var = sum((ti - tm) ** 2 for ti in t)
    if var <= 0:
        return math.nan
    def slope(vals: list[float]) -> float:
        vm = sum(vals) / len(vals)
        return sum((ti - tm) * (v - vm) for ti, v in zip(t, vals, strict=True)) / var
    vx, vy = slope([p[1] for p in c]), slope([p[2] for p in c])
    if glide is not None:
        return vx * glide[0] + vy * glide[1]
    return math.hypot(vx, vy)


@dataclass
class TrackRow:
    """One line of the track table: the newest length and velocity of a track."""

    id: int
    kind: str  # "line" or "loop"
    first_frame: int
    last_frame: int
    first_time_s: float | None
    last_time_s: float | None
    length_nm: float | None
    velocity_nm_s: float | None
    derived: bool = False  # velocity estimated here from centroid motion (a speed, >= 0)
    centroids: deque[tuple[float, float, float]] | None = None  # (t s, x px, y px)

    @property
    def age_frames(self) -> int:
        return self.last_frame - self.first_frame

    @property
    def age_s(self) -> float | None:
        if self.first_time_s is None or self.last_time_s is None:
            return None
        return self.last_time_s - self.first_time_s


@dataclass
class PileupHistory:
    """Recent mean and smallest spacing (nm) and leading velocity (nm/s) of one pile-up."""

    id: int
    mean_spacing: deque[float]
    min_spacing: deque[float]
    lead_velocity: deque[float]
    time_s: deque[float]
    spacings_nm: list[float]


class ViewState:
    """History and alarms over the frames a viewer has drawn.

    Parameters
    ----------
    history
        Samples kept per curve.
    alarms
        Thresholds; 0 switches a rule off.
    track_timeout_frames
        A track unseen for this many frames leaves the table.
    """

    def __init__(self, *, history: int = 120, alarms: AlarmConfig | None = None,
                 track_timeout_frames: int = 25) -> None:  # fmt: skip
        self.history = history
        self.alarm_config = alarms or AlarmConfig()
        self.track_timeout_frames = track_timeout_frames
        self.latest: FrameView | None = None
        self.pileups: dict[int, PileupHistory] = {}
        self.tracks: dict[tuple[str, int], TrackRow] = {}
        self.frames_drawn = 0
        self.series_changes = 0
        self.n_dislocations: deque[float] = deque(maxlen=history)
        self.n_loops: deque[float] = deque(maxlen=history)
        self.count_time_s: deque[float] = deque(maxlen=history)  # times of the two above
        self._t0: float | None = None  # camera clock of the series' first frame
        self._alarms: list[str] = []

    def reset(self) -> None:
        self.pileups.clear()
        self.tracks.clear()
        self.n_dislocations.clear()
        self.n_loops.clear()
        self.count_time_s.clear()
        self._t0 = None

    def time_of(self, view: FrameView) -> float:
        """A frame's time (s) on the curves: the frame's own ``time_s`` (as in series.csv),
        else its camera clock since the series' first frame seen, else its index."""
        if view.time_s is not None:
            return view.time_s
        if view.timestamp is not None:
            if self._t0 is None:
                self._t0 = view.timestamp
            return view.timestamp - self._t0
        return float(view.frame)

    def update(self, view: FrameView) -> None:
        prev = self.latest
        if prev is not None and (view.series != prev.series or view.frame < prev.frame):
            # a new series or a restarted daemon: old curves would join unrelated data
            self.series_changes += 1
            self.reset()
        self.latest = view
        self.frames_drawn += 1
        t = self.time_of(view)
        self.count_time_s.append(t)
        self.n_dislocations.append(view.n_dislocations)
        self.n_loops.append(view.n_loops)
        for ln in view.lines:
            if ln.id is not None:
                self._track("line", ln.id, view, t, ln.length_nm, ln.velocity_nm_s,
                            ln.centroid, ln.glide_dir)  # fmt: skip
        for lp in view.loops:
            if lp.id is not None:
                self._track("loop", lp.id, view, t, lp.major_nm, None)
        alarms: list[str] = []
        for pu in view.pileups:
            h = self.pileups.get(pu.id)
            if h is None:
                h = self.pileups[pu.id] = PileupHistory(
                    pu.id, *(deque(maxlen=self.history) for _ in range(4)), []
                )
            sp = [s for s in pu.spacings_nm if math.isfinite(s)]
            h.spacings_nm = sp
            h.mean_spacing.append(sum(sp) / len(sp) if sp else math.nan)
            h.min_spacing.append(min(sp) if sp else math.nan)
            v = pu.lead_velocity_nm_s
            if v is None and pu.lead_id is not None:
                row = self.tracks.get(("line", pu.lead_id))
                v = row.velocity_nm_s if row is not None else None
            last_v = h.lead_velocity[-1] if h.lead_velocity else None
            h.lead_velocity.append(v if v is not None else math.nan)
            h.time_s.append(t)
            alarms += self._pileup_alarms(pu.id, sp, v, last_v)
        for key in [k for k, r in self.tracks.items()
                    if view.frame - r.last_frame > self.track_timeout_frames]:  # fmt: skip
            del self.tracks[key]
        alarms += self._daemon_alarms(view)
        self._alarms = alarms

    def _track(self, kind: str, tid: int, view: FrameView, t: float, length: float | None,
               velocity: float | None, centroid: list[float] | None = None,
               glide_dir: list[float] | None = None) -> None:  # fmt: skip
        row = self.tracks.get((kind, tid))
        if row is None:
            row = self.tracks[(kind, tid)] = TrackRow(tid, kind, view.frame, view.frame, t, t,
                                                      length, velocity, centroids=deque(maxlen=6))
        row.last_frame, row.last_time_s = view.frame, t
        row.length_nm, row.velocity_nm_s, row.derived = length, velocity, False
        if centroid is not None and row.centroids is not None:
            row.centroids.append((t, centroid[0], centroid[1]))
        if velocity is None and view.nm_per_px and row.centroids and len(row.centroids) >= 3:
            # the stream carries no velocity: fit the centroid over the last frames, along the
            # glide direction (signed, + towards the leader) when known, else the speed
            row.velocity_nm_s = _fit_velocity(row.centroids, glide_dir) * view.nm_per_px
            row.derived = True

    def _pileup_alarms(self, pid: int, spacings: list[float], v: float | None,
                       last_v: float | None) -> list[str]:  # fmt: skip
        a = self.alarm_config
        out = []
        if a.min_spacing_nm and spacings and min(spacings) < a.min_spacing_nm:
            out.append(f"pile-up {pid}: spacing {min(spacings):.1f} nm < {a.min_spacing_nm:g} nm")
        if v is not None and a.max_velocity_nm_s and abs(v) > a.max_velocity_nm_s:
            out.append(f"pile-up {pid}: leading velocity {v:.1f} nm/s "
                       f"> {a.max_velocity_nm_s:g} nm/s")  # fmt: skip
        if (v is not None and last_v is not None and math.isfinite(last_v)
                and a.velocity_jump_nm_s and abs(v - last_v) > a.velocity_jump_nm_s):  # fmt: skip
            out.append(f"pile-up {pid}: velocity burst {last_v:.1f} → {v:.1f} nm/s")
        return out

    def _daemon_alarms(self, view: FrameView) -> list[str]:
        a = self.alarm_config
        out = []
        if a.max_latency_ms and view.latency_p99_ms is not None \
                and view.latency_p99_ms > a.max_latency_ms:  # fmt: skip
            out.append(f"latency p99 {view.latency_p99_ms:.0f} ms > {a.max_latency_ms:g} ms")
        rec = view.counters.get("received", 0)
        skipped = view.counters.get("skipped", 0)
        if a.max_skipped_fraction and rec > 0 and skipped / rec > a.max_skipped_fraction:
            out.append(f"daemon skipped {skipped}/{rec} frames "
                       f"({skipped / rec:.0%} > {a.max_skipped_fraction:.0%})")  # fmt: skip
        return out

    def alarms(self) -> list[str]:
        """The alarms raised by the newest frame (empty when all is well)."""
        return list(self._alarms)

    def track_rows(self, limit: int | None = None) -> list[TrackRow]:
        """Tracks seen most recently first; lines before loops at equal recency."""
        rows = sorted(self.tracks.values(),
                      key=lambda r: (-r.last_frame, r.kind != "line", r.id))  # fmt: skip
        return rows if limit is None else rows[:limit]
