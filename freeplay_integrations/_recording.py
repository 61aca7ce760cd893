"""Delivery of recordings to Freeplay: a bounded queue, worker threads, retries and a spool.

One `Recorder` per `freeplay.Freeplay` client, shared by every middleware and
`session_scope` using that client. The helpers (`record`, `trace_scope`, `end_session`, ...)
turn what the app records into `Operation`s, self-contained and serialisable, and hand them
to the client's recorder:

- background (the default): `submit` puts the operation on a bounded queue and returns; no
  network I/O on the request path. A session always maps to the same worker thread, so one
  session's operations are sent in the order they were recorded.
- sync: `deliver` sends inline, with the same retry and error rules. It never raises.

Sending goes through the official SDK (`client.recordings.create`, `sessions.delete`, ...).
Each attempt has a time limit: the SDK's `requests` session has none, so the recorder mounts
an adapter for the client's `api_base` on it that applies `attempt_timeout` to the calls
the recorder makes, and only to those (your own SDK calls keep the SDK's behaviour).

Transient failures (connection errors, timeouts, 408, 425, 429, 5xx) are retried with
exponential backoff and jitter. Other failures are final: 401 and 403 (a wrong key is fixed
by configuration, then a replay delivers) are spooled; the rest (400, 404, 422, ...: a
replay would fail the same way) are counted as failed and logged once with the reason.
What cannot be queued (queue full) or delivered (retries exhausted, flush timeout, process
exit) is written to the spool, a JSON-lines file replayed by
`python -m freeplay_integrations replay SPOOL`. Completion and trace IDs are fixed before
the first attempt, so a replay of something that did arrive does not duplicate it.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import functools
import json
import logging
import os
import random
import re
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

import requests
from freeplay import api_support
from freeplay.errors import FreeplayError
from freeplay.llm_parameters import LLMParameters
from freeplay.model import MediaInputBase64, MediaInputUrl, TestRunInfo
from freeplay.resources.prompts import PromptVersionInfo
from freeplay.resources.recordings import CallInfo, RecordPayload, ResponseInfo, UsageTokens
from freeplay.resources.sessions import SessionInfo, TraceInfo
from freeplay.support import media_inputs_to_json
from freeplay.utils import convert_provider_message_to_dict
from requests.adapters import BaseAdapter, HTTPAdapter

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from freeplay import Freeplay
    from freeplay.support import CallSupport

__all__ = [
    "COMPLETION",
    "COMPLETION_FEEDBACK",
    "DEFAULT_SPOOL_PATH",
    "DELETE_SESSION",
    "ENV_HANDLE_SIGTERM",
    "ENV_SPOOL_PATH",
    "SESSION_METADATA",
    "SIGTERM_EXIT_STATUS",
    "TRACE",
    "TRACE_FEEDBACK",
    "TRACE_METADATA",
    "Failure",
    "Operation",
    "Recorder",
    "RecorderConfig",
    "RecorderStats",
    "ReplayResult",
    "classify",
    "configure_recording",
    "flush",
    "prepare_recorder",
    "read_spool",
    "recorder_for",
    "recorder_stats",
    "replay_spool",
    "trace_to_json",
]

logger = logging.getLogger("freeplay_integrations.recording")

#: Environment variable naming the spool file.
ENV_SPOOL_PATH = "FREEPLAY_SPOOL_PATH"
#: Spool file used when neither `configure_recording(spool_path=)` nor the variable is set
#: (relative to the working directory when the first recorder is created).
DEFAULT_SPOOL_PATH = "freeplay-spool.jsonl"
#: Version of the spool's line format.
SPOOL_VERSION = 1

# Operation kinds (the `kind` of a spool line).
COMPLETION = "completion"
TRACE = "trace"
COMPLETION_FEEDBACK = "completion_feedback"
TRACE_FEEDBACK = "trace_feedback"
SESSION_METADATA = "session_metadata"
TRACE_METADATA = "trace_metadata"
DELETE_SESSION = "delete_session"
_KINDS = frozenset(
    {
        COMPLETION,
        TRACE,
        COMPLETION_FEEDBACK,
        TRACE_FEEDBACK,
        SESSION_METADATA,
        TRACE_METADATA,
        DELETE_SESSION,
    }
)

# Log messages (tests look for them).
LOG_REJECTED = "freeplay_integrations: Freeplay rejected a %s for session %s; not retried: %s"
LOG_UNSENDABLE = "freeplay_integrations: could not send a %s for session %s; not retried: %s"
LOG_RETRY = "freeplay_integrations: %s for session %s failed (attempt %d), retrying in %.2fs: %s"
LOG_SPOOLED = (
    "freeplay_integrations: %d operation(s) not delivered (%s) written to the spool %s; "
    "replay them with: python -m freeplay_integrations replay %s"
)
LOG_SPOOL_FAILED = (
    "freeplay_integrations: LOST %d operation(s): could not write the spool %s (%s). "
    "Set FREEPLAY_SPOOL_PATH (or configure_recording(spool_path=...)) to a writable file."
)
LOG_QUEUE_FULL = (
    "freeplay_integrations: the recording queue is full (%d); %d operation(s) went to the "
    "spool instead. Freeplay is slow or down, or the app records faster than it can send."
)
LOG_STATS = (
    "freeplay_integrations: recordings to %s at exit: queued=%d sent=%d retried=%d "
    "failed=%d spooled=%d cancelled=%d lost=%d"
)
LOG_WORKER_CRASHED = "freeplay_integrations: recorder worker error (the worker carries on)"

#: Statuses retried besides 5xx.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: Final statuses that are spooled anyway: a replay with the right key delivers them.
SPOOLED_STATUSES = frozenset({401, 403})
#: Seconds between two "queue full" / "spooled" log lines (the counts add up meanwhile).
LOG_INTERVAL = 10.0

_STATUS_IN_MESSAGE = re.compile(r"\[(\d{3})\]\s*$")

# -- per-attempt time limit -------------------------------------------------------------

#: The time limit of the attempt running in this context; None outside the recorder.
_attempt_timeout: ContextVar[float | None] = ContextVar("freeplay_attempt_timeout", default=None)


class _TimeoutAdapter(BaseAdapter):
    """Wraps the adapter that served a Freeplay `api_base` on the SDK's `requests` session.

    Requests made while the recorder is sending get the recorder's time limit; every other
    request (your own SDK calls) is passed through untouched. Pools, retries, certificates
    and proxies stay those of the wrapped adapter.
    """

    def __init__(self, inner: BaseAdapter) -> None:
        super().__init__()
        self.inner = inner

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        if timeout is None:
            timeout = _attempt_timeout.get()
        return self.inner.send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
        )

    def close(self) -> None:
        self.inner.close()

    def after_fork(self) -> None:
        """Give the child its own connection pools.

        The pools copied from the parent hold the parent's sockets, and possibly locks a
        parent thread held at the fork: they are replaced, not touched.
        """
        inner = self.inner
        if isinstance(inner, HTTPAdapter):
            # requests keeps the pool sizes it was built with in these (untyped) attributes.
            connections = getattr(inner, "_pool_connections", 10)
            maxsize = getattr(inner, "_pool_maxsize", 10)
            block = getattr(inner, "_pool_block", False)
            inner.proxy_manager = {}
            inner.init_poolmanager(connections, maxsize, block=block)


_adapters: dict[str, _TimeoutAdapter] = {}
_adapters_lock = threading.Lock()


def _install_timeout(api_base: str) -> None:
    """Mount a `_TimeoutAdapter` for `api_base` on the SDK's session (once per base URL).

    requests picks the adapter with the longest matching prefix, so this one serves exactly
    the calls to this Freeplay API and nothing else.
    """
    prefix = api_base.rstrip("/") + "/"
    session = api_support._session
    with _adapters_lock:
        if isinstance(session.adapters.get(prefix), _TimeoutAdapter):
            return
        try:
            inner = session.get_adapter(prefix)
        except requests.exceptions.InvalidSchema:
            return  # not an http(s) URL: the SDK cannot call it either
        adapter = _TimeoutAdapter(inner)
        session.mount(prefix, adapter)
        _adapters[prefix] = adapter


# -- failure classification ------------------------------------------------------------


class Failure(NamedTuple):
    """How to handle a failed attempt."""

    retry: bool
    spool: bool
    status: int | None
    reason: str


def classify(exc: BaseException) -> Failure:
    """Classify an exception raised by an SDK call.

    `recordings.create` wraps the `requests` exception in a `FreeplayError` (as its
    `__cause__`); the other calls raise `FreeplayClientError`/`FreeplayServerError` with the
    status at the end of the message (`... [503]`), or let `requests` exceptions escape.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, requests.HTTPError) and error.response is not None:
            response = error.response
            detail = _response_detail(response)
            return _by_status(response.status_code, f"HTTP {response.status_code}{detail}")
        if isinstance(
            error,
            (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ),
        ):
            return Failure(True, True, None, f"{type(error).__name__}: {error}")
        if isinstance(error, FreeplayError):
            match = _STATUS_IN_MESSAGE.search(str(error))
            if match is not None:
                return _by_status(int(match.group(1)), str(error))
        error = error.__cause__ or error.__context__
    return Failure(False, False, None, f"{type(exc).__name__}: {exc}")


def _by_status(status: int, reason: str) -> Failure:
    if status >= 500 or status in TRANSIENT_STATUSES:
        return Failure(True, True, status, reason)
    return Failure(False, status in SPOOLED_STATUSES, status, reason)


def _response_detail(response: requests.Response) -> str:
    try:
        text = response.text
    except Exception:  # pragma: no cover - defensive
        return ""
    text = " ".join(text.split())[:300]
    return f": {text}" if text else ""


# -- operations -------------------------------------------------------------------------


class Operation:
    """One thing to send to Freeplay: a completion, a trace, feedback, metadata, a delete.

    `data` is a `RecordPayload` for a completion and a JSON-ready dict otherwise. Every
    operation carries the session it belongs to: the recorder routes by it, so one session's
    operations are sent in order.
    """

    __slots__ = (
        "attempts",
        "cancelled",
        "data",
        "kind",
        "project_id",
        "queued_at",
        "seq",
        "session_id",
        "state",
    )

    def __init__(self, kind: str, project_id: str, session_id: str, data: Any) -> None:
        self.kind = kind
        self.project_id = project_id
        self.session_id = session_id
        self.data = data
        self.queued_at = time.time()
        self.attempts = 0
        self.seq = 0
        #: Set when the session was deleted before this was sent: it is not sent.
        self.cancelled = False
        #: Final state once handled: "sent", "failed", "spooled", "cancelled" or "lost".
        self.state: str | None = None

    def __repr__(self) -> str:
        return f"<Operation {self.kind} session={self.session_id} state={self.state}>"

    @property
    def key(self) -> str:
        """What identifies this operation in a spool (replays skip a second copy)."""
        if self.kind == COMPLETION:
            payload = self.data
            return f"{COMPLETION}:{payload.completion_id}"
        if self.kind == TRACE:
            return f"{TRACE}:{self.data['trace_id']}"
        body = json.dumps(self.data, sort_keys=True, default=_json_default)
        return f"{self.kind}:{self.project_id}:{self.session_id}:{body}"

    def to_json(self, api_base: str, reason: str) -> dict[str, Any]:
        data = _completion_to_json(self.data) if self.kind == COMPLETION else self.data
        return {
            "v": SPOOL_VERSION,
            "kind": self.kind,
            "api_base": api_base,
            "project_id": self.project_id,
            "session_id": self.session_id,
            "data": data,
            "queued_at": self.queued_at,
            "attempts": self.attempts,
            "reason": reason,
        }

    @classmethod
    def from_json(cls, line: Mapping[str, Any]) -> Operation:
        kind = line["kind"]
        if kind not in _KINDS:
            raise ValueError(f"unknown operation kind {kind!r}")
        project_id = str(line["project_id"])
        session_id = str(line["session_id"])
        data = line["data"]
        if not isinstance(data, dict):
            raise ValueError("'data' must be an object")
        if kind == COMPLETION:
            data = _completion_from_json(project_id, session_id, data)
        op = cls(kind, project_id, session_id, data)
        if isinstance(line.get("queued_at"), (int, float)):
            op.queued_at = float(line["queued_at"])
        return op


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (UUID, datetime)):
        return value.isoformat() if isinstance(value, datetime) else str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    converted = convert_provider_message_to_dict(value)
    if converted is value:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return converted


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _test_run_to_json(test_run: TestRunInfo | None) -> dict[str, str] | None:
    if test_run is None:
        return None
    return {"test_run_id": test_run.test_run_id, "test_case_id": test_run.test_case_id}


def trace_to_json(
    trace: TraceInfo, output: Any, eval_results: Any, test_run: Any
) -> dict[str, Any]:
    """What `record_trace` sends for `trace`, ending now, as JSON (a TRACE operation's data)."""
    return {
        "trace_id": trace.trace_id,
        "input": trace.input,
        "output": output,
        "parent_id": _str_or_none(trace.parent_id),
        "agent_name": trace.agent_name,
        "custom_metadata": trace.custom_metadata,
        "eval_results": eval_results,
        "test_run_info": _test_run_to_json(test_run),
        "kind": trace.kind,
        "name": trace.name,
        "start_time": trace.start_time.isoformat(),
        "end_time": datetime.now(timezone.utc).isoformat(),
    }


def _completion_to_json(payload: RecordPayload) -> dict[str, Any]:
    """Everything `recordings.create` sends, as JSON (what `_completion_from_json` reads)."""
    call = payload.call_info
    response = payload.response_info
    version = payload.prompt_version_info
    test_run = payload.test_run_info
    return {
        "all_messages": [convert_provider_message_to_dict(m) for m in payload.all_messages],
        "session_custom_metadata": payload.session_info.custom_metadata,
        "inputs": None if payload.inputs is None else dict(payload.inputs),
        "prompt_version_info": None
        if version is None
        else {
            "prompt_template_version_id": version.prompt_template_version_id,
            "environment": version.environment,
        },
        "call_info": None
        if call is None
        else {
            "provider": call.provider,
            "model": call.model,
            "start_time": call.start_time,
            "end_time": call.end_time,
            "model_parameters": None
            if call.model_parameters is None
            else dict(call.model_parameters),
            "provider_info": call.provider_info,
            "usage": None
            if call.usage is None
            else {
                "prompt_tokens": call.usage.prompt_tokens,
                "completion_tokens": call.usage.completion_tokens,
            },
            "api_style": call.api_style,
        },
        "media_inputs": None
        if payload.media_inputs is None
        else {name: media_inputs_to_json(m) for name, m in payload.media_inputs.items()},
        "tool_schema": None
        if payload.tool_schema is None
        else [convert_provider_message_to_dict(t) for t in payload.tool_schema],
        "output_schema": payload.output_schema,
        "response_info": None
        if response is None
        else {
            "is_complete": response.is_complete,
            "function_call_response": None
            if response.function_call_response is None
            else dict(response.function_call_response),
            "prompt_tokens": response.prompt_tokens,
            "response_tokens": response.response_tokens,
        },
        "test_run_info": _test_run_to_json(test_run),
        "eval_results": payload.eval_results,
        "parent_id": _str_or_none(payload.parent_id),
        "completion_id": _str_or_none(payload.completion_id),
        "trace_id": None if payload.trace_info is None else payload.trace_info.trace_id,
    }


def _completion_from_json(
    project_id: str, session_id: str, data: Mapping[str, Any]
) -> RecordPayload:
    call = data.get("call_info")
    response = data.get("response_info")
    version = data.get("prompt_version_info")
    test_run = data.get("test_run_info")
    media = data.get("media_inputs")
    call_info = None
    if call is not None:
        usage = call.get("usage")
        parameters = call.get("model_parameters")
        call_info = CallInfo(
            provider=call.get("provider"),
            model=call.get("model"),
            start_time=call.get("start_time"),
            end_time=call.get("end_time"),
            model_parameters=None if parameters is None else LLMParameters(parameters),
            provider_info=call.get("provider_info"),
            usage=None if usage is None else UsageTokens(**usage),
            api_style=call.get("api_style"),
        )
    trace_info = None
    if data.get("trace_id") is not None:
        trace_info = TraceInfo(
            trace_id=data["trace_id"],
            session_id=session_id,
            _call_support=None,  # type: ignore[arg-type]  # only trace_id is sent
        )
    media_inputs: dict[str, MediaInputUrl | MediaInputBase64] | None = None
    if media is not None:
        media_inputs = {}
        for name, value in media.items():
            if value.get("type") == "url":
                media_inputs[name] = MediaInputUrl(type="url", url=value["url"])
            else:
                media_inputs[name] = MediaInputBase64(
                    type="base64", data=value["data"], content_type=value["content_type"]
                )
    return RecordPayload(
        project_id=project_id,
        all_messages=list(data["all_messages"]),
        session_info=SessionInfo(session_id, data.get("session_custom_metadata")),
        inputs=data.get("inputs"),
        prompt_version_info=None
        if version is None
        else PromptVersionInfo(
            prompt_template_version_id=version["prompt_template_version_id"],
            environment=version.get("environment"),
        ),
        call_info=call_info,
        media_inputs=media_inputs,
        tool_schema=data.get("tool_schema"),
        output_schema=data.get("output_schema"),
        response_info=None if response is None else ResponseInfo(**response),
        test_run_info=None if test_run is None else TestRunInfo(**test_run),
        eval_results=data.get("eval_results"),
        parent_id=None if data.get("parent_id") is None else UUID(data["parent_id"]),
        completion_id=None if data.get("completion_id") is None else UUID(data["completion_id"]),
        trace_info=trace_info,
    )


def _datetime(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class _Sdk:
    """The SDK resources a recorder sends through.

    The recorder keeps these, not the `Freeplay` client, so that a client nobody uses any
    more can be garbage collected (and its recorder with it, once idle).
    """

    __slots__ = (
        "api_base",
        "call_support",
        "customer_feedback",
        "metadata",
        "recordings",
        "sessions",
    )

    def __init__(self, client: Freeplay) -> None:
        self.call_support: CallSupport = client.call_support
        self.api_base: str = str(client.call_support.api_base)
        self.recordings = client.recordings
        self.sessions = client.sessions
        self.customer_feedback = client.customer_feedback
        self.metadata = client.metadata

    def send(self, op: Operation) -> str | None:
        """Send `op` once through the SDK. Returns the completion ID for a completion."""
        kind, data = op.kind, op.data
        if kind == COMPLETION:
            return self.recordings.create(data).completion_id
        if kind == TRACE:
            parent = data.get("parent_id")
            trace = TraceInfo(
                trace_id=data["trace_id"],
                session_id=op.session_id,
                _call_support=self.call_support,
                input=data["input"],
                agent_name=data.get("agent_name"),
                parent_id=None if parent is None else UUID(parent),
                custom_metadata=data.get("custom_metadata"),
                kind=data.get("kind"),
                name=data.get("name"),
                start_time=_datetime(data.get("start_time")),
            )
            test_run = data.get("test_run_info")
            trace.record_output(
                op.project_id,
                data.get("output"),
                eval_results=data.get("eval_results"),
                test_run_info=None if test_run is None else TestRunInfo(**test_run),
                end_time=_datetime(data.get("end_time")),
            )
        elif kind == COMPLETION_FEEDBACK:
            self.customer_feedback.update(op.project_id, data["completion_id"], data["feedback"])
        elif kind == TRACE_FEEDBACK:
            self.customer_feedback.update_trace(op.project_id, data["trace_id"], data["feedback"])
        elif kind == SESSION_METADATA:
            self.metadata.update_session(op.project_id, op.session_id, data["metadata"])
        elif kind == TRACE_METADATA:
            self.metadata.update_trace(
                op.project_id, op.session_id, data["trace_id"], data["metadata"]
            )
        elif kind == DELETE_SESSION:
            self.sessions.delete(op.project_id, op.session_id)
        else:  # pragma: no cover - from_json refuses unknown kinds
            raise ValueError(f"unknown operation kind {kind!r}")
        return None


# -- configuration and counters ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecorderConfig:
    """How a recorder delivers. See `configure_recording` for each setting."""

    spool_path: str
    queue_size: int = 10_000
    workers: int = 4
    attempt_timeout: float = 10.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    put_timeout: float = 0.0
    sync_timeout: float = 15.0
    shutdown_timeout: float = 5.0
    idle_timeout: float = 30.0

    def validate(self) -> RecorderConfig:
        for name in ("queue_size", "workers", "max_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"configure_recording({name}=...) must be an int >= 1, not {value!r}."
                )
        for name in (
            "attempt_timeout",
            "backoff_base",
            "backoff_max",
            "put_timeout",
            "sync_timeout",
            "shutdown_timeout",
            "idle_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(
                    f"configure_recording({name}=...) must be a number of seconds >= 0, "
                    f"not {value!r}."
                )
        if self.attempt_timeout <= 0:
            raise ConfigurationError(
                "configure_recording(attempt_timeout=...) must be > 0: an attempt without a "
                "time limit lets a hung Freeplay block a worker forever."
            )
        if not isinstance(self.spool_path, str) or not self.spool_path:
            raise ConfigurationError(
                f"configure_recording(spool_path=...) must be a file path, not {self.spool_path!r}."
            )
        return self


@dataclasses.dataclass(frozen=True)
class RecorderStats:
    """Counters of a recorder (or the sum over every recorder).

    Every operation handed to a recorder ends in exactly one of `sent`, `failed`,
    `spooled`, `cancelled` and `lost`; `pending` are queued or being sent right now.
    """

    #: Operations accepted on the background queue.
    queued: int = 0
    #: Operations delivered (background and sync).
    sent: int = 0
    #: Retry attempts made after a transient failure.
    retried: int = 0
    #: Operations Freeplay refused with a final 4xx (or that could not be sent at all):
    #: logged with the reason, not spooled, as a replay would fail the same way.
    failed: int = 0
    #: Operations written to the spool (queue full, retries exhausted, flush timeout, exit).
    spooled: int = 0
    #: Operations dropped because `end_session(delete=True)` deleted their session first.
    cancelled: int = 0
    #: Operations that could not even be written to the spool (logged as LOST).
    lost: int = 0
    #: Of the spooled ones, how many found the queue full.
    overflowed: int = 0
    #: Queued or in flight now.
    pending: int = 0

    def __add__(self, other: RecorderStats) -> RecorderStats:
        return RecorderStats(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )


_TERMINAL = ("sent", "failed", "spooled", "cancelled", "lost")


class _RateLimit:
    """Allows a log line at most every `interval` seconds; counts what happened meanwhile."""

    __slots__ = ("count", "interval", "next_at")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0
        self.count = 0

    def hit(self, n: int) -> int:
        """Add `n`; return the count to log now (and reset), or 0 to stay quiet."""
        self.count += n
        now = time.monotonic()
        if now < self.next_at:
            return 0
        self.next_at = now + self.interval
        count, self.count = self.count, 0
        return count


# -- the spool --------------------------------------------------------------------------

_spool_lock = threading.Lock()


def _append_lines(path: str, lines: Iterable[str]) -> None:
    """Append whole lines with one `write` each (O_APPEND: processes do not interleave)."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with _spool_lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            for line in lines:
                data = line.encode("utf-8")
                while data:
                    written = os.write(fd, data)
                    data = data[written:]
        finally:
            os.close(fd)


def read_spool(path: str) -> tuple[list[tuple[Operation, str]], list[str]]:
    """The operations in a spool file (each with its `api_base`), and its unreadable lines."""
    operations: list[tuple[Operation, str]] = []
    bad: list[str] = []
    with open(path, encoding="utf-8") as spool:
        for raw in spool:
            line = raw.strip()
            if not line:
                continue
            try:
                parsed = json.loads(line)
                operations.append((Operation.from_json(parsed), str(parsed.get("api_base", ""))))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad.append(line)
    return operations, bad


# -- the recorder -----------------------------------------------------------------------


class _Lane:
    """One worker thread and its FIFO queue. A session always maps to the same lane."""

    __slots__ = ("cond", "current", "done_seq", "last_seq", "queue", "thread")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.queue: deque[Operation] = deque()
        self.current: Operation | None = None
        self.thread: threading.Thread | None = None
        #: Sequence number of the last operation queued on this lane.
        self.last_seq = 0
        #: Every operation with a sequence number up to this one is handled.
        self.done_seq = 0


def _reached(lane: _Lane, target: int) -> bool:
    return lane.done_seq >= target


class Recorder:
    """Sends one Freeplay client's operations, in the background or inline.

    Get the one for a client with `recorder_for(client)`; it is shared by every middleware
    and `session_scope` using that client.
    """

    def __init__(self, client: Freeplay, config: RecorderConfig) -> None:
        self._sdk = _Sdk(client)
        self.api_base = self._sdk.api_base
        self._config = config.validate()
        self._lanes: tuple[_Lane, ...] = ()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("queued", "retried", "overflowed", *_TERMINAL), 0)
        self._overflow_log = _RateLimit(LOG_INTERVAL)
        self._spool_log = _RateLimit(LOG_INTERVAL)
        #: issue-16 hook: an external route (`configure_recording(via=...)`), or None.
        self._route: Any = None
        _install_timeout(self.api_base)

    def __repr__(self) -> str:
        return f"<Recorder {self.api_base} {self.stats()}>"

    @property
    def config(self) -> RecorderConfig:
        return self._config

    def configure(self, **changes: Any) -> None:
        config = dataclasses.replace(self._config, **changes).validate()
        if config.workers != self._config.workers and self._lanes:
            raise ConfigurationError(
                "configure_recording(workers=...) must be called before the first recording "
                "is queued: the worker threads of this client are already running."
            )
        self._config = config

    # -- counters ----------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _finish(self, op: Operation, state: str) -> bool:
        """Give `op` its final state, once; False if it already had one."""
        with self._lock:
            if op.state is not None:
                return False
            op.state = state
            self._counts[state] += 1
            return True

    def stats(self) -> RecorderStats:
        pending = 0
        for lane in self._lanes:
            with lane.cond:
                pending += len(lane.queue) + (lane.current is not None)
        with self._lock:
            return RecorderStats(**self._counts, pending=pending)

    # -- background --------------------------------------------------------------------

    def _start_lanes(self) -> tuple[_Lane, ...]:
        with self._lock:
            if not self._lanes:
                self._lanes = tuple(_Lane() for _ in range(self._config.workers))
            return self._lanes

    def submit(self, op: Operation) -> None:
        """Queue `op` for a worker thread. Never does network I/O; never blocks for long.

        When the queue is full (after waiting up to `put_timeout`), `op` goes to the spool.
        """
        # issue-16 hook: an external route (`via=`) takes `op` first; False means it could
        # not (the broker is down), and `op` is delivered here, in-process, with the spool.
        route = self._route
        if route is not None and route.submit(op):
            return
        lanes = self._lanes or self._start_lanes()
        lane = lanes[hash(op.session_id) % len(lanes)]
        config = self._config
        capacity = max(1, config.queue_size // len(lanes))
        with lane.cond:
            if op.kind == DELETE_SESSION:
                self._cancel_locked(lane, op.session_id)
            if len(lane.queue) >= capacity and config.put_timeout > 0:
                lane.cond.wait_for(lambda: len(lane.queue) < capacity, config.put_timeout)
            if len(lane.queue) < capacity:
                lane.last_seq += 1
                op.seq = lane.last_seq
                lane.queue.append(op)
                if lane.thread is None:
                    lane.thread = threading.Thread(
                        target=self._work,
                        args=(lane,),
                        name=f"freeplay-recorder-{lanes.index(lane)}",
                        daemon=True,
                    )
                    lane.thread.start()
                lane.cond.notify_all()
                queued = True
            else:
                queued = False
        if queued:
            self._count("queued")
            return
        self._count("overflowed")
        self._spool([op], "the recording queue is full")
        with self._lock:
            count = self._overflow_log.hit(1)
        if count:
            logger.warning(LOG_QUEUE_FULL, config.queue_size, count)

    def _cancel_locked(self, lane: _Lane, session_id: str) -> None:
        """Cancel what is queued (or being retried) for a session about to be deleted."""
        for queued in lane.queue:
            if queued.session_id == session_id and queued.kind != DELETE_SESSION:
                queued.cancelled = True
        current = lane.current
        if current is not None and current.session_id == session_id:
            current.cancelled = True
        lane.cond.notify_all()

    def cancel_session(self, session_id: str) -> None:
        """Do not send what is still queued for `session_id` (it is being deleted)."""
        lanes = self._lanes
        if lanes:
            lane = lanes[hash(session_id) % len(lanes)]
            with lane.cond:
                self._cancel_locked(lane, session_id)

    def _work(self, lane: _Lane) -> None:
        while True:
            with lane.cond:
                while not lane.queue:
                    if not lane.cond.wait(self._config.idle_timeout) and not lane.queue:
                        lane.thread = None  # the next submit starts a new worker
                        return
                op = lane.queue.popleft()
                lane.current = op
                lane.cond.notify_all()  # room on the queue
            try:
                self._run(op, functools.partial(self._backoff, lane, op), None)
            except BaseException:  # pragma: no cover - _run handles every failure itself
                logger.exception(LOG_WORKER_CRASHED)
            finally:
                with lane.cond:
                    lane.current = None
                    if op.seq > lane.done_seq:
                        lane.done_seq = op.seq
                    lane.cond.notify_all()

    @staticmethod
    def _backoff(lane: _Lane, op: Operation, delay: float) -> None:
        """Sleep `delay` seconds, or less if `op` is cancelled or spooled meanwhile."""
        with lane.cond:
            lane.cond.wait_for(lambda: op.cancelled or op.state is not None, delay)

    # -- sending -----------------------------------------------------------------------

    def deliver(self, op: Operation) -> str | None:
        """Send `op` now, in this thread, with retries; spool it if that fails. Never raises.

        Returns the completion ID Freeplay answered for a delivered completion, else None.
        At most `sync_timeout` seconds are spent retrying.
        """
        if op.kind == DELETE_SESSION:
            self.cancel_session(op.session_id)
        deadline = time.monotonic() + self._config.sync_timeout
        try:
            return self._run(op, time.sleep, deadline)
        except Exception:  # pragma: no cover - _run handles every failure itself
            logger.exception(LOG_WORKER_CRASHED)
            return None

    def _attempt(self, op: Operation) -> str | None:
        token = _attempt_timeout.set(self._config.attempt_timeout)
        try:
            return self._sdk.send(op)
        finally:
            _attempt_timeout.reset(token)

    def _delay(self, attempts: int) -> float:
        config = self._config
        delay = min(float(config.backoff_max), config.backoff_base * 2.0 ** (attempts - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def _run(
        self, op: Operation, sleep: Callable[[float], object], deadline: float | None
    ) -> str | None:
        """Send `op`, retrying transient failures; spool or drop what finally fails."""
        while True:
            if op.state is not None:  # spooled by a flush that gave up waiting
                return None
            if op.cancelled:
                self._finish(op, "cancelled")
                return None
            op.attempts += 1
            try:
                result = self._attempt(op)
            except Exception as exc:
                failure = classify(exc)
            else:
                self._finish(op, "sent")
                return result
            if not failure.retry:
                if failure.spool:
                    self._spool([op], failure.reason)
                elif self._finish(op, "failed"):
                    message = LOG_REJECTED if failure.status is not None else LOG_UNSENDABLE
                    logger.error(message, op.kind, op.session_id, failure.reason)
                return None
            delay = self._delay(op.attempts)
            out_of_time = deadline is not None and time.monotonic() + delay > deadline
            if op.attempts >= self._config.max_attempts or out_of_time:
                self._spool([op], f"{failure.reason} (after {op.attempts} attempts)")
                return None
            self._count("retried")
            logger.info(LOG_RETRY, op.kind, op.session_id, op.attempts, delay, failure.reason)
            sleep(delay)

    # -- spool -------------------------------------------------------------------------

    def _spool(self, ops: Iterable[Operation], reason: str) -> int:
        """Write `ops` (those not yet handled) to the spool. Returns how many were written."""
        path = self._config.spool_path
        claimed: list[Operation] = []
        for op in ops:
            if op.cancelled:
                self._finish(op, "cancelled")
            elif self._finish(op, "spooled"):
                claimed.append(op)
        if not claimed:
            return 0
        try:
            lines = [
                json.dumps(op.to_json(self.api_base, reason), default=_json_default) + "\n"
                for op in claimed
            ]
            _append_lines(path, lines)
        except (OSError, TypeError, ValueError) as exc:
            with self._lock:
                for op in claimed:
                    op.state = "lost"
                self._counts["spooled"] -= len(claimed)
                self._counts["lost"] += len(claimed)
            logger.error(LOG_SPOOL_FAILED, len(claimed), path, exc)
            return 0
        with self._lock:
            count = self._spool_log.hit(len(claimed))
        if count:
            logger.warning(LOG_SPOOLED, count, reason, path, path)
        return len(claimed)

    # -- flush -------------------------------------------------------------------------

    def _targets(self) -> list[tuple[_Lane, int]]:
        targets = []
        for lane in self._lanes:
            with lane.cond:
                targets.append((lane, lane.last_seq))
        return targets

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is handled; spool what is left at `timeout`.

        Returns True when nothing had to be spooled by this call.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._flush(self._targets(), deadline)

    def _flush(self, targets: list[tuple[_Lane, int]], deadline: float | None) -> bool:
        complete = True
        for lane, target in targets:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            with lane.cond:
                done = lane.cond.wait_for(functools.partial(_reached, lane, target), remaining)
            if not done:
                self._spool_lane(lane, target)
                complete = False
        return complete

    def _spool_lane(self, lane: _Lane, target: int) -> None:
        """Spool what is queued or in flight on `lane` up to sequence number `target`."""
        with lane.cond:
            taken: list[Operation] = []
            current = lane.current
            if current is not None and current.seq <= target:
                taken.append(current)
            while lane.queue and lane.queue[0].seq <= target:
                taken.append(lane.queue.popleft())
            if lane.done_seq < target:
                lane.done_seq = target
        # An operation in flight may still arrive: the spool replays it idempotently.
        self._spool(taken, "not delivered before the flush timeout")
        with lane.cond:
            lane.cond.notify_all()  # wake a worker backing off on a now spooled operation

    def _after_fork(self) -> None:
        self._lanes = ()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self._counts, 0)


# -- the registry: one recorder per client ---------------------------------------------

_registry: weakref.WeakKeyDictionary[Any, Recorder] = weakref.WeakKeyDictionary()
_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
_registry_lock = threading.Lock()
_defaults: dict[str, Any] = {}
_hooks_installed = False
#: issue-16 hook: the process-wide `configure_recording(via=...)`, or None.
_default_via: Any = None


def _route_for(via: Any, recorder: Recorder) -> Any:
    """issue-16 hook: the route `via` names for `recorder` (None: in-process).

    Something with `submit(op) -> bool` is the route itself; a Celery app gets a
    `CeleryRoute` (imported only then); False goes back to in-process delivery.
    """
    if via is False:
        return None
    if callable(getattr(via, "submit", None)):
        return via
    if _is_celery(via):
        from ._celery_route import CeleryRoute

        return CeleryRoute(via, recorder)
    raise _bad_via(via)


def _is_celery(via: Any) -> bool:
    return callable(getattr(via, "send_task", None)) and hasattr(via, "conf")


def _bad_via(via: Any) -> ConfigurationError:
    return ConfigurationError(
        f"configure_recording(via=...) takes a Celery app, an object with submit(op), or "
        f"False (deliver in-process), not {via!r}."
    )


def _default_config() -> RecorderConfig:
    options = dict(_defaults)
    spool_path = options.pop("spool_path", None) or os.environ.get(ENV_SPOOL_PATH)
    return RecorderConfig(
        spool_path=os.path.abspath(spool_path or DEFAULT_SPOOL_PATH), **options
    ).validate()


def recorder_for(client: Freeplay) -> Recorder:
    """The recorder of `client`, created on first use (with `configure_recording` defaults)."""
    recorder = _registry.get(client)
    if recorder is not None:
        return recorder
    with _registry_lock:
        recorder = _registry.get(client)
        if recorder is None:
            _install_process_hooks()
            recorder = Recorder(client, _default_config())
            if _default_via is not None:  # issue-16 hook
                recorder._route = _route_for(_default_via, recorder)
            _registry[client] = recorder
            _recorders.add(recorder)
        return recorder


def configure_recording(
    client: Freeplay | None = None,
    *,
    spool_path: str | os.PathLike[str] | None = None,
    queue_size: int | None = None,
    workers: int | None = None,
    attempt_timeout: float | None = None,
    max_attempts: int | None = None,
    backoff_base: float | None = None,
    backoff_max: float | None = None,
    put_timeout: float | None = None,
    sync_timeout: float | None = None,
    shutdown_timeout: float | None = None,
    idle_timeout: float | None = None,
    via: Any = None,
) -> None:
    """Tune how recordings are delivered. Settings left as None are unchanged.

    With `client`, only that client's recorder changes; without, the process-wide
    defaults change, for every recorder (existing ones included).

    - `spool_path`: the spool file (default `$FREEPLAY_SPOOL_PATH`, else
      `./freeplay-spool.jsonl`).
    - `queue_size` (10,000): operations waiting, over all workers, before new ones are
      spooled instead. `put_timeout` (0 s): how long `record()` may wait for room first.
    - `workers` (4): sending threads; one session always uses the same one. Only before
      the first recording.
    - `attempt_timeout` (10 s): time limit of one HTTP attempt (connect, and each read).
    - `max_attempts` (6), `backoff_base` (0.5 s), `backoff_max` (30 s): retries of
      transient failures, waiting `base * 2**n` (capped, with jitter) in between.
    - `sync_timeout` (15 s): in `recording="sync"` mode, the most time spent retrying.
    - `shutdown_timeout` (5 s): how long process exit waits for the queue.
    - `idle_timeout` (30 s): an idle worker thread exits; the next recording starts one.
    - `via`: a Celery app: background recordings are published as tasks for a worker
      (`freeplay_integrations.celery.register_delivery_task`); when its broker is
      unreachable they are delivered in-process. False: back to in-process delivery.
    """
    global _default_via
    if not (via is None or via is False or _is_celery(via) or hasattr(via, "submit")):
        raise _bad_via(via)  # issue-16 hook
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("spool_path", None if spool_path is None else os.path.abspath(spool_path)),
            ("queue_size", queue_size),
            ("workers", workers),
            ("attempt_timeout", attempt_timeout),
            ("max_attempts", max_attempts),
            ("backoff_base", backoff_base),
            ("backoff_max", backoff_max),
            ("put_timeout", put_timeout),
            ("sync_timeout", sync_timeout),
            ("shutdown_timeout", shutdown_timeout),
            ("idle_timeout", idle_timeout),
        )
        if value is not None
    }
    if client is not None:
        recorder = recorder_for(client)
        recorder.configure(**changes)
        if via is not None:  # issue-16 hook
            recorder._route = _route_for(via, recorder)
        return
    with _registry_lock:
        dataclasses.replace(_default_config(), **changes).validate()
        _defaults.update(changes)
        recorders = list(_recorders)
        if via is not None:  # issue-16 hook
            _default_via = None if via is False else via
    for recorder in recorders:
        recorder.configure(**changes)
        if via is not None:  # issue-16 hook
            recorder._route = _route_for(via, recorder)


def recorder_stats(client: Freeplay | None = None) -> RecorderStats:
    """Counters of `client`'s recorder, or the sum over every recorder of the process."""
    if client is not None:
        recorder = _registry.get(client)
        return RecorderStats() if recorder is None else recorder.stats()
    total = RecorderStats()
    for recorder in list(_recorders):
        total = total + recorder.stats()
    return total


def flush(timeout: float | None = None) -> bool:
    """Wait until every background recording so far is delivered or finally failed.

    With a `timeout` (seconds), what is still queued or in flight when it expires is
    written to the spool. Returns True when nothing is left (nothing had to be spooled).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    recorders = list(_recorders)
    targets = [(recorder, recorder._targets()) for recorder in recorders]
    complete = True
    for recorder, lanes in targets:
        complete = recorder._flush(lanes, deadline) and complete
    return complete


# -- process hooks: exit and fork -------------------------------------------------------


def prepare_recorder(client: Freeplay) -> Recorder:
    """`recorder_for(client)`, called by the adapters when the app is built.

    Creating the recorder at start-up rather than at the first recording installs the
    process hooks from the thread that builds the app: usually the main thread, the only
    one that may set a signal handler (the first recording may happen in any thread).
    """
    recorder = recorder_for(client)
    _install_sigterm_handler()
    return recorder


def _install_process_hooks() -> None:
    global _hooks_installed
    _install_sigterm_handler()
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


#: Set to "0" to keep Python's default SIGTERM action (the recorder then cannot flush
#: when the process is stopped with SIGTERM, unless your server handles it).
ENV_HANDLE_SIGTERM = "FREEPLAY_HANDLE_SIGTERM"

#: Exit status of a process stopped by the recorder's SIGTERM handler: what a shell
#: reports for a process killed by SIGTERM.
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


def _install_sigterm_handler() -> None:
    """Make SIGTERM a normal exit, so that the exit flush runs, when nobody handles it.

    Python's default action for SIGTERM ends the process at once: no `finally`, no
    `atexit`, and whatever the recorder still holds is lost. Servers that handle SIGTERM
    themselves (uvicorn, gunicorn, hypercorn, Celery) keep their handler: this is only
    installed over the default action (waitress, a bare `wsgiref`, scripts), and only from
    the main thread. Your own handler, installed before or after, takes precedence.
    """
    if os.environ.get(ENV_HANDLE_SIGTERM, "1") == "0":
        return
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        return


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM, nobody else handling it: exit like Ctrl-C does, by raising in the main thread.

    `finally` blocks and `atexit` handlers run, the recorder's included: it delivers what is
    queued, or spools it, within `shutdown_timeout`. A second SIGTERM ends the process at
    once, as Python's default action does.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(SIGTERM_EXIT_STATUS)


def _at_exit() -> None:
    recorders = list(_recorders)
    if not recorders:
        return
    timeout = max(recorder.config.shutdown_timeout for recorder in recorders)
    flush(timeout)
    for recorder in recorders:
        stats = recorder.stats()
        if stats == RecorderStats():
            continue
        level = logging.WARNING if stats.spooled or stats.lost or stats.failed else logging.INFO
        logger.log(
            level,
            LOG_STATS,
            recorder.api_base,
            stats.queued,
            stats.sent,
            stats.retried,
            stats.failed,
            stats.spooled,
            stats.cancelled,
            stats.lost,
        )


def _after_fork_in_child() -> None:
    """The child starts with empty queues and no threads (the parent sends its own)."""
    global _registry_lock, _adapters_lock, _spool_lock
    _registry_lock = threading.Lock()
    _adapters_lock = threading.Lock()
    _spool_lock = threading.Lock()
    for recorder in list(_recorders):
        recorder._after_fork()
    for adapter in list(_adapters.values()):
        adapter.after_fork()


# -- replay -----------------------------------------------------------------------------


@dataclasses.dataclass
class ReplayResult:
    """What `replay_spool` did."""

    #: Operations read from the spool.
    read: int = 0
    #: Delivered now.
    sent: int = 0
    #: Refused by Freeplay for good (a 4xx other than 401/403): dropped, and logged.
    failed: int = 0
    #: Still not deliverable: written back to the spool for a later replay.
    kept: int = 0
    #: Not sent because the spool also deletes their session, or a second copy.
    skipped: int = 0
    #: Lines that are not valid operations: moved to `<spool>.bad`.
    unreadable: int = 0
    #: Could not be written back to the spool: the renamed copy of the spool is kept.
    lost: int = 0
    #: That renamed copy, when it had to be kept; None otherwise.
    kept_copy: str | None = None


#: After this many operations in a row could not be delivered, a replay stops trying and
#: keeps the rest: Freeplay is still down.
REPLAY_GIVE_UP_AFTER = 3


def replay_spool(
    path: str | os.PathLike[str],
    *,
    api_key: str,
    api_base: str | None = None,
    config: RecorderConfig | None = None,
) -> ReplayResult:
    """Send again what a spool holds; what still fails is written back to the spool.

    The file is renamed while it is replayed, so a running app can keep appending to
    `path`. `api_base` defaults to the one each line was recorded for. Operations for a
    session that a later line of the spool deletes are skipped.
    """
    from freeplay import Freeplay

    path = os.path.abspath(path)
    result = ReplayResult()
    if not os.path.exists(path):
        return result
    working = f"{path}.replaying-{os.getpid()}"
    os.replace(path, working)
    operations, bad = read_spool(working)
    result.read = len(operations)
    if bad:
        result.unreadable = len(bad)
        _append_lines(path + ".bad", [line + "\n" for line in bad])

    last_delete: dict[tuple[str, str], int] = {}
    for index, (op, _) in enumerate(operations):
        if op.kind == DELETE_SESSION:
            last_delete[(op.project_id, op.session_id)] = index
    base_config = config or RecorderConfig(spool_path=path, max_attempts=3)
    base_config = dataclasses.replace(base_config, spool_path=path).validate()
    recorders: dict[str, Recorder] = {}
    seen: set[str] = set()
    failures_in_a_row = 0
    for index, (op, line_base) in enumerate(operations):
        deleted_at = last_delete.get((op.project_id, op.session_id), -1)
        key = op.key
        if (op.kind != DELETE_SESSION and index < deleted_at) or key in seen:
            result.skipped += 1
            continue
        seen.add(key)
        base = api_base or line_base
        recorder = recorders.get(base)
        if recorder is None:
            client = Freeplay(freeplay_api_key=api_key, api_base=base)
            recorder = recorders[base] = Recorder(client, base_config)
        if failures_in_a_row >= REPLAY_GIVE_UP_AFTER:
            recorder._spool([op], "not replayed: Freeplay is still unreachable")
            continue
        recorder.deliver(op)
        if op.state == "sent":
            failures_in_a_row = 0
        elif op.state == "spooled":
            failures_in_a_row += 1
    for recorder in recorders.values():
        stats = recorder.stats()
        result.sent += stats.sent
        result.failed += stats.failed
        result.kept += stats.spooled
        result.lost += stats.lost
    if result.lost:
        result.kept_copy = working
    else:
        os.remove(working)
    return result
