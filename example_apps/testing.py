"""What the example apps' tests share (`tests/test_example_*.py`).

Parsing the event stream, responders that pause or fail on cue, a real threaded WSGI
server, and a reader of what a conversation left on the local Freeplay server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.serving import make_server

from example_apps.common.chat import (
    ANSWER_PROMPT,
    REWRITE_PROMPT,
    TEMPLATES_DIR,
    TRACE_NAME,
    Event,
)
from example_apps.common.llm import REWRITE_MARKER, LocalResponder, Message

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from freeplay_integrations.local import LocalFreeplay

__all__ = [
    "FailingResponder",
    "GatedResponder",
    "RecordedTurn",
    "local_freeplay",
    "parse_sse",
    "recorded_turns",
    "serve_wsgi",
]

#: Longest a test waits for anything (a gate, a recording).
WAIT = 10.0


@contextmanager
def local_freeplay() -> Iterator[LocalFreeplay]:
    """A local Freeplay serving the chat's prompt templates (what `make demo` starts)."""
    from freeplay_integrations.local import LocalFreeplay

    with LocalFreeplay(templates=TEMPLATES_DIR) as server:
        yield server


def parse_sse(body: bytes | str) -> list[Event]:
    """The events of a `text/event-stream` body (`event:` and JSON `data:` lines)."""
    text = body.decode() if isinstance(body, bytes) else body
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data += line[len("data: ") :]
        events.append(Event(name, json.loads(data) if data else {}))
    return events


def _is_answer(messages: Sequence[Message]) -> bool:
    return not any(REWRITE_MARKER in m["content"] for m in messages if m["role"] == "system")


class GatedResponder(LocalResponder):
    """Streams the first token of each answer, then waits for `gate` before the rest.

    A test that receives that first token over the network, then opens the gate, proves
    the answer is streamed: a buffered response would never deliver it and time out.
    """

    def __init__(self) -> None:
        super().__init__(delay=0)
        self.gate = threading.Event()

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        for index, token in enumerate(super().stream(messages)):
            if index == 1 and _is_answer(messages) and not self.gate.wait(WAIT):
                raise TimeoutError("the test never opened the gate")
            yield token

    async def astream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        import anyio.to_thread

        index = 0
        async for token in super().astream(messages):
            gated = index == 1 and _is_answer(messages)
            if gated and not await anyio.to_thread.run_sync(self.gate.wait, WAIT):
                raise TimeoutError("the test never opened the gate")
            index += 1
            yield token


class FailingResponder(LocalResponder):
    """Like the local responder, but each answer breaks after `after` tokens."""

    MESSAGE = "the model went away"

    def __init__(self, after: int = 2) -> None:
        super().__init__(delay=0)
        self.after = after

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        for index, token in enumerate(super().stream(messages)):
            if index == self.after and _is_answer(messages):
                raise ConnectionError(self.MESSAGE)
            yield token

    async def astream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        for token in self.stream(messages):
            yield token


@contextmanager
def serve_wsgi(app: WSGIApplication) -> Iterator[str]:
    """Serve `app` with werkzeug's threaded server on a free loopback port; yield its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="wsgi-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


@dataclass
class RecordedTurn:
    """One turn as the local Freeplay server stored it: the trace and its completions."""

    trace: dict[str, Any]
    rewrite: dict[str, Any]
    answer: dict[str, Any]


def recorded_turns(server: LocalFreeplay, session_id: str, count: int) -> list[RecordedTurn]:
    """Wait for `count` turns in session `session_id`, check their shape, return them.

    Each turn must be a `chat_turn` trace with exactly two child completions, the rewrite
    then the answer, and the trace's output must be the answer.
    """
    server.wait_for(
        lambda: (
            len(server.traces(session_id)) >= count
            and len(server.completions(session_id)) >= 2 * count
        ),
        timeout=WAIT,
    )
    traces = server.traces(session_id)
    completions = server.completions(session_id)
    assert len(traces) == count, traces
    assert len(completions) == 2 * count, completions
    turns = []
    # Sent concurrently: traces arrive in any order; a conversation's turns are in time order.
    traces.sort(key=lambda t: (t["start_time"] is None, t["start_time"] or 0))
    for trace in traces:
        assert trace["name"] == TRACE_NAME
        children = [c for c in completions if c["parent_id"] == trace["id"]]
        assert len(children) == 2, (trace, completions)
        # Sent concurrently: the order received is not the order recorded.
        children.sort(
            key=lambda c: c["messages"][0] != {"role": "system", "content": REWRITE_PROMPT}
        )
        rewrite, answer = children
        assert rewrite["messages"][0] == {"role": "system", "content": REWRITE_PROMPT}
        assert answer["messages"][0] == {"role": "system", "content": ANSWER_PROMPT}
        assert trace["output"] == answer["messages"][-1]["content"]
        turns.append(RecordedTurn(trace, rewrite, answer))
    return turns
