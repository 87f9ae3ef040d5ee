"""End to end: `videofusion web` (built-in demo model) driven by Debian's headless Chromium via Playwright.

Needs `apt-get install chromium` and `pip install playwright` (never `playwright install`: the system
Chromium is used through executable_path). Skips only when one of the two is missing. Screenshots and
the server log go to $VIDEOFUSION_ARTIFACTS (default tests/artifacts/, git-ignored by a file it writes).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = os.environ.get("VIDEOFUSION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NUM_FRAMES, STEPS = 8, 2  # the server's limits; the form's defaults are clamped to them
REPO = Path(__file__).resolve().parents[2]

# CI (.ci/run) installs Chromium and sets VIDEOFUSION_REQUIRE_BROWSER=1: there a missing browser fails.
_REQUIRED = os.environ.get("VIDEOFUSION_REQUIRE_BROWSER") == "1"
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    _why = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VIDEOFUSION_CHROMIUM)"
    if _REQUIRED:
        raise RuntimeError(_why)
    pytest.skip(_why, allow_module_level=True)
if _REQUIRED:
    import playwright.sync_api as sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("VIDEOFUSION_ARTIFACTS") or REPO / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("VIDEOFUSION_ARTIFACTS"):
        (path / ".gitignore").write_text("*\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`videofusion web` in a subprocess on a free local port; yields its URL."""
    port, cwd, tmp = free_port(), tmp_path_factory.mktemp("web-server"), tmp_path_factory.mktemp("web-tmp")
    log_path = artifacts_dir() / "web-server.log"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("GRADIO_TEMP_DIR", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "videofusion.apps.main", "web", "--port", str(port),
                                 "--max-frames", str(NUM_FRAMES), "--max-steps", str(STEPS), "--threads", "1"],
                                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"videofusion web exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"videofusion web did not answer in 180 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # stopped: its temporary folders (videos, Gradio's copies) are gone; it never offered a public link
    assert not list(tmp.glob("videofusion-web-*")), list(tmp.iterdir())
    assert "share=True" not in log_path.read_text()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def offline_page(browser, blocked: list):
    """A page that may load only from this machine: any other request is aborted and recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 1100})

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()
    page.route("**/*", route)
    return page


def expect_toast(page, text: str) -> None:
    page.wait_for_selector(f'[data-testid="toast-text"]:has-text("{text}")', timeout=30_000)


def video_state(page) -> dict:
    return page.evaluate("""() => { const v = document.querySelector('#result-video video');
        return v ? {ready: v.readyState, duration: v.duration, src: v.currentSrc, width: v.videoWidth} : null }""")


def wait_for_new_video(page, old_src: str | None) -> dict:
    page.wait_for_function("""old => { const v = document.querySelector('#result-video video');
        return v && v.currentSrc && v.currentSrc !== old && v.readyState >= 2 }""", arg=old_src, timeout=120_000)
    return video_state(page)


def settings_shown(page) -> dict:
    """The 'Settings used' JSON as rendered in the page."""
    text = page.locator("#settings").inner_text()
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def set_number(page, selector: str, value) -> None:
    page.fill(selector, str(value))
    page.press(selector, "Enter")


def test_page_generates_a_video_that_plays_errors_show_and_nothing_leaves_the_machine(server, browser):
    blocked = []
    page = offline_page(browser, blocked)
    page.goto(server, wait_until="load")
    page.wait_for_selector("#generate")
    assert "built-in demo model" in page.inner_text("body")
    vocabulary = page.inner_text("#vocabulary")  # under the prompt: what the built-in model understands
    assert "colours red, green, blue" in vocabulary and "directions left, right, up, down" in vocabulary

    page.click("#generate")  # empty prompt: an error in the page
    expect_toast(page, "prompt: is empty")
    page.fill("#prompt textarea", "a red circle moving left")
    set_number(page, "#seed input", -5)  # out of range: an error in the page
    page.click("#generate")
    expect_toast(page, "seed: must be a whole number from 0")

    set_number(page, "#seed input", 3)  # then a valid request works
    set_number(page, "#fps input[type=number]", 4)
    page.evaluate("""() => { window.progressSeen = [];  // what the video panel shows while it runs
        new MutationObserver(() => { const t = document.querySelector('#result-video').innerText;
            if (t.includes('denoising')) window.progressSeen.push(t) })
        .observe(document.body, {subtree: true, childList: true, characterData: true}) }""")
    page.click("#generate")
    video = wait_for_new_video(page, None)
    progress_seen = page.evaluate("window.progressSeen")
    assert any(f"/{STEPS} steps" in t and "denoising" in t for t in progress_seen), progress_seen
    assert video["ready"] >= 2 and video["width"] == 64
    assert video["duration"] == pytest.approx(NUM_FRAMES / 4, abs=0.2)
    page.wait_for_selector("#settings >> text=generation_s")
    settings = settings_shown(page)
    assert (settings["seed"], settings["num_frames"], settings["num_inference_steps"], settings["fps"]) == (3, 8, 2, 4)
    page.screenshot(path=str(artifacts_dir() / "web-generated.png"), full_page=True)

    link = page.locator("#download a[download]").first  # the download link serves the same H.264 mp4
    assert link.get_attribute("download").endswith("-seed3.mp4")
    body = page.request.get(link.get_attribute("href")).body()
    assert body[4:8] == b"ftyp" and b"avc1" in body[:4096]

    page.click("#random-seed")  # a second request, random seed, another fps
    page.wait_for_function("() => document.querySelector('#seed input').value !== '3'")
    seed = int(page.input_value("#seed input"))
    set_number(page, "#fps input[type=number]", 8)
    page.click("#generate")
    video = wait_for_new_video(page, video["src"])
    assert video["duration"] == pytest.approx(NUM_FRAMES / 8, abs=0.2)
    page.wait_for_function(f"() => document.querySelector('#settings').innerText.includes('{seed}')")
    page.screenshot(path=str(artifacts_dir() / "web-second.png"), full_page=True)
    assert blocked == [], f"the page tried to reach other hosts: {blocked}"
    page.close()


def test_five_concurrent_requests_all_complete_and_a_bad_one_does_not_stop_the_server(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from videofusion.io.video import load_video
    client = Client(server, verbose=False, download_files=str(artifacts_dir() / "downloads"))
    jobs = [client.submit(f"a blue square moving up {i}", "", 4, STEPS, 7.5, i, "default", 8, api_name="/generate")
            for i in range(5)]
    bad = client.submit("", "", 4, STEPS, 7.5, 0, "default", 8, api_name="/generate")
    results = [job.result(timeout=300) for job in jobs]
    with pytest.raises(AppError, match="prompt"):
        bad.result(timeout=300)
    assert sorted(r[2]["seed"] for r in results) == list(range(5))
    for video, download, settings in results:
        assert os.path.isfile(video) and len(load_video(video)) == 4 and settings["duration_s"] == 0.5
    from videofusion.demo import DEMO_MODEL_PATH
    for secret in ("/etc/passwd", DEMO_MODEL_PATH / "model_index.json"):  # visitors cannot read server files
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{server}gradio_api/file={secret}", timeout=10)
    after = client.predict("a green triangle moving right", "", 2, 1, 7.5, 9, "euler", 8, api_name="/generate")
    assert after[2]["scheduler"] == "euler" and len(load_video(after[0])) == 2
    shutil.rmtree(artifacts_dir() / "downloads", ignore_errors=True)
