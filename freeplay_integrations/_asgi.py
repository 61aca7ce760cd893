"""What the ASGI middleware and Django's ASGI app share: the ASGI protocol's shapes, the
flush run at lifespan shutdown, and the middleware's framework-free plumbing.

Framework-free: Starlette is used only when it is installed (`request_factory`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._recording import flush, shutdown_timeout
from ._web import Answer

__all__ = [
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "answer_messages",
    "flush_at_shutdown",
    "flushing_lifespan",
    "request_factory",
    "take_app",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def flush_at_shutdown(timeout: float | None = None) -> None:
    """Wait, in a worker thread, at most `timeout` seconds (default: the one shutdown timeout,
    `configure_recording(shutdown_timeout=)`) for background recordings to be delivered or
    spooled: through anyio when present (asyncio or trio), else asyncio's default executor."""
    if timeout is None:
        timeout = shutdown_timeout()
    try:
        import anyio.to_thread
    except ImportError:
        await asyncio.get_running_loop().run_in_executor(None, flush, timeout)
        return
    await anyio.to_thread.run_sync(flush, timeout)


def flushing_lifespan(send: Send) -> Send:
    """The `send` of an app's lifespan, flushing recordings before shutdown completes."""

    async def send_after_flush(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            await flush_at_shutdown()
        await send(message)

    return send_after_flush


def answer_messages(answer: Answer) -> tuple[Message, Message]:
    """The response start and body of `answer`, as ASGI sends them (a fresh headers list)."""
    start: Message = {
        "type": "http.response.start",
        "status": answer.status,
        "headers": list(answer.raw_headers),
    }
    return start, {"type": "http.response.body", "body": answer.body}


def request_factory() -> Callable[[Scope], Any]:
    """What the hooks get as the request: Starlette's `HTTPConnection` if installed, else
    the ASGI scope itself (Quart, Litestar, bare ASGI)."""
    try:
        from starlette.requests import HTTPConnection
    except ImportError:
        return lambda scope: scope
    return HTTPConnection


def take_app(args: tuple[Any, ...], options: dict[str, Any]) -> ASGIApp:
    """The wrapped app, given first or as `app=` (popped from `options`); a clear TypeError
    otherwise."""
    if len(args) == 1 and "app" not in options:
        return args[0]  # type: ignore[no-any-return]
    if not args and "app" in options:
        return options.pop("app")  # type: ignore[no-any-return]
    raise TypeError(
        "FreeplaySessionMiddleware takes the ASGI app as its one positional argument "
        "(or app=), and every option by keyword"
    )
