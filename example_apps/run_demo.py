#!/usr/bin/env python3
"""`make demo`: an example chat app recording into the local Freeplay server.

    python example_apps/run_demo.py                 # FastAPI app on :8000, Freeplay page on :8765
    python example_apps/run_demo.py --app flask     # or django
    python example_apps/run_demo.py --port 8001 --freeplay-port 8766 --db :memory:
    python example_apps/run_demo.py --recording otel  # model calls as OpenTelemetry spans

Starts two child processes, the local Freeplay server (`python -m
freeplay_integrations.local`) and the chosen app, points the app at the local server, prints
both URLs, and on Ctrl-C (or SIGTERM) stops the app, then the server, and exits 0.

`--recording otel` (`make demo RECORDING=otel`): the app makes no `record()` call; its
model calls go through the OpenAI SDK, instrumented with OpenInference, and reach Freeplay
as OpenTelemetry spans carrying the session (`example_apps/common/otel.py`). Without
`OPENAI_API_KEY`, a third child serves the local responder over the OpenAI API
(`example_apps/common/openai_local.py`) and the SDK is pointed at it.

With `FREEPLAY_API_KEY` set (and `FREEPLAY_PROJECT_ID`, and `FREEPLAY_API_BASE` for your
Freeplay domain), no local server is started: the app records into real Freeplay.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from freeplay_integrations.local import DEFAULT_PROJECT_ID

#: The repository root: the children run there, so `example_apps` is importable.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: its own folder is on the path, not ROOT
    sys.path.insert(0, str(ROOT))

from example_apps.common.llm import ENV_RESPONDER  # noqa: E402
from example_apps.common.openai_local import MODEL as LOCAL_OPENAI_MODEL  # noqa: E402
from example_apps.common.otel import ENV_RECORDING, RECORDINGS  # noqa: E402

__all__ = ["APPS", "ROOT", "app_command", "main"]

APPS = ("fastapi", "flask", "django")
LOCAL_API_KEY = "freeplay-local-key"
LOCAL_PROJECT_ID = DEFAULT_PROJECT_ID
#: The key the OpenAI SDK sends to the local OpenAI-compatible server (which ignores it).
LOCAL_OPENAI_KEY = "openai-local-key"
#: Milliseconds between span exports (`--recording otel`): the page updates within a second.
OTEL_EXPORT_DELAY_MS = "500"
#: The chat's prompt templates (example_apps.common.chat.TEMPLATES_DIR), served locally.
TEMPLATES_DIR = ROOT / "example_apps" / "common" / "templates"
#: Seconds each child gets to stop after SIGINT before it is killed.
STOP_TIMEOUT = 10.0
START_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


def app_command(app: str, host: str, port: int) -> list[str]:
    """The command serving example app `app`; each app's README shows the same."""
    python = sys.executable
    if app == "fastapi":
        return [
            python, "-m", "uvicorn", "--factory", "example_apps.fastapi_chat.app:create_app",
            "--host", host, "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
    if app == "flask":
        return [
            python, "-m", "flask", "--app", "example_apps.flask_chat.app",
            "run", "--host", host, "--port", str(port), "--no-reload", "--no-debugger",
        ]  # fmt: skip
    if app == "django":
        return [
            python, "example_apps/django_chat/manage.py", "runserver", f"{host}:{port}",
            "--noreload", "--settings", "example_apps.django_chat.settings",
        ]  # fmt: skip
    raise ValueError(f"unknown app {app!r}: choose one of {', '.join(APPS)}")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: the child gets SIGTERM if this script dies without stopping it (SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _spawn(command: list[str], env: dict[str, str], **options: Any) -> subprocess.Popen[bytes]:
    # Children get their own process group: Ctrl-C reaches only this script, which then
    # stops them in order (the app first, so that its last recordings arrive).
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        **options,
    )


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port(host: str, port: int, option: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(
                f"Port {port} on {host} is not free ({exc.strerror}). Stop what uses it, or "
                f"pass {option} with another port (0 picks a free one), e.g. "
                f'make demo DEMO_ARGS="{option} {port + 1}".'
            ) from None


def _wait_until_up(
    url: str, process: subprocess.Popen[bytes], what: str, stopping: threading.Event
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if stopping.is_set():
            raise SystemExit(0)
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode} while starting.")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within {START_TIMEOUT:.0f} s.")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ask a child to stop like Ctrl-C would (it flushes what it records), then insist."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGINT)
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_demo.py",
        description="Serve an example chat app that records into the local Freeplay server.",
    )
    parser.add_argument("--app", choices=APPS, default="fastapi", help="default: %(default)s")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument(
        "--port", type=int, default=8000, help="chat app port, 0 for any (default: %(default)s)"
    )
    parser.add_argument(
        "--freeplay-port",
        type=int,
        default=8765,
        help="local Freeplay port, 0 for any (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        default="freeplay-local.sqlite3",
        help="local Freeplay's SQLite file, :memory: to keep nothing (default: ./%(default)s)",
    )
    parser.add_argument(
        "--recording",
        choices=RECORDINGS,
        default="record",
        help="record: record() calls; otel: OpenTelemetry spans from the OpenInference-"
        "instrumented OpenAI SDK (default: %(default)s)",
    )
    return parser


def _start_openai_local(
    host: str,
    env: dict[str, str],
    children: list[tuple[str, subprocess.Popen[bytes]]],
    stopping: threading.Event,
) -> None:
    """Serve the local responder over the OpenAI API and point the app's SDK at it."""
    port = _free_port(host)
    command = [
        sys.executable, "-m", "example_apps.common.openai_local",
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    process = _spawn(command, env, stdout=subprocess.DEVNULL)
    children.append(("the local OpenAI-compatible server", process))
    url = f"http://{host}:{port}/v1"
    _wait_until_up(f"{url}/models", process, "The local OpenAI-compatible server", stopping)
    env.update(
        OPENAI_BASE_URL=url, OPENAI_API_KEY=LOCAL_OPENAI_KEY, OPENAI_MODEL=LOCAL_OPENAI_MODEL
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    host = args.host
    app_port = args.port or _free_port(host)
    _check_port(host, app_port, "--port")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        freeplay_url = None
        if env.get("FREEPLAY_API_KEY"):
            if not env.get("FREEPLAY_PROJECT_ID"):
                raise SystemExit(
                    "FREEPLAY_API_KEY is set, so the demo records into your Freeplay account: "
                    "also set FREEPLAY_PROJECT_ID (and FREEPLAY_API_BASE, e.g. "
                    "https://<your-domain>.freeplay.ai/api), or unset FREEPLAY_API_KEY to use "
                    "the local Freeplay server."
                )
        else:
            freeplay_port = args.freeplay_port or _free_port(host)
            _check_port(host, freeplay_port, "--freeplay-port")
            db = args.db if args.db == ":memory:" else str(Path(args.db).resolve())
            command = [
                sys.executable, "-m", "freeplay_integrations.local", "--host", host,
                "--port", str(freeplay_port), "--db", db, "--api-key", LOCAL_API_KEY,
                "--project-id", LOCAL_PROJECT_ID,
                "--templates", str(TEMPLATES_DIR),
            ]  # fmt: skip
            local = _spawn(command, env, stdout=subprocess.DEVNULL)
            children.append(("the local Freeplay server", local))
            freeplay_url = f"http://{host}:{freeplay_port}"
            _wait_until_up(
                f"{freeplay_url}/ui/api/health", local, "The local Freeplay server", stopping
            )
            env.update(
                FREEPLAY_API_KEY=LOCAL_API_KEY,
                FREEPLAY_API_BASE=f"{freeplay_url}/api",
                FREEPLAY_PROJECT_ID=LOCAL_PROJECT_ID,
                DEMO_FREEPLAY_UI=freeplay_url,
            )
        if args.recording == "otel":
            env[ENV_RECORDING] = "otel"
            env[ENV_RESPONDER] = "openai"
            env.setdefault("OTEL_BSP_SCHEDULE_DELAY", OTEL_EXPORT_DELAY_MS)
            if not env.get("OPENAI_API_KEY"):
                _start_openai_local(host, env, children, stopping)
        app = _spawn(app_command(args.app, host, app_port), env)
        children.insert(0, (f"the {args.app} app", app))
        app_url = f"http://{host}:{app_port}"
        _wait_until_up(f"{app_url}/healthz", app, f"The {args.app} app", stopping)

        print(f"\nExample chat ({args.app}): {app_url}/", flush=True)
        if args.recording == "otel":
            print("Model calls: OpenTelemetry spans (OpenInference), no record() call")
        if freeplay_url is not None:
            print(f"Local Freeplay:  {freeplay_url}/  (sessions, traces, completions)")
        else:
            print(f"Recording into Freeplay at {env.get('FREEPLAY_API_BASE', 'its default')}")
        print("Press Ctrl-C to stop.", flush=True)
        while not stopping.wait(0.2):
            for name, process in children:
                if process.poll() is not None:
                    print(f"{name} exited with status {process.returncode}; stopping.")
                    status = 1
                    stopping.set()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print(exc.code, file=sys.stderr)
            status = 1
    finally:
        for _, process in children:  # the app first, then the server
            _stop(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status == 0:
        print("Demo stopped.", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
