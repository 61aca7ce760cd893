"""Put the Freeplay session ID (and trace ID) on every log line.

Standard logging: a filter that sets `record.session_id` and `record.trace_id`::

    LOGGING = {
        "version": 1,
        "filters": {
            "freeplay": {"()": "freeplay_integrations.logging.SessionIdFilter", "default": "-"},
        },
        "formatters": {
            "plain": {"format": "%(levelname)s [%(session_id)s] %(name)s: %(message)s"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["freeplay"],
            },
        },
        "root": {"handlers": ["console"], "level": "INFO"},
    }

Attach the filter to the *handler*: a logger's filters only see records logged on that
very logger, not those propagated from its children. With a `QueueHandler`, attach it to
the `QueueHandler`, which runs in the thread that logged. A record that already has a
`session_id` (`extra={"session_id": ...}`, or an earlier pass of the filter) keeps it.

structlog: `add_session_id` is a processor (or `SessionIdProcessor(default=...)`)::

    structlog.configure(processors=[add_session_id, ..., structlog.processors.JSONRenderer()])

The session ID logged is the plain ID Freeplay shows, never the signed value clients send.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from ._context import current_binding, current_trace

__all__ = ["SessionIdFilter", "SessionIdProcessor", "add_session_id"]


class SessionIdFilter(logging.Filter):
    """Set `session_id` and `trace_id` on every record; `default` outside a session/trace.

    Never drops a record. Usable in `dictConfig` with
    `{"()": "freeplay_integrations.logging.SessionIdFilter", "default": "-"}`.
    """

    def __init__(self, default: str | None = "-", name: str = "") -> None:
        super().__init__(name)
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        attributes = record.__dict__
        if "session_id" not in attributes:
            binding = current_binding()
            attributes["session_id"] = self.default if binding is None else binding.session_id
        if "trace_id" not in attributes:
            trace = current_trace()
            attributes["trace_id"] = self.default if trace is None else str(trace.trace_id)
        return True


class SessionIdProcessor:
    """structlog processor: add `session_id` and `trace_id` to the event dict.

    Outside a session (or trace) the key gets `default`, or is left out when `default` is
    None (the default). Keys the event already has are kept.
    """

    __slots__ = ("default",)

    def __init__(self, default: Any = None) -> None:
        self.default = default

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if "session_id" not in event_dict:
            binding = current_binding()
            if binding is not None:
                event_dict["session_id"] = binding.session_id
            elif self.default is not None:
                event_dict["session_id"] = self.default
        if "trace_id" not in event_dict:
            trace = current_trace()
            if trace is not None:
                event_dict["trace_id"] = str(trace.trace_id)
            elif self.default is not None:
                event_dict["trace_id"] = self.default
        return event_dict

    def __repr__(self) -> str:
        return f"SessionIdProcessor(default={self.default!r})"


#: The structlog processor with keys left out outside a session.
add_session_id = SessionIdProcessor()
