"""Pure ASGI middleware: one Freeplay session per conversation in any ASGI 3 app.

    from freeplay_integrations.asgi import FreeplaySessionMiddleware

    app = FreeplaySessionMiddleware(app, project_id="...")        # outermost: best
    app.add_middleware(FreeplaySessionMiddleware, project_id="...")  # Starlette / FastAPI

Wrapping the whole app (the first form) puts the middleware outside Starlette's
`ServerErrorMiddleware`, so even the 500 of an unhandled exception carries the session
header and cookie. With `add_middleware` it sits inside it; the middleware then answers an
unhandled exception with its own plain 500 carrying the session, before re-raising.
"""

from __future__ import annotations

import contextlib
from typing import Any

try:
    import anyio.to_thread
    from starlette.requests import HTTPConnection
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "freeplay_integrations.asgi needs Starlette (it works with any ASGI app). "
        "Install it with: pip install 'freeplay-integrations[starlette]'"
    ) from exc

from ._asgi import SHUTDOWN_FLUSH_TIMEOUT, ASGIApp, Message, Receive, Scope, Send
from ._config import Settings
from ._context import SessionBinding, bind, unbind
from ._recording import flush, shutdown_timeout
from ._web import Rejection, SessionResolver

__all__ = ["SHUTDOWN_FLUSH_TIMEOUT", "FreeplaySessionMiddleware"]

#: WebSocket close code for a connection refused for an invalid session ID (policy).
WS_POLICY_VIOLATION = 1008

_SECURE_SCHEMES = frozenset({"https", "wss"})
_EXPOSE = b"access-control-expose-headers"
_SERVER_ERROR = b"Internal Server Error"


class FreeplaySessionMiddleware:
    """Bind the conversation's Freeplay session for every HTTP request and websocket.

    Options are keyword-only; see the README's configuration reference. The session is
    taken from the `X-Freeplay-Session-Id` header or the `freeplay_session_id` cookie (or a
    new one is started), bound for the whole request, and echoed back in both.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.settings = Settings.from_options(options)
        self.resolver = SessionResolver(self.settings)
        header = self.settings.header_name
        self._header_key = header.lower().encode("latin-1") if header else None
        self._echo_header = self.settings.echo_header
        self._set_cookie = self.settings.set_cookie
        self._wants_request = (
            self.settings.session_metadata is not None
            or self.settings.authorize_session is not None
        )
        self._exclude_paths = self.settings.exclude_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._other(scope, receive, send)
            return
        if self._exclude_paths and scope["path"].startswith(self._exclude_paths):
            await self.app(scope, receive, send)
            return
        binding = self._resolve(scope)
        if isinstance(binding, Rejection):
            await self._reject(scope, receive, send, binding)
            return
        secure = scope.get("scheme") in _SECURE_SCHEMES
        # The response start is held until the first body message, so that new_session()
        # called by the endpoint, or by a streamed body before its first chunk, is what the
        # response headers carry.
        held: Message | None = None
        started = False

        async def send_with_session(message: Message) -> None:
            nonlocal held, started
            if not started:
                if message["type"] == "http.response.start":
                    held = message
                    return
                if held is not None:
                    started = True
                    await send(self._with_session(held, binding, secure))
                    held = None
            await send(message)

        token = bind(binding)
        try:
            try:
                await self.app(scope, receive, send_with_session)
            except Exception:
                if not started:
                    with contextlib.suppress(Exception):
                        await self._server_error(send, binding, secure)
                raise
            if held is not None:  # a start with no body message: still deliver it
                await send(self._with_session(held, binding, secure))
        finally:
            unbind(token)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "websocket" and not self.resolver.is_excluded(scope["path"]):
            binding = self._resolve(scope)
            if isinstance(binding, Rejection):
                await self._reject(scope, receive, send, binding)
                return
            token = bind(binding)
            try:
                await self._websocket(scope, receive, send, binding, scope.get("scheme") == "wss")
            finally:
                unbind(token)
        elif scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _resolve(self, scope: Scope) -> SessionBinding | Rejection:
        header_value = cookie_header = None
        key = self._header_key
        for name, value in scope["headers"]:
            if name == key:
                if header_value is None:
                    header_value = value.decode("latin-1")
            elif name == b"cookie":
                text = value.decode("latin-1")
                cookie_header = text if cookie_header is None else f"{cookie_header}; {text}"
        request = HTTPConnection(scope) if self._wants_request else None
        return self.resolver.resolve(header_value, cookie_header, request)

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, binding: SessionBinding, secure: bool
    ) -> None:
        async def send_with_session(message: Message) -> None:
            if message["type"] in ("websocket.accept", "websocket.http.response.start"):
                message = self._with_session(message, binding, secure)
            await send(message)

        await self.app(scope, receive, send_with_session)

    def _with_session(self, message: Message, binding: SessionBinding, secure: bool) -> Message:
        """`message` (a response start or websocket accept) with the session headers added."""
        headers = list(message.get("headers") or ())
        if self._echo_header and not binding.ended:
            key: bytes = self._header_key  # type: ignore[assignment]
            for index, (name, value) in enumerate(headers):
                if name == _EXPOSE:  # merge with the app's own (CORS) list
                    listed = [v.strip().lower() for v in value.split(b",")]
                    if key not in listed and b"*" not in listed:
                        headers[index] = (name, value + b", " + key)
                    break
            else:
                headers.append((_EXPOSE, key))
            headers.append((key, binding.token.encode("latin-1")))
        if self._set_cookie:
            cookie = self.resolver.cookie(binding, secure)
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        message["headers"] = headers
        return message

    async def _server_error(self, send: Send, binding: SessionBinding, secure: bool) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(_SERVER_ERROR)).encode()),
        ]
        start = {"type": "http.response.start", "status": 500, "headers": headers}
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
                "headers": [
                    (b"content-type", rejection.content_type.encode("latin-1")),
                    (b"content-length", str(len(rejection.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": rejection.body})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_after_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await anyio.to_thread.run_sync(flush, shutdown_timeout())
            await send(message)

        await self.app(scope, receive, send_after_flush)
