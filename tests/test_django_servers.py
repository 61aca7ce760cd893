"""The Django middleware under real servers: Django's ASGI handler under uvicorn and its WSGI
handler under waitress (a threaded server that reuses a few worker threads).

200 concurrent requests each, each with its own session ID, over every kind of view
(async, sync, class-based, streamed sync and async bodies, recordings): every response and
every step inside it must see its own session, with zero mix-ups. Excluded-path probes
mixed into the load, and run after a client hung up mid-stream, show that no thread or
task starts a request with a session left from another.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import django
import httpx
import pytest
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

from freeplay_integrations import flush
from freeplay_integrations.local import LocalFreeplay
from tests.django_app.servers import serve_asgi, serve_wsgi
from tests.django_app.views import EVENTS

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings as SettingsWrapper

HEADER = "X-Freeplay-Session-Id"
REQUESTS = 200
WSGI_THREADS = 4
PROBE = "/health/"

ASGI_PATHS = [
    "/async/?sleep=20",
    "/sync/?sleep=5",
    "/cbv/async/",
    "/stream/async/?sleep=5",
    "/stream/sync/?sleep=2",
    "/async/?sleep=10&record=1",
    "/signal/async/",
]
WSGI_PATHS = [
    "/sync/?sleep=5",
    "/cbv/sync/",
    "/stream/sync/?sleep=2",
    "/stream/async/?sleep=1",
    "/async/?sleep=5",
    "/sync/?record=1",
    "/signal/sync/",
]


@pytest.fixture
def local(freeplay_local: LocalFreeplay, settings: SettingsWrapper) -> LocalFreeplay:
    settings.FREEPLAY = {
        "CLIENT": freeplay_local.client(),
        "PROJECT_ID": freeplay_local.project_id,
        "EXCLUDE_PATHS": [PROBE],
    }
    return freeplay_local


def _observations(path: str, body: bytes) -> list[dict[str, Any]]:
    """Every (current, request) pair the request's code reported."""
    if path.startswith("/stream/"):
        return [json.loads(line) for line in body.decode().splitlines()]
    data = json.loads(body)
    if "receivers" in data:
        return [data["view"], *data["receivers"]]
    return [data["before"], data["after"], data.get("late", data["after"])]


def _mix_ups(path: str, sent: str, status: int, headers: Any, body: bytes) -> list[str]:
    problems = []
    if status != 200:
        problems.append(f"{path}: status {status}")
    if headers.get(HEADER) != sent:
        problems.append(f"{path}: header {headers.get(HEADER)} for {sent}")
    for seen in _observations(path, body):
        if seen["current"] != sent or seen.get("request", sent) != sent:
            problems.append(f"{path}: saw {seen} for {sent}")
    return problems


def _plan(paths: list[str]) -> list[tuple[str, str]]:
    """(path, session ID) for each request; every fifth request is an excluded probe."""
    return [
        (PROBE if n % 5 == 4 else paths[n % len(paths)], str(uuid.uuid4())) for n in range(REQUESTS)
    ]


def _check_probes(results: list[tuple[str, str, int, Any, bytes]]) -> int:
    probes = 0
    for path, _, status, headers, body in results:
        if path == PROBE:
            probes += 1
            assert status == 200 and HEADER not in headers
            assert json.loads(body)["current"] is None, "a server thread kept a session bound"
    return probes


def _check_recordings(
    server: LocalFreeplay, results: list[tuple[str, str, int, Any, bytes]]
) -> None:
    recorded = {
        sent: json.loads(body)["completion_id"]
        for path, sent, _, _, body in results
        if "record=1" in path
    }
    assert recorded
    assert flush(20)
    server.wait_for(lambda: len(server.completions()) == len(recorded), timeout=20)
    for session_id, completion_id in recorded.items():
        assert [c["id"] for c in server.completions(session_id)] == [completion_id]


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
async def test_200_concurrent_requests_under_uvicorn_see_their_own_session(
    local: LocalFreeplay,
) -> None:
    plan = _plan(ASGI_PATHS)
    with serve_asgi(get_asgi_application()) as base:
        limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

            async def one(path: str, sent: str) -> tuple[str, str, int, Any, bytes]:
                response = await client.get(path, headers={HEADER: sent})
                return path, sent, response.status_code, response.headers, response.content

            results = await asyncio.gather(*(one(path, sent) for path, sent in plan))
    problems = [
        p for path, sent, *rest in results if path != PROBE for p in _mix_ups(path, sent, *rest)
    ]
    assert problems == []
    assert _check_probes(results) == REQUESTS // 5
    _check_recordings(local, results)


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_200_concurrent_requests_under_waitress_see_their_own_session(
    local: LocalFreeplay,
) -> None:
    plan = _plan(WSGI_PATHS)
    with serve_wsgi(get_wsgi_application(), threads=WSGI_THREADS) as base:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        with httpx.Client(base_url=base, limits=limits, timeout=30) as client:

            def one(job: tuple[str, str]) -> tuple[str, str, int, Any, bytes]:
                path, sent = job
                response = client.get(path, headers={HEADER: sent})
                return path, sent, response.status_code, response.headers, response.content

            with ThreadPoolExecutor(max_workers=50) as pool:
                results = list(pool.map(one, plan))
    problems = [
        p for path, sent, *rest in results if path != PROBE for p in _mix_ups(path, sent, *rest)
    ]
    assert problems == []
    # A few worker threads served everything, so the probes ran on reused threads.
    threads = {
        json.loads(body)["before"]["thread"]
        for path, _, _, _, body in results
        if path.startswith("/sync/")
    }
    assert 1 <= len(threads) <= WSGI_THREADS
    assert _check_probes(results) == REQUESTS // 5
    _check_recordings(local, results)


def _read_first_line_and_hang_up(base: str, path: str) -> dict[str, Any]:
    """GET `path` over a raw socket, read until the first streamed line, then hang up."""
    url = urlsplit(base)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n{HEADER}: {uuid.uuid4()}\r\n\r\n"
    ).encode()
    received = b""
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        while b'"chunk0"' not in received or not received.rstrip(b"\r").endswith(b"\n"):
            data = sock.recv(65536)
            assert data, f"the server closed the stream early: {received!r}"
            received += data
        sock.shutdown(socket.SHUT_RDWR)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    line = next(part for part in body.split(b"\n") if b'"chunk0"' in part)
    first: dict[str, Any] = json.loads(line[line.index(b"{") :])
    return first


@pytest.mark.anyio
async def test_a_session_cookie_in_its_own_cookie_field_is_found_under_uvicorn(
    settings: SettingsWrapper,
) -> None:
    # HTTP/2 clients send one Cookie field per cookie; Django's ASGIRequest joins repeated
    # fields with "," in request.META (Django 5.2), the ASGI spec with "; ".
    session_id = str(uuid.uuid4())
    with serve_asgi(get_asgi_application()) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            response = await client.get(
                "/async/",
                headers=[("Cookie", "theme=dark"), ("Cookie", f"freeplay_session_id={session_id}")],
            )
    assert response.json()["before"]["current"] == session_id
    assert response.headers[HEADER] == session_id


def _wait_for_events(key: str, event: str) -> list[str]:
    deadline = time.monotonic() + 10
    while event not in EVENTS[key]:
        assert time.monotonic() < deadline, f"no {event!r} for the stream: {EVENTS[key]}"
        time.sleep(0.01)
    return EVENTS.pop(key)


def _probe(base: str) -> Any:
    return httpx.get(f"{base}{PROBE}", timeout=10).json()["current"]


def test_a_client_hanging_up_mid_stream_under_waitress_leaves_nothing_bound(
    local: LocalFreeplay,
) -> None:
    key = str(uuid.uuid4())
    # One worker thread: the probes run on the very thread that served the stream.
    with serve_wsgi(get_wsgi_application(), threads=1) as base:
        first = _read_first_line_and_hang_up(base, f"/stream/sync/?chunks=100000&sleep=2&key={key}")
        assert first["current"] is not None
        events = _wait_for_events(key, "closed")
        assert "finished" not in events  # the body was cut short, and closed
        assert [_probe(base) for _ in range(3)] == [None, None, None]


@pytest.mark.anyio
async def test_a_client_hanging_up_mid_stream_under_uvicorn_leaves_nothing_bound(
    local: LocalFreeplay,
) -> None:
    key = str(uuid.uuid4())
    with serve_asgi(get_asgi_application()) as base:
        first = await asyncio.to_thread(
            _read_first_line_and_hang_up, base, f"/stream/async/?chunks=300&sleep=2&key={key}"
        )
        assert first["current"] is not None
        events = await asyncio.to_thread(_wait_for_events, key, "closed")
        if django.VERSION >= (5, 0):  # Django notices the hang-up and cancels the body
            assert "cancelled" in events and "finished" not in events
        else:  # Django 4.2 streams the body to its end
            assert "finished" in events
        assert [await asyncio.to_thread(_probe, base) for _ in range(3)] == [None, None, None]


def test_worker_threads_start_clean_after_views_raise(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {**settings.FREEPLAY, "EXCLUDE_PATHS": [PROBE]}
    with serve_wsgi(get_wsgi_application(), threads=1) as base:
        for path in ("/error/", "/stream/sync/?raise=1", "/error/"):
            response = httpx.get(f"{base}{path}", timeout=10)
            assert response.status_code == 500 and HEADER in response.headers
            assert _probe(base) is None


@pytest.mark.anyio
async def test_requests_start_clean_after_views_raise_under_uvicorn(
    settings: SettingsWrapper,
) -> None:
    settings.FREEPLAY = {**settings.FREEPLAY, "EXCLUDE_PATHS": [PROBE]}
    with serve_asgi(get_asgi_application()) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for path in ("/error/async/", "/error/", "/stream/async/?raise=1"):
                response = await client.get(path)
                assert response.status_code == 500 and HEADER in response.headers
                assert (await client.get(PROBE)).json()["current"] is None
