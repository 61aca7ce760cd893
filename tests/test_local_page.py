"""The local Freeplay server's web page: list, session tree, live updates, escaping."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
import requests
from freeplay import Freeplay
from freeplay.resources.recordings import CallInfo, RecordPayload
from freeplay.resources.sessions import Session

from freeplay_integrations.local import LocalFreeplay

XSS = "<script>alert('pwned')</script>"
VOID = {"meta", "link", "br", "hr", "img", "input"}


@pytest.fixture
def server() -> Iterator[LocalFreeplay]:
    with LocalFreeplay() as local:
        yield local


@pytest.fixture
def client(server: LocalFreeplay) -> Freeplay:
    return server.client()


def record(
    client: Freeplay, server: LocalFreeplay, session: Session, content: str = "Hello", **fields: Any
) -> str:
    payload = RecordPayload(
        project_id=server.project_id,
        all_messages=[{"role": "user", "content": content}, {"role": "assistant", "content": "Hi"}],
        session_info=session.session_info,
        **fields,
    )
    return str(client.recordings.create(payload).completion_id)


def get(server: LocalFreeplay, path: str, **headers: str) -> requests.Response:
    return requests.get(server.url + path, headers=headers, timeout=5)


class Elements(HTMLParser):
    """Collects every element with its attributes and the attributes of its ancestors."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.stack: list[dict[str, str | None]] = []
        self.found: list[tuple[str, dict[str, str | None], list[dict[str, str | None]]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.found.append((tag, attributes, list(self.stack)))
        if tag not in VOID:
            self.stack.append(attributes)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self.stack:
            self.stack.pop()

    def with_attr(
        self, name: str
    ) -> list[tuple[dict[str, str | None], list[dict[str, str | None]]]]:
        return [(attrs, ancestors) for _, attrs, ancestors in self.found if name in attrs]


def test_index_lists_sessions_newest_first_with_counts(
    server: LocalFreeplay, client: Freeplay
) -> None:
    older = client.sessions.create(custom_metadata={"user_id": "u-1"})
    newer = client.sessions.create()
    record(client, server, older)
    record(client, server, newer)
    older.create_trace(input="q").record_output(server.project_id, "a")  # most recent again

    page = get(server, "/")

    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    rows = Elements(page.text).with_attr("data-session-id")
    assert [attrs["data-session-id"] for attrs, _ in rows] == [
        older.session_id,
        newer.session_id,
    ]
    assert f'href="/sessions/{older.session_id}"' in page.text
    assert '<span id="session-count" class="count">2</span>' in page.text
    assert "user_id" in page.text
    assert '<td class="num trace-count">1</td>' in page.text


def test_empty_index_says_where_to_point_the_sdk(server: LocalFreeplay) -> None:
    page = get(server, "/")

    assert '<span id="session-count" class="count">0</span>' in page.text
    assert f"FREEPLAY_API_BASE={server.api_base}" in page.text


def test_session_page_shows_the_tree(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    outer = session.create_trace(input="plan", name="planner")
    inner = session.create_trace(input="search", parent_id=uuid.UUID(outer.trace_id))
    nested = record(client, server, session, parent_id=uuid.UUID(inner.trace_id))
    top = record(
        client, server, session, call_info=CallInfo(provider="anthropic", model="claude-x")
    )
    inner.record_output(server.project_id, "found")
    outer.record_output(server.project_id, "planned")
    client.customer_feedback.update(server.project_id, nested, {"thumbs": "up"})

    page = get(server, f"/sessions/{session.session_id}")

    assert page.status_code == 200
    elements = Elements(page.text)
    traces = {
        attrs["data-trace-id"]: ancestors
        for attrs, ancestors in elements.with_attr("data-trace-id")
    }
    completions = {
        attrs["data-completion-id"]: ancestors
        for attrs, ancestors in elements.with_attr("data-completion-id")
    }
    assert set(traces) == {outer.trace_id, inner.trace_id}
    assert set(completions) == {nested, top}

    def trace_ancestors(ancestors: list[dict[str, str | None]]) -> list[str | None]:
        return [a["data-trace-id"] for a in ancestors if "data-trace-id" in a]

    assert trace_ancestors(traces[inner.trace_id]) == [outer.trace_id]
    assert trace_ancestors(completions[nested]) == [outer.trace_id, inner.trace_id]
    assert trace_ancestors(completions[top]) == []
    assert "anthropic · claude-x" in page.text
    assert "thumbs" in page.text and "planner" in page.text


def test_payload_text_is_escaped_everywhere(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create(custom_metadata={XSS: XSS})
    trace = session.create_trace(input=XSS, name=XSS, agent_name=XSS)
    completion_id = record(client, server, session, content=XSS, inputs={"q": XSS})
    trace.record_output(server.project_id, {"html": XSS})
    client.customer_feedback.update(server.project_id, completion_id, {"note": XSS})

    index = get(server, "/").text
    detail = get(server, f"/sessions/{session.session_id}").text

    for text in (index, detail):
        assert "<script>alert" not in text
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in text
    # The only script on the page is the page's own, served from the same origin.
    assert detail.count("<script") == 1
    assert '<script src="/ui/static/app.js"></script>' in detail


def test_pages_forbid_inline_scripts(server: LocalFreeplay) -> None:
    page = get(server, "/")
    script = get(server, "/ui/static/app.js")

    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert script.status_code == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "setInterval(poll, 1000)" in script.text


def test_fragment_changes_when_something_is_recorded(
    server: LocalFreeplay, client: Freeplay
) -> None:
    page = get(server, "/")
    [(content, _)] = [(a, s) for a, s in Elements(page.text).with_attr("data-etag")]
    etag = str(content["data-etag"])
    assert 'data-fragment="/ui/fragments/sessions"' in page.text

    unchanged = get(server, "/ui/fragments/sessions", **{"If-None-Match": etag})
    session = client.sessions.create()
    record(client, server, session)
    changed = get(server, "/ui/fragments/sessions", **{"If-None-Match": etag})

    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert f'data-session-id="{session.session_id}"' in changed.text
    assert '<span id="session-count" class="count">1</span>' in changed.text


def test_session_fragment_and_json(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    completion_id = record(client, server, session)

    fragment = get(server, f"/ui/fragments/sessions/{session.session_id}")
    data = get(server, f"/ui/api/sessions/{session.session_id}").json()
    listing = get(server, "/ui/api/sessions").json()

    assert f'data-completion-id="{completion_id}"' in fragment.text
    assert "<html" not in fragment.text
    assert data["session"]["id"] == session.session_id
    assert [c["id"] for c in data["completions"]] == [completion_id]
    assert [s["id"] for s in listing] == [session.session_id]


def test_session_page_before_anything_is_recorded(server: LocalFreeplay) -> None:
    session_id = str(uuid.uuid4())

    page = get(server, f"/sessions/{session_id}")
    data = get(server, f"/ui/api/sessions/{session_id}")

    assert page.status_code == 200
    assert 'id="session-missing"' in page.text
    assert f'data-fragment="/ui/fragments/sessions/{session_id}"' in page.text
    assert data.status_code == 404


def test_deleted_session_page(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    completion_id = record(client, server, session)
    client.sessions.delete(server.project_id, session.session_id)

    page = get(server, f"/sessions/{session.session_id}")

    assert 'id="session-deleted"' in page.text
    assert completion_id not in page.text
    assert session.session_id not in get(server, "/").text


@pytest.mark.parametrize("path", ["/sessions/not-a-uuid", "/ui/fragments/sessions/x", "/nope"])
def test_unknown_pages_are_404(server: LocalFreeplay, path: str) -> None:
    response = get(server, path)

    assert response.status_code == 404


def test_page_is_read_only(server: LocalFreeplay) -> None:
    response = requests.post(server.url + "/", timeout=5)

    assert response.status_code == 405
    assert server.request_count == 0


def test_index_lists_each_session_with_its_first_user_message(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create()
    record(client, server, session, content="Where is <Paris>?")
    record(client, server, session, content="And Rome?")

    page = get(server, "/").text
    [listed] = server.sessions()

    assert listed["first_user_message"] == "Where is <Paris>?"
    assert '<span class="first-message">Where is &lt;Paris&gt;?</span>' in page
    assert "And Rome?" not in page
    assert session.session_id in page  # still shown, under the message
