"""Per-request cost of FreeplaySessionMiddleware over a bare Starlette app.

Side by side, in one run, with asgi-correlation-id's CorrelationIdMiddleware doing its
equivalent job (take a UUID from a header or make one, bind it in a contextvar, echo it).
Requests are driven straight through the ASGI interface, so the figures are the middleware's
own cost, without a server or a network. Each case runs several rounds, interleaved so that
machine noise hits every case alike; the median round is reported, the fastest beside it.

    .venv/bin/python bench/asgi_overhead.py [--requests 20000] [--rounds 7] [--clock wall|process]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from freeplay import Freeplay
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from freeplay_integrations.asgi import FreeplaySessionMiddleware


async def endpoint(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


PROJECT_ID = "be4c0000-0000-4000-8000-00000000be4c"


#: The clock `run` reads: wall time (`perf_counter`, the default) or, with `--clock process`,
#: this process's CPU time, which leaves out the time other processes on a shared machine
#: hold the CPU (it still includes their effect on caches).
CLOCK: list[Callable[[], float]] = [time.perf_counter]


def bare() -> Any:
    return Starlette(routes=[Route("/", endpoint)])


def ours() -> Any:
    client = Freeplay(freeplay_api_key="bench", api_base="http://127.0.0.1:9/api")
    app = bare()
    app.add_middleware(FreeplaySessionMiddleware, client=client, project_id=PROJECT_ID)
    return app


def correlation_id() -> Any:
    app = bare()
    app.add_middleware(CorrelationIdMiddleware)
    return app


def scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }


async def run(app: Any, headers: list[tuple[bytes, bytes]], requests: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    started = CLOCK[0]()
    for _ in range(requests):
        await app(scope(headers), receive, send)
    return (CLOCK[0]() - started) / requests * 1e6  # microseconds per request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clock", choices=("wall", "process"), default="wall")
    args = parser.parse_args()
    if args.clock == "process":
        CLOCK[0] = time.process_time

    session_id = str(uuid.uuid4()).encode()
    cases: dict[str, tuple[Callable[[], Any], list[tuple[bytes, bytes]]]] = {
        "bare Starlette": (bare, []),
        "freeplay, valid ID in header": (ours, [(b"x-freeplay-session-id", session_id)]),
        "freeplay, no ID (new session)": (ours, []),
        "asgi-correlation-id, valid ID": (correlation_id, [(b"x-request-id", session_id)]),
        "asgi-correlation-id, no ID": (correlation_id, []),
    }
    apps = {name: (factory(), headers) for name, (factory, headers) in cases.items()}
    rounds: dict[str, list[float]] = {name: [] for name in cases}

    async def measure() -> None:
        for app, headers in apps.values():  # warm-up
            await run(app, headers, 500)
        for _ in range(args.rounds):
            for name, (app, headers) in apps.items():
                rounds[name].append(await run(app, headers, args.requests))

    asyncio.run(measure())
    per_request = {name: statistics.median(values) for name, values in rounds.items()}
    fastest = {name: min(values) for name, values in rounds.items()}
    base = per_request["bare Starlette"]
    print(f"{args.requests} requests x {args.rounds} rounds per case, median round\n")
    print(f"{'case':34} {'us/request':>10} {'overhead us':>12} {'fastest round':>14}")
    for name, value in per_request.items():
        fast = fastest[name] - fastest["bare Starlette"]
        print(f"{name:34} {value:10.2f} {value - base:12.2f} {fast:14.2f}")

    print("\noverhead ratio, freeplay / asgi-correlation-id (target <= 0.5):")
    for label, picked in (("median", per_request), ("fastest", fastest)):
        zero = picked["bare Starlette"]

        def ratio(ours_case: str, peer_case: str) -> float:
            return (picked[ours_case] - zero) / (picked[peer_case] - zero)  # noqa: B023

        valid = ratio("freeplay, valid ID in header", "asgi-correlation-id, valid ID")
        fresh = ratio("freeplay, no ID (new session)", "asgi-correlation-id, no ID")
        print(f"  {label} rounds: valid ID in header {valid:.2f}, no ID {fresh:.2f}")
    print("\ncurrent_trace(), us per call:")
    for name, value in current_trace_cost().items():
        print(f"  {name:56} {value:6.3f}")


def current_trace_cost(calls: int = 20_000) -> dict[str, float]:
    """Microseconds per `current_trace()` call: on the normal path (the trace contextvar agrees
    with the request's innermost open trace: no frame is looked at), and in the one case that
    walks the stack: a sync generator that opened a `trace_scope`, stepped in a fresh copy of
    the request's context each time (Starlette's `StreamingResponse` of a sync iterator)."""
    import contextvars

    from freeplay_integrations import current_trace, flush, session_scope, trace_scope
    from freeplay_integrations.local import LocalFreeplay

    def per_call() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            current_trace()
        return (time.perf_counter() - started) / calls * 1e6

    costs: dict[str, float] = {}
    # The traces are recorded on exit: into an in-memory local Freeplay, not a real one.
    with LocalFreeplay() as server, session_scope(server.client(), project_id=server.project_id):
        costs["no trace open"] = per_call()
        with trace_scope("q", name="bench"):
            costs["inside trace_scope (normal path)"] = per_call()

        def body() -> Any:
            with trace_scope("q", name="streamed"):
                yield None  # step 1 opened the trace; step 2 runs in a fresh context copy
                yield per_call()

        request_context = contextvars.copy_context()
        steps = body()
        request_context.copy().run(next, steps)
        walked = request_context.copy().run(next, steps)
        costs["sync generator step in a fresh context (walks frames)"] = walked
        steps.close()
        flush(5)
    return costs


if __name__ == "__main__":
    main()
