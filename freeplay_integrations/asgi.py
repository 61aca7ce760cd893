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
from typing import TYPE_CHECKING

from ._asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    answer_messages,
    flushing_lifespan,
    request_factory,
    take_app,
)
from ._config import Settings, deprecated_shutdown_constant
from ._context import SessionBinding, bind, unbind
from ._web import EXPOSE_HEADERS, SERVER_ERROR, Answer, Rejection, SessionResolver

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._config import FreeplayOptions

__all__ = ["WS_POLICY_VIOLATION", "FreeplaySessionMiddleware"]

#: WebSocket close code for a connection refused for an invalid session ID (policy).
WS_POLICY_VIOLATION = 1008

_SECURE_SCHEMES = frozenset({"https", "wss"})
_EXPOSE = EXPOSE_HEADERS.lower().encode("latin-1")
_COOKIE = b"cookie"


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
            self._setup(take_app(args, options), Settings.from_options(options))

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
        self._echo = resolver.echo_header
        self._built = resolver.built_raw_headers
        self._exclude_paths = resolver.exclude_paths
        self._connection = request_factory() if resolver.wants_request else None
        self._baggage = resolver.baggage
        self._plain = self._connection is None and not self._baggage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                send = flushing_lifespan(send)
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
        if self._plain:  # the default: no hooks, no baggage, nothing more to read
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
                        await self._answer(send, SERVER_ERROR, binding, secure)
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
            message["headers"] = [*headers, *self.resolver.session_headers(None, secure, True)]
            return message
        token = binding.token
        added = self._built[secure].get(token)  # a returning client's: built once
        if added is None:
            added = self.resolver.session_headers(token, secure, True)
        if self._echo:
            for name, value in headers:
                if name == _EXPOSE:  # the app's own (CORS) list (rare): ours is merged in
                    found = (name, value)
                    message["headers"] = self.resolver.merge_expose(headers, found, added, True)
                    return message
        message["headers"] = [*headers, *added]
        return message

    async def _answer(
        self, send: Send, answer: Answer, binding: SessionBinding | None, secure: bool
    ) -> None:
        """Send `answer` instead of the app's response (with the session's headers, if any)."""
        start, body = answer_messages(answer)
        await send(start if binding is None else self._with_session(start, binding, secure))
        await send(body)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, rejection: Rejection
    ) -> None:
        if scope["type"] != "websocket":
            await self._answer(send, rejection, None, False)
            return
        await receive()  # websocket.connect
        await send(
            {"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": rejection.reason}
        )


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


__getattr__ = deprecated_shutdown_constant(__name__)
