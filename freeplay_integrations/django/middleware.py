"""`FreeplaySessionMiddleware`: one Freeplay session per conversation in a Django project.

One class that Django runs in sync mode under WSGI and in async mode under ASGI; in both the
session is bound in one `try`/`finally` around `get_response`, so it is reset in the same
context it was set in (a `process_request`/`process_response` pair cannot promise that
under ASGI).

Streaming responses (`StreamingHttpResponse`): Django iterates the body after the
middleware returned, in the server's thread (WSGI) or in its handler's task (ASGI). The
middleware wraps the body so the session is bound around *each step* of the iteration, in
whichever thread or task runs that step, and unbound again before the chunk is handed on:
nothing is bound between chunks, and a thread the server reuses never starts a request
with a session. Before returning, the middleware pulls the first chunk, so `new_session()`
called in the body before its first chunk is what the header and cookie carry (the
response's headers wait for that chunk, as they would for a plain response). A body of
the other kind (an async iterator under WSGI, a sync one under ASGI), which Django collects
whole before sending anything, is collected by the middleware instead, in one go (see
`ASYNC_STREAM_WARNING`). An exception raised before the first chunk becomes Django's 500
(`response_for_exception`), carrying the session. `FileResponse` bodies are left alone
(they run no user code and may be sent with `sendfile`).
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.cookies import Morsel, SimpleCookie
from itertools import chain
from typing import TYPE_CHECKING, Any, Final, cast

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.handlers.exception import response_for_exception
from django.http import FileResponse, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase, StreamingHttpResponse
from freeplay.resources.sessions import Session

from .._context import SessionBinding, bind, unbind
from .._web import EXPOSE_HEADERS, CookieAttributes, Rejection, SessionCookie
from .conf import DjangoConfig, get_config

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ASYNC_STREAM_WARNING",
    "EXPOSE_HEADERS",
    "REQUEST_ATTRIBUTE",
    "SYNC_STREAM_WARNING",
    "FreeplayHttpRequest",
    "FreeplaySessionMiddleware",
    "RequestSession",
    "SessionMorsel",
]

#: The attribute set on every request the middleware handles.
REQUEST_ATTRIBUTE: Final = "freeplay_session"
#: Warned (as Django itself does) when an async iterator is streamed under WSGI, or a sync
#: one under ASGI: Django has to collect the whole body before sending it. The middleware
#: collects it itself, in one go with the session bound, so the response's header and
#: cookie reflect a `new_session()` anywhere in the body, then hands Django the chunks in
#: the form it wants (Django then has nothing to warn about).
ASYNC_STREAM_WARNING: Final = (
    "StreamingHttpResponse must consume asynchronous iterators in order to serve them "
    "synchronously. Use a synchronous iterator instead."
)
SYNC_STREAM_WARNING: Final = (
    "StreamingHttpResponse must consume synchronous iterators in order to serve them "
    "asynchronously. Use an asynchronous iterator instead."
)

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]

_END: Final[Any] = object()


class FreeplaySessionMiddleware:
    """Bind the conversation's Freeplay session while Django handles each request.

    Configured by the `FREEPLAY` settings dict (see `freeplay_integrations.django.conf`).
    Place it near the top of `MIDDLEWARE`, right after `SecurityMiddleware`; the README
    says why, and `manage.py check` warns about positions that lose the session.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        # Django builds middleware when it loads its handler: a broken FREEPLAY setting fails
        # there, at start-up, with ImproperlyConfigured saying what to set.
        get_config()

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} async_mode={self.async_mode}>"

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        config = get_config()
        binding = _resolve(config, request)
        if binding is None:
            return cast("GetResponse", self.get_response)(request)
        if isinstance(binding, Rejection):
            return _reject(binding)
        token = bind(binding)
        try:
            response = cast("GetResponse", self.get_response)(request)
            if isinstance(response, StreamingHttpResponse) and not isinstance(
                response, FileResponse
            ):
                response = _prefetch(request, response, binding)
        finally:
            unbind(token)
        _add_session(config, request, response, binding)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        config = get_config()
        if config.resolver.wants_request:  # user code that may touch the database, as sync views do
            binding = await sync_to_async(_resolve, thread_sensitive=True)(config, request)
        else:
            binding = _resolve(config, request)
        if binding is None:
            return await cast("AsyncGetResponse", self.get_response)(request)
        if isinstance(binding, Rejection):
            return _reject(binding)
        token = bind(binding)
        try:
            response = await cast("AsyncGetResponse", self.get_response)(request)
            if isinstance(response, StreamingHttpResponse) and not isinstance(
                response, FileResponse
            ):
                response = await _aprefetch(request, response, binding)
        finally:
            unbind(token)
        _add_session(config, request, response, binding)
        return response


class RequestSession(Session):
    """`request.freeplay_session`: the request's current Freeplay `Session`.

    A `Session` that stands for the one the request has *now*: after `new_session()` it is
    the new one, as `current_session()` is, so code holding `request.freeplay_session` never
    records into the conversation the user just left. Its fields (and so the SDK's own
    methods, `create_trace` ...) read that session.
    """

    _binding: SessionBinding

    def __init__(self, binding: SessionBinding) -> None:  # no super(): it has no fields
        self._binding = binding

    @property
    def session_id(self) -> str:
        return str(self._binding.session.session_id)

    @session_id.setter
    def session_id(self, value: str) -> None:
        self._binding.session.session_id = value

    @property
    def custom_metadata(self) -> Any:
        return self._binding.session.custom_metadata

    @custom_metadata.setter
    def custom_metadata(self, value: Any) -> None:
        self._binding.session.custom_metadata = value

    @property
    def _session_info(self) -> Any:  # type: ignore[override]
        return self._binding.session._session_info

    @property
    def _call_support(self) -> Any:  # type: ignore[override]
        return self._binding.session._call_support

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RequestSession):
            other = other._binding.session
        return bool(self._binding.session == other)

    __hash__ = None  # type: ignore[assignment]  # like the SDK's Session (a dataclass)

    def __repr__(self) -> str:
        return f"<RequestSession {self._binding.session_id}>"


class FreeplayHttpRequest(HttpRequest):
    """For type hints in views, like django-htmx's `HtmxHttpRequest`::

        def chat(request: FreeplayHttpRequest) -> HttpResponse:
            request.freeplay_session.session_id

    `freeplay_session` is None on an excluded path.
    """

    freeplay_session: Session | None


def _resolve(config: DjangoConfig, request: HttpRequest) -> SessionBinding | Rejection | None:
    """The request's binding, a `Rejection`, or None for an excluded path."""
    resolver = config.resolver
    exclude = resolver.exclude_paths
    if exclude and request.path.startswith(exclude):
        request.freeplay_session = None  # type: ignore[attr-defined]
        return None
    meta = request.META
    cookies = meta.get("HTTP_COOKIE")
    if cookies and "," in cookies and hasattr(request, "scope"):
        cookies = _scope_cookies(request.scope)
    key = resolver.environ_key
    baggage = meta.get("HTTP_BAGGAGE") if resolver.baggage else None
    result = resolver.resolve(None if key is None else meta.get(key), cookies, request, baggage)
    if not isinstance(result, Rejection):
        request.freeplay_session = RequestSession(result)  # type: ignore[attr-defined]
    return result


def _scope_cookies(scope: Any) -> str:
    """The `Cookie` fields of an ASGI request as one list. HTTP/2 clients send one field per
    cookie; the ASGI spec says they join with "; ", but Django's `ASGIRequest` (5.2, ticket
    #36399) joins them with "," in `request.META`, which would lose the session cookie."""
    return "; ".join(
        value.decode("latin-1") for name, value in scope["headers"] if name == b"cookie"
    )


def _reject(rejection: Rejection) -> HttpResponse:
    """The answer when `ON_INVALID` / `ON_UNAUTHORIZED` is "reject" (400 / 403): no view runs."""
    return HttpResponse(
        rejection.body, status=rejection.status, content_type=rejection.content_type
    )


def _add_session(
    config: DjangoConfig, request: HttpRequest, response: HttpResponseBase, binding: SessionBinding
) -> None:
    """Echo the session in the response header and cookie, replacing any value there."""
    resolver = config.resolver
    value = resolver.echo(binding)
    if value is not None:
        response[resolver.header_name] = value  # type: ignore[index]
        exposed = resolver.expose(response.get(EXPOSE_HEADERS))
        if exposed is not None:
            response[EXPOSE_HEADERS] = exposed
    if resolver.set_cookie:
        secure = config.settings.cookie_secure
        if secure is None:
            secure = request.is_secure()  # honours SECURE_PROXY_SSL_HEADER
        cookie = resolver.cookie(binding, secure)
        assert cookie is not None
        response.cookies[cookie.name] = _morsel(cookie)


class SessionMorsel(Morsel[str]):
    """The session cookie in `response.cookies`: a copy of the `Morsel` that
    `response.set_cookie` made for its attributes, which keeps the text of those attributes.

    Django's handlers write each cookie with `Morsel.output()`, which rebuilds the text
    attribute by attribute: 3 to 6 µs a response, as much as the rest of this middleware.
    The text is kept until an attribute changes (any change drops it), so a view or a later
    middleware that edits the cookie still sends its edit; the name and value are read live.
    """

    _suffix: str | None = None

    def OutputString(self, attrs: Any = None) -> str:
        suffix = self._suffix
        if suffix is None or attrs is not None:
            return super().OutputString(attrs)
        return f"{self.key}={self.coded_value}{suffix}"

    def _changed(self) -> None:
        self._suffix = None

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


#: Per `CookieAttributes`: the `Expires` it was made with, the `Morsel` `set_cookie` made,
#: and the text of its attributes.
_made: dict[CookieAttributes, tuple[str, Morsel[str], str]] = {}
_encode = SimpleCookie().value_encode


def _morsel(cookie: SessionCookie) -> SessionMorsel:
    """The `Morsel` `response.set_cookie(...)` makes for `cookie`, at a fraction of its cost.

    `set_cookie` builds a Morsel attribute by attribute (about 5 µs). The attributes change
    only with the second (`Expires`) and the kind (https or not, live or expiring), so the
    Morsel `set_cookie` made for them is kept, and each response gets a copy of it.
    """
    a = cookie.attributes
    expires = a.expires
    made = _made.get(a)
    if made is None or made[0] != expires:
        scratch = HttpResponseBase()
        scratch.set_cookie(
            cookie.name,
            max_age=a.max_age,
            expires=expires,
            path=a.path,
            domain=a.domain,
            secure=a.secure,
            httponly=a.httponly,
            samesite=a.samesite,  # type: ignore[arg-type]  # "Lax" | "Strict" | "None"
        )
        template = scratch.cookies[cookie.name]
        pair = f"{template.key}={template.coded_value}"
        made = _made[a] = (expires, template, template.OutputString()[len(pair) :])
    morsel = SessionMorsel.__new__(SessionMorsel)
    dict.update(morsel, made[1])
    value = cookie.value
    # A token is cookie-safe as it stands (UUID, base 36, base64url): only "" is quoted. Set
    # as pickle restores a Morsel (`Morsel.set` would check the name again).
    state = {"key": cookie.name, "value": value, "coded_value": value or _encode(value)[1]}
    morsel.__setstate__(state)  # type: ignore[attr-defined]
    morsel._suffix = made[2]
    return morsel


# -- streaming bodies ----------------------------------------------------------------------


def _steps(binding: SessionBinding, iterator: Iterator[bytes]) -> Iterator[bytes]:
    """Yield from `iterator`, the session bound around each step and unbound in between."""
    while True:
        token = bind(binding)
        try:
            chunk = next(iterator, _END)
        finally:
            unbind(token)
        if chunk is _END:
            return
        yield chunk


async def _asteps(binding: SessionBinding, iterator: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`_steps` for an async iterator. Each step binds and unbinds in the task running it."""
    while True:
        token = bind(binding)
        try:
            chunk = await anext(iterator, _END)
        finally:
            unbind(token)
        if chunk is _END:
            return
        yield chunk


async def _aprepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is _END:
        return
    yield first
    async for chunk in rest:
        yield chunk


def _collect_sync(binding: SessionBinding, iterator: Iterator[bytes]) -> list[bytes]:
    return list(_steps(binding, iterator))


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _collect(binding: SessionBinding, iterator: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in _asteps(binding, iterator)]


def _prefetch(
    request: HttpRequest, response: StreamingHttpResponse, binding: SessionBinding
) -> HttpResponseBase:
    """Sync mode (WSGI): wrap the body and pull its first chunk now."""
    if response.is_async:
        # Django would collect the whole body in an event loop of its own before sending any
        # of it; collect it here instead, with the session bound, and keep Django's advice.
        warnings.warn(ASYNC_STREAM_WARNING, Warning, stacklevel=2)
        try:
            response.streaming_content = async_to_sync(_collect)(
                binding,
                response.streaming_content,  # type: ignore[arg-type]
            )
        except Exception as exc:
            return response_for_exception(request, exc)
        return response
    stream = _steps(binding, response.streaming_content)  # type: ignore[arg-type]
    try:
        first = next(stream, _END)
    except Exception as exc:
        return response_for_exception(request, exc)
    response.streaming_content = () if first is _END else chain((first,), stream)
    return response


async def _aprefetch(
    request: HttpRequest, response: StreamingHttpResponse, binding: SessionBinding
) -> HttpResponseBase:
    """Async mode (ASGI): wrap the body and pull its first chunk now."""
    try:
        if not response.is_async:
            # Django would collect the whole body in one worker-thread call before sending
            # any of it; collect it here instead, in one such call (so the body's steps share
            # one context), with the session bound, and keep Django's advice.
            warnings.warn(SYNC_STREAM_WARNING, Warning, stacklevel=2)
            chunks = await sync_to_async(_collect_sync, thread_sensitive=True)(
                binding,
                response.streaming_content,  # type: ignore[arg-type]
            )
            response.streaming_content = _replay(chunks)
            return response
        astream = _asteps(binding, response.streaming_content)  # type: ignore[arg-type]
        first = await anext(astream, _END)
    except Exception as exc:
        return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)
    response.streaming_content = _aprepend(first, astream)
    return response
