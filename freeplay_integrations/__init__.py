"""One Freeplay session per conversation, in Django, Flask and any ASGI app.

The framework adapters live in their own modules (`freeplay_integrations.asgi`,
`.fastapi`, `.django`, `.flask`, `.wsgi`) so that importing this package needs no web
framework.

The names below are imported on first use (PEP 562 module `__getattr__`): importing the
package, as the pytest plugin does in every test run of a project that has it installed,
loads neither the Freeplay SDK nor `requests`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
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
    "__version__",
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

#: Public name -> the private module that defines it.
_MODULES = {
    "current_session": "._context",
    "current_trace": "._context",
    "new_session": "._context",
    "require_session": "._context",
    "run_with_session": "._context",
    "session_scope": "._context",
    "ConfigurationError": "._errors",
    "NoActiveSessionError": "._errors",
    "TraceHandle": "._helpers",
    "attach_session": "._helpers",
    "end_session": "._helpers",
    "record": "._helpers",
    "record_feedback": "._helpers",
    "record_trace_feedback": "._helpers",
    "trace_scope": "._helpers",
    "update_session_metadata": "._helpers",
    "update_trace_metadata": "._helpers",
    "RecorderStats": "._recording",
    "configure_recording": "._recording",
    "flush": "._recording",
    "recorder_stats": "._recording",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
