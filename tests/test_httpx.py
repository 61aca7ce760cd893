"""freeplay_integrations.httpx: the session header goes to allowed hosts, and only to them."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import flask
import httpx
import pytest
import waitress
from freeplay import Freeplay
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freeplay_integrations import (
    ConfigurationError,
    current_session,
    end_session,
    flush,
    new_session,
    record,
    session_scope,
)
from freeplay_integrations._ids import Signer
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.flask import FreeplaySessions
from freeplay_integrations.httpx import (
    LOG_EMPTY_ALLOWLIST,
    LOG_PREDICATE_FAILED,
    AsyncSessionPropagatingTransport,
    HostAllowlist,
    SessionPropagatingTransport,
    propagate_session,
)
from freeplay_integrations.local import LocalFreeplay
from tests._servers import serve_asgi

HEADER = "x-freeplay-session-id"
SECRET = "a-shared-secret-of-enough-length"

# -- downstream stand-ins: real WSGI/ASGI apps that answer with the headers they received --


def echo_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Echo the request's headers; `/redirect?to=URL` answers a 302 to URL."""
    if environ["PATH_INFO"] == "/redirect":
        target = parse_qs(environ["QUERY_STRING"])["to"][0]
        start_response("302 Found", [("Location", target), ("Content-Length", "0")])
        return [b""]
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    body = json.dumps({"headers": headers}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


async def echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    body = json.dumps({"headers": headers}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def seen(response: httpx.Response, header: str = HEADER) -> str | None:
    """The session header the echo app received, or None."""
    response.raise_for_status()
    value: str | None = response.json()["headers"].get(header)
    return value


@pytest.fixture
def fp(freeplay_local: LocalFreeplay) -> Freeplay:
    return freeplay_local.client()


def sync_client(kind: str, allow_hosts: Any, **options: Any) -> httpx.Client:
    """A fresh client that propagates the session, built either way the module offers."""
    inner = httpx.WSGITransport(app=echo_wsgi)
    if kind == "hook":
        return propagate_session(httpx.Client(transport=inner), allow_hosts=allow_hosts, **options)
    return httpx.Client(
        transport=SessionPropagatingTransport(inner, allow_hosts=allow_hosts, **options)
    )


def async_client(kind: str, allow_hosts: Any, **options: Any) -> httpx.AsyncClient:
    inner = httpx.ASGITransport(app=echo_asgi)
    if kind == "hook":
        return propagate_session(
            httpx.AsyncClient(transport=inner), allow_hosts=allow_hosts, **options
        )
    return httpx.AsyncClient(
        transport=AsyncSessionPropagatingTransport(inner, allow_hosts=allow_hosts, **options)
    )


KINDS = ["hook", "transport"]

# -- the allowlist ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "url", "allowed"),
    [
        (["svc.internal"], "http://svc.internal/x", True),
        (["svc.internal"], "https://SVC.Internal:8443/x", True),  # any case, any port
        (["svc.internal"], "http://svc.internal./x", True),  # trailing dot
        (["SVC.INTERNAL."], "http://svc.internal/x", True),
        (["svc.internal"], "http://other.internal/x", False),
        (["svc.internal"], "http://a.svc.internal/x", False),  # exact means exact
        (["svc.internal"], "http://svc.internal.evil.com/x", False),
        (["svc.internal:8443"], "https://svc.internal:8443/", True),
        (["svc.internal:8443"], "https://svc.internal/", False),
        (["svc.internal:443"], "https://svc.internal/", True),  # the scheme's default port
        (["svc.internal:80"], "https://svc.internal/", False),
        (["*.internal.example"], "http://a.internal.example/", True),
        (["*.internal.example"], "http://a.b.internal.example/", True),  # any depth
        (["*.internal.example"], "http://internal.example/", False),  # not the apex
        (["*.internal.example"], "http://evilinternal.example/", False),
        (["*.internal.example"], "http://internal.example.evil.com/", False),
        (["*.internal.example:8000"], "http://a.internal.example:8000/", True),
        (["*.internal.example:8000"], "http://a.internal.example:9000/", False),
        (["127.0.0.1:8000"], "http://127.0.0.1:8000/", True),
        (["127.0.0.1:8000"], "http://127.0.0.1:8001/", False),
        (["[::1]:8000"], "http://[::1]:8000/", True),
        (["::1"], "http://[::1]:9999/", True),
        (["bücher.example"], "http://xn--bcher-kva.example/", True),  # IDNA either way
        (["xn--bcher-kva.example"], "http://BÜCHER.example/", True),
        ("svc.internal", "http://svc.internal/", True),  # a single string is one pattern
        ([], "http://svc.internal/", False),
        (["a.internal", "*.b.internal"], "http://x.b.internal/", True),
    ],
)
def test_allowlist_patterns(patterns: Any, url: str, allowed: bool) -> None:
    assert HostAllowlist(patterns).allows(httpx.URL(url)) is allowed


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("*", "may not be '*'"),
        ("https://svc.internal", "is not a host name"),
        ("svc.internal/path", "is not a host name"),
        ("user@svc.internal", "is not a host name"),
        ("", "is empty"),
        ("a.*.internal", "leading '*.'"),
        ("svc.internal:http", "invalid port"),
        ("svc.internal:70000", "invalid port"),
        ("*.", "may not be '*'"),
        (42, "is not a string"),
    ],
)
def test_allowlist_refuses_what_is_not_a_host_pattern(pattern: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match="allow_hosts") as info:
        HostAllowlist([pattern])
    assert message in str(info.value)


def test_allowlist_of_wrong_type_says_what_to_pass() -> None:
    with pytest.raises(ConfigurationError, match=r"list of host patterns"):
        HostAllowlist(42)  # type: ignore[arg-type]


def test_allowlist_callable_gets_the_url_and_fails_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    urls: list[httpx.URL] = []

    def allow(url: httpx.URL) -> bool:
        urls.append(url)
        if url.host == "broken.internal":
            raise RuntimeError("bug in the user's callable")
        return url.host.endswith(".internal")

    allowlist = HostAllowlist(allow)
    assert allowlist.allows(httpx.URL("http://svc.internal/a"))
    assert not allowlist.allows(httpx.URL("https://api.openai.com/v1"))
    with caplog.at_level(logging.ERROR, logger="freeplay_integrations"):
        assert not allowlist.allows(httpx.URL("http://broken.internal/"))
    assert [r.getMessage() for r in caplog.records] == [LOG_PREDICATE_FAILED]
    assert [str(u) for u in urls][:2] == ["http://svc.internal/a", "https://api.openai.com/v1"]


# -- sync and async clients ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sync_client_sends_the_session_to_allowed_hosts_only(kind: str, fp: Freeplay) -> None:
    with sync_client(kind, ["svc.internal", "*.mesh.internal"]) as client:
        assert seen(client.get("http://svc.internal/")) is None  # outside a session
        with session_scope(fp) as session:
            assert seen(client.get("http://svc.internal/")) == session.session_id
            assert seen(client.get("https://a.mesh.internal/x")) == session.session_id
            assert seen(client.get("https://api.openai.com/v1/chat")) is None
            assert seen(client.get("https://mesh.internal/")) is None
        assert seen(client.get("http://svc.internal/")) is None  # and after it
    assert current_session() is None


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_async_client_sends_the_session_to_allowed_hosts_only(
    kind: str, fp: Freeplay
) -> None:
    async with async_client(kind, ["svc.internal"]) as client:
        assert seen(await client.get("http://svc.internal/")) is None
        async with session_scope(fp) as session:
            assert seen(await client.get("http://svc.internal/")) == session.session_id
            assert seen(await client.get("https://api.anthropic.com/v1/messages")) is None
        assert seen(await client.get("http://svc.internal/")) is None
    assert current_session() is None


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_is_sent_after_end_session_until_new_session(kind: str, fp: Freeplay) -> None:
    with sync_client(kind, ["svc.internal"]) as client, session_scope(fp):
        end_session()
        assert seen(client.get("http://svc.internal/")) is None
        fresh = new_session()
        assert seen(client.get("http://svc.internal/")) == fresh.session_id
    assert current_session() is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_header_the_caller_set_is_never_overwritten(kind: str, fp: Freeplay) -> None:
    with sync_client(kind, ["svc.internal"]) as client, session_scope(fp):
        assert seen(client.get("http://svc.internal/", headers={HEADER: "mine"})) == "mine"
        client.headers["X-Freeplay-Session-Id"] = "client default"
        assert seen(client.get("http://svc.internal/")) == "client default"
    assert current_session() is None


@pytest.mark.parametrize("kind", KINDS)
def test_header_name_is_configurable(kind: str, fp: Freeplay) -> None:
    with (
        sync_client(kind, ["svc.internal"], header_name="X-Conversation") as client,
        session_scope(fp) as session,
    ):
        response = client.get("http://svc.internal/")
        assert seen(response, "x-conversation") == session.session_id
        assert seen(response) is None
    assert current_session() is None


@pytest.mark.parametrize("kind", KINDS)
def test_signing_secret_signs_the_value_for_a_downstream_that_verifies(
    kind: str, fp: Freeplay
) -> None:
    with (
        sync_client(kind, ["svc.internal"], signing_secret=SECRET) as client,
        session_scope(fp) as session,
    ):
        value = seen(client.get("http://svc.internal/"))
    assert value is not None and value != session.session_id
    assert Signer([SECRET]).unsign(value) == session.session_id
    assert current_session() is None


@pytest.mark.parametrize("bad", [{"header_name": None}, {"header_name": "bad header"}])
def test_bad_header_name_is_a_configuration_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="header_name"):
        propagate_session(httpx.Client(), allow_hosts=["svc.internal"], **bad)


def test_short_signing_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="signing_secret"):
        SessionPropagatingTransport(allow_hosts=["svc.internal"], signing_secret="short")


@pytest.mark.parametrize("kind", KINDS)
def test_redirect_to_a_host_not_allowed_drops_the_header(kind: str, fp: Freeplay) -> None:
    with (
        sync_client(kind, ["svc.internal", "other.internal"]) as client,
        session_scope(fp) as session,
    ):
        away = client.get(
            "http://svc.internal/redirect",
            params={"to": "https://api.openai.com/v1/chat"},
            follow_redirects=True,
        )
        assert away.url.host == "api.openai.com"
        assert seen(away) is None
        along = client.get(
            "http://svc.internal/redirect",
            params={"to": "http://other.internal/next"},
            follow_redirects=True,
        )
        assert along.url.host == "other.internal"
        assert seen(along) == session.session_id
        # A header the caller set is theirs to send wherever the redirect goes.
        explicit = client.get(
            "http://svc.internal/redirect",
            params={"to": "https://api.openai.com/v1/chat"},
            headers={HEADER: "mine"},
            follow_redirects=True,
        )
        assert seen(explicit) == "mine"
    assert current_session() is None


def test_hook_runs_after_the_clients_own_hooks_and_covers_mounts(fp: Freeplay) -> None:
    calls: list[str | None] = []

    def users_hook(request: httpx.Request) -> None:
        calls.append(request.headers.get(HEADER))
        if request.url.path == "/pin":
            request.headers[HEADER] = "pinned by the user"

    client = httpx.Client(
        transport=httpx.WSGITransport(app=echo_wsgi),
        mounts={"http://mounted.internal": httpx.WSGITransport(app=echo_wsgi)},
        event_hooks={"request": [users_hook]},
    )
    with propagate_session(client, allow_hosts=["*.internal"]), session_scope(fp) as session:
        assert seen(client.get("http://svc.internal/")) == session.session_id
        assert seen(client.get("http://mounted.internal/")) == session.session_id
        assert seen(client.get("http://svc.internal/pin")) == "pinned by the user"
    assert calls == [None, None, None]  # the user's hook ran first, every time
    assert current_session() is None


def test_propagate_session_once_per_client() -> None:
    client = propagate_session(httpx.Client(), allow_hosts=["svc.internal"])
    with pytest.raises(RuntimeError, match="already propagates"):
        propagate_session(client, allow_hosts=["other.internal"])
    assert len(client.event_hooks["request"]) == 1
    client.close()


def test_propagate_session_refuses_what_is_not_a_client() -> None:
    with pytest.raises(TypeError, match="SessionPropagatingTransport"):
        propagate_session(httpx.HTTPTransport(), allow_hosts=["svc.internal"])  # type: ignore[type-var]


def test_empty_allowlist_warns_that_nothing_will_be_sent(
    caplog: pytest.LogCaptureFixture, fp: Freeplay
) -> None:
    with caplog.at_level(logging.WARNING, logger="freeplay_integrations"):
        client = httpx.Client(transport=SessionPropagatingTransport(httpx.WSGITransport(echo_wsgi)))
    assert [r.getMessage() for r in caplog.records] == [LOG_EMPTY_ALLOWLIST]
    with client, session_scope(fp):
        assert seen(client.get("http://svc.internal/")) is None
    assert current_session() is None


class TrackedTransport(httpx.WSGITransport):
    """The echo app's transport, counting how the client opens and closes it."""

    def __init__(self) -> None:
        super().__init__(app=echo_wsgi)
        self.events: list[str] = []

    def __enter__(self) -> TrackedTransport:
        self.events.append("enter")
        return self

    def close(self) -> None:
        self.events.append("close")
        super().close()


def test_transport_wrapper_opens_and_closes_the_transport_it_wraps(fp: Freeplay) -> None:
    inner = TrackedTransport()
    wrapper = SessionPropagatingTransport(inner, allow_hosts=["svc.internal"])
    with httpx.Client(transport=wrapper) as client, session_scope(fp) as session:
        assert seen(client.get("http://svc.internal/")) == session.session_id
    assert inner.events == ["enter", "close"]
    assert wrapper.allowlist.patterns == ("svc.internal",)
    inner.events.clear()
    httpx.Client(transport=SessionPropagatingTransport(inner, allow_hosts=["a"])).close()
    assert inner.events == ["close"]
    assert current_session() is None


class TrackedAsyncTransport(httpx.ASGITransport):
    def __init__(self) -> None:
        super().__init__(app=echo_asgi)
        self.events: list[str] = []

    async def __aenter__(self) -> TrackedAsyncTransport:
        self.events.append("enter")
        return self

    async def aclose(self) -> None:
        self.events.append("close")
        await super().aclose()


@pytest.mark.anyio
async def test_async_transport_wrapper_opens_and_closes_the_transport_it_wraps(
    fp: Freeplay,
) -> None:
    inner = TrackedAsyncTransport()
    wrapper = AsyncSessionPropagatingTransport(inner, allow_hosts=["svc.internal"])
    async with httpx.AsyncClient(transport=wrapper) as client, session_scope(fp) as session:
        assert seen(await client.get("http://svc.internal/")) == session.session_id
    assert inner.events == ["enter", "close"]
    assert wrapper.allowlist.allows(httpx.URL("http://svc.internal/"))
    assert current_session() is None


@pytest.mark.anyio
async def test_concurrent_tasks_on_one_client_each_send_their_own_session(fp: Freeplay) -> None:
    client = propagate_session(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=echo_asgi)),
        allow_hosts=["svc.internal"],
    )

    async def conversation() -> tuple[str, list[str | None]]:
        async with session_scope(fp) as session:
            values = []
            for _ in range(3):
                values.append(seen(await client.get("http://svc.internal/")))
                await asyncio.sleep(0)
            return session.session_id, values

    async with client:
        results = await asyncio.gather(*(conversation() for _ in range(50)))
    assert len({sid for sid, _ in results}) == 50
    for session_id, values in results:
        assert values == [session_id] * 3
    assert current_session() is None


# -- end to end: service A calls service B over real HTTP -------------------------------------


def record_from_b(question: str) -> str:
    """What service B does: record one completion into the session its middleware bound."""
    record(
        all_messages=[
            {"role": "user", "content": question},
            {"role": "assistant", "content": "from B"},
        ]
    )
    session = current_session()
    assert session is not None
    return session.session_id


def make_flask_service_b(freeplay_local: LocalFreeplay, **options: Any) -> Any:
    """Service B as a Flask app with the FreeplaySessions extension."""
    app = flask.Flask("service_b")
    FreeplaySessions(
        app, client=freeplay_local.client(), project_id=freeplay_local.project_id, **options
    )

    @app.get("/answer")
    def answer() -> dict[str, str]:
        return {"session_id": record_from_b(flask.request.args["q"])}

    return app


def make_asgi_service_b(freeplay_local: LocalFreeplay, **options: Any) -> Any:
    """Service B as a Starlette app behind the ASGI middleware."""

    def answer(request: Request) -> JSONResponse:  # sync: Starlette runs it in a thread
        return JSONResponse({"session_id": record_from_b(request.query_params["q"])})

    app = Starlette(routes=[Route("/answer", answer)])
    return FreeplaySessionMiddleware(
        app, client=freeplay_local.client(), project_id=freeplay_local.project_id, **options
    )


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve `app` with waitress on a free loopback port; yield its base URL."""
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=10)


def serve_service_b(kind: str, freeplay_local: LocalFreeplay, **options: Any) -> Any:
    if kind == "flask":
        return serve_wsgi(make_flask_service_b(freeplay_local, **options))
    return serve_asgi(make_asgi_service_b(freeplay_local, **options), lifespan="off")


def make_service_a(freeplay_local: LocalFreeplay, b_url: str, c_url: str, **options: Any) -> Any:
    """Service A: calls B (allowed) and C (a third party: not allowed) with one client."""
    b = httpx.URL(b_url)
    allow_hosts = [f"{b.host}:{b.port}"]  # the same loopback host as C, but B's port only

    async def chat(request: Request) -> JSONResponse:
        q = request.query_params["q"]
        async with propagate_session(httpx.AsyncClient(), allow_hosts=allow_hosts) as client:
            from_b = (await client.get(f"{b_url}/answer", params={"q": q})).json()
            from_c = (await client.get(f"{c_url}/v1/chat")).json()
        session = current_session()
        assert session is not None
        return JSONResponse(
            {"a": session.session_id, "b": from_b["session_id"], "c_saw": from_c["headers"]}
        )

    app = Starlette(routes=[Route("/chat", chat)])
    return FreeplaySessionMiddleware(
        app, client=freeplay_local.client(), project_id=freeplay_local.project_id, **options
    )


@pytest.mark.parametrize("b_kind", ["flask", "asgi"])
@pytest.mark.parametrize("secret", [None, SECRET], ids=["plain", "signed"])
def test_recording_in_service_b_lands_in_service_a_session(
    freeplay_local: LocalFreeplay, secret: str | None, b_kind: str
) -> None:
    """A (uvicorn) calls B (waitress+Flask, or uvicorn) and C (a third party) over loopback."""
    options: dict[str, Any] = {} if secret is None else {"signing_secret": secret}
    with (
        serve_service_b(b_kind, freeplay_local, **options) as b_url,
        serve_asgi(echo_asgi, lifespan="off") as c_url,
        serve_asgi(
            make_service_a(freeplay_local, b_url, c_url, **options), lifespan="off"
        ) as a_url,
        httpx.Client(base_url=a_url) as browser,
    ):
        first = browser.get("/chat", params={"q": "hello"})
        token = first.headers["X-Freeplay-Session-Id"]
        second = browser.get("/chat", params={"q": "again"}, headers={HEADER: token})

    for response in (first, second):
        body = response.json()
        assert body["b"] == body["a"]  # B joined A's session
        assert HEADER not in body["c_saw"]  # the third party got nothing
    session_id = first.json()["a"]
    assert second.json()["a"] == session_id
    assert (token == session_id) is (secret is None)
    assert flush(timeout=5)  # B records in the background
    completions = freeplay_local.completions(session_id)
    assert [c["messages"][0]["content"] for c in completions] == ["hello", "again"]
    assert len(freeplay_local.sessions()) == 1
    assert current_session() is None
