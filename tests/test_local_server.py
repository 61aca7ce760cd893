"""The local Freeplay server against the real SDK over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from freeplay import Freeplay
from freeplay.errors import FreeplayClientError, FreeplayError
from freeplay.resources.recordings import CallInfo, RecordPayload, RecordUpdatePayload
from freeplay.resources.sessions import Session
from freeplay.resources.traces import TraceUpdatePayload

import freeplay_integrations
from freeplay_integrations.local import LocalFreeplay, ReceivedRequest, main

MESSAGES = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


@pytest.fixture
def server() -> Iterator[LocalFreeplay]:
    with LocalFreeplay() as local:
        yield local


@pytest.fixture
def client(server: LocalFreeplay) -> Freeplay:
    return server.client()


def record(client: Freeplay, server: LocalFreeplay, session: Session, **fields: Any) -> str:
    fields.setdefault("all_messages", MESSAGES)
    payload = RecordPayload(
        project_id=server.project_id, session_info=session.session_info, **fields
    )
    return str(client.recordings.create(payload).completion_id)


def api(
    server: LocalFreeplay,
    method: str,
    path: str,
    *,
    json: Any = None,
    data: bytes | None = None,
    key: str | None = None,
    timeout: float = 5,
) -> requests.Response:
    headers = {"Authorization": f"Bearer {key or server.api_key}"}
    url = f"{server.api_base}/v2/projects/{server.project_id}{path}"
    return requests.request(method, url, json=json, data=data, headers=headers, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- every SDK call round-trips ----------------------------------------------------------


def test_record_completion_is_stored_with_its_session(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create(custom_metadata={"user_id": "u-1"})
    start = time.time()
    completion_id = record(
        client,
        server,
        session,
        inputs={"city": "Paris"},
        call_info=CallInfo(provider="openai", model="gpt-4o", start_time=start, end_time=start + 1),
    )

    uuid.UUID(completion_id, version=4)
    [stored] = server.completions(session.session_id)
    assert stored["id"] == completion_id
    assert stored["messages"] == MESSAGES
    assert stored["inputs"] == {"city": "Paris"}
    assert (stored["provider"], stored["model"]) == ("openai", "gpt-4o")
    assert stored["end_time"] - stored["start_time"] == pytest.approx(1)
    assert stored["payload"]["session_info"] == {"custom_metadata": {"user_id": "u-1"}}
    [stored_session] = server.sessions()
    assert stored_session["id"] == session.session_id
    assert stored_session["custom_metadata"] == {"user_id": "u-1"}
    assert stored_session["completion_count"] == 1


def test_record_completion_keeps_the_completion_id_sent(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create()
    completion_id = uuid.uuid4()

    returned = record(client, server, session, completion_id=completion_id)

    assert returned == str(completion_id)
    assert server.completion(str(completion_id)) is not None


def test_update_completion_appends_messages(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    completion_id = record(client, server, session)
    follow_up = {"role": "user", "content": "And Germany?"}

    response = client.recordings.update(
        RecordUpdatePayload(
            project_id=server.project_id,
            completion_id=completion_id,
            new_messages=[follow_up],
            eval_results={"correct": True},
        )
    )

    assert response.completion_id == completion_id
    stored = server.completion(completion_id)
    assert stored is not None
    assert stored["messages"] == [*MESSAGES, follow_up]
    assert stored["eval_results"] == {"correct": True}


def test_update_unknown_completion_is_404(server: LocalFreeplay, client: Freeplay) -> None:
    with pytest.raises(FreeplayError, match="404"):
        client.recordings.update(
            RecordUpdatePayload(project_id=server.project_id, completion_id=str(uuid.uuid4()))
        )


def test_traces_nest_and_completions_attach_to_them(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create()
    outer = session.create_trace(input="plan a trip", name="planner", agent_name="agent")
    inner = session.create_trace(input="find flights", parent_id=uuid.UUID(outer.trace_id))
    completion_id = record(client, server, session, parent_id=uuid.UUID(inner.trace_id))
    inner.record_output(server.project_id, {"flights": 2})
    outer.record_output(server.project_id, "done")

    traces = {trace["id"]: trace for trace in server.traces(session.session_id)}
    assert set(traces) == {outer.trace_id, inner.trace_id}
    assert traces[inner.trace_id]["parent_id"] == outer.trace_id
    assert traces[inner.trace_id]["output"] == {"flights": 2}
    assert traces[outer.trace_id]["name"] == "planner"
    assert traces[outer.trace_id]["agent_name"] == "agent"
    assert traces[outer.trace_id]["start_time"] is not None
    assert server.completion(completion_id)["parent_id"] == inner.trace_id  # type: ignore[index]
    assert server.session(session.session_id)["trace_count"] == 2  # type: ignore[index]


def test_update_trace_changes_output_metadata_and_feedback(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create()
    trace = session.create_trace(input="q", custom_metadata={"a": 1})
    trace.record_output(server.project_id, "first")

    client.traces.update(
        TraceUpdatePayload(
            project_id=server.project_id,
            session_id=session.session_id,
            trace_id=trace.trace_id,
            output="second",
            metadata={"b": 2},
            feedback={"rating": 5},
        )
    )

    [stored] = server.traces()
    assert stored["output"] == "second"
    assert stored["custom_metadata"] == {"a": 1, "b": 2}
    assert stored["feedback"] == {"rating": 5}


def test_delete_session_removes_everything_in_it(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create(custom_metadata={"user_id": "u-1"})
    other = client.sessions.create()
    completion_id = record(client, server, session)
    session.create_trace(input="q").record_output(server.project_id, "a")
    record(client, server, other)
    client.customer_feedback.update(server.project_id, completion_id, {"thumbs": "up"})

    client.sessions.delete(server.project_id, session.session_id)

    assert [s["id"] for s in server.sessions()] == [other.session_id]
    deleted = server.session(session.session_id)
    assert deleted is not None and deleted["deleted"] is True
    assert deleted["custom_metadata"] == {}
    assert server.completions(session.session_id) == []
    assert server.traces(session.session_id) == []
    assert server.feedback(completion_id) == {}
    assert len(server.completions(other.session_id)) == 1


def test_customer_feedback_is_merged_into_completion_and_trace(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create()
    completion_id = record(client, server, session)
    trace = session.create_trace(input="q")
    trace.record_output(server.project_id, "a")

    client.customer_feedback.update(server.project_id, completion_id, {"thumbs": "up"})
    client.customer_feedback.update(server.project_id, completion_id, {"comment": "ok"})
    client.customer_feedback.update_trace(server.project_id, trace.trace_id, {"helpful": True})

    assert server.completion(completion_id)["feedback"] == {  # type: ignore[index]
        "thumbs": "up",
        "comment": "ok",
    }
    assert server.traces()[0]["feedback"] == {"helpful": True}


def test_feedback_sent_before_the_completion_shows_up_once_it_arrives(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create()
    completion_id = uuid.uuid4()

    client.customer_feedback.update(server.project_id, str(completion_id), {"thumbs": "down"})
    record(client, server, session, completion_id=completion_id)

    assert server.completion(str(completion_id))["feedback"] == {"thumbs": "down"}  # type: ignore[index]


def test_metadata_updates_merge(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create(custom_metadata={"user_id": "u-1", "plan": "free"})
    record(client, server, session)
    trace = session.create_trace(input="q", custom_metadata={"step": 1})
    trace.record_output(server.project_id, "a")

    client.metadata.update_session(server.project_id, session.session_id, {"plan": "pro"})
    client.metadata.update_trace(
        server.project_id, session.session_id, trace.trace_id, {"ticket": "T-1"}
    )

    stored = server.session(session.session_id)
    assert stored is not None
    assert stored["custom_metadata"] == {"user_id": "u-1", "plan": "pro"}
    assert server.traces()[0]["custom_metadata"] == {"step": 1, "ticket": "T-1"}


def test_each_endpoint_answers_the_status_the_sdk_expects(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create()
    completion_id = record(client, server, session)
    trace = session.create_trace(input="q")
    trace.record_output(server.project_id, "a")
    client.metadata.update_session(server.project_id, session.session_id, {"k": "v"})
    client.sessions.delete(server.project_id, session.session_id)

    statuses = [(r.method, r.path.split("/")[-1], r.status) for r in server.requests_received()]
    assert statuses == [
        ("POST", "completions", 201),
        ("POST", trace.trace_id, 201),
        ("PATCH", "metadata", 200),
        ("DELETE", session.session_id, 201),
    ]
    assert server.request_count == 4
    assert completion_id


# -- refusals ----------------------------------------------------------------------------


def test_wrong_api_key_is_refused_and_the_sdk_raises(server: LocalFreeplay) -> None:
    wrong = Freeplay(freeplay_api_key="not-the-key", api_base=server.api_base)
    session = wrong.sessions.create()

    with pytest.raises(FreeplayError, match="401"):
        wrong.recordings.create(
            RecordPayload(
                project_id=server.project_id,
                all_messages=MESSAGES,
                session_info=session.session_info,
            )
        )
    with pytest.raises(FreeplayClientError, match="401"):
        session.create_trace(input="q").record_output(server.project_id, "a")

    missing = requests.post(f"{server.api_base}/v2/projects/p/sessions/x/completions", timeout=5)
    assert missing.status_code == 401
    assert "Authorization" in missing.json()["message"]
    assert server.sessions() == []


@pytest.mark.parametrize(
    "session_id",
    [
        "not-a-uuid",
        str(uuid.uuid1()),
        uuid.uuid4().hex,
        "{" + str(uuid.uuid4()) + "}",
    ],
)
def test_session_id_must_be_a_uuid4(server: LocalFreeplay, session_id: str) -> None:
    response = api(
        server, "POST", f"/sessions/{session_id}/completions", json={"messages": MESSAGES}
    )

    assert response.status_code == 400
    assert "UUID v4" in response.json()["message"]
    assert server.sessions() == []


def test_sdk_raises_for_a_session_id_that_is_not_a_uuid4(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.restore_session("session-42")

    with pytest.raises(FreeplayError, match="400"):
        record(client, server, session)


def test_upper_case_uuid4_is_accepted_and_stored_in_lower_case(server: LocalFreeplay) -> None:
    session_id = str(uuid.uuid4())

    response = api(
        server, "POST", f"/sessions/{session_id.upper()}/completions", json={"messages": MESSAGES}
    )

    assert response.status_code == 201
    assert server.session(session_id) is not None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sessions/{s}/traces/id/not-a-trace"),
        ("PATCH", "/sessions/{s}/traces/id/not-a-trace/metadata"),
        ("POST", "/completion-feedback/id/not-a-completion"),
        ("POST", "/completions/not-a-completion"),
        ("DELETE", "/sessions/not-a-session"),
    ],
)
def test_other_ids_must_be_uuid4s(server: LocalFreeplay, method: str, path: str) -> None:
    response = api(server, method, path.format(s=uuid.uuid4()), json={})

    assert response.status_code == 400
    assert "message" in response.json()


def test_bad_requests(server: LocalFreeplay) -> None:
    session_path = f"/sessions/{uuid.uuid4()}/completions"

    invalid_json = api(server, "POST", session_path, data=b"{not json")
    not_an_object = api(server, "POST", session_path, json=["a"])
    no_messages = api(server, "POST", session_path, json={"messages": []})
    bad_completion_id = api(
        server, "POST", session_path, json={"messages": MESSAGES, "completion_id": "x"}
    )
    unknown = api(server, "POST", "/prompt-templates/all/prod")
    wrong_method = api(server, "GET", session_path)

    assert invalid_json.status_code == 400
    assert invalid_json.json() == {"message": "Invalid JSON in the request body."}
    assert not_an_object.status_code == 400
    assert no_messages.status_code == 400
    assert bad_completion_id.status_code == 400
    assert unknown.status_code == 404
    assert "No Freeplay API endpoint" in unknown.json()["message"]
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert server.sessions() == []


# -- idempotency -------------------------------------------------------------------------


def test_replayed_completion_is_stored_once(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    completion_id = uuid.uuid4()

    first = record(client, server, session, completion_id=completion_id)
    replay = record(
        client,
        server,
        session,
        completion_id=completion_id,
        all_messages=[{"role": "user", "content": "changed"}],
    )

    assert first == replay == str(completion_id)
    [stored] = server.completions()
    assert stored["messages"] == MESSAGES
    assert server.duplicates == 1


def test_replayed_trace_is_stored_once(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    trace = session.create_trace(input="q")

    trace.record_output(server.project_id, "first")
    trace.record_output(server.project_id, "second")

    [stored] = server.traces()
    assert stored["output"] == "first"
    assert server.duplicates == 1
    assert [r.status for r in server.requests_received()] == [201, 201]


def test_trace_update_arriving_before_the_trace_is_kept(
    server: LocalFreeplay, client: Freeplay
) -> None:
    session = client.sessions.create()
    trace = session.create_trace(input="q", custom_metadata={"a": 1})

    client.metadata.update_trace(
        server.project_id, session.session_id, trace.trace_id, {"a": 2, "b": 3}
    )
    assert server.traces() == []
    pending = server.trace(trace.trace_id)
    assert pending is not None and pending["recorded"] is False
    trace.record_output(server.project_id, "a")

    [stored] = server.traces()
    assert stored["custom_metadata"] == {"a": 2, "b": 3}
    assert server.duplicates == 0


def test_concurrent_recordings_are_all_stored(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            record(client, server, session)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(server.completions(session.session_id)) == 16
    assert server.session(session.session_id)["completion_count"] == 16  # type: ignore[index]


# -- fault injection ---------------------------------------------------------------------


def test_fail_next_answers_the_status_then_recovers(server: LocalFreeplay) -> None:
    path = f"/sessions/{uuid.uuid4()}/completions"
    server.faults.fail_next(2, status=503)

    statuses = [api(server, "POST", path, json={"messages": MESSAGES}) for _ in range(3)]

    assert [r.status_code for r in statuses] == [503, 503, 201]
    assert "503" in statuses[0].json()["message"]
    assert len(server.completions()) == 1
    assert [r.status for r in server.requests_received()] == [503, 503, 201]


def test_fail_next_with_500_makes_the_sdk_raise(server: LocalFreeplay, client: Freeplay) -> None:
    server.faults.fail_next(1, status=500)
    session = client.sessions.create()

    with pytest.raises(FreeplayError, match="500"):
        record(client, server, session)
    record(client, server, session)

    assert len(server.completions()) == 1


def test_429_carries_retry_after(server: LocalFreeplay) -> None:
    server.faults.fail_next(1, status=429)

    response = api(server, "POST", f"/sessions/{uuid.uuid4()}/completions", json={})

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0"
    assert response.json()["message"]


def test_fail_for_fails_every_request_in_the_window(server: LocalFreeplay) -> None:
    path = f"/sessions/{uuid.uuid4()}/completions"
    server.faults.fail_for(0.3, status=500)

    during = [api(server, "POST", path, json={"messages": MESSAGES}).status_code for _ in range(3)]
    time.sleep(0.35)
    after = api(server, "POST", path, json={"messages": MESSAGES}).status_code

    assert during == [500, 500, 500]
    assert after == 201


def test_hang_blocks_past_a_client_timeout_until_released(server: LocalFreeplay) -> None:
    path = f"/sessions/{uuid.uuid4()}/completions"
    server.faults.hang(30)

    with pytest.raises(requests.exceptions.ReadTimeout):
        api(server, "POST", path, json={"messages": MESSAGES}, timeout=0.2)
    server.faults.release()

    started = time.monotonic()
    response = api(server, "POST", path, json={"messages": MESSAGES}, timeout=5)
    assert response.status_code == 201
    assert time.monotonic() - started < 1
    # The hung request is answered once released (its client has gone by then).
    server.wait_for(lambda: len(server.completions()) == 2)


def test_hang_ends_by_itself(server: LocalFreeplay) -> None:
    server.faults.hang(0.3)
    started = time.monotonic()

    response = api(server, "POST", f"/sessions/{uuid.uuid4()}/completions", json=None)

    assert time.monotonic() - started >= 0.25
    assert response.status_code == 400  # answered normally once the hang is over


def test_latency_delays_every_answer_until_removed(server: LocalFreeplay) -> None:
    path = f"/sessions/{uuid.uuid4()}/completions"
    server.faults.latency(0.3)
    assert server.faults.active

    started = time.monotonic()
    delayed = api(server, "POST", path, json={"messages": MESSAGES})
    delayed_for = time.monotonic() - started
    server.faults.latency(0)
    started = time.monotonic()
    prompt = api(server, "POST", path, json={"messages": MESSAGES})

    assert delayed.status_code == prompt.status_code == 201  # answered normally, later
    assert delayed_for >= 0.28
    assert time.monotonic() - started < 0.28
    assert not server.faults.active


def test_latency_applies_to_faulted_answers_too(server: LocalFreeplay) -> None:
    server.faults.latency(0.3)
    server.faults.fail_next(1, status=503)
    started = time.monotonic()

    response = api(server, "POST", f"/sessions/{uuid.uuid4()}/completions", json={})

    assert response.status_code == 503
    assert time.monotonic() - started >= 0.28


def test_latency_does_not_serialise_concurrent_requests(server: LocalFreeplay) -> None:
    # Four requests under 1 s of latency: one after another they would take 4 s or more.
    server.faults.latency(1.0)
    statuses: list[int] = []
    started = time.monotonic()

    def post() -> None:
        path = f"/sessions/{uuid.uuid4()}/completions"
        statuses.append(api(server, "POST", path, json={"messages": MESSAGES}).status_code)

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert statuses == [201] * 4
    assert time.monotonic() - started < 3.5


def test_clear_lets_requests_waiting_on_latency_through(server: LocalFreeplay) -> None:
    server.faults.latency(60)
    results: list[int] = []
    waiting = threading.Thread(
        target=lambda: results.append(
            api(server, "POST", f"/sessions/{uuid.uuid4()}/completions", json={}).status_code
        )
    )
    waiting.start()
    server.wait_for(lambda: server.request_count == 0 and waiting.is_alive())
    time.sleep(0.2)  # the request is in the server, waiting
    server.faults.clear()
    waiting.join(timeout=5)

    assert results == [400]  # answered (an empty completion is refused), not still waiting
    assert not server.faults.active


def test_latency_must_be_a_finite_non_negative_number(server: LocalFreeplay) -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="latency"):
            server.faults.latency(bad)


def test_reset_next_drops_the_connection(server: LocalFreeplay) -> None:
    path = f"/sessions/{uuid.uuid4()}/completions"
    server.faults.reset_next(1)

    with pytest.raises(requests.exceptions.ConnectionError):
        api(server, "POST", path, json={"messages": MESSAGES})
    response = api(server, "POST", path, json={"messages": MESSAGES})

    assert response.status_code == 201
    assert server.requests_received()[0] == ReceivedRequest(
        "POST", f"/api/v2/projects/{server.project_id}{path}", 0
    )
    assert len(server.completions()) == 1


def test_faults_never_touch_the_web_page(server: LocalFreeplay) -> None:
    server.faults.fail_next(1, status=503)

    page = requests.get(server.url + "/", timeout=5)
    api_call = api(server, "POST", f"/sessions/{uuid.uuid4()}/completions", json={})

    assert page.status_code == 200
    assert api_call.status_code == 503
    assert server.request_count == 1


def test_clear_removes_faults(server: LocalFreeplay) -> None:
    server.faults.fail_next(5)
    server.faults.fail_for(60)
    server.faults.reset_next(5)
    assert server.faults.active

    server.faults.clear()

    assert not server.faults.active
    assert api(server, "POST", f"/sessions/{uuid.uuid4()}/completions", json={}).status_code == 400


def test_fault_status_must_be_an_error() -> None:
    with pytest.raises(ValueError, match="400-599"):
        LocalFreeplay().faults.fail_next(1, status=200)


# -- lifecycle, queries, persistence -------------------------------------------------------


def test_url_api_base_and_client(server: LocalFreeplay) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0
    assert server.api_base == server.url + "/api"
    assert server.client().api_base == server.api_base
    assert server.env()["FREEPLAY_API_BASE"] == server.api_base


def test_stop_drops_keep_alive_connections() -> None:
    local = LocalFreeplay().start()
    http = requests.Session()
    path = f"{local.api_base}/v2/projects/p/sessions/{uuid.uuid4()}/completions"
    headers = {"Authorization": f"Bearer {local.api_key}"}
    assert http.post(path, json={"messages": MESSAGES}, headers=headers, timeout=5).ok

    local.stop()

    with pytest.raises(requests.exceptions.ConnectionError):
        http.post(path, json={"messages": MESSAGES}, headers=headers, timeout=5)
    assert len(local.completions()) == 1
    local.close()


def test_file_database_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "freeplay.sqlite3"
    with LocalFreeplay(db_path=db) as first:
        client = first.client()
        session = client.sessions.create(custom_metadata={"user_id": "u-1"})
        completion_id = record(client, first, session)

    with LocalFreeplay(db_path=db) as second:
        [stored] = second.sessions()
        assert stored["id"] == session.session_id
        assert stored["custom_metadata"] == {"user_id": "u-1"}
        assert second.completion(completion_id) is not None


def test_restart_keeps_the_port_and_the_data(server: LocalFreeplay, client: Freeplay) -> None:
    port = server.port
    record(client, server, client.sessions.create())

    server.stop()
    assert not server.running
    server.start()

    assert server.port == port
    record(client, server, client.sessions.create())
    assert len(server.sessions()) == 2


def test_reset_forgets_everything(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    completion_id = uuid.uuid4()
    record(client, server, session, completion_id=completion_id)
    record(client, server, session, completion_id=completion_id)
    server.faults.fail_next(3)

    server.reset()

    assert server.sessions() == []
    assert server.completions() == []
    assert server.request_count == 0
    assert server.duplicates == 0
    assert not server.faults.active


def test_sessions_are_listed_most_recently_active_first(
    server: LocalFreeplay, client: Freeplay
) -> None:
    first, second = client.sessions.create(), client.sessions.create()
    record(client, server, first)
    record(client, server, second)
    assert [s["id"] for s in server.sessions()] == [second.session_id, first.session_id]

    record(client, server, first)

    assert [s["id"] for s in server.sessions()] == [first.session_id, second.session_id]


def test_wait_for_sees_a_background_recording(server: LocalFreeplay, client: Freeplay) -> None:
    session = client.sessions.create()
    worker = threading.Timer(0.1, record, (client, server, session))
    worker.start()

    completions = server.wait_for(lambda: server.completions(session.session_id), timeout=5)

    assert len(completions) == 1
    worker.join()


def test_wait_for_times_out_with_what_it_saw(server: LocalFreeplay) -> None:
    with pytest.raises(TimeoutError, match="0 API requests"):
        server.wait_for(lambda: server.completions(), timeout=0.05)


# -- command line ------------------------------------------------------------------------


def test_command_line_serves_the_page_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    root = str(Path(freeplay_integrations.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "FREEPLAY_API_KEY": "", "PYTHONPATH": pythonpath}
    process = subprocess.Popen(
        [sys.executable, "-m", "freeplay_integrations.local", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(5)]
        assert banner[0].strip() == f"Local Freeplay: http://127.0.0.1:{port}/"
        assert f"FREEPLAY_API_BASE=http://127.0.0.1:{port}/api\n" in "".join(banner)
        assert "FREEPLAY_API_KEY=freeplay-local-key\n" in "".join(banner)

        page = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200
        assert 'id="session-count"' in page.text
        client = Freeplay(
            freeplay_api_key="freeplay-local-key", api_base=f"http://127.0.0.1:{port}/api"
        )
        session = client.sessions.create()
        client.recordings.create(
            RecordPayload(
                project_id="local-project", all_messages=MESSAGES, session_info=session.session_info
            )
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert process.returncode == 0
    assert (tmp_path / "freeplay-local.sqlite3").exists()
    with LocalFreeplay(db_path=tmp_path / "freeplay-local.sqlite3") as reopened:
        assert [s["id"] for s in reopened.sessions()] == [session.session_id]


def test_main_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with LocalFreeplay() as busy:
        code = main(["--port", str(busy.port), "--db", ":memory:"])

    assert code == 1
    assert "--port" in capsys.readouterr().out


def test_main_reports_a_file_that_is_not_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("these are not the tables you are looking for" * 100)

    code = main(["--port", "0", "--db", str(not_a_db)])

    assert code == 1
    assert "--db" in capsys.readouterr().out
