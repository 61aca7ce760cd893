"""The local Freeplay's session index at phone width, in headless Chromium."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
from freeplay.resources.recordings import RecordPayload

from freeplay_integrations.local import LocalFreeplay

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason="needs the playwright package"),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"needs Chromium at {CHROMIUM}"),
]


def test_session_index_fits_a_phone_and_shows_first_messages() -> None:
    long_message = "How do I " + "really " * 40 + "record a trace?"
    with LocalFreeplay() as server:
        client = server.client()
        for text in ("Hello there", long_message):
            session = client.sessions.create()
            client.recordings.create(
                RecordPayload(
                    project_id=server.project_id,
                    all_messages=[
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": "Hi"},
                    ],
                    session_info=session.session_info,
                    completion_id=uuid.uuid4(),
                )
            )
        assert sync_playwright is not None
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page(viewport={"width": 375, "height": 740})
                page.goto(server.url + "/")
                rows = page.locator("tr[data-session-id]")
                assert rows.count() == 2
                texts = page.locator(".first-message").all_inner_texts()
                assert "Hello there" in texts
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 375px"
                box = rows.first.bounding_box()
                assert box is not None and box["width"] <= 375
            finally:
                browser.close()
