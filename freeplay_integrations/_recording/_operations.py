"""Typed operations: one class per kind, each knows how to send and serialise itself.

An operation is self-contained: the project, the session, and fixed IDs (a completion's
and a trace's ID are generated before the first attempt), so sending it again after a
retry, a spool replay or a redelivery by another route does not duplicate it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, cast
from uuid import UUID

from freeplay.llm_parameters import LLMParameters
from freeplay.model import MediaInputBase64, MediaInputUrl, TestRunInfo
from freeplay.resources.prompts import PromptVersionInfo
from freeplay.resources.recordings import CallInfo, RecordPayload, ResponseInfo, UsageTokens
from freeplay.resources.sessions import SessionInfo, TraceInfo
from freeplay.support import media_inputs_to_json
from freeplay.utils import convert_provider_message_to_dict

if TYPE_CHECKING:
    from ._transport import SdkResources

__all__ = [
    "COMPLETION",
    "COMPLETION_FEEDBACK",
    "DELETE_SESSION",
    "ENV_LOG_SESSION_IDS",
    "SESSION_METADATA",
    "SPOOL_VERSION",
    "TRACE",
    "TRACE_FEEDBACK",
    "TRACE_METADATA",
    "Completion",
    "CompletionFeedback",
    "DeleteSession",
    "Operation",
    "SessionMetadata",
    "Trace",
    "TraceFeedback",
    "TraceMetadata",
    "operation_from_json",
    "session_ref",
    "trace_to_json",
]

#: Version of the serialised form (a spool line).
SPOOL_VERSION = 1

COMPLETION = "completion"
TRACE = "trace"
COMPLETION_FEEDBACK = "completion_feedback"
TRACE_FEEDBACK = "trace_feedback"
SESSION_METADATA = "session_metadata"
TRACE_METADATA = "trace_metadata"
DELETE_SESSION = "delete_session"

#: Set to "1" to log full session IDs (by default a log line carries `session_ref(id)`).
ENV_LOG_SESSION_IDS = "FREEPLAY_LOG_SESSION_IDS"


def session_ref(session_id: str) -> str:
    """What a log line shows for a session: a short, non-reversible reference.

    Session IDs are bearer tokens unless signed; the full ID is logged only with
    `FREEPLAY_LOG_SESSION_IDS=1`.
    """
    if os.environ.get(ENV_LOG_SESSION_IDS) == "1":
        return session_id
    return "s-" + hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()[:10]


class Operation:
    """One thing to send to Freeplay. Subclasses: one per kind.

    `follows` names the operation this one must be sent after (the API needs the
    completion before its feedback, the trace before its metadata); `provides` names this
    one for operations that follow it. A session exists on Freeplay from its first
    recording, so an operation with `follows_session` (session metadata) is sent after the
    session's recordings (`creates_session`) that were recorded before it. Nothing else is
    ordered.
    """

    kind: ClassVar[str]
    #: Records into the session, so that the session exists on Freeplay once it is sent.
    creates_session: ClassVar[bool] = False
    #: Needs the session to exist: sent after the session's earlier recordings.
    follows_session: ClassVar[bool] = False
    _classes: ClassVar[dict[str, type[Operation]]] = {}

    __slots__ = (
        "attempts",
        "cancelled",
        "dependents",
        "deps_left",
        "first_attempt_at",
        "project_id",
        "queued_at",
        "seq",
        "session_id",
        "size",
        "state",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Operation._classes[cls.kind] = cls

    def __init__(self, project_id: str, session_id: str) -> None:
        self.project_id = project_id
        self.session_id = session_id
        self.queued_at = time.time()
        self.attempts = 0
        self.seq = 0
        self.size = 0
        self.first_attempt_at = 0.0
        self.deps_left = 0
        self.dependents: list[Operation] | None = None
        #: Set when the session is deleted before this was sent: it is not sent.
        self.cancelled = False
        #: Final state once handled: "sent", "failed", "spooled", "cancelled" or "lost".
        self.state: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} session={session_ref(self.session_id)} state={self.state}>"

    # -- what each kind defines ------------------------------------------------------

    def send(self, sdk: SdkResources) -> str | None:
        """Send once through the SDK; raise on failure. A completion returns its ID."""
        raise NotImplementedError

    def data_json(self) -> dict[str, Any]:
        """The kind-specific part of `to_json` (JSON-ready)."""
        raise NotImplementedError

    @classmethod
    def from_data(cls, project_id: str, session_id: str, data: Mapping[str, Any]) -> Operation:
        raise NotImplementedError

    @property
    def provides(self) -> str | None:
        return None

    @property
    def follows(self) -> str | None:
        return None

    @property
    def key(self) -> str:
        """What identifies this operation (a replay skips a second copy)."""
        body = json.dumps(self.data_json(), sort_keys=True, default=_json_default)
        return f"{self.kind}:{self.project_id}:{self.session_id}:{body}"

    def estimate_size(self) -> int:
        """Roughly how many bytes this operation holds (for the queue's byte budget)."""
        return 256

    # -- serialisation ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The operation as a JSON-safe dict, with its "kind" (see `operation_from_json`)."""
        return json.loads(self.to_json_text())  # type: ignore[no-any-return]

    def to_json_text(self) -> str:
        """`to_json()` as compact JSON text, made in one pass (a message body, a spool line)."""
        return _encode_compact(
            {
                "v": SPOOL_VERSION,
                "kind": self.kind,
                "project_id": self.project_id,
                "session_id": self.session_id,
                "data": self.data_json(),
                "queued_at": self.queued_at,
                "attempts": self.attempts,
            }
        )


def operation_from_json(data: Mapping[str, Any]) -> Operation:
    """The operation `op.to_json()` describes. Raises ValueError on anything malformed."""
    try:
        if not isinstance(data, Mapping):
            raise ValueError("an operation must be a JSON object")
        cls = Operation._classes.get(data.get("kind"))  # type: ignore[arg-type]
        if cls is None:
            raise ValueError(f"unknown operation kind {data.get('kind')!r}")
        project_id, session_id, body = data["project_id"], data["session_id"], data["data"]
        if not isinstance(project_id, str) or not isinstance(session_id, str):
            raise ValueError("'project_id' and 'session_id' must be strings")
        if not project_id or not session_id:
            raise ValueError("'project_id' and 'session_id' must not be empty")
        if not isinstance(body, Mapping):
            raise ValueError("'data' must be an object")
        op = cls.from_data(project_id, session_id, body)
    except ValueError:
        raise
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a valid operation: {type(exc).__name__}: {exc}") from exc
    queued_at = data.get("queued_at")
    if isinstance(queued_at, (int, float)) and not isinstance(queued_at, bool):
        op.queued_at = float(queued_at)
    return op


def _required_str(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{name}' must be a non-empty string")
    return value


def _required_dict(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, Mapping):
        raise ValueError(f"'{name}' must be an object")
    return dict(value)


def _estimate(value: Any, depth: int = 0) -> int:
    """A cheap size estimate: string lengths, plus a little per container.

    It runs on the request path (for the queue's byte budget), so it checks exact types
    first (`type(x) is dict` is much cheaper than `isinstance(x, Mapping)`), loops without
    generators, and counts a dict inside a list (a message) in the list's loop rather than
    in a call of its own; other mappings and sequences take the general branch.
    """
    kind = type(value)
    if kind is str:
        return len(value)
    if depth > 4:
        return 64
    if kind is list or kind is tuple:
        size = 16
        for item in value:
            kind = type(item)
            if kind is str:
                size += len(item)
            elif kind is dict and depth < 4:
                size += 16
                for key, field in item.items():
                    size += (len(key) if type(key) is str else 16) + (
                        len(field) if type(field) is str else _estimate(field, depth + 2)
                    )
            else:
                size += _estimate(item, depth + 1)
        return size
    if kind is dict or isinstance(value, Mapping):
        size = 16
        for key, item in value.items():
            size += (len(key) if type(key) is str else 16) + (
                len(item) if type(item) is str else _estimate(item, depth + 1)
            )
        return size
    return 16


# -- the kinds --------------------------------------------------------------------------


class Completion(Operation):
    """`recordings.create(payload)`; the completion ID is fixed in the payload."""

    kind = COMPLETION
    creates_session = True
    __slots__ = ("_fields", "_payload", "_provides")

    def __init__(
        self,
        project_id: str,
        session_id: str,
        payload: RecordPayload,
        *,
        completion_id: str | None = None,
    ) -> None:
        """`completion_id`: `str(payload.completion_id)`, when the caller has it already."""
        super().__init__(project_id, session_id)
        self._payload: RecordPayload | None = payload
        self._fields: dict[str, Any] | None = None
        if completion_id is None and payload.completion_id is not None:
            completion_id = str(payload.completion_id)
        self._provides = None if completion_id is None else f"{COMPLETION}:{completion_id}"

    @classmethod
    def of_fields(
        cls, project_id: str, session_id: str, fields: dict[str, Any], completion_id: str
    ) -> Completion:
        """A completion whose `RecordPayload` is built from `fields` when first needed
        (by the sending thread, off the request path). `fields` are the payload's, but
        `completion_id` and `parent_id` as text; the operation owns the dict."""
        op = cls.__new__(cls)
        Operation.__init__(op, project_id, session_id)
        op._payload = None
        op._fields = fields
        op._provides = f"{COMPLETION}:{completion_id}"
        return op

    @property
    def payload(self) -> RecordPayload:
        payload = self._payload
        if payload is not None:
            return payload
        fields = self._fields
        if fields is None:  # another thread built it meanwhile
            return cast("RecordPayload", self._payload)
        kwargs = dict(fields)  # not changed in place: another thread may be reading it
        kwargs["completion_id"] = UUID(fields["completion_id"])
        parent_id = fields.get("parent_id")
        if parent_id is not None:
            kwargs["parent_id"] = UUID(parent_id)
        payload = self._payload = RecordPayload(**kwargs)
        self._fields = None
        return payload

    def send(self, sdk: SdkResources) -> str | None:
        return str(sdk.recordings.create(self.payload).completion_id)

    def data_json(self) -> dict[str, Any]:
        fields = self._fields
        if fields is not None and fields.keys() <= _PLAIN_COMPLETION_FIELDS:
            return _completion_fields_to_json(fields)
        return _completion_to_json(self.payload)

    @classmethod
    def from_data(cls, project_id: str, session_id: str, data: Mapping[str, Any]) -> Completion:
        if not isinstance(data.get("all_messages"), list):
            raise ValueError("'all_messages' must be a list")
        return cls(project_id, session_id, _completion_from_json(project_id, session_id, data))

    @property
    def provides(self) -> str | None:
        return self._provides

    @property
    def key(self) -> str:
        return self._provides or f"{COMPLETION}:None"

    def estimate_size(self) -> int:
        fields = self._fields
        if fields is not None:  # on the request path: the payload is not built there
            messages, inputs = fields["all_messages"], fields.get("inputs")
        else:
            messages, inputs = self.payload.all_messages, self.payload.inputs
        size = 512 + _estimate(messages)
        return size if inputs is None else size + _estimate(inputs)


class Trace(Operation):
    """`TraceInfo.record_output`: the trace, its input and output, ending at `end_time`."""

    kind = TRACE
    creates_session = True
    __slots__ = ("data",)

    def __init__(self, project_id: str, session_id: str, data: Mapping[str, Any]) -> None:
        super().__init__(project_id, session_id)
        self.data = dict(data)

    def send(self, sdk: SdkResources) -> str | None:
        data = self.data
        parent = data.get("parent_id")
        trace = TraceInfo(
            trace_id=data["trace_id"],
            session_id=self.session_id,
            _call_support=sdk.call_support,
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
            self.project_id,
            data.get("output"),
            eval_results=data.get("eval_results"),
            test_run_info=None if test_run is None else TestRunInfo(**test_run),
            end_time=_datetime(data.get("end_time")),
        )
        return None

    def data_json(self) -> dict[str, Any]:
        return self.data

    @classmethod
    def from_data(cls, project_id: str, session_id: str, data: Mapping[str, Any]) -> Trace:
        _required_str(data, "trace_id")
        if "input" not in data:
            raise ValueError("a trace needs its 'input'")
        return cls(project_id, session_id, data)

    @property
    def provides(self) -> str | None:
        return f"trace:{self.data['trace_id']}"

    @property
    def key(self) -> str:
        return f"{TRACE}:{self.data['trace_id']}"

    def estimate_size(self) -> int:
        return 256 + _estimate(self.data)


class CompletionFeedback(Operation):
    """`customer_feedback.update`: sent after the completion it is for."""

    kind = COMPLETION_FEEDBACK
    __slots__ = ("completion_id", "feedback")

    def __init__(
        self, project_id: str, session_id: str, completion_id: str, feedback: Mapping[str, Any]
    ) -> None:
        super().__init__(project_id, session_id)
        self.completion_id = str(completion_id)
        self.feedback = dict(feedback)

    def send(self, sdk: SdkResources) -> str | None:
        sdk.customer_feedback.update(self.project_id, self.completion_id, self.feedback)
        return None

    def data_json(self) -> dict[str, Any]:
        return {"completion_id": self.completion_id, "feedback": self.feedback}

    @classmethod
    def from_data(
        cls, project_id: str, session_id: str, data: Mapping[str, Any]
    ) -> CompletionFeedback:
        return cls(
            project_id,
            session_id,
            _required_str(data, "completion_id"),
            _required_dict(data, "feedback"),
        )

    @property
    def follows(self) -> str | None:
        return f"completion:{self.completion_id}"


class TraceFeedback(Operation):
    """`customer_feedback.update_trace`: sent after the trace it is for."""

    kind = TRACE_FEEDBACK
    __slots__ = ("feedback", "trace_id")

    def __init__(
        self, project_id: str, session_id: str, trace_id: str, feedback: Mapping[str, Any]
    ) -> None:
        super().__init__(project_id, session_id)
        self.trace_id = str(trace_id)
        self.feedback = dict(feedback)

    def send(self, sdk: SdkResources) -> str | None:
        sdk.customer_feedback.update_trace(self.project_id, self.trace_id, self.feedback)
        return None

    def data_json(self) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "feedback": self.feedback}

    @classmethod
    def from_data(cls, project_id: str, session_id: str, data: Mapping[str, Any]) -> TraceFeedback:
        return cls(
            project_id,
            session_id,
            _required_str(data, "trace_id"),
            _required_dict(data, "feedback"),
        )

    @property
    def follows(self) -> str | None:
        return f"trace:{self.trace_id}"


class SessionMetadata(Operation):
    """`metadata.update_session`."""

    kind = SESSION_METADATA
    follows_session = True
    __slots__ = ("metadata",)

    def __init__(self, project_id: str, session_id: str, metadata: Mapping[str, Any]) -> None:
        super().__init__(project_id, session_id)
        self.metadata = dict(metadata)

    def send(self, sdk: SdkResources) -> str | None:
        sdk.metadata.update_session(self.project_id, self.session_id, self.metadata)
        return None

    def data_json(self) -> dict[str, Any]:
        return {"metadata": self.metadata}

    @classmethod
    def from_data(
        cls, project_id: str, session_id: str, data: Mapping[str, Any]
    ) -> SessionMetadata:
        return cls(project_id, session_id, _required_dict(data, "metadata"))


class TraceMetadata(Operation):
    """`metadata.update_trace`: sent after the trace it is for."""

    kind = TRACE_METADATA
    __slots__ = ("metadata", "trace_id")

    def __init__(
        self, project_id: str, session_id: str, trace_id: str, metadata: Mapping[str, Any]
    ) -> None:
        super().__init__(project_id, session_id)
        self.trace_id = str(trace_id)
        self.metadata = dict(metadata)

    def send(self, sdk: SdkResources) -> str | None:
        sdk.metadata.update_trace(self.project_id, self.session_id, self.trace_id, self.metadata)
        return None

    def data_json(self) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "metadata": self.metadata}

    @classmethod
    def from_data(cls, project_id: str, session_id: str, data: Mapping[str, Any]) -> TraceMetadata:
        return cls(
            project_id,
            session_id,
            _required_str(data, "trace_id"),
            _required_dict(data, "metadata"),
        )

    @property
    def follows(self) -> str | None:
        return f"trace:{self.trace_id}"


class DeleteSession(Operation):
    """`sessions.delete`: sent after what was recorded in the session before it.

    What is still queued for the session when this is submitted is cancelled, not sent.
    """

    kind = DELETE_SESSION
    __slots__ = ()

    def send(self, sdk: SdkResources) -> str | None:
        sdk.sessions.delete(self.project_id, self.session_id)
        return None

    def data_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_data(cls, project_id: str, session_id: str, data: Mapping[str, Any]) -> DeleteSession:
        return cls(project_id, session_id)


# -- completion payloads as JSON --------------------------------------------------------


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


_encode_compact = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode


def _message_json(value: Any) -> Any:
    """`convert_provider_message_to_dict(value)`, without its work when `value` is plain JSON
    already: the SDK's conversion of that is an equal copy, at a dozen `hasattr` calls per
    value (most of a completion's `to_json_text` for the usual list of message dicts)."""
    return value if _is_plain_json(value) else convert_provider_message_to_dict(value)


def _is_plain_json(value: Any) -> bool:
    """Whether `value` is made of dicts with str keys, lists, str, int, float, bool and None
    only (exact types: a subclass may convert differently), with no dict the SDK rewrites
    (a media reference of kind "downloaded_file")."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return True
    if kind is dict:
        if value.get("kind") == "downloaded_file":
            return False
        for key, item in value.items():
            if type(key) is not str or not _is_plain_json(item):
                return False
        return True
    return kind is list and all(_is_plain_json(item) for item in value)


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


#: The fields of a `record()` call that `_completion_fields_to_json` writes as they are.
_PLAIN_COMPLETION_FIELDS = frozenset(
    {
        "project_id",
        "all_messages",
        "session_info",
        "completion_id",
        "parent_id",
        "inputs",
        "eval_results",
        "output_schema",
    }
)


def _completion_fields_to_json(fields: dict[str, Any]) -> dict[str, Any]:
    """`_completion_to_json` of the payload `fields` (a `record()` call's, with only
    `_PLAIN_COMPLETION_FIELDS`) would make, without making it: the Celery route serialises
    each completion on the request path, where the payload, its dataclasses and its UUIDs
    cost more than the JSON itself."""
    inputs = fields.get("inputs")
    return {
        "all_messages": [_message_json(m) for m in fields["all_messages"]],
        "session_custom_metadata": fields["session_info"].custom_metadata,
        "inputs": None if inputs is None else dict(inputs),
        "prompt_version_info": None,
        "call_info": None,
        "media_inputs": None,
        "tool_schema": None,
        "output_schema": fields.get("output_schema"),
        "response_info": None,
        "test_run_info": None,
        "eval_results": fields.get("eval_results"),
        "parent_id": fields.get("parent_id"),
        "completion_id": fields["completion_id"],
        "trace_id": None,
    }


def _completion_to_json(payload: RecordPayload) -> dict[str, Any]:
    """Everything `recordings.create` sends, as JSON (what `_completion_from_json` reads)."""
    call = payload.call_info
    response = payload.response_info
    version = payload.prompt_version_info
    test_run = payload.test_run_info
    return {
        "all_messages": [_message_json(m) for m in payload.all_messages],
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
        else [_message_json(t) for t in payload.tool_schema],
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
