"""Carry the Freeplay session from the code that publishes a Celery task to the worker.

One explicit call, where the Celery app is created (so both the web process and the worker
run it)::

    from celery import Celery
    from freeplay_integrations.celery import enable_session_propagation

    app = Celery("proj")
    enable_session_propagation(app)

A task published while a session is bound (in a request, or a `session_scope`) carries
the session ID, its project ID, the session's custom metadata and the current trace ID in
its message headers. The worker binds that session (and that trace, so recordings made in
the task nest under it) while the task runs, and resets both afterwards: after success,
failure and retry alike. Tasks the task publishes (the next step of a chain, a retry)
carry the same session. A task published outside any session (or after `end_session()`)
runs with none, or with a new one per task under `new_session_if_missing=True`.

Importing this module connects nothing. `enable_session_propagation` connects the signal
handlers once per process; calling it again for the same app replaces that app's settings.
Publishing is process-wide: Celery's `before_task_publish` signal does not say which app
publishes, so once any app has propagation enabled, every task published in this process
while a session is bound carries the headers. A worker of an app without propagation
ignores them.

The worker needs a Freeplay client for the sessions it resumes: `client=`, or one built
from `api_key=`/`api_base=` or the `FREEPLAY_API_KEY`/`FREEPLAY_API_BASE` environment
variables. The headers carry the plain session ID (the broker is yours; no signing).
Message protocol 2 (Celery's default since 4.0) is required.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
import weakref
from collections.abc import Mapping
from contextvars import Token
from typing import TYPE_CHECKING, Any

try:
    from celery import Celery, signals
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "freeplay_integrations.celery needs Celery. "
        "Install it with: pip install 'freeplay-integrations[celery]'"
    ) from exc

# The delivery route (`configure_recording(via=app)`): its task, registered explicitly.
from ._celery_route import DELIVERY_TASK, TransientDeliveryError, register_delivery_task
from ._config import (
    build_client,
    deprecated_shutdown_constant,
    resolve_project_id,
    validate_option,
)
from ._context import (
    SessionBinding,
    bind,
    bind_trace,
    current_binding,
    current_trace,
    new_binding,
    unbind,
    unbind_trace,
)
from ._errors import ConfigurationError
from ._ids import MAX_ID_LENGTH, parse_session_id
from ._recording import flush, shutdown_timeout

if TYPE_CHECKING:
    from freeplay import Freeplay
    from freeplay.resources.sessions import TraceInfo

__all__ = [
    "DELIVERY_TASK",
    "DISPATCH_UID",
    "LOG_INVALID_HEADER",
    "METADATA_HEADER",
    "PROJECT_HEADER",
    "SESSION_HEADER",
    "TRACE_HEADER",
    "TransientDeliveryError",
    "disable_session_propagation",
    "enable_session_propagation",
    "register_delivery_task",
]

logger = logging.getLogger("freeplay_integrations")

#: Task message headers written at publish and read by the worker.
SESSION_HEADER = "freeplay_session_id"
TRACE_HEADER = "freeplay_trace_id"
PROJECT_HEADER = "freeplay_project_id"
METADATA_HEADER = "freeplay_session_metadata"
#: Prefix of the `dispatch_uid` of every signal handler this module connects.
DISPATCH_UID = "freeplay_integrations.celery"
LOG_INVALID_HEADER = "freeplay_integrations.celery: task %s[%s] has an invalid %s header; ignored"


def _option(option: str) -> str:
    return f"`enable_session_propagation({option}=...)`"


class _Settings:
    __slots__ = ("client", "new_session_if_missing", "project_id", "recording")

    def __init__(
        self,
        client: Freeplay,
        project_id: str | None,
        new_session_if_missing: bool,
        recording: str,
    ) -> None:
        self.client = client
        self.project_id = project_id
        self.new_session_if_missing = new_session_if_missing
        self.recording = recording


class _Bound:
    """What `task_prerun` bound for one task execution, until its `task_postrun`."""

    __slots__ = ("request", "session_token", "trace_token")

    def __init__(
        self,
        request: Any,
        session_token: Token[SessionBinding | None],
        trace_token: Token[TraceInfo | None],
    ) -> None:
        self.request = request
        self.session_token = session_token
        self.trace_token = trace_token


_apps: weakref.WeakKeyDictionary[Any, _Settings] = weakref.WeakKeyDictionary()
#: Executions in progress, by `id()` of the task's request context: one per execution,
#: pushed before `task_prerun` and popped after `task_postrun`. `_Bound` holds the context,
#: so its id cannot be reused while the entry exists.
_bound: dict[int, _Bound] = {}
_lock = threading.Lock()


def enable_session_propagation(
    app: Celery,
    *,
    client: Freeplay | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    project_id: str | None = None,
    new_session_if_missing: bool = False,
    recording: str = "background",
) -> None:
    """Carry the bound Freeplay session into `app`'s tasks, and bind it in its workers.

    `project_id` (default `FREEPLAY_PROJECT_ID`) is used for tasks whose publisher did not
    send one. `recording` is the recording mode of the sessions bound in tasks, as the
    middleware's option. Missing or malformed configuration raises `ConfigurationError`.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"enable_session_propagation() takes a Celery app, not {app!r}.")
    if not isinstance(new_session_if_missing, bool):
        raise ConfigurationError(
            f"{_option('new_session_if_missing')} must be True or False, "
            f"not {new_session_if_missing!r}."
        )
    fp = build_client(client=client, api_key=api_key, api_base=api_base, name=_option)
    project = resolve_project_id(project_id, required=False, name=_option)
    mode = validate_option("recording", recording, _option)
    with _lock:
        _apps[app] = _Settings(fp, project, new_session_if_missing, mode)
        _connect()


def disable_session_propagation(app: Celery) -> None:
    """Stop propagating for `app`; the last app disabled disconnects the signal handlers."""
    with _lock:
        _apps.pop(app, None)
        if not _apps:
            _disconnect()


def _connect() -> None:
    for signal, handler, uid in _handlers():
        signal.connect(handler, weak=False, dispatch_uid=uid)


def _disconnect() -> None:
    for signal, handler, uid in _handlers():
        signal.disconnect(handler, dispatch_uid=uid)


def _handlers() -> tuple[tuple[Any, Any, str], ...]:
    return (
        (signals.before_task_publish, _on_publish, f"{DISPATCH_UID}.publish"),
        (signals.task_prerun, _on_prerun, f"{DISPATCH_UID}.prerun"),
        (signals.task_postrun, _on_postrun, f"{DISPATCH_UID}.postrun"),
        (signals.worker_shutdown, _on_worker_shutdown, f"{DISPATCH_UID}.worker_shutdown"),
        (
            signals.worker_process_shutdown,
            _on_worker_shutdown,
            f"{DISPATCH_UID}.worker_process_shutdown",
        ),
    )


# -- publisher side --------------------------------------------------------------------


def _on_publish(sender: Any = None, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """`before_task_publish`: add the bound session to the task's message headers.

    Headers already there (set by the caller, or copied by a retry) are kept.
    """
    if headers is None:
        return
    binding = current_binding()
    if binding is None or binding.ended or SESSION_HEADER in headers:
        return
    headers[SESSION_HEADER] = binding.session_id
    if binding.project_id:
        headers.setdefault(PROJECT_HEADER, binding.project_id)
    trace = current_trace()
    if trace is not None:
        headers.setdefault(TRACE_HEADER, str(trace.trace_id))
    metadata = binding.session.custom_metadata
    if metadata:
        try:
            json.dumps(metadata)
        except (TypeError, ValueError):
            logger.debug("freeplay_integrations.celery: session metadata is not JSON; not sent")
        else:
            headers.setdefault(METADATA_HEADER, metadata)


# -- worker side -----------------------------------------------------------------------


def _header(task: Any, name: str) -> Any:
    request = task.request
    value = getattr(request, name, None)
    if value is None:
        custom = getattr(request, "headers", None)
        if isinstance(custom, Mapping):
            value = custom.get(name)
    return value


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """`task_prerun`: bind the session (and trace) the task was published in."""
    task = task if task is not None else sender
    settings = _apps.get(task.app) if task is not None else None
    if settings is None:
        return
    raw = _header(task, SESSION_HEADER)
    session_id = parse_session_id(raw) if isinstance(raw, str) else None
    if raw is not None and session_id is None:
        logger.warning(LOG_INVALID_HEADER, task.name, task_id, SESSION_HEADER)
    if session_id is None:
        if current_binding() is not None:
            return  # run in the caller's context (eager, `apply()`): it has a session
        if not settings.new_session_if_missing:
            return
        binding = new_binding(
            None,
            settings.client,
            settings.project_id,
            recording=settings.recording,
        )
        trace = None
    else:
        project = _header(task, PROJECT_HEADER)
        metadata = _header(task, METADATA_HEADER)
        binding = new_binding(
            None,
            settings.client,
            project if isinstance(project, str) and project else settings.project_id,
            recording=settings.recording,
            session_id=session_id,
            custom_metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
        )
        trace = _restored_trace(binding, _header(task, TRACE_HEADER), task, task_id)
    request = task.request
    session_token = bind(binding)
    _bound[id(request)] = _Bound(request, session_token, bind_trace(trace))


def _restored_trace(
    binding: SessionBinding, raw: Any, task: Any, task_id: str | None
) -> TraceInfo | None:
    if raw is None:
        return None
    try:
        if not isinstance(raw, str) or len(raw) > MAX_ID_LENGTH:
            raise ValueError(raw)
        trace_id = uuid.UUID(raw)
    except ValueError:
        logger.warning(LOG_INVALID_HEADER, task.name, task_id, TRACE_HEADER)
        return None
    # A handle for nesting: recordings in the task get it as parent. The publisher records
    # the trace itself; its input stays with the publisher.
    return binding.session.restore_trace(trace_id, input=None)


def _on_postrun(sender: Any = None, task: Any = None, **_: Any) -> None:
    """`task_postrun` (after success, failure and retry): reset what prerun bound."""
    task = task if task is not None else sender
    request = getattr(task, "request", None)
    bound = _bound.pop(id(request), None)
    if bound is None:
        return
    try:
        unbind_trace(bound.trace_token)
    finally:
        unbind(bound.session_token)


def _on_worker_shutdown(**_: Any) -> None:
    """Deliver background recordings before a worker (or a pool process) exits."""
    flush(shutdown_timeout())


__getattr__ = deprecated_shutdown_constant(__name__)
