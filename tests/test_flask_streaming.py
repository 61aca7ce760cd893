"""Streamed Flask responses: every chunk, and close(), run with the request's session.

The body of a streamed response is iterated by the WSGI server after the view returned and
Flask's request context is gone (the test client does the same). Each body here yields the
session ID it sees, one line per chunk.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import pytest
from contextvars_extras.integrations.flask import Flask as SandboxFlask
from flask import Flask, Response, has_request_context, request, stream_with_context
from freeplay.resources.recordings import RecordPayload

from freeplay_integrations import current_session, new_session
from freeplay_integrations.flask import FreeplaySessions
from freeplay_integrations.flask import freeplay_session as flask_current_session

if TYPE_CHECKING:
    from freeplay.resources.sessions import Session

    from freeplay_integrations.local import LocalFreeplay

HEADER = "X-Freeplay-Session-Id"
CHUNKS = 3
FLASK_VERSION = tuple(int(part) for part in importlib.metadata.version("flask").split(".")[:3])


def create_app(
    server: LocalFreeplay, app_class: type[Flask] = Flask, *, testing: bool = True
) -> tuple[Flask, list[Session | None]]:
    """A fresh app with streamed views; the second value collects what `close()` saw."""
    app = app_class(__name__)
    app.config.update(TESTING=testing)
    FreeplaySessions(app, client=server.client(), project_id=server.project_id)
    closed: list[Session | None] = []
    # A variable the views set, to show what a per-request context copy loses in the body
    # (one per app: plain Flask leaves it set in the test's context).
    user_var: ContextVar[str] = ContextVar("user_var", default="unset")

    def stream(body: Iterator[str]) -> Response:
        response = Response(body, mimetype="text/plain")
        response.call_on_close(lambda: closed.append(current_session()))
        return response

    def lines() -> Iterator[str]:
        for _ in range(CHUNKS):
            yield f"{flask_current_session.session_id} {has_request_context()} {user_var.get()}\n"

    @app.get("/plain")
    def plain() -> Response:
        user_var.set("set-in-view")
        return stream(lines())

    @app.get("/with-context")
    def with_context() -> Response:
        user_var.set("set-in-view")
        return stream(stream_with_context(lines()))

    @app.get("/decorated")
    def decorated() -> Response:
        @stream_with_context
        def body() -> Iterator[str]:
            for _ in range(CHUNKS):
                yield f"{flask_current_session.session_id} {request.path} -\n"

        return stream(body())

    @app.get("/new-in-body")
    def new_in_body() -> Response:
        def body() -> Iterator[str]:
            new_session()
            yield from lines()

        return stream(body())

    @app.get("/record-in-body")
    def record_in_body() -> Response:
        def body() -> Iterator[str]:
            server.client().recordings.create(
                RecordPayload(
                    project_id=server.project_id,
                    all_messages=[{"role": "assistant", "content": "streamed"}],
                    session_info=flask_current_session.session_info,
                )
            )
            yield from lines()

        return stream(stream_with_context(body()))

    @app.get("/crash-in-body")
    def crash_in_body() -> Response:
        def body() -> Iterator[str]:
            raise RuntimeError("body crashed")
            yield "never"

        return stream(body())

    @app.get("/endless")
    def endless() -> Response:
        def body() -> Iterator[str]:
            try:
                while True:
                    yield f"{flask_current_session.session_id}\n"
            finally:
                closed.append(current_session())

        return stream(body())

    return app, closed


def read(app: Flask, path: str, session_id: str) -> list[list[str]]:
    """GET `path`, read the streamed body, close the response; the chunks, split."""
    response = app.test_client().get(path, headers={HEADER: session_id})
    assert response.status_code == 200
    assert response.is_streamed
    body = response.get_data(as_text=True)
    response.close()
    assert current_session() is None
    return [line.split(" ") for line in body.splitlines()]


@pytest.mark.parametrize("path", ["/plain", "/with-context"])
def test_every_chunk_sees_the_session(freeplay_local: LocalFreeplay, path: str) -> None:
    app, closed = create_app(freeplay_local)
    sid = str(uuid.uuid4())
    chunks = read(app, path, sid)
    assert [chunk[0] for chunk in chunks] == [sid] * CHUNKS
    # The plain generator runs after Flask's request context is gone; stream_with_context
    # brings it back. Either way the session is there.
    assert {chunk[1] for chunk in chunks} == {str(path == "/with-context")}
    assert [s.session_id if s else None for s in closed] == [sid]


def test_stream_with_context_as_a_decorator(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local)
    sid = str(uuid.uuid4())
    assert read(app, "/decorated", sid) == [[sid, "/decorated", "-"]] * CHUNKS


def test_concurrent_streams_interleaved_in_one_thread(freeplay_local: LocalFreeplay) -> None:
    app, closed = create_app(freeplay_local)
    client = app.test_client()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    # Plain generators: interleaving stream_with_context bodies in one thread breaks Flask's
    # own request context stack (a Flask limitation; WSGI servers never do that).
    responses = [client.get("/plain", headers={HEADER: sid}) for sid in ids]
    iterators = [iter(r.response) for r in responses]
    for _ in range(CHUNKS - 1):  # the test client already read each first chunk
        for sid, iterator in zip(ids, iterators, strict=True):
            assert next(iterator).decode().startswith(sid)
            assert current_session() is None
    for response in responses:
        response.close()
    assert [s.session_id if s else None for s in closed] == ids


def test_new_session_in_a_streamed_body_reaches_the_headers(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local)
    sent = str(uuid.uuid4())
    response = app.test_client().get("/new-in-body", headers={HEADER: sent})
    chunks = response.get_data(as_text=True).splitlines()
    response.close()
    new_id = response.headers[HEADER]
    assert new_id != sent
    assert response.headers["Set-Cookie"].startswith(f"freeplay_session_id={new_id};")
    assert [line.split(" ")[0] for line in chunks] == [new_id] * CHUNKS


def test_recording_in_a_streamed_body_lands_in_the_session(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local)
    sid = str(uuid.uuid4())
    read(app, "/record-in-body", sid)
    assert len(freeplay_local.completions(sid)) == 1
    assert [s["id"] for s in freeplay_local.sessions()] == [sid]


def test_body_closed_early_sees_the_session(freeplay_local: LocalFreeplay) -> None:
    app, closed = create_app(freeplay_local)
    sid = str(uuid.uuid4())
    response = app.test_client().get("/endless", headers={HEADER: sid})
    iterator = iter(response.response)
    assert next(iterator) == f"{sid}\n".encode()
    response.close()  # a client that went away: the server closes the iterable
    assert [s.session_id if s else None for s in closed] == [sid, sid]
    assert current_session() is None


def test_crash_before_the_first_chunk_is_a_500_with_the_session(
    freeplay_local: LocalFreeplay,
) -> None:
    app, _ = create_app(freeplay_local, testing=False)
    sid = str(uuid.uuid4())
    response = app.test_client().get("/crash-in-body", headers={HEADER: sid})
    assert response.status_code == 500
    assert response.headers[HEADER] == sid
    response.close()
    assert current_session() is None


def test_crash_before_the_first_chunk_propagates_in_testing_mode(
    freeplay_local: LocalFreeplay,
) -> None:
    app, _ = create_app(freeplay_local)
    with pytest.raises(RuntimeError, match="body crashed"):
        app.test_client().get("/crash-in-body")
    assert current_session() is None


# -- apps that run each request in their own context copy ------------------------------------


@pytest.mark.parametrize("path", ["/plain", "/with-context"])
def test_sandboxed_app_streams_keep_the_session(freeplay_local: LocalFreeplay, path: str) -> None:
    """contextvars_extras' Flask runs each request in a context copy, which a streamed body
    (iterated after the call returned) no longer sees; the session survives anyway."""
    app, closed = create_app(freeplay_local, SandboxFlask)
    sid = str(uuid.uuid4())
    if path == "/with-context" and FLASK_VERSION < (3, 1, 2):
        chunks = read_until_flask_fails(app, path, sid)
    else:
        chunks = read(app, path, sid)
    assert [chunk[0] for chunk in chunks] == [sid] * CHUNKS
    # The control: the variable the view set in the sandbox is lost in the body.
    assert {chunk[2] for chunk in chunks} == {"unset"}
    assert [s.session_id if s else None for s in closed] == [sid]


def read_until_flask_fails(app: Flask, path: str, session_id: str) -> list[list[str]]:
    """Before 3.1.2, Flask's stream_with_context pushes the request context in the view
    (inside the sandbox) and fails to pop it at the end of the body, outside: every chunk
    still carries the session."""
    response = app.test_client().get(path, headers={HEADER: session_id})
    chunks: list[bytes] = []
    with pytest.raises((LookupError, RuntimeError)):
        for chunk in response.response:
            chunks.append(chunk)
    response.close()
    assert current_session() is None
    return [line.split(" ") for line in b"".join(chunks).decode().splitlines()]


def test_sandboxed_app_new_session_in_the_view(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local, SandboxFlask)

    @app.get("/new")
    def new() -> dict[str, Any]:
        return {"id": new_session().session_id}

    sent = str(uuid.uuid4())
    response = app.test_client().get("/new", headers={HEADER: sent})
    assert response.json == {"id": response.headers[HEADER]}
    assert response.headers[HEADER] != sent
