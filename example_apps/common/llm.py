"""The LLM behind the example chat apps: one small interface, three implementations.

- `OpenAIResponder` (when `OPENAI_API_KEY` is set) and `AnthropicResponder` (when
  `ANTHROPIC_API_KEY` is set) call the provider through its official SDK, streaming.
- `LocalResponder` (neither key set) answers deterministically, without any network, so
  the demo and the tests work offline and always give the same answer to the same input.

`responder_from_env()` picks one. `DEMO_RESPONDER=local|openai|anthropic` forces a choice.
The provider SDKs are imported only when their responder is built: they are example-only
requirements (`example_apps/requirements.txt`), not the package's.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_ANTHROPIC_MODEL",
    "DEFAULT_OPENAI_MODEL",
    "ENV_RESPONDER",
    "ENV_TOKEN_DELAY",
    "REWRITE_MARKER",
    "AnthropicResponder",
    "LocalResponder",
    "Message",
    "OpenAIResponder",
    "Responder",
    "responder_from_env",
]

#: A chat message as both SDKs and Freeplay take it: `{"role": ..., "content": ...}`.
Message = Mapping[str, str]

#: Environment variable forcing a responder: `local`, `openai` or `anthropic`.
ENV_RESPONDER = "DEMO_RESPONDER"
#: Environment variable: seconds the local responder waits between tokens (default 0.03),
#: so that streaming is visible in the demo. Tests use 0.
ENV_TOKEN_DELAY = "DEMO_TOKEN_DELAY"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
DEFAULT_ANTHROPIC_MODEL = "claude-haiku-4-5"
#: A system prompt containing this asks for a rewrite rather than an answer (the local
#: responder's only cue: it does not understand language).
REWRITE_MARKER = "standalone question"

_TOKEN = re.compile(r"\s*\S+")


class Responder(ABC):
    """Streams the assistant's reply to a list of chat messages, token by token."""

    #: Freeplay's `CallInfo.provider` for the recordings, e.g. `"openai"`.
    provider: str
    #: The model asked, e.g. `"gpt-4o-mini"`.
    model: str

    @abstractmethod
    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        """The reply's text in pieces (sync apps: Flask, Django)."""

    @abstractmethod
    def astream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        """The reply's text in pieces (async apps: FastAPI)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.provider}/{self.model}>"


class LocalResponder(Responder):
    """A deterministic stand-in for an LLM: no network, the same reply to the same input.

    With a system prompt asking for a standalone question (it contains `REWRITE_MARKER`)
    it returns the last user message, joined to the conversation's first question when
    there were earlier turns. Otherwise it answers with a sentence that quotes the
    question and counts the turns, so a reader sees the chain at work.
    """

    provider = "local"
    model = "local-echo-1"

    def __init__(self, *, delay: float | None = None) -> None:
        if delay is None:
            delay = float(os.environ.get(ENV_TOKEN_DELAY, "0.03"))
        if delay < 0:
            raise ValueError(f"LocalResponder delay must be >= 0 seconds, not {delay}")
        self.delay = delay

    def reply(self, messages: Sequence[Message]) -> str:
        """The whole reply to `messages`."""
        system = " ".join(m["content"] for m in messages if m["role"] == "system")
        users = [m["content"].strip() for m in messages if m["role"] == "user"]
        if not users:
            return "Say something and I will answer."
        question = users[-1]
        if REWRITE_MARKER in system:
            if len(users) > 1:
                return f"{question} (following up on: {users[0]})"
            return question
        turn = len(users)
        return (
            f'You asked: "{question}". This is turn {turn} of our conversation. '
            "I am the local responder: no LLM was called and nothing left this machine. "
            "Set OPENAI_API_KEY or ANTHROPIC_API_KEY to talk to a real model."
        )

    @staticmethod
    def tokens(text: str) -> list[str]:
        """`text` cut into word tokens, each with the whitespace before it."""
        return _TOKEN.findall(text)

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        for index, token in enumerate(self.tokens(self.reply(messages))):
            if index and self.delay:
                time.sleep(self.delay)
            yield token

    async def astream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        for index, token in enumerate(self.tokens(self.reply(messages))):
            if index and self.delay:
                await asyncio.sleep(self.delay)
            yield token


def _import(module: str, key: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise RuntimeError(
            f"{key} is set, so the example apps call {module} through its SDK, but the "
            f"`{module}` package is not installed. Install the example requirements: "
            f"pip install -r example_apps/requirements.txt (or unset {key} to use the "
            "local responder)."
        ) from exc


class OpenAIResponder(Responder):
    """OpenAI's Chat Completions API, streamed, through the official `openai` SDK.

    The key and base URL default to `OPENAI_API_KEY` / `OPENAI_BASE_URL` (the SDK reads
    them); the model to `OPENAI_MODEL`, else `gpt-4o-mini`.
    """

    provider = "openai"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        max_tokens: int = 400,
    ) -> None:
        openai = _import("openai", "OPENAI_API_KEY")
        self.model = model or os.environ.get("OPENAI_MODEL") or DEFAULT_OPENAI_MODEL
        self.max_tokens = max_tokens
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url)
        self._async_client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url)

    def _request(self, messages: Sequence[Message]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_completion_tokens": self.max_tokens,
            "stream": True,
            # The token counts in the last chunk (OpenInference puts them on the span).
            "stream_options": {"include_usage": True},
        }

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        with self._client.chat.completions.create(**self._request(messages)) as chunks:
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    async def astream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        chunks = await self._async_client.chat.completions.create(**self._request(messages))
        async with chunks:
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content


class AnthropicResponder(Responder):
    """Anthropic's Messages API, streamed, through the official `anthropic` SDK.

    The key and base URL default to `ANTHROPIC_API_KEY` / `ANTHROPIC_BASE_URL` (the SDK
    reads them); the model to `ANTHROPIC_MODEL`, else `claude-haiku-4-5`.
    """

    provider = "anthropic"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        max_tokens: int = 400,
    ) -> None:
        anthropic = _import("anthropic", "ANTHROPIC_API_KEY")
        self.model = model or os.environ.get("ANTHROPIC_MODEL") or DEFAULT_ANTHROPIC_MODEL
        self.max_tokens = max_tokens
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url)
        self._async_client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url)

    def _request(self, messages: Sequence[Message]) -> dict[str, Any]:
        # Anthropic takes the system prompt apart from the turns.
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [
                {"role": m["role"], "content": m["content"]}
                for m in messages
                if m["role"] != "system"
            ],
        }
        if system:
            request["system"] = system
        return request

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        with self._client.messages.stream(**self._request(messages)) as stream:
            yield from stream.text_stream

    async def astream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        async with self._async_client.messages.stream(**self._request(messages)) as stream:
            async for text in stream.text_stream:
                yield text


def responder_from_env(environ: Mapping[str, str] | None = None) -> Responder:
    """The responder the environment asks for.

    `DEMO_RESPONDER` (`local`, `openai`, `anthropic`) decides when set; otherwise
    `OPENAI_API_KEY`, then `ANTHROPIC_API_KEY`, then the local responder.
    """
    env = os.environ if environ is None else environ
    choice = env.get(ENV_RESPONDER, "").strip().lower()
    if not choice:
        if env.get("OPENAI_API_KEY"):
            choice = "openai"
        elif env.get("ANTHROPIC_API_KEY"):
            choice = "anthropic"
        else:
            choice = "local"
    if choice == "local":
        delay = env.get(ENV_TOKEN_DELAY)
        return LocalResponder(delay=None if delay is None else float(delay))
    if choice == "openai":
        return OpenAIResponder(
            api_key=env.get("OPENAI_API_KEY"),
            base_url=env.get("OPENAI_BASE_URL"),
            model=env.get("OPENAI_MODEL"),
        )
    if choice == "anthropic":
        return AnthropicResponder(
            api_key=env.get("ANTHROPIC_API_KEY"),
            base_url=env.get("ANTHROPIC_BASE_URL"),
            model=env.get("ANTHROPIC_MODEL"),
        )
    raise ValueError(
        f"{ENV_RESPONDER}={choice!r} is not a responder: use local, openai or anthropic "
        "(or unset it to choose from the API keys that are set)."
    )
