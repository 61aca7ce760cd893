"""Real servers on loopback for tests: uvicorn (ASGI) in a background thread, and the
conversation check every ASGI framework's test runs against one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from freeplay_integrations.local import LocalFreeplay

__all__ = ["check_a_conversation_records_into_its_session", "serve_asgi"]


@contextmanager
def serve_asgi(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan=lifespan, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def check_a_conversation_records_into_its_session(server: LocalFreeplay, app: Any) -> None:
    """Serve `app`, whose `POST /chat` records one completion and answers
    `{"session_id", "completion"}`: two turns of one conversation (the cookie carries it
    on) land in its session, both stored there; a stranger's turn gets another session."""
    with serve_asgi(app) as url, httpx.Client(base_url=url) as http:
        first = http.post("/chat")
        second = http.post("/chat")
        other = httpx.post(f"{url}/chat")
    session_id = first.headers["x-freeplay-session-id"]

    assert first.json()["session_id"] == second.json()["session_id"] == session_id
    assert other.json()["session_id"] != session_id
    assert server.wait_for(lambda: len(server.completions(session_id)) == 2)
    assert {c["id"] for c in server.completions(session_id)} == {
        first.json()["completion"],
        second.json()["completion"],
    }
