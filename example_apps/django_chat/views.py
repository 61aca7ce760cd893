"""Views of the Django example chat (sync views; the answer is a streamed response).

The `Chat` (its responder and the conversations it remembers) is built from the `CHAT`
setting on first use, and again when that setting changes (`override_settings`, the
`settings` fixture of pytest-django), so each test gets its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_GET, require_POST

from example_apps.common.chat import SSE_HEADERS, STATIC_DIR, STATIC_FILES, Chat, ChatError
from example_apps.common.llm import responder_from_env

__all__ = [
    "chat_turn",
    "conversation",
    "feedback",
    "get_chat",
    "healthz",
    "new_conversation",
    "page",
    "session_metadata",
    "static",
]

_lock = threading.Lock()
_chat: Chat | None = None

View = Callable[..., HttpResponseBase]


def get_chat() -> Chat:
    """The chat of this process, built from `settings.CHAT` on first use."""
    global _chat
    with _lock:
        if _chat is None:
            options = getattr(settings, "CHAT", {})
            _chat = Chat(
                options.get("RESPONDER") or responder_from_env(),
                framework="Django",
                freeplay_ui=options.get("FREEPLAY_UI"),
            )
        return _chat


def _forget_chat(*, setting: str, **kwargs: Any) -> None:
    global _chat
    if setting == "CHAT":
        with _lock:
            _chat = None


setting_changed.connect(_forget_chat)


def session_metadata(request: HttpRequest) -> dict[str, str]:
    """`FREEPLAY["SESSION_METADATA"]`: what each session shows on Freeplay."""
    return get_chat().session_metadata(request)


def _answers_errors(view: View) -> View:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return view(request, *args, **kwargs)
        except ChatError as exc:
            return JsonResponse({"error": str(exc)}, status=exc.status)

    return wrapper


def _json(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body)
    except ValueError:
        raise ChatError("The request body must be JSON.") from None


@require_GET
def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse((STATIC_DIR / "chat.html").read_text("utf-8"))


@require_GET
def static(request: HttpRequest, name: str) -> HttpResponse:
    if name not in STATIC_FILES:
        raise Http404(name)
    return HttpResponse((STATIC_DIR / name).read_bytes(), content_type=STATIC_FILES[name])


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def conversation(request: HttpRequest) -> JsonResponse:
    return JsonResponse(get_chat().conversation())


@require_POST
@_answers_errors
def chat_turn(request: HttpRequest) -> HttpResponseBase:
    chat = get_chat()
    message = chat.check_message(_json(request))

    def events() -> Iterator[bytes]:
        # Iterated by the server after the view returned, still inside the session.
        for event in chat.turn(message):
            yield event.sse()

    return StreamingHttpResponse(events(), content_type="text/event-stream", headers=SSE_HEADERS)


@require_POST
def new_conversation(request: HttpRequest) -> JsonResponse:
    return JsonResponse(get_chat().new_conversation())


@require_POST
@_answers_errors
def feedback(request: HttpRequest) -> HttpResponseBase:
    return JsonResponse(get_chat().feedback(_json(request)))
