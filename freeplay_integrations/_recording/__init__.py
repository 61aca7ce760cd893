"""Delivery of recordings to Freeplay.

The helpers (`record`, `trace_scope`, `end_session`, ...) turn what the app records into
typed operations (`_operations`) and hand them to the client's `Recorder` (`_scheduler`),
which sends them with adaptive concurrency through the SDK (`_transport`, the one place
touching SDK internals), retries transient failures for a bounded time, overflows to a
spool it drains by itself (`_spool`), and flushes at exit (`_hooks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _hooks  # noqa: F401  (installs the process hooks with the first recorder)
from ._hooks import (
    ENV_HANDLE_SIGTERM,
    SIGTERM_EXIT_STATUS,
    install_sigterm_handler,
)
from ._operations import (
    COMPLETION,
    COMPLETION_FEEDBACK,
    DELETE_SESSION,
    ENV_LOG_SESSION_IDS,
    SESSION_METADATA,
    TRACE,
    TRACE_FEEDBACK,
    TRACE_METADATA,
    Completion,
    CompletionFeedback,
    DeleteSession,
    Operation,
    SessionMetadata,
    Trace,
    TraceFeedback,
    TraceMetadata,
    operation_from_json,
    session_ref,
    trace_to_json,
)
from ._scheduler import (
    ENV_SPOOL_PATH,
    Recorder,
    RecorderConfig,
    RecorderStats,
    Route,
    configure_recording,
    flush,
    recorder_for,
    recorder_stats,
    shutdown_timeout,
)
from ._spool import ReplayResult, default_spool_path, read_spool, replay_spool
from ._transport import Failure, SdkTransport, classify

if TYPE_CHECKING:
    from freeplay import Freeplay

__all__ = [
    "COMPLETION",
    "COMPLETION_FEEDBACK",
    "DEFAULT_SPOOL_PATH",
    "DELETE_SESSION",
    "ENV_HANDLE_SIGTERM",
    "ENV_LOG_SESSION_IDS",
    "ENV_SPOOL_PATH",
    "SESSION_METADATA",
    "SIGTERM_EXIT_STATUS",
    "TRACE",
    "TRACE_FEEDBACK",
    "TRACE_METADATA",
    "Completion",
    "CompletionFeedback",
    "DeleteSession",
    "Failure",
    "Operation",
    "Recorder",
    "RecorderConfig",
    "RecorderStats",
    "ReplayResult",
    "Route",
    "SdkTransport",
    "SessionMetadata",
    "Trace",
    "TraceFeedback",
    "TraceMetadata",
    "classify",
    "configure_recording",
    "default_spool_path",
    "flush",
    "install_sigterm_handler",
    "operation_from_json",
    "prepare_recorder",
    "read_spool",
    "recorder_for",
    "recorder_stats",
    "replay_spool",
    "session_ref",
    "shutdown_timeout",
    "trace_to_json",
]

#: Where the spool goes when neither `configure_recording(spool_path=)` nor
#: `$FREEPLAY_SPOOL_PATH` says: a per-user state directory, never the working directory.
DEFAULT_SPOOL_PATH = default_spool_path()


def prepare_recorder(client: Freeplay) -> Recorder:
    """`recorder_for(client)`, called by the adapters when the app is built.

    It installs the exit and fork hooks; no signal handler (see `install_sigterm_handler`).
    """
    return recorder_for(client)
