"""The Flask extension: registration, configuration from app.config and keywords, factories."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from freeplay.resources.recordings import RecordPayload

from freeplay_integrations import ConfigurationError, current_session
from freeplay_integrations._config import OPTION_NAMES, Settings
from freeplay_integrations.flask import (
    CONFIG_DEFAULTS,
    EXTENSION_KEY,
    FreeplaySessions,
    FreeplayState,
)
from freeplay_integrations.flask import freeplay_session as flask_current_session
from freeplay_integrations.local import DEFAULT_PROJECT_ID as PROJECT_ID
from freeplay_integrations.wsgi import FreeplaySessionMiddleware

if TYPE_CHECKING:
    from freeplay_integrations.local import LocalFreeplay

HEADER = "X-Freeplay-Session-Id"


def create_app(**config: Any) -> Flask:
    """A fresh app answering the ID of the session bound in its view."""
    app = Flask(__name__)
    app.config.update(TESTING=True, **config)

    @app.get("/")
    def index() -> str:
        return flask_current_session.session_id  # type: ignore[no-any-return]

    return app


@pytest.fixture(autouse=True)
def no_freeplay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration comes from the app here, never from the machine's environment."""
    for name in ("FREEPLAY_API_KEY", "FREEPLAY_API_BASE", "FREEPLAY_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def local_config(server: LocalFreeplay, **extra: Any) -> dict[str, Any]:
    return {
        "FREEPLAY_API_KEY": server.api_key,
        "FREEPLAY_API_BASE": server.api_base,
        "FREEPLAY_PROJECT_ID": server.project_id,
        **extra,
    }


def get_session_id(app: Flask, **headers: str) -> str:
    response = app.test_client().get("/", headers=headers)
    assert response.status_code == 200
    assert current_session() is None
    assert response.headers[HEADER] == response.text
    return response.text


def test_config_defaults_cover_every_option() -> None:
    assert set(CONFIG_DEFAULTS) == set(OPTION_NAMES)
    # The defaults written into app.config validate on their own.
    options = {**CONFIG_DEFAULTS, "api_key": "k", "api_base": "http://x/", "project_id": PROJECT_ID}
    Settings.from_options(options)


def test_registered_from_app_config(freeplay_local: LocalFreeplay) -> None:
    app = create_app(**local_config(freeplay_local))
    extension = FreeplaySessions(app)
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, FreeplayState)
    assert state.extension is extension
    assert state.settings.project_id == freeplay_local.project_id
    assert app.wsgi_app is state.middleware
    assert isinstance(state.middleware, FreeplaySessionMiddleware)
    assert uuid.UUID(get_session_id(app)).version == 4


def test_defaults_are_visible_in_app_config(freeplay_local: LocalFreeplay) -> None:
    app = create_app(**local_config(freeplay_local))
    FreeplaySessions(app)
    for option in OPTION_NAMES:
        assert f"FREEPLAY_{option.upper()}" in app.config
    assert app.config["FREEPLAY_SESSION_HEADER"] == HEADER
    assert app.config["FREEPLAY_SESSION_COOKIE"] == "freeplay_session_id"
    assert app.config["FREEPLAY_COOKIE_MAX_AGE"] == 30 * 24 * 60 * 60
    assert app.config["FREEPLAY_ON_INVALID"] == "new"
    assert app.config["FREEPLAY_PROJECT_ID"] == freeplay_local.project_id  # not overwritten


def test_app_config_options_are_used(freeplay_local: LocalFreeplay) -> None:
    app = create_app(**local_config(freeplay_local, FREEPLAY_SESSION_HEADER="X-Conversation"))
    FreeplaySessions(app)
    sid = str(uuid.uuid4())
    response = app.test_client().get("/", headers={"X-Conversation": sid})
    assert response.text == response.headers["X-Conversation"] == sid
    assert HEADER not in response.headers


def test_keyword_arguments_win_over_app_config(freeplay_local: LocalFreeplay) -> None:
    from_config = "c0f1c0f1-0000-4000-8000-00000000c0f1"
    from_keyword = "4e1d4e1d-0000-4000-8000-000000004e1d"
    app = create_app(FREEPLAY_PROJECT_ID=from_config, FREEPLAY_SESSION_HEADER="X-Config")
    FreeplaySessions(
        app,
        client=freeplay_local.client(),
        project_id=from_keyword,
        session_header="X-Keyword",
    )
    assert app.extensions[EXTENSION_KEY].settings.project_id == from_keyword
    response = app.test_client().get("/")
    assert "X-Keyword" in response.headers and "X-Config" not in response.headers
    # Keywords fill in app.config only where it says nothing.
    assert app.config["FREEPLAY_PROJECT_ID"] == from_config
    assert app.config["FREEPLAY_CLIENT"] is not None


def test_factory_pattern_with_several_apps(freeplay_local: LocalFreeplay) -> None:
    other = freeplay_local.add_project("07e407e4-0000-4000-8000-0000000007e4")
    extension = FreeplaySessions()
    first = create_app(**local_config(freeplay_local, FREEPLAY_SESSION_HEADER="X-First"))
    second = create_app(
        **local_config(freeplay_local, FREEPLAY_PROJECT_ID=other, FREEPLAY_SESSION_COOKIE=None)
    )
    extension.init_app(first)
    extension.init_app(second)
    assert first.extensions[EXTENSION_KEY].extension is extension
    assert second.extensions[EXTENSION_KEY].extension is extension
    assert first.extensions[EXTENSION_KEY].settings.project_id == freeplay_local.project_id
    assert second.extensions[EXTENSION_KEY].settings.project_id == other

    one = first.test_client().get("/")
    assert one.headers["X-First"] == one.text and "Set-Cookie" in one.headers
    two = second.test_client().get("/")
    assert two.headers[HEADER] == two.text and "Set-Cookie" not in two.headers


def test_recording_in_a_view_lands_in_the_requests_session(freeplay_local: LocalFreeplay) -> None:
    app = create_app(**local_config(freeplay_local))
    FreeplaySessions(app)

    @app.post("/chat")
    def chat() -> dict[str, str]:
        client = app.extensions[EXTENSION_KEY].settings.client
        response = client.recordings.create(
            RecordPayload(
                project_id=freeplay_local.project_id,
                all_messages=[{"role": "user", "content": "hello"}],
                session_info=flask_current_session.session_info,
            )
        )
        return {"completion_id": response.completion_id}

    client = app.test_client()
    sid = str(uuid.uuid4())
    first = client.post("/chat", headers={HEADER: sid})
    second = client.post("/chat")  # the cookie from the first response resumes the session
    assert first.headers[HEADER] == second.headers[HEADER] == sid
    assert current_session() is None
    recorded = freeplay_local.completions(sid)
    assert [c["id"] for c in recorded] == [
        first.json["completion_id"],
        second.json["completion_id"],
    ]  # type: ignore[index]
    assert [s["id"] for s in freeplay_local.sessions()] == [sid]


def test_client_from_the_environment(freeplay_local_env: LocalFreeplay) -> None:
    app = create_app()
    FreeplaySessions(app)
    assert app.config["FREEPLAY_API_KEY"] is None  # read from FREEPLAY_API_KEY instead
    assert app.extensions[EXTENSION_KEY].settings.project_id == freeplay_local_env.project_id
    get_session_id(app)


# -- mistakes -----------------------------------------------------------------------------------


def test_double_registration_is_a_runtime_error(freeplay_local: LocalFreeplay) -> None:
    app = create_app(**local_config(freeplay_local))
    extension = FreeplaySessions(app)
    middleware = app.wsgi_app
    with pytest.raises(RuntimeError, match="already been registered on this Flask app"):
        extension.init_app(app)
    with pytest.raises(RuntimeError, match="Import and use that instance"):
        FreeplaySessions(app)
    assert app.wsgi_app is middleware  # not wrapped twice
    get_session_id(app)


def test_missing_project_id_names_the_config_key() -> None:
    app = create_app(FREEPLAY_API_KEY="key", FREEPLAY_API_BASE="http://127.0.0.1:9/api")
    with pytest.raises(ConfigurationError) as error:
        FreeplaySessions(app)
    message = str(error.value)
    assert 'app.config["FREEPLAY_PROJECT_ID"]' in message
    assert "FREEPLAY_PROJECT_ID environment variable" in message
    # Nothing half-registered: fixing the config and registering again works.
    assert EXTENSION_KEY not in app.extensions
    assert not isinstance(app.wsgi_app, FreeplaySessionMiddleware)
    app.config["FREEPLAY_PROJECT_ID"] = PROJECT_ID
    FreeplaySessions(app)


def test_missing_api_key_names_the_config_key() -> None:
    app = create_app(FREEPLAY_PROJECT_ID=PROJECT_ID)
    with pytest.raises(ConfigurationError, match=r'Set app\.config\["FREEPLAY_API_KEY"\]'):
        FreeplaySessions(app)


def test_malformed_config_value_names_the_config_key() -> None:
    app = create_app(
        FREEPLAY_API_KEY="key",
        FREEPLAY_API_BASE="http://127.0.0.1:9/api",
        FREEPLAY_PROJECT_ID=PROJECT_ID,
        FREEPLAY_ON_INVALID="drop",
    )
    with pytest.raises(
        ConfigurationError, match=r'app\.config\["FREEPLAY_ON_INVALID"\] must be .new. or .reject.'
    ):
        FreeplaySessions(app)


def test_malformed_keyword_names_the_keyword() -> None:
    app = create_app(FREEPLAY_API_KEY="key", FREEPLAY_API_BASE="http://127.0.0.1:9/api")
    with pytest.raises(ConfigurationError, match="`cookie_samesite=` must be"):
        FreeplaySessions(app, project_id=PROJECT_ID, cookie_samesite="sometimes")


def test_unknown_keyword_fails_at_construction() -> None:
    with pytest.raises(
        ConfigurationError, match=r"Unknown freeplay_integrations option.*`projectid=`"
    ):
        FreeplaySessions(projectid="p")


def test_without_flask_the_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['flask'] = None\n"
        "try:\n"
        "    import freeplay_integrations.flask\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'freeplay-integrations[flask]'" in result.stdout
    # The WSGI middleware needs no framework at all.
    code = "import sys; sys.modules['flask'] = None; import freeplay_integrations.wsgi"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_old_name_of_the_proxy_still_works_with_a_deprecation_warning() -> None:
    import freeplay_integrations.flask as flask_module

    with pytest.warns(DeprecationWarning, match="freeplay_session"):
        old = flask_module.current_session
    assert old is flask_module.freeplay_session
    assert old() is None  # outside a request: the core's answer


def _served(app: Flask, path: str) -> tuple[Any, list[tuple[str, str]], bytes]:
    """What a WSGI server gets from `app` for GET `path`: the iterable itself, the headers,
    and the body once iterated and closed (as a server does)."""
    started: list[list[tuple[str, str]]] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
    }
    iterable = app.wsgi_app(environ, lambda status, headers, exc_info=None: started.append(headers))
    try:
        body = b"".join(iterable)
    finally:
        iterable.close()
    return iterable, started[0], body


def test_a_made_body_is_handed_to_the_server_as_flask_made_it(
    freeplay_local: LocalFreeplay,
) -> None:
    """A body Flask already holds (a view's string) runs no code while it is sent: the
    headers go at once and the server gets Werkzeug's own iterable, with no binding per
    step. A `call_on_close` callback, a streamed body or a Response subclass that sends
    differently each keep the bound steps: their code sees the session."""
    from flask import Response, stream_with_context
    from werkzeug.wsgi import ClosingIterator

    app = create_app(**local_config(freeplay_local))
    FreeplaySessions(app)
    seen: list[str | None] = []

    def note() -> None:
        session = current_session()
        seen.append(None if session is None else session.session_id)

    class Shouting(Response):
        def iter_encoded(self) -> Any:
            note()
            return super().iter_encoded()

    @app.get("/closing")
    def closing() -> Response:
        response = Response(flask_current_session.session_id)
        response.call_on_close(note)
        return response

    @app.get("/streamed")
    def streamed() -> Response:
        def body() -> Any:
            note()
            yield flask_current_session.session_id

        return Response(stream_with_context(body()))

    @app.get("/subclass")
    def subclass() -> Response:
        return Shouting(flask_current_session.session_id)

    iterable, headers, body = _served(app, "/")
    assert type(iterable) is ClosingIterator
    assert dict(headers)[HEADER] == body.decode()
    for path in ("/closing", "/streamed", "/subclass"):
        seen.clear()
        iterable, headers, body = _served(app, path)
        assert type(iterable) is not ClosingIterator, path
        assert seen == [body.decode()] == [dict(headers)[HEADER]], path
