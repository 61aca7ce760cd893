"""Per-request cost of the Django FreeplaySessionMiddleware over a bare Django view.

Side by side, in one run, with django-guid's middleware doing its equivalent job (take a
UUID from a header or make one, bind it in a contextvar, echo it in a response header).
Requests are driven straight through Django's WSGI handler (sync middleware, sync view)
and its ASGI handler (async middleware, async view), so the figures are the middleware's
own cost inside Django, without a server or a network. Each case runs several rounds,
interleaved so that machine noise hits every case alike; each case's median round is
reported, and its fastest round beside it (on a shared machine, slower rounds measure the
neighbours as well as the middleware).

    .venv/bin/python bench/django_overhead.py [--requests 5000] [--rounds 7] [--clock wall|process]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench",
    ALLOWED_HOSTS=["*"],
    USE_TZ=True,
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django_guid", "freeplay_integrations.django"],
    MIDDLEWARE=[],
    FREEPLAY={
        "API_KEY": "bench",
        "API_BASE": "http://127.0.0.1:9/api",
        "PROJECT_ID": "be4c0000-0000-4000-8000-00000000be4c",
    },
    LOGGING_CONFIG=None,
)
django.setup()

from django.core.handlers.asgi import ASGIHandler, ASGIRequest  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import path  # noqa: E402

#: The clock `run` reads: wall time (`perf_counter`, the default) or, with `--clock process`,
#: this process's CPU time, which leaves out the time other processes on a shared machine
#: hold the CPU (it still includes their effect on caches).
CLOCK: list[Callable[[], float]] = [time.perf_counter]


def sync_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok", content_type="text/plain")


async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok", content_type="text/plain")


urlpatterns = [path("sync", sync_view), path("async", async_view)]

#: What a browser sends with a fetch() from the chat page, besides the session header.
BROWSER_HEADERS = {
    "Host": "chat.example.com",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept": "*/*",
    "Accept-Language": "en-GB,en;q=0.5",
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Referer": "https://chat.example.com/",
    "Connection": "keep-alive",
    "Sec-Fetch-Dest": "empty",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Site": "same-origin",
    "Priority": "u=4",
}

OURS = "freeplay_integrations.django.FreeplaySessionMiddleware"
GUID = "django_guid.middleware.guid_middleware"
OUR_HEADER = "X-Freeplay-Session-Id"
GUID_HEADER = "Correlation-ID"


def build(handler_class: Callable[[], Any], middleware: list[str]) -> Any:
    with override_settings(MIDDLEWARE=middleware):
        return handler_class()


# -- WSGI ------------------------------------------------------------------------------------


def environ(headers: dict[str, str]) -> dict[str, Any]:
    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/sync",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
    }
    for name, value in headers.items():
        base["HTTP_" + name.upper().replace("-", "_")] = value
    return base


def run_wsgi(handler: Any, headers: dict[str, str], requests: int) -> float:
    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> None:
        return None

    template = environ(headers)
    started = CLOCK[0]()
    for _ in range(requests):
        env = dict(template)
        env["wsgi.input"] = io.BytesIO(b"")
        response = handler(env, start_response)
        for _chunk in response:
            pass
        response.close()
    return (CLOCK[0]() - started) / requests * 1e6


# -- ASGI ------------------------------------------------------------------------------------


def scope(headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/async",
        "raw_path": b"/async",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }


async def run_asgi(handler: Any, headers: dict[str, str], requests: int) -> float:
    """Requests through the ASGI handler's async middleware chain and an async view.

    The server-facing part of `ASGIHandler.__call__` (reading the body into a temporary
    file, the disconnect-listening task, closing the response in a worker thread) is the
    same for every case and noisier than the middleware itself, so it is left out; the
    response's headers and cookies are encoded as `send_response` does.
    """
    request_scope = scope(headers)
    started = CLOCK[0]()
    for _ in range(requests):
        request = ASGIRequest(dict(request_scope), io.BytesIO(b""))
        response = await handler.get_response_async(request)
        encoded = [(k.encode("ascii"), v.encode("latin1")) for k, v in response.items()]
        encoded.extend(
            (b"Set-Cookie", c.output(header="").encode("ascii").strip())
            for c in response.cookies.values()
        )
        response.close()
    return (CLOCK[0]() - started) / requests * 1e6


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clock", choices=("wall", "process"), default="wall")
    args = parser.parse_args()
    if args.clock == "process":
        CLOCK[0] = time.process_time

    session_id = str(uuid.uuid4())
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "bare Django": ([], {}),
        "freeplay, valid ID in header": ([OURS], {OUR_HEADER: session_id}),
        "freeplay, no ID (new session)": ([OURS], {}),
        "django-guid, valid ID": ([GUID], {GUID_HEADER: session_id}),
        "django-guid, no ID": ([GUID], {}),
    }
    names = list(cases)
    for interface, handler_class in (("WSGI", WSGIHandler), ("ASGI", ASGIHandler)):
        for kind, extra in (("minimal request", {}), ("browser-like request", BROWSER_HEADERS)):
            handlers = {
                name: (build(handler_class, middleware), {**extra, **headers})
                for name, (middleware, headers) in cases.items()
            }
            rounds = measure(interface, handlers, args.requests, args.rounds)
            print(f"\n{interface} handler, {kind}: {args.requests} requests x {args.rounds} rounds")
            print(f"{'case':34} {'us/request':>10} {'overhead us':>12} {'fastest round':>14}")
            for pick, label in ((statistics.median, "median"), (min, "fastest")):
                per_request = {name: pick(values) for name, values in rounds.items()}
                base = per_request["bare Django"]
                if pick is statistics.median:
                    fastest = {name: min(values) for name, values in rounds.items()}
                    for name, value in per_request.items():
                        print(
                            f"{name:34} {value:10.2f} {value - base:12.2f} "
                            f"{fastest[name] - fastest['bare Django']:14.2f}"
                        )
                valid = (per_request[names[1]] - base) / (per_request[names[3]] - base)
                new = (per_request[names[2]] - base) / (per_request[names[4]] - base)
                print(
                    f"ratio of overheads ({label} rounds), freeplay / django-guid: "
                    f"valid ID {valid:.2f}, no ID {new:.2f}"
                )


def measure(
    interface: str, handlers: dict[str, tuple[Any, dict[str, str]]], requests: int, rounds: int
) -> dict[str, list[float]]:
    """Microseconds per request of each case's rounds, rounds interleaved."""
    results: dict[str, list[float]] = {name: [] for name in handlers}
    if interface == "WSGI":
        for handler, headers in handlers.values():  # warm-up
            run_wsgi(handler, headers, 200)
        for _ in range(rounds):
            for name, (handler, headers) in handlers.items():
                results[name].append(run_wsgi(handler, headers, requests))
    else:

        async def run_all() -> None:
            for handler, headers in handlers.values():  # warm-up
                await run_asgi(handler, headers, 200)
            for _ in range(rounds):
                for name, (handler, headers) in handlers.items():
                    results[name].append(await run_asgi(handler, headers, requests))

        asyncio.run(run_all())
    return results


if __name__ == "__main__":
    main()
