"""Recording under load and faults, through the real ASGI middleware and the real SDK.

- 1,000 recordings from 100 concurrent requests: each in its own request's session, under
  its request's trace, in order; none lost, none misplaced.
- Freeplay answers 503 for 5 s mid-run: everything arrives after recovery, and requests
  keep their latency.
- Freeplay hangs: requests are unaffected, `flush(timeout=2)` returns in about 2 s with
  the rest in the spool, and a replay delivers each recording exactly once.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from freeplay import Freeplay
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from freeplay_integrations import (
    configure_recording,
    current_session,
    flush,
    record,
    recorder_stats,
    trace_scope,
)
from freeplay_integrations.__main__ import main
from freeplay_integrations._recording import recorder_for
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import LocalFreeplay

HEADER = "x-freeplay-session-id"
WORKERS = 4


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": f"re: {text}"}]


@pytest.fixture
def server(freeplay_local: LocalFreeplay) -> LocalFreeplay:
    return freeplay_local


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool.jsonl"


@pytest.fixture
def client(server: LocalFreeplay, spool: Path) -> Iterator[Freeplay]:
    client = server.client()
    configure_recording(
        client,
        spool_path=spool,
        workers=WORKERS,
        backoff_base=0.05,
        backoff_max=0.5,
        max_attempts=50,
        attempt_timeout=5.0,
        idle_timeout=1.0,
    )
    yield client
    server.faults.clear()
    recorder_for(client).flush(10)


def build_app(client: Freeplay, server: LocalFreeplay, per_request: int) -> Any:
    """A fresh app whose endpoint records `per_request` completions under one trace.

    Half of them are recorded by the async endpoint, half in a worker thread, with
    awaits in between so that concurrent requests interleave.
    """

    def in_thread(n: int) -> str:
        return record(all_messages=chat(f"thread {n}")).completion_id

    async def converse(request: Request) -> Response:
        ids: list[str] = []
        async with trace_scope("question", name="turn") as trace:
            for n in range(per_request):
                if n % 2:
                    ids.append(await anyio.to_thread.run_sync(in_thread, n))
                else:
                    ids.append(record(all_messages=chat(f"async {n}")).completion_id)
                await asyncio.sleep(0)
            trace.output = "answer"
        return JSONResponse({"trace_id": trace.trace_id, "completion_ids": ids})

    app = Starlette(routes=[Route("/converse", converse, methods=["POST"])])
    # No cookie: a request without the header starts its own session, whatever the test
    # client's cookie jar holds from earlier responses.
    return FreeplaySessionMiddleware(
        app, client=client, project_id=server.project_id, session_cookie=None
    )


def http_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def converse(http: httpx.AsyncClient, session_id: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    headers = {HEADER: session_id} if session_id else {}
    response = await http.post("/converse", headers=headers)
    assert response.status_code == 200
    return {
        **response.json(),
        "session_id": response.headers[HEADER],
        "latency": time.perf_counter() - started,
    }


def assert_all_in_place(server: LocalFreeplay, results: list[dict[str, Any]]) -> None:
    """Every recording in its own request's session, under its request's trace, in order."""
    total = 0
    for result in results:
        stored = server.completions(result["session_id"])
        assert [c["id"] for c in stored] == result["completion_ids"]
        assert {c["parent_id"] for c in stored} == {result["trace_id"]}
        (trace,) = server.traces(result["session_id"])
        assert trace["id"] == result["trace_id"]
        total += len(stored)
    assert len(server.completions()) == total  # nothing anywhere else
    assert len(server.traces()) == len(results)


@pytest.mark.anyio
async def test_1000_recordings_from_100_concurrent_requests_land_in_place(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    app = build_app(client, server, per_request=10)
    resumed = [str(uuid.uuid4()) for _ in range(50)]  # half resume a session, half start one
    async with http_client(app) as http:
        results = await asyncio.gather(
            *(converse(http, resumed[n] if n < 50 else None) for n in range(100))
        )
    assert current_session() is None
    assert len({r["session_id"] for r in results}) == 100
    assert [r["session_id"] for r in results[:50]] == resumed
    assert await anyio.to_thread.run_sync(flush, 30)
    assert_all_in_place(server, results)
    assert len(server.completions()) == 1000
    stats = recorder_stats(client)
    assert (stats.queued, stats.sent, stats.spooled, stats.failed) == (1100, 1100, 0, 0)
    assert server.duplicates == 0
    assert not spool.exists()


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_5s_outage_mid_run_loses_nothing_and_does_not_slow_requests(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    app = build_app(client, server, per_request=2)
    before: list[dict[str, Any]] = []
    during: list[dict[str, Any]] = []
    async with http_client(app) as http:
        for _ in range(10):
            before.extend(await asyncio.gather(*(converse(http) for _ in range(5))))
        server.faults.fail_for(5.0)
        outage_ends = time.monotonic() + 5.0
        while time.monotonic() < outage_ends - 0.2:
            during.extend(await asyncio.gather(*(converse(http) for _ in range(5))))
            await asyncio.sleep(0.05)
    assert len(during) > 100
    # The app went on recording while every call to Freeplay failed ...
    assert server.wait_for(lambda: any(r.status == 503 for r in server.requests_received()))
    assert recorder_stats(client).retried > 0
    # ... and its requests did not wait for it: only the queue hand-off is on their path.
    typical = statistics.median(r["latency"] for r in before)
    assert statistics.median(r["latency"] for r in during) < typical + 0.02
    assert await anyio.to_thread.run_sync(flush, 30)
    assert_all_in_place(server, before + during)
    assert recorder_stats(client).spooled == 0
    assert not spool.exists()


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_hung_freeplay_leaves_requests_alone_and_the_spool_replays_once(
    client: Freeplay,
    server: LocalFreeplay,
    spool: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = build_app(client, server, per_request=3)
    server.faults.hang(60)
    async with http_client(app) as http:
        results = await asyncio.gather(*(converse(http) for _ in range(20)))
    assert max(r["latency"] for r in results) < 1.0  # an attempt's time limit is 5 s
    assert server.request_count == 0

    started = time.monotonic()
    assert await anyio.to_thread.run_sync(flush, 2.0) is False
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 3.0
    lines = [json.loads(line) for line in spool.read_text().splitlines()]
    assert len(lines) == 20 * 3 + 20  # every completion and every trace
    assert recorder_stats(client).spooled == 80

    server.faults.release()  # what was in flight at the flush arrives now as well
    monkeypatch.setenv("FREEPLAY_API_KEY", server.api_key)
    assert await anyio.to_thread.run_sync(main, ["replay", str(spool)]) == 0
    assert_all_in_place(server, results)
    assert len(server.completions()) == 60
    assert server.duplicates <= WORKERS  # only what was in flight was sent twice, and
    assert not spool.exists()  # the server kept one copy of it
