"""The local Freeplay's contract: one test per rule of the published API (request -> answer).

Each rule is listed, with its source, in the README's "Local Freeplay" section. Requests are
sent over real HTTP; the status code and the JSON error body are what Freeplay answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from freeplay_integrations.local import LocalFreeplay

MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalFreeplay]:
    with LocalFreeplay() as local:
        yield local


def call(
    server: LocalFreeplay,
    method: str,
    path: str,
    body: Any = None,
    *,
    project: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    url = f"{server.api_base}/v2/projects/{project or server.project_id}{path}"
    sent = {"Authorization": f"Bearer {server.api_key}", **(headers or {})}
    return requests.request(method, url, json=body, headers=sent, timeout=5)


def refused(response: requests.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["message"]
    assert isinstance(message, str)
    for word in words:
        assert word in message


def new_session(server: LocalFreeplay) -> tuple[str, str]:
    """A recorded session and its completion ID."""
    session_id = str(uuid.uuid4())
    response = call(server, "POST", f"/sessions/{session_id}/completions", {"messages": MESSAGES})
    assert response.status_code == 201
    return session_id, response.json()["completion_id"]


def new_trace(server: LocalFreeplay, session_id: str) -> str:
    trace_id = str(uuid.uuid4())
    body = {"input": "q", "output": "a"}
    assert call(server, "POST", f"/sessions/{session_id}/traces/id/{trace_id}", body).ok
    return trace_id


# -- projects ------------------------------------------------------------------------------


def test_unknown_project_is_404_project_not_found(server: LocalFreeplay) -> None:
    path = f"/sessions/{uuid.uuid4()}/completions"
    refused(call(server, "POST", path, {"messages": MESSAGES}, project=str(uuid.uuid4())), 404)
    response = call(server, "POST", path, {"messages": MESSAGES}, project="...")
    assert response.status_code == 404
    assert response.json() == {"message": "Project not found"}


def test_a_server_serves_several_projects() -> None:
    other = str(uuid.uuid4())
    with LocalFreeplay(projects=[other]) as local:
        path = f"/sessions/{uuid.uuid4()}/completions"
        assert call(local, "POST", path, {"messages": MESSAGES}, project=other).status_code == 201
        assert call(local, "POST", path, {"messages": MESSAGES}).status_code == 201
        listed = call(local, "GET", "", project="all").json()["projects"]
        assert {p["id"] for p in listed} == {local.project_id, other}


def test_the_default_project_is_a_uuid() -> None:
    with LocalFreeplay() as local:
        assert uuid.UUID(local.project_id).version == 4
        assert local.env()["FREEPLAY_PROJECT_ID"] == local.project_id


def test_a_non_uuid_project_id_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="UUID"):
        LocalFreeplay(project_id="local-project")


# -- metadata ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], None])
def test_session_info_custom_metadata_takes_flat_values_only(
    server: LocalFreeplay, value: Any
) -> None:
    body = {"messages": MESSAGES, "session_info": {"custom_metadata": {"k": value}}}
    refused(call(server, "POST", f"/sessions/{uuid.uuid4()}/completions", body), 400, "'k'")


def test_flat_metadata_values_are_stored(server: LocalFreeplay) -> None:
    metadata = {"s": "x", "i": 1, "f": 1.5, "b": True}
    body = {"messages": MESSAGES, "session_info": {"custom_metadata": metadata}}
    session_id = str(uuid.uuid4())
    assert call(server, "POST", f"/sessions/{session_id}/completions", body).status_code == 201
    assert server.session(session_id)["custom_metadata"] == metadata  # type: ignore[index]


def test_session_metadata_patch_takes_flat_values_only(server: LocalFreeplay) -> None:
    session_id, _ = new_session(server)
    path = f"/sessions/id/{session_id}/metadata"
    refused(call(server, "PATCH", path, {"k": {"nested": 1}}), 400, "'k'")
    assert call(server, "PATCH", path, {"k": "v"}).status_code == 200


def test_session_metadata_for_an_unknown_session_is_404(server: LocalFreeplay) -> None:
    path = f"/sessions/id/{uuid.uuid4()}/metadata"
    refused(call(server, "PATCH", path, {"k": "v"}), 404, "not found")


def test_trace_metadata_patch_takes_flat_values_only(server: LocalFreeplay) -> None:
    session_id, _ = new_session(server)
    trace_id = new_trace(server, session_id)
    path = f"/sessions/{session_id}/traces/id/{trace_id}/metadata"
    refused(call(server, "PATCH", path, {"k": None}), 400, "'k'")
    assert call(server, "PATCH", path, {"k": 2}).status_code == 200


def test_trace_metadata_for_an_unknown_trace_is_404(server: LocalFreeplay) -> None:
    session_id, _ = new_session(server)
    path = f"/sessions/{session_id}/traces/id/{uuid.uuid4()}/metadata"
    refused(call(server, "PATCH", path, {"k": "v"}), 404, "not found")


# -- feedback ------------------------------------------------------------------------------


def test_completion_feedback_for_an_unknown_completion_is_404(server: LocalFreeplay) -> None:
    path = f"/completion-feedback/id/{uuid.uuid4()}"
    refused(call(server, "POST", path, {"freeplay_feedback": "positive"}), 404, "not found")


def test_freeplay_feedback_is_positive_or_negative(server: LocalFreeplay) -> None:
    _, completion_id = new_session(server)
    path = f"/completion-feedback/id/{completion_id}"
    refused(call(server, "POST", path, {"freeplay_feedback": "meh"}), 400, "freeplay_feedback")
    assert call(server, "POST", path, {"freeplay_feedback": "negative"}).status_code == 201


def test_feedback_takes_flat_values_only(server: LocalFreeplay) -> None:
    _, completion_id = new_session(server)
    path = f"/completion-feedback/id/{completion_id}"
    refused(call(server, "POST", path, {"note": {"a": 1}}), 400, "'note'")


def test_trace_feedback_for_an_unknown_trace_is_404(server: LocalFreeplay) -> None:
    refused(call(server, "POST", f"/trace-feedback/id/{uuid.uuid4()}", {"x": 1}), 404)


def test_completion_update_for_an_unknown_completion_is_404(server: LocalFreeplay) -> None:
    path = f"/completions/{uuid.uuid4()}"
    refused(call(server, "POST", path, {"new_messages": MESSAGES}), 404, "not found")


def test_trace_patch_for_an_unknown_trace_is_404(server: LocalFreeplay) -> None:
    session_id, _ = new_session(server)
    path = f"/sessions/{session_id}/traces/id/{uuid.uuid4()}"
    refused(call(server, "PATCH", path, {"output": "x"}), 404, "not found")


# -- completions ---------------------------------------------------------------------------


def test_string_eval_results_are_refused(server: LocalFreeplay) -> None:
    body = {"messages": MESSAGES, "eval_results": {"score": "high"}}
    refused(call(server, "POST", f"/sessions/{uuid.uuid4()}/completions", body), 400, "'score'")


@pytest.mark.parametrize("message", ["hi", {"content": "no role"}, {"role": 3}])
def test_messages_must_be_message_objects_with_a_role(server: LocalFreeplay, message: Any) -> None:
    body = {"messages": [message]}
    refused(call(server, "POST", f"/sessions/{uuid.uuid4()}/completions", body), 400, "messages")


def test_completion_id_must_be_a_uuid4(server: LocalFreeplay) -> None:
    body = {"messages": MESSAGES, "completion_id": str(uuid.uuid1())}
    refused(call(server, "POST", f"/sessions/{uuid.uuid4()}/completions", body), 400, "UUID v4")


def test_call_times_must_be_numbers(server: LocalFreeplay) -> None:
    body = {"messages": MESSAGES, "call_info": {"start_time": "yesterday"}}
    refused(call(server, "POST", f"/sessions/{uuid.uuid4()}/completions", body), 400, "start_time")


# -- traces --------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["input", "output"])
def test_a_trace_needs_input_and_output(server: LocalFreeplay, missing: str) -> None:
    body = {"input": "q", "output": "a"}
    del body[missing]
    path = f"/sessions/{uuid.uuid4()}/traces/id/{uuid.uuid4()}"
    refused(call(server, "POST", path, body), 400, missing)


def test_trace_times_must_parse(server: LocalFreeplay) -> None:
    body = {"input": "q", "output": "a", "start_time": "not a time"}
    path = f"/sessions/{uuid.uuid4()}/traces/id/{uuid.uuid4()}"
    refused(call(server, "POST", path, body), 400, "start_time")


@pytest.mark.parametrize(("kind", "status"), [("tool", 201), ("agent", 201), ("llm", 400)])
def test_trace_kind_is_tool_or_agent(server: LocalFreeplay, kind: str, status: int) -> None:
    body = {"input": "q", "output": "a", "kind": kind}
    path = f"/sessions/{uuid.uuid4()}/traces/id/{uuid.uuid4()}"
    assert call(server, "POST", path, body).status_code == status


def test_a_second_trace_post_updates_the_trace(server: LocalFreeplay) -> None:
    session_id = str(uuid.uuid4())
    trace_id = str(uuid.uuid4())
    path = f"/sessions/{session_id}/traces/id/{trace_id}"
    assert call(server, "POST", path, {"input": "q", "output": "first"}).status_code == 201
    assert call(server, "POST", path, {"input": "q", "output": "second"}).status_code == 201
    assert server.trace(trace_id)["output"] == "second"  # type: ignore[index]


# -- Host ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", ""])
def test_other_hosts_get_a_400_on_the_api_and_the_page(server: LocalFreeplay, host: str) -> None:
    api = call(server, "GET", "", project="all", headers={"Host": host})
    page = requests.get(server.url + "/ui/api/sessions", headers={"Host": host}, timeout=5)
    refused(api, 400, "Host")
    refused(page, 400, "Host")


@pytest.mark.parametrize("host", ["localhost:1", "127.0.0.1", "[::1]:8765", "app.localhost"])
def test_loopback_hosts_are_served(server: LocalFreeplay, host: str) -> None:
    page = requests.get(server.url + "/ui/api/sessions", headers={"Host": host}, timeout=5)
    assert page.status_code == 200


def test_configured_hosts_are_served() -> None:
    with LocalFreeplay(allowed_hosts=["freeplay.internal"]) as local:
        headers = {"Host": "freeplay.internal:8765"}
        assert requests.get(local.url + "/", headers=headers, timeout=5).status_code == 200
