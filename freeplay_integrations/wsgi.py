"""WSGI middleware: one Freeplay session per conversation in any WSGI app.

    from freeplay_integrations.wsgi import FreeplaySessionMiddleware

    application = FreeplaySessionMiddleware(application, project_id="...")

The session is bound while the app is called and around each step the server takes on the
response iterable (each chunk, `close()`), never in between: a streamed body sees it in
every chunk, and a worker thread the server reuses starts clean. `start_response` is held
until the first non-empty chunk, so `new_session()` in the app, or in a streamed body
before that chunk, is what the header and cookie carry; a list or tuple body runs no code,
so it starts at once and goes to the server as it is; `write()` starts at the first write.

An exception escaping the app before the response started is logged and answered with a
plain 500 carrying the session, and not re-raised (a server could only replace it with a
500 of its own, without the session), unless `propagate_exceptions=True` (the Werkzeug
debugger, test clients). After the response started, exceptions always propagate.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._config import Settings
from ._context import SessionBinding, bind, unbind
from ._web import EXPOSE_HEADERS, SERVER_ERROR, Rejection, SessionResolver

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from typing_extensions import Unpack

    from ._config import FreeplayOptions

__all__ = [
    "EXPOSE_HEADERS",
    "LOG_UNHANDLED",
    "SERVER_ERROR_BODY",
    "FreeplaySessionMiddleware",
]

logger = logging.getLogger("freeplay_integrations")

#: Logged (with the traceback) when the app raised and the middleware answered the 500.
LOG_UNHANDLED = "freeplay_integrations: unhandled exception in the WSGI app; answered 500"
#: Body of the middleware's own 500 answer.
SERVER_ERROR_BODY = SERVER_ERROR.body

_EXPOSE_LOWER = EXPOSE_HEADERS.lower()
_EXPOSE_LENGTH = len(EXPOSE_HEADERS)

#: Response iterables that are the whole body already (no code runs while they are sent).
MADE = (list, tuple)
_END: Any = object()

Headers = list[tuple[str, str]]
Write = Callable[[bytes], object]


class FreeplaySessionMiddleware:
    """Bind the conversation's Freeplay session for every request to a WSGI app.

    `app` is positional; options are keyword arguments (`FreeplayOptions`, the README's
    configuration reference). The hooks get the WSGI environ as the request; `exclude_paths`
    match `SCRIPT_NAME + PATH_INFO`; `propagate_exceptions` is described above.
    """

    def __init__(
        self,
        app: WSGIApplication,
        /,
        *,
        propagate_exceptions: bool = False,
        **options: Unpack[FreeplayOptions],
    ) -> None:
        self.app = app
        self.propagate_exceptions = propagate_exceptions
        self._configure(Settings.from_options(options))

    def _configure(self, settings: Settings) -> None:
        self.settings = settings
        self.resolver = resolver = SessionResolver(settings)
        # Read on every request: taken from the resolver once.
        self._environ_key = resolver.environ_key
        self._exclude_paths = resolver.exclude_paths
        self._plain = not (resolver.wants_request or resolver.baggage)
        self._echo = resolver.echo_header
        self._built = resolver.built_headers

    # -- hooks a framework adapter may override -----------------------------------------

    def _propagate(self) -> bool:
        """Whether an exception escaping the app is re-raised rather than answered 500."""
        return self.propagate_exceptions

    def _is_made(self, app_iter: Iterable[bytes]) -> bool:
        """Whether sending `app_iter` runs no code of the app's: the headers can go at once,
        and the server gets `app_iter` itself (no step of it needs the session bound)."""
        return type(app_iter) in MADE

    def _request(self, environ: WSGIEnvironment) -> Any:
        """The request `session_metadata` and `authorize_session` get: the WSGI environ."""
        return environ

    # -- the request -----------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._exclude_paths and self.resolver.is_excluded(
            environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        ):
            return self.app(environ, start_response)
        key = self._environ_key
        header_value = None if key is None else environ.get(key)
        if self._plain:  # the default: no hooks, no baggage
            result = self.resolver.resolve(header_value, environ.get("HTTP_COOKIE"), None)
        else:
            resolver = self.resolver
            result = resolver.resolve(
                header_value,
                environ.get("HTTP_COOKIE"),
                self._request(environ) if resolver.wants_request else None,
                environ.get("HTTP_BAGGAGE") if resolver.baggage else None,
            )
        if isinstance(result, Rejection):
            start_response(result.status_line, list(result.headers))
            return [result.body]
        response = _Response()  # filled in here: a Python __init__ costs more
        response.middleware = self
        response.binding = result
        response.real_start_response = start_response
        response.secure = environ.get("wsgi.url_scheme") == "https"
        response.status = None
        response.started = False
        # (`headers` is set with `status`, `real_write` when the response starts, `inner`
        # and `iterator` before the server gets the response.)
        token = bind(result)
        try:
            try:
                app_iter = self.app(environ, response.start_response)
            except Exception:
                if response.started or self._propagate():
                    raise
                return response.server_error(sys.exc_info())
            if response.status is not None and self._is_made(app_iter):
                # A body already made runs no code while it is sent: the headers go now.
                if not response.started:
                    response._start()
                return app_iter
            response.inner = app_iter
            response.iterator = iter(app_iter)
        finally:
            unbind(token)
        return response


class _Response:
    """One request's response: the app's `start_response`, and the iterable the server gets.

    The app's status and headers are held until the first non-empty body chunk, then sent
    with the session's header and cookie as they are at that moment. Every step the server
    takes (each chunk, `close()`) runs with the request's session bound, and unbinds it after.
    """

    headers: Headers
    real_write: Write
    inner: Iterable[bytes]
    iterator: Iterator[bytes]

    __slots__ = (
        "binding",
        "headers",
        "inner",
        "iterator",
        "middleware",
        "real_start_response",
        "real_write",
        "secure",
        "started",
        "status",
    )

    # Built by the middleware's `__call__`, which fills in a blank instance: on 3.11 a
    # Python __init__ costs a request about 0.7k instructions more.
    middleware: FreeplaySessionMiddleware
    binding: SessionBinding
    real_start_response: StartResponse
    secure: bool
    status: str | None
    started: bool

    # -- what the app sees ---------------------------------------------------------------

    def start_response(
        self, status: str, headers: Headers, exc_info: OptExcInfo | None = None
    ) -> Write:
        if exc_info is not None:
            try:
                if self.started:
                    # PEP 3333: too late to change the headers; re-raise the app's error.
                    raise exc_info[1].with_traceback(exc_info[2])  # type: ignore[union-attr]
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise RuntimeError(
                "start_response() was called a second time without exc_info. A WSGI app "
                "may only replace its status and headers while handling an error "
                "(pass exc_info=sys.exc_info())."
            )
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy `write()` callable: the headers go out before the first write."""
        if not self.started:
            self._start()
        self.real_write(data)

    # -- what the server sees --------------------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        """One step of the body, with the session bound: the first one starts the response."""
        token = bind(self.binding)
        try:
            if self.started:
                return next(self.iterator)
            chunk = self._first_chunk()
        finally:
            unbind(token)
        if chunk is _END:
            raise StopIteration
        return chunk  # type: ignore[no-any-return]

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is None:
            return
        token = bind(self.binding)
        try:
            close()
        finally:
            unbind(token)

    # -- internals -----------------------------------------------------------------------

    def _first_chunk(self) -> Any:
        """The first non-empty chunk (empty ones before it are dropped: the headers wait for
        a body), or `_END`; the response is started either way."""
        try:
            for chunk in self.iterator:
                if chunk:
                    self._start()
                    return chunk
        except Exception:
            if self.started or self.middleware._propagate():
                raise
            self.iterator = iter(())
            return self.server_error(sys.exc_info())[0]
        self._start()
        return _END

    def _start(self) -> None:
        """Send the app's status and headers, with the session's as they are now (the
        resolver's `session_headers`), to the server."""
        if self.status is None:
            raise RuntimeError(
                "The WSGI application returned its body without calling start_response()."
            )
        self.started = True
        headers, binding, middleware = self.headers, self.binding, self.middleware
        if binding.ended:  # end_session(): no header, and the cookie's expiry
            added = middleware.resolver.session_headers(None, self.secure)
            self.real_write = self.real_start_response(self.status, [*headers, *added])
            return
        token = binding.token
        kept = middleware._built[self.secure].get(token)  # a returning client's: built once
        added = middleware.resolver.session_headers(token, self.secure) if kept is None else kept
        if middleware._echo:
            for name, value in headers:
                if len(name) == _EXPOSE_LENGTH and name.lower() == _EXPOSE_LOWER:
                    # The app's own (CORS) list (rare): ours is merged into it, once.
                    merged = middleware.resolver.merge_expose(headers, (name, value), added)
                    self.real_write = self.real_start_response(self.status, merged)
                    return
        self.real_write = self.real_start_response(self.status, [*headers, *added])

    def server_error(self, exc_info: OptExcInfo) -> list[bytes]:
        """Log the app's exception and answer a plain 500 that carries the session.

        The server's `start_response` has not been called yet, so it gets no `exc_info`:
        some (Werkzeug's test client) would re-raise the exception from it.
        """
        try:
            logger.error(LOG_UNHANDLED, exc_info=exc_info)
        finally:
            exc_info = None  # type: ignore[assignment]
        self.status = SERVER_ERROR.status_line
        self.headers = list(SERVER_ERROR.headers)
        self._start()
        return [SERVER_ERROR_BODY]
