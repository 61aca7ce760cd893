"""freeplay_integrations.logging: session and trace IDs on log records, stdlib and structlog."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from freeplay import Freeplay
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from freeplay_integrations import current_session, session_scope
from freeplay_integrations._context import bind_trace, unbind_trace
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import LocalFreeplay
from freeplay_integrations.logging import SessionIdFilter, SessionIdProcessor, add_session_id

FORMAT = "%(session_id)s %(trace_id)s %(message)s"


@pytest.fixture
def fp(freeplay_local: LocalFreeplay) -> Freeplay:
    return freeplay_local.client()


@pytest.fixture
def configured() -> Iterator[Any]:
    """`configure(**filter_options)` sets up a fresh logger with dictConfig; yields it."""
    names: list[str] = []

    def configure(**filter_options: Any) -> tuple[logging.Logger, io.StringIO]:
        name = f"test_logging.{uuid.uuid4().hex}"
        names.append(name)
        stream = io.StringIO()
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "filters": {
                    "freeplay": {
                        "()": "freeplay_integrations.logging.SessionIdFilter",
                        **filter_options,
                    }
                },
                "formatters": {"plain": {"format": FORMAT}},
                "handlers": {
                    "buffer": {
                        "class": "logging.StreamHandler",
                        "stream": stream,
                        "formatter": "plain",
                        "filters": ["freeplay"],
                    }
                },
                "loggers": {name: {"handlers": ["buffer"], "level": "INFO", "propagate": False}},
            }
        )
        return logging.getLogger(name), stream

    yield configure
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_dict_config_filter_adds_session_and_trace(configured: Any, fp: Freeplay) -> None:
    logger, stream = configured()
    logger.info("outside")
    with session_scope(fp) as session:
        logger.info("in a session")
        trace = session.create_trace(input="q")
        token = bind_trace(trace)
        try:
            logger.getChild("views").warning("in a trace")  # a child logger's record too
        finally:
            unbind_trace(token)
    logger.info("after")
    assert lines(stream) == [
        "- - outside",
        f"{session.session_id} - in a session",
        f"{session.session_id} {trace.trace_id} in a trace",
        "- - after",
    ]
    assert current_session() is None


def test_default_is_configurable_and_explicit_values_are_kept(
    configured: Any, fp: Freeplay
) -> None:
    logger, stream = configured(default="no-session")
    logger.info("outside")
    with session_scope(fp):
        logger.info("explicit", extra={"session_id": "given", "trace_id": "t"})
    assert lines(stream) == ["no-session no-session outside", "given t explicit"]
    assert current_session() is None


def test_filter_never_drops_a_record(fp: Freeplay) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert SessionIdFilter(default=None).filter(record) is True
    assert record.session_id is None and record.trace_id is None  # type: ignore[attr-defined]
    with session_scope(fp) as session:
        record = logging.LogRecord("x", logging.DEBUG, __file__, 1, "m", None, None)
        assert SessionIdFilter().filter(record) is True
    assert record.session_id == session.session_id  # type: ignore[attr-defined]
    assert current_session() is None


@pytest.mark.anyio
async def test_requests_log_their_own_session_not_the_signed_token(
    configured: Any, freeplay_local: LocalFreeplay
) -> None:
    logger, stream = configured()

    async def async_view(request: Request) -> PlainTextResponse:
        logger.info("async %s", request.query_params["n"])
        await asyncio.sleep(0.01)
        logger.info("async %s", request.query_params["n"])
        return PlainTextResponse("ok")

    def sync_view(request: Request) -> PlainTextResponse:  # runs in Starlette's threadpool
        logger.info("sync %s", request.query_params["n"])
        return PlainTextResponse("ok")

    app = FreeplaySessionMiddleware(
        Starlette(routes=[Route("/async", async_view), Route("/sync", sync_view)]),
        client=freeplay_local.client(),
        project_id=freeplay_local.project_id,
        signing_secret="a-shared-secret-of-enough-length",
    )
    transport = httpx.ASGITransport(app=app)

    async def call(path: str, n: int) -> tuple[str, str]:
        # A client per call: no cookie jar shared between the conversations.
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            response = await client.get(path, params={"n": n})
        token = response.headers["X-Freeplay-Session-Id"]
        return token.partition(".")[0], f"{path[1:]} {n}"

    calls = await asyncio.gather(
        *(call(path, n) for n in range(10) for path in ("/async", "/sync"))
    )
    logged = [line.split(" ", 2) for line in lines(stream)]
    assert len(logged) == 30
    by_message: dict[str, set[str]] = {}
    for session_id, trace_id, message in logged:
        assert trace_id == "-"
        by_message.setdefault(message, set()).add(session_id)
    assert len({session_id for session_id, _ in calls}) == 20
    for session_id, message in calls:
        assert by_message[message] == {session_id}
    assert current_session() is None


@pytest.fixture
def structlog_output() -> Iterator[Any]:
    """`configure(processor)`: structlog rendering JSON lines into a buffer; reset after."""
    stream = io.StringIO()

    def configure(processor: Any) -> io.StringIO:
        structlog.configure(
            processors=[processor, structlog.processors.JSONRenderer()],
            logger_factory=structlog.PrintLoggerFactory(file=stream),
            cache_logger_on_first_use=False,
        )
        return stream

    yield configure
    structlog.reset_defaults()


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_processor(structlog_output: Any, fp: Freeplay) -> None:
    stream = structlog_output(add_session_id)
    log = structlog.get_logger()
    log.info("outside")
    with session_scope(fp) as session:
        log.info("inside")
        trace = session.create_trace(input="q")
        token = bind_trace(trace)
        try:
            log.info("traced")
            log.info("explicit", session_id="given")
        finally:
            unbind_trace(token)
    assert events(stream) == [
        {"event": "outside"},
        {"event": "inside", "session_id": session.session_id},
        {"event": "traced", "session_id": session.session_id, "trace_id": trace.trace_id},
        {"event": "explicit", "session_id": "given", "trace_id": trace.trace_id},
    ]
    assert current_session() is None


def test_structlog_processor_with_a_default(structlog_output: Any, fp: Freeplay) -> None:
    stream = structlog_output(SessionIdProcessor(default="-"))
    log = structlog.get_logger()
    log.info("outside")
    with session_scope(fp) as session:
        log.info("inside")
    assert events(stream) == [
        {"event": "outside", "session_id": "-", "trace_id": "-"},
        {"event": "inside", "session_id": session.session_id, "trace_id": "-"},
    ]
    assert current_session() is None
