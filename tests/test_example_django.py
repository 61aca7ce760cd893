"""The Django example chat project: routes, streaming, and what it records on Freeplay.

The project's own settings (middleware, `FREEPLAY`, URLs) applied with pytest-django's
`settings` fixture and pointed at the local Freeplay server, the real SDK recording over
HTTP, Django's test client, and a real threaded WSGI server where streaming over a socket
matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from freeplay import Freeplay

from example_apps.common.chat import FEEDBACK_KEY, MAX_MESSAGE_CHARS
from example_apps.common.llm import LocalResponder, Responder
from example_apps.django_chat import settings as project
from example_apps.testing import (
    FailingResponder,
    GatedResponder,
    parse_sse,
    recorded_turns,
    serve_wsgi,
)
from freeplay_integrations import current_session, current_trace
from freeplay_integrations._recording import recorder_for
from freeplay_integrations.local import LocalFreeplay

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings as SettingsWrapper

HEADER = "x-freeplay-session-id"
JSON = "application/json"
COOKIE = "freeplay_session_id"


def configure(
    settings: SettingsWrapper,
    server: LocalFreeplay,
    responder: Responder | None = None,
    freeplay: Freeplay | None = None,
) -> None:
    """The example project's settings, recording into `server`: a fresh chat per test."""
    settings.MIDDLEWARE = project.MIDDLEWARE
    settings.INSTALLED_APPS = project.INSTALLED_APPS
    settings.ROOT_URLCONF = project.ROOT_URLCONF
    settings.FREEPLAY = {
        **project.FREEPLAY,
        "CLIENT": freeplay or server.client(),
        "PROJECT_ID": server.project_id,
    }
    settings.CHAT = {
        "RESPONDER": responder or LocalResponder(delay=0),
        "FREEPLAY_UI": server.url,
    }


def make_client(
    settings: SettingsWrapper,
    server: LocalFreeplay,
    responder: Responder | None = None,
    freeplay: Freeplay | None = None,
) -> Client:
    configure(settings, server, responder, freeplay)
    return Client()


@pytest.fixture
def client(settings: SettingsWrapper, freeplay_local: LocalFreeplay) -> Iterator[Client]:
    freeplay = freeplay_local.client()
    yield make_client(settings, freeplay_local, freeplay=freeplay)
    # Everything this app recorded is delivered before the server stops.
    assert recorder_for(freeplay).flush(10), "recordings were left undelivered"
    assert current_session() is None and current_trace() is None


def cookie(client: Client) -> str | None:
    found = client.cookies.get(COOKIE)
    return None if found is None else found.value


def body(response: Any) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return bytes(response.content)


def say(client: Client, message: str) -> tuple[str, list[str], dict[str, object]]:
    """Send a message; return the session header, the streamed tokens and the done event."""
    response = client.post("/api/chat", content_type=JSON, data={"message": message})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(body(response))
    names = [e.name for e in events]
    assert names[0] == "rewrite" and names[-1] == "done"
    assert set(names[1:-1]) == {"token"}
    tokens = [str(e.data["text"]) for e in events[1:-1]]
    return response.headers[HEADER], tokens, dict(events[-1].data)


def test_page_assets_and_health(client: Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/chat.js"' in page.content.decode()
    assert page.headers[HEADER]  # the page already starts the conversation's session
    script = client.get("/static/chat.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/api/chat" in script.content.decode()
    assert HEADER not in script.headers  # static files are excluded paths
    assert client.get("/static/secrets.py").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    assert current_session() is None


def test_answer_streams_as_server_sent_events(client: Client) -> None:
    session_id, tokens, done = say(client, "What is Freeplay?")
    expected = LocalResponder(delay=0).reply([{"role": "user", "content": "What is Freeplay?"}])
    assert len(tokens) > 5
    assert "".join(tokens) == expected == done["answer"]
    assert done["session_id"] == session_id
    assert current_session() is None


def test_a_conversation_is_one_session_with_a_trace_per_turn(
    client: Client, freeplay_local: LocalFreeplay
) -> None:
    first_id, _, first = say(client, "What is Freeplay?")
    second_id, _, second = say(client, "And sessions?")
    assert first_id == second_id == cookie(client)

    turns = recorded_turns(freeplay_local, first_id, 2)
    [session] = freeplay_local.sessions()
    assert session["id"] == first_id
    assert session["custom_metadata"] == {"app": "example-chat", "framework": "Django"}
    assert [t.trace["id"] for t in turns] == [first["trace_id"], second["trace_id"]]
    assert [t.answer["id"] for t in turns] == [first["completion_id"], second["completion_id"]]
    assert turns[0].trace["input"] == "What is Freeplay?"
    # The second turn's rewrite saw the first turn, and its answer answers the rewrite.
    rewritten = "And sessions? (following up on: What is Freeplay?)"
    assert turns[1].rewrite["messages"][-1]["content"] == rewritten
    assert turns[1].answer["messages"][-2] == {"role": "user", "content": rewritten}
    assert turns[1].answer["model"] == LocalResponder.model
    assert turns[1].answer["provider"] == "local"

    history = client.get("/api/conversation").json()
    assert history["session_id"] == first_id
    assert history["freeplay_url"] == f"{freeplay_local.url}/sessions/{first_id}"
    assert [t["message"] for t in history["turns"]] == ["What is Freeplay?", "And sessions?"]
    assert current_session() is None


def test_new_conversation_starts_a_new_session(
    client: Client, freeplay_local: LocalFreeplay
) -> None:
    old_id, _, _ = say(client, "Hello")
    new = client.post("/api/new")
    assert new.status_code == 200
    new_id = new.json()["session_id"]
    assert new_id != old_id
    assert new.headers[HEADER] == new_id == cookie(client)
    assert client.get("/api/conversation").json()["turns"] == []

    third_id, _, _ = say(client, "Hello again")
    assert third_id == new_id
    assert len(recorded_turns(freeplay_local, old_id, 1)) == 1
    assert len(recorded_turns(freeplay_local, new_id, 1)) == 1
    assert {s["id"] for s in freeplay_local.sessions()} == {old_id, new_id}
    assert current_session() is None


def vote(client: Client, completion_id: str, choice: str) -> Any:
    payload = {"completion_id": completion_id, "vote": choice}
    return client.post("/api/feedback", payload, content_type=JSON)


def test_thumbs_send_customer_feedback(client: Client, freeplay_local: LocalFreeplay) -> None:
    _, _, done = say(client, "Rate me")
    completion_id = str(done["completion_id"])
    response = client.post(
        "/api/feedback", content_type=JSON, data={"completion_id": completion_id, "vote": "down"}
    )
    assert response.status_code == 200
    freeplay_local.wait_for(lambda: freeplay_local.feedback(completion_id))
    assert freeplay_local.feedback(completion_id) == {FEEDBACK_KEY: "negative"}

    bad_vote = client.post(
        "/api/feedback", content_type=JSON, data={"completion_id": completion_id, "vote": "meh"}
    )
    assert bad_vote.status_code == 400
    client.post("/api/new")
    # A completion of another conversation is not this one's to rate.
    other = client.post(
        "/api/feedback", content_type=JSON, data={"completion_id": completion_id, "vote": "up"}
    )
    assert other.status_code == 404
    assert freeplay_local.feedback(completion_id) == {FEEDBACK_KEY: "negative"}
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
    client: Client, freeplay_local: LocalFreeplay, body: object
) -> None:
    response = client.post("/api/chat", content_type=JSON, data=body)
    assert response.status_code == 400
    assert response.json()["error"]
    assert client.post("/api/chat", b"not json", content_type=JSON).status_code == 400
    assert freeplay_local.request_count == 0
    assert current_session() is None


def test_a_failing_model_call_ends_the_turn_with_an_error(
    settings: SettingsWrapper, freeplay_local: LocalFreeplay
) -> None:
    client = make_client(settings, freeplay_local, FailingResponder(after=2))
    response = client.post("/api/chat", content_type=JSON, data={"message": "Hello"})
    events = parse_sse(body(response))
    assert [e.name for e in events] == ["rewrite", "token", "token", "error"]
    assert FailingResponder.MESSAGE in str(events[-1].data["message"])
    session_id = response.headers[HEADER]
    [trace] = freeplay_local.wait_for(lambda: freeplay_local.traces(session_id))
    assert "error" in trace["output"]
    assert current_session() is None


def test_tokens_reach_the_browser_before_the_answer_is_finished(
    settings: SettingsWrapper, freeplay_local: LocalFreeplay
) -> None:
    responder = GatedResponder()
    configure(settings, freeplay_local, responder)
    with serve_wsgi(WSGIHandler()) as url, httpx.Client(base_url=url, timeout=10) as http:
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
