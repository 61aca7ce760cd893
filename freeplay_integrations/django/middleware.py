"""`FreeplaySessionMiddleware`: one Freeplay session per conversation in a Django project.

One class, sync under WSGI and async under ASGI, binding the session in one `try`/`finally`
around `get_response` (so it is reset in the context it was set in, which a
`process_request`/`process_response` pair cannot promise under ASGI).

A `StreamingHttpResponse` body is iterated by Django after the middleware returned: it is
wrapped so the session is bound around each step only (`bound_steps`), and its first chunk
is pulled before returning, so `new_session()` before that chunk reaches the header and
cookie, and an exception there becomes Django's 500 carrying the session. A body of the
kind Django would collect whole (async under WSGI, sync under ASGI) is collected here
instead (`ASYNC_STREAM_WARNING`). `FileResponse` bodies are left alone.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from itertools import chain
from typing import Any, Final

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.handlers.exception import response_for_exception
from django.http import FileResponse, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase, StreamingHttpResponse

from .._context import SessionBinding, abound_steps, bind, bound_steps, unbind
from .._web import EXPOSE_HEADERS, Rejection
from .conf import DjangoConfig, get_config
from .cookies import SessionMorsel
from .request import FreeplayHttpRequest, RequestSession

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
#: Django's own warnings for a body of the kind it collects whole (async under WSGI, sync
#: under ASGI); the middleware collects it instead, with the session bound, and warns so.
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
        # Typed loosely, not `cast` per call (a call each request): `async_mode` says which.
        self.get_response: Callable[[HttpRequest], Any] = get_response
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
            return self.get_response(request)
        if isinstance(binding, Rejection):
            return _reject(binding)
        token = bind(binding)
        try:
            response = self.get_response(request)
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
        response: HttpResponseBase
        if binding is None:
            response = await self.get_response(request)
            return response
        if isinstance(binding, Rejection):
            return _reject(binding)
        token = bind(binding)
        try:
            response = await self.get_response(request)
            if isinstance(response, StreamingHttpResponse) and not isinstance(
                response, FileResponse
            ):
                response = await _aprefetch(request, response, binding)
        finally:
            unbind(token)
        _add_session(config, request, response, binding)
        return response


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
        request.freeplay_session = RequestSession.of(result)  # type: ignore[attr-defined]
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
        config.write_headers(response.headers, value)
    if resolver.set_cookie:
        secure = config.settings.cookie_secure
        if secure is None:
            secure = config.is_secure(request)
        cookie = resolver.cookie(binding, secure)
        assert cookie is not None
        # `response.cookies[name] = morsel`, as `SimpleCookie.__setitem__` stores a Morsel.
        dict.__setitem__(response.cookies, cookie.name, config.morsel(cookie))


# -- streaming bodies ----------------------------------------------------------------------


async def _aprepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is _END:
        return
    yield first
    async for chunk in rest:
        yield chunk


def _collect_sync(binding: SessionBinding, iterator: Iterator[bytes]) -> list[bytes]:
    return list(bound_steps(binding, iterator))


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _collect(binding: SessionBinding, iterator: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in abound_steps(binding, iterator)]


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
    stream = bound_steps(binding, response.streaming_content)  # type: ignore[arg-type]
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
        astream = abound_steps(binding, response.streaming_content)  # type: ignore[arg-type]
        first = await anext(astream, _END)
    except Exception as exc:
        return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)
    response.streaming_content = _aprepend(first, astream)
    return response
