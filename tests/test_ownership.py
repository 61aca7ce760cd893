"""Ownership: `authorize_session(request, session_id)` may refuse a resumed session, in every
adapter (pure ASGI, WSGI, Flask, Django under WSGI and ASGI), from the header or the cookie.

A refusal starts a new session (`on_unauthorized="new"`, the default) or answers 403 without
calling the app (`"reject"`); a hook that raises refuses (and is logged); the hook is asked
only about a valid ID about to be resumed, in canonical form, never about a new session, an
invalid value or a signed token's signature; the refused ID never shows in the response.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from freeplay_integrations._web import LOG_AUTHORIZE_FAILED, LOG_UNAUTHORIZED
from tests._adapters import (
    ADAPTERS,
    COOKIE,
    HEADER,
    HEADER_KEY,
    UNAUTHORIZED_BODY,
    Reply,
    open_driver,
    reference_session_id,
    reference_sign,
    reference_unsign,
)

SECRET = "ownership-secret-000000000001"


class Owners:
    """An `authorize_session` hook: conversations belong to users, named by `X-User`."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners
        self.calls: list[tuple[str | None, str]] = []
        self.request_types: set[type] = set()

    def __call__(self, request: Any, session_id: str) -> bool:
        # Every adapter's request has case-insensitive `.headers`, but WSGI's environ.
        user = (
            request.get("HTTP_X_USER")
            if isinstance(request, dict)
            else request.headers.get("x-user")
        )
        self.calls.append((user, session_id))
        self.request_types.add(type(request))
        if user == "raise":
            raise RuntimeError("the user directory is down")
        return self.owners.get(session_id) == user


def _as(user: str, *fields: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"x-user", user.encode()), *fields]


def _header(value: str) -> tuple[bytes, bytes]:
    return (HEADER_KEY, value.encode())


def _cookie(value: str) -> tuple[bytes, bytes]:
    return (b"cookie", f"theme=dark; {COOKIE}={value}".encode())


def _new_session(reply: Reply, refused: str) -> str:
    """The reply carries a new session, and the refused ID shows nowhere in it."""
    assert reply.status == 200
    session_id = reply.body.decode()
    assert reference_session_id(session_id) == session_id
    assert session_id != refused
    assert refused not in reply.text()
    assert reply.all(HEADER)[0].startswith(session_id)
    return session_id


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_another_users_session_is_replaced_by_a_new_one(
    adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    ada, bob = str(uuid.uuid4()), str(uuid.uuid4())
    hook = Owners({ada: "ada", bob: "bob"})
    with open_driver(adapter, authorize_session=hook) as driver:
        own = driver.request(_as("ada", _header(ada.upper())))
        own_cookie = driver.request(_as("ada", _cookie(ada)))
        with caplog.at_level(logging.INFO, logger="freeplay_integrations"):
            theirs = driver.request(_as("ada", _header(bob)))
            theirs_cookie = driver.request(_as("ada", _cookie(bob)))
            failing = driver.request(_as("raise", _header(ada)))
        fresh = driver.request(_as("ada"))  # nothing to authorize
        invalid = driver.request(_as("ada", _header(bob + "x")))  # invalid: not asked either
    assert not any(r.left_bound for r in (own, own_cookie, theirs, theirs_cookie, failing))
    assert own.body.decode() == own_cookie.body.decode() == ada
    _new_session(theirs, bob)
    _new_session(theirs_cookie, bob)
    _new_session(failing, ada)  # a hook that fails refuses: safe, not someone else's session
    _new_session(fresh, bob)
    _new_session(invalid, bob)
    assert hook.calls == [
        ("ada", ada),  # canonical (lower-case), whatever the client sent
        ("ada", ada),
        ("ada", bob),
        ("ada", bob),
        ("raise", ada),
    ]
    # The adapter's own request: Starlette's HTTPConnection, the WSGI environ, Flask's
    # Request, Django's HttpRequest.
    assert all(issubclass(t, driver.request_type) for t in hook.request_types)
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count(LOG_UNAUTHORIZED % "header") == 2  # bob's, and the failing hook
    assert messages.count(LOG_UNAUTHORIZED % "cookie") == 1
    assert messages.count(LOG_AUTHORIZE_FAILED) == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_another_users_session_can_be_answered_403(adapter: str) -> None:
    ada, bob = str(uuid.uuid4()), str(uuid.uuid4())
    hook = Owners({ada: "ada", bob: "bob"})
    with open_driver(adapter, authorize_session=hook, on_unauthorized="reject") as driver:
        refused = driver.request(_as("ada", _header(bob)))
        refused_cookie = driver.request(_as("ada", _cookie(bob)))
        failing = driver.request(_as("raise", _header(ada)))
        allowed = driver.request(_as("bob", _cookie(bob)))
    for reply in (refused, refused_cookie, failing):
        assert (reply.status, reply.body) == (403, UNAUTHORIZED_BODY)  # the view did not run
        assert reply.all(HEADER) == [] and reply.all("Set-Cookie") == []
        assert bob not in reply.text() and ada not in reply.text()
        assert not reply.left_bound
    assert allowed.status == 200 and allowed.body.decode() == bob
    assert [call[1] for call in hook.calls] == [bob, bob, ada, bob]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_hook_gets_the_id_inside_a_signed_token(adapter: str) -> None:
    ada, bob = str(uuid.uuid4()), str(uuid.uuid4())
    hook = Owners({ada: "ada", bob: "bob"})
    with open_driver(adapter, authorize_session=hook, signing_secret=SECRET) as driver:
        own = driver.request(_as("ada", _cookie(reference_sign(ada, SECRET))))
        theirs = driver.request(_as("ada", _header(reference_sign(bob, SECRET))))
        forged = driver.request(_as("bob", _header(bob + ".forged")))  # not asked: invalid
    assert own.body.decode() == ada
    assert [reference_unsign(token, [SECRET]) for token in own.all(HEADER)] == [ada]
    _new_session(theirs, bob)
    _new_session(forged, bob)
    assert hook.calls == [("ada", ada), ("ada", bob)]
