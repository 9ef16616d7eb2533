"""``loopline view`` in a real terminal (tmux) against a live result stream.

Needs the Debian package ``tmux``; skipped with a loud reason where it is missing.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import uuid

import pytest
from viewer_support import ROOT, live_stream, make_synth_video, wait_for

TMUX = shutil.which("tmux")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def _tmux(sock: str, *args: str) -> str:
    # a tmux server of our own (-L) with no user config: the user's tmux is left alone
    return subprocess.run([TMUX, "-L", sock, "-f", "/dev/null", *args], capture_output=True,
                          text=True, timeout=10).stdout  # fmt: skip


@pytest.mark.skipif(TMUX is None, reason="!!! TMUX TEST SKIPPED: apt-get install -y tmux !!!")
def test_dashboard_in_tmux_shows_fps_and_tracks(tmp_path_factory, tmp_path) -> None:
    video = make_synth_video(tmp_path_factory)
    sock = session = f"loopline-view-{uuid.uuid4().hex[:8]}"
    with live_stream(video, fps=10, run_dir=tmp_path / "run") as endpoint:
        # rich would believe COLUMNS/LINES inherited from the test runner over the pane size
        cmd = (f"unset COLUMNS LINES; cd {shlex.quote(str(ROOT))} && "
               f"{shlex.quote(sys.executable)} -m loopline view "
               f"--endpoint {endpoint} --preview off --duration 40 2>&1; sleep 30")  # fmt: skip
        _tmux(sock, "new-session", "-d", "-s", session, "-x", "160", "-y", "60", cmd)
        _tmux(sock, "set-option", "-t", session, "window-size", "manual")
        _tmux(sock, "resize-window", "-t", session, "-x", "160", "-y", "60")
        try:
            def screen() -> str:
                return _tmux(sock, "capture-pane", "-p", "-t", session)

            def track_rows(s: str) -> list[str]:
                return [ln for ln in s.splitlines() if "│ line " in ln]

            try:
                text = wait_for(lambda: (lambda s: s if len(track_rows(s)) >= 3 and "fps" in s
                                         else None)(screen()), 30,
                                "fps and track rows on the tmux screen")  # fmt: skip
            except AssertionError as e:
                raise AssertionError(f"{e}; the screen:\n{screen()}") from None
            assert "engine" in text and "latency p99" in text and "received" in text
            assert "pile-ups" in text and "frame" in text
            # a track row: id, kind, length (nm), velocity (nm/s), age
            cells = [c.strip() for c in track_rows(text)[0].split("│")[1:-1]]
            assert cells[0].isdigit() and cells[1] == "line"
            assert float(cells[2].split("±")[0]) > 0  # length, ± its se where the daemon has one
        finally:
            _tmux(sock, "kill-server")
