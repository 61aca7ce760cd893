"""A completion recorded with `record()` is serialised from its fields, without building its
`RecordPayload` (the Celery route does this on the request path): the JSON must be what the
payload would give, and read back to the same payload."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from freeplay_integrations import configure_recording, record, session_scope, trace_scope
from freeplay_integrations._recording import operation_from_json
from freeplay_integrations._recording._operations import Completion, _completion_to_json
from freeplay_integrations.local import DEFAULT_PROJECT_ID, LocalFreeplay

MESSAGES = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "hi"}]


class _Keep:
    """A `via=` route that keeps what it is given."""

    def __init__(self) -> None:
        self.ops: list[Any] = []

    def submit(self, op: Any) -> bool:
        self.ops.append(op)
        return True


@pytest.fixture
def server(freeplay_local: LocalFreeplay) -> LocalFreeplay:
    freeplay_local.reset()
    return freeplay_local


FIELDS: list[dict[str, Any]] = [
    {},
    {"inputs": {"question": "q", "n": 2}},
    {"eval_results": {"good": True, "score": 0.5}},
    {"output_schema": {"type": "object"}},
    {"completion_id": uuid.uuid4(), "parent_id": str(uuid.uuid4()).upper()},
    {"inputs": None, "eval_results": None},
]


@pytest.mark.parametrize("extra", FIELDS, ids=lambda f: ",".join(f) or "messages only")
@pytest.mark.parametrize("in_trace", [False, True])
def test_a_recorded_completion_serialises_as_its_payload_would(
    server: LocalFreeplay, extra: dict[str, Any], in_trace: bool
) -> None:
    keep = _Keep()
    client = server.client()
    configure_recording(client, via=keep)
    with session_scope(client, project_id=DEFAULT_PROJECT_ID, custom_metadata={"plan": "pro"}):
        if in_trace and "parent_id" not in extra:
            with trace_scope(input="q"):
                record(all_messages=MESSAGES, **extra)
        else:
            record(all_messages=MESSAGES, **extra)
    (op,) = [op for op in keep.ops if isinstance(op, Completion)]
    assert op._fields is not None  # not built yet: serialised from the fields
    text = op.to_json_text()
    assert op._fields is not None  # and still not built
    data = json.loads(text)
    assert data["data"] == json.loads(json.dumps(_completion_to_json(op.payload)))
    again = operation_from_json(data)
    assert again.payload == op.payload  # the worker's operation sends the same payload


def test_a_completion_with_other_fields_serialises_through_its_payload(
    server: LocalFreeplay,
) -> None:
    from freeplay.resources.recordings import CallInfo

    keep = _Keep()
    client = server.client()
    configure_recording(client, via=keep)
    call = CallInfo(provider="openai", model="gpt-4o", start_time=1.0, end_time=2.0)
    with session_scope(client, project_id=DEFAULT_PROJECT_ID):
        record(all_messages=MESSAGES, call_info=call)
    (op,) = keep.ops
    data = json.loads(op.to_json_text())["data"]
    assert data["call_info"]["model"] == "gpt-4o"
    assert op._fields is None  # the payload was built for it
