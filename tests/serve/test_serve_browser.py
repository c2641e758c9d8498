"""The browser page in a real browser: headless Chromium with a fake camera playing the bundled
clip streams to the server, result frames arrive and draw on the canvas, and an offline job runs
through the form to its download link. A screenshot is saved as an artefact."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from cdp import Browser, find_chromium
from needs import missing
from serve_support import DRIVING, SOURCE, Server, clip_frames, write_y4m

CANVAS_STATS = """(() => {
  const c = document.getElementById('result');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0, sum = 0, sq = 0;
  for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; n++; sum += v; sq += v * v; }
  const mean = sum / n;
  return {mean, std: Math.sqrt(sq / n - mean * mean)};
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        missing("no Chromium: install Debian's `chromium` (scripts/setup.sh does, with apt-get)")
    return path


def test_page_streams_the_camera_and_runs_a_job(server: Server, chromium: str, tmp_path: Path,
                                                artifacts: Path) -> None:
    frames = [cv2.resize(f, (256, 256)) for f in clip_frames(28, size=256)]
    camera = write_y4m(tmp_path / "camera.y4m", frames)
    browser = Browser(chromium, tmp_path / "profile", ["--use-fake-ui-for-media-stream",
                                                        "--use-fake-device-for-media-stream",
                                                        f"--use-file-for-fake-video-capture={camera}"])
    try:
        browser.navigate(server.url + "/")
        assert browser.evaluate("document.title") == "frvd-engine"
        browser.set_files("#live-source", [SOURCE])
        browser.evaluate("document.getElementById('live-fps').value = '8'")
        browser.evaluate("document.getElementById('start').click()")
        browser.wait_for("window.frvd.state === 'streaming' || window.frvd.error", 60)
        assert browser.evaluate("window.frvd.error") is None
        browser.wait_for("window.frvd.stats.received >= 12 || window.frvd.error", 120)
        stats = browser.evaluate("window.frvd.stats")
        assert browser.evaluate("window.frvd.error") is None, stats
        assert stats["received"] >= 12 and stats["sent"] >= stats["received"] and stats["latencyMs"] > 0
        canvas = browser.evaluate(CANVAS_STATS)
        assert canvas["std"] > 5 and 5 < canvas["mean"] < 250, canvas  # a picture, not a blank canvas
        assert "fps" in browser.evaluate("document.getElementById('stats').textContent")
        # the smoothing slider and a source switch reach the running session (engine/serve/live.py)
        browser.evaluate("(() => { const s = document.getElementById('smooth'); s.value = '0.5'; "
                         "s.dispatchEvent(new Event('input')); })()")
        browser.wait_for("(window.frvd.controls && window.frvd.controls.controls.smooth === 0.5) "
                         "|| window.frvd.error", 30)
        browser.set_files("#switch-source", [SOURCE])
        browser.wait_for("window.frvd.source || window.frvd.error", 60)
        assert browser.evaluate("window.frvd.error") is None
        received = browser.evaluate("window.frvd.stats.received")
        browser.wait_for(f"window.frvd.stats.received >= {received + 4} || window.frvd.error", 60)

        browser.set_files("#job-form input[name=source]", [SOURCE])
        browser.set_files("#job-form input[name=driving]", [DRIVING])
        browser.evaluate("document.querySelector('#job-form input[name=max_frames]').value = '4'")
        browser.evaluate("document.querySelector('#job-form input[name=steps]').value = '1'")
        browser.evaluate("document.querySelector('#job-form button[type=submit]').click()")
        browser.wait_for("window.frvd.jobDone || window.frvd.error", 120)
        assert browser.evaluate("window.frvd.error") is None
        assert browser.evaluate("document.getElementById('job-progress').value") == 1
        link = browser.evaluate("(() => { const a = document.getElementById('job-download');"
                                " return {hidden: a.hidden, href: a.href, name: a.download}; })()")
        assert not link["hidden"] and link["href"].startswith("blob:") and link["name"].endswith(".mp4")
        browser.wait_for("document.getElementById('job-video').readyState >= 2", 30)  # the MP4 plays

        shot = browser.screenshot(artifacts / "serve_browser.png")
        assert shot.stat().st_size > 20_000
        browser.evaluate("document.getElementById('stop').click()")
        browser.wait_for("window.frvd.state === 'closed'", 60)
        closed = browser.evaluate("[window.frvd.closeCode, window.frvd.error]")
        assert closed == [1000, None], closed
        assert not browser.exceptions, browser.exceptions
    finally:
        browser.close()
