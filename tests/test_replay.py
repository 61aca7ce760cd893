"""The spool and `python -m freeplay_integrations replay`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from freeplay import Freeplay
from freeplay.llm_parameters import LLMParameters
from freeplay.model import MediaInputBase64, MediaInputUrl
from freeplay.model import TestRunInfo as RunInfo
from freeplay.resources.prompts import PromptVersionInfo
from freeplay.resources.recordings import CallInfo, RecordPayload, ResponseInfo, UsageTokens
from freeplay.resources.sessions import SessionInfo

from freeplay_integrations import (
    configure_recording,
    record,
    record_feedback,
    record_trace_feedback,
    session_scope,
    trace_scope,
    update_session_metadata,
    update_trace_metadata,
)
from freeplay_integrations.__main__ import main
from freeplay_integrations._recording import (
    Completion,
    DeleteSession,
    recorder_for,
)
from freeplay_integrations._recording._spool import append_lines, spool_line
from freeplay_integrations.local import LocalFreeplay

ROOT = Path(__file__).resolve().parent.parent


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": f"re: {text}"}]


@pytest.fixture
def server(freeplay_local: LocalFreeplay, monkeypatch: pytest.MonkeyPatch) -> LocalFreeplay:
    monkeypatch.setenv("FREEPLAY_API_KEY", freeplay_local.api_key)
    monkeypatch.setenv("FREEPLAY_API_BASE", freeplay_local.api_base)  # the key goes there only
    return freeplay_local


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool.jsonl"


@pytest.fixture
def client(server: LocalFreeplay, spool: Path) -> Iterator[Freeplay]:
    """A client whose recorder gives up at once: everything it records is spooled."""
    client = server.client()
    configure_recording(client, spool_path=spool, max_attempts=1, idle_timeout=1.0)
    yield client
    server.faults.clear()
    recorder_for(client).flush(5)


def lines(spool: Path) -> list[dict[str, Any]]:
    if not spool.exists():
        return []
    return [json.loads(line) for line in spool.read_text().splitlines()]


def spool_while_down(client: Freeplay, server: LocalFreeplay, work: Any) -> Any:
    server.faults.fail_for(60)
    with session_scope(client, project_id=server.project_id) as session:
        result = work()
    assert recorder_for(client).flush(5)
    server.faults.clear()
    server.reset()
    return session, result


def every_kind() -> dict[str, str]:
    with trace_scope("question", name="answer") as trace:
        completion_id = record(all_messages=chat("hi")).completion_id
        trace.output = "answer"
    record_feedback({"rating": 4})
    record_trace_feedback({"helpful": True}, trace_id=trace.trace_id)
    update_session_metadata({"ticket": "T-9"})
    update_trace_metadata({"resolved": True}, trace_id=trace.trace_id)
    return {"completion": completion_id, "trace": trace.trace_id}


def test_replay_delivers_every_kind_exactly_once(
    client: Freeplay, server: LocalFreeplay, spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session, ids = spool_while_down(client, server, every_kind)
    assert len(lines(spool)) == 6
    assert server.request_count == 0

    assert main(["replay", str(spool)]) == 0
    out = capsys.readouterr().out
    assert "6 operation(s) read, 6 sent" in out
    assert not spool.exists()
    (completion,) = server.completions(session.session_id)
    assert completion["id"] == ids["completion"]
    assert completion["parent_id"] == ids["trace"]
    assert completion["feedback"] == {"rating": 4}
    (trace,) = server.traces(session.session_id)
    assert (trace["id"], trace["output"]) == (ids["trace"], "answer")
    assert trace["feedback"] == {"helpful": True}
    assert trace["custom_metadata"] == {"resolved": True}
    assert server.session(session.session_id)["custom_metadata"] == {"ticket": "T-9"}  # type: ignore[index]

    assert main(["replay", str(spool)]) == 0  # nothing left: nothing sent twice
    assert "Nothing to replay" in capsys.readouterr().out
    assert server.duplicates == 0


def test_a_spooled_completion_replays_to_the_same_request_body(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    def payload(completion_id: uuid.UUID, session_id: str) -> RecordPayload:
        return RecordPayload(
            project_id=server.project_id,
            all_messages=[
                {"role": "user", "content": [{"type": "image", "bytes": b"\x00\xffpng"}]},
                {"role": "assistant", "content": "a picture"},
            ],
            session_info=SessionInfo(session_id, {"user": "u1", "n": 3}),
            inputs={"question": "what is it?", "nested": {"a": [1, 2]}},
            prompt_version_info=PromptVersionInfo(
                prompt_template_version_id=str(uuid.uuid4()), environment="prod"
            ),
            call_info=CallInfo(
                provider="openai",
                model="gpt-x",
                start_time=1.5,
                end_time=2.5,
                model_parameters=LLMParameters({"temperature": 0.2}),
                provider_info={"region": "eu"},
                usage=UsageTokens(prompt_tokens=10, completion_tokens=5),
                api_style="default",
            ),
            media_inputs={
                "photo": MediaInputUrl(type="url", url="https://example.com/p.png"),
                "scan": MediaInputBase64(type="base64", data="AAEC", content_type="image/png"),
            },
            tool_schema=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            output_schema={"type": "object"},
            response_info=ResponseInfo(
                is_complete=True,
                function_call_response={"name": "f", "arguments": "{}"},
                prompt_tokens=10,
                response_tokens=5,
            ),
            test_run_info=RunInfo(test_run_id="run", test_case_id="case"),
            eval_results={"good": True, "score": 0.5},
            parent_id=uuid.uuid4(),
            completion_id=completion_id,
        )

    session_id = str(uuid.uuid4())
    direct, spooled = uuid.uuid4(), uuid.uuid4()
    client.recordings.create(payload(direct, session_id))  # what the SDK sends itself
    server.faults.fail_for(60)
    recorder_for(client).submit(
        Completion(server.project_id, session_id, payload(spooled, session_id))
    )
    assert recorder_for(client).flush(5)
    server.faults.clear()
    assert main(["replay", str(spool)]) == 0

    sent_directly = server.completion(str(direct))
    replayed = server.completion(str(spooled))
    assert sent_directly is not None and replayed is not None
    body, replayed_body = sent_directly["payload"], replayed["payload"]
    assert body.pop("completion_id") == str(direct)
    assert replayed_body.pop("completion_id") == str(spooled)
    for key in ("prompt_info", "parent_id"):  # random per payload() call
        body.pop(key), replayed_body.pop(key)
    assert replayed_body == body
    image = body["messages"][0]["content"][0]["bytes"]
    assert base64.b64decode(image) == b"\x00\xffpng"


def test_replay_keeps_what_still_fails_and_gives_up_early(
    client: Freeplay, server: LocalFreeplay, spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def ten() -> None:
        for n in range(10):
            record(all_messages=chat(str(n)))

    spool_while_down(client, server, ten)
    before = [line["data"]["completion_id"] for line in lines(spool)]
    server.faults.fail_for(60)
    assert main(["replay", str(spool), "--attempts", "2"]) == 1
    assert "10 operation(s) read, 0 sent" in capsys.readouterr().out
    assert [line["data"]["completion_id"] for line in lines(spool)] == before
    assert server.request_count == 2  # one operation tried twice, then it stopped trying
    server.faults.clear()
    assert main(["replay", str(spool)]) == 0
    assert sorted(c["id"] for c in server.completions()) == sorted(before)


def test_replay_drops_what_freeplay_refuses(
    client: Freeplay, server: LocalFreeplay, spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_while_down(client, server, lambda: [record(all_messages=chat(str(n))) for n in range(2)])
    server.faults.fail_next(1, status=400)
    assert main(["replay", str(spool)]) == 1
    assert "1 sent, 1 refused" in capsys.readouterr().out
    assert lines(spool) == []
    assert len(server.completions()) == 1


def test_replay_skips_what_a_later_delete_removes_and_duplicates(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    def work() -> None:
        record(all_messages=chat("doomed"))

    deleted, _ = spool_while_down(client, server, work)
    kept, _ = spool_while_down(client, server, work)
    doubled = spool.read_text().splitlines()[-1]
    delete = DeleteSession(server.project_id, deleted.session_id)
    append_lines(str(spool), [doubled + "\n", spool_line(delete, server.api_base, "test")])

    assert main(["replay", str(spool)]) == 0
    assert server.completions(deleted.session_id) == []
    assert server.session(deleted.session_id)["deleted"]  # type: ignore[index]
    assert len(server.completions(kept.session_id)) == 1
    assert [r.method for r in server.requests_received()] == ["POST", "DELETE"]
    assert server.duplicates == 0


def test_unreadable_lines_are_moved_aside(
    client: Freeplay, server: LocalFreeplay, spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_while_down(client, server, lambda: record(all_messages=chat("ok")))
    append_lines(str(spool), ["not json\n", '{"kind": "mystery"}\n'])
    assert main(["replay", str(spool)]) == 0
    assert "2 unreadable line(s) moved" in capsys.readouterr().out
    assert Path(f"{spool}.bad").read_text().splitlines() == ["not json", '{"kind": "mystery"}']
    assert len(server.completions()) == 1


def test_lines_spooled_during_a_replay_stay_in_the_spool(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    spool_while_down(client, server, lambda: record(all_messages=chat("old")))
    server.faults.hang(10)
    replay = threading.Thread(target=main, args=(["replay", str(spool)],))
    replay.start()
    server.wait_for(
        lambda: any(p.name.startswith("spool.jsonl.draining") for p in spool.parent.iterdir())
    )
    late = DeleteSession(server.project_id, str(uuid.uuid4()))
    append_lines(str(spool), [spool_line(late, server.api_base, "late")])
    server.faults.release()
    replay.join(10)
    assert [line["reason"] for line in lines(spool)] == ["late"]
    assert len(server.completions()) == 1


def test_replay_sends_the_key_only_to_the_given_api_base(
    client: Freeplay, server: LocalFreeplay, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_while_down(client, server, lambda: record(all_messages=chat("elsewhere")))
    text = spool.read_text().replace(server.api_base, "http://127.0.0.1:9/api")
    spool.write_text(text)  # the file names another host: it is not used
    assert main(["replay", str(spool)]) == 0
    assert len(server.completions()) == 1
    monkeypatch.delenv("FREEPLAY_API_BASE")
    spool_while_down(client, server, lambda: record(all_messages=chat("no base")))
    assert main(["replay", str(spool)]) == 2  # no base given: nothing sent anywhere
    assert server.request_count == 0


def test_replay_without_an_api_key_says_how_to_give_one(
    spool: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FREEPLAY_API_KEY", raising=False)
    assert main(["replay", str(spool)]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_the_replay_command_runs_as_a_module(
    client: Freeplay, server: LocalFreeplay, spool: Path
) -> None:
    session, _ = spool_while_down(client, server, lambda: record(all_messages=chat("cli")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FREEPLAY_SPOOL_PATH": str(spool)}
    env.pop("FREEPLAY_API_KEY")
    done = subprocess.run(
        [sys.executable, "-m", "freeplay_integrations", "replay", "--api-key", server.api_key],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "1 sent" in done.stdout
    assert len(server.completions(session.session_id)) == 1
