"""The overlay viewer page in a real headless Chromium, driven by Selenium.

Set-up (Debian): ``apt-get install -y chromium chromium-driver`` and ``pip install selenium``.
Selenium is pointed at /usr/bin/chromedriver explicitly, so selenium-manager never runs and
nothing is downloaded. Where Chromium, its driver or Selenium is missing the test is skipped
with a reason that says what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from viewer_support import ROOT, env, live_stream, make_synth_video, stop, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)
SHOT = Path(os.environ.get("LOOPLINE_VIEWER_SCREENSHOT", "/tmp/loopline-viewer.png"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _skip_reason() -> str | None:
    missing = []
    if CHROMIUM is None:
        missing.append("chromium")
    if DRIVER is None:
        missing.append("chromium-driver")
    if missing:
        return (f"!!! BROWSER TEST SKIPPED: Debian package(s) {', '.join(missing)} not installed "
                f"(apt-get install -y chromium chromium-driver) !!!")  # fmt: skip
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "!!! BROWSER TEST SKIPPED: selenium not installed (pip install selenium) !!!"
    return None


@pytest.fixture(name="browser")
def _browser(tmp_path: Path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="loopline-chromium-", dir=tmp_path)
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,900",
              f"--user-data-dir={profile}"):  # fmt: skip
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_overlay_page_shows_live_frames_with_overlay(browser, tmp_path_factory, tmp_path) -> None:
    video = make_synth_video(tmp_path_factory)
    with live_stream(video, fps=10, run_dir=tmp_path / "run") as endpoint:
        viewer = subprocess.Popen(
            [sys.executable, "-m", "loopline", "view", "--web", "--port", "0",
             "--endpoint", endpoint, "--duration", "80"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(),
        )  # fmt: skip
        try:
            line = viewer.stdout.readline() if viewer.stdout else ""
            assert "serving http://127.0.0.1:" in line, line + (viewer.stderr.read() or "")
            url = line.split("serving ")[1].split()[0]
            browser.get(url)
            frame = browser.find_element("id", "frame")
            first = int(wait_for(lambda: frame.text.strip().isdigit() and frame.text, 30,
                                 "the first frame on the page"))  # fmt: skip
            wait_for(lambda: int(frame.text) > first, 20, "the frame number to advance")
            canvas = browser.find_element("id", "view")
            assert int(canvas.get_attribute("data-overlay-items")) > 3
            # the overlay is really on the canvas: grey TEM frame + coloured masks and lines
            coloured = browser.execute_script("""
                const c = document.getElementById('view');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) {
                  const mx = Math.max(d[i], d[i+1], d[i+2]), mn = Math.min(d[i], d[i+1], d[i+2]);
                  if (mx - mn > 80) n++;
                }
                return n;""")
            assert coloured > 200, f"only {coloured} coloured pixels: no overlay drawn"
            drops = browser.find_element("id", "drops").text
            assert drops.isdigit()
            # every number of a track's tracks.csv row, on its table row (hover)
            titles = browser.execute_script(  # the table is redrawn with every frame
                "return [...document.querySelectorAll('#tracks tr[title]')].map(r => r.title)")
            assert any("width_px " in t and "mean_abs_curvature_per_nm " in t for t in titles)
            _check_charts(browser)
            assert browser.execute_script("return window.loopline.drawn") >= 2
            # switching the layers off leaves the bare frame (no coloured pixels but the bar)
            for layer in ("masks", "skeleton", "loops", "ids"):
                browser.find_element("id", f"layer-{layer}").click()
            browser.find_element("id", "pause").click()
            plain = int(canvas.get_attribute("data-overlay-items"))
            assert plain == 1  # the scale bar only
            browser.find_element("id", "pause").click()
            for layer in ("masks", "skeleton", "loops", "ids"):
                browser.find_element("id", f"layer-{layer}").click()
            wait_for(lambda: int(canvas.get_attribute("data-overlay-items")) > 3, 10,
                     "the overlay to come back")  # fmt: skip
            shot = tmp_path / "viewer.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            try:
                shutil.copyfile(shot, SHOT)
            except OSError:
                pass
        finally:
            stop(viewer)


def _check_charts(browser) -> None:
    """Issue 20: 1-2-5 ticks with units and a legend; no spacing or count below 0; the
    curves end at the frame's own time (the header's t); the series id readable."""
    import json
    import re

    from viewer_support import wait_for

    counts = browser.find_element("id", "plot-counts")
    wait_for(lambda: int(counts.get_attribute("data-points") or 0) >= 4, 20, "count curves")
    for cid, nonneg in (("plot-counts", True), ("plot-spacing", True), ("plot-velocity", False)):
        c = browser.find_element("id", cid)
        if int(c.get_attribute("data-points") or 0) == 0:
            continue  # no pile-up with a spacing in this stream
        yt = json.loads(c.get_attribute("data-yticks"))
        xt = json.loads(c.get_attribute("data-xticks"))
        assert len(yt) >= 3 and len(xt) >= 2, (cid, yt, xt)
        for t in (yt, xt):  # equal steps of 1, 2 or 5 times a power of ten
            step = t[1] - t[0]
            mant = step / 10 ** __import__("math").floor(__import__("math").log10(step))
            assert any(abs(mant - m) < 1e-6 for m in (1, 2, 5, 10)), (cid, t)
        if nonneg:
            assert min(yt) >= 0, (cid, yt)
        assert c.get_attribute("data-legend"), cid
    # the charts' time is the frame's time (series.csv's time_s, not the arrival clock)
    browser.find_element("id", "pause").click()
    try:
        t_head = float(browser.find_element("id", "time").text)
        t_now = float(counts.get_attribute("data-tnow"))
        assert abs(t_head - t_now) < 0.006, (t_head, t_now)
        snap = browser.execute_script("return window.loopline.snap")
        assert abs(t_now - snap["view"]["time_s"]) < 1e-6
        assert max(snap["counts"]["t"]) <= t_now + 1e-3  # stored to 4 decimals
    finally:
        browser.find_element("id", "pause").click()
    series = browser.find_element("id", "series").text
    assert series and not re.fullmatch(r"\d{10}", series), series


def test_page_shows_error_bands_and_the_daemons_alarms(browser, tmp_path_factory) -> None:
    """Issue 22: translucent ± se bands around the spacing and velocity curves, and an alarm
    raised by the daemon's own rules (published by its Publisher) in the alarms panel and a
    banner."""
    import json

    from viewer_support import AnalysedFeed

    from loopline.analysis.alarms import AlarmConfig

    video = make_synth_video(tmp_path_factory)
    with AnalysedFeed(video, fps=10) as feed:
        viewer = subprocess.Popen(
            [sys.executable, "-m", "loopline", "view", "--web", "--port", "0",
             "--endpoint", feed.endpoint, "--duration", "80"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(),
        )  # fmt: skip
        try:
            line = viewer.stdout.readline() if viewer.stdout else ""
            assert "serving http://127.0.0.1:" in line, line + (viewer.stderr.read() or "")
            browser.get(line.split("serving ")[1].split()[0])
            frame = browser.find_element("id", "frame")
            wait_for(lambda: frame.text.strip().isdigit(), 30, "the first frame on the page")
            assert not browser.find_element("id", "alarm-banner").is_displayed()

            # -- bands: around each curve, inside the plot, not degenerate ----------------
            charts = ("plot-spacing", "plot-velocity")

            def bands(cid: str) -> list[dict]:
                c = browser.find_element("id", cid)
                return json.loads(c.get_attribute("data-bands") or "[]")

            def all_banded() -> bool:
                return all(any(b["n"] >= 3 for b in bands(cid)) for cid in charts)

            pause = browser.find_element("id", "pause")
            for _ in range(20):  # paused, so the canvas holds still while it is read
                wait_for(all_banded, 30, "error bands on both charts")
                pause.click()
                if all_banded():
                    break
                pause.click()
            else:
                raise AssertionError("the bands kept vanishing (a new series each time?)")
            try:
                for cid in charts:
                    _check_bands(browser, cid, bands(cid))
            finally:
                pause.click()

            # -- an alarm of the daemon's rules: panel, events, banner --------------------
            feed.arm(AlarmConfig(spacing_below_nm=1000.0))  # raised as the next series starts
            sel = "#alarms-active .alarm-active[data-rule='spacing_low']"
            wait_for(lambda: browser.find_elements("css selector", sel), 30,
                     "the raised alarm in the alarms panel")  # fmt: skip
            sent = next(e for e in feed.events if e["rule"] == "spacing_low")
            assert sent["state"] == "raise" and "mean spacing" in sent["message"]
            pause.click()  # the panels are redrawn with every frame: hold them still
            try:
                (item,) = browser.find_elements("css selector", sel)
                assert item.find_element("css selector", ".msg").text == sent["message"]
                assert item.value_of_css_property("border-left-color") == "rgba(255, 77, 77, 1)"
                rows = browser.find_elements("css selector", "#alarm-events tr.raise")
                assert rows and sent["message"] in rows[0].text and "spacing_low" in rows[0].text
                banner = browser.find_element("id", "alarm-banner")
                assert banner.is_displayed() and sent["message"] in banner.text, banner.text
                assert browser.title.startswith("⚠")
                shot = tmp_path_factory.mktemp("shot") / "alarm.png"  # tall: the panels too
                browser.set_window_size(1400, 2000)
                assert browser.save_screenshot(str(shot))
                try:
                    shutil.copyfile(shot, SHOT.with_name(SHOT.stem + "-alarm.png"))
                except OSError:
                    pass
                browser.find_element("id", "alarm-dismiss").click()
                assert not banner.is_displayed()
            finally:
                pause.click()
            # dismissed, the banner stays away while the alarm stays in the panel
            drawn = browser.execute_script("return window.loopline.drawn")
            wait_for(lambda: browser.execute_script("return window.loopline.drawn") > drawn + 2,
                     20, "more frames")  # fmt: skip
            assert not banner.is_displayed()
            assert browser.find_elements("css selector", sel)
        finally:
            stop(viewer)


def _band_painted(browser, cid: str, bands: list[dict]) -> int:
    """Pixels of the chart in a band's paint: its curve's colour at alpha 0.25 (the canvas is
    transparent; the page's background shows through), which nothing else on it has."""
    pids = sorted({int(b["name"].split()[-1]) for b in bands})
    return browser.execute_script("""
        const c = document.getElementById(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const hex = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
        const want = arguments[1].map((p) => hex(COLORS[p % COLORS.length]));
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
          if (Math.abs(d[i + 3] - 64) <= 8 && want.some((w) => Math.abs(d[i] - w[0])
                + Math.abs(d[i + 1] - w[1]) + Math.abs(d[i + 2] - w[2]) < 24)) n++;
        return n;""", cid, pids)  # fmt: skip


def _check_bands(browser, cid: str, got: list[dict]) -> None:
    """Each band point: its upper end above the curve, its lower end below, both inside the
    plot; some width; painted in the curve's colour; the chart says what the band is."""
    c = browser.find_element("id", cid)
    top, bottom = float(c.get_attribute("data-plot-top")), float(
        c.get_attribute("data-plot-bottom"))  # fmt: skip
    widths = []
    for b in got:
        assert b["name"].startswith("pile-up "), b
        for x, y, lo, hi in zip(b["x"], b["y"], b["lo"], b["hi"], strict=True):
            # canvas y grows downwards: the upper end (hi) is above the curve
            assert top - 0.1 <= hi <= y + 0.2 <= lo + 0.4 <= bottom + 0.5, (cid, b)
            assert 0 < x <= c.size["width"], (cid, x)
            widths.append(lo - hi)
    assert widths and max(widths) >= 0.5, (cid, "bands of no width", widths)
    title = browser.execute_script("return document.getElementById(arguments[0])"
                                   ".closest('.box').querySelector('h3').textContent", cid)
    assert "band: ± 1 standard error" in title, title
    painted = _band_painted(browser, cid, got)
    assert painted >= 0.5 * sum(b["n"] for b in got), (cid, painted, got)
