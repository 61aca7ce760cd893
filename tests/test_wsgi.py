"""The WSGI middleware, driven by a minimal PEP 3333 server and by wsgiref's validator."""

from __future__ import annotations

import io
import logging
import uuid
import wsgiref.util
import wsgiref.validate
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from freeplay.resources.recordings import RecordPayload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freeplay_integrations import current_session, new_session
from freeplay_integrations._context import current_binding
from freeplay_integrations._ids import parse_session_id
from freeplay_integrations._web import INVALID_ID_REASON
from freeplay_integrations.local import DEFAULT_PROJECT_ID as PROJECT_ID
from freeplay_integrations.wsgi import (
    EXPOSE_HEADERS,
    LOG_UNHANDLED,
    SERVER_ERROR_BODY,
    FreeplaySessionMiddleware,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from freeplay_integrations.local import LocalFreeplay

HEADER = "X-Freeplay-Session-Id"
ENVIRON_HEADER = "HTTP_X_FREEPLAY_SESSION_ID"
COOKIE = "freeplay_session_id"

#: Invalid session IDs every adapter must survive: never a 500, never echoed.
BAD_VALUES: dict[str, str] = {
    "huge": "x" * 10 * 1024,
    "not-a-uuid": "not-a-uuid",
    "uuid1": str(uuid.uuid1()),
    "uuid3": str(uuid.uuid3(uuid.NAMESPACE_DNS, "example.com")),
    "uuid5": str(uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")),
    "bad-variant": "1b4e28ba-2fa1-41d2-c83f-0800200c9a66",
    "braces": "{" + str(uuid.uuid4()) + "}",
    "crlf": str(uuid.uuid4()) + "\r\nSet-Cookie: evil=1",
    "non-ascii": "caf\xc3\xa9-" + str(uuid.uuid4())[5:],  # UTF-8 bytes, as WSGI decodes them
    "uuid-and-junk": str(uuid.uuid4()) + "x",
}


@dataclass
class Served:
    """What a PEP 3333 server did with one request."""

    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    start_calls: int = 0

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def session_id(self) -> str:
        value = self.header(HEADER)
        assert value is not None, f"no {HEADER} in {self.headers}"
        return value

    @property
    def text(self) -> str:
        return b"".join(self.body).decode()


def make_environ(
    path: str = "/", *, header: str | None = None, cookie: str | None = None, **extra: Any
) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "wsgi.input": io.BytesIO(),
    }
    wsgiref.util.setup_testing_defaults(environ)
    if header is not None:
        environ[ENVIRON_HEADER] = header
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    environ.update(extra)
    return environ


def serve(app: WSGIApplication, environ: WSGIEnvironment | None = None) -> Served:
    """Serve one request like a WSGI server: call, iterate, close.

    Asserts PEP 3333's ordering (headers before any body byte) and that no session is bound
    in the server's own context between the steps or after `close()`.
    """
    served = Served()
    sent = False

    def write(data: bytes) -> None:
        nonlocal sent
        assert served.start_calls, "body written before start_response"
        sent = sent or bool(data)
        served.body.append(data)

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and sent:
            raise exc_info[1].with_traceback(exc_info[2])
        served.start_calls += 1
        served.status, served.headers = status, list(headers)
        return write

    result = app(environ or make_environ(), start_response)
    assert current_session() is None, "session left bound after the app call"
    try:
        for chunk in result:
            assert current_session() is None, "session left bound between two chunks"
            if chunk:
                write(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    assert current_session() is None, "session left bound after close()"
    assert served.start_calls, "start_response was never called"
    return served


def echo_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """Answers the ID of the session bound while it runs."""
    session = current_session()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [session.session_id.encode() if session else b"none"]


@pytest.fixture
def make(freeplay_local: LocalFreeplay) -> Callable[..., FreeplaySessionMiddleware]:
    """A fresh middleware around `app`, recording into the local Freeplay server."""

    def factory(app: WSGIApplication = echo_app, **options: Any) -> FreeplaySessionMiddleware:
        options.setdefault("client", freeplay_local.client())
        options.setdefault("project_id", freeplay_local.project_id)
        return FreeplaySessionMiddleware(app, **options)

    return factory


# -- resolution and the response ------------------------------------------------------------


def test_new_session_bound_in_the_app_and_echoed(make: Callable[..., Any]) -> None:
    served = serve(make())
    assert served.status == "200 OK"
    assert parse_session_id(served.session_id) == served.session_id
    assert served.text == served.session_id
    cookie = served.header("Set-Cookie")
    assert cookie is not None
    assert cookie.startswith(f"{COOKIE}={served.session_id}; Max-Age=2592000; Path=/;")
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie and "Secure" not in cookie
    assert served.header(EXPOSE_HEADERS) == HEADER


@pytest.mark.parametrize("body", [[b"a", b"", b"b"], (b"a", b"b"), []])
def test_a_made_body_goes_to_the_server_as_it_is_with_the_headers_sent_first(
    make: Callable[..., Any], body: list[bytes] | tuple[bytes, ...]
) -> None:
    calls: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        calls.append(dict(headers)[HEADER])
        return lambda data: None

    sid = str(uuid.uuid4())
    result = make(app)(make_environ(header=sid), start_response)
    # No code runs while a list or tuple is sent: the headers went out with the session, and
    # the server gets the app's own object (nothing to bind around its steps).
    assert result is body and calls == [sid]
    assert current_session() is None
    assert serve(make(app), make_environ(header=sid)).session_id == sid


def test_each_request_without_an_id_gets_its_own_session(make: Callable[..., Any]) -> None:
    app = make()
    assert serve(app).session_id != serve(app).session_id


def test_header_resumes_the_session(make: Callable[..., Any]) -> None:
    sid = str(uuid.uuid4())
    served = serve(make(), make_environ(header=sid.upper()))
    assert served.session_id == sid
    assert served.text == sid


def test_cookie_resumes_the_session_and_header_wins(make: Callable[..., Any]) -> None:
    app = make()
    from_cookie, from_header = str(uuid.uuid4()), str(uuid.uuid4())
    served = serve(app, make_environ(cookie=f"theme=dark; {COOKIE}={from_cookie}"))
    assert served.text == from_cookie
    served = serve(app, make_environ(header=from_header, cookie=f"{COOKIE}={from_cookie}"))
    assert served.text == from_header


def test_https_cookie_is_secure(make: Callable[..., Any]) -> None:
    served = serve(make(), make_environ(**{"wsgi.url_scheme": "https"}))
    assert "; Secure" in (served.header("Set-Cookie") or "")


def test_signed_cookie_round_trips(make: Callable[..., Any]) -> None:
    app = make(signing_secret="s" * 32)
    first = serve(app)
    token = first.session_id
    session_id, dot, signature = token.partition(".")
    assert dot and signature and parse_session_id(session_id) == session_id
    assert serve(app, make_environ(cookie=f"{COOKIE}={token}")).text == session_id
    forged = serve(app, make_environ(cookie=f"{COOKIE}={session_id}.{'A' * 43}"))
    assert forged.text != session_id


def test_expose_headers_merged_with_the_apps(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("access-control-expose-headers", "X-Request-Id")])
        return [b"ok"]

    served = serve(make(app))
    assert served.header(EXPOSE_HEADERS) == f"X-Request-Id, {HEADER}"


@pytest.mark.parametrize("listed", ["*", "x-freeplay-session-id, X-Other"])
def test_an_expose_list_that_names_the_header_already_is_kept(
    make: Callable[..., Any], listed: str
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Access-Control-Expose-Headers", listed)])
        return [b"ok"]

    middleware, session_id = make(app), str(uuid.uuid4())
    for _ in range(2):  # the second answer is the returning client's kept headers
        served = serve(middleware, make_environ(header=session_id))
        assert served.all(EXPOSE_HEADERS) == [listed]
        assert served.header(HEADER) == session_id
        assert served.header("Set-Cookie").startswith(f"{COOKIE}={session_id};")


def test_header_and_cookie_can_be_turned_off(make: Callable[..., Any]) -> None:
    served = serve(make(echo_header=False, set_cookie=False))
    assert served.header(HEADER) is None
    assert served.header("Set-Cookie") is None
    assert served.header(EXPOSE_HEADERS) is None
    assert parse_session_id(served.text)


def test_custom_header_name(make: Callable[..., Any]) -> None:
    sid = str(uuid.uuid4())
    served = serve(make(session_header="X-Conversation"), make_environ(HTTP_X_CONVERSATION=sid))
    assert served.header("X-Conversation") == sid
    assert served.text == sid


def test_session_metadata_gets_the_environ(make: Callable[..., Any]) -> None:
    seen: list[Any] = []

    def metadata(environ: WSGIEnvironment) -> dict[str, Any]:
        seen.append(environ)
        return {"user": environ.get("HTTP_X_USER")}

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        session = current_session()
        assert session is not None
        start_response("200 OK", [])
        return [str(session.custom_metadata).encode()]

    environ = make_environ(HTTP_X_USER="ada")
    served = serve(make(app, session_metadata=metadata), environ)
    assert seen == [environ]
    assert served.text == "{'user': 'ada'}"


def test_authorize_session_gets_the_environ(make: Callable[..., Any]) -> None:
    calls: list[tuple[Any, str]] = []

    def authorize(environ: WSGIEnvironment, session_id: str) -> bool:
        calls.append((environ, session_id))
        return bool(environ.get("HTTP_X_USER") == "owner")

    app = make(authorize_session=authorize)
    sid = str(uuid.uuid4())
    owner = make_environ(header=sid, HTTP_X_USER="owner")
    assert serve(app, owner).text == sid
    assert calls == [(owner, sid)]
    assert serve(app, make_environ(header=sid, HTTP_X_USER="other")).text != sid


def test_excluded_paths_are_passed_through(make: Callable[..., Any]) -> None:
    app = make(exclude_paths=["/health"])
    served = serve(app, make_environ("/health/live"))
    assert served.text == "none"
    assert served.headers == [("Content-Type", "text/plain")]
    # The full path counts: SCRIPT_NAME + PATH_INFO.
    assert serve(app, make_environ("/live", SCRIPT_NAME="/health")).text == "none"
    assert serve(app, make_environ("/api/health")).text != "none"


def test_end_session_expires_the_cookie(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        binding = current_binding()
        assert binding is not None
        binding.ended = True  # what end_session() does
        start_response("200 OK", [])
        return [b"bye"]

    served = serve(make(app), make_environ(header=str(uuid.uuid4())))
    assert served.header(HEADER) is None
    assert (served.header("Set-Cookie") or "").startswith(f"{COOKIE}=; Max-Age=0;")


def test_wsgiref_validator_on_both_sides(make: Callable[..., Any]) -> None:
    def streamed(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        yield str(current_session().session_id).encode()  # type: ignore[union-attr]

    app = wsgiref.validate.validator(make(wsgiref.validate.validator(streamed)))
    served = serve(app)
    assert served.text == served.session_id


def test_recording_in_the_app_lands_in_the_session(
    make: Callable[..., Any], freeplay_local: LocalFreeplay
) -> None:
    client = freeplay_local.client()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        session = current_session()
        assert session is not None
        client.recordings.create(
            RecordPayload(
                project_id=freeplay_local.project_id,
                all_messages=[{"role": "user", "content": "hi"}],
                session_info=session.session_info,
            )
        )
        start_response("200 OK", [])
        yield b"ok"

    sid = str(uuid.uuid4())
    served = serve(make(app), make_environ(header=sid))
    assert served.session_id == sid
    completions = freeplay_local.completions(sid)
    assert len(completions) == 1
    assert [s["id"] for s in freeplay_local.sessions()] == [sid]


# -- the response iterable --------------------------------------------------------------------


def test_every_chunk_and_close_see_the_session(make: Callable[..., Any]) -> None:
    seen: list[str | None] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(3):
                session = current_session()
                seen.append(session.session_id if session else None)
                yield b"."

        def close(self) -> None:
            session = current_session()
            seen.append(session.session_id if session else None)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return Body()

    served = serve(make(app))
    assert served.text == "..."
    assert seen == [served.session_id] * 4


def test_two_responses_driven_in_turns_by_one_thread(make: Callable[..., Any]) -> None:
    """A server interleaving two responses in one thread: each step sees its own session."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        for _ in range(3):
            yield str(current_session().session_id).encode()  # type: ignore[union-attr]

    middleware = make(app)
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    results = [middleware(make_environ(header=sid), lambda s, h, e=None: None) for sid in ids]
    iterators = [iter(r) for r in results]
    for _ in range(3):
        for sid, iterator in zip(ids, iterators, strict=True):
            assert next(iterator) == sid.encode()
            assert current_session() is None
    for result in results:
        result.close()  # type: ignore[attr-defined]
    assert current_session() is None


def test_new_session_in_the_app_reaches_the_response(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [new_session().session_id.encode()]

    sent = str(uuid.uuid4())
    served = serve(make(app), make_environ(header=sent))
    assert served.session_id == served.text != sent
    assert served.all("Set-Cookie")[0].startswith(f"{COOKIE}={served.text};")


def test_new_session_in_a_streamed_body_before_its_first_chunk(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b""  # empty chunks do not send the headers
        yield new_session().session_id.encode()
        yield b"|" + str(current_session().session_id).encode()  # type: ignore[union-attr]

    sent = str(uuid.uuid4())
    served = serve(make(app), make_environ(header=sent))
    first, second = served.text.split("|")
    assert served.session_id == first == second != sent


def test_new_session_after_the_first_chunk_is_too_late_for_headers(
    make: Callable[..., Any],
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first|"
        yield new_session().session_id.encode()

    sent = str(uuid.uuid4())
    served = serve(make(app), make_environ(header=sent))
    assert served.session_id == sent
    assert served.text.split("|")[1] != sent


def test_empty_body_still_starts_the_response(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("204 No Content", [])
        return []

    served = serve(make(app))
    assert served.status == "204 No Content"
    assert parse_session_id(served.session_id)


def test_legacy_write_sends_headers_first(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written|")
        return [str(current_session().session_id).encode()]  # type: ignore[union-attr]

    served = serve(make(app))
    assert served.start_calls == 1
    assert served.text == f"written|{served.session_id}"


def test_exc_info_replaces_headers_before_they_are_sent(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Partial", "1")])
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            start_response("503 Service Unavailable", [("Retry-After", "1")], sys.exc_info())
        return [b"later"]

    served = serve(make(app))
    assert served.status == "503 Service Unavailable"
    assert served.header("X-Partial") is None
    assert served.header("Retry-After") == "1"
    assert parse_session_id(served.session_id)


def test_exc_info_after_the_headers_went_out_reraises(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"sent"
        try:
            raise ValueError("mid-stream")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"

    with pytest.raises(ValueError, match="mid-stream"):
        serve(make(app))
    assert current_session() is None


def test_second_start_response_without_exc_info_is_an_error(
    make: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        start_response("201 Created", [])
        return [b""]

    served = serve(make(app))
    assert served.status.startswith("500")
    assert "called a second time without exc_info" in caplog.text


# -- errors -------------------------------------------------------------------------------------


def crash(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    assert current_session() is not None
    raise RuntimeError("view crashed")


def test_exception_answered_500_with_the_session(
    make: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    sid = str(uuid.uuid4())
    with caplog.at_level(logging.ERROR, logger="freeplay_integrations"):
        served = serve(make(crash), make_environ(header=sid))
    assert served.status == "500 Internal Server Error"
    assert served.body == [SERVER_ERROR_BODY]
    assert served.session_id == sid
    assert (served.header("Set-Cookie") or "").startswith(f"{COOKIE}={sid};")
    [record] = [r for r in caplog.records if r.msg == LOG_UNHANDLED]
    assert record.exc_info is not None and "view crashed" in str(record.exc_info[1])


def test_exception_in_a_body_before_its_first_chunk_answered_500(make: Callable[..., Any]) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        raise RuntimeError("body crashed")
        yield b"never"

    sid = str(uuid.uuid4())
    served = serve(make(app), make_environ(header=sid))
    assert served.status.startswith("500")
    assert served.header("Content-Type") == "text/plain; charset=utf-8"
    assert served.session_id == sid


def test_exception_after_the_first_chunk_propagates(make: Callable[..., Any]) -> None:
    closed: list[bool] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            yield b"partial"
            raise RuntimeError("mid-stream")
        finally:
            closed.append(current_session() is not None)

    with pytest.raises(RuntimeError, match="mid-stream"):
        serve(make(app))
    assert closed == [True]


def test_propagate_exceptions_reraises(make: Callable[..., Any]) -> None:
    with pytest.raises(RuntimeError, match="view crashed"):
        serve(make(crash, propagate_exceptions=True))
    assert current_session() is None


# -- bad input ----------------------------------------------------------------------------------


def calls_counted() -> tuple[WSGIApplication, list[int]]:
    calls: list[int] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        calls.append(1)
        return echo_app(environ, start_response)

    return app, calls


def assert_not_echoed(served: Served, bad: str) -> None:
    for name, value in served.headers:
        assert bad not in value, f"{name} echoes the invalid value"
    assert bad.encode("latin-1") not in b"".join(served.body)


@pytest.mark.parametrize("source", ["header", "cookie"])
@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_invalid_id_starts_a_new_session(make: Callable[..., Any], source: str, bad: str) -> None:
    app, calls = calls_counted()
    environ = (
        make_environ(header=bad) if source == "header" else make_environ(cookie=f"{COOKIE}={bad}")
    )
    served = serve(make(app), environ)
    assert served.status == "200 OK" and calls == [1]
    assert parse_session_id(served.session_id) == served.session_id == served.text
    assert_not_echoed(served, bad)


@pytest.mark.parametrize("source", ["header", "cookie"])
@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_invalid_id_rejected_with_400(make: Callable[..., Any], source: str, bad: str) -> None:
    app, calls = calls_counted()
    environ = (
        make_environ(header=bad) if source == "header" else make_environ(cookie=f"{COOKIE}={bad}")
    )
    served = serve(make(app, on_invalid="reject"), environ)
    assert served.status == "400 Bad Request" and calls == []
    assert served.text == INVALID_ID_REASON + "\n"
    assert served.header(HEADER) is None and served.header("Set-Cookie") is None
    assert_not_echoed(served, bad)


@pytest.mark.parametrize("on_invalid", ["new", "reject"])
def test_empty_id_is_no_id(make: Callable[..., Any], on_invalid: str) -> None:
    served = serve(make(on_invalid=on_invalid), make_environ(header="", cookie=f"{COOKIE}="))
    assert served.status == "200 OK"
    assert parse_session_id(served.session_id)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(alphabet=st.characters(max_codepoint=255), max_size=120))
def test_any_header_value_is_never_a_500_nor_echoed(make: Callable[..., Any], value: str) -> None:
    served = serve(make(), make_environ(header=value))
    assert served.status == "200 OK"
    session_id = served.session_id
    assert parse_session_id(session_id) == session_id
    assert (served.header("Set-Cookie") or "").startswith(f"{COOKIE}={session_id};")
    valid = parse_session_id(value)
    if valid is not None:
        assert session_id == valid
    else:
        assert session_id != value.strip().lower()


def test_misconfiguration_names_the_keyword() -> None:
    from freeplay_integrations import ConfigurationError

    with pytest.raises(ConfigurationError, match="`on_invalid=` must be 'new' or 'reject'"):
        FreeplaySessionMiddleware(
            echo_app, api_key="k", api_base="http://x/api", project_id=PROJECT_ID, on_invalid="drop"
        )
