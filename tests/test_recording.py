"""The recorder: typed operations, adaptive concurrency, order, retries, spool, time limits."""

from __future__ import annotations

import contextlib
import json
import logging
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
from freeplay import Freeplay

from freeplay_integrations import (
    configure_recording,
    end_session,
    record,
    record_feedback,
    record_trace_feedback,
    recorder_stats,
    session_scope,
    trace_scope,
    update_session_metadata,
    update_trace_metadata,
)
from freeplay_integrations._recording import (
    CompletionFeedback,
    DeleteSession,
    Operation,
    SdkTransport,
    SessionMetadata,
    Trace,
    TraceFeedback,
    TraceMetadata,
    _scheduler,
    default_spool_path,
    operation_from_json,
    recorder_for,
    session_ref,
)
from freeplay_integrations._recording._operations import Completion
from freeplay_integrations._recording._spool import append_lines, drain, spool_line
from freeplay_integrations.local import LocalFreeplay
from tests._capture import capturing_client

SID = str(uuid.uuid4())


def sid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


ROOT = Path(__file__).resolve().parent.parent


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": f"re: {text}"}]


@pytest.fixture
def server(freeplay_local: LocalFreeplay) -> LocalFreeplay:
    return freeplay_local


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool.jsonl"


@pytest.fixture
def client(server: LocalFreeplay, spool: Path) -> Iterator[Freeplay]:
    client = server.client()
    configure_recording(
        client,
        spool_path=spool,
        backoff_base=0.02,
        backoff_max=0.2,
        attempt_timeout=2.0,
        idle_timeout=0.5,
    )
    yield client
    server.faults.clear()
    recorder_for(client).flush(5)


def captured_completions(server: LocalFreeplay, n: int) -> tuple[str, list[Operation]]:
    """`n` completions of one new session, recorded for real, captured before sending."""
    client, captured = capturing_client(server)
    with session_scope(client, project_id=server.project_id) as session:
        for k in range(n):
            record(all_messages=chat(str(k)))
    return session.session_id, captured


def every_kind(server: LocalFreeplay) -> list[Operation]:
    """One operation of each kind, recorded for real, captured from the recorder."""
    client, captured = capturing_client(server)
    with session_scope(client, project_id=server.project_id):
        with trace_scope("question", name="answer") as trace:
            record(all_messages=chat("hi"))
            trace.output = "answer"
        record_feedback({"rating": 4})
        record_trace_feedback({"helpful": True}, trace_id=trace.trace_id)
        update_session_metadata({"ticket": "T-9"})
        update_trace_metadata({"resolved": True}, trace_id=trace.trace_id)
        end_session(delete=True)
    return captured


def test_every_kind_round_trips_through_json(server: LocalFreeplay) -> None:
    ops = every_kind(server)
    assert sorted(op.kind for op in ops) == sorted(
        [
            "completion",
            "trace",
            "completion_feedback",
            "trace_feedback",
            "session_metadata",
            "trace_metadata",
            "delete_session",
        ]
    )
    for op in ops:
        data = op.to_json()
        assert data["kind"] == op.kind
        again = operation_from_json(json.loads(json.dumps(data)))
        assert type(again) is type(op)
        assert again.key == op.key
        assert again.to_json()["data"] == data["data"]
        assert (again.project_id, again.session_id) == (op.project_id, op.session_id)


@pytest.mark.parametrize(
    "line",
    [
        {},
        {"kind": "nope", "project_id": "p", "session_id": "s", "data": {}},
        {"kind": "trace", "project_id": "p", "session_id": "s", "data": {"input": 1}},
        {"kind": "trace_feedback", "project_id": "p", "session_id": "s", "data": {}},
        {"kind": "completion", "project_id": "p", "session_id": "s", "data": {}},
        {"kind": "session_metadata", "project_id": 1, "session_id": "s", "data": {}},
        ["not", "an", "object"],
    ],
)
def test_operation_from_json_refuses_bad_lines_with_value_error(line: Any) -> None:
    with pytest.raises(ValueError):
        operation_from_json(line)


def test_session_metadata_waits_for_the_recording_that_creates_the_session(
    client: Freeplay, server: LocalFreeplay
) -> None:
    # The session exists on Freeplay from its first recording: metadata that lands before
    # it is a final 404. Sent side by side, the two would race.
    with session_scope(client, project_id=server.project_id) as session:
        record(all_messages=chat("hi"))
        update_session_metadata({"ticket": "T-1"})
    assert recorder_for(client).flush(10)
    stats = recorder_stats(client)
    assert (stats.sent, stats.failed) == (2, 0)
    [stored] = server.sessions()
    assert stored["id"] == session.session_id
    assert stored["custom_metadata"] == {"ticket": "T-1"}
    paths = [r.path for r in server.requests_received() if r.status < 300]
    assert paths[0].endswith("/completions") and paths[1].endswith("/metadata")


def test_background_delivers_every_kind_in_the_order_the_api_needs(
    client: Freeplay, server: LocalFreeplay
) -> None:
    server.faults.latency(0.05)
    with session_scope(client, project_id=server.project_id) as session:
        with trace_scope("question") as trace:
            completion_id = record(all_messages=chat("hi")).completion_id
            trace.output = "answer"
        record_feedback({"rating": 4})
        record_trace_feedback({"helpful": True}, trace_id=trace.trace_id)
        update_trace_metadata({"resolved": True}, trace_id=trace.trace_id)
        update_session_metadata({"ticket": "T-9"})
    assert recorder_for(client).flush(10)
    (completion,) = server.completions(session.session_id)
    assert completion["id"] == completion_id
    assert completion["feedback"] == {"rating": 4}
    (stored,) = server.traces(session.session_id)
    assert stored["feedback"] == {"helpful": True}
    assert stored["custom_metadata"] == {"resolved": True}
    stats = recorder_stats(client)
    assert stats.sent == 6 and stats.spooled == stats.failed == 0


def test_record_leaves_the_payload_to_the_sending_thread(server: LocalFreeplay) -> None:
    """`record()` hands over its fields; the `RecordPayload` (and its UUIDs) is built when
    the operation is first sent or serialised, and carries what `record()` was given."""
    client, captured = capturing_client(server)
    parent = uuid.uuid4()
    with session_scope(client, project_id=server.project_id) as session:
        given = record(all_messages=chat("a"), completion_id=str(uuid.uuid4()).upper())
        with trace_scope("question") as trace:
            made = record(all_messages=chat("b"), inputs={"q": 1})
        record(all_messages=chat("c"), parent_id=parent)
        with pytest.raises(ValueError):
            record(all_messages=chat("d"), completion_id="not-a-uuid")
    completions = [op for op in captured if isinstance(op, Completion)]  # not the trace
    assert [op._payload for op in completions] == [None, None, None]
    first, second, third = (op.payload for op in completions)
    assert first.completion_id == uuid.UUID(given.completion_id) and first.parent_id is None
    assert given.completion_id == given.completion_id.lower()
    assert second.completion_id == uuid.UUID(made.completion_id)
    assert second.parent_id == uuid.UUID(trace.trace_id) and second.inputs == {"q": 1}
    assert third.parent_id == parent
    assert {str(p.session_info.session_id) for p in (first, second, third)} == {
        session.session_id
    }
    assert completions[0].payload is first  # built once


def test_the_sending_threads_keep_the_id_pool_topped_up(
    client: Freeplay, server: LocalFreeplay
) -> None:
    """The refill of the session/completion ID pool is off the request path under load:
    a sending thread tops the pool up before each attempt."""
    from freeplay_integrations import _ids

    with session_scope(client, project_id=server.project_id):
        _ids._pool.clear()
        # A completion ID given: the request path draws no ID, so only a sending thread
        # can have refilled the pool.
        record(all_messages=chat("hi"), completion_id=uuid.uuid4())
        assert recorder_for(client).flush(10)
    assert len(_ids._pool) >= _ids.IDS_PER_READ


def test_a_delete_cancels_what_is_queued_and_goes_after_what_is_in_flight(
    client: Freeplay, server: LocalFreeplay
) -> None:
    server.faults.latency(0.2)
    with session_scope(client, project_id=server.project_id) as session:
        for n in range(5):
            record(all_messages=chat(str(n)))
        end_session(delete=True)
    assert recorder_for(client).flush(10)
    assert server.completions(session.session_id) == []
    methods = [r.method for r in server.requests_received()]
    assert methods[-1] == "DELETE"
    stats = recorder_stats(client)
    assert stats.sent + stats.cancelled == 6


def test_requests_in_flight_grow_with_the_backlog_and_stop_at_the_ceiling(
    client: Freeplay, server: LocalFreeplay
) -> None:
    configure_recording(client, max_concurrency=8, idle_timeout=0.3)
    recorder = recorder_for(client)
    server.faults.latency(0.3)
    seen = 0
    with session_scope(client, project_id=server.project_id):  # one session
        for n in range(40):
            record(all_messages=chat(str(n)))
            seen = max(seen, recorder._threads)
    deadline = time.monotonic() + 10
    while recorder.stats().pending and time.monotonic() < deadline:
        seen = max(seen, recorder._threads)
        time.sleep(0.01)
    assert recorder.flush(10)
    assert seen == 8  # grew to the ceiling, not past it
    deadline = time.monotonic() + 5
    while recorder._threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorder._threads == 0  # and shrank once idle
    assert recorder.stats().sent == 40


def test_a_sending_thread_hands_over_to_a_successor_after_its_share_of_operations(
    client: Freeplay, server: LocalFreeplay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After OPERATIONS_PER_THREAD attempts a thread starts its successor and exits (its
    # allocator caches go with it): nothing is lost or sent twice, and the ceiling holds.
    monkeypatch.setattr(_scheduler, "OPERATIONS_PER_THREAD", 5)
    configure_recording(client, max_concurrency=2, idle_timeout=0.3)
    recorder = recorder_for(client)
    attempts: dict[threading.Thread, int] = {}
    most = 0
    attempt = recorder._attempt

    def counted(op: Operation) -> None:
        nonlocal most
        thread = threading.current_thread()
        attempts[thread] = attempts.get(thread, 0) + 1
        most = max(most, recorder._threads)
        attempt(op)

    monkeypatch.setattr(recorder, "_attempt", counted)
    server.faults.latency(0.02)
    with session_scope(client, project_id=server.project_id) as session:
        for n in range(60):
            record(all_messages=chat(str(n)))
    assert recorder.flush(20)
    assert sum(attempts.values()) == 60
    assert max(attempts.values()) == 5
    assert len(attempts) >= 12
    assert most <= 2
    assert len(server.completions(session.session_id)) == 60
    assert recorder.stats().sent == 60


def test_a_sending_thread_that_cannot_start_a_successor_goes_on_itself(
    client: Freeplay, server: LocalFreeplay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python 3.12 refuses new threads once the interpreter is exiting (an atexit flush):
    # the thread due to hand over keeps sending, and a refused growth is not counted.
    monkeypatch.setattr(_scheduler, "OPERATIONS_PER_THREAD", 3)
    configure_recording(client, max_concurrency=4, idle_timeout=5)
    recorder = recorder_for(client)
    server.faults.latency(0.02)
    with session_scope(client, project_id=server.project_id) as session:
        record(all_messages=chat("first"))  # one thread starts
        assert recorder.flush(5)
        started = threading.Thread.start

        def refused(thread: threading.Thread) -> None:
            if thread.name == "freeplay-recorder":
                raise RuntimeError("can't create new thread at interpreter shutdown")
            started(thread)

        monkeypatch.setattr(threading.Thread, "start", refused)
        for n in range(20):
            record(all_messages=chat(str(n)))
        assert recorder.flush(20)
        assert recorder._threads == 1  # the refused growth was not counted
    assert len(server.completions(session.session_id)) == 21
    assert recorder.stats().sent == 21


def test_requests_in_flight_shrink_while_freeplay_fails_and_grow_again_after(
    client: Freeplay, server: LocalFreeplay
) -> None:
    # Freeplay 0.2 s away, 8 requests in flight allowed, a steady backlog. Measured on the
    # server (how many requests it held when each arrived): 8 before the outage, at most
    # 2 once the first failures came back, 8 again after it.
    configure_recording(client, max_concurrency=8, retry_for=60, backoff_max=0.3)
    recorder = recorder_for(client)
    server.faults.latency(0.2)

    def backlog(n: int) -> None:
        for k in range(n):
            record(all_messages=chat(str(k)))

    with session_scope(client, project_id=server.project_id) as session:
        backlog(40)
        time.sleep(0.5)
        outage_at = time.monotonic()
        server.faults.fail_for(2.0)
        backlog(40)
        time.sleep(2.0)
        recovered_at = time.monotonic()
        backlog(40)
    assert recorder.flush(30)
    assert len(server.completions(session.session_id)) == 120
    arrivals = server.faults.arrivals()
    before = [a.concurrent for a in arrivals if a.at < outage_at]
    during = [a.concurrent for a in arrivals if outage_at + 0.6 < a.at < recovered_at]
    after = [a.concurrent for a in arrivals if a.at > recovered_at]
    assert max(before) == 8
    assert during and max(during) <= 2
    assert max(after) == 8
    assert recorder.stats().spooled == 0


def test_the_latency_fault_does_not_serialise_requests(server: LocalFreeplay) -> None:
    _, (op,) = captured_completions(server, 1)
    payload = op.payload  # type: ignore[attr-defined]
    server.faults.latency(0.4)
    client = server.client()
    errors: list[BaseException] = []

    def one() -> None:
        try:
            client.recordings.create(payload)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert not errors
    assert 0.4 <= elapsed < 0.4 * 8 / 2
    server.faults.latency(0)
    started = time.monotonic()
    one()
    assert time.monotonic() - started < 0.4


def test_a_short_outage_is_retried_with_nothing_spooled(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    server.faults.fail_for(0.5)
    with session_scope(client, project_id=server.project_id) as session:
        for n in range(10):
            record(all_messages=chat(str(n)))
    assert recorder_for(client).flush(20)
    assert len(server.completions(session.session_id)) == 10
    stats = recorder_stats(client)
    assert stats.retried > 0 and stats.spooled == 0
    assert not spool.exists()


def test_retry_after_is_parsed_as_seconds_or_a_date(client: Freeplay) -> None:
    from freeplay_integrations._recording import Failure
    from freeplay_integrations._recording._transport import _retry_after

    assert _retry_after("2") == 2.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert _retry_after("garbage") is None
    assert recorder_for(client)._delay(1, Failure(True, 503, 1.5, "HTTP 503")) >= 1.5


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_end_to_end(
    client: Freeplay, server: LocalFreeplay, status: int
) -> None:
    # Freeplay answers the first two attempts with `status` and Retry-After: 0.6 s. The
    # server's own arrival times show each next attempt waited at least that long, and a
    # recording made during the pause waited for it too (not only the one refused).
    server.faults.fail_next(2, status, retry_after=0.6)
    recorder = recorder_for(client)
    with session_scope(client, project_id=server.project_id) as session:
        record(all_messages=chat("refused twice"))
        deadline = time.monotonic() + 5
        while recorder.stats().retried < 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # the first refusal was handled: the pause is on
        record(all_messages=chat("made during the pause"))
    assert recorder.flush(10)
    assert len(server.completions(session.session_id)) == 2
    arrivals = server.faults.arrivals()
    assert [a.status for a in arrivals[:2]] == [status, status]
    first, second, *later = arrivals
    assert second.at - first.at >= 0.6
    assert later and all(a.status == 0 for a in later)
    assert min(a.at for a in later) - second.at >= 0.6
    assert recorder.stats().spooled == 0


def test_a_final_4xx_is_dropped_counted_and_logged_once_per_kind_and_status(
    client: Freeplay, server: LocalFreeplay, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults.fail_next(5, status=422)
    with session_scope(client, project_id=server.project_id) as session:
        with caplog.at_level(logging.ERROR, "freeplay_integrations"):
            for n in range(5):
                update_session_metadata({"n": n})
            assert recorder_for(client).flush(10)
        record(all_messages=chat("fine"))
    assert recorder_for(client).flush(10)
    stats = recorder_stats(client)
    assert (stats.failed, stats.sent, stats.spooled) == (5, 1, 0)
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert session.session_id not in caplog.text
    assert session_ref(session.session_id) in caplog.text


def test_overflow_past_the_byte_budget_goes_to_the_spool_and_drains_by_itself(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    configure_recording(client, queue_bytes=20_000)
    server.faults.hang(1.0)
    big = "x" * 5_000
    with session_scope(client, project_id=server.project_id) as session:
        for n in range(20):
            record(all_messages=chat(f"{n} {big}"))
    stats = recorder_stats(client)
    assert stats.overflowed > 0
    assert spool.exists()
    assert (spool.stat().st_mode & 0o777, spool.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    server.faults.release()
    deadline = time.monotonic() + 20
    while len(server.completions(session.session_id)) < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(server.completions(session.session_id)) == 20
    assert server.duplicates == 0
    deadline = time.monotonic() + 5
    while spool.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not spool.exists()


def test_after_the_exit_flush_what_is_recorded_goes_to_the_spool_at_once(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    """`close` (the exit flush) spools what it could not deliver; later recordings too."""
    recorder = recorder_for(client)
    server.faults.hang(2.0)
    with session_scope(client, project_id=server.project_id):
        for n in range(3):
            record(all_messages=chat(str(n)))
        started = time.monotonic()
        assert recorder.close(time.monotonic() + 0.3) is False
        assert time.monotonic() - started < 0.3 + 0.5
        assert len(spool.read_text().splitlines()) == 3
        record(all_messages=chat("late"))  # the unlocked path: sending threads still run
        assert len(spool.read_text().splitlines()) == 4  # written before record returned
        update_session_metadata({"late": True})  # the locked path (it follows the session)
        kinds = [json.loads(line)["kind"] for line in spool.read_text().splitlines()]
    assert kinds == ["completion"] * 4 + ["session_metadata"]
    stats = recorder.stats()
    assert (stats.spooled, stats.pending, stats.lost) == (5, 0, 0)
    server.faults.release()


def test_a_new_recorder_drains_what_an_earlier_process_left(
    server: LocalFreeplay, spool: Path
) -> None:
    session_id, ops = captured_completions(server, 4)
    append_lines(str(spool), [spool_line(op, server.api_base, "test") for op in ops[:3]])
    with spool.open("a") as f:
        f.write('{"kind": "trace", "project_id": "p"}\n{"cut short')  # bad, then a partial line
    append_lines(str(spool), [spool_line(ops[3], server.api_base, "t")])
    client = server.client()
    configure_recording(client, spool_path=spool)
    server.wait_for(lambda: len(server.completions(session_id)) == 4, timeout=10)
    server.wait_for(lambda: not list(spool.parent.glob("spool.jsonl*[!dk]")), timeout=5)
    assert not spool.exists()
    bad = Path(str(spool) + ".bad").read_text().splitlines()
    assert len(bad) == 2  # the line without a trace ID, and the cut one


def test_a_drain_sends_an_operation_once_over_processes_sharing_the_spool(
    server: LocalFreeplay, spool: Path
) -> None:
    session_id, ops = captured_completions(server, 30)
    append_lines(str(spool), [spool_line(op, server.api_base, "test") for op in ops])
    script = (
        "import sys, time\n"
        "from freeplay import Freeplay\n"
        "from freeplay_integrations._recording import SdkTransport\n"
        "from freeplay_integrations._recording._spool import drain\n"
        "t = SdkTransport(Freeplay(freeplay_api_key=sys.argv[1], api_base=sys.argv[2]))\n"
        "def send(op):\n"
        "    t.send(op, 5); time.sleep(0.01); return 'sent'\n"
        "r = drain(sys.argv[3], send, api_base=sys.argv[2], wait=True)\n"
        "print(r.sent)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, server.api_key, server.api_base, str(spool)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    sent = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    assert sorted(sent) == [0, 30]
    assert len(server.completions(session_id)) == 30
    assert server.request_count == 30


def test_a_crash_mid_drain_leaves_the_rest_for_the_next_drain(
    server: LocalFreeplay, spool: Path
) -> None:
    session_id, ops = captured_completions(server, 5)
    append_lines(str(spool), [spool_line(op, server.api_base, "test") for op in ops])
    transport = SdkTransport(server.client())
    calls = 0

    def dies(op: Operation) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # the process dies mid-drain
        transport.send(op, 5)
        return "sent"

    with pytest.raises(KeyboardInterrupt):
        drain(str(spool), dies, api_base=server.api_base)
    leftovers = list(spool.parent.glob("spool.jsonl.draining-*"))
    assert len(leftovers) == 1

    def sends(op: Operation) -> Any:
        transport.send(op, 5)
        return "sent"

    result = drain(str(spool), sends, api_base=server.api_base)
    assert result.sent == 5  # the two already sent are sent again: fixed IDs, no duplicate
    assert not list(spool.parent.glob("spool.jsonl.draining-*"))
    assert len(server.completions(session_id)) == 5


def test_spool_permissions_hold_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "a" / "b" / "spool.jsonl"
        append_lines(str(path), ["{}\n"])
        existing = tmp_path / "open.jsonl"
        existing.write_text("")
        existing.chmod(0o644)
        append_lines(str(existing), ["{}\n"])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.parent.parent.stat().st_mode & 0o777 == 0o700
    assert existing.stat().st_mode & 0o777 == 0o600


def test_the_default_spool_path_is_a_per_user_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_spool_path() == str(tmp_path / "freeplay-integrations" / "spool.jsonl")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_spool_path().startswith(os.path.expanduser("~/.local/state/"))
    assert not default_spool_path().startswith(
        os.getcwd() + os.sep
    ) or os.getcwd() == os.path.expanduser("~")


def test_an_unwritable_spool_is_reported_once_at_start_up(
    server: LocalFreeplay, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    configure_recording_path = blocker / "spool.jsonl"
    from freeplay_integrations._recording import _scheduler

    with caplog.at_level(logging.ERROR, "freeplay_integrations"):
        recorder = _scheduler.Recorder(
            server.client(), _scheduler.RecorderConfig(spool_path=str(configure_recording_path))
        )
        _scheduler._start_up(recorder)
        _scheduler._start_up(recorder)
    lines = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(lines) == 1
    assert "FREEPLAY_SPOOL_PATH" in lines[0].getMessage()


# -- honest time limits -------------------------------------------------------------------


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    sock.close()


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A listener whose accept backlog is full: connects hang (SYNs are dropped)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    address = sock.getsockname()
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(address)
        fillers.append(filler)
    time.sleep(0.1)
    yield f"http://127.0.0.1:{address[1]}/api"
    for filler in fillers:
        filler.close()
    sock.close()


@pytest.fixture
def refused_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/api"


@pytest.mark.parametrize("where", ["refused_port", "silent_listener", "full_backlog"])
def test_an_attempt_limit_bounds_the_whole_attempt(
    where: str, request: pytest.FixtureRequest
) -> None:
    api_base = request.getfixturevalue(where)
    transport = SdkTransport(Freeplay(freeplay_api_key="k", api_base=api_base))
    op = SessionMetadata("p", "s", {"a": 1})
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        transport.send(op, 0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 0.3
    assert transport.classify(raised.value).transient


def test_sync_recording_never_blocks_past_sync_timeout(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    configure_recording(client, sync_timeout=0.6, attempt_timeout=10)
    server.faults.hang(30)
    with session_scope(client, project_id=server.project_id, recording="sync"):
        started = time.monotonic()
        record(all_messages=chat("hung"))
        elapsed = time.monotonic() - started
    server.faults.release()
    assert 0.5 <= elapsed < 0.6 + 0.3
    assert recorder_stats(client).spooled == 1
    assert spool.exists()


# -- routes and process hooks -------------------------------------------------------------


def test_via_a_route_object(server: LocalFreeplay, spool: Path) -> None:
    taken: list[Operation] = []

    class Route:
        def __init__(self, take: bool) -> None:
            self.take = take

        def submit(self, op: Operation) -> bool:
            taken.append(op)
            return self.take

    client = server.client()
    configure_recording(client, spool_path=spool, via=Route(True))
    with session_scope(client, project_id=server.project_id) as session:
        record(all_messages=chat("routed"))
    assert recorder_for(client).flush(5)
    assert len(taken) == 1 and recorder_stats(client).routed == 1
    assert server.completions(session.session_id) == []

    configure_recording(client, via=Route(False))  # declined: delivered in-process
    with session_scope(client, project_id=server.project_id) as session:
        record(all_messages=chat("declined"))
    assert recorder_for(client).flush(5)
    assert len(taken) == 2
    assert len(server.completions(session.session_id)) == 1

    from freeplay_integrations import ConfigurationError

    with pytest.raises(ConfigurationError):
        configure_recording(client, via=object())

    class CeleryLike:  # looks like a Celery app: the Celery route module is imported lazily
        conf: dict[str, Any] = {}

        def send_task(self, *args: Any) -> None:  # pragma: no cover - never called here
            pass

    try:
        import freeplay_integrations._celery_route  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match="Celery route"):
            configure_recording(client, via=CeleryLike())


def test_constructing_a_recorder_installs_no_sigterm_handler(server: LocalFreeplay) -> None:
    code = (
        "import signal\n"
        "from freeplay_integrations.local import LocalFreeplay\n"
        "from freeplay_integrations._recording import prepare_recorder, install_sigterm_handler\n"
        "with LocalFreeplay() as s:\n"
        "    prepare_recorder(s.client())\n"
        "    print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n"
        "    print(install_sigterm_handler())\n"
        "    print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n"
    )
    env = {**os.environ, "FREEPLAY_SPOOL_PATH": os.devnull + ".none"}
    env.pop("FREEPLAY_HANDLE_SIGTERM", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    ).stdout.split()
    assert out == ["True", "True", "False"]
    assert signal.getsignal(signal.SIGTERM) is not None


def test_stats_at_exit_are_debug_when_everything_arrived(
    server: LocalFreeplay, tmp_path: Path
) -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout,\n"
        "                    format='%(levelname)s %(message)s')\n"
        "from freeplay import Freeplay\n"
        "import freeplay_integrations as fi\n"
        f"client = Freeplay(freeplay_api_key={server.api_key!r}, api_base={server.api_base!r})\n"
        f"fi.configure_recording(client, spool_path={str(tmp_path / 's.jsonl')!r})\n"
        f"with fi.session_scope(client, project_id={server.project_id!r}):\n"
        "    fi.record(all_messages=[{'role': 'user', 'content': 'x'}])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    ).stdout
    (line,) = [x for x in out.splitlines() if "at exit" in x]
    assert line.startswith("DEBUG") and "sent=1" in line


def test_trace_ops_follow_their_trace(server: LocalFreeplay) -> None:
    trace = Trace("p", "s", {"trace_id": "t1", "input": "x"})
    assert trace.provides == "trace:t1"
    assert TraceFeedback("p", "s", "t1", {"a": 1}).follows == "trace:t1"
    assert TraceMetadata("p", "s", "t1", {"a": 1}).follows == "trace:t1"
    assert CompletionFeedback("p", "s", "c1", {"a": 1}).follows == "completion:c1"
    assert SessionMetadata("p", "s", {}).follows is None
    assert DeleteSession("p", "s").follows is None


def test_record_does_not_wait_for_the_recorder_lock(
    client: Freeplay, server: LocalFreeplay
) -> None:
    # A completion is appended to the intake without the lock: with the lock held by
    # another thread (a preempted sender, say), record() still returns, and what it
    # recorded is delivered once the lock is free.
    recorder = recorder_for(client)
    with session_scope(client, project_id=server.project_id) as session:
        record(all_messages=chat("first"))  # the first starts a sending thread
        assert recorder.flush(10)
        done = threading.Event()

        def records() -> None:
            with session_scope(client, project_id=server.project_id, session_id=session.session_id):
                for n in range(20):
                    record(all_messages=chat(str(n)))
            done.set()

        with recorder._cond:  # holds the recorder's lock
            worker = threading.Thread(target=records)
            worker.start()
            finished_while_held = done.wait(5)
        worker.join(5)
    assert finished_while_held
    assert recorder.flush(10)
    assert len(server.completions(session.session_id)) == 21
