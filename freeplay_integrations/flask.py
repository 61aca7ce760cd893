"""Flask: one Freeplay session per conversation, bound for everything a request does.

    from freeplay_integrations.flask import FreeplaySessions, freeplay_session

    freeplay = FreeplaySessions()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["FREEPLAY_PROJECT_ID"] = "..."
        freeplay.init_app(app)
        return app

    @bp.post("/chat")
    def chat() -> dict[str, str]:
        return {"session_id": freeplay_session.session_id}

`init_app` wraps `app.wsgi_app` in the WSGI middleware: the session is bound before Flask's
request context is pushed and stays bound for `before_request` / `after_request` /
`teardown_request` hooks, error handlers, and every chunk of a streamed body.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

try:
    from flask import Flask
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "freeplay_integrations.flask needs Flask. "
        "Install it with: pip install 'freeplay-integrations[flask]'"
    ) from exc

from werkzeug.wrappers import Response as _WerkzeugResponse
from werkzeug.wsgi import ClosingIterator

from ._config import OPTION_NAMES, OPTIONS, Settings, keyword_option, unknown_options
from ._context import current_session as _current_session
from ._context import require_session
from .wsgi import MADE, FreeplaySessionMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment
    from freeplay.resources.sessions import Session
    from typing_extensions import Unpack

    from ._config import FreeplayOptions

__all__ = [
    "CONFIG_DEFAULTS",
    "CONFIG_PREFIX",
    "EXTENSION_KEY",
    "FreeplaySessions",
    "FreeplayState",
    "freeplay_session",
]

#: The key of the extension's per-app state in `app.extensions`.
EXTENSION_KEY = "freeplay"
#: Options are read from `app.config[CONFIG_PREFIX + option.upper()]`.
CONFIG_PREFIX = "FREEPLAY_"
#: What `init_app` puts in `app.config` (with `setdefault`) for each option not set there:
#: the option table's defaults. `None` means "derived" (see the configuration reference).
CONFIG_DEFAULTS: Mapping[str, Any] = {option.name: option.default for option in OPTIONS}


def _config_key(option: str) -> str:
    return CONFIG_PREFIX + option.upper()


class FreeplaySessions:
    """The Flask extension. `FreeplaySessions(app)`, or `FreeplaySessions()` then `init_app`.

    Options are the keyword arguments of the WSGI/ASGI middleware (`project_id=...`, ...),
    or `app.config` keys (`FREEPLAY_PROJECT_ID`, ...); keyword arguments win. One instance
    can serve several apps (the application-factory pattern), each with its own config.
    """

    def __init__(self, app: Flask | None = None, /, **options: Unpack[FreeplayOptions]) -> None:
        unknown = unknown_options(options)
        if unknown is not None:
            raise unknown
        self.options: dict[str, Any] = dict(options)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the configuration and bind a session for every request to `app`.

        Raises `ConfigurationError` (naming what to set) when the configuration is missing
        or malformed, and `RuntimeError` when `app` already has a `FreeplaySessions`.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'FreeplaySessions' instance has already been registered on this Flask "
                f"app ({app.name!r}). Import and use that instance instead of calling "
                "init_app again or creating another one."
            )
        values: dict[str, Any] = {}
        for option in OPTION_NAMES:
            key = _config_key(option)
            if option in self.options:
                values[option] = self.options[option]
                app.config.setdefault(key, values[option])
            else:
                values[option] = app.config.setdefault(key, CONFIG_DEFAULTS[option])

        def name(option: str) -> str:
            if option in self.options:
                return keyword_option(option)
            return f'app.config["{_config_key(option)}"]'

        settings = Settings.from_options(values, name=name)
        middleware = _FlaskMiddleware(app.wsgi_app, settings, app)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = FreeplayState(self, settings, middleware)

    def __repr__(self) -> str:
        return f"<FreeplaySessions options={sorted(self.options)}>"


class FreeplayState:
    """What `init_app` registered on one app, in `app.extensions["freeplay"]`."""

    __slots__ = ("extension", "middleware", "settings")

    def __init__(
        self,
        extension: FreeplaySessions,
        settings: Settings,
        middleware: FreeplaySessionMiddleware,
    ) -> None:
        self.extension = extension
        self.settings = settings
        self.middleware = middleware

    def __repr__(self) -> str:
        return f"<FreeplayState {self.settings!r}>"


class _FlaskMiddleware(FreeplaySessionMiddleware):
    """The WSGI middleware, configured from the extension and following Flask's rules."""

    def __init__(self, wsgi_app: WSGIApplication, settings: Settings, flask_app: Flask) -> None:
        self.app = wsgi_app
        self.propagate_exceptions = False
        self.flask_app = flask_app
        self._configure(settings)

    def _propagate(self) -> bool:
        # Flask's own rule (Flask.handle_exception): re-raise in testing and debug mode, so
        # the test client and the debugger see the exception.
        app = self.flask_app
        propagate = app.config["PROPAGATE_EXCEPTIONS"]
        if propagate is None:
            return bool(app.testing or app.debug)
        return bool(propagate)

    def _is_made(self, app_iter: Iterable[bytes]) -> bool:
        """Also true of what Flask returns for a body it already holds (a view's string,
        `jsonify`, ...): a `ClosingIterator` over `Response.iter_encoded()`, closed by
        `Response.close`. Sending that runs code only for a streamed body or a
        `call_on_close` callback. Anything else, or a Werkzeug whose internals differ
        (`_callbacks`, `_on_close`), is treated as code: each step runs with the session
        bound, as for any WSGI app."""
        if type(app_iter) is not ClosingIterator:
            return type(app_iter) in MADE
        try:  # (attribute reads under one `try`: `getattr` with a default costs more)
            close: Any
            _, close = app_iter._callbacks  # the generator's close, then the response's
            response = close.__self__
            kind = type(response)
            if kind not in _plain_responses:
                if not isinstance(response, _WerkzeugResponse) or any(
                    getattr(kind, name) is not getattr(_WerkzeugResponse, name)
                    for name in _WERKZEUG_METHODS
                ):
                    return False
                _plain_responses.add(kind)
            return (
                close.__func__ is _WerkzeugResponse.close
                and type(response.response) in MADE
                and not response._on_close
            )
        except (AttributeError, TypeError, ValueError):  # not two callbacks, or no method
            return False

    def _request(self, environ: WSGIEnvironment) -> Any:
        # For `session_metadata` and `authorize_session`: a shallow request, whose headers,
        # cookies, args and path are readable but whose body is not, so the view still gets
        # it whole (reading it there raises: no metadata, or the session is refused).
        return self.flask_app.request_class(environ, shallow=True)


#: Response classes whose `get_app_iter`, `iter_encoded` and `close` are Werkzeug's own.
_plain_responses: set[type] = set()
_WERKZEUG_METHODS = ("get_app_iter", "iter_encoded", "close")


class _SessionProxy:
    """`freeplay_session.session_id` reads the request's bound `Session`, like `flask.g`
    does, raising `NoActiveSessionError` outside a request; `freeplay_session()` is the
    `Session` or None, as `freeplay_integrations.current_session()` is."""

    __slots__ = ()

    def __call__(self) -> Session | None:
        return _current_session()

    def __getattr__(self, name: str) -> Any:
        return getattr(require_session(), name)

    def __bool__(self) -> bool:
        return _current_session() is not None

    def __repr__(self) -> str:
        return f"<freeplay_session {_current_session()!r}>"


#: The request's Freeplay session, as a proxy: `freeplay_session.session_id`.
freeplay_session = _SessionProxy()

#: Emitted when the old name `freeplay_integrations.flask.current_session` is imported.
CURRENT_SESSION_DEPRECATED = (
    "freeplay_integrations.flask.current_session is deprecated: import "
    "freeplay_integrations.flask.freeplay_session (the same proxy), or call "
    "freeplay_integrations.current_session() (the Session or None)."
)


def __getattr__(name: str) -> Any:
    if name == "current_session":
        import warnings

        warnings.warn(CURRENT_SESSION_DEPRECATED, DeprecationWarning, stacklevel=2)
        return freeplay_session
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
