"""The package refuses what the API would refuse, before it leaves the process.

The rules are `freeplay_integrations._validation`'s, the same the local server applies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from freeplay import Freeplay

from freeplay_integrations import (
    ConfigurationError,
    record,
    record_feedback,
    record_trace_feedback,
    session_scope,
    trace_scope,
    update_session_metadata,
    update_trace_metadata,
)
from freeplay_integrations._config import Settings
from freeplay_integrations._web import SessionResolver
from freeplay_integrations.local import LocalFreeplay

CHAT = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


@pytest.fixture
def server() -> Iterator[LocalFreeplay]:
    with LocalFreeplay() as local:
        yield local


@pytest.fixture
def client(server: LocalFreeplay) -> Freeplay:
    return server.client()


def test_helpers_raise_naming_the_key_and_the_rule(
    client: Freeplay, server: LocalFreeplay
) -> None:
    with session_scope(client, project_id=server.project_id):
        with pytest.raises(ValueError, match=r"\['k'\].*strings, numbers or booleans"):
            update_session_metadata({"k": {"nested": 1}})
        with pytest.raises(ValueError, match=r"\['k'\]"):
            update_session_metadata({"k": None})
        with pytest.raises(ValueError, match=r"freeplay_feedback.*'positive', 'negative'"):
            record_feedback({"freeplay_feedback": "meh"}, completion_id="x")
        with pytest.raises(ValueError, match=r"eval_results\['score'\].*boolean or number"):
            record(all_messages=CHAT, eval_results={"score": "high"})
        with pytest.raises(ValueError, match=r"all_messages\[0\].*role"):
            record(all_messages=[{"content": "no role"}])
        with pytest.raises(ValueError, match="kind"):
            trace_scope("q", kind="llm")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"custom_metadata.*\['tags'\]"):
            trace_scope("q", custom_metadata={"tags": ["a"]})  # type: ignore[dict-item]
        with trace_scope("q") as trace:
            with pytest.raises(ValueError, match=r"\['k'\]"):
                update_trace_metadata({"k": [1]})  # type: ignore[dict-item]
            with pytest.raises(ValueError, match=r"\['n'\]"):
                record_trace_feedback({"n": {"a": 1}})  # type: ignore[dict-item]
            trace.output = "a"
    server.wait_for(lambda: server.traces())
    assert server.request_count == 1  # only the trace was sent


def request_metadata(
    hook: Any, caplog: pytest.LogCaptureFixture, server: LocalFreeplay
) -> dict[str, Any] | None:
    settings = Settings.from_options(
        {"client": server.client(), "project_id": server.project_id, "session_metadata": hook}
    )
    with caplog.at_level(logging.WARNING, logger="freeplay_integrations"):
        return SessionResolver(settings)._metadata(object())


def test_session_metadata_hook_values_are_made_flat_with_one_warning_per_key(
    server: LocalFreeplay, caplog: pytest.LogCaptureFixture
) -> None:
    hook = lambda request: {"ok": "v", "n": 2, "nested": {"a": [1]}, "gone": None, "t": [1, 2]}  # noqa: E731
    metadata = request_metadata(hook, caplog, server)

    assert metadata == {"ok": "v", "n": 2, "nested": json.dumps({"a": [1]}), "t": "[1, 2]"}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3
    assert any("'nested'" in w and "JSON-encoded" in w for w in warned)
    assert any("'gone'" in w and "dropped" in w for w in warned)


def test_a_sanitised_hook_records_where_the_raw_one_would_be_refused(
    server: LocalFreeplay, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = request_metadata(lambda request: {"user": {"id": 7}}, caplog, server)
    client = server.client()
    with session_scope(client, project_id=server.project_id, custom_metadata=metadata) as s:
        record(all_messages=CHAT)
    server.wait_for(lambda: server.completions())
    assert server.session(s.session_id)["custom_metadata"] == {"user": '{"id": 7}'}  # type: ignore[index]


@pytest.mark.parametrize("project_id", ["...", "local-project", "12345"])
def test_project_id_must_be_a_uuid_and_the_error_says_where_to_find_it(project_id: str) -> None:
    client = Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api")
    with pytest.raises(ConfigurationError, match=r"UUID.*settings page"):
        Settings.from_options({"client": client, "project_id": project_id}, environ={})
