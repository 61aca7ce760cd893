"""Flask requests: one session object in views, hooks, blueprints and error handlers."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from flask import Blueprint, Flask, Response, request
from werkzeug.test import TestResponse

from freeplay_integrations import (
    NoActiveSessionError,
    current_session,
    end_session,
    flush,
    new_session,
    record,
)
from freeplay_integrations._ids import parse_session_id
from freeplay_integrations._web import INVALID_ID_REASON, LOG_METADATA_FAILED
from freeplay_integrations.flask import FreeplaySessions
from freeplay_integrations.flask import freeplay_session as flask_current_session
from freeplay_integrations.wsgi import EXPOSE_HEADERS, LOG_UNHANDLED, SERVER_ERROR_BODY
from tests.test_wsgi import BAD_VALUES

if TYPE_CHECKING:
    from freeplay.resources.sessions import Session

    from freeplay_integrations.local import LocalFreeplay

HEADER = "X-Freeplay-Session-Id"
ENVIRON_HEADER = "HTTP_X_FREEPLAY_SESSION_ID"
COOKIE = "freeplay_session_id"

Seen = list[tuple[str, "Session | None"]]


def create_app(server: LocalFreeplay, *, testing: bool = True, **config: Any) -> tuple[Flask, Seen]:
    """A fresh app whose hooks, handlers and views note the session they see."""
    app = Flask(__name__)
    app.config.update(
        TESTING=testing,
        FREEPLAY_CLIENT=server.client(),
        FREEPLAY_PROJECT_ID=server.project_id,
        **config,
    )
    FreeplaySessions(app)
    seen: Seen = []

    def note(where: str) -> None:
        seen.append((where, current_session()))

    @app.before_request
    def before() -> None:
        note("before_request")
        if request.path == "/new-in-before-request":
            new_session()

    @app.after_request
    def after(response: Response) -> Response:
        note("after_request")
        if request.path == "/new-in-after-request":
            new_session()
        return response

    @app.teardown_request
    def teardown(error: BaseException | None) -> None:
        note("teardown_request")

    @app.errorhandler(404)
    def not_found(error: Exception) -> tuple[str, int]:
        note("404 handler")
        return "not here", 404

    @app.errorhandler(500)
    def server_error(error: Exception) -> tuple[str, int]:
        note("500 handler")
        if request.path == "/handler-crashes":
            raise RuntimeError("the 500 handler crashed too")
        return "it broke", 500

    @app.get("/")
    @app.get("/new-in-before-request")
    @app.get("/new-in-after-request")
    def index() -> str:
        note("view")
        return flask_current_session.session_id  # type: ignore[no-any-return]

    @app.get("/new")
    def new() -> str:
        note("view")
        return new_session().session_id

    @app.get("/boom")
    @app.get("/handler-crashes")
    def boom() -> str:
        note("view")
        raise RuntimeError("boom")

    @app.route("/echo", methods=["POST"])
    def echo() -> dict[str, Any]:
        return {
            "body": request.get_data(as_text=True),
            "metadata": flask_current_session.custom_metadata,
        }

    @app.get("/health")
    def health() -> str:
        return "unbound" if current_session() is None else "bound"

    blueprint = Blueprint("chat", __name__, url_prefix="/chat")

    @blueprint.before_request
    def blueprint_before() -> None:
        note("blueprint before_request")

    @blueprint.get("/")
    def blueprint_view() -> str:
        note("blueprint view")
        return flask_current_session.session_id  # type: ignore[no-any-return]

    app.register_blueprint(blueprint)
    return app, seen


def assert_one_session(seen: Seen, response: TestResponse, *where: str) -> None:
    """Every hook and view saw the same session object, the one the response carries."""
    assert [w for w, _ in seen] == list(where)
    sessions = {id(s) for _, s in seen}
    assert len(sessions) == 1 and seen[0][1] is not None
    session_id = seen[0][1].session_id
    assert response.headers[HEADER] == session_id
    assert response.headers["Set-Cookie"].startswith(f"{COOKIE}={session_id};")
    assert current_session() is None


def test_view_and_hooks_share_one_session(freeplay_local: LocalFreeplay) -> None:
    app, seen = create_app(freeplay_local)
    sid = str(uuid.uuid4())
    response = app.test_client().get("/", headers={HEADER: sid})
    assert response.text == sid
    assert response.headers[EXPOSE_HEADERS] == HEADER
    assert_one_session(
        seen, response, "before_request", "view", "after_request", "teardown_request"
    )


def test_blueprint(freeplay_local: LocalFreeplay) -> None:
    app, seen = create_app(freeplay_local)
    response = app.test_client().get("/chat/")
    assert response.text == response.headers[HEADER]
    assert_one_session(
        seen,
        response,
        "before_request",
        "blueprint before_request",
        "blueprint view",
        "after_request",
        "teardown_request",
    )


def test_404_carries_the_session(freeplay_local: LocalFreeplay) -> None:
    app, seen = create_app(freeplay_local)
    sid = str(uuid.uuid4())
    response = app.test_client().get("/missing", headers={HEADER: sid})
    assert response.status_code == 404 and response.text == "not here"
    assert response.headers[HEADER] == sid
    assert_one_session(
        seen, response, "before_request", "404 handler", "after_request", "teardown_request"
    )


def test_500_from_an_exception_carries_the_session(freeplay_local: LocalFreeplay) -> None:
    app, seen = create_app(freeplay_local, testing=False)
    sid = str(uuid.uuid4())
    response = app.test_client().get("/boom", headers={HEADER: sid})
    assert response.status_code == 500 and response.text == "it broke"
    assert response.headers[HEADER] == sid
    assert_one_session(
        seen, response, "before_request", "view", "500 handler", "after_request", "teardown_request"
    )


def test_500_from_flasks_default_handler_carries_the_session(freeplay_local: LocalFreeplay) -> None:
    app = Flask(__name__)
    FreeplaySessions(app, client=freeplay_local.client(), project_id=freeplay_local.project_id)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    sid = str(uuid.uuid4())
    response = app.test_client().get("/boom", headers={HEADER: sid})
    assert response.status_code == 500 and "Internal Server Error" in response.text
    assert response.headers[HEADER] == sid
    assert current_session() is None


def test_exception_escaping_flask_answered_500_by_the_middleware(
    freeplay_local: LocalFreeplay, caplog: pytest.LogCaptureFixture
) -> None:
    app, seen = create_app(freeplay_local, testing=False)
    sid = str(uuid.uuid4())
    with caplog.at_level(logging.ERROR, logger="freeplay_integrations"):
        response = app.test_client().get("/handler-crashes", headers={HEADER: sid})
    assert response.status_code == 500 and response.data == SERVER_ERROR_BODY
    assert response.headers[HEADER] == sid
    assert [r.msg for r in caplog.records if r.name == "freeplay_integrations"] == [LOG_UNHANDLED]
    assert "500 handler" in [w for w, _ in seen]
    assert current_session() is None


def test_testing_mode_propagates_exceptions_to_the_test(freeplay_local: LocalFreeplay) -> None:
    app, seen = create_app(freeplay_local)
    with pytest.raises(RuntimeError, match="boom"):
        app.test_client().get("/boom")
    assert current_session() is None
    assert [w for w, _ in seen] == ["before_request", "view", "teardown_request"]
    assert len({id(s) for _, s in seen}) == 1


@pytest.mark.parametrize("path", ["/new", "/new-in-before-request", "/new-in-after-request"])
def test_new_session_changes_header_and_cookie(freeplay_local: LocalFreeplay, path: str) -> None:
    app, _seen = create_app(freeplay_local)
    sent = str(uuid.uuid4())
    response = app.test_client().get(path, headers={HEADER: sent})
    new_id = response.headers[HEADER]
    assert parse_session_id(new_id) == new_id != sent
    assert response.headers["Set-Cookie"].startswith(f"{COOKIE}={new_id};")
    if path != "/new-in-after-request":
        assert response.text == new_id
    assert current_session() is None


def test_cookie_carries_the_session_to_the_next_request(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local)
    client = app.test_client()
    first = client.get("/").text
    assert client.get("/").text == first
    changed = client.get("/new").text
    assert changed != first
    assert client.get("/").text == changed


def test_current_session_outside_a_request() -> None:
    assert flask_current_session() is None
    assert not flask_current_session
    with pytest.raises(NoActiveSessionError, match="session_scope"):
        _ = flask_current_session.session_id


def test_session_metadata_gets_a_shallow_flask_request(freeplay_local: LocalFreeplay) -> None:
    def metadata(req: Any) -> dict[str, Any]:
        return {"user": req.headers.get("X-User"), "path": req.path, "q": req.args.get("q")}

    app, _ = create_app(freeplay_local, FREEPLAY_SESSION_METADATA=metadata)
    response = app.test_client().post("/echo?q=1", data="the body", headers={"X-User": "ada"})
    assert response.json == {
        "body": "the body",
        "metadata": {"user": "ada", "path": "/echo", "q": "1"},
    }


def test_session_metadata_reading_the_body_gets_no_metadata_and_keeps_the_body(
    freeplay_local: LocalFreeplay, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = create_app(freeplay_local, FREEPLAY_SESSION_METADATA=lambda req: {"b": req.get_data()})
    response = app.test_client().post("/echo", data="the body")
    assert response.json == {"body": "the body", "metadata": None}
    assert LOG_METADATA_FAILED in [r.msg for r in caplog.records]


def test_https_cookie_is_secure(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local)
    assert "; Secure" not in app.test_client().get("/").headers["Set-Cookie"]
    secure = app.test_client().get("/", base_url="https://localhost").headers["Set-Cookie"]
    assert "; Secure" in secure


def test_signed_ids(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local, FREEPLAY_SIGNING_SECRET="a-long-enough-secret")
    client = app.test_client()
    first = client.get("/")
    token = first.headers[HEADER]
    assert token.startswith(first.text + ".")
    assert client.get("/", headers={HEADER: token}).text == first.text
    assert client.get("/", headers={HEADER: first.text}).text != first.text  # unsigned


def test_excluded_paths(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local, FREEPLAY_EXCLUDE_PATHS=["/health"])
    response = app.test_client().get("/health")
    assert response.text == "unbound"
    assert HEADER not in response.headers and "Set-Cookie" not in response.headers


# -- bad input ----------------------------------------------------------------------------------


def bad_request(app: Flask, source: str, bad: str) -> tuple[TestResponse, list[str | None]]:
    """Send `bad` in the environ, as a server would (Werkzeug's client refuses some values)."""
    key, value = (ENVIRON_HEADER, bad) if source == "header" else ("HTTP_COOKIE", f"{COOKIE}={bad}")
    received: list[str | None] = []
    app.before_request(lambda: received.append(request.environ.get(key)))
    # Without a cookie jar: Werkzeug's would replace the Cookie header.
    response = app.test_client(use_cookies=False).get("/", environ_overrides={key: value})
    return response, received


def assert_not_echoed(response: TestResponse, bad: str) -> None:
    for name, value in response.headers.items():
        assert bad not in value, f"{name} echoes the invalid value"
    assert bad.encode("latin-1") not in response.data


@pytest.mark.parametrize("source", ["header", "cookie"])
@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_invalid_id_starts_a_new_session(
    freeplay_local: LocalFreeplay, source: str, bad: str
) -> None:
    app, _seen = create_app(freeplay_local)
    response, received = bad_request(app, source, bad)
    assert received == [f"{COOKIE}={bad}" if source == "cookie" else bad]
    assert response.status_code == 200
    assert parse_session_id(response.text) == response.text == response.headers[HEADER]
    assert_not_echoed(response, bad)
    assert current_session() is None


@pytest.mark.parametrize("source", ["header", "cookie"])
@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_invalid_id_rejected_with_400(freeplay_local: LocalFreeplay, source: str, bad: str) -> None:
    app, seen = create_app(freeplay_local, FREEPLAY_ON_INVALID="reject")
    response, received = bad_request(app, source, bad)
    assert response.status_code == 400
    assert response.text == INVALID_ID_REASON + "\n"
    assert seen == [] and received == []  # the app was not called
    assert HEADER not in response.headers and "Set-Cookie" not in response.headers
    assert_not_echoed(response, bad)
    assert current_session() is None


@pytest.mark.parametrize("on_invalid", ["new", "reject"])
def test_empty_id_is_no_id(freeplay_local: LocalFreeplay, on_invalid: str) -> None:
    app, _ = create_app(freeplay_local, FREEPLAY_ON_INVALID=on_invalid)
    response = app.test_client().get("/", headers={HEADER: ""})
    assert response.status_code == 200 and parse_session_id(response.text)


def test_authorize_session_gets_a_flask_request(freeplay_local: LocalFreeplay) -> None:
    def owner_only(req: Any, session_id: str) -> bool:
        return bool(req.headers.get("X-User") == "owner")

    app, _ = create_app(freeplay_local, FREEPLAY_AUTHORIZE_SESSION=owner_only)
    client = app.test_client(use_cookies=False)
    sid = str(uuid.uuid4())
    assert client.get("/", headers={HEADER: sid, "X-User": "owner"}).text == sid
    assert client.get("/", headers={HEADER: sid, "X-User": "someone"}).text != sid


def test_async_view_sees_the_session_and_can_replace_it(freeplay_local: LocalFreeplay) -> None:
    """Flask runs an async view in an event loop on another thread (asgiref)."""
    app, _ = create_app(freeplay_local)

    @app.get("/async")
    async def async_view() -> dict[str, str]:
        before = flask_current_session.session_id
        return {"before": before, "after": new_session().session_id}

    sent = str(uuid.uuid4())
    response = app.test_client().get("/async", headers={HEADER: sent})
    assert response.json == {"before": sent, "after": response.headers[HEADER]}
    assert response.headers[HEADER] != sent


def test_record_helper_in_a_view_and_a_streamed_body(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local)

    @app.post("/chat")
    def chat() -> Response:
        first = record(all_messages=[{"role": "assistant", "content": "in the view"}])

        def body() -> Iterator[str]:
            second = record(all_messages=[{"role": "assistant", "content": "in the body"}])
            yield f"{first.completion_id} {second.completion_id}"

        return Response(body())

    sid = str(uuid.uuid4())
    response = app.test_client().post("/chat", headers={HEADER: sid})
    completion_ids = response.get_data(as_text=True).split()
    response.close()
    assert flush(timeout=10)
    assert sorted(c["id"] for c in freeplay_local.completions(sid)) == sorted(completion_ids)
    assert len(freeplay_local.completions()) == 2


def test_end_session_expires_the_cookie(freeplay_local: LocalFreeplay) -> None:
    app, _ = create_app(freeplay_local)

    @app.post("/logout")
    def logout() -> str:
        end_session()
        return "bye"

    client = app.test_client()
    first = client.get("/").text
    response = client.post("/logout")
    assert HEADER not in response.headers
    assert response.headers["Set-Cookie"].startswith(f"{COOKIE}=; Max-Age=0;")
    assert client.get("/").text != first
