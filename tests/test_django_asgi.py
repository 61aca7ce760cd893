"""freeplay_integrations.django.asgi: flushing recordings at lifespan shutdown."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from freeplay_integrations import record, session_scope
from freeplay_integrations.django.asgi import get_asgi_application
from freeplay_integrations.local import LocalFreeplay


async def run_lifespan(app: Any) -> list[tuple[str, float]]:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[tuple[str, float]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append((message["type"], time.monotonic()))

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent


@pytest.mark.anyio
async def test_lifespan_shutdown_waits_for_queued_recordings(
    freeplay_local: LocalFreeplay,
) -> None:
    app = get_asgi_application(shutdown_timeout=10)
    freeplay_local.faults.hang(1.0)  # the recording is still on its way at shutdown
    with session_scope(freeplay_local.client(), project_id=freeplay_local.project_id) as s:
        completion = record(all_messages=[{"role": "assistant", "content": "bye"}])
    started = time.monotonic()
    sent = await run_lifespan(app)
    assert [kind for kind, _ in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert sent[1][1] - started >= 0.5  # shutdown waited for the delivery
    assert [c["id"] for c in freeplay_local.completions(s.session_id)] == [completion.completion_id]


@pytest.mark.anyio
async def test_lifespan_shutdown_waits_no_longer_than_its_timeout(
    freeplay_local: LocalFreeplay,
) -> None:
    app = get_asgi_application(shutdown_timeout=0.5)
    freeplay_local.faults.hang(5.0)  # Freeplay does not answer before the timeout
    with session_scope(freeplay_local.client(), project_id=freeplay_local.project_id):
        record(all_messages=[{"role": "assistant", "content": "bye"}])
    started = time.monotonic()
    sent = await run_lifespan(app)
    assert [kind for kind, _ in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert 0.4 <= sent[1][1] - started < 3.0  # waited its timeout, then gave up (spooled)


@pytest.mark.anyio
async def test_http_requests_go_to_django() -> None:
    app = get_asgi_application()
    messages: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.sleep(60)  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/no-such-page/",
        "raw_path": b"/no-such-page/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    assert messages[0]["type"] == "http.response.start"
    assert messages[0]["status"] == 404  # answered by Django's own URL resolver


def test_needs_only_the_django_extra() -> None:
    # The `django` extra brings Django and asgiref, not anyio or Starlette.
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {"anyio", "starlette"}:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Block())
        from freeplay_integrations.django.asgi import get_asgi_application
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
