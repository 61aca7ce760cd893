"""The apps `bench/reliability.py` drives: the same endpoints in every adapter, on a real server.

    python bench/reliability_apps.py ADAPTER [--threads N]

serves the adapter's app on a free loopback port and prints `LISTENING <port>`. Adapters:

- `asgi`: Starlette wrapped in `freeplay_integrations.asgi.FreeplaySessionMiddleware`, under
  uvicorn, loaded from an import string inside the server's run, as the `uvicorn` command
  does (the middleware flushes recordings at lifespan shutdown).
- `django-asgi`: Django (async views) under uvicorn, the app built before the server starts,
  as gunicorn's uvicorn worker does (Django has no lifespan: the recorder's exit hook
  flushes).
- `django-asgi-command`: the same Django app loaded as the bare `uvicorn` command does, with
  the lifespan that RELIABILITY.md gives for that case (Django has none of its own, and
  uvicorn ends the process with SIGTERM's default action).
- `django-wsgi`: Django (sync views) under waitress.
- `flask`: Flask with `FreeplaySessions` under waitress.

Freeplay is configured by `FREEPLAY_API_KEY`, `FREEPLAY_API_BASE` and `FREEPLAY_PROJECT_ID`,
the spool by `FREEPLAY_SPOOL_PATH`. With `RELIABILITY_RECORD_LOG` set, the app appends one
line per operation it hands to the recorder (`c <completion_id>` / `t <trace_id>`), so a test
can tell what was recorded even after the process was killed. `RELIABILITY_SHUTDOWN_TIMEOUT`
sets `configure_recording(shutdown_timeout=...)`.

Endpoints:

- `POST /turn?rid=<id>&mode=<mode>`: one conversation turn. A `trace_scope(rid)` with two
  `record()` calls (`inputs={"rid": rid, "n": 0|1}`), one of them in another thread (or a
  worker thread of the framework). Modes: `plain` (in the view), `stream` (inside the
  streamed body, the trace open across chunks), `background` (in a background task that
  runs after the response: Starlette `BackgroundTasks`, an asyncio task in Django's async
  views, a thread under WSGI, each started with the request's context). Answers JSON
  (streams: the last line) with the session and, except in the background, the trace and
  completion IDs.
- `GET /_reliability/probe` and `/_reliability/probe-sync` (excluded from the middleware):
  what a fresh request sees (`current_session()`, `current_trace()`) in the event loop or
  in a worker thread, and the threads that ran recording code so far.
- `POST /_reliability/flush?timeout=<s>`: `flush(timeout)`, its duration and
  `recorder_stats()`.
- `GET /_reliability/leaks`: after a `gc.collect()`, how many `SessionBinding`s and
  `TraceHandle`s are alive and how many are still bound in some context (a thread's, a
  task's): those are referenced from a context's mapping.
- `POST /_reliability/plant-leak` (Flask, with `RELIABILITY_PLANT_LEAK` set): a deliberate
  bug that leaves a session bound in a worker thread, for the test of those checks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import json
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from freeplay_integrations import (
    configure_recording,
    current_session,
    current_trace,
    flush,
    record,
    recorder_stats,
    trace_scope,
)
from freeplay_integrations._context import SessionBinding, bind, new_binding
from freeplay_integrations._helpers import TraceHandle

__all__ = [
    "ADAPTERS",
    "CONTROL_PREFIX",
    "DEFAULT_ADAPTERS",
    "ENV_PLANT_LEAK",
    "ENV_RECORD_LOG",
    "ENV_SHUTDOWN_TIMEOUT",
    "MODES",
    "create_asgi_app",
    "create_django_asgi_app",
    "create_django_asgi_command_app",
    "create_django_wsgi_app",
    "create_flask_app",
    "leaks",
    "main",
]

#: Adapters this module serves, and the server each runs under.
ADAPTERS = {
    "asgi": "uvicorn",
    "django-asgi": "uvicorn",
    "django-wsgi": "waitress",
    "flask": "waitress",
    "django-asgi-command": "uvicorn",
}
#: The adapters of a full run (`django-asgi-command` checks a workaround, see below).
DEFAULT_ADAPTERS = ("asgi", "django-asgi", "django-wsgi", "flask")
#: What a turn does with its recordings; see the module documentation.
MODES = ("plain", "stream", "background", "stream-sync")
#: Path prefix of the control endpoints; excluded from the middleware.
CONTROL_PREFIX = "/_reliability/"
ENV_RECORD_LOG = "RELIABILITY_RECORD_LOG"
ENV_SHUTDOWN_TIMEOUT = "RELIABILITY_SHUTDOWN_TIMEOUT"
#: Set to add the Flask app's deliberately buggy `/_reliability/plant-leak` endpoint.
ENV_PLANT_LEAK = "RELIABILITY_PLANT_LEAK"
STREAM_TYPE = "application/x-ndjson"

#: Threads that ran recording code (views, worker threads, streamed bodies).
SERVED_THREADS: set[int] = set()
#: Background asyncio tasks still running (kept referenced until done).
_TASKS: set[asyncio.Task[None]] = set()
_log_fd: int | None = None
_THREADS_ARE_POOLED = True


# -- what every adapter's turn does -----------------------------------------------------------


def _setup() -> None:
    """Per-process set-up from the environment: the record log and the recorder."""
    global _log_fd
    path = os.environ.get(ENV_RECORD_LOG)
    if path and _log_fd is None:
        _log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    timeout = os.environ.get(ENV_SHUTDOWN_TIMEOUT)
    if timeout:
        configure_recording(shutdown_timeout=float(timeout))
    # Servers that leave SIGTERM to Python's default action (wsgiref, waitress) need the
    # opt-in handler for the exit flush to run; it is never installed over another one.
    configure_recording(handle_sigterm=True)


def _note(kind: str, op_id: str) -> None:
    """Append `kind id` to the record log (one `write`: nothing buffered to lose)."""
    if _log_fd is not None:
        os.write(_log_fd, f"{kind} {op_id}\n".encode())


def _record(rid: str, n: int) -> str:
    """Record completion `n` of turn `rid` in the bound session, under the current trace."""
    completion_id = record(
        all_messages=[
            {"role": "user", "content": f"question {rid}"},
            {"role": "assistant", "content": f"answer {rid} {n}"},
        ],
        inputs={"rid": rid, "n": n},
    ).completion_id
    _note("c", completion_id)
    return completion_id


def _served(*, loop: bool = False) -> None:
    """Note that this thread (the event loop's with `loop=True`) ran recording code.

    The probes must then reach it. Except under Django's ASGI handler, whose sync code runs
    in a thread of each request's own (asgiref's `ThreadSensitiveContext`) that no later
    request uses: there is nothing to probe there (the `leaks` check covers its context).
    """
    if loop or _THREADS_ARE_POOLED:
        SERVED_THREADS.add(threading.get_ident())


def _record_in_worker(rid: str, n: int) -> str:
    """`_record` in a worker thread of the framework (Starlette's threadpool, asgiref's)."""
    _served()
    return _record(rid, n)


def _in_thread(function: Callable[[], str]) -> str:
    """Run `function` in a new thread, in a copy of this context (as a WSGI app would)."""
    result: list[str] = []
    context = contextvars.copy_context()
    thread = threading.Thread(target=lambda: result.append(context.run(function)))
    thread.start()
    thread.join()
    return result[0]


def _answer(rid: str, trace: TraceHandle | None, ids: list[str]) -> dict[str, Any]:
    session = current_session()
    return {
        "rid": rid,
        "session_id": None if session is None else session.session_id,
        "trace_id": None if trace is None else trace.trace_id,
        "completion_ids": ids,
    }


def turn_sync(rid: str) -> dict[str, Any]:
    """A turn in sync code: one record in this thread, one in another thread."""
    _served()
    with trace_scope(rid, name="turn") as trace:
        ids = [_record(rid, 0), _in_thread(lambda: _record(rid, 1))]
        trace.output = "done"
    _note("t", trace.trace_id)
    return _answer(rid, trace, ids)


def stream_sync(rid: str) -> Iterator[str]:
    """A streamed body (sync): the trace stays open across chunks."""
    yield json.dumps({"rid": rid, "chunk": "start"}) + "\n"
    with trace_scope(rid, name="turn") as trace:
        _served()
        ids = [_record(rid, 0)]
        yield json.dumps({"chunk": 1}) + "\n"
        time.sleep(0)
        _served()
        ids.append(_record(rid, 1))
        yield json.dumps({"chunk": 2}) + "\n"
        trace.output = "done"
    _note("t", trace.trace_id)
    yield json.dumps(_answer(rid, trace, ids)) + "\n"


def background_sync(rid: str) -> None:
    """A turn in a thread of its own (not a server thread: not probed)."""
    with trace_scope(rid, name="turn") as trace:
        _record(rid, 0)
        _record(rid, 1)
        trace.output = "done"
    _note("t", trace.trace_id)


async def turn_async(rid: str, to_thread: Callable[[Callable[[], str]], Any]) -> dict[str, Any]:
    """A turn in async code: one record in the event loop, one in a worker thread."""
    async with trace_scope(rid, name="turn") as trace:
        _served(loop=True)
        ids = [_record(rid, 0)]
        await asyncio.sleep(0)
        ids.append(await to_thread(lambda: _record_in_worker(rid, 1)))
        trace.output = "done"
    _note("t", trace.trace_id)
    return _answer(rid, trace, ids)


async def stream_async(
    rid: str, to_thread: Callable[[Callable[[], str]], Any]
) -> AsyncIterator[str]:
    """A streamed body (async): the trace stays open across chunks."""
    yield json.dumps({"rid": rid, "chunk": "start"}) + "\n"
    async with trace_scope(rid, name="turn") as trace:
        _served(loop=True)
        ids = [_record(rid, 0)]
        yield json.dumps({"chunk": 1}) + "\n"
        await asyncio.sleep(0)
        ids.append(await to_thread(lambda: _record_in_worker(rid, 1)))
        yield json.dumps({"chunk": 2}) + "\n"
        trace.output = "done"
    _note("t", trace.trace_id)
    yield json.dumps(_answer(rid, trace, ids)) + "\n"


# -- control endpoints ------------------------------------------------------------------------


def probe(hold: float = 0.0) -> dict[str, Any]:
    """What code running here, outside any request's session, sees.

    `hold` keeps a worker thread busy for that long, so that concurrent probes reach the
    other worker threads. `served_alive` lists the threads that ran recording code and
    still exist: each of them must answer a probe.
    """
    session = current_session()
    trace = current_trace()
    if hold:
        time.sleep(min(hold, 1.0))
    alive = {thread.ident for thread in threading.enumerate()}
    return {
        "thread": threading.get_ident(),
        "session": None if session is None else session.session_id,
        "trace": None if trace is None else trace.trace_id,
        "served_alive": sorted(SERVED_THREADS & alive),
    }


def flush_and_stats(timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    flushed = flush(timeout)
    seconds = time.monotonic() - started
    stats = recorder_stats()
    return {"flushed": flushed, "seconds": seconds, "stats": vars(stats)}


def _bound(obj: object) -> bool:
    """Whether `obj` is a value in some live context (a thread's own, a task's, a copy)."""
    return any(type(referrer).__name__.startswith("hamt") for referrer in gc.get_referrers(obj))


def leaks() -> dict[str, int]:
    """Live and still-bound `SessionBinding`s and `TraceHandle`s, after a full collection.

    A context holds its values in a HAMT: a binding referenced from one is bound in some
    thread's or task's context, so a request that leaked its session anywhere shows here.
    """
    gc.collect()
    bindings = [o for o in gc.get_objects() if type(o) is SessionBinding]
    traces = [o for o in gc.get_objects() if type(o) is TraceHandle]
    return {
        "bindings_alive": len(bindings),
        "bindings_bound": sum(map(_bound, bindings)),
        "traces_alive": len(traces),
        "traces_bound": sum(map(_bound, traces)),
    }


def _params(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query))


# -- ASGI: Starlette + the package's ASGI middleware ----------------------------------------


def create_asgi_app() -> Any:
    """Starlette wrapped (outermost) in `FreeplaySessionMiddleware`."""
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from freeplay_integrations.asgi import FreeplaySessionMiddleware

    _setup()

    async def to_thread(function: Callable[[], str]) -> str:
        return await anyio.to_thread.run_sync(function)

    async def turn(request: Request) -> Response:
        rid = request.query_params["rid"]
        mode = request.query_params.get("mode", "plain")
        if mode == "stream":
            return StreamingResponse(stream_async(rid, to_thread), media_type=STREAM_TYPE)
        if mode == "stream-sync":  # iterated in Starlette's threadpool
            return StreamingResponse(stream_sync(rid), media_type=STREAM_TYPE)
        if mode == "background":

            async def background() -> None:
                await turn_async(rid, to_thread)

            return JSONResponse(_answer(rid, None, []), background=BackgroundTask(background))
        return JSONResponse(await turn_async(rid, to_thread))

    async def probe_loop(request: Request) -> Response:
        return JSONResponse(probe())

    def probe_thread(request: Request) -> Response:
        return JSONResponse(probe(float(request.query_params.get("hold", "0"))))

    async def flush_endpoint(request: Request) -> Response:
        timeout = float(request.query_params.get("timeout", "30"))
        return JSONResponse(await anyio.to_thread.run_sync(flush_and_stats, timeout))

    async def leaks_endpoint(request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(leaks))

    app = Starlette(
        routes=[
            Route("/turn", turn, methods=["POST"]),
            Route(CONTROL_PREFIX + "probe", probe_loop),
            Route(CONTROL_PREFIX + "probe-sync", probe_thread),
            Route(CONTROL_PREFIX + "flush", flush_endpoint, methods=["POST"]),
            Route(CONTROL_PREFIX + "leaks", leaks_endpoint),
        ]
    )
    return FreeplaySessionMiddleware(app, exclude_paths=[CONTROL_PREFIX])


# -- Django ---------------------------------------------------------------------------------


class _URLConf:
    """A `ROOT_URLCONF` object (Django accepts any object with `urlpatterns`)."""

    def __init__(self, urlpatterns: list[Any]) -> None:
        self.urlpatterns = urlpatterns


def _configure_django(urlpatterns: list[Any]) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="reliability-bench",
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        INSTALLED_APPS=["freeplay_integrations.django"],
        MIDDLEWARE=["freeplay_integrations.django.FreeplaySessionMiddleware"],
        ROOT_URLCONF=_URLConf(urlpatterns),
        # API key, base URL and project ID come from the FREEPLAY_* environment variables.
        FREEPLAY={"EXCLUDE_PATHS": [CONTROL_PREFIX]},
        LOGGING_CONFIG=None,
    )
    django.setup()


def _django_control_views() -> list[Any]:
    from django.http import HttpRequest, JsonResponse
    from django.urls import path

    def probe_view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(probe(float(request.GET.get("hold", "0"))))

    def flush_view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(flush_and_stats(float(request.GET.get("timeout", "30"))))

    def leaks_view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(leaks())

    prefix = CONTROL_PREFIX.lstrip("/")
    return [
        path(prefix + "probe-sync", probe_view),
        path(prefix + "flush", flush_view),
        path(prefix + "leaks", leaks_view),
    ]


def create_django_wsgi_app() -> Any:
    """Django's WSGI handler with sync views; background work in a thread."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    _setup()

    @csrf_exempt
    def turn(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
        rid = request.GET["rid"]
        mode = request.GET.get("mode", "plain")
        if mode in ("stream", "stream-sync"):
            return StreamingHttpResponse(stream_sync(rid), content_type=STREAM_TYPE)
        if mode == "background":
            context = contextvars.copy_context()
            threading.Thread(target=context.run, args=(background_sync, rid), daemon=True).start()
            return JsonResponse(_answer(rid, None, []))
        return JsonResponse(turn_sync(rid))

    def probe_view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(probe(float(request.GET.get("hold", "0"))))

    prefix = CONTROL_PREFIX.lstrip("/")
    _configure_django(
        [path("turn", turn), path(prefix + "probe", probe_view), *_django_control_views()]
    )
    return WSGIHandler()


def create_django_asgi_app() -> Any:
    """Django's ASGI handler with async views; background work in an asyncio task."""
    from asgiref.sync import sync_to_async
    from django.core.handlers.asgi import ASGIHandler
    from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
    from django.urls import path

    global _THREADS_ARE_POOLED
    _setup()
    _THREADS_ARE_POOLED = False

    async def to_thread(function: Callable[[], str]) -> str:
        return await sync_to_async(function)()

    # Not @csrf_exempt: before Django 5.0 it wraps an async view in a sync one, which then
    # returns an unawaited coroutine. The attribute is all the CSRF middleware reads.
    async def turn(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
        rid = request.GET["rid"]
        mode = request.GET.get("mode", "plain")
        if mode == "stream":
            return StreamingHttpResponse(stream_async(rid, to_thread), content_type=STREAM_TYPE)
        if mode == "stream-sync":  # Django consumes it in a worker thread
            return StreamingHttpResponse(stream_sync(rid), content_type=STREAM_TYPE)
        if mode == "background":
            task = asyncio.get_running_loop().create_task(_background(rid))
            _TASKS.add(task)
            task.add_done_callback(_TASKS.discard)
            return JsonResponse(_answer(rid, None, []))
        return JsonResponse(await turn_async(rid, to_thread))

    turn.csrf_exempt = True  # type: ignore[attr-defined]

    async def _background(rid: str) -> None:
        await turn_async(rid, to_thread)

    async def probe_view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(probe())

    prefix = CONTROL_PREFIX.lstrip("/")
    _configure_django(
        [path("turn", turn), path(prefix + "probe", probe_view), *_django_control_views()]
    )
    return ASGIHandler()


def create_django_asgi_command_app() -> Any:
    """Django's ASGI app with a lifespan that flushes at shutdown (as in RELIABILITY.md)."""
    import anyio.to_thread

    django_application = create_django_asgi_app()

    async def application(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await django_application(scope, receive, send)  # type: ignore[no-any-return]
        while True:  # Django has no lifespan: answer it, and flush recordings at shutdown
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await anyio.to_thread.run_sync(flush, 10)
                await send({"type": "lifespan.shutdown.complete"})
                return

    return application


# -- Flask ----------------------------------------------------------------------------------


def create_flask_app() -> Any:
    """Flask with `FreeplaySessions`; background work in a thread."""
    from flask import Flask, Response, jsonify, request

    from freeplay_integrations.flask import FreeplaySessions

    _setup()
    app = Flask("reliability")
    FreeplaySessions(app, exclude_paths=[CONTROL_PREFIX])

    @app.post("/turn")
    def turn() -> Any:
        rid = request.args["rid"]
        mode = request.args.get("mode", "plain")
        if mode in ("stream", "stream-sync"):
            return Response(stream_sync(rid), mimetype=STREAM_TYPE)
        if mode == "background":
            context = contextvars.copy_context()
            threading.Thread(target=context.run, args=(background_sync, rid), daemon=True).start()
            return jsonify(_answer(rid, None, []))
        return jsonify(turn_sync(rid))

    @app.get(CONTROL_PREFIX + "probe")
    @app.get(CONTROL_PREFIX + "probe-sync")
    def probe_view() -> Any:
        return jsonify(probe(float(request.args.get("hold", "0"))))

    @app.post(CONTROL_PREFIX + "flush")
    def flush_view() -> Any:
        return jsonify(flush_and_stats(float(request.args.get("timeout", "30"))))

    @app.get(CONTROL_PREFIX + "leaks")
    def leaks_view() -> Any:
        return jsonify(leaks())

    if os.environ.get(ENV_PLANT_LEAK):

        @app.post(CONTROL_PREFIX + "plant-leak")
        def plant_leak() -> Any:
            """A deliberate bug, to show that the checks catch one: bind a session in this
            worker thread's own context and never reset it."""
            client = app.extensions["freeplay"].settings.client
            bind(new_binding(client.sessions.create(), client, None))
            return jsonify(probe())

    return app


# -- serving --------------------------------------------------------------------------------

_UVICORN_APPS: dict[str, Any] = {
    # An import string: built inside uvicorn's run, after it installed its signal handlers.
    "asgi": "reliability_apps:create_asgi_app",
    # Built first (as gunicorn's UvicornWorker loads the app before serving).
    "django-asgi": create_django_asgi_app,
    "django-asgi-command": "reliability_apps:create_django_asgi_command_app",
}
_WSGI_FACTORIES: dict[str, Callable[[], Any]] = {
    "django-wsgi": create_django_wsgi_app,
    "flask": create_flask_app,
}


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve one reliability app on a free port.")
    parser.add_argument("adapter", choices=sorted(ADAPTERS))
    parser.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    args = parser.parse_args(argv)
    sock = _listen()
    port = sock.getsockname()[1]
    if args.adapter in _UVICORN_APPS:
        import uvicorn

        app = _UVICORN_APPS[args.adapter]
        config = uvicorn.Config(
            app if isinstance(app, str) else app(),
            factory=isinstance(app, str),
            lifespan="auto",
            log_level="warning",
            access_log=False,
            backlog=4096,
            # At saturation the event loop can lag more than uvicorn's 5 s keep-alive timeout:
            # it then closes connections that already carry the client's next request
            # ("Server disconnected without sending a response"). A load generator keeps its
            # connections busy; real clients retry. Not what is measured here.
            timeout_keep_alive=300,
        )
        server = uvicorn.Server(config)
        print(f"LISTENING {port}", flush=True)
        server.run(sockets=[sock])
        return 0
    import waitress

    app = _WSGI_FACTORIES[args.adapter]()
    wsgi_server = waitress.create_server(
        app,
        sockets=[sock],
        threads=args.threads,
        connection_limit=4096,
        backlog=4096,
        channel_timeout=300,
    )
    print(f"LISTENING {port}", flush=True)
    wsgi_server.run()
    return 0


if __name__ == "__main__":
    # One copy of this module's state: uvicorn imports `reliability_apps` by name.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reliability_apps

    sys.exit(reliability_apps.main())
