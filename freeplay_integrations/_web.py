"""Session resolution over raw request values, shared by every adapter.

Adapters only translate: they hand this module the raw session header value, the raw
`Cookie` header and their framework's request object, and write back what it returns. So
header and cookie parsing, validation, signing and cookie building exist once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Literal, overload
from urllib.parse import unquote

from ._config import Settings
from ._context import SessionBinding, new_binding
from ._ids import parse_session_id
from ._recording import prepare_recorder
from ._validation import sanitize_metadata

__all__ = [
    "BAGGAGE_KEY",
    "EXPIRED",
    "EXPOSE_HEADERS",
    "INVALID_ID_REASON",
    "KNOWN_VALUES",
    "SERVER_ERROR",
    "UNAUTHORIZED_REASON",
    "Answer",
    "CookieAttributes",
    "Rejection",
    "SessionCookie",
    "SessionResolver",
    "baggage_value",
    "cookie_value",
]

logger = logging.getLogger("freeplay_integrations")

_HEADER = "header"
_BAGGAGE = "baggage"
#: The W3C `baggage` member that carries the session (opt-in source `"baggage"`).
BAGGAGE_KEY = "freeplay.session.id"
#: W3C baggage limit: longer `baggage` headers are ignored as a session source.
_BAGGAGE_MAX = 8192
#: How many valid session values a resolver remembers (see `SessionResolver.parse`).
KNOWN_VALUES = 4096
#: The response header that lets browser code read the session header.
EXPOSE_HEADERS = "Access-Control-Expose-Headers"
#: The `Expires` of a cookie that is being removed.
EXPIRED = "Thu, 01 Jan 1970 00:00:00 GMT"
#: The body of a 400 answer to an invalid session ID with `on_invalid="reject"`.
INVALID_ID_REASON = "Invalid Freeplay session ID."
#: The body of a 403 answer to a session that `authorize_session` refused.
UNAUTHORIZED_REASON = "This Freeplay session belongs to another user."
LOG_INVALID_ID = "freeplay_integrations: ignored an invalid session ID from the %s; new session"
LOG_METADATA_FAILED = "freeplay_integrations: session_metadata raised; session has no metadata"
LOG_UNAUTHORIZED = "freeplay_integrations: authorize_session refused the session from the %s"
LOG_AUTHORIZE_FAILED = "freeplay_integrations: authorize_session raised; session refused"


TextHeaders = tuple[tuple[str, str], ...]
RawHeaders = tuple[tuple[bytes, bytes], ...]


def _raw(headers: TextHeaders) -> RawHeaders:
    """Headers as ASGI writes them: lower-case names, latin-1 bytes."""
    return tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
    )


class _HeaderForm:
    """The constant parts of the session headers in one form: WSGI's text, or ASGI's bytes."""

    __slots__ = ("built", "cookie", "echo", "expired", "expose", "set_cookie")

    def __init__(
        self, *, expose: Any, echo: Any, set_cookie: Any, cookie: Any, expired: Any
    ) -> None:
        self.expose = expose  # (Access-Control-Expose-Headers, the session header), or None
        self.echo = echo  # the session header's name when it is echoed, or None
        self.set_cookie = set_cookie
        self.cookie = cookie  # secure -> the text around the token in a live cookie
        self.expired = expired  # secure -> the headers of an ended session
        self.built: dict[bool, dict[str, Any]] = {False: {}, True: {}}


class Answer:
    """A plain-text answer an adapter writes instead of the app's: its status, its headers
    (as WSGI and Django write them, and as ASGI does: lower-case bytes), and its body."""

    __slots__ = ("body", "headers", "raw_headers", "status")
    content_type = "text/plain; charset=utf-8"

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body.encode("ascii")
        self.headers = (
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
        )
        self.raw_headers = _raw(self.headers)

    @property
    def status_line(self) -> str:
        """`"400 Bad Request"`: the status as WSGI writes it."""
        return f"{self.status} {HTTPStatus(self.status).phrase}"

    def __repr__(self) -> str:
        return f"<Answer {self.status}>"


#: The middleware's own answer to an exception the app let escape before its response began.
SERVER_ERROR = Answer(500, "Internal Server Error")


class Rejection(Answer):
    """The answer to a request refused for its session ID, instead of calling the app.

    400 for an invalid ID under `on_invalid="reject"`; 403 for a valid ID that
    `authorize_session` refused under `on_unauthorized="reject"`.
    """

    __slots__ = ("reason", "source")

    def __init__(self, source: str, status: int = 400, reason: str = INVALID_ID_REASON) -> None:
        super().__init__(status, reason + "\n")
        self.source = source
        self.reason = reason

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


def baggage_value(baggage_header: str, key: str = BAGGAGE_KEY) -> str | None:
    """The value of member `key` in a W3C `baggage` header (percent-decoded), or None."""
    if key not in baggage_header or len(baggage_header) > _BAGGAGE_MAX:
        return None
    for member in baggage_header.split(","):
        name, sep, value = member.partition("=")
        if sep and name.strip() == key:
            return unquote(value.split(";", 1)[0].strip())
    return None


class CookieAttributes:
    """The attributes of the session cookie in one response kind (live or expiring, over
    https or not), computed once; `text` is them as a `Set-Cookie` fragment."""

    __slots__ = (
        "_expires",
        "domain",
        "expire",
        "httponly",
        "max_age",
        "path",
        "samesite",
        "secure",
        "text",
    )

    def __init__(self, settings: Settings, *, secure: bool, expire: bool) -> None:
        self.expire = expire
        self._expires = (-1, EXPIRED)
        self.max_age = 0 if expire else settings.cookie_max_age
        self.path = settings.cookie_path
        self.domain = settings.cookie_domain
        self.samesite = settings.cookie_samesite
        self.secure = secure
        self.httponly = True
        parts = [f"Max-Age={self.max_age}"]
        if expire:
            parts.append(f"Expires={EXPIRED}")
        parts.append(f"Path={self.path}")
        if self.domain:
            parts.append(f"Domain={self.domain}")
        if self.samesite:
            parts.append(f"SameSite={self.samesite}")
        parts.append("HttpOnly")
        if secure:
            parts.append("Secure")
        self.text = "; ".join(parts)

    @property
    def expires(self) -> str:
        """`Expires` as an HTTP date: `Max-Age` from now (computed once a second), or the
        epoch for an expiring cookie. Raw-header adapters send `Max-Age` alone."""
        if self.expire:
            return EXPIRED
        now = int(time.time())
        cached = self._expires
        if cached[0] != now:
            cached = self._expires = (now, formatdate(now + self.max_age, usegmt=True))
        return cached[1]

    def __repr__(self) -> str:
        return f"<CookieAttributes {self.text}>"


class SessionCookie:
    """The session cookie a response sets: `name`, `value` and its `attributes`.

    `header` is the whole `Set-Cookie` value, for adapters that write raw headers; Django
    passes the parts to `response.set_cookie`.
    """

    __slots__ = ("attributes", "name", "value")

    def __init__(self, name: str, value: str, attributes: CookieAttributes) -> None:
        self.name = name
        self.value = value
        self.attributes = attributes

    @property
    def header(self) -> str:
        return f"{self.name}={self.value}; {self.attributes.text}"

    def __repr__(self) -> str:
        return f"<SessionCookie {self.name}>"


class SessionResolver:
    """Turns a request's raw values into a bound session, and a session into response values.

    Everything that depends only on settings is computed here once, not per request; the
    adapters read it from here (`header_name`, `header_key`, `environ_key`, `wants_request`,
    `echo_header`, `set_cookie`) and write what it returns: `session_headers` (with
    `expose` for an app's own expose list) where headers are raw (WSGI, ASGI); `echo`,
    `expose` and the structured `cookie` where the framework writes them (Django).
    """

    __slots__ = (
        "_attributes",
        "_client",
        "_header_first",
        "_plain",
        "_project_id",
        "_raw_form",
        "_recording",
        "_signer",
        "_sources",
        "_text_form",
        "baggage",
        "built_headers",
        "built_raw_headers",
        "cookie_name",
        "echo_header",
        "environ_key",
        "exclude_paths",
        "expose_default",
        "header_key",
        "header_name",
        "known",
        "set_cookie",
        "settings",
        "wants_request",
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Valid values clients sent: raw value -> (session ID, deadline). See `parse`.
        self.known: dict[str, tuple[str, int | None]] = {}
        self._sources = tuple(
            _HEADER if s == _HEADER else _BAGGAGE if s == _BAGGAGE else "cookie"
            for s in settings.sources
        )
        #: Whether adapters must read the W3C `baggage` header (opt-in source).
        self.baggage = _BAGGAGE in settings.sources
        self._client = settings.client
        self._project_id = settings.project_id
        self._recording = settings.recording
        self._signer = settings.signer
        # Every adapter builds its resolver at start-up: the recorder's exit hooks
        # (SIGTERM included) go in place now, from the thread that builds the app.
        prepare_recorder(settings.client)
        header = settings.header_name
        self.header_name = header
        #: The session header as ASGI spells request header names (lower-case bytes).
        self.header_key = header.lower().encode("latin-1") if header else None
        #: The session header as WSGI and Django spell it in the environ / `request.META`;
        #: None when the header is not a source.
        self.environ_key = (
            "HTTP_" + header.upper().replace("-", "_")
            if header and "header" in settings.sources
            else None
        )
        self.cookie_name = settings.cookie_name
        self.exclude_paths = settings.exclude_paths
        self.echo_header = settings.echo_header
        self.set_cookie = settings.set_cookie
        #: The hooks get the request: adapters build a request object only then.
        self.wants_request = (
            settings.session_metadata is not None or settings.authorize_session is not None
        )
        self._plain = not self.wants_request
        self._header_first = self._sources[0] is _HEADER if self._sources else False
        #: `Access-Control-Expose-Headers` when the response has none of its own.
        self.expose_default = header if settings.echo_header else None
        forced = settings.cookie_secure
        self._attributes = {
            (https, expire): CookieAttributes(
                settings, secure=https if forced is None else forced, expire=expire
            )
            for https in (False, True)
            for expire in (False, True)
        }
        self._text_form = text = _HeaderForm(
            expose=None if self.expose_default is None else (EXPOSE_HEADERS, header),
            echo=self.expose_default,
            set_cookie="Set-Cookie",
            cookie={
                https: (f"{self.cookie_name}=", f"; {self._attributes[https, False].text}")
                for https in (False, True)
            },
            expired={
                https: (
                    (("Set-Cookie", f"{self.cookie_name}=; {self._attributes[https, True].text}"),)
                    if self.set_cookie
                    else ()
                )
                for https in (False, True)
            },
        )
        self._raw_form = _HeaderForm(
            expose=None if text.expose is None else _raw((text.expose,))[0],
            echo=None if text.echo is None else self.header_key,
            set_cookie=b"set-cookie",
            cookie={
                https: (prefix.encode("latin-1"), suffix.encode("latin-1"))
                for https, (prefix, suffix) in text.cookie.items()
            },
            expired={https: _raw(headers) for https, headers in text.expired.items()},
        )
        #: `session_headers(token, secure)` of returning clients' tokens, by `secure` then
        #: token, and the same with `raw=True`: adapters read these first.
        self.built_headers: dict[bool, dict[str, TextHeaders]] = text.built
        self.built_raw_headers: dict[bool, dict[str, RawHeaders]] = self._raw_form.built

    def is_excluded(self, path: str) -> bool:
        return bool(self.exclude_paths) and path.startswith(self.exclude_paths)

    def parse(self, raw: str) -> str | None:
        """The session ID in a value a client sent, or None if it is not valid.

        Values found valid are remembered (up to `KNOWN_VALUES`, then forgotten all at once),
        so a returning client's ID, or signed token, is not parsed and verified again on
        every request; with `signed_max_age`, until its token expires. Invalid values are
        never remembered."""
        known = self.known.get(raw)
        if known is not None and (known[1] is None or time.time() <= known[1]):
            return known[0]
        signer = self.settings.signer
        if signer is None:
            session_id = parse_session_id(raw)
            deadline = None
        else:
            session_id = signer.unsign(raw)
            deadline = None
            if session_id is not None and signer.max_age is not None:
                deadline = int(raw.split(".")[1], 36) + signer.max_age
        if session_id is not None:
            if len(self.known) >= KNOWN_VALUES:
                self.known.clear()
            self.known[raw] = (session_id, deadline)
        return session_id

    def resolve(
        self,
        header_value: str | None,
        cookie_header: str | None,
        request: Any,
        baggage_header: str | None = None,
    ) -> SessionBinding | Rejection:
        """Resume the session a client sent, or start a new one.

        The first source (in `settings.sources` order) that carries a non-empty value
        decides: a valid value resumes that session; an invalid one starts a new session,
        or is a `Rejection` under `on_invalid="reject"`. The invalid value is never kept.
        """
        if self._plain:  # no hooks: the common requests take the shortest way
            if header_value and self._header_first:
                known = self.known.get(header_value)
                if known is not None and known[1] is None:  # `_bind`, inlined: per request
                    return new_binding(
                        None,
                        self._client,
                        self._project_id,
                        self._recording,
                        self._signer,
                        known[0],
                        None,
                    )
            elif not header_value and not cookie_header and not baggage_header:
                return new_binding(  # a new session: `_bind(None, None)`, inlined
                    None, self._client, self._project_id, self._recording, self._signer
                )
        settings = self.settings
        session_id: str | None = None
        for source in self._sources:
            if source is _HEADER:
                raw = header_value
            elif source is _BAGGAGE:
                raw = baggage_value(baggage_header) if baggage_header else None
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
        # The SDK `Session` (new or resumed) is built lazily, on first use: requests that
        # never touch it (assets, health checks) do not pay for it. A new one gets its ID
        # from new_binding, as `sessions.create()` would.
        return self._bind(session_id, metadata)

    def _bind(self, session_id: str | None, metadata: dict[str, Any] | None) -> SessionBinding:
        return new_binding(
            None,
            self._client,
            self._project_id,
            self._recording,
            self._signer,
            session_id,
            metadata,
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

    def echo(self, binding: SessionBinding) -> str | None:
        """The session header's value for the response, or None (off, or session ended)."""
        if not self.echo_header or binding.ended:
            return None
        return binding.token

    def expose(self, existing: str | None) -> str | None:
        """`Access-Control-Expose-Headers` listing the session header, merged with the
        value the app (or CORS middleware) set; None when `existing` already lists it (or
        `*`). Call it only when `echo` gave a value."""
        if not existing:
            return self.expose_default
        header = self.expose_default
        if header is None:
            return None
        listed = [value.strip().lower() for value in existing.split(",")]
        if header.lower() in listed or "*" in listed:
            return None
        return f"{existing}, {header}"

    def merge_expose(self, headers: Any, found: Any, added: Any, raw: bool = False) -> list[Any]:
        """A copy of a response's `headers` whose expose header `found` (the app's own, one
        of `headers`) also names the session header (`expose`), plus the session's `added`
        headers but their own expose (`session_headers`' first). `raw`: ASGI's bytes."""
        copy: list[Any] = list(headers)
        name, value = found
        merged = self.expose(value.decode("latin-1") if raw else value)
        if merged is not None:
            copy[copy.index(found)] = (name, merged.encode("latin-1") if raw else merged)
        copy += added[1:]
        return copy

    @overload
    def session_headers(
        self, token: str | None, secure: bool, raw: Literal[False] = False
    ) -> TextHeaders: ...

    @overload
    def session_headers(
        self, token: str | None, secure: bool, raw: Literal[True]
    ) -> RawHeaders: ...

    def session_headers(self, token: str | None, secure: bool, raw: bool = False) -> Any:
        """What a response adds for the session `token`: as WSGI writes headers, or with
        `raw` as ASGI does (lower-case names, latin-1 bytes).

        A live session: `Access-Control-Expose-Headers` and the session header when it is
        echoed (those two first, in that order), then `Set-Cookie` when the cookie is set.
        `None`, a session ended by `end_session()`: the cookie's expiry alone. A response
        with an expose header of its own keeps it, merged (`expose`), and adds the rest.
        The headers of a token a client sent back are built once, into `built_headers`
        (`built_raw_headers`), which adapters read first: a lookup costs less than the call.
        """
        form = self._raw_form if raw else self._text_form
        if token is None:
            return form.expired[secure]
        value: Any = token.encode() if raw else token  # ASCII (a UUID, or signed): UTF-8 is fast
        echo = form.echo
        added: tuple[Any, ...]
        if self.set_cookie:
            prefix, suffix = form.cookie[secure]
            cookie = (form.set_cookie, prefix + value + suffix)
            added = (cookie,) if echo is None else (form.expose, (echo, value), cookie)
        else:
            added = () if echo is None else (form.expose, (echo, value))
        if token in self.known:  # a returning client's: worth keeping (bounded like `known`)
            built = form.built[secure]
            if len(built) >= KNOWN_VALUES:
                built.clear()
            built[token] = added
        return added

    def cookie(self, binding: SessionBinding, secure: bool) -> SessionCookie | None:
        """The cookie for the response: the session's token, or an expiry after
        `end_session()`; None when `set_cookie` is off. `secure`: the request came over https
        (ignored when `cookie_secure` is set)."""
        if not self.set_cookie:
            return None
        if binding.ended:
            return SessionCookie(self.cookie_name, "", self._attributes[secure, True])  # type: ignore[arg-type]
        return SessionCookie(self.cookie_name, binding.token, self._attributes[secure, False])  # type: ignore[arg-type]
