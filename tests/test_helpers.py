"""The recording helpers: record, attach_session, trace_scope, end_session, feedback, metadata.

Everything goes through the real SDK to the local Freeplay server.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from freeplay import Freeplay
from freeplay.resources.recordings import CallInfo, RecordPayload
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from freeplay_integrations import (
    ConfigurationError,
    NoActiveSessionError,
    TraceHandle,
    attach_session,
    configure_recording,
    current_session,
    current_trace,
    end_session,
    new_session,
    record,
    record_feedback,
    record_trace_feedback,
    recorder_stats,
    session_scope,
    trace_scope,
    update_session_metadata,
    update_trace_metadata,
)
from freeplay_integrations._context import current_binding
from freeplay_integrations._recording import recorder_for
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import DEFAULT_PROJECT_ID as PROJECT_ID
from freeplay_integrations.local import LocalFreeplay

HEADER = "x-freeplay-session-id"


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": f"re: {text}"}]


@pytest.fixture
def server(freeplay_local: LocalFreeplay) -> LocalFreeplay:
    return freeplay_local


@pytest.fixture
def client(server: LocalFreeplay, tmp_path: Path) -> Iterator[Freeplay]:
    client = server.client()
    configure_recording(
        client,
        spool_path=tmp_path / "spool.jsonl",
        backoff_base=0.01,
        backoff_max=0.05,
        attempt_timeout=2.0,
        idle_timeout=1.0,
        max_concurrency=2,
    )
    yield client
    server.faults.clear()
    recorder_for(client).flush(5)


def scope(client: Freeplay, server: LocalFreeplay, **options: Any) -> session_scope:
    return session_scope(client, project_id=server.project_id, **options)


def flushed(client: Freeplay) -> None:
    assert recorder_for(client).flush(5), "the recorder did not deliver everything"


# -- record -----------------------------------------------------------------------------


def test_record_outside_a_session_raises_and_sends_nothing(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with pytest.raises(NoActiveSessionError, match="session_scope"):
        record(all_messages=chat("hi"), project_id=server.project_id)
    flushed(client)
    assert server.request_count == 0
    assert recorder_stats(client).queued == 0


def test_record_lands_in_the_bound_session_with_the_returned_id(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server, custom_metadata={"user": "u1"}) as session:
        response = record(all_messages=chat("hi"), inputs={"q": "hi"})
    assert current_session() is None
    flushed(client)
    (stored,) = server.completions()
    assert stored["id"] == response.completion_id
    assert stored["session_id"] == session.session_id
    assert stored["project_id"] == server.project_id
    assert stored["parent_id"] is None
    assert stored["messages"] == chat("hi")
    assert stored["inputs"] == {"q": "hi"}
    assert server.session(session.session_id)["custom_metadata"] == {"user": "u1"}  # type: ignore[index]


def test_record_keeps_a_given_completion_id_and_project(
    client: Freeplay, server: LocalFreeplay
) -> None:
    completion_id = uuid.uuid4()
    other = server.add_project("07e40000-0000-4000-8000-0000000007e4")
    with scope(client, server):
        response = record(
            all_messages=chat("a"),
            completion_id=completion_id,
            project_id=other,
            call_info=CallInfo(provider="openai", model="gpt-x", start_time=1.0, end_time=2.0),
        )
    assert response.completion_id == str(completion_id)
    flushed(client)
    stored = server.completion(str(completion_id))
    assert stored is not None
    assert stored["project_id"] == other
    assert stored["model"] == "gpt-x"


def test_record_copies_the_message_list(client: Freeplay, server: LocalFreeplay) -> None:
    messages = chat("original")
    with scope(client, server):
        server.faults.hang(5)
        record(all_messages=chat("first"))  # waits at the server: the next one stays queued
        record(all_messages=messages)
        messages.append({"role": "user", "content": "added later"})
        server.faults.release()
    flushed(client)
    stored = sorted((c["messages"] for c in server.completions()), key=str)  # sent concurrently
    assert stored == sorted([chat("first"), chat("original")], key=str)


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"session_info": None}, TypeError, "attach_session"),
        ({"messages": []}, TypeError, "unexpected field"),
        ({}, ValueError, "all_messages"),
        ({"all_messages": []}, ValueError, "all_messages"),
    ],
)
def test_record_refuses_bad_fields(
    client: Freeplay,
    server: LocalFreeplay,
    fields: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    with scope(client, server), pytest.raises(error, match=match):
        record(**fields)
    flushed(client)
    assert server.request_count == 0


def test_record_without_a_project_id_says_how_to_set_one(
    client: Freeplay, server: LocalFreeplay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FREEPLAY_PROJECT_ID", raising=False)
    with session_scope(client), pytest.raises(ConfigurationError, match="FREEPLAY_PROJECT_ID"):
        record(all_messages=chat("x"))


def test_record_in_sync_mode_is_stored_before_it_returns(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server, recording="sync") as session:
        response = record(all_messages=chat("sync"))
        stored = server.completion(response.completion_id)
    assert stored is not None and stored["session_id"] == session.session_id
    stats = recorder_stats(client)
    assert (stats.queued, stats.sent) == (0, 1)


def test_record_follows_new_session(client: Freeplay, server: LocalFreeplay) -> None:
    with scope(client, server) as first:
        record(all_messages=chat("one"))
        second = new_session()
        record(all_messages=chat("two"))
    flushed(client)
    assert [c["messages"][0]["content"] for c in server.completions(first.session_id)] == ["one"]
    assert [c["messages"][0]["content"] for c in server.completions(second.session_id)] == ["two"]


def test_record_from_a_thread_with_a_copied_context(
    client: Freeplay, server: LocalFreeplay
) -> None:
    import contextvars

    results: list[str] = []
    with scope(client, server) as session, trace_scope("q") as trace:
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(lambda: results.append(record(all_messages=chat("t")).completion_id),),
        )
        thread.start()
        thread.join()
        trace.output = "done"
    flushed(client)
    stored = server.completion(results[0])
    assert stored is not None
    assert (stored["session_id"], stored["parent_id"]) == (session.session_id, trace.trace_id)


# -- attach_session ---------------------------------------------------------------------


def test_attach_session_returns_a_bound_copy(client: Freeplay, server: LocalFreeplay) -> None:
    payload = RecordPayload(project_id=server.project_id, all_messages=chat("own"))
    original_session = payload.session_info.session_id
    with scope(client, server) as session, trace_scope("q") as trace:
        attached = attach_session(payload)
        client.recordings.create(attached)
        trace.output = "a"
    assert payload.session_info.session_id == original_session  # not changed in place
    assert payload.parent_id is None
    assert attached.session_info.session_id == session.session_id
    assert str(attached.parent_id) == trace.trace_id
    flushed(client)
    (stored,) = server.completions()
    assert (stored["session_id"], stored["parent_id"]) == (session.session_id, trace.trace_id)


def test_attach_session_keeps_an_explicit_parent(client: Freeplay, server: LocalFreeplay) -> None:
    parent = uuid.uuid4()
    payload = RecordPayload(project_id=PROJECT_ID, all_messages=chat("x"), parent_id=parent)
    with scope(client, server), trace_scope("q"):
        assert attach_session(payload).parent_id == parent


def test_attach_session_outside_a_session_raises() -> None:
    with pytest.raises(NoActiveSessionError):
        attach_session(RecordPayload(project_id=PROJECT_ID, all_messages=chat("x")))


# -- trace_scope ------------------------------------------------------------------------


def test_trace_scope_records_the_trace_once_with_its_children(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server) as session:
        with trace_scope(
            "question",
            name="answer",
            agent_name="helper",
            kind="agent",
            custom_metadata={"step": 1},
        ) as trace:
            assert isinstance(trace, TraceHandle)
            assert current_trace() is trace
            first = record(all_messages=chat("1")).completion_id
            second = record(all_messages=chat("2")).completion_id
            trace.output = "the answer"
            trace.eval_results = {"good": True}
        assert current_trace() is None
    flushed(client)
    (stored,) = server.traces(session.session_id)
    assert stored["id"] == trace.trace_id
    assert stored["input"] == "question"
    assert stored["output"] == "the answer"
    assert (stored["name"], stored["agent_name"], stored["kind"]) == ("answer", "helper", "agent")
    assert stored["custom_metadata"] == {"step": 1}
    assert stored["eval_results"] == {"good": True}
    assert stored["parent_id"] is None
    children = [
        c for c in server.completions(session.session_id) if c["parent_id"] == trace.trace_id
    ]
    assert sorted(c["id"] for c in children) == sorted([first, second])  # sent concurrently
    assert [r.method for r in server.requests_received()].count("POST") == 3


def test_nested_trace_scopes_make_child_traces(client: Freeplay, server: LocalFreeplay) -> None:
    with scope(client, server) as session, trace_scope("outer") as outer:
        record(all_messages=chat("in outer"))
        with trace_scope("inner", kind="tool") as inner:
            assert current_trace() is inner
            record(all_messages=chat("in inner"))
            inner.output = "tool result"
        assert current_trace() is outer
        record(all_messages=chat("outer again"))
        outer.output = "done"
    flushed(client)
    traces = {t["id"]: t for t in server.traces(session.session_id)}
    assert traces[inner.trace_id]["parent_id"] == outer.trace_id
    assert traces[outer.trace_id]["parent_id"] is None
    parents = {c["messages"][0]["content"]: c["parent_id"] for c in server.completions()}
    assert parents == {
        "in outer": outer.trace_id,
        "in inner": inner.trace_id,
        "outer again": outer.trace_id,
    }


def test_first_traces_opened_at_once_in_threads_sharing_a_session_are_all_open(
    client: Freeplay, server: LocalFreeplay
) -> None:
    """A binding's list of open traces is made on its first trace (most requests open
    none): threads opening their first traces together all land in one list."""
    threads = 8
    barrier = threading.Barrier(threads)
    seen: list[int] = []
    with scope(client, server):
        binding = current_binding()
        assert binding is not None and binding.open_traces == ()

        def open_one(n: int) -> None:
            barrier.wait()
            with trace_scope(f"question {n}") as trace:
                barrier.wait()  # every thread's trace is open now
                seen.append(len(binding.open_traces))
                assert current_trace() is trace
                barrier.wait()  # and stays open until every thread has looked

        context = contextvars.copy_context()
        workers = [
            threading.Thread(target=context.copy().run, args=(open_one, n)) for n in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert seen == [threads] * threads
        assert binding.open_traces == []
    flushed(client)
    assert len(server.traces()) == threads


@pytest.mark.anyio
async def test_async_trace_scope_reaches_threads_and_tasks(
    client: Freeplay, server: LocalFreeplay
) -> None:
    ids: list[str] = []

    def in_thread() -> None:
        ids.append(record(all_messages=chat("thread")).completion_id)

    async def in_task() -> None:
        ids.append(record(all_messages=chat("task")).completion_id)

    async with scope(client, server) as session:
        async with trace_scope("async") as trace:
            await anyio.to_thread.run_sync(in_thread)
            async with anyio.create_task_group() as group:
                group.start_soon(in_task)
            trace.output = "ok"
        assert current_trace() is None
    flushed(client)
    for completion_id in ids:
        stored = server.completion(completion_id)
        assert stored is not None
        assert (stored["session_id"], stored["parent_id"]) == (session.session_id, trace.trace_id)
    assert [t["id"] for t in server.traces()] == [trace.trace_id]


def test_trace_scope_records_and_unbinds_when_the_block_raises(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server), pytest.raises(RuntimeError, match="boom"):  # noqa: SIM117
        with trace_scope("q") as trace:
            trace.output = "partial"
            raise RuntimeError("boom")
    assert current_trace() is None
    flushed(client)
    (stored,) = server.traces()
    assert (stored["id"], stored["output"]) == (trace.trace_id, "partial")


def test_trace_record_output_sets_the_output_without_sending_twice(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server), trace_scope("q") as trace:
        trace.record_output(server.project_id, "via the SDK method", eval_results={"x": 1.0})
    flushed(client)
    (stored,) = server.traces()
    assert stored["output"] == "via the SDK method"
    assert stored["eval_results"] == {"x": 1.0}
    assert server.duplicates == 0
    assert len(server.requests_received()) == 1


def test_trace_scope_needs_a_session_and_an_input() -> None:
    with pytest.raises(NoActiveSessionError), trace_scope("q"):
        pass
    with pytest.raises(ValueError, match="input"):
        trace_scope(None)


def test_a_trace_opened_before_new_session_is_not_the_parent_in_the_new_one(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server), trace_scope("q") as trace:
        new_session()
        response = record(all_messages=chat("fresh"))
        trace.output = "x"
    flushed(client)
    stored = server.completion(response.completion_id)
    assert stored is not None and stored["parent_id"] is None


# -- end_session ------------------------------------------------------------------------


def test_end_session_stops_recording_until_new_session(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server) as ended:
        record(all_messages=chat("before"))
        end_session()
        with pytest.raises(NoActiveSessionError, match="new_session"):
            record(all_messages=chat("after"))
        with pytest.raises(NoActiveSessionError, match="new_session"), trace_scope("q"):
            pass
        fresh = new_session()
        record(all_messages=chat("fresh"))
    flushed(client)
    assert len(server.completions(ended.session_id)) == 1
    assert len(server.completions(fresh.session_id)) == 1
    assert not server.session(ended.session_id)["deleted"]  # type: ignore[index]


def test_end_session_delete_drops_what_is_still_queued(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server) as deleted:
        server.faults.hang(0.5)  # the first recording waits at the server, the rest queue up
        for n in range(5):
            record(all_messages=chat(str(n)))
        end_session(delete=True)
    with scope(client, server) as kept:
        record(all_messages=chat("other session"))
    flushed(client)
    assert server.session(deleted.session_id)["deleted"]  # type: ignore[index]
    assert server.completions(deleted.session_id) == []
    assert len(server.completions(kept.session_id)) == 1
    log = [r for r in server.requests_received() if deleted.session_id in r.path]
    assert log[-1].method == "DELETE"
    # at most those already in flight (max_concurrency=2)
    assert sum(r.method == "POST" for r in log) <= 2
    assert recorder_stats(client).cancelled >= 3


def test_end_session_delete_in_sync_mode(client: Freeplay, server: LocalFreeplay) -> None:
    with scope(client, server, recording="sync") as session:
        record(all_messages=chat("x"))
        end_session(delete=True)
        assert server.session(session.session_id)["deleted"]  # type: ignore[index]


def test_end_session_outside_a_session_raises() -> None:
    with pytest.raises(NoActiveSessionError):
        end_session()


# -- feedback and metadata -------------------------------------------------------------


def test_feedback_defaults_to_the_last_completion_of_the_trace_then_of_the_request(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server):
        with pytest.raises(LookupError, match="completion_id"):
            record_feedback({"rating": 1})
        outside = record(all_messages=chat("outside")).completion_id
        with trace_scope("q") as trace:
            record(all_messages=chat("first in trace"))
            last_in_trace = record(all_messages=chat("last in trace")).completion_id
            assert record_feedback({"rating": 5}) == last_in_trace
            trace.output = "x"
        latest = record(all_messages=chat("latest")).completion_id
        assert record_feedback({"thumbs": "up"}) == latest
        assert record_feedback({"rating": 2}, completion_id=outside) == outside
    flushed(client)
    assert server.feedback(last_in_trace) == {"rating": 5}
    assert server.feedback(latest) == {"thumbs": "up"}
    assert server.feedback(outside) == {"rating": 2}


def test_trace_feedback_and_metadata_for_an_open_trace_go_with_the_trace(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server), trace_scope("q", custom_metadata={"a": 1}) as trace:
        assert record_trace_feedback({"helpful": True}) == trace.trace_id
        update_trace_metadata({"b": 2})
        trace.output = "x"
    flushed(client)
    (stored,) = server.traces()
    assert stored["custom_metadata"] == {"a": 1, "b": 2}
    assert stored["feedback"] == {"helpful": True}
    paths = [r.path for r in server.requests_received()]
    assert "trace-feedback" in paths[-1]  # sent after the trace itself


def test_trace_feedback_and_metadata_for_an_earlier_trace(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with scope(client, server):
        with trace_scope("q") as trace:
            trace.output = "x"
        record_trace_feedback({"helpful": False}, trace_id=trace.trace_id)
        update_trace_metadata({"resolved": True}, trace_id=trace.trace_id)
        with pytest.raises(LookupError, match="trace_id"):
            record_trace_feedback({"x": 1})
    flushed(client)
    stored = server.trace(trace.trace_id)
    assert stored is not None
    assert stored["feedback"] == {"helpful": False}
    assert stored["custom_metadata"] == {"resolved": True}


def test_update_session_metadata(client: Freeplay, server: LocalFreeplay) -> None:
    with scope(client, server, custom_metadata={"user": "u"}) as session:
        record(all_messages=chat("x"))
        update_session_metadata({"ticket": "T-1"})
        with pytest.raises(ValueError, match="dict"):
            update_session_metadata(["not", "a", "dict"])  # type: ignore[arg-type]
    flushed(client)
    metadata = server.session(session.session_id)["custom_metadata"]  # type: ignore[index]
    assert metadata == {"user": "u", "ticket": "T-1"}


def test_helpers_outside_a_session_raise() -> None:
    for call in (
        lambda: record_feedback({"a": 1}, completion_id=str(uuid.uuid4())),
        lambda: record_trace_feedback({"a": 1}, trace_id=str(uuid.uuid4())),
        lambda: update_session_metadata({"a": 1}),
        lambda: update_trace_metadata({"a": 1}, trace_id=str(uuid.uuid4())),
    ):
        with pytest.raises(NoActiveSessionError):
            call()


# -- under the ASGI adapter -------------------------------------------------------------


def build_app(client: Freeplay, server: LocalFreeplay) -> Any:
    async def chat_view(request: Request) -> Response:
        async with trace_scope("question") as trace:
            completion_id = record(all_messages=chat("q")).completion_id
            trace.output = "answer"
        return JSONResponse({"completion_id": completion_id, "trace_id": trace.trace_id})

    def forget(request: Request) -> Response:  # a sync view, in the threadpool
        end_session(delete=True)
        return JSONResponse({"ended": True})

    app = Starlette(routes=[Route("/chat", chat_view), Route("/forget", forget)])
    return FreeplaySessionMiddleware(app, client=client, project_id=server.project_id)


@pytest.mark.anyio
async def test_helpers_under_the_asgi_middleware(client: Freeplay, server: LocalFreeplay) -> None:
    app = build_app(client, server)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        first = await http.get("/chat")
        session_id = first.headers[HEADER]
        again = await http.get("/chat", headers={HEADER: session_id})
        assert again.headers[HEADER] == session_id
        flushed(client)
        stored = [server.completion(r.json()["completion_id"]) for r in (first, again)]
        assert [c["session_id"] for c in stored if c] == [session_id, session_id]
        assert [c["parent_id"] for c in stored if c] == [
            first.json()["trace_id"],
            again.json()["trace_id"],
        ]
        forget = await http.get("/forget", headers={HEADER: session_id})
        assert HEADER not in forget.headers
        assert "Max-Age=0" in forget.headers["set-cookie"]
    assert current_session() is None
    flushed(client)
    assert server.session(session_id)["deleted"]  # type: ignore[index]
    assert server.completions(session_id) == []


def test_payload_fields_match_the_sdk() -> None:
    fields = {f.name for f in dataclasses.fields(RecordPayload)}
    from freeplay_integrations._helpers import RECORD_FIELDS

    assert fields - RECORD_FIELDS == {"session_info"}


# -- under the WSGI adapters ------------------------------------------------------------


def turn(forget: bool) -> dict[str, Any]:
    """What the views below do: a trace with a completion and its feedback, or a delete."""
    if forget:
        end_session(delete=True)
        return {"ended": True}
    with trace_scope("question") as trace:
        completion_id = record(all_messages=chat("q")).completion_id
        record_feedback({"rating": 3})
        trace.output = "answer"
    return {"completion_id": completion_id, "trace_id": trace.trace_id}


def wsgi_app(client: Freeplay, server: LocalFreeplay) -> Any:
    from freeplay_integrations.wsgi import FreeplaySessionMiddleware as WSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = turn("forget" in environ.get("QUERY_STRING", ""))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return WSGIMiddleware(app, client=client, project_id=server.project_id)


def flask_app(client: Freeplay, server: LocalFreeplay) -> Any:
    from flask import Flask, request

    from freeplay_integrations.flask import FreeplaySessions

    app = Flask(__name__)
    FreeplaySessions(app, client=client, project_id=server.project_id)

    @app.get("/")
    def view() -> dict[str, Any]:
        return turn("forget" in request.args)

    return app


@pytest.mark.parametrize("build", [wsgi_app, flask_app])
def test_helpers_under_the_wsgi_adapters(
    client: Freeplay, server: LocalFreeplay, build: Any
) -> None:
    from werkzeug.test import Client

    http = Client(build(client, server))
    first = http.get("/")
    session_id = first.headers[HEADER]
    body = json.loads(first.get_data())
    assert current_session() is None
    flushed(client)
    stored = server.completion(body["completion_id"])
    assert stored is not None
    assert (stored["session_id"], stored["parent_id"]) == (session_id, body["trace_id"])
    assert stored["feedback"] == {"rating": 3}
    forget = http.get("/?forget=1", headers={HEADER: session_id})
    assert current_session() is None
    assert HEADER not in forget.headers
    assert "Max-Age=0" in forget.headers["Set-Cookie"]
    flushed(client)
    assert server.session(session_id)["deleted"]  # type: ignore[index]
    assert server.completions(session_id) == []
