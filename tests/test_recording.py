"""The recorder: background queue, retries, time limits, spool, flush, exit and fork.

Real SDK, real local Freeplay server, real faults (503s, hangs, closed connections).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from freeplay import Freeplay
from freeplay.resources.recordings import RecordPayload
from freeplay.resources.sessions import SessionInfo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from freeplay_integrations import (
    ConfigurationError,
    RecorderStats,
    _recording,
    configure_recording,
    current_session,
    flush,
    record,
    recorder_stats,
    session_scope,
)
from freeplay_integrations._recording import (
    COMPLETION,
    COMPLETION_FEEDBACK,
    DELETE_SESSION,
    LOG_QUEUE_FULL,
    LOG_REJECTED,
    LOG_SPOOLED,
    SESSION_METADATA,
    TRACE,
    TRACE_FEEDBACK,
    TRACE_METADATA,
    Operation,
    read_spool,
    recorder_for,
)
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.local import LocalFreeplay

ROOT = Path(__file__).resolve().parent.parent


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": f"re: {text}"}]


@pytest.fixture
def server(freeplay_local: LocalFreeplay) -> LocalFreeplay:
    return freeplay_local


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool.jsonl"


@pytest.fixture
def client(server: LocalFreeplay, spool: Path) -> Iterator[Freeplay]:
    client = server.client()
    configure_recording(
        client,
        spool_path=spool,
        backoff_base=0.01,
        backoff_max=0.05,
        attempt_timeout=2.0,
        idle_timeout=1.0,
        workers=2,
    )
    yield client
    server.faults.clear()
    recorder_for(client).flush(5)


def scope(client: Freeplay, server: LocalFreeplay, **options: Any) -> session_scope:
    return session_scope(client, project_id=server.project_id, **options)


def spooled(spool: Path) -> list[dict[str, Any]]:
    if not spool.exists():
        return []
    return [json.loads(line) for line in spool.read_text().splitlines()]


def statuses(server: LocalFreeplay) -> list[int]:
    return [r.status for r in server.requests_received()]


# -- background delivery ----------------------------------------------------------------


def test_background_record_returns_before_any_answer(
    client: Freeplay, server: LocalFreeplay
) -> None:
    server.faults.hang(10)
    with scope(client, server):
        ids = [record(all_messages=chat(str(n))).completion_id for n in range(3)]
    assert server.request_count == 0  # nothing answered yet: record() did not wait
    assert recorder_stats(client).pending == 3
    server.faults.release()
    assert recorder_for(client).flush(5)
    assert [c["id"] for c in server.completions()] == ids


def test_one_sessions_recordings_arrive_in_order_despite_retries(
    client: Freeplay, server: LocalFreeplay
) -> None:
    configure_recording(client, queue_size=1000)
    with scope(client, server) as first, scope(client, server) as second:
        pass
    expected: dict[str, list[str]] = {first.session_id: [], second.session_id: []}
    for n in range(30):
        if n == 10:
            server.faults.fail_next(3)
        session = first if n % 3 else second
        with session_scope(client, session.session_id, project_id=server.project_id):
            expected[session.session_id].append(record(all_messages=chat(str(n))).completion_id)
    assert recorder_for(client).flush(10)
    for session_id, ids in expected.items():
        assert [c["id"] for c in server.completions(session_id)] == ids
    stats = recorder_stats(client)
    assert (stats.sent, stats.retried) == (30, 3)


# -- retries and failure classification ------------------------------------------------


def operation(kind: str, server: LocalFreeplay, session_id: str) -> Operation:
    """One operation of each kind, as the helpers build them.

    What an update is for (its completion, trace or session) is recorded first, as the
    API answers 404 for updates of unknown objects.
    """
    project = server.project_id
    trace_id = str(uuid.uuid4())
    completion_id = str(uuid.uuid4())
    if kind in (COMPLETION_FEEDBACK, SESSION_METADATA):
        server.client().recordings.create(
            RecordPayload(
                project_id=project,
                all_messages=chat("target"),
                session_info=SessionInfo(session_id, None),
                completion_id=uuid.UUID(completion_id),
            )
        )
    elif kind in (TRACE_FEEDBACK, TRACE_METADATA):
        server.client().call_support.record_trace(project, session_id, trace_id, "in", "out")
    data: Any
    if kind == COMPLETION:
        data = RecordPayload(
            project_id=project,
            all_messages=chat(kind),
            session_info=SessionInfo(session_id, None),
            completion_id=uuid.uuid4(),
        )
    elif kind == TRACE:
        data = {"trace_id": trace_id, "input": "in", "output": "out"}
    elif kind == COMPLETION_FEEDBACK:
        data = {"completion_id": completion_id, "feedback": {"rating": 1}}
    elif kind == TRACE_FEEDBACK:
        data = {"trace_id": trace_id, "feedback": {"ok": True}}
    elif kind in (SESSION_METADATA, TRACE_METADATA):
        data = {"trace_id": trace_id, "metadata": {"k": "v"}}
    else:
        data = {}
    return Operation(kind, project, session_id, data)


KINDS = [
    COMPLETION,
    TRACE,
    COMPLETION_FEEDBACK,
    TRACE_FEEDBACK,
    SESSION_METADATA,
    TRACE_METADATA,
    DELETE_SESSION,
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["503", "429", "500", "reset"])
def test_transient_failures_are_retried_for_every_kind(
    client: Freeplay, server: LocalFreeplay, kind: str, fault: str
) -> None:
    op = operation(kind, server, str(uuid.uuid4()))
    before = len(statuses(server))
    if fault == "reset":
        server.faults.reset_next(2)
    else:
        server.faults.fail_next(2, status=int(fault))
    recorder_for(client).submit(op)
    assert recorder_for(client).flush(5)
    assert op.state == "sent"
    assert statuses(server)[-1] in (200, 201)
    assert len(statuses(server)) - before == 3
    assert recorder_stats(client).retried == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_4xx_is_not_retried_and_is_logged_once(
    client: Freeplay,
    server: LocalFreeplay,
    spool: Path,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    op = operation(kind, server, str(uuid.uuid4()))
    before = len(statuses(server))
    server.faults.fail_next(1, status=400)
    with caplog.at_level(logging.ERROR, logger="freeplay_integrations.recording"):
        recorder_for(client).submit(op)
        assert recorder_for(client).flush(5)
    assert statuses(server)[before:] == [400]
    assert op.state == "failed"
    stats = recorder_stats(client)
    assert (stats.failed, stats.retried, stats.spooled) == (1, 0, 0)
    rejected = [r for r in caplog.records if r.msg == LOG_REJECTED]
    assert len(rejected) == 1
    assert "400" in rejected[0].getMessage()
    assert not spool.exists()  # a replay would be refused the same way


def test_a_wrong_api_key_is_spooled_for_a_replay(
    server: LocalFreeplay, spool: Path, tmp_path: Path
) -> None:
    client = Freeplay(freeplay_api_key="wrong-key", api_base=server.api_base)
    configure_recording(client, spool_path=spool, backoff_base=0.01)
    with scope(client, server):
        response = record(all_messages=chat("x"))
    assert recorder_for(client).flush(5)
    assert statuses(server) == [401]  # not retried
    (line,) = spooled(spool)
    assert line["data"]["completion_id"] == response.completion_id
    assert "401" in line["reason"]


def test_exhausted_retries_go_to_the_spool(
    client: Freeplay, server: LocalFreeplay, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configure_recording(client, max_attempts=3)
    server.faults.fail_for(30)
    with caplog.at_level(logging.WARNING, logger="freeplay_integrations.recording"):
        with scope(client, server) as session:
            response = record(all_messages=chat("x"))
        assert recorder_for(client).flush(5)  # handled: spooled by the worker
    assert statuses(server) == [503, 503, 503]
    (line,) = spooled(spool)
    assert (line["kind"], line["session_id"]) == (COMPLETION, session.session_id)
    assert line["data"]["completion_id"] == response.completion_id
    assert line["attempts"] == 3
    assert "503" in line["reason"]
    assert any(r.msg == LOG_SPOOLED for r in caplog.records)
    stats = recorder_stats(client)
    assert (stats.spooled, stats.retried, stats.sent) == (1, 2, 0)


# -- time limits ------------------------------------------------------------------------


def test_each_attempt_has_a_time_limit_but_only_for_the_recorder(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    configure_recording(client, attempt_timeout=0.2, max_attempts=2)
    server.faults.hang(1.5)
    started = time.monotonic()
    with scope(client, server):
        record(all_messages=chat("limited"))
    assert recorder_for(client).flush(5)
    assert time.monotonic() - started < 1.2  # two 0.2 s attempts, not the 1.5 s hang
    assert len(spooled(spool)) == 1
    # The app's own SDK calls keep the SDK's behaviour: no time limit imposed on them.
    payload = RecordPayload(project_id=server.project_id, all_messages=chat("own call"))
    server.faults.hang(0.6)
    started = time.monotonic()
    client.recordings.create(payload)
    assert time.monotonic() - started >= 0.5


# -- the queue --------------------------------------------------------------------------


def test_a_full_queue_spools_at_once_and_never_blocks(
    client: Freeplay, server: LocalFreeplay, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configure_recording(client, queue_size=4, workers=1)
    recorder = recorder_for(client)
    server.faults.hang(10)
    logs = caplog.at_level(logging.WARNING, logger="freeplay_integrations.recording")
    with logs, scope(client, server):
        ids = [record(all_messages=chat(str(n))).completion_id for n in range(12)]
    stats = recorder.stats()
    assert stats.queued + stats.overflowed == 12
    assert stats.queued <= 5  # four waiting, at most one in flight
    assert stats.pending == stats.queued
    assert [line["data"]["completion_id"] for line in spooled(spool)] == ids[stats.queued :]
    assert any(r.msg == LOG_QUEUE_FULL for r in caplog.records)
    server.faults.release()
    assert recorder.flush(5)
    assert [c["id"] for c in server.completions()] == ids[: stats.queued]


def test_flush_timeout_spools_the_rest_and_a_replay_delivers_each_once(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    configure_recording(client, attempt_timeout=5.0)
    server.faults.hang(30)
    with scope(client, server):
        ids = [record(all_messages=chat(str(n))).completion_id for n in range(6)]
    started = time.monotonic()
    assert flush(timeout=0.5) is False
    assert time.monotonic() - started < 1.5
    assert sorted(line["data"]["completion_id"] for line in spooled(spool)) == sorted(ids)
    stats = recorder_stats(client)
    assert (stats.spooled, stats.pending <= 2) == (6, True)
    server.faults.release()  # the requests held in flight now arrive too
    result = _recording.replay_spool(spool, api_key=server.api_key)
    assert (result.read, result.sent, result.kept) == (6, 6, 0)
    server.wait_for(lambda: len(server.completions()) == 6)
    assert sorted(c["id"] for c in server.completions()) == sorted(ids)
    assert not spool.exists() or spooled(spool) == []


# -- sync mode --------------------------------------------------------------------------


def test_sync_mode_retries_inline(client: Freeplay, server: LocalFreeplay) -> None:
    server.faults.fail_next(2)
    with scope(client, server, recording="sync"):
        response = record(all_messages=chat("x"))
        assert server.completion(response.completion_id) is not None
    assert statuses(server) == [503, 503, 201]


def test_sync_mode_never_raises_and_spools(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    configure_recording(client, max_attempts=2)
    server.faults.fail_for(30)
    with scope(client, server, recording="sync"):
        response = record(all_messages=chat("x"))
    assert [line["data"]["completion_id"] for line in spooled(spool)] == [response.completion_id]
    server.faults.clear()
    server.faults.fail_next(1, status=422)
    with scope(client, server, recording="sync"):
        record(all_messages=chat("refused"))
    assert recorder_stats(client).failed == 1


def test_sync_mode_stops_retrying_at_sync_timeout(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    configure_recording(client, max_attempts=100, sync_timeout=0.3, backoff_base=0.05)
    server.faults.fail_for(30)
    started = time.monotonic()
    with scope(client, server, recording="sync"):
        record(all_messages=chat("x"))
    assert time.monotonic() - started < 1.0
    assert len(spooled(spool)) == 1


# -- counters and configuration ---------------------------------------------------------


def test_counters_add_up(client: Freeplay, server: LocalFreeplay) -> None:
    server.faults.fail_next(1)
    with scope(client, server):
        for n in range(5):
            record(all_messages=chat(str(n)))
    assert recorder_for(client).flush(5)
    stats = recorder_stats(client)
    assert stats == RecorderStats(queued=5, sent=5, retried=1)
    assert recorder_stats().sent >= 5  # the process-wide sum includes this client


def test_configuration_errors_say_what_to_fix(client: Freeplay) -> None:
    with pytest.raises(ConfigurationError, match="attempt_timeout"):
        configure_recording(client, attempt_timeout=0)
    with pytest.raises(ConfigurationError, match="queue_size"):
        configure_recording(queue_size=0)
    recorder_for(client).submit(
        Operation(DELETE_SESSION, "p", str(uuid.uuid4()), {})
    )  # starts the workers
    with pytest.raises(ConfigurationError, match="before the first recording"):
        configure_recording(client, workers=8)


def test_spool_path_and_defaults(
    server: LocalFreeplay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_recording, "_defaults", {})
    monkeypatch.setenv("FREEPLAY_SPOOL_PATH", str(tmp_path / "from-env.jsonl"))
    assert recorder_for(server.client()).config.spool_path == str(tmp_path / "from-env.jsonl")
    monkeypatch.delenv("FREEPLAY_SPOOL_PATH")
    monkeypatch.chdir(tmp_path)
    default = recorder_for(server.client()).config
    assert default.spool_path == str(tmp_path / "freeplay-spool.jsonl")
    configure_recording(backoff_max=7.0)
    assert recorder_for(server.client()).config.backoff_max == 7.0


# -- shutdown: ASGI lifespan, process exit ----------------------------------------------


def test_asgi_lifespan_shutdown_flushes(client: Freeplay, server: LocalFreeplay) -> None:
    def view(request: Request) -> Response:
        return JSONResponse({"id": record(all_messages=chat("x")).completion_id})

    app = FreeplaySessionMiddleware(
        Starlette(routes=[Route("/", view)]), client=client, project_id=server.project_id
    )
    server.faults.hang(0.5)
    with TestClient(app) as http:
        ids = [http.get("/").json()["id"] for _ in range(3)]
        assert server.completions() == []
    # Lifespan shutdown waited for the queue: everything is there, no waiting needed.
    assert [c["id"] for c in server.completions()] == ids
    assert current_session() is None


EXIT_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from freeplay import Freeplay
import freeplay_integrations as fi

client = Freeplay(freeplay_api_key={key!r}, api_base={base!r})
fi.configure_recording(client, spool_path={spool!r}, shutdown_timeout={shutdown})
with fi.session_scope(client, project_id={project!r}) as session:
    for n in range(5):
        fi.record(all_messages=[{{"role": "user", "content": str(n)}}])
print(session.session_id)
"""


def run_script(
    server: LocalFreeplay, spool: Path, shutdown: float
) -> subprocess.CompletedProcess[str]:
    script = EXIT_SCRIPT.format(
        key=server.api_key,
        base=server.api_base,
        spool=str(spool),
        shutdown=shutdown,
        project=server.project_id,
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_process_exit_delivers_what_is_queued(server: LocalFreeplay, spool: Path) -> None:
    server.faults.hang(1.0)  # nothing is delivered before the script's last line
    done = run_script(server, spool, shutdown=10)
    assert done.returncode == 0, done.stderr
    session_id = done.stdout.strip()
    assert len(server.completions(session_id)) == 5
    assert "at exit: queued=5 sent=5" in done.stderr
    assert not spool.exists()


def test_process_exit_spools_what_it_cannot_deliver(server: LocalFreeplay, spool: Path) -> None:
    server.faults.hang(60)
    started = time.monotonic()
    done = run_script(server, spool, shutdown=0.5)
    assert time.monotonic() - started < 10
    assert done.returncode == 0, done.stderr
    assert len(spooled(spool)) == 5
    assert "spooled=5" in done.stderr
    server.faults.release()


# -- fork ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads, 3.12+
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_has_a_working_recorder_of_its_own(
    client: Freeplay, server: LocalFreeplay
) -> None:
    server.faults.hang(1.0)
    with scope(client, server) as parent_session:
        parent_ids = [record(all_messages=chat(str(n))).completion_id for n in range(3)]
    assert recorder_stats(client).pending == 3
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            os.close(read_end)
            fresh = recorder_stats(client) == RecorderStats()
            with scope(client, server) as child_session:
                record(all_messages=chat("from the child"))
            delivered = recorder_for(client).flush(10)
            report = {"fresh": fresh, "delivered": delivered, "session": child_session.session_id}
            report["sent"] = recorder_stats(client).sent
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = json.loads(os.read(read_end, 4096))
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"fresh": True, "delivered": True, "session": report["session"], "sent": 1}
    assert recorder_for(client).flush(10)
    assert [c["id"] for c in server.completions(parent_session.session_id)] == parent_ids
    assert len(server.completions(report["session"])) == 1
    assert server.duplicates == 0  # the child did not send the parent's queue again


def test_spool_lines_are_self_contained(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    configure_recording(client, max_attempts=1)
    server.faults.fail_for(30)
    with scope(client, server, custom_metadata={"user": "u"}) as session:
        record(all_messages=chat("x"), inputs={"q": 1}, eval_results={"ok": True})
    assert recorder_for(client).flush(5)
    ((operation_, api_base),) = read_spool(str(spool))[0]
    assert api_base == server.api_base
    assert operation_.session_id == session.session_id
    assert operation_.data.session_info.custom_metadata == {"user": "u"}
    assert operation_.data.inputs == {"q": 1}
    assert operation_.data.eval_results == {"ok": True}
    assert oct(spool.stat().st_mode & 0o777) == oct(0o600)  # conversation data: owner only


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_idle_workers_exit_and_come_back(client: Freeplay, server: LocalFreeplay) -> None:
    configure_recording(client, idle_timeout=0.1)
    with scope(client, server):
        record(all_messages=chat("1"))
    assert recorder_for(client).flush(5)

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("freeplay-recorder")]

    lanes = recorder_for(client)._lanes
    threads = [lane.thread for lane in lanes if lane.thread is not None]
    assert threads and all(t in workers() for t in threads)
    wait_until(lambda: all(lane.thread is None for lane in lanes))
    assert not any(t.is_alive() for t in threads)
    with scope(client, server):
        record(all_messages=chat("2"))
    assert recorder_for(client).flush(5)
    assert len(server.completions()) == 2
