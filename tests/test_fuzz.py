"""Hostile session headers and cookies, fuzzed through every adapter (hypothesis).

Each property sends raw header fields, as a server receives them, to one adapter (pure ASGI,
plain WSGI, Flask, Django under WSGI and under ASGI; see `tests/_adapters.py`): arbitrary
bytes and text, huge values, many repeated session headers, many cookies, malformed cookie
strings, percent-encoding, UUIDs of every version in every case and form, signed tokens
tampered with in every way, and CR/LF/NUL or cookie-attribute injections. For each request:

- the status is 200, or exactly 400 (with the README's reason) when `on_invalid="reject"`
  and the deciding value is invalid; no exception escapes, nothing is left bound;
- the response carries one session header, a canonical UUID v4 (or that ID signed with the
  first secret), which the view saw too; it is the client's ID exactly when the reference
  (written from the SPEC, not the package's parser) says the client's value was valid;
  otherwise it is a new ID found nowhere in the request;
- one `Set-Cookie`, with exactly the SPEC's attributes (`Secure` only over https) and the
  same value; `Access-Control-Expose-Headers` lists the header;
- no header name or value holds a control character (no CR/LF: no header splitting);
- no value the client sent appears anywhere in the response, headers or body, unless it
  also appears in a response to a request that sent nothing (`Path=/`, the content type...).

`make test` runs a few hundred examples per property; the dedicated run 10,000 each:
`HYPOTHESIS_PROFILE=dedicated .venv/bin/pytest tests/test_fuzz.py -q` (see `bench/fuzz_run.sh`).
"""

from __future__ import annotations

import random
import re
import string
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests import _hypothesis  # loads the profile HYPOTHESIS_PROFILE names
from tests._adapters import (
    ADAPTERS,
    COOKIE,
    COOKIE_ATTRIBUTES,
    HEADER,
    HEADER_KEY,
    INJECTIONS,
    INVALID_BODY,
    TAMPERS,
    Driver,
    RawHeaders,
    Reply,
    open_driver,
    reference_cookie,
    reference_session_id,
    reference_sign,
    reference_unsign,
    session_cookie,
    tamper,
)

SECRETS = ("fuzz-signing-secret-new-00001", "fuzz-signing-secret-old-00002")
OTHER_SECRET = "fuzz-signing-secret-other-0003"

#: The middleware options of each mode.
MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "signed": {"signing_secret": list(SECRETS)},
    "reject": {"on_invalid": "reject", "sources": ["cookie", "header"]},
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX = re.compile(r"[^0-9a-f]")
_MASK = "<session>"
#: A cookie's expiry date: the clock's, not the client's (a sent `$Version=1 ` is in
#: "13:03:31 GMT").
_EXPIRES = re.compile(r"(?i)expires=[^;\n]*")


# -- values -----------------------------------------------------------------------------------


def cased(value: str, mask: int) -> str:
    """`value` with the letters whose bit is set in `mask` in upper case."""
    out, bit = [], 0
    for char in value:
        if char.isalpha():
            char = char.upper() if mask >> bit & 1 else char
            bit += 1
        out.append(char)
    return "".join(out)


def _percent_all(value: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in value)


def _fullwidth_digit(value: str) -> str:
    index = next(i for i, c in enumerate(value) if c.isdigit())
    return value[:index] + chr(0xFF10 + int(value[index])) + value[index + 1 :]


#: Non-canonical forms of a UUID v4 (all invalid as session IDs).
FORMS: tuple[Callable[[str], str], ...] = (
    lambda s: "{" + s + "}",
    lambda s: "urn:uuid:" + s,
    lambda s: s.replace("-", ""),
    lambda s: s.replace("-", "_"),
    lambda s: s.replace("-", "\u2010"),
    lambda s: s.replace("-", "%2D"),
    _percent_all,
    quote,  # unchanged: quote() leaves a UUID alone, so this one stays valid
    _fullwidth_digit,
    lambda s: " " + s,
    lambda s: s + " ",
    lambda s: "\t" + s,
    lambda s: s + "\n",
    lambda s: s + "\r\n",
    lambda s: "\x00" + s,
    lambda s: s + "\x00",
    lambda s: s[:-1],
    lambda s: s + "0",
    lambda s: s + s,
    lambda s: s + "," + s,
    lambda s: s + ";",
    lambda s: s + "." + "A" * 43,  # a signature-shaped tail
    lambda s: s[:14] + "5" + s[15:],  # version nibble
    lambda s: s[:19] + "c" + s[20:],  # variant nibble
    lambda s: '"' + s,
    lambda s: "'" + s + "'",
    lambda s: "\xe1" + s[1:],  # a non-ASCII look-alike of a hex letter
    lambda s: s + "0" * 5000,
)

masks = st.one_of(st.just(0), st.just(2**64 - 1), st.integers(0, 2**64 - 1))
valid_ids = st.builds(lambda u, m: cased(str(u), m), st.uuids(version=4), masks)
other_versions = st.one_of(
    *(st.uuids(version=v) for v in (1, 2, 3, 5)),  # type: ignore[arg-type]
    st.sampled_from(
        [
            uuid.UUID(int=0),
            uuid.UUID(int=2**128 - 1),
            uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff"),  # the largest v4: valid
        ]
    ),
).map(str)
forms = st.builds(lambda s, form: form(s), valid_ids, st.sampled_from(FORMS))
injections = st.builds(
    lambda prefix, injection: prefix + injection,
    st.one_of(valid_ids, st.just("")),
    st.sampled_from(INJECTIONS),
)
latin1_text = st.text(alphabet=st.characters(max_codepoint=255), max_size=80)
huge = st.one_of(
    st.builds(lambda chunk, n: chunk * n, st.text(min_size=1, max_size=12), st.integers(400, 900)),
    st.builds(lambda s, n: s + "0" * n, valid_ids, st.integers(1, 6000)),
)


def _encode(value: str) -> bytes:
    """How a client puts text on the wire: latin-1 when it can, else UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


hostile_texts = st.one_of(
    other_versions,
    forms,
    injections,
    latin1_text,
    st.text(max_size=60),
    st.text(max_size=60).map(quote),
    huge,
)
#: Half valid IDs (so that requests often resume a session), half hostile.
plain_values = st.one_of(
    valid_ids.map(_encode), hostile_texts.map(_encode), st.binary(max_size=120)
)


#: One issue time for every generated token: tokens signed "now" would differ between a
#: draw and its replay, and Hypothesis would call the data generation flaky.
ISSUED = float(int(time.time()))


@st.composite
def valid_tokens(draw: st.DrawFn) -> str:
    """Tokens signed with the current or the old secret, the ID in any case (the signature
    covers the canonical ID)."""
    session_id = str(draw(st.uuids(version=4)))
    token = reference_sign(session_id, draw(st.sampled_from(SECRETS)), ISSUED)
    return cased(session_id, draw(masks)) + token[36:]


@st.composite
def tampered_tokens(draw: st.DrawFn) -> str:
    """Valid tokens tampered with in every way of `tests._adapters.tamper`."""
    token = reference_sign(str(draw(st.uuids(version=4))), draw(st.sampled_from(SECRETS)), ISSUED)
    rnd = draw(st.randoms(use_true_random=False))
    kind = draw(st.sampled_from(TAMPERS))
    return tamper(token, kind, rnd, OTHER_SECRET, SECRETS[0], ISSUED)


signed_values = st.one_of(
    valid_tokens().map(_encode),
    tampered_tokens().map(_encode),
    valid_ids.map(_encode),  # unsigned: invalid here
    hostile_texts.map(_encode),
    st.binary(max_size=120),
)


# -- requests ---------------------------------------------------------------------------------

COOKIE_NAMES = (
    COOKIE,
    COOKIE,
    " " + COOKIE,
    COOKIE + " ",
    "\t" + COOKIE,
    COOKIE.upper(),
    COOKIE + "2",
    "x" + COOKIE,
    COOKIE[:-1],
    '"' + COOKIE + '"',
    COOKIE + "=",
)
JUNK = (
    b"",
    b";",
    b"=",
    b";;=",
    b"==",
    b'"',
    b'""',
    b" ",
    b",",
    b"$Version=1",
    b"a=b=c",
    COOKIE.encode(),
    COOKIE.encode() + b"=",
    b"=" + COOKIE.encode(),
    COOKIE.encode() + b'=""',
    COOKIE.encode() + b"= ",
)
NOISE_HEADERS = (
    b"x-noise",
    b"accept",
    b"user-agent",
    b"authorization",
    b"x-freeplay-session",
    b"x-freeplay-session-id-2",
    b"x_freeplay_session_id",
    b"freeplay-session-id",
    b"set-cookie",
    b"access-control-expose-headers",
)
SEPARATORS = (b"; ", b";", b" ; ", b";;", b"; ; ")
token_names = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=8)


@st.composite
def cookie_pairs(draw: st.DrawFn, values: st.SearchStrategy[bytes]) -> bytes:
    kind = draw(st.sampled_from(("session", "session", "noise", "junk")))
    if kind == "session":
        name = draw(st.sampled_from(COOKIE_NAMES)).encode()
        value = draw(values)
        if draw(st.booleans()):
            value = b'"' + value + b'"'
        return name + b"=" + value
    if kind == "noise":
        return draw(token_names).encode() + b"=" + _encode(draw(latin1_text))
    return draw(st.sampled_from(JUNK))


@st.composite
def cookie_headers(draw: st.DrawFn, values: st.SearchStrategy[bytes]) -> bytes:
    """A `Cookie` value: a few or a hundred cookies around hostile pairs, or pure noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(values, st.binary(max_size=60)))
    filler = draw(st.one_of(st.integers(0, 4), st.integers(20, 120)))
    parts = [b"c%d=v%d" % (i, i) for i in range(filler)]
    for pair in draw(st.lists(cookie_pairs(values), max_size=4)):
        parts.insert(draw(st.integers(0, len(parts))), pair)
    return draw(st.sampled_from(SEPARATORS)).join(parts)


@dataclass(frozen=True)
class Case:
    headers: tuple[tuple[bytes, bytes], ...]
    scheme: str

    def sent_values(self) -> set[str]:
        """Every value the client sent, whole and, for cookies, pair by pair."""
        sent = set()
        for name, raw in self.headers:
            value = raw.decode("latin-1")
            sent.add(value)
            if name == b"cookie":
                for pair in value.split(";"):
                    inner = pair.partition("=")[2]
                    sent.update((inner, inner.strip(), inner.strip().strip('"')))
        sent.discard("")
        return sent


@st.composite
def requests(
    draw: st.DrawFn, values: st.SearchStrategy[bytes], valid: st.SearchStrategy[bytes]
) -> Case:
    """A request as a browser or a script sends it (a third of them), or a hostile one."""
    scheme = draw(st.sampled_from(("http", "https")))
    if draw(st.integers(0, 2)) == 0:  # the header, the cookie or both; mostly valid
        plain = []
        for where in ("header", "cookie"):
            if draw(st.booleans()):
                value = draw(valid) if draw(st.integers(0, 3)) else draw(values)
                if where == "header":
                    plain.append((HEADER_KEY, value))
                else:
                    plain.append((b"cookie", b"theme=dark; " + COOKIE.encode() + b"=" + value))
        return Case(tuple(plain), scheme)
    headers: list[tuple[bytes, bytes]] = []
    repeats = draw(st.one_of(st.integers(0, 2), st.integers(3, 60)))
    if repeats:
        distinct = draw(st.lists(values, min_size=1, max_size=3))
        headers += [(HEADER_KEY, distinct[i % len(distinct)]) for i in range(repeats)]
    headers += [(b"cookie", c) for c in draw(st.lists(cookie_headers(values), max_size=3))]
    noise = st.tuples(st.sampled_from(NOISE_HEADERS), st.one_of(values, st.binary(max_size=40)))
    headers += draw(st.lists(noise, max_size=3))
    ordered = draw(st.permutations(headers)) if len(headers) < 20 else headers
    if len(headers) >= 20:
        random.Random(draw(st.integers(0, 2**32))).shuffle(ordered)
    return Case(tuple(ordered), scheme)


# -- the reference and the checks ---------------------------------------------------------------


def expected(driver: Driver, mode: str, headers: RawHeaders) -> tuple[str, str | None]:
    """`("resume", id)`, `("invalid", None)` or `("none", None)`, by the SPEC: the first
    source (in the mode's order) that carries a non-empty value decides."""
    header_value, cookie_header = driver.presented(headers)
    sources = MODES[mode].get("sources", ["header", "cookie"])
    for source in sources:
        raw = header_value if source == "header" else reference_cookie(cookie_header, COOKIE)
        if raw:
            if mode == "signed":
                session_id = reference_unsign(raw, SECRETS)
            else:
                session_id = reference_session_id(raw)
            return ("resume", session_id) if session_id else ("invalid", None)
    return ("none", None)


def masked(reply: Reply) -> str:
    """What a client can read in the response, the session's own ID and token and the
    cookie's expiry date hidden."""
    text = _EXPIRES.sub("Expires=<date>", reply.text())
    for token in reply.all(HEADER):
        text = text.replace(token, _MASK).replace(token.partition(".")[0], _MASK)
    return text


def baseline(driver: Driver, mode: str) -> str:
    """Everything a response says without the client having sent anything."""
    replies = [driver.request([], scheme="http"), driver.request([], scheme="https")]
    if mode == "reject":
        replies.append(driver.request([(HEADER_KEY, b"not-a-session")]))
    return "\n".join(masked(reply) for reply in replies)


def session_of(token: str, mode: str) -> str:
    """The session ID in a response token; asserts it is well formed for `mode`."""
    if mode == "signed":
        session_id = reference_unsign(token, SECRETS[:1])
        assert session_id is not None, f"not signed with the first secret: {token!r}"
        issued = int(token.split(".")[1], 36)
        assert token == reference_sign(session_id, SECRETS[0], issued)  # canonical form
        return session_id
    assert reference_session_id(token) == token, f"not a canonical UUID v4: {token!r}"
    return token


def check(driver: Driver, mode: str, case: Case, known: str) -> Reply:
    """Send `case` and check the response against the reference (see the module doc)."""
    reply = driver.request(case.headers, scheme=case.scheme)
    assert not reply.left_bound, "a session was left bound after the request"
    for name, value in reply.headers:
        assert not _CONTROL.search(name + value), f"control character in {name}: {value!r}"
    outcome, resumed = expected(driver, mode, case.headers)
    if mode == "reject" and outcome == "invalid":
        assert (reply.status, reply.body) == (400, INVALID_BODY)
        assert reply.all(HEADER) == [] and reply.all("Set-Cookie") == []
    else:
        assert reply.status == 200, reply
        tokens = reply.all(HEADER)
        assert len(tokens) == 1, f"expected one session header, got {tokens}"
        token = tokens[0]
        session_id = session_of(token, mode)
        assert reply.body == session_id.encode(), "the view saw another session"
        if outcome == "resume":
            assert session_id == resumed
        else:  # a new session, whose ID the client did not choose
            sent = _HEX.sub("", "".join(v.decode("latin-1") for _, v in case.headers).lower())
            assert session_id.replace("-", "") not in sent
        exposed = reply.all("Access-Control-Expose-Headers")
        assert len(exposed) == 1 and HEADER.lower() in exposed[0].lower(), exposed
        cookies = reply.all("Set-Cookie")
        assert len(cookies) == 1, f"expected one Set-Cookie, got {cookies}"
        set_cookie = cookies[0]
        name, value, attributes = session_cookie(set_cookie)
        assert (name, value) == (COOKIE, token)
        secure = {"Secure"} if case.scheme == "https" else set()
        assert attributes == COOKIE_ATTRIBUTES | secure, set_cookie
    text = masked(reply)
    for value in case.sent_values():
        if value not in known:
            assert value not in text, f"echoed {value[:80]!r}"
    return reply


def fuzz(
    adapter: str, mode: str, values: st.SearchStrategy[bytes], valid: st.SearchStrategy[bytes]
) -> None:
    """Run the property for `adapter` in `mode`, and check it ran the profile's number of
    examples and met every outcome (a resumed session, an invalid value, no value)."""
    outcomes: Counter[str] = Counter()
    with open_driver(adapter, **MODES[mode]) as driver:
        known = baseline(driver, mode)

        session_id = str(uuid.uuid4())
        token = reference_sign(session_id, SECRETS[1]) if mode == "signed" else session_id

        # Every outcome at least once, whatever the draw: a resumed session (header and
        # quoted cookie), no value, an invalid one.
        @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(case=requests(values, valid))
        @example(case=Case(((HEADER_KEY, token.upper().encode()),), "https"))
        @example(case=Case(((b"cookie", f'a=b; {COOKIE}="{token}"'.encode()),), "http"))
        @example(case=Case((), "http"))
        @example(case=Case(((HEADER_KEY, b"\r\nX-Evil: 1"),), "http"))
        def property_(case: Case) -> None:
            check(driver, mode, case, known)
            outcomes[expected(driver, mode, case.headers)[0]] += 1

        property_()
    total = sum(outcomes.values())
    print(f"fuzz: {adapter} {mode}: {total} examples {dict(sorted(outcomes.items()))}")
    assert total >= _hypothesis.examples()
    assert set(outcomes) == {"resume", "invalid", "none"}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hostile_values_in_plain_mode(adapter: str) -> None:
    fuzz(adapter, "plain", plain_values, valid_ids.map(_encode))


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hostile_and_tampered_values_with_signing(adapter: str) -> None:
    fuzz(adapter, "signed", signed_values, valid_tokens().map(_encode))


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hostile_values_under_on_invalid_reject(adapter: str) -> None:
    fuzz(adapter, "reject", plain_values, valid_ids.map(_encode))


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_cookie_fields_sent_one_per_cookie_are_one_cookie_list(adapter: str) -> None:
    """HTTP/2 clients (Chrome) send each cookie in its own `Cookie` field; ASGI servers pass
    them on as they are (the ASGI spec: they are one list, joined with "; "). Found by the
    property above under Django's ASGI handler, whose `request.META` joins them with ","."""
    session_id = str(uuid.uuid4())
    fields = [(b"cookie", b"csrftoken=abc"), (b"cookie", f"{COOKIE}={session_id}".encode())]
    with open_driver(adapter, on_invalid="reject") as driver:
        assert driver.request(fields).body.decode() == session_id
        assert driver.request(fields[::-1]).body.decode() == session_id
        invalid = [(b"cookie", f"{COOKIE}={session_id}x".encode()), (b"cookie", b"a=b")]
        assert driver.request(invalid).status == 400


# -- the reference itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0b7e2f7c-3c1d-4a8e-9b1f-2d3c4e5f6a7b", True),
        ("0B7E2F7C-3C1D-4A8E-9B1F-2D3C4E5F6A7B", True),
        ("0b7e2f7c-3c1d-1a8e-9b1f-2d3c4e5f6a7b", False),  # v1
        ("0b7e2f7c-3c1d-4a8e-cb1f-2d3c4e5f6a7b", False),  # variant
        ("{0b7e2f7c-3c1d-4a8e-9b1f-2d3c4e5f6a7b}", False),
        ("0b7e2f7c3c1d4a8e9b1f2d3c4e5f6a7b", False),
        ("0b7e2f7c-3c1d-4a8e-9b1f-2d3c4e5f6a7\uff11", False),
        (" 0b7e2f7c-3c1d-4a8e-9b1f-2d3c4e5f6a7b", False),
        ("0b7e2f7c_3c1d_4a8e_9b1f_2d3c4e5f6a7b", False),
    ],
)
def test_the_reference_accepts_exactly_canonical_v4(value: str, valid: bool) -> None:
    assert (reference_session_id(value) is not None) is valid


def test_forms_cover_valid_and_invalid_shapes() -> None:
    session_id = str(uuid.uuid4())
    shapes = [reference_session_id(form(session_id)) for form in FORMS]
    assert shapes.count(session_id) == 1  # quote() leaves it valid; every other form breaks it


SID = "0b7e2f7c-3c1d-4a8e-9b1f-2d3c4e5f6a7b"
HOSTILE = "hostile-value-2\r\nX-Evil: 1"
_ATTRIBUTES = "Max-Age=2592000; Path=/; SameSite=Lax; HttpOnly"


def _reply(
    *,
    session: str = SID,
    status: int = 200,
    body: str | None = None,
    cookie: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
    left_bound: bool = False,
) -> Reply:
    headers = (
        (HEADER, session),
        ("Access-Control-Expose-Headers", HEADER),
        ("Set-Cookie", cookie or f"{COOKIE}={session}; {_ATTRIBUTES}"),
        *extra,
    )
    return Reply(status, headers, (session if body is None else body).encode(), left_bound)


class Canned(Driver):
    """A driver that answers what a test gives it: for checking the checks."""

    name = "canned"

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def request(self, headers: RawHeaders, *, scheme: str = "http") -> Reply:
        return self.reply


#: Responses an adapter must never give to `HOSTILE` in the header, and what catches them.
BROKEN = {
    "a 500": (_reply(status=500), "500"),
    "left bound": (_reply(left_bound=True), "left bound"),
    "header splitting": (_reply(extra=(("X-Echo", HOSTILE),)), "control character"),
    "echo in a header": (_reply(extra=(("X-Echo", HOSTILE[:15]),)), "echoed"),
    "echo in the body": (_reply(body=SID + HOSTILE[:15]), "the view saw another session"),
    "an injected attribute": (
        _reply(cookie=f"{COOKIE}={SID}; {_ATTRIBUTES}; Domain=evil.example"),
        "Domain",
    ),
    "no session header": (Reply(200, (), SID.encode(), False), "one session header"),
    "two cookies": (_reply(extra=(("Set-Cookie", "evil=1"),)), "one Set-Cookie"),
    "not a v4": (_reply(session=SID.replace("-4a8e-", "-1a8e-")), "canonical UUID v4"),
    "upper case": (_reply(session=SID.upper()), "canonical UUID v4"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_the_checks_catch_a_broken_response(name: str) -> None:
    reply, message = BROKEN[name]
    case = Case(
        ((HEADER_KEY, HOSTILE.encode()), (b"cookie", b"x=" + HOSTILE[:15].encode())), "http"
    )
    known = masked(_reply(session=str(uuid.uuid4())))
    check(Canned(_reply()), "plain", case, known)  # the well-formed answer passes
    with pytest.raises(AssertionError, match=message):
        check(Canned(reply), "plain", case, known)


def test_the_checks_catch_a_resumed_invalid_id() -> None:
    case = Case(((HEADER_KEY, ("{" + SID + "}").encode()),), "http")
    with pytest.raises(AssertionError, match="not in"):
        check(Canned(_reply()), "plain", case, "")
    resumed = Case(((HEADER_KEY, SID.upper().encode()),), "http")
    check(Canned(_reply()), "plain", resumed, "")
