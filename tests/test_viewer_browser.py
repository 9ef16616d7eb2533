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
        assert max(snap["counts"]["t"]) <= t_now + 1e-6
    finally:
        browser.find_element("id", "pause").click()
    series = browser.find_element("id", "series").text
    assert series and not re.fullmatch(r"\d{10}", series), series
