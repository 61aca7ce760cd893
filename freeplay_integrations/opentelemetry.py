"""The Freeplay session on OpenTelemetry spans, and an exporter to Freeplay's OTLP endpoint.

Needs the extra ``opentelemetry`` (``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp-proto-http``); nothing else in the package imports it::

    from opentelemetry.sdk.trace import TracerProvider
    from freeplay_integrations.opentelemetry import instrument_tracer_provider

    provider = TracerProvider()
    instrument_tracer_provider(provider)  # FREEPLAY_API_KEY, _API_BASE, _PROJECT_ID

Span attributes reach every exporter on the provider: a session ID set on a span goes to
every observability backend the provider exports to, and an unsigned session ID is a bearer
token for its conversation. Pass ``hashed=True`` to a processor on a provider whose spans do
not go to Freeplay. Outgoing W3C baggage is never set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace as _trace_api
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "freeplay_integrations.opentelemetry needs OpenTelemetry: "
        "pip install 'freeplay-integrations[opentelemetry]'"
    ) from error

from ._config import build_client, resolve_project_id
from ._context import SessionBinding, add_bind_listener, current_binding, current_trace

if TYPE_CHECKING:
    from freeplay import Freeplay
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

__all__ = [
    "DEFAULT_SESSION_ATTRIBUTES",
    "DEFAULT_TRACE_ATTRIBUTE",
    "OTLP_TRACES_PATH",
    "PROJECT_HEADER",
    "FreeplaySessionSpanProcessor",
    "freeplay_span_exporter",
    "instrument_tracer_provider",
]

#: The attributes set to the session ID: Freeplay's, and OpenTelemetry's semantic convention.
DEFAULT_SESSION_ATTRIBUTES: tuple[str, ...] = ("freeplay.session.id", "session.id")
#: The attribute set to the trace ID of the innermost open `trace_scope`.
DEFAULT_TRACE_ATTRIBUTE = "freeplay.trace.id"
#: Freeplay's OTLP/HTTP traces endpoint, relative to `api_base`.
OTLP_TRACES_PATH = "/v0/otel/v1/traces"
#: The header naming the project spans are recorded in.
PROJECT_HEADER = "X-Freeplay-Project-Id"


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("ascii")).hexdigest()[:32]


class FreeplaySessionSpanProcessor(SpanProcessor):
    """Tags every span started while a Freeplay session is bound with its session ID.

    ``session_attributes``: the attribute names set to the session ID (default
    ``freeplay.session.id`` and ``session.id``). ``trace_attribute``: set to the open
    `trace_scope`'s trace ID (None: not set). ``hashed=True`` sets a SHA-256 digest instead
    of the IDs, for providers whose spans go elsewhere than Freeplay. Spans started outside a
    session are left alone.
    """

    def __init__(
        self,
        *,
        session_attributes: Sequence[str] = DEFAULT_SESSION_ATTRIBUTES,
        trace_attribute: str | None = DEFAULT_TRACE_ATTRIBUTE,
        hashed: bool = False,
    ) -> None:
        if isinstance(session_attributes, str):
            raise TypeError("session_attributes must be a sequence of names, not a string")
        self.session_attributes = tuple(session_attributes)
        self.trace_attribute = trace_attribute or None
        self.hashed = hashed

    def tag(self, span: Any, binding: SessionBinding) -> None:
        """Set the session (and trace) attributes of `binding` on `span`."""
        session_id = binding.session_id
        if self.hashed:
            session_id = _hash(session_id)
        # One call, one lock on the SDK span (set_attribute takes it once per name).
        span.set_attributes(dict.fromkeys(self.session_attributes, session_id))
        trace_attribute = self.trace_attribute
        if trace_attribute is not None and binding.open_traces:
            trace = current_trace()
            if trace is not None:
                trace_id = str(trace.trace_id)
                span.set_attribute(trace_attribute, _hash(trace_id) if self.hashed else trace_id)

    def tag_current_span(self, binding: SessionBinding) -> None:
        """Tag the span current now (e.g. the server span), if it records: the bind hook."""
        span = _trace_api.get_current_span()
        if span.is_recording():
            self.tag(span, binding)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        binding = current_binding()
        if binding is not None:
            self.tag(span, binding)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def freeplay_span_exporter(
    client: Freeplay | None = None,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    project_id: str | None = None,
) -> OTLPSpanExporter:
    """An OTLP/HTTP span exporter to ``{api_base}/v0/otel/v1/traces`` with Freeplay's
    headers. Defaults: the client's key and base URL, else `FREEPLAY_API_KEY` and
    `FREEPLAY_API_BASE`; `FREEPLAY_PROJECT_ID` for the project, as for the middleware."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    freeplay = build_client(client=client, api_key=api_key, api_base=api_base)
    project = resolve_project_id(project_id)
    return OTLPSpanExporter(
        endpoint=str(freeplay.api_base).rstrip("/") + OTLP_TRACES_PATH,
        headers={
            "Authorization": f"Bearer {freeplay.freeplay_api_key}",
            PROJECT_HEADER: str(project),
        },
    )


def instrument_tracer_provider(
    provider: TracerProvider,
    client: Freeplay | None = None,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    project_id: str | None = None,
    exporter: SpanExporter | None = None,
    processor: FreeplaySessionSpanProcessor | None = None,
) -> Callable[[], None]:
    """Tag `provider`'s spans with the session and export them to Freeplay.

    Adds a `FreeplaySessionSpanProcessor` (or `processor`), then a `BatchSpanProcessor`
    around `exporter` (default: `freeplay_span_exporter(...)` with the other arguments),
    and makes every bind and `new_session()` tag the span current at that moment (the
    server span of OpenTelemetry's ASGI, WSGI or Django instrumentation). Returns a
    function that stops that tagging (the processors stay on the provider).
    """
    if processor is None:
        processor = FreeplaySessionSpanProcessor()
    if exporter is None:
        exporter = freeplay_span_exporter(
            client, api_base=api_base, api_key=api_key, project_id=project_id
        )
    provider.add_span_processor(processor)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return add_bind_listener(processor.tag_current_span)
