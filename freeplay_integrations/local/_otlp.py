"""OTLP/HTTP traces for the local Freeplay: decode a request body into plain span dicts.

Both encodings of ``ExportTraceServiceRequest``: protobuf (``application/x-protobuf``,
decoded with ``opentelemetry-proto``, which the ``opentelemetry`` extra installs) and
OTLP/JSON (``application/json``: camelCase keys, hex trace and span IDs, 64-bit integers
as strings or numbers). Protobuf is turned into the OTLP/JSON form first, so there is one
reader. Spans are filed under their ``freeplay.session.id`` attribute; a span without one
is kept under `NO_SESSION`.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NO_SESSION",
    "SESSION_ATTRIBUTE",
    "TRACE_ATTRIBUTE",
    "OtlpError",
    "decode_traces",
    "page_nodes",
]

#: Where spans without a session are stored (and how `LocalFreeplay.spans` names them).
NO_SESSION = "no session"
#: The span attribute that names a span's Freeplay session.
SESSION_ATTRIBUTE = "freeplay.session.id"
#: The span attribute naming the Freeplay trace (`trace_scope`) a span was started in.
TRACE_ATTRIBUTE = "freeplay.trace.id"

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


class OtlpError(ValueError):
    """The body is not an OTLP traces request; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_traces(body: bytes, headers: Mapping[str, str]) -> list[dict[str, Any]]:
    """The spans of an OTLP/HTTP traces request body, one dict each (see `_span`)."""
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            raise OtlpError(400, "Invalid gzip request body.") from None
    elif encoding not in ("", "identity"):
        raise OtlpError(415, f"Unsupported Content-Encoding {encoding[:40]!r}.")
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    hex_ids = content_type == _JSON  # protobuf bytes arrive base64 in the JSON form
    if content_type == _PROTOBUF:
        request = _from_protobuf(body)
    elif content_type == _JSON:
        try:
            request = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise OtlpError(400, "Invalid JSON in the OTLP request body.") from None
    else:
        raise OtlpError(
            415, f"OTLP/HTTP bodies are {_PROTOBUF} or {_JSON}, not {content_type[:60]!r}."
        )
    if not isinstance(request, dict):
        raise OtlpError(400, "Invalid OTLP request: expected a JSON object.")
    try:
        return list(_spans(request, hex_ids=hex_ids))
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        raise OtlpError(400, f"Invalid OTLP traces request: {error}"[:200]) from None


def _from_protobuf(body: bytes) -> Any:
    try:
        from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
        from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
    except ImportError:
        raise OtlpError(
            415,
            "This local Freeplay cannot read OTLP protobuf: install opentelemetry-proto "
            "(pip install 'freeplay-integrations[opentelemetry]') or send OTLP/JSON.",
        ) from None
    message = ExportTraceServiceRequest()
    try:
        message.ParseFromString(body)
    except DecodeError:
        raise OtlpError(400, "Invalid OTLP protobuf request body.") from None
    return MessageToDict(message)


def _id(value: Any, hex_ids: bool) -> str | None:
    if not value:
        return None
    if hex_ids:
        text = str(value).lower()
        int(text, 16)  # ValueError when not hex
        return text
    return base64.b64decode(str(value)).hex()


def _value(value: Any) -> Any:
    """An OTLP `AnyValue` (JSON form) as a plain Python value."""
    if not isinstance(value, dict):
        return None
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return _attributes((value["kvlistValue"] or {}).get("values", []))
    if "bytesValue" in value:
        return str(value["bytesValue"])
    return None


def _attributes(items: Any) -> dict[str, Any]:
    return {str(item["key"]): _value(item.get("value")) for item in items or []}


def _spans(request: dict[str, Any], *, hex_ids: bool) -> Any:
    for resource_spans in request.get("resourceSpans") or []:
        resource = _attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            scope = (scope_spans.get("scope") or {}).get("name")
            for span in scope_spans.get("spans") or []:
                yield _span(span, resource, scope, hex_ids)


def _span(
    span: dict[str, Any], resource: dict[str, Any], scope: str | None, hex_ids: bool
) -> dict[str, Any]:
    trace_id = _id(span.get("traceId"), hex_ids)
    span_id = _id(span.get("spanId"), hex_ids)
    if trace_id is None or span_id is None:
        raise ValueError("a span needs a traceId and a spanId")
    attributes = _attributes(span.get("attributes"))
    session = attributes.get(SESSION_ATTRIBUTE)
    status = span.get("status") or {}
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": _id(span.get("parentSpanId"), hex_ids),
        "name": str(span.get("name", "")),
        "kind": span.get("kind"),
        "start_time_unix_nano": int(span.get("startTimeUnixNano") or 0),
        "end_time_unix_nano": int(span.get("endTimeUnixNano") or 0),
        "attributes": attributes,
        "status": {"code": status.get("code"), "message": status.get("message")},
        "resource": resource,
        "scope": scope,
        "session_id": str(session).lower() if isinstance(session, str) and session else None,
    }


# -- spans as the session page's nodes -------------------------------------------------------


def _messages(attributes: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """OpenInference's flattened `llm.input_messages.<i>.message.role/content` as a list."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        index, _, rest = key[len(prefix) :].partition(".message.")
        if index.isdigit() and rest in ("role", "content"):
            found.setdefault(int(index), {})[rest] = value
    return [found[i] for i in sorted(found)]


def _seconds(nanos: Any) -> float | None:
    return nanos / 1e9 if isinstance(nanos, int) and nanos > 0 else None


def _iso(nanos: Any) -> str | None:
    from datetime import datetime, timezone

    seconds = _seconds(nanos)
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def page_nodes(
    spans: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`(traces, completions)` in the shape the session page draws: OpenInference LLM spans
    (``openinference.span.kind`` = ``LLM``) as completions with their messages, model and
    token counts, every other span as a trace step. A span's parent is its parent span when
    that is among `spans`, else the `trace_scope` it ran in (`TRACE_ATTRIBUTE`), if any."""
    traces: list[dict[str, Any]] = []
    completions: list[dict[str, Any]] = []
    span_ids = {span["span_id"] for span in spans}
    for span in spans:
        attributes = span.get("attributes") or {}
        parent = span.get("parent_span_id")
        if parent not in span_ids:
            trace = attributes.get(TRACE_ATTRIBUTE)
            parent = str(trace).lower() if isinstance(trace, str) and trace else parent
        common = {
            "id": span["span_id"],
            "parent_id": parent,
            "received_at": span.get("received_at"),
            "eval_results": {},
            "feedback": {},
            "payload": span,
        }
        if str(attributes.get("openinference.span.kind", "")).upper() == "LLM":
            messages = _messages(attributes, "llm.input_messages.")
            messages += _messages(attributes, "llm.output_messages.")
            tokens = {
                name: attributes[f"llm.token_count.{name}"]
                for name in ("prompt", "completion", "total")
                if f"llm.token_count.{name}" in attributes
            }
            completions.append(
                {
                    **common,
                    "messages": messages,
                    "model": attributes.get("llm.model_name"),
                    "provider": attributes.get("llm.provider") or attributes.get("llm.system"),
                    "start_time": _seconds(span.get("start_time_unix_nano")),
                    "end_time": _seconds(span.get("end_time_unix_nano")),
                    "inputs": None,
                    "tokens": tokens,
                }
            )
        else:
            traces.append(
                {
                    **common,
                    "name": span.get("name"),
                    "agent_name": None,
                    "kind": attributes.get("openinference.span.kind") or "span",
                    "input": attributes.get("input.value"),
                    "output": attributes.get("output.value"),
                    "custom_metadata": {},
                    "start_time": _iso(span.get("start_time_unix_nano")),
                    "end_time": _iso(span.get("end_time_unix_nano")),
                }
            )
    return traces, completions
