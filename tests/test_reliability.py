"""Small versions of the scenarios of `bench/reliability.py` (RELIABILITY.md's figures come
from the full-size runs): each adapter under its real server, in its own process, driven by
a load process, recording into the local Freeplay server.

- Load, then the same load while Freeplay answers 500, 503, 429, resets and hangs: every
  recording lands in its conversation's session under its turn's trace (plain views,
  streamed bodies, background tasks), none is lost (what was spooled is replayed), none is
  stored twice, no session or trace is left bound in the event loop, any worker thread or
  any context, `flush(timeout)` returns within its timeout, latency stays close.
- SIGTERM mid-run with Freeplay hung: what the app recorded is delivered or in the spool
  when the process is gone, whatever the server (uvicorn, waitress); the replay delivers it.
  Also for Django under the bare `uvicorn` command with the lifespan RELIABILITY.md gives.
- The checks themselves catch what they look for: a misplaced, lost or doubled recording,
  a session left bound in a worker thread.
- The recorder's SIGTERM handler: only over Python's default action, only from the main
  thread; a bare script that gets SIGTERM spools what it queued.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.reliability import ROOT, App, Outcome, Size, judge, run_scenario
from bench.reliability_apps import ADAPTERS, CONTROL_PREFIX, DEFAULT_ADAPTERS, ENV_PLANT_LEAK
from freeplay_integrations import record, session_scope
from freeplay_integrations._recording import ENV_SPOOL_PATH, SIGTERM_EXIT_STATUS
from freeplay_integrations._recording._spool import append_lines, spool_line
from freeplay_integrations.local import LocalFreeplay
from tests._capture import capturing_client

SMALL = Size(
    conversations=40,
    requests=3,
    concurrency=20,
    think=1.5,
    outage=0.4,
    burst=4,
    flush_timeout=30.0,
    shutdown_timeout=1.0,
    threads=4,
    sigterm_conversations=40,
)
SIGTERM_RUN = Size(
    conversations=40,
    requests=3,
    concurrency=20,
    think=0.3,
    shutdown_timeout=1.0,
    threads=4,
    sigterm_conversations=40,
)


def assert_clean(outcome: Outcome) -> None:
    """What every load must show: all in place, nothing left bound, a prompt shutdown."""
    assert outcome.problems == []
    assert outcome.request_errors == 0
    assert outcome.sent == outcome.size.turns * 3 == outcome.received
    assert (outcome.lost, outcome.misplaced, outcome.stored_twice, outcome.unexpected) == (
        0,
        0,
        0,
        0,
    )
    assert outcome.leftovers == []
    assert outcome.threads_served > 0
    assert outcome.threads_probed == outcome.threads_served
    assert outcome.leaks["bindings_bound"] == outcome.leaks["traces_bound"] == 0
    assert outcome.flushed is True
    assert outcome.flush_seconds is not None and outcome.flush_seconds < SMALL.flush_timeout
    assert outcome.exit_seconds is not None and outcome.exit_limit is not None
    assert outcome.exit_seconds <= outcome.exit_limit


# Timing-dependent: whether the recorder meets every kind of fault inside its time window
# depends on how loaded the machine is, so this runs in `make reliability`, not by default
# (`pytest -m reliability` runs it alone).
@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("adapter", DEFAULT_ADAPTERS)
def test_load_then_faults_lose_and_misplace_nothing(adapter: str, tmp_path: Path) -> None:
    baseline = run_scenario(adapter, "load", SMALL, workdir=tmp_path)
    assert_clean(baseline)
    assert baseline.spooled == 0
    assert baseline.recorder["sent"] == baseline.sent

    faulted = run_scenario(adapter, "faults", SMALL, workdir=tmp_path, baseline_p99=baseline.p99)
    assert_clean(faulted)
    # Each fault was met by the recorder while the app was under load ...
    assert len(faulted.faults) == 5
    assert all(faulted.observed[kind] > 0 for kind in ("500", "503", "429", "reset"))
    assert faulted.recorder["retried"] > 0
    # ... without costing the users' requests much (a generous bound: a shared machine).
    assert faulted.p99 <= 3 * baseline.p99 + 0.3
    # What finally failed went to the spool, and the replay delivered it exactly once.
    assert faulted.delivered + faulted.spooled >= faulted.sent


@pytest.mark.slow
@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_sigterm_mid_run_delivers_or_spools_everything(adapter: str, tmp_path: Path) -> None:
    outcome = run_scenario(adapter, "sigterm", SIGTERM_RUN, workdir=tmp_path)
    assert outcome.problems == []
    assert outcome.sent > 0
    assert outcome.spooled > 0  # Freeplay hung: the exit wrote what was left to the spool
    assert outcome.lost_at_exit == 0
    assert outcome.lost == 0  # and the replay delivered it
    assert outcome.stored_twice == 0
    assert outcome.misplaced == 0
    assert outcome.exit_seconds is not None and outcome.exit_limit is not None
    assert outcome.exit_seconds <= outcome.exit_limit


# -- the checks catch what they look for ---------------------------------------------------


def _turn(session: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    rid = uuid.uuid4().hex
    trace_id, first, second = (str(uuid.uuid4()) for _ in range(3))
    result = {
        "conversation": 0,
        "turn": 0,
        "rid": rid,
        "mode": "plain",
        "status": 200,
        "latency": 0.01,
        "header_session": session,
        "cookie_session": session,
        "view_session": session,
        "trace_id": trace_id,
        "completion_ids": [first, second],
    }
    trace = {"id": trace_id, "session_id": session, "input": rid, "parent_id": None}
    completions = [
        {"id": cid, "session_id": session, "parent_id": trace_id, "inputs": {"rid": rid, "n": n}}
        for n, cid in enumerate((first, second))
    ]
    return result, trace, completions


def _judged(
    results: list[dict[str, Any]],
    completions: list[dict[str, Any]],
    traces: list[dict[str, Any]],
) -> Outcome:
    outcome = Outcome(adapter="test", scenario="load", size=SMALL)
    judge(outcome, results, completions, traces)
    return outcome


def test_judge_counts_lost_misplaced_and_stored_twice() -> None:
    session = str(uuid.uuid4())
    result, trace, completions = _turn(session)
    clean = _judged([result], completions, [trace])
    assert (clean.sent, clean.received, clean.lost, clean.misplaced) == (3, 3, 0, 0)
    assert clean.problems == []

    lost = _judged([result], completions[:1], [trace])
    assert (lost.lost, lost.misplaced) == (1, 0)

    elsewhere = [completions[0], {**completions[1], "session_id": str(uuid.uuid4())}]
    assert _judged([result], elsewhere, [trace]).misplaced == 1

    other_trace = [completions[0], {**completions[1], "parent_id": str(uuid.uuid4())}]
    assert _judged([result], other_trace, [trace]).misplaced == 1

    twice = [*completions, {**completions[1], "id": str(uuid.uuid4())}]
    assert _judged([result], twice, [trace]).stored_twice == 1

    # A conversation whose second turn came back in another session is misplaced.
    second, trace2, completions2 = _turn(str(uuid.uuid4()))
    second["turn"] = 1
    switched = _judged([result, second], completions + completions2, [trace, trace2])
    assert switched.misplaced >= 1
    assert switched.problems


def test_hygiene_probes_catch_a_session_left_bound_in_a_worker_thread(tmp_path: Path) -> None:
    with LocalFreeplay() as freeplay:
        env = {**os.environ, **freeplay.env(), ENV_PLANT_LEAK: "1"}
        env[ENV_SPOOL_PATH] = str(tmp_path / "spool.jsonl")
        with App("flask", env, tmp_path, threads=2) as app:
            clean = Outcome(adapter="flask", scenario="load", size=SMALL)
            app.hygiene(clean, rounds=3)
            assert clean.leftovers == []
            assert clean.leaks["bindings_bound"] == 0

            planted = app.http.post(CONTROL_PREFIX + "plant-leak").json()
            outcome = Outcome(adapter="flask", scenario="load", size=SMALL)
            app.hygiene(outcome, rounds=3)
            assert outcome.leaks["bindings_bound"] == 1
            assert any(str(planted["thread"]) in line for line in outcome.leftovers)


# -- the recorder's SIGTERM handler ----------------------------------------------------------

HANDLERS = """
    import json, os, signal, threading
    from freeplay import Freeplay
    from freeplay_integrations import _recording
    from freeplay_integrations.wsgi import FreeplaySessionMiddleware

    client = Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api")

    def app(environ, start_response):
        return []

    def build():
        FreeplaySessionMiddleware(
            app, client=client, project_id="5e0c3c8a-3b7e-4f0e-9a51-2c4d6e8f0a1b"
        )

    def mine(signum, frame):
        pass

    seen = {}
    build()
    seen["not installed by a middleware"] = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    thread = threading.Thread(target=_recording.install_sigterm_handler)
    thread.start()
    thread.join()
    seen["not from a thread"] = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _recording.install_sigterm_handler()
    seen["SIG_IGN kept"] = signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    signal.signal(signal.SIGTERM, mine)
    _recording.install_sigterm_handler()
    seen["own handler kept"] = signal.getsignal(signal.SIGTERM) is mine
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _recording.configure_recording(handle_sigterm=True)
    seen["opted in"] = signal.getsignal(signal.SIGTERM) is _recording._hooks._on_sigterm
    print(json.dumps(seen))
"""


def test_sigterm_handler_is_opt_in_and_only_over_the_default_from_the_main_thread() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HANDLERS)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "not installed by a middleware": True,
        "not from a thread": True,
        "SIG_IGN kept": True,
        "own handler kept": True,
        "opted in": True,
    }


@contextlib.contextmanager
def _script(source: str, spool: Path, *args: str, ready: str) -> Iterator[subprocess.Popen[str]]:
    """Run `source` in a new Python, its spool at `spool`, `args` as its argv, until it
    prints `ready`; its pipes are closed (and the process killed, if a check failed
    first) after the block."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        env={**os.environ, ENV_SPOOL_PATH: str(spool)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        assert process.stdout.readline().strip() == ready, process.stderr.read()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


SCRIPT = """
    import sys, time
    from freeplay import Freeplay
    from freeplay_integrations import configure_recording, record, session_scope

    client = Freeplay(freeplay_api_key=sys.argv[1], api_base=sys.argv[2])
    configure_recording(shutdown_timeout=1.0, handle_sigterm=True)
    with session_scope(client, project_id=sys.argv[3]):
        for n in range(20):
            record(all_messages=[{"role": "user", "content": "q"}], inputs={"n": n})
    print("QUEUED", flush=True)
    time.sleep(60)
"""


def test_a_bare_script_spools_what_it_queued_on_sigterm(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    with LocalFreeplay() as freeplay:
        freeplay.faults.hang(60)  # nothing gets delivered
        args = (freeplay.api_key, freeplay.api_base, freeplay.project_id)
        with _script(SCRIPT, spool, *args, ready="QUEUED") as process:
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == SIGTERM_EXIT_STATUS
        assert time.monotonic() - started < 1.0 + 3.0  # shutdown_timeout, plus start-up slack
        lines = [json.loads(line) for line in spool.read_text().splitlines()]
        assert sorted(line["data"]["inputs"]["n"] for line in lines) == list(range(20))
        freeplay.faults.release()


LATE = """
    import os, sys, threading, time
    from freeplay import Freeplay
    from freeplay_integrations import configure_recording, record, session_scope

    client = Freeplay(freeplay_api_key=sys.argv[1], api_base=sys.argv[2])
    configure_recording(shutdown_timeout=0.5, handle_sigterm=True)
    log = os.open(sys.argv[4], os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def serve():  # a server's daemon worker thread: it goes on while the process exits
        with session_scope(client, project_id=sys.argv[3]):
            while True:
                done = record(all_messages=[{"role": "user", "content": "q"}])
                os.write(log, (done.completion_id + "\\n").encode())
                time.sleep(0.002)

    threading.Thread(target=serve, daemon=True).start()
    time.sleep(0.2)
    print("RECORDING", flush=True)
    time.sleep(60)
"""


def test_what_a_thread_records_during_and_after_the_exit_flush_is_spooled(
    tmp_path: Path,
) -> None:
    """Waitress's worker threads are daemons: they go on serving through the exit flush."""
    spool, log = tmp_path / "spool.jsonl", tmp_path / "recorded.log"
    with LocalFreeplay() as freeplay:
        freeplay.faults.hang(60)  # nothing gets delivered
        args = (freeplay.api_key, freeplay.api_base, freeplay.project_id, str(log))
        with _script(LATE, spool, *args, ready="RECORDING") as process:
            before = len(log.read_text().split())
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == SIGTERM_EXIT_STATUS, process.stderr.read()
        recorded = log.read_text().split()
        assert len(recorded) > before + 10  # the thread recorded through the exit flush
        spooled = [
            json.loads(line)["data"]["completion_id"] for line in spool.read_text().splitlines()
        ]
        assert set(recorded) <= set(spooled)
        assert len(spooled) == len(set(spooled))
        freeplay.faults.release()


DRAINING = """
    import sys, time
    from freeplay import Freeplay
    from freeplay_integrations import configure_recording

    client = Freeplay(freeplay_api_key=sys.argv[1], api_base=sys.argv[2])
    configure_recording(client, shutdown_timeout=3.0, handle_sigterm=True)  # drains at start
    print("STARTED", flush=True)
    time.sleep(60)
"""


def test_a_drain_cut_short_by_the_exit_puts_the_spool_back(tmp_path: Path) -> None:
    """A new process drains what an earlier one left while Freeplay refuses: at SIGTERM
    the drain stops, and the spool is back under its own name, each line once."""
    spool = tmp_path / "spool.jsonl"
    with LocalFreeplay() as freeplay:
        earlier, captured = capturing_client(freeplay)
        with session_scope(earlier, project_id=freeplay.project_id):
            for n in range(5):
                record(all_messages=[{"role": "user", "content": "q"}], inputs={"n": n})
        append_lines(str(spool), [spool_line(op, freeplay.api_base, "earlier") for op in captured])
        freeplay.faults.fail_for(60, 503)
        with _script(
            DRAINING, spool, freeplay.api_key, freeplay.api_base, ready="STARTED"
        ) as process:
            freeplay.wait_for(lambda: len(freeplay.faults.arrivals()) > 0, timeout=10)
            assert list(tmp_path.glob("spool.jsonl.draining-*"))  # the drain is under way
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == SIGTERM_EXIT_STATUS, process.stderr.read()
        assert list(tmp_path.glob("spool.jsonl.draining-*")) == []
        kept = [json.loads(line)["data"]["inputs"]["n"] for line in spool.read_text().splitlines()]
        assert sorted(kept) == list(range(5))
        freeplay.faults.clear()
