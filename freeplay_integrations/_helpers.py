"""Recording helpers that know the bound session: `record`, `trace_scope`, `end_session`, ...

Each helper reads the session (and the trace) bound to the running code, builds an
`Operation` and hands it to the client's recorder: queued for a worker thread in
`recording="background"` mode (the default), sent inline in `"sync"` mode. Outside a
session they raise `NoActiveSessionError`: nothing is ever recorded into a random session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, TypedDict, cast
from uuid import UUID

from freeplay.model import FeedbackValue, JSONValue, SpanKind, TestRunInfo
from freeplay.resources.recordings import RecordPayload, RecordResponse
from freeplay.resources.sessions import TraceInfo

if TYPE_CHECKING:
    from freeplay.model import MediaInputBase64, MediaInputUrl
    from freeplay.resources.prompts import PromptVersionInfo
    from freeplay.resources.recordings import CallInfo, ResponseInfo
    from typing_extensions import Unpack

from ._context import (
    Scope,
    SessionBinding,
    bind_trace,
    current_binding,
    current_trace,
    open_traces_list,
    unbind_trace,
)
from ._errors import ConfigurationError, NoActiveSessionError
from ._ids import new_session_id
from ._recording import (
    Completion,
    CompletionFeedback,
    DeleteSession,
    Operation,
    SessionMetadata,
    Trace,
    TraceFeedback,
    TraceMetadata,
    recorder_for,
    trace_to_json,
)
from ._validation import (
    check_feedback,
    check_metadata,
    check_record_fields,
    check_trace_kind,
)

__all__ = [
    "RecordFields",
    "TraceHandle",
    "attach_session",
    "end_session",
    "record",
    "record_feedback",
    "record_trace_feedback",
    "trace_scope",
    "update_session_metadata",
    "update_trace_metadata",
]

#: The keyword arguments `record()` takes: every `RecordPayload` field but `session_info`.
RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(RecordPayload)) - {"session_info"}

ENDED_MESSAGE = (
    "{what}(): the conversation was ended by end_session() earlier in this request. "
    "Call new_session() first to start another one."
)


def _binding(what: str) -> SessionBinding:
    binding = current_binding()
    if binding is None:
        raise NoActiveSessionError()
    if binding.ended:
        raise NoActiveSessionError(ENDED_MESSAGE.format(what=what))
    return binding


def _project_id(binding: SessionBinding, what: str, given: Any = None) -> str:
    project_id = given or binding.project_id
    if not project_id:
        raise ConfigurationError(
            f"{what}(): no Freeplay project ID. Pass project_id=..., or set the middleware's "
            "`project_id` option, or the FREEPLAY_PROJECT_ID environment variable, or "
            "session_scope(client, project_id=...)."
        )
    return str(project_id)


def _trace(binding: SessionBinding) -> TraceInfo | None:
    """The current trace, if it belongs to the bound session."""
    trace = current_trace()
    if trace is None or trace.session_id != binding.session_id:
        return None
    return trace


def _send(binding: SessionBinding, op: Operation) -> str | None:
    recorder = recorder_for(binding.client)
    if binding.recording == "sync":
        return recorder.deliver(op)
    recorder.submit(op)
    return None


class _RecordRequired(TypedDict):
    all_messages: Sequence[dict[str, Any]]


class RecordFields(_RecordRequired, total=False):
    """`record()`'s keyword arguments: `freeplay.RecordPayload`'s fields but `session_info`
    (and `project_id` optional: it defaults to the bound project)."""

    project_id: str
    inputs: Mapping[str, Any] | None
    prompt_version_info: PromptVersionInfo | None
    call_info: CallInfo | None
    media_inputs: dict[str, MediaInputUrl | MediaInputBase64] | None
    tool_schema: list[dict[str, Any]] | None
    output_schema: dict[str, Any] | None
    response_info: ResponseInfo | None
    test_run_info: TestRunInfo | None
    eval_results: dict[str, bool | float] | None
    parent_id: UUID | None
    completion_id: UUID | None
    trace_info: TraceInfo | None


def record(**fields: Unpack[RecordFields]) -> RecordResponse:
    """Record a completion into the bound session, under the current trace.

    Takes every `freeplay.RecordPayload` field but `session_info`: `all_messages` (the
    last one is the model's answer), `inputs`, `prompt_version_info`, `call_info`, ...
    `project_id` defaults to the bound project, `parent_id` to the current `trace_scope`,
    and `completion_id` is generated here, so the returned ID is the one Freeplay stores
    even when the recording is sent in the background (use it for customer feedback).

    Raises `NoActiveSessionError` outside a session. Delivery failures never raise: they
    are retried, logged and spooled.
    """
    if "session_info" in fields:
        raise TypeError(
            "record() takes the session from the request (or session_scope); do not pass "
            "session_info. To build the payload yourself, use attach_session(payload)."
        )
    if not fields.keys() <= RECORD_FIELDS:
        unknown = fields.keys() - RECORD_FIELDS
        raise TypeError(
            f"record() got unexpected field(s) {', '.join(sorted(unknown))}; it takes the "
            f"fields of freeplay.RecordPayload: {', '.join(sorted(RECORD_FIELDS))}."
        )
    binding = _binding("record")
    project_id = fields["project_id"] = _project_id(binding, "record", fields.get("project_id"))
    messages = fields.get("all_messages")
    if not messages:
        raise ValueError(
            "record() needs all_messages=[...] with at least one message; the last one is "
            "the model's response."
        )
    fields["all_messages"] = list(messages)
    check_record_fields(fields)
    trace = _trace(binding)
    given_parent = fields.get("parent_id")
    if given_parent is not None:
        parent_id: str | None = str(UUID(str(given_parent)))  # a bad one raises here
    else:
        parent_id = None if trace is None else trace.trace_id
    given_completion = fields.get("completion_id")
    if given_completion is None:
        completion_id = new_session_id()  # a random UUID v4, as text
    else:
        completion_id = str(UUID(str(given_completion)))
    # The operation builds its RecordPayload (and the UUIDs) when it is sent, off this path.
    data = cast("dict[str, Any]", fields)
    data["session_info"] = binding.session.session_info
    data["completion_id"] = completion_id
    data["parent_id"] = parent_id
    op = Completion.of_fields(project_id, binding.session_id, data, completion_id)
    answered = _send(binding, op)
    if answered:
        completion_id = answered
    binding.last_completion_id = completion_id
    if isinstance(trace, TraceHandle):
        trace.last_completion_id = completion_id
    return RecordResponse(completion_id=completion_id)


def attach_session(payload: RecordPayload) -> RecordPayload:
    """A copy of `payload` in the bound session, under the current trace.

    For code that builds its own `RecordPayload` and calls `client.recordings.create`
    itself. `parent_id` is only filled in when the payload has none. Raises
    `NoActiveSessionError` outside a session.
    """
    binding = _binding("attach_session")
    changes: dict[str, Any] = {"session_info": binding.session.session_info}
    trace = _trace(binding)
    if payload.parent_id is None and trace is not None:
        changes["parent_id"] = UUID(trace.trace_id)
    return dataclasses.replace(payload, **changes)


class TraceHandle(TraceInfo):
    """The trace of a `trace_scope` block (a `freeplay` `TraceInfo`).

    Set `output` (and, if you have them, `eval_results`) before the block ends; the trace
    is recorded once, when it ends. `last_completion_id` is the last completion recorded
    in it.
    """

    output: JSONValue
    eval_results: dict[str, bool | float] | None
    test_run_info: TestRunInfo | None
    last_completion_id: str | None
    project_id: str
    #: Sent right after the trace (feedback given while it is open).
    _after: list[Operation]
    #: The frame running the trace's `with` block, while it is open.
    _frame: FrameType | None

    def record_output(
        self,
        project_id: str,
        output: JSONValue,
        eval_results: dict[str, bool | float] | None = None,
        test_run_info: TestRunInfo | None = None,
        end_time: datetime | None = None,
    ) -> None:
        """Set the output: the trace is recorded when the `trace_scope` block ends.

        (The SDK's `TraceInfo.record_output` sends at once; in a `trace_scope` that would
        record the trace twice.)
        """
        self.output = output
        if eval_results is not None:
            self.eval_results = eval_results
        if test_run_info is not None:
            self.test_run_info = test_run_info


class trace_scope(Scope[TraceHandle]):
    """Open a trace on the bound session for the block; recordings in it are its children.

    ::

        with trace_scope(question, name="answer") as trace:
            reply = call_llm(question)
            record(all_messages=[..., reply])      # parent_id: this trace
            trace.output = reply

    Works with `with` and `async with`; nested scopes make child traces. The trace is
    recorded once, when the block ends (also when it raises). Raises
    `NoActiveSessionError` outside a session.
    """

    def __init__(
        self,
        input: JSONValue,
        *,
        name: str | None = None,
        agent_name: str | None = None,
        kind: SpanKind | None = None,
        custom_metadata: Mapping[str, str | int | float | bool] | None = None,
    ) -> None:
        if input is None:
            raise ValueError("trace_scope(input): Freeplay needs the trace's input; got None.")
        check_trace_kind(kind)
        if custom_metadata is not None:
            check_metadata(custom_metadata, "trace_scope(custom_metadata)")
        self._input = input
        self._name = name
        self._agent_name = agent_name
        self._kind = kind
        self._metadata = dict(custom_metadata) if custom_metadata is not None else None
        self._stack: list[tuple[TraceHandle, SessionBinding, Any]] = []

    def _enter(self) -> TraceHandle:
        binding = _binding("trace_scope")
        project_id = _project_id(binding, "trace_scope")
        parent = _trace(binding)
        handle = TraceHandle(
            trace_id=new_session_id(),  # a random UUID v4, from the pool
            session_id=binding.session_id,
            _call_support=binding.client.call_support,
            input=self._input,
            agent_name=self._agent_name,
            parent_id=None if parent is None else UUID(parent.trace_id),
            custom_metadata=self._metadata,
            kind=self._kind,
            name=self._name,
        )
        handle.output = None
        handle.eval_results = None
        handle.test_run_info = None
        handle.last_completion_id = None
        handle.project_id = project_id
        handle._after = []
        handle._frame = sys._getframe(2)  # the frame running the `with` block (see current_trace)
        open_traces_list(binding).append(handle)
        self._stack.append((handle, binding, bind_trace(handle)))
        return handle

    def _exit(self) -> None:
        handle, binding, token = self._stack.pop()
        try:
            data = trace_to_json(handle, handle.output, handle.eval_results, handle.test_run_info)
            _send(binding, Trace(handle.project_id, handle.session_id, data))
            for op in handle._after:
                _send(binding, op)
        finally:
            handle._frame = None
            with contextlib.suppress(ValueError):
                open_traces_list(binding).remove(handle)
            try:
                unbind_trace(token)
            except ValueError:
                # Entered in another copy of the context (a generator stepped in fresh
                # copies, see current_trace): that copy is gone. Here, only make sure the closed
                # trace is not left current.
                if current_trace() is handle:
                    bind_trace(_parent_of(handle, binding))


def _parent_of(handle: TraceHandle, binding: SessionBinding) -> TraceInfo | None:
    if handle.parent_id is None:
        return None
    parent_id = str(handle.parent_id)
    return next((t for t in binding.open_traces if t.trace_id == parent_id), None)


def end_session(*, delete: bool = False) -> None:
    """End the conversation: the response expires the session cookie (and sends no
    session header), and the client's next request starts a new session.

    With `delete=True`, Freeplay also deletes the session's data (`sessions.delete`),
    sent like a recording; what is still queued for the session is not sent. After
    `end_session()`, `record()` and `trace_scope` raise until `new_session()`.
    """
    binding = current_binding()
    if binding is None:
        raise NoActiveSessionError()
    binding.ended = True
    if delete:
        project_id = _project_id(binding, "end_session")
        _send(binding, DeleteSession(project_id, binding.session_id))


def _feedback(feedback: Mapping[str, FeedbackValue], what: str) -> dict[str, FeedbackValue]:
    if not isinstance(feedback, Mapping) or not feedback:
        raise ValueError(f"{what}() needs a non-empty dict of feedback, e.g. {{'rating': 5}}.")
    return dict(feedback)


def record_feedback(
    feedback: Mapping[str, FeedbackValue], *, completion_id: str | None = None
) -> str:
    """Customer feedback for a completion (`customer_feedback.update`), sent like a recording.

    `completion_id` defaults to the last completion recorded in the current `trace_scope`,
    else in this request (or scope). Returns the completion ID the feedback is for.
    """
    binding = _binding("record_feedback")
    body = _feedback(feedback, "record_feedback")
    check_feedback(body, "record_feedback()")
    if completion_id is None:
        trace = _trace(binding)
        if isinstance(trace, TraceHandle) and trace.last_completion_id is not None:
            completion_id = trace.last_completion_id
        else:
            completion_id = binding.last_completion_id
        if completion_id is None:
            raise LookupError(
                "record_feedback(): no completion was recorded in this trace or request; "
                "pass completion_id= (the ID record() returned)."
            )
    project_id = _project_id(binding, "record_feedback")
    _send(binding, CompletionFeedback(project_id, binding.session_id, str(completion_id), body))
    return str(completion_id)


def _open_trace(binding: SessionBinding, trace_id: str | None, what: str) -> TraceHandle | None:
    """The open `trace_scope` trace meant by `trace_id` (None: the current one), if any."""
    trace = _trace(binding)
    if trace_id is None and trace is None:
        raise LookupError(f"{what}(): not inside a trace_scope; pass trace_id=.")
    if isinstance(trace, TraceHandle) and (trace_id is None or str(trace_id) == trace.trace_id):
        return trace
    return None


def record_trace_feedback(
    feedback: Mapping[str, FeedbackValue], *, trace_id: str | None = None
) -> str:
    """Customer feedback for a trace (default: the current one), sent like a recording.

    Feedback for a trace still open is sent right after the trace is recorded. Returns the
    trace ID the feedback is for.
    """
    binding = _binding("record_trace_feedback")
    body = _feedback(feedback, "record_trace_feedback")
    check_feedback(body, "record_trace_feedback()")
    project_id = _project_id(binding, "record_trace_feedback")
    handle = _open_trace(binding, trace_id, "record_trace_feedback")
    target = handle.trace_id if handle is not None else str(trace_id)
    op = TraceFeedback(project_id, binding.session_id, target, body)
    if handle is not None:
        handle._after.append(op)
    else:
        _send(binding, op)
    return target


def _metadata(metadata: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{what}() needs a dict of metadata, not {type(metadata).__name__}.")
    return dict(metadata)


def update_session_metadata(metadata: Mapping[str, str | int | float | bool]) -> None:
    """Merge `metadata` into the bound session's metadata on Freeplay (new keys win)."""
    binding = _binding("update_session_metadata")
    body = _metadata(metadata, "update_session_metadata")
    check_metadata(body, "update_session_metadata()")
    project_id = _project_id(binding, "update_session_metadata")
    _send(binding, SessionMetadata(project_id, binding.session_id, body))


def update_trace_metadata(
    metadata: Mapping[str, str | int | float | bool], *, trace_id: str | None = None
) -> None:
    """Merge `metadata` into a trace's metadata (default: the current trace).

    For a trace still open, the metadata is merged into what the trace is recorded with
    when its block ends (no extra request).
    """
    binding = _binding("update_trace_metadata")
    body = _metadata(metadata, "update_trace_metadata")
    check_metadata(body, "update_trace_metadata()")
    handle = _open_trace(binding, trace_id, "update_trace_metadata")
    if handle is not None:
        handle.custom_metadata = {**(handle.custom_metadata or {}), **body}
        return
    project_id = _project_id(binding, "update_trace_metadata")
    _send(binding, TraceMetadata(project_id, binding.session_id, str(trace_id), body))
