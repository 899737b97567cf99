"""`tunesmith ui` driven as a person drives it: a real server (`tunesmith ui` in its own process) and a real
headless Chromium through Playwright. Builds a stories260K LoRA run from the forms, plans it, launches it, watches
the loss curve fill in, chats with the result beside its base model; a screenshot of each tab is saved
(TUNESMITH_UI_SCREENSHOTS=docs/images writes the ones docs/ui.md shows)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking switches Chromium waits on services it cannot reach from a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STORIES_DATA = EXAMPLES / "data" / "stories_chat.jsonl"
STEPS = 8

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tunesmith ui exited with {process.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"tunesmith ui did not answer within {timeout} s:\n{log.read_text()}")


@pytest.fixture
def server(tmp_path):
    """`tunesmith ui` on a free loopback port, run from `tmp_path` (its runs and configs go there)."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "tunesmith.cli.main", "ui", "--port", str(port),
                                    "--runs", "runs", "--config", "configs/stories.yaml"],
                                   cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def browser_page():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium); the browser tests need it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the ui extra: pip install 'tunesmith[ui]'")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def fill(page, elem_id: str, value) -> None:
    """Type into a textbox or number field as a user does (the form reacts to input events)."""
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(str(value))


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def text_of(page, elem_id: str) -> str:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    return box.input_value()


def wait_text(page, elem_id: str, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    value = ""
    while time.monotonic() < deadline:
        value = text_of(page, elem_id)
        if re.search(pattern, value):
            return value
        time.sleep(0.3)
    raise AssertionError(f"#{elem_id} never matched {pattern!r}; it shows {value!r}")


def wait_inner(page, selector: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in page.locator(selector).inner_text():
        assert time.monotonic() < deadline, f"{selector} never showed {text!r}"
        time.sleep(0.3)


def screenshot(page, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(folder / f"ui-{name}.png"))


def test_build_plan_train_and_chat_in_the_browser(server, browser_page, tmp_path, stories_dir):
    page, shots = browser_page, Path(os.environ.get("TUNESMITH_UI_SCREENSHOTS") or tmp_path / "screenshots")
    page.goto(server)

    # Build: a stories260K LoRA run from the form; the YAML beside it follows each field and is validated live.
    fill(page, "model-path", stories_dir)
    fill(page, "rank", 8)
    fill(page, "data-files", STORIES_DATA)
    choose(page, "template", "alpaca_en")
    fill(page, "max-length", 64)
    fill(page, "output-dir", "runs/stories")
    fill(page, "max-steps", STEPS)
    fill(page, "learning-rate", 0.005)
    fill(page, "logging-steps", 1)
    fill(page, "save-steps", 4)
    choose(page, "cpu-kernels", "off")
    wait_text(page, "validation", r"^valid: `tunesmith train configs/stories\.yaml` accepts this config$")
    yaml_text = page.locator("#yaml .cm-content").inner_text()
    assert f"max_steps: {STEPS}" in yaml_text and "template: alpaca_en" in yaml_text and "r: 8" in yaml_text
    page.get_by_text("Data: which tokens train").click()
    page.locator("#preview-button").click()
    page.locator("#preview mark").first.wait_for()  # the trained tokens of a sample, highlighted
    screenshot(page, shots, "build")

    # A bad value shows the command line's own message, with the line it is on.
    fill(page, "max-length", 4)
    wait_text(page, "validation", r"configs/stories\.yaml: invalid configuration:\n  data\.max_length: .*greater "
                                  r"than 8 \(got 4\) \(line \d+\)")
    fill(page, "max-length", 64)
    wait_text(page, "validation", r"^valid")

    # Plan: the planner's breakdown of this form's run.
    page.get_by_role("tab", name="Plan").click()
    page.locator("#plan-button").click()
    page.get_by_text("predicted peak").first.wait_for()
    assert "lora on" in page.locator("#plan").inner_text()
    screenshot(page, shots, "plan")

    # Train: launch a detached run and watch the curve fill in from its folder.
    page.get_by_role("tab", name="Train").click()
    page.locator("#launch").click()
    wait_text(page, "train-message", r"^launched `tunesmith train configs/stories\.yaml` \(pid \d+\)")
    first = wait_text(page, "progress", r"loss points: [1-9]", timeout=120)
    page.locator("#loss-plot img, #loss-plot svg").first.wait_for()
    final = wait_text(page, "progress", rf"^finished · step {STEPS} of {STEPS} · loss points: {STEPS}", timeout=120)
    assert first != final  # the page followed the run while it trained
    assert (tmp_path / "runs" / "stories" / "tunesmith_run.json").exists()
    wait_inner(page, "#runs", "runs/stories")  # in the list of past runs
    screenshot(page, shots, "train")

    # Use: the run and its base model answer the same message side by side.
    page.get_by_role("tab", name="Use").click()
    assert text_of(page, "use-run") == "runs/stories"
    fill(page, "chat-message", "Tell me what Mia saw.")
    page.locator("#chat-send").click()
    for chat in ("#chat-tuned", "#chat-base"):
        page.locator(f"{chat} .bot").first.wait_for(timeout=60_000)
    assert "Tell me what Mia saw." in page.locator("#chat-tuned").inner_text()
    tuned, base = (page.locator(f"{chat} .bot").first.inner_text() for chat in ("#chat-tuned", "#chat-base"))
    assert tuned.strip() and tuned != base  # the run answers, and not as its base model does
    assert text_of(page, "use-message") == ""
    screenshot(page, shots, "use")
