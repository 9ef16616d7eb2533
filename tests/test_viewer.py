"""The viewers' parts without a browser or a terminal: schema, state, config, stream, server."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from viewer_standin import build_messages
from viewer_support import live_stream, make_synth_video, wait_for

from loopline.analysis.message import LineView, PileupView
from loopline.analysis.uncertainty import mean_se
from loopline.viewers.config import ViewConfig, ViewConfigError, load_view_config
from loopline.viewers.schema import AlarmEvent, FrameView, parse_message, to_alarm, to_view
from loopline.viewers.state import ViewState, reconcile_alarms, sparkline
from loopline.viewers.stream import ResultSubscriber
from loopline.viewers.terminal import detect_preview, kitty_image, render_dashboard, sixel_image

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(name="synth_video")
def _synth_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_video(tmp_path_factory)


# -- schema ---------------------------------------------------------------------------------
def test_published_frame_gives_pileups_spacings_and_contours(synth_video: Path) -> None:
    """The real publisher's message (the truth through the daemon's measure step) read back."""
    header, jpeg = build_messages(synth_video)[0]
    assert header["schema"] == "loopline.frame/2"
    topic, h, j = parse_message([b"frame", json.dumps(header).encode(), jpeg])
    assert topic == "frame" and j == jpeg
    v = to_view(h, jpeg=j)
    doc = json.loads((synth_video / "truth.json").read_text())
    truth = doc["sequences"][0]
    n_lines = len(truth["frames"][0]["lines"])
    assert v.frame == 0 and v.nm_per_px == doc["nm_per_px"] and v.has_jpeg
    assert len(v.lines) == n_lines == v.n_dislocations
    assert len(v.loops) == v.n_loops == len(truth["frames"][0]["loops"])
    assert all(len(ln.points) >= 2 for ln in v.lines)  # centre lines (points_px)
    assert all(len(ln.contour) > 3 for ln in v.lines)  # mask outlines (contour_px)
    assert all("width_px" in ln.fields and "mean_abs_curvature_per_nm" in ln.fields
               for ln in v.lines)  # every other number of the tracks.csv row  # fmt: skip
    multi = [p for p in v.pileups if len(p.spacings_nm) >= 1]
    assert multi and all(s > 0 for p in multi for s in p.spacings_nm)
    pairs = {(q["pileup_id"], q["rank"]): q["spacing_nm"] for q in h["pairs"]}
    for p in v.pileups:
        assert p.spacings_nm == [pairs[(p.id, r)] for r in range(len(p.spacings_nm))]
        lead = [ln for ln in v.lines if ln.pileup == p.id and ln.rank == 0]
        assert [ln.id for ln in lead] == [p.lead_id]


def _row(kind: str, tid: int, **kw: object) -> dict:
    return {"series": "s1", "frame": 7, "time_s": 0.28, "kind": kind, "track_id": tid, **kw}


def test_frame_message_read_by_its_one_name_per_field() -> None:
    """The loopline.frame/2 layout written by hand: tracks.csv and pairs.csv rows."""
    h = {"schema": "loopline.frame/2", "seq": 3, "series": "s1", "index": 7, "time_s": 0.28,
         "shape": [64, 64], "px_nm": 0.5, "jpeg": {"width": 32, "height": 32, "scale": 0.5},
         "tracks": [
             _row("line", 4, cls=0, x_px=10, y_px=20, length_px=30.0, length_nm=15.0,
                  contour_px=[[0, 0], [1, 0], [1, 1]], points_px="0.0 0.0;4.0 0.0;'bad",
                  pileup_id=0, rank=0, velocity_nm_per_s=2.5, width_px=3.0),
             _row("line", 6, cls=0, x_px=12, y_px=30, length_px=30.0, length_nm=15.0,
                  contour_px=[[0, 0], [1, 0], [1, 1]], points_px="10 20;11 22;12 24;13 26",
                  pileup_id=0, rank=1, glide_x=1.0, glide_y=0.0, velocity_nm_per_s=None),
             _row("loop", 5, cls=1, x_px=40, y_px=40, major_px=8.0, minor_px=4.0,
                  major_nm=4.0, angle_deg=30.0, contour_px=[[38, 38], [42, 38], [42, 42]])],
         "pairs": [{"series": "s1", "frame": 7, "pileup_id": 0, "rank": 0, "track_id": 4,
                    "partner_id": 6, "spacing_px": 8.0, "spacing_nm": 4.0}],
         "row": {"n_dislocations": 2, "n_loops": 1}, "timings_ms": {"engine": 9.0},
         "counters": {"received": 8, "skipped": 1}}  # fmt: skip
    v = to_view(h, metrics={"fps": {"engine": 30.0}, "latency_ms": {"p50": 40, "p99": 90},
                            "counters": {"received": 5, "recorded": 8}})  # fmt: skip
    assert (v.frame, v.series, v.nm_per_px, v.jpeg_scale) == (7, "s1", 0.5, 0.5)
    assert v.counters == {"received": 8, "skipped": 1, "recorded": 8}  # frame's are fresher
    assert v.fps == {"engine": 30.0} and v.latency_p99_ms == 90 and v.stage_ms == {"engine": 9.0}
    (ln, ln2), (lp,) = v.lines, v.loops
    assert ln.id == 4 and ln.points == [] and ln.length_nm == 15  # a bad centre line: none
    assert ln.velocity_nm_s == 2.5 and ln.fields["width_px"] == 3.0
    assert ln2.points == [[10, 20], [11, 22], [12, 24], [13, 26]] and ln2.glide_dir == [1, 0]
    assert v.pileups == [PileupView(0, [4.0], 2.5, lead_id=4, spacings_nm_se=[None])]
    assert lp.id == 5 and lp.center == [40, 40] and lp.axes == [4.0, 2.0] and lp.major_nm == 4.0
    assert lp.angle_deg == 30.0 and lp.contour == [[38, 38], [42, 38], [42, 42]]


@pytest.mark.parametrize("parts", [[b"frame", b"{not json"], [b"frame", b"[1, 2]"], [b"\xff"]])
def test_malformed_messages_raise_value_error(parts: list[bytes]) -> None:
    with pytest.raises(ValueError, match="no JSON header"):
        parse_message(parts)


def test_header_without_frame_number() -> None:
    with pytest.raises(ValueError, match="expected a frame message with an index, got keys series"):
        to_view({"series": "x"})


# -- state ----------------------------------------------------------------------------------
def _view(frame: int, *, spacing: float = 50.0, x: float = 0.0, series: str = "a") -> FrameView:
    line = LineView(id=1, pileup=0, points=[[x, 0], [x, 10]], length_nm=20.0, velocity_nm_s=None,
                    centroid=[x, 5.0], glide_dir=[1.0, 0.0])  # fmt: skip
    return FrameView(frame=frame, series=series, time_s=frame * 0.1, nm_per_px=2.0,
                     lines=[line], n_dislocations=1,
                     pileups=[PileupView(0, [spacing, spacing * 2], None, lead_id=1)])


def test_state_velocity_from_centroids_along_glide_direction_and_alarms() -> None:
    st = ViewState(alarms=load_view_config(overrides={"alarms.min_spacing_nm": 30.0}).alarms)
    for f in range(6):
        st.update(_view(f, x=3.0 * f))  # 3 px / 0.1 s * 2 nm/px = 60 nm/s along +x
    (row,) = st.track_rows()
    assert row.velocity_nm_s == pytest.approx(60.0) and row.derived and row.age_frames == 5
    assert st.pileups[0].lead_velocity[-1] == pytest.approx(60.0)
    assert st.alarms() == []
    st.update(_view(6, spacing=20.0, x=18.0))
    assert st.alarms() == ["pile-up 0: spacing 20.0 nm < 30 nm"]
    st.update(_view(0, series="b"))  # a new series starts the curves again
    assert st.series_changes == 1 and len(st.pileups[0].mean_spacing) == 1


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([float("nan")]) == "" and sparkline([2, 2]) == "▄▄"


# -- config ---------------------------------------------------------------------------------
def test_config_unknown_key_and_range(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[publish]\nendpoint = "tcp://127.0.0.1:7000"\n[view]\nhistory = 50\n'
                 "[view.alarms]\nmin_spacing_nm = 12\n")  # fmt: skip
    cfg = load_view_config(f)
    assert cfg.endpoint == "tcp://127.0.0.1:7000" and cfg.history == 50
    assert cfg.alarms.min_spacing_nm == 12.0
    with pytest.raises(ViewConfigError, match=r"unknown config key 'view\.histroy'"):
        load_view_config(overrides={"histroy": 3})
    with pytest.raises(ViewConfigError, match=r"view.alarms.max_skipped_fraction must lie in"):
        load_view_config(overrides={"alarms.max_skipped_fraction": 2.0})
    with pytest.raises(ViewConfigError, match="ZeroMQ URL"):
        load_view_config(overrides={"endpoint": "localhost:5556"})


# -- stream ---------------------------------------------------------------------------------
def _pub(ctx: zmq.Context, endpoint: str = "tcp://127.0.0.1:*") -> tuple[zmq.Socket, str]:
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(endpoint)
    return s, s.getsockopt_string(zmq.LAST_ENDPOINT)


def _frame(seq: int, index: int | None = None) -> list[bytes]:
    h = {"schema": "loopline.frame/2", "seq": seq, "series": "s", "index": seq if index is None
         else index, "time_s": seq / 25, "tracks": [], "pairs": []}  # fmt: skip
    return [b"frame", json.dumps(h).encode()]


def test_subscriber_latest_wins_counts_drops_and_gaps_and_reconnects() -> None:
    ctx = zmq.Context()
    pub, ep = _pub(ctx)
    try:
        with ResultSubscriber(ep, stale_s=0.5) as sub:
            wait_for(lambda: (pub.send_multipart(_frame(0)), sub.stats().received)[1], 5,
                     "the subscription")  # fmt: skip
            time.sleep(0.3)  # let the handshake's extra frame-0 messages arrive
            first = sub.latest()
            assert first is not None
            before = sub.stats()
            pub.send_multipart([b"metrics", b'{"fps": {"engine": 12.5}}'])
            pub.send_multipart([b"frame", b"garbage"])
            # nobody looks while 30 frames arrive (with a hole of 5 in seq): the newest wins
            for i in range(1, 36):
                if not 10 <= i < 15:
                    pub.send_multipart(_frame(i))
                time.sleep(0.002)
            m = wait_for(lambda: (lambda m: m if m and m.view.frame == 35 else None)(
                sub.wait(first.seq, 0.2)), 5, "frame 35")  # fmt: skip
            st = sub.stats()
            assert st.gaps == 5 and st.malformed == 1
            assert st.received - before.received == 30
            assert st.viewer_dropped - before.viewer_dropped == 29  # only the newest was taken
            pub.send_multipart(_frame(36))
            m2 = sub.wait(m.seq, 5)
            assert m2 is not None and m2.view.fps == {"engine": 12.5}
            # the daemon restarts on the same port: the subscriber finds it again
            pub.close(0)
            time.sleep(0.8)
            pub, _ = _pub(ctx, ep)
            m3 = wait_for(lambda: (pub.send_multipart(_frame(0)), sub.wait(m2.seq, 0.2))[1],
                          10, "a frame after the restart")  # fmt: skip
            assert m3.view.frame == 0 and sub.stats().connected
    finally:
        pub.close(0)
        ctx.term()


# -- terminal rendering ---------------------------------------------------------------------
def test_dashboard_renders_fps_tracks_pileups(synth_video: Path) -> None:
    from rich.console import Console

    st = ViewState()
    msgs = build_messages(synth_video)
    for i, (h, _j) in enumerate(msgs[:6]):
        st.update(to_view(h, metrics={"fps": {"engine": 48.0, "measure": 300.0},
                                      "latency_ms": {"p50": 41, "p99": 88}}))  # fmt: skip
        assert st.latest is not None and st.latest.frame == i
    con = Console(record=True, width=150, force_terminal=False)
    con.print(render_dashboard(st, None, ViewConfig(), endpoint="tcp://x:1", preview=None))
    text = con.export_text()
    assert "fps" in text and "engine" in text and "48.0" in text and "88 ms" in text
    assert "pile-ups" in text and "tracks" in text and "length (nm)" in text
    assert "no alarms" in text


def test_preview_encoders_and_detection() -> None:
    img = np.zeros((12, 8, 3), np.uint8)
    k = kitty_image(img, cols=4, rows=2)
    assert k.startswith("\x1b_Ga=T,f=100,i=1,c=4,r=2,C=1") and k.endswith("\x1b\\")
    s = sixel_image(np.tile(np.arange(8, dtype=np.uint8) * 32, (12, 1)), levels=4)
    assert s.startswith("\x1bPq") and s.endswith("\x1b\\") and s.count("-") == 2
    assert detect_preview("auto", {"TERM": "xterm-kitty"}) == "kitty"
    assert detect_preview("auto", {"TERM": "xterm-kitty", "TMUX": "/tmp/x"}) == "off"
    assert detect_preview("auto", {"TERM": "xterm-256color"}) == "off"
    assert detect_preview("sixel", {}) == "sixel"


# -- web server (no browser) ----------------------------------------------------------------
def test_web_server_api_frame_and_page_fetch_nothing_outside(synth_video: Path) -> None:
    from loopline.viewers.web import ViewerServer

    with live_stream(synth_video) as endpoint, \
            ViewerServer(load_view_config(overrides={"endpoint": endpoint, "port": 0})) as srv:
        def get(path: str) -> bytes:
            with urllib.request.urlopen(srv.url + path, timeout=10) as r:
                return r.read()

        page = get("").decode()
        assert 'src="http' not in page and 'href="http' not in page and "//cdn" not in page
        snap = json.loads(get("api/next?after=0&timeout=8"))
        assert snap["view"]["lines"] and snap["stream"]["connected"]
        jpeg = get(f"frame/{snap['seq']}.jpg")
        assert jpeg[:2] == b"\xff\xd8"
        later = json.loads(get(f"api/next?after={snap['rev']}&timeout=8"))
        assert later["view"]["frame"] > snap["view"]["frame"]
        assert later["plots"] and later["tracks"]


def test_series_id_and_time_shown_as_read():
    """Issue 20: an epoch series id reads as a date-time; the curves' time is the frame's
    time_s, never the camera's epoch clock (which only fills in where time_s is missing)."""
    from loopline.viewers.schema import series_label
    from loopline.viewers.state import ViewState

    assert series_label("1716400000") == "2024-05-22 17:46:40 UTC"
    assert series_label("1716400000123").startswith("2024-05-22 17:46:40")
    assert series_label("0000000042") == "0000000042" and series_label("s0001") == "s0001"
    v = to_view({"index": 3, "series": "1716400000", "time_s": 0.3, "timestamp": 1716400000.3})
    assert v.series_label.startswith("2024-05-22") and v.time_s == 0.3
    st = ViewState()
    st.update(v)
    assert st.time_of(v) == 0.3
    a = to_view({"index": 0, "series": "x", "timestamp": 1716400000.0})
    b = to_view({"index": 1, "series": "x", "timestamp": 1716400000.5})
    assert a.time_s is None
    st = ViewState()
    st.update(a)
    st.update(b)
    assert list(st.count_time_s) == [0.0, 0.5]


def test_overlay_drawn_for_image_players():
    import cv2

    from loopline.viewers.overlay import draw_overlay, nice_bar

    assert nice_bar(512, 2.0) == (100.0, "200 nm")
    assert nice_bar(500, None)[1] == "100 px"
    v = to_view({"index": 0, "px_nm": 1.0, "shape": [64, 64], "tracks": [
        {"kind": "loop", "track_id": 1, "cls": 1, "x_px": 30, "y_px": 30, "major_px": 20,
         "contour_px": [[20, 20], [40, 20], [40, 40]]}]})
    img = np.full((64, 64, 3), 128, np.uint8)
    out = draw_overlay(img, v)
    assert (img == 128).all() and (out != 128).any()
    assert cv2.cvtColor(out, cv2.COLOR_BGR2HSV)[..., 1].max() > 100  # coloured outline


# -- issue 22: uncertainties and the daemon's alarms --------------------------------------
def _alarm(rule: str, state: str, received: int, frame: int = 3) -> AlarmEvent:
    return to_alarm({"schema": "loopline.alarm/1", "seq": received - 1, "series": "s",
                     "frame": frame, "time_s": frame / 10, "rule": rule, "state": state,
                     "value": 12.0, "threshold": 20.0, "unit": "nm",
                     "message": f"{rule} {state}: pile-up 0 mean spacing 12 nm"},
                    received=received)  # fmt: skip


def test_alarm_decoder_and_mean_se() -> None:
    ev = _alarm("spacing_low", "raise", 1)
    assert (ev.rule, ev.state, ev.frame, ev.value, ev.unit, ev.received) == (
        "spacing_low", "raise", 3, 12.0, "nm", 1)
    assert ev.message == "spacing_low raise: pile-up 0 mean spacing 12 nm"
    # NaN goes on the wire as null: an unknown value, not a crash
    assert to_alarm({"rule": "behind", "state": "clear", "value": None}).value is None
    with pytest.raises(ValueError, match="without a rule"):
        to_alarm({"state": "raise"})
    with pytest.raises(ValueError, match="must be 'raise' or 'clear'"):
        to_alarm({"rule": "x", "state": "maybe"})
    topic, h, _ = parse_message([b"alarm", json.dumps({"rule": "x", "state": "raise"}).encode()])
    assert topic == "alarm" and h["rule"] == "x"
    assert mean_se([3.0, 4.0]) == 2.5 and mean_se([]) is None
    assert mean_se([1.0, None, None]) is None  # fewer than half known
    assert mean_se([2.0, 2.0, None]) == pytest.approx(2.0 / 3**0.5)


def test_uncertainties_of_the_daemons_frame_message() -> None:
    h = {"schema": "loopline.frame/2", "seq": 0, "series": "s", "index": 5, "time_s": 0.5,
         "px_nm": 2.0, "shape": [64, 64], "alarms_active": ["spacing_low"],
         "tracks": [
             {"kind": "line", "track_id": 1, "cls": 0, "x_px": 10, "y_px": 10, "pileup_id": 0,
              "rank": 0, "length_nm": 40.0, "length_nm_se": 1.5, "velocity_nm_per_s": 12.0,
              "velocity_nm_per_s_se": 0.7, "points_px": "10 0;10 20"},
             {"kind": "line", "track_id": 2, "cls": 0, "x_px": 20, "y_px": 10, "pileup_id": 0,
              "rank": 1, "length_nm": 40.0, "velocity_nm_per_s": 9.0,
              "velocity_nm_per_s_se": None, "points_px": "20 0;20 20"},
             {"kind": "line", "track_id": 3, "cls": 0, "x_px": 30, "y_px": 10, "pileup_id": 0,
              "rank": 2, "points_px": "30 0;30 20"},
             {"kind": "loop", "track_id": 9, "cls": 1, "x_px": 50, "y_px": 50, "major_px": 8.0,
              "major_nm": 16.0, "major_nm_se": 0.4}],
         "pairs": [{"track_id": 1, "partner_id": 2, "pileup_id": 0, "rank": 0,
                    "spacing_nm": 20.0, "spacing_nm_se": 0.3},
                   {"track_id": 2, "partner_id": 3, "pileup_id": 0, "rank": 1,
                    "spacing_nm": 24.0, "spacing_nm_se": 0.4}],
         "row": {"n_dislocations": 3, "n_loops": 1, "mean_spacing_nm_se": 2.0,
                 "spacing_sd_nm": 2.83, "n_loops_lo": 0.17, "n_loops_hi": 2.3}}  # fmt: skip
    v = to_view(h)
    ln = {x.id: x for x in v.lines}
    assert (ln[1].velocity_nm_s_se, ln[1].length_nm_se, ln[2].velocity_nm_s_se) == (0.7, 1.5, None)
    assert v.loops[0].major_nm_se == 0.4
    (pu,) = v.pileups
    assert pu.spacings_nm == [20.0, 24.0] and pu.spacings_nm_se == [0.3, 0.4]
    assert pu.mean_spacing_nm_se == pytest.approx(0.25)  # sqrt(0.09 + 0.16) / 2
    assert (pu.lead_velocity_nm_s, pu.lead_velocity_nm_s_se) == (12.0, 0.7)
    assert (v.mean_spacing_nm_se, v.n_loops_lo, v.n_loops_hi) == (2.0, 0.17, 2.3)
    assert v.alarms_active == ["spacing_low"] and to_view({"index": 0}).alarms_active is None
    st = ViewState()
    st.update(v)
    h0 = st.pileups[0]
    assert list(h0.mean_spacing_se) == [pytest.approx(0.25)] and list(h0.lead_velocity_se) == [0.7]
    row = {r.id: r for r in st.track_rows()}[1]
    assert (row.velocity_nm_s_se, row.length_nm_se) == (0.7, 1.5)
    # a late joiner learns the raised rule from alarms_active, without its message
    (act,) = st.active_alarms()
    assert act.rule == "spacing_low" and act.state == "active" and act.frame == 5
    assert list(st.n_loops_hi) == [2.3]


def test_state_alarm_events_and_reconciliation_with_alarms_active() -> None:
    st = ViewState(alarm_log=3)
    st.on_alarm(_alarm("spacing_low", "raise", 1))
    st.on_alarm(_alarm("avalanche", "raise", 2))
    assert [e.rule for e in st.active_alarms()] == ["avalanche", "spacing_low"]  # newest first
    # the frame sent after both says so: nothing changes
    st.update(FrameView(frame=3, series="s", alarms_active=["avalanche", "spacing_low"]),
              alarms_before=2)  # fmt: skip
    assert {e.rule for e in st.active_alarms()} == {"avalanche", "spacing_low"}
    assert st.active_alarms()[0].message.startswith("avalanche raise")
    st.on_alarm(_alarm("spacing_low", "clear", 3, frame=4))
    assert [e.rule for e in st.active_alarms()] == ["avalanche"]
    # a frame sent before that clear (still listing the rule) must not raise it again
    st.update(FrameView(frame=3, series="s", alarms_active=["avalanche", "spacing_low"]),
              alarms_before=2)  # fmt: skip
    assert [e.rule for e in st.active_alarms()] == ["avalanche"]
    # a later frame without avalanche: its clear was lost; with behind: raised unseen
    st.update(FrameView(frame=5, series="s", alarms_active=["behind"]), alarms_before=3)
    assert [(e.rule, e.state) for e in st.active_alarms()] == [("behind", "active")]
    assert [(e.rule, e.state) for e in st.alarm_log()] == [
        ("spacing_low", "clear"), ("avalanche", "raise"), ("spacing_low", "raise")]
    assert len(st.alarm_log(1)) == 1 and st.alarm_events == 3
    # the pure function: an event that arrived after the frame wins over its list
    active = {"a": _alarm("a", "raise", 7)}
    assert reconcile_alarms(active, [], frame=1, series="s", last_received={"a": 7},
                            before=6) == active  # fmt: skip
    assert reconcile_alarms(active, [], frame=1, series="s", last_received={"a": 7},
                            before=7) == {}  # fmt: skip


def test_dashboard_shows_alarms_and_errors() -> None:
    from rich.console import Console

    st = ViewState()
    line = LineView(id=4, pileup=0, points=[[0, 0], [0, 9]], length_nm=30.0, velocity_nm_s=12.5,
                    velocity_nm_s_se=0.75, length_nm_se=1.25)  # fmt: skip
    st.on_alarm(_alarm("spacing_low", "raise", 1))
    st.update(FrameView(frame=3, series="s", lines=[line], n_dislocations=1,
                        alarms_active=["spacing_low"],
                        pileups=[PileupView(0, [20.0, 24.0], 12.5, lead_id=4,
                                            spacings_nm_se=[0.3, 0.4], mean_spacing_nm_se=0.25,
                                            lead_velocity_nm_s_se=0.75)]),
              alarms_before=1)  # fmt: skip
    con = Console(record=True, width=170, force_terminal=False)
    con.print(render_dashboard(st, None, ViewConfig(), endpoint="tcp://x:1"))
    text = con.export_text()
    assert "⚠ ALARM spacing_low" in text  # the heading line
    assert "alarms (1 raised)" in text
    assert "⚠ spacing_low: spacing_low raise: pile-up 0 mean spacing 12 nm" in text
    assert "raise spacing_low:" in text  # the event log
    assert "22.0 ± 0.2" in text and "12.5 ± 0.8" in text and "30.0 ± 1.2" in text


def test_real_publisher_alarms_and_errors_reach_the_web_snapshot(synth_video: Path) -> None:
    """The daemon's Publisher (its encoder) -> subscriber -> state -> /api/next: an alarm
    raised by the daemon's own rules, and the standard errors of the measure worker."""
    from viewer_support import AnalysedFeed

    from loopline.analysis.alarms import AlarmConfig
    from loopline.viewers.web import ViewerServer

    with AnalysedFeed(synth_video, fps=20) as feed, \
            ViewerServer(load_view_config(overrides={"endpoint": feed.endpoint,
                                                     "port": 0})) as srv:  # fmt: skip
        def snap(after: int) -> dict:
            with urllib.request.urlopen(srv.url + f"api/next?after={after}&timeout=5",
                                        timeout=10) as r:  # fmt: skip
                return json.loads(r.read())

        first = wait_for(lambda: (lambda s: s if s.get("view") else None)(snap(0)), 20,
                         "the first frame")  # fmt: skip
        feed.arm(AlarmConfig(spacing_below_nm=1000.0))  # raised when the next series starts

        def raised() -> dict | None:
            s = snap(first["rev"])
            act = s.get("daemon_alarms", {}).get("active", [])
            return s if any(a["state"] == "raise" for a in act) else None

        s = wait_for(raised, 30, "the spacing_low alarm on the page's API")
        (a,) = s["daemon_alarms"]["active"]
        sent = next(e for e in feed.events if e["rule"] == "spacing_low")
        assert a["rule"] == "spacing_low" and a["message"] == sent["message"]
        assert a["value"] == pytest.approx(sent["value"]) and a["unit"] == "nm"
        assert s["daemon_alarms"]["events"][0]["state"] == "raise"
        assert s["view"]["alarms_active"] == ["spacing_low"]

        def with_errors() -> dict | None:
            s = snap(0)
            p = next(iter(s.get("plots", {}).values()), {})
            ok = [x for x in p.get("lead_velocity_nm_s_se", []) if x is not None]
            sp = [x for x in p.get("mean_spacing_nm_se", []) if x is not None and x > 0]
            return s if len(ok) >= 2 and sp else None  # both need a few frames of history

        s = wait_for(with_errors, 30, "velocity and spacing standard errors in the plots")
        p = next(iter(s["plots"].values()))
        assert all(x > 0 for x in p["lead_velocity_nm_s_se"] if x is not None)
        assert any(x is not None and x > 0 for x in p["mean_spacing_nm_se"])
        assert any(r["velocity_nm_s_se"] for r in s["tracks"] if r["kind"] == "line")
        assert any(x is not None for x in s["counts"]["n_loops_hi"])
