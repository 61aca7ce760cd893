"""The local Freeplay's HTTP transport: a stdlib `ThreadingHTTPServer` and its handler.

The handler only moves bytes: it reads the request, applies the faults to API requests,
hands them to `Api.answer` (`_routes.py`) or the page to `_page.respond`, and writes the
answer back. Nothing here knows an endpoint.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import struct
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from . import _page
from ._faults import Faults
from ._routes import API_PREFIX, Api, ApiRequest

__all__ = ["IDLE_TIMEOUT", "MAX_BODY", "LocalHTTPServer", "ReceivedRequest", "RequestLog"]

logger = logging.getLogger("freeplay_integrations.local")

#: Largest request body accepted (bytes).
MAX_BODY = 32 * 1024 * 1024
#: Seconds an idle keep-alive connection is kept open.
IDLE_TIMEOUT = 60.0


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


def loopback_host(host: str) -> bool:
    """`localhost`, `*.localhost`, or a loopback IP address (127.0.0.0/8, ::1)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a `Host` header value, lower case, without port or brackets."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class LocalHTTPServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` that knows its API, faults, request log and connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        api: Api,
        faults: Faults,
        log: RequestLog,
        allowed_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self.api = api
        self.allowed_hosts = allowed_hosts
        self.faults = faults
        self.log = log
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
        host = host_name(self.headers.get("Host", ""))
        if not (loopback_host(host) or host in self.server.allowed_hosts):
            # DNS rebinding: a page on another name must not read or write this server.
            self._send_json(
                400,
                {
                    "message": f"Host {host[:100]!r} is not served: only loopback names, or"
                    " the names given with allowed_hosts / --allowed-host."
                },
            )
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
        action = self.server.faults.on_request()
        if action.reset:
            self.server.log.add(method, path, 0)
            self._reset_connection()
            return
        if action.status:
            headers = action.headers()
            message = f"Injected fault: {action.status} {_reason(action.status)}."
            self.server.log.add(method, path, action.status)
            self._send_json(action.status, {"message": message}, headers)
            return
        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        request = ApiRequest(method, path, raw, _headers(self.headers), query=query)
        answer = self.server.api.answer(request)
        if answer.duplicate:
            self.server.log.count_duplicate()
        self.server.log.add(method, path, answer.status)
        self._send_json(answer.status, answer.payload, answer.headers)

    # -- web page ----------------------------------------------------------------------

    def _ui(self, path: str) -> None:
        api_base = f"http://{self.headers.get('Host', 'HOST:PORT')}{API_PREFIX}"
        response = _page.respond(
            self.server.api.store,
            self.command,
            path,
            api_base=api_base,
            if_none_match=self.headers.get("If-None-Match"),
        )
        self._send(*response)


class _CaseInsensitive(dict[str, str]):
    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


def _headers(message: Any) -> Mapping[str, str]:
    """The request's headers as a case-insensitive mapping (the first value wins)."""
    return _CaseInsensitive((name.lower(), value) for name, value in reversed(message.items()))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
