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
    from opentelemetry.attributes import BoundedAttributes
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


#: How many sessions (and session-trace pairs) a processor keeps the attributes of.
_CACHE_SIZE = 4096


class FreeplaySessionSpanProcessor(SpanProcessor):
    """Tags every span started while a Freeplay session is bound with its session ID.

    ``session_attributes``: the attribute names set to the session ID (default
    ``freeplay.session.id`` and ``session.id``). ``trace_attribute``: set to the open
    `trace_scope`'s trace ID (None: not set). ``hashed=True`` sets a SHA-256 digest instead
    of the IDs, for providers whose spans go elsewhere than Freeplay. Spans started outside a
    session are left alone.

    The attributes of a session (and of a session's trace) are built once and kept, up to
    4,096 of them (the cache starts over when full), so that a span costs a lookup and one
    write.
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
        # session ID, or (session ID, trace ID) -> (attributes, longest value)
        self._cache: dict[Any, tuple[dict[str, str], int]] = {}

    def _attributes(self, key: Any) -> tuple[dict[str, str], int]:
        found = self._cache.get(key)
        if found is not None:
            return found
        session_id: str
        trace_id: str | None
        session_id, trace_id = key if isinstance(key, tuple) else (key, None)
        if self.hashed:
            session_id = _hash(session_id)
        attributes: dict[str, str] = dict.fromkeys(self.session_attributes, session_id)
        if trace_id is not None and self.trace_attribute is not None:
            attributes[self.trace_attribute] = _hash(trace_id) if self.hashed else trace_id
        cached = (attributes, max(map(len, attributes.values()), default=0))
        cache = self._cache
        if len(cache) >= _CACHE_SIZE:
            cache.clear()  # a new generation; the sessions in use are back within a span
        cache[key] = cached
        return cached

    def _key(self, binding: SessionBinding) -> Any:
        session_id = binding.session_id
        if self.trace_attribute is not None and binding.open_traces:
            trace = current_trace()
            if trace is not None:
                return (session_id, str(trace.trace_id))
        return session_id

    def tag(self, span: Any, binding: SessionBinding) -> None:
        """Set the session (and trace) attributes of `binding` on `span`."""
        span.set_attributes(self._attributes(self._key(binding))[0])

    def tag_current_span(self, binding: SessionBinding) -> None:
        """Tag the span current now (e.g. the server span), if it records: the bind hook."""
        span = _trace_api.get_current_span()
        if span.is_recording():
            self.tag(span, binding)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        binding = current_binding()
        if binding is None:
            return
        key = self._key(binding) if binding.open_traces else binding.session_id
        cached = self._cache.get(key)
        if cached is None:
            cached = self._attributes(key)
        attributes, longest = cached
        # What `span.set_attributes(attributes)` does, without its per-call cleaning and
        # locks: the values are strings checked once (`longest` is the longest's length),
        # and `on_start` runs in the thread creating the span, before `start_span` returns
        # it to anyone (one `dict.update` of str keys is atomic anyway). Only for the SDK's
        # own attribute type on a span not ended, when the span's limits leave room for
        # every value (nothing truncated or dropped); else the public call, so the
        # attributes come out the same either way.
        try:
            bounded: Any = span._attributes
            store = bounded._dict
            maxlen = bounded.maxlen
            max_value_len = bounded.max_value_len
            fast = (
                type(bounded) is BoundedAttributes
                and span._end_time is None
                and (maxlen is None or len(store) + len(attributes) <= maxlen)
                and (max_value_len is None or longest <= max_value_len)
            )
        except AttributeError:  # pragma: no cover - another span type or SDK layout
            fast = False
        if fast:
            store.update(attributes)
        else:
            span.set_attributes(attributes)

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
