"""The session cookie in Django's form: a `Morsel` in `response.cookies`, as
`response.set_cookie` makes it, at a fraction of its per-response cost."""

from __future__ import annotations

from http.cookies import Morsel
from time import time
from typing import TYPE_CHECKING, Any

from django.http.response import HttpResponseBase

from .._web import CookieAttributes, SessionCookie

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MorselMaker", "SessionMorsel"]


class SessionMorsel(Morsel[str]):
    """The session cookie in `response.cookies`: a copy of the `Morsel` that
    `response.set_cookie` made for its attributes, which keeps its whole text.

    Django's handlers write each cookie with `Morsel.output()`, which rebuilds the text
    attribute by attribute: 3 to 6 µs a response, as much as the rest of this middleware.
    The text is kept until the cookie changes (any edit, `set()` included, drops it), so a
    view or a later middleware that edits the cookie still sends its edit.
    """

    # Morsel's own attributes and the kept text, in slots: no instance dict per response.
    __slots__ = ("_coded_value", "_key", "_text", "_value")

    _text: str | None

    def __init__(self) -> None:
        self._text = None
        super().__init__()

    def output(self, attrs: Any = None, header: str = "Set-Cookie:") -> str:
        text = self._text
        if text is None or attrs is not None:
            return super().output(attrs, header)
        return f"{header} {text}"

    def OutputString(self, attrs: Any = None) -> str:
        text = self._text
        if text is None or attrs is not None:
            return super().OutputString(attrs)
        return text

    def copy(self) -> Morsel[str]:
        # `Morsel.copy` copies the instance dict, which has none of the slots' values.
        morsel = super().copy()
        morsel.set(self._key, self._value, self._coded_value)  # type: ignore[attr-defined]
        return morsel

    def _changed(self) -> None:
        self._text = None

    def set(self, key: str, val: str, coded_val: str) -> None:
        self._changed()
        super().set(key, val, coded_val)

    def __setitem__(self, key: str, value: Any) -> None:
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._changed()
        super().__delitem__(key)

    def setdefault(self, key: str, value: Any = None) -> Any:
        self._changed()
        return super().setdefault(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changed()
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:
        self._changed()
        return super().pop(*args)

    def popitem(self) -> Any:
        self._changed()
        return super().popitem()

    def clear(self) -> None:
        self._changed()
        super().clear()

    def __ior__(self, other: Any) -> Self:  # type: ignore[misc,override]  # as dict.__ior__
        self._changed()
        return super().__ior__(other)


class MorselMaker:
    """`maker(cookie)`: the `Morsel` `response.set_cookie(...)` makes for the core's `cookie`,
    at a fraction of its cost; one per configuration (`DjangoConfig.morsel`).

    `set_cookie` builds a Morsel attribute by attribute (about 5 µs). The attributes change
    only with the second (`Expires`) and the kind (https or not, live or expiring), so the
    Morsel `set_cookie` made for them is kept, and each response gets a copy of it.
    """

    __slots__ = ("_made",)

    def __init__(self) -> None:
        #: Per attribute set: the second it was made in, the Morsel's items, its attribute text.
        self._made: dict[CookieAttributes, tuple[int, dict[str, Any], str]] = {}

    def __call__(self, cookie: SessionCookie) -> SessionMorsel:
        a = cookie.attributes
        now = int(time())
        made = self._made.get(a)
        if made is None or made[0] != now:
            made = self._made[a] = _template(cookie.name, a, now)
        morsel = SessionMorsel.__new__(SessionMorsel)
        dict.update(morsel, made[1])
        value = cookie.value
        # A token is cookie-safe as it stands (UUID, base 36, base64url): only "" is quoted,
        # as `SimpleCookie.value_encode` quotes it. Set as `Morsel.__setstate__` (pickle)
        # sets them, without building its state dict; `Morsel.set` would check the name again.
        coded = value or '""'
        morsel._key = cookie.name  # type: ignore[attr-defined]
        morsel._value = value  # type: ignore[attr-defined]
        morsel._coded_value = coded  # type: ignore[attr-defined]
        morsel._text = f"{cookie.name}={coded}{made[2]}"
        return morsel


def _template(name: str, a: CookieAttributes, now: int) -> tuple[int, dict[str, Any], str]:
    """The items of the Morsel `response.set_cookie` makes for `a` in second `now` (a plain
    dict: copied faster), and its attribute text."""
    scratch = HttpResponseBase()
    scratch.set_cookie(
        name,
        max_age=a.max_age,
        expires=a.expires,
        path=a.path,
        domain=a.domain,
        secure=a.secure,
        httponly=a.httponly,
        samesite=a.samesite,  # type: ignore[arg-type]  # "Lax" | "Strict" | "None"
    )
    template = scratch.cookies[name]
    pair = f"{template.key}={template.coded_value}"
    return now, dict(template), template.OutputString()[len(pair) :]
