"""Server-rendered HTML for the local Freeplay web page (no build step, no dependencies).

Every value that comes from a recorded payload goes through `_e` (HTML escaping). The page
polls a fragment endpoint every second with `If-None-Match` and swaps the content in when
it changed, so new sessions, traces and completions show up without a reload.

Stable hooks for browser tests: `#session-count`, `tr[data-session-id]` rows on the list
page; `#session-id`, `[data-trace-id]` and `[data-completion-id]` nodes (with
`data-parent-id`) on a session page; `#content[data-etag]` changes on every update and a
`freeplay:updated` event is dispatched on `document` after each swap.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import unquote

from ._otlp import NO_SESSION, page_nodes
from ._store import Store

__all__ = [
    "HEADERS",
    "STATIC",
    "PageResponse",
    "etag",
    "index_page",
    "not_found_page",
    "respond",
    "session_fragment",
    "session_page",
    "sessions_fragment",
    "static_file",
]

#: Security headers sent with every HTML page: no inline script, nothing from elsewhere.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: Files served under `/ui/static/`, shipped as package data in `local/static/`.
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}


@functools.cache
def static_file(name: str) -> bytes:
    """The bytes of one of the page's `STATIC` files (read once from the package)."""
    if name not in STATIC:
        raise KeyError(name)
    return (resources.files(__package__) / "static" / name).read_bytes()

def _e(value: Any) -> str:
    """HTML-escape anything (quotes included), so it is safe in text and attributes."""
    return html.escape(str(value), quote=True)


def etag(fragment: str) -> str:
    return '"' + hashlib.sha256(fragment.encode()).hexdigest()[:20] + '"'


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _clock(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    iso = datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
    return f'<time datetime="{_e(iso)}">{_e(_clock(epoch))}</time>'


def _iso_epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return ""
    seconds = end - start
    text = f"{seconds * 1000:.0f} ms" if abs(seconds) < 10 else f"{seconds:.1f} s"
    return f'<span class="duration">{_e(text)}</span>'


def _chips(values: Mapping[str, Any], css: str = "chip") -> str:
    return "".join(
        f'<span class="{css}"><b>{_e(key)}</b>: {_e(_scalar(value))}</span>'
        for key, value in values.items()
    )


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _block(value: Any) -> str:
    if isinstance(value, str):
        return f'<div class="text">{_e(value)}</div>'
    return f"<pre>{_e(_json(value))}</pre>"


def _layout(title: str, fragment_url: str, fragment: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        '<link rel="stylesheet" href="/ui/static/page.css"></head>'
        f'<body data-fragment="{_e(fragment_url)}">'
        '<header><a href="/">Local Freeplay</a>'
        '<span class="muted">sessions, traces and completions recorded on this server</span>'
        '<span id="live" class="live">live</span></header>'
        f'<main id="content" data-etag="{_e(etag(fragment))}">{fragment}</main>'
        '<script src="/ui/static/app.js"></script></body></html>\n'
    )


# -- the session list ------------------------------------------------------------------


def _no_session_link(count: int) -> str:
    if not count:
        return ""
    spans = "span" if count == 1 else "spans"
    return (
        f'<p id="no-session"><a class="no-session-link" href="/sessions/{NO_SESSION_PATH}">'
        f'<span class="no-session-count">{count}</span> OpenTelemetry {spans} without a'
        " session</a></p>"
    )


def sessions_fragment(
    sessions: Sequence[Mapping[str, Any]], api_base: str = "", no_session_spans: int = 0
) -> str:
    """The session list; `no_session_spans` (spans without a session) adds a link to them."""
    parts = [f'<h1>Sessions <span id="session-count" class="count">{len(sessions)}</span></h1>']
    parts.append(_no_session_link(no_session_spans))
    if not sessions:
        hint = f" at <code>FREEPLAY_API_BASE={_e(api_base)}</code>" if api_base else ""
        parts.append(
            f'<p id="no-sessions" class="empty">No sessions yet. Point the Freeplay SDK{hint}'
            " and record a completion or a trace: it shows up here.</p>"
        )
        return "".join(parts)
    parts.append(
        '<table id="sessions"><thead><tr><th>Conversation</th><th>Metadata</th>'
        '<th class="num">Completions</th><th class="num">Traces</th><th>Last activity</th>'
        "</tr></thead><tbody>"
    )
    for session in sessions:
        sid = _e(session["id"])
        first = session.get("first_user_message")
        title = _e(_shorten(first)) if first else '<span class="muted">(no user message)</span>'
        parts.append(
            f'<tr data-session-id="{sid}">'
            f'<td class="conversation"><a class="session-link" href="/sessions/{sid}">'
            f'<span class="first-message">{title}</span></a>'
            f'<code class="session-id muted">{sid}</code></td>'
            f'<td class="metadata">{_chips(session["custom_metadata"])}</td>'
            f'<td class="num completion-count">{_e(session["completion_count"])}</td>'
            f'<td class="num trace-count">{_e(session["trace_count"])}</td>'
            f'<td class="last-activity">{_time(session["last_activity"])}</td></tr>'
        )
    parts.append("</tbody></table>")
    return "".join(parts)


def _shorten(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def index_page(
    sessions: Sequence[Mapping[str, Any]], api_base: str = "", no_session_spans: int = 0
) -> str:
    return _layout(
        "Local Freeplay",
        "/ui/fragments/sessions",
        sessions_fragment(sessions, api_base, no_session_spans),
    )


# -- one session -----------------------------------------------------------------------


def _messages(messages: Any) -> str:
    if not isinstance(messages, list):
        return _block(messages)
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            parts.append(f'<div class="message">{_block(message)}</div>')
            continue
        role = str(message.get("role", ""))
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        content = message.get("content")
        parts.append(
            f'<div class="message {_e(role)}"><div class="role">{_e(role)}</div>'
            f"{_block(content) if content is not None else ''}"
            f"{_block(extra) if extra else ''}</div>"
        )
    return "".join(parts)


def _section(label: str, body: str) -> str:
    return f'<div class="label">{_e(label)}</div>{body}' if body else ""


def _raw(kind: str, node_id: str, payload: Any) -> str:
    return (
        f'<details class="raw" data-key="{_e(kind)}-{_e(node_id)}-raw">'
        f"<summary>raw payload</summary><pre>{_e(_json(payload))}</pre></details>"
    )


def _completion_node(completion: Mapping[str, Any]) -> str:
    cid = _e(completion["id"])
    parent = _e(completion["parent_id"] or "")
    start = _number(completion["start_time"])
    end = _number(completion["end_time"])
    model = " · ".join(
        _e(value) for value in (completion["provider"], completion["model"]) if value
    )
    inputs = completion["inputs"]
    return (
        f'<li class="node completion" data-completion-id="{cid}" data-parent-id="{parent}">'
        '<div class="card"><div class="head"><span class="kind">Completion</span>'
        f'<span class="model">{model}</span>{_duration(start, end)}'
        f'<code class="muted">{cid}</code>'
        f'<span class="when muted">{_time(completion["received_at"])}</span></div>'
        f"{_section('Prompt template', _prompt(completion.get('prompt_info')))}"
        f"{_section('Messages', _messages(completion['messages']))}"
        f"{_section('Inputs', _block(inputs) if inputs else '')}"
        f"{_section('Tokens', _chips(completion.get('tokens') or {}))}"
        f"{_section('Eval results', _chips(completion['eval_results']))}"
        f"{_section('Feedback', _feedback(completion['feedback']))}"
        f"{_raw('completion', completion['id'], completion['payload'])}"
        "</div></li>"
    )


def _prompt(prompt_info: Any) -> str:
    """Template name, version and environment of a completion recorded from a template."""
    if not isinstance(prompt_info, Mapping):
        return ""
    shown = {
        "name": prompt_info.get("template_name") or "(not in this server's templates)",
        "version": prompt_info.get("prompt_template_version_id"),
        "environment": prompt_info.get("environment"),
    }
    return f'<div class="prompt-info">{_chips(shown)}</div>'


def _feedback(feedback: Mapping[str, Any]) -> str:
    return f'<div class="feedback">{_chips(feedback)}</div>' if feedback else ""


def _trace_node(trace: Mapping[str, Any], children: str) -> str:
    tid = _e(trace["id"])
    parent = _e(trace["parent_id"] or "")
    title = " · ".join(
        _e(value) for value in (trace["agent_name"], trace["name"], trace["kind"]) if value
    )
    start = _iso_epoch(trace["start_time"])
    end = _iso_epoch(trace["end_time"])
    return (
        f'<li class="node trace" data-trace-id="{tid}" data-parent-id="{parent}">'
        '<div class="card"><div class="head"><span class="kind">Trace</span>'
        f'<span class="title">{title}</span>{_duration(start, end)}'
        f'<code class="muted">{tid}</code>'
        f'<span class="when muted">{_time(start or trace["received_at"])}</span></div>'
        f"{_section('Input', _block(trace['input']))}"
        f"{_section('Output', _block(trace['output']))}"
        f"{_section('Metadata', _chips(trace['custom_metadata']))}"
        f"{_section('Eval results', _chips(trace['eval_results']))}"
        f"{_section('Feedback', _feedback(trace['feedback']))}"
        f"{_raw('trace', trace['id'], trace['payload'])}"
        f"</div>{children}</li>"
    )


def _tree(traces: Sequence[Mapping[str, Any]], completions: Sequence[Mapping[str, Any]]) -> str:
    trace_ids = {trace["id"] for trace in traces}
    nodes: list[tuple[float, str, Mapping[str, Any]]] = []
    for trace in traces:
        start = _iso_epoch(trace["start_time"])
        nodes.append((start if start is not None else trace["received_at"], "trace", trace))
    for completion in completions:
        start = _number(completion["start_time"])
        nodes.append((start if start is not None else completion["received_at"], "c", completion))
    nodes.sort(key=lambda node: node[0])
    children: dict[str | None, list[tuple[str, Mapping[str, Any]]]] = {}
    for _, kind, node in nodes:
        parent = node["parent_id"] if node["parent_id"] in trace_ids else None
        children.setdefault(parent, []).append((kind, node))

    def render(parent: str | None, seen: frozenset[str]) -> str:
        items = []
        for kind, node in children.get(parent, []):
            if kind == "c":
                items.append(_completion_node(node))
            elif node["id"] not in seen:
                items.append(_trace_node(node, render(node["id"], seen | {node["id"]})))
        return f'<ul class="tree">{"".join(items)}</ul>' if items else ""

    return render(None, frozenset())


def session_fragment(
    session_id: str,
    session: Mapping[str, Any] | None,
    traces: Sequence[Mapping[str, Any]],
    completions: Sequence[Mapping[str, Any]],
) -> str:
    sid = _e(session_id)
    parts = [
        '<p><a href="/">&larr; All sessions</a></p>',
        f'<h1>Session <code id="session-id">{sid}</code></h1>',
    ]
    if session is None:
        parts.append(
            '<p id="session-missing" class="empty">Nothing recorded in this session yet;'
            " this page updates when something arrives.</p>"
        )
        return "".join(parts)
    if session["deleted"]:
        parts.append(
            '<p id="session-deleted" class="empty">This session was deleted'
            " (<code>sessions.delete</code>).</p>"
        )
        return "".join(parts)
    parts.append(
        f'<dl class="summary" data-session-id="{sid}">'
        f"<dt>Project</dt><dd><code>{_e(session['project_id'])}</code></dd>"
        f'<dt>Metadata</dt><dd class="metadata">{_chips(session["custom_metadata"])}</dd>'
        f'<dt>Completions</dt><dd id="completion-count">{len(completions)}</dd>'
        f'<dt>Traces</dt><dd id="trace-count">{len(traces)}</dd>'
        f"<dt>First seen</dt><dd>{_time(session['first_seen'])}</dd>"
        f"<dt>Last activity</dt><dd>{_time(session['last_activity'])}</dd></dl>"
    )
    parts.append(f'<section id="tree">{_tree(traces, completions)}</section>')
    return "".join(parts)


def session_page(
    session_id: str,
    session: Mapping[str, Any] | None,
    traces: Sequence[Mapping[str, Any]],
    completions: Sequence[Mapping[str, Any]],
) -> str:
    return _layout(
        f"Session {session_id} · Local Freeplay",
        f"/ui/fragments/sessions/{session_id}",
        session_fragment(session_id, session, traces, completions),
    )


def not_found_page(path: str) -> str:
    return _layout(
        "Not found · Local Freeplay",
        "",
        f'<h1>Not found</h1><p class="empty">Nothing at <code>{_e(path)}</code>.'
        ' <a href="/">All sessions</a></p>',
    )


# -- requests for the page -------------------------------------------------------------


class PageResponse(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] | None = None


_SESSION_UI = re.compile(r"/(sessions|ui/fragments/sessions|ui/api/sessions)/([^/]+)")
_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    re.ASCII | re.IGNORECASE,
)
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


def _json_response(status: int, payload: Any) -> PageResponse:
    return PageResponse(status, json.dumps(payload).encode(), _JSON)


def _html(status: int, text: str) -> PageResponse:
    return PageResponse(status, text.encode(), _HTML, HEADERS)


def _fragment(text: str, if_none_match: str | None) -> PageResponse:
    tag = etag(text)
    if if_none_match == tag:
        return PageResponse(304, b"", _HTML, {"ETag": tag})
    return PageResponse(200, text.encode(), _HTML, {"ETag": tag})


#: The page of the OpenTelemetry spans that name no session: `/sessions/no-session`.
NO_SESSION_PATH = "no-session"


def _no_session(spans: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if not spans:
        return None
    return {
        "id": NO_SESSION,
        "project_id": spans[-1].get("project_id"),
        "custom_metadata": {},
        "deleted": False,
        "first_seen": spans[0].get("received_at"),
        "last_activity": spans[-1].get("received_at"),
    }


def _listed(store: Store) -> tuple[list[dict[str, Any]], int]:
    """The sessions with their OpenTelemetry spans counted in (LLM spans as completions,
    other spans as traces, the first user message from a span when no completion has one),
    and the number of spans without a session."""
    by_session: dict[str, list[dict[str, Any]]] = {}
    for span in store.spans():
        by_session.setdefault(span.get("session_id") or NO_SESSION, []).append(span)
    sessions = []
    for session in store.sessions():
        spans = by_session.get(session["id"])
        if spans:
            traces, completions = page_nodes(spans)
            session = {
                **session,
                "completion_count": session["completion_count"] + len(completions),
                "trace_count": session["trace_count"] + len(traces),
                "first_user_message": session["first_user_message"]
                or _first_user_message(completions),
            }
        sessions.append(session)
    return sessions, len(by_session.get(NO_SESSION, ()))


def _first_user_message(completions: Sequence[Mapping[str, Any]]) -> str | None:
    for completion in sorted(completions, key=lambda c: c["start_time"] or 0):
        for message in completion["messages"]:
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return str(message["content"])
    return None


def respond(
    store: Store, method: str, path: str, *, api_base: str, if_none_match: str | None = None
) -> PageResponse:
    """Answer a request for the web page (any path outside the API)."""
    if method not in ("GET", "HEAD"):
        return PageResponse(
            405,
            json.dumps({"message": "The web page is read-only."}).encode(),
            _JSON,
            {"Allow": "GET"},
        )
    if path == "/":
        sessions, no_session = _listed(store)
        return _html(200, index_page(sessions, api_base, no_session))
    if path == "/ui/fragments/sessions":
        sessions, no_session = _listed(store)
        return _fragment(sessions_fragment(sessions, api_base, no_session), if_none_match)
    if path == "/ui/api/sessions":
        return _json_response(200, store.sessions())
    if path == "/ui/api/health":
        return _json_response(200, {"ok": True})
    if path.startswith("/ui/static/") and path[len("/ui/static/") :] in STATIC:
        name = path[len("/ui/static/") :]
        return PageResponse(200, static_file(name), STATIC[name])
    if path == "/favicon.ico":
        return PageResponse(204, b"", "image/x-icon")
    match = _SESSION_UI.fullmatch(path)
    if match is None:
        return _html(404, not_found_page(path))
    kind, session_id = match.group(1), unquote(match.group(2))
    if session_id == NO_SESSION_PATH:  # OpenTelemetry spans without freeplay.session.id
        spans = store.spans(NO_SESSION)
        session = _no_session(spans)
        traces, completions = page_nodes(spans)
    elif _UUID4.fullmatch(session_id) is None:
        return _html(404, not_found_page(path))
    else:
        session_id = session_id.lower()
        session = store.session(session_id)
        span_traces, span_completions = page_nodes(store.spans(session_id))  # OpenTelemetry
        traces = store.traces(session_id) + span_traces
        completions = store.completions(session_id) + span_completions
    if kind == "sessions":
        return _html(200, session_page(session_id, session, traces, completions))
    if kind == "ui/fragments/sessions":
        return _fragment(session_fragment(session_id, session, traces, completions), if_none_match)
    if session is None:
        return _json_response(404, {"message": f"Session {session_id} not found."})
    return _json_response(200, {"session": session, "traces": traces, "completions": completions})
