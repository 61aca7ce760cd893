"""trace_scope across the steps of a streamed body, and beside concurrent tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from freeplay_integrations import current_trace, flush, record, trace_scope
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import LocalFreeplay

HEADER = "x-freeplay-session-id"


def message(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]


def wrap(app: Starlette, server: LocalFreeplay) -> Any:
    return FreeplaySessionMiddleware(app, client=server.client(), project_id=server.project_id)


def test_a_trace_opened_in_a_sync_streamed_body_spans_its_steps(
    freeplay_local: LocalFreeplay,
) -> None:
    # Starlette iterates a sync body in its threadpool, each step in a fresh context copy.
    seen: list[str | None] = []

    def chat(request: Request) -> Response:
        def body() -> Iterator[str]:
            with trace_scope("q", name="turn") as trace:
                record(all_messages=message("first"))
                yield "a"
                trace_now = current_trace()
                seen.append(trace_now.trace_id if trace_now else None)
                record(all_messages=message("second"))
                yield "b"
                trace.output = "ab"
            seen.append("closed" if current_trace() is None else "leaked")

        return StreamingResponse(body())

    app = Starlette(routes=[Route("/chat", chat)])
    with TestClient(wrap(app, freeplay_local)) as http:
        response = http.get("/chat")
    assert response.text == "ab"
    assert flush(10)
    [trace] = freeplay_local.traces(response.headers[HEADER])
    completions = freeplay_local.completions(response.headers[HEADER])
    assert [c["parent_id"] for c in completions] == [trace["id"], trace["id"]]
    assert trace["output"] == "ab"
    assert seen == [trace["id"], "closed"]


@pytest.mark.anyio
async def test_a_concurrent_task_of_the_request_is_not_put_under_anothers_trace(
    freeplay_local: LocalFreeplay,
) -> None:
    async def chat(request: Request) -> Response:
        opened = asyncio.Event()
        done = asyncio.Event()

        async def traced() -> None:
            async with trace_scope("q", name="traced"):
                record(all_messages=message("inside"))
                opened.set()
                await done.wait()

        async def untraced() -> None:
            await opened.wait()
            record(all_messages=message("outside"))
            done.set()

        await asyncio.gather(traced(), untraced())
        return PlainTextResponse("ok")

    async def nested(request: Request) -> Response:
        async def body() -> AsyncIterator[str]:
            async with trace_scope("outer", name="outer"):
                async with trace_scope("inner", name="inner"):
                    record(all_messages=message("deep"))
                    yield "x"
                record(all_messages=message("shallow"))
                yield "y"

        return StreamingResponse(body())

    app = wrap(Starlette(routes=[Route("/chat", chat), Route("/nested", nested)]), freeplay_local)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        concurrent = await http.get("/chat")
        http.cookies.clear()  # another conversation
        deep = await http.get("/nested")
    assert flush(10)
    [trace] = freeplay_local.traces(concurrent.headers[HEADER])
    by_text = {
        c["messages"][-1]["content"]: c["parent_id"]
        for c in freeplay_local.completions(concurrent.headers[HEADER])
    }
    assert by_text == {"inside": trace["id"], "outside": None}
    traces = {t["name"]: t for t in freeplay_local.traces(deep.headers[HEADER])}
    assert traces["inner"]["parent_id"] == traces["outer"]["id"]
    parents = {
        c["messages"][-1]["content"]: c["parent_id"]
        for c in freeplay_local.completions(deep.headers[HEADER])
    }
    assert parents == {"deep": traces["inner"]["id"], "shallow": traces["outer"]["id"]}
