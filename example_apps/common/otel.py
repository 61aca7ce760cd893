"""`make demo RECORDING=otel`: the model calls recorded through OpenTelemetry, not `record()`.

With `DEMO_RECORDING=otel` the chat makes no `record()` call. Instead:

- OpenInference's OpenAI instrumentation (`openinference-instrumentation-openai`) records
  every Chat Completions call of the OpenAI SDK as an LLM span (messages, model, tokens);
- `instrument_tracer_provider` adds `FreeplaySessionSpanProcessor`, which puts the request's
  Freeplay session (and the turn's trace) on each span, and exports the spans to Freeplay's
  OTLP endpoint (`{FREEPLAY_API_BASE}/v0/otel/v1/traces`), where they become completions.

The whole wiring is `start_tracing()`: the tracer provider is this module's own (it is not
made the global one) and is set up once per process. Its batch processor sends spans every
`OTEL_BSP_SCHEDULE_DELAY` ms (the demo sets 500) and flushes at exit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["ENV_RECORDING", "RECORDINGS", "recording_from_env", "start_tracing"]

#: Environment variable choosing how model calls are recorded: `record` (the default,
#: `record()` in `chat.py`) or `otel` (OpenInference spans exported to Freeplay).
ENV_RECORDING = "DEMO_RECORDING"
RECORDINGS = ("record", "otel")
SERVICE_NAME = "example-chat"

_lock = threading.Lock()
_provider: TracerProvider | None = None


def recording_from_env(environ: Mapping[str, str] | None = None) -> str:
    """`record` or `otel`, from `DEMO_RECORDING` (default `record`)."""
    env = os.environ if environ is None else environ
    recording = env.get(ENV_RECORDING, "").strip().lower() or "record"
    if recording not in RECORDINGS:
        raise ValueError(
            f"{ENV_RECORDING}={recording!r}: use record (record() calls) or otel "
            "(OpenTelemetry spans from the OpenInference-instrumented OpenAI SDK)."
        )
    return recording


def _import_otel() -> Any:
    try:
        from openinference.instrumentation.openai import OpenAIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        raise RuntimeError(
            f"{ENV_RECORDING}=otel needs OpenTelemetry and OpenInference: "
            "make demo RECORDING=otel installs them (pip install -e '.[opentelemetry]' "
            "--group demo-otel)."
        ) from exc
    return OpenAIInstrumentor, Resource, TracerProvider


def start_tracing() -> TracerProvider:
    """Instrument the OpenAI SDK and export its spans, with the session, to Freeplay.

    Reads the Freeplay settings like the middleware (`FREEPLAY_API_KEY`,
    `FREEPLAY_API_BASE`, `FREEPLAY_PROJECT_ID`). Idempotent: returns the same provider.
    """
    global _provider
    with _lock:
        if _provider is None:
            from freeplay_integrations.opentelemetry import instrument_tracer_provider

            instrumentor, resource, tracer_provider = _import_otel()
            provider = tracer_provider(resource=resource.create({"service.name": SERVICE_NAME}))
            instrument_tracer_provider(provider)
            instrumentor().instrument(tracer_provider=provider)
            _provider = provider
        return _provider
