"""The local Freeplay's API: one function per endpoint, taking the store, not the HTTP handler.

Every route is registered in one place, `ROUTES` at the bottom of this module: a method, a
path pattern relative to `API_PREFIX` (groups become `request.args`) and a function
`(api, request) -> Answer`. The HTTP transport (`_http.py`) only reads bytes, applies the
faults and writes the `Answer` back; `Api.answer` does authentication, routing, JSON
parsing and error bodies (`{"message": ...}`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ._otlp import NO_SESSION, OtlpError, decode_traces
from ._store import Store

__all__ = [
    "API_PREFIX",
    "ROUTES",
    "Answer",
    "Api",
    "ApiError",
    "ApiRequest",
    "Route",
    "Router",
]

#: Path prefix of the Freeplay API; the SDK's `api_base` is the server URL plus this.
API_PREFIX = "/api"

_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    re.ASCII | re.IGNORECASE,
)
_UUID_ANY = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE
)


class ApiError(Exception):
    """Raised by a route to answer with an error status and `{"message": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Answer:
    """What a route answers: a status and a JSON payload (`None` is an empty body)."""

    status: int
    payload: Any = None
    headers: Mapping[str, str] | None = None
    #: The request re-sent something already stored (counted in `LocalFreeplay.duplicates`).
    duplicate: bool = False

    @classmethod
    def error(
        cls, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> Answer:
        return cls(status, {"message": message}, headers)


@dataclass(frozen=True)
class ApiRequest:
    """One API request as a route sees it."""

    method: str
    #: Full request path (with `API_PREFIX`), query string removed.
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The route pattern's groups, URL-decoded.
    args: tuple[str, ...] = ()

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (`{}` when empty); `ApiError(400)` otherwise."""
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "Invalid JSON in the request body.") from None
        return _object(value, "request body")


@dataclass
class Api:
    """What routes work on: the store (and, later, projects and prompt templates)."""

    store: Store
    api_key: str
    routes: Router = field(default_factory=lambda: ROUTES)

    def answer(self, request: ApiRequest) -> Answer:
        """Authenticate, route and run `request`; never raises `ApiError`."""
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            message = (
                "Invalid API key."
                if auth.startswith("Bearer ")
                else "Missing 'Authorization: Bearer <key>' header."
            )
            message += " Use the key this local Freeplay server was started with."
            return Answer.error(401, message)
        relative = request.path[len(API_PREFIX) :]
        found = self.routes.match(request.method, relative)
        if found is None:
            return Answer.error(
                404, f"No Freeplay API endpoint at {request.method} {request.path}."
            )
        if isinstance(found, list):
            allow = ", ".join(sorted(found))
            return Answer.error(405, f"Use {allow} for {request.path}.", {"Allow": allow})
        handler, args = found
        try:
            return handler(self, _with_args(request, args))
        except ApiError as error:
            return Answer.error(error.status, error.message)


def _with_args(request: ApiRequest, args: tuple[str, ...]) -> ApiRequest:
    return ApiRequest(request.method, request.path, request.body, request.headers, args)


Handler = Callable[[Api, ApiRequest], Answer]


@dataclass(frozen=True)
class Route:
    method: str
    #: Regular expression matched against the whole path after `API_PREFIX`.
    pattern: str
    handler: Handler


class Router:
    """An ordered route table; the first pattern that matches the path wins."""

    def __init__(self, *routes: Route) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        for pattern, methods in self._routes:
            if pattern.pattern == route.pattern:
                methods[route.method] = route.handler
                return
        self._routes.append((re.compile(route.pattern), {route.method: route.handler}))

    def match(
        self, method: str, path: str
    ) -> tuple[Handler, tuple[str, ...]] | list[str] | None:
        """`(handler, args)`, the allowed methods when only the method is wrong, or None."""
        for pattern, methods in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = methods.get(method)
            if handler is None:
                return list(methods)
            return handler, tuple(unquote(group) for group in match.groups())
        return None


# -- value checks ----------------------------------------------------------------------


def _uuid4(value: str, what: str) -> str:
    if _UUID4.fullmatch(value) is None:
        raise ApiError(400, f"Invalid {what} {value[:64]!r}: it must be a UUID v4.")
    return value.lower()


def _optional_uuid(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or _UUID_ANY.fullmatch(value) is None:
        raise ApiError(400, f"Invalid {key} {str(value)[:64]!r}: it must be a UUID.")
    return value.lower()


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid {what}: expected a JSON object.")
    return value


# -- routes ----------------------------------------------------------------------------


def record_completion(api: Api, request: ApiRequest) -> Answer:
    project_id, session = request.args
    body = request.json()
    session_id = _uuid4(session, "session ID")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ApiError(400, "Invalid completion: 'messages' must be a non-empty list.")
    _optional_uuid(body, "parent_id")
    completion_id = _optional_uuid(body, "completion_id") or str(uuid.uuid4())
    stored = api.store.record_completion(project_id, session_id, completion_id, body)
    return Answer(201, {"completion_id": completion_id}, duplicate=not stored)


def update_completion(api: Api, request: ApiRequest) -> Answer:
    _, completion = request.args
    body = request.json()
    completion_id = _uuid4(completion, "completion ID")
    if not api.store.update_completion(completion_id, body):
        raise ApiError(404, f"Completion {completion_id} not found.")
    return Answer(200, {"completion_id": completion_id})


def record_trace(api: Api, request: ApiRequest) -> Answer:
    project_id, session, trace = request.args
    body = request.json()
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    _optional_uuid(body, "parent_id")
    stored = api.store.record_trace(project_id, session_id, trace_id, body)
    return Answer(201, None, duplicate=not stored)


def update_trace(api: Api, request: ApiRequest) -> Answer:
    project_id, session, trace = request.args
    body = request.json()
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    _object(body.get("metadata"), "metadata")
    _object(body.get("feedback"), "feedback")
    api.store.update_trace(project_id, session_id, trace_id, body)
    return Answer(200, {})


def delete_session(api: Api, request: ApiRequest) -> Answer:
    project_id, session = request.args
    request.json()
    api.store.delete_session(project_id, _uuid4(session, "session ID"))
    return Answer(201, {})


def completion_feedback(api: Api, request: ApiRequest) -> Answer:
    project_id, completion = request.args
    body = request.json()
    completion_id = _uuid4(completion, "completion ID")
    api.store.add_feedback("completion", project_id, completion_id, body)
    return Answer(201, {})


def trace_feedback(api: Api, request: ApiRequest) -> Answer:
    project_id, trace = request.args
    body = request.json()
    api.store.add_feedback("trace", project_id, _uuid4(trace, "trace ID"), body)
    return Answer(201, {})


def session_metadata(api: Api, request: ApiRequest) -> Answer:
    project_id, session = request.args
    body = request.json()
    api.store.merge_session_metadata(project_id, _uuid4(session, "session ID"), body)
    return Answer(200, {})


def trace_metadata(api: Api, request: ApiRequest) -> Answer:
    project_id, session, trace = request.args
    body = request.json()
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    api.store.merge_trace_metadata(project_id, session_id, trace_id, body)
    return Answer(200, {})


def otlp_traces(api: Api, request: ApiRequest) -> Answer:
    """OTLP/HTTP traces (protobuf or JSON), filed under `X-Freeplay-Project-Id`."""
    project_id = request.headers.get("X-Freeplay-Project-Id", "").strip()
    if not project_id:
        raise ApiError(400, "Missing 'X-Freeplay-Project-Id' header.")
    if "/" in project_id or any(c.isspace() for c in project_id):
        raise ApiError(400, f"Invalid project ID {project_id[:64]!r}.")
    try:
        spans = decode_traces(request.body, request.headers)
    except OtlpError as error:
        raise ApiError(error.status, error.message) from None
    api.store.add_spans(project_id, spans, NO_SESSION)
    is_json = request.headers.get("Content-Type", "").lower().startswith("application/json")
    # An empty ExportTraceServiceResponse: `{}` in JSON, zero bytes in protobuf.
    return Answer(200, {} if is_json else None)


# -- the route table: the one place to register an endpoint -----------------------------

_P = "/v2/projects/([^/]+)"
_SEG = "([^/]+)"

ROUTES: Router = Router(
    Route("POST", f"{_P}/sessions/{_SEG}/completions", record_completion),
    Route("POST", f"{_P}/completions/{_SEG}", update_completion),
    Route("PATCH", f"{_P}/sessions/id/{_SEG}/metadata", session_metadata),
    Route("PATCH", f"{_P}/sessions/{_SEG}/traces/id/{_SEG}/metadata", trace_metadata),
    Route("POST", f"{_P}/sessions/{_SEG}/traces/id/{_SEG}", record_trace),
    Route("PATCH", f"{_P}/sessions/{_SEG}/traces/id/{_SEG}", update_trace),
    Route("DELETE", f"{_P}/sessions/{_SEG}", delete_session),
    Route("POST", f"{_P}/completion-feedback/id/{_SEG}", completion_feedback),
    Route("POST", f"{_P}/trace-feedback/id/{_SEG}", trace_feedback),
    Route("POST", "/v0/otel/v1/traces", otlp_traces),
)
