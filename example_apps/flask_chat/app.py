"""The Flask example chat: every conversation is one Freeplay session.

Run it (see README.md here): `make demo-flask`, or with your own Freeplay settings in the
environment::

    flask --app example_apps.flask_chat.app run --port 8000
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request

from example_apps.common.chat import (
    ENV_FREEPLAY_UI,
    SSE_HEADERS,
    STATIC_DIR,
    STATIC_FILES,
    Chat,
    ChatError,
)
from example_apps.common.llm import Responder, responder_from_env
from freeplay_integrations.flask import FreeplaySessions

if TYPE_CHECKING:
    from freeplay import Freeplay

__all__ = ["create_app"]


def _json() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise ChatError("The request body must be JSON.")
    return body


def create_app(
    *,
    client: Freeplay | None = None,
    project_id: str | None = None,
    responder: Responder | None = None,
    freeplay_ui: str | None = None,
) -> Flask:
    """A new chat app with the `FreeplaySessions` extension.

    Without arguments everything comes from the environment: `FREEPLAY_API_KEY`,
    `FREEPLAY_API_BASE`, `FREEPLAY_PROJECT_ID` for Freeplay, `OPENAI_API_KEY` /
    `ANTHROPIC_API_KEY` for the model (else the local responder), `DEMO_FREEPLAY_UI`.
    """
    chat = Chat(
        responder or responder_from_env(),
        framework="Flask",
        freeplay_ui=freeplay_ui or os.environ.get(ENV_FREEPLAY_UI),
    )
    app = Flask(__name__, static_folder=None)

    @app.errorhandler(ChatError)
    def chat_error(exc: ChatError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), exc.status

    @app.get("/")
    def page() -> Response:
        return Response((STATIC_DIR / "chat.html").read_text("utf-8"), mimetype="text/html")

    @app.get("/static/<name>")
    def static(name: str) -> Response | tuple[Response, int]:
        if name not in STATIC_FILES:
            return jsonify(error="not found"), 404
        return Response((STATIC_DIR / name).read_bytes(), content_type=STATIC_FILES[name])

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/conversation")
    def conversation() -> dict[str, Any]:
        return chat.conversation()

    @app.post("/api/chat")
    def chat_turn() -> Response:
        message = chat.check_message(_json())

        def events() -> Iterator[bytes]:
            # Iterated by the server after the view returned, still inside the session.
            for event in chat.turn(message):
                yield event.sse()

        return Response(events(), mimetype="text/event-stream", headers=SSE_HEADERS)

    @app.post("/api/new")
    def new_conversation() -> dict[str, Any]:
        return chat.new_conversation()

    @app.post("/api/feedback")
    def feedback() -> dict[str, Any]:
        return chat.feedback(_json())

    options: dict[str, Any] = {
        "exclude_paths": ["/static/", "/healthz"],
        "session_metadata": chat.session_metadata,
    }
    if client is not None:
        options["client"] = client
    if project_id is not None:
        options["project_id"] = project_id
    FreeplaySessions(app, **options)
    return app
