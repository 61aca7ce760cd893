"""The session on the server span of OpenTelemetry's own Django instrumentation.

`DjangoInstrumentor` puts its middleware first in `MIDDLEWARE`, so its server span is
current when `FreeplaySessionMiddleware` binds the session: `instrument_tracer_provider`'s
bind hook tags it, and tags it again after `new_session()`. Spans started in the view carry
the session through the processor. W3C `baggage` is a session source only when
`FREEPLAY["SOURCES"]` names it. Both of Django's handlers: `Client` (WSGI) and `AsyncClient`
(ASGI). Real SDK, in-memory exporter; sessions on the local Freeplay.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from freeplay_integrations import current_session, new_session
from freeplay_integrations.local import LocalFreeplay
from freeplay_integrations.opentelemetry import instrument_tracer_provider

if TYPE_CHECKING:
    from pytest_django.fixtures import SettingsWrapper

HEADER = "X-Freeplay-Session-Id"
SESSION = "freeplay.session.id"

#: The provider the views' spans come from (set by the `telemetry` fixture).
_tracer: list[Any] = []


def _work(request: HttpRequest) -> dict[str, Any]:
    session = current_session()
    seen = {"before": session.session_id if session else None}
    with _tracer[0].start_as_current_span("view-before"):
        pass
    if request.GET.get("new"):
        seen["after"] = new_session().session_id
        with _tracer[0].start_as_current_span("view-after"):
            pass
    return seen


def sync_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_work(request))


async def async_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_work(request))


urlpatterns = [path("otel/sync/", sync_view), path("otel/async/", async_view)]


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()

    def spans(self) -> list[Any]:
        assert self.provider.force_flush(10_000)
        return list(self.exporter.get_finished_spans())

    def clear(self) -> None:
        assert self.provider.force_flush(10_000)  # the batch processor's pending spans too
        self.exporter.clear()

    def server_span(self) -> Any:
        [span] = [s for s in self.spans() if s.kind == SpanKind.SERVER]
        assert span.instrumentation_scope.name == "opentelemetry.instrumentation.django"
        return span

    def session_of(self, name: str) -> list[Any]:
        return [(s.attributes or {}).get(SESSION) for s in self.spans() if s.name == name]


@pytest.fixture
def telemetry(freeplay_local: LocalFreeplay, settings: SettingsWrapper) -> Iterator[Telemetry]:
    """Django instrumented with OpenTelemetry, spans tagged and kept in memory."""
    settings.ROOT_URLCONF = __name__
    settings.FREEPLAY = {"CLIENT": freeplay_local.client(), "PROJECT_ID": freeplay_local.project_id}
    telemetry = Telemetry()
    remove = instrument_tracer_provider(telemetry.provider, exporter=telemetry.exporter)
    instrumentor = DjangoInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)  # edits settings.MIDDLEWARE
    _tracer.append(telemetry.provider.get_tracer("views"))
    try:
        assert settings.MIDDLEWARE[0].startswith("opentelemetry.instrumentation.django")
        yield telemetry
    finally:
        _tracer.clear()
        instrumentor.uninstrument()
        remove()
        telemetry.provider.shutdown()
    assert current_session() is None


@pytest.mark.anyio
@pytest.mark.parametrize("view", ["sync", "async"])
async def test_the_django_server_span_carries_the_session(telemetry: Telemetry, view: str) -> None:
    if view == "sync":
        response = Client().get("/otel/sync/")
    else:
        response = await AsyncClient().get("/otel/async/")
    assert response.status_code == 200
    session_id = response[HEADER]
    assert response.json()["before"] == session_id
    server = telemetry.server_span()
    assert server.attributes[SESSION] == session_id
    assert server.attributes["session.id"] == session_id
    assert telemetry.session_of("view-before") == [session_id]
    [view_span] = [s for s in telemetry.spans() if s.name == "view-before"]
    assert view_span.parent.span_id == server.context.span_id  # the request's own trace


@pytest.mark.anyio
@pytest.mark.parametrize("view", ["sync", "async"])
async def test_the_server_span_is_tagged_again_after_new_session(
    telemetry: Telemetry, view: str
) -> None:
    resumed = str(uuid.uuid4())
    headers = {HEADER: resumed}
    if view == "sync":
        response = Client().get("/otel/sync/?new=1", headers=headers)
    else:
        response = await AsyncClient().get("/otel/async/?new=1", headers=headers)
    seen = response.json()
    assert seen["before"] == resumed and seen["after"] != resumed
    assert response[HEADER] == seen["after"]
    assert telemetry.server_span().attributes[SESSION] == seen["after"]
    assert telemetry.session_of("view-before") == [resumed]
    assert telemetry.session_of("view-after") == [seen["after"]]


def test_baggage_is_a_session_source_under_django_only_when_asked(
    telemetry: Telemetry, settings: SettingsWrapper
) -> None:
    session = str(uuid.uuid4())
    baggage = {"baggage": f"user=7, freeplay.session.id={session};prop=1"}
    # Not asked for: the baggage member is ignored, a new session starts.
    ignored = Client().get("/otel/sync/", headers=baggage)
    assert ignored.json()["before"] != session
    assert ignored[HEADER] != session

    settings.FREEPLAY = {**settings.FREEPLAY, "SOURCES": ("header", "baggage")}
    telemetry.clear()
    resumed = Client().get("/otel/sync/", headers=baggage)
    assert resumed.json()["before"] == session and resumed[HEADER] == session
    assert telemetry.server_span().attributes[SESSION] == session

    # The header comes first in SOURCES: it wins over the baggage.
    other = str(uuid.uuid4())
    both = Client().get("/otel/sync/", headers={**baggage, HEADER: other})
    assert both.json()["before"] == other

    # Validated like the header: not a UUID v4, so a new session, and the value not echoed.
    telemetry.clear()
    bad = Client().get("/otel/sync/", headers={"baggage": "freeplay.session.id=not-a-uuid"})
    assert bad.json()["before"] not in (None, "not-a-uuid")
    assert "not-a-uuid" not in bad[HEADER]
    assert telemetry.server_span().attributes[SESSION] == bad[HEADER]
