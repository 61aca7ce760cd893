"""Django: one Freeplay session per conversation.

    # settings.py
    INSTALLED_APPS = [..., "freeplay_integrations.django"]    # system checks
    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "freeplay_integrations.django.FreeplaySessionMiddleware",
        ...
    ]
    FREEPLAY = {"PROJECT_ID": "...", "API_KEY": "...", "API_BASE": "..."}

Every request then has its conversation's session bound (`current_session()`, also as
`request.freeplay_session`) in sync and async views, streamed bodies and the threads Django
runs sync code in, and the response carries its ID in the `X-Freeplay-Session-Id` header
and the `freeplay_session_id` cookie.
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "freeplay_integrations.django needs Django. "
        "Install it with: pip install 'freeplay-integrations[django]'"
    ) from exc

from .middleware import FreeplayHttpRequest, FreeplaySessionMiddleware

__all__ = ["FreeplayHttpRequest", "FreeplaySessionMiddleware"]
