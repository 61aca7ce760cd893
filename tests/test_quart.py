"""Quart through the ASGI middleware (`app.asgi_app = FreeplaySessionMiddleware(...)`).

Views, a streamed body and the lifespan over a real uvicorn server; websockets through
Quart's own test client (which calls the same `asgi_app`). Recordings go through the real
SDK, in the background, to the local Freeplay.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from freeplay_integrations import current_session, record, require_session
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import LocalFreeplay

from ._servers import check_a_conversation_records_into_its_session, serve_asgi

quart = pytest.importorskip("quart", reason="Quart is in the test-frameworks group")

HEADER = "x-freeplay-session-id"


def build_app(server: LocalFreeplay) -> quart.Quart:
    app = quart.Quart(__name__)

    @app.post("/chat")
    async def chat() -> dict[str, str]:
        completion = record(all_messages=[{"role": "user", "content": "hi"}])
        return {"session_id": require_session().session_id, "completion": completion.completion_id}

    @app.get("/stream")
    async def stream() -> quart.Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                session = current_session()
                yield f"{session.session_id if session else 'none'}\n".encode()

        return quart.Response(chunks(), mimetype="text/plain")

    @app.websocket("/ws")
    async def ws() -> None:
        await quart.websocket.accept()
        while (text := await quart.websocket.receive()) != "bye":
            completion = record(all_messages=[{"role": "user", "content": text}])
            await quart.websocket.send(f"{require_session().session_id} {completion.completion_id}")

    app.asgi_app = FreeplaySessionMiddleware(  # type: ignore[method-assign]
        app.asgi_app, client=server.client(), project_id=server.project_id
    )
    return app


def test_views_record_into_the_conversations_session(freeplay_local: LocalFreeplay) -> None:
    check_a_conversation_records_into_its_session(freeplay_local, build_app(freeplay_local))


def test_every_chunk_of_a_streamed_body_sees_the_session(freeplay_local: LocalFreeplay) -> None:
    session_id = str(uuid.uuid4())
    with serve_asgi(build_app(freeplay_local)) as url:
        response = httpx.get(f"{url}/stream", headers={HEADER: session_id})

    assert response.headers[HEADER] == session_id
    assert response.text.splitlines() == [session_id] * 3


@pytest.mark.anyio
async def test_a_websocket_records_into_its_session(freeplay_local: LocalFreeplay) -> None:
    session_id = str(uuid.uuid4())
    client = build_app(freeplay_local).test_client()

    async with client.websocket("/ws", headers={HEADER: session_id}) as ws:
        await ws.send("one")
        first = await ws.receive()
        await ws.send("two")
        second = await ws.receive()
        await ws.send("bye")

    replies = [str(first).split(), str(second).split()]
    assert [sid for sid, _ in replies] == [session_id, session_id]
    assert current_session() is None
    stored = freeplay_local.wait_for(lambda: len(freeplay_local.completions(session_id)) == 2)
    assert stored
    assert {c["id"] for c in freeplay_local.completions(session_id)} == {c for _, c in replies}


def test_lifespan_shutdown_delivers_what_is_queued(freeplay_local: LocalFreeplay) -> None:
    with serve_asgi(build_app(freeplay_local), lifespan="on") as url:
        freeplay_local.faults.hang(0.5)  # the recording is still in flight at shutdown
        session_id = httpx.post(f"{url}/chat").headers[HEADER]
    # serve_asgi has returned: uvicorn ran the lifespan shutdown, which flushed.

    assert len(freeplay_local.completions(session_id)) == 1
