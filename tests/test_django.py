"""The Django middleware through Django's own test clients: `Client` drives the WSGI
(sync) handler, `AsyncClient` the ASGI (async) one, each with a fresh handler per client.

Every request's view reports the session it saw (`current_session()` and
`request.freeplay_session`) in its body; recordings go to the local Freeplay server. After
every request the test's own context must have nothing bound (`_get`/`_aget`).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished, request_started
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from freeplay.resources.sessions import Session

from freeplay_integrations import current_session, flush
from freeplay_integrations.django import FreeplaySessionMiddleware
from freeplay_integrations.django.middleware import (
    ASYNC_STREAM_WARNING,
    SYNC_STREAM_WARNING,
    RequestSession,
)
from freeplay_integrations.local import LocalFreeplay
from tests.django_app.views import ASYNC_SIGNALS, EVENTS

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings as SettingsWrapper

HEADER = "X-Freeplay-Session-Id"
COOKIE = "freeplay_session_id"
EXPOSE = "Access-Control-Expose-Headers"
MAX_AGE = "2592000"


# -- helpers -------------------------------------------------------------------------------


PROJECT_ID = "5e0c3c8a-3b7e-4f0e-9a51-2c4d6e8f0a1b"


def _get(client: Client, path: str, **extra: Any) -> Any:
    response = client.get(path, **extra)
    assert current_session() is None, "the request left a session bound in the test's context"
    return response


async def _aget(client: AsyncClient, path: str, **extra: Any) -> Any:
    response = await client.get(path, **extra)
    assert current_session() is None, "the request left a session bound in the test's context"
    return response


def _sid(response: HttpResponse) -> str:
    """The session the response carries in its header, checked against its cookie."""
    header = response[HEADER]
    assert response.cookies[COOKIE].value == header
    return header


def _is_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4 and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _lines(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.decode().splitlines()]


def _stream(response: Any) -> list[dict[str, Any]]:
    content = b"".join(response.streaming_content)
    assert current_session() is None, "streaming left a session bound in the test's context"
    return _lines(content)


async def _astream(response: Any) -> list[dict[str, Any]]:
    content = b"".join([chunk async for chunk in response.streaming_content])
    assert current_session() is None, "streaming left a session bound in the test's context"
    return _lines(content)


@pytest.fixture
def local(freeplay_local: LocalFreeplay, settings: SettingsWrapper) -> LocalFreeplay:
    """`FREEPLAY` pointed at the local Freeplay server for this test."""
    settings.FREEPLAY = {
        "CLIENT": freeplay_local.client(),
        "PROJECT_ID": freeplay_local.project_id,
    }
    return freeplay_local


def _recorded(server: LocalFreeplay, session_id: str, completion_id: str) -> None:
    """The completion arrived at the local server, in `session_id`."""
    assert flush(10)
    completions = server.wait_for(lambda: server.completions(session_id))
    assert [completion["id"] for completion in completions] == [completion_id]


# -- sync and async, header and cookie -------------------------------------------------------


def test_sync_view_gets_a_new_session_echoed_in_header_and_cookie() -> None:
    response = _get(Client(), "/sync/")
    assert response.status_code == 200
    session_id = _sid(response)
    assert _is_uuid4(session_id)
    body = response.json()
    for step in ("before", "after", "late"):
        assert body[step]["current"] == body[step]["request"] == session_id
        assert body[step]["same"] is True
    morsel = response.cookies[COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert str(morsel["max-age"]) == MAX_AGE
    assert not morsel["secure"]
    assert HEADER in response[EXPOSE]


@pytest.mark.anyio
async def test_async_view_gets_a_new_session_echoed_in_header_and_cookie() -> None:
    response = await _aget(AsyncClient(), "/async/")
    session_id = _sid(response)
    assert _is_uuid4(session_id)
    body = response.json()
    for step in ("before", "after", "late"):
        assert body[step]["current"] == body[step]["request"] == session_id
    assert response[EXPOSE] == HEADER


def test_a_valid_header_resumes_the_session_in_canonical_form() -> None:
    session_id = str(uuid.uuid4())
    response = _get(Client(), "/sync/", headers={HEADER: session_id.upper()})
    assert _sid(response) == session_id
    assert response.json()["before"]["current"] == session_id


def test_the_cookie_resumes_the_session_and_the_header_wins_over_it() -> None:
    client = Client()
    first = _sid(_get(client, "/sync/"))
    assert _sid(_get(client, "/sync/")) == first  # the test client sent the cookie back
    other = str(uuid.uuid4())
    assert _sid(_get(client, "/sync/", headers={HEADER: other})) == other


@pytest.mark.anyio
async def test_a_sync_view_under_asgi_runs_in_a_worker_thread_with_the_session() -> None:
    import threading

    session_id = str(uuid.uuid4())
    response = await _aget(AsyncClient(), "/sync/", headers={HEADER: session_id})
    body = response.json()
    assert body["before"]["thread"] != threading.get_ident()  # Django's sync_to_async
    assert body["before"]["current"] == body["before"]["request"] == session_id
    assert _sid(response) == session_id


# -- new_session() wherever the view runs --------------------------------------------------


def _check_new_session(response: HttpResponse, old: str) -> None:
    body = response.json()
    assert body["before"]["current"] == body["before"]["request"] == old
    new = body["after"]["current"]
    assert new != old and _is_uuid4(new)
    assert body["after"]["request"] == new  # request.freeplay_session follows new_session()
    assert _sid(response) == new


def test_new_session_in_a_sync_view_under_wsgi_reaches_the_response() -> None:
    old = str(uuid.uuid4())
    _check_new_session(_get(Client(), "/sync/?new=1", headers={HEADER: old}), old)


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/async/?new=1", "/sync/?new=1", "/cbv/async/?new=1"])
async def test_new_session_under_asgi_reaches_the_response(path: str) -> None:
    # /sync/ runs in Django's sync_to_async thread: the change made there is still seen.
    old = str(uuid.uuid4())
    _check_new_session(await _aget(AsyncClient(), path, headers={HEADER: old}), old)


def test_class_based_view_under_wsgi() -> None:
    old = str(uuid.uuid4())
    _check_new_session(_get(Client(), "/cbv/sync/?new=1", headers={HEADER: old}), old)


@pytest.mark.anyio
async def test_sync_class_based_view_under_asgi() -> None:
    old = str(uuid.uuid4())
    _check_new_session(await _aget(AsyncClient(), "/cbv/sync/?new=1", headers={HEADER: old}), old)


def test_request_freeplay_session_is_the_current_sdk_session() -> None:
    seen: list[Any] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append((request.freeplay_session, current_session()))  # type: ignore[attr-defined]
        return HttpResponse("ok")

    middleware = FreeplaySessionMiddleware(view)
    request = HttpRequest()
    request.method, request.path = "GET", "/"
    middleware(request)
    [(attached, current)] = seen
    assert isinstance(attached, Session) and isinstance(attached, RequestSession)
    assert attached == current and attached.session_id == current.session_id
    assert attached.session_info.session_id == current.session_id


# -- recordings land in the request's session ----------------------------------------------


def test_a_recording_in_a_sync_view_lands_in_the_requests_session(local: LocalFreeplay) -> None:
    session_id = str(uuid.uuid4())
    response = _get(Client(), "/sync/?record=1", headers={HEADER: session_id})
    _recorded(local, session_id, response.json()["completion_id"])


@pytest.mark.anyio
async def test_a_recording_in_an_async_view_lands_in_the_requests_session(
    local: LocalFreeplay,
) -> None:
    session_id = str(uuid.uuid4())
    response = await _aget(AsyncClient(), "/async/?record=1", headers={HEADER: session_id})
    _recorded(local, session_id, response.json()["completion_id"])


def test_a_recording_after_new_session_lands_in_the_new_session(local: LocalFreeplay) -> None:
    old = str(uuid.uuid4())
    response = _get(Client(), "/sync/?new=1&record=1", headers={HEADER: old})
    new = _sid(response)
    _recorded(local, new, response.json()["completion_id"])
    assert local.completions(old) == []


def test_django_rest_framework_view(local: LocalFreeplay) -> None:
    pytest.importorskip("rest_framework")
    old = str(uuid.uuid4())
    response = Client().post(
        "/drf/", data={"new": True}, content_type="application/json", headers={HEADER: old}
    )
    assert current_session() is None
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["before"]["current"] == body["before"]["request"] == old
    new = body["after"]["current"]
    assert body["after"]["request"] == new != old
    assert _sid(response) == new
    _recorded(local, new, body["completion_id"])


# -- signals ---------------------------------------------------------------------------------


def test_signal_receivers_see_the_session_under_wsgi() -> None:
    session_id = str(uuid.uuid4())
    body = _get(Client(), "/signal/sync/", headers={HEADER: session_id}).json()
    assert body["view"]["current"] == session_id
    assert {r["receiver"] for r in body["receivers"]} == RECEIVERS
    for seen in body["receivers"]:
        assert seen["current"] == seen["request"] == session_id


@pytest.mark.anyio
async def test_signal_receivers_see_the_session_under_asgi() -> None:
    old = str(uuid.uuid4())
    response = await _aget(AsyncClient(), "/signal/async/?new=1", headers={HEADER: old})
    body = response.json()
    new = body["view"]["current"]
    assert new != old and _sid(response) == new
    assert {r["receiver"] for r in body["receivers"]} == RECEIVERS
    for seen in body["receivers"]:  # the sync receiver ran in a worker thread
        assert seen["current"] == seen["request"] == new


RECEIVERS = {"sync", "async"} if ASYNC_SIGNALS else {"sync"}


def _connect_outside_probes() -> tuple[list[Any], Any]:
    """Receivers of request_started/finished, which run outside the middleware."""
    seen: list[Any] = []

    def probe(**kwargs: Any) -> None:
        seen.append(current_session())

    request_started.connect(probe, weak=False)
    request_finished.connect(probe, weak=False)

    def disconnect() -> None:
        request_started.disconnect(probe)
        request_finished.disconnect(probe)

    return seen, disconnect


def test_nothing_is_bound_outside_the_middleware_under_wsgi() -> None:
    seen, disconnect = _connect_outside_probes()
    try:
        client = Client()
        _get(client, "/sync/")
        _stream(_get(client, "/stream/sync/"))
    finally:
        disconnect()
    assert seen == [None, None, None, None]


@pytest.mark.anyio
async def test_nothing_is_bound_outside_the_middleware_under_asgi() -> None:
    seen, disconnect = _connect_outside_probes()
    try:
        client = AsyncClient()
        await _aget(client, "/async/")
        await _astream(await _aget(client, "/stream/async/"))
    finally:
        disconnect()
    assert seen == [None, None, None, None]


# -- streaming bodies ------------------------------------------------------------------------


def test_sync_stream_under_wsgi_sees_the_session_in_every_chunk() -> None:
    session_id = str(uuid.uuid4())
    response = _get(Client(), "/stream/sync/", headers={HEADER: session_id})
    assert _sid(response) == session_id
    chunks = _stream(response)
    assert [c["step"] for c in chunks] == ["chunk0", "chunk1", "chunk2"]
    assert {(c["current"], c["request"]) for c in chunks} == {(session_id, session_id)}


@pytest.mark.anyio
async def test_async_stream_under_asgi_sees_the_session_in_every_chunk() -> None:
    session_id = str(uuid.uuid4())
    response = await _aget(AsyncClient(), "/stream/async/", headers={HEADER: session_id})
    assert _sid(response) == session_id
    chunks = await _astream(response)
    assert len(chunks) == 3
    assert {(c["current"], c["request"]) for c in chunks} == {(session_id, session_id)}


@pytest.mark.anyio
async def test_sync_stream_under_asgi_sees_the_session_and_django_warns() -> None:
    # Django collects a sync body whole under ASGI; the middleware does it for Django, so
    # a new_session() anywhere in the body still reaches the header and cookie.
    session_id = str(uuid.uuid4())
    with pytest.warns(Warning, match="must consume synchronous iterators") as warned:
        response = await _aget(
            AsyncClient(), "/stream/sync/?new_late=1", headers={HEADER: session_id}
        )
        chunks = await _astream(response)
    assert [str(w.message) for w in warned] == [SYNC_STREAM_WARNING]  # once, not twice
    assert [c["step"] for c in chunks] == ["chunk0", "chunk1", "chunk2"]
    assert (chunks[0]["current"], chunks[0]["request"]) == (session_id, session_id)
    new = chunks[1]["current"]
    assert new != session_id and chunks[2]["current"] == chunks[2]["request"] == new
    assert _sid(response) == new


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_the_steps_of_a_streamed_body_share_one_context(local: LocalFreeplay, mode: str) -> None:
    from asgiref.sync import async_to_sync

    session_id = str(uuid.uuid4())
    if mode == "wsgi":
        chunks = _stream(_get(Client(), "/stream/context/", headers={HEADER: session_id}))
    else:

        async def fetch() -> list[dict[str, Any]]:
            response = await AsyncClient().get("/stream/context/", headers={HEADER: session_id})
            return await _astream(response)

        with pytest.warns(Warning, match="must consume synchronous iterators"):
            chunks = async_to_sync(fetch)()
    assert current_session() is None
    assert [c["marker"] for c in chunks] == ["set in the first step"] * 3
    assert [c["in_trace"] for c in chunks] == [True] * 3
    assert {c["current"] for c in chunks} == {session_id}
    assert flush(10)
    [trace] = local.wait_for(lambda: local.traces(session_id))
    assert trace["output"] == "answer"


def test_async_stream_under_wsgi_sees_the_session_and_django_warns() -> None:
    session_id = str(uuid.uuid4())
    with pytest.warns(Warning, match="must consume asynchronous iterators"):
        response = _get(Client(), "/stream/async/", headers={HEADER: session_id})
    assert ASYNC_STREAM_WARNING.startswith("StreamingHttpResponse")
    assert _sid(response) == session_id
    chunks = _stream(response)
    assert len(chunks) == 3
    assert {(c["current"], c["request"]) for c in chunks} == {(session_id, session_id)}


def test_new_session_before_the_first_chunk_reaches_the_header_under_wsgi() -> None:
    old = str(uuid.uuid4())
    response = _get(Client(), "/stream/sync/?new=1", headers={HEADER: old})
    new = _sid(response)
    assert new != old
    assert {c["current"] for c in _stream(response)} == {new}


@pytest.mark.anyio
async def test_new_session_before_the_first_chunk_reaches_the_header_under_asgi() -> None:
    old = str(uuid.uuid4())
    response = await _aget(AsyncClient(), "/stream/async/?new=1", headers={HEADER: old})
    new = _sid(response)
    assert new != old
    assert {c["current"] for c in await _astream(response)} == {new}


def test_new_session_after_the_first_chunk_switches_later_chunks_only(
    local: LocalFreeplay,
) -> None:
    # The header left with the first chunk; the rest of the body records into the new one.
    old = str(uuid.uuid4())
    response = _get(Client(), "/stream/sync/?new_late=1&record=1", headers={HEADER: old})
    assert _sid(response) == old
    chunks = _stream(response)
    assert chunks[0]["current"] == old
    new = chunks[1]["current"]
    assert new != old and chunks[2]["current"] == new and chunks[1]["request"] == new
    assert flush(10)
    local.wait_for(lambda: local.completions(new))
    assert local.completions(old) == []


@pytest.mark.parametrize("path", ["/stream/sync/?raise=1", "/stream/async/?raise=1"])
def test_a_stream_failing_before_its_first_chunk_is_a_500_with_the_session(path: str) -> None:
    session_id = str(uuid.uuid4())
    client = Client(raise_request_exception=False)
    with pytest.warns(Warning) if "async" in path else _no_warning():
        response = _get(client, path, headers={HEADER: session_id})
    assert response.status_code == 500
    assert _sid(response) == session_id


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
@pytest.mark.parametrize("path", ["/stream/sync/?raise=1", "/stream/async/?raise=1"])
async def test_a_stream_failing_before_its_first_chunk_is_a_500_under_asgi(path: str) -> None:
    session_id = str(uuid.uuid4())
    client = AsyncClient(raise_request_exception=False)
    response = await _aget(client, path, headers={HEADER: session_id})
    assert response.status_code == 500
    assert _sid(response) == session_id


def test_an_empty_stream_still_carries_the_session() -> None:
    session_id = str(uuid.uuid4())
    response = _get(Client(), "/stream/sync/?chunks=0", headers={HEADER: session_id})
    assert _sid(response) == session_id
    assert _stream(response) == []


@pytest.mark.anyio
async def test_an_empty_async_stream_still_carries_the_session() -> None:
    session_id = str(uuid.uuid4())
    response = await _aget(AsyncClient(), "/stream/async/?chunks=0", headers={HEADER: session_id})
    assert _sid(response) == session_id
    assert await _astream(response) == []


class _no_warning:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- error responses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"), [("500", 500), ("404", 404), ("403", 403), ("400", 400)]
)
def test_error_responses_django_produces_carry_the_session(kind: str, status: int) -> None:
    session_id = str(uuid.uuid4())
    client = Client(raise_request_exception=False)
    response = _get(client, f"/error/?kind={kind}", headers={HEADER: session_id})
    assert response.status_code == status
    assert _sid(response) == session_id


def test_an_unmatched_url_404_carries_the_session() -> None:
    session_id = str(uuid.uuid4())
    response = _get(Client(), "/no/such/page/", headers={HEADER: session_id})
    assert response.status_code == 404
    assert _sid(response) == session_id


@pytest.mark.anyio
async def test_an_async_view_exception_is_a_500_with_the_session() -> None:
    session_id = str(uuid.uuid4())
    client = AsyncClient(raise_request_exception=False)
    response = await _aget(client, "/error/async/", headers={HEADER: session_id})
    assert response.status_code == 500
    assert _sid(response) == session_id


def test_the_view_exception_still_reaches_the_test_client() -> None:
    with pytest.raises(RuntimeError, match="the view failed"):
        Client().get("/error/")
    assert current_session() is None


# -- end_session, excluded paths, CORS -------------------------------------------------------


def test_end_session_expires_the_cookie_and_sends_no_header() -> None:
    response = _get(Client(), "/sync/?end=1", headers={HEADER: str(uuid.uuid4())})
    assert HEADER not in response
    morsel = response.cookies[COOKIE]
    assert morsel.value == ""
    assert str(morsel["max-age"]) == "0"


def test_excluded_paths_get_no_session(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {**settings.FREEPLAY, "EXCLUDE_PATHS": ["/health"]}
    response = _get(Client(), "/health/", headers={HEADER: str(uuid.uuid4())})
    assert response.json()["current"] is None
    assert response.json()["request"] is None
    assert HEADER not in response and COOKIE not in response.cookies


def test_expose_headers_are_merged_with_the_views_own() -> None:
    response = _get(Client(), "/expose/")
    assert response[EXPOSE] == f"X-Other, {HEADER}"


def test_signed_ids_are_echoed_signed_and_resume(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {**settings.FREEPLAY, "SIGNING_SECRET": "s" * 32}
    client = Client()
    token = _sid(_get(client, "/sync/"))
    session_id, dot, signature = token.partition(".")
    assert dot and signature and _is_uuid4(session_id)
    assert _get(client, "/sync/", headers={HEADER: token}).json()["before"]["current"] == session_id
    forged = _get(client, "/sync/", headers={HEADER: f"{session_id}.{'A' * 43}"})
    assert forged.json()["before"]["current"] != session_id


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, HEADER),
        ("X-Other", f"X-Other, {HEADER}"),
        (f"x-other, {HEADER.lower()}", f"x-other, {HEADER.lower()}"),
        ("*", "*"),
    ],
)
def test_the_header_writer_stores_what_response_headers_would(
    existing: str | None, expected: str
) -> None:
    """The writer puts the session headers into `ResponseHeaders`' store directly; the
    response then reads as if `headers[...] = ...` had set them (the fallback path)."""
    from freeplay_integrations.django.conf import get_config

    config = get_config()
    direct, public = HttpResponse(), HttpResponse()
    if existing is not None:
        direct[EXPOSE] = public[EXPOSE] = existing
    writer = config.write_headers
    assert writer._direct
    writer(direct.headers, "token")
    writer._direct = False
    try:
        writer(public.headers, "token")
    finally:
        writer._direct = True
    assert list(direct.items()) == list(public.items())
    assert direct[HEADER.upper()] == "token"
    assert direct[EXPOSE] == expected


def test_the_session_morsel_copies_like_a_morsel() -> None:
    """`SessionMorsel` keeps its key and values in slots; `copy()` still carries them."""
    import copy
    import pickle

    morsel = _get(Client(), "/sync/").cookies[COOKIE]
    for duplicate in (morsel.copy(), copy.deepcopy(morsel), pickle.loads(pickle.dumps(morsel))):
        assert duplicate.key == COOKIE
        assert duplicate.value == morsel.value
        assert duplicate.OutputString() == morsel.OutputString()
        assert duplicate == morsel


# -- the Set-Cookie text -------------------------------------------------------------------


def _wsgi_headers(path: str, **environ: str) -> list[tuple[str, str]]:
    """The headers Django's WSGI handler gives the server for `path`."""
    from wsgiref.util import setup_testing_defaults

    from django.core.handlers.wsgi import WSGIHandler

    env: dict[str, Any] = {"PATH_INFO": path, **environ}
    setup_testing_defaults(env)
    captured: list[tuple[str, str]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured.extend(headers)

    response = WSGIHandler()(env, start_response)
    b"".join(response)
    response.close()
    assert current_session() is None
    return captured


def test_the_cookie_is_set_with_response_set_cookie_from_the_cores_attributes() -> None:
    session_id = str(uuid.uuid4())
    headers = _wsgi_headers("/sync/", HTTP_X_FREEPLAY_SESSION_ID=session_id)
    [cookie] = [value.strip() for name, value in headers if name == "Set-Cookie"]
    pair, *attributes = [part.strip() for part in cookie.split(";")]
    assert pair == f"{COOKIE}={session_id}"
    # Django's set_cookie adds Expires (from Max-Age); the rest is the core's cookie.
    assert {a for a in attributes if not a.startswith("expires=")} == {
        f"Max-Age={MAX_AGE}",
        "Path=/",
        "SameSite=Lax",
        "HttpOnly",
    }
    ended = _wsgi_headers("/sync/", QUERY_STRING="end=1")
    [expired] = [value.strip() for name, value in ended if name == "Set-Cookie"]
    pair, *attributes = [part.strip() for part in expired.split(";")]
    assert pair == f'{COOKIE}=""'
    assert {"expires=Thu, 01 Jan 1970 00:00:00 GMT", "Max-Age=0", "HttpOnly"} <= set(attributes)


def test_the_cookie_is_the_one_response_set_cookie_makes_and_each_response_has_its_own() -> None:
    from freeplay_integrations._context import new_binding
    from freeplay_integrations.django.conf import get_config

    first, second = _get(Client(), "/sync/"), _get(Client(), "/sync/")
    morsel = first.cookies[COOKIE]
    resolver = get_config().resolver
    binding = new_binding(None, resolver.settings.client, PROJECT_ID, session_id=_sid(first))
    cookie = resolver.cookie(binding, False)
    assert cookie is not None
    a = cookie.attributes
    expected = HttpResponse()
    expected.set_cookie(
        COOKIE,
        morsel.value,
        max_age=a.max_age,
        expires=morsel["expires"],
        path=a.path,
        domain=a.domain,
        secure=a.secure,
        httponly=a.httponly,
        samesite=a.samesite,  # type: ignore[arg-type]
    )
    assert dict(morsel) == dict(expected.cookies[COOKIE])
    assert morsel.output() == expected.cookies[COOKIE].output()
    # Changing one response's cookie changes no other response's.
    morsel["path"] = "/elsewhere"
    assert second.cookies[COOKIE]["path"] == "/"
    assert second.cookies[COOKIE].value != morsel.value


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.__setitem__("path", "/x"),
        lambda m: m.update({"path": "/x"}),
        lambda m: m.__delitem__("samesite"),
        lambda m: m.pop("samesite"),
        lambda m: m.setdefault("comment", "x"),
        lambda m: m.clear(),
        lambda m: m.__ior__({"path": "/x"}),
        lambda m: m.set("renamed", "v", "v"),
    ],
)
def test_the_kept_cookie_text_morsels_own_and_follows_every_edit(edit: Any) -> None:
    from http.cookies import Morsel

    def plain(morsel: Morsel[str]) -> str:
        copy: Morsel[str] = Morsel()
        dict.update(copy, morsel)
        copy.set(morsel.key, morsel.value, morsel.coded_value)
        return copy.output()

    morsel = _get(Client(), "/sync/").cookies[COOKIE]
    assert morsel.output() == plain(morsel)
    edit(morsel)
    assert morsel.output() == plain(morsel)


def test_a_session_cookie_changed_after_the_middleware_is_written_with_the_change() -> None:
    import pickle

    response = _get(Client(), "/sync/")
    morsel = response.cookies[COOKIE]
    assert morsel["httponly"] is True and morsel["samesite"] == "Lax"
    morsel["domain"] = "example.com"
    assert "Domain=example.com" in morsel.OutputString()
    # A pickled response (the cache middleware stores them so) keeps a valid cookie.
    copy = pickle.loads(pickle.dumps(response.cookies))[COOKIE]
    assert copy.value == morsel.value and "Max-Age=2592000" in copy.OutputString()


# -- secure cookies --------------------------------------------------------------------------


def test_the_cookie_is_secure_over_https() -> None:
    response = _get(Client(), "/sync/", secure=True)
    assert response.cookies[COOKIE]["secure"] is True


def test_the_cookie_is_secure_behind_a_proxy_that_says_https(settings: SettingsWrapper) -> None:
    headers = {"X-Forwarded-Proto": "https"}
    assert not _get(Client(), "/sync/", headers=headers).cookies[COOKIE]["secure"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert _get(Client(), "/sync/", headers=headers).cookies[COOKIE]["secure"] is True


@pytest.mark.parametrize(
    ("configured", "https", "secure"), [(True, False, True), (False, True, False)]
)
def test_cookie_secure_overrides_the_request(
    settings: SettingsWrapper, configured: bool, https: bool, secure: bool
) -> None:
    settings.FREEPLAY = {**settings.FREEPLAY, "COOKIE_SECURE": configured}
    response = _get(Client(), "/sync/", secure=https)
    assert bool(response.cookies[COOKIE]["secure"]) is secure


def test_cookie_options_are_honoured(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {
        **settings.FREEPLAY,
        "SESSION_COOKIE": "conv",
        "COOKIE_SAMESITE": "strict",
        "COOKIE_DOMAIN": "example.com",
        "COOKIE_PATH": "/chat",
        "COOKIE_MAX_AGE": 60,
    }
    morsel = _get(Client(), "/sync/").cookies["conv"]
    assert (morsel["samesite"], morsel["domain"], morsel["path"]) == (
        "Strict",
        "example.com",
        "/chat",
    )
    assert str(morsel["max-age"]) == "60"


# -- invalid session IDs ---------------------------------------------------------------------

BAD_VALUES = [
    "",
    "not-a-session",
    "x" * 10_000,
    str(uuid.uuid1()),
    str(uuid.uuid3(uuid.NAMESPACE_DNS, "example.com")),
    str(uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")),
    "{" + str(uuid.uuid4()) + "}",
    uuid.uuid4().hex,
    "urn:uuid:" + str(uuid.uuid4()),
    str(uuid.uuid4()) + "\x00",
    str(uuid.uuid4())[:-1] + "\n",
    "\x1b[31m" + str(uuid.uuid4()),
    str(uuid.uuid4()) + " ",
]


@pytest.mark.parametrize("value", BAD_VALUES, ids=range(len(BAD_VALUES)))
@pytest.mark.parametrize("source", ["header", "cookie"])
def test_invalid_ids_start_a_new_session_and_are_never_echoed(value: str, source: str) -> None:
    extra = {"HTTP_X_FREEPLAY_SESSION_ID": value} if source == "header" else {}
    if source == "cookie":
        extra["HTTP_COOKIE"] = f"{COOKIE}={value}"
    response = _get(Client(), "/sync/", **extra)
    assert response.status_code == 200
    session_id = _sid(response)
    assert _is_uuid4(session_id)
    assert response.json()["before"]["current"] == session_id
    if value.strip():
        assert value not in response.content.decode()
        assert value not in str(response.headers)


@pytest.mark.anyio
@pytest.mark.parametrize("value", BAD_VALUES[1:6], ids=range(5))
async def test_invalid_ids_start_a_new_session_under_asgi(value: str) -> None:
    response = await _aget(AsyncClient(), "/async/", headers={HEADER: value})
    assert response.status_code == 200
    assert _is_uuid4(_sid(response)) and _sid(response) != value


def test_on_invalid_reject_answers_400_without_calling_the_view(
    settings: SettingsWrapper,
) -> None:
    settings.FREEPLAY = {**settings.FREEPLAY, "ON_INVALID": "reject"}
    key = str(uuid.uuid4())
    response = _get(Client(), f"/stream/sync/?key={key}", headers={HEADER: "not-a-session"})
    assert response.status_code == 400
    assert response.content == b"Invalid Freeplay session ID.\n"
    assert response["Content-Type"].startswith("text/plain")
    assert "not-a-session" not in str(response.headers)
    assert HEADER not in response and COOKIE not in response.cookies
    assert key not in EVENTS  # the view never ran
    # A valid ID still gets through.
    assert _get(Client(), "/sync/", headers={HEADER: str(uuid.uuid4())}).status_code == 200


@pytest.mark.anyio
async def test_on_invalid_reject_under_asgi(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {**settings.FREEPLAY, "ON_INVALID": "reject"}
    response = await _aget(AsyncClient(), "/async/", headers={HEADER: "x" * 5000})
    assert response.status_code == 400
    assert HEADER not in response


# -- hooks and settings ------------------------------------------------------------------------


def test_session_metadata_by_dotted_path_reaches_freeplay(
    local: LocalFreeplay, settings: SettingsWrapper
) -> None:
    settings.FREEPLAY = {
        **settings.FREEPLAY,
        "SESSION_METADATA": "tests.django_app.hooks.tenant_metadata",
    }
    response = _get(Client(), "/sync/?record=1", headers={"X-Tenant": "acme"})
    session_id = _sid(response)
    assert flush(10)
    local.wait_for(lambda: local.completions(session_id))
    assert local.session(session_id)["custom_metadata"] == {"tenant": "acme"}  # type: ignore[index]


@pytest.mark.anyio
async def test_hooks_run_outside_the_event_loop_under_asgi(
    local: LocalFreeplay, settings: SettingsWrapper
) -> None:
    # Hooks read request.user, which queries the database: Django refuses that in an
    # event loop, so under ASGI they run in a worker thread, as a sync view would.
    settings.FREEPLAY = {
        **settings.FREEPLAY,
        "SESSION_METADATA": "tests.django_app.hooks.tenant_from_database",
        "AUTHORIZE_SESSION": "tests.django_app.hooks.owner_from_database",
    }
    session_id = str(uuid.uuid4())
    response = await _aget(AsyncClient(), "/async/?record=1", headers={HEADER: session_id})
    assert _sid(response) == session_id  # authorized, not refused for an error
    assert flush(10)
    local.wait_for(lambda: local.completions(session_id))
    assert local.session(session_id)["custom_metadata"] == {"tenant": "acme"}  # type: ignore[index]


@pytest.mark.parametrize(("on_unauthorized", "status"), [("new", 200), ("reject", 403)])
def test_authorize_session_by_dotted_path(
    settings: SettingsWrapper, on_unauthorized: str, status: int
) -> None:
    settings.FREEPLAY = {
        **settings.FREEPLAY,
        "AUTHORIZE_SESSION": "tests.django_app.hooks.allow_only_trusted",
        "ON_UNAUTHORIZED": on_unauthorized,
    }
    session_id = str(uuid.uuid4())
    trusted = _get(Client(), "/sync/", headers={HEADER: session_id, "X-Trusted": "yes"})
    assert _sid(trusted) == session_id
    refused = _get(Client(), "/sync/", headers={HEADER: session_id})
    assert refused.status_code == status
    if status == 200:
        assert _sid(refused) != session_id
    else:
        assert HEADER not in refused


def test_client_by_dotted_path_to_a_factory(
    freeplay_local_env: LocalFreeplay, settings: SettingsWrapper
) -> None:
    settings.FREEPLAY = {"CLIENT": "tests.django_app.hooks.client_from_env"}  # project: env
    response = _get(Client(), "/sync/?record=1")
    _recorded(freeplay_local_env, _sid(response), response.json()["completion_id"])


def test_client_by_dotted_path_to_an_instance(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {"CLIENT": "tests.django_app.hooks.CLIENT", "PROJECT_ID": PROJECT_ID}
    assert _is_uuid4(_sid(_get(Client(), "/sync/")))


def test_override_settings_applies_to_an_existing_client(settings: SettingsWrapper) -> None:
    client = Client()
    assert HEADER in _get(client, "/sync/")
    settings.FREEPLAY = {**settings.FREEPLAY, "SESSION_HEADER": "X-Conversation"}
    response = _get(client, "/sync/", headers={"X-Conversation": (sid := str(uuid.uuid4()))})
    assert HEADER not in response
    assert response["X-Conversation"] == sid


def test_a_broken_setting_fails_when_the_middleware_is_built(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FREEPLAY_PROJECT_ID", raising=False)
    settings.FREEPLAY = {"API_KEY": "k", "API_BASE": "http://127.0.0.1:9/api"}
    with pytest.raises(ImproperlyConfigured, match=r'FREEPLAY\["PROJECT_ID"\]'):
        FreeplaySessionMiddleware(lambda request: HttpResponse())
    settings.FREEPLAY = {
        "PROJECT_ID": PROJECT_ID,
        "API_KEY": "k",
        "API_BASE": "x",
        "SESION_HEADER": "X",
    }
    with pytest.raises(ImproperlyConfigured, match='Did you mean "SESSION_HEADER"'):
        FreeplaySessionMiddleware(lambda request: HttpResponse())


def test_the_middleware_is_sync_and_async_capable() -> None:
    def sync_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    async def async_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    assert FreeplaySessionMiddleware.sync_capable and FreeplaySessionMiddleware.async_capable
    assert not iscoroutinefunction(FreeplaySessionMiddleware(sync_view))
    assert iscoroutinefunction(FreeplaySessionMiddleware(async_view))
