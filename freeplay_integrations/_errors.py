"""Exceptions raised by freeplay-integrations."""

from __future__ import annotations

__all__ = ["ConfigurationError", "NoActiveSessionError"]


class ConfigurationError(ValueError):
    """The integration is missing a setting or has a malformed one.

    Raised when a middleware or extension is constructed, never at the first request. The
    message names the setting to fix and how to set it.
    """


class NoActiveSessionError(LookupError):
    """No Freeplay session is bound to the code that is running."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or (
                "No Freeplay session is bound here. In a thread or executor you started "
                "yourself inside a request, the request's session is not bound: wrap the "
                "function with `freeplay_integrations.run_with_session(function)` before "
                "handing it over. Inside a web request, add the freeplay_integrations "
                "middleware for your framework (ASGI, Django, Flask or WSGI); outside one "
                "(scripts, workers, tests), wrap the code in "
                "`with freeplay_integrations.session_scope(client): ...`."
            )
        )
