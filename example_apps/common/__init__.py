"""What the three example chat apps share: the LLM interface, the chat chain and the page."""

from __future__ import annotations

from .chat import Chat, ChatError, Event, Turn
from .llm import (
    AnthropicResponder,
    LocalResponder,
    Message,
    OpenAIResponder,
    Responder,
    responder_from_env,
)

__all__ = [
    "AnthropicResponder",
    "Chat",
    "ChatError",
    "Event",
    "LocalResponder",
    "Message",
    "OpenAIResponder",
    "Responder",
    "Turn",
    "responder_from_env",
]
