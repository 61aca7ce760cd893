"""The HTTP side of the local Freeplay server: API routes, fault injection and the web page.

Stdlib only (`http.server`). The API lives under `/api` so that the SDK's `api_base` is
`http://HOST:PORT/api`; everything else is the web page and its JSON/fragment endpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from . import _page
from ._store import Store

__all__ = ["API_PREFIX", "Faults", "LocalHTTPServer", "ReceivedRequest", "RequestLog"]

logger = logging.getLogger("freeplay_integrations.local")

#: Path prefix of the Freeplay API; the SDK's `api_base` is the server URL plus this.
API_PREFIX = "/api"
#: Largest request body accepted (bytes).
MAX_BODY = 32 * 1024 * 1024
#: Seconds an idle keep-alive connection is kept open.
IDLE_TIMEOUT = 60.0

_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    re.ASCII | re.IGNORECASE,
)
_UUID_ANY = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE
)


class ReceivedRequest(NamedTuple):
    """One API request as the server saw it; `status` is 0 for a connection reset."""

    method: str
    path: str
    status: int


class RequestLog:
    """API requests received and duplicate recordings; shared across server restarts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        self._duplicates = 0

    def add(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append(ReceivedRequest(method, path, status))

    def count_duplicate(self) -> None:
        with self._lock:
            self._duplicates += 1

    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def duplicates(self) -> int:
        with self._lock:
            return self._duplicates

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._duplicates = 0


# -- fault injection -------------------------------------------------------------------


@dataclass(frozen=True)
class _Action:
    reset: bool = False
    status: int = 0


class Faults:
    """Make the API misbehave, to test retries and timeouts. Thread-safe.

    Faults apply to every request under `/api` (never to the web page), in this order:
    a hang delays the request, then `reset_next`, `fail_next` and `fail_for` decide whether
    it is answered normally. Faulted requests are not stored.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail_count = 0
        self._fail_status = 503
        self._fail_until = 0.0
        self._fail_for_status = 503
        self._reset_count = 0
        self._hang_until = 0.0
        self._released = threading.Event()
        self._latency = 0.0

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next `n` API requests with `status` (e.g. 500, 503, 429) and a JSON body.

        A 429 carries `Retry-After: 0`.
        """
        _check_status(status)
        with self._lock:
            self._fail_count = n
            self._fail_status = status

    def fail_for(self, seconds: float, status: int = 503) -> None:
        """Answer every API request received in the next `seconds` with `status`."""
        _check_status(status)
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_for_status = status

    def hang(self, seconds: float) -> None:
        """Requests received in the next `seconds` wait until the window ends, then proceed.

        `release()` ends the window early and lets waiting requests through.
        """
        with self._lock:
            self._released.set()
            self._released = threading.Event()
            self._hang_until = time.monotonic() + seconds

    def release(self) -> None:
        """End a hang now: waiting requests are answered, new ones are not delayed."""
        with self._lock:
            self._hang_until = 0.0
            self._released.set()

    def latency(self, seconds: float) -> None:
        """Delay every API answer by `seconds` (a Freeplay that far away); 0 removes it.

        Each request waits in its own server thread: concurrent requests are not serialised.
        """
        if seconds < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {seconds}")
        with self._lock:
            self._latency = float(seconds)

    def reset_next(self, n: int = 1) -> None:
        """Close the connection of the next `n` API requests without answering."""
        with self._lock:
            self._reset_count = n

    def clear(self) -> None:
        """Remove every fault and release any hang."""
        with self._lock:
            self._fail_count = 0
            self._fail_until = 0.0
            self._reset_count = 0
            self._latency = 0.0
        self.release()

    @property
    def active(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return bool(
                self._fail_count
                or self._reset_count
                or self._fail_until > now
                or self._hang_until > now
            )

    def _on_request(self) -> _Action:
        with self._lock:
            remaining = self._hang_until - time.monotonic()
            released = self._released
            latency = self._latency
        if latency > 0:
            time.sleep(latency)
        if remaining > 0:
            released.wait(remaining)
        with self._lock:
            if self._reset_count > 0:
                self._reset_count -= 1
                return _Action(reset=True)
            if self._fail_count > 0:
                self._fail_count -= 1
                return _Action(status=self._fail_status)
            if self._fail_until > time.monotonic():
                return _Action(status=self._fail_for_status)
        return _Action()


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"fault status must be an HTTP error status (400-599), got {status}")


# -- the server ------------------------------------------------------------------------


class LocalHTTPServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` that knows its store, faults and open connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        store: Store,
        faults: Faults,
        log: RequestLog,
        api_key: str,
    ) -> None:
        self.store = store
        self.faults = faults
        self.log = log
        self.api_key = api_key
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._closing = False
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> bool:
        with self._connections_lock:
            if self._closing:
                return False
            self._connections.add(connection)
            return True

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Drop every open (keep-alive) connection so no handler outlives the server."""
        with self._connections_lock:
            self._closing = True
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Reply(Exception):
    """Raised by route handlers to answer with an error status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _uuid4(value: str, what: str) -> str:
    if _UUID4.fullmatch(value) is None:
        raise _Reply(400, f"Invalid {what} {value[:64]!r}: it must be a UUID v4.")
    return value.lower()


def _optional_uuid(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or _UUID_ANY.fullmatch(value) is None:
        raise _Reply(400, f"Invalid {key} {str(value)[:64]!r}: it must be a UUID.")
    return value.lower()


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Reply(400, f"Invalid {what}: expected a JSON object.")
    return value


_Route = Callable[["_Handler", tuple[str, ...], dict[str, Any]], tuple[int, Any]]


def _record_completion(h: _Handler, args: tuple[str, ...], body: dict[str, Any]) -> tuple[int, Any]:
    project_id, session = args
    session_id = _uuid4(session, "session ID")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise _Reply(400, "Invalid completion: 'messages' must be a non-empty list.")
    _optional_uuid(body, "parent_id")
    completion_id = _optional_uuid(body, "completion_id") or str(uuid.uuid4())
    if not h.server.store.record_completion(project_id, session_id, completion_id, body):
        h.server.log.count_duplicate()
    return 201, {"completion_id": completion_id}


def _update_completion(h: _Handler, args: tuple[str, ...], body: dict[str, Any]) -> tuple[int, Any]:
    _, completion = args
    completion_id = _uuid4(completion, "completion ID")
    if not h.server.store.update_completion(completion_id, body):
        raise _Reply(404, f"Completion {completion_id} not found.")
    return 200, {"completion_id": completion_id}


def _record_trace(h: _Handler, args: tuple[str, ...], body: dict[str, Any]) -> tuple[int, Any]:
    project_id, session, trace = args
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    _optional_uuid(body, "parent_id")
    if not h.server.store.record_trace(project_id, session_id, trace_id, body):
        h.server.log.count_duplicate()
    return 201, None


def _update_trace(h: _Handler, args: tuple[str, ...], body: dict[str, Any]) -> tuple[int, Any]:
    project_id, session, trace = args
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    _object(body.get("metadata"), "metadata")
    _object(body.get("feedback"), "feedback")
    h.server.store.update_trace(project_id, session_id, trace_id, body)
    return 200, {}


def _delete_session(h: _Handler, args: tuple[str, ...], body: dict[str, Any]) -> tuple[int, Any]:
    project_id, session = args
    h.server.store.delete_session(project_id, _uuid4(session, "session ID"))
    return 201, {}


def _completion_feedback(
    h: _Handler, args: tuple[str, ...], body: dict[str, Any]
) -> tuple[int, Any]:
    project_id, completion = args
    completion_id = _uuid4(completion, "completion ID")
    h.server.store.add_feedback("completion", project_id, completion_id, body)
    return 201, {}


def _trace_feedback(h: _Handler, args: tuple[str, ...], body: dict[str, Any]) -> tuple[int, Any]:
    project_id, trace = args
    h.server.store.add_feedback("trace", project_id, _uuid4(trace, "trace ID"), body)
    return 201, {}


def _session_metadata(h: _Handler, args: tuple[str, ...], body: dict[str, Any]) -> tuple[int, Any]:
    project_id, session = args
    h.server.store.merge_session_metadata(project_id, _uuid4(session, "session ID"), body)
    return 200, {}


def _trace_metadata(h: _Handler, args: tuple[str, ...], body: dict[str, Any]) -> tuple[int, Any]:
    project_id, session, trace = args
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    h.server.store.merge_trace_metadata(project_id, session_id, trace_id, body)
    return 200, {}


_P = "/v2/projects/([^/]+)"
_SEG = "([^/]+)"
#: (path pattern relative to API_PREFIX, {method: handler}); first match wins.
_ROUTES: list[tuple[re.Pattern[str], dict[str, _Route]]] = [
    (re.compile(f"{_P}/sessions/{_SEG}/completions"), {"POST": _record_completion}),
    (re.compile(f"{_P}/completions/{_SEG}"), {"POST": _update_completion}),
    (re.compile(f"{_P}/sessions/id/{_SEG}/metadata"), {"PATCH": _session_metadata}),
    (
        re.compile(f"{_P}/sessions/{_SEG}/traces/id/{_SEG}/metadata"),
        {"PATCH": _trace_metadata},
    ),
    (
        re.compile(f"{_P}/sessions/{_SEG}/traces/id/{_SEG}"),
        {"POST": _record_trace, "PATCH": _update_trace},
    ),
    (re.compile(f"{_P}/sessions/{_SEG}"), {"DELETE": _delete_session}),
    (re.compile(f"{_P}/completion-feedback/id/{_SEG}"), {"POST": _completion_feedback}),
    (re.compile(f"{_P}/trace-feedback/id/{_SEG}"), {"POST": _trace_feedback}),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FreeplayLocal/1"
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server: LocalHTTPServer

    def setup(self) -> None:
        super().setup()
        if not self.server.track(self.connection):
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_GET

    # -- plumbing ----------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self._send(status, body, "application/json", headers)

    def _read_body(self) -> bytes | None:
        """Read the whole body, or answer an error (and close) and return None."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send_json(411, {"message": "Send a Content-Length; chunked bodies are refused."})
            return None
        raw_length = self.headers.get("Content-Length", "0") or "0"
        try:
            length = int(raw_length)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send_json(413 if length > 0 else 400, {"message": "Bad Content-Length."})
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if body is None:
            return
        try:
            if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
                self._api(path, body)
            else:
                self._ui(path)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            logger.exception("local Freeplay server failed on %s %s", self.command, path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json(500, {"message": "Internal error in the local Freeplay server."})

    def _reset_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    # -- API ---------------------------------------------------------------------------

    def _api(self, path: str, raw: bytes) -> None:
        method = self.command
        action = self.server.faults._on_request()
        if action.reset:
            self.server.log.add(method, path, 0)
            self._reset_connection()
            return
        if action.status:
            headers = {"Retry-After": "0"} if action.status == 429 else None
            message = f"Injected fault: {action.status} {_reason(action.status)}."
            self.server.log.add(method, path, action.status)
            self._send_json(action.status, {"message": message}, headers)
            return
        status, payload, headers = self._api_response(method, path, raw)
        self.server.log.add(method, path, status)
        self._send_json(status, payload, headers)

    def _api_response(
        self, method: str, path: str, raw: bytes
    ) -> tuple[int, Any, dict[str, str] | None]:
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {self.server.api_key}":
            message = (
                "Invalid API key."
                if auth.startswith("Bearer ")
                else "Missing 'Authorization: Bearer <key>' header."
            )
            message += " Use the key this local Freeplay server was started with."
            return 401, {"message": message}, None
        relative = path[len(API_PREFIX) :]
        for pattern, methods in _ROUTES:
            match = pattern.fullmatch(relative)
            if match is None:
                continue
            route = methods.get(method)
            if route is None:
                allow = ", ".join(sorted(methods))
                return 405, {"message": f"Use {allow} for {path}."}, {"Allow": allow}
            args = tuple(unquote(group) for group in match.groups())
            try:
                body = self._json_object(raw)
                status, payload = route(self, args, body)
            except _Reply as reply:
                return reply.status, {"message": reply.message}, None
            return status, payload, None
        return 404, {"message": f"No Freeplay API endpoint at {method} {path}."}, None

    @staticmethod
    def _json_object(raw: bytes) -> dict[str, Any]:
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _Reply(400, "Invalid JSON in the request body.") from None
        return _object(value, "request body")

    # -- web page ----------------------------------------------------------------------

    def _ui(self, path: str) -> None:
        if self.command not in ("GET", "HEAD"):
            self._send_json(405, {"message": "The web page is read-only."}, {"Allow": "GET"})
            return
        store = self.server.store
        api_base = f"http://{self.headers.get('Host', 'HOST:PORT')}{API_PREFIX}"
        if path == "/":
            self._html(200, _page.index_page(store.sessions(), api_base))
        elif path == "/ui/fragments/sessions":
            self._fragment(_page.sessions_fragment(store.sessions(), api_base))
        elif path == "/ui/api/sessions":
            self._send_json(200, store.sessions())
        elif path == "/ui/api/health":
            self._send_json(200, {"ok": True})
        elif path == "/ui/static/app.js":
            self._send(200, _page.SCRIPT.encode(), "text/javascript; charset=utf-8")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif match := _SESSION_UI.fullmatch(path):
            self._session_ui(match.group(1), unquote(match.group(2)), path)
        else:
            self._html(404, _page.not_found_page(path))

    def _session_ui(self, kind: str, session_id: str, path: str) -> None:
        if _UUID4.fullmatch(session_id) is None:
            self._html(404, _page.not_found_page(path))
            return
        session_id = session_id.lower()
        store = self.server.store
        session = store.session(session_id)
        traces = store.traces(session_id)
        completions = store.completions(session_id)
        if kind == "sessions":
            self._html(200, _page.session_page(session_id, session, traces, completions))
        elif kind == "ui/fragments/sessions":
            self._fragment(_page.session_fragment(session_id, session, traces, completions))
        elif session is None:
            self._send_json(404, {"message": f"Session {session_id} not found."})
        else:
            self._send_json(200, {"session": session, "traces": traces, "completions": completions})

    def _html(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8", _page.HEADERS)

    def _fragment(self, text: str) -> None:
        tag = _page.etag(text)
        if self.headers.get("If-None-Match") == tag:
            self._send(304, b"", "text/html; charset=utf-8", {"ETag": tag})
        else:
            self._send(200, text.encode(), "text/html; charset=utf-8", {"ETag": tag})


_SESSION_UI = re.compile(r"/(sessions|ui/fragments/sessions|ui/api/sessions)/([^/]+)")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
