"""Every documented form, as a user writes it: `mypy --strict` and pyright find no error."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from celery import Celery  # type: ignore[import-untyped]
from django.http import HttpResponse
from fastapi import FastAPI
from flask import Flask
from freeplay import Freeplay
from starlette.applications import Starlette

import freeplay_integrations as fi
from freeplay_integrations import asgi, wsgi
from freeplay_integrations.celery import enable_session_propagation
from freeplay_integrations.django import FreeplayHttpRequest
from freeplay_integrations.flask import FreeplaySessions, freeplay_session
from freeplay_integrations.httpx import propagate_session

client = Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api")

starlette_app = Starlette()
wrapped = asgi.FreeplaySessionMiddleware(starlette_app, client=client, project_id="p")

fastapi_app = FastAPI()
fastapi_app.add_middleware(
    asgi.FreeplaySessionMiddleware,
    client=client,
    project_id="p",
    on_invalid="reject",
    cookie_samesite="strict",
    exclude_paths=["/health"],
)

fastapi_app.add_middleware(asgi.FreeplaySessionMiddleware.configure(client=client, project_id="p"))

flask_app = Flask(__name__)
FreeplaySessions(flask_app, client=client, project_id="p", recording="sync")
flask_app.wsgi_app = wsgi.FreeplaySessionMiddleware(  # type: ignore[method-assign]
    flask_app.wsgi_app, client=client, project_id="p", propagate_exceptions=True
)


def chat_view(request: FreeplayHttpRequest) -> HttpResponse:
    session = request.freeplay_session
    return HttpResponse(session.session_id if session is not None else "")


def conversation() -> str:
    with fi.session_scope(client, project_id="p") as session:
        with fi.trace_scope("question", name="agent") as trace:
            response = fi.record(
                all_messages=[{"role": "assistant", "content": "hi"}],
                inputs={"question": "hello"},
                eval_results={"good": True},
            )
            trace.output = "answer"
        current = fi.current_session()
        assert current is not None
        with ThreadPoolExecutor() as pool:
            seen = pool.submit(fi.run_with_session(fi.require_session)).result()
        return f"{session.session_id} {response.completion_id} {seen.session_id}"


def flask_view() -> str:
    return str(freeplay_session.session_id)


http = propagate_session(httpx.Client(), allow_hosts=["svc.internal"])
celery_app = Celery()
enable_session_propagation(celery_app, client=client, project_id="p")
