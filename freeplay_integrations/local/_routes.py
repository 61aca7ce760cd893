"""The local Freeplay's API: one function per endpoint, taking the store, not the HTTP handler.

Every route is registered in one place, `ROUTES` at the bottom of this module: a method, a
path pattern relative to `API_PREFIX` (groups become `request.args`) and a function
`(api, request) -> Answer`. The HTTP transport (`_http.py`) only reads bytes, applies the
faults and writes the `Answer` back; `Api.answer` does authentication, routing, JSON
parsing and error bodies (`{"message": ...}`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .._validation import (
    check_eval_results,
    check_feedback,
    check_iso_time,
    check_messages,
    check_metadata,
    check_trace_kind,
    is_uuid,
    is_uuid4,
)
from ._otlp import NO_SESSION, OtlpError, decode_traces
from ._store import Store
from ._templates import TemplateFolder

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
    #: Query string parameters (the last value of each).
    query: Mapping[str, str] = field(default_factory=dict)

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
    #: Project ID (lower case) -> name; any other project answers 404 "Project not found".
    projects: Mapping[str, str] = field(default_factory=dict)
    #: Prompt templates served by the prompt-template endpoints (None: none, 404).
    templates: TemplateFolder | None = None
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
    return dataclasses.replace(request, args=args)


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


# -- value checks (the rules live in freeplay_integrations._validation) -------------------


def _rule(check: Callable[..., Any], *args: Any) -> Any:
    """Run a `_validation` check; its `ValueError` becomes a 400 with the same message."""
    try:
        return check(*args)
    except ValueError as error:
        raise ApiError(400, str(error)) from None


def _uuid4(value: str, what: str) -> str:
    if not is_uuid4(value):
        raise ApiError(400, f"Invalid {what} {value[:64]!r}: it must be a UUID v4.")
    return value.lower()


def _optional_uuid(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_uuid(value):
        raise ApiError(400, f"Invalid {key} {str(value)[:64]!r}: it must be a UUID.")
    return str(value).lower()


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid {what}: expected a JSON object.")
    return value


def _optional(body: Mapping[str, Any], key: str, check: Callable[..., Any]) -> None:
    if body.get(key) is not None:
        _rule(check, body[key], key)


def _project(api: Api, project_id: str) -> str:
    if project_id.lower() not in api.projects:
        raise ApiError(404, "Project not found")
    return project_id.lower()


def _epoch(value: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{where} = {value!r}: it must be a number (seconds since the epoch).")


# -- routes ----------------------------------------------------------------------------


def record_completion(api: Api, request: ApiRequest) -> Answer:
    project, session = request.args
    body = request.json()
    project_id = _project(api, project)
    session_id = _uuid4(session, "session ID")
    _rule(check_messages, body.get("messages"))
    session_info = _object(body.get("session_info"), "session_info")
    _optional(session_info, "custom_metadata", check_metadata)
    _optional(body, "custom_metadata", check_metadata)
    _optional(body, "eval_results", check_eval_results)
    call_info = _object(body.get("call_info"), "call_info")
    _epoch(call_info.get("start_time"), "call_info.start_time")
    _epoch(call_info.get("end_time"), "call_info.end_time")
    prompt_info = _object(body.get("prompt_info"), "prompt_info")
    if prompt_info and not isinstance(prompt_info.get("prompt_template_version_id"), str):
        raise ApiError(400, "prompt_info.prompt_template_version_id must be a string.")
    _optional_uuid(body, "parent_id")
    given = body.get("completion_id")
    completion_id = str(uuid.uuid4()) if given is None else _uuid4(str(given), "completion_id")
    template_name = None
    if prompt_info and api.templates is not None:
        version = prompt_info["prompt_template_version_id"]
        template_name = api.templates.name_of_version(project_id, version)
    stored = api.store.record_completion(
        project_id, session_id, completion_id, body, template_name=template_name
    )
    return Answer(201, {"completion_id": completion_id}, duplicate=not stored)


def update_completion(api: Api, request: ApiRequest) -> Answer:
    project, completion = request.args
    body = request.json()
    project_id = _project(api, project)
    completion_id = _uuid4(completion, "completion ID")
    if body.get("new_messages") is not None:
        _rule(check_messages, body["new_messages"], "new_messages")
    _optional(body, "eval_results", check_eval_results)
    if not api.store.has_completion(project_id, completion_id):
        raise ApiError(404, f"Completion {completion_id} not found.")
    api.store.update_completion(completion_id, body)
    return Answer(200, {"completion_id": completion_id})


def record_trace(api: Api, request: ApiRequest) -> Answer:
    project, session, trace = request.args
    body = request.json()
    project_id = _project(api, project)
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    for key in ("input", "output"):
        if key not in body:
            raise ApiError(400, f"Invalid trace: '{key}' is required.")
    if body["input"] is None:
        raise ApiError(400, "Invalid trace: 'input' may not be null.")
    _optional_uuid(body, "parent_id")
    _optional(body, "custom_metadata", check_metadata)
    _optional(body, "eval_results", check_eval_results)
    _rule(check_trace_kind, body.get("kind"))
    _rule(check_iso_time, body.get("start_time"), "start_time")
    _rule(check_iso_time, body.get("end_time"), "end_time")
    stored = api.store.record_trace(project_id, session_id, trace_id, body)
    return Answer(201, None, duplicate=not stored)


def _known_trace(api: Api, project_id: str, session_id: str | None, trace_id: str) -> None:
    if not api.store.has_trace(project_id, trace_id, session_id):
        raise ApiError(404, f"Trace {trace_id} not found.")


def update_trace(api: Api, request: ApiRequest) -> Answer:
    project, session, trace = request.args
    body = request.json()
    project_id = _project(api, project)
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    _optional(body, "metadata", check_metadata)
    _optional(body, "feedback", check_feedback)
    _optional(body, "eval_results", check_eval_results)
    _known_trace(api, project_id, session_id, trace_id)
    api.store.update_trace(project_id, session_id, trace_id, body)
    return Answer(200, {})


def delete_session(api: Api, request: ApiRequest) -> Answer:
    project, session = request.args
    request.json()
    project_id = _project(api, project)
    api.store.delete_session(project_id, _uuid4(session, "session ID"))
    return Answer(201, {})


def completion_feedback(api: Api, request: ApiRequest) -> Answer:
    project, completion = request.args
    body = request.json()
    project_id = _project(api, project)
    completion_id = _uuid4(completion, "completion ID")
    _rule(check_feedback, body)
    if not api.store.has_completion(project_id, completion_id):
        raise ApiError(404, f"Completion {completion_id} not found.")
    api.store.add_feedback("completion", project_id, completion_id, body)
    return Answer(201, {})


def trace_feedback(api: Api, request: ApiRequest) -> Answer:
    project, trace = request.args
    body = request.json()
    project_id = _project(api, project)
    trace_id = _uuid4(trace, "trace ID")
    _rule(check_feedback, body)
    _known_trace(api, project_id, None, trace_id)
    api.store.add_feedback("trace", project_id, trace_id, body)
    return Answer(201, {})


def session_metadata(api: Api, request: ApiRequest) -> Answer:
    project, session = request.args
    body = request.json()
    project_id = _project(api, project)
    session_id = _uuid4(session, "session ID")
    _rule(check_metadata, body)
    if not api.store.has_session(project_id, session_id):
        raise ApiError(404, f"Session {session_id} not found.")
    api.store.merge_session_metadata(project_id, session_id, body)
    return Answer(200, {})


def trace_metadata(api: Api, request: ApiRequest) -> Answer:
    project, session, trace = request.args
    body = request.json()
    project_id = _project(api, project)
    session_id = _uuid4(session, "session ID")
    trace_id = _uuid4(trace, "trace ID")
    _rule(check_metadata, body)
    _known_trace(api, project_id, session_id, trace_id)
    api.store.merge_trace_metadata(project_id, session_id, trace_id, body)
    return Answer(200, {})


def _folder(api: Api) -> TemplateFolder:
    if api.templates is None:
        raise ApiError(
            404,
            "Prompt template not found: this local Freeplay serves no templates (start it with"
            " --templates FOLDER, or LocalFreeplay(templates=FOLDER)).",
        )
    return api.templates


def prompt_by_name(api: Api, request: ApiRequest) -> Answer:
    project, name = request.args
    project_id = _project(api, project)
    environment = request.query.get("environment") or "latest"
    found = _folder(api).by_name(project_id, name, environment)
    if found is None:
        raise ApiError(
            404, f"Prompt template {name!r} not found in environment {environment!r}."
        )
    return Answer(200, found)


def prompts_of_environment(api: Api, request: ApiRequest) -> Answer:
    project, environment = request.args
    project_id = _project(api, project)
    found = _folder(api).all(project_id, environment)
    return Answer(200, {"prompt_templates": found or []})


def prompt_by_version(api: Api, request: ApiRequest) -> Answer:
    project, template_id, version_id = request.args
    project_id = _project(api, project)
    found = _folder(api).by_version(project_id, template_id, version_id)
    if found is None:
        raise ApiError(404, f"Prompt template version {version_id} not found.")
    return Answer(200, found)


def list_projects(api: Api, request: ApiRequest) -> Answer:
    projects = [{"id": pid, "name": name} for pid, name in api.projects.items()]
    return Answer(200, {"projects": projects})


def otlp_traces(api: Api, request: ApiRequest) -> Answer:
    """OTLP/HTTP traces (protobuf or JSON), filed under `X-Freeplay-Project-Id`."""
    project_id = request.headers.get("X-Freeplay-Project-Id", "").strip()
    if not project_id:
        raise ApiError(400, "Missing 'X-Freeplay-Project-Id' header.")
    project_id = _project(api, project_id)
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
    Route("GET", "/v2/projects/all", list_projects),
    Route("GET", f"{_P}/prompt-templates/name/{_SEG}", prompt_by_name),
    Route("GET", f"{_P}/prompt-templates/all/{_SEG}", prompts_of_environment),
    Route("GET", f"{_P}/prompt-templates/id/{_SEG}/versions/{_SEG}", prompt_by_version),
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
