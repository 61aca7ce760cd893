"""The example chat apps (FastAPI, Flask, Django): routes, streaming, what they record.

Each test runs once per framework through a small driver around that framework's own test
client: the real app (`create_app`, or the Django project's settings applied with
pytest-django's `settings` fixture), the real SDK recording over HTTP into the local
Freeplay server, and a real server (uvicorn, or a threaded WSGI server) where streaming
over a socket matters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client as DjangoClient
from flask.testing import FlaskClient
from freeplay import Freeplay
from starlette.testclient import TestClient

from example_apps.common.chat import (
    ANSWER_TEMPLATE,
    FEEDBACK_KEY,
    MAX_MESSAGE_CHARS,
    PROMPT_ENVIRONMENT,
    REWRITE_PROMPT,
    REWRITE_TEMPLATE,
)
from example_apps.common.llm import LocalResponder, Responder
from example_apps.django_chat import settings as project
from example_apps.fastapi_chat.app import create_app as create_fastapi_app
from example_apps.flask_chat.app import create_app as create_flask_app
from example_apps.testing import (
    FailingResponder,
    GatedResponder,
    local_freeplay,
    parse_sse,
    recorded_turns,
    serve_wsgi,
)
from freeplay_integrations import current_session, current_trace
from freeplay_integrations._recording import recorder_for
from freeplay_integrations.local import LocalFreeplay
from tests._servers import serve_asgi

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings as SettingsWrapper

HEADER = "x-freeplay-session-id"
COOKIE = "freeplay_session_id"
JSON = "application/json"


@pytest.fixture
def freeplay_local() -> Iterator[LocalFreeplay]:
    """The local Freeplay with the chat's prompt templates (the chat fetches its prompts)."""
    with local_freeplay() as server:
        yield server


class ChatApp(ABC):
    """One framework's example app, recording into `server`, and a driver of its client.

    `client()` builds the app and yields a driver (the app itself, through the framework's
    test client); `serve()` serves the app on a real socket and yields its URL. The
    driver's methods are the only places the frameworks' test clients differ.
    """

    framework: ClassVar[str]  # the `framework` the app records in its sessions' metadata

    def __init__(self, server: LocalFreeplay) -> None:
        self.server = server

    @abstractmethod
    def client(
        self, responder: Responder | None = None, freeplay: Freeplay | None = None
    ) -> AbstractContextManager[ChatApp]: ...

    @abstractmethod
    def serve(self, responder: Responder) -> AbstractContextManager[str]: ...

    @abstractmethod
    def get(self, path: str) -> Any: ...

    @abstractmethod
    def post(self, path: str) -> Any:
        """POST with no body."""

    @abstractmethod
    def post_json(self, path: str, body: object) -> Any: ...

    @abstractmethod
    def post_bytes(self, path: str, data: bytes) -> Any: ...

    @abstractmethod
    def json(self, response: Any) -> Any: ...

    @abstractmethod
    def text(self, response: Any) -> str: ...

    @abstractmethod
    def body(self, response: Any) -> bytes:
        """The whole body, a streamed one included."""

    @abstractmethod
    def cookie(self) -> str | None:
        """The session cookie the client holds."""


class FastAPIChat(ChatApp):
    framework = "FastAPI"
    test_client: TestClient

    @contextmanager
    def client(
        self, responder: Responder | None = None, freeplay: Freeplay | None = None
    ) -> Iterator[ChatApp]:
        app = create_fastapi_app(
            client=freeplay or self.server.client(),
            project_id=self.server.project_id,
            responder=responder or LocalResponder(delay=0),
            freeplay_ui=self.server.url,
        )
        with TestClient(app) as self.test_client:
            yield self

    @contextmanager
    def serve(self, responder: Responder) -> Iterator[str]:
        app = create_fastapi_app(
            client=self.server.client(), project_id=self.server.project_id, responder=responder
        )
        with serve_asgi(app) as url:
            yield url

    def get(self, path: str) -> Any:
        return self.test_client.get(path)

    def post(self, path: str) -> Any:
        return self.test_client.post(path)

    def post_json(self, path: str, body: object) -> Any:
        return self.test_client.post(path, json=body)

    def post_bytes(self, path: str, data: bytes) -> Any:
        return self.test_client.post(path, content=data)

    def json(self, response: Any) -> Any:
        return response.json()

    def text(self, response: Any) -> str:
        return str(response.text)

    def body(self, response: Any) -> bytes:
        return bytes(response.content)

    def cookie(self) -> str | None:
        return self.test_client.cookies[COOKIE]


class FlaskChat(ChatApp):
    framework = "Flask"
    test_client: FlaskClient

    @contextmanager
    def client(
        self, responder: Responder | None = None, freeplay: Freeplay | None = None
    ) -> Iterator[ChatApp]:
        app = create_flask_app(
            client=freeplay or self.server.client(),
            project_id=self.server.project_id,
            responder=responder or LocalResponder(delay=0),
            freeplay_ui=self.server.url,
        )
        self.test_client = app.test_client()
        yield self

    @contextmanager
    def serve(self, responder: Responder) -> Iterator[str]:
        app = create_flask_app(
            client=self.server.client(), project_id=self.server.project_id, responder=responder
        )
        with serve_wsgi(app) as url:
            yield url

    def get(self, path: str) -> Any:
        return self.test_client.get(path)

    def post(self, path: str) -> Any:
        return self.test_client.post(path)

    def post_json(self, path: str, body: object) -> Any:
        return self.test_client.post(path, json=body)

    def post_bytes(self, path: str, data: bytes) -> Any:
        return self.test_client.post(path, data=data)

    def json(self, response: Any) -> Any:
        return response.json

    def text(self, response: Any) -> str:
        return str(response.get_data(as_text=True))

    def body(self, response: Any) -> bytes:
        return bytes(response.get_data())

    def cookie(self) -> str | None:
        found = self.test_client.get_cookie(COOKIE)
        return None if found is None else found.value


class DjangoChat(ChatApp):
    framework = "Django"
    test_client: DjangoClient

    def __init__(self, server: LocalFreeplay, settings: SettingsWrapper) -> None:
        super().__init__(server)
        self.settings = settings

    def configure(
        self, responder: Responder | None = None, freeplay: Freeplay | None = None
    ) -> None:
        """The example project's settings, recording into the server: a fresh chat per test."""
        settings = self.settings
        settings.MIDDLEWARE = project.MIDDLEWARE
        settings.INSTALLED_APPS = project.INSTALLED_APPS
        settings.ROOT_URLCONF = project.ROOT_URLCONF
        settings.FREEPLAY = {
            **project.FREEPLAY,
            "CLIENT": freeplay or self.server.client(),
            "PROJECT_ID": self.server.project_id,
        }
        settings.CHAT = {
            "RESPONDER": responder or LocalResponder(delay=0),
            "FREEPLAY_UI": self.server.url,
        }

    @contextmanager
    def client(
        self, responder: Responder | None = None, freeplay: Freeplay | None = None
    ) -> Iterator[ChatApp]:
        self.configure(responder, freeplay)
        self.test_client = DjangoClient()
        yield self

    @contextmanager
    def serve(self, responder: Responder) -> Iterator[str]:
        self.configure(responder)
        with serve_wsgi(WSGIHandler()) as url:
            yield url

    def get(self, path: str) -> Any:
        return self.test_client.get(path)

    def post(self, path: str) -> Any:
        return self.test_client.post(path)

    def post_json(self, path: str, body: object) -> Any:
        return self.test_client.post(path, content_type=JSON, data=body)

    def post_bytes(self, path: str, data: bytes) -> Any:
        return self.test_client.post(path, data, content_type=JSON)

    def json(self, response: Any) -> Any:
        return response.json()

    def text(self, response: Any) -> str:
        return str(response.content.decode())

    def body(self, response: Any) -> bytes:
        if response.streaming:
            return b"".join(response.streaming_content)
        return bytes(response.content)

    def cookie(self) -> str | None:
        found = self.test_client.cookies.get(COOKIE)
        return None if found is None else found.value


@pytest.fixture(params=["fastapi", "flask", "django"])
def app(request: pytest.FixtureRequest, freeplay_local: LocalFreeplay) -> ChatApp:
    """The example app of each framework in turn, not yet built."""
    if request.param == "fastapi":
        return FastAPIChat(freeplay_local)
    if request.param == "flask":
        return FlaskChat(freeplay_local)
    return DjangoChat(freeplay_local, request.getfixturevalue("settings"))


@pytest.fixture
def client(app: ChatApp, freeplay_local: LocalFreeplay) -> Iterator[ChatApp]:
    freeplay = freeplay_local.client()
    with app.client(freeplay=freeplay) as driver:
        yield driver
    # Everything this app recorded is delivered before the server stops.
    assert recorder_for(freeplay).flush(10), "recordings were left undelivered"
    assert current_session() is None and current_trace() is None


def say(client: ChatApp, message: str) -> tuple[str, list[str], dict[str, object]]:
    """Send a message; return the session header, the streamed tokens and the done event."""
    response = client.post_json("/api/chat", {"message": message})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(client.body(response))
    names = [e.name for e in events]
    assert names[0] == "rewrite" and names[-1] == "done"
    assert set(names[1:-1]) == {"token"}
    tokens = [str(e.data["text"]) for e in events[1:-1]]
    return response.headers[HEADER], tokens, dict(events[-1].data)


def test_page_assets_and_health(client: ChatApp) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/chat.js"' in client.text(page)
    assert page.headers[HEADER]  # the page already starts the conversation's session
    script = client.get("/static/chat.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/api/chat" in client.text(script)
    assert HEADER not in script.headers  # static files are excluded paths
    assert client.get("/static/secrets.py").status_code == 404
    assert '<link rel="icon" href="/static/favicon.svg"' in client.text(page)
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert client.json(client.get("/healthz")) == {"status": "ok"}
    assert current_session() is None


def test_answer_streams_as_server_sent_events(client: ChatApp) -> None:
    session_id, tokens, done = say(client, "What is Freeplay?")
    expected = LocalResponder(delay=0).reply([{"role": "user", "content": "What is Freeplay?"}])
    assert len(tokens) > 5
    assert "".join(tokens) == expected == done["answer"]
    assert done["session_id"] == session_id
    assert current_session() is None


def test_both_prompts_come_from_templates_and_are_recorded_with_them(
    client: ChatApp, freeplay_local: LocalFreeplay
) -> None:
    session_id, _, _ = say(client, "What is Freeplay?")
    freeplay_local.wait_for(lambda: len(freeplay_local.completions(session_id)) == 2)

    # Both are delivered concurrently, so they may arrive in either order.
    by_template = {
        c["prompt_info"]["template_name"]: c for c in freeplay_local.completions(session_id)
    }
    assert sorted(by_template) == sorted([REWRITE_TEMPLATE, ANSWER_TEMPLATE])
    rewrite, answer = by_template[REWRITE_TEMPLATE], by_template[ANSWER_TEMPLATE]
    for completion in (rewrite, answer):
        assert completion["prompt_info"]["environment"] == PROMPT_ENVIRONMENT
    assert rewrite["messages"][0] == {"role": "system", "content": REWRITE_PROMPT}
    assert freeplay_local.requests_received()[0].path.endswith(
        f"/prompt-templates/name/{REWRITE_TEMPLATE}"
    )


def test_a_conversation_is_one_session_with_a_trace_per_turn(
    client: ChatApp, freeplay_local: LocalFreeplay
) -> None:
    first_id, _, first = say(client, "What is Freeplay?")
    second_id, _, second = say(client, "And sessions?")
    assert first_id == second_id == client.cookie()

    turns = recorded_turns(freeplay_local, first_id, 2)
    [session] = freeplay_local.sessions()
    assert session["id"] == first_id
    assert session["custom_metadata"] == {"app": "example-chat", "framework": client.framework}
    assert [t.trace["id"] for t in turns] == [first["trace_id"], second["trace_id"]]
    assert [t.answer["id"] for t in turns] == [first["completion_id"], second["completion_id"]]
    assert turns[0].trace["input"] == "What is Freeplay?"
    # The second turn's rewrite saw the first turn, and its answer answers the rewrite.
    rewritten = "And sessions? (following up on: What is Freeplay?)"
    assert turns[1].rewrite["messages"][-1]["content"] == rewritten
    assert turns[1].answer["messages"][-2] == {"role": "user", "content": rewritten}
    assert turns[1].answer["model"] == LocalResponder.model
    assert turns[1].answer["provider"] == "local"

    history = client.json(client.get("/api/conversation"))
    assert history["session_id"] == first_id
    assert history["freeplay_url"] == f"{freeplay_local.url}/sessions/{first_id}"
    assert [t["message"] for t in history["turns"]] == ["What is Freeplay?", "And sessions?"]
    assert current_session() is None


def test_new_conversation_starts_a_new_session(
    client: ChatApp, freeplay_local: LocalFreeplay
) -> None:
    old_id, _, _ = say(client, "Hello")
    new = client.post("/api/new")
    assert new.status_code == 200
    new_id = client.json(new)["session_id"]
    assert new_id != old_id
    assert new.headers[HEADER] == new_id == client.cookie()
    assert client.json(client.get("/api/conversation"))["turns"] == []

    third_id, _, _ = say(client, "Hello again")
    assert third_id == new_id
    assert len(recorded_turns(freeplay_local, old_id, 1)) == 1
    assert len(recorded_turns(freeplay_local, new_id, 1)) == 1
    assert {s["id"] for s in freeplay_local.sessions()} == {old_id, new_id}
    assert current_session() is None


def test_thumbs_send_customer_feedback(client: ChatApp, freeplay_local: LocalFreeplay) -> None:
    _, _, done = say(client, "Rate me")
    completion_id = str(done["completion_id"])
    response = client.post_json("/api/feedback", {"completion_id": completion_id, "vote": "down"})
    assert response.status_code == 200
    freeplay_local.wait_for(lambda: freeplay_local.feedback(completion_id))
    assert freeplay_local.feedback(completion_id) == {FEEDBACK_KEY: "negative"}

    bad_vote = client.post_json("/api/feedback", {"completion_id": completion_id, "vote": "meh"})
    assert bad_vote.status_code == 400
    client.post("/api/new")
    # A completion of another conversation is not this one's to rate.
    other = client.post_json("/api/feedback", {"completion_id": completion_id, "vote": "up"})
    assert other.status_code == 404
    assert freeplay_local.feedback(completion_id) == {FEEDBACK_KEY: "negative"}
    assert current_session() is None


def test_the_conversation_keeps_rewrites_and_votes_for_a_reload(client: ChatApp) -> None:
    say(client, "What is Freeplay?")
    _, _, second = say(client, "And sessions?")
    client.post_json("/api/feedback", {"completion_id": second["completion_id"], "vote": "up"})
    client.post_json("/api/feedback", {"completion_id": second["completion_id"], "vote": "down"})

    turns = client.json(client.get("/api/conversation"))["turns"]

    assert [t["question"] for t in turns] == [
        "What is Freeplay?",
        "And sessions? (following up on: What is Freeplay?)",
    ]
    assert [t["vote"] for t in turns] == [None, "down"]  # the last vote given
    assert current_session() is None


@pytest.mark.parametrize(
    "body",
    [
        {"message": ""},
        {"message": "  "},
        {"text": "hi"},
        ["hi"],
        {"message": "x" * (MAX_MESSAGE_CHARS + 1)},
    ],
)
def test_bad_messages_are_answered_400(
    client: ChatApp, freeplay_local: LocalFreeplay, body: object
) -> None:
    response = client.post_json("/api/chat", body)
    assert response.status_code == 400
    assert client.json(response)["error"]
    assert client.post_bytes("/api/chat", b"not json").status_code == 400
    assert freeplay_local.request_count == 0
    assert current_session() is None


def test_a_failing_model_call_ends_the_turn_with_an_error(
    app: ChatApp, freeplay_local: LocalFreeplay
) -> None:
    with app.client(FailingResponder(after=2)) as client:
        response = client.post_json("/api/chat", {"message": "Hello"})
    events = parse_sse(client.body(response))
    assert [e.name for e in events] == ["rewrite", "token", "token", "error"]
    assert FailingResponder.MESSAGE in str(events[-1].data["message"])
    session_id = response.headers[HEADER]
    [trace] = freeplay_local.wait_for(lambda: freeplay_local.traces(session_id))
    assert "error" in trace["output"]
    assert current_session() is None


def test_tokens_reach_the_browser_before_the_answer_is_finished(
    app: ChatApp, freeplay_local: LocalFreeplay
) -> None:
    responder = GatedResponder()
    with app.serve(responder) as url, httpx.Client(base_url=url, timeout=10) as http:
        with http.stream("POST", "/api/chat", json={"message": "Stream?"}) as response:
            lines = response.iter_lines()
            seen: list[str] = []
            while not any('"text"' in line for line in seen):
                seen.append(next(lines))  # the first token, while the model is held
            responder.gate.set()
            rest = "\n".join(lines)
        assert "event: done" in rest
        recorded_turns(freeplay_local, response.headers[HEADER], 1)
    assert current_session() is None
