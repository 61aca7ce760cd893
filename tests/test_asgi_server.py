"""The ASGI middleware under a real uvicorn server, recording with the real SDK over HTTP."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import httpx
import pytest
from freeplay import RecordPayload
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from freeplay_integrations import current_session, require_session
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import LocalFreeplay

from ._servers import serve_asgi

HEADER = "x-freeplay-session-id"


def build_app(server: LocalFreeplay, threads: dict[str, set[int]]) -> Any:
    client = server.client()

    def chat(request: Request) -> Response:
        # Sync view: Starlette runs it in its threadpool; the SDK call blocks that thread only.
        threads.setdefault("chat", set()).add(threading.get_ident())
        session = require_session()
        response = client.recordings.create(
            RecordPayload(
                project_id=server.project_id,
                all_messages=[
                    {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": f"hi from {session.session_id}"},
                ],
                session_info=session.session_info,
            )
        )
        return JSONResponse(
            {"session_id": session.session_id, "completion_id": response.completion_id}
        )

    async def whoami(request: Request) -> Response:
        await asyncio.sleep(0.005)
        current = current_session()
        return PlainTextResponse(current.session_id if current else "none")

    def health(request: Request) -> Response:
        threads.setdefault("health", set()).add(threading.get_ident())
        return PlainTextResponse("none" if current_session() is None else "leaked")

    app = Starlette(
        routes=[Route("/chat", chat), Route("/whoami", whoami), Route("/health", health)]
    )
    return FreeplaySessionMiddleware(
        app, client=client, project_id=server.project_id, exclude_paths=["/health"]
    )


def test_a_recording_made_in_a_request_lands_in_that_requests_session(
    freeplay_local: LocalFreeplay,
) -> None:
    threads: dict[str, set[int]] = {}
    with serve_asgi(build_app(freeplay_local, threads)) as url, httpx.Client(base_url=url) as http:
        first = http.get("/chat")
        second = http.get("/chat")  # the cookie jar carries the conversation on
        other = httpx.get(f"{url}/chat")  # another client: another conversation
    sid = first.headers[HEADER]
    assert first.json()["session_id"] == sid == second.json()["session_id"]
    assert other.json()["session_id"] != sid
    completions = freeplay_local.completions(sid)
    assert sorted(c["id"] for c in completions) == sorted(
        [first.json()["completion_id"], second.json()["completion_id"]]
    )
    assert [c["id"] for c in freeplay_local.completions(other.json()["session_id"])] == [
        other.json()["completion_id"]
    ]


@pytest.mark.anyio
async def test_200_concurrent_requests_over_uvicorn_see_their_own_sessions(
    freeplay_local: LocalFreeplay,
) -> None:
    threads: dict[str, set[int]] = {}
    ids = [str(uuid.uuid4()) for _ in range(200)]
    with serve_asgi(build_app(freeplay_local, threads)) as url:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
            responses = await asyncio.gather(
                *(http.get("/whoami", headers={HEADER: i}) for i in ids)
            )
            # Reused threadpool threads start clean after serving bound requests.
            await asyncio.gather(*(http.get("/chat", headers={HEADER: i}) for i in ids[:20]))
            health = await asyncio.gather(*(http.get("/health") for _ in range(40)))
    assert [(i, r.text) for i, r in zip(ids, responses, strict=True) if r.text != i] == []
    assert [r.headers[HEADER] for r in responses] == ids
    assert {r.text for r in health} == {"none"}
    assert threads["health"] & threads["chat"], "no threadpool thread was reused"
    assert len(freeplay_local.completions()) == 20
    assert all(freeplay_local.completions(i) for i in ids[:20])
