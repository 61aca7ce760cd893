"""The session headers in Django's form: `response.headers[...] = ...`, as the middleware
writes them on every response, at a fraction of its per-response cost."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.http.response import ResponseHeaders

from .._web import EXPOSE_HEADERS, SessionResolver

__all__ = ["HeaderWriter"]

_EXPOSE_KEY = EXPOSE_HEADERS.lower()


def _keeps_a_store() -> bool:
    """Whether this Django's `ResponseHeaders` keeps its items as `_store[lower] = (name,
    value)`, what `__setitem__` writes after its checks (Django 3.2 to 5.2)."""
    headers = HttpResponse().headers
    store = getattr(headers, "_store", None)
    if not isinstance(store, dict):
        return False
    headers["X-Probe"] = "1"
    return store.get("x-probe") == ("X-Probe", "1") and headers.get("x-PROBE") == "1"


class HeaderWriter:
    """`writer(headers, value)`: the session header, and `Access-Control-Expose-Headers`
    merged with the response's own, on one response; one per configuration.

    `ResponseHeaders.__setitem__` checks each name and value for their charset and for
    line breaks (about 1 µs a header). The session header's name was checked at start-up,
    and its value is a token (a UUID, or base 36 and base64url signed) that passes those
    checks unchanged, so both items are put into the mapping's store as `__setitem__` would
    put them. A Django whose `ResponseHeaders` keeps no such store gets `__setitem__`.
    """

    __slots__ = ("_direct", "_expose", "_key", "_name")

    def __init__(self, resolver: SessionResolver) -> None:
        self._expose = resolver.expose
        self._name = resolver.header_name or ""  # the writer is called only when echoed
        self._key = self._name.lower()
        self._direct = _keeps_a_store()

    def __call__(self, headers: ResponseHeaders, value: str) -> None:
        if not self._direct:
            headers[self._name] = value
            exposed = self._expose(headers.get(EXPOSE_HEADERS))
            if exposed is not None:
                headers[EXPOSE_HEADERS] = exposed
            return
        store: dict[str, tuple[str, Any]] = headers._store
        store[self._key] = (self._name, value)
        existing = store.get(_EXPOSE_KEY)
        exposed = self._expose(None if existing is None else existing[1])
        if exposed is not None:
            # The app's own value passed `__setitem__` already; the session header, above.
            store[_EXPOSE_KEY] = (EXPOSE_HEADERS, exposed)
