"""The session bound to the running code: one contextvar, holding a per-request object.

The contextvar is set once per request by an adapter and reset in a `finally`. It holds a
`SessionBinding`, which is *changed* (never re-set) by `new_session()`: context copies made
for worker threads, streamed bodies and background tasks share the same binding object, so
a change made in any of them is what the adapter sees when it writes the response.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar, Token
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._errors import NoActiveSessionError
from ._ids import Signer, new_session_id, parse_session_id

if TYPE_CHECKING:
    from freeplay import Freeplay
    from freeplay.resources.sessions import Session, TraceInfo

__all__ = [
    "Scope",
    "SessionBinding",
    "abound_steps",
    "bound_steps",
    "current_binding",
    "current_session",
    "current_trace",
    "new_binding",
    "new_session",
    "require_binding",
    "require_session",
    "run_with_session",
    "session_scope",
]


class SessionBinding:
    """What a request (or a `session_scope`) knows about its Freeplay session.

    `session` is the SDK `Session` in use; `session_id` its ID, and `token` the value clients
    send back (the ID, signed when a secret is set); `changed` is True once `new_session()`
    replaced the one the request arrived with; `ended` is True after `end_session()`.
    """

    __slots__ = (
        "_metadata",
        "_session",
        "changed",
        "client",
        "ended",
        "last_completion_id",
        "open_traces",
        "project_id",
        "recording",
        "session_id",
        "signer",
        "token",
    )

    # Built by `new_binding()`, not by calling the class: Python 3.11 runs a Python __init__
    # through a C path that costs a request about 0.7k instructions more than filling in a
    # blank instance from a function.
    _metadata: dict[str, Any] | None
    _session: Session | None
    changed: bool
    client: Freeplay
    ended: bool
    #: ID of the last completion `record()` made in this request or scope.
    last_completion_id: str | None
    #: The traces `trace_scope` has open in this request, oldest first (see _helpers); ()
    #: until the first one (`open_traces_list`): most requests open none.
    open_traces: list[Any] | tuple[()]
    project_id: str | None
    recording: str
    session_id: str
    signer: Signer | None
    token: str

    @property
    def session(self) -> Session:
        """The SDK `Session`; a resumed one is restored on first use (no HTTP call either way)."""
        session = self._session
        if session is None:
            session = self._session = self.client.sessions.restore_session(
                self.session_id, custom_metadata=self._metadata
            )
        return session

    @session.setter
    def session(self, session: Session) -> None:
        self._session = session
        self.session_id = session_id = str(session.session_id)
        self.token = _token(self.signer, session_id)

    def replace(self, custom_metadata: Mapping[str, Any] | None = None) -> Session:
        """Start a new session for the rest of this request and for the response."""
        if custom_metadata is None:
            custom_metadata = self.session.custom_metadata
        self.session = self.client.sessions.create(
            custom_metadata=dict(custom_metadata) if custom_metadata is not None else None
        )
        self.changed = True
        self.ended = False
        return self.session

    def __repr__(self) -> str:
        return f"<SessionBinding {self.session_id} changed={self.changed} ended={self.ended}>"


def new_binding(
    session: Session | None,
    client: Freeplay,
    project_id: str | None,
    recording: str = "background",
    signer: Signer | None = None,
    session_id: str | None = None,
    custom_metadata: dict[str, Any] | None = None,
) -> SessionBinding:
    """A `SessionBinding` for `session`, else for `session_id`, else for a new session.

    The one way every adapter, Celery and `session_scope` start or resume a session: by ID,
    the SDK `Session` built on first use (see `SessionBinding.session`). Adapters pass every
    argument positionally (keywords cost more than the rest).
    """
    if session is not None:
        session_id = str(session.session_id)
    elif session_id is None:
        session_id = new_session_id()  # what `sessions.create()` would pick
    binding = SessionBinding()
    binding.session_id = session_id
    # `_token`'s rule, inlined: calling it costs each request about 0.7k instructions.
    binding.token = session_id if signer is None else signer.sign(session_id)
    binding._session = session
    binding._metadata = custom_metadata
    binding.client = client
    binding.project_id = project_id
    binding.recording = recording
    binding.signer = signer
    binding.changed = False
    binding.ended = False
    binding.last_completion_id = None
    binding.open_traces = ()
    return binding


_open_traces_lock = threading.Lock()


def open_traces_list(binding: SessionBinding) -> list[Any]:
    """`binding.open_traces`, made a list on the binding's first trace (once, whichever
    of the threads sharing the binding gets there first)."""
    traces = binding.open_traces
    if isinstance(traces, list):
        return traces
    with _open_traces_lock:
        traces = binding.open_traces
        if not isinstance(traces, list):
            traces = binding.open_traces = []
        return traces


def _token(signer: Signer | None, session_id: str) -> str:
    """The value clients send back for `session_id`: the ID, signed when a secret is set."""
    return session_id if signer is None else signer.sign(session_id)


_binding: ContextVar[SessionBinding | None] = ContextVar("freeplay_session", default=None)

#: Called with the binding each time one is bound and after `new_session()` changed it.
#: Empty unless a wiring call (e.g. `opentelemetry.instrument_tracer_provider`) added one.
_bind_listeners: list[Callable[[SessionBinding], None]] = []


def add_bind_listener(listener: Callable[[SessionBinding], None]) -> Callable[[], None]:
    """Call `listener(binding)` on every `bind()` and after `new_session()`; returns a
    function that removes it again. Listeners must be fast and must not raise."""
    _bind_listeners.append(listener)

    def remove() -> None:
        if listener in _bind_listeners:
            _bind_listeners.remove(listener)

    return remove


def _notify(binding: SessionBinding) -> None:
    for listener in tuple(_bind_listeners):
        listener(binding)
_trace: ContextVar[TraceInfo | None] = ContextVar("freeplay_trace", default=None)


def current_binding() -> SessionBinding | None:
    return _binding.get()


def require_binding() -> SessionBinding:
    binding = _binding.get()
    if binding is None:
        raise NoActiveSessionError()
    return binding


def bind(binding: SessionBinding) -> Token[SessionBinding | None]:
    """Bind `binding` for the running context. Pair with `unbind(token)` in a `finally`."""
    token = _binding.set(binding)
    if _bind_listeners:
        _notify(binding)
    return token


#: Undo the `bind()` that returned the token (the ContextVar's own method: no Python frame
#: on the per-request path).
unbind: Callable[[Token[SessionBinding | None]], None] = _binding.reset


def current_session() -> Session | None:
    """The Freeplay `Session` of the running request or scope, or None outside one."""
    binding = _binding.get()
    return None if binding is None else binding.session


def require_session() -> Session:
    """Like `current_session()`, but raises `NoActiveSessionError` outside a session."""
    return require_binding().session


def new_session(custom_metadata: Mapping[str, Any] | None = None) -> Session:
    """Start a fresh conversation: a new session for the rest of this request and the next.

    Inside a request, the response carries the new session's ID. The current session's
    custom metadata (user, tenant, ...) carries over unless `custom_metadata` is given.
    """
    binding = require_binding()
    session = binding.replace(custom_metadata)
    if _bind_listeners:
        _notify(binding)
    return session


def current_trace() -> TraceInfo | None:
    """The trace opened by the innermost `trace_scope`, or None.

    Normally the trace contextvar: 0.06 to 0.1 µs, what every `record()` pays. One case
    needs more: a sync generator that opened a `trace_scope` and is iterated one step at a
    time, each step in a fresh copy of the request's context (Starlette's
    `StreamingResponse`, Django's ASGI handler). A value set in one step is gone in the
    next, so the contextvar shows the trace's parent there. The trace is still open on the
    request's binding, and the frame running its `with` block (the generator's) is on the
    stack: that identifies it without guessing, so a concurrent task of the same request,
    which does not run inside that frame, is not affected. No thread, task or context
    identifies those steps (each may run in another worker thread), hence the frames; the
    walk costs 1.2 to 1.8 µs and runs only when the contextvar disagrees with the binding's
    innermost open trace (`bench/asgi_overhead.py` measures both paths).
    """
    trace = _trace.get()
    binding = _binding.get()
    if binding is None:
        return trace
    open_traces = binding.open_traces
    if open_traces and open_traces[-1] is not trace:
        opened_here = _opened_on_this_stack(open_traces)
        if opened_here is not None and _is_ancestor(trace, opened_here, open_traces):
            return opened_here  # type: ignore[no-any-return]
    return trace


def _opened_on_this_stack(open_traces: Sequence[Any]) -> Any:
    """The innermost open trace whose `with` block is running on the current stack."""
    frames = set()
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.add(id(frame))
        frame = frame.f_back
    for handle in reversed(open_traces):
        opened_in = getattr(handle, "_frame", None)
        if opened_in is not None and id(opened_in) in frames:
            return handle
    return None


def _is_ancestor(trace: TraceInfo | None, handle: Any, open_traces: Sequence[Any]) -> bool:
    """Whether `trace` (None: the top level) is `handle` or one of its ancestors."""
    by_id = {t.trace_id: t for t in open_traces}
    current = handle
    while current is not None:
        if trace is not None and current.trace_id == trace.trace_id:
            return True
        parent_id = current.parent_id
        if parent_id is None:
            return trace is None
        current = by_id.get(str(parent_id))
        if current is None:  # the parent is not a trace_scope of this request
            return trace is not None and str(parent_id) == trace.trace_id
    return False


T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
_END: Any = object()


def bound_steps(binding: SessionBinding, iterator: Iterator[T]) -> Iterator[T]:
    """Yield from `iterator` with `binding` bound around each step and unbound in between,
    in whichever thread runs the step: a streamed body that a server drives after the
    adapter returned, where a thread it reuses must never start with a session."""
    while True:
        token = bind(binding)
        try:
            item = next(iterator, _END)
        finally:
            unbind(token)
        if item is _END:
            return
        yield item


async def abound_steps(binding: SessionBinding, iterator: AsyncIterator[T]) -> AsyncIterator[T]:
    """`bound_steps` for an async iterator: each step binds and unbinds in the task running it."""
    while True:
        token = bind(binding)
        try:
            item = await anext(iterator, _END)
        finally:
            unbind(token)
        if item is _END:
            return
        yield item


def run_with_session(function: Callable[P, R]) -> Callable[P, R]:
    """`function`, made to run with the current session (and trace) bound, in any thread.

    For threads and executors you start yourself inside a request, which do not see the
    request's context::

        pool.submit(run_with_session(summarise), text)
        threading.Thread(target=run_with_session(work)).start()

    The session is taken now (raises `NoActiveSessionError` outside one), bound while the
    function runs, and reset after; `new_session()` inside it changes the request's session.
    """
    binding = require_binding()
    trace = current_trace()

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        token = bind(binding)
        try:
            trace_token = bind_trace(trace)
            try:
                return function(*args, **kwargs)
            finally:
                unbind_trace(trace_token)
        finally:
            unbind(token)

    return run


def bind_trace(trace: TraceInfo | None) -> Token[TraceInfo | None]:
    return _trace.set(trace)


unbind_trace: Callable[[Token[TraceInfo | None]], None] = _trace.reset


class Scope(Generic[T]):
    """A context manager for both `with` and `async with`: subclasses define `_enter()`
    (what the block gets) and `_exit()` (run also when the block raises)."""

    def _enter(self) -> T:
        raise NotImplementedError

    def _exit(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> T:
        return self._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()

    async def __aenter__(self) -> T:
        return self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()


class session_scope(Scope["Session"]):
    """Bind a session outside a web request: workers, scripts, tests.

    ``session_id`` resumes that session (a UUID v4), otherwise a new one is started.
    ``project_id`` defaults to the ``FREEPLAY_PROJECT_ID`` environment variable. Usable with
    ``with`` and ``async with``; nested scopes restore the outer session on exit.
    """

    def __init__(
        self,
        client: Freeplay,
        session_id: str | None = None,
        *,
        project_id: str | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        recording: str = "background",
    ) -> None:
        if recording not in ("background", "sync"):
            raise ValueError(f"recording must be 'background' or 'sync', not {recording!r}")
        self._client = client
        self._session_id: str | None = None
        if session_id is not None:
            self._session_id = parse_session_id(str(session_id))
            if self._session_id is None:
                raise ValueError(
                    f"session_scope: {str(session_id)[:80]!r} is not a UUID v4 session ID."
                )
        self._project_id = project_id or os.environ.get("FREEPLAY_PROJECT_ID") or None
        self._metadata = dict(custom_metadata) if custom_metadata is not None else None
        self._recording = recording
        self._tokens: list[Token[SessionBinding | None]] = []

    def _enter(self) -> Session:
        binding = new_binding(
            None,
            self._client,
            self._project_id,
            recording=self._recording,
            session_id=self._session_id,
            custom_metadata=self._metadata,
        )
        self._tokens.append(bind(binding))
        return binding.session

    def _exit(self) -> None:
        unbind(self._tokens.pop())
