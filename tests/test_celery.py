"""freeplay_integrations.celery: tasks run in the session (and trace) they were published in.

Every test builds its own Celery app (in-memory broker, its own queue) and runs a real
worker in a thread of the test process with `celery.contrib.testing.worker.start_worker`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from celery import Celery, chain, chord, group, signals
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state
from freeplay import Freeplay
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freeplay_integrations import (
    ConfigurationError,
    current_session,
    current_trace,
    end_session,
    flush,
    new_session,
    record,
    session_scope,
    trace_scope,
)
from freeplay_integrations._context import current_binding
from freeplay_integrations.asgi import FreeplaySessionMiddleware
from freeplay_integrations.celery import (
    DISPATCH_UID,
    LOG_INVALID_HEADER,
    METADATA_HEADER,
    PROJECT_HEADER,
    SESSION_HEADER,
    TRACE_HEADER,
    disable_session_propagation,
    enable_session_propagation,
)
from freeplay_integrations.local import LocalFreeplay
from tests._servers import serve_asgi

TIMEOUT = 10.0


WORKER_PROJECT = "3077e400-0000-4000-8000-000000003077"
PUBLISHER_PROJECT = "9ab10000-0000-4000-8000-000000009ab1"
P1_PROJECT = "9e100000-0000-4000-8000-000000009e10"


def observe() -> dict[str, Any]:
    """What a task sees of the Freeplay context it runs in."""
    binding = current_binding()
    trace = current_trace()
    return {
        "session_id": None if binding is None else binding.session_id,
        "project_id": None if binding is None else binding.project_id,
        "metadata": None if binding is None else binding.session.custom_metadata,
        "trace_id": None if trace is None else str(trace.trace_id),
    }


def make_app(freeplay_local: LocalFreeplay, **options: Any) -> Celery:
    """A fresh Celery app with its own in-memory queue, propagation enabled, and tasks."""
    app = Celery(f"test-{uuid.uuid4().hex[:8]}", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        result_backend="cache+memory://",
        broker_transport_options={"polling_interval": 0.01},
        task_default_queue=f"q-{uuid.uuid4().hex}",
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=False,
    )
    options.setdefault("client", freeplay_local.client())

    @app.task(name="observe", shared=False)
    def observe_task(*_: Any) -> dict[str, Any]:
        return observe()

    @app.task(name="record", shared=False)
    def record_task(question: str) -> dict[str, Any]:
        record(
            all_messages=[
                {"role": "user", "content": question},
                {"role": "assistant", "content": "from the worker"},
            ]
        )  # into the bound session, under the bound trace
        return observe()

    @app.task(name="step", shared=False)
    def step(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*seen, observe()]

    @app.task(name="fail", shared=False)
    def fail() -> None:
        raise ValueError("the task failed")

    attempts: list[dict[str, Any]] = []

    @app.task(name="flaky", shared=False, bind=True, max_retries=2)
    def flaky(self: Any) -> list[dict[str, Any]]:
        attempts.append(observe())
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return attempts

    @app.task(name="noop", shared=False)
    def noop() -> None:
        return None

    enable_session_propagation(app, **options)
    return app


@contextmanager
def running_worker(app: Celery, **options: Any) -> Iterator[None]:
    """A real worker for `app`, in a thread; stops in milliseconds, not seconds."""
    options.setdefault("pool", "solo")
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    try:
        with start_worker(app, perform_ping_check=False, shutdown_timeout=10, **options):
            try:
                yield
            finally:
                # The worker's loop checks for shutdown between two messages (and blocks 2 s
                # for each otherwise): ask it to stop, then hand it two messages to wake on.
                worker_state.should_terminate = 0
                app.tasks["noop"].delay()
                app.tasks["noop"].delay()
    finally:
        disable_session_propagation(app)
        # start_worker sets up Celery's logging (the root logger's level among it): undo it.
        root.setLevel(root_level)
        root.handlers[:] = root_handlers


def get(result: Any) -> Any:
    return result.get(timeout=TIMEOUT, interval=0.01)


@pytest.fixture
def fp(freeplay_local: LocalFreeplay) -> Freeplay:
    return freeplay_local.client()


@pytest.fixture(autouse=True)
def delivered(freeplay_local: LocalFreeplay) -> Iterator[None]:
    """What a test recorded (in the background) reaches the local server before it stops."""
    yield
    assert flush(timeout=5), "background recordings were not delivered"


NOTHING = {"session_id": None, "project_id": None, "metadata": None, "trace_id": None}


# -- a request publishes, a worker records ---------------------------------------------------


def test_recording_in_a_task_lands_in_the_request_session_under_its_trace(
    freeplay_local: LocalFreeplay,
) -> None:
    celery_app = make_app(freeplay_local)

    def ask(request: Request) -> JSONResponse:  # a sync view, run in Starlette's threadpool
        question = request.query_params["q"]
        with trace_scope(question, name="chat") as trace:
            seen = get(celery_app.tasks["record"].delay(question))
            trace.output = "answered"
        return JSONResponse({"trace_id": trace.trace_id, "worker_saw": seen})

    web = FreeplaySessionMiddleware(
        Starlette(routes=[Route("/ask", ask)]),
        client=freeplay_local.client(),
        project_id=freeplay_local.project_id,
    )
    with (
        running_worker(celery_app),
        serve_asgi(web, lifespan="off") as url,
        httpx.Client(base_url=url) as browser,
    ):
        first = browser.get("/ask", params={"q": "hello"})
        second = browser.get("/ask", params={"q": "again"})  # the cookie resumes the session
        browser.cookies.clear()
        other = browser.get("/ask", params={"q": "elsewhere"})  # a new conversation

    session_id = first.headers["X-Freeplay-Session-Id"]
    assert second.headers["X-Freeplay-Session-Id"] == session_id
    traces = [r.json()["trace_id"] for r in (first, second)]
    for response, trace_id in zip((first, second), traces, strict=True):
        assert response.json()["worker_saw"] == {
            "session_id": session_id,
            "project_id": freeplay_local.project_id,
            "metadata": None,
            "trace_id": trace_id,
        }
    assert flush(timeout=5)  # the worker and the web app record in the background
    completions = freeplay_local.completions(session_id)  # sent concurrently: any order
    by_trace = {c["parent_id"]: c["messages"][0]["content"] for c in completions}
    assert by_trace == dict(zip(traces, ["hello", "again"], strict=True))
    assert sorted(t["id"] for t in freeplay_local.traces(session_id)) == sorted(traces)
    other_id = other.headers["X-Freeplay-Session-Id"]
    assert other_id != session_id
    assert other.json()["worker_saw"]["session_id"] == other_id
    assert [c["messages"][0]["content"] for c in freeplay_local.completions(other_id)] == [
        "elsewhere"
    ]
    assert current_session() is None


def test_session_metadata_and_project_travel_with_the_task(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local, project_id=WORKER_PROJECT)
    metadata = {"user_id": "u-1", "tenant": "acme", "n": 3}
    with running_worker(app):
        with session_scope(fp, project_id=PUBLISHER_PROJECT, custom_metadata=metadata) as s:
            published = get(app.tasks["observe"].delay())
        unscoped_project = get(
            app.tasks["observe"].apply_async(headers={SESSION_HEADER: s.session_id})
        )
    assert published == {
        "session_id": s.session_id,
        "project_id": PUBLISHER_PROJECT,
        "metadata": metadata,
        "trace_id": None,
    }
    # Without a project header, the worker's configured project is used.
    assert unscoped_project["project_id"] == WORKER_PROJECT
    assert current_session() is None


# -- outside a session --------------------------------------------------------------------------


def test_task_published_outside_a_session_runs_with_none(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local)
    with running_worker(app):
        assert get(app.tasks["observe"].delay()) == NOTHING
    assert current_session() is None


def test_task_published_after_end_session_does_not_join_the_ended_session(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local)
    with running_worker(app), session_scope(fp):
        end_session()
        ended = get(app.tasks["observe"].delay())
        fresh = new_session()
        renewed = get(app.tasks["observe"].delay())
    assert ended == NOTHING
    assert renewed["session_id"] == fresh.session_id
    assert current_session() is None


def test_new_session_if_missing_gives_each_task_its_own_session(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local, new_session_if_missing=True, project_id=P1_PROJECT)
    with running_worker(app):
        first = get(app.tasks["observe"].delay())
        second = get(app.tasks["observe"].delay())
        with session_scope(fp) as session:
            inside = get(app.tasks["observe"].delay())
    assert first["session_id"] and second["session_id"]
    assert first["session_id"] != second["session_id"]
    assert first["project_id"] == P1_PROJECT
    assert inside["session_id"] == session.session_id  # a published session still wins
    assert current_session() is None


# -- nothing stays bound in the worker: success, failure, retry -----------------------------------


def test_worker_unbinds_after_success_failure_and_retry(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local)
    with running_worker(app):  # solo pool: every task runs on the same worker thread
        with session_scope(fp) as session:
            ok = app.tasks["observe"].delay()
            failed = app.tasks["fail"].delay()
            retried = app.tasks["flaky"].delay()
        assert get(ok)["session_id"] == session.session_id
        after_success = get(app.tasks["observe"].delay())
        with pytest.raises(ValueError, match="the task failed"):
            get(failed)
        after_failure = get(app.tasks["observe"].delay())
        attempts = get(retried)
        after_retry = get(app.tasks["observe"].delay())
    assert after_success == after_failure == after_retry == NOTHING
    # Both attempts of the retried task ran in the publisher's session.
    assert [a["session_id"] for a in attempts] == [session.session_id] * 2
    assert current_session() is None


def test_tasks_on_a_thread_pool_each_see_their_own_session(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local)
    published: list[tuple[str, Any]] = []
    with running_worker(app, pool="threads", concurrency=4):
        for _ in range(40):
            with session_scope(fp) as session:
                published.append((session.session_id, app.tasks["observe"].delay()))
        outside = [app.tasks["observe"].delay() for _ in range(8)]
        results = [(sid, get(result)) for sid, result in published]
        leftovers = [get(result) for result in outside]
    for session_id, seen in results:
        assert seen["session_id"] == session_id
    assert leftovers == [NOTHING] * 8
    assert current_session() is None


# -- delay, apply_async, chains and groups ----------------------------------------------------


def test_apply_async_chain_group_and_chord_carry_the_session_and_trace(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local)
    step, observe_task = app.tasks["step"], app.tasks["observe"]
    with (
        running_worker(app),
        session_scope(fp, project_id=P1_PROJECT) as session,
        trace_scope("x") as trace,
    ):
        applied = observe_task.apply_async(countdown=0)
        chained = chain(step.s([]), step.s(), step.s()).apply_async()
        grouped = group(observe_task.s() for _ in range(3)).apply_async()
        # The chord's callback is published by the worker, from the last task of its header.
        chorded = chord(observe_task.s() for _ in range(2))(step.s())
        results = [get(applied), *get(chained), *get(grouped), *get(chorded)]
    expected = {
        "session_id": session.session_id,
        "project_id": P1_PROJECT,
        "metadata": None,
        "trace_id": trace.trace_id,
    }
    assert results == [expected] * 10
    assert current_session() is None


# -- headers: what is sent, what is kept, what is refused -------------------------------------


def test_headers_published_and_explicit_headers_kept(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local)
    sent: list[dict[str, Any]] = []

    def capture(headers: dict[str, Any], **_: Any) -> None:
        sent.append(dict(headers))

    signals.after_task_publish.connect(capture, weak=False)
    explicit = str(uuid.uuid4())
    try:
        with running_worker(app):
            get(app.tasks["observe"].delay())  # outside: nothing added
            with (
                session_scope(fp, project_id=P1_PROJECT, custom_metadata={"user": "u"}) as session,
                trace_scope("x") as trace,
            ):
                get(app.tasks["observe"].delay())
                seen = get(app.tasks["observe"].apply_async(headers={SESSION_HEADER: explicit}))
    finally:
        signals.after_task_publish.disconnect(capture)
    ours = [h for h in sent if h.get("task") == "observe"]
    assert not any(key.startswith("freeplay_") for key in ours[0])
    assert {k: v for k, v in ours[1].items() if k.startswith("freeplay_")} == {
        SESSION_HEADER: session.session_id,
        PROJECT_HEADER: P1_PROJECT,
        TRACE_HEADER: trace.trace_id,
        METADATA_HEADER: {"user": "u"},
    }
    assert ours[2][SESSION_HEADER] == explicit
    assert seen["session_id"] == explicit  # the caller's header was not overwritten
    assert current_session() is None


@pytest.mark.parametrize(
    ("headers", "bad"),
    [
        ({SESSION_HEADER: "not-a-uuid"}, SESSION_HEADER),
        ({SESSION_HEADER: str(uuid.uuid1())}, SESSION_HEADER),  # not a v4
        ({SESSION_HEADER: str(uuid.uuid4()), TRACE_HEADER: "nope"}, TRACE_HEADER),
    ],
)
def test_invalid_headers_are_ignored_and_logged(
    freeplay_local: LocalFreeplay,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    bad: str,
) -> None:
    app = make_app(freeplay_local)
    with caplog.at_level(logging.WARNING, logger="freeplay_integrations"), running_worker(app):
        seen = get(app.tasks["observe"].apply_async(headers=headers))
    if bad == SESSION_HEADER:
        assert seen == NOTHING
    else:
        assert seen["session_id"] == headers[SESSION_HEADER] and seen["trace_id"] is None
    logged = [r for r in caplog.records if r.msg == LOG_INVALID_HEADER]
    assert len(logged) == 1 and bad in logged[0].getMessage()
    assert current_session() is None


def test_eager_tasks_run_in_the_callers_session(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    app = make_app(freeplay_local, new_session_if_missing=True)
    app.conf.task_always_eager = True
    try:
        with session_scope(fp) as session:
            seen = app.tasks["observe"].delay().get()
            assert current_session() is session  # restored after the task
        assert seen["session_id"] == session.session_id
    finally:
        disable_session_propagation(app)
    assert current_session() is None


# -- set-up: explicit, once, validated ----------------------------------------------------------


def receivers(signal: Any) -> list[Any]:
    return [key for key, _ in signal.receivers if str(key[0]).startswith(DISPATCH_UID)]


def test_enabling_twice_registers_once_and_disabling_disconnects(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    first, second = make_app(freeplay_local), make_app(freeplay_local)
    enable_session_propagation(first, client=fp)  # again, with other settings
    try:
        for signal in (signals.before_task_publish, signals.task_prerun, signals.task_postrun):
            assert len(receivers(signal)) == 1
        disable_session_propagation(first)
        assert len(receivers(signals.task_prerun)) == 1  # `second` still needs them
    finally:
        disable_session_propagation(first)
        disable_session_propagation(second)
    for signal in (signals.before_task_publish, signals.task_prerun, signals.task_postrun):
        assert receivers(signal) == []


def test_importing_the_module_connects_nothing() -> None:
    code = (
        "from celery import signals\n"
        "import freeplay_integrations.celery as m\n"
        "names = ('before_task_publish', 'task_prerun', 'task_postrun', 'worker_shutdown')\n"
        "print(sum(len(getattr(signals, n).receivers) for n in names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "0"


def test_a_worker_of_an_app_without_propagation_ignores_the_headers(
    freeplay_local: LocalFreeplay, fp: Freeplay
) -> None:
    enabled = make_app(freeplay_local)  # publishing is process-wide once any app enables it
    plain = make_app(freeplay_local)
    disable_session_propagation(plain)
    try:
        with running_worker(plain), session_scope(fp):
            seen = get(plain.tasks["observe"].delay())
    finally:
        disable_session_propagation(enabled)
    assert seen == NOTHING
    assert current_session() is None


def test_missing_configuration_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FREEPLAY_API_KEY", "FREEPLAY_API_BASE", "FREEPLAY_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    app = Celery("unconfigured", set_as_current=False)
    with pytest.raises(ConfigurationError, match=r"enable_session_propagation\(api_key=\.\.\.\)"):
        enable_session_propagation(app)
    with pytest.raises(ConfigurationError, match="recording"):
        enable_session_propagation(
            app, api_key="k", api_base="http://127.0.0.1:1/api", recording="later"
        )
    with pytest.raises(TypeError, match="Celery app"):
        enable_session_propagation(object())  # type: ignore[arg-type]
    assert receivers(signals.task_prerun) == []


def test_worker_builds_its_client_from_the_environment(
    freeplay_local: LocalFreeplay, fp: Freeplay, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in freeplay_local.env().items():
        monkeypatch.setenv(name, value)
    app = make_app(freeplay_local, client=None)
    with running_worker(app), session_scope(fp) as session:
        seen = get(app.tasks["record"].delay("from env"))
    assert seen["session_id"] == session.session_id
    assert seen["project_id"] == freeplay_local.project_id
    assert flush(timeout=5)
    completions = freeplay_local.completions(session.session_id)
    assert [c["messages"][0]["content"] for c in completions] == ["from env"]
    assert current_session() is None
