"""Session resolution over raw request values, shared by every adapter.

Adapters only translate: they hand this module the raw session header value, the raw
`Cookie` header and their framework's request object, and write back what it returns. So
header and cookie parsing, validation, signing and cookie building exist once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ._config import Settings
from ._context import SessionBinding
from ._ids import parse_session_id
from ._recording import prepare_recorder
from ._validation import sanitize_metadata

__all__ = [
    "INVALID_ID_REASON",
    "UNAUTHORIZED_REASON",
    "Rejection",
    "SessionResolver",
    "cookie_value",
]

logger = logging.getLogger("freeplay_integrations")

#: The body of a 400 answer to an invalid session ID with `on_invalid="reject"`.
INVALID_ID_REASON = "Invalid Freeplay session ID."
#: The body of a 403 answer to a session that `authorize_session` refused.
UNAUTHORIZED_REASON = "This Freeplay session belongs to another user."
LOG_INVALID_ID = "freeplay_integrations: ignored an invalid session ID from the %s; new session"
LOG_METADATA_FAILED = "freeplay_integrations: session_metadata raised; session has no metadata"
LOG_UNAUTHORIZED = "freeplay_integrations: authorize_session refused the session from the %s"
LOG_AUTHORIZE_FAILED = "freeplay_integrations: authorize_session raised; session refused"


class Rejection:
    """The answer to a request refused for its session ID, instead of calling the app.

    400 for an invalid ID under `on_invalid="reject"`; 403 for a valid ID that
    `authorize_session` refused under `on_unauthorized="reject"`.
    """

    __slots__ = ("body", "reason", "source", "status")
    content_type = "text/plain; charset=utf-8"

    def __init__(self, source: str, status: int = 400, reason: str = INVALID_ID_REASON) -> None:
        self.source = source
        self.status = status
        self.reason = reason
        self.body = (reason + "\n").encode("ascii")

    def __repr__(self) -> str:
        return f"<Rejection {self.status} from the {self.source}>"


def cookie_value(cookie_header: str, name: str) -> str | None:
    """The first value of cookie `name` in a `Cookie` header, unquoted, or None."""
    if name not in cookie_header:
        return None
    for part in cookie_header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


class SessionResolver:
    """Turns a request's raw values into a bound session, and a session into response values.

    Everything that depends only on settings is computed here once, not per request.
    """

    __slots__ = (
        "_cookie_insecure",
        "_cookie_secure",
        "_expire_insecure",
        "_expire_secure",
        "cookie_name",
        "exclude_paths",
        "header_name",
        "header_name_lower",
        "settings",
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every adapter builds its resolver at start-up: the recorder's exit hooks
        # (SIGTERM included) go in place now, from the thread that builds the app.
        prepare_recorder(settings.client)
        self.header_name = settings.header_name
        self.header_name_lower = settings.header_name.lower() if settings.header_name else None
        self.cookie_name = settings.cookie_name
        self.exclude_paths = settings.exclude_paths
        attributes = [f"Path={settings.cookie_path}"]
        if settings.cookie_domain:
            attributes.append(f"Domain={settings.cookie_domain}")
        if settings.cookie_samesite:
            attributes.append(f"SameSite={settings.cookie_samesite}")
        attributes.append("HttpOnly")
        plain = "; ".join(attributes)
        live = f"Max-Age={settings.cookie_max_age}; {plain}"
        expired = f"Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; {plain}"
        secure_default = settings.cookie_secure
        self._cookie_secure = f"{live}; Secure" if secure_default is not False else live
        self._cookie_insecure = f"{live}; Secure" if secure_default else live
        self._expire_secure = f"{expired}; Secure" if secure_default is not False else expired
        self._expire_insecure = f"{expired}; Secure" if secure_default else expired

    def is_excluded(self, path: str) -> bool:
        return bool(self.exclude_paths) and path.startswith(self.exclude_paths)

    def parse(self, raw: str) -> str | None:
        """The session ID in a value a client sent, or None if it is not valid."""
        signer = self.settings.signer
        if signer is not None:
            return signer.unsign(raw)
        return parse_session_id(raw)

    def resolve(
        self,
        header_value: str | None,
        cookie_header: str | None,
        request: Any,
    ) -> SessionBinding | Rejection:
        """Resume the session a client sent, or start a new one.

        The first source (in `settings.sources` order) that carries a non-empty value
        decides: a valid value resumes that session; an invalid one starts a new session,
        or is a `Rejection` under `on_invalid="reject"`. The invalid value is never kept.
        """
        settings = self.settings
        session_id: str | None = None
        for source in settings.sources:
            if source == "header":
                raw = header_value
            elif cookie_header:
                raw = cookie_value(cookie_header, self.cookie_name)  # type: ignore[arg-type]
            else:
                continue
            if not raw:
                continue
            session_id = self.parse(raw)
            if session_id is None:
                if settings.on_invalid == "reject":
                    return Rejection(source)
                logger.debug(LOG_INVALID_ID, source)
            elif settings.authorize_session is not None and not self._authorized(
                request, session_id
            ):
                logger.info(LOG_UNAUTHORIZED, source)
                if settings.on_unauthorized == "reject":
                    return Rejection(source, 403, UNAUTHORIZED_REASON)
                session_id = None
            break

        metadata = None if settings.session_metadata is None else self._metadata(request)
        # A resumed session is restored lazily, on first use: requests that never touch it
        # (assets, health checks) do not pay for it.
        return SessionBinding(
            settings.client.sessions.create(custom_metadata=metadata)
            if session_id is None
            else None,
            settings.client,
            settings.project_id,
            recording=settings.recording,
            signer=settings.signer,
            session_id=session_id,
            custom_metadata=metadata,
        )

    def _authorized(self, request: Any, session_id: str) -> bool:
        try:
            return bool(self.settings.authorize_session(request, session_id))  # type: ignore[misc]
        except Exception:
            # Refusing is the safe side: the client gets a new session, not someone else's.
            logger.exception(LOG_AUTHORIZE_FAILED)
            return False

    def _metadata(self, request: Any) -> dict[str, Any] | None:
        hook = self.settings.session_metadata
        if hook is None:
            return None
        try:
            metadata = hook(request)
        except Exception:
            # The user's request goes on: a session without metadata beats a failed request.
            logger.exception(LOG_METADATA_FAILED)
            return None
        if metadata is None:
            return None
        if not isinstance(metadata, Mapping):
            logger.error(
                "freeplay_integrations: session_metadata returned %s, not a dict; ignored",
                type(metadata).__name__,
            )
            return None
        return sanitize_metadata(metadata)

    def cookie(self, binding: SessionBinding, secure: bool) -> str:
        """The `Set-Cookie` value for the response: the session's token, or an expiry."""
        name = self.cookie_name
        if binding.ended:
            return f"{name}=; {self._expire_secure if secure else self._expire_insecure}"
        attributes = self._cookie_secure if secure else self._cookie_insecure
        return f"{name}={binding.token}; {attributes}"
