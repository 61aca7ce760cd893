"""Litestar through the ASGI middleware, wrapping the whole app.

Handlers, a streamed body and the lifespan over a real uvicorn server; websockets through
Litestar's own test client. Recordings go through the real SDK, in the background, to the
local Freeplay.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from freeplay_integrations import current_session, record, require_session
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import LocalFreeplay

from ._servers import check_a_conversation_records_into_its_session, serve_asgi

litestar = pytest.importorskip("litestar", reason="Litestar is in the test-frameworks group")
from litestar.response import Stream  # noqa: E402
from litestar.testing import TestClient  # noqa: E402

HEADER = "x-freeplay-session-id"


def build_app(server: LocalFreeplay) -> Any:
    @litestar.post("/chat", status_code=200)
    async def chat() -> dict[str, str]:
        completion = record(all_messages=[{"role": "user", "content": "hi"}])
        return {"session_id": require_session().session_id, "completion": completion.completion_id}

    @litestar.get("/stream")
    async def stream() -> Stream:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                session = current_session()
                yield f"{session.session_id if session else 'none'}\n".encode()

        return Stream(chunks(), media_type="text/plain")

    @litestar.websocket("/ws")
    async def ws(socket: litestar.WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        while (text := await socket.receive_text()) != "bye":
            completion = record(all_messages=[{"role": "user", "content": text}])
            await socket.send_text(f"{require_session().session_id} {completion.completion_id}")
        await socket.close()

    app = litestar.Litestar(route_handlers=[chat, stream, ws])
    return FreeplaySessionMiddleware(app, client=server.client(), project_id=server.project_id)


def test_handlers_record_into_the_conversations_session(freeplay_local: LocalFreeplay) -> None:
    check_a_conversation_records_into_its_session(freeplay_local, build_app(freeplay_local))


def test_every_chunk_of_a_streamed_body_sees_the_session(freeplay_local: LocalFreeplay) -> None:
    session_id = str(uuid.uuid4())
    with serve_asgi(build_app(freeplay_local)) as url:
        response = httpx.get(f"{url}/stream", headers={HEADER: session_id})

    assert response.headers[HEADER] == session_id
    assert response.text.splitlines() == [session_id] * 3


def test_a_websocket_records_into_its_session(freeplay_local: LocalFreeplay) -> None:
    session_id = str(uuid.uuid4())

    with (
        TestClient(build_app(freeplay_local)) as client,
        client.websocket_connect("/ws", headers={HEADER: session_id}) as ws,
    ):
        ws.send_text("one")
        first = ws.receive_text().split()
        ws.send_text("two")
        second = ws.receive_text().split()
        ws.send_text("bye")

    assert [first[0], second[0]] == [session_id, session_id]
    assert current_session() is None
    stored = freeplay_local.wait_for(lambda: len(freeplay_local.completions(session_id)) == 2)
    assert stored
    assert {c["id"] for c in freeplay_local.completions(session_id)} == {first[1], second[1]}


def test_lifespan_shutdown_delivers_what_is_queued(freeplay_local: LocalFreeplay) -> None:
    with serve_asgi(build_app(freeplay_local), lifespan="on") as url:
        freeplay_local.faults.hang(0.5)  # the recording is still in flight at shutdown
        session_id = httpx.post(f"{url}/chat").headers[HEADER]
    # serve_asgi has returned: uvicorn ran the lifespan shutdown, which flushed.

    assert len(freeplay_local.completions(session_id)) == 1


def test_litestars_own_middleware_list_builds_it_with_app_by_keyword(
    freeplay_local: LocalFreeplay,
) -> None:
    """`DefineMiddleware` calls `FreeplaySessionMiddleware(app=..., **options)`."""
    from litestar.middleware import DefineMiddleware

    @litestar.get("/who")
    async def who() -> str:
        return require_session().session_id

    middleware = DefineMiddleware(
        FreeplaySessionMiddleware,
        client=freeplay_local.client(),
        project_id=freeplay_local.project_id,
    )
    app = litestar.Litestar(route_handlers=[who], middleware=[middleware])
    with TestClient(app) as client:
        first = client.get("/who")
        second = client.get("/who")  # the cookie carries the conversation on

    assert first.text == second.text == first.headers[HEADER]
