"""The session on OpenTelemetry spans, with the real SDK and its in-memory exporter."""

from __future__ import annotations

import asyncio
import http.server
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask
from freeplay import Freeplay
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from freeplay_integrations import (
    ConfigurationError,
    _context,
    current_session,
    new_session,
    session_scope,
    trace_scope,
)
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.flask import FreeplaySessions
from freeplay_integrations.local import LocalFreeplay
from freeplay_integrations.opentelemetry import (
    FreeplaySessionSpanProcessor,
    _hash,
    freeplay_span_exporter,
    instrument_tracer_provider,
)

HEADER = "x-freeplay-session-id"
SESSION = "freeplay.session.id"


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.tracer = self.provider.get_tracer("test")

    def spans(self, name: str | None = None) -> list[Any]:
        self.provider.force_flush()
        spans = self.exporter.get_finished_spans()
        return [s for s in spans if name is None or s.name == name]

    def session_of(self, name: str) -> list[Any]:
        return [s.attributes.get(SESSION) for s in self.spans(name)]


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    remove = instrument_tracer_provider(
        telemetry.provider, exporter=telemetry.exporter, processor=FreeplaySessionSpanProcessor()
    )
    try:
        yield telemetry
    finally:
        remove()
        telemetry.provider.shutdown()
    assert not _context._bind_listeners


def starlette_app(otel: Telemetry, client: Freeplay, project_id: str) -> Any:
    tracer = otel.tracer

    async def async_view(request: Request) -> Response:
        with tracer.start_as_current_span("async-view"):
            pass
        return JSONResponse({"session": current_session().session_id})  # type: ignore[union-attr]

    def sync_view(request: Request) -> Response:
        with tracer.start_as_current_span("sync-view"):
            pass
        return JSONResponse({"session": current_session().session_id})  # type: ignore[union-attr]

    async def stream_view(request: Request) -> Response:
        async def body() -> Any:
            yield b"a"
            with tracer.start_as_current_span("stream-body"):
                pass
            yield b"b"

        return StreamingResponse(body())

    async def background_view(request: Request) -> Response:
        def work() -> None:
            with tracer.start_as_current_span("background"):
                pass

        return JSONResponse({}, background=BackgroundTask(work))

    async def renew_view(request: Request) -> Response:
        with tracer.start_as_current_span("before-renew"):
            pass
        new_session()
        with tracer.start_as_current_span("after-renew"):
            pass
        return JSONResponse({"session": current_session().session_id})  # type: ignore[union-attr]

    app = Starlette(
        routes=[
            Route("/async", async_view),
            Route("/sync", sync_view),
            Route("/stream", stream_view),
            Route("/background", background_view),
            Route("/renew", renew_view),
        ]
    )
    wrapped = FreeplaySessionMiddleware(app, client=client, project_id=project_id)
    return OpenTelemetryMiddleware(wrapped, tracer_provider=otel.provider)


async def _get(app: Any, path: str, session: str | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    headers = {HEADER: session} if session else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.get(path, headers=headers)


@pytest.fixture
def app(otel: Telemetry, freeplay_local: LocalFreeplay) -> Any:
    return starlette_app(otel, freeplay_local.client(), freeplay_local.project_id)


@pytest.mark.parametrize(
    ("path", "span"),
    [
        ("/async", "async-view"),
        ("/sync", "sync-view"),
        ("/stream", "stream-body"),
        ("/background", "background"),
    ],
)
def test_spans_carry_the_requests_session(otel: Telemetry, app: Any, path: str, span: str) -> None:
    session = str(uuid.uuid4())
    response = asyncio.run(_get(app, path, session))
    assert response.status_code == 200
    assert response.headers[HEADER] == session
    assert otel.session_of(span) == [session]
    assert otel.spans(span)[0].attributes["session.id"] == session


def test_the_asgi_server_span_gets_the_session(otel: Telemetry, app: Any) -> None:
    session = str(uuid.uuid4())
    asyncio.run(_get(app, "/async", session))
    assert otel.session_of("GET /async") == [session]
    # Its send spans start inside the session too.
    sends = [s for s in otel.spans() if s.name.endswith("http send")]
    assert sends and {s.attributes.get(SESSION) for s in sends} == {session}


def test_new_session_retags_the_server_span(otel: Telemetry, app: Any) -> None:
    old = str(uuid.uuid4())
    response = asyncio.run(_get(app, "/renew", old))
    new = response.json()["session"]
    assert new != old and response.headers[HEADER] == new
    assert otel.session_of("before-renew") == [old]
    assert otel.session_of("after-renew") == [new]
    assert otel.session_of("GET /renew") == [new]


def test_nothing_is_tagged_outside_a_session(
    otel: Telemetry, freeplay_local: LocalFreeplay
) -> None:
    with otel.tracer.start_as_current_span("outside"):
        pass

    async def unbound() -> None:
        with otel.tracer.start_as_current_span("outside-task"):
            pass

    asyncio.run(unbound())
    with session_scope(freeplay_local.client(), project_id=freeplay_local.project_id):
        pass
    with otel.tracer.start_as_current_span("after-scope"):
        pass
    for span in otel.spans():
        assert SESSION not in (span.attributes or {}), span.name
        assert "session.id" not in (span.attributes or {}), span.name


def test_session_scope_and_trace_scope(otel: Telemetry, freeplay_local: LocalFreeplay) -> None:
    client = freeplay_local.client()
    with session_scope(client, project_id=freeplay_local.project_id, recording="sync") as session:
        with otel.tracer.start_as_current_span("in-scope"):
            pass
        with (
            trace_scope("question", name="answer") as trace,
            otel.tracer.start_as_current_span("in-trace"),
        ):
            pass
    assert otel.session_of("in-scope") == [session.session_id]
    assert "freeplay.trace.id" not in otel.spans("in-scope")[0].attributes
    in_trace = otel.spans("in-trace")[0].attributes
    assert in_trace[SESSION] == session.session_id
    assert in_trace["freeplay.trace.id"] == trace.trace_id


def test_flask_view(otel: Telemetry, freeplay_local: LocalFreeplay) -> None:
    app = Flask(__name__)
    app.config.update(
        FREEPLAY_CLIENT=freeplay_local.client(), FREEPLAY_PROJECT_ID=freeplay_local.project_id
    )
    FreeplaySessions(app)

    @app.get("/")
    def view() -> str:
        with otel.tracer.start_as_current_span("flask-view"):
            pass
        return "ok"

    session = str(uuid.uuid4())
    response = app.test_client().get("/", headers={HEADER: session})
    assert response.status_code == 200
    assert otel.session_of("flask-view") == [session]


def test_500_concurrent_requests_no_span_misplaced(otel: Telemetry, app: Any) -> None:
    sessions = [str(uuid.uuid4()) for _ in range(500)]

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await asyncio.gather(
                *(
                    http.get("/sync" if i % 2 else "/async", headers={HEADER: s})
                    for i, s in enumerate(sessions)
                )
            )

    responses = asyncio.run(run())
    assert [r.json()["session"] for r in responses] == sessions
    view_spans = otel.spans("async-view") + otel.spans("sync-view")
    assert len(view_spans) == 500
    server_spans = [s for s in otel.spans() if s.name in ("GET /async", "GET /sync")]
    assert len(server_spans) == 500
    by_trace = {s.context.trace_id: s.attributes[SESSION] for s in server_spans}
    misplaced = [s for s in view_spans if by_trace[s.context.trace_id] != s.attributes[SESSION]]
    assert misplaced == []
    assert sorted(by_trace.values()) == sorted(sessions)


def test_configurable_and_hashed_attributes(freeplay_local: LocalFreeplay) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(
        FreeplaySessionSpanProcessor(
            session_attributes=("app.conversation",), trace_attribute=None, hashed=True
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = freeplay_local.client()
    with (
        session_scope(client, project_id=freeplay_local.project_id) as session,
        provider.get_tracer("t").start_as_current_span("s"),
    ):
        pass
    attributes = dict(exporter.get_finished_spans()[0].attributes or {})
    assert set(attributes) == {"app.conversation"}
    assert attributes["app.conversation"] != session.session_id
    assert len(attributes["app.conversation"]) == 32
    assert session.session_id not in str(attributes)
    with pytest.raises(TypeError):
        FreeplaySessionSpanProcessor(session_attributes="freeplay.session.id")


class _PublicOnly(FreeplaySessionSpanProcessor):
    """The processor as it would be with the SDK's public `set_attributes` only."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        binding = _context.current_binding()
        if binding is not None:
            self.tag(span, binding)


def _tagged(processor: FreeplaySessionSpanProcessor, limits: Any, run: Any) -> list[Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    run(provider.get_tracer("t"))
    return [
        (s.name, dict(s.attributes or {}), s.dropped_attributes)
        for s in exporter.get_finished_spans()
    ]


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(),
        SpanLimits(max_span_attributes=3),  # no room: the oldest attribute is dropped
        SpanLimits(max_attribute_length=8),  # IDs truncated as the SDK truncates them
    ],
    ids=["default", "few-attributes", "short-values"],
)
@pytest.mark.parametrize("hashed", [False, True])
def test_on_start_sets_what_the_public_set_attributes_sets(
    freeplay_local: LocalFreeplay, limits: Any, hashed: bool
) -> None:
    # on_start writes the cached attributes without the SDK's per-call cleaning when the
    # span's limits allow it, and goes through set_attributes when they do not: the spans
    # must come out the same as with set_attributes alone, whatever the limits.
    client = freeplay_local.client()
    ids: list[str] = []

    def run(tracer: Any) -> None:
        ids.clear()
        for _ in range(2):  # two sessions, one after the other, on one processor
            with session_scope(client, project_id=freeplay_local.project_id) as session:
                ids.append(session.session_id)
                attributes = {"a": 1, "b": "two"}
                with tracer.start_as_current_span("plain"):
                    pass
                with tracer.start_as_current_span("preset", attributes=attributes):
                    pass
                with trace_scope("q", name="turn"), tracer.start_as_current_span("traced"):
                    pass
        with tracer.start_as_current_span("outside"):
            pass

    fast = _tagged(FreeplaySessionSpanProcessor(hashed=hashed), limits, run)
    fast_ids = list(ids)
    public = _tagged(_PublicOnly(hashed=hashed), limits, run)

    def anonymous(spans: list[Any], session_ids: list[str]) -> list[Any]:
        # Each run has its own sessions and traces: compare with the IDs replaced.
        names = {}
        for index, sid in enumerate(session_ids):
            names[sid] = f"session-{index}"
            names[_hash(sid)] = f"session-{index}"
            names[sid[:8]] = f"session-{index}"
            names[_hash(sid)[:8]] = f"session-{index}"
        out = []
        for name, attributes, dropped in spans:
            attrs = {
                k: names.get(v, "<id>" if k == "freeplay.trace.id" else v)
                for k, v in attributes.items()
            }
            out.append((name, attrs, dropped))
        return out

    assert anonymous(fast, fast_ids) == anonymous(public, ids)
    by_name = {}
    for name, attributes, _ in fast:
        by_name.setdefault(name, []).append(attributes)
    assert by_name["outside"] == [{}]
    assert by_name["plain"][0][SESSION] != by_name["plain"][1][SESSION]  # per session
    expected = _hash(fast_ids[0]) if hashed else fast_ids[0]
    if limits.max_attribute_length == 8:
        expected = expected[:8]
    assert by_name["plain"][0][SESSION] == expected


def test_no_listener_without_the_wiring_call() -> None:
    assert _context._bind_listeners == []


class _Capture(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str]]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    received: list[tuple[str, dict[str, str]]] = []
    handler = type("Handler", (_Capture,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _export_one(exporter: Any) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("one"):
        pass
    provider.shutdown()


def test_exporter_endpoint_and_headers(
    capture: tuple[str, list[tuple[str, dict[str, str]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    api_base, received = capture
    client = Freeplay(freeplay_api_key="key-1", api_base=api_base)
    _export_one(freeplay_span_exporter(client, project_id="1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"))
    path, headers = received.pop()
    assert path == "/api/v0/otel/v1/traces"
    assert headers["authorization"] == "Bearer key-1"
    assert headers["x-freeplay-project-id"] == "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"
    assert headers["content-type"] == "application/x-protobuf"

    monkeypatch.setenv("FREEPLAY_API_KEY", "key-env")
    monkeypatch.setenv("FREEPLAY_API_BASE", api_base + "/")
    monkeypatch.setenv("FREEPLAY_PROJECT_ID", "6ec0bd7f-11c0-43da-975e-2a8ad9ebae0b")
    _export_one(freeplay_span_exporter())
    path, headers = received.pop()
    assert path == "/api/v0/otel/v1/traces"
    assert (headers["authorization"], headers["x-freeplay-project-id"]) == (
        "Bearer key-env",
        "6ec0bd7f-11c0-43da-975e-2a8ad9ebae0b",
    )
    monkeypatch.delenv("FREEPLAY_PROJECT_ID")
    with pytest.raises(ConfigurationError, match="FREEPLAY_PROJECT_ID"):
        freeplay_span_exporter(api_base=api_base, api_key="k")
    with pytest.raises(ConfigurationError, match="not both"):
        freeplay_span_exporter(client, api_key="k", project_id="p")


def test_the_wsgi_server_span_gets_the_session(
    otel: Telemetry, freeplay_local: LocalFreeplay
) -> None:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WsgiMiddleware

    app = Flask(__name__)
    app.config.update(
        FREEPLAY_CLIENT=freeplay_local.client(), FREEPLAY_PROJECT_ID=freeplay_local.project_id
    )
    FreeplaySessions(app)

    @app.get("/renew")
    def renew() -> str:
        with otel.tracer.start_as_current_span("flask-before"):
            pass
        return new_session().session_id

    app.wsgi_app = WsgiMiddleware(app.wsgi_app, tracer_provider=otel.provider)  # type: ignore[method-assign]
    old = str(uuid.uuid4())
    response = app.test_client().get("/renew", headers={HEADER: old})
    new = response.get_data(as_text=True)
    assert response.headers[HEADER] == new != old
    assert otel.session_of("flask-before") == [old]
    (server,) = [s for s in otel.spans() if s.name.startswith("GET")]
    assert server.attributes[SESSION] == new


def test_celery_task_spans_carry_the_senders_session(
    otel: Telemetry, freeplay_local: LocalFreeplay
) -> None:
    from celery import Celery

    from freeplay_integrations.celery import (
        disable_session_propagation,
        enable_session_propagation,
    )
    from tests.test_celery import running_worker

    app = Celery(f"otel-{uuid.uuid4().hex[:8]}", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        result_backend="cache+memory://",
        broker_transport_options={"polling_interval": 0.01},
        task_default_queue=f"q-{uuid.uuid4().hex}",
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=False,
    )

    @app.task(name="spanning", shared=False)
    def spanning() -> None:
        with otel.tracer.start_as_current_span("celery-task"):
            pass

    @app.task(name="noop", shared=False)
    def noop() -> None:
        return None

    enable_session_propagation(app, client=freeplay_local.client())
    try:
        with running_worker(app):
            client = freeplay_local.client()
            with session_scope(client, project_id=freeplay_local.project_id) as session:
                result = spanning.delay()
            result.get(timeout=20)
            unbound = spanning.delay()
            unbound.get(timeout=20)
    finally:
        disable_session_propagation(app)
    assert otel.session_of("celery-task") == [session.session_id, None]


# -- W3C baggage as an opt-in session source ------------------------------------------------


def _baggage_app(freeplay_local: LocalFreeplay, **options: Any) -> Any:
    async def view(request: Request) -> Response:
        return JSONResponse({"session": current_session().session_id})  # type: ignore[union-attr]

    return FreeplaySessionMiddleware(
        Starlette(routes=[Route("/", view)]),
        client=freeplay_local.client(),
        project_id=freeplay_local.project_id,
        **options,
    )


async def _get_with(app: Any, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.get("/", headers=headers)


def test_baggage_is_a_session_source_only_when_asked(freeplay_local: LocalFreeplay) -> None:
    session = str(uuid.uuid4())
    baggage = {"baggage": f"user=7, freeplay.session.id={session};prop=1, other=x"}
    opted_in = _baggage_app(freeplay_local, sources=("header", "baggage"))
    assert asyncio.run(_get_with(opted_in, baggage)).json()["session"] == session
    # The header still comes first when both are sent.
    other = str(uuid.uuid4())
    both = asyncio.run(_get_with(opted_in, {**baggage, HEADER: other}))
    assert both.json()["session"] == other
    default = _baggage_app(freeplay_local)
    assert asyncio.run(_get_with(default, baggage)).json()["session"] != session


def test_invalid_baggage_is_handled_like_an_invalid_header(freeplay_local: LocalFreeplay) -> None:
    bad = {"baggage": "freeplay.session.id=not-a-uuid"}
    lenient = _baggage_app(freeplay_local, sources=("baggage",))
    response = asyncio.run(_get_with(lenient, bad))
    assert response.status_code == 200 and "not-a-uuid" not in response.text
    strict = _baggage_app(freeplay_local, sources=("baggage",), on_invalid="reject")
    assert asyncio.run(_get_with(strict, bad)).status_code == 400
    too_long = {"baggage": "x=" + "a" * 9000 + f",freeplay.session.id={uuid.uuid4()}"}
    assert asyncio.run(_get_with(strict, too_long)).status_code == 200  # ignored, new session


def test_baggage_in_a_wsgi_app(freeplay_local: LocalFreeplay) -> None:
    app = Flask(__name__)
    app.config.update(
        FREEPLAY_CLIENT=freeplay_local.client(),
        FREEPLAY_PROJECT_ID=freeplay_local.project_id,
        FREEPLAY_SOURCES=("baggage",),
    )
    FreeplaySessions(app)

    @app.get("/")
    def view() -> str:
        return current_session().session_id  # type: ignore[union-attr]

    session = str(uuid.uuid4())
    encoded = session.replace("-", "%2D")  # members are percent-decoded
    response = app.test_client().get("/", headers={"baggage": f"freeplay.session.id={encoded}"})
    assert response.get_data(as_text=True) == session
