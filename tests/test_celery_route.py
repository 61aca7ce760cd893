"""The Celery route (`configure_recording(via=app)`), with real parts only.

`redis-server` on a free loopback port, a real `celery worker` process with the prefork
pool (`bench/celery_apps.py`), the local Freeplay in this process (the worker reaches it
over HTTP), and, for the SIGKILL test, a waitress web process.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

from bench.celery_apps import RedisServer, Web, Worker, wait_until
from freeplay_integrations import (
    _celery_route,
    configure_recording,
    record,
    record_feedback,
    session_scope,
    trace_scope,
    update_session_metadata,
)
from freeplay_integrations._celery_route import (
    DELIVERY_TASK,
    LOG_BROKER_DOWN,
    CeleryRoute,
    short_ref,
)
from freeplay_integrations._errors import ConfigurationError
from freeplay_integrations._recording import recorder_for
from freeplay_integrations.celery import register_delivery_task
from freeplay_integrations.local import DEFAULT_PROJECT_ID, LocalFreeplay

if shutil.which("redis-server") is None:  # pragma: no cover - .ci/run installs it
    pytest.fail("redis-server is missing: apt-get install redis-server", pytrace=False)

PROJECT = DEFAULT_PROJECT_ID
MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("celery-route")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def local() -> Iterator[LocalFreeplay]:
    with LocalFreeplay() as server:
        yield server


@pytest.fixture
def freeplay(local: LocalFreeplay) -> LocalFreeplay:
    local.reset()
    return local


@pytest.fixture(scope="module")
def worker(local: LocalFreeplay, redis_server: RedisServer, workdir: Path) -> Iterator[Worker]:
    with Worker(local.env(), redis_server.url, workdir, concurrency=2) as running:
        yield running


@pytest.fixture
def app(redis_server: RedisServer) -> Celery:
    return Celery("web", broker=redis_server.url)


def _routed_client(freeplay: LocalFreeplay, via: Any) -> Any:
    client = freeplay.client()
    configure_recording(client, via=via)
    return client


def _record_some(client: Any, n: int) -> tuple[str, list[str]]:
    with session_scope(client, project_id=PROJECT) as session:
        ids = [str(record(all_messages=MESSAGES, inputs={"i": i}).completion_id) for i in range(n)]
    return session.session_id, ids


def _stored_ids(freeplay: LocalFreeplay) -> list[str]:
    return [c["id"] for c in freeplay.completions()]


# -- through a real worker ---------------------------------------------------------------


def test_every_kind_of_operation_is_delivered_by_the_worker(
    freeplay: LocalFreeplay, worker: Worker, app: Celery
) -> None:
    client = _routed_client(freeplay, app)
    with session_scope(client, project_id=PROJECT) as session:
        with trace_scope("turn") as trace:
            completion = record(all_messages=MESSAGES)
        record_feedback({"thumbs": "up"}, completion_id=completion.completion_id)
        update_session_metadata({"plan": "pro"})
    freeplay.wait_for(
        lambda: freeplay.completions(session.session_id)
        and freeplay.traces(session.session_id)
        and freeplay.feedback(str(completion.completion_id)).get("thumbs") == "up"
        and freeplay.session(session.session_id)["custom_metadata"].get("plan") == "pro",
        timeout=30,
    )
    (stored,) = freeplay.completions(session.session_id)
    assert stored["id"] == str(completion.completion_id)
    assert stored["parent_id"] == str(trace.trace_id)
    # Nothing went through the test process's own sending threads.
    assert recorder_for(client).stats().queued == 0
    assert "'sent'" in worker.log()


def test_feedback_that_overtakes_its_completion_waits_for_it(
    freeplay: LocalFreeplay, worker: Worker, app: Celery
) -> None:
    """Routed operations are not ordered across worker processes: feedback can reach
    Freeplay before its completion, which answers 404 then. It is retried, not dropped."""
    client = _routed_client(freeplay, app)
    completion_id = uuid.uuid4()
    with session_scope(client, project_id=PROJECT):
        record_feedback({"thumbs": "up"}, completion_id=completion_id)
        wait_until(lambda: freeplay.faults.arrivals(), 20, "the feedback tried first")
        record(all_messages=MESSAGES, completion_id=completion_id)

    assert freeplay.wait_for(
        lambda: freeplay.feedback(str(completion_id)).get("thumbs") == "up", timeout=30
    ), worker.log()
    assert "'rejected'" not in worker.log()


def test_messages_are_json_tasks_for_the_delivery_task(
    freeplay: LocalFreeplay, app: Celery, redis_server: RedisServer
) -> None:
    route = CeleryRoute(app, queue="inspected-only")  # no worker consumes this queue
    client = _routed_client(freeplay, route)
    session_id, (completion_id,) = _record_some(client, 1)
    (raw,) = redis_server.client().lrange("inspected-only", 0, -1)
    message = json.loads(raw)
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == DELIVERY_TASK
    assert session_id not in json.dumps(message["headers"])  # argsrepr names the kind only
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert kwargs == {}
    (op,) = args
    assert op["kind"] == "completion"
    assert op["session_id"] == session_id
    assert op["data"]["completion_id"] == completion_id
    assert route.published == 1


@dataclasses.dataclass
class _ProviderPart:
    """A provider's message part that is not a dict (the SDK converts dataclasses)."""

    type: str
    text: str


def test_a_message_carries_what_the_sdk_would_send_for_every_message_shape(
    freeplay: LocalFreeplay, app: Celery, redis_server: RedisServer
) -> None:
    """Plain messages travel as they are; the rest as the SDK converts them."""
    route = CeleryRoute(app, queue="shapes-only")  # no worker consumes this queue
    messages: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": "héllo"}], "n": [1, 2.5, None]},
        {"role": "user", "content": [{"kind": "downloaded_file", "slot": "doc"}]},
        {"role": "user", "content": [_ProviderPart("text", "from a provider type")]},
        {"role": "assistant", "content": ("a", "tuple")},
    ]
    with session_scope(_routed_client(freeplay, route), project_id=PROJECT):
        record(all_messages=messages)
    (raw,) = redis_server.client().lrange("shapes-only", 0, -1)
    (op,), _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    sent = op["data"]["all_messages"]
    assert sent[0] == messages[0]
    assert sent[1]["content"] == [{"kind": "uploaded_file", "slot": "doc"}]  # the SDK's rename
    assert sent[2]["content"] == [{"type": "text", "text": "from a provider type"}]
    assert sent[3]["content"] == ["a", "tuple"]
    assert messages[1]["content"][0]["kind"] == "downloaded_file"  # the caller's, unchanged
    redis_server.client().delete("shapes-only")


def test_each_message_carries_its_own_version_4_uuid(
    freeplay: LocalFreeplay, app: Celery, redis_server: RedisServer
) -> None:
    route = CeleryRoute(app, queue="ids-only")  # no worker consumes this queue
    _record_some(_routed_client(freeplay, route), 200)
    messages = [json.loads(raw) for raw in redis_server.client().lrange("ids-only", 0, -1)]
    ids = {m["headers"]["id"] for m in messages}
    assert len(ids) == 200
    for m in messages:
        task_id = uuid.UUID(m["headers"]["id"])
        assert (task_id.version, task_id.variant) == (4, uuid.RFC_4122)
        assert str(task_id) == m["headers"]["id"]
        assert m["headers"]["root_id"] == m["properties"]["correlation_id"] == str(task_id)
        assert m["properties"]["delivery_tag"] == str(task_id)
    redis_server.client().delete("ids-only")


def test_a_pickled_message_is_refused_by_the_worker(
    freeplay: LocalFreeplay, worker: Worker, app: Celery
) -> None:
    client = freeplay.client()
    with session_scope(client, project_id=PROJECT) as session:
        op = {"kind": "delete_session", "project_id": PROJECT, "session_id": session.session_id}
        op["data"] = {}
    app.send_task(DELIVERY_TASK, args=(op,), serializer="pickle")
    wait_until(lambda: "untrusted content of type pickle" in worker.log(), 30, "refusal logged")
    assert freeplay.session(session.session_id) is None  # the delete never ran


def test_register_delivery_task_refuses_an_app_that_accepts_pickle(freeplay: LocalFreeplay) -> None:
    app = Celery("unsafe")
    app.conf.accept_content = ["json", "pickle"]
    with pytest.raises(ConfigurationError, match="accept_content"):
        register_delivery_task(app, client=freeplay.client())
    app.conf.accept_content = ["json"]
    task = register_delivery_task(app, client=freeplay.client())
    assert task.name == DELIVERY_TASK
    assert task.acks_late and task.reject_on_worker_lost
    assert task.serializer == "json"


def test_transient_failures_are_retried_by_celery(
    freeplay: LocalFreeplay, worker: Worker, app: Celery
) -> None:
    client = _routed_client(freeplay, app)
    freeplay.faults.fail_next(2, status=503)
    _, ids = _record_some(client, 1)
    freeplay.wait_for(lambda: _stored_ids(freeplay) == ids, timeout=30)
    assert "Retry in" in worker.log()


def test_a_final_4xx_is_dropped_with_one_log_line(
    freeplay: LocalFreeplay, worker: Worker, app: Celery
) -> None:
    client = _routed_client(freeplay, app)
    freeplay.faults.fail_next(1, status=422)
    session_id, _ = _record_some(client, 2)
    freeplay.wait_for(lambda: len(freeplay.requests_received()) >= 2, timeout=30)
    wait_until(lambda: "dropped:" in worker.log(), 10, "drop logged")
    time.sleep(0.5)
    lines = [line for line in worker.log().splitlines() if short_ref(session_id) in line]
    assert sum("Freeplay rejected a completion" in line for line in lines) == 1
    assert session_id not in worker.log()
    assert len(_stored_ids(freeplay)) == 1


def test_a_pool_process_killed_mid_delivery_loses_nothing(
    freeplay: LocalFreeplay, worker: Worker, app: Celery
) -> None:
    client = _routed_client(freeplay, app)
    freeplay.faults.hang(3.0)
    _, ids = _record_some(client, 2)
    wait_until(lambda: worker.log().count("received") >= 2, 20, "tasks received")
    time.sleep(0.3)  # both pool processes are now inside the SDK's HTTP call
    for pid in worker.pool():
        os.kill(pid, signal.SIGKILL)
    freeplay.wait_for(lambda: sorted(_stored_ids(freeplay)) == sorted(ids), timeout=40)
    assert "WorkerLostError" in worker.log()
    time.sleep(1.0)
    assert len(_stored_ids(freeplay)) == len(ids)  # stored once each, however often sent


# -- the request path: the route's own connections ----------------------------------------


class _Capture:
    """A `via=` route that keeps the operations `record()` makes."""

    def __init__(self) -> None:
        self.ops: list[Any] = []

    def submit(self, op: Any) -> bool:
        self.ops.append(op)
        return True


def _one_operation(freeplay: LocalFreeplay) -> Any:
    capture = _Capture()
    _record_some(_routed_client(freeplay, capture), 1)
    (op,) = capture.ops
    return op


def test_a_redis_socket_broker_url_publishes_over_the_unix_socket(
    freeplay: LocalFreeplay, worker: Worker, redis_server: RedisServer
) -> None:
    route = CeleryRoute(Celery("web-unix", broker=redis_server.socket_url))
    client = _routed_client(freeplay, route)
    _, ids = _record_some(client, 3)
    unix_clients = [c for c in redis_server.client().client_list() if "U" in c["flags"]]
    assert [c["addr"].rsplit(":", 1)[0] for c in unix_clients] == [redis_server.socket_path]
    assert unix_clients[0]["cmd"] == "lpush"
    # The worker reads the same Redis over TCP and delivers them.
    freeplay.wait_for(lambda: sorted(_stored_ids(freeplay)) == sorted(ids), timeout=30)
    assert route.flush(time.monotonic() + 10)
    assert route.published == 3 and route.refused == 0


def test_a_connection_closed_while_idle_is_replaced_without_falling_back(
    freeplay: LocalFreeplay,
) -> None:
    op = _one_operation(freeplay)
    with RedisServer() as server:
        inspect = server.client()
        route = CeleryRoute(Celery("web", broker=server.url))
        assert route.submit(op)
        assert inspect.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") == 1
        assert route.submit(op)  # the killed connection is found closed, and replaced at once
        assert (route.published, route.refused) == (2, 0)
        assert inspect.llen("celery") == 2
        server.stop()
        assert not route.submit(op)  # a broker that is gone is still reported as gone
        assert route.refused == 1


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_an_error_reply_from_redis_falls_back_to_in_process_delivery(
    freeplay: LocalFreeplay, redis_server: RedisServer, family: str
) -> None:
    inspect = redis_server.client()
    inspect.set("not-a-list", "x")  # LPUSH onto it: -WRONGTYPE
    broker = redis_server.url if family == "tcp" else redis_server.socket_url
    route = CeleryRoute(Celery("web", broker=broker), queue="not-a-list")
    client = _routed_client(freeplay, route)
    _, ids = _record_some(client, 2)
    assert route.flush(time.monotonic() + 10)
    freeplay.wait_for(lambda: sorted(_stored_ids(freeplay)) == sorted(ids), timeout=20)
    if family == "tcp":  # refused on the spot
        assert (route.published, route.refused, route.handed_back) == (0, 2, 0)
    else:  # written, refused by Redis afterwards, handed back; the broker then left alone
        assert route.published == 0 and route.handed_back >= 1
        assert route.handed_back + route.refused == 2
    assert inspect.get("not-a-list") == b"x"
    inspect.delete("not-a-list")


# -- pipelined publishes (a unix socket) --------------------------------------------------


def test_over_a_unix_socket_publishes_are_confirmed_in_the_background(
    freeplay: LocalFreeplay, redis_server: RedisServer
) -> None:
    route = CeleryRoute(Celery("web", broker=redis_server.socket_url), queue="pipelined")
    client = _routed_client(freeplay, route)
    _record_some(client, 200)
    assert route.flush(time.monotonic() + 10)  # every message confirmed
    assert (route.published, route.refused, route.handed_back) == (200, 0, 0)
    assert redis_server.client().llen("pipelined") == 200
    assert freeplay.completions() == []  # none went in-process
    redis_server.client().delete("pipelined")


@pytest.mark.parametrize("how", ["connection killed", "no reply within publish_timeout"])
def test_messages_written_but_not_confirmed_are_delivered_in_process(
    freeplay: LocalFreeplay, redis_server: RedisServer, how: str
) -> None:
    inspect = redis_server.client()
    queue = f"unconfirmed-{how.split()[0]}"
    timeout = 60.0 if how == "connection killed" else 0.3
    route = CeleryRoute(
        Celery("web", broker=redis_server.socket_url), queue=queue, publish_timeout=timeout
    )
    client = _routed_client(freeplay, route)
    _record_some(client, 1)  # the connection is open and idle
    assert route.flush(time.monotonic() + 10)
    inspect.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")  # LPUSH waits; others run
    try:
        with session_scope(client, project_id=PROJECT):
            ids = [str(record(all_messages=MESSAGES).completion_id) for _ in range(5)]
        assert route.refused == 0  # all five written: record() did not wait
        if how == "connection killed":  # the route's connection: the newest on the socket
            ours = max(int(c["id"]) for c in inspect.client_list() if "U" in c["flags"])
            assert inspect.execute_command("CLIENT", "KILL", "ID", ours) == 1
        freeplay.wait_for(lambda: set(ids) <= set(_stored_ids(freeplay)), timeout=20)
    finally:
        inspect.execute_command("CLIENT", "UNPAUSE")
    assert route.handed_back == 5 and route.published == 1
    inspect.delete(queue)


def test_past_its_unconfirmed_budget_a_connection_sends_to_the_in_process_route(
    freeplay: LocalFreeplay, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_celery_route, "MAX_UNCONFIRMED", 3)
    inspect = redis_server.client()
    route = CeleryRoute(
        Celery("web", broker=redis_server.socket_url), queue="budget", publish_timeout=60
    )
    client = _routed_client(freeplay, route)
    inspect.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        with session_scope(client, project_id=PROJECT):
            ids = [str(record(all_messages=MESSAGES).completion_id) for _ in range(5)]
        assert route.refused == 2  # the fourth and fifth: in-process, at once
        freeplay.wait_for(lambda: len(_stored_ids(freeplay)) == 2, timeout=20)
        assert set(_stored_ids(freeplay)) == set(ids[3:])
    finally:
        inspect.execute_command("CLIENT", "UNPAUSE")
    assert route.flush(time.monotonic() + 10) and route.published == 3
    assert inspect.llen("budget") == 3
    inspect.delete("budget")


def test_a_flush_hands_back_what_redis_has_not_confirmed_by_its_deadline(
    freeplay: LocalFreeplay, redis_server: RedisServer
) -> None:
    inspect = redis_server.client()
    route = CeleryRoute(
        Celery("web", broker=redis_server.socket_url), queue="flushed", publish_timeout=60
    )
    client = _routed_client(freeplay, route)
    inspect.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        _record_some(client, 4)
        started = time.monotonic()
        assert recorder_for(client).flush(timeout=0.5) is False
        assert time.monotonic() - started < 2.0
        assert route.handed_back == 4  # in-process now: delivered there, or spooled
        stats = recorder_for(client).stats()
        assert stats.queued + stats.spooled >= 4
    finally:
        inspect.execute_command("CLIENT", "UNPAUSE")
    inspect.delete("flushed")


def test_a_forked_child_confirms_over_a_unix_socket_of_its_own(
    freeplay: LocalFreeplay, redis_server: RedisServer
) -> None:
    op = _one_operation(freeplay)
    inspect = redis_server.client()
    route = CeleryRoute(Celery("web", broker=redis_server.socket_url), queue="forked-unix")
    assert route.submit(op) and route.flush(time.monotonic() + 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = route.submit(op) and route.flush(time.monotonic() + 10) and route.published == 1
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert route.submit(op) and route.flush(time.monotonic() + 10)
    assert route.published == 2  # the child's confirmation was counted in the child
    assert inspect.llen("forked-unix") == 3
    inspect.delete("forked-unix")


@pytest.mark.parametrize("reply_spin", [0, 0.001])
def test_a_publish_over_tcp_waits_for_the_reply_whether_it_spins_or_not(
    freeplay: LocalFreeplay, redis_server: RedisServer, reply_spin: float
) -> None:
    queue = f"spin-{reply_spin}"
    route = CeleryRoute(Celery("web", broker=redis_server.url), queue=queue, reply_spin=reply_spin)
    op = _one_operation(freeplay)
    for n in range(1, 51):
        assert route.submit(op)
        assert redis_server.client().llen(queue) == n  # in Redis once submit returned
    assert (route.published, route.refused) == (50, 0)
    redis_server.client().delete(queue)


@pytest.mark.parametrize("bad", [-1e-6, 0.002, True, "50us"])
def test_reply_spin_is_checked(app: Celery, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="reply_spin"):
        CeleryRoute(app, reply_spin=bad)


def test_a_forked_child_publishes_over_a_connection_of_its_own(
    freeplay: LocalFreeplay, redis_server: RedisServer
) -> None:
    op = _one_operation(freeplay)
    inspect = redis_server.client()
    route = CeleryRoute(Celery("web", broker=redis_server.url), queue="forked-only")
    assert route.submit(op)  # the parent now keeps an idle connection
    before = inspect.info("stats")["total_connections_received"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if route.submit(op) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert inspect.info("stats")["total_connections_received"] == before + 1  # the child's own
    assert route.submit(op)  # the parent's connection was left alone
    assert inspect.llen("forked-only") == 3
    inspect.delete("forked-only")


# -- the request path when the broker is unreachable --------------------------------------


def test_an_unreachable_broker_falls_back_to_in_process_delivery(
    freeplay: LocalFreeplay, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    route = CeleryRoute(Celery("down", broker=f"redis://127.0.0.1:{port}/0"))
    client = _routed_client(freeplay, route)
    with caplog.at_level(logging.WARNING, logger="freeplay_integrations.celery"):
        _, ids = _record_some(client, 3)
    freeplay.wait_for(lambda: sorted(_stored_ids(freeplay)) == sorted(ids), timeout=20)
    assert route.published == 0 and route.refused == 3
    assert recorder_for(client).stats().queued == 3
    broker_down = LOG_BROKER_DOWN.split("(")[0]
    assert sum(broker_down in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_hung_broker_costs_the_request_one_publish_timeout(
    freeplay: LocalFreeplay, workdir: Path, family: str
) -> None:
    if family == "tcp":
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        broker = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    else:
        silent = socket.socket(socket.AF_UNIX)
        silent.bind(str(workdir / "hung.sock"))
        broker = f"redis+socket://{workdir / 'hung.sock'}"
    with silent:  # accepts connections, never answers
        silent.listen(16)
        route = CeleryRoute(Celery("hung", broker=broker), publish_timeout=0.2)
        client = _routed_client(freeplay, route)
        started = time.monotonic()
        _, ids = _record_some(client, 5)
        elapsed = time.monotonic() - started
    freeplay.wait_for(lambda: sorted(_stored_ids(freeplay)) == sorted(ids), timeout=20)
    assert route.refused == 5
    assert elapsed < 2.0, elapsed  # one 0.2 s timeout, then the broker is left alone


def test_configure_recording_via_checks_its_value(freeplay: LocalFreeplay) -> None:
    with pytest.raises(ConfigurationError, match="via="):
        configure_recording(freeplay.client(), via="redis://nowhere")
    client = freeplay.client()
    configure_recording(client, via=Celery("x", broker="redis://127.0.0.1:1/0"))
    configure_recording(client, via=False)
    _, ids = _record_some(client, 1)
    freeplay.wait_for(lambda: _stored_ids(freeplay) == ids, timeout=20)


# -- a web process SIGKILLed mid-run ------------------------------------------------------


def _load(url: str, stop: threading.Event, per_request: int) -> None:
    with httpx.Client(timeout=10) as http:
        while not stop.is_set():
            try:
                http.get(f"{url}/record", params={"n": per_request})
            except httpx.HTTPError:
                return  # the process is gone


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_web_process_sigkilled_mid_run_loses_nothing_it_accepted(
    freeplay: LocalFreeplay,
    worker: Worker,
    redis_server: RedisServer,
    workdir: Path,
    family: str,
) -> None:
    broker = redis_server.url if family == "tcp" else redis_server.socket_url
    with Web(freeplay.env(), broker, workdir, via="celery") as web:
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(web.url, stop, 10)) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(web.accepted()) >= 300, 60, "300 recordings accepted")
            web.kill()
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)
        accepted = web.accepted()
    assert len(accepted) >= 300
    freeplay.wait_for(lambda: set(accepted) <= set(_stored_ids(freeplay)), timeout=60)
    stored = _stored_ids(freeplay)
    assert len(stored) == len(set(stored))
