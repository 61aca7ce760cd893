"""One Freeplay session per conversation, in Django, Flask and any ASGI app.

The framework adapters live in their own modules (`freeplay_integrations.asgi`,
`.fastapi`, `.django`, `.flask`, `.wsgi`) so that importing this package needs no web
framework.
"""

from __future__ import annotations

from ._context import (
    current_session,
    current_trace,
    new_session,
    require_session,
    session_scope,
)
from ._errors import ConfigurationError, NoActiveSessionError
from ._recording import flush

__all__ = [
    "ConfigurationError",
    "NoActiveSessionError",
    "current_session",
    "current_trace",
    "flush",
    "new_session",
    "require_session",
    "session_scope",
]
