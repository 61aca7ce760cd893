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

import hashlib
import html
import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = [
    "HEADERS",
    "SCRIPT",
    "etag",
    "index_page",
    "not_found_page",
    "session_fragment",
    "session_page",
    "sessions_fragment",
]

#: Security headers sent with every HTML page: no inline script, nothing from elsewhere.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self';"
        " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_CSS = """
:root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ee; --bg: #f6f7fb; --card: #fff;
  --trace: #6b4fd8; --completion: #0f8a6c; --accent: #2f5bea; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; gap: 12px; align-items: baseline; padding: 10px 24px;
  background: #1d2330; color: #fff; }
header a { color: #fff; font-weight: 600; text-decoration: none; }
header .muted { color: #aab1c2; }
main { padding: 16px 24px 48px; max-width: 1200px; }
h1 { font-size: 20px; margin: 8px 0 16px; }
code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { margin: 4px 0; padding: 8px; background: #f1f3f8; border-radius: 6px;
  white-space: pre-wrap; word-break: break-word; max-height: 320px; overflow: auto; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.count { display: inline-block; min-width: 24px; padding: 0 8px; border-radius: 12px;
  background: var(--accent); color: #fff; font-size: 13px; text-align: center; }
.live { margin-left: auto; font-size: 12px; color: #7fe0b0; }
.live.down { color: #ff9a8a; }
table { width: 100%; border-collapse: collapse; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
th, td { text-align: left; padding: 8px 12px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: #eef0f6; font-weight: 600; font-size: 12px; text-transform: uppercase;
  letter-spacing: .03em; color: var(--muted); }
td.num { text-align: right; width: 1%; white-space: nowrap; }
.chip { display: inline-block; margin: 0 4px 2px 0; padding: 0 6px; border-radius: 4px;
  background: #eef0f6; font-size: 12px; }
.chip b { font-weight: 600; }
.empty { padding: 24px; background: var(--card); border: 1px dashed var(--line);
  border-radius: 8px; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px;
  margin: 0 0 16px; }
dl.summary dt { color: var(--muted); }
dl.summary dd { margin: 0; }
ul.tree { list-style: none; margin: 0; padding: 0; }
ul.tree ul.tree { margin-left: 22px; padding-left: 10px; border-left: 2px solid var(--line); }
.node { margin: 8px 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 8px 12px; }
.trace > .card { border-left: 4px solid var(--trace); }
.completion > .card { border-left: 4px solid var(--completion); }
.kind { font-size: 11px; font-weight: 700; letter-spacing: .05em; text-transform: uppercase; }
.trace > .card .kind { color: var(--trace); }
.completion > .card .kind { color: var(--completion); }
.head { display: flex; flex-wrap: wrap; gap: 10px; align-items: baseline; }
.head .when { margin-left: auto; }
.label { font-size: 11px; color: var(--muted); text-transform: uppercase; margin-top: 6px; }
.message { margin: 4px 0; padding: 6px 8px; border-radius: 6px; background: #f7f8fb; }
.message .role { font-size: 11px; font-weight: 700; color: var(--muted);
  text-transform: uppercase; }
.message.assistant { background: #eefaf5; }
.message.system, .message.developer { background: #f5f3fe; }
.text { white-space: pre-wrap; word-break: break-word; }
details > summary { cursor: pointer; color: var(--muted); font-size: 12px; }
"""

SCRIPT = """(function () {
  "use strict";
  var url = document.body.getAttribute("data-fragment");
  var target = document.getElementById("content");
  var live = document.getElementById("live");
  if (!url || !target) { return; }
  var busy = false;

  function detailsState() {
    var state = {};
    target.querySelectorAll("details[data-key]").forEach(function (d) {
      state[d.getAttribute("data-key")] = d.open;
    });
    return state;
  }

  function restore(state) {
    target.querySelectorAll("details[data-key]").forEach(function (d) {
      var key = d.getAttribute("data-key");
      if (Object.prototype.hasOwnProperty.call(state, key)) { d.open = state[key]; }
    });
  }

  function setLive(ok) {
    if (!live) { return; }
    live.className = ok ? "live" : "live down";
    live.textContent = ok ? "live" : "server unreachable";
  }

  function poll() {
    if (busy || document.hidden) { return; }
    busy = true;
    var headers = { "If-None-Match": target.getAttribute("data-etag") || "" };
    fetch(url, { headers: headers, cache: "no-store" }).then(function (response) {
      setLive(true);
      if (response.status === 304) { return null; }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      var etag = response.headers.get("ETag") || "";
      return response.text().then(function (text) { return [etag, text]; });
    }).then(function (result) {
      if (result === null) { return; }
      var state = detailsState();
      target.innerHTML = result[1];
      target.setAttribute("data-etag", result[0]);
      restore(state);
      document.dispatchEvent(new CustomEvent("freeplay:updated"));
    }).catch(function () {
      setLive(false);
    }).then(function () {
      busy = false;
    });
  }

  setInterval(poll, 1000);
  document.addEventListener("visibilitychange", poll);
})();
"""


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
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f'<body data-fragment="{_e(fragment_url)}">'
        '<header><a href="/">Local Freeplay</a>'
        '<span class="muted">sessions, traces and completions recorded on this server</span>'
        '<span id="live" class="live">live</span></header>'
        f'<main id="content" data-etag="{_e(etag(fragment))}">{fragment}</main>'
        '<script src="/ui/static/app.js"></script></body></html>\n'
    )


# -- the session list ------------------------------------------------------------------


def sessions_fragment(sessions: Sequence[Mapping[str, Any]], api_base: str = "") -> str:
    parts = [f'<h1>Sessions <span id="session-count" class="count">{len(sessions)}</span></h1>']
    if not sessions:
        hint = f" at <code>FREEPLAY_API_BASE={_e(api_base)}</code>" if api_base else ""
        parts.append(
            f'<p id="no-sessions" class="empty">No sessions yet. Point the Freeplay SDK{hint}'
            " and record a completion or a trace: it shows up here.</p>"
        )
        return "".join(parts)
    parts.append(
        '<table id="sessions"><thead><tr><th>Session</th><th>Metadata</th>'
        '<th class="num">Completions</th><th class="num">Traces</th><th>Last activity</th>'
        "</tr></thead><tbody>"
    )
    for session in sessions:
        sid = _e(session["id"])
        parts.append(
            f'<tr data-session-id="{sid}">'
            f'<td><a class="session-link" href="/sessions/{sid}"><code>{sid}</code></a></td>'
            f'<td class="metadata">{_chips(session["custom_metadata"])}</td>'
            f'<td class="num completion-count">{_e(session["completion_count"])}</td>'
            f'<td class="num trace-count">{_e(session["trace_count"])}</td>'
            f'<td class="last-activity">{_time(session["last_activity"])}</td></tr>'
        )
    parts.append("</tbody></table>")
    return "".join(parts)


def index_page(sessions: Sequence[Mapping[str, Any]], api_base: str = "") -> str:
    return _layout(
        "Local Freeplay", "/ui/fragments/sessions", sessions_fragment(sessions, api_base)
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
        f"{_section('Messages', _messages(completion['messages']))}"
        f"{_section('Inputs', _block(inputs) if inputs else '')}"
        f"{_section('Eval results', _chips(completion['eval_results']))}"
        f"{_section('Feedback', _feedback(completion['feedback']))}"
        f"{_raw('completion', completion['id'], completion['payload'])}"
        "</div></li>"
    )


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
