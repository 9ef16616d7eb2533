"""``loopline view``: a rich live dashboard of the daemon's result stream.

The dashboard takes the newest message whenever it is free (latest wins, see
:mod:`loopline.viewers.stream`), folds it into a :class:`~loopline.viewers.state.ViewState`
and redraws at most ``refresh_hz`` times a second. A frame preview is drawn in terminals that
speak the kitty graphics protocol or sixel; anywhere else the panel says why it is off.

Numbers with a standard error from the stream are shown as ``value ± se`` (a pile-up's mean
spacing and leading velocity, a track's length and velocity). The alarms panel lists the
daemon's alarms raised now (bold red, also flagged in the heading line), its newest
raise/clear events, and the viewer's own ``[view.alarms]`` rules.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .config import ViewConfig
from .schema import FrameView
from .state import ViewState, sparkline
from .stream import ResultSubscriber, StreamStats

logger = logging.getLogger(__name__)

__all__ = ["alarm_lines", "detect_preview", "kitty_image", "render_dashboard", "run_dashboard",
           "sixel_image"]


def _f(v: float | None, fmt: str = ".1f", unit: str = "") -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:{fmt}}{unit}"


def _pm(v: float | None, se: float | None, fmt: str = ".1f") -> str:
    """``v ± se`` (``v`` alone where the se is unknown)."""
    if v is None or not math.isfinite(v):
        return "–"
    if se is None or not math.isfinite(se):
        return f"{v:{fmt}}"
    return f"{v:{fmt}} ± {se:{fmt}}"


def _clock(ts: float | None) -> str:
    return "--:--:--" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def alarm_lines(state: ViewState, *, events: int = 4) -> list[tuple[str, str]]:
    """The alarms panel as (text, rich style) lines: the daemon's alarms raised now, its
    newest ``events`` raise/clear events, then the viewer's own rules."""
    out: list[tuple[str, str]] = []
    for e in state.active_alarms():
        where = "" if e.frame is None else f"  (frame {e.frame}" + (
            f", t {e.time_s:.2f} s)" if e.time_s is not None else ")")  # fmt: skip
        out.append((f"⚠ {e.rule}: {e.message}{where}", "bold red"))
    for e in state.alarm_log(events):
        t = f"t {e.time_s:.2f} s" if e.time_s is not None else ""
        out.append((f"  {_clock(e.timestamp)} {t}  {e.state:<5} {e.rule}: {e.message}",
                    "red" if e.state == "raise" else "green"))  # fmt: skip
    out += [(f"⚠ viewer: {a}", "bold yellow") for a in state.alarms()]
    return out


# -- image preview ------------------------------------------------------------------------------
def detect_preview(mode: str, env: dict[str, str] | None = None) -> str:
    """The preview protocol to use: ``kitty``, ``sixel`` or ``off``.

    ``auto`` picks kitty in kitty, WezTerm and Ghostty (they announce themselves in the
    environment) and sixel where ``$TERM`` names it; anything else (tmux, ssh to an unknown
    terminal) gets ``off``, because an unsupported escape sequence prints as garbage.
    """
    if mode != "auto":
        return mode
    env = dict(os.environ if env is None else env)
    term = env.get("TERM", "")
    if env.get("TMUX"):
        return "off"
    if ("kitty" in term or env.get("KITTY_WINDOW_ID") or env.get("TERM_PROGRAM") in
            ("WezTerm", "ghostty")):  # fmt: skip
        return "kitty"
    if "sixel" in term or term in ("mlterm", "yaft-256color", "foot"):
        return "sixel"
    return "off"


def kitty_image(rgb: np.ndarray, *, cols: int, rows: int, image_id: int = 1) -> str:
    """Escape sequence drawing ``rgb`` (H, W, 3) uint8 into a box of ``cols`` × ``rows`` cells.

    Kitty graphics protocol: PNG payload in 4096-byte base64 chunks; ``C=1`` keeps the cursor
    where it was so the dashboard's layout is unchanged; the same ``image_id`` replaces the
    previous preview instead of stacking images.
    """
    import cv2

    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding of the preview failed")
    data = base64.standard_b64encode(png.tobytes()).decode("ascii")
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)] or [""]
    out = []
    for i, chunk in enumerate(chunks):
        more = int(i < len(chunks) - 1)
        if i == 0:
            ctl = f"a=T,f=100,i={image_id},c={cols},r={rows},C=1,q=2,m={more}"
        else:
            ctl = f"m={more}"
        out.append(f"\x1b_G{ctl};{chunk}\x1b\\")
    return "".join(out)


def sixel_image(gray: np.ndarray, *, levels: int = 16) -> str:
    """Sixel escape sequence of a grey image ``gray`` (H, W) uint8 with ``levels`` grey levels.

    TEM frames are grey, so a small grey palette keeps the sequence short. Each band of six
    rows is written colour by colour with run-length encoding.
    """
    g = np.asarray(gray, np.uint8)
    if g.ndim != 2:
        raise ValueError(f"gray must have shape (H, W), got {g.shape}")
    h, w = g.shape
    q = (g.astype(np.uint16) * levels // 256).astype(np.uint8)
    out = ["\x1bPq", f'"1;1;{w};{h}']
    for c in range(levels):
        pct = round(c * 100 / max(levels - 1, 1))
        out.append(f"#{c};2;{pct};{pct};{pct}")
    for y0 in range(0, h, 6):
        band = q[y0:y0 + 6]
        for c in np.unique(band):
            bits = np.zeros(w, np.uint8)
            for k in range(band.shape[0]):
                bits |= (band[k] == c).astype(np.uint8) << k
            chars = (bits + 63).astype(np.uint8).tobytes().decode("ascii")
            out.append(f"#{c}" + _rle(chars) + "$")
        out.append("-")
    out.append("\x1b\\")
    return "".join(out)


def _rle(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        n = j - i
        out.append(f"!{n}{s[i]}" if n > 3 else s[i] * n)
        i = j
    return "".join(out)


class _Preview:
    """A rich renderable: the image escape sequence (zero width) and blank rows under it."""

    def __init__(self, seq: str, rows: int) -> None:
        self.seq, self.rows = seq, rows

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.segment import ControlType, Segment

        # a segment marked as control has no width, so the sequence does not disturb the
        # layout; its text is written as it is (and dropped when the output is no terminal)
        yield Segment(self.seq, None, [(ControlType.BELL,)])
        for _ in range(self.rows):
            yield Segment("\n")


def _preview_renderable(jpeg: bytes | None, mode: str, *, cols: int = 48, rows: int = 16,
                        view: FrameView | None = None) -> Any:  # fmt: skip
    from rich.text import Text

    if mode == "off":
        return Text("preview off: this terminal shows no images (try --preview kitty|sixel)",
                    style="dim")  # fmt: skip
    if jpeg is None:
        return Text("preview: the stream carries no JPEG", style="dim")
    import cv2

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return Text("preview: undecodable JPEG", style="dim")
    if view is not None and not view.jpeg_overlay:  # the daemon sends the bare frame
        from .overlay import draw_overlay

        img = draw_overlay(img, view)
    if mode == "kitty":
        return _Preview(kitty_image(img[..., ::-1], cols=cols, rows=rows), rows)
    # sixel: about 10 × 20 px per cell in common terminals
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    s = min(cols * 10 / g.shape[1], rows * 20 / g.shape[0])
    g = cv2.resize(g, (max(int(g.shape[1] * s), 1), max(int(g.shape[0] * s), 1)),
                   interpolation=cv2.INTER_AREA)  # fmt: skip
    return _Preview(sixel_image(g), 0)


# -- the dashboard ------------------------------------------------------------------------------
def render_dashboard(state: ViewState, stats: StreamStats | None, cfg: ViewConfig, *,
                     endpoint: str, preview: Any = None) -> Any:  # fmt: skip
    """The whole dashboard as one rich renderable."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    v = state.latest
    waiting = stats is not None and not stats.connected
    head = Text()
    head.append("loopline view  ", style="bold")
    if v is None:
        head.append(f"waiting for the daemon at {endpoint} …", style="yellow")
    else:
        head.append(f"source {v.source or '?'}  ·  engine {v.engine or '?'}  ·  ")
        head.append(f"series {v.series or '–'}  ·  frame {v.frame}")
        if v.time_s is not None:
            head.append(f"  ·  t {v.time_s:.2f} s")
        if waiting:
            head.append(f"  ·  no data for {_f(stats.last_message_age_s if stats else None)} s, "
                        "reconnecting", style="bold yellow")  # fmt: skip
    active = state.active_alarms()
    if active:
        head.append(f"  ⚠ ALARM {', '.join(e.rule for e in active)}", style="bold white on red")

    perf = Table(title="performance", title_justify="left", expand=False, box=None,
                 show_header=True, header_style="bold")  # fmt: skip
    perf.add_column("stage")
    perf.add_column("fps", justify="right")
    for stage, fps in (v.fps if v else {}).items():
        perf.add_row(stage, _f(fps))
    if v is None or not v.fps:
        perf.add_row("–", "–")
    perf.add_row("latency p50", _f(v.latency_p50_ms if v else None, ".0f", " ms"))
    perf.add_row("latency p99", _f(v.latency_p99_ms if v else None, ".0f", " ms"))

    cnt = Table(title="counters", title_justify="left", box=None, header_style="bold")
    cnt.add_column("counter")
    cnt.add_column("n", justify="right")
    for k in ("received", "analysed", "skipped", "malformed", "recorded"):
        cnt.add_row(k, str(v.counters[k]) if v and k in v.counters else "–")
    if stats is not None:
        cnt.add_row("viewer dropped", str(stats.viewer_dropped))
        cnt.add_row("stream gaps", str(stats.gaps))
        cnt.add_row("reconnects", str(stats.reconnects))

    objs = Table(title="objects", title_justify="left", box=None, header_style="bold")
    objs.add_column("kind")
    objs.add_column("n", justify="right")
    objs.add_column("history")
    objs.add_row("dislocations", str(v.n_dislocations if v else "–"),
                 sparkline(state.n_dislocations, 20))  # fmt: skip
    objs.add_row("loops", str(v.n_loops if v else "–"), sparkline(state.n_loops, 20))

    top = Table.grid(padding=(0, 4))
    top.add_row(perf, cnt, objs)

    pu = Table(title="pile-ups", title_justify="left", header_style="bold", expand=True)
    pu.add_column("id", justify="right")
    pu.add_column("spacings from leader (nm)", overflow="ellipsis", no_wrap=True)
    pu.add_column("mean ± se (nm)", justify="right")
    pu.add_column("mean spacing history")
    pu.add_column("lead v ± se (nm/s)", justify="right")
    pu.add_column("lead velocity history")
    for pid in sorted(state.pileups):
        h = state.pileups[pid]
        pu.add_row(str(pid), " ".join(f"{s:.0f}" for s in h.spacings_nm) or "–",
                   _pm(h.mean_spacing[-1] if h.mean_spacing else None,
                       h.mean_spacing_se[-1] if h.mean_spacing_se else None),
                   sparkline(h.mean_spacing, 24),
                   _pm(h.lead_velocity[-1] if h.lead_velocity else None,
                       h.lead_velocity_se[-1] if h.lead_velocity_se else None),
                   sparkline(h.lead_velocity, 24))  # fmt: skip

    tr = Table(title="tracks", title_justify="left", header_style="bold", expand=True)
    for name, just in (("track", "right"), ("kind", "left"), ("length (nm)", "right"),
                       ("velocity (nm/s)", "right"), ("age (frames)", "right"),
                       ("age (s)", "right")):  # fmt: skip
        tr.add_column(name, justify=just)
    rows = state.track_rows(cfg.track_rows)
    for r in rows:
        tr.add_row(str(r.id), r.kind, _pm(r.length_nm, r.length_nm_se),
                   _pm(r.velocity_nm_s, r.velocity_nm_s_se), str(r.age_frames),
                   _f(r.age_s, ".1f"))  # fmt: skip
    if len(state.tracks) > len(rows):
        tr.caption = f"{len(state.tracks) - len(rows)} more tracks not shown"

    lines = alarm_lines(state)
    if waiting and v is not None:
        lines.append(("⚠ no data from the daemon (reconnecting)", "bold yellow"))
    al = Text()
    for i, (text, style) in enumerate(lines):
        al.append(("\n" if i else "") + text, style=style)
    if not lines:
        al.append("no alarms", style="green")
    title = f"alarms ({len(active)} raised)" if active else "alarms"

    parts: list[Any] = [head, top, pu, tr,
                        Panel(al, title=title, title_align="left",
                              border_style="red" if active else "none")]  # fmt: skip
    if preview is not None:
        parts.append(Panel(preview, title="preview", title_align="left"))
    return Group(*parts)


def run_dashboard(cfg: ViewConfig, *, preview: str = "auto", duration_s: float = 0.0,
                  screen: bool = True) -> int:  # fmt: skip
    """Subscribe to ``cfg.endpoint`` and draw until Ctrl-C (or ``duration_s`` when > 0)."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    mode = detect_preview(preview)
    state = ViewState(history=cfg.history, alarms=cfg.alarms,
                      track_timeout_frames=cfg.track_timeout_frames)  # fmt: skip
    period = 1.0 / cfg.refresh_hz
    t_end = time.monotonic() + duration_s if duration_s > 0 else math.inf
    preview_period = 0.5  # images cost bandwidth: at most two a second
    with ResultSubscriber(cfg.endpoint, stale_s=cfg.stale_s,
                          curve_server_key=cfg.curve_server_key or None,
                          curve_secret_key=cfg.curve_secret_key or None) as sub, \
            Live(console=console, screen=screen, auto_refresh=False,
                 transient=False) as live:  # fmt: skip
        seq = n_alarms = 0
        last_draw = last_preview = -math.inf
        jpeg: bytes | None = None
        prev: Any = None
        while time.monotonic() < t_end:
            sub.maybe_raise()
            m = sub.wait(seq, timeout=min(period, max(t_end - time.monotonic(), 0.0)))
            for ev in sub.alarms_after(n_alarms):  # a frame's alarms come before it
                state.on_alarm(ev)
                n_alarms = ev.received
            if m is not None:
                seq = m.seq
                state.update(m.view, alarms_before=m.alarms_before)
                jpeg = m.jpeg
            now = time.monotonic()
            if now - last_draw < period:
                continue
            if mode != "off" and now - last_preview >= preview_period and jpeg is not None:
                prev = _preview_renderable(jpeg, mode, view=state.latest)
                last_preview = now
            elif prev is None:
                prev = _preview_renderable(None if mode != "off" else b"", mode)
            live.update(render_dashboard(state, sub.stats(), cfg, endpoint=cfg.endpoint,
                                         preview=prev), refresh=True)  # fmt: skip
            last_draw = now
    return 0
