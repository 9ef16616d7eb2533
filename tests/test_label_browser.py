"""The labelling page in a real headless Chromium, driven by Selenium (mouse and keys).

Set-up as for tests/test_viewer_browser.py (``apt-get install -y chromium chromium-driver``,
``pip install selenium``); skipped with a reason that says what to install where they are
missing. Selenium is pointed at the system chromedriver, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_viewer_browser import _browser, _skip_reason  # noqa: F401  (the `browser` fixture)
from viewer_support import ROOT, env, stop, wait_for

SHOT = Path(os.environ.get("LOOPLINE_LABEL_SCREENSHOT", "/tmp/loopline-label.png"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(name="frames")
def _frames(tmp_path: Path) -> Path:
    if _skip_reason():
        pytest.skip(_skip_reason())
    out = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "loopline", "synth", "--preset", "M2", "--count", "2",
                    "--set", "width=128", "--set", "height=128", "--seed", "0", "--jobs", "1",
                    "--out", str(out)], check=True, cwd=ROOT, env=env(),
                   capture_output=True)  # fmt: skip
    return out / "images"


def _url_of(server: subprocess.Popen) -> str:
    """The page's address from the server's first lines (log lines may come before it)."""
    seen = []
    for _ in range(20):
        line = server.stdout.readline() if server.stdout else ""
        seen.append(line)
        if "serving http://127.0.0.1:" in line:
            return line.split("serving ")[1].split()[0]
        if not line:
            break
    stop(server)
    raise AssertionError("loopline label did not start: " + "".join(seen)
                         + (server.stderr.read() if server.stderr else ""))  # fmt: skip


def _canvas(browser, key: str) -> str:
    return browser.find_element("id", "view").get_attribute(f"data-{key}")


def _settled(browser, stem: str | None = None) -> bool:
    """The page shows a frame (``stem``), its proposals are in and no save is in flight."""
    ok = _canvas(browser, "ready") == "1" and _canvas(browser, "proposals-loaded") == "1"
    ok = ok and _canvas(browser, "pending") == "0"
    return ok and (stem is None or _canvas(browser, "stem") == stem)


def _click_at(browser, points: list[tuple[float, float]]) -> None:
    """Click frame pixels on the canvas, one after the other."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element("id", "view")
    for x, y in points:
        dx, dy = browser.execute_script("return window.labeller.clientOffset(arguments[0], "
                                        "arguments[1])", x, y)  # fmt: skip
        ActionChains(browser).move_to_element_with_offset(canvas, round(dx), round(dy)).pause(
            0.35
        ).click().perform()  # fmt: skip  (the pause: two clicks are no double-click)


def _drag(browser, a: tuple[float, float], b: tuple[float, float]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element("id", "view")
    off = [browser.execute_script("return window.labeller.clientOffset(arguments[0], "
                                  "arguments[1])", *p) for p in (a, b)]  # fmt: skip
    (ActionChains(browser).move_to_element_with_offset(canvas, round(off[0][0]), round(off[0][1]))
     .click_and_hold().move_by_offset(round(off[1][0] - off[0][0]) // 2,
                                      round(off[1][1] - off[0][1]) // 2)
     .move_to_element_with_offset(canvas, round(off[1][0]), round(off[1][1]))
     .release().perform())  # fmt: skip


def _keys(browser, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(browser)
    for k in keys:
        chain = chain.send_keys(k)
    chain.perform()


def _saved(browser, n: int) -> None:
    wait_for(lambda: int(_canvas(browser, "saved")) >= n and _canvas(browser, "pending") == "0",
             15, f"save #{n}")  # fmt: skip
    assert _canvas(browser, "errors") == "0", browser.find_element("id", "status").text


def test_label_two_frames_reload_and_read_back(browser, frames: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from loopline.evaluation.data import Dataset

    out = tmp_path / "labelled"
    server = subprocess.Popen(
        [sys.executable, "-m", "loopline", "label", str(frames), "--out", str(out),
         "--model", "defects", "--port", "0", "--duration", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(),
    )  # fmt: skip
    try:
        url = _url_of(server)
        browser.get(url)
        s0, s1 = "M2-0-00000", "M2-0-00001"
        wait_for(lambda: _settled(browser, s0), 30, "frame 1 and its proposals")
        assert browser.find_element("id", "model").text == "defects"
        assert "slip trace" in browser.find_element("id", "shortcuts").text
        n_prop = int(_canvas(browser, "proposals"))
        assert n_prop >= 2, "the shipped model proposed fewer than 2 lines on an M2 frame"

        saves = 0

        def saved() -> None:  # the page saved the edit just made (one POST per edit)
            nonlocal saves
            saves += 1
            _saved(browser, saves)

        # frame 1: draw a dislocation (D, three clicks, Enter), widen it (])
        _keys(browser, "d")
        _click_at(browser, [(20, 100), (60, 90), (100, 70)])
        _keys(browser, Keys.ENTER)
        saved()
        assert _canvas(browser, "labels") == "1"
        _keys(browser, "]")
        saved()
        # accept one proposal (Tab selects it, A accepts), mark the next a slip trace (S)
        _keys(browser, "v", Keys.TAB, "a")
        saved()
        _keys(browser, Keys.TAB, "s")
        saved()
        assert (_canvas(browser, "labels"), _canvas(browser, "slips")) == ("2", "1")
        assert int(_canvas(browser, "proposals")) == n_prop - 2

        # frame 2 (arrow key): draw a loop (L, drag a box), then one more and undo it
        _keys(browser, Keys.ARROW_RIGHT)
        wait_for(lambda: _settled(browser, s1), 30, "frame 2")
        _keys(browser, "l")
        _drag(browser, (30, 30), (60, 50))
        saved()
        _drag(browser, (80, 80), (100, 110))
        saved()
        assert _canvas(browser, "labels") == "2"
        ActionChains(browser).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
        saved()
        assert _canvas(browser, "labels") == "1"
        # a loop polygon (P, two clicks, a double-click ends it)
        _keys(browser, "p")
        _click_at(browser, [(70, 20), (110, 20)])
        dx, dy = browser.execute_script("return window.labeller.clientOffset(90, 50)")
        canvas = browser.find_element("id", "view")
        ActionChains(browser).move_to_element_with_offset(canvas, round(dx), round(dy)).pause(
            0.35).double_click().perform()  # fmt: skip
        saved()
        assert _canvas(browser, "labels") == "2"

        # reload: both frames' labels are still there, in the page
        browser.refresh()
        wait_for(lambda: _settled(browser, s1), 30, "frame 2 after the reload")
        assert _canvas(browser, "labels") == "2"
        loop, polygon = browser.execute_script("return window.labeller.items")
        assert loop["kind"] == "ellipse" and loop["role"] == "label"
        assert abs(loop["center"][0] - 45) < 3 and abs(loop["axes"][0] - 30) < 4
        assert polygon["kind"] == "polygon" and len(polygon["points"]) == 3
        _keys(browser, Keys.ARROW_LEFT)
        wait_for(lambda: _settled(browser, s0), 30, "frame 1 after the reload")
        assert (_canvas(browser, "labels"), _canvas(browser, "slips")) == ("2", "1")
        # the proposals accepted or marked are not proposed again
        assert int(_canvas(browser, "proposals")) == n_prop - 2
        drawn = browser.execute_script("return window.labeller.items.filter("
                                       "(i) => i.from === 'drawn')[0]")  # fmt: skip
        assert len(drawn["points"]) == 3 and abs(drawn["points"][0][0] - 20) < 2
        assert drawn["width"] == 6.5
        assert "✓ 2 +1st" in browser.find_element("id", "frames").text
        assert browser.execute_script("return window.labeller.jsErrors") == []
        shot = tmp_path / "label.png"
        assert browser.save_screenshot(str(shot))
        try:
            SHOT.write_bytes(shot.read_bytes())
        except OSError:
            pass
    finally:
        stop(server)

    # ...and in DIR: YOLO-seg labels, polylines, COCO, read by loopline eval's Dataset
    assert (out / "labels" / f"{s0}.txt").read_text().count("\n") == 2
    assert [ln.split()[0] for ln in (out / "labels" / f"{s1}.txt").read_text().splitlines()] == [
        "1", "1"]  # fmt: skip
    poly = json.loads((out / "polylines" / f"{s0}.json").read_text())
    assert [i["from"] for i in poly["instances"]] == ["drawn", "proposal"]
    assert len(poly["slip_traces"]) == 1 and len(poly["proposals"]["done"]) == 2
    assert len(json.loads((out / "coco.json").read_text())["annotations"]) == 4
    ds = Dataset(out)
    assert [ds.frame(i).classes.tolist() for i in range(len(ds))] == [[0, 0], [1, 1]]
    assert ds.frame(0).distractors is not None and ds.frame(0).distractors.any()


def test_label_frames_from_the_live_viewer(browser, tmp_path_factory, tmp_path: Path) -> None:
    """Issue 16: ``loopline view --web --label-out DIR``: 'label this frame' on the viewer
    adds the frame on screen to the labelling page at /label/ (same server), which opens in
    its own tab; two frames labelled, the page reloaded, the labels still there and in DIR."""
    from selenium.webdriver.common.keys import Keys
    from viewer_support import live_stream, make_synth_video

    from loopline.evaluation.data import Dataset

    if _skip_reason():
        pytest.skip(_skip_reason())
    video = make_synth_video(tmp_path_factory)
    out = tmp_path / "labelled"
    with live_stream(video, fps=10) as endpoint:
        viewer = subprocess.Popen(
            [sys.executable, "-m", "loopline", "view", "--web", "--port", "0", "--endpoint",
             endpoint, "--label-out", str(out), "--label-model", "defects", "--duration", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(),
        )  # fmt: skip
        try:
            url = _url_of(viewer)
            line = viewer.stdout.readline() if viewer.stdout else ""
            assert f"labelling page {url}label/" in line, line
            browser.get(url)
            grab = browser.find_element("id", "grab")
            wait_for(lambda: grab.is_displayed() and browser.execute_script(
                "return window.loopline.drawn") >= 2, 30, "the viewer's frames")  # fmt: skip
            viewer_tab = browser.current_window_handle
            stems = []
            for k in range(2):
                seq = browser.execute_script("window.loopline.grabbed = null; "
                                             "return window.loopline.seq")  # fmt: skip
                grab.click()
                wait_for(lambda k=k: len(browser.window_handles) == 2
                         and browser.execute_script("return window.loopline.grabbed"), 15,
                         "the labelling tab")  # fmt: skip
                stem = browser.execute_script("return window.loopline.grabbed")
                assert stem not in stems, (stem, seq)
                stems.append(stem)
                browser.switch_to.window(next(h for h in browser.window_handles
                                          if h != viewer_tab))  # fmt: skip
                wait_for(lambda s=stem: _settled(browser, s), 40, f"{stem} and its proposals")
                assert browser.current_url.startswith(f"{url}label/")
                _keys(browser, "d")  # a dislocation: three clicks, Enter
                _click_at(browser, [(20, 100), (60, 90), (100, 70)])
                _keys(browser, Keys.ENTER)
                _saved(browser, 1)
                assert _canvas(browser, "labels") == "1"
                browser.switch_to.window(viewer_tab)
                wait_for(lambda s=seq: browser.execute_script("return window.loopline.seq") > s
                         + 3, 20, "newer frames on the viewer")  # fmt: skip
            # the labelling tab reloaded: both frames and their labels are still there
            browser.switch_to.window(next(h for h in browser.window_handles if h != viewer_tab))
            browser.refresh()
            wait_for(lambda: _settled(browser, stems[1]), 40, "the page after the reload")
            assert _canvas(browser, "labels") == "1"
            frames = browser.execute_script(
                "return fetch('api/frames').then((r) => r.json())")  # fmt: skip
            assert [f["stem"] for f in frames["frames"]] == stems and frames["live"]
            assert all(f["labelled"] and f["instances"] == 1 for f in frames["frames"])
            assert browser.execute_script("return window.labeller.jsErrors") == []
        finally:
            stop(viewer)
    ds = Dataset(out)  # what loopline adapt and eval read
    assert len(ds) == 2 and all(ds.frame(i).classes.tolist() == [0] for i in range(2))
    assert sorted(p.stem for p in (out / "images").iterdir()) == sorted(stems)
