"""The demo as a person uses it: `run_demo.py` driven in headless Chromium.

For each example app (FastAPI, Flask, Django): two messages, "New conversation", one more
message; then the local Freeplay page must show exactly two sessions, with two and one
traces. Screenshots of each step are saved under `test-artifacts/browser/<app>/`.

The same again with `--recording otel` (FastAPI and Flask: the async and the sync OpenAI
client): no `record()` call, the model calls are OpenInference spans exported to the local
Freeplay, and each session's page shows its LLM completions from those spans.

`UPDATE_DOCS=1` also copies the session page's screenshot to `docs/local-freeplay.png`
(the README's picture).

Needs Debian's `chromium` and the Python `playwright` package (no `playwright install`:
the system Chromium is used). Marked `browser`; skipped only when either is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from freeplay_integrations import current_session

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
#: Where Chromium is looked for: `$CHROMIUM`, then `chromium` on the PATH.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY = "Press Ctrl-C to stop."
FRAMEWORKS = {"fastapi": "FastAPI", "flask": "Flask", "django": "Django"}
TIMEOUT = 30.0
WAIT_MS = 15_000

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

#: Set by .ci/run: there a missing browser is a failure, not a reason to skip.
REQUIRED = os.environ.get("FREEPLAY_REQUIRE_BROWSER") == "1"
MISSING_PLAYWRIGHT = (
    "needs the playwright package: pip install playwright (the browser comes "
    "from the system: apt-get install chromium)"
)
MISSING_CHROMIUM = (
    f"needs Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM to its path)"
)

if REQUIRED:
    assert sync_playwright is not None, MISSING_PLAYWRIGHT
    assert os.access(CHROMIUM, os.X_OK), MISSING_CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason=MISSING_PLAYWRIGHT),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=MISSING_CHROMIUM),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["fastapi", "flask", "django", "fastapi-otel", "flask-otel"])
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """`run_demo.py` (an example app + local Freeplay server) on free ports, stopped after."""
    name = str(request.param)
    app, _, recording = name.partition("-")
    recording = recording or "record"
    app_port, freeplay_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPLAY_", "DEMO_"))}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    env["DEMO_TOKEN_DELAY"] = "0.005"  # streamed visibly, yet fast
    artifacts = ARTIFACTS / name
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts / "demo.log"
    command = [
        sys.executable, str(ROOT / "example_apps" / "run_demo.py"), "--app", app,
        "--port", str(app_port), "--freeplay-port", str(freeplay_port),
        "--db", str(tmp_path / "freeplay.sqlite3"), "--recording", recording,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + TIMEOUT
        while READY not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield {
            "name": app,
            "recording": recording,
            "app": f"http://127.0.0.1:{app_port}",
            "freeplay": f"http://127.0.0.1:{freeplay_port}",
            "artifacts": str(artifacts),
        }
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0, log.read_text(errors="replace")
    finally:
        if process.poll() is None:  # a failed test: stop it (and its children) cleanly
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def send(page: Page, text: str, answers: int) -> None:
    """Type `text`, press Enter, and wait until the answer has streamed in completely."""
    page.fill("#message", text)
    page.press("#message", "Enter")
    done = page.locator(".msg.assistant[data-state=done]")
    expect(done).to_have_count(answers, timeout=WAIT_MS)
    expect(done.last.locator(".text")).to_contain_text(f'You asked: "{text}')


def shot(page: Page, demo: dict[str, str], name: str, **options: Any) -> None:
    page.screenshot(path=str(Path(demo["artifacts"]) / name), **options)


def test_two_conversations_show_up_as_two_sessions(demo: dict[str, str], browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    missing: list[str] = []  # e.g. a /favicon.ico the page does not provide
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)

    page.goto(demo["app"] + "/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
    expect(page.locator("#framework")).to_have_text(FRAMEWORKS[demo["name"]])
    first_session = page.inner_text("#session-id")
    send(page, "What is Freeplay?", 1)
    send(page, "How are sessions grouped?", 2)
    expect(page.locator(".msg.assistant .rewrite").last).to_contain_text("following up on")
    page.locator(".msg.assistant").last.locator("button[data-vote=up]").click()
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-feedback", "up")
    assert page.inner_text("#session-id") == first_session
    # A reload restores the conversation: answers, "rewritten:" lines and votes.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
    restored = page.locator(".msg.assistant")
    expect(restored).to_have_count(2)
    expect(restored.first.locator(".rewrite")).to_have_text("rewritten: What is Freeplay?")
    expect(restored.last.locator(".rewrite")).to_contain_text("following up on")
    expect(restored.last).to_have_attribute("data-feedback", "up")
    expect(restored.last.locator("button.chosen")).to_have_attribute("data-vote", "up")
    expect(restored.first).not_to_have_attribute("data-feedback", "up")
    shot(page, demo, "1-first-conversation.png")

    page.click("#new-conversation")
    expect(page.locator("#messages li")).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator("#session-id")).not_to_have_text(first_session, timeout=WAIT_MS)
    second_session = page.inner_text("#session-id")
    send(page, "A new topic", 1)
    assert page.inner_text("#session-id") == second_session
    shot(page, demo, "2-second-conversation.png")

    # The local Freeplay page: exactly two sessions, with two and one traces.
    page.goto(demo["freeplay"] + "/")
    expect(page.locator("#session-count")).to_have_text("2", timeout=WAIT_MS)
    rows = page.locator("tr[data-session-id]")
    expect(rows).to_have_count(2)
    first_row = page.locator(f'tr[data-session-id="{first_session}"]')
    second_row = page.locator(f'tr[data-session-id="{second_session}"]')
    expect(first_row.locator(".trace-count")).to_have_text("2", timeout=WAIT_MS)
    expect(second_row.locator(".trace-count")).to_have_text("1", timeout=WAIT_MS)
    expect(first_row.locator(".completion-count")).to_have_text("4", timeout=WAIT_MS)
    expect(second_row.locator(".completion-count")).to_have_text("2", timeout=WAIT_MS)
    shot(page, demo, "3-freeplay-sessions.png")

    # The first conversation's page: two traces, each the parent of its two completions.
    first_row.locator("a.session-link").click()
    expect(page.locator("#session-id")).to_have_text(first_session, timeout=WAIT_MS)
    traces = page.locator("[data-trace-id]")
    expect(traces).to_have_count(2, timeout=WAIT_MS)
    trace_ids = {str(traces.nth(i).get_attribute("data-trace-id")) for i in range(2)}
    completions = page.locator("[data-completion-id]")
    expect(completions).to_have_count(4, timeout=WAIT_MS)
    parents = [str(completions.nth(i).get_attribute("data-parent-id")) for i in range(4)]
    assert sorted(parents) == sorted([*trace_ids, *trace_ids])
    if demo["recording"] == "otel":
        # No record() call: each completion is an OpenInference LLM span (a 16-hex span ID)
        # with the model, the messages and the token counts the span carries.
        ids = [str(completions.nth(i).get_attribute("data-completion-id")) for i in range(4)]
        assert all(re.fullmatch(r"[0-9a-f]{16}", cid) for cid in ids), ids
        for i in range(4):
            expect(completions.nth(i).locator(".model")).to_contain_text("local-echo-1")
            tokens = completions.nth(i).locator(".chip b").filter(has_text=re.compile("^total$"))
            expect(tokens).to_have_count(1)
        expect(completions.first.locator(".message.user").first).to_contain_text(
            "What is Freeplay?"
        )
    expect(page.locator(".feedback").first).to_contain_text("positive", timeout=WAIT_MS)
    shot(page, demo, "4-freeplay-session.png")
    shot(page, demo, "5-freeplay-session-full.png", full_page=True)
    if os.environ.get("UPDATE_DOCS") == "1" and demo["name"] == "fastapi":
        shutil.copyfile(
            Path(demo["artifacts"]) / "4-freeplay-session.png", ROOT / "docs" / "local-freeplay.png"
        )

    assert errors == [], f"JavaScript errors on the pages: {errors}"
    assert missing == [], f"404s while loading the pages: {missing}"
    assert re.fullmatch(r"[0-9a-f-]{36}", second_session)
    assert current_session() is None
