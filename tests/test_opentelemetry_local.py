"""The local Freeplay's OTLP/HTTP endpoint, fed by the real OTLP exporter and raw OTLP/JSON."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from freeplay_integrations import session_scope, trace_scope
from freeplay_integrations.local import LocalFreeplay
from freeplay_integrations.local._otlp import NO_SESSION
from freeplay_integrations.opentelemetry import (
    FreeplaySessionSpanProcessor,
    freeplay_span_exporter,
    instrument_tracer_provider,
)

PATH = "/api/v0/otel/v1/traces"


def test_real_exporter_spans_are_stored_under_their_session(
    freeplay_local: LocalFreeplay,
) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    remove = instrument_tracer_provider(
        provider, freeplay_local.client(), project_id=freeplay_local.project_id
    )
    tracer = provider.get_tracer("app")
    try:
        client = freeplay_local.client()
        with (
            session_scope(client, project_id=freeplay_local.project_id) as s,
            tracer.start_as_current_span("outer") as outer,
        ):
            outer.set_attribute("llm.model_name", "gpt-x")
            outer.set_attribute("llm.token_count.total", 12)
            with tracer.start_as_current_span("inner"):
                pass
        with tracer.start_as_current_span("unbound"):
            pass
        assert provider.force_flush(10_000)
    finally:
        remove()
        provider.shutdown()
    session_spans = freeplay_local.spans(s.session_id)
    assert [span["name"] for span in session_spans] == ["inner", "outer"]
    inner, outer_span = session_spans
    assert inner["parent_span_id"] == outer_span["span_id"]
    assert inner["trace_id"] == outer_span["trace_id"] and len(inner["trace_id"]) == 32
    assert outer_span["attributes"]["llm.model_name"] == "gpt-x"
    assert outer_span["attributes"]["llm.token_count.total"] == 12
    assert outer_span["attributes"]["session.id"] == s.session_id
    assert outer_span["resource"]["service.name"] == "svc"
    assert outer_span["project_id"] == freeplay_local.project_id
    assert freeplay_local.session(s.session_id) is not None
    unbound = freeplay_local.spans(NO_SESSION)
    assert [span["name"] for span in unbound] == ["unbound"]
    assert unbound[0]["session_id"] is None
    assert len(freeplay_local.spans()) == 3


def _export(exporter: OTLPSpanExporter, session_id: str | None = None) -> SpanExportResult:
    provider = TracerProvider()
    results: list[SpanExportResult] = []

    class Recording(SimpleSpanProcessor):
        def on_end(self, span: Any) -> None:
            results.append(exporter.export([span]))

    provider.add_span_processor(Recording(exporter))
    with provider.get_tracer("t").start_as_current_span("s") as span:
        if session_id is not None:
            span.set_attribute("freeplay.session.id", session_id)
    return results[0]


def test_gzip_protobuf_is_accepted(freeplay_local: LocalFreeplay) -> None:
    exporter = OTLPSpanExporter(
        endpoint=freeplay_local.api_base + "/v0/otel/v1/traces",
        headers={
            "Authorization": f"Bearer {freeplay_local.api_key}",
            "X-Freeplay-Project-Id": freeplay_local.project_id,
        },
        compression=Compression.Gzip,
    )
    session = str(uuid.uuid4())
    assert _export(exporter, session) is SpanExportResult.SUCCESS
    assert [s["project_id"] for s in freeplay_local.spans(session)] == [freeplay_local.project_id]


def test_wrong_key_and_missing_or_unknown_project_are_refused(
    freeplay_local: LocalFreeplay,
) -> None:
    wrong_key = freeplay_span_exporter(
        api_base=freeplay_local.api_base, api_key="wrong", project_id=freeplay_local.project_id
    )
    assert _export(wrong_key) is SpanExportResult.FAILURE
    no_project = OTLPSpanExporter(
        endpoint=freeplay_local.api_base + "/v0/otel/v1/traces",
        headers={"Authorization": f"Bearer {freeplay_local.api_key}"},
    )
    assert _export(no_project) is SpanExportResult.FAILURE
    unknown_project = freeplay_span_exporter(
        api_base=freeplay_local.api_base,
        api_key=freeplay_local.api_key,
        project_id=str(uuid.uuid4()),
    )
    assert _export(unknown_project) is SpanExportResult.FAILURE
    assert freeplay_local.spans() == []
    statuses = [r.status for r in freeplay_local.requests_received()]
    assert statuses == [401, 400, 404]


def _json_request(session_id: str | None) -> dict[str, Any]:
    attributes: list[dict[str, Any]] = [
        {"key": "openinference.span.kind", "value": {"stringValue": "LLM"}},
        {"key": "llm.token_count.prompt", "value": {"intValue": "7"}},
        {"key": "temperature", "value": {"doubleValue": 0.5}},
        {"key": "stream", "value": {"boolValue": False}},
        {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}},
    ]
    if session_id is not None:
        attributes.append({"key": "freeplay.session.id", "value": {"stringValue": session_id}})
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "EEE19B7EC3C1B174",
                                "parentSpanId": "",
                                "name": "chat",
                                "kind": 3,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": 1544712661000000000,
                                "attributes": attributes,
                                "status": {"code": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }


def _post(server: LocalFreeplay, body: Any, **headers: str) -> httpx.Response:
    base = {
        "Authorization": f"Bearer {server.api_key}",
        "X-Freeplay-Project-Id": server.project_id,
    }
    return httpx.post(server.url + PATH, json=body, headers={**base, **headers}, timeout=10)


def test_otlp_json(freeplay_local: LocalFreeplay) -> None:
    session = str(uuid.uuid4()).upper()
    response = _post(freeplay_local, _json_request(session))
    assert response.status_code == 200 and response.json() == {}
    (span,) = freeplay_local.spans(session)
    assert span["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert span["span_id"] == "eee19b7ec3c1b174"
    assert span["parent_span_id"] is None
    assert span["session_id"] == session.lower()
    assert span["start_time_unix_nano"] == 1544712660000000000
    assert span["attributes"]["llm.token_count.prompt"] == 7
    assert span["attributes"]["temperature"] == 0.5
    assert span["attributes"]["stream"] is False
    assert span["attributes"]["tags"] == ["a"]
    assert (span["resource"], span["scope"], span["kind"]) == ({"service.name": "js"}, "manual", 3)
    assert _post(freeplay_local, _json_request(None)).status_code == 200
    assert [s["name"] for s in freeplay_local.spans(NO_SESSION)] == ["chat"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"\xff\xff\xff", {"Content-Type": "application/x-protobuf"}, 400),
        (b"x", {"Content-Type": "text/plain"}, 415),
        (b"x", {"Content-Type": "application/json", "Content-Encoding": "br"}, 415),
        (b"x", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, 400),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "1"}]}]}]}',
            {"Content-Type": "application/json"},
            400,
        ),
    ],
)
def test_bad_bodies_are_refused(
    freeplay_local: LocalFreeplay, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = httpx.post(
        freeplay_local.url + PATH,
        content=body,
        headers={
            "Authorization": f"Bearer {freeplay_local.api_key}",
            "X-Freeplay-Project-Id": freeplay_local.project_id,
            **headers,
        },
        timeout=10,
    )
    assert response.status_code == status
    assert "message" in response.json()
    assert freeplay_local.spans() == []


def test_processor_and_local_server_agree_on_the_attribute() -> None:
    from freeplay_integrations.local._otlp import SESSION_ATTRIBUTE

    assert FreeplaySessionSpanProcessor().session_attributes[0] == SESSION_ATTRIBUTE


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def _spans_request(spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}


def test_session_page_shows_llm_spans_as_completions(freeplay_local: LocalFreeplay) -> None:
    session = str(uuid.uuid4())
    trace = "0af7651916cd43dd8448eb211c80319c"
    step = {
        "traceId": trace,
        "spanId": "b7ad6b7169203331",
        "name": "answer-question",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000002000000000",
        "attributes": [
            _attr("freeplay.session.id", session),
            _attr("openinference.span.kind", "CHAIN"),
            _attr("input.value", "What is OTLP?"),
        ],
    }
    llm = {
        "traceId": trace,
        "spanId": "00f067aa0ba902b7",
        "parentSpanId": "b7ad6b7169203331",
        "name": "ChatCompletion",
        "startTimeUnixNano": "1700000000500000000",
        "endTimeUnixNano": "1700000001500000000",
        "attributes": [
            _attr("freeplay.session.id", session),
            _attr("openinference.span.kind", "LLM"),
            _attr("llm.model_name", "gpt-4o-mini"),
            _attr("llm.provider", "openai"),
            _attr("llm.input_messages.0.message.role", "user"),
            _attr("llm.input_messages.0.message.content", "What is OTLP?"),
            _attr("llm.output_messages.0.message.role", "assistant"),
            _attr("llm.output_messages.0.message.content", "A wire protocol."),
            _attr("llm.token_count.prompt", 11),
            _attr("llm.token_count.completion", 4),
        ],
    }
    unbound = {"traceId": trace, "spanId": "1111111111111111", "name": "health-check"}
    assert _post(freeplay_local, _spans_request([llm, step, unbound])).status_code == 200

    page = httpx.get(f"{freeplay_local.url}/sessions/{session}", timeout=10).text
    assert 'data-completion-id="00f067aa0ba902b7" data-parent-id="b7ad6b7169203331"' in page
    assert 'data-trace-id="b7ad6b7169203331"' in page
    # The LLM span is drawn inside its parent step.
    assert page.index('data-trace-id="b7ad6b7169203331"') < page.index("data-completion-id")
    for text in (
        "gpt-4o-mini",
        "openai",
        "A wire protocol.",
        "<b>prompt</b>: 11",
        "<b>completion</b>: 4",
    ):
        assert text in page, text
    assert "answer-question" in page and "health-check" not in page

    no_session = httpx.get(f"{freeplay_local.url}/sessions/no-session", timeout=10)
    assert no_session.status_code == 200
    assert "health-check" in no_session.text and "answer-question" not in no_session.text
    assert freeplay_local.session(session) is not None

    # The index counts the spans (one LLM completion, one step), takes the conversation's
    # title from the LLM span's user message, and links to the spans without a session.
    index = httpx.get(f"{freeplay_local.url}/", timeout=10).text
    row = index[index.index(f'data-session-id="{session}"') :]
    assert '<span class="first-message">What is OTLP?</span>' in row
    assert 'completion-count">1<' in row and 'trace-count">1<' in row
    assert '<a class="no-session-link" href="/sessions/no-session">' in index
    assert '<span class="no-session-count">1</span> OpenTelemetry span without' in index
    fragment = httpx.get(f"{freeplay_local.url}/ui/fragments/sessions", timeout=10).text
    assert 'href="/sessions/no-session"' in fragment and 'completion-count">1<' in fragment


def test_llm_spans_without_a_parent_span_sit_under_their_trace_scope(
    freeplay_local: LocalFreeplay,
) -> None:
    # Spans started inside a trace_scope carry freeplay.trace.id: with no parent span on
    # the page, that trace is their parent (the demo's RECORDING=otel turns look so).
    provider = TracerProvider()
    remove = instrument_tracer_provider(
        provider, freeplay_local.client(), project_id=freeplay_local.project_id
    )
    tracer = provider.get_tracer("app")
    try:
        with (
            session_scope(freeplay_local.client(), project_id=freeplay_local.project_id) as s,
            trace_scope("question?", name="turn") as trace,
            tracer.start_as_current_span("ChatCompletion") as span,
        ):
            span.set_attribute("openinference.span.kind", "LLM")
            with tracer.start_as_current_span("tool"):
                pass
        assert provider.force_flush(10_000)
    finally:
        remove()
        provider.shutdown()
    freeplay_local.wait_for(lambda: freeplay_local.traces(s.session_id))
    page = httpx.get(f"{freeplay_local.url}/ui/api/sessions/{s.session_id}", timeout=10).json()
    [completion] = page["completions"]
    assert completion["parent_id"] == trace.trace_id
    by_name = {t["name"]: t for t in page["traces"]}
    assert by_name["tool"]["parent_id"] == completion["id"]  # its parent span is on the page
    assert by_name["turn"]["id"] == trace.trace_id
