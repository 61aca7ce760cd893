"""Real parts for the Celery route's tests and figures: Redis, a Celery worker, a web app.

- `RedisServer`: `redis-server` (the Debian package) on a free loopback port and a unix
  socket, data in a temporary directory, no persistence; stopped (or SIGKILLed) by the
  caller.
- `Worker`: `celery -A celery_apps worker` with the default prefork pool, delivering into the
  Freeplay named by `FREEPLAY_API_BASE`; its own spool in the work directory.
- `Web`: this file run as `python bench/celery_apps.py web`, under waitress: the WSGI
  middleware, and `GET /record?n=K` records K completions with `configure_recording(via=app)`
  (or in-process with `CELERY_ROUTE_VIA=in-process`), appending each completion ID to
  `RECORD_LOG` once its `record()` has returned, so a judge knows what was accepted even
  after a SIGKILL.

The Celery app is built on first access of `celery_apps.app` (from `CELERY_BROKER_URL`),
not at import.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

ENV_BROKER = "CELERY_BROKER_URL"
ENV_VISIBILITY = "CELERY_VISIBILITY_TIMEOUT"
ENV_VIA = "CELERY_ROUTE_VIA"
ENV_RECORD_LOG = "RECORD_LOG"

__all__ = ["RedisServer", "Web", "Worker", "free_port", "wait_until"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still false after {timeout} s (last: {value!r})")
        time.sleep(interval)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# -- the Celery app (worker and web process) -------------------------------------------


def make_app() -> Any:
    from celery import Celery

    from freeplay_integrations.celery import register_delivery_task

    app = Celery("freeplay_celery_route", broker=os.environ[ENV_BROKER])
    app.conf.update(
        broker_transport_options={
            "visibility_timeout": float(os.environ.get(ENV_VISIBILITY, "3600")),
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_ignore_result=True,
    )
    register_delivery_task(app)
    return app


def __getattr__(name: str) -> Any:  # `celery -A celery_apps` looks up `app`
    if name == "app":
        app = make_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)


# -- processes -------------------------------------------------------------------------


class RedisServer:
    """`redis-server` on a free loopback port (`url`) and a unix socket (`socket_url`), in a
    temporary directory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="freeplay-redis-")
        self.socket_path = os.path.join(self.dir, "redis.sock")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--unixsocket", self.socket_path,
                "--unixsocketperm", "700",
                "--dir", self.dir,
                "--save", "",
                "--appendonly", "no",
                "--logfile", os.path.join(self.dir, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.ping, 10, "redis-server answers PING")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str:
        """The same server over its unix-domain socket (kombu's `redis+socket://`)."""
        return f"redis+socket://{self.socket_path}"

    def ping(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _env(freeplay_env: dict[str, str], broker: str, workdir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(freeplay_env)
    env[ENV_BROKER] = broker
    env["FREEPLAY_SPOOL_PATH"] = str(workdir / f"spool-{uuid.uuid4().hex[:6]}.jsonl")
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


class Worker:
    """A real `celery worker` (prefork pool) for `celery_apps.app`."""

    def __init__(
        self,
        freeplay_env: dict[str, str],
        broker: str,
        workdir: Path,
        *,
        concurrency: int = 2,
        visibility_timeout: float = 3600,
    ) -> None:
        self.log_path = workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
        env = _env(freeplay_env, broker, workdir, **{ENV_VISIBILITY: str(visibility_timeout)})
        self.spool = Path(env["FREEPLAY_SPOOL_PATH"])
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "celery_apps", "worker",
                "--pool", "prefork", "--concurrency", str(concurrency),
                "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=BENCH,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.concurrency = concurrency
        wait_until(self.ready, 60, "celery worker ready")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"celery worker exited:\n{self.log()}")
        return b" ready." in self.log_path.read_bytes() and len(self.pool()) >= self.concurrency

    def pool(self) -> list[int]:
        """PIDs of the pool processes."""
        return _children(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once (a lost node)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # warm shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # pool leftovers
        self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Web:
    """The web process (waitress), recording through the route; killed by the caller."""

    def __init__(
        self, freeplay_env: dict[str, str], broker: str, workdir: Path, *, via: str = "celery"
    ) -> None:
        self.port = free_port()
        self.record_log = workdir / f"accepted-{uuid.uuid4().hex[:6]}.log"
        self.log_path = workdir / f"web-{uuid.uuid4().hex[:6]}.log"
        env = _env(
            freeplay_env,
            broker,
            workdir,
            **{ENV_VIA: via, ENV_RECORD_LOG: str(self.record_log)},
        )
        self.spool = Path(env["FREEPLAY_SPOOL_PATH"])
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in kill()/stop()
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "celery_apps.py"), "web", str(self.port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._up, 30, "web process listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"web process exited:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def accepted(self) -> list[str]:
        """Completion IDs whose `record()` returned, in order (complete lines only)."""
        if not self.record_log.exists():
            return []
        text = self.record_log.read_text()
        return [line for line in text.split("\n")[:-1] if line]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()
        elif not self._log.closed:
            self._log.close()

    def __enter__(self) -> Web:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the web process -------------------------------------------------------------------


def _web_main(port: int) -> int:
    from urllib.parse import parse_qs

    import waitress

    from freeplay_integrations import configure_recording, record
    from freeplay_integrations.wsgi import FreeplaySessionMiddleware

    if os.environ.get(ENV_VIA, "celery") == "celery":
        configure_recording(via=__getattr__("app"))
    log_fd = os.open(os.environ[ENV_RECORD_LOG], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def view(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        n = int(parse_qs(environ.get("QUERY_STRING", "")).get("n", ["1"])[0])
        for i in range(n):
            response = record(
                all_messages=[
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"answer {i} " + "x" * 200},
                ],
                inputs={"i": i},
            )
            os.write(log_fd, f"{response.completion_id}\n".encode())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = FreeplaySessionMiddleware(view)
    waitress.serve(app, host="127.0.0.1", port=port, threads=4, _quiet=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "web":
        sys.exit(_web_main(int(sys.argv[2])))
    print("usage: python bench/celery_apps.py web PORT", file=sys.stderr)
    sys.exit(2)
