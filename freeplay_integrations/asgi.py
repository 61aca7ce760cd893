"""Pure ASGI middleware: one Freeplay session per conversation in any ASGI 3 app.

    from freeplay_integrations.asgi import FreeplaySessionMiddleware

    app = FreeplaySessionMiddleware(app, project_id="...")        # outermost: best
    app.add_middleware(FreeplaySessionMiddleware.configure(project_id="..."))  # FastAPI

Outermost (the first form), even the 500 of an unhandled exception carries the session;
inside Starlette's `ServerErrorMiddleware` (`add_middleware`), the middleware answers an
unhandled exception with its own plain 500 carrying the session, then re-raises. No
framework is imported: the hooks get a Starlette `HTTPConnection` when Starlette is
installed, else the ASGI scope (Quart, Litestar, bare ASGI).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._asgi import ASGIApp, Message, Receive, Scope, Send, flush_at_shutdown
from ._config import Settings, deprecated_shutdown_constant
from ._context import SessionBinding, bind, unbind
from ._web import KNOWN_VALUES, Rejection, SessionResolver

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._config import FreeplayOptions

__all__ = ["WS_POLICY_VIOLATION", "FreeplaySessionMiddleware"]

#: WebSocket close code for a connection refused for an invalid session ID (policy).
WS_POLICY_VIOLATION = 1008

_SECURE_SCHEMES = frozenset({"https", "wss"})
_EXPOSE = b"access-control-expose-headers"
_SET_COOKIE = b"set-cookie"
_COOKIE = b"cookie"
_SERVER_ERROR = b"Internal Server Error"
_SERVER_ERROR_HEADERS = (
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_SERVER_ERROR)).encode()),
)


class FreeplaySessionMiddleware:
    """Bind the conversation's Freeplay session for every HTTP request and websocket.

    `app` is positional; options are keyword arguments (`FreeplayOptions`, the README's
    configuration reference), validated here: a mistake raises `ConfigurationError` now.
    """

    if TYPE_CHECKING:

        def __init__(self, app: ASGIApp, /, **options: Unpack[FreeplayOptions]) -> None: ...

    else:

        def __init__(self, *args, **options):
            # Typed positional-only, but Starlette before 0.41 and Litestar's
            # DefineMiddleware build middleware with `app=` by keyword.
            self._setup(_take_app(args, options), Settings.from_options(options))

    @classmethod
    def configure(cls, **options: Unpack[FreeplayOptions]) -> Callable[[ASGIApp], ASGIApp]:
        """Validate `options` now and return the factory `add_middleware` takes.

        Starlette builds middleware at the first request, so a mistake given to a plain
        `add_middleware(FreeplaySessionMiddleware, ...)` shows only then; this raises
        `ConfigurationError` at import, and `uvicorn main:app` stops before serving.
        """
        settings = Settings.from_options(options)

        def factory(app: ASGIApp) -> ASGIApp:  # by keyword too, like __init__
            middleware = cls.__new__(cls)
            middleware._setup(app, settings)
            return middleware

        return factory

    def _setup(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.resolver = resolver = SessionResolver(settings)
        self._header_key = resolver.header_key if resolver.environ_key else None
        self._echo_key = resolver.header_key if resolver.echo_header else None
        self._expose_header = (_EXPOSE, (resolver.expose_default or "").encode("latin-1"))
        self._set_cookie = resolver.set_cookie
        self._cookie_fragments = {
            secure: tuple(part.encode("latin-1") for part in resolver.cookie_fragments(secure))
            for secure in (False, True)
        }
        self._headers_cache: dict[bool, dict[str, tuple[tuple[bytes, bytes], ...]]] = {
            False: {},
            True: {},
        }
        self._known = resolver.known
        self._exclude_paths = resolver.exclude_paths
        self._connection: Any = _connection_class() if resolver.wants_request else None
        self._baggage = resolver.baggage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if self._exclude_paths and scope["path"].startswith(self._exclude_paths):
            await self.app(scope, receive, send)
            return
        # The request's session ID and cookies (read here rather than in a method: about
        # 0.3k instructions a request less).
        header_value = cookie_header = None
        key = self._header_key
        for name, value in scope["headers"]:
            if name == key:
                if header_value is None:
                    header_value = value.decode("latin-1")
            elif name == _COOKIE:
                text = value.decode("latin-1")
                cookie_header = text if cookie_header is None else f"{cookie_header}; {text}"
        if self._connection is None and not self._baggage:  # the default: nothing more to read
            binding = self.resolver.resolve(header_value, cookie_header, None)
        else:
            binding = self._resolve_with(scope, header_value, cookie_header)
        if isinstance(binding, Rejection):
            await self._reject(scope, receive, send, binding)
            return
        secure = scope.get("scheme") in _SECURE_SCHEMES
        if scope_type == "websocket":
            await self._websocket(scope, receive, send, binding, secure)
            return
        response = _Response()  # filled in here: a Python __init__ costs more
        response.middleware = self
        response.send = send
        response.binding = binding
        response.secure = secure
        response.held = None
        response.started = False
        token = bind(binding)
        try:
            try:
                await self.app(scope, receive, response.send_with_session)
            except Exception:
                if not response.started:
                    with contextlib.suppress(Exception):
                        await self._server_error(send, binding, secure)
                raise
            if response.held is not None:  # a start with no body message: still deliver it
                await send(self._with_session(response.held, binding, secure))
        finally:
            unbind(token)

    def _resolve_with(
        self, scope: Scope, header_value: str | None, cookie_header: str | None
    ) -> SessionBinding | Rejection:
        """Resolve with the request for the hooks, and the baggage, when they are wanted."""
        connection = self._connection
        baggage = None
        if self._baggage:
            values = [v.decode("latin-1") for n, v in scope["headers"] if n == b"baggage"]
            baggage = ",".join(values) or None
        return self.resolver.resolve(
            header_value, cookie_header, None if connection is None else connection(scope), baggage
        )

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, binding: SessionBinding, secure: bool
    ) -> None:
        async def send_with_session(message: Message) -> None:
            if message["type"] in ("websocket.accept", "websocket.http.response.start"):
                message = self._with_session(message, binding, secure)
            await send(message)

        token = bind(binding)
        try:
            await self.app(scope, receive, send_with_session)
        finally:
            unbind(token)

    def _with_session(self, message: Message, binding: SessionBinding, secure: bool) -> Message:
        """`message` (a response start or websocket accept) with the session headers added
        to a copy of its headers (the app's list may be reused across requests)."""
        headers = message.get("headers") or ()
        if binding.ended:  # end_session(): no header, and the cookie's expiry
            headers = message["headers"] = list(headers)
            if self._set_cookie:
                cookie = self.resolver.cookie_header(binding, secure)
                headers.append((_SET_COOKIE, cookie.encode("latin-1")))
            return message
        token = binding.token
        added = self._headers_cache[secure].get(token)  # a known token's: built once
        if added is None:
            added = self._session_headers(token, secure)
        if self._echo_key is not None:
            for name, _ in headers:
                if name == _EXPOSE:  # merge with the app's own (CORS) list (rare: no index kept)
                    headers = message["headers"] = list(headers)
                    self._merge_expose(headers)
                    headers += added[1:]  # all but the expose
                    return message
        message["headers"] = [*headers, *added]
        return message

    def _merge_expose(self, headers: list[tuple[bytes, bytes]]) -> None:
        for index, (name, value) in enumerate(headers):
            if name == _EXPOSE:
                merged = self.resolver.expose(value.decode("latin-1"))
                if merged is not None:
                    headers[index] = (name, merged.encode("latin-1"))
                return

    def _session_headers(self, token: str, secure: bool) -> tuple[tuple[bytes, bytes], ...]:
        """The headers a response with no `Access-Control-Expose-Headers` of its own gets
        for `token`, that header first when the ID is echoed. A token a client sent (one the
        resolver knows) has them built once, in a cache bounded like the resolver's
        (`KNOWN_VALUES`, then forgotten all at once) that `_with_session` reads first."""
        raw = token.encode()  # ASCII (a UUID, or signed here): UTF-8 is the fast path
        key = self._echo_key
        added: tuple[tuple[bytes, bytes], ...]
        if self._set_cookie:
            prefix, suffix = self._cookie_fragments[secure]
            cookie = (_SET_COOKIE, prefix + raw + suffix)
            added = (cookie,) if key is None else (self._expose_header, (key, raw), cookie)
        else:
            added = () if key is None else (self._expose_header, (key, raw))
        if token in self._known:  # a token a client sends back, not a new session's
            cache = self._headers_cache[secure]
            if len(cache) >= KNOWN_VALUES:
                cache.clear()
            cache[token] = added
        return added

    async def _server_error(self, send: Send, binding: SessionBinding, secure: bool) -> None:
        start = {
            "type": "http.response.start",
            "status": 500,
            "headers": list(_SERVER_ERROR_HEADERS),
        }
        await send(self._with_session(start, binding, secure))
        await send({"type": "http.response.body", "body": _SERVER_ERROR})

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, rejection: Rejection
    ) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send(
                {"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": rejection.reason}
            )
            return
        await send(
            {
                "type": "http.response.start",
                "status": rejection.status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in rejection.headers],
            }
        )
        await send({"type": "http.response.body", "body": rejection.body})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_after_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await flush_at_shutdown()
            await send(message)

        await self.app(scope, receive, send_after_flush)


class _Response:
    """One HTTP request's way out: `send_with_session` is the `send` the app gets.

    The response start is held until the first body message, so that new_session() called
    by the endpoint, or by a streamed body before its first chunk, is what the response
    headers carry. (An object and its bound method, not a closure: a closure's function
    and cells cost a request about 1k instructions more on 3.11.)
    """

    __slots__ = ("binding", "held", "middleware", "secure", "send", "started")

    binding: SessionBinding
    held: Message | None
    middleware: FreeplaySessionMiddleware
    secure: bool
    send: Send
    started: bool

    async def send_with_session(self, message: Message) -> None:
        if not self.started:
            if message["type"] == "http.response.start":
                self.held = message
                return
            held = self.held
            if held is not None:
                self.started = True
                self.held = None
                await self.send(self.middleware._with_session(held, self.binding, self.secure))
        await self.send(message)


def _connection_class() -> Any:
    """What the hooks get as the request: Starlette's `HTTPConnection` if installed."""
    try:
        from starlette.requests import HTTPConnection
    except ImportError:
        return lambda scope: scope
    return HTTPConnection


def _take_app(args: tuple[Any, ...], options: dict[str, Any]) -> ASGIApp:
    """The wrapped app, given first or as `app=`; a clear TypeError otherwise."""
    if len(args) == 1 and "app" not in options:
        return args[0]  # type: ignore[no-any-return]
    if not args and "app" in options:
        return options.pop("app")  # type: ignore[no-any-return]
    raise TypeError(
        "FreeplaySessionMiddleware takes the ASGI app as its one positional argument "
        "(or app=), and every option by keyword"
    )


__getattr__ = deprecated_shutdown_constant(__name__)
