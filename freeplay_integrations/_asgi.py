"""ASGI types, and the lifespan-shutdown flush of the ASGI middleware and Django's ASGI app.

Framework-free: only the ASGI protocol's shapes, and the flush run at lifespan shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._recording import flush, shutdown_timeout

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "flush_at_shutdown"]

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
