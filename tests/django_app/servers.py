"""Real servers on loopback for the Django tests: uvicorn (ASGI) and waitress (WSGI),
each in a background thread, serving a Django handler built for the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
import waitress

__all__ = ["serve_asgi", "serve_wsgi"]


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-django", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop"


@contextmanager
def serve_wsgi(app: Any, *, threads: int) -> Iterator[str]:
    """Serve `app` with waitress (`threads` reused worker threads); yield its base URL."""
    server = waitress.create_server(
        app, host="127.0.0.1", port=0, threads=threads, connection_limit=1000
    )
    thread = threading.Thread(target=server.run, name="waitress-django", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"  # type: ignore[union-attr]
    finally:
        server.task_dispatcher.shutdown()
        server.close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "waitress did not stop"
