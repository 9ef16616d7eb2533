"""The viewers' memory: recent history of spacings, velocities and tracks, and the alarms.

:class:`ViewState` is fed one :class:`~loopline.viewers.schema.FrameView` per drawn frame and
holds nothing that a redraw could not recompute; it owns no socket and no thread, so it is
tested on literal views.

Two kinds of alarm are shown. The daemon's (:mod:`loopline.analysis.alarms`, published as
``alarm`` messages and written to ``alarms.csv``) are fed with :meth:`ViewState.on_alarm`:
:meth:`ViewState.active_alarms` holds the rules raised now, :meth:`ViewState.alarm_log` the
newest raise/clear events. A viewer that joins late, or lost an ``alarm`` message, learns the
rules raised now from every frame's ``alarms_active`` (see :meth:`ViewState.update`). The
viewer's own rules (``[view.alarms]``, on what this viewer draws, e.g. its latency) are
:meth:`ViewState.alarms`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .config import AlarmConfig
from .schema import AlarmEvent, FrameView

__all__ = ["PileupHistory", "TrackRow", "ViewState", "reconcile_alarms", "sparkline"]

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


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


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
    velocity_nm_s_se: float | None = None  # the daemon's standard error (None if derived)
    length_nm_se: float | None = None
    #: every other number of its newest tracks.csv row (LineView.fields / LoopView.fields)
    fields: dict[str, float] = field(default_factory=dict)

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
    """Recent mean and smallest spacing (nm) and leading velocity (nm/s) of one pile-up, with
    the standard errors of the mean spacing and of the velocity (NaN where unknown)."""

    id: int
    mean_spacing: deque[float]
    min_spacing: deque[float]
    lead_velocity: deque[float]
    time_s: deque[float]
    spacings_nm: list[float]
    mean_spacing_se: deque[float] = field(default_factory=deque)
    lead_velocity_se: deque[float] = field(default_factory=deque)
    spacings_nm_se: list[float | None] = field(default_factory=list)


def reconcile_alarms(active: dict[str, AlarmEvent], rules: list[str], *, frame: int,
                     series: str, last_received: dict[str, int], before: int | None
                     ) -> dict[str, AlarmEvent]:  # fmt: skip
    """The daemon's active alarms after a frame that says ``rules`` are raised now.

    ``active`` maps each rule this viewer holds raised to its event; ``last_received`` the
    arrival number of the newest event seen per rule; ``before`` how many alarm messages had
    arrived before the frame (None: all seen ones). An event that arrived after the frame is
    newer than the frame's list and wins; otherwise the frame's list wins: a rule missing
    from ``active`` was raised before this viewer joined (or its message was lost) and is
    added as an ``active`` event, a rule missing from ``rules`` was cleared unseen and is
    dropped.
    """
    def newer(rule: str) -> bool:
        return before is not None and last_received.get(rule, 0) > before

    out = {r: ev for r, ev in active.items() if r in rules or newer(r)}
    for r in rules:
        if r not in out and not newer(r):
            out[r] = AlarmEvent(rule=r, state="active", series=series, frame=frame,
                                message=f"{r}: raised (before this viewer saw its message)")
    return out


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
    alarm_log
        The daemon's alarm events kept (newest last).
    """

    def __init__(self, *, history: int = 120, alarms: AlarmConfig | None = None,
                 track_timeout_frames: int = 25, alarm_log: int = 50) -> None:  # fmt: skip
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
        self.n_loops_lo: deque[float] = deque(maxlen=history)
        self.n_loops_hi: deque[float] = deque(maxlen=history)
        self._t0: float | None = None  # camera clock of the series' first frame
        self._alarms: list[str] = []
        # the daemon's alarms: rule -> the event that raised it; the newest events; per rule
        # the arrival number of its newest event (kept over series changes: they are the
        # daemon's, not the curves')
        self._active: dict[str, AlarmEvent] = {}
        self._log: deque[AlarmEvent] = deque(maxlen=alarm_log)
        self._last_rx: dict[str, int] = {}
        self.alarm_events = 0  # events received in all

    def reset(self) -> None:
        self.pileups.clear()
        self.tracks.clear()
        self.n_dislocations.clear()
        self.n_loops.clear()
        self.n_loops_lo.clear()
        self.n_loops_hi.clear()
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

    # -- the daemon's alarms --------------------------------------------------------------------
    def on_alarm(self, ev: AlarmEvent) -> None:
        """One ``alarm`` message of the daemon (in the order received)."""
        self.alarm_events += 1
        self._log.append(ev)
        self._last_rx[ev.rule] = max(self._last_rx.get(ev.rule, 0), ev.received)
        if ev.state == "raise":
            self._active[ev.rule] = ev
        elif ev.state == "clear":
            self._active.pop(ev.rule, None)

    def active_alarms(self) -> list[AlarmEvent]:
        """The daemon's alarms raised now, the newest raise first."""
        return sorted(self._active.values(), key=lambda e: (-(e.received or 0), e.rule))

    def alarm_log(self, n: int | None = None) -> list[AlarmEvent]:
        """The newest ``n`` (all kept: None) raise/clear events, the newest first."""
        out = list(reversed(self._log))
        return out if n is None else out[:n]

    def update(self, view: FrameView, *, alarms_before: int | None = None) -> None:
        """Fold in one frame. ``alarms_before``: how many alarm messages had arrived before
        this frame (:attr:`~loopline.viewers.stream.Message.alarms_before`); an alarm event
        that arrived later is newer than the frame's ``alarms_active`` (see
        :func:`reconcile_alarms`)."""
        if view.alarms_active is not None:
            self._active = reconcile_alarms(self._active, view.alarms_active, frame=view.frame,
                                            series=view.series, last_received=self._last_rx,
                                            before=alarms_before)  # fmt: skip
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
        self.n_loops_lo.append(_nan(view.n_loops_lo))
        self.n_loops_hi.append(_nan(view.n_loops_hi))
        for ln in view.lines:
            if ln.id is not None:
                self._track("line", ln.id, view, t, ln.length_nm, ln.velocity_nm_s,
                            ln.centroid, ln.glide_dir, se=(ln.velocity_nm_s_se,
                                                           ln.length_nm_se),
                            fields=ln.fields)  # fmt: skip
        for lp in view.loops:
            if lp.id is not None:
                self._track("loop", lp.id, view, t, lp.major_nm, None, se=(None, lp.major_nm_se),
                            fields=lp.fields)  # fmt: skip
        alarms: list[str] = []
        for pu in view.pileups:
            h = self.pileups.get(pu.id)
            if h is None:
                h = self.pileups[pu.id] = PileupHistory(
                    pu.id, *(deque(maxlen=self.history) for _ in range(4)), [],
                    *(deque(maxlen=self.history) for _ in range(2)),
                )  # fmt: skip
            sp = [s for s in pu.spacings_nm if math.isfinite(s)]
            h.spacings_nm = sp
            h.spacings_nm_se = [e for s, e in zip(pu.spacings_nm, pu.spacings_nm_se or
                                                  [None] * len(pu.spacings_nm), strict=False)
                                if math.isfinite(s)]  # fmt: skip
            h.mean_spacing.append(sum(sp) / len(sp) if sp else math.nan)
            h.mean_spacing_se.append(_nan(pu.mean_spacing_nm_se) if sp else math.nan)
            h.min_spacing.append(min(sp) if sp else math.nan)
            v, v_se = pu.lead_velocity_nm_s, pu.lead_velocity_nm_s_se
            if v is None and pu.lead_id is not None:
                row = self.tracks.get(("line", pu.lead_id))
                v = row.velocity_nm_s if row is not None else None
                v_se = row.velocity_nm_s_se if row is not None else None
            last_v = h.lead_velocity[-1] if h.lead_velocity else None
            h.lead_velocity.append(v if v is not None else math.nan)
            h.lead_velocity_se.append(_nan(v_se) if v is not None else math.nan)
            h.time_s.append(t)
            alarms += self._pileup_alarms(pu.id, sp, v, last_v)
        for key in [k for k, r in self.tracks.items()
                    if view.frame - r.last_frame > self.track_timeout_frames]:  # fmt: skip
            del self.tracks[key]
        alarms += self._daemon_alarms(view)
        self._alarms = alarms

    def _track(self, kind: str, tid: int, view: FrameView, t: float, length: float | None,
               velocity: float | None, centroid: list[float] | None = None,
               glide_dir: list[float] | None = None,
               se: tuple[float | None, float | None] = (None, None),
               fields: dict[str, float] | None = None) -> None:  # fmt: skip
        row = self.tracks.get((kind, tid))
        if row is None:
            row = self.tracks[(kind, tid)] = TrackRow(tid, kind, view.frame, view.frame, t, t,
                                                      length, velocity, centroids=deque(maxlen=6))
        row.last_frame, row.last_time_s = view.frame, t
        row.length_nm, row.velocity_nm_s, row.derived = length, velocity, False
        row.velocity_nm_s_se, row.length_nm_se = se
        row.fields = dict(fields or {})
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
        """The viewer's own alarms (``[view.alarms]``) raised by the newest frame (empty when
        all is well); the daemon's are :meth:`active_alarms`."""
        return list(self._alarms)

    def track_rows(self, limit: int | None = None) -> list[TrackRow]:
        """Tracks seen most recently first; lines before loops at equal recency."""
        rows = sorted(self.tracks.values(),
                      key=lambda r: (-r.last_frame, r.kind != "line", r.id))  # fmt: skip
        return rows if limit is None else rows[:limit]
