"""ID injection: a client cannot make a response carry a header or cookie it chose.

Whatever a client puts in the session header or cookie (CR/LF, NUL, NEL, U+2028, cookie
attributes, a second cookie, percent-encoded CR/LF), alone or after a valid ID, in every
adapter: the response has the same header names as a response to a clean request, one
`Set-Cookie` with exactly the package's attributes, the session header is a fresh UUID v4,
and nothing the client sent shows anywhere. The same for a websocket's accept (pure ASGI).
Nor can request headers a client controls (`Host`, `X-Forwarded-Proto`) change the
cookie's attributes, nor can settings put a CR/LF or an attribute into a header.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from freeplay import Freeplay

from freeplay_integrations import ConfigurationError, current_session
from freeplay_integrations.asgi import FreeplaySessionMiddleware as AsgiMiddleware
from freeplay_integrations.local import DEFAULT_PROJECT_ID as PROJECT_ID
from freeplay_integrations.wsgi import FreeplaySessionMiddleware
from tests._adapters import (
    ADAPTERS,
    COOKIE,
    COOKIE_ATTRIBUTES,
    HEADER,
    HEADER_KEY,
    INJECTIONS,
    Driver,
    Reply,
    open_driver,
    reference_cookie,
    reference_session_id,
    reference_sign,
    reference_unsign,
    session_cookie,
)

SECRET = "injection-secret-000000000001"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028]")


def _wire(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _payloads() -> list[str]:
    """Each injection alone, after a valid ID, and after a validly signed ID."""
    session_id = str(uuid.uuid4())
    signed = reference_sign(session_id, SECRET)
    return [p for i in INJECTIONS for p in (i, session_id + i, signed + i)]


def _names(reply: Reply) -> list[str]:
    return sorted(name.lower() for name, _ in reply.headers)


def assert_clean(
    reply: Reply, reference: Reply, sent: str, resumed: str | None, *, signed: bool
) -> None:
    """`reply` is `reference` (a response to a clean request) but for the session, which is
    `resumed` when given, else a new one the client did not choose."""
    assert reply.status == 200
    assert not reply.left_bound
    assert _names(reply) == _names(reference), "the response gained or lost a header"
    [token] = reply.all(HEADER)  # checked below: the ID, or a token that verifies
    for name, value in reply.headers:
        assert not _CONTROL.search(value), f"control character in {name}: {value!r}"
        # Without the token: a signature is random base64, which may spell "evil" by chance.
        assert "evil" not in value.replace(token, "").lower(), f"{name}: {value!r}"
    assert b"evil" not in reply.body.lower()
    session_id = reply.body.decode()
    assert reference_session_id(session_id) == session_id
    if signed:
        assert reference_unsign(token, [SECRET]) == session_id
    else:
        assert token == session_id
    if resumed is not None:
        assert session_id == resumed
    else:
        assert session_id not in sent.lower(), "the client chose the session"
    [set_cookie] = reply.all("Set-Cookie")
    assert session_cookie(set_cookie) == (COOKIE, token, COOKIE_ATTRIBUTES)


def _send(driver: Driver, where: str, payload: str, signed: bool) -> tuple[Reply, str | None]:
    """The reply to `payload` in the header or the cookie, and the session the reference
    says it names (a cookie's value ends at `;`: `<id>; Domain=x` is `<id>` and a cookie
    named `Domain`)."""
    if where == "header":
        reply = driver.request([(HEADER_KEY, _wire(payload))])
        value: str | None = payload
    else:
        cookie = f"theme=dark; {COOKIE}={payload}"
        reply = driver.request([(b"cookie", _wire(cookie))])
        value = reference_cookie(cookie, COOKIE)
    if not value:
        return reply, None
    return reply, reference_unsign(value, [SECRET]) if signed else reference_session_id(value)


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_injected_headers_and_attributes_never_reach_the_response(
    adapter: str, signed: bool
) -> None:
    options: dict[str, Any] = {"signing_secret": SECRET} if signed else {}
    with open_driver(adapter, **options) as driver:
        reference = driver.request([])
        for payload in _payloads():
            for where in ("header", "cookie"):
                reply, resumed = _send(driver, where, payload, signed)
                assert_clean(reply, reference, payload, resumed, signed=signed)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_headers_a_client_controls_do_not_change_the_cookie(adapter: str) -> None:
    spoofed = [
        (b"host", b"evil.example"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"evil.example"),
        (b"forwarded", b"proto=https;host=evil.example"),
    ]
    with open_driver(adapter) as driver:
        reference = driver.request([])
        reply = driver.request(spoofed)
        assert session_cookie(reply.all("Set-Cookie")[0])[2] == COOKIE_ATTRIBUTES  # no Secure
        assert _names(reply) == _names(reference)
        assert "evil" not in reply.text().lower()


def test_the_check_sees_an_injected_header() -> None:
    """`assert_clean` fails on a response a client managed to add a header to."""
    session_id = str(uuid.uuid4())
    clean_headers = (
        (HEADER, session_id),
        ("Set-Cookie", f"{COOKIE}={session_id}; {'; '.join(sorted(COOKIE_ATTRIBUTES))}"),
    )
    reference = Reply(200, clean_headers, session_id.encode(), False)
    assert_clean(reference, reference, "x", None, signed=False)
    injected = Reply(200, (*clean_headers, ("X-Evil", "1")), session_id.encode(), False)
    with pytest.raises(AssertionError, match="gained or lost a header"):
        assert_clean(injected, reference, "x", None, signed=False)
    attribute = Reply(
        200,
        (clean_headers[0], ("Set-Cookie", clean_headers[1][1] + "; Domain=evil.example")),
        session_id.encode(),
        False,
    )
    with pytest.raises(AssertionError, match=r"Domain=evil\.example"):
        assert_clean(attribute, reference, "x", None, signed=False)


# -- what the configuration can put in a header ------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("session_header", "X-Session\r\nX-Evil: 1"),
        ("session_header", "X Session"),
        ("session_cookie", "sid\r\nSet-Cookie: evil=1"),
        ("session_cookie", "sid;Domain=evil.example"),
        ("cookie_domain", "example.com; Secure"),
        ("cookie_domain", "example.com\r\nX-Evil: 1"),
        ("cookie_path", "/chat; Domain=evil.example"),
        ("cookie_path", "/chat\nX-Evil: 1"),
        ("cookie_samesite", "Lax; Domain=evil.example"),
    ],
)
def test_header_and_cookie_settings_cannot_inject_either(option: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"`{option}=`"):
        FreeplaySessionMiddleware(
            lambda environ, start_response: [],
            client=Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api"),
            project_id=PROJECT_ID,
            **{option: value},
        )


# -- websockets (pure ASGI) ------------------------------------------------------------------


async def _websocket_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "headers": [(b"x-app", b"1")]})
    await send({"type": "websocket.close", "code": 1000})


async def _connect(app: Any, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "subprotocols": [],
    }
    connected = False

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert current_session() is None
    return sent


@pytest.mark.anyio
async def test_websocket_accept_carries_no_injected_header() -> None:
    app = AsgiMiddleware(
        _websocket_app,
        client=Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api"),
        project_id=PROJECT_ID,
    )
    for payload in _payloads():
        for field in (HEADER_KEY, b"cookie"):
            value = _wire(payload if field == HEADER_KEY else f"{COOKIE}={payload}")
            accept, close = await _connect(app, [(field, value)])
            assert accept["type"] == "websocket.accept" and close["type"] == "websocket.close"
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in accept["headers"]]
            assert sorted(k for k, _ in headers) == sorted(
                ["x-app", "access-control-expose-headers", HEADER.lower(), "set-cookie"]
            )
            for name, text in headers:
                assert not _CONTROL.search(text) and "evil" not in text.lower(), (name, text)
            session_id = dict(headers)[HEADER.lower()]
            assert reference_session_id(session_id) == session_id
            # The cookie carries a valid ID's cookie (`<id>; Domain=...` is `<id>`); a
            # header value with an injection is invalid: a new session.
            if field == HEADER_KEY:
                assert session_id not in payload.lower()
            name, cookie, attributes = session_cookie(dict(headers)["set-cookie"])
            assert (name, cookie, attributes) == (COOKIE, session_id, COOKIE_ATTRIBUTES)


@pytest.mark.anyio
async def test_a_refused_websocket_is_closed_without_echoing_the_value() -> None:
    app = AsgiMiddleware(
        _websocket_app,
        client=Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api"),
        project_id=PROJECT_ID,
        on_invalid="reject",
    )
    for payload in INJECTIONS:
        [close] = await _connect(app, [(HEADER_KEY, _wire(payload))])
        assert close["type"] == "websocket.close" and close["code"] == 1008
        assert close["reason"] == "Invalid Freeplay session ID."
