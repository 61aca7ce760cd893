"""Per-request cost of the Flask extension over a bare Flask view, and of the WSGI middleware.

Requests are driven straight through the WSGI interface (call, iterate the body, close), so
the figures are the integration's own cost, without a server or a network. Each case runs
several rounds, interleaved so that machine noise hits every case alike; the median round
is reported. Creating or resuming a session makes no HTTP call, so no Freeplay is needed.

    .venv/bin/python bench/flask_overhead.py [--requests 20000] [--rounds 7] [--clock wall|process]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, Response
from freeplay import Freeplay

from freeplay_integrations.flask import FreeplaySessions
from freeplay_integrations.wsgi import FreeplaySessionMiddleware

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
STREAM_CHUNKS = 10


PROJECT_ID = "be4c0000-0000-4000-8000-00000000be4c"


#: The clock `run` reads: wall time (`perf_counter`, the default) or, with `--clock process`,
#: this process's CPU time, which leaves out the time other processes on a shared machine
#: hold the CPU (it still includes their effect on caches).
CLOCK: list[Callable[[], float]] = [time.perf_counter]


def client() -> Freeplay:
    return Freeplay(freeplay_api_key="bench", api_base="http://127.0.0.1:9/api")


def bare_flask() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    @app.get("/stream")
    def stream() -> Response:
        return Response(iter([b"chunk"] * STREAM_CHUNKS))

    return app


def flask_with_sessions() -> Flask:
    app = bare_flask()
    FreeplaySessions(app, client=client(), project_id=PROJECT_ID)
    return app


def bare_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def wsgi_with_sessions() -> WSGIApp:
    return FreeplaySessionMiddleware(bare_wsgi, client=client(), project_id=PROJECT_ID)


def environ(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **headers,
    }


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def run(app: WSGIApp, path: str, headers: dict[str, str], requests: int) -> float:
    started = CLOCK[0]()
    for _ in range(requests):
        result = app(environ(path, headers), start_response)
        body: Iterator[bytes] = iter(result)
        for _chunk in body:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (CLOCK[0]() - started) / requests * 1e6  # microseconds per request


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clock", choices=("wall", "process"), default="wall")
    args = parser.parse_args()
    if args.clock == "process":
        CLOCK[0] = time.process_time

    valid = {"HTTP_X_FREEPLAY_SESSION_ID": str(uuid.uuid4())}
    bare_app, ours_app = bare_flask(), flask_with_sessions()
    ours_wsgi = wsgi_with_sessions()
    # name: (app, path, environ headers, the bare case it is compared with)
    cases: dict[str, tuple[Any, str, dict[str, str], str]] = {
        "bare Flask view": (bare_app, "/", {}, ""),
        "Flask + FreeplaySessions, valid ID": (ours_app, "/", valid, "bare Flask view"),
        "Flask + FreeplaySessions, no ID": (ours_app, "/", {}, "bare Flask view"),
        f"bare Flask, {STREAM_CHUNKS}-chunk stream": (bare_app, "/stream", {}, ""),
        f"Flask + FreeplaySessions, {STREAM_CHUNKS}-chunk stream": (
            ours_app,
            "/stream",
            valid,
            f"bare Flask, {STREAM_CHUNKS}-chunk stream",
        ),
        "bare WSGI app": (bare_wsgi, "/", {}, ""),
        "WSGI middleware, valid ID": (ours_wsgi, "/", valid, "bare WSGI app"),
        "WSGI middleware, no ID": (ours_wsgi, "/", {}, "bare WSGI app"),
    }
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    for app, path, headers, _ in cases.values():  # warm-up
        run(app, path, headers, 500)
    for _ in range(args.rounds):
        for name, (app, path, headers, _) in cases.items():
            rounds[name].append(run(app, path, headers, args.requests))

    per_request = {name: statistics.median(values) for name, values in rounds.items()}
    fastest = {name: min(values) for name, values in rounds.items()}
    print(f"{args.requests} requests x {args.rounds} rounds per case, median round\n")
    print(f"{'case':44} {'us/request':>10} {'overhead us':>12} {'ratio':>6} {'fastest':>8}")
    for name, (_, _, _, base_name) in cases.items():
        value = per_request[name]
        if not base_name:
            print(f"{name:44} {value:10.2f} {'':>12} {'1.00':>6}")
            continue
        base = per_request[base_name]
        fast = fastest[name] - fastest[base_name]
        print(f"{name:44} {value:10.2f} {value - base:12.2f} {value / base:6.2f} {fast:8.2f}")
    ratio = per_request["Flask + FreeplaySessions, valid ID"] / per_request["bare Flask view"]
    print(f"\nFlask per-request ratio, with FreeplaySessions / bare view (valid ID): {ratio:.2f}")


if __name__ == "__main__":
    main()
