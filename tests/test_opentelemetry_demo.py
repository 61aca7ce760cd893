"""The pieces of `make demo RECORDING=otel` on their own: the local OpenAI-compatible server
(through the real OpenAI SDK and raw HTTP), the choice of recording, and the chat's
refusal of a responder whose calls OpenInference would not record.

The whole mode, OpenInference and the OTLP export included, runs in child processes
(`tests/test_example_demo.py`, `tests/test_demo_browser.py`): instrumenting the OpenAI SDK
patches it for the whole process, which these tests leave alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from example_apps.common.chat import ANSWER_PROMPT, Chat
from example_apps.common.llm import LocalResponder, Message, OpenAIResponder
from example_apps.common.openai_local import MODEL, make_server
from example_apps.common.otel import recording_from_env

QUESTION: list[Message] = [
    {"role": "system", "content": ANSWER_PROMPT},
    {"role": "user", "content": "What is a span?"},
]


@pytest.fixture
def openai_local() -> Iterator[str]:
    """The local OpenAI-compatible server on a free loopback port; its `/v1` URL."""
    server = make_server("127.0.0.1", 0, LocalResponder(delay=0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_openai_sdk_streams_the_local_responders_answer(openai_local: str) -> None:
    responder = OpenAIResponder(api_key="k", base_url=openai_local, model=MODEL)
    expected = LocalResponder(delay=0).reply(QUESTION)
    assert "".join(responder.stream(QUESTION)) == expected
    assert len(list(responder.stream(QUESTION))) == len(LocalResponder.tokens(expected))


def test_streamed_usage_and_a_plain_answer_over_http(openai_local: str) -> None:
    expected = LocalResponder(delay=0).reply(QUESTION)
    request = {"model": MODEL, "messages": QUESTION, "stream": True}
    with_usage = {**request, "stream_options": {"include_usage": True}}
    body = httpx.post(f"{openai_local}/chat/completions", json=with_usage, timeout=10).text
    assert body.endswith("data: [DONE]\n\n")
    chunks = [json.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == expected
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == len(LocalResponder.tokens(expected))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    without = httpx.post(f"{openai_local}/chat/completions", json=request, timeout=10).text
    assert '"usage"' not in without

    plain = httpx.post(f"{openai_local}/chat/completions", json={**request, "stream": False})
    assert plain.json()["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert plain.json()["usage"] == usage
    assert httpx.get(f"{openai_local}/models", timeout=10).json()["data"][0]["id"] == MODEL
    bad = httpx.post(f"{openai_local}/chat/completions", content=b"{", timeout=10)
    assert bad.status_code == 400
    assert httpx.post(f"{openai_local}/other", json={}, timeout=10).status_code == 404


def test_recording_is_record_unless_otel_is_asked() -> None:
    assert recording_from_env({}) == "record"
    assert recording_from_env({"DEMO_RECORDING": " OTel "}) == "otel"
    with pytest.raises(ValueError, match="use record"):
        recording_from_env({"DEMO_RECORDING": "spans"})


def test_otel_recording_needs_the_openai_responder() -> None:
    # OpenInference records the OpenAI SDK's calls: another responder would record nothing.
    with pytest.raises(ValueError, match="DEMO_RESPONDER=openai"):
        Chat(LocalResponder(delay=0), recording="otel")
    assert Chat(LocalResponder(delay=0), recording="record").recording == "record"
