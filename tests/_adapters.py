"""Every adapter driven as a server drives it, plus a reference for what it must answer.

Used by the hostile-input tests (`test_fuzz.py`, `test_injection.py`, `test_signing.py`,
`test_ownership.py`). A request is a list of raw header fields, `(name, value)` bytes, as
they come off the wire:

- `asgi`: the pure ASGI middleware around a raw ASGI app, called with a raw `scope`.
- `wsgi`: the WSGI middleware around a plain WSGI app, `flask`: a Flask app with
  `FreeplaySessions`; both called with a raw PEP 3333 environ behind `wsgiref.validate`.
- `django-wsgi`: Django's `WSGIHandler` with a raw environ; `django-asgi`: Django's
  `ASGIHandler` (`get_asgi_application()`) with a raw scope. Both run the project's
  `MIDDLEWARE` (tests/django_settings.py) with `FREEPLAY` and `ROOT_URLCONF` overridden.

Each app has one view, `/fuzz`, that answers the ID of the session bound while it runs (or
`none`). The Freeplay client points at a closed port: creating and resuming sessions makes
no HTTP call, and nothing here records.

The reference functions (`reference_session_id`, `reference_unsign`, `reference_cookie`,
`reference_sign`) are written from the SPEC, independently of the package's own parsing,
so the tests decide what is valid without asking the code they test.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import io
import re
import time
import uuid
import wsgiref.validate
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIRequest
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path
from flask import Flask, Request
from freeplay import Freeplay
from starlette.requests import HTTPConnection

from freeplay_integrations import current_session
from freeplay_integrations.asgi import FreeplaySessionMiddleware as AsgiMiddleware
from freeplay_integrations.flask import FreeplaySessions
from freeplay_integrations.wsgi import FreeplaySessionMiddleware as WsgiMiddleware

__all__ = [
    "ADAPTERS",
    "COOKIE",
    "COOKIE_ATTRIBUTES",
    "HEADER",
    "HEADER_KEY",
    "INJECTIONS",
    "INVALID_BODY",
    "NO_SESSION",
    "TAMPERS",
    "TAMPER_ALPHABET",
    "UNAUTHORIZED_BODY",
    "Driver",
    "RawHeaders",
    "Reply",
    "open_driver",
    "reference_cookie",
    "reference_session_id",
    "reference_sign",
    "reference_unsign",
    "session_cookie",
    "tamper",
    "urlpatterns",
]

ADAPTERS = ("asgi", "wsgi", "flask", "django-wsgi", "django-asgi")
HEADER = "X-Freeplay-Session-Id"
HEADER_KEY = HEADER.lower().encode("ascii")
COOKIE = "freeplay_session_id"
#: The cookie attributes the SPEC gives the session cookie (plus `Secure` over https).
COOKIE_ATTRIBUTES = frozenset({"HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=2592000"})
#: The README's answers to a refused request (`on_invalid` / `on_unauthorized="reject"`).
INVALID_BODY = b"Invalid Freeplay session ID.\n"
UNAUTHORIZED_BODY = b"This Freeplay session belongs to another user.\n"
#: What the view answers when no session is bound.
NO_SESSION = "none"
API_BASE = "http://127.0.0.1:9/api"  # closed: sessions are created without any HTTP call
PROJECT_ID = "f0220000-0000-4000-8000-00000000f022"
VIEW_PATH = "/fuzz"

RawHeaders = Sequence[tuple[bytes, bytes]]

#: Client values that try to smuggle a header, a cookie attribute or a second response
#: (on their own, or after a valid ID). Each says `evil` where it would show.
INJECTIONS = (
    "\r\nSet-Cookie: evil=1",
    "\r\n\r\n<script>evil()</script>",
    "\nX-Evil: 1",
    "\rX-Evil: 1",
    "; Domain=evil.example",
    "; Max-Age=99999999; Path=/evil; Secure",
    "; HttpOnly=evil; SameSite=None",
    ", evil=1",
    "%0d%0aSet-Cookie:%20evil=1",
    "\x00X-Evil: 1",
    "\x85X-Evil: 1",
    "\u2028X-Evil: 1",
    '"; evil="1',
)


# -- the reference ---------------------------------------------------------------------------


def reference_session_id(value: str) -> str | None:
    """The SPEC's rule: a UUID v4 in canonical form, any case, at most 64 characters."""
    if len(value) > 64:
        return None
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    canonical = str(parsed)
    if parsed.version != 4 or value.lower() != canonical:
        return None
    return canonical


#: What the signing key is derived for (HMAC-SHA256(secret, purpose) is the key).
SIGNING_PURPOSE = b"freeplay_integrations.session-id.v2"


def _reference_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), SIGNING_PURPOSE, hashlib.sha256).digest()


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return digits


def reference_sign(session_id: str, secret: str, issued: float | None = None) -> str:
    """`<uuid>.<issued: base 36 seconds>.<base64url(HMAC-SHA256(key, "<uuid>.<issued>"))>`
    without padding, the key derived from `secret` for the session-ID purpose."""
    message = f"{session_id}.{_base36(int(time.time() if issued is None else issued))}"
    mac = hmac.new(_reference_key(secret), message.encode(), hashlib.sha256).digest()
    return message + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


_TOKEN = re.compile(r"([^.]*)\.([0-9a-z]{1,8})\.([A-Za-z0-9_-]{43})")


def reference_unsign(
    token: str, secrets: Sequence[str], max_age: float | None = None
) -> str | None:
    """The session ID in `token` when one of `secrets` signed its canonical ID and issue
    time (no older than `max_age` seconds, if given), else None."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    session_id = reference_session_id(match[1])
    if session_id is None:
        return None
    issued = int(match[2], 36)
    if max_age is not None and time.time() - issued > max_age:
        return None
    for secret in secrets:
        if hmac.compare_digest(
            reference_sign(session_id, secret, issued), f"{session_id}.{match[2]}.{match[3]}"
        ):
            return session_id
    return None


def reference_cookie(cookie_header: str | None, name: str) -> str | None:
    """The value of the first `name=` pair in a `Cookie` header: around `;`-separated pairs
    whitespace is ignored, and one pair of double quotes around a value is removed."""
    if cookie_header is None:
        return None
    for pair in re.split(";", cookie_header):
        key, equals, value = pair.partition("=")
        if equals and key.strip() == name:
            value = value.strip()
            if len(value) > 1 and value.startswith('"') and value.endswith('"'):
                value = value[1:-1]
            return value
    return None


# -- what came back ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One response as the server got it; header names and values decoded as latin-1."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: A session was still bound in the caller's context after the request.
    left_bound: bool

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def text(self) -> str:
        """Every header and the body, as one string: what a client can read."""
        lines = [f"{key}: {value}" for key, value in self.headers]
        return "\n".join([*lines, self.body.decode("latin-1")])


def session_cookie(set_cookie: str) -> tuple[str, str, frozenset[str]]:
    """`(name, value, attributes)` of a `Set-Cookie` value. A live cookie's `expires=`
    (which Django's `set_cookie` derives from `Max-Age`) is left out, after checking it is
    a date in the future: `Max-Age` wins in every browser."""
    pair, *attributes = [part.strip() for part in set_cookie.strip().split(";")]
    name, _, value = pair.partition("=")
    if value:
        for attribute in attributes:
            if attribute.startswith("expires="):
                expires = email.utils.parsedate_to_datetime(attribute[len("expires=") :])
                assert expires.timestamp() > time.time(), set_cookie
        attributes = [a for a in attributes if not a.startswith("expires=")]
    return name, value, frozenset(attributes)


# -- the apps -------------------------------------------------------------------------------


def _seen() -> bytes:
    session = current_session()
    return (NO_SESSION if session is None else session.session_id).encode()


def client() -> Freeplay:
    return Freeplay(freeplay_api_key="fuzz-key", api_base=API_BASE)


async def _asgi_view(scope: Any, receive: Any, send: Any) -> None:
    body = _seen()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _wsgi_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = _seen()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _django_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_seen(), content_type="text/plain")


async def _django_async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_seen(), content_type="text/plain")


#: `ROOT_URLCONF` of the Django drivers: the sync view for WSGI, the async one for ASGI.
urlpatterns = [path("fuzz", _django_view), path("fuzz-async", _django_async_view)]


# -- the drivers ------------------------------------------------------------------------------


def _scope(headers: RawHeaders, scheme: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443 if scheme == "https" else 80),
    }


def _environ(headers: RawHeaders, scheme: str) -> dict[str, Any]:
    """A PEP 3333 environ as a server builds it from raw header fields: values are latin-1
    decoded native strings; repeated fields are joined with `,` (`; ` for `Cookie`, as
    RFC 9113 asks); names with `_` are dropped (as Werkzeug, gunicorn and Django do)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": VIEW_PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "443" if scheme == "https" else "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if key in environ:
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value
    return environ


class Driver:
    """One adapter, built once per test, serving raw requests."""

    name: str

    def request(self, headers: RawHeaders, *, scheme: str = "http") -> Reply:
        raise NotImplementedError

    def presented(self, headers: RawHeaders) -> tuple[str | None, str | None]:
        """The session header value and the `Cookie` header as the framework hands them to
        the middleware (servers and frameworks fold repeated fields each their own way)."""
        environ = _environ(headers, "http")
        return environ.get("HTTP_X_FREEPLAY_SESSION_ID"), environ.get("HTTP_COOKIE")

    @staticmethod
    def header_of(request: Any, name: str) -> str | None:
        """Header `name` of the request object `authorize_session` gets in this adapter."""
        return request.headers.get(name)  # type: ignore[no-any-return]

    #: The type of the request object the hooks get.
    request_type: type


class _Asgi(Driver):
    name = "asgi"
    request_type = HTTPConnection

    def __init__(self, options: dict[str, Any]) -> None:
        self.app = AsgiMiddleware(_asgi_view, client=client(), project_id=PROJECT_ID, **options)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def request(self, headers: RawHeaders, *, scheme: str = "http") -> Reply:
        return self.loop.run_until_complete(
            _asgi_call(self.app, _scope(headers, scheme, VIEW_PATH))
        )

    def presented(self, headers: RawHeaders) -> tuple[str | None, str | None]:
        # Raw ASGI: the first session header field counts; `Cookie` fields are joined.
        header = next((v.decode("latin-1") for k, v in headers if k == HEADER_KEY), None)
        cookies = [v.decode("latin-1") for k, v in headers if k == b"cookie"]
        return header, "; ".join(cookies) if cookies else None


async def _asgi_call(app: Any, scope: dict[str, Any]) -> Reply:
    """Call an ASGI app as a server would; the client stays connected until the end."""
    messages: list[dict[str, Any]] = []
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    left_bound = current_session() is not None
    return _asgi_reply(messages, left_bound)


def _asgi_reply(messages: list[dict[str, Any]], left_bound: bool) -> Reply:
    starts = [m for m in messages if m["type"] == "http.response.start"]
    assert len(starts) == 1, f"expected one response start, got {messages}"
    assert messages[0] is starts[0], "body sent before the response start"
    headers = []
    for key, value in starts[0].get("headers", ()):
        assert isinstance(key, bytes) and isinstance(value, bytes), (key, value)
        headers.append((key.decode("latin-1"), value.decode("latin-1")))
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return Reply(starts[0]["status"], tuple(headers), body, left_bound)


class _Wsgi(Driver):
    name = "wsgi"
    request_type = dict

    def __init__(self, options: dict[str, Any]) -> None:
        self.app: Any = WsgiMiddleware(
            _wsgi_view, client=client(), project_id=PROJECT_ID, **options
        )

    def close(self) -> None:
        pass

    def request(self, headers: RawHeaders, *, scheme: str = "http") -> Reply:
        return _serve_wsgi(self.app, _environ(headers, scheme))

    @staticmethod
    def header_of(request: Any, name: str) -> str | None:
        return request.get("HTTP_" + name.upper().replace("-", "_"))  # type: ignore[no-any-return]


def _serve_wsgi(app: Any, environ: dict[str, Any]) -> Reply:
    """Serve one request as a PEP 3333 server: call, iterate, close, behind wsgiref's
    validator (which, among other things, refuses control characters in header values)."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None

    result = wsgiref.validate.validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    left_bound = current_session() is not None
    status, headers = started
    return Reply(int(status.split()[0]), tuple(headers), body, left_bound)


class _Flask(_Wsgi):
    name = "flask"
    request_type = Request

    def __init__(self, options: dict[str, Any]) -> None:
        flask_app = Flask(__name__)
        flask_app.add_url_rule(VIEW_PATH, "fuzz", lambda: (_seen(), {"Content-Type": "text/plain"}))
        self.extension = FreeplaySessions(
            flask_app, client=client(), project_id=PROJECT_ID, **options
        )
        self.app = flask_app

    @staticmethod
    def header_of(request: Any, name: str) -> str | None:
        return request.headers.get(name)  # type: ignore[no-any-return]


class _DjangoWsgi(Driver):
    name = "django-wsgi"
    request_type = HttpRequest

    def __init__(self, options: dict[str, Any]) -> None:
        freeplay = {key.upper(): value for key, value in options.items()}
        freeplay.setdefault("CLIENT", client())
        freeplay.setdefault("PROJECT_ID", PROJECT_ID)
        self._override = override_settings(FREEPLAY=freeplay, ROOT_URLCONF=__name__)
        self._override.enable()
        try:
            self._handler()
        except BaseException:
            self._override.disable()
            raise

    def _handler(self) -> None:
        self.app: Any = WSGIHandler()

    def close(self) -> None:
        self._override.disable()

    def request(self, headers: RawHeaders, *, scheme: str = "http") -> Reply:
        return _serve_wsgi(self.app, _environ(headers, scheme))


class _DjangoAsgi(_DjangoWsgi):
    name = "django-asgi"

    def _handler(self) -> None:
        self.app = get_asgi_application()
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        try:
            self.loop.close()
        finally:
            super().close()

    def request(self, headers: RawHeaders, *, scheme: str = "http") -> Reply:
        scope = _scope(headers, scheme, VIEW_PATH + "-async")
        return self.loop.run_until_complete(_asgi_call(self.app, scope))

    def presented(self, headers: RawHeaders) -> tuple[str | None, str | None]:
        # Django builds `request.META` from the scope: repeated session headers are joined
        # with "," there (ask Django). Repeated `Cookie` fields (HTTP/2 clients send one per
        # cookie) are one cookie list, joined with "; " as the ASGI spec says, whatever
        # `request.META["HTTP_COOKIE"]` makes of them (Django 5.2 joins them with ",").
        meta = ASGIRequest(_scope(headers, "http", VIEW_PATH), io.BytesIO()).META
        return meta.get("HTTP_X_FREEPLAY_SESSION_ID"), _Asgi.presented(self, headers)[1]


_DRIVERS: dict[str, type[Any]] = {
    "asgi": _Asgi,
    "wsgi": _Wsgi,
    "flask": _Flask,
    "django-wsgi": _DjangoWsgi,
    "django-asgi": _DjangoAsgi,
}


@contextmanager
def open_driver(name: str, **options: Any) -> Iterator[Driver]:
    """A fresh app for adapter `name` with the middleware configured by `options` (keyword
    names; upper-cased into `FREEPLAY` for Django)."""
    driver = _DRIVERS[name](options)
    try:
        yield driver
    finally:
        driver.close()


# -- tampering with signed tokens ---------------------------------------------------------------

#: Characters a tampered token may gain: hex digits in both cases, base64url, and separators.
TAMPER_ALPHABET = "0123456789abcdefABCDEF" + "ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ-_" + ".=+/ "
TAMPERS = (
    "flip",
    "truncate",
    "cut",
    "extend",
    "swap-signature",
    "other-secret",
    "signature-case",
    "signature-letter-case",
    "padding",
    "standard-alphabet",
    "no-dot",
    "other-separator",
    "unsigned",
    "signed-not-v4",
    "empty-signature",
    "signature-only",
    "double-signature",
)


def tamper(
    token: str, kind: str, rnd: Any, other_secret: str, secret: str, issued: float | None = None
) -> str:
    """`token` (`<uuid>.<signature>`, signed with `secret`) changed the way `kind` says, with
    `rnd` (a `random.Random`) choosing positions and characters. The result may, rarely, still
    be valid (a hex letter of the ID flipped to its other case): the caller asks the
    reference whether it is."""
    session_id, _, signature = token.partition(".")
    if kind == "flip":
        index = rnd.randrange(len(token))
        choices = [c for c in TAMPER_ALPHABET if c != token[index]]
        return token[:index] + rnd.choice(choices) + token[index + 1 :]
    if kind == "truncate":
        return token[: rnd.randrange(len(token))]
    if kind == "cut":
        index = rnd.randrange(len(token))
        return token[:index] + token[index + 1 :]
    if kind == "extend":
        return token + "".join(rnd.choice(TAMPER_ALPHABET) for _ in range(rnd.randint(1, 6)))
    if kind == "swap-signature":
        other_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        other = reference_sign(other_id, secret, issued)
        return session_id + "." + other.partition(".")[2]
    if kind == "other-secret":
        return reference_sign(session_id.lower(), other_secret, issued)
    if kind == "signature-case":
        return session_id + "." + signature.swapcase()
    if kind == "signature-letter-case":
        letters = [i for i, c in enumerate(signature) if c.isalpha()]
        index = rnd.choice(letters)
        return (
            f"{session_id}.{signature[:index]}{signature[index].swapcase()}{signature[index + 1 :]}"
        )
    if kind == "padding":
        return token + "="
    if kind == "standard-alphabet":
        swapped = signature.replace("-", "+").replace("_", "/")
        if swapped == signature:  # nothing to swap: make the signature standard base64
            swapped = signature[:-1] + rnd.choice("+/")
        return session_id + "." + swapped
    if kind == "no-dot":
        return session_id + signature
    if kind == "other-separator":
        return session_id + rnd.choice(":;,|~ ") + signature
    if kind == "unsigned":
        return session_id
    if kind == "signed-not-v4":
        version = rnd.choice((1, 3, 5))
        forged = str(uuid.UUID(int=rnd.getrandbits(128), version=version))
        return reference_sign(forged, secret)
    if kind == "empty-signature":
        return session_id + "."
    if kind == "signature-only":
        return "." + signature
    if kind == "double-signature":
        return token + "." + signature
    raise ValueError(f"unknown tamper {kind!r}")
