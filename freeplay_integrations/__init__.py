"""One Freeplay session per conversation, in Django, Flask and any ASGI app.

The framework adapters live in their own modules (`freeplay_integrations.asgi`,
`.fastapi`, `.django`, `.flask`, `.wsgi`) so that importing this package needs no web
framework.
"""

from __future__ import annotations

from ._context import (
    current_session,
    current_trace,
    new_session,
    require_session,
    run_with_session,
    session_scope,
)
from ._errors import ConfigurationError, NoActiveSessionError
from ._helpers import (
    TraceHandle,
    attach_session,
    end_session,
    record,
    record_feedback,
    record_trace_feedback,
    trace_scope,
    update_session_metadata,
    update_trace_metadata,
)
from ._recording import RecorderStats, configure_recording, flush, recorder_stats

__all__ = [
    "ConfigurationError",
    "NoActiveSessionError",
    "RecorderStats",
    "TraceHandle",
    "attach_session",
    "configure_recording",
    "current_session",
    "current_trace",
    "end_session",
    "flush",
    "new_session",
    "record",
    "record_feedback",
    "record_trace_feedback",
    "recorder_stats",
    "require_session",
    "run_with_session",
    "session_scope",
    "trace_scope",
    "update_session_metadata",
    "update_trace_metadata",
]
