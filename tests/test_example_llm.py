"""The example apps' LLM interface: the local responder, and the OpenAI and Anthropic ones
through their official SDKs, against small local servers speaking each provider's
streaming protocol (no network, no key), and the choice made from the environment.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from example_apps.common.chat import ANSWER_PROMPT, REWRITE_PROMPT
from example_apps.common.llm import (
    AnthropicResponder,
    LocalResponder,
    Message,
    OpenAIResponder,
    responder_from_env,
)
from example_apps.fastapi_chat.app import create_app
from example_apps.testing import local_freeplay, parse_sse, recorded_turns
from freeplay_integrations import current_session
from freeplay_integrations.local import LocalFreeplay
from tests._servers import serve_asgi

QUESTION: list[Message] = [
    {"role": "system", "content": ANSWER_PROMPT},
    {"role": "user", "content": "What is a session?"},
]
PIECES = ["A session ", "is one ", "conversation."]


@pytest.fixture
def freeplay_local() -> Iterator[LocalFreeplay]:
    """The local Freeplay with the chat's prompt templates (the chat fetches its prompts)."""
    with local_freeplay() as server:
        yield server


class FakeProvider:
    """OpenAI's and Anthropic's streaming endpoints, answering `PIECES`; keeps each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.openai, methods=["POST"]),
                Route("/v1/messages", self.anthropic, methods=["POST"]),
            ]
        )

    async def _keep(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.requests.append((dict(request.headers), body))
        return body

    async def openai(self, request: Request) -> StreamingResponse:
        body = await self._keep(request)

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            data = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for piece in PIECES:
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def anthropic(self, request: Request) -> StreamingResponse:
        body = await self._keep(request)

        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

        async def events() -> AsyncIterator[str]:
            message = {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": body["model"],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 1},
            }
            yield event("message_start", {"message": message})
            block = {"type": "text", "text": ""}
            yield event("content_block_start", {"index": 0, "content_block": block})
            for piece in PIECES:
                delta = {"type": "text_delta", "text": piece}
                yield event("content_block_delta", {"index": 0, "delta": delta})
            yield event("content_block_stop", {"index": 0})
            stop = {"stop_reason": "end_turn", "stop_sequence": None}
            yield event("message_delta", {"delta": stop, "usage": {"output_tokens": 3}})
            yield event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def provider() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider()
    with serve_asgi(fake.app, lifespan="off") as url:
        yield fake, url


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in stream]


def test_local_responder_is_deterministic_and_streams_words() -> None:
    responder = LocalResponder(delay=0)
    reply = responder.reply(QUESTION)
    assert reply == LocalResponder(delay=0).reply(QUESTION)
    assert reply.startswith('You asked: "What is a session?". This is turn 1')
    tokens = list(responder.stream(QUESTION))
    assert len(tokens) > 5 and "".join(tokens) == reply


def test_local_responder_rewrites_follow_ups_with_the_first_question() -> None:
    responder = LocalResponder(delay=0)
    first = [{"role": "system", "content": REWRITE_PROMPT}, {"role": "user", "content": "Hi?"}]
    assert responder.reply(first) == "Hi?"
    follow_up = [
        *first,
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Why?"},
    ]
    assert responder.reply(follow_up) == "Why? (following up on: Hi?)"


@pytest.mark.anyio
async def test_local_responder_streams_the_same_reply_async() -> None:
    responder = LocalResponder(delay=0.001)
    assert await collect(responder.astream(QUESTION)) == list(responder.stream(QUESTION))


def test_local_responder_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError, match="delay must be >= 0"):
        LocalResponder(delay=-1)


def test_openai_responder_streams_through_the_sdk(provider: tuple[FakeProvider, str]) -> None:
    fake, url = provider
    responder = OpenAIResponder(api_key="sk-test", base_url=f"{url}/v1", model="gpt-test")
    assert list(responder.stream(QUESTION)) == PIECES
    [(headers, body)] = fake.requests
    assert headers["authorization"] == "Bearer sk-test"
    assert body["model"] == "gpt-test" and body["stream"] is True
    assert body["messages"] == QUESTION


@pytest.mark.anyio
async def test_openai_responder_streams_async(provider: tuple[FakeProvider, str]) -> None:
    fake, url = provider
    responder = OpenAIResponder(api_key="sk-test", base_url=f"{url}/v1")
    assert await collect(responder.astream(QUESTION)) == PIECES
    assert fake.requests[0][1]["model"] == "gpt-4o-mini"


def test_anthropic_responder_sends_the_system_prompt_apart(
    provider: tuple[FakeProvider, str],
) -> None:
    fake, url = provider
    responder = AnthropicResponder(api_key="ak-test", base_url=url, model="claude-test")
    assert list(responder.stream(QUESTION)) == PIECES
    [(headers, body)] = fake.requests
    # The key travels as x-api-key (SDK 0.x) or as a bearer token (SDK 2.x).
    sent_key = headers.get("x-api-key") or headers["authorization"].removeprefix("Bearer ")
    assert sent_key == "ak-test"
    assert body["model"] == "claude-test" and body["stream"] is True
    assert body["system"] == ANSWER_PROMPT
    assert body["messages"] == [{"role": "user", "content": "What is a session?"}]


@pytest.mark.anyio
async def test_anthropic_responder_streams_async(provider: tuple[FakeProvider, str]) -> None:
    _, url = provider
    responder = AnthropicResponder(api_key="ak-test", base_url=url)
    assert await collect(responder.astream(QUESTION)) == PIECES


def test_the_environment_chooses_the_responder(provider: tuple[FakeProvider, str]) -> None:
    _, url = provider
    assert isinstance(responder_from_env({}), LocalResponder)
    assert responder_from_env({"DEMO_TOKEN_DELAY": "0"}).delay == 0  # type: ignore[attr-defined]
    openai = responder_from_env({"OPENAI_API_KEY": "sk", "OPENAI_BASE_URL": f"{url}/v1"})
    assert isinstance(openai, OpenAIResponder) and openai.model == "gpt-4o-mini"
    anthropic = responder_from_env({"ANTHROPIC_API_KEY": "ak", "ANTHROPIC_MODEL": "claude-x"})
    assert isinstance(anthropic, AnthropicResponder) and anthropic.model == "claude-x"
    both = {"OPENAI_API_KEY": "sk", "ANTHROPIC_API_KEY": "ak"}
    assert isinstance(responder_from_env(both), OpenAIResponder)
    assert isinstance(responder_from_env({**both, "DEMO_RESPONDER": "local"}), LocalResponder)
    with pytest.raises(ValueError, match="use local, openai or anthropic"):
        responder_from_env({"DEMO_RESPONDER": "gpt"})


def test_a_missing_provider_sdk_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "openai", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"pip install -r example_apps/requirements\.txt"):
        responder_from_env({"OPENAI_API_KEY": "sk"})


def test_the_chat_app_records_the_provider_and_model(
    provider: tuple[FakeProvider, str], freeplay_local: LocalFreeplay
) -> None:
    _, url = provider
    responder = OpenAIResponder(api_key="sk-test", base_url=f"{url}/v1", model="gpt-test")
    app = create_app(
        client=freeplay_local.client(), project_id=freeplay_local.project_id, responder=responder
    )
    with TestClient(app) as client:
        response = client.post("/api/chat", json={"message": "What is a session?"})
    events = parse_sse(response.content)
    assert [e.data["text"] for e in events if e.name == "token"] == PIECES
    [turn] = recorded_turns(freeplay_local, response.headers["x-freeplay-session-id"], 1)
    assert (turn.answer["provider"], turn.answer["model"]) == ("openai", "gpt-test")
    assert turn.trace["output"] == "".join(PIECES)
    assert current_session() is None
