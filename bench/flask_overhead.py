"""Per-request cost of the Flask extension over a bare Flask view, and of the WSGI middleware.

Requests are driven straight through the WSGI interface (call, iterate the body, close), so
the figures are the integration's own cost, without a server or a network. Creating or
resuming a session makes no HTTP call, so no Freeplay is needed.

Each round runs every case once, in a shuffled order, for `--requests` requests. A case's
overhead is taken per round, against its bare case in the same round (paired), so that
the slow drifts of a shared machine cancel; the median of those differences is reported,
with their interquartile range as the run's noise. Many short rounds (the default: 151 of
1,000 requests) estimate the median better than a few long ones.

    .venv/bin/python bench/flask_overhead.py [--requests 1000] [--rounds 151] [--clock wall|process]
"""

from __future__ import annotations

import argparse
import io
import random
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
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=151)
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
    names = list(cases)
    shuffle = random.Random(0).shuffle
    for _ in range(args.rounds):
        shuffle(names)
        for name in names:
            app, path, headers, _ = cases[name]
            rounds[name].append(run(app, path, headers, args.requests))

    print(f"{args.requests} requests x {args.rounds} rounds per case, shuffled in each round")
    print("overhead: the median over rounds of (case - its bare case in the same round)\n")
    print(f"{'case':44} {'us/request':>10} {'overhead us':>12} {'IQR':>14} {'ratio':>6}")
    ratio = 0.0
    for name, (_, _, _, base_name) in cases.items():
        value = statistics.median(rounds[name])
        if not base_name:
            print(f"{name:44} {value:10.2f} {'':>12} {'':>14} {'1.00':>6}")
            continue
        paired = [x - y for x, y in zip(rounds[name], rounds[base_name], strict=True)]
        low, _, high = statistics.quantiles(paired, n=4)
        overhead = statistics.median(paired)
        base = statistics.median(rounds[base_name])
        spread = f"{low:.2f}..{high:.2f}"
        print(f"{name:44} {value:10.2f} {overhead:12.2f} {spread:>14} {1 + overhead / base:6.2f}")
        if name == "Flask + FreeplaySessions, valid ID":
            ratio = 1 + overhead / base
    print(f"\nFlask per-request ratio, with FreeplaySessions / bare view (valid ID): {ratio:.2f}")


if __name__ == "__main__":
    main()
