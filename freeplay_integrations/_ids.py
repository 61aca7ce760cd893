"""Session IDs: UUID v4 validation and optional HMAC signing of the value sent to clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence

__all__ = ["MAX_ID_LENGTH", "Signer", "parse_session_id"]

#: Longest value looked at before parsing; anything longer is invalid without more work.
MAX_ID_LENGTH = 64

_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    re.ASCII | re.IGNORECASE,
)
_SIGNATURE_LENGTH = 43  # base64url of a SHA-256 digest, without padding
#: A signed value is `<uuid>.<signature>`.
MAX_TOKEN_LENGTH = 36 + 1 + _SIGNATURE_LENGTH


def parse_session_id(value: str) -> str | None:
    """Return the canonical (lower-case) form of `value` if it is a UUID v4, else None.

    Only the canonical hyphenated form is accepted, in any case: braces, `urn:uuid:` prefixes
    and hyphen-less forms are refused, as Freeplay's API refuses them.
    """
    if len(value) > MAX_ID_LENGTH or _UUID4.fullmatch(value) is None:
        return None
    return value.lower()


class Signer:
    """Signs session IDs with HMAC-SHA256: sign with the first secret, accept any of them.

    A list of secrets allows key rotation: put the new secret first and keep the old ones
    until every client has been answered with a value signed by the new one.
    """

    __slots__ = ("_keys",)

    def __init__(self, secrets: Sequence[str | bytes]) -> None:
        self._keys = tuple(s.encode() if isinstance(s, str) else bytes(s) for s in secrets)
        if not self._keys:
            raise ValueError("Signer needs at least one secret")

    @staticmethod
    def _digest(key: bytes, session_id: str) -> str:
        mac = hmac.new(key, session_id.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def sign(self, session_id: str) -> str:
        return f"{session_id}.{self._digest(self._keys[0], session_id)}"

    def unsign(self, token: str) -> str | None:
        """Return the session ID in a signed `token`, or None if it is malformed or forged."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        raw_id, dot, signature = token.partition(".")
        if not dot or len(signature) != _SIGNATURE_LENGTH or not signature.isascii():
            return None
        session_id = parse_session_id(raw_id)
        if session_id is None:
            return None
        # The signature covers the canonical ID, so the case of the ID does not matter.
        for key in self._keys:
            if hmac.compare_digest(self._digest(key, session_id), signature):
                return session_id
        return None
