"""Signed session IDs (`signing_secret`): forgeries never resume a session, and key rotation.

A tampered token is a valid token changed in one of the ways of `tests._adapters.TAMPERS`
(a character flipped, truncated, extended, the signature of another ID, another secret,
the signature's case, padding, the standard base64 alphabet, ...), that the reference
(HMAC-SHA256 over the canonical ID, computed here) says is no longer valid. 10,000 of them
go through the resolver every adapter shares, from the header and from the cookie; then
through every adapter (a few hundred each; 10,000 each in the dedicated run,
`HYPOTHESIS_PROFILE=dedicated`).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from freeplay import Freeplay

from freeplay_integrations import ConfigurationError
from freeplay_integrations._config import Settings
from freeplay_integrations._context import SessionBinding
from freeplay_integrations._web import SessionResolver
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import DEFAULT_PROJECT_ID as PROJECT_ID
from tests import _hypothesis
from tests._adapters import (
    ADAPTERS,
    COOKIE,
    HEADER,
    HEADER_KEY,
    TAMPERS,
    open_driver,
    reference_cookie,
    reference_sign,
    reference_unsign,
    tamper,
)

NEW = "rotation-secret-new-0000000001"
OLD = "rotation-secret-old-0000000002"
OTHER = "rotation-secret-other-00000003"
TAMPERED = 10_000
VALID = 2_000


def tampered_tokens(count: int, seed: int) -> Iterator[tuple[str, str]]:
    """`count` `(kind, token)` pairs: tokens signed with NEW or OLD, then tampered with, that
    the reference refuses (the rare mutation that leaves a token valid, such as a hex letter
    of the ID in the other case or a space after a cookie's value, is skipped)."""
    rnd = random.Random(seed)
    made = 0
    while made < count:
        session_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        secret = rnd.choice((NEW, OLD))
        kind = TAMPERS[made % len(TAMPERS)]
        token = tamper(reference_sign(session_id, secret), kind, rnd, OTHER, secret)
        if not _valid_anywhere(token):
            made += 1
            yield kind, token


def _valid_anywhere(token: str) -> bool:
    """Whether the reference accepts `token` as the header, or as the cookie's value (where
    surrounding whitespace and one pair of quotes are not part of the value)."""
    as_cookie = reference_cookie(f"{COOKIE}={token}", COOKIE) or ""
    return any(reference_unsign(value, (NEW, OLD)) for value in (token, as_cookie))


def valid_tokens(count: int, seed: int) -> Iterator[tuple[str, str]]:
    """`(session_id, token)`: signed with NEW or OLD, the ID in lower, upper or mixed case."""
    rnd = random.Random(seed)
    for _ in range(count):
        session_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        token = reference_sign(session_id, rnd.choice((NEW, OLD)))
        cased = "".join(c.upper() if rnd.random() < 0.5 else c for c in session_id)
        yield session_id, cased + token[36:]


@pytest.fixture
def resolver() -> SessionResolver:
    client = Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api")
    options = {"client": client, "project_id": PROJECT_ID, "signing_secret": [NEW, OLD]}
    return SessionResolver(Settings.from_options(options))


def _resumed(binding: object, token: str) -> bool:
    """Whether `binding` resumed the session named in `token` (rather than a new one)."""
    assert isinstance(binding, SessionBinding)
    return binding.session_id.replace("-", "") in token.lower().replace("-", "")


def test_10000_tampered_tokens_are_accepted_0_times(resolver: SessionResolver) -> None:
    accepted: list[tuple[str, str]] = []
    kinds: Counter[str] = Counter()
    for kind, token in tampered_tokens(TAMPERED, seed=8):
        kinds[kind] += 1
        from_header = resolver.resolve(token, None, None)
        from_cookie = resolver.resolve(None, f"theme=dark; {COOKIE}={token}", None)
        if _resumed(from_header, token) or _resumed(from_cookie, token):
            accepted.append((kind, token))
    assert sum(kinds.values()) == TAMPERED
    assert set(kinds) == set(TAMPERS)  # every kind of tampering was tried
    assert min(kinds.values()) >= TAMPERED // len(TAMPERS) - 1
    assert accepted == []


def test_valid_tokens_are_accepted_every_time_with_either_secret(
    resolver: SessionResolver,
) -> None:
    refused, signed_otherwise = [], []
    for session_id, token in valid_tokens(VALID, seed=9):
        from_header = resolver.resolve(token, None, None)
        from_cookie = resolver.resolve(None, f"{COOKIE}={token}", None)
        for binding in (from_header, from_cookie):
            assert isinstance(binding, SessionBinding)
            if binding.session_id != session_id:
                refused.append(token)
            # Every answer is signed with the first secret, whichever signed the request.
            elif reference_unsign(binding.token, (NEW,)) != session_id:
                signed_otherwise.append(token)
    assert refused == []
    assert signed_otherwise == []


def test_the_resolver_itself_would_be_caught_accepting_a_forgery() -> None:
    """`_resumed` tells a resumed session from a new one (so the 0 above means something)."""
    client = Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api")
    unsigned = SessionResolver(Settings.from_options({"client": client, "project_id": PROJECT_ID}))
    session_id = str(uuid.uuid4())
    assert _resumed(unsigned.resolve(session_id, None, None), session_id + ".forged")
    assert not _resumed(unsigned.resolve(None, None, None), session_id)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_tampered_tokens_never_resume_a_session_in_any_adapter(adapter: str) -> None:
    count = _hypothesis.examples()
    accepted = []
    with open_driver(adapter, signing_secret=[NEW, OLD]) as driver:
        for index, (_, token) in enumerate(tampered_tokens(count, seed=10)):
            raw = token.encode("latin-1")
            if index % 2:
                reply = driver.request([(HEADER_KEY, raw)])
            else:
                reply = driver.request([(b"cookie", COOKIE.encode() + b"=" + raw)])
            assert reply.status == 200 and not reply.left_bound
            session_id = reply.body.decode()
            if session_id.replace("-", "") in token.lower().replace("-", ""):
                accepted.append(token)
        # The same loop sees a valid token resumed: the check above could fail.
        session_id, token = next(valid_tokens(1, seed=11))
        assert driver.request([(HEADER_KEY, token.encode())]).body.decode() == session_id
    print(f"signing: {adapter}: {count} tampered tokens, {len(accepted)} accepted")
    assert accepted == []


# -- key rotation ---------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_key_rotation_signs_with_the_first_secret_and_accepts_any(adapter: str) -> None:
    # Before the rotation: OLD alone. The client keeps the token it was given.
    with open_driver(adapter, signing_secret=OLD) as driver:
        first = driver.request([])
        [old_token] = first.all(HEADER)
        session_id = first.body.decode()
        assert reference_unsign(old_token, (OLD,)) == session_id

    # Rotating: NEW first, OLD kept. The old token still resumes the conversation, and the
    # answer (header and cookie) is signed with NEW, so the client moves over.
    with open_driver(adapter, signing_secret=[NEW, OLD]) as driver:
        reply = driver.request([(b"cookie", f"{COOKIE}={old_token}".encode())])
        assert reply.body.decode() == session_id
        [new_token] = reply.all(HEADER)
        assert reference_unsign(new_token, (NEW,)) == session_id
        assert f"{COOKIE}={new_token};" in reply.all("Set-Cookie")[0]

    # After the rotation: OLD dropped. The new token resumes; a token signed with OLD no
    # longer does (a new session starts).
    with open_driver(adapter, signing_secret=[NEW]) as driver:
        assert driver.request([(HEADER_KEY, new_token.encode())]).body.decode() == session_id
        stale = driver.request([(HEADER_KEY, old_token.encode())])
        assert stale.status == 200
        assert stale.body.decode() != session_id
        assert [reference_unsign(h, (NEW,)) for h in stale.all(HEADER)] == [stale.body.decode()]


def test_an_unsigned_id_is_refused_once_signing_is_on() -> None:
    session_id = str(uuid.uuid4())
    with open_driver("asgi", signing_secret=NEW, on_invalid="reject") as driver:
        assert driver.request([(HEADER_KEY, session_id.encode())]).status == 400
        token = reference_sign(session_id, NEW).encode()
        assert driver.request([(HEADER_KEY, token)]).body.decode() == session_id


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("short", "at least 16 characters"),
        ([NEW, "short"], "at least 16 characters"),
        ([], "list of them for key rotation"),
        (42, "list of them for key rotation"),
    ],
)
def test_weak_or_malformed_secrets_fail_at_start_up(secret: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        FreeplaySessionMiddleware(
            lambda scope, receive, send: None,  # type: ignore[arg-type,return-value]
            client=Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api"),
            project_id=PROJECT_ID,
            signing_secret=secret,
        )
    assert "`signing_secret=`" in str(caught.value)


# -- per-purpose keys and max age ------------------------------------------------------------


def test_a_raw_hmac_with_the_same_secret_does_not_verify() -> None:
    """Another app that HMACs a UUID with the same (reused) secret mints nothing valid here:
    neither the 0.1 format nor the new format with the raw secret as key."""
    import base64
    import hashlib
    import hmac
    import time

    from freeplay_integrations._ids import Signer

    session_id = str(uuid.uuid4())
    signer = Signer([NEW])
    raw = hmac.new(NEW.encode(), session_id.encode(), hashlib.sha256).digest()
    legacy = session_id + "." + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    message = f"{session_id}.{int(time.time()):x}"
    raw_key = hmac.new(NEW.encode(), message.encode(), hashlib.sha256).digest()
    same_format = message + "." + base64.urlsafe_b64encode(raw_key).decode().rstrip("=")
    assert signer.unsign(legacy) is None
    assert signer.unsign(same_format) is None
    assert signer.unsign(signer.sign(session_id)) == session_id


def test_signed_max_age_refuses_old_tokens_and_rotation_still_works() -> None:
    import time

    session_id = str(uuid.uuid4())
    hour_ago = reference_sign(session_id, OLD, time.time() - 3600)
    fresh = reference_sign(session_id, OLD)
    with open_driver("asgi", signing_secret=[NEW, OLD], signed_max_age=600) as driver:
        assert driver.request([(HEADER_KEY, fresh.encode())]).body.decode() == session_id
        stale = driver.request([(HEADER_KEY, hour_ago.encode())])
        assert stale.status == 200 and stale.body.decode() != session_id
        [answer] = driver.request([(HEADER_KEY, fresh.encode())]).all(HEADER)
        assert reference_unsign(answer, (NEW,), max_age=600) == session_id  # re-signed, NEW
    with open_driver("asgi", signing_secret=[NEW, OLD]) as driver:  # no max age: accepted
        assert driver.request([(HEADER_KEY, hour_ago.encode())]).body.decode() == session_id


def test_signed_max_age_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="`signed_max_age=` must be a number of seconds"):
        FreeplaySessionMiddleware(
            lambda scope, receive, send: None,  # type: ignore[arg-type,return-value]
            client=Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api"),
            project_id="p",
            signing_secret=NEW,
            signed_max_age=-5,
        )
