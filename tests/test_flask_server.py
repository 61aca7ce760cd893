"""A Flask app under a real threaded WSGI server (waitress): 200 concurrent requests.

waitress serves them with a few reused worker threads, and iterates streamed bodies in
those threads after the view returned. Excluded-path probes mixed into the load show that
no worker thread keeps a session bound from the request it served before.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import waitress
from flask import Flask, Response, stream_with_context
from freeplay.resources.recordings import RecordPayload

from freeplay_integrations import current_session
from freeplay_integrations.flask import FreeplaySessions
from freeplay_integrations.flask import freeplay_session as flask_current_session

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from freeplay_integrations.local import LocalFreeplay

HEADER = "X-Freeplay-Session-Id"
REQUESTS = 200
WORKER_THREADS = 4
CHUNKS = 5


@pytest.fixture
def serve() -> Iterator[Callable[[WSGIApplication], int]]:
    """Start `app` under waitress on a free port; stopped after the test. Returns the port."""
    running: list[tuple[waitress.server.BaseWSGIServer, threading.Thread]] = []

    def start(app: WSGIApplication) -> int:
        server = waitress.create_server(
            app, host="127.0.0.1", port=0, threads=WORKER_THREADS, connection_limit=REQUESTS
        )
        thread = threading.Thread(target=server.run, name="waitress", daemon=True)
        thread.start()
        running.append((server, thread))
        return int(server.effective_port)  # type: ignore[union-attr]

    yield start
    for server, thread in running:
        server.task_dispatcher.shutdown()
        server.close()
        thread.join(timeout=5)
        assert not thread.is_alive(), "waitress did not stop"


def create_app(server: LocalFreeplay, worker_threads: set[int]) -> Flask:
    app = Flask(__name__)
    FreeplaySessions(
        app,
        client=server.client(),
        project_id=server.project_id,
        exclude_paths=["/health"],
    )

    def lines() -> Iterator[str]:
        for _ in range(CHUNKS):
            worker_threads.add(threading.get_ident())
            time.sleep(0.001)  # let the other worker threads run in between
            yield f"{flask_current_session.session_id}\n"

    @app.get("/stream")
    def stream() -> Response:
        return Response(lines(), mimetype="text/plain")

    @app.get("/stream-with-context")
    def stream_in_context() -> Response:
        return Response(stream_with_context(lines()), mimetype="text/plain")

    @app.post("/record")
    def record() -> str:
        server.client().recordings.create(
            RecordPayload(
                project_id=server.project_id,
                all_messages=[{"role": "user", "content": "hi"}],
                session_info=flask_current_session.session_info,
            )
        )
        return f"{flask_current_session.session_id}\n"

    @app.get("/health")
    def health() -> str:
        worker_threads.add(threading.get_ident())
        return "unbound" if current_session() is None else "LEAKED"

    return app


@dataclass
class Call:
    method: str
    path: str
    sent: str | None
    status: int = 0
    header: str | None = None
    lines: tuple[str, ...] = ()


def plan() -> list[Call]:
    calls = []
    for i in range(REQUESTS):
        kind = i % 5
        if kind == 0:
            calls.append(Call("GET", "/health", None))
        elif kind == 1:
            calls.append(Call("POST", "/record", str(uuid.uuid4())))
        elif kind == 2:
            calls.append(Call("GET", "/stream", None))  # a new session each
        else:
            path = "/stream" if kind == 3 else "/stream-with-context"
            calls.append(Call("GET", path, str(uuid.uuid4())))
    return calls


def test_200_concurrent_requests_no_mix_ups(
    freeplay_local: LocalFreeplay, serve: Callable[[WSGIApplication], int]
) -> None:
    worker_threads: set[int] = set()
    port = serve(create_app(freeplay_local, worker_threads))
    calls = plan()
    barrier = threading.Barrier(REQUESTS, timeout=30)

    def send(call: Call) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            headers = {HEADER: call.sent} if call.sent else {}
            barrier.wait()  # all 200 in flight together
            connection.request(call.method, call.path, headers=headers)
            response = connection.getresponse()
            call.status = response.status
            call.header = response.getheader(HEADER)
            call.lines = tuple(response.read().decode().splitlines())
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        list(pool.map(send, calls))

    assert all(call.status == 200 for call in calls), {c.status for c in calls}
    for call in calls:
        if call.path == "/health":
            assert call.lines == ("unbound",) and call.header is None
        elif call.sent is not None:
            expected = CHUNKS if call.path.startswith("/stream") else 1
            assert call.header == call.sent
            assert call.lines == (call.sent,) * expected
        else:
            assert call.header is not None and call.lines == (call.header,) * CHUNKS
    new_ids = [c.header for c in calls if c.sent is None and c.path != "/health"]
    sent_ids = {c.sent for c in calls if c.sent}
    assert len(set(new_ids)) == len(new_ids) and not set(new_ids) & sent_ids

    # waitress served everything with a few reused threads, so the health probes really
    # ran in threads that had served (and streamed) other sessions before.
    assert len(worker_threads) <= WORKER_THREADS

    recorded = [c.sent for c in calls if c.path == "/record"]
    assert len(freeplay_local.completions()) == len(recorded)
    for session_id in recorded:
        assert len(freeplay_local.completions(session_id)) == 1  # type: ignore[arg-type]
