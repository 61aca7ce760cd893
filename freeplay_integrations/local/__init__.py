"""A local server that speaks the Freeplay recording API, for demos, development and tests.

It answers every endpoint the SDK's recording calls use with the SDK's exact status codes,
stores what it receives in SQLite, and shows sessions with their traces and completions on a
web page that updates live::

    python -m freeplay_integrations.local            # http://127.0.0.1:8765/

In-process (what the `freeplay_local` pytest fixture gives you)::

    with LocalFreeplay() as server:                  # free loopback port, in-memory DB
        client = server.client()                     # a freeplay.Freeplay pointed at it
        ...
        server.wait_for(lambda: server.completions())

Stdlib only: it needs nothing beyond the package's own dependencies.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .._validation import check_project_id
from ._faults import Faults
from ._http import LocalHTTPServer, ReceivedRequest, RequestLog
from ._routes import API_PREFIX, Api
from ._store import MEMORY, Store
from ._templates import TemplateFolder

if TYPE_CHECKING:
    from freeplay import Freeplay

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_DB",
    "DEFAULT_PORT",
    "DEFAULT_PROJECT_ID",
    "Faults",
    "LocalFreeplay",
    "ReceivedRequest",
    "main",
]

#: API key the local server accepts unless told otherwise.
DEFAULT_API_KEY = "freeplay-local-key"
#: The one project a server knows unless given others (a UUID, like Freeplay's project IDs).
DEFAULT_PROJECT_ID = "8c6f3e2a-1d4b-4f7a-9b2e-5a0c7d1e3f64"
#: Port of `python -m freeplay_integrations.local`.
DEFAULT_PORT = 8765
#: Database file of `python -m freeplay_integrations.local`, relative to the working directory.
DEFAULT_DB = "freeplay-local.sqlite3"

_T = TypeVar("_T")

# How often the serving thread checks for stop(): bounds how long stop() takes.
_POLL_INTERVAL = 0.02


class LocalFreeplay:
    """A Freeplay-compatible recording server on a loopback port, with a queryable store.

    `port=0` picks a free port (the bound port is kept across `stop()`/`start()`).
    `db_path=None` keeps everything in memory; a file path keeps it across restarts.
    Query methods return plain dicts and lists, safe to use from any thread.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        db_path: str | os.PathLike[str] | None = None,
        api_key: str = DEFAULT_API_KEY,
        project_id: str = DEFAULT_PROJECT_ID,
        projects: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        templates: str | os.PathLike[str] | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise ValueError("LocalFreeplay needs a non-empty api_key")
        project_id = check_project_id(project_id, "LocalFreeplay project_id")
        known = [project_id] + [check_project_id(p, "LocalFreeplay projects") for p in projects]
        self._projects = {pid: "Local project" if pid == project_id else "Project" for pid in known}
        self._allowed_hosts = frozenset(host.strip().lower() for host in allowed_hosts)
        self._templates = None if templates is None else TemplateFolder(templates)
        self._host = host
        self._port = port
        self._api_key = api_key
        self._project_id = project_id
        self._store = Store(MEMORY if db_path is None else os.fspath(db_path))
        self._faults = Faults()
        self._lock = threading.Lock()
        self._server: LocalHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log = RequestLog()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"<LocalFreeplay {state} db={self._store.path!r}>"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> LocalFreeplay:
        """Start serving in a daemon thread; returns self. Starting twice is a no-op."""
        with self._lock:
            if self._server is not None:
                return self
            server = LocalHTTPServer(
                (self._host, self._port),
                api=Api(self._store, self._api_key, self._projects, self._templates),
                faults=self._faults,
                log=self._log,
                allowed_hosts=self._allowed_hosts,
            )
            self._port = server.server_address[1]
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"freeplay-local:{self._port}",
                daemon=True,
            )
            self._server = server
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections. Stored data stays queryable."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        self._faults.wake()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def close(self) -> None:
        """Stop serving and close the database."""
        self.stop()
        self._store.close()

    def __enter__(self) -> LocalFreeplay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- configuration -----------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the server and its web page, e.g. `http://127.0.0.1:8765`."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def api_base(self) -> str:
        """What to pass as the SDK's `api_base` (or set as `FREEPLAY_API_BASE`)."""
        return self.url + API_PREFIX

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def project_id(self) -> str:
        """The default project (what `env()` exports)."""
        return self._project_id

    def add_project(self, project_id: str, name: str = "Project") -> str:
        """Make the server know another project (a UUID); returns its ID in lower case."""
        project_id = check_project_id(project_id, "add_project(project_id)")
        self._projects.setdefault(project_id, name)
        return project_id

    @property
    def projects(self) -> list[str]:
        """Every project ID this server knows; the API answers 404 for any other."""
        return list(self._projects)

    @property
    def db_path(self) -> str:
        return self._store.path

    @property
    def faults(self) -> Faults:
        """Fault injection for the API endpoints: `fail_next`, `fail_for`, `hang`, `latency`..."""
        return self._faults

    def env(self) -> dict[str, str]:
        """`FREEPLAY_API_KEY`, `FREEPLAY_API_BASE` and `FREEPLAY_PROJECT_ID` for this server."""
        return {
            "FREEPLAY_API_KEY": self._api_key,
            "FREEPLAY_API_BASE": self.api_base,
            "FREEPLAY_PROJECT_ID": self._project_id,
        }

    def client(self) -> Freeplay:
        """A `freeplay.Freeplay` client that records into this server."""
        from freeplay import Freeplay

        return Freeplay(freeplay_api_key=self._api_key, api_base=self.api_base)

    # -- queries -----------------------------------------------------------------------

    def sessions(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Sessions, most recently active first, with completion and trace counts."""
        return self._store.sessions(include_deleted=include_deleted)

    def session(self, session_id: str) -> dict[str, Any] | None:
        """One session (`"deleted": True` after `sessions.delete`), or None if never seen."""
        return self._store.session(session_id.lower())

    def completions(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Completions in arrival order, of one session or of all."""
        return self._store.completions(None if session_id is None else session_id.lower())

    def completion(self, completion_id: str) -> dict[str, Any] | None:
        return self._store.completion(completion_id.lower())

    def traces(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Recorded traces in arrival order (a trace is recorded when it ends)."""
        return self._store.traces(None if session_id is None else session_id.lower())

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """One trace; `"recorded": False` if only updates for it have arrived so far."""
        return self._store.trace(trace_id.lower())

    def spans(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """OpenTelemetry spans received at `/api/v0/otel/v1/traces`, in arrival order: all,
        or one session's (`"no session"`: the spans without `freeplay.session.id`)."""
        return self._store.spans(None if session_id is None else session_id.lower())

    def feedback(self, target_id: str, *, kind: str = "completion") -> dict[str, Any]:
        """Customer feedback for a completion (or `kind="trace"`), even if it is not stored."""
        return self._store.feedback(kind, target_id.lower())

    def requests_received(self) -> list[ReceivedRequest]:
        """Every API request answered (or reset, status 0), oldest first. Page views excluded."""
        return self._log.requests()

    @property
    def request_count(self) -> int:
        """Number of API requests received (faulted ones included)."""
        return len(self._log)

    @property
    def duplicates(self) -> int:
        """Recordings received again with an already stored completion or trace ID."""
        return self._log.duplicates

    def reset(self) -> None:
        """Forget everything: stored data, request log, duplicate count, faults."""
        self._faults.clear()
        self._store.clear()
        self._log.clear()

    def wait_for(
        self, predicate: Callable[[], _T], timeout: float = 5.0, interval: float = 0.01
    ) -> _T:
        """Call `predicate` until it returns something truthy, and return that.

        For recordings sent in the background::

            server.wait_for(lambda: len(server.completions(sid)) == 2)

        Raises `TimeoutError` (with the last value) after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"condition still false after {timeout} s (last value: {value!r});"
                    f" {self.request_count} API requests received: {self.requests_received()}"
                )
            time.sleep(interval)


# -- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m freeplay_integrations.local",
        description="Run a local Freeplay-compatible recording server with a web page.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port, 0 for any (default: %(default)s)"
    )
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        help="SQLite file, or :memory: to keep nothing (default: ./%(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"key clients must send (default: $FREEPLAY_API_KEY, else {DEFAULT_API_KEY})",
    )
    parser.add_argument(
        "--project-id",
        default=None,
        help="default project ID, a UUID (default: $FREEPLAY_PROJECT_ID, else "
        f"{DEFAULT_PROJECT_ID})",
    )
    parser.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="PROJECT_ID",
        help="another project ID the server knows (repeatable); others answer 404",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name served besides loopback ones (repeatable), e.g. for --host 0.0.0.0",
    )
    parser.add_argument(
        "--templates",
        default=None,
        metavar="FOLDER",
        help="serve prompt templates from FOLDER (holding freeplay/prompts/<project>/<env>/"
        "<name>.json, the SDK's FilesystemTemplateResolver format)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m freeplay_integrations.local`; serves until Ctrl-C/SIGTERM."""
    args = _parser().parse_args(argv)
    env_key = os.environ.get("FREEPLAY_API_KEY", "").strip()
    api_key = args.api_key or env_key or DEFAULT_API_KEY
    project_id = args.project_id or os.environ.get("FREEPLAY_PROJECT_ID") or DEFAULT_PROJECT_ID
    db_path = None if args.db == MEMORY else os.path.abspath(args.db)
    try:
        server = LocalFreeplay(
            host=args.host,
            port=args.port,
            db_path=db_path,
            api_key=api_key,
            project_id=project_id,
            projects=args.project,
            allowed_hosts=args.allowed_host,
            templates=args.templates,
        ).start()
    except ValueError as exc:
        print(f"Cannot start the local Freeplay server: {exc}")
        return 1
    except sqlite3.DatabaseError as exc:
        print(f"Cannot open {db_path} as the local Freeplay database: {exc}")
        print("Pass --db with another file (it is created if missing), or --db :memory:.")
        return 1
    except OSError as exc:
        print(f"Cannot start the local Freeplay server on {args.host}:{args.port}: {exc}")
        print("Use --port to pick another port (0 for any free one).")
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    shown_key = api_key if api_key == args.api_key or not env_key else "$FREEPLAY_API_KEY"
    print(f"Local Freeplay: {server.url}/", flush=True)
    print("Record into it with:")
    print(f"  FREEPLAY_API_BASE={server.api_base}")
    print(f"  FREEPLAY_API_KEY={shown_key}")
    print(f"  FREEPLAY_PROJECT_ID={server.project_id}")
    for other in server.projects[1:]:
        print(f"  (also serves project {other})")
    print(f"Data: {db_path or 'in memory only'}. Press Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
        print("Local Freeplay stopped.", file=sys.stderr, flush=True)
    return 0
