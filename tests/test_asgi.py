"""The pure ASGI middleware, through Starlette's test client and real ASGI calls."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from freeplay import Freeplay
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from freeplay_integrations import (
    ConfigurationError,
    current_session,
    new_session,
    require_session,
)
from freeplay_integrations._ids import Signer, parse_session_id
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.fastapi import CurrentSession
from freeplay_integrations.local import DEFAULT_PROJECT_ID as PROJECT_ID

HEADER = "x-freeplay-session-id"
COOKIE = "freeplay_session_id"
API_BASE = "http://127.0.0.1:9/api"  # never contacted unless a test records


@pytest.fixture
def client() -> Freeplay:
    return Freeplay(freeplay_api_key="test-key", api_base=API_BASE)


def session_id() -> str:
    current = current_session()
    return current.session_id if current is not None else "none"


def build_app(
    client: Freeplay, *, wrap: bool = False, seen: list[Any] | None = None, **options: Any
) -> Any:
    """A fresh Starlette app with one endpoint per place a session must be visible."""
    seen = seen if seen is not None else []

    async def async_view(request: Request) -> Response:
        seen.append(current_session())
        return JSONResponse({"session_id": session_id()})

    def sync_view(request: Request) -> Response:  # runs in Starlette's threadpool
        seen.append(current_session())
        return JSONResponse({"session_id": session_id(), "thread": threading.get_ident()})

    def sync_new(request: Request) -> Response:
        return JSONResponse({"session_id": new_session().session_id})

    async def async_new(request: Request) -> Response:
        return JSONResponse({"session_id": new_session({"reason": "button"}).session_id})

    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[str]:
            for _ in range(3):
                await asyncio.sleep(0)
                yield f"data: {session_id()}\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    def sync_stream(request: Request) -> Response:
        def body() -> Iterator[str]:  # iterated in the threadpool
            for _ in range(3):
                yield session_id() + "\n"

        return StreamingResponse(body())

    async def stream_new(request: Request) -> Response:
        async def body() -> AsyncIterator[str]:
            yield new_session().session_id

        return StreamingResponse(body())

    async def background(request: Request) -> Response:
        request_session = current_session()

        def task() -> None:
            seen.append(("background", request_session, current_session()))

        return PlainTextResponse(session_id(), background=BackgroundTask(task))

    async def boom(request: Request) -> Response:
        raise RuntimeError("unhandled")

    def health(request: Request) -> Response:
        return PlainTextResponse(session_id())

    async def cors(request: Request) -> Response:
        return PlainTextResponse("ok", headers={"Access-Control-Expose-Headers": "X-Other"})

    async def ws(websocket: WebSocket) -> None:
        if websocket.query_params.get("new"):
            new_session()
        await websocket.accept()
        await websocket.send_text(session_id())
        message = await websocket.receive_text()
        await websocket.send_text(f"{message}:{session_id()}")
        await websocket.close()

    routes = [
        Route("/async", async_view),
        Route("/sync", sync_view),
        Route("/sync-new", sync_new),
        Route("/async-new", async_new),
        Route("/stream", stream),
        Route("/sync-stream", sync_stream),
        Route("/stream-new", stream_new),
        Route("/background", background),
        Route("/boom", boom),
        Route("/health", health),
        Route("/cors", cors),
        WebSocketRoute("/ws", ws),
    ]
    app = Starlette(routes=routes)
    options.setdefault("client", client)
    options.setdefault("project_id", PROJECT_ID)
    if wrap:
        return FreeplaySessionMiddleware(app, **options)
    app.add_middleware(FreeplaySessionMiddleware, **options)
    return app


def assert_new_session(response: httpx.Response, *, not_: str | None = None) -> str:
    value = response.headers[HEADER]
    assert parse_session_id(value) == value, value
    if not_ is not None:
        assert value != not_
    return value


# --- Resolution and echo -----------------------------------------------------------------


def test_new_session_is_echoed_in_header_and_cookie(client: Freeplay) -> None:
    with TestClient(build_app(client)) as http:
        response = http.get("/async")
    sid = assert_new_session(response)
    assert response.json() == {"session_id": sid}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={sid};")
    attributes = {part.strip() for part in cookie.split(";")[1:]}
    assert attributes == {"Max-Age=2592000", "Path=/", "SameSite=Lax", "HttpOnly"}
    assert response.headers["access-control-expose-headers"] == "X-Freeplay-Session-Id"


def test_header_resumes_a_session_in_any_case(client: Freeplay) -> None:
    sid = str(uuid.uuid4())
    with TestClient(build_app(client)) as http:
        response = http.get("/async", headers={HEADER: sid.upper()})
    assert response.json() == {"session_id": sid}
    assert response.headers[HEADER] == sid


def test_cookie_resumes_a_session(client: Freeplay) -> None:
    sid = str(uuid.uuid4())
    with TestClient(build_app(client)) as http:
        response = http.get("/async", headers={"cookie": f"other=1; {COOKIE}={sid}"})
    assert response.json() == {"session_id": sid}


def test_a_conversation_keeps_its_session_through_the_cookie_jar(client: Freeplay) -> None:
    with TestClient(build_app(client)) as http:
        first = http.get("/async").json()["session_id"]
        second = http.get("/sync").json()["session_id"]
    assert first == second


def test_header_wins_over_cookie_by_default_and_sources_reorder(client: Freeplay) -> None:
    in_header, in_cookie = str(uuid.uuid4()), str(uuid.uuid4())
    headers = {HEADER: in_header, "cookie": f"{COOKIE}={in_cookie}"}
    with TestClient(build_app(client)) as http:
        assert http.get("/async", headers=headers).json()["session_id"] == in_header
    with TestClient(build_app(client, sources=["cookie", "header"])) as http:
        assert http.get("/async", headers=headers).json()["session_id"] == in_cookie


def test_custom_names_and_echo_switches(client: Freeplay) -> None:
    sid = str(uuid.uuid4())
    app = build_app(client, session_header="X-Conversation", session_cookie=None)
    with TestClient(app) as http:
        response = http.get("/async", headers={"X-Conversation": sid})
    assert response.headers["x-conversation"] == sid
    assert "set-cookie" not in response.headers
    with TestClient(build_app(client, echo_header=False)) as http:
        response = http.get("/async")
    assert HEADER not in response.headers
    assert "access-control-expose-headers" not in response.headers
    assert response.headers["set-cookie"].startswith(COOKIE)


def test_expose_headers_merge_with_the_apps_own(client: Freeplay) -> None:
    with TestClient(build_app(client)) as http:
        response = http.get("/cors")
    assert response.headers["access-control-expose-headers"] == "X-Other, X-Freeplay-Session-Id"


def test_a_returning_clients_headers_are_the_same_on_every_response(client: Freeplay) -> None:
    session_id = str(uuid.uuid4())
    with TestClient(build_app(client)) as http:
        for path in ("/cors", "/health", "/cors", "/health"):  # built once, then kept
            response = http.get(path, headers={"X-Freeplay-Session-Id": session_id})
            assert response.headers["x-freeplay-session-id"] == session_id
            assert response.headers["set-cookie"].startswith(f"{COOKIE}={session_id};")
            exposed = "X-Other, " if path == "/cors" else ""
            assert response.headers.get_list("access-control-expose-headers") == [
                exposed + "X-Freeplay-Session-Id"
            ]


@pytest.mark.parametrize(
    ("base_url", "option", "secure"),
    [
        ("https://testserver", None, True),
        ("http://testserver", None, False),
        ("http://testserver", True, True),
        ("https://testserver", False, False),
    ],
)
def test_cookie_is_secure_over_https_or_as_configured(
    client: Freeplay, base_url: str, option: bool | None, secure: bool
) -> None:
    with TestClient(build_app(client, cookie_secure=option), base_url=base_url) as http:
        response = http.get("/async")
    assert ("; Secure" in response.headers["set-cookie"]) is secure


def test_cookie_attributes_are_configurable(client: Freeplay) -> None:
    app = build_app(
        client,
        cookie_max_age=60,
        cookie_samesite="strict",
        cookie_domain="example.com",
        cookie_path="/chat",
    )
    with TestClient(app) as http:
        cookie = http.get("/async").headers["set-cookie"]
    assert {"Max-Age=60", "SameSite=Strict", "Domain=example.com", "Path=/chat"} <= {
        part.strip() for part in cookie.split(";")
    }


def test_session_metadata_gets_the_request_and_applies_to_new_and_resumed(
    client: Freeplay,
) -> None:
    seen: list[Any] = []

    def metadata(request: HTTPConnection) -> dict[str, str]:
        return {"user": request.headers.get("x-user", "anonymous")}

    app = build_app(client, seen=seen, session_metadata=metadata)
    with TestClient(app) as http:
        http.get("/async", headers={"x-user": "ada"})
        http.get("/async", headers={"x-user": "ada", HEADER: str(uuid.uuid4())})
    assert [s.custom_metadata for s in seen] == [{"user": "ada"}, {"user": "ada"}]


def test_excluded_paths_are_passed_through_untouched(client: Freeplay) -> None:
    with TestClient(build_app(client, exclude_paths=["/health"])) as http:
        response = http.get("/health", headers={HEADER: str(uuid.uuid4())})
    assert response.text == "none"
    assert HEADER not in response.headers
    assert "set-cookie" not in response.headers


# --- Bad input ---------------------------------------------------------------------------

BAD_VALUES = [
    "",
    "x" * 10_240,
    "not-a-uuid",
    str(uuid.uuid1()),
    str(uuid.uuid3(uuid.NAMESPACE_URL, "a")),
    str(uuid.uuid5(uuid.NAMESPACE_URL, "a")),
    "{" + str(uuid.uuid4()) + "}",
    uuid.uuid4().hex,
    "caf\xe9-" + str(uuid.uuid4())[5:],
]


async def call_raw(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, list[Any], bytes]:
    """Call the ASGI app with raw header bytes, as a server would hand them over."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/async",
        "raw_path": b"/async",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], start["headers"], body


RAW_BAD_VALUES = [v.encode("latin-1") for v in BAD_VALUES] + [
    str(uuid.uuid4()).encode() + b"\r\nSet-Cookie: evil=1",
    b"\xff\xfe" + str(uuid.uuid4()).encode(),
    str(uuid.uuid4()).encode() + b"\x00",
]


@pytest.mark.anyio
@pytest.mark.parametrize("raw", RAW_BAD_VALUES)
@pytest.mark.parametrize("where", ["header", "cookie"])
async def test_invalid_ids_start_a_new_session_and_are_never_echoed(
    client: Freeplay, raw: bytes, where: str
) -> None:
    header = (
        (HEADER.encode(), raw) if where == "header" else (b"cookie", COOKIE.encode() + b"=" + raw)
    )
    status, headers, body = await call_raw(build_app(client), [header])
    assert status == 200
    values = dict(headers)
    sid = values[HEADER.encode()].decode()
    assert parse_session_id(sid) == sid
    if raw:
        assert all(raw not in value for _, value in headers)
        assert raw not in body
    assert current_session() is None


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [v for v in RAW_BAD_VALUES if v])
async def test_invalid_ids_are_rejected_when_configured(client: Freeplay, raw: bytes) -> None:
    seen: list[Any] = []
    app = build_app(client, seen=seen, on_invalid="reject")
    status, headers, body = await call_raw(app, [(HEADER.encode(), raw)])
    assert status == 400
    assert body == b"Invalid Freeplay session ID.\n"
    assert (b"content-type", b"text/plain; charset=utf-8") in headers
    assert seen == []  # the app was not called
    assert not any(name == HEADER.encode() for name, _ in headers)


def test_an_empty_value_is_not_an_invalid_one_under_reject(client: Freeplay) -> None:
    with TestClient(build_app(client, on_invalid="reject")) as http:
        response = http.get("/async", headers={HEADER: ""})
    assert response.status_code == 200
    assert_new_session(response)


# --- Signed IDs ----------------------------------------------------------------------------

SECRET = "s3cret-s3cret-s3cret-s3cret"


def test_signed_ids_round_trip_and_forgeries_start_new_sessions(client: Freeplay) -> None:
    with TestClient(build_app(client, signing_secret=SECRET)) as http:
        first = http.get("/async")
        sid = first.json()["session_id"]
        token = first.headers[HEADER]
        assert token == Signer([SECRET]).sign(sid)
        assert first.headers["set-cookie"].startswith(f"{COOKIE}={token};")
        assert http.get("/async").json()["session_id"] == sid  # the cookie jar resumes it
        http.cookies.clear()
        assert http.get("/async", headers={HEADER: token}).json()["session_id"] == sid
        for forged in (sid, token[:-2], Signer(["another-secret-of-16+"]).sign(sid)):
            response = http.get("/async", headers={HEADER: forged})
            assert response.json()["session_id"] != sid
            assert forged not in response.headers[HEADER]
            http.cookies.clear()


# --- Where the session is visible --------------------------------------------------------


def test_sync_and_async_views_see_the_same_session_object(client: Freeplay) -> None:
    sid = str(uuid.uuid4())
    seen: list[Any] = []
    with TestClient(build_app(client, seen=seen)) as http:
        assert http.get("/async", headers={HEADER: sid}).json()["session_id"] == sid
        assert http.get("/sync", headers={HEADER: sid}).json()["session_id"] == sid
    assert len(seen) == 2
    assert all(s is not None and s.session_id == sid for s in seen)


@pytest.mark.parametrize("path", ["/stream", "/sync-stream"])
def test_streamed_bodies_see_the_session_in_every_chunk(client: Freeplay, path: str) -> None:
    sid = str(uuid.uuid4())
    with TestClient(build_app(client)) as http:
        response = http.get(path, headers={HEADER: sid})
    assert response.text.count(sid) == 3
    assert response.headers[HEADER] == sid


def test_background_tasks_see_the_session(client: Freeplay) -> None:
    seen: list[Any] = []
    sid = str(uuid.uuid4())
    with TestClient(build_app(client, seen=seen)) as http:
        http.get("/background", headers={HEADER: sid})
    [(label, request_session, task_session)] = seen
    assert label == "background"
    assert task_session is request_session
    assert task_session.session_id == sid


def test_websocket_handlers_see_the_session_and_the_accept_carries_it(client: Freeplay) -> None:
    sid = str(uuid.uuid4())
    with (
        TestClient(build_app(client)) as http,
        http.websocket_connect("/ws", headers={HEADER: sid}) as ws,
    ):
        assert ws.receive_text() == sid
        ws.send_text("hi")
        assert ws.receive_text() == f"hi:{sid}"
        accepted = dict(ws.extra_headers or [])
    assert accepted[HEADER.encode()] == sid.encode()
    assert accepted[b"set-cookie"].startswith(f"{COOKIE}={sid};".encode())
    with (
        TestClient(build_app(client)) as http,
        http.websocket_connect("/ws?new=1", headers={HEADER: sid}) as ws,
    ):
        new_id = ws.receive_text()
        ws.send_text("again")
        assert ws.receive_text() == f"again:{new_id}"
        accepted = dict(ws.extra_headers or [])
    assert new_id != sid
    assert accepted[HEADER.encode()] == new_id.encode()


def test_websocket_with_an_invalid_id_is_closed_under_reject(client: Freeplay) -> None:
    with (
        TestClient(build_app(client, on_invalid="reject")) as http,
        pytest.raises(WebSocketDisconnect) as closed,
        http.websocket_connect("/ws", headers={HEADER: "forged"}),
    ):
        pass
    assert closed.value.code == 1008


@pytest.mark.parametrize("path", ["/sync-new", "/async-new", "/stream-new"])
def test_new_session_reaches_the_response(client: Freeplay, path: str) -> None:
    old = str(uuid.uuid4())
    with TestClient(build_app(client)) as http:
        response = http.get(path, headers={HEADER: old})
        new = response.text if path == "/stream-new" else response.json()["session_id"]
        assert new != old
        assert response.headers[HEADER] == new
        assert response.headers["set-cookie"].startswith(f"{COOKIE}={new};")
        # The next request of the conversation continues the new session (cookie jar).
        assert http.get("/async").json()["session_id"] == new


@pytest.mark.parametrize("wrap", [True, False], ids=["outermost", "add_middleware"])
def test_unhandled_exceptions_answer_500_with_the_session(client: Freeplay, wrap: bool) -> None:
    sid = str(uuid.uuid4())
    app = build_app(client, wrap=wrap)
    with TestClient(app, raise_server_exceptions=False) as http:
        response = http.get("/boom", headers={HEADER: sid})
    assert response.status_code == 500
    assert response.headers[HEADER] == sid
    assert response.headers["set-cookie"].startswith(f"{COOKIE}={sid};")


def test_fastapi_dependency_yields_the_request_session(client: Freeplay) -> None:
    app = FastAPI()

    @app.get("/dep")
    async def dep(session: CurrentSession) -> dict[str, Any]:
        return {"session_id": session.session_id, "same": session is require_session()}

    @app.get("/dep-sync")
    def dep_sync(session: CurrentSession) -> dict[str, Any]:
        new = new_session()
        return {"old": session.session_id, "new": new.session_id}

    app.add_middleware(FreeplaySessionMiddleware, client=client, project_id=PROJECT_ID)
    sid = str(uuid.uuid4())
    with TestClient(app) as http:
        assert http.get("/dep", headers={HEADER: sid}).json() == {"session_id": sid, "same": True}
        response = http.get("/dep-sync", headers={HEADER: sid})
    assert response.json()["old"] == sid
    assert response.headers[HEADER] == response.json()["new"]


def test_fastapi_dependency_without_the_middleware_says_what_to_add() -> None:
    app = FastAPI()

    @app.get("/dep")
    async def dep(session: CurrentSession) -> str:
        return session.session_id

    with TestClient(app) as http, pytest.raises(Exception, match="middleware"):
        http.get("/dep")


# --- Hygiene and concurrency ---------------------------------------------------------------


def test_nothing_stays_bound_in_reused_threadpool_threads(client: Freeplay) -> None:
    seen: list[Any] = []
    app = build_app(client, seen=seen, exclude_paths=["/health"])
    with TestClient(app) as http:
        for _ in range(20):
            http.get("/sync")
        leftovers = {http.get("/health").text for _ in range(20)}
    assert leftovers == {"none"}


def test_lifespan_is_passed_through(client: Freeplay) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(lifespan=lifespan)
    wrapped = FreeplaySessionMiddleware(app, client=client, project_id=PROJECT_ID)
    with TestClient(wrapped):
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/async", "/sync"])
async def test_500_concurrent_requests_each_see_their_own_session(
    client: Freeplay, path: str
) -> None:
    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.01)
        return PlainTextResponse(session_id())

    def slow_sync(request: Request) -> Response:
        time.sleep(0.001)
        return PlainTextResponse(session_id())

    app = Starlette(routes=[Route("/async", slow), Route("/sync", slow_sync)])
    app.add_middleware(FreeplaySessionMiddleware, client=client, project_id=PROJECT_ID)
    ids = [str(uuid.uuid4()) for _ in range(500)]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        responses = await asyncio.gather(*(http.get(path, headers={HEADER: i}) for i in ids))
    mixups = [(i, r.text) for i, r in zip(ids, responses, strict=True) if r.text != i]
    assert mixups == []
    assert [r.headers[HEADER] for r in responses] == ids


def test_configuration_errors_happen_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FREEPLAY_API_KEY", "FREEPLAY_API_BASE", "FREEPLAY_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    app = Starlette()
    with pytest.raises(ConfigurationError, match="FREEPLAY_API_KEY"):
        FreeplaySessionMiddleware(app, project_id=PROJECT_ID)
    monkeypatch.setenv("FREEPLAY_API_KEY", "k")
    monkeypatch.setenv("FREEPLAY_API_BASE", "http://127.0.0.1:9/api")
    with pytest.raises(ConfigurationError, match="FREEPLAY_PROJECT_ID"):
        FreeplaySessionMiddleware(app)
    monkeypatch.setenv("FREEPLAY_PROJECT_ID", PROJECT_ID)
    assert FreeplaySessionMiddleware(app).settings.project_id == PROJECT_ID


# --- Ownership ---------------------------------------------------------------------------


def owners_hook(owners: dict[str, str], calls: list[str]) -> Any:
    def authorize(request: HTTPConnection, session_id: str) -> bool:
        calls.append(session_id)
        if request.headers.get("x-user") == "raise":
            raise RuntimeError("directory down")
        return owners.get(session_id) == request.headers.get("x-user")

    return authorize


def test_authorize_session_refuses_another_users_conversation(client: Freeplay) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    calls: list[str] = []
    owners = {mine: "ada", theirs: "bob"}
    app = build_app(client, authorize_session=owners_hook(owners, calls))
    with TestClient(app) as http:
        assert (
            http.get("/async", headers={HEADER: mine, "x-user": "ada"}).json()["session_id"] == mine
        )
        refused = http.get("/async", headers={HEADER: theirs, "x-user": "ada"})
        failing = http.get("/async", headers={HEADER: mine, "x-user": "raise"})
        http.cookies.clear()
        http.get("/async")  # a new session: nothing to authorize
    assert refused.status_code == 200
    assert assert_new_session(refused, not_=theirs) == refused.json()["session_id"]
    assert theirs not in refused.headers["set-cookie"]
    assert failing.json()["session_id"] != mine  # a failing hook refuses, safely
    assert calls == [mine, theirs, mine]


def test_authorize_session_can_answer_403(client: Freeplay) -> None:
    theirs = str(uuid.uuid4())
    seen: list[Any] = []
    app = build_app(
        client,
        seen=seen,
        authorize_session=owners_hook({theirs: "bob"}, []),
        on_unauthorized="reject",
    )
    with TestClient(app) as http:
        response = http.get("/async", headers={HEADER: theirs, "x-user": "ada"})
        allowed = http.get("/async", headers={HEADER: theirs, "x-user": "bob"})
    assert response.status_code == 403
    assert response.text == "This Freeplay session belongs to another user.\n"
    assert HEADER not in response.headers
    assert allowed.json()["session_id"] == theirs
    assert len(seen) == 1  # the app ran only for the allowed request


# -- FreeplaySessionMiddleware.configure: add_middleware, validated at once ---------------


def test_configure_raises_a_configuration_error_at_once(client: Freeplay) -> None:
    from freeplay_integrations import ConfigurationError

    with pytest.raises(ConfigurationError, match="`on_invalid=`"):
        FreeplaySessionMiddleware.configure(
            client=client,
            project_id=PROJECT_ID,
            on_invalid="rejct",  # type: ignore[typeddict-item]
        )


def test_configure_keeps_the_app_a_fastapi_app_with_the_session_on_a_500(
    client: Freeplay,
) -> None:
    app = FastAPI()
    app.add_middleware(FreeplaySessionMiddleware.configure(client=client, project_id=PROJECT_ID))
    app.state.greeting = "hello"

    def real_greeting() -> str:
        return "real"

    from fastapi import Depends

    @app.get("/greet")
    async def greet(session: CurrentSession, greeting: str = Depends(real_greeting)) -> dict:  # type: ignore[type-arg]
        return {"session": session.session_id, "greeting": greeting}

    @app.get("/boom")
    async def boom(session: CurrentSession) -> None:
        raise RuntimeError("boom")

    app.dependency_overrides[real_greeting] = lambda: "overridden"
    assert isinstance(app, FastAPI)
    with TestClient(app, raise_server_exceptions=False) as http:
        ok = http.get("/greet")
        assert ok.json() == {"session": ok.headers[HEADER], "greeting": "overridden"}
        failed = http.get("/boom", headers={HEADER: ok.headers[HEADER]})
        assert failed.status_code == 500
        assert failed.headers[HEADER] == ok.headers[HEADER]
    assert current_session() is None


def test_uvicorn_stops_at_start_up_on_a_bad_configuration(tmp_path: Any) -> None:
    import subprocess
    import sys

    (tmp_path / "badapp.py").write_text(
        "from fastapi import FastAPI\n"
        "from freeplay_integrations.asgi import FreeplaySessionMiddleware\n"
        "app = FastAPI()\n"
        "app.add_middleware(FreeplaySessionMiddleware.configure(\n"
        "    api_key='k', api_base='http://127.0.0.1:9/api',\n"
        "    project_id='8c6f3e2a-1d4b-4f7a-9b2e-5a0c7d1e3f64', recording='later'\n"
        "))\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "badapp:app", "--host", "127.0.0.1", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr and "`recording=`" in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_the_fastapi_cli_finds_a_readme_shaped_app(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fastapi run main.py` / `fastapi dev` discover the app the README's quick start builds."""
    import sys

    from fastapi_cli import discover

    (tmp_path / "main.py").write_text(
        "from fastapi import FastAPI\n"
        "from freeplay_integrations.asgi import FreeplaySessionMiddleware\n"
        "from freeplay_integrations.fastapi import CurrentSession\n"
        "app = FastAPI()\n"
        "@app.post('/chat')\n"
        "async def chat(session: CurrentSession) -> dict[str, str]:\n"
        "    return {'session_id': session.session_id}\n"
        "app.add_middleware(FreeplaySessionMiddleware.configure(\n"
        "    api_key='k', api_base='http://127.0.0.1:9/api',\n"
        "    project_id='9a4b1d3e-5c6f-4a7b-8c9d-0e1f2a3b4c5d',\n"
        "))\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI adds the app's folder to it
    monkeypatch.chdir(tmp_path)
    try:
        data = discover.get_import_data(path=tmp_path / "main.py")  # imports main
        assert data.import_string == "main:app"
        app = sys.modules["main"].app
        assert isinstance(app, FastAPI)
        assert app.dependency_overrides == {}
    finally:
        sys.modules.pop("main", None)


def test_the_app_can_be_given_by_keyword_as_older_starlette_does(client: Freeplay) -> None:
    """Starlette before 0.41 builds each middleware as `cls(app=app, **options)`."""

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        body = require_session().session_id.encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    options: dict[str, Any] = {"client": client, "project_id": PROJECT_ID}
    for app in (
        FreeplaySessionMiddleware(app=inner, **options),  # type: ignore[call-arg]
        FreeplaySessionMiddleware.configure(**options)(app=inner),
    ):
        response = TestClient(app).get("/")  # no lifespan: `inner` serves HTTP only
        assert response.text == response.headers[HEADER]

    with pytest.raises(TypeError, match="one positional argument"):
        FreeplaySessionMiddleware(inner, app=inner, **options)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="one positional argument"):
        FreeplaySessionMiddleware(**options)  # type: ignore[call-arg]
