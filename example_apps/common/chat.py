"""The chat chain the three example apps share, recorded with freeplay_integrations.

Each user turn is one `trace_scope` holding two recorded completions:

1. *rewrite*: the user's message, with the conversation so far, rewritten as a standalone
   question;
2. *answer*: the answer to that question, streamed to the browser token by token.

The apps never pass a session around: the middleware bound the conversation's session to
the request, and `record()` / `trace_scope` / `record_feedback` use it. A turn is a
generator of `Event`s the apps send as server-sent events; `Chat.turn` for sync apps
(Flask, Django), `Chat.aturn` for async ones (FastAPI).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freeplay.resources.prompts import PromptInfo
from freeplay.resources.recordings import CallInfo

from freeplay_integrations import (
    TraceHandle,
    new_session,
    record,
    record_feedback,
    record_trace_feedback,
    require_session,
    trace_scope,
)
from freeplay_integrations._context import require_binding

from .llm import Message, Responder
from .otel import ENV_RECORDING, recording_from_env, start_tracing

__all__ = [
    "AGENT_NAME",
    "ANSWER_PROMPT",
    "ANSWER_TEMPLATE",
    "ENV_FREEPLAY_UI",
    "FEEDBACK_KEY",
    "MAX_MESSAGE_CHARS",
    "PROMPT_ENVIRONMENT",
    "REWRITE_PROMPT",
    "REWRITE_TEMPLATE",
    "SSE_HEADERS",
    "STATIC_DIR",
    "STATIC_FILES",
    "TEMPLATES_DIR",
    "TRACE_NAME",
    "VOTES",
    "Chat",
    "ChatError",
    "Event",
    "Prompt",
    "Turn",
]

logger = logging.getLogger("example_apps.chat")

REWRITE_PROMPT = (
    "Rewrite the user's last message as a standalone question that can be understood "
    "without the conversation before it. Reply with the question only."
)
ANSWER_PROMPT = "You are a friendly, concise assistant. Answer the user's question."
#: The two prompt templates of a turn (their text is REWRITE_PROMPT and ANSWER_PROMPT) and
#: the environment they are fetched from.
REWRITE_TEMPLATE = "chat-rewrite"
ANSWER_TEMPLATE = "chat-answer"
PROMPT_ENVIRONMENT = "latest"
#: The templates in the format of the SDK's FilesystemTemplateResolver, for the local
#: Freeplay (`python -m freeplay_integrations.local --templates TEMPLATES_DIR`).
TEMPLATES_DIR = Path(__file__).parent / "templates"
#: The name and agent of each turn's trace on Freeplay.
TRACE_NAME = "chat_turn"
AGENT_NAME = "example-chat"
#: The customer feedback key Freeplay shows as thumbs up/down.
FEEDBACK_KEY = "freeplay_feedback"
#: What the thumbs send: vote -> feedback value.
VOTES = {"up": "positive", "down": "negative"}
MAX_MESSAGE_CHARS = 2000
#: Earlier turns given to the model as context.
CONTEXT_TURNS = 10
LOG_TURN_FAILED = "chat turn failed"
#: Environment variable with the local Freeplay page's URL (`make demo` sets it): the chat
#: page then links to the conversation's session there.
ENV_FREEPLAY_UI = "DEMO_FREEPLAY_UI"
#: Headers of the streamed answer: no caching or proxy buffering of the event stream.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: The page and its assets, shared by the three apps (served at `/` and `/static/<name>`).
STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


class ChatError(ValueError):
    """A request the chat cannot serve; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Event:
    """One server-sent event of a turn: `rewrite`, `token`, `done` or `error`."""

    name: str
    data: Mapping[str, Any]

    def sse(self) -> bytes:
        payload = json.dumps(self.data, ensure_ascii=False)
        return f"event: {self.name}\ndata: {payload}\n\n".encode()


@dataclass(frozen=True)
class Prompt:
    """A prompt template filled in: the messages for the model and the template's info."""

    messages: list[Message]
    info: PromptInfo


@dataclass(frozen=True)
class Turn:
    """One finished exchange of a conversation."""

    message: str
    question: str
    answer: str
    #: The answer's completion (None with `recording="otel"`: its span becomes one).
    completion_id: str | None
    trace_id: str

    @property
    def feedback_id(self) -> str:
        """What the thumbs rate: the answer's completion, else the turn's trace."""
        return self.completion_id or self.trace_id


@dataclass
class _Conversation:
    turns: list[Turn] = field(default_factory=list)
    votes: dict[str, str] = field(default_factory=dict)  # Turn.feedback_id -> "up" / "down"


class Conversations:
    """Each session's turns, in memory (the most recent `limit` conversations)."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._items: OrderedDict[str, _Conversation] = OrderedDict()

    def turns(self, session_id: str) -> list[Turn]:
        with self._lock:
            conversation = self._items.get(session_id)
            return [] if conversation is None else list(conversation.turns)

    def votes(self, session_id: str) -> dict[str, str]:
        """The last vote given to each answer of the conversation, by `Turn.feedback_id`."""
        with self._lock:
            conversation = self._items.get(session_id)
            return {} if conversation is None else dict(conversation.votes)

    def vote(self, session_id: str, feedback_id: str, vote: str) -> None:
        with self._lock:
            conversation = self._items.get(session_id)
            if conversation is not None:
                conversation.votes[feedback_id] = vote

    def add(self, session_id: str, turn: Turn) -> None:
        with self._lock:
            conversation = self._items.pop(session_id, None) or _Conversation()
            conversation.turns.append(turn)
            self._items[session_id] = conversation
            while len(self._items) > self._limit:
                self._items.popitem(last=False)


class Chat:
    """The example's chat: a two-step chain per turn, recorded into the request's session.

    `framework` is shown on the page. `freeplay_ui` (the local Freeplay page, e.g.
    `http://127.0.0.1:8765`) only adds a link to the conversation's page in
    `conversation()`.

    `recording` (default: `DEMO_RECORDING`, else `"record"`): `"record"` records each LLM
    call with `record()`; `"otel"` makes no `record()` call: the OpenAI responder's calls
    are OpenInference spans, tagged with the session and exported to Freeplay
    (`otel.start_tracing()`), and the thumbs rate the turn's trace.
    """

    def __init__(
        self,
        responder: Responder,
        *,
        framework: str = "",
        freeplay_ui: str | None = None,
        recording: str | None = None,
    ) -> None:
        env = None if recording is None else {ENV_RECORDING: recording}
        self.recording = recording_from_env(env)
        if self.recording == "otel":
            if responder.provider != "openai":
                raise ValueError(
                    "recording='otel' records the OpenAI SDK's calls (OpenInference): use "
                    f"the OpenAI responder (DEMO_RESPONDER=openai), not {responder!r}."
                )
            start_tracing()
        self.responder = responder
        self.framework = framework
        self.freeplay_ui = freeplay_ui.rstrip("/") if freeplay_ui else None
        self.conversations = Conversations()

    # -- requests ----------------------------------------------------------------------

    def session_metadata(self, request: Any) -> dict[str, str]:
        """The middleware's `session_metadata` hook: shown with each session on Freeplay."""
        return {"app": AGENT_NAME, "framework": self.framework}

    @staticmethod
    def check_message(body: Any) -> str:
        """The message of a `{"message": "..."}` request body, or `ChatError`."""
        message = body.get("message") if isinstance(body, Mapping) else None
        if not isinstance(message, str) or not message.strip():
            raise ChatError('Send a JSON body like {"message": "Hello"}.')
        message = message.strip()
        if len(message) > MAX_MESSAGE_CHARS:
            raise ChatError(f"The message is too long: keep it under {MAX_MESSAGE_CHARS} chars.")
        return message

    def conversation(self) -> dict[str, Any]:
        """The current conversation: its session ID, turns and Freeplay page."""
        session_id = require_session().session_id
        votes = self.conversations.votes(session_id)
        return {
            "session_id": session_id,
            "freeplay_url": self._freeplay_url(session_id),
            "framework": self.framework,
            "recording": self.recording,
            "responder": {"provider": self.responder.provider, "model": self.responder.model},
            "turns": [
                {
                    "message": t.message,
                    "question": t.question,
                    "answer": t.answer,
                    "completion_id": t.completion_id,
                    "trace_id": t.trace_id,
                    "vote": votes.get(t.feedback_id),
                }
                for t in self.conversations.turns(session_id)
            ],
        }

    def new_conversation(self) -> dict[str, Any]:
        """Start a new session (the "New conversation" button); the response carries it."""
        session_id = new_session().session_id
        return {"session_id": session_id, "freeplay_url": self._freeplay_url(session_id)}

    def feedback(self, body: Any) -> dict[str, Any]:
        """Thumbs up/down for an answer of the current conversation: its completion
        (`completion_id`), or its turn's trace (`trace_id`, when it has no completion ID:
        `recording="otel"`)."""
        if not isinstance(body, Mapping):
            raise ChatError('Send a JSON body like {"completion_id": "...", "vote": "up"}.')
        vote, completion_id = body.get("vote"), body.get("completion_id")
        if vote not in VOTES:
            raise ChatError('"vote" must be "up" or "down".')
        session_id = require_session().session_id
        turns = self.conversations.turns(session_id)
        value = {FEEDBACK_KEY: VOTES[vote]}
        if completion_id is None and body.get("trace_id") is not None:
            trace_id = body.get("trace_id")
            if trace_id not in {t.trace_id for t in turns if t.completion_id is None}:
                raise ChatError("No answer with that trace_id in this conversation.", 404)
            record_trace_feedback(value, trace_id=str(trace_id))
            self.conversations.vote(session_id, str(trace_id), vote)
            return {"trace_id": trace_id, "feedback": value}
        if completion_id is None or completion_id not in {t.completion_id for t in turns}:
            raise ChatError("No answer with that completion_id in this conversation.", 404)
        record_feedback(value, completion_id=completion_id)
        self.conversations.vote(session_id, completion_id, vote)
        return {"completion_id": completion_id, "feedback": value}

    # -- a turn ------------------------------------------------------------------------

    def turn(self, message: str) -> Iterator[Event]:
        """Answer `message` (already checked) as events; for sync apps."""
        session_id = require_session().session_id
        history = self.conversations.turns(session_id)
        done: Turn | None = None
        with trace_scope(message, name=TRACE_NAME, agent_name=AGENT_NAME) as trace:
            try:
                prompt = self._rewrite_prompt(history, message)
                start = time.time()
                question = "".join(self.responder.stream(prompt.messages)).strip() or message
                self._record(prompt, question, start, {"message": message})
                yield Event("rewrite", {"question": question})
                prompt = self._answer_prompt(history, question)
                start, parts = time.time(), []
                for token in self.responder.stream(prompt.messages):
                    parts.append(token)
                    yield Event("token", {"text": token})
                done = self._finish(trace, message, question, "".join(parts), prompt, start)
            except Exception as exc:
                yield self._failed(trace, exc)
        if done is not None:
            yield self._done(session_id, done)

    async def aturn(self, message: str) -> AsyncIterator[Event]:
        """Answer `message` (already checked) as events; for async apps."""
        session_id = require_session().session_id
        history = self.conversations.turns(session_id)
        done: Turn | None = None
        async with trace_scope(message, name=TRACE_NAME, agent_name=AGENT_NAME) as trace:
            try:
                prompt = self._rewrite_prompt(history, message)
                start = time.time()
                tokens = [t async for t in self.responder.astream(prompt.messages)]
                question = "".join(tokens).strip()
                question = question or message
                self._record(prompt, question, start, {"message": message})
                yield Event("rewrite", {"question": question})
                prompt = self._answer_prompt(history, question)
                start, parts = time.time(), []
                async for token in self.responder.astream(prompt.messages):
                    parts.append(token)
                    yield Event("token", {"text": token})
                done = self._finish(trace, message, question, "".join(parts), prompt, start)
            except Exception as exc:
                yield self._failed(trace, exc)
        if done is not None:
            yield self._done(session_id, done)

    # -- the chain's parts -------------------------------------------------------------

    @staticmethod
    def _context(history: list[Turn]) -> list[Message]:
        messages: list[Message] = []
        for turn in history[-CONTEXT_TURNS:]:
            messages.append({"role": "user", "content": turn.message})
            messages.append({"role": "assistant", "content": turn.answer})
        return messages

    @staticmethod
    def _template(name: str, variables: dict[str, Any], history: list[Turn]) -> Prompt:
        """The prompt template `name` from Freeplay, filled in (`prompts.get_formatted`).

        The session's client and project are the middleware's (the local Freeplay serves
        the templates in `TEMPLATES_DIR` when `make demo` runs it).
        """
        binding = require_binding()
        formatted = binding.client.prompts.get_formatted(
            project_id=binding.project_id,
            template_name=name,
            environment=PROMPT_ENVIRONMENT,
            variables=variables,
            history=Chat._context(history),
        )
        return Prompt(list(formatted.llm_prompt), formatted.prompt_info)

    def _rewrite_prompt(self, history: list[Turn], message: str) -> Prompt:
        return self._template(REWRITE_TEMPLATE, {"message": message}, history)

    def _answer_prompt(self, history: list[Turn], question: str) -> Prompt:
        return self._template(ANSWER_TEMPLATE, {"question": question}, history)

    def _record(
        self, prompt: Prompt, output: str, start: float, inputs: dict[str, Any]
    ) -> str | None:
        """Record one LLM call into the session, as a child of the turn's trace.

        With `recording="otel"` nothing is recorded here (None): the call was an
        OpenInference span, which carries the session and the trace to Freeplay."""
        if self.recording == "otel":
            return None
        response = record(
            all_messages=[*prompt.messages, {"role": "assistant", "content": output}],
            inputs=inputs,
            prompt_version_info=prompt.info,
            call_info=CallInfo(
                provider=self.responder.provider,
                model=self.responder.model,
                start_time=start,
                end_time=time.time(),
            ),
        )
        return response.completion_id

    def _finish(
        self,
        trace: TraceHandle,
        message: str,
        question: str,
        answer: str,
        prompt: Prompt,
        start: float,
    ) -> Turn:
        completion_id = self._record(prompt, answer, start, {"question": question})
        trace.output = answer
        return Turn(message, question, answer, completion_id, trace.trace_id)

    @staticmethod
    def _failed(trace: TraceHandle, exc: Exception) -> Event:
        logger.exception(LOG_TURN_FAILED)
        reason = f"The model call failed: {type(exc).__name__}: {exc}"
        trace.output = {"error": reason}
        return Event("error", {"message": reason})

    def _done(self, session_id: str, turn: Turn) -> Event:
        self.conversations.add(session_id, turn)
        return Event(
            "done",
            {
                "session_id": session_id,
                "trace_id": turn.trace_id,
                "completion_id": turn.completion_id,
                "answer": turn.answer,
            },
        )

    def _freeplay_url(self, session_id: str) -> str | None:
        return f"{self.freeplay_ui}/sessions/{session_id}" if self.freeplay_ui else None
