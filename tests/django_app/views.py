"""Views for every place a request's code runs in Django.

Each answers with what it saw: the session ID from `current_session()` and from
`request.freeplay_session`, at each step (before/after `new_session()`, each streamed
chunk, each signal receiver), as JSON (one object per line for streams). Query parameters
pick the behaviour: `new=1` calls `new_session()`, `record=1` records a completion,
`end=1` calls `end_session()`, `sleep=<ms>` yields to other requests in between.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.dispatch import Signal, receiver
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views import View

from freeplay_integrations import (
    current_session,
    current_trace,
    end_session,
    new_session,
    record,
    trace_scope,
)

#: Sent by the signal views; receivers note what they saw on `request.signal_seen`.
conversation_event = Signal()
#: Async receivers and `Signal.asend()` are new in Django 5.0.
ASYNC_SIGNALS = hasattr(Signal, "asend")
#: What streamed bodies did after their response left the view, by the request's `key`:
#: tests use a fresh key per request.
EVENTS: defaultdict[str, list[str]] = defaultdict(list)

MESSAGES = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]


def seen(request: HttpRequest | None = None) -> dict[str, Any]:
    """The session as the running code sees it."""
    session = current_session()
    observed: dict[str, Any] = {
        "current": None if session is None else session.session_id,
        "thread": threading.get_ident(),
    }
    if request is not None:
        attached = getattr(request, "freeplay_session", "missing")
        observed["request"] = attached if attached in (None, "missing") else attached.session_id
        observed["same"] = attached == session
    return observed


def _act(request: HttpRequest) -> dict[str, Any]:
    """The common part of the plain views: observe, act as asked, observe again."""
    result: dict[str, Any] = {"before": seen(request)}
    if request.GET.get("new"):
        new_session()
    if request.GET.get("record"):
        result["completion_id"] = record(all_messages=MESSAGES, inputs={}).completion_id
    if request.GET.get("end"):
        end_session()
    result["after"] = seen(request)
    return result


def _sleep_seconds(request: HttpRequest) -> float:
    return int(request.GET.get("sleep", "0")) / 1000


def sync_view(request: HttpRequest) -> JsonResponse:
    result = _act(request)
    time.sleep(_sleep_seconds(request))
    result["late"] = seen(request)
    return JsonResponse(result)


async def async_view(request: HttpRequest) -> JsonResponse:
    result = _act(request)
    await asyncio.sleep(_sleep_seconds(request))
    result["late"] = seen(request)
    return JsonResponse(result)


class SyncClassView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(_act(request))


class AsyncClassView(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(_act(request))


@receiver(conversation_event, dispatch_uid="tests.django_app.sync_receiver")
def _sync_receiver(sender: Any, request: HttpRequest, **kwargs: Any) -> None:
    request.signal_seen.append({"receiver": "sync", **seen(request)})  # type: ignore[attr-defined]


async def _async_receiver(sender: Any, request: HttpRequest, **kwargs: Any) -> None:
    request.signal_seen.append({"receiver": "async", **seen(request)})  # type: ignore[attr-defined]


if ASYNC_SIGNALS:
    conversation_event.connect(_async_receiver, dispatch_uid="tests.django_app.async_receiver")


def sync_signal_view(request: HttpRequest) -> JsonResponse:
    request.signal_seen = []  # type: ignore[attr-defined]
    if request.GET.get("new"):
        new_session()
    conversation_event.send(sender=None, request=request)
    return JsonResponse({"view": seen(request), "receivers": request.signal_seen})  # type: ignore[attr-defined]


async def async_signal_view(request: HttpRequest) -> JsonResponse:
    request.signal_seen = []  # type: ignore[attr-defined]
    if request.GET.get("new"):
        new_session()
    if ASYNC_SIGNALS:
        await conversation_event.asend(sender=None, request=request)
    else:
        await sync_to_async(conversation_event.send)(sender=None, request=request)
    return JsonResponse({"view": seen(request), "receivers": request.signal_seen})  # type: ignore[attr-defined]


def _line(request: HttpRequest, step: str) -> bytes:
    return (json.dumps({"step": step, **seen(request)}) + "\n").encode()


def _stream_options(request: HttpRequest) -> tuple[int, float, str]:
    return (
        int(request.GET.get("chunks", "3")),
        _sleep_seconds(request),
        request.GET.get("key", ""),
    )


def sync_stream_view(request: HttpRequest) -> StreamingHttpResponse:
    chunks, pause, key = _stream_options(request)

    def body() -> Iterator[bytes]:
        try:
            if request.GET.get("raise"):
                raise RuntimeError("the stream failed before its first chunk")
            if request.GET.get("new"):
                new_session()
            for index in range(chunks):
                if index == 1 and request.GET.get("new_late"):
                    new_session()
                if index == 1 and request.GET.get("record"):
                    record(all_messages=MESSAGES, inputs={})
                yield _line(request, f"chunk{index}")
                time.sleep(pause)
            EVENTS[key].append("finished")
        finally:
            EVENTS[key].append("closed")

    return StreamingHttpResponse(body(), content_type="application/x-ndjson")


def async_stream_view(request: HttpRequest) -> StreamingHttpResponse:
    chunks, pause, key = _stream_options(request)

    async def body() -> AsyncIterator[bytes]:
        try:
            if request.GET.get("raise"):
                raise RuntimeError("the stream failed before its first chunk")
            if request.GET.get("new"):
                new_session()
            for index in range(chunks):
                if index == 1 and request.GET.get("new_late"):
                    new_session()
                if index == 1 and request.GET.get("record"):
                    await sync_to_async(record)(all_messages=MESSAGES, inputs={})
                yield _line(request, f"chunk{index}")
                await asyncio.sleep(pause)
            EVENTS[key].append("finished")
        except asyncio.CancelledError:
            EVENTS[key].append("cancelled")
            raise
        finally:
            EVENTS[key].append("closed")

    return StreamingHttpResponse(body(), content_type="application/x-ndjson")


#: Set in a streamed body's first step, read in the later ones.
step_marker: ContextVar[str | None] = ContextVar("step_marker", default=None)


def context_stream_view(request: HttpRequest) -> StreamingHttpResponse:
    """A sync body whose steps must share one context: a contextvar set in its first step
    and a `trace_scope` open across its yields (as a streamed LLM answer would be)."""

    def body() -> Iterator[bytes]:
        token = step_marker.set("set in the first step")
        try:
            with trace_scope("question", name="streamed answer") as trace:
                for index in range(3):
                    current = current_trace()
                    line = {
                        "step": index,
                        "marker": step_marker.get(),
                        "in_trace": current is not None and current.trace_id == trace.trace_id,
                        **seen(request),
                    }
                    yield (json.dumps(line) + "\n").encode()
                trace.output = "answer"
        finally:
            step_marker.reset(token)

    return StreamingHttpResponse(body(), content_type="application/x-ndjson")


def error_view(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("kind", "500")
    if kind == "404":
        raise Http404("no such conversation")
    if kind == "403":
        raise PermissionDenied("not yours")
    if kind == "400":
        raise SuspiciousOperation("odd request")
    raise RuntimeError("the view failed")


async def async_error_view(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the async view failed")


def expose_view(request: HttpRequest) -> JsonResponse:
    response = JsonResponse(seen(request))
    response["Access-Control-Expose-Headers"] = "X-Other"
    return response


def probe_view(request: HttpRequest) -> JsonResponse:
    """Mounted under an excluded path: reports what a request without a session sees."""
    return JsonResponse(seen(request))
