"""`make demo`'s orchestrator, `example_apps/run_demo.py`, run as a person would run it.

Each test starts the script as a process (it starts the local Freeplay server and an app
as its own children), talks to the app over HTTP, reads the local Freeplay server's JSON
API, then stops the script with SIGINT like Ctrl-C and checks that everything stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from example_apps.run_demo import APPS, ROOT
from example_apps.testing import local_freeplay
from freeplay_integrations import current_session
from freeplay_integrations.local import LocalFreeplay

SCRIPT = ROOT / "example_apps" / "run_demo.py"
HEADER = "X-Freeplay-Session-Id"
READY = "Press Ctrl-C to stop."
STOPPED = "Demo stopped."
TIMEOUT = 30.0


@pytest.fixture
def freeplay_local() -> Iterator[LocalFreeplay]:
    """The local Freeplay with the chat's prompt templates (the chat fetches its prompts)."""
    with local_freeplay() as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPLAY_", "DEMO_"))}
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(key, None)  # the local responder: no network
    env["DEMO_TOKEN_DELAY"] = "0"
    env.update(extra)
    return env


@contextmanager
def run_demo(log: Path, *args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:  # a failed test: stop it (and its children) cleanly
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_text(log: Path, text: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        if process.poll() is not None:
            pytest.fail(f"run_demo.py exited {process.returncode} before {text!r}:\n{content}")
        time.sleep(0.05)
    pytest.fail(f"run_demo.py did not print {text!r}:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    return process.wait(TIMEOUT)


def chat_twice(app_url: str) -> str:
    """Two turns through the app's HTTP API, like the page does; returns the session ID."""
    with httpx.Client(base_url=app_url, timeout=10) as http:
        page = http.get("/")
        assert page.status_code == 200 and "chat.js" in page.text
        ids = set()
        for message in ("Hello", "And then?"):
            response = http.post("/api/chat", json={"message": message})
            assert response.status_code == 200
            assert "event: done" in response.text
            ids.add(response.headers["x-freeplay-session-id"])
    [session_id] = ids
    return session_id


@pytest.mark.parametrize("app", APPS)
def test_demo_serves_the_app_recording_into_the_local_freeplay_server(
    app: str, tmp_path: Path
) -> None:
    app_port, freeplay_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    args = ("--app", app, "--port", str(app_port), "--freeplay-port", str(freeplay_port))
    with run_demo(log, *args, "--db", str(tmp_path / "fp.sqlite3"), env=demo_env()) as process:
        output = wait_for_text(log, READY, process)
        app_url, freeplay_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{freeplay_port}"
        assert f"Example chat ({app}): {app_url}/" in output
        assert f"Local Freeplay:  {freeplay_url}/" in output

        session_id = chat_twice(app_url)
        conversation = httpx.get(f"{app_url}/api/conversation", timeout=10).json()
        assert conversation["framework"].lower() == app
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sessions = httpx.get(f"{freeplay_url}/ui/api/sessions", timeout=5).json()
            # Delivered in the background, concurrently: wait for the completions too.
            if sessions and (sessions[0]["trace_count"], sessions[0]["completion_count"]) == (2, 4):
                break
            time.sleep(0.05)
        [session] = sessions
        assert session["id"] == session_id
        assert (session["trace_count"], session["completion_count"]) == (2, 4)
        page = httpx.get(f"{freeplay_url}/sessions/{session_id}", timeout=5)
        assert page.status_code == 200 and "chat_turn" in page.text

        assert stop(process) == 0
    assert STOPPED in log.read_text()
    assert is_free(app_port) and is_free(freeplay_port)  # both children stopped
    assert (tmp_path / "fp.sqlite3").exists()  # the file database the page reads
    assert current_session() is None


def test_with_a_freeplay_key_the_app_records_there_and_no_local_server_starts(
    freeplay_local: LocalFreeplay, tmp_path: Path
) -> None:
    # Stands in for real Freeplay: the key, base URL and project come from the environment.
    app_port, unused_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    env = demo_env(**freeplay_local.env())
    args = ("--port", str(app_port), "--freeplay-port", str(unused_port))
    with run_demo(log, *args, env=env) as process:
        output = wait_for_text(log, READY, process)
        assert "Local Freeplay" not in output
        assert f"Recording into Freeplay at {freeplay_local.api_base}" in output
        assert not is_free(app_port) and is_free(unused_port)
        session_id = chat_twice(f"http://127.0.0.1:{app_port}")
        freeplay_local.wait_for(lambda: len(freeplay_local.traces(session_id)) == 2)
        assert stop(process) == 0
    assert [s["id"] for s in freeplay_local.sessions()] == [session_id]


@pytest.mark.parametrize("app", APPS)
def test_with_recording_otel_the_model_calls_arrive_as_spans_in_their_session(
    app: str, freeplay_local: LocalFreeplay, tmp_path: Path
) -> None:
    # No record() call: the OpenAI SDK (instrumented with OpenInference) calls the local
    # OpenAI-compatible server, and its spans reach Freeplay's OTLP route with the session.
    app_port = free_port()
    log = tmp_path / "demo.log"
    env = demo_env(**freeplay_local.env())
    args = ("--app", app, "--port", str(app_port), "--recording", "otel")
    with run_demo(log, *args, env=env) as process:
        output = wait_for_text(log, READY, process)
        assert "OpenTelemetry spans (OpenInference), no record() call" in output
        app_url = f"http://127.0.0.1:{app_port}"
        session_id = chat_twice(app_url)
        freeplay_local.wait_for(lambda: len(freeplay_local.spans(session_id)) == 4, timeout=15)
        # The thumbs rate the turn's trace: the answer has no completion ID in the app.
        with httpx.Client(base_url=app_url, timeout=10, headers={HEADER: session_id}) as http:
            [turn, _] = http.get("/api/conversation").json()["turns"]
            assert turn["completion_id"] is None
            vote = {"completion_id": None, "trace_id": turn["trace_id"], "vote": "up"}
            assert http.post("/api/feedback", json=vote).status_code == 200
            unknown = {**vote, "trace_id": str(uuid.uuid4())}
            assert http.post("/api/feedback", json=unknown).status_code == 404
        freeplay_local.wait_for(lambda: freeplay_local.feedback(turn["trace_id"], kind="trace"))
        assert stop(process) == 0
    spans = freeplay_local.spans(session_id)
    traces = {t["id"] for t in freeplay_local.traces(session_id)}
    assert len(traces) == 2
    assert freeplay_local.completions() == []  # nothing came through record()
    assert freeplay_local.spans("no session") == []
    for span in spans:
        attributes = span["attributes"]
        assert attributes["openinference.span.kind"] == "LLM"
        assert attributes["freeplay.session.id"] == session_id
        assert attributes["session.id"] == session_id
        assert attributes["freeplay.trace.id"] in traces
        assert attributes["llm.model_name"] == "local-echo-1"
        assert attributes["llm.token_count.completion"] > 0
    # Two LLM calls per turn (the rewrite, then the answer), in each of the two traces.
    per_trace = [s["attributes"]["freeplay.trace.id"] for s in spans]
    assert sorted(per_trace.count(t) for t in traces) == [2, 2]
    assert [s["id"] for s in freeplay_local.sessions()] == [session_id]


def test_a_freeplay_key_without_a_project_is_refused_with_what_to_set(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with run_demo(log, env=demo_env(FREEPLAY_API_KEY="a-real-key")) as process:
        assert process.wait(TIMEOUT) == 1
    output = log.read_text()
    assert "also set FREEPLAY_PROJECT_ID" in output
    assert "unset FREEPLAY_API_KEY" in output


def test_a_busy_port_is_reported_with_the_option_to_change_it(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with run_demo(log, "--port", str(port), env=demo_env()) as process:
            assert process.wait(TIMEOUT) == 1
    output = log.read_text()
    assert f"Port {port} on 127.0.0.1 is not free" in output
    assert "--port" in output


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal: Linux only")
def test_children_do_not_outlive_a_killed_demo(tmp_path: Path) -> None:
    app_port, freeplay_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    args = ("--app", "flask", "--port", str(app_port), "--freeplay-port", str(freeplay_port))
    with run_demo(log, *args, "--db", ":memory:", env=demo_env()) as process:
        wait_for_text(log, READY, process)
        process.kill()  # no chance to stop its children itself
        process.wait()
        deadline = time.monotonic() + TIMEOUT
        while not (is_free(app_port) and is_free(freeplay_port)):
            assert time.monotonic() < deadline, "a child outlived the killed demo"
            time.sleep(0.05)
