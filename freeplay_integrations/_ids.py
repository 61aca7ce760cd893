"""Session IDs: UUID v4 validation, generation, and optional HMAC signing of the value sent
to clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
from binascii import hexlify
from collections import deque
from collections.abc import Sequence

__all__ = [
    "IDS_PER_READ",
    "MAX_ID_LENGTH",
    "SIGNING_PURPOSE",
    "Signer",
    "new_session_id",
    "parse_session_id",
    "top_up",
]

#: Longest value looked at before parsing; anything longer is invalid without more work.
MAX_ID_LENGTH = 64
#: What the signing key is derived for: a secret reused elsewhere (Django's `SECRET_KEY`)
#: signs nothing there that verifies here, and the other way round.
SIGNING_PURPOSE = b"freeplay_integrations.session-id.v2"

_match_uuid4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.ASCII
).fullmatch
_SIGNATURE_LENGTH = 43  # base64url of a SHA-256 digest, without padding
_MAX_STAMP_LENGTH = 8  # base 36 seconds since the epoch: 7 digits until the year 4453
_DIGITS36 = "0123456789abcdefghijklmnopqrstuvwxyz"
#: A signed value is `<uuid>.<issued, base 36 seconds>.<signature>`.
MAX_TOKEN_LENGTH = 36 + 1 + _MAX_STAMP_LENGTH + 1 + _SIGNATURE_LENGTH


def parse_session_id(value: str) -> str | None:
    """Return the canonical (lower-case) form of `value` if it is a UUID v4, else None.

    Only the canonical hyphenated form is accepted, in any case: braces, `urn:uuid:` prefixes
    and hyphen-less forms are refused, as Freeplay's API refuses them.
    """
    if len(value) != 36 or not value.isascii():  # the canonical form, and nothing longer
        return None
    value = value.lower()
    return value if _match_uuid4(value) is not None else None


#: How many IDs one read of random bytes makes (2 KiB): about 14 µs a refill, 0.11 µs an
#: ID, on an idle machine. `top_up` refills off the request path.
IDS_PER_READ = 128
try:
    # OpenSSL's CSPRNG (the DRBG behind TLS keys, seeded from the kernel, reseeded after a
    # fork). Unlike `os.urandom` it holds the GIL: `os.urandom` is a system call that
    # releases it, and taking it back behind other busy threads cost `record()` a median
    # of 7 ms in the calls that refilled (measured: 200 reads of 2 KiB took 270 ms beside
    # one spinning thread, against 1.7 ms this way).
    from ssl import RAND_bytes as _random_bytes
except ImportError:  # a Python built without ssl
    _random_bytes = os.urandom
_pool: deque[str] = deque()
_fork_safe = False
#: The version and variant bits, set on the 7th and 9th random byte of each ID as
#: `uuid.uuid4()` sets them: 0100xxxx and 10xxxxxx.
_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))
#: `hexlify(..., b"-", 2)` puts a hyphen after every 4 digits: 8 groups an ID, 40 bytes
#: with the one after it. The canonical form keeps the hyphens after groups 2 to 5; the
#: others are dropped (after groups 1, 6 and 7) or end the ID (after group 8).
_PER_ID = 40
_DROPPED = (4, 29, 34)


def new_session_id() -> str:
    """A random UUID v4, canonical form (what `sessions.create()` would pick).

    Cryptographically random, as `uuid.uuid4()`, but read and formatted `IDS_PER_READ` at
    a time (the read and the formatting are the dearest parts of a new session). The pool is
    a deque (thread-safe pops), and a forked child empties it: no two processes hand out
    the same IDs.
    """
    try:
        return _pool.popleft()
    except IndexError:
        return _refill()


def top_up() -> None:
    """Refill the pool before it runs dry, from a thread off the request path.

    The recorder's sending threads call this before each attempt, so that under load the
    request path rarely refills (about 14 µs a refill, several times that on a busy
    machine: a visible part of `record()`'s p99). Two threads topping up at once only make
    the pool longer.
    """
    if len(_pool) < IDS_PER_READ:
        _pool.extend(_new_ids())


def _refill() -> str:
    ids = _new_ids()
    _pool.extend(ids[1:])
    return ids[0]


def _new_ids() -> list[str]:
    global _fork_safe
    if not _fork_safe:
        os.register_at_fork(after_in_child=_pool.clear)
        _fork_safe = True
    n = IDS_PER_READ
    raw = bytearray(_random_bytes(16 * n))
    raw[6::16] = raw[6::16].translate(_VERSION)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    text = bytearray(hexlify(raw, b"-", 2))
    text += b"\n"  # what ends the last ID
    for position in _DROPPED:
        text[position::_PER_ID] = b"x" * n
    text[_PER_ID - 1 :: _PER_ID] = b"\n" * n
    return text.translate(None, b"x")[:-1].decode("ascii").split("\n")


def _base36(number: int) -> str:
    digits = []
    while True:
        number, digit = divmod(number, 36)
        digits.append(_DIGITS36[digit])
        if not number:
            return "".join(reversed(digits))


class Signer:
    """Signs session IDs with HMAC-SHA256: sign with the first secret, accept any of them.

    A list of secrets allows key rotation: put the new secret first and keep the old ones
    until every client has been answered with a value signed by the new one. The HMAC key is
    derived from each secret for this one purpose (`SIGNING_PURPOSE`). A token carries the
    time it was issued; with `max_age` (seconds), older tokens are refused on read.
    """

    __slots__ = ("_keys", "max_age", "secrets")

    def __init__(self, secrets: Sequence[str | bytes], *, max_age: int | None = None) -> None:
        self.secrets = tuple(secrets)
        self._keys = tuple(
            hmac.new(
                s.encode() if isinstance(s, str) else bytes(s), SIGNING_PURPOSE, "sha256"
            ).digest()
            for s in self.secrets
        )
        if not self._keys:
            raise ValueError("Signer needs at least one secret")
        self.max_age = max_age

    @staticmethod
    def _digest(key: bytes, message: str) -> str:
        mac = hmac.new(key, message.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def sign(self, session_id: str, *, now: float | None = None) -> str:
        stamp = _base36(int(time.time() if now is None else now))
        message = f"{session_id}.{stamp}"
        return f"{message}.{self._digest(self._keys[0], message)}"

    def unsign(self, token: str, *, now: float | None = None) -> str | None:
        """Return the session ID in a signed `token`, or None if it is malformed, forged or
        (with `max_age`) too old."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        raw_id, _, rest = token.partition(".")
        stamp, dot2, signature = rest.partition(".")
        if (
            not dot2
            or len(signature) != _SIGNATURE_LENGTH
            or not signature.isascii()
            or not 0 < len(stamp) <= _MAX_STAMP_LENGTH
            or stamp.strip(_DIGITS36)
        ):
            return None
        session_id = parse_session_id(raw_id)
        if session_id is None:
            return None
        # The signature covers the canonical ID, so the case of the ID does not matter.
        message = f"{session_id}.{stamp}"
        if not any(hmac.compare_digest(self._digest(k, message), signature) for k in self._keys):
            return None
        if self.max_age is not None:
            issued = int(stamp, 36)
            if (time.time() if now is None else now) - issued > self.max_age:
                return None
        return session_id
