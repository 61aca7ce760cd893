"""The FastAPI example chat: every conversation is one Freeplay session.

Run it (see README.md here): `make demo`, or with your own Freeplay settings in the
environment::

    uvicorn --factory example_apps.fastapi_chat.app:create_app --port 8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from example_apps.common.chat import (
    ENV_FREEPLAY_UI,
    SSE_HEADERS,
    STATIC_DIR,
    STATIC_FILES,
    Chat,
    ChatError,
)
from example_apps.common.llm import Responder, responder_from_env
from freeplay_integrations.asgi import FreeplaySessionMiddleware

if TYPE_CHECKING:
    from freeplay import Freeplay

__all__ = ["create_app"]


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise ChatError("The request body must be JSON.") from None


def create_app(
    *,
    client: Freeplay | None = None,
    project_id: str | None = None,
    responder: Responder | None = None,
    freeplay_ui: str | None = None,
) -> FreeplaySessionMiddleware:
    """A new chat app, wrapped in the session middleware.

    Without arguments everything comes from the environment: `FREEPLAY_API_KEY`,
    `FREEPLAY_API_BASE`, `FREEPLAY_PROJECT_ID` for Freeplay, `OPENAI_API_KEY` /
    `ANTHROPIC_API_KEY` for the model (else the local responder), `DEMO_FREEPLAY_UI`.
    """
    chat = Chat(
        responder or responder_from_env(),
        framework="FastAPI",
        freeplay_ui=freeplay_ui or os.environ.get(ENV_FREEPLAY_UI),
    )
    app = FastAPI(title="Example chat", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ChatError)
    async def chat_error(request: Request, exc: ChatError) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "chat.html").read_text("utf-8"))

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response((STATIC_DIR / name).read_bytes(), media_type=STATIC_FILES[name])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/conversation")
    async def conversation() -> dict[str, Any]:
        return chat.conversation()

    @app.post("/api/chat")
    async def chat_turn(request: Request) -> StreamingResponse:
        message = chat.check_message(await _json(request))

        async def events() -> AsyncIterator[bytes]:
            # Runs after the endpoint returned, still inside the request's session.
            async for event in chat.aturn(message):
                yield event.sse()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/api/new")
    async def new_conversation() -> dict[str, Any]:
        return chat.new_conversation()

    @app.post("/api/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        return chat.feedback(await _json(request))

    options: dict[str, Any] = {
        "exclude_paths": ["/static/", "/healthz"],
        "session_metadata": chat.session_metadata,
    }
    if client is not None:
        options["client"] = client
    if project_id is not None:
        options["project_id"] = project_id
    # Outermost: even an unhandled error's 500 carries the session header and cookie.
    return FreeplaySessionMiddleware(app, **options)
