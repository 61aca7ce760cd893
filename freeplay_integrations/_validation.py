"""The value rules of Freeplay's API, in one place for the package and the local server.

Each `check_*` function raises `ValueError` naming the key and the rule; the local server
turns that into a 400 `{"message": ...}`, the helpers the caller invokes let it propagate
(a programming error, found at once in development). `sanitize_metadata` is for values
that must never fail a request (the middleware's `session_metadata` hook): offending values
are JSON-encoded to a string, or dropped, with one warning per key.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = [
    "FEEDBACK_VALUES",
    "TRACE_KINDS",
    "check_eval_results",
    "check_feedback",
    "check_iso_time",
    "check_messages",
    "check_metadata",
    "check_project_id",
    "check_record_fields",
    "check_trace_kind",
    "is_uuid",
    "is_uuid4",
    "project_id_error",
    "sanitize_metadata",
]

logger = logging.getLogger("freeplay_integrations")

_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE
)
_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    re.ASCII | re.IGNORECASE,
)

#: The values `freeplay_feedback` may take.
FEEDBACK_VALUES = ("positive", "negative")
#: Trace kinds the SDK sends (`freeplay.model.SpanKind`); the OpenAPI document lists only "tool".
TRACE_KINDS = ("tool", "agent")

_SCALAR_RULE = "values must be strings, numbers or booleans (no null, lists or objects)"


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def is_uuid4(value: object) -> bool:
    return isinstance(value, str) and _UUID4.fullmatch(value) is not None


def _scalar(value: object) -> bool:
    if isinstance(value, bool | str):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value)
    return False


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_metadata(metadata: object, where: str = "metadata") -> dict[str, Any]:
    """A flat object of string keys to string, number or boolean values."""
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{where} must be an object of key/value pairs, not {_short(metadata)}.")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"{where} key {_short(key)}: keys must be strings.")
        if not _scalar(value):
            raise ValueError(f"{where}[{key!r}] = {_short(value)}: {_SCALAR_RULE}.")
    return dict(metadata)


def check_feedback(feedback: object, where: str = "feedback") -> dict[str, Any]:
    """Flat values like metadata; `freeplay_feedback` is "positive" or "negative"."""
    body = check_metadata(feedback, where)
    if "freeplay_feedback" in body and body["freeplay_feedback"] not in FEEDBACK_VALUES:
        raise ValueError(
            f"{where}['freeplay_feedback'] = {_short(body['freeplay_feedback'])}: it must be "
            f"one of {', '.join(repr(v) for v in FEEDBACK_VALUES)}."
        )
    return body


def check_eval_results(results: object, where: str = "eval_results") -> dict[str, Any]:
    """An object of names to booleans or numbers (no strings)."""
    if not isinstance(results, Mapping):
        raise ValueError(f"{where} must be an object of names to booleans or numbers.")
    for key, value in results.items():
        if not isinstance(key, str):
            raise ValueError(f"{where} key {_short(key)}: keys must be strings.")
        if isinstance(value, str) or not _scalar(value):
            raise ValueError(f"{where}[{key!r}] = {_short(value)}: it must be a boolean or number.")
    return dict(results)


def check_messages(messages: object, where: str = "messages") -> list[Any]:
    """A non-empty list of message objects, each with a string `role`."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{where}' must be a non-empty list of messages.")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}[{index}] must be a message object, not {_short(message)}.")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"{where}[{index}] needs a string 'role'.")
    return messages


def check_iso_time(value: object, where: str) -> None:
    """None, or an ISO 8601 date-time string."""
    if value is None:
        return
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return
        except ValueError:
            pass
    raise ValueError(f"{where} = {_short(value)}: it must be an ISO 8601 date-time.")


def check_trace_kind(kind: object) -> None:
    if kind is not None and kind not in TRACE_KINDS:
        raise ValueError(f"kind = {_short(kind)}: it must be one of {', '.join(TRACE_KINDS)}.")


def project_id_error(project_id: object, where: str = "project_id") -> str:
    """Why `project_id` is not a Freeplay project ID, and where to find the right one."""
    return (
        f"{where} {_short(project_id)} is not a Freeplay project ID: it is a UUID like "
        "'3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f', shown in the Freeplay app on the "
        "project's settings page (and in its URL: /projects/<project ID>/...)."
    )


def check_project_id(project_id: object, where: str = "project_id") -> str:
    """A Freeplay project ID: a UUID (returned in lower case). The error says where to find it."""
    text = project_id.strip() if isinstance(project_id, str) else project_id
    if not is_uuid(text):
        raise ValueError(project_id_error(project_id, where))
    assert isinstance(text, str)
    return text.lower()


def sanitize_metadata(
    metadata: Mapping[Any, Any], where: str = "session_metadata"
) -> dict[str, Any]:
    """`metadata` made acceptable to the API, never raising; one warning per changed key.

    Nested values (lists, objects) are JSON-encoded to a string; null, non-finite numbers
    and values that cannot be encoded are dropped; non-string keys are dropped.
    """
    clean: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            logger.warning("%s: key %s dropped: keys must be strings", where, _short(key))
            continue
        if _scalar(value):
            clean[key] = value
            continue
        if value is None or isinstance(value, float):
            logger.warning("%s[%r] dropped: %s", where, key, _SCALAR_RULE)
            continue
        try:
            clean[key] = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            logger.warning("%s[%r] dropped: %s and it is not JSON", where, key, _SCALAR_RULE)
            continue
        logger.warning("%s[%r] JSON-encoded to a string: %s", where, key, _SCALAR_RULE)
    return clean


def check_record_fields(fields: Mapping[str, Any]) -> None:
    """The values of `record()`'s `RecordPayload` fields that the API would refuse."""
    check_messages(list(fields.get("all_messages") or []), "all_messages")
    if fields.get("eval_results") is not None:
        check_eval_results(fields["eval_results"])
