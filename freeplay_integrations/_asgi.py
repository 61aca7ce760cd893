"""ASGI types and the lifespan flush shared by the ASGI middleware and Django's ASGI app.

Framework-free: only the ASGI protocol's shapes, and the flush both run at lifespan
shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["SHUTDOWN_FLUSH_TIMEOUT", "ASGIApp", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long lifespan shutdown waits for background recordings to be delivered or spooled.
SHUTDOWN_FLUSH_TIMEOUT = 10.0
